//! Rate limiters for the work a guest can make a device do (Firecracker's model): token
//! buckets for bytes and for operations, and a timer that wakes the device when a request
//! it put off could go.
//!
//! A device asks [`RateLimiter::admit`] before doing a request's work. When a bucket is
//! short the request is not done: the device leaves it (and those after it) on its queue,
//! the limiter arms its timer for when the tokens will be there, and the device comes back
//! when the timer fires ([`RateLimiter::timer_fired`]). The guest's notifications meanwhile
//! change nothing: a blocked limiter turns them away without touching the queue.

mod token_bucket;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

pub use token_bucket::TokenBucket;
use vmm_sys_util::timerfd::TimerFd;

/// Rates for one limiter; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    #[serde(default)]
    pub ops_per_sec: Option<u64>,
}

impl Rates {
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec.is_none() && self.ops_per_sec.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    #[error("rate limiter for {what}: cannot create its timer: {source}")]
    Timer { what: &'static str, source: io::Error },
}

/// Token buckets for bytes and operations, and the timer for when they are short.
pub struct RateLimiter {
    what: &'static str,
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter named after what it limits (for errors and logs).
    pub fn new(what: &'static str, rates: Rates) -> Result<RateLimiter, RateLimiterError> {
        let now = Instant::now();
        let timer = TimerFd::new().map_err(|e| RateLimiterError::Timer { what, source: io::Error::from_raw_os_error(e.errno()) })?;
        Ok(RateLimiter {
            what,
            bytes: rates.bytes_per_sec.map(|rate| TokenBucket::new(rate, now)),
            ops: rates.ops_per_sec.map(|rate| TokenBucket::new(rate, now)),
            timer,
            blocked: false,
        })
    }

    pub fn rates(&self) -> Rates {
        Rates { bytes_per_sec: self.bytes.as_ref().map(TokenBucket::rate), ops_per_sec: self.ops.as_ref().map(TokenBucket::rate) }
    }

    /// Whether a request was put off and the timer has not fired yet.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Whether a request of `bytes` bytes (one operation) may go now; if so its tokens are
    /// taken. If not, the timer is armed for when it may, and the limiter is blocked until
    /// then.
    pub fn admit(&mut self, bytes: u64) -> bool {
        self.admit_at(bytes, Instant::now())
    }

    fn admit_at(&mut self, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        if self.bytes.is_none() && self.ops.is_none() {
            return true;
        }
        let wait_bytes = self.bytes.as_mut().map_or(Duration::ZERO, |b| b.wait_for(bytes, now));
        let wait_ops = self.ops.as_mut().map_or(Duration::ZERO, |b| b.wait_for(1, now));
        let wait = wait_bytes.max(wait_ops);
        if wait.is_zero() {
            if let Some(b) = self.bytes.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = self.ops.as_mut() {
                b.take(1);
            }
            return true;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => self.blocked = true,
            // Without a timer nothing would wake the device: let the request go.
            Err(e) => {
                tracing::error!("rate limiter for {}: cannot arm its timer ({e}); not limiting this request", self.what);
                return true;
            }
        }
        false
    }

    /// The timer fired (its fd was readable): reads it and unblocks the limiter. The device
    /// then serves its queue again.
    pub fn timer_fired(&mut self) {
        if let Err(e) = self.timer.wait() {
            tracing::warn!("rate limiter for {}: reading its timer: {e}", self.what);
        }
        self.blocked = false;
    }

    /// The timer's fd, for the event loop.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlimited_limiter_admits_everything() {
        let mut limiter = RateLimiter::new("test", Rates::default()).unwrap();
        for _ in 0..10_000 {
            assert!(limiter.admit(u64::MAX));
        }
        assert!(!limiter.is_blocked());
    }

    #[test]
    fn a_short_bucket_blocks_until_the_timer_fires() {
        let mut limiter = RateLimiter::new("test", Rates { bytes_per_sec: Some(1000), ops_per_sec: None }).unwrap();
        let t0 = Instant::now();
        assert!(limiter.admit_at(1000, t0));
        assert!(!limiter.admit_at(50, t0));
        assert!(limiter.is_blocked());
        // Blocked: even with tokens back, nothing goes until the timer said so.
        assert!(!limiter.admit_at(50, t0 + Duration::from_secs(1)));
        let mut fds = [libc::pollfd { fd: limiter.timer_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5_000) };
        assert_eq!(ready, 1, "the timer fires (armed for ~50 ms)");
        limiter.timer_fired();
        assert!(!limiter.is_blocked());
        assert!(limiter.admit_at(50, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn both_buckets_must_admit_and_neither_is_charged_otherwise() {
        let mut limiter = RateLimiter::new("test", Rates { bytes_per_sec: Some(1_000_000), ops_per_sec: Some(2) }).unwrap();
        let t0 = Instant::now();
        assert!(limiter.admit_at(10, t0));
        assert!(limiter.admit_at(10, t0));
        assert!(!limiter.admit_at(10, t0), "the third operation in a second waits");
        limiter.blocked = false;
        // The byte bucket was not charged for the refused request.
        assert!(limiter.bytes.as_mut().unwrap().wait_for(1_000_000 - 20, t0).is_zero());
    }
}
