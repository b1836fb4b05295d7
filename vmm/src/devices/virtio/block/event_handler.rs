//! Event-manager wiring of the virtio-blk device: the queue eventfd and the rate limiters'
//! timers.

use std::os::fd::AsRawFd;

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
        for fd in [self.limits.read.timer_fd(), self.limits.write.timer_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                error!(device = "block", "cannot register a rate limiter's timer with the event loop: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.limits.read.timer_fd() {
            self.limits.read.timer_fired();
        } else if fd == self.limits.write.timer_fd() {
            self.limits.write.timer_fired();
        } else {
            let Some(evt) = self.queue_events.iter().find(|e| e.as_raw_fd() == fd) else {
                warn!(device = "block", fd, "event for an unknown file descriptor ignored");
                return;
            };
            // Drain the notification counter; a spurious wakeup (nothing to read) is harmless.
            if let Err(e) = evt.read() {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    error!(device = "block", "cannot read the queue eventfd: {e}");
                }
            }
        }
        if self.active.is_none() {
            debug!(device = "block", "queue notification before activation ignored");
            return;
        }
        self.process_queue();
    }
}
