//! The virtio side of the vsock device: its queues, packet parsing and the `VirtioDevice`
//! contract. Everything about host sockets lives in [`super::unix`].

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::packet::read_tx_chain;
use super::rx_buffer::RxBuffer;
use super::unix::connection::MAX_PKT_DATA;
use super::unix::UnixBackend;
use super::VsockError;
use crate::devices::virtio::device::{ActivateError, GuestMemory, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::devices::virtio::queue::Chain;

/// Virtio device ID of vsock.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Tx chains handled per wake-up before yielding to other event sources.
const TX_BATCH: usize = 256;
/// Rx buffers used (filled, or dropped as malformed) per call of [`Vsock::process_rx`]: a
/// guest that keeps refilling the ring with bad buffers while a packet waits must not keep
/// the event loop (block, rng, every host connection, the timers) in this device.
pub(super) const RX_BATCH: usize = 64;

/// What the device holds while the driver is active.
struct Active {
    mem: GuestMemory,
    irq: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

/// A virtio-vsock device whose host side is a Unix socket (see the module docs of
/// [`super`]). Create it with [`Vsock::new`], share it as `Arc<Mutex<Vsock>>` with the
/// transport and the event manager.
pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    queue_events: Vec<EventFd>,
    /// Written by `reset` (on a vCPU thread) so the event loop releases the dropped sockets.
    pub(super) reset_evt: EventFd,
    active: Option<Active>,
    pub(super) backend: UnixBackend,
}

impl Vsock {
    /// A device for a guest with CID `guest_cid`, listening on the Unix socket `uds_path`
    /// (a stale socket file there is replaced; the file is removed when the device is dropped).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        Self::with_backend(guest_cid, || UnixBackend::new(guest_cid, uds_path))
    }

    /// A device whose host clients arrive on `listener`, already bound by the caller (the
    /// host jail binds it at the caller's path, outside the VMM's root); `uds_path` is the
    /// prefix of guest-initiated `<uds_path>_<port>` connections, as seen by the VMM.
    pub fn with_listener(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> Result<Vsock, VsockError> {
        Self::with_backend(guest_cid, || UnixBackend::with_listener(guest_cid, uds_path, listener))
    }

    fn with_backend(guest_cid: u64, backend: impl FnOnce() -> Result<UnixBackend, VsockError>) -> Result<Vsock, VsockError> {
        if guest_cid <= super::HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidGuestCid(guest_cid));
        }
        let new_evt = |what| EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VsockError::EventFd { what, source });
        let queue_events = vec![new_evt("rx queue")?, new_evt("tx queue")?, new_evt("event queue")?];
        let reset_evt = new_evt("reset")?;
        let backend = backend()?;
        Ok(Vsock { guest_cid, acked_features: 0, queue_events, reset_evt, active: None, backend })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The Unix socket host clients connect to.
    pub fn uds_path(&self) -> &Path {
        self.backend.uds_path()
    }

    /// Hands every tx chain the guest made available to the backend. Malformed chains are
    /// consumed and dropped.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut used_any = false;
        let mut handled = 0;
        while let Some(head) = active.tx.pop_descriptor_chain(mem).map(|chain| chain.head_index()) {
            let packet = Chain::read_from(mem, &active.tx, head)
                .map_err(|e| e.to_string())
                .and_then(|chain| read_tx_chain(mem, chain.descriptors(), MAX_PKT_DATA).map_err(|e| e.to_string()));
            match packet {
                Ok((hdr, data)) => self.backend.on_guest_packet(&hdr, &data),
                Err(e) => tracing::warn!("vsock: dropping a malformed tx packet: {e}"),
            }
            if let Err(e) = active.tx.add_used(mem, head, 0) {
                tracing::warn!("vsock: cannot return a tx buffer to the guest: {e}");
            }
            used_any = true;
            handled += 1;
            if handled >= TX_BATCH {
                // Come back for the rest after other event sources had their turn.
                if let Some(evt) = self.queue_events.get(TX_QUEUE) {
                    let _ = evt.write(1);
                }
                break;
            }
        }
        if used_any {
            signal_used(active.irq.as_ref(), TX_QUEUE);
        }
    }

    /// Fills rx buffers with whatever the backend has for the guest, at most [`RX_BATCH`] of
    /// them (then the rx queue event is raised so the event loop comes back after the other
    /// event sources). Returns whether any buffer was used.
    pub fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let mut used_any = false;
        let mut used = 0;
        while self.backend.has_rx_work() {
            if used == RX_BATCH {
                if let Some(evt) = self.queue_events.get(RX_QUEUE) {
                    let _ = evt.write(1);
                }
                break;
            }
            used += 1;
            let Some(head) = active.rx.pop_descriptor_chain(mem).map(|chain| chain.head_index()) else {
                break;
            };
            // Read once, with the same validation as every device (no dangling next, loop or
            // indirect table); the packet goes where this read said.
            let parsed = Chain::read_from(mem, &active.rx, head)
                .map_err(|e| e.to_string())
                .and_then(|walked| RxBuffer::new(mem, &walked).map_err(|e| e.to_string()));
            let used_len = match parsed {
                Ok(mut buffer) => match self.backend.fill_rx(&mut buffer) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all: leave the buffer to the guest.
                        active.rx.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    tracing::warn!("vsock: dropping a malformed rx buffer: {e}");
                    0
                }
            };
            if let Err(e) = active.rx.add_used(mem, head, used_len) {
                tracing::warn!("vsock: cannot return an rx buffer to the guest: {e}");
            }
            used_any = true;
        }
        if used_any {
            signal_used(active.irq.as_ref(), RX_QUEUE);
        }
        used_any
    }

    pub(super) fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

fn signal_used(irq: &dyn VirtioInterrupt, queue: usize) {
    if let Err(e) = irq.trigger(InterruptKind::Queue(queue as u16)) {
        tracing::warn!("vsock: cannot interrupt the guest: {e}");
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    /// The configuration space is `le64 guest_cid`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte =
                offset.checked_add(i as u64).and_then(|at| usize::try_from(at).ok()).and_then(|at| config.get(at).copied()).unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(offset, len = data.len(), "vsock: ignoring a write to the read-only config space");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemory, irq: Arc<dyn VirtioInterrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx, event]: [Queue; 3] = queues.try_into().map_err(|_| ActivateError::QueueCount { device: "vsock", expected: 3, got })?;
        for (index, queue) in [&rx, &tx, &event].into_iter().enumerate() {
            if !queue.is_valid(&mem) {
                return Err(ActivateError::InvalidQueue { device: "vsock", index });
            }
        }
        // The event queue is only for transport-reset events, which this device never sends.
        self.active = Some(Active { mem, irq, rx, tx });
        self.backend.set_driver_ready(true);
        tracing::debug!(guest_cid = self.guest_cid, "vsock: activated");
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.backend.set_driver_ready(false);
        // Let the event loop unregister and close the dropped connections.
        if let Err(e) = self.reset_evt.write(1) {
            tracing::warn!("vsock: cannot wake the event loop after a reset: {e}");
        }
        tracing::debug!("vsock: reset, all connections dropped");
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
