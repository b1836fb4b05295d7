//! The virtio-net device (virtio 1.2 §5.1): one rx and one tx queue, a tap behind them.
//!
//! **tx** (guest to host): each chain is a vnet header and a frame in device-readable
//! descriptors; it is read once ([`read_tx_frame`]), copied into a device buffer and written
//! to the tap with one `write`. A malformed chain is returned with used length 0 and counted.
//! When the tap cannot take a frame (`EAGAIN`: its queue towards the host stack is full, or
//! any other error) the frame is dropped and counted, as a NIC drops on a full queue: the
//! guest's TCP retransmits, and a stalled tx queue would stall the guest's whole network.
//!
//! **rx** (host to guest): frames are read from the non-blocking tap into a device buffer,
//! then copied into rx chains. With `VIRTIO_NET_F_MRG_RXBUF` a frame spreads over as many
//! chains as it needs (`num_buffers` says how many); without it, one chain per frame, and a
//! frame that does not fit the chain is dropped and counted. Chains are popped and checked
//! once and then held by the device until a frame fills them. When the guest has no buffers
//! for the frame read, it stays pending (one frame at most) and the tap is not read until the
//! driver kicks the rx queue.
//!
//! **Budgets**: each call serves at most [`FRAMES_PER_CALL`] frames and [`BYTES_PER_CALL`]
//! bytes per direction (and pops at most twice the queue size of rx chains); with work left it
//! raises its own queue eventfd, so the event loop comes back after every other source had a
//! turn. **Rate limits** (bytes and frames a second, each direction) stop a direction until
//! the limiter's timer fires.
//!
//! Every guest-triggered warning goes through `tracing` at `warn`, which the VMM's log budget
//! ([`crate::log_budget`]) holds to a rate.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use tracing::{debug, error, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{check_rx_header, offload_flags, read_tx_frame, set_num_buffers, RxChain, MAX_FRAME, MIN_FRAME};
use super::tap::{Tap, VNET_HDR_LEN};
use crate::devices::virtio::device::{ActivateError, GuestMemory, InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::devices::virtio::queue::write_bytes;
use crate::rate_limiter::{RateLimiter, RateLimiterError, Rates};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// Frames served per direction per call before yielding to other event sources.
pub const FRAMES_PER_CALL: usize = 128;
/// Bytes served per direction per call before yielding to other event sources.
pub const BYTES_PER_CALL: u64 = 1 << 20;
/// Smallest MTU offered (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
const NAME: &str = "net";

const fn bit(n: u32) -> u64 {
    1 << n
}

/// What the device offers.
const AVAIL_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_UFO)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_UFO);

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("virtio-net: MTU {mtu} is outside {MIN_MTU}..=65535")]
    Mtu { mtu: u16 },
    #[error("virtio-net: MAC {mac:02x?} is a multicast address, a NIC needs a unicast one")]
    MulticastMac { mac: [u8; 6] },
    #[error("virtio-net: cannot create the {what} eventfd: {source}")]
    EventFd { what: &'static str, source: io::Error },
    #[error("virtio-net: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// What the device counted since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames (and their bytes, vnet header excluded) delivered to the guest.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames (and their bytes, vnet header excluded) the tap took from the guest.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// tx chains that were not a valid frame.
    pub tx_dropped_malformed: u64,
    /// Valid tx frames the tap refused (full, down, or it disliked the header).
    pub tx_dropped_tap: u64,
    /// Frames from the tap that fit no rx buffers the guest gave.
    pub rx_dropped_no_buffer: u64,
    /// Frames from the tap the driver cannot take (runts, offloads it did not negotiate).
    pub rx_dropped_malformed: u64,
    /// rx chains that were not valid buffers (returned unused).
    pub rx_bad_buffers: u64,
}

/// What the device holds while the driver is active.
struct Active {
    mem: GuestMemory,
    irq: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
}

/// A virtio-net device whose host side is a tap.
pub struct Net {
    pub(super) tap: Tap,
    mac: [u8; 6],
    mtu: u16,
    acked_features: u64,
    pub(super) queue_events: Vec<EventFd>,
    active: Option<Active>,
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
    /// `TUNSETOFFLOAD` flags to apply on the event-loop thread (activation runs on a vCPU
    /// thread, whose seccomp filter allows no tap ioctl).
    pub(super) offload_pending: Option<u32>,
    /// The frame read from the tap (vnet header first); `rx_pending` its length when it waits
    /// for rx buffers.
    rx_frame: Vec<u8>,
    pub(super) rx_pending: Option<usize>,
    /// rx chains popped and checked, not yet filled.
    rx_held: VecDeque<RxChain>,
    tx_frame: Vec<u8>,
    counters: NetCounters,
}

/// Where a frame goes in the held rx chains.
enum Fit {
    /// The first `.0` held chains take it.
    Chains(usize),
    /// Not yet: the driver has to add buffers.
    Short,
    /// It never will with these buffers: drop the frame.
    Never,
    /// The per-call budget of popped chains is spent.
    Budget,
}

fn limiter(what: &'static str, rates: Rates) -> Result<RateLimiter, NetError> {
    Ok(RateLimiter::new(what, rates)?)
}

impl Net {
    /// A device for the guest's `mac` (`VIRTIO_NET_F_MAC`), offering `mtu`
    /// (`VIRTIO_NET_F_MTU`, 68..=65535), in front of `tap`.
    pub fn new(tap: Tap, mac: [u8; 6], mtu: u16) -> Result<Net, NetError> {
        if mtu < MIN_MTU {
            return Err(NetError::Mtu { mtu });
        }
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac { mac });
        }
        let new_evt = |what| EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::EventFd { what, source });
        Ok(Net {
            tap,
            mac,
            mtu,
            acked_features: 0,
            queue_events: vec![new_evt("rx queue")?, new_evt("tx queue")?],
            active: None,
            rx_limiter: limiter("virtio-net rx", Rates::default())?,
            tx_limiter: limiter("virtio-net tx", Rates::default())?,
            offload_pending: None,
            rx_frame: vec![0; VNET_HDR_LEN + MAX_FRAME],
            rx_pending: None,
            rx_held: VecDeque::new(),
            tx_frame: vec![0; VNET_HDR_LEN + MAX_FRAME],
            counters: NetCounters::default(),
        })
    }

    /// Limits what the device moves (bytes and frames a second): `rx` host to guest, `tx`
    /// guest to host.
    pub fn with_rate_limits(mut self, rx: Rates, tx: Rates) -> Result<Net, NetError> {
        self.rx_limiter = limiter("virtio-net rx", rx)?;
        self.tx_limiter = limiter("virtio-net tx", tx)?;
        Ok(self)
    }

    /// The rates rx and tx are limited to.
    pub fn rate_limits(&self) -> (Rates, Rates) {
        (self.rx_limiter.rates(), self.tx_limiter.rates())
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The configuration space (virtio 1.2 §5.1.4): `mac[6]`, `status: le16` (link up),
    /// `max_virtqueue_pairs: le16` (1), `mtu: le16`.
    fn config_bytes(&self) -> [u8; 12] {
        let mut config = [0u8; 12];
        config[0..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        config
    }

    /// Applies the offloads the driver negotiated, once after activation (event-loop thread).
    pub(super) fn apply_offload(&mut self) {
        if let Some(flags) = self.offload_pending.take() {
            match self.tap.set_offload(flags) {
                Ok(()) => debug!(device = NAME, flags, "tap offloads set"),
                // The tap keeps its previous offloads; frames the driver cannot take are dropped
                // by `check_rx_header`.
                Err(e) => error!(device = NAME, "{e}"),
            }
        }
    }

    fn kick_self(&self, queue: usize) {
        if let Some(evt) = self.queue_events.get(queue) {
            if let Err(e) = evt.write(1) {
                error!(device = NAME, queue, "cannot re-arm the queue eventfd: {e}");
            }
        }
    }

    /// Sends what the guest queued on tx to the tap, within the per-call budget and the tx
    /// rate limit.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let (mut frames, mut bytes, mut used_any, mut more) = (0usize, 0u64, false, false);
        loop {
            if frames >= FRAMES_PER_CALL || bytes >= BYTES_PER_CALL {
                more = true;
                break;
            }
            if self.tx_limiter.is_blocked() {
                break;
            }
            let Some(head) = active.tx.pop_descriptor_chain(mem).map(|chain| chain.head_index()) else {
                break;
            };
            match read_tx_frame(mem, &active.tx, head, self.acked_features, &mut self.tx_frame) {
                Ok(len) => {
                    let frame_len = (len - VNET_HDR_LEN) as u64;
                    if !self.tx_limiter.admit(frame_len) {
                        // Left on the queue until the limiter's timer fires.
                        active.tx.go_to_previous_position();
                        break;
                    }
                    bytes += len as u64;
                    match self.tap.write_frame(&self.tx_frame[..len]) {
                        Ok(_) => {
                            self.counters.tx_frames += 1;
                            self.counters.tx_bytes += frame_len;
                        }
                        Err(e) => {
                            self.counters.tx_dropped_tap += 1;
                            warn!(device = NAME, head, len, "tap refused a tx frame, dropped: {e}");
                        }
                    }
                }
                Err(e) => {
                    self.counters.tx_dropped_malformed += 1;
                    warn!(device = NAME, "{e}; dropped");
                }
            }
            frames += 1;
            match active.tx.add_used(mem, head, 0) {
                Ok(()) => used_any = true,
                Err(e) => warn!(device = NAME, head, "cannot return a tx chain to the used ring: {e}"),
            }
        }
        if used_any {
            notify(active, TX_QUEUE);
        }
        if more {
            self.kick_self(TX_QUEUE);
        }
    }

    /// Moves frames from the tap into the guest's rx buffers, within the per-call budget and
    /// the rx rate limit. Stops reading the tap while a frame waits for buffers.
    pub fn process_rx(&mut self) {
        self.apply_offload();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let acked = self.acked_features;
        let mergeable = acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        let (mut frames, mut bytes, mut popped, mut used_any, mut more) = (0usize, 0u64, 0usize, false, false);
        loop {
            if frames >= FRAMES_PER_CALL || bytes >= BYTES_PER_CALL {
                more = true;
                break;
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(len) => {
                        let checked = if len < VNET_HDR_LEN + MIN_FRAME {
                            Err("shorter than a vnet header and an Ethernet header")
                        } else {
                            check_rx_header(&mut self.rx_frame[..len], acked)
                        };
                        if let Err(reason) = checked {
                            self.counters.rx_dropped_malformed += 1;
                            frames += 1;
                            debug!(device = NAME, len, "frame from the tap dropped: {reason}");
                            continue;
                        }
                        self.rx_pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        error!(device = NAME, "cannot read from the tap: {e}");
                        break;
                    }
                },
            };
            let count = match fit(active, &mut self.rx_held, len, mergeable, &mut popped, &mut used_any, &mut self.counters) {
                Fit::Chains(count) => count,
                // Wait for the driver's kick (the tap is not read meanwhile).
                Fit::Short => break,
                Fit::Budget => {
                    more = true;
                    break;
                }
                Fit::Never => {
                    self.rx_pending = None;
                    self.counters.rx_dropped_no_buffer += 1;
                    frames += 1;
                    warn!(device = NAME, len, mergeable, "rx frame larger than the guest's rx buffers, dropped");
                    continue;
                }
            };
            if !self.rx_limiter.admit((len - VNET_HDR_LEN) as u64) {
                // Pending, with its buffers held, until the limiter's timer fires.
                break;
            }
            // Without MRG_RXBUF the field is 1 (virtio 1.2 §5.1.6.4).
            set_num_buffers(&mut self.rx_frame, u16::try_from(count).unwrap_or(u16::MAX));
            let mut offset = 0usize;
            for chain in self.rx_held.drain(..count) {
                let n = (chain.capacity as usize).min(len - offset);
                if let Err(e) = write_bytes(&active.mem, chain.head, &chain.segments, 0, &self.rx_frame[offset..offset + n]) {
                    warn!(device = NAME, "cannot write an rx frame into guest memory: {e}");
                }
                offset += n;
                match active.rx.add_used(&active.mem, chain.head, n as u32) {
                    Ok(()) => used_any = true,
                    Err(e) => warn!(device = NAME, head = chain.head, "cannot return an rx buffer to the used ring: {e}"),
                }
            }
            self.rx_pending = None;
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += (len - VNET_HDR_LEN) as u64;
            frames += 1;
            bytes += len as u64;
        }
        if used_any {
            notify(active, RX_QUEUE);
        }
        if more {
            self.kick_self(RX_QUEUE);
        }
    }
}

/// Finds the held rx chains a frame of `len` bytes (header included) goes into, popping and
/// checking more chains as needed. A malformed chain is returned unused at once (before the
/// frame's chains, so a frame's used entries stay together).
fn fit(
    active: &mut Active,
    held: &mut VecDeque<RxChain>,
    len: usize,
    mergeable: bool,
    popped: &mut usize,
    used_any: &mut bool,
    counters: &mut NetCounters,
) -> Fit {
    loop {
        if mergeable {
            let mut have = 0usize;
            for (i, chain) in held.iter().enumerate() {
                have += chain.capacity as usize;
                if have >= len {
                    return Fit::Chains(i + 1);
                }
            }
            // Every descriptor of the queue is held and the frame does not fit.
            if held.len() >= usize::from(active.rx.size()) {
                return Fit::Never;
            }
        } else if let Some(first) = held.front() {
            return if first.capacity as usize >= len { Fit::Chains(1) } else { Fit::Never };
        }
        if *popped >= 2 * usize::from(QUEUE_SIZE) {
            return Fit::Budget;
        }
        let Some(head) = active.rx.pop_descriptor_chain(&active.mem).map(|chain| chain.head_index()) else {
            return Fit::Short;
        };
        *popped += 1;
        match RxChain::read(&active.mem, &active.rx, head) {
            Ok(chain) => held.push_back(chain),
            Err(e) => {
                counters.rx_bad_buffers += 1;
                warn!(device = NAME, "{e}; returned unused");
                match active.rx.add_used(&active.mem, head, 0) {
                    Ok(()) => *used_any = true,
                    Err(e) => warn!(device = NAME, head, "cannot return an rx buffer to the used ring: {e}"),
                }
            }
        }
    }
}

fn notify(active: &mut Active, queue: usize) {
    let queue_ref = if queue == RX_QUEUE { &mut active.rx } else { &mut active.tx };
    match queue_ref.needs_notification(&active.mem) {
        Ok(false) => {}
        // When in doubt, interrupt: a spurious interrupt costs the driver a look at its ring.
        Ok(true) | Err(_) => {
            if let Err(e) = active.irq.trigger(InterruptKind::Queue(queue as u16)) {
                error!(device = NAME, queue, "cannot interrupt the guest: {e}");
            }
        }
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::device::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(device = NAME, offset, len = data.len(), "write to read-only configuration space ignored");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemory, irq: Arc<dyn VirtioInterrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let got = queues.len();
        let [rx, tx]: [Queue; 2] = queues.try_into().map_err(|_| ActivateError::QueueCount { device: NAME, expected: 2, got })?;
        for (index, queue) in [&rx, &tx].into_iter().enumerate() {
            if !queue.is_valid(&mem) {
                return Err(ActivateError::InvalidQueue { device: NAME, index });
            }
        }
        self.active = Some(Active { mem, irq, rx, tx });
        self.rx_held.clear();
        self.rx_pending = None;
        self.offload_pending = Some(offload_flags(self.acked_features));
        // Wake the event loop to set the offloads and read what the tap holds.
        self.kick_self(RX_QUEUE);
        debug!(device = NAME, features = format_args!("{:#x}", self.acked_features), "activated");
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.rx_held.clear();
        // The frame may carry offloads the next driver does not negotiate.
        self.rx_pending = None;
        self.offload_pending = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
