//! The VM's event loop: an event-manager `EventManager` on the thread that called
//! [`crate::run_vm`], dispatching device events (queue notifications, backend sockets)
//! until the VM's [`ExitSignal`] fires.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::config::VmExit;
use crate::exit::ExitSignal;

/// How often the loop wakes up at the latest to check the exit signal (its eventfd wakes it
/// at once too).
const TICK_MS: i32 = 100;

/// Anything the event loop can dispatch to.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber>>;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("event loop: creating the epoll set: {0}")]
    Create(event_manager::Error),
    #[error("event loop: waiting for events: {0}")]
    Run(event_manager::Error),
}

/// Drains the exit eventfd so the loop does not spin on it.
struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The reason is in the ExitSignal; the counter only woke us up.
        let _ = self.exit.evt().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.evt(), EventSet::IN)) {
            tracing::error!("event loop: watching the VM exit eventfd: {e}");
        }
    }
}

pub struct EventLoop {
    manager: EventManager<Subscriber>,
}

impl EventLoop {
    pub fn new(exit: Arc<ExitSignal>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Create)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher { exit })));
        Ok(EventLoop { manager })
    }

    /// Adds a device (or anything else) whose `init` registers its file descriptors.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// Dispatches events until the VM is asked to stop.
    pub fn run_until_exit(&mut self, exit: &ExitSignal) -> Result<VmExit, EventLoopError> {
        loop {
            if let Some(outcome) = exit.outcome() {
                return Ok(outcome);
            }
            self.manager.run_with_timeout(TICK_MS).map_err(EventLoopError::Run)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_requested_exit() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut event_loop = EventLoop::new(exit.clone()).unwrap();
        let remote = exit.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            remote.request(VmExit::Reset);
        });
        assert_eq!(event_loop.run_until_exit(&exit).unwrap(), VmExit::Reset);
        t.join().unwrap();
    }
}
