//! One virtio-blk request: parsing a descriptor chain and serving it against the disk.
//!
//! A request chain is (virtio 1.2 §5.2.6): a 16-byte device-readable header
//! `{ type: le32, reserved: le32, sector: le64 }`, then data (device-readable for OUT,
//! device-writable for IN and GET_ID), then one device-writable status byte, the last byte
//! of the chain. Data may be split across any number of descriptors, and the header and
//! status may share descriptors with it.

use std::io::{Seek, SeekFrom};

use tracing::warn;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::Bytes;

use super::device::{Disk, SECTOR_SIZE};
use crate::devices::virtio::device::GuestMemory;
use crate::devices::virtio::queue::{
    drain_to_file, fill_from_file, read_bytes, sub_segments, write_bytes, Chain, ChainBuffers, ChainError, Segment, Served,
};
use crate::rate_limiter::RateLimiter;

/// Size of the request header.
const HEADER_LEN: u64 = 16;

/// Why a request failed (the guest sees IOERR, or UNSUPP for `Unsupported`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("virtio-blk request: {0}")]
    Chain(#[from] ChainError),
    #[error("virtio-blk request {head}: header needs 16 device-readable bytes, got {len}")]
    HeaderTooShort { head: u16, len: u64 },
    #[error("virtio-blk request {head}: type {kind} carries {len} bytes of data in the wrong direction")]
    WrongDirection { head: u16, kind: u32, len: u64 },
    #[error("virtio-blk request {head}: data length {len} is not a multiple of 512")]
    UnalignedLength { head: u16, len: u64 },
    #[error("virtio-blk request {head}: sectors {sector}+{len} bytes are beyond the disk's {capacity} sectors")]
    OutOfRange { head: u16, sector: u64, len: u64, capacity: u64 },
    #[error("virtio-blk request {head}: write to read-only disk {path}")]
    ReadOnly { head: u16, path: String },
    #[error("virtio-blk request {head}: {op} on disk {path} failed: {source}")]
    Io { head: u16, op: &'static str, path: String, source: std::io::Error },
    #[error("virtio-blk request {head}: unsupported request type {kind}")]
    Unsupported { head: u16, kind: u32 },
}

/// The two limiters of a disk: reads (IN) and writes (OUT). Flushes and GET_ID are not
/// limited: they move no data the guest chose the size of.
pub(crate) struct Limits {
    pub(crate) read: RateLimiter,
    pub(crate) write: RateLimiter,
}

/// A request, checked against the disk and the chain, before any of its work is done.
enum Request {
    /// Read `len` bytes at `offset` into `pieces`.
    In {
        offset: u64,
        pieces: Vec<Segment>,
        len: u64,
    },
    /// Write the `len` bytes of `pieces` at `offset`.
    Out {
        offset: u64,
        pieces: Vec<Segment>,
        len: u64,
    },
    Flush,
    /// The serial number into the first `len` bytes of `writable`.
    GetId {
        writable: Vec<Segment>,
        len: usize,
    },
}

/// Serves one chain (read once from the descriptor table, so its status byte and its data
/// come from the same descriptors): the request is checked, then admitted by its rate
/// limiter (or left for later), then done. Returns the used length (bytes written into the
/// chain, status included); a chain without a usable status byte is returned with length 0,
/// untouched.
pub(crate) fn serve(disk: &mut Disk, limits: &mut Limits, mem: &GuestMemory, chain: &Chain) -> Served {
    let head = chain.head_index();
    let Some(status_addr) = chain.last_writable_byte(mem) else {
        warn!(device = "block", head, "request chain has no device-writable status byte at its end; dropped");
        return Served::Used(0);
    };
    let result = match parse(disk, mem, chain) {
        Ok(request) => {
            let admitted = match &request {
                Request::In { len, .. } => limits.read.admit(*len),
                Request::Out { len, .. } => limits.write.admit(*len),
                Request::Flush | Request::GetId { .. } => true,
            };
            if !admitted {
                return Served::Later;
            }
            execute(disk, mem, head, request)
        }
        Err(e) => Err(e),
    };
    let (status, data_written) = match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(e @ RequestError::Unsupported { .. }) => {
            warn!(device = "block", "{e}");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
        Err(e) => {
            warn!(device = "block", "{e}");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    // `status_addr` was checked to be inside guest memory; a failure here means the guest
    // memory map is broken, and the chain goes back untouched.
    if let Err(e) = mem.write_obj(status as u8, status_addr) {
        warn!(device = "block", head, "cannot write request status at {:#x}: {e}", status_addr.0);
        return Served::Used(0);
    }
    Served::Used(data_written.saturating_add(1))
}

/// Checks that `len` bytes at `sector` lie within the disk; returns the byte offset.
fn disk_offset(disk: &Disk, head: u16, sector: u64, len: u64) -> Result<u64, RequestError> {
    let out_of_range = || RequestError::OutOfRange { head, sector, len, capacity: disk.capacity_sectors };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
    let end = offset.checked_add(len).ok_or_else(out_of_range)?;
    if end > disk.capacity_sectors * SECTOR_SIZE {
        return Err(out_of_range());
    }
    Ok(offset)
}

fn io_error(disk: &Disk, head: u16, op: &'static str, source: std::io::Error) -> RequestError {
    RequestError::Io { head, op, path: disk.path.display().to_string(), source }
}

/// Reads the header and checks the request against the disk (range, direction, alignment,
/// read-only) and the chain (buffers in guest memory, readable before writable).
fn parse(disk: &Disk, mem: &GuestMemory, chain: &Chain) -> Result<Request, RequestError> {
    let buffers = ChainBuffers::parse(mem, chain)?;
    let head = buffers.head_index;
    let readable = buffers.readable_len();
    if readable < HEADER_LEN {
        return Err(RequestError::HeaderTooShort { head, len: readable });
    }
    let mut header = [0u8; HEADER_LEN as usize];
    read_bytes(mem, head, &buffers.readable, 0, &mut header)?;
    let [k0, k1, k2, k3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = u32::from_le_bytes([k0, k1, k2, k3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);

    // Data bytes in each direction: after the header, and before the status byte
    // (`serve` checked the chain ends in a writable byte, so `writable_len() >= 1`).
    let data_in = readable - HEADER_LEN;
    let data_out = buffers.writable_len().saturating_sub(1);

    match kind {
        VIRTIO_BLK_T_IN => {
            if data_in != 0 {
                return Err(RequestError::WrongDirection { head, kind, len: data_in });
            }
            if !data_out.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::UnalignedLength { head, len: data_out });
            }
            let offset = disk_offset(disk, head, sector, data_out)?;
            let pieces = sub_segments(head, &buffers.writable, 0, data_out)?;
            Ok(Request::In { offset, pieces, len: data_out })
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return Err(RequestError::ReadOnly { head, path: disk.path.display().to_string() });
            }
            if data_out != 0 {
                return Err(RequestError::WrongDirection { head, kind, len: data_out });
            }
            if !data_in.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::UnalignedLength { head, len: data_in });
            }
            let offset = disk_offset(disk, head, sector, data_in)?;
            let pieces = sub_segments(head, &buffers.readable, HEADER_LEN, data_in)?;
            Ok(Request::Out { offset, pieces, len: data_in })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
        VIRTIO_BLK_T_GET_ID => {
            if data_in != 0 {
                return Err(RequestError::WrongDirection { head, kind, len: data_in });
            }
            let len = data_out.min(disk.serial.len() as u64) as usize;
            Ok(Request::GetId { writable: buffers.writable, len })
        }
        kind => Err(RequestError::Unsupported { head, kind }),
    }
}

/// Does a checked request; returns the number of data bytes written into the chain.
fn execute(disk: &mut Disk, mem: &GuestMemory, head: u16, request: Request) -> Result<u32, RequestError> {
    match request {
        Request::In { offset, pieces, len } => {
            disk.file.seek(SeekFrom::Start(offset)).map_err(|e| io_error(disk, head, "seek", e))?;
            fill_from_file(mem, head, &pieces, &mut disk.file, "disk image")?;
            // A chain's total length fits in u32 (`Chain::read` enforces it).
            Ok(u32::try_from(len).unwrap_or(u32::MAX))
        }
        Request::Out { offset, pieces, .. } => {
            disk.file.seek(SeekFrom::Start(offset)).map_err(|e| io_error(disk, head, "seek", e))?;
            drain_to_file(mem, head, &pieces, &mut disk.file, "disk image")?;
            Ok(0)
        }
        Request::Flush => {
            if !disk.read_only {
                disk.file.sync_data().map_err(|e| io_error(disk, head, "flush", e))?;
            }
            Ok(0)
        }
        Request::GetId { writable, len } => {
            let serial = disk.serial.get(..len).unwrap_or_default();
            write_bytes(mem, head, &writable, 0, serial)?;
            Ok(len as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::QueueOwnedT;

    use super::super::Block;
    use super::*;
    use crate::devices::virtio::device::{IrqTrigger, VirtioDevice, VIRTIO_MMIO_INT_VRING};
    use crate::devices::virtio::queue::test_utils::*;
    use crate::rate_limiter::Rates;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = DATA_BASE;
    const BUF: u64 = DATA_BASE + 0x1000;
    const STATUS: u64 = DATA_BASE + 0x8000;
    const DISK_SECTORS: u64 = 16;

    struct Fixture {
        file: tempfile::NamedTempFile,
        block: Block,
        irq: Arc<IrqTrigger>,
    }

    /// A 16-sector disk whose sector `i` is filled with byte `i`.
    fn fixture(mem: &GuestMemory, tq: &TestQueue<'_>, read_only: bool) -> Fixture {
        fixture_limited(mem, tq, read_only, Rates::default())
    }

    /// [`fixture`] with its reads limited to `read`.
    fn fixture_limited(mem: &GuestMemory, tq: &TestQueue<'_>, read_only: bool, read: Rates) -> Fixture {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for i in 0..DISK_SECTORS {
            file.write_all(&[i as u8; SECTOR_SIZE as usize]).unwrap();
        }
        file.flush().unwrap();
        let mut block = Block::new(file.path(), read_only).unwrap().with_rate_limits(read, Rates::default()).unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        block.activate(mem.clone(), irq.clone(), vec![tq.queue()]).unwrap();
        Fixture { file, block, irq }
    }

    fn header(tq: &TestQueue<'_>, kind: u32, sector: u64) {
        let mut h = Vec::new();
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        tq.write(HDR, &h);
    }

    fn status(tq: &TestQueue<'_>) -> u8 {
        tq.read(STATUS, 1)[0]
    }

    /// Queues a chain, runs the device, and returns the (head, used len) it produced.
    fn run(f: &mut Fixture, tq: &TestQueue<'_>, descs: &[Desc]) -> (u32, u32) {
        tq.write(STATUS, &[0xff]);
        let before = tq.used_idx();
        tq.add_chain(descs);
        f.block.process_queue();
        assert_eq!(tq.used_idx(), before.wrapping_add(1), "exactly one chain consumed");
        tq.used(before)
    }

    fn file_contents(f: &mut Fixture) -> Vec<u8> {
        let mut v = Vec::new();
        let mut file = std::fs::File::open(f.file.path()).unwrap();
        file.read_to_end(&mut v).unwrap();
        v
    }

    fn read_sector_ok(f: &mut Fixture, tq: &TestQueue<'_>, sector: u64) {
        header(tq, VIRTIO_BLK_T_IN, sector);
        let (_, len) = run(f, tq, &[r(HDR, 16), w(BUF, 512), w(STATUS, 1)]);
        assert_eq!(len, 513);
        assert_eq!(status(tq), VIRTIO_BLK_S_OK as u8);
        assert_eq!(tq.read(BUF, 512), vec![sector as u8; 512]);
    }

    #[test]
    fn config_reports_capacity_and_features() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let f = fixture(&mem, &tq, true);
        let mut cap = [0u8; 8];
        f.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        let mut seg_max = [0u8; 4];
        f.block.read_config(12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), 254);
        let mut past = [0xffu8; 4];
        f.block.read_config(100, &mut past);
        assert_eq!(past, [0; 4]);
        assert_ne!(f.block.avail_features() & (1 << VIRTIO_BLK_F_RO_BIT), 0);
        let rw = Block::new(f.file.path(), false).unwrap();
        assert_eq!(rw.avail_features() & (1 << VIRTIO_BLK_F_RO_BIT), 0);
        assert_ne!(rw.avail_features() & (1 << 32), 0, "VERSION_1 offered");
    }
    const VIRTIO_BLK_F_RO_BIT: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_F_RO;

    #[test]
    fn read_returns_disk_data_and_interrupts() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        read_sector_ok(&mut f, &tq, 3);
        assert_ne!(f.irq.interrupt_status() & VIRTIO_MMIO_INT_VRING, 0);
        assert_eq!(f.irq.evt.read().unwrap(), 1);
    }

    #[test]
    fn write_then_read_back_with_split_buffers() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
        tq.write(BUF, &data[..100]);
        tq.write(BUF + 0x1000, &data[100..1024]);
        header(&tq, VIRTIO_BLK_T_OUT, 5);
        let (_, len) = run(&mut f, &tq, &[r(HDR, 16), r(BUF, 100), r(BUF + 0x1000, 924), w(STATUS, 1)]);
        assert_eq!(len, 1);
        assert_eq!(status(&tq), VIRTIO_BLK_S_OK as u8);
        let disk = file_contents(&mut f);
        assert_eq!(&disk[5 * 512..7 * 512], &data[..]);
        assert_eq!(disk[4 * 512], 4, "neighbouring sectors untouched");
        assert_eq!(disk[7 * 512], 7);

        // Read it back into three pieces, the last sharing its descriptor with the status.
        header(&tq, VIRTIO_BLK_T_IN, 5);
        let (_, len) = run(&mut f, &tq, &[r(HDR, 16), w(BUF + 0x3000, 10), w(BUF + 0x4000, 1014), w(BUF + 0x5000, 0), w(STATUS, 1)]);
        assert_eq!(len, 1025);
        let mut back = tq.read(BUF + 0x3000, 10);
        back.extend(tq.read(BUF + 0x4000, 1014));
        assert_eq!(back, data);
        assert_eq!(status(&tq), VIRTIO_BLK_S_OK as u8);

        // Header and data in one readable descriptor, data and status in one writable one.
        let mut combined = Vec::new();
        combined.extend_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        combined.extend_from_slice(&[0; 4]);
        combined.extend_from_slice(&6u64.to_le_bytes());
        tq.write(HDR, &combined);
        tq.write(STATUS + 512, &[0xff]);
        tq.add_chain(&[r(HDR, 16), w(STATUS, 513)]);
        f.block.process_queue();
        assert_eq!(tq.read(STATUS + 512, 1)[0], VIRTIO_BLK_S_OK as u8);
        assert_eq!(tq.read(STATUS, 512), &data[512..]);
    }

    #[test]
    fn flush_and_get_id() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        header(&tq, VIRTIO_BLK_T_FLUSH, 0);
        let (_, len) = run(&mut f, &tq, &[r(HDR, 16), w(STATUS, 1)]);
        assert_eq!((len, status(&tq)), (1, VIRTIO_BLK_S_OK as u8));

        header(&tq, VIRTIO_BLK_T_GET_ID, 0);
        let (_, len) = run(&mut f, &tq, &[r(HDR, 16), w(BUF, 20), w(STATUS, 1)]);
        assert_eq!((len, status(&tq)), (21, VIRTIO_BLK_S_OK as u8));
        let id = tq.read(BUF, 20);
        assert!(id.starts_with(b"palisade"), "serial {id:?}");
        assert_eq!(id, f.block.disk.serial);
    }

    #[test]
    fn unsupported_type_gets_unsupp() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        header(&tq, 11 /* DISCARD */, 0);
        let (_, len) = run(&mut f, &tq, &[r(HDR, 16), r(BUF, 16), w(STATUS, 1)]);
        assert_eq!((len, status(&tq)), (1, VIRTIO_BLK_S_UNSUPP as u8));
        read_sector_ok(&mut f, &tq, 1);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, true);
        tq.write(BUF, &[0xee; 512]);
        header(&tq, VIRTIO_BLK_T_OUT, 2);
        let (_, len) = run(&mut f, &tq, &[r(HDR, 16), r(BUF, 512), w(STATUS, 1)]);
        assert_eq!((len, status(&tq)), (1, VIRTIO_BLK_S_IOERR as u8));
        assert_eq!(file_contents(&mut f)[2 * 512..3 * 512], [2u8; 512]);
        read_sector_ok(&mut f, &tq, 2);
    }

    /// Each malformed request fails with IOERR (status byte usable) and the next valid
    /// request still works.
    #[test]
    fn malformed_requests_fail_with_ioerr() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        let end = MEM_SIZE as u64;
        let cases: Vec<(&str, u32, u64, Vec<Desc>)> = vec![
            ("sector past the end", VIRTIO_BLK_T_IN, DISK_SECTORS, vec![r(HDR, 16), w(BUF, 512), w(STATUS, 1)]),
            ("write past the end", VIRTIO_BLK_T_OUT, DISK_SECTORS, vec![r(HDR, 16), r(BUF, 512), w(STATUS, 1)]),
            ("write crossing the end", VIRTIO_BLK_T_OUT, DISK_SECTORS - 1, vec![r(HDR, 16), r(BUF, 1024), w(STATUS, 1)]),
            ("range crossing the end", VIRTIO_BLK_T_IN, DISK_SECTORS - 1, vec![r(HDR, 16), w(BUF, 1024), w(STATUS, 1)]),
            ("sector overflowing u64", VIRTIO_BLK_T_OUT, u64::MAX / 2, vec![r(HDR, 16), r(BUF, 512), w(STATUS, 1)]),
            ("header too short", VIRTIO_BLK_T_IN, 0, vec![r(HDR, 8), w(BUF, 512), w(STATUS, 1)]),
            ("no header at all", VIRTIO_BLK_T_IN, 0, vec![w(BUF, 512), w(STATUS, 1)]),
            ("read with readable data", VIRTIO_BLK_T_IN, 0, vec![r(HDR, 16), r(BUF, 512), w(STATUS, 1)]),
            ("write with writable data", VIRTIO_BLK_T_OUT, 0, vec![r(HDR, 16), w(BUF, 512), w(STATUS, 1)]),
            ("unaligned length", VIRTIO_BLK_T_IN, 0, vec![r(HDR, 16), w(BUF, 100), w(STATUS, 1)]),
            ("data outside guest memory", VIRTIO_BLK_T_IN, 0, vec![r(HDR, 16), w(end - 256, 512), w(STATUS, 1)]),
            ("data at a huge address", VIRTIO_BLK_T_OUT, 0, vec![r(HDR, 16), r(u64::MAX - 100, 512), w(STATUS, 1)]),
            ("huge length", VIRTIO_BLK_T_IN, 0, vec![r(HDR, 16), w(BUF, u32::MAX - 100), w(STATUS, 1)]),
            ("readable after writable", VIRTIO_BLK_T_IN, 0, vec![r(HDR, 16), w(BUF, 512), r(BUF, 16), w(STATUS, 1)]),
        ];
        for (what, kind, sector, descs) in cases {
            header(&tq, kind, sector);
            let (_, len) = run(&mut f, &tq, &descs);
            assert_eq!((len, status(&tq)), (1, VIRTIO_BLK_S_IOERR as u8), "case: {what}");
        }
        let disk = file_contents(&mut f);
        assert_eq!(disk.len() as u64, DISK_SECTORS * SECTOR_SIZE, "disk not grown");
        assert_eq!(disk[..512], [0u8; 512], "nothing written");
        assert_eq!(disk[(DISK_SECTORS as usize - 1) * 512..], [DISK_SECTORS as u8 - 1; 512], "last sector untouched");
        read_sector_ok(&mut f, &tq, 7);
    }

    /// Chains without a usable status byte are consumed with used length 0.
    #[test]
    fn chains_without_status_are_consumed_untouched() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        header(&tq, VIRTIO_BLK_T_IN, 0);
        let end = MEM_SIZE as u64;
        let cases: Vec<(&str, Vec<Desc>)> = vec![
            ("status readable", vec![r(HDR, 16), w(BUF, 512), r(STATUS, 1)]),
            ("zero-length status", vec![r(HDR, 16), w(BUF, 512), w(STATUS, 0)]),
            ("status outside memory", vec![r(HDR, 16), w(BUF, 512), w(end, 1)]),
            ("header only", vec![r(HDR, 16)]),
        ];
        for (what, descs) in cases {
            tq.write(BUF, &[0xaa; 512]);
            let (_, len) = run(&mut f, &tq, &descs);
            assert_eq!(len, 0, "case: {what}");
            assert_eq!(tq.read(BUF, 512), vec![0xaa; 512], "case {what}: no data written");
        }

        // A descriptor loop and a dangling next index, written raw.
        for raw in [
            vec![(HDR, 16, NEXT, 1), (BUF, 512, NEXT | WRITE, 2), (STATUS, 1, NEXT | WRITE, 1)],
            vec![(HDR, 16, NEXT, 1), (BUF, 512, NEXT | WRITE, 2), (STATUS, 1, NEXT | WRITE, 500)],
        ] {
            tq.write(STATUS, &[0xff]);
            let before = tq.used_idx();
            tq.add_raw(&raw);
            f.block.process_queue();
            assert_eq!(tq.used_idx(), before.wrapping_add(1));
            assert_eq!(tq.used(before).1, 0);
            assert_eq!(status(&tq), 0xff, "status untouched");
        }
        read_sector_ok(&mut f, &tq, 9);
    }

    #[test]
    fn head_index_past_the_queue_is_skipped() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        // An available entry naming descriptor 200 of a 16-entry table.
        let idx = tq.mock.avail().idx().load();
        tq.mock.avail().ring().ref_at(usize::from(idx % QUEUE_SIZE)).unwrap().store(200);
        tq.mock.avail().idx().store(idx.wrapping_add(1));
        f.block.process_queue();
        assert_eq!(tq.used_idx(), 0, "nothing can be returned for a bogus head");
        read_sector_ok(&mut f, &tq, 4);
    }

    #[test]
    fn bogus_available_index_does_not_loop() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        tq.mock.avail().idx().store(1000); // more entries than the queue holds
        f.block.process_queue();
        assert_eq!(tq.used_idx(), 0);
    }

    /// The status byte and the data come from one read of the descriptor table: a driver
    /// rewriting the table after the device read the chain changes neither (on the old
    /// two-walk code the status went where the second walk said).
    #[test]
    fn a_request_is_served_from_one_read_of_its_chain() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        header(&tq, VIRTIO_BLK_T_IN, 3);
        tq.write(STATUS, &[0xff]);
        tq.add_chain(&[r(HDR, 16), w(BUF, 512), w(STATUS, 1)]);
        let mut queue = tq.queue();
        let head = queue.iter(&mem).unwrap().next().unwrap().head_index();
        let chain = Chain::read_from(&mem, &queue, head).unwrap();
        // The driver now points the data at the header and the status elsewhere.
        tq.add_raw(&[(HDR, 16, NEXT, 1), (HDR, 512, NEXT | WRITE, 2), (STATUS + 0x100, 1, WRITE, 0)]);
        tq.write(STATUS + 0x100, &[0xee]);
        let served = serve(&mut f.block.disk, &mut f.block.limits, &mem, &chain);
        assert_eq!(served, Served::Used(513));
        assert_eq!(status(&tq), VIRTIO_BLK_S_OK as u8, "status where the chain said when it was read");
        assert_eq!(tq.read(STATUS + 0x100, 1), [0xee], "not where the table says now");
        assert_eq!(tq.read(BUF, 512), vec![3u8; 512]);
    }

    /// Reads limited to 1024 bytes a second: two 512-byte reads go at once, the third waits
    /// for the limiter's timer (the guest's kicks meanwhile change nothing), then goes.
    #[test]
    fn reads_beyond_the_rate_wait_for_the_limiter() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture_limited(&mem, &tq, false, Rates { bytes_per_sec: Some(1024), ops_per_sec: None });
        header(&tq, VIRTIO_BLK_T_IN, 2);
        for i in 0..3u16 {
            let at = u64::from(i) * 0x1000;
            tq.write(STATUS + at, &[0xff]);
            tq.add_chain_at(&[r(HDR, 16), w(BUF + at, 512), w(STATUS + at, 1)], i * 3);
        }
        let started = std::time::Instant::now();
        f.block.process_queue();
        assert_eq!(tq.used_idx(), 2, "two reads within the first second's bytes");
        assert_eq!(tq.read(STATUS + 0x2000, 1), [0xff], "the third not touched");
        assert!(f.block.limits.read.is_blocked());
        f.block.process_queue();
        assert_eq!(tq.used_idx(), 2, "a kick while blocked serves nothing");

        let mut fds = [libc::pollfd { fd: f.block.limits.read.timer_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) }, 1, "the limiter's timer fires");
        assert!(started.elapsed() >= std::time::Duration::from_millis(400), "after ~0.5 s: {:?}", started.elapsed());
        f.block.limits.read.timer_fired();
        f.block.process_queue();
        assert_eq!(tq.used_idx(), 3);
        assert_eq!(tq.used(2), (6, 513));
        assert_eq!(tq.read(STATUS + 0x2000, 1), [VIRTIO_BLK_S_OK as u8]);
        assert_eq!(tq.read(BUF + 0x2000, 512), vec![2u8; 512]);
    }

    /// Writes and flushes are not held up by a read limit.
    #[test]
    fn a_read_limit_does_not_hold_up_writes() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture_limited(&mem, &tq, false, Rates { bytes_per_sec: Some(1), ops_per_sec: Some(1) });
        for _ in 0..5 {
            tq.write(BUF, &[0xab; 512]);
            header(&tq, VIRTIO_BLK_T_OUT, 1);
            let (_, len) = run(&mut f, &tq, &[r(HDR, 16), r(BUF, 512), w(STATUS, 1)]);
            assert_eq!((len, status(&tq)), (1, VIRTIO_BLK_S_OK as u8));
        }
        assert_eq!(file_contents(&mut f)[512..1024], [0xab; 512]);
    }

    #[test]
    fn reset_deactivates() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut f = fixture(&mem, &tq, false);
        f.block.reset();
        assert!(!f.block.is_activated());
        header(&tq, VIRTIO_BLK_T_IN, 0);
        tq.add_chain(&[r(HDR, 16), w(BUF, 512), w(STATUS, 1)]);
        f.block.process_queue();
        assert_eq!(tq.used_idx(), 0);
    }
}
