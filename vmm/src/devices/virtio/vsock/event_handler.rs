//! The vsock device in the event loop: queue kicks, the listener, host sockets, the connect
//! timer and the post-reset cleanup all arrive here.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Vsock, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::device::VirtioDevice;

/// Rounds of "drop finished connections, fill rx buffers" per event: a round can finish a
/// connection (e.g. host EOF after the guest's shutdown), whose OP_RST needs another round.
const RX_ROUNDS: usize = 4;

impl Vsock {
    fn drain_queue_event(&self, index: usize) {
        if let Some(evt) = self.queue_events().get(index) {
            // EAGAIN (nothing pending) is fine: the fd is non-blocking and level-triggered.
            let _ = evt.read();
        }
    }

    fn queue_index_of(&self, fd: i32) -> Option<usize> {
        self.queue_events().iter().position(|evt| evt.as_raw_fd() == fd)
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                tracing::error!(queue = index, "vsock: cannot watch the queue eventfd: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::new(&self.reset_evt, EventSet::IN)) {
            tracing::error!("vsock: cannot watch the reset eventfd: {e:?}");
        }
        self.backend.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Connections dropped by a reset (on a vCPU thread) leave epoll before anything else.
        self.backend.release_dead(ops);
        let fd = events.fd();
        match self.queue_index_of(fd) {
            Some(index) => {
                self.drain_queue_event(index);
                // rx kicks need no handling of their own: new buffers are filled below. The
                // event queue is never used by this device.
                if index == TX_QUEUE {
                    self.process_tx();
                }
            }
            None if fd == self.reset_evt.as_raw_fd() => {
                let _ = self.reset_evt.read();
            }
            None => {
                if !self.backend.on_event(fd, events.event_set()) {
                    tracing::warn!(fd, "vsock: event on an unknown fd; unwatching it");
                    let _ = ops.remove(Events::empty_raw(fd));
                }
            }
        }
        // `prepare` runs first and after every productive rx round, so connections an rx round
        // finished or broke are dropped before `sync`.
        let mut rounds = 0;
        while self.backend.prepare() && self.is_active() {
            if rounds == RX_ROUNDS {
                // Still more to do: come back after other event sources had their turn.
                if let Some(evt) = self.queue_events().get(RX_QUEUE) {
                    let _ = evt.write(1);
                }
                break;
            }
            if !self.process_rx() {
                break;
            }
            rounds += 1;
        }
        self.backend.sync(ops);
    }
}
