//! The virtio-fs device over a vhost-user backend.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use tracing::{debug, error};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::device::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::devices::virtio::vhost_user::{VhostUserError, VhostUserFrontend};

/// Virtio device ID of virtio-fs.
pub const VIRTIO_ID_FS: u32 = 26;
/// Size of each queue (virtiofsd's largest).
pub const QUEUE_SIZE: u16 = 1024;
/// The config space's tag field: up to 36 bytes, NUL-padded.
pub const MAX_TAG_LEN: usize = 36;
/// One high-priority queue (FORGET, INTERRUPT) and one request queue.
const REQUEST_QUEUES: u32 = 1;
const QUEUE_SIZES: [u16; 1 + REQUEST_QUEUES as usize] = [QUEUE_SIZE; 1 + REQUEST_QUEUES as usize];
const NAME: &str = "fs";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?}: must be 1 to {MAX_TAG_LEN} bytes, without NUL")]
    BadTag(String),
    #[error("virtio-fs tag {tag:?}: {source}")]
    Backend { tag: String, source: VhostUserError },
    #[error("virtio-fs tag {tag:?}: cannot create the {what} eventfd: {source}")]
    EventFd { tag: String, what: &'static str, source: std::io::Error },
}

/// What the driver handed over when it started the device, waiting for the event loop to
/// pass it to the backend.
pub(super) struct Pending {
    pub mem: GuestMemory,
    pub irq: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
}

/// A virtio-fs device whose queues virtiofsd serves.
pub struct Fs {
    pub(super) tag: String,
    config: [u8; MAX_TAG_LEN + 4],
    acked_features: u64,
    pub(super) queue_events: Vec<EventFd>,
    pub(super) backend: VhostUserFrontend,
    /// Raised by `activate` and `reset` (on a vCPU's thread, whose seccomp filter has no
    /// socket calls) for the event loop to talk to the backend.
    pub(super) backend_evt: EventFd,
    pub(super) pending: Option<Pending>,
    /// The backend serves the queues (until a reset).
    pub(super) started: bool,
    /// The driver reset the device since the backend was handed the queues: the event loop
    /// takes them back before anything else.
    pub(super) stop_pending: bool,
    activated: bool,
    /// The backend's socket hung up: said once.
    pub(super) backend_gone: bool,
}

impl Fs {
    /// A device with `tag` (what the guest mounts: `mount -t virtiofs TAG DIR`) whose backend
    /// is already connected on `stream`.
    pub fn new(tag: &str, stream: UnixStream) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
            return Err(FsError::BadTag(tag.to_string()));
        }
        let backend =
            VhostUserFrontend::new(stream, QUEUE_SIZES.len()).map_err(|source| FsError::Backend { tag: tag.to_string(), source })?;
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        let eventfd = |what| EventFd::new(libc::EFD_NONBLOCK).map_err(|source| FsError::EventFd { tag: tag.to_string(), what, source });
        let queue_events = QUEUE_SIZES.iter().map(|_| eventfd("queue")).collect::<Result<Vec<_>, _>>()?;
        Ok(Fs {
            tag: tag.to_string(),
            config,
            acked_features: 0,
            queue_events,
            backend,
            backend_evt: eventfd("backend")?,
            pending: None,
            started: false,
            stop_pending: false,
            activated: false,
            backend_gone: false,
        })
    }

    /// Brings the backend in line with the driver, on the event loop: takes the queues back
    /// after a reset, then hands over those of an activation since.
    pub(super) fn sync_backend(&mut self) {
        if std::mem::take(&mut self.stop_pending) {
            match self.backend.reset() {
                Ok(()) => debug!(device = NAME, tag = %self.tag, "queues taken back from the vhost-user backend"),
                Err(e) => error!(device = NAME, tag = %self.tag, "stopping the backend's queues: {e}"),
            }
        }
        self.start_backend();
    }

    /// Hands the queues to the backend (on the event loop, after `activate`).
    fn start_backend(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match self.backend.activate(self.acked_features, &pending.mem, &pending.queues, &self.queue_events, pending.irq.as_ref()) {
            Ok(()) => {
                self.started = true;
                debug!(device = NAME, tag = %self.tag, "queues handed to the vhost-user backend");
            }
            Err(e) => error!(device = NAME, tag = %self.tag, "cannot start the device: {e}; the guest's requests will not be served"),
        }
    }
}

impl VirtioDevice for Fs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.backend.device_features()
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(device = NAME, offset, len = data.len(), "write to the read-only configuration space ignored");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemory, irq: Arc<dyn VirtioInterrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount { device: NAME, expected: QUEUE_SIZES.len(), got: queues.len() });
        }
        if let Some(index) = queues.iter().position(|q| !virtio_queue::QueueT::is_valid(q, &mem)) {
            return Err(ActivateError::InvalidQueue { device: NAME, index });
        }
        if self.backend_gone {
            return Err(ActivateError::Backend { device: NAME, reason: "the vhost-user backend is gone".into() });
        }
        self.pending = Some(Pending { mem, irq, queues });
        self.activated = true;
        self.backend_evt.write(1).map_err(|e| ActivateError::Backend { device: NAME, reason: format!("waking the event loop: {e}") })
    }

    fn reset(&mut self) {
        // An activation the event loop has not handed over yet is simply dropped.
        self.pending = None;
        self.activated = false;
        self.acked_features = 0;
        // The vhost-user messages that stop the queues are the event loop's to send. Until
        // it does, virtiofsd may still complete requests of the old queues: only the guest's
        // own memory is touched, as if the driver had reset a moment later.
        if std::mem::take(&mut self.started) {
            self.stop_pending = true;
            if let Err(e) = self.backend_evt.write(1) {
                error!(device = NAME, tag = %self.tag, "waking the event loop to stop the backend's queues: {e}");
            }
        }
    }

    fn is_activated(&self) -> bool {
        self.activated
    }
}
