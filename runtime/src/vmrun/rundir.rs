//! The per-run directory: vmrun's VM is a sandbox (`crate::sandbox`) of its own, tied to
//! vmrun and ephemeral, in a directory named `vmrun-…` under a base directory. Its
//! supervisor holds the VMM and virtiofsd; the directory holds the VMM's configuration,
//! vsock socket, serial log, stderr and exit record, and the VM's shared directory. It is
//! removed when the run ends — by vmrun, or by the supervisor when vmrun was killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sandbox::{control, LockedSandbox, SandboxDir, SandboxError, SandboxId};

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("creating a run directory under {base}: {source}")]
    Create { base: PathBuf, source: std::io::Error },
}

/// Where run directories go, in order of preference: `$XDG_RUNTIME_DIR`,
/// `/run/palisade/vmrun` (creatable by root), the temp dir.
pub fn candidate_bases(xdg_runtime_dir: Option<PathBuf>) -> Vec<PathBuf> {
    let mut bases = Vec::new();
    if let Some(x) = xdg_runtime_dir.filter(|x| x.is_absolute()) {
        bases.push(x);
    }
    bases.push(PathBuf::from(OWN_BASE));
    bases.push(std::env::temp_dir());
    bases
}

/// The base directory that belongs to vmrun alone.
pub const OWN_BASE: &str = "/run/palisade/vmrun";

/// A run's sandbox directory, removed on drop (with the VM stopped first if it still runs),
/// together with its base directory when that is vmrun's own and no other run uses it.
pub struct RunDir {
    sandbox: SandboxDir,
    base: PathBuf,
}

/// A fresh name: `vmrun-` and 16 random hex digits.
fn fresh_id() -> SandboxId {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        bytes = (u64::from(std::process::id()) << 32 | u64::from(nanos)).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    SandboxId::parse(&format!("vmrun-{hex}")).unwrap_or_else(|_| unreachable!("vmrun-<hex> is a valid id"))
}

impl RunDir {
    /// A new run directory, and its lock (for `control::start_in`, which starts the VM's
    /// supervisor in it).
    pub fn create(bases: &[PathBuf]) -> Result<(RunDir, LockedSandbox), RunDirError> {
        let mut last = None;
        for base in bases {
            // A parallel run may remove an empty base between our mkdir and our create.
            for _ in 0..3 {
                if let Err(source) = std::fs::create_dir_all(base) {
                    last = Some(RunDirError::Create { base: base.clone(), source });
                    break;
                }
                match SandboxDir::create(base, &fresh_id()) {
                    Ok(locked) => {
                        let sandbox = SandboxDir::new(base, locked.id());
                        return Ok((RunDir { sandbox, base: base.clone() }, locked));
                    }
                    Err(SandboxError::Io { source, .. }) => {
                        let retry = source.kind() == std::io::ErrorKind::NotFound;
                        last = Some(RunDirError::Create { base: base.clone(), source });
                        if !retry {
                            break;
                        }
                    }
                    Err(e) => {
                        last = Some(RunDirError::Create { base: base.clone(), source: std::io::Error::other(e.to_string()) });
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| RunDirError::Create {
            base: bases.first().cloned().unwrap_or_default(),
            source: std::io::ErrorKind::NotFound.into(),
        }))
    }

    /// Whether the base is vmrun's own (then it goes when the last run leaves it).
    pub fn own_base(&self) -> bool {
        self.base == Path::new(OWN_BASE)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }
    pub fn id(&self) -> &SandboxId {
        self.sandbox.id()
    }
    pub fn path(&self) -> &Path {
        self.sandbox.path()
    }
    pub fn vsock_socket(&self) -> PathBuf {
        self.sandbox.vsock_socket()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        match control::delete(&self.base, self.sandbox.id(), true, Duration::from_secs(10)) {
            Ok(()) | Err(control::ControlError::Sandbox(SandboxError::NotFound(_))) => {}
            Err(e) => tracing::warn!("removing the run directory {}: {e}", self.path().display()),
        }
        if self.own_base() {
            // Only succeeds when empty, i.e. no other run is using it.
            if std::fs::remove_dir(&self.base).is_ok() {
                if let Some(parent) = self.base.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_are_unique_and_removed() {
        let base = tempfile::tempdir().unwrap();
        let bases = vec![base.path().join("missing/../x"), base.path().to_path_buf()];
        let (a, lock) = RunDir::create(&bases).unwrap();
        drop(lock);
        let (b, _lock) = RunDir::create(&bases).unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.id().as_str().starts_with("vmrun-") && a.path().is_dir());
        std::fs::write(a.path().join("serial.log"), "log").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        assert_eq!(candidate_bases(Some("relative".into()))[0], Path::new("/run/palisade/vmrun"));
    }
}
