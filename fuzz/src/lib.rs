//! What the fuzz targets share: a guest memory whose queues and buffers come from the
//! fuzzer's bytes, and a reader over those bytes.
//!
//! The layout: 64 KiB of guest memory; each queue `q` of size [`QUEUE_SIZE`] has its
//! descriptor table at `q * 0x1000`, its available ring at `q * 0x1000 + 0x400` and its used
//! ring at `q * 0x1000 + 0x800`; buffers anywhere, the fuzzer's data from [`DATA_BASE`].
//! [`guest_memory`] writes the fuzzer's bytes over the whole memory from address 0 (for
//! targets that read the table directly); [`queue_memory`] builds each queue's available ring
//! and descriptor table from a compact encoding first, so that even a short input makes
//! requests the device serves (the whole-memory image needs a kilobyte before the first
//! available-ring byte, which a fuzzer growing from short inputs almost never reaches).

use palisade_vmm::devices::virtio::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Size of guest memory.
pub const MEM_SIZE: usize = 0x1_0000;
/// Entries of every fuzzed queue.
pub const QUEUE_SIZE: u16 = 16;

/// Reads the fuzzer's bytes front to back; past the end everything is zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        let (first, rest) = self.data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.data = rest;
        first
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Guest memory filled with `image` from address 0 (the rest zero).
pub fn guest_memory(image: &[u8]) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("64 KiB of guest memory");
    let len = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..len], GuestAddress(0)).expect("the image fits");
    mem
}

/// Where [`queue_memory`] puts the fuzzer's data (descriptors mostly point here).
pub const DATA_BASE: u64 = 0x8000;

/// Descriptor flag bits the fuzzer may set (`NEXT`, `WRITE`, `INDIRECT`); its bit 7 asks for
/// a wild 64-bit address instead of one in the data area.
const VIRTQ_FLAGS: u8 = 0x7;
const WILD_ADDRESS: u8 = 0x80;

/// Guest memory for `queues` queues: for each, a count of available heads (`u8`), the heads
/// (`u8` each, a few past the queue), then [`QUEUE_SIZE`] descriptors of `u16` address offset
/// from [`DATA_BASE`] (or a `u64` address, see `WILD_ADDRESS`), `u16` length, `u8` flags, `u8`
/// next; after all queues, the data from [`DATA_BASE`]. Missing bytes are zero.
pub fn queue_memory(input: &mut Input<'_>, queues: u16) -> GuestMemory {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("64 KiB of guest memory");
    for q in 0..queues {
        let base = queue_base(q);
        let count = u16::from(input.u8()) % (QUEUE_SIZE + 1);
        for slot in 0..count {
            let head = u16::from(input.u8()) % (QUEUE_SIZE + 2);
            mem.write_obj(head, GuestAddress(base + 0x404 + 2 * u64::from(slot))).expect("avail ring in memory");
        }
        mem.write_obj(count, GuestAddress(base + 0x402)).expect("avail idx in memory");
        for i in 0..u64::from(QUEUE_SIZE) {
            let offset = input.u16();
            let len = input.u16();
            let flags = input.u8();
            let next = u16::from(input.u8()) % (QUEUE_SIZE + 2);
            let addr = if flags & WILD_ADDRESS != 0 {
                u64::from(input.u32()) << 32 | u64::from(input.u32())
            } else {
                DATA_BASE + u64::from(offset)
            };
            let at = base + 16 * i;
            mem.write_obj(addr, GuestAddress(at)).expect("descriptor in memory");
            mem.write_obj(u32::from(len), GuestAddress(at + 8)).expect("descriptor in memory");
            mem.write_obj(u16::from(flags & VIRTQ_FLAGS), GuestAddress(at + 12)).expect("descriptor in memory");
            mem.write_obj(next, GuestAddress(at + 14)).expect("descriptor in memory");
        }
    }
    let data = input.rest();
    let len = data.len().min(MEM_SIZE - DATA_BASE as usize);
    mem.write_slice(&data[..len], GuestAddress(DATA_BASE)).expect("the data fits");
    mem
}

/// Where queue `index` lives.
pub fn queue_base(index: u16) -> u64 {
    u64::from(index) * 0x1000
}

/// Queue `index` as a driver would have set it up (size, rings, ready).
pub fn ready_queue(index: u16) -> Queue {
    let mut queue = Queue::new(QUEUE_SIZE).expect("a valid queue size");
    let base = queue_base(index) as u32;
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(base), Some(0));
    queue.set_avail_ring_address(Some(base + 0x400), Some(0));
    queue.set_used_ring_address(Some(base + 0x800), Some(0));
    queue.set_ready(true);
    queue
}
