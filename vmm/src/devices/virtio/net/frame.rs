//! One frame's worth of descriptor chains: a tx chain read into a frame, an rx chain checked as
//! a buffer, and the checks on the vnet header in each direction.
//!
//! The vnet header is `struct virtio_net_hdr_v1` (virtio 1.2 §5.1.6): `flags: u8`,
//! `gso_type: u8`, `hdr_len: le16`, `gso_size: le16`, `csum_start: le16`, `csum_offset: le16`,
//! `num_buffers: le16`.

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_queue::Queue;

use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::device::GuestMemory;
use crate::devices::virtio::queue::{read_bytes, Chain, ChainBuffers, ChainError, Segment};

/// The largest Ethernet frame either way (without the vnet header): a 64 KiB TSO/UFO
/// super-frame with its Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65_562;
/// The smallest frame the device passes on: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Offset of `num_buffers` in the vnet header.
const NUM_BUFFERS: usize = 10;

/// Why a tx chain is not a frame (it is consumed, counted and dropped).
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("virtio-net tx: {0}")]
    Chain(#[from] ChainError),
    #[error("virtio-net tx chain {head}: has device-writable descriptors (a tx chain is read by the device only)")]
    Writable { head: u16 },
    #[error("virtio-net tx chain {head}: {len} bytes, less than the {VNET_HDR_LEN}-byte vnet header and a {MIN_FRAME}-byte frame")]
    TooShort { head: u16, len: u64 },
    #[error("virtio-net tx chain {head}: {len} bytes, more than the vnet header and a {MAX_FRAME}-byte frame")]
    TooLong { head: u16, len: u64 },
    #[error("virtio-net tx chain {head}: vnet header refused: {reason}")]
    Header { head: u16, reason: &'static str },
}

/// Why an rx chain cannot take frames (it is returned unused, with length 0).
#[derive(Debug, thiserror::Error)]
pub enum RxBufferError {
    #[error("virtio-net rx: {0}")]
    Chain(#[from] ChainError),
    #[error("virtio-net rx buffer {head}: has device-readable descriptors (an rx buffer is written by the device only)")]
    Readable { head: u16 },
    #[error("virtio-net rx buffer {head}: {len} bytes, smaller than the {VNET_HDR_LEN}-byte vnet header")]
    TooShort { head: u16, len: u64 },
}

fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// Reads the tx chain at `head` (once from the table) into `buf` (at least the vnet header
/// and [`MAX_FRAME`] long) and checks its vnet header against the `acked` features. Returns
/// the length of header and frame.
pub fn read_tx_frame(mem: &GuestMemory, queue: &Queue, head: u16, acked: u64, buf: &mut [u8]) -> Result<usize, TxError> {
    let chain = Chain::read_from(mem, queue, head)?;
    let buffers = ChainBuffers::parse(mem, &chain)?;
    if !buffers.writable.is_empty() {
        return Err(TxError::Writable { head });
    }
    let len = buffers.readable_len();
    if len < (VNET_HDR_LEN + MIN_FRAME) as u64 {
        return Err(TxError::TooShort { head, len });
    }
    let frame = usize::try_from(len).ok().and_then(|len| buf.get_mut(..len)).filter(|b| b.len() <= VNET_HDR_LEN + MAX_FRAME);
    let Some(frame) = frame else {
        return Err(TxError::TooLong { head, len });
    };
    read_bytes(mem, head, &buffers.readable, 0, frame)?;
    check_tx_header(frame, acked).map_err(|reason| TxError::Header { head, reason })?;
    Ok(frame.len())
}

/// A driver's header asks only for offloads it negotiated; flags the driver must not set
/// (`DATA_VALID`, `RSC_INFO`) are cleared rather than refused. `num_buffers` is not read (the
/// tap skips it).
fn check_tx_header(frame: &mut [u8], acked: u64) -> Result<(), &'static str> {
    let [flags, gso_type, ..] = frame else {
        return Err("shorter than a vnet header");
    };
    *flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    if *flags != 0 && !has(acked, VIRTIO_NET_F_CSUM) {
        return Err("NEEDS_CSUM without VIRTIO_NET_F_CSUM");
    }
    if *gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0 {
        return Err("GSO with ECN, VIRTIO_NET_F_HOST_ECN is not offered");
    }
    let needed = match u32::from(*gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
        VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_HDR_GSO_UDP => VIRTIO_NET_F_HOST_UFO,
        _ => return Err("unknown gso_type"),
    };
    if !has(acked, needed) {
        return Err("GSO type whose HOST_* feature was not negotiated");
    }
    Ok(())
}

/// Makes a header the tap wrote fit what the driver negotiated: without `GUEST_CSUM` the
/// flags must be zero (a partially checksummed frame is refused), and a GSO frame needs its
/// `GUEST_*` feature. The tap only makes such frames when [`offload_flags`] allowed them, but
/// frames queued before the driver (re)negotiated may still be in the tap.
pub fn check_rx_header(frame: &mut [u8], acked: u64) -> Result<(), &'static str> {
    let [flags, gso_type, ..] = frame else {
        return Err("shorter than a vnet header");
    };
    if !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        if *flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0 {
            return Err("partially checksummed frame for a driver without VIRTIO_NET_F_GUEST_CSUM");
        }
        *flags = 0;
    } else {
        *flags &= (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) as u8;
    }
    if *gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0 {
        return Err("GSO with ECN, VIRTIO_NET_F_GUEST_ECN is not offered");
    }
    let needed = match u32::from(*gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
        VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_HDR_GSO_UDP => VIRTIO_NET_F_GUEST_UFO,
        _ => return Err("unknown gso_type"),
    };
    if !has(acked, needed) {
        return Err("GSO frame for a driver without its GUEST_* feature");
    }
    Ok(())
}

/// Sets `num_buffers` in a header.
pub fn set_num_buffers(frame: &mut [u8], count: u16) {
    if let Some(field) = frame.get_mut(NUM_BUFFERS..NUM_BUFFERS + 2) {
        field.copy_from_slice(&count.to_le_bytes());
    }
}

/// The `TUNSETOFFLOAD` flags for what the driver accepted: what it may receive.
pub fn offload_flags(acked: u64) -> u32 {
    // TSO and UFO frames come with a partial checksum: without GUEST_CSUM, none.
    if !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if has(acked, feature) {
            flags |= flag;
        }
    }
    flags
}

/// A validated rx buffer, held by the device until a frame goes into it.
#[derive(Debug)]
pub struct RxChain {
    pub head: u16,
    pub segments: Vec<Segment>,
    /// Bytes it holds (at most `u32::MAX`: the chain's lengths add up in 32 bits).
    pub capacity: u32,
}

impl RxChain {
    /// Checks the rx chain at `head` (read once from the table): device-writable only, inside
    /// guest memory, room for at least a vnet header.
    pub fn read(mem: &GuestMemory, queue: &Queue, head: u16) -> Result<RxChain, RxBufferError> {
        let chain = Chain::read_from(mem, queue, head)?;
        let buffers = ChainBuffers::parse(mem, &chain)?;
        if !buffers.readable.is_empty() {
            return Err(RxBufferError::Readable { head });
        }
        let len = buffers.writable_len();
        if len < VNET_HDR_LEN as u64 {
            return Err(RxBufferError::TooShort { head, len });
        }
        Ok(RxChain { head, capacity: u32::try_from(len).unwrap_or(u32::MAX), segments: buffers.writable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = u64::MAX;

    #[test]
    fn tx_headers_ask_only_for_negotiated_offloads() {
        let mut hdr = [0u8; 12];
        assert_eq!(check_tx_header(&mut hdr, 0), Ok(()));
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        assert!(check_tx_header(&mut hdr, 0).is_err());
        assert_eq!(check_tx_header(&mut hdr, 1 << VIRTIO_NET_F_CSUM), Ok(()));
        hdr = [VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(check_tx_header(&mut hdr, 0), Ok(()));
        assert_eq!(hdr[0], 0, "DATA_VALID cleared");
        for (gso, feature) in [
            (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_F_HOST_TSO4),
            (VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_F_HOST_TSO6),
            (VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_F_HOST_UFO),
        ] {
            hdr[1] = gso as u8;
            assert!(check_tx_header(&mut hdr, ALL & !(1 << feature)).is_err());
            assert_eq!(check_tx_header(&mut hdr, 1 << feature), Ok(()));
        }
        hdr[1] = 2;
        assert!(check_tx_header(&mut hdr, ALL).is_err(), "unknown gso type");
        hdr[1] = (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8;
        assert!(check_tx_header(&mut hdr, ALL).is_err(), "ECN");
    }

    #[test]
    fn rx_headers_fit_what_the_driver_negotiated() {
        let mut hdr = [VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(check_rx_header(&mut hdr, 0), Ok(()));
        assert_eq!(hdr[0], 0, "no flags without GUEST_CSUM");
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        assert!(check_rx_header(&mut hdr, 0).is_err());
        assert_eq!(check_rx_header(&mut hdr, 1 << VIRTIO_NET_F_GUEST_CSUM), Ok(()));
        hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        assert!(check_rx_header(&mut hdr, 1 << VIRTIO_NET_F_GUEST_CSUM).is_err());
        assert_eq!(check_rx_header(&mut hdr, (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4)), Ok(()));
        set_num_buffers(&mut hdr, 0x0203);
        assert_eq!(hdr[10..12], [3, 2]);
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        assert_eq!(offload_flags(0), 0);
        assert_eq!(offload_flags(1 << VIRTIO_NET_F_GUEST_TSO4), 0, "TSO needs GUEST_CSUM");
        assert_eq!(offload_flags(1 << VIRTIO_NET_F_GUEST_CSUM), libc::TUN_F_CSUM);
        assert_eq!(offload_flags(ALL), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO);
    }
}
