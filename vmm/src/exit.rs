//! How the parts of a running VM (vCPU threads, devices, the event loop) agree that it is
//! over and why.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::config::VmExit;

/// The shared "this VM is ending" state: the first reason given wins, and the eventfd wakes
/// the event loop.
pub struct ExitSignal {
    stopping: AtomicBool,
    reason: Mutex<Option<VmExit>>,
    panic: Mutex<Option<(String, Instant)>>,
    evt: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ExitSignal {
    pub fn new() -> io::Result<Self> {
        Ok(ExitSignal {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            panic: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Asks for the VM to stop because of `exit` (ignored if a reason was already given).
    pub fn request(&self, exit: VmExit) {
        let mut reason = lock(&self.reason);
        if reason.is_none() {
            tracing::debug!(%exit, "VM exit requested");
            *reason = Some(exit);
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("waking the event loop for the VM exit: {e}");
        }
    }

    /// Whether the VM is stopping (vCPU threads poll this between runs).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Records a kernel panic line seen on the console (the first one wins).
    pub fn record_panic(&self, line: String) {
        let mut panic = lock(&self.panic);
        if panic.is_none() {
            tracing::debug!(%line, "guest kernel panic seen on the console");
            *panic = Some((line, Instant::now()));
        }
    }

    /// How long ago a kernel panic was seen, if one was.
    pub fn panic_age(&self) -> Option<Duration> {
        lock(&self.panic).as_ref().map(|(_, at)| at.elapsed())
    }

    /// Why the VM stopped: a panic seen on the console explains whatever came after it
    /// (the reset `panic=-1` causes, a triple fault, a hang).
    pub fn outcome(&self) -> Option<VmExit> {
        let reason = lock(&self.reason).clone()?;
        match lock(&self.panic).as_ref() {
            Some((line, _)) => Some(VmExit::Panic { message: line.clone() }),
            None => Some(reason),
        }
    }

    /// Becomes readable when an exit is requested.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_a_panic_explains_the_reset() {
        let exit = ExitSignal::new().unwrap();
        assert!(!exit.is_stopping());
        assert_eq!(exit.outcome(), None);
        exit.request(VmExit::TripleFault { vcpu: 1 });
        exit.request(VmExit::Reset);
        assert!(exit.is_stopping());
        assert_eq!(exit.outcome(), Some(VmExit::TripleFault { vcpu: 1 }));
        assert_eq!(exit.evt().read().unwrap(), 2);

        let exit = ExitSignal::new().unwrap();
        exit.record_panic("Kernel panic - not syncing: Attempted to kill init!".into());
        exit.record_panic("Kernel panic - not syncing: second".into());
        exit.request(VmExit::Reset);
        assert_eq!(exit.outcome(), Some(VmExit::Panic { message: "Kernel panic - not syncing: Attempted to kill init!".into() }));
    }
}
