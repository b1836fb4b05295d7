//! Event-manager wiring of the virtio-blk device: the queue eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, error, warn};

use super::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!(device = "block", queue, "cannot register the queue eventfd with the event loop: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let Some(evt) = self.queue_events.iter().find(|e| std::os::fd::AsRawFd::as_raw_fd(*e) == events.fd()) else {
            warn!(device = "block", fd = events.fd(), "event for an unknown file descriptor ignored");
            return;
        };
        // Drain the notification counter; a spurious wakeup (nothing to read) is harmless.
        if let Err(e) = evt.read() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                error!(device = "block", "cannot read the queue eventfd: {e}");
            }
        }
        if self.active.is_none() {
            debug!(device = "block", "queue notification before activation ignored");
            return;
        }
        self.process_queue();
    }
}
