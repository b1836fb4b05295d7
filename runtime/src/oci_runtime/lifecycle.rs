//! `start`, `kill`, `pause`, `resume` and `delete`: what changes a container after `create`.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade_protocol::{Request, Response};

use super::create::sandbox_root;
use super::hooks::Point;
use super::query::hook_state;
use super::signal::parse_signal;
use super::store::{ContainerDir, ContainerRecord, LockedContainer, Recorded, Status, StoreError};
use super::RuntimeError;
use crate::sandbox::{control, SandboxDir, SandboxId, Status as SandboxStatus};
use crate::vmrun::connect::{request_timeout, ControlClient};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `delete --force` waits for a killed container's monitor to end.
const KILL_WAIT: Duration = Duration::from_secs(10);

pub(super) fn agent(root: &Path, record: &ContainerRecord) -> Result<ControlClient, RuntimeError> {
    let sandbox = record.sandbox_id().ok_or_else(|| RuntimeError::Other(format!("container {}: bad sandbox name", record.id)))?;
    let socket = SandboxDir::new(&sandbox_root(root), &sandbox).vsock_socket();
    ControlClient::connect_ready(&socket, HANDSHAKE_TIMEOUT, request_timeout())
        .map_err(|e| RuntimeError::Other(format!("container {}: its VM's agent: {e}", record.id)))
}

pub(super) fn refused(id: &str, what: &str, response: Response) -> RuntimeError {
    match response {
        Response::Error { message } => {
            RuntimeError::Guest(message.strip_prefix(&format!("container {id}: ")).map(str::to_string).unwrap_or(message))
        }
        other => RuntimeError::Other(format!("container {id}: the agent answered {what} with {other:?}")),
    }
}

/// How sandbox `id`'s VM ended, once its supervisor has recorded that (it does as soon as
/// the VMM is reaped; waited for up to 3 s); `None` while it runs.
pub(super) fn vm_end(sandbox_root: &Path, id: &SandboxId) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match control::state(sandbox_root, id) {
            Ok(s) if s.status == SandboxStatus::Stopped => {
                return Some(s.end_reason.or_else(|| s.exit.map(|x| x.message)).unwrap_or_else(|| "its supervisor is gone".into()));
            }
            Ok(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return None,
        }
    }
}

/// How sandbox `id`'s VM ended, if its VMM has ended; `None` at once while the VMM runs.
pub(super) fn vm_end_if_ended(sandbox_root: &Path, id: &SandboxId) -> Option<String> {
    let state = control::state(sandbox_root, id).ok()?;
    let ended = state.status == SandboxStatus::Stopped || state.vmm.is_some_and(|vmm| !vmm.is_alive());
    ended.then(|| vm_end(sandbox_root, id)).flatten()
}

/// `start ID`: releases the container's exec barrier.
pub fn start(root: &Path, id: &str) -> Result<(), RuntimeError> {
    let locked = ContainerDir::open(root, id)?;
    let mut record = locked.read_record()?;
    match record.status() {
        Status::Created => {}
        Status::Stopped => return Err(RuntimeError::State("cannot start a container that has stopped".into())),
        Status::Running => return Err(RuntimeError::State("cannot start an already running container".into())),
        Status::Paused => return Err(RuntimeError::State("cannot start a paused container".into())),
        Status::Creating => return Err(RuntimeError::State(format!("cannot start a container in the creating state: {id}"))),
    }
    if let Err(e) = record.hooks.run(&[Point::StartContainer], &hook_state(&record, Status::Created)) {
        // The container does not run: it is stopped (killed), and `delete` removes it.
        let _ = send(root, &record, libc::SIGKILL, true);
        return Err(RuntimeError::Other(e));
    }
    match agent(root, &record)?.call(&Request::StartContainer { id: id.into() }) {
        Ok(Response::Started { .. }) => {}
        Ok(other) => return Err(refused(id, "start-container", other)),
        Err(e) => {
            // A guest that died meanwhile (a triple fault, a panic) is what failed: say so.
            let ended = record.sandbox_id().and_then(|s| vm_end(&sandbox_root(root), &s));
            return Err(RuntimeError::Other(match ended {
                Some(reason) => format!("container {id}: start: the VM ended before the container started: {reason} ({e})"),
                None => format!("container {id}: start: {e}"),
            }));
        }
    }
    record.recorded = Recorded::Running;
    locked.write_record(&record)?;
    record.hooks.run_warning(Point::Poststart, &hook_state(&record, Status::Running), id);
    Ok(())
}

/// `kill ID [SIGNAL]` (`--all`: every process of the container).
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
    let signal = parse_signal(signal)?;
    let locked = ContainerDir::open(root, id)?;
    let record = locked.read_record()?;
    if !matches!(record.status(), Status::Created | Status::Running | Status::Paused) {
        return Err(RuntimeError::State("container not running".into()));
    }
    match send(root, &record, signal, all) {
        // SIGKILL cannot be refused. A container with a VM of its own whose agent cannot be
        // reached (the guest hung, or the emulator lost it) ends with its monitor, as
        // `delete --force` ends it: the caller sees it stopped (137), and `delete` removes the
        // VM and every process in it. (A pod member's VM is its pod's: it stays.)
        Err(e) if signal == libc::SIGKILL && record.owns_sandbox && !matches!(e, RuntimeError::Guest(_)) => {
            tracing::warn!("container {id}: SIGKILL: {e}; ending its monitor, and with it the container");
            end_monitor(&record);
            Ok(())
        }
        result => result,
    }
}

/// `pause ID`: freezes every process of a running container.
pub fn pause(root: &Path, id: &str) -> Result<(), RuntimeError> {
    set_frozen(root, id, true)
}

/// `resume ID`: thaws a paused container.
pub fn resume(root: &Path, id: &str) -> Result<(), RuntimeError> {
    set_frozen(root, id, false)
}

fn set_frozen(root: &Path, id: &str, frozen: bool) -> Result<(), RuntimeError> {
    let locked = ContainerDir::open(root, id)?;
    let mut record = locked.read_record()?;
    match (record.status(), frozen) {
        (Status::Running, true) | (Status::Paused, false) => {}
        (_, true) => return Err(RuntimeError::State("container not running".into())),
        (_, false) => return Err(RuntimeError::State("container not paused".into())),
    }
    match agent(root, &record)?.call(&Request::Freeze { id: id.into(), frozen }) {
        Ok(Response::Ok) => {}
        Ok(other) => return Err(refused(id, "freeze", other)),
        Err(e) => return Err(RuntimeError::Other(format!("container {id}: freeze: {e}"))),
    }
    record.recorded = if frozen { Recorded::Paused } else { Recorded::Running };
    locked.write_record(&record)?;
    Ok(())
}

fn send(root: &Path, record: &ContainerRecord, signal: i32, all: bool) -> Result<(), RuntimeError> {
    match agent(root, record)?.call(&Request::Signal { id: record.id.clone(), signal, all }) {
        Ok(Response::Ok) => Ok(()),
        Ok(other) => Err(refused(&record.id, "signal", other)),
        Err(e) => Err(RuntimeError::Other(format!("container {}: signal: {e}", record.id))),
    }
}

/// `delete [--force] ID`: removes a stopped (or created) container and its VM; a running
/// one only with `force`, which kills it first. `--force` of an unknown ID succeeds.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), RuntimeError> {
    let locked = match ContainerDir::open(root, id) {
        Ok(l) => l,
        Err(StoreError::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let record = match locked.read_record() {
        Ok(r) => r,
        // `create` died before it wrote its record: only its own files are left (anything
        // else in the directory is not a container's, and stays).
        Err(StoreError::NotFound(_)) if only_container_files(locked.path()) => return Ok(locked.remove()?),
        Err(e) => return Err(e.into()),
    };
    match record.status() {
        Status::Stopped => {}
        Status::Created | Status::Creating => kill_and_wait(root, &record),
        Status::Running | Status::Paused if force => kill_and_wait(root, &record),
        status => {
            return Err(RuntimeError::State(format!("cannot delete container {id} that is not stopped: {}", status.name())));
        }
    }
    remove(root, locked, &record)
}

fn only_container_files(dir: &Path) -> bool {
    let known = ["lock", "monitor.json", "monitor.log", "exit.json", "exec"];
    std::fs::read_dir(dir).is_ok_and(|entries| entries.flatten().all(|e| known.contains(&e.file_name().to_string_lossy().as_ref())))
}

fn kill_and_wait(root: &Path, record: &ContainerRecord) {
    if let Err(e) = send(root, record, libc::SIGKILL, true) {
        tracing::info!("container {}: SIGKILL: {e}; ending its VM instead", record.id);
    }
    let deadline = Instant::now() + KILL_WAIT;
    while record.monitor.is_some_and(|m| m.is_alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    end_monitor(record);
}

/// SIGKILLs the container's monitor, if it still runs (the container then counts as
/// stopped: [`ContainerRecord::status`]).
fn end_monitor(record: &ContainerRecord) {
    if let Some(m) = record.monitor.filter(|m| m.is_alive()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Removes the container's sandbox (when it is its own; a pod member gives back what it
/// holds in its pod's VM), host cgroup and directory.
fn remove(root: &Path, locked: LockedContainer, record: &ContainerRecord) -> Result<(), RuntimeError> {
    if let (true, Some(sandbox)) = (record.owns_sandbox, record.sandbox_id()) {
        let sroot = sandbox_root(root);
        match control::delete(&sroot, &sandbox, true, Duration::from_secs(30)) {
            Ok(()) | Err(control::ControlError::Sandbox(crate::sandbox::SandboxError::NotFound(_))) => {}
            Err(e) => return Err(RuntimeError::Other(format!("container {}: removing its VM: {e}", record.id))),
        }
        // Only when empty: other containers' sandboxes stay.
        let _ = std::fs::remove_dir(&sroot);
    }
    if let Some(member) = &record.pod {
        super::pod::leave_after(root, record, member);
    }
    if let Some(network) = &record.network {
        network.disconnect();
    }
    if let Some(cgroup) = &record.host_cgroup {
        // What is left in it (a process the caller moved there) keeps it; the container
        // is gone all the same.
        if let Err(e) = cgroup.remove() {
            tracing::warn!("container {}: {e}", record.id);
        }
    }
    let stopped = hook_state(record, Status::Stopped);
    locked.remove()?;
    record.hooks.run_warning(Point::Poststop, &stopped, &record.id);
    Ok(())
}
