//! Event-manager wiring of the virtio-rng device: the queue eventfd and the rate limiter's
//! timer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, error, warn};

use super::Rng;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!(device = "rng", queue, "cannot register the queue eventfd with the event loop: {e}");
            }
        }
        if let Err(e) = ops.add(Events::new_raw(self.limiter.timer_fd(), EventSet::IN)) {
            error!(device = "rng", "cannot register the rate limiter's timer with the event loop: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.limiter.timer_fd() {
            self.limiter.timer_fired();
        } else {
            let Some(evt) = self.queue_events.iter().find(|e| e.as_raw_fd() == events.fd()) else {
                warn!(device = "rng", fd = events.fd(), "event for an unknown file descriptor ignored");
                return;
            };
            // Drain the notification counter; a spurious wakeup (nothing to read) is harmless.
            if let Err(e) = evt.read() {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    error!(device = "rng", "cannot read the queue eventfd: {e}");
                }
            }
        }
        if self.active.is_none() {
            debug!(device = "rng", "queue notification before activation ignored");
            return;
        }
        self.process_queue();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};

    use super::*;
    use crate::devices::virtio::device::{IrqTrigger, VirtioDevice};
    use crate::devices::virtio::queue::test_utils::*;

    /// A guest kick (the queue eventfd) makes the event loop serve the queue.
    #[test]
    fn queue_eventfd_drives_processing() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut manager = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        manager.add_subscriber(rng.clone());

        // Before activation a kick is drained and nothing happens.
        rng.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert!(rng.lock().unwrap().queue_events()[0].read().is_err(), "eventfd drained");

        let irq = Arc::new(IrqTrigger::new().unwrap());
        rng.lock().unwrap().activate(mem.clone(), irq.clone(), vec![tq.queue()]).unwrap();
        tq.add_chain(&[w(DATA_BASE, 32)]);
        rng.lock().unwrap().queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used(0), (0, 32));
        assert_eq!(irq.evt.read().unwrap(), 1);
    }
}
