//! Resource limits of the jailed VMM: open files, file size, processes (threads), no core
//! dumps.

use nix::sys::resource::{setrlimit, Resource};

use super::JailError;

/// Open files: the VM's devices and files, plus the vsock device's host connections
/// (at most 1024 at once, see the vsock backend) with room to spare.
pub const NOFILE: u64 = 4096;
/// The smallest file-size limit: the serial log may grow to this; writable disks are never
/// cut short (the limit grows to the largest of them).
pub const MIN_FSIZE: u64 = 1 << 30;
/// Tasks beyond the vCPU threads: the event-loop thread and slack.
pub const EXTRA_TASKS: u64 = 8;

/// The limits of one VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub nofile: u64,
    pub fsize: u64,
    pub nproc: u64,
}

impl Limits {
    /// For a VM with `vcpus` vCPUs whose largest writable disk has `largest_writable` bytes.
    pub fn for_vm(vcpus: u8, largest_writable: u64) -> Limits {
        Limits { nofile: NOFILE, fsize: MIN_FSIZE.max(largest_writable), nproc: u64::from(vcpus) + EXTRA_TASKS }
    }
}

/// Applies `limits` and `RLIMIT_CORE` = 0. `SIGXFSZ` is ignored, so a write past the size
/// limit fails (`EFBIG`, which the serial console shrugs off) instead of killing the VMM.
pub fn apply(limits: &Limits) -> Result<(), JailError> {
    for (resource, name, value) in [
        (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.nofile),
        (Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.fsize),
        (Resource::RLIMIT_NPROC, "RLIMIT_NPROC", limits.nproc),
        (Resource::RLIMIT_CORE, "RLIMIT_CORE", 0),
    ] {
        setrlimit(resource, value, value).map_err(|e| JailError::sys(format!("setrlimit({name}, {value})"), e))?;
    }
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(JailError::Sys { what: "ignoring SIGXFSZ".into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm() {
        let l = Limits::for_vm(4, 0);
        assert_eq!(l, Limits { nofile: NOFILE, fsize: MIN_FSIZE, nproc: 12 });
        assert_eq!(Limits::for_vm(1, 10 << 30).fsize, 10 << 30);
    }
}
