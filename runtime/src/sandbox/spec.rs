//! `sandbox.json`: what a sandbox's supervisor runs — written by the command that creates
//! the sandbox, read by the supervisor, both under the sandbox's lock.

use std::path::{Path, PathBuf};

use palisade_vmm::VmConfig;

use crate::virtiofsd::Tuning;
use serde::{Deserialize, Serialize};

/// A host directory or file shared with the VM, at `path` inside its shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPath {
    pub host: PathBuf,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// What the supervisor starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    pub vmm_binary: PathBuf,
    /// Needed when `shared` is not empty.
    #[serde(default)]
    pub virtiofsd_binary: Option<PathBuf>,
    /// The VM. Its vsock socket, virtio-fs sockets and logs are set by the supervisor to
    /// places in the sandbox's directory, whatever this says.
    pub vm: VmConfig,
    /// Served by one virtiofsd under the tag [`crate::share::TAG`].
    #[serde(default)]
    pub shared: Vec<SharedPath>,
    /// How its virtiofsd serves what is shared.
    #[serde(default)]
    pub virtiofsd: Tuning,
    /// The sandbox belongs to the command that started it (vmrun): once that command is gone,
    /// the supervisor removes the sandbox's directory when the VM has ended.
    #[serde(default)]
    pub ephemeral: bool,
    /// With `ephemeral`: the root directory is the starter's own (vmrun's
    /// `/run/palisade/vmrun`) and goes too when the sandbox leaves it empty.
    #[serde(default)]
    pub remove_empty_root: bool,
    /// The guest's console and the VMM's stderr go to the supervisor's stderr (`vmrun
    /// --console`) instead of files in the sandbox's directory.
    #[serde(default)]
    pub console: bool,
    /// The cgroup the VM's cgroup goes under (a path from the hierarchies' roots: a
    /// Kubernetes pod's, so that the pod's cgroup counts the VM); `None`: under the
    /// supervisor's own.
    #[serde(default)]
    pub cgroup_parent: Option<PathBuf>,
}

/// Largest `sandbox.json` read (the file is ours, but a bound keeps a damaged one harmless).
const MAX_SPEC_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("sandbox spec {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sandbox spec {path}: larger than {MAX_SPEC_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("sandbox spec {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl SandboxSpec {
    pub fn write_to(&self, path: &Path) -> Result<(), SpecError> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(path, json).map_err(|source| SpecError::Io { path: path.into(), source })
    }

    pub fn read_from(path: &Path) -> Result<SandboxSpec, SpecError> {
        use std::io::Read;
        let io = |source| SpecError::Io { path: path.into(), source };
        let mut bytes = Vec::new();
        std::fs::File::open(path).map_err(io)?.take(MAX_SPEC_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge { path: path.into() });
        }
        serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse { path: path.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_disk_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.json");
        let spec = SandboxSpec {
            vmm_binary: "/b/palisade-vmm".into(),
            virtiofsd_binary: Some("/b/virtiofsd".into()),
            vm: VmConfig::new("/a/vmlinux"),
            shared: vec![SharedPath { host: "/srv/root".into(), path: "root".into(), read_only: true }],
            virtiofsd: Tuning { cache: crate::virtiofsd::Cache::Never, thread_pool_size: 2 },
            ephemeral: true,
            remove_empty_root: false,
            console: false,
            cgroup_parent: None,
        };
        spec.write_to(&path).unwrap();
        assert_eq!(SandboxSpec::read_from(&path).unwrap(), spec);
        std::fs::write(&path, "{\"vmm_binary\": 3}").unwrap();
        let e = SandboxSpec::read_from(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("sandbox spec {}: ", path.display())), "{e}");
    }
}
