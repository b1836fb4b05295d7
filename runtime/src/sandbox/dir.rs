//! A sandbox's directory under the root: where its files are, the lock every command takes
//! before it reads or changes them, and the state file, written whole or not at all.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::id::SandboxId;
use super::state::SandboxState;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {0} already exists")]
    Exists(SandboxId),
    #[error("sandbox {0} does not exist")]
    NotFound(SandboxId),
    #[error("sandbox {id}: {path}: {source}")]
    Io { id: SandboxId, path: PathBuf, source: std::io::Error },
    #[error("sandbox {id}: {path}: not a sandbox state file: {source}")]
    BadState { id: SandboxId, path: PathBuf, source: serde_json::Error },
    #[error("sandbox {id}: {path} is larger than {MAX_STATE_BYTES} bytes")]
    StateTooLarge { id: SandboxId, path: PathBuf },
    #[error("sandbox {0} is still running: stop it first")]
    Running(SandboxId),
    #[error("sandbox root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
}

/// A state file is small; a bigger one is not ours.
pub const MAX_STATE_BYTES: u64 = 1 << 20;

/// Where one sandbox's files are.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    id: SandboxId,
    dir: PathBuf,
}

impl SandboxDir {
    pub fn new(root: &Path, id: &SandboxId) -> SandboxDir {
        SandboxDir { id: id.clone(), dir: root.join(id.as_str()) }
    }

    pub fn id(&self) -> &SandboxId {
        &self.id
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn vm_config(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// What the supervisor runs ([`super::SandboxSpec`]).
    pub fn spec_file(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }
    /// The supervisor's own log (its stderr).
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    pub fn vmm_stderr(&self) -> PathBuf {
        self.dir.join("vmm.stderr")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    /// The VM's shared directory (`crate::share::ShareDir`).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }
    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.dir.join("virtiofsd.sock")
    }
    pub fn virtiofsd_log(&self) -> PathBuf {
        self.dir.join("virtiofsd.log")
    }
    fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
        move |source| SandboxError::Io { id: self.id.clone(), path, source }
    }

    /// Makes the directory (the root too, private to its owner) and its first state, and
    /// returns it locked. Fails if the ID is taken.
    pub fn create(root: &Path, id: &SandboxId) -> Result<LockedSandbox, SandboxError> {
        let sandbox = SandboxDir::new(root, id);
        std::fs::create_dir_all(root).map_err(sandbox.io(root.to_path_buf()))?;
        match std::fs::create_dir(&sandbox.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(SandboxError::Exists(id.clone())),
            Err(e) => return Err(sandbox.io(sandbox.dir.clone())(e)),
        }
        std::fs::set_permissions(&sandbox.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(sandbox.io(sandbox.dir.clone()))?;
        let locked = sandbox.lock()?;
        locked.write_state(&SandboxState::new(id.as_str()))?;
        Ok(locked)
    }

    /// The sandbox `id` under `root`, locked; `NotFound` if there is none.
    pub fn open(root: &Path, id: &SandboxId) -> Result<LockedSandbox, SandboxError> {
        let sandbox = SandboxDir::new(root, id);
        if !sandbox.dir.is_dir() {
            return Err(SandboxError::NotFound(id.clone()));
        }
        sandbox.lock()
    }

    /// Waits for the sandbox's lock (every command takes it, so they do not interleave).
    fn lock(self) -> Result<LockedSandbox, SandboxError> {
        let path = self.lock_file();
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                SandboxError::NotFound(self.id.clone())
            } else {
                self.io(path.clone())(e)
            }
        })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| self.io(path)(e.into()))?;
        Ok(LockedSandbox { dir: self, _lock: lock })
    }

    /// Every sandbox ID under `root` (names that are not valid IDs are not sandboxes).
    pub fn list(root: &Path) -> std::io::Result<Vec<SandboxId>> {
        let mut ids = Vec::new();
        match std::fs::read_dir(root) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        if let Some(id) = entry.file_name().to_str().and_then(|n| SandboxId::parse(n).ok()) {
                            ids.push(id);
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids)
    }
}

/// A sandbox whose lock this process holds (released on drop).
pub struct LockedSandbox {
    dir: SandboxDir,
    _lock: Flock<File>,
}

impl std::ops::Deref for LockedSandbox {
    type Target = SandboxDir;
    fn deref(&self) -> &SandboxDir {
        &self.dir
    }
}

impl LockedSandbox {
    pub fn read_state(&self) -> Result<SandboxState, SandboxError> {
        let path = self.state_file();
        let file = File::open(&path).map_err(self.io(path.clone()))?;
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes).map_err(self.io(path.clone()))?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(SandboxError::StateTooLarge { id: self.id.clone(), path });
        }
        serde_json::from_slice(&bytes).map_err(|source| SandboxError::BadState { id: self.id.clone(), path, source })
    }

    /// Writes the state whole or not at all (a temporary file, synced, renamed over it).
    pub fn write_state(&self, state: &SandboxState) -> Result<(), SandboxError> {
        let path = self.state_file();
        let tmp = self.dir.path().join("state.json.tmp");
        let json = serde_json::to_vec_pretty(state).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(self.io(path.clone()))
    }

    /// The state brought in line with the processes ([`SandboxState::refresh`]), saved if it
    /// changed.
    pub fn current_state(&self) -> Result<SandboxState, SandboxError> {
        let mut state = self.read_state()?;
        if state.refresh(&self.exit_record()) {
            // Its supervisor died without stopping what it ran: what is left is ended here.
            self.kill_leftovers();
            self.write_state(&state)?;
        }
        Ok(state)
    }

    /// SIGKILLs this sandbox's VMM and virtiofsd processes that are still running: those named
    /// `palisade-vmm*` or `virtiofsd` whose command line names a file in this sandbox's
    /// directory. Their parent-death signals end them when a supervisor dies (for
    /// virtiofsd: `virtiofsd::tests::a_virtiofsd_whose_starter_dies_before_any_connection_ends`);
    /// this is the second line, for a process that was past its `fork` but not yet at its
    /// `prctl` when its parent died.
    pub fn kill_leftovers(&self) {
        let needle = format!("{}/", self.dir.path().display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm != "virtiofsd" && !comm.starts_with("palisade-vmm") {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).split('\0').any(|arg| arg.starts_with(&needle)) {
                tracing::info!(sandbox = %self.id.as_str(), pid, comm, "ending a process its supervisor left behind");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Removes the directory of a sandbox that is not running.
    pub fn remove(self) -> Result<(), SandboxError> {
        let state = self.current_state()?;
        if state.status == super::Status::Running {
            return Err(SandboxError::Running(self.id.clone()));
        }
        std::fs::remove_dir_all(self.dir.path()).map_err(self.io(self.dir.path().to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::state::{ProcessRef, Status};
    use std::time::{Duration, Instant};

    fn id(s: &str) -> SandboxId {
        SandboxId::parse(s).unwrap()
    }

    #[test]
    fn a_sandbox_is_created_once_found_by_id_and_removed_when_stopped() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().join("palisade");
        let created = SandboxDir::create(&root, &id("vm1")).unwrap();
        assert_eq!(created.read_state().unwrap().status, Status::Creating);
        drop(created);
        assert!(matches!(SandboxDir::create(&root, &id("vm1")), Err(SandboxError::Exists(_))));
        assert!(matches!(SandboxDir::open(&root, &id("vm2")), Err(SandboxError::NotFound(_))));
        assert_eq!(SandboxDir::list(&root).unwrap(), [id("vm1")]);

        // Running under a live supervisor: it cannot be removed.
        let mut supervisor = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let sandbox = SandboxDir::open(&root, &id("vm1")).unwrap();
        let mut state = sandbox.read_state().unwrap();
        state.status = Status::Running;
        state.supervisor = ProcessRef::of(supervisor.id());
        sandbox.write_state(&state).unwrap();
        assert!(matches!(sandbox.remove(), Err(SandboxError::Running(_))));

        // The supervisor is SIGKILLed: the next look says stopped, on disk too.
        supervisor.kill().unwrap();
        supervisor.wait().unwrap();
        let sandbox = SandboxDir::open(&root, &id("vm1")).unwrap();
        assert_eq!(sandbox.current_state().unwrap().status, Status::Stopped);
        assert_eq!(sandbox.read_state().unwrap().status, Status::Stopped);
        let dir = sandbox.path().to_path_buf();
        sandbox.remove().unwrap();
        assert!(!dir.exists());
        assert!(SandboxDir::list(&root).unwrap().is_empty());
    }

    #[test]
    fn commands_take_turns_on_a_sandbox() {
        let root = tempfile::tempdir().unwrap();
        let held = SandboxDir::create(root.path(), &id("busy")).unwrap();
        let root_path = root.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let _second = SandboxDir::open(&root_path, &id("busy")).unwrap();
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(200));
        let released = Instant::now();
        drop(held);
        assert!(waiter.join().unwrap() >= released, "the second command got the lock while the first held it");
    }

    #[test]
    fn a_broken_state_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = SandboxDir::create(root.path(), &id("b")).unwrap();
        std::fs::write(sandbox.state_file(), "{not json").unwrap();
        let e = sandbox.read_state().unwrap_err().to_string();
        assert!(e.starts_with(&format!("sandbox b: {}: not a sandbox state file", sandbox.state_file().display())), "{e}");
        std::fs::write(sandbox.state_file(), vec![b' '; MAX_STATE_BYTES as usize + 1]).unwrap();
        assert!(matches!(sandbox.read_state(), Err(SandboxError::StateTooLarge { .. })));
    }
}
