//! Validated access to virtqueue descriptor chains, shared by the virtio devices.
//!
//! Everything here treats the chain as hostile: a chain is read once from the descriptor
//! table by our own walk ([`Chain::read`]: no dangling `NEXT`, no loop, no index past the
//! table, no indirect descriptor, no length overflow), and turned into lists of guest-memory
//! [`Segment`]s only when device-readable descriptors came before device-writable ones and
//! every buffer lies inside guest memory.

use std::fs::File;
use std::io;
use std::sync::Arc;

use tracing::{error, warn};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, WriteVolatile};

use super::device::{ActivateError, GuestMemory};
use super::interrupt::{InterruptKind, VirtioInterrupt};

/// Why a descriptor chain (one request) was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain {head}: no descriptors (head index past the queue or unreadable table)")]
    Empty { head: u16 },
    #[error(
        "descriptor chain {head}: broken after {count} descriptors (next index past the queue, loop, \
         longer than the queue, length overflow or unreadable descriptor)"
    )]
    Broken { head: u16, count: usize },
    #[error("descriptor chain {head}: descriptor {index} is indirect, and VIRTIO_RING_F_INDIRECT_DESC is not offered")]
    Indirect { head: u16, index: u16 },
    #[error("descriptor chain {head}: a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable { head: u16 },
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { head: u16, addr: u64, len: u64 },
    #[error("descriptor chain {head}: range {offset:#x}+{len:#x} exceeds the {available:#x} bytes of its buffers")]
    ShortBuffers { head: u16, offset: u64, len: u64, available: u64 },
    #[error("descriptor chain {head}: guest memory access at {addr:#x} failed: {reason}")]
    MemoryAccess { head: u16, addr: u64, reason: String },
    #[error("descriptor chain {head}: I/O between guest memory at {addr:#x} and {what} failed: {source}")]
    Io { head: u16, addr: u64, what: &'static str, source: io::Error },
}

/// Why a queue could not be processed at all.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("virtqueue: cannot read the available ring: {0}")]
    AvailRing(virtio_queue::Error),
    #[error("virtqueue: cannot check whether the driver wants a notification: {0}")]
    Notification(virtio_queue::Error),
}

/// A contiguous range of guest memory, checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u64,
}

/// One descriptor of a chain, as it was read from the descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

/// Size of a split-ring descriptor: `{ addr: le64, len: le32, flags: le16, next: le16 }`.
const DESCRIPTOR_SIZE: u64 = 16;

/// A descriptor chain read once from its queue's descriptor table: every later look at the
/// request (its status byte, its data, its length for a rate limiter) sees the same
/// descriptors, whatever the driver writes into the table meanwhile.
///
/// The walk is this crate's own, not `virtio_queue`'s iterator (which follows indirect
/// descriptors whether or not they were negotiated and stops silently on a broken link): a
/// chain is refused when its head or a `next` index is past the queue, when it has more
/// descriptors than the queue (a loop), when a descriptor is indirect (no device offers
/// `VIRTIO_RING_F_INDIRECT_DESC`), when its lengths overflow 32 bits together, or when a
/// descriptor cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    head: u16,
    descriptors: Vec<Descriptor>,
}

impl Chain {
    /// Reads the chain starting at `head` from the descriptor table at `table` of a queue of
    /// `queue_size` entries.
    pub fn read(mem: &GuestMemory, table: GuestAddress, queue_size: u16, head: u16) -> Result<Chain, ChainError> {
        if head >= queue_size {
            return Err(ChainError::Empty { head });
        }
        let mut descriptors = Vec::new();
        let mut index = head;
        let mut total_len: u32 = 0;
        loop {
            let broken = |count: usize| if count == 0 { ChainError::Empty { head } } else { ChainError::Broken { head, count } };
            let addr = table.0.checked_add(u64::from(index) * DESCRIPTOR_SIZE).ok_or_else(|| broken(descriptors.len()))?;
            let mut raw = [0u8; DESCRIPTOR_SIZE as usize];
            mem.read_slice(&mut raw, GuestAddress(addr)).map_err(|_| broken(descriptors.len()))?;
            let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
            let flags = u32::from(u16::from_le_bytes([f0, f1]));
            if flags & VRING_DESC_F_INDIRECT != 0 {
                return Err(ChainError::Indirect { head, index });
            }
            let len = u32::from_le_bytes([l0, l1, l2, l3]);
            total_len = total_len.checked_add(len).ok_or(ChainError::Broken { head, count: descriptors.len() + 1 })?;
            descriptors.push(Descriptor {
                addr: GuestAddress(u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7])),
                len,
                writable: flags & VRING_DESC_F_WRITE != 0,
            });
            if flags & VRING_DESC_F_NEXT == 0 {
                return Ok(Chain { head, descriptors });
            }
            let next = u16::from_le_bytes([n0, n1]);
            // A chain visits each descriptor of the table at most once: one longer than the
            // queue loops.
            if next >= queue_size || descriptors.len() >= usize::from(queue_size) {
                return Err(ChainError::Broken { head, count: descriptors.len() });
            }
            index = next;
        }
    }

    /// Reads the chain at `head` of `queue` (see [`Chain::read`]).
    pub fn read_from(mem: &GuestMemory, queue: &Queue, head: u16) -> Result<Chain, ChainError> {
        Chain::read(mem, GuestAddress(queue.desc_table()), queue.size(), head)
    }

    pub fn head_index(&self) -> u16 {
        self.head
    }

    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The address of the last byte of the chain when its last descriptor is device-writable,
    /// non-empty and inside guest memory: where a device puts a trailing status byte.
    pub fn last_writable_byte(&self, mem: &GuestMemory) -> Option<GuestAddress> {
        let last = self.descriptors.last()?;
        if !last.writable || last.len == 0 {
            return None;
        }
        let addr = last.addr.0.checked_add(u64::from(last.len) - 1).map(GuestAddress)?;
        in_memory(mem, addr, 1).then_some(addr)
    }
}

/// The buffers of one descriptor chain, split by direction and validated.
#[derive(Debug)]
pub struct ChainBuffers {
    pub head_index: u16,
    /// Device-readable buffers (driver to device), in chain order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers (device to driver), in chain order.
    pub writable: Vec<Segment>,
}

fn in_memory(mem: &GuestMemory, addr: GuestAddress, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    GuestMemoryBackend::check_range(mem, addr, len)
}

impl ChainBuffers {
    /// Validates a chain's buffers: device-readable ones first, each inside guest memory.
    pub fn parse(mem: &GuestMemory, chain: &Chain) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for desc in chain.descriptors() {
            let len = u64::from(desc.len);
            if desc.writable {
                if len > 0 {
                    writable.push(Segment { addr: desc.addr, len });
                }
            } else if !writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable { head });
            } else if len > 0 {
                readable.push(Segment { addr: desc.addr, len });
            }
            if !in_memory(mem, desc.addr, len) {
                return Err(ChainError::OutsideMemory { head, addr: desc.addr.0, len });
            }
        }
        Ok(Self { head_index: head, readable, writable })
    }

    pub fn readable_len(&self) -> u64 {
        total_len(&self.readable)
    }

    pub fn writable_len(&self) -> u64 {
        total_len(&self.writable)
    }
}

pub fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// The pieces of `segments` covering the byte range `offset..offset + len` of their
/// concatenation.
pub fn sub_segments(head: u16, segments: &[Segment], offset: u64, len: u64) -> Result<Vec<Segment>, ChainError> {
    let available = total_len(segments);
    let short = || ChainError::ShortBuffers { head, offset, len, available };
    let end = offset.checked_add(len).ok_or_else(short)?;
    if end > available {
        return Err(short());
    }
    let mut pieces = Vec::new();
    let mut start = 0u64; // offset of the current segment in the concatenation
    for seg in segments {
        let seg_end = start + seg.len;
        let from = offset.max(start);
        let to = end.min(seg_end);
        if from < to {
            // Both in range: `from - start < seg.len` and the segment was checked in memory.
            pieces.push(Segment { addr: GuestAddress(seg.addr.0 + (from - start)), len: to - from });
        }
        start = seg_end;
        if start >= end {
            break;
        }
    }
    Ok(pieces)
}

/// Copies `buf.len()` bytes from the buffers, starting `offset` bytes in.
pub fn read_bytes(mem: &GuestMemory, head: u16, segments: &[Segment], offset: u64, buf: &mut [u8]) -> Result<(), ChainError> {
    let mut done = 0usize;
    let total = buf.len() as u64;
    for piece in sub_segments(head, segments, offset, total)? {
        // `piece.len` is at most `buf.len() - done` by construction of `sub_segments`.
        let n = piece.len as usize;
        let dst = buf.get_mut(done..done + n).ok_or(ChainError::ShortBuffers { head, offset, len: total, available: done as u64 })?;
        mem.read_slice(dst, piece.addr).map_err(|e| ChainError::MemoryAccess { head, addr: piece.addr.0, reason: e.to_string() })?;
        done += n;
    }
    Ok(())
}

/// Copies `buf` into the buffers, starting `offset` bytes in.
pub fn write_bytes(mem: &GuestMemory, head: u16, segments: &[Segment], offset: u64, buf: &[u8]) -> Result<(), ChainError> {
    let mut done = 0usize;
    for piece in sub_segments(head, segments, offset, buf.len() as u64)? {
        let n = piece.len as usize;
        let src =
            buf.get(done..done + n).ok_or(ChainError::ShortBuffers { head, offset, len: buf.len() as u64, available: done as u64 })?;
        mem.write_slice(src, piece.addr).map_err(|e| ChainError::MemoryAccess { head, addr: piece.addr.0, reason: e.to_string() })?;
        done += n;
    }
    Ok(())
}

fn volatile_error(head: u16, addr: GuestAddress, what: &'static str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Io { head, addr: addr.0, what, source: io::Error::other(e.to_string()) }
}

/// Fills the guest buffers `pieces` from `file` at its current position, with no host-side copy.
pub fn fill_from_file(mem: &GuestMemory, head: u16, pieces: &[Segment], file: &mut File, what: &'static str) -> Result<(), ChainError> {
    for piece in pieces {
        let len = usize::try_from(piece.len).map_err(|e| volatile_error(head, piece.addr, what, e))?;
        for slice in GuestMemoryBackend::get_slices(mem, piece.addr, len) {
            let mut slice = slice.map_err(|e| volatile_error(head, piece.addr, what, e))?;
            file.read_exact_volatile(&mut slice).map_err(|e| volatile_error(head, piece.addr, what, e))?;
        }
    }
    Ok(())
}

/// Writes the guest buffers `pieces` to `file` at its current position, with no host-side copy.
pub fn drain_to_file(mem: &GuestMemory, head: u16, pieces: &[Segment], file: &mut File, what: &'static str) -> Result<(), ChainError> {
    for piece in pieces {
        let len = usize::try_from(piece.len).map_err(|e| volatile_error(head, piece.addr, what, e))?;
        for slice in GuestMemoryBackend::get_slices(mem, piece.addr, len) {
            let slice = slice.map_err(|e| volatile_error(head, piece.addr, what, e))?;
            file.write_all_volatile(&slice).map_err(|e| volatile_error(head, piece.addr, what, e))?;
        }
    }
    Ok(())
}

/// What a device did with one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Done: return the chain with this used length (bytes written into it).
    Used(u32),
    /// Not now (a rate limiter said wait): the chain, and every one after it, stays available
    /// for the next pass.
    Later,
}

/// Serves every chain the driver has made available so far (one snapshot of the available
/// index, so at most one queue's worth: a guest that keeps adding cannot keep us here). Each
/// chain is read once ([`Chain::read`]); a chain that cannot be read is returned with used
/// length 0. `handle` says what became of the others. Returns whether the driver should be
/// interrupted.
pub fn process_available<F>(name: &'static str, queue: &mut Queue, mem: &GuestMemory, mut handle: F) -> Result<bool, QueueError>
where
    F: FnMut(&Chain) -> Served,
{
    let heads: Vec<u16> = queue.iter(mem).map_err(QueueError::AvailRing)?.map(|chain| chain.head_index()).collect();
    let mut used_any = false;
    for (done, &head) in heads.iter().enumerate() {
        let used_len = match Chain::read_from(mem, queue, head) {
            Ok(chain) => match handle(&chain) {
                Served::Used(len) => len,
                Served::Later => {
                    // At most a queue's worth was taken, so this fits in u16.
                    let left = u16::try_from(heads.len() - done).unwrap_or(u16::MAX);
                    queue.set_next_avail(queue.next_avail().wrapping_sub(left));
                    break;
                }
            },
            Err(e) => {
                warn!(device = name, "{e}; returned unused");
                0
            }
        };
        match queue.add_used(mem, head, used_len) {
            Ok(()) => used_any = true,
            // A head index past the queue size cannot be returned; the chain is dropped.
            Err(e) => warn!(device = name, head, "cannot return descriptor chain to the used ring: {e}"),
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(QueueError::Notification)
}

/// What a device holds once activated: guest memory, its interrupt and its queues.
pub struct ActiveQueues {
    pub mem: GuestMemory,
    pub irq: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
}

impl ActiveQueues {
    /// Checks the queues the transport hands over at activation.
    pub fn new(
        device: &'static str,
        expected: usize,
        mem: GuestMemory,
        irq: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<Self, ActivateError> {
        if queues.len() != expected {
            return Err(ActivateError::QueueCount { device, expected, got: queues.len() });
        }
        if let Some(index) = queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue { device, index });
        }
        Ok(Self { mem, irq, queues })
    }

    /// Serves queue `index` with [`process_available`] and interrupts the driver if it should
    /// be. Errors are logged: they concern this queue only.
    pub fn process<F>(&mut self, device: &'static str, index: usize, handle: F)
    where
        F: FnMut(&GuestMemory, &Chain) -> Served,
    {
        let Some(queue) = self.queues.get_mut(index) else {
            error!(device, queue = index, "no such virtqueue");
            return;
        };
        let mem = &self.mem;
        let mut handle = handle;
        match process_available(device, queue, mem, |chain| handle(mem, chain)) {
            Ok(true) => {
                if let Err(e) = self.irq.trigger(InterruptKind::Queue(index as u16)) {
                    error!(device, queue = index, "cannot interrupt the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => error!(device, queue = index, "{e}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    //! A driver-side view of one queue in a test guest memory, built on `virtio_queue::mock`.

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    use super::GuestMemory;

    /// 1 MiB of guest memory: the queue at 0, buffers from [`DATA_BASE`].
    pub const MEM_SIZE: usize = 0x10_0000;
    pub const DATA_BASE: u64 = 0x1_0000;
    pub const QUEUE_SIZE: u16 = 16;

    pub fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// A descriptor: `writable` means device-writable.
    #[derive(Clone, Copy)]
    pub struct Desc {
        pub addr: u64,
        pub len: u32,
        pub writable: bool,
    }

    pub fn r(addr: u64, len: u32) -> Desc {
        Desc { addr, len, writable: false }
    }

    pub fn w(addr: u64, len: u32) -> Desc {
        Desc { addr, len, writable: true }
    }

    /// The driver side of one split virtqueue of `size` entries laid out at `base`
    /// (descriptors, then the avail ring, then the used ring), writing guest memory directly,
    /// as a device's tests drive it. (virtio-queue's `MockSplitQueue` is not used for these:
    /// in 0.18 it places the used ring inside the avail ring for queues bigger than 64.)
    pub struct DriverQueue {
        size: u16,
        /// Where the descriptor table is.
        pub desc: u64,
        avail: u64,
        used: u64,
        avail_idx: u16,
        used_seen: u16,
    }

    impl DriverQueue {
        /// The driver's view and the device's ready [`Queue`].
        pub fn new(mem: &GuestMemory, base: u64, size: u16) -> (DriverQueue, Queue) {
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            // The used ring is 4-byte aligned, after the avail ring's flags, index, entries
            // and used_event.
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            for at in [avail, used] {
                mem.write_obj(0u32, GuestAddress(at)).unwrap();
            }
            let mut queue = Queue::new(size).unwrap();
            queue.set_size(size);
            queue.set_ready(true);
            queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
            queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
            queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
            (DriverQueue { size, desc, avail, used, avail_idx: 0, used_seen: 0 }, queue)
        }

        /// Writes descriptor `index` as it is given: (address, length, flags, next).
        pub fn write_desc(&self, mem: &GuestMemory, index: u16, (addr, len, flags, next): (u64, u32, u16, u16)) {
            let at = self.desc + 16 * u64::from(index);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }

        /// Writes a chain of (address, length, flags) into descriptors `first..`, linked in
        /// order; returns its head.
        pub fn write_chain(&self, mem: &GuestMemory, first: u16, descs: &[(u64, u32, u16)]) -> u16 {
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let index = first + i as u16;
                let last = i + 1 == descs.len();
                let next = VRING_DESC_F_NEXT as u16;
                self.write_desc(mem, index, (addr, len, if last { flags } else { flags | next }, if last { 0 } else { index + 1 }));
            }
            first
        }

        /// [`DriverQueue::write_chain`], then makes the chain available.
        pub fn add_chain(&mut self, mem: &GuestMemory, first: u16, descs: &[(u64, u32, u16)]) {
            let head = self.write_chain(mem, first, descs);
            self.publish(mem, head);
        }

        /// Makes the chain at `head` available.
        pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
            let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
            mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
        }

        /// The (head, len) of every used entry since the last call.
        pub fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u32, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen != idx {
                let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
                out.push((mem.read_obj(GuestAddress(at)).unwrap(), mem.read_obj(GuestAddress(at + 4)).unwrap()));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    pub struct TestQueue<'a> {
        pub mock: MockSplitQueue<'a, GuestMemory>,
        mem: &'a GuestMemory,
    }

    impl<'a> TestQueue<'a> {
        pub fn new(mem: &'a GuestMemory) -> Self {
            Self { mock: MockSplitQueue::new(mem, QUEUE_SIZE), mem }
        }

        /// A queue whose table and rings start at `addr` (for devices with several queues).
        pub fn at(mem: &'a GuestMemory, addr: u64) -> Self {
            Self { mock: MockSplitQueue::create(mem, GuestAddress(addr), QUEUE_SIZE), mem }
        }

        /// The device-side queue, as the transport would build it.
        pub fn queue(&self) -> Queue {
            let q: Queue = self.mock.create_queue().unwrap();
            assert!(q.is_valid(self.mem));
            q
        }

        /// Makes one properly linked chain available (descriptors at table index 0..).
        pub fn add_chain(&self, descs: &[Desc]) {
            self.add_chain_at(descs, 0);
        }

        /// Makes one properly linked chain available, its descriptors at table index `at`..
        /// (so that several chains can be pending at once).
        pub fn add_chain_at(&self, descs: &[Desc], at: u16) {
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut flags = if d.writable { VRING_DESC_F_WRITE as u16 } else { 0 };
                    let last = i + 1 == descs.len();
                    if !last {
                        flags |= VRING_DESC_F_NEXT as u16;
                    }
                    let next = if last { 0 } else { at + i as u16 + 1 };
                    RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next))
                })
                .collect();
            self.mock.add_desc_chains(&raw, at).unwrap();
        }

        /// Makes raw descriptors available as given (flags and next indices untouched): for
        /// loops and dangling links.
        pub fn add_raw(&self, descs: &[(u64, u32, u16, u16)]) {
            let raw: Vec<RawDescriptor> =
                descs.iter().map(|&(addr, len, flags, next)| RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))).collect();
            self.mock.add_desc_chains(&raw, 0).unwrap();
        }

        pub fn used_idx(&self) -> u16 {
            self.mock.used().idx().load()
        }

        /// The (head, len) of used entry `i`.
        pub fn used(&self, i: u16) -> (u32, u32) {
            let e = self.mock.used().ring().ref_at(usize::from(i % QUEUE_SIZE)).unwrap().load();
            (e.id(), e.len())
        }

        pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }

        pub fn write(&self, addr: u64, data: &[u8]) {
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::*;
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn first_chain(mem: &GuestMemory, tq: &TestQueue<'_>) -> Result<Chain, ChainError> {
        let mut q = tq.queue();
        let head = q.iter(mem).unwrap().next().unwrap().head_index();
        Chain::read_from(mem, &q, head)
    }

    fn parse_first(mem: &GuestMemory, tq: &TestQueue<'_>) -> Result<ChainBuffers, ChainError> {
        ChainBuffers::parse(mem, &first_chain(mem, tq)?)
    }

    #[test]
    fn parse_splits_readable_and_writable() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[r(DATA_BASE, 16), r(DATA_BASE + 0x100, 0), w(DATA_BASE + 0x200, 8), w(DATA_BASE + 0x300, 1)]);
        let b = parse_first(&mem, &tq).unwrap();
        assert_eq!(b.readable, vec![Segment { addr: GuestAddress(DATA_BASE), len: 16 }]);
        assert_eq!(b.writable.len(), 2);
        assert_eq!(b.writable_len(), 9);
    }

    #[test]
    fn parse_rejects_bad_chains() {
        let mem = memory();
        // Outside memory.
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[r(MEM_SIZE as u64 - 8, 16)]);
        assert!(matches!(parse_first(&mem, &tq), Err(ChainError::OutsideMemory { .. })));
        // Readable after writable.
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[w(DATA_BASE, 16), r(DATA_BASE + 0x100, 16)]);
        assert!(matches!(parse_first(&mem, &tq), Err(ChainError::ReadableAfterWritable { .. })));
        // A loop 0 -> 1 -> 0.
        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(DATA_BASE, 16, NEXT, 1), (DATA_BASE, 16, NEXT, 0)]);
        assert!(matches!(parse_first(&mem, &tq), Err(ChainError::Broken { .. })));
        // A next index past the table.
        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(DATA_BASE, 16, NEXT, 999)]);
        assert!(matches!(parse_first(&mem, &tq), Err(ChainError::Broken { count: 1, .. })));
        // Lengths that overflow u32 together.
        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(DATA_BASE, u32::MAX, NEXT, 1), (DATA_BASE, 2, WRITE, 0)]);
        assert!(matches!(parse_first(&mem, &tq), Err(ChainError::Broken { .. })));
    }

    #[test]
    fn an_indirect_descriptor_is_refused() {
        // VIRTIO_RING_F_INDIRECT_DESC is never offered, but virtio_queue's iterator follows an
        // indirect descriptor anyway: a table of 1000 descriptors made a 1000-descriptor chain.
        let mem = memory();
        let table = DATA_BASE + 0x1_0000;
        for i in 0..1000u64 {
            let flags = if i < 999 { NEXT } else { 0 };
            mem.write_obj(DATA_BASE, GuestAddress(table + 16 * i)).unwrap();
            mem.write_obj(16u32, GuestAddress(table + 16 * i + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(table + 16 * i + 12)).unwrap();
            mem.write_obj((i + 1) as u16, GuestAddress(table + 16 * i + 14)).unwrap();
        }
        let indirect = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(table, 16 * 1000, indirect, 0)]);
        let got = parse_first(&mem, &tq);
        assert!(matches!(got, Err(ChainError::Indirect { index: 0, .. })), "{got:?}");
        // An indirect descriptor further down a chain too.
        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(DATA_BASE, 16, NEXT, 1), (table, 16 * 4, indirect, 0)]);
        let got = parse_first(&mem, &tq);
        assert!(matches!(got, Err(ChainError::Indirect { index: 1, .. })), "{got:?}");
    }

    #[test]
    fn a_chain_is_read_once() {
        // What the device works from does not change when the driver rewrites the table.
        let mem = memory();
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[r(DATA_BASE, 16), w(DATA_BASE + 0x200, 1)]);
        let chain = first_chain(&mem, &tq).unwrap();
        tq.add_raw(&[(DATA_BASE + 0x400, 99, NEXT, 7)]);
        assert_eq!(chain.descriptors()[0], Descriptor { addr: GuestAddress(DATA_BASE), len: 16, writable: false });
        assert_eq!(chain.last_writable_byte(&mem), Some(GuestAddress(DATA_BASE + 0x200)));
    }

    #[test]
    fn a_chain_longer_than_its_queue_is_refused() {
        // 16 descriptors linked in a ring: every next index is valid, and the walk must stop.
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let ring: Vec<(u64, u32, u16, u16)> = (0..QUEUE_SIZE).map(|i| (DATA_BASE, 1, NEXT, (i + 1) % QUEUE_SIZE)).collect();
        tq.add_raw(&ring);
        let got = first_chain(&mem, &tq);
        assert!(matches!(got, Err(ChainError::Broken { count, .. }) if count == usize::from(QUEUE_SIZE)), "{got:?}");
        // A head past the queue.
        assert!(matches!(Chain::read(&mem, GuestAddress(0), QUEUE_SIZE, QUEUE_SIZE), Err(ChainError::Empty { .. })));
        // A table at the end of memory: the first descriptor cannot be read.
        assert!(matches!(Chain::read(&mem, GuestAddress(MEM_SIZE as u64 - 8), QUEUE_SIZE, 0), Err(ChainError::Empty { .. })));
        assert!(matches!(Chain::read(&mem, GuestAddress(u64::MAX - 8), QUEUE_SIZE, 3), Err(ChainError::Empty { .. })));
    }

    #[test]
    fn last_writable_byte_needs_a_proper_writable_end() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[r(DATA_BASE, 16), w(DATA_BASE + 0x200, 4)]);
        assert_eq!(first_chain(&mem, &tq).unwrap().last_writable_byte(&mem), Some(GuestAddress(DATA_BASE + 0x203)));

        let tq = TestQueue::new(&mem);
        tq.add_chain(&[w(DATA_BASE, 16), r(DATA_BASE + 0x200, 4)]);
        assert_eq!(first_chain(&mem, &tq).unwrap().last_writable_byte(&mem), None);

        let tq = TestQueue::new(&mem);
        tq.add_chain(&[r(DATA_BASE, 16), w(DATA_BASE + 0x200, 0)]);
        assert_eq!(first_chain(&mem, &tq).unwrap().last_writable_byte(&mem), None);

        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(DATA_BASE, 16, NEXT | WRITE, 1), (DATA_BASE, 16, NEXT | WRITE, 0)]);
        assert!(first_chain(&mem, &tq).is_err());
    }

    #[test]
    fn byte_ranges_span_segments() {
        let mem = memory();
        let segs = [Segment { addr: GuestAddress(DATA_BASE), len: 3 }, Segment { addr: GuestAddress(DATA_BASE + 0x100), len: 5 }];
        write_bytes(&mem, 0, &segs, 1, b"abcdef").unwrap();
        let mut out = [0u8; 8];
        read_bytes(&mem, 0, &segs, 0, &mut out).unwrap();
        assert_eq!(&out[1..7], b"abcdef");
        let tq = TestQueue::new(&mem);
        assert_eq!(tq.read(DATA_BASE + 1, 2), b"ab");
        assert_eq!(tq.read(DATA_BASE + 0x100, 4), b"cdef");
        assert!(matches!(read_bytes(&mem, 0, &segs, 4, &mut out), Err(ChainError::ShortBuffers { .. })));
        assert!(sub_segments(0, &segs, u64::MAX, 2).is_err());
    }
}
