//! What kind of KVM this host offers, so commands can say up front why a standard
//! guest kernel cannot boot (PVM) instead of failing deep inside a boot.

use std::path::Path;

/// The KVM flavour of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmHostKind {
    /// VT-x or AMD-V underneath: standard guest kernels boot.
    Hardware,
    /// PVM (`kvm_pvm`): only PVM-enlightened guest kernels boot.
    Pvm,
    /// `/dev/kvm` exists but the CPU shows neither vmx nor svm and no PVM module is
    /// loaded (an unusual setup); treated like hardware, errors will tell.
    Unknown,
    /// No `/dev/kvm` at all.
    Missing,
}

/// The one line a command prints when it refuses to boot a standard guest on PVM.
pub const PVM_EXPLANATION: &str = "this host's /dev/kvm is PVM (kvm_pvm: no VT-x/AMD-V underneath), which cannot boot a standard guest kernel; give a PVM-enabled guest kernel with --kernel, or run inside the KVM test host (scripts/testhost)";

/// Probes `/dev/kvm`, `/sys/module` and `/proc/cpuinfo`.
pub fn probe_kvm_host() -> KvmHostKind {
    probe_at(Path::new("/"))
}

fn probe_at(root: &Path) -> KvmHostKind {
    if !root.join("dev/kvm").exists() {
        return KvmHostKind::Missing;
    }
    if root.join("sys/module/kvm_pvm").exists() {
        return KvmHostKind::Pvm;
    }
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let has_hw = cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_hw {
        KvmHostKind::Hardware
    } else {
        KvmHostKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(kvm: bool, pvm: bool, flags: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        if kvm {
            std::fs::write(dir.path().join("dev/kvm"), "").unwrap();
        }
        if pvm {
            std::fs::create_dir_all(dir.path().join("sys/module/kvm_pvm")).unwrap();
        }
        std::fs::write(dir.path().join("proc/cpuinfo"), format!("processor\t: 0\nflags\t\t: {flags}\n")).unwrap();
        dir
    }

    #[test]
    fn classifies_hosts() {
        assert_eq!(probe_at(fake_root(false, false, "fpu").path()), KvmHostKind::Missing);
        assert_eq!(probe_at(fake_root(true, true, "fpu").path()), KvmHostKind::Pvm);
        assert_eq!(probe_at(fake_root(true, false, "fpu svm lm").path()), KvmHostKind::Hardware);
        assert_eq!(probe_at(fake_root(true, false, "fpu vmx").path()), KvmHostKind::Hardware);
        assert_eq!(probe_at(fake_root(true, false, "fpu lm").path()), KvmHostKind::Unknown);
    }
}
