//! Containers on disk: `<root>/<id>/`, its lock, and `container.json`, written whole or not
//! at all. Every command takes the container's lock before it reads or changes it, so
//! concurrent commands on one ID take turns.
//!
//! ```text
//! <root>/<id>/
//!   lock             flock'ed by every command on the container
//!   container.json   [`ContainerRecord`]
//!   monitor.json     what its monitor runs ([`super::monitor::MonitorRequest`])
//!   monitor.log      the monitor's own log (its stdio is the container's)
//!   exit.json        the container process's end, written by its monitor
//!   exec/<exec>.json what the monitor of an exec'd process runs, and its log (.log),
//!                    removed when that process ends
//! <root>/@vm/<sandbox>/   the sandboxes (VMs) of the containers ([`crate::sandbox`])
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use palisade_protocol::ExitStatus;
use serde::{Deserialize, Serialize};

use crate::sandbox::{ProcessRef, SandboxId};

/// Where the sandboxes live under the root: a name no container ID can have.
pub const SANDBOX_DIR: &str = "@vm";
/// The largest file of ours that is read back.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container does not exist: {0}")]
    NotFound(String),
    #[error("container {id}: {path}: {source}")]
    Io { id: String, path: PathBuf, source: std::io::Error },
    #[error("container {id}: {path}: not a container record: {source}")]
    Bad { id: String, path: PathBuf, source: serde_json::Error },
    #[error("root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
}

/// What the container's last command left it as; the live status also looks at its
/// monitor ([`ContainerRecord::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recorded {
    /// `create` has not finished.
    Creating,
    Created,
    Running,
    /// Frozen by `pause` (its cgroup in the guest).
    Paused,
}

/// OCI status as `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// `container.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRecord {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub created_unix_ns: u128,
    pub recorded: Recorded,
    /// The host process callers wait on (the PID of `--pid-file`).
    #[serde(default)]
    pub monitor: Option<ProcessRef>,
    /// The container's init as the guest sees it.
    #[serde(default)]
    pub guest_pid: Option<u32>,
    /// The sandbox (VM) the container runs in, under `<root>/@vm`.
    pub sandbox: String,
    /// The sandbox was made for this container and goes with it.
    pub owns_sandbox: bool,
    /// The container's cgroup on the host (its monitor's), removed with it.
    #[serde(default)]
    pub host_cgroup: Option<super::host_cgroup::HostCgroup>,
    /// A container that joined a pod's VM: what it holds there.
    #[serde(default)]
    pub pod: Option<super::pod::PodMember>,
    /// The caller's network namespace, whose interfaces lead into the VM.
    #[serde(default)]
    pub network: Option<super::network::PodNetwork>,
    /// Its OCI hooks (run on the host: [`super::hooks`]).
    #[serde(default, skip_serializing_if = "super::hooks::Hooks::is_empty")]
    pub hooks: super::hooks::Hooks,
}

impl ContainerRecord {
    /// The status, from the record and the monitor: a container whose monitor is gone
    /// has stopped, whatever the record says (its monitor was SIGKILLed, or its VM ended).
    pub fn status(&self) -> Status {
        let alive = self.monitor.is_some_and(|m| m.is_alive());
        match self.recorded {
            Recorded::Creating if self.monitor.is_none() => Status::Creating,
            _ if !alive => Status::Stopped,
            Recorded::Creating => Status::Creating,
            Recorded::Created => Status::Created,
            Recorded::Running => Status::Running,
            Recorded::Paused => Status::Paused,
        }
    }

    pub fn sandbox_id(&self) -> Option<SandboxId> {
        SandboxId::parse(&self.sandbox).ok()
    }
}

/// A container's directory.
pub struct ContainerDir {
    id: String,
    dir: PathBuf,
}

impl ContainerDir {
    pub fn new(root: &Path, id: &str) -> ContainerDir {
        ContainerDir { id: id.into(), dir: root.join(id) }
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn record_file(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    pub fn monitor_request(&self) -> PathBuf {
        self.dir.join("monitor.json")
    }
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join("monitor.log")
    }
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// Where the monitors of exec'd processes keep their request and log while they run.
    pub fn exec_dir(&self) -> PathBuf {
        self.dir.join("exec")
    }
    pub fn exec_request(&self, exec: &str) -> PathBuf {
        self.exec_dir().join(format!("{exec}.json"))
    }
    pub fn exec_log(&self, exec: &str) -> PathBuf {
        self.exec_dir().join(format!("{exec}.log"))
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io { id: self.id.clone(), path, source }
    }

    /// Makes the directory (and the root, private to its owner), locked. Fails if the ID
    /// is taken.
    pub fn create(root: &Path, id: &str) -> Result<LockedContainer, StoreError> {
        let c = ContainerDir::new(root, id);
        std::fs::create_dir_all(root).map_err(|source| StoreError::Root { path: root.into(), source })?;
        match std::fs::create_dir(&c.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(StoreError::Exists(id.into())),
            Err(e) => return Err(c.io(c.dir.clone())(e)),
        }
        std::fs::set_permissions(&c.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(c.io(c.dir.clone()))?;
        c.lock()
    }

    /// Container `id`, locked; `NotFound` if there is none.
    pub fn open(root: &Path, id: &str) -> Result<LockedContainer, StoreError> {
        let c = ContainerDir::new(root, id);
        if crate::sandbox::SandboxId::parse(id).is_err() || !c.dir.is_dir() {
            return Err(StoreError::NotFound(id.into()));
        }
        c.lock()
    }

    fn lock(self) -> Result<LockedContainer, StoreError> {
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                StoreError::NotFound(self.id.clone())
            } else {
                self.io(path.clone())(e)
            }
        })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| self.io(path)(e.into()))?;
        Ok(LockedContainer { dir: self, _lock: lock })
    }

    /// Every container ID under `root`, sorted.
    pub fn list(root: &Path) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        match std::fs::read_dir(root) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if entry.file_type().is_ok_and(|t| t.is_dir()) && SandboxId::parse(&name).is_ok() {
                        ids.push(name);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Root { path: root.into(), source }),
        }
        ids.sort();
        Ok(ids)
    }
}

/// A container whose lock this process holds (released on drop).
pub struct LockedContainer {
    dir: ContainerDir,
    _lock: Flock<File>,
}

impl std::ops::Deref for LockedContainer {
    type Target = ContainerDir;
    fn deref(&self) -> &ContainerDir {
        &self.dir
    }
}

impl LockedContainer {
    pub fn read_record(&self) -> Result<ContainerRecord, StoreError> {
        let path = self.record_file();
        match read_json(&path) {
            Ok(r) => Ok(r),
            // A directory without a record: `create` died before writing it.
            Err(JsonError::Io(e)) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound(self.id.clone())),
            Err(JsonError::Io(source)) => Err(StoreError::Io { id: self.id.clone(), path, source }),
            Err(JsonError::Parse(source)) => Err(StoreError::Bad { id: self.id.clone(), path, source }),
        }
    }

    pub fn write_record(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        let path = self.record_file();
        write_json_atomic(&path, record).map_err(self.io(path.clone()))
    }

    /// How the container's process ended, once its monitor has said so.
    pub fn read_exit(&self) -> Option<ExitStatus> {
        read_json(&self.exit_file()).ok()
    }

    /// Removes the directory.
    pub fn remove(self) -> Result<(), StoreError> {
        std::fs::remove_dir_all(self.dir.path()).map_err(self.io(self.dir.path().to_path_buf()))
    }
}

#[derive(Debug)]
pub enum JsonError {
    Io(std::io::Error),
    Parse(serde_json::Error),
}

/// Reads a JSON file of ours (bounded: a damaged one is an error, not an allocation).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, JsonError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)).map_err(JsonError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(JsonError::Io(std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes"))));
    }
    serde_json::from_slice(&bytes).map_err(JsonError::Parse)
}

/// Writes `bytes` to `path` whole or not at all: a temporary file beside it, synced, renamed
/// over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            annotations: BTreeMap::new(),
            created_unix_ns: 1,
            recorded: Recorded::Creating,
            monitor: None,
            guest_pid: None,
            sandbox: "s".into(),
            owns_sandbox: true,
            host_cgroup: None,
            pod: None,
            network: None,
            hooks: Default::default(),
        }
    }

    #[test]
    fn a_container_is_created_once_and_its_status_follows_its_monitor() {
        let root = tempfile::tempdir().unwrap();
        let c = ContainerDir::create(root.path(), "c1").unwrap();
        let mut r = record("c1");
        c.write_record(&r).unwrap();
        assert_eq!(c.read_record().unwrap(), r);
        assert_eq!(r.status(), Status::Creating);
        drop(c);
        assert!(matches!(ContainerDir::create(root.path(), "c1"), Err(StoreError::Exists(_))));
        assert_eq!(ContainerDir::create(root.path(), "c1").err().unwrap().to_string(), "container with id exists: c1");
        assert!(matches!(ContainerDir::open(root.path(), "nope"), Err(StoreError::NotFound(_))));
        assert!(matches!(ContainerDir::open(root.path(), "../etc"), Err(StoreError::NotFound(_))));
        std::fs::create_dir_all(root.path().join(SANDBOX_DIR)).unwrap();
        assert_eq!(ContainerDir::list(root.path()).unwrap(), ["c1"]);

        let mut monitor = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        r.monitor = ProcessRef::of(monitor.id());
        r.recorded = Recorded::Running;
        assert_eq!(r.status(), Status::Running);
        monitor.kill().unwrap();
        monitor.wait().unwrap();
        assert_eq!(r.status(), Status::Stopped, "a SIGKILLed monitor is a stopped container");
        let c = ContainerDir::open(root.path(), "c1").unwrap();
        std::fs::write(c.record_file(), "{").unwrap();
        assert!(c.read_record().unwrap_err().to_string().contains("not a container record"));
        c.remove().unwrap();
        assert!(ContainerDir::list(root.path()).unwrap().is_empty());
    }
}
