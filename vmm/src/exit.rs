//! How the parts of a running VM (vCPU threads, devices, the event loop) agree that it is
//! over and why.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::config::VmExit;

/// The shared "this VM is ending" state: the first reason given wins, and the eventfd wakes
/// the event loop.
pub struct ExitSignal {
    stopping: AtomicBool,
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ExitSignal {
    pub fn new() -> io::Result<Self> {
        Ok(ExitSignal { stopping: AtomicBool::new(false), reason: Mutex::new(None), evt: EventFd::new(libc::EFD_NONBLOCK)? })
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

    /// Why the VM stopped: what the VMM itself saw (a reset, a triple fault, a KVM error),
    /// never what the guest printed — console text is the guest's to choose.
    pub fn outcome(&self) -> Option<VmExit> {
        lock(&self.reason).clone()
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
    fn first_reason_wins() {
        let exit = ExitSignal::new().unwrap();
        assert!(!exit.is_stopping());
        assert_eq!(exit.outcome(), None);
        exit.request(VmExit::TripleFault { vcpu: 1 });
        exit.request(VmExit::Reset);
        assert!(exit.is_stopping());
        assert_eq!(exit.outcome(), Some(VmExit::TripleFault { vcpu: 1 }));
    }
}
