//! Validated access to virtqueue descriptor chains, shared by the virtio devices.
//!
//! Everything here treats the chain as hostile: a chain is turned into lists of
//! guest-memory [`Segment`]s only after every descriptor was read successfully, the chain
//! ended properly (no dangling `NEXT`, no loop, no index past the table, no length
//! overflow: `virtio_queue`'s iterator stops on all of those, and we notice), device-readable
//! descriptors came before device-writable ones, and every buffer lies inside guest memory.

use std::fs::File;
use std::io;
use std::sync::Arc;

use tracing::{error, warn};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, WriteVolatile};

use super::device::{ActivateError, GuestMemory, IrqTrigger};

/// A descriptor chain as the queue iterator hands it out.
pub type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// Why a descriptor chain (one request) was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain {head}: no descriptors (bad head index or unreadable table)")]
    Empty { head: u16 },
    #[error(
        "descriptor chain {head}: broken after {count} descriptors (bad next index, loop, \
         too long, length overflow or unreadable descriptor)"
    )]
    Broken { head: u16, count: usize },
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

/// The buffers of one descriptor chain, split by direction and validated.
#[derive(Debug)]
pub struct ChainBuffers {
    pub head_index: u16,
    /// Device-readable buffers (driver to device), in chain order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers (device to driver), in chain order.
    pub writable: Vec<Segment>,
}

/// The most descriptors a chain may have: the largest queue any device offers. No device
/// offers `VIRTIO_RING_F_INDIRECT_DESC`, so a chain lives in its queue's descriptor table and
/// cannot be longer; `virtio_queue` follows indirect tables regardless (up to 65,535 more
/// descriptors), and a chain longer than this is refused as one that used one.
pub const MAX_CHAIN_DESCRIPTORS: usize = 256;

/// Walks a chain to its end; `Err` carries how many descriptors were read before it broke
/// (more than [`MAX_CHAIN_DESCRIPTORS`] is broken too).
fn collect_descriptors(chain: Chain<'_>) -> Result<Vec<Descriptor>, (u16, usize)> {
    let head = chain.head_index();
    let descriptors: Vec<Descriptor> = chain.take(MAX_CHAIN_DESCRIPTORS + 1).collect();
    match descriptors.last() {
        None => Err((head, 0)),
        Some(_) if descriptors.len() > MAX_CHAIN_DESCRIPTORS => Err((head, descriptors.len())),
        // The iterator stops early (without an error) on a bad next index, a loop (its TTL), an
        // unreadable descriptor or a length overflow: the last descriptor it gave still says NEXT.
        Some(last) if last.has_next() => Err((head, descriptors.len())),
        Some(_) => Ok(descriptors),
    }
}

fn in_memory(mem: &GuestMemory, addr: GuestAddress, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    GuestMemoryBackend::check_range(mem, addr, len)
}

impl ChainBuffers {
    /// Validates a whole chain; any defect rejects the chain.
    pub fn parse(mem: &GuestMemory, chain: Chain<'_>) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let descriptors = collect_descriptors(chain).map_err(|(head, count)| match count {
            0 => ChainError::Empty { head },
            count => ChainError::Broken { head, count },
        })?;
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for desc in descriptors {
            let len = u64::from(desc.len());
            if desc.is_write_only() {
                if len > 0 {
                    writable.push(Segment { addr: desc.addr(), len });
                }
            } else if !writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable { head });
            } else if len > 0 {
                readable.push(Segment { addr: desc.addr(), len });
            }
            if !in_memory(mem, desc.addr(), len) {
                return Err(ChainError::OutsideMemory { head, addr: desc.addr().0, len });
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

/// The address of the last byte of a chain whose last descriptor is device-writable, non-empty
/// and inside guest memory: where a device puts a trailing status byte. `None` for a broken
/// chain or one that ends otherwise.
pub fn last_writable_byte(mem: &GuestMemory, chain: &Chain<'_>) -> Option<GuestAddress> {
    let descriptors = collect_descriptors(chain.clone()).ok()?;
    let last = descriptors.last()?;
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let addr = last.addr().0.checked_add(u64::from(last.len()) - 1).map(GuestAddress)?;
    in_memory(mem, addr, 1).then_some(addr)
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

/// Serves every chain the driver has made available so far (one snapshot of the available
/// index, so at most one queue's worth: a guest that keeps adding cannot keep us here).
/// `handle` returns the number of bytes it wrote into the chain (the used length); each chain
/// is then returned on the used ring. Returns whether the driver should be interrupted.
pub fn process_available<F>(name: &'static str, queue: &mut Queue, mem: &GuestMemory, mut handle: F) -> Result<bool, QueueError>
where
    F: FnMut(Chain<'_>) -> u32,
{
    let chains: Vec<Chain<'_>> = queue.iter(mem).map_err(QueueError::AvailRing)?.collect();
    let mut used_any = false;
    for chain in chains {
        let head = chain.head_index();
        let used_len = handle(chain);
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
    pub irq: Arc<IrqTrigger>,
    pub queues: Vec<Queue>,
}

impl ActiveQueues {
    /// Checks the queues the transport hands over at activation.
    pub fn new(
        device: &'static str,
        expected: usize,
        mem: GuestMemory,
        irq: Arc<IrqTrigger>,
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
        F: FnMut(&GuestMemory, Chain<'_>) -> u32,
    {
        let Some(queue) = self.queues.get_mut(index) else {
            error!(device, queue = index, "no such virtqueue");
            return;
        };
        let mem = &self.mem;
        let mut handle = handle;
        match process_available(device, queue, mem, |chain| handle(mem, chain)) {
            Ok(true) => {
                if let Err(e) = self.irq.trigger_vring() {
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

    pub struct TestQueue<'a> {
        pub mock: MockSplitQueue<'a, GuestMemory>,
        mem: &'a GuestMemory,
    }

    impl<'a> TestQueue<'a> {
        pub fn new(mem: &'a GuestMemory) -> Self {
            Self { mock: MockSplitQueue::new(mem, QUEUE_SIZE), mem }
        }

        /// The device-side queue, as the transport would build it.
        pub fn queue(&self) -> Queue {
            let q: Queue = self.mock.create_queue().unwrap();
            assert!(q.is_valid(self.mem));
            q
        }

        /// Makes one properly linked chain available (descriptors at table index 0..).
        pub fn add_chain(&self, descs: &[Desc]) {
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let mut flags = if d.writable { VRING_DESC_F_WRITE as u16 } else { 0 };
                    let last = i + 1 == descs.len();
                    if !last {
                        flags |= VRING_DESC_F_NEXT as u16;
                    }
                    let next = if last { 0 } else { i as u16 + 1 };
                    RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, flags, next))
                })
                .collect();
            self.mock.add_desc_chains(&raw, 0).unwrap();
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

    fn parse_first(mem: &GuestMemory, tq: &TestQueue<'_>) -> Result<ChainBuffers, ChainError> {
        let mut q = tq.queue();
        let chain = q.iter(mem).unwrap().next().unwrap();
        ChainBuffers::parse(mem, chain)
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
    fn a_chain_through_an_indirect_table_longer_than_any_queue_is_refused() {
        // VIRTIO_RING_F_INDIRECT_DESC is never offered, but virtio_queue follows an indirect
        // descriptor anyway: a table of 1000 descriptors would make a 1000-descriptor chain.
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
        assert!(matches!(got, Err(ChainError::Broken { count: 257, .. })), "{got:?}");
    }

    #[test]
    fn last_writable_byte_needs_a_proper_writable_end() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[r(DATA_BASE, 16), w(DATA_BASE + 0x200, 4)]);
        let mut q = tq.queue();
        let chain = q.iter(&mem).unwrap().next().unwrap();
        assert_eq!(last_writable_byte(&mem, &chain), Some(GuestAddress(DATA_BASE + 0x203)));

        let tq = TestQueue::new(&mem);
        tq.add_chain(&[w(DATA_BASE, 16), r(DATA_BASE + 0x200, 4)]);
        let mut q = tq.queue();
        let chain = q.iter(&mem).unwrap().next().unwrap();
        assert_eq!(last_writable_byte(&mem, &chain), None);

        let tq = TestQueue::new(&mem);
        tq.add_raw(&[(DATA_BASE, 16, NEXT | WRITE, 1), (DATA_BASE, 16, NEXT | WRITE, 0)]);
        let mut q = tq.queue();
        let chain = q.iter(&mem).unwrap().next().unwrap();
        assert_eq!(last_writable_byte(&mem, &chain), None);
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
