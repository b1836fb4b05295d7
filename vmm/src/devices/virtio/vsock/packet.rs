//! The virtio-vsock wire format: the 44-byte packet header, operations and flags.
//!
//! Rx buffers are [`super::rx_buffer::RxBuffer`]s. Tx chains are read by
//! [`read_tx_chain`], which accepts any split of header and data over descriptors (the
//! spec allows it and Linux guests do split large packets), with every length checked.

use crate::devices::virtio::queue::Descriptor;
use vm_memory::{Bytes, GuestMemory};

/// The only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Operations (`op` field).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `OP_SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_F_RCV: u32 = 1;
/// `OP_SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_F_SEND: u32 = 2;

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = 44;

/// A decoded copy of a packet header (host byte order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The little-endian wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the little-endian wire form.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let u32_at = |i: usize| {
            let mut x = [0u8; 4];
            x.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(x)
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Why a tx chain from the guest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxChainError {
    #[error("a tx descriptor is device-writable")]
    WriteOnlyDescriptor,
    #[error("the tx chain holds {0} bytes, fewer than the {HEADER_SIZE}-byte header")]
    TooShort(usize),
    #[error("the tx chain holds more than the {limit} bytes a packet may have")]
    TooLong { limit: usize },
    #[error("the header announces {announced} data bytes but the chain holds {held}")]
    LengthMismatch { announced: u32, held: usize },
    #[error("a tx descriptor points outside guest memory ({addr:#x}, {len} bytes)")]
    OutOfMemory { addr: u64, len: u32 },
}

/// Reads one tx packet: the header and up to `max_data` bytes of data, gathered from every
/// readable descriptor of `chain` in order. Data beyond what the header's `len` announces
/// is an error, so is less.
pub fn read_tx_chain<M: GuestMemory + ?Sized>(mem: &M, chain: &[Descriptor], max_data: usize) -> Result<(Header, Vec<u8>), TxChainError> {
    let limit = HEADER_SIZE + max_data;
    let mut bytes = Vec::new();
    // The chain was read whole and checked (`Chain::read`: no loop, no dangling next, no
    // indirect table, at most a queue's worth of descriptors).
    for desc in chain {
        if desc.writable {
            return Err(TxChainError::WriteOnlyDescriptor);
        }
        let len = desc.len as usize;
        if bytes.len() + len > limit {
            return Err(TxChainError::TooLong { limit });
        }
        let at = bytes.len();
        bytes.resize(at + len, 0);
        mem.read_slice(&mut bytes[at..], desc.addr).map_err(|_| TxChainError::OutOfMemory { addr: desc.addr.0, len: desc.len })?;
    }
    if bytes.len() < HEADER_SIZE {
        return Err(TxChainError::TooShort(bytes.len()));
    }
    let mut raw = [0u8; HEADER_SIZE];
    raw.copy_from_slice(&bytes[..HEADER_SIZE]);
    let hdr = Header::from_bytes(&raw);
    let held = bytes.len() - HEADER_SIZE;
    if hdr.len as usize != held {
        // Drivers may hand a header-only chain with a bigger buffer; only the announced
        // length counts, but it must be there.
        if (hdr.len as usize) > held {
            return Err(TxChainError::LengthMismatch { announced: hdr.len, held });
        }
    }
    bytes.drain(..HEADER_SIZE);
    bytes.truncate(hdr.len as usize);
    Ok((hdr, bytes))
}

/// A readable name of an operation, for logs.
pub fn op_name(op: u16) -> &'static str {
    match op {
        OP_REQUEST => "REQUEST",
        OP_RESPONSE => "RESPONSE",
        OP_RST => "RST",
        OP_SHUTDOWN => "SHUTDOWN",
        OP_RW => "RW",
        OP_CREDIT_UPDATE => "CREDIT_UPDATE",
        OP_CREDIT_REQUEST => "CREDIT_REQUEST",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[test]
    fn a_tx_chain_is_a_header_and_its_announced_data() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let hdr = Header { op: OP_RW, type_: TYPE_STREAM, src_cid: 3, dst_cid: 2, len: 5, ..Default::default() };
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let d = |addr: u64, len: u32, writable: bool| Descriptor { addr: GuestAddress(addr), len, writable };
        let split = [d(0x1000, 20, false), d(0x1014, HEADER_SIZE as u32 - 20, false), d(0x2000, 5, false)];
        assert_eq!(read_tx_chain(&mem, &split, 4096), Ok((hdr, b"hello".to_vec())));
        assert_eq!(read_tx_chain(&mem, &split[..2], 4096), Err(TxChainError::LengthMismatch { announced: 5, held: 0 }));
        assert_eq!(read_tx_chain(&mem, &split[..1], 4096), Err(TxChainError::TooShort(20)));
        assert_eq!(read_tx_chain(&mem, &[], 4096), Err(TxChainError::TooShort(0)));
        assert_eq!(read_tx_chain(&mem, &split, 4), Err(TxChainError::TooLong { limit: HEADER_SIZE + 4 }));
        let writable = [d(0x1000, HEADER_SIZE as u32, true)];
        assert_eq!(read_tx_chain(&mem, &writable, 4096), Err(TxChainError::WriteOnlyDescriptor));
        let outside = [d(0xfff0, HEADER_SIZE as u32, false)];
        assert!(matches!(read_tx_chain(&mem, &outside, 4096), Err(TxChainError::OutOfMemory { .. })));
    }

    #[test]
    fn header_round_trips_through_wire_form() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 99,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_F_SEND,
            buf_alloc: 256 * 1024,
            fwd_cnt: 77,
        };
        let bytes = h.to_bytes();
        assert_eq!(&bytes[24..28], &99u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), h);
    }
}
