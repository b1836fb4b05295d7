//! A budget for the VMM's own log lines. Many warnings fire on something the guest does (a
//! malformed request, a bad descriptor, a kick of an unready queue), and the VMM's stderr is
//! often a file on tmpfs: a guest repeating such a thing must not fill host memory. Each
//! place that logs may burst, then log at a steady rate; past a total for the VM's life only
//! a count is said, once a minute. Lines that were held back are counted and said.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one log site may write at once (its bucket's size).
pub const BURST: u32 = 20;
/// Lines one log site may write per second, once its burst is spent.
pub const PER_SECOND: u32 = 5;
/// Lines the whole VMM writes at most over its life (then only a count each minute).
pub const LIFETIME: u64 = 10_000;
/// How often the count of held-back lines is said once the lifetime budget is spent.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What to do with one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `held_back` lines of this site were dropped since its last line.
    Write { held_back: u64 },
    /// Drop it (counted).
    Drop,
    /// Drop it, and say this many lines (in total) were dropped since the last summary.
    Summary { dropped: u64 },
}

struct Site {
    tokens: f64,
    refilled: Instant,
    held_back: u64,
}

struct State {
    sites: HashMap<usize, Site>,
    written: u64,
    dropped_since_summary: u64,
    last_summary: Option<Instant>,
}

/// Shared by every thread of the VMM (see `palisade-vmm`'s logging set-up).
pub struct LogBudget {
    state: Mutex<State>,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBudget {
    pub fn new() -> Self {
        LogBudget { state: Mutex::new(State { sites: HashMap::new(), written: 0, dropped_since_summary: 0, last_summary: None }) }
    }

    /// The verdict on a line from `site` (any stable id of the place that logs, e.g. the
    /// address of its callsite) at `now`.
    pub fn judge(&self, site: usize, now: Instant) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.written >= LIFETIME {
            state.dropped_since_summary += 1;
            let due = state.last_summary.is_none_or(|at| now.duration_since(at) >= SUMMARY_EVERY);
            if due {
                state.last_summary = Some(now);
                let dropped = std::mem::take(&mut state.dropped_since_summary);
                return Verdict::Summary { dropped };
            }
            return Verdict::Drop;
        }
        // Sites are few (one per log statement), so this map is bounded by the code.
        let entry = state.sites.entry(site).or_insert(Site { tokens: f64::from(BURST), refilled: now, held_back: 0 });
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * f64::from(PER_SECOND)).min(f64::from(BURST));
        entry.refilled = now;
        if entry.tokens >= 1.0 {
            entry.tokens -= 1.0;
            let held_back = std::mem::take(&mut entry.held_back);
            state.written += 1;
            Verdict::Write { held_back }
        } else {
            entry.held_back += 1;
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_bursts_then_is_held_to_its_rate_and_says_what_it_held_back() {
        let budget = LogBudget::new();
        let t0 = Instant::now();
        let written = (0..1000).filter(|_| matches!(budget.judge(1, t0), Verdict::Write { .. })).count();
        assert_eq!(written, BURST as usize);
        // Another site has its own budget.
        assert_eq!(budget.judge(2, t0), Verdict::Write { held_back: 0 });
        // A second later: PER_SECOND more, the first one saying how many were held back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.judge(1, t1), Verdict::Write { held_back: 1000 - BURST as u64 });
        let more = (0..100).filter(|_| matches!(budget.judge(1, t1), Verdict::Write { .. })).count();
        assert_eq!(more, PER_SECOND as usize - 1);
    }

    #[test]
    fn past_the_lifetime_budget_only_a_count_each_minute() {
        let budget = LogBudget::new();
        let mut now = Instant::now();
        let mut written = 0u64;
        // Many sites, ten seconds apart: each writes, until the lifetime budget is spent.
        let mut i = 0;
        while written < LIFETIME {
            if let Verdict::Write { .. } = budget.judge(i % 50, now) {
                written += 1;
            }
            i += 1;
            if i % 50 == 0 {
                now += Duration::from_secs(10);
            }
        }
        // The first line past the budget is a summary; the next ones are dropped until a
        // minute has passed, then one summary counts them.
        assert_eq!(budget.judge(7, now), Verdict::Summary { dropped: 1 });
        let dropped: Vec<Verdict> = (0..500).map(|_| budget.judge(7, now)).collect();
        assert!(dropped.iter().all(|v| *v == Verdict::Drop));
        assert_eq!(budget.judge(7, now + SUMMARY_EVERY), Verdict::Summary { dropped: 501 });
    }
}
