//! Event-manager wiring of the virtio-net device: the queue eventfds, the tap (edge-triggered:
//! the device reads it until `EAGAIN`, or raises its rx queue eventfd when it stops early for
//! its budget, or waits for the driver's kick or the limiter's timer) and the rate limiters'
//! timers.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{error, warn};

use super::device::{Net, RX_QUEUE, TX_QUEUE};

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                error!(device = "net", queue, "cannot register the queue eventfd with the event loop: {e}");
            }
        }
        if let Err(e) = ops.add(Events::new_raw(self.tap.as_fd().as_raw_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED)) {
            error!(device = "net", "cannot register the tap with the event loop: {e}");
        }
        for fd in [self.rx_limiter.timer_fd(), self.tx_limiter.timer_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                error!(device = "net", "cannot register a rate limiter's timer with the event loop: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let queue = self.queue_events.iter().position(|evt| evt.as_raw_fd() == fd);
        if let Some(index) = queue {
            // Drain the notification counter; a spurious wakeup (nothing to read) is harmless.
            if let Err(e) = self.queue_events[index].read() {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    error!(device = "net", queue = index, "cannot read the queue eventfd: {e}");
                }
            }
        }
        let rx = if queue == Some(RX_QUEUE) || fd == self.tap.as_fd().as_raw_fd() {
            true
        } else if queue == Some(TX_QUEUE) {
            false
        } else if fd == self.rx_limiter.timer_fd() {
            self.rx_limiter.timer_fired();
            true
        } else if fd == self.tx_limiter.timer_fd() {
            self.tx_limiter.timer_fired();
            false
        } else {
            warn!(device = "net", fd, "event for an unknown file descriptor ignored");
            return;
        };
        // Before activation there is nothing to do: kicks are drained, tap frames wait in the
        // tap (the driver's first rx kick after activation reads them).
        if rx {
            self.process_rx();
        } else {
            self.process_tx();
        }
    }
}
