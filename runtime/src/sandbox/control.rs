//! How commands start a sandbox detached, find it again by its ID, talk to its agent, stop
//! it and remove it. None of them holds the sandbox's lock longer than one read or write:
//! the supervisor takes it too.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use palisade_protocol::{ExitStatus, ProcessSpec, Request, RootfsSpec};

use super::dir::{LockedSandbox, SandboxDir, SandboxError};
use super::id::SandboxId;
use super::spec::{SandboxSpec, SpecError};
use super::state::{SandboxState, Status};
use crate::vmrun::connect::ControlClient;
use crate::vmrun::session::{self, HostIo, Launch, SessionError, SessionSpec};
use crate::vmrun::vmm::{Vm, VmEnd};

/// How long a connection to the agent's port may take to be answered by the VMM.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting command looks at the state again.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("sandbox {id}: starting its supervisor {path}: {source}")]
    Spawn { id: SandboxId, path: PathBuf, source: std::io::Error },
    #[error("sandbox {id} did not start: {reason}")]
    DidNotStart { id: SandboxId, reason: String },
    #[error("sandbox {id}: its supervisor did not say it runs within {secs} s (see {log})")]
    StartTimeout { id: SandboxId, secs: u64, log: PathBuf },
    #[error("sandbox {0} is not running")]
    NotRunning(SandboxId),
    #[error("sandbox {id}: {source}")]
    Session { id: SandboxId, source: SessionError },
    #[error("sandbox {id}: it did not stop within {secs} s")]
    StopTimeout { id: SandboxId, secs: u64 },
}

impl ControlError {
    /// The exit code a command gives for this failure (126/127 for a command that cannot
    /// run, as vmrun's and Docker's).
    pub fn exit_code(&self) -> i32 {
        match self {
            ControlError::Session { source, .. } => source.exit_code(),
            _ => 125,
        }
    }
}

/// The sandbox's state, brought in line with its processes.
pub fn state(root: &Path, id: &SandboxId) -> Result<SandboxState, SandboxError> {
    SandboxDir::open(root, id)?.current_state()
}

/// Every sandbox under `root` with its state (one that vanished meanwhile is left out).
pub fn list(root: &Path) -> Result<Vec<SandboxState>, SandboxError> {
    let ids = SandboxDir::list(root).map_err(|source| SandboxError::Root { path: root.into(), source })?;
    let mut states = Vec::new();
    for id in ids {
        match state(root, &id) {
            Ok(s) => states.push(s),
            Err(SandboxError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(states)
}

/// How a sandbox's supervisor relates to the command that starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// In a session of its own: the sandbox outlives the command (`palisade-sandbox start`,
    /// the OCI runtime's `create`). Its stderr goes to `supervisor.log`.
    Detached,
    /// In a process group of its own (a Ctrl-C on the command's terminal is not for it) but
    /// ended with the command: it gets SIGTERM when the command dies, however it dies
    /// (vmrun). Its stderr is the command's with `inherit_stderr`, else `supervisor.log`.
    Tied { inherit_stderr: bool },
}

/// Creates sandbox `id` under `root` to run `spec`, starts `supervisor` (a binary whose
/// `--root ROOT supervise ID` runs [`super::supervisor::supervise`]) as `attachment` says,
/// and waits up to `timeout` until it says the VM runs. A detached sandbox lives on after
/// the command that called this exits.
pub fn start(
    root: &Path,
    id: &SandboxId,
    spec: &SandboxSpec,
    supervisor: &Path,
    attachment: Attachment,
    timeout: Duration,
) -> Result<SandboxState, ControlError> {
    start_in(SandboxDir::create(root, id)?, spec, supervisor, attachment, timeout)
}

/// [`start`] in a sandbox directory the caller has just created (and holds locked).
pub fn start_in(
    locked: LockedSandbox,
    spec: &SandboxSpec,
    supervisor: &Path,
    attachment: Attachment,
    timeout: Duration,
) -> Result<SandboxState, ControlError> {
    let (root, id) = (locked.path().parent().unwrap_or(Path::new("/")).to_path_buf(), locked.id().clone());
    let (root, id) = (root.as_path(), &id);
    spec.write_to(&locked.spec_file())?;
    let log_path = locked.supervisor_log();
    let spawn_error = |source| ControlError::Spawn { id: id.clone(), path: supervisor.into(), source };
    let mut cmd = Command::new(supervisor);
    cmd.arg("--root").arg(root).arg("supervise").arg(id.as_str()).stdin(Stdio::null()).stdout(Stdio::null());
    if attachment != (Attachment::Tied { inherit_stderr: true }) {
        cmd.stderr(std::fs::File::create(&log_path).map_err(spawn_error)?);
    }
    let detached = attachment == Attachment::Detached;
    if !detached {
        cmd.process_group(0);
    }
    // SAFETY: setsid, prctl and pthread_sigmask are async-signal-safe and act on the child
    // only.
    unsafe {
        cmd.pre_exec(move || {
            if detached {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::vmrun::signals::unblock_all_in_child()
        });
    }
    let mut child = cmd.spawn().map_err(spawn_error)?;
    // The supervisor takes the lock to start.
    drop(locked);
    let deadline = Instant::now() + timeout;
    loop {
        let state = self::state(root, id)?;
        match state.status {
            Status::Running => return Ok(state),
            Status::Stopped => {
                let reason = state.exit.map(|e| e.message).unwrap_or_else(|| "its supervisor ended".into());
                return Err(ControlError::DidNotStart { id: id.clone(), reason });
            }
            Status::Creating => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            let said = last_line(&log_path).map(|l| format!(": {l}")).unwrap_or_default();
            return Err(ControlError::DidNotStart { id: id.clone(), reason: format!("its supervisor exited ({status}){said}") });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ControlError::StartTimeout { id: id.clone(), secs: timeout.as_secs(), log: log_path });
        }
        std::thread::sleep(POLL);
    }
}

/// What the guest is given once it has booted ([`boot`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestSetup<'a> {
    /// Its network interfaces' configuration.
    pub network: Option<&'a palisade_protocol::NetworkSpec>,
    /// A virtio-fs tag to mount.
    pub share: Option<&'a str>,
    /// A root filesystem to mount.
    pub rootfs: Option<&'a RootfsSpec>,
}

/// Waits until the agent of running sandbox `id` answers (within `boot_timeout`), then
/// configures its network and mounts its share and root filesystem, as `setup` says.
pub fn boot(
    root: &Path,
    id: &SandboxId,
    boot_timeout: Duration,
    setup: GuestSetup<'_>,
    signals: &Receiver<i32>,
) -> Result<(), ControlError> {
    let GuestSetup { network, share, rootfs } = setup;
    let session_error = |source| ControlError::Session { id: id.clone(), source };
    let sandbox = SandboxDir::new(root, id);
    let mut vm = SandboxVm::new(root, id);
    let request_timeout = crate::vmrun::connect::request_timeout();
    let mut control =
        session::wait_for_boot(&sandbox.vsock_socket(), &mut vm, boot_timeout, request_timeout, signals).map_err(session_error)?;
    if let Some(network) = network {
        control.call_ok("configuring the network", &Request::ConfigureNetwork(network.clone())).map_err(|e| session_error(e.into()))?;
    }
    if let Some(tag) = share {
        control.call_ok("mounting the shared directory", &Request::MountShare { tag: tag.into() }).map_err(|e| session_error(e.into()))?;
    }
    if let Some(rootfs) = rootfs {
        control.call_ok("mounting the rootfs", &Request::MountRootfs(rootfs.clone())).map_err(|e| session_error(e.into()))?;
    }
    Ok(())
}

/// Runs `process` in running sandbox `id`, relaying `io` and the signals of `signals`,
/// until it exits; the sandbox runs on.
pub fn exec(root: &Path, id: &SandboxId, process: ProcessSpec, io: HostIo, signals: &Receiver<i32>) -> Result<ExitStatus, ControlError> {
    if state(root, id)?.status != Status::Running {
        return Err(ControlError::NotRunning(id.clone()));
    }
    let sandbox = SandboxDir::new(root, id);
    let spec = SessionSpec {
        share: None,
        rootfs: None,
        shutdown: false,
        launch: Launch::Process(process),
        boot_timeout: Duration::from_secs(10),
        request_timeout: crate::vmrun::connect::request_timeout(),
        quiet_warnings: vec![],
        network: None,
        host_setup: None,
    };
    let mut vm = SandboxVm::new(root, id);
    session::run_session(&sandbox.vsock_socket(), &mut vm, &spec, io, signals)
        .map_err(|source| ControlError::Session { id: id.clone(), source })
}

/// Stops sandbox `id`: asks its guest to power off, then its supervisor to end the VM
/// (SIGTERM), then kills what is left (SIGKILL), waiting up to `timeout` in all. Returns
/// its state, `stopped`.
pub fn stop(root: &Path, id: &SandboxId, timeout: Duration) -> Result<SandboxState, ControlError> {
    let first = state(root, id)?;
    if first.status != Status::Running {
        return Ok(first);
    }
    let deadline = Instant::now() + timeout;
    let wait_stopped = |until: Instant| -> Result<Option<SandboxState>, ControlError> {
        loop {
            let s = state(root, id)?;
            if s.status == Status::Stopped {
                return Ok(Some(s));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    };
    // 1. The guest powers off (the agent syncs its filesystems first).
    let socket = SandboxDir::new(root, id).vsock_socket();
    // An agent that does not answer is not waited for.
    let asked = match ControlClient::connect(&socket, HANDSHAKE_TIMEOUT, Duration::from_secs(5)) {
        Ok(mut control) => match control.call(&Request::Shutdown) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("sandbox {}: shutdown request: {e}", id.as_str());
                false
            }
        },
        Err(e) => {
            tracing::debug!("sandbox {}: the agent does not answer ({e}); stopping the VM instead", id.as_str());
            false
        }
    };
    if asked {
        let half = Instant::now() + (deadline - Instant::now()) / 2;
        if let Some(s) = wait_stopped(half)? {
            return Ok(s);
        }
    }
    // 2. The supervisor ends the VM.
    let signal = |p: Option<super::ProcessRef>, sig| {
        if let Some(p) = p.filter(|p| p.is_alive()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), sig);
        }
    };
    signal(first.supervisor, nix::sys::signal::Signal::SIGTERM);
    if let Some(s) = wait_stopped(deadline)? {
        return Ok(s);
    }
    // 3. Nothing may be left.
    for p in [first.supervisor, first.vmm, first.virtiofsd] {
        signal(p, nix::sys::signal::Signal::SIGKILL);
    }
    wait_stopped(Instant::now() + Duration::from_secs(5))?
        .ok_or_else(|| ControlError::StopTimeout { id: id.clone(), secs: timeout.as_secs() })
}

/// Removes sandbox `id`; a running one only with `force` (stopped first, within `timeout`).
pub fn delete(root: &Path, id: &SandboxId, force: bool, timeout: Duration) -> Result<(), ControlError> {
    if force {
        stop(root, id, timeout)?;
    }
    SandboxDir::open(root, id)?.remove()?;
    Ok(())
}

/// A detached sandbox's VM as a session sees it: it has ended once the state says so.
pub struct SandboxVm {
    root: PathBuf,
    id: SandboxId,
}

impl SandboxVm {
    pub fn new(root: &Path, id: &SandboxId) -> SandboxVm {
        SandboxVm { root: root.into(), id: id.clone() }
    }
}

/// How a stopped sandbox's VM ended, as a session reports it.
fn end_of(s: SandboxState) -> VmEnd {
    let clean = s.exit.as_ref().is_some_and(|e| e.clean);
    let reason = s.end_reason.or_else(|| s.exit.map(|e| e.message)).unwrap_or_else(|| "the sandbox stopped".into());
    VmEnd { clean, reason }
}

impl Vm for SandboxVm {
    fn poll_end(&mut self) -> Option<VmEnd> {
        match state(&self.root, &self.id) {
            Ok(s) if s.status == Status::Stopped => Some(end_of(s)),
            Ok(_) => None,
            Err(e) => Some(VmEnd { clean: false, reason: e.to_string() }),
        }
    }

    fn pid(&self) -> Option<u32> {
        state(&self.root, &self.id).ok()?.vmm.map(|p| p.pid)
    }

    fn last_console_line(&self) -> Option<String> {
        let serial = crate::vmrun::vmm::read_tail(&SandboxDir::new(&self.root, &self.id).serial_log(), 4096).ok()?;
        let text = String::from_utf8_lossy(&serial).into_owned();
        let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty())?;
        Some(crate::vmrun::guest_text::sanitize(line).chars().take(200).collect())
    }

    fn finish(&mut self, timeout: Duration) -> VmEnd {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(end) = self.poll_end() {
                return end;
            }
            std::thread::sleep(POLL);
        }
        match stop(&self.root, &self.id, Duration::from_secs(10)) {
            Ok(s) => end_of(s),
            Err(e) => VmEnd { clean: false, reason: e.to_string() },
        }
    }
}

/// The last non-empty line of a (bounded) log.
fn last_line(path: &Path) -> Option<String> {
    let tail = crate::vmrun::vmm::read_tail(path, 16 * 1024).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty())?;
    Some(crate::vmrun::guest_text::sanitize(line).chars().take(300).collect())
}
