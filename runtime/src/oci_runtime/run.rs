//! `run`: `create`, `start`, and (unless `--detach`) waiting for the container's process,
//! exiting with its status, then deleting the container (unless `--keep`), as `runc run`.

use std::sync::mpsc::Receiver;

use super::create::{create, sandbox_root, CreateOptions};
use super::lifecycle::{delete, start, vm_end_if_ended};
use super::monitor::wait_forwarding;
use super::store::ContainerDir;
use super::RuntimeError;

/// Runs `run`; returns the exit code of the command.
pub fn run(o: &CreateOptions<'_>, detach: bool, keep: bool, signals: &Receiver<i32>) -> Result<i32, RuntimeError> {
    create(o, signals)?;
    if let Err(e) = start(o.root, o.id) {
        let _ = delete(o.root, o.id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let record = ContainerDir::open(o.root, o.id)?.read_record()?;
    let code = match &record.monitor {
        // The monitor is our child (create started it): its status is the container's.
        // Signals to `run` are for the container: its monitor passes them on.
        Some(m) => wait_forwarding(m.pid, signals).map_err(RuntimeError::Other)?,
        None => 255,
    };
    // A process that ended with its VM is reported killed (137), as the VM's end killed it:
    // say how the VM ended, which the status alone does not (a process SIGKILLed in a VM that
    // still runs is what 137 usually means, and costs a look at the sandbox's state).
    if code == 128 + libc::SIGKILL && record.owns_sandbox {
        if let Some(reason) = record.sandbox_id().and_then(|s| vm_end_if_ended(&sandbox_root(o.root), &s)) {
            tracing::warn!("container {}: its VM ended ({reason}), and its process with it: exit status 137", o.id);
        }
    }
    if !keep {
        delete(o.root, o.id, true)?;
    }
    Ok(code)
}
