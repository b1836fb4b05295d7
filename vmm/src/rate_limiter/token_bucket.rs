//! A token bucket: `rate` tokens a second, holding at most one second's worth.

use std::time::{Duration, Instant};

/// A bucket that refills continuously at `rate` tokens a second up to `rate` (a one-second
/// burst). A cost larger than the bucket is admitted when the bucket is full and leaves it in
/// debt, so a large request waits in proportion to its size, like many small ones.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    /// Tokens available (negative: debt), as of `updated`.
    balance: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens a second (`rate` ≥ 1).
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1);
        TokenBucket { rate, balance: rate as f64, updated: now }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.balance = (self.balance + elapsed * self.rate as f64).min(self.rate as f64);
        self.updated = now;
    }

    /// How long until `cost` could be taken; zero when it can be now. Refills first.
    pub fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let needed = cost.min(self.rate) as f64;
        if self.balance >= needed {
            Duration::ZERO
        } else {
            // At least a millisecond: a timer armed for less wakes the loop for nothing.
            Duration::from_secs_f64((needed - self.balance) / self.rate as f64).max(Duration::from_millis(1))
        }
    }

    /// Takes `cost` tokens (after [`Self::wait_for`] said zero).
    pub fn take(&mut self, cost: u64) {
        self.balance -= cost as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_a_second_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, t0);
        assert_eq!(bucket.wait_for(1000, t0), Duration::ZERO);
        bucket.take(1000);
        assert_eq!(bucket.wait_for(100, t0), Duration::from_millis(100));
        assert_eq!(bucket.wait_for(100, t0 + Duration::from_millis(100)), Duration::ZERO);
        bucket.take(100);
        // It never holds more than a second's worth, however long it sat idle.
        assert_eq!(bucket.wait_for(1000, t0 + Duration::from_secs(60)), Duration::ZERO);
        bucket.take(1000);
        assert!(bucket.wait_for(1, t0 + Duration::from_secs(60)) > Duration::ZERO);
    }

    #[test]
    fn a_cost_larger_than_the_bucket_leaves_a_debt_in_proportion() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, t0);
        assert_eq!(bucket.wait_for(5000, t0), Duration::ZERO, "admitted when full");
        bucket.take(5000);
        // 4000 tokens of debt, then 1000 needed for the next large request: 5 s at 1000/s.
        let wait = bucket.wait_for(5000, t0);
        assert!((wait.as_secs_f64() - 5.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn sixteen_mib_at_one_mib_a_second_takes_at_least_fifteen_seconds() {
        // What `--device-read-bps /dev/vda:1mb` promises: simulate 128 KiB requests.
        let t0 = Instant::now();
        let mut now = t0;
        let mut bucket = TokenBucket::new(1 << 20, t0);
        for _ in 0..128 {
            now += bucket.wait_for(128 << 10, now);
            bucket.take(128 << 10);
        }
        let took = now - t0;
        assert!(took >= Duration::from_secs(15) && took <= Duration::from_millis(15_100), "{took:?}");
    }
}
