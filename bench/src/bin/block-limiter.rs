//! `block-limiter`: what a rate limiter that never binds costs the virtio-blk device, measured
//! in-process: the real device (`palisade_vmm::devices::virtio::block::Block`) serves 64 KiB
//! reads of a disk image in the host's page cache, driven through a real split virtqueue in
//! guest memory by a minimal driver in this file, with no VM and no guest kernel (so the
//! figure is the device's own work, the part a limiter adds to).
//!
//! Contenders, interleaved round by round (A B A B …): the device with no limits, and the
//! same device with read limits of 1 TB/s and 10⁹ requests/s, which never bind but take
//! their tokens on every request. Reported: the median throughput of each and the ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use palisade_vmm::devices::virtio::block::{Block, SECTOR_SIZE};
use palisade_vmm::devices::virtio::{GuestMemory, IrqTrigger, VirtioDevice};
use palisade_vmm::rate_limiter::Rates;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 256;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const HEADERS: u64 = 0x4000;
const STATUS: u64 = 0x8000;
const BUFFERS: u64 = 0x10_0000;
/// Requests per batch (each a 3-descriptor chain: header, data, status).
const BATCH: u16 = 64;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_BLK_T_IN: u32 = 0;

#[derive(Parser)]
#[command(about = "virtio-blk throughput with and without a never-binding rate limiter, interleaved")]
struct Args {
    /// Rounds; each measures every contender once.
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    /// How long each contender runs per round.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    round_ms: u64,
    /// Size of each read request, KiB.
    #[arg(long, value_name = "KiB", default_value_t = 64)]
    request_kib: u64,
    /// Size of the disk image, MiB (read in turn, from the page cache).
    #[arg(long, value_name = "MiB", default_value_t = 64)]
    disk_mib: u64,
    /// Where the disk image goes [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
}

/// A driver for one queue: writes chains, makes them available, checks they came back.
struct Driver {
    mem: GuestMemory,
    avail_idx: u16,
    request_len: u32,
    next_sector: u64,
    disk_sectors: u64,
}

impl Driver {
    fn write_descriptor(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(DESC_TABLE + 16 * u64::from(index))).context("descriptor table")
    }

    /// Queues one batch of reads (descriptors 3i, 3i+1, 3i+2 for request i).
    fn queue_batch(&mut self) -> Result<()> {
        let sectors_per_request = u64::from(self.request_len) / SECTOR_SIZE;
        for i in 0..BATCH {
            let d = 3 * i;
            let header = HEADERS + 16 * u64::from(i);
            if self.next_sector + sectors_per_request > self.disk_sectors {
                self.next_sector = 0;
            }
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            h[8..16].copy_from_slice(&self.next_sector.to_le_bytes());
            self.next_sector += sectors_per_request;
            self.mem.write_slice(&h, GuestAddress(header)).context("request header")?;
            self.write_descriptor(d, header, 16, VIRTQ_DESC_F_NEXT, d + 1)?;
            let buffer = BUFFERS + u64::from(i) * u64::from(self.request_len);
            self.write_descriptor(d + 1, buffer, self.request_len, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, d + 2)?;
            self.write_descriptor(d + 2, STATUS + u64::from(i), 1, VIRTQ_DESC_F_WRITE, 0)?;
            let slot = AVAIL_RING + 4 + 2 * u64::from(self.avail_idx.wrapping_add(i) % QUEUE_SIZE);
            self.mem.write_obj(d, GuestAddress(slot)).context("available ring")?;
        }
        self.avail_idx = self.avail_idx.wrapping_add(BATCH);
        self.mem.write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2)).context("available index")
    }

    fn used_idx(&self) -> Result<u16> {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).context("used index")
    }
}

fn queue() -> Result<Queue> {
    let mut q = Queue::new(QUEUE_SIZE).context("queue")?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    Ok(q)
}

/// One contender: a device and its driver.
struct Contender {
    name: &'static str,
    block: Block,
    driver: Driver,
    irq: Arc<IrqTrigger>,
    samples: Vec<f64>,
}

impl Contender {
    fn new(name: &'static str, disk: &std::path::Path, rates: Rates, args: &Args) -> Result<Contender> {
        let request_len = u32::try_from(args.request_kib * 1024).context("--request-kib")?;
        let mem_size = usize::try_from(BUFFERS + u64::from(BATCH) * u64::from(request_len)).context("guest memory size")?;
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), mem_size)]).context("guest memory")?;
        let mut block = Block::new(disk, true)?.with_rate_limits(rates, Rates::default())?;
        let irq = Arc::new(IrqTrigger::new().context("interrupt eventfd")?);
        block.activate(mem.clone(), irq.clone(), vec![queue()?])?;
        let driver = Driver { mem, avail_idx: 0, request_len, next_sector: 0, disk_sectors: block.capacity_sectors() };
        Ok(Contender { name, block, driver, irq, samples: Vec::new() })
    }

    /// Serves batches for `span`; returns MiB/s.
    fn run(&mut self, span: Duration) -> Result<f64> {
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < span {
            self.driver.queue_batch()?;
            self.block.process_queue();
            ensure!(self.driver.used_idx()? == self.driver.avail_idx, "{}: the device did not serve the whole batch", self.name);
            let _ = self.irq.evt.read();
            bytes += u64::from(BATCH) * u64::from(self.driver.request_len);
        }
        Ok(bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("temporary directory for the disk image")?;
    let disk = dir.path().join("disk.img");
    let pattern: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&disk).with_context(|| format!("{}", disk.display()))?;
        for _ in 0..args.disk_mib {
            f.write_all(&pattern)?;
        }
    }
    let never_binding = Rates { bytes_per_sec: Some(1 << 40), ops_per_sec: Some(1_000_000_000) };
    let mut contenders = [
        Contender::new("no limiter", &disk, Rates::default(), &args)?,
        Contender::new("limiter, never binding", &disk, never_binding, &args)?,
    ];
    let span = Duration::from_millis(args.round_ms);
    // One warm-up round each (page cache, CPU frequency), not counted.
    for c in &mut contenders {
        c.run(span)?;
    }
    for round in 0..args.rounds {
        // Alternate which goes first, so neither always follows the other.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let rate = contenders[i].run(span)?;
            contenders[i].samples.push(rate);
        }
    }
    let base = median(&contenders[0].samples);
    let limited = median(&contenders[1].samples);
    let mut report = format!(
        "## virtio-blk: a rate limiter that never binds\n\n{} rounds of {} ms per contender, interleaved; {} KiB reads of a {} MiB image in the page cache, {} requests per queue notification; in-process (no VM).\n\n| contender | median MiB/s | min | max |\n|---|---|---|---|\n",
        args.rounds, args.round_ms, args.request_kib, args.disk_mib, BATCH
    );
    for c in &contenders {
        let min = c.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = c.samples.iter().copied().fold(0.0, f64::max);
        report.push_str(&format!("| {} | {:.0} | {:.0} | {:.0} |\n", c.name, median(&c.samples), min, max));
    }
    report.push_str(&format!("\nOverhead of the never-binding limiter (1 − ratio of medians): {:.2}%\n", (1.0 - limited / base) * 100.0));
    print!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
