//! What the fuzz targets share: a guest memory whose queue and buffers come from the fuzzer's
//! bytes, and a reader over those bytes.
//!
//! The layout of [`GuestLayout`]: 64 KiB of guest memory; each queue `q` of size
//! [`QUEUE_SIZE`] has its descriptor table at `q * 0x1000`, its available ring at
//! `q * 0x1000 + 0x400` and its used ring at `q * 0x1000 + 0x800`; buffers anywhere. The
//! fuzzer's bytes are written over the whole memory from address 0, so it writes the
//! descriptors, the available ring and the buffers alike.

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
