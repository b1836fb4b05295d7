//! The virtio-blk device: a raw image file as a disk of 512-byte sectors.

use std::collections::hash_map::DefaultHasher;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Limits};
use crate::devices::virtio::device::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::devices::virtio::queue::ActiveQueues;
use crate::rate_limiter::{RateLimiter, RateLimiterError, Rates};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-blk sector: the unit of `capacity` and of request offsets.
pub const SECTOR_SIZE: u64 = 512;
const NAME: &str = "block";

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("virtio-blk: cannot open disk image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("virtio-blk: cannot read the size of disk image {path}: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error("virtio-blk: cannot create the queue eventfd for {path}: {source}")]
    QueueEvent { path: PathBuf, source: io::Error },
    #[error("virtio-blk {path}: {source}")]
    RateLimiter { path: PathBuf, source: RateLimiterError },
}

/// The backing file and what the guest may do with it.
pub(crate) struct Disk {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// Size in 512-byte sectors (a trailing partial sector is not exposed).
    pub(crate) capacity_sectors: u64,
    pub(crate) read_only: bool,
    /// What `VIRTIO_BLK_T_GET_ID` returns: ASCII, NUL-padded.
    pub(crate) serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// A virtio-blk device.
pub struct Block {
    pub(crate) disk: Disk,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    pub(crate) queue_events: Vec<EventFd>,
    pub(crate) active: Option<ActiveQueues>,
    pub(crate) limits: Limits,
}

fn limiter(path: &Path, rates: Rates) -> Result<RateLimiter, BlockError> {
    RateLimiter::new("virtio-blk", rates).map_err(|source| BlockError::RateLimiter { path: path.to_path_buf(), source })
}

/// A serial number derived from the image path: stable across runs for the same path.
fn serial_for(path: &Path) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut hasher = DefaultHasher::new();
    canonical.hash(&mut hasher);
    let text = format!("palisade{:012x}", hasher.finish() & 0xffff_ffff_ffff);
    let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    for (dst, src) in serial.iter_mut().zip(text.bytes()) {
        *dst = src;
    }
    serial
}

impl Block {
    /// Opens `path` as the disk (read-write unless `read_only`).
    pub fn new(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open { path: path.to_path_buf(), source })?;
        let len = file.metadata().map_err(|source| BlockError::Size { path: path.to_path_buf(), source })?.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            warn!(path = %path.display(), len, "virtio-blk: disk image size is not a multiple of 512; the last partial sector is not visible to the guest");
        }
        let queue_event = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BlockError::QueueEvent { path: path.to_path_buf(), source })?;
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        Ok(Block {
            disk: Disk { file, path: path.to_path_buf(), capacity_sectors: len / SECTOR_SIZE, read_only, serial: serial_for(path) },
            avail_features,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            queue_events: vec![queue_event],
            active: None,
            limits: Limits { read: limiter(path, Rates::default())?, write: limiter(path, Rates::default())? },
        })
    }

    /// Limits the guest's reads and writes of this disk (bytes and requests a second).
    pub fn with_rate_limits(mut self, read: Rates, write: Rates) -> Result<Block, BlockError> {
        self.limits = Limits { read: limiter(&self.disk.path, read)?, write: limiter(&self.disk.path, write)? };
        Ok(self)
    }

    /// The rates the disk's reads and writes are limited to.
    pub fn rate_limits(&self) -> (Rates, Rates) {
        (self.limits.read.rates(), self.limits.write.rates())
    }

    /// Disk size in 512-byte sectors, as the guest sees it.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    pub fn is_read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The configuration space (virtio 1.2 §5.2.4): capacity, size_max (unused), seg_max.
    fn config_bytes(&self) -> [u8; 16] {
        let mut config = [0u8; 16];
        config[0..8].copy_from_slice(&self.disk.capacity_sectors.to_le_bytes());
        // At most the queue size minus header and status descriptors of data segments.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config
    }

    /// Serves every request the driver has queued, then interrupts it if needed.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            debug!(device = NAME, "queue notification before activation ignored");
            return;
        };
        let disk = &mut self.disk;
        let limits = &mut self.limits;
        active.process(NAME, 0, |mem, chain| request::serve(disk, limits, mem, chain));
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
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
        self.active = Some(ActiveQueues::new(NAME, 1, mem, irq, queues)?);
        debug!(device = NAME, path = %self.disk.path.display(), "activated");
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }
}
