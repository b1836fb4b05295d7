//! `run`: `create`, `start`, and (unless `--detach`) waiting for the container's process,
//! exiting with its status, then deleting the container (unless `--keep`), as `runc run`.

use std::sync::mpsc::Receiver;

use super::create::{create, CreateOptions};
use super::lifecycle::{delete, start};
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
    let monitor = ContainerDir::open(o.root, o.id)?.read_record()?.monitor;
    let code = match monitor {
        // The monitor is our child (create started it): its status is the container's.
        // Signals to `run` are for the container: its monitor passes them on.
        Some(m) => wait_forwarding(m.pid, signals).map_err(RuntimeError::Other)?,
        None => 255,
    };
    if !keep {
        delete(o.root, o.id, true)?;
    }
    Ok(code)
}
