//! The virtio-rng device: fills the driver's device-writable buffers with random bytes.
//!
//! Bytes go straight from `/dev/urandom` into guest memory (no host buffer), at most
//! [`MAX_BYTES_PER_REQUEST`] per request, so a guest cannot make the VMM do unbounded work
//! or allocate memory by offering huge buffers, and at most [`DEFAULT_RATES`] (or the rates
//! the VM was configured with) a second.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::device::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::devices::virtio::queue::{fill_from_file, sub_segments, ActiveQueues, Chain, ChainBuffers, ChainError, Served};
use crate::rate_limiter::{RateLimiter, RateLimiterError, Rates};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most random bytes one request gets.
pub const MAX_BYTES_PER_REQUEST: u64 = 64 * 1024;
/// What a guest may draw by default: 1 MiB and 1000 requests a second, far more than a
/// kernel seeding its pool asks for (a few 64-byte reads), and a bound on the host work a
/// guest that reads `/dev/hwrng` in a loop makes.
pub const DEFAULT_RATES: Rates = Rates { bytes_per_sec: Some(1 << 20), ops_per_sec: Some(1000) };
const NAME: &str = "rng";
const ENTROPY_SOURCE: &str = "/dev/urandom";

/// Why an entropy device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("virtio-rng: cannot open the entropy source {ENTROPY_SOURCE}: {0}")]
    Open(io::Error),
    #[error("virtio-rng: cannot create the queue eventfd: {0}")]
    QueueEvent(io::Error),
    #[error("virtio-rng: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// Why one entropy request failed (the chain goes back with used length 0).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("virtio-rng request: {0}")]
    Chain(#[from] ChainError),
    #[error("virtio-rng request {head}: {len} device-readable bytes in a request that must be device-writable only")]
    Readable { head: u16, len: u64 },
}

/// A virtio-rng device.
pub struct Rng {
    source: File,
    acked_features: u64,
    queue_sizes: [u16; 1],
    pub(crate) queue_events: Vec<EventFd>,
    pub(crate) active: Option<ActiveQueues>,
    pub(crate) limiter: RateLimiter,
}

impl Rng {
    /// Opens the host entropy source (do this before the VMM is jailed), with the
    /// [`DEFAULT_RATES`].
    pub fn new() -> Result<Rng, RngError> {
        Rng::with_rates(DEFAULT_RATES)
    }

    /// [`Rng::new`], limited to `rates` (bytes and requests a second; `Rates::default()`
    /// for none).
    pub fn with_rates(rates: Rates) -> Result<Rng, RngError> {
        let source = File::open(Path::new(ENTROPY_SOURCE)).map_err(RngError::Open)?;
        let queue_event = EventFd::new(libc::EFD_NONBLOCK).map_err(RngError::QueueEvent)?;
        let limiter = RateLimiter::new("virtio-rng", rates)?;
        Ok(Rng { source, acked_features: 0, queue_sizes: [QUEUE_SIZE], queue_events: vec![queue_event], active: None, limiter })
    }

    pub fn rates(&self) -> Rates {
        self.limiter.rates()
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Serves every request the driver has queued, then interrupts it if needed.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            debug!(device = NAME, "queue notification before activation ignored");
            return;
        };
        let source = &mut self.source;
        let limiter = &mut self.limiter;
        active.process(NAME, 0, |mem, chain| match fill(source, limiter, mem, chain) {
            Ok(served) => served,
            Err(e) => {
                warn!(device = NAME, "{e}");
                Served::Used(0)
            }
        });
    }
}

/// Fills one chain (if its rate limiter admits it now); returns the number of bytes written.
fn fill(source: &mut File, limiter: &mut RateLimiter, mem: &GuestMemory, chain: &Chain) -> Result<Served, RequestError> {
    let buffers = ChainBuffers::parse(mem, chain)?;
    let head = buffers.head_index;
    if !buffers.readable.is_empty() {
        return Err(RequestError::Readable { head, len: buffers.readable_len() });
    }
    let len = buffers.writable_len().min(MAX_BYTES_PER_REQUEST);
    if !limiter.admit(len) {
        return Ok(Served::Later);
    }
    let pieces = sub_segments(head, &buffers.writable, 0, len)?;
    fill_from_file(mem, head, &pieces, source, ENTROPY_SOURCE)?;
    // At most MAX_BYTES_PER_REQUEST, which fits in u32.
    Ok(Served::Used(len as u32))
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        debug!(device = NAME, offset, len = data.len(), "read of nonexistent configuration space");
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(device = NAME, offset, len = data.len(), "write to nonexistent configuration space ignored");
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn activate(&mut self, mem: GuestMemory, irq: Arc<dyn VirtioInterrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(NAME, 1, mem, irq, queues)?);
        debug!(device = NAME, "activated");
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

#[cfg(test)]
mod tests {

    use super::*;
    use crate::devices::virtio::device::{IrqTrigger, VIRTIO_MMIO_INT_VRING};
    use crate::devices::virtio::queue::test_utils::*;

    const BUF: u64 = DATA_BASE + 0x1000;
    const PATTERN: u8 = 0x5a;

    fn activated(mem: &GuestMemory, tq: &TestQueue<'_>) -> (Rng, Arc<IrqTrigger>) {
        let mut rng = Rng::new().unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        rng.activate(mem.clone(), irq.clone(), vec![tq.queue()]).unwrap();
        (rng, irq)
    }

    fn run(rng: &mut Rng, tq: &TestQueue<'_>, descs: &[Desc]) -> u32 {
        let before = tq.used_idx();
        tq.add_chain(descs);
        rng.process_queue();
        assert_eq!(tq.used_idx(), before.wrapping_add(1), "exactly one chain consumed");
        tq.used(before).1
    }

    /// True if the buffer no longer holds the fill pattern (256 random bytes all equal to
    /// the pattern has probability 2^-2048).
    fn randomised(tq: &TestQueue<'_>, addr: u64, len: usize) -> bool {
        tq.read(addr, len).iter().any(|&b| b != PATTERN)
    }

    #[test]
    fn fills_writable_buffers_and_interrupts() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let (mut rng, irq) = activated(&mem, &tq);
        tq.write(BUF, &[PATTERN; 0x2000]);
        let len = run(&mut rng, &tq, &[w(BUF, 256), w(BUF + 0x1000, 256)]);
        assert_eq!(len, 512);
        assert!(randomised(&tq, BUF, 256));
        assert!(randomised(&tq, BUF + 0x1000, 256));
        assert_eq!(tq.read(BUF + 256, 16), vec![PATTERN; 16], "nothing past the buffer");
        assert_ne!(irq.interrupt_status() & VIRTIO_MMIO_INT_VRING, 0);
        assert_eq!(irq.evt.read().unwrap(), 1);
    }

    /// Limited to 1000 bytes a second: a 600-byte request goes, the next waits for the
    /// limiter's timer, untouched, then goes.
    #[test]
    fn requests_beyond_the_rate_wait_for_the_limiter() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let mut rng = Rng::with_rates(Rates { bytes_per_sec: Some(1000), ops_per_sec: None }).unwrap();
        rng.activate(mem.clone(), Arc::new(IrqTrigger::new().unwrap()), vec![tq.queue()]).unwrap();
        tq.write(BUF, &[PATTERN; 0x2000]);
        tq.add_chain_at(&[w(BUF, 600)], 0);
        tq.add_chain_at(&[w(BUF + 0x1000, 600)], 1);
        rng.process_queue();
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.read(BUF + 0x1000, 600), vec![PATTERN; 600], "the second not served yet");
        let mut fds = [libc::pollfd { fd: rng.limiter.timer_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) }, 1, "the limiter's timer fires");
        rng.limiter.timer_fired();
        rng.process_queue();
        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used(1), (1, 600));
        assert!(randomised(&tq, BUF + 0x1000, 600));
    }

    #[test]
    fn the_default_rates_are_bounded() {
        let rates = Rng::new().unwrap().rates();
        assert_eq!(rates, DEFAULT_RATES);
        assert!(rates.bytes_per_sec.is_some_and(|n| n <= 16 << 20) && rates.ops_per_sec.is_some_and(|n| n <= 10_000), "{rates:?}");
    }

    #[test]
    fn requests_are_bounded() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let (mut rng, _irq) = activated(&mem, &tq);
        let big = 2 * MAX_BYTES_PER_REQUEST as usize;
        tq.write(BUF, &vec![PATTERN; big]);
        let len = run(&mut rng, &tq, &[w(BUF, big as u32)]);
        assert_eq!(u64::from(len), MAX_BYTES_PER_REQUEST);
        assert!(randomised(&tq, BUF + MAX_BYTES_PER_REQUEST - 256, 256));
        assert_eq!(tq.read(BUF + MAX_BYTES_PER_REQUEST, 4096), vec![PATTERN; 4096]);
    }

    #[test]
    fn malformed_requests_are_returned_empty() {
        let mem = memory();
        let tq = TestQueue::new(&mem);
        let (mut rng, _irq) = activated(&mem, &tq);
        tq.write(BUF, &[PATTERN; 512]);
        let end = MEM_SIZE as u64;
        let cases: Vec<(&str, Vec<Desc>)> = vec![
            ("readable buffer", vec![r(BUF, 256)]),
            ("readable then writable", vec![r(BUF, 16), w(BUF + 16, 256)]),
            ("outside guest memory", vec![w(end - 16, 256)]),
            ("huge address", vec![w(u64::MAX - 8, 256)]),
            ("huge length", vec![w(BUF, u32::MAX)]),
        ];
        for (what, descs) in cases {
            assert_eq!(run(&mut rng, &tq, &descs), 0, "case: {what}");
            assert_eq!(tq.read(BUF, 512), vec![PATTERN; 512], "case {what}: nothing written");
        }
        // A loop.
        let before = tq.used_idx();
        tq.add_raw(&[(BUF, 16, 3, 1), (BUF, 16, 3, 0)]); // NEXT | WRITE, 0 <-> 1
        rng.process_queue();
        assert_eq!(tq.used(before).1, 0);
        // Zero-length writable buffer: served, with nothing to write.
        assert_eq!(run(&mut rng, &tq, &[w(BUF, 0)]), 0);
        // And the device still works.
        assert_eq!(run(&mut rng, &tq, &[w(BUF, 256)]), 256);
        assert!(randomised(&tq, BUF, 256));
    }

    #[test]
    fn notifications_before_activation_do_nothing() {
        let mut rng = Rng::new().unwrap();
        rng.process_queue();
        assert!(!rng.is_activated());
        assert_eq!(rng.queue_events().len(), 1);
        assert_eq!(rng.device_type(), 4);
    }
}
