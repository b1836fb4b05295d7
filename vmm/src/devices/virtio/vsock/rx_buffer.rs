//! One rx buffer of the vsock device: the device-writable buffers of one descriptor chain, as
//! the device's single read of the chain ([`Chain::read`]) found them.
//!
//! The header and the data go where that read said, whatever the guest writes into its
//! descriptor table afterwards, and with any split of the buffer over descriptors (a 44-byte
//! header may itself span several).

use std::cmp::min;

use vm_memory::{GuestMemoryBackend, VolatileSlice};

use super::packet::{Header, HEADER_SIZE};
use crate::devices::virtio::device::GuestMemory;
use crate::devices::virtio::queue::{sub_segments, write_bytes, Chain, ChainBuffers, ChainError, Segment};

/// Why a chain the guest offered on the rx queue cannot take a packet.
#[derive(Debug, thiserror::Error)]
pub enum RxBufferError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("rx buffer {head}: has device-readable descriptors (an rx buffer is written by the device only)")]
    Readable { head: u16 },
    #[error("rx buffer {head}: {len} bytes, no room for data after the {HEADER_SIZE}-byte packet header")]
    TooShort { head: u16, len: u64 },
}

/// A validated rx buffer, ready for one packet.
#[derive(Debug)]
pub struct RxBuffer<'a> {
    mem: &'a GuestMemory,
    head: u16,
    writable: Vec<Segment>,
}

impl<'a> RxBuffer<'a> {
    /// Checks `chain` (already read once from the table) as an rx buffer: device-writable
    /// descriptors only, inside guest memory, room for a header and data (a header-only
    /// buffer could take a control packet but would stall a connection with data to send).
    pub fn new(mem: &'a GuestMemory, chain: &Chain) -> Result<Self, RxBufferError> {
        let head = chain.head_index();
        let buffers = ChainBuffers::parse(mem, chain)?;
        if !buffers.readable.is_empty() {
            return Err(RxBufferError::Readable { head });
        }
        let len = buffers.writable_len();
        if len <= HEADER_SIZE as u64 {
            return Err(RxBufferError::TooShort { head, len });
        }
        Ok(RxBuffer { mem, head, writable: buffers.writable })
    }

    /// Where up to `max` bytes of packet data go: the contiguous guest memory right after the
    /// header (the rest of the header's descriptor, or the next one), never more than `max`
    /// bytes (`None` only when `max` is 0).
    pub fn data_slice(&self, max: usize) -> Option<VolatileSlice<'a>> {
        let total: u64 = self.writable.iter().map(|s| s.len).sum();
        let room = total.checked_sub(HEADER_SIZE as u64).filter(|&n| n > 0)?;
        let first = *sub_segments(self.head, &self.writable, HEADER_SIZE as u64, room).ok()?.first()?;
        let len = min(usize::try_from(first.len).unwrap_or(usize::MAX), max);
        if len == 0 {
            return None;
        }
        // The segment was checked to lie in guest memory; if it spans two memory regions,
        // the part in the first one is enough for this packet.
        GuestMemoryBackend::get_slices(self.mem, first.addr, len).next()?.ok()
    }

    /// Writes the packet header at the start of the buffer.
    pub fn write_header(&mut self, hdr: &Header) -> Result<(), ChainError> {
        write_bytes(self.mem, self.head, &self.writable, 0, &hdr.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::queue::test_utils::{memory, r, w, Desc, TestQueue};

    fn chain(mem: &GuestMemory, descs: &[Desc]) -> Chain {
        let tq = TestQueue::new(mem);
        tq.add_chain(descs);
        Chain::read_from(mem, &tq.queue(), 0).unwrap()
    }

    fn header() -> Header {
        Header { src_cid: 2, dst_cid: 3, src_port: 1024, dst_port: 40000, len: 5, type_: 1, op: 5, flags: 0, buf_alloc: 7, fwd_cnt: 9 }
    }

    #[test]
    fn a_header_split_over_descriptors_is_written_whole() {
        let mem = memory();
        let mut rx = RxBuffer::new(&mem, &chain(&mem, &[w(0x10000, 20), w(0x20000, 24), w(0x30000, 100)])).unwrap();
        rx.write_header(&header()).unwrap();
        let mut first = [0u8; 20];
        let mut second = [0u8; 24];
        mem.read_slice(&mut first, GuestAddress(0x10000)).unwrap();
        mem.read_slice(&mut second, GuestAddress(0x20000)).unwrap();
        let mut wire = [0u8; HEADER_SIZE];
        wire[..20].copy_from_slice(&first);
        wire[20..].copy_from_slice(&second);
        assert_eq!(Header::from_bytes(&wire), header());
        // The data goes into the descriptor after the header's two.
        let data = rx.data_slice(usize::MAX).unwrap();
        assert_eq!(data.len(), 100);
        assert_eq!(data.ptr_guard().as_ptr(), mem.get_slice(GuestAddress(0x30000), 1).unwrap().ptr_guard().as_ptr());
    }

    #[test]
    fn data_follows_the_header_in_its_own_descriptor_and_is_capped() {
        let mem = memory();
        let rx = RxBuffer::new(&mem, &chain(&mem, &[w(0x10000, HEADER_SIZE as u32 + 4096)])).unwrap();
        assert_eq!(rx.data_slice(usize::MAX).unwrap().len(), 4096);
        assert_eq!(rx.data_slice(100).unwrap().len(), 100);
    }

    #[test]
    fn readable_or_short_buffers_are_refused() {
        let mem = memory();
        assert!(matches!(RxBuffer::new(&mem, &chain(&mem, &[r(0x10000, 64), w(0x20000, 64)])), Err(RxBufferError::Readable { .. })));
        assert!(matches!(RxBuffer::new(&mem, &chain(&mem, &[w(0x10000, 43)])), Err(RxBufferError::TooShort { len: 43, .. })));
        let header_only = &[w(0x10000, 20), w(0x20000, 24)];
        assert!(matches!(RxBuffer::new(&mem, &chain(&mem, header_only)), Err(RxBufferError::TooShort { len: 44, .. })));
    }

    #[test]
    fn the_buffer_is_where_the_one_read_of_the_chain_said() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        tq.add_chain(&[w(0x10000, 64)]);
        let walked = Chain::read_from(&mem, &tq.queue(), 0).unwrap();
        // The driver points the descriptor elsewhere once the device has read it.
        tq.add_chain(&[w(0x40000, 64)]);
        let mut rx = RxBuffer::new(&mem, &walked).unwrap();
        rx.write_header(&header()).unwrap();
        let mut wire = [0u8; HEADER_SIZE];
        mem.read_slice(&mut wire, GuestAddress(0x10000)).unwrap();
        assert_eq!(Header::from_bytes(&wire), header());
        mem.read_slice(&mut wire, GuestAddress(0x40000)).unwrap();
        assert_eq!(wire, [0u8; HEADER_SIZE]);
    }
}
