//! A sandbox's supervisor: the detached host process (its own session) that holds one VM.
//! It starts the VM's virtiofsd (with the shared directory's binds) and its VMM, says
//! `running` in `state.json`, waits for the VM to end or for a signal to end it, stops
//! virtiofsd, and says `stopped` with how the VM ended.
//!
//! Its children get SIGTERM when it dies (`PR_SET_PDEATHSIG`): a SIGKILLed supervisor leaves
//! no VMM or virtiofsd behind, and `state.json` is then brought in line by the next command
//! that reads it ([`super::SandboxState::refresh`]).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use palisade_vmm::{ExitRecord, FsConfig, SerialConfig, VsockConfig};

use super::dir::{LockedSandbox, SandboxDir, SandboxError};
use super::id::SandboxId;
use super::spec::{SandboxSpec, SpecError};
use super::state::{now_unix_ms, ProcessRef, Status};
use crate::share::{self, ShareDir, ShareError, SharePlan};
use crate::virtiofsd::{Bind, Virtiofsd, VirtiofsdConfig, VirtiofsdError};
use crate::vmrun::vmm::{Vm, VmmError, VmmFiles, VmmProcess};

/// The guest's vsock CID in every sandbox.
pub const GUEST_CID: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("sandbox {0}: already started (its state is not `creating`)")]
    AlreadyStarted(SandboxId),
    #[error("sandbox {id}: it shares files but its spec names no virtiofsd")]
    NoVirtiofsd { id: SandboxId },
    #[error("sandbox {id}: {source}")]
    Share { id: SandboxId, source: ShareError },
    #[error("sandbox {id}: {source}")]
    Virtiofsd { id: SandboxId, source: VirtiofsdError },
    #[error("sandbox {id}: {source}")]
    Vmm { id: SandboxId, source: VmmError },
}

/// What runs for one sandbox, dropped in reverse: the VMM first, then virtiofsd, then the
/// shared directory's placeholders.
struct Running {
    _share: Option<ShareDir>,
    virtiofsd: Option<Virtiofsd>,
    vmm: VmmProcess,
}

/// Runs sandbox `id` under `root` until its VM ends or a signal from `signals` asks to end
/// it. The sandbox must exist, in state `creating`, with its `sandbox.json`.
pub fn supervise(root: &Path, id: &SandboxId, signals: &Receiver<i32>) -> Result<(), SupervisorError> {
    let locked = SandboxDir::open(root, id)?;
    let mut state = locked.read_state()?;
    if state.status != Status::Creating {
        return Err(SupervisorError::AlreadyStarted(id.clone()));
    }
    let started = SandboxSpec::read_from(&locked.spec_file()).map_err(SupervisorError::from).and_then(|spec| start(&locked, &spec));
    let mut running = match started {
        Ok(running) => running,
        Err(e) => {
            state.status = Status::Stopped;
            state.stopped_unix_ms = Some(now_unix_ms());
            state.exit = Some(ExitRecord::vmm_error(format!("the sandbox did not start: {e}")));
            locked.write_state(&state)?;
            return Err(e);
        }
    };
    state.status = Status::Running;
    state.supervisor = ProcessRef::of(std::process::id());
    // Our parent, which started us (an ephemeral sandbox lives as long as it does).
    state.starter = ProcessRef::of(std::os::unix::process::parent_id());
    state.vmm = running.vmm.pid().and_then(ProcessRef::of);
    state.virtiofsd = running.virtiofsd.as_ref().and_then(|v| ProcessRef::of(v.pid()));
    state.started_unix_ms = Some(now_unix_ms());
    locked.write_state(&state)?;
    tracing::info!(sandbox = %id.as_str(), "running");
    // Other commands (exec, state, stop) take the lock while the VM runs.
    drop(locked);

    let (end, asked) = loop {
        if let Some(end) = running.vmm.poll_end() {
            break (end, None);
        }
        match signals.recv_timeout(Duration::from_millis(50)) {
            Ok(signal) => {
                tracing::info!(sandbox = %id.as_str(), signal, "asked to stop: ending the VM");
                break (running.vmm.terminate(), Some(signal));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let status = running.vmm.exit_status();
    // Nothing of the VM is left once the state says so.
    drop(running);

    let locked = SandboxDir::open(root, id)?;
    let mut state = locked.read_state()?;
    let starter = state.starter;
    state.status = Status::Stopped;
    state.end_reason = Some(end.reason.clone());
    state.stopped_unix_ms = Some(now_unix_ms());
    state.exit = Some(ExitRecord::read_from(&locked.exit_record()).unwrap_or_else(|_| {
        // No record: the VMM was killed before it could write one.
        match (status.and_then(|s| s.signal()), asked) {
            (Some(signal), asked) => ExitRecord::signalled(signal, asked.is_some(), format!("palisade-vmm was killed by signal {signal}")),
            (None, _) => ExitRecord::vmm_error(end.reason.clone()),
        }
    }));
    locked.write_state(&state)?;
    tracing::info!(sandbox = %id.as_str(), reason = %end.reason, "stopped");
    let spec = SandboxSpec::read_from(&locked.spec_file()).ok();
    if spec.as_ref().is_some_and(|s| s.ephemeral) && !starter.is_some_and(|s| s.is_alive()) {
        // Its command is gone (vmrun was killed): nobody else will remove it.
        locked.remove()?;
        if spec.is_some_and(|s| s.remove_empty_root) {
            // Only succeeds when empty: no other sandbox is in it.
            let _ = std::fs::remove_dir(root);
        }
    }
    Ok(())
}

/// Starts virtiofsd (when anything is shared) and the VMM, with every file in the
/// sandbox's directory.
fn start(locked: &LockedSandbox, spec: &SandboxSpec) -> Result<Running, SupervisorError> {
    let id = locked.id().clone();
    let mut vm = spec.vm.clone();
    vm.vsock = Some(VsockConfig { guest_cid: GUEST_CID, uds_path: locked.vsock_socket() });
    vm.serial = if spec.console {
        SerialConfig { to_stderr: true, ..SerialConfig::none() }
    } else {
        SerialConfig { log_file: Some(locked.serial_log()), ..SerialConfig::none() }
    };
    vm.fs.clear();

    let mut plan = SharePlan::default();
    for shared in &spec.shared {
        plan.add(&shared.host, shared.path.clone(), shared.read_only)
            .map_err(|source| SupervisorError::Share { id: id.clone(), source })?;
    }
    let (share, virtiofsd) = if plan.is_empty() {
        (None, None)
    } else {
        let binary = spec.virtiofsd_binary.as_ref().ok_or_else(|| SupervisorError::NoVirtiofsd { id: id.clone() })?;
        let dir = ShareDir::create(&locked.share_dir(), &plan).map_err(|source| SupervisorError::Share { id: id.clone(), source })?;
        let mut config = VirtiofsdConfig::new(binary, dir.path(), locked.virtiofsd_socket());
        config.log = Some(locked.virtiofsd_log());
        config.cache = spec.virtiofsd.cache;
        config.thread_pool_size = spec.virtiofsd.thread_pool_size;
        config.binds =
            plan.entries.iter().map(|e| Bind { source: e.host.clone(), target: dir.target(e), read_only: e.read_only }).collect();
        let fsd = Virtiofsd::spawn(&config).map_err(|source| SupervisorError::Virtiofsd { id: id.clone(), source })?;
        vm.fs.push(FsConfig { tag: share::TAG.into(), socket: locked.virtiofsd_socket() });
        (Some(dir), Some(fsd))
    };
    let (config_file, exit_record, stderr_file) = (locked.vm_config(), locked.exit_record(), locked.vmm_stderr());
    // virtiofsd works for the guest: it goes into the VM's cgroup, held to the VM's limits.
    let companions: Vec<u32> = virtiofsd.iter().map(Virtiofsd::pid).collect();
    let files = VmmFiles {
        config_file: &config_file,
        exit_record: &exit_record,
        stderr_file: (!spec.console).then_some(stderr_file.as_path()),
        cgroup_parent: spec.cgroup_parent.as_deref(),
        cgroup_companions: &companions,
    };
    let vmm = VmmProcess::start(&spec.vmm_binary, &vm, &files).map_err(|source| SupervisorError::Vmm { id: id.clone(), source })?;
    Ok(Running { _share: share, virtiofsd, vmm })
}
