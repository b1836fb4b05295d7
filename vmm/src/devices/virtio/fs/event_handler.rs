//! Event-manager wiring of virtio-fs: the deferred activation and reset, and the backend's socket
//! (a hang-up means virtiofsd is gone). The queue eventfds are the backend's kick fds and are
//! never read here.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{error, warn};

use super::Fs;
use std::os::fd::AsRawFd;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.backend_evt, EventSet::IN)) {
            error!(device = "fs", "cannot register the backend eventfd with the event loop: {e}");
        }
        // EPOLLHUP and EPOLLERR are always reported; the backend sends nothing unasked.
        if let Err(e) = ops.add(Events::new_raw(self.backend.socket_fd(), EventSet::empty())) {
            error!(device = "fs", "cannot watch the vhost-user socket: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.backend_evt.as_raw_fd() {
            let _ = self.backend_evt.read();
            self.sync_backend();
        } else if events.fd() == self.backend.socket_fd() {
            if !self.backend_gone {
                self.backend_gone = true;
                error!(device = "fs", tag = %self.tag, "the vhost-user backend (virtiofsd) hung up: the shared directory is gone for this VM");
            }
            // Level-triggered: stop watching, or the loop spins.
            if let Err(e) = ops.remove(Events::new_raw(self.backend.socket_fd(), EventSet::empty())) {
                warn!(device = "fs", "cannot unwatch the vhost-user socket: {e}");
            }
        }
    }
}
