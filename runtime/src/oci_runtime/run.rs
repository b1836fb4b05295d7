//! `run`: `create`, `start`, and (unless `--detach`) waiting for the container's process,
//! exiting with its status, then deleting the container (unless `--keep`), as `runc run`.

use std::sync::mpsc::Receiver;

use super::create::{create, CreateOptions};
use super::lifecycle::{delete, start};
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
        Some(m) => loop {
            let pid = nix::unistd::Pid::from_raw(m.pid as i32);
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(RuntimeError::Other(format!("waiting for the container's monitor: {e}"))),
            }
            while let Ok(sig) = signals.try_recv() {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        },
        None => 255,
    };
    if !keep {
        delete(o.root, o.id, true)?;
    }
    Ok(code)
}
