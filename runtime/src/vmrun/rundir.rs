//! The per-run directory: the VMM's configuration, vsock socket, serial log, stderr and exit
//! record, and the VM's shared directory and virtiofsd's socket live there; it is removed
//! when the run ends.

use std::path::{Path, PathBuf};

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
    bases.push(PathBuf::from("/run/palisade/vmrun"));
    bases.push(std::env::temp_dir());
    bases
}

/// A run directory, removed (recursively) on drop, together with its base directory
/// when that is vmrun's own (`/run/palisade/vmrun`) and no other run uses it.
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    own_base: Option<PathBuf>,
}

/// The base directory that belongs to vmrun alone.
const OWN_BASE: &str = "/run/palisade/vmrun";

impl RunDir {
    pub fn create(bases: &[PathBuf]) -> Result<RunDir, RunDirError> {
        let mut last = None;
        for base in bases {
            // A parallel run may remove an empty base between our mkdir and our create.
            for _ in 0..3 {
                if let Err(source) = std::fs::create_dir_all(base) {
                    last = Some(RunDirError::Create { base: base.clone(), source });
                    break;
                }
                match tempfile::Builder::new().prefix("vmrun-").tempdir_in(base) {
                    Ok(dir) => {
                        let own_base = (base == Path::new(OWN_BASE)).then(|| base.clone());
                        return Ok(RunDir { dir: Some(dir), own_base });
                    }
                    Err(source) => {
                        let retry = source.kind() == std::io::ErrorKind::NotFound;
                        last = Some(RunDirError::Create { base: base.clone(), source });
                        if !retry {
                            break;
                        }
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| RunDirError::Create {
            base: bases.first().cloned().unwrap_or_default(),
            source: std::io::ErrorKind::NotFound.into(),
        }))
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path())
    }
    pub fn vsock_socket(&self) -> PathBuf {
        self.path().join("vsock.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.path().join("serial.log")
    }
    pub fn vmm_stderr(&self) -> PathBuf {
        self.path().join("vmm.stderr")
    }
    /// The VMM's configuration (`palisade-vmm --config`).
    pub fn vm_config(&self) -> PathBuf {
        self.path().join("vm.json")
    }
    /// How the VM ended, written by the VMM (`palisade-vmm --exit-record`).
    pub fn exit_record(&self) -> PathBuf {
        self.path().join("exit.json")
    }
    /// The VM's shared directory (`crate::share::ShareDir`).
    pub fn share_dir(&self) -> PathBuf {
        self.path().join("share")
    }
    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.path().join("virtiofsd.sock")
    }
    pub fn virtiofsd_log(&self) -> PathBuf {
        self.path().join("virtiofsd.log")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!("removing the run directory {}: {e}", path.display());
            }
        }
        if let Some(base) = &self.own_base {
            // Only succeeds when empty, i.e. no other run is using it.
            if std::fs::remove_dir(base).is_ok() {
                if let Some(parent) = base.parent() {
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
        let a = RunDir::create(&bases).unwrap();
        let b = RunDir::create(&bases).unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.serial_log(), "log").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        assert_eq!(candidate_bases(Some("relative".into()))[0], Path::new("/run/palisade/vmrun"));
    }
}
