//! `events`: a container's resource usage as runc's events (`{"type":"stats","id":…,
//! "data":{…}}`), once with `--stats`, else every `--interval` until the container stops,
//! with an `oom` event each time the OOM killer struck in it.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use palisade_protocol::{CgroupStats, Request, Response};
use serde_json::{json, Value};

use super::lifecycle::{agent, refused};
use super::store::{ContainerDir, Status};
use super::RuntimeError;

/// A Go duration as runc's `--interval` takes it (`5s`, `500ms`, `1m30s`, `1.5h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("--interval {text:?} is not a duration (e.g. 5s, 500ms, 1m)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total <= 0.0 || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// runc's `stats` event of `id`: limits of "max" as the largest u64, times in nanoseconds.
pub fn stats_event(id: &str, s: &CgroupStats) -> Value {
    let limit = |l: Option<u64>| l.unwrap_or(u64::MAX);
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {"total": s.cpu_usage_us * 1000, "kernel": s.cpu_system_us * 1000, "user": s.cpu_user_us * 1000},
                "throttling": {"throttledPeriods": s.cpu_throttled_periods, "throttledTime": s.cpu_throttled_us * 1000}
            },
            "memory": {
                "usage": {"limit": limit(s.memory_limit), "usage": s.memory_usage, "max": s.memory_peak, "failcnt": s.memory_limit_hits},
                "swap": {"limit": limit(s.swap_limit), "usage": s.swap_usage}
            },
            "pids": {"current": s.pids_current, "limit": s.pids_limit.unwrap_or(0)}
        }
    })
}

fn stats(root: &Path, id: &str) -> Result<Option<CgroupStats>, RuntimeError> {
    let locked = ContainerDir::open(root, id)?;
    let record = locked.read_record()?;
    if matches!(record.status(), Status::Stopped | Status::Creating) {
        return Ok(None);
    }
    match agent(root, &record)?.call(&Request::Stats { id: id.into() }) {
        Ok(Response::Stats(s)) => Ok(Some(s)),
        Ok(other) => Err(refused(id, "stats", other)),
        Err(e) => Err(RuntimeError::Other(format!("container {id}: stats: {e}"))),
    }
}

/// `events [--stats] [--interval D] ID`: prints events as JSON lines on stdout.
pub fn events(root: &Path, id: &str, once: bool, interval: Duration, signals: &Receiver<i32>) -> Result<(), RuntimeError> {
    let Some(first) = stats(root, id)? else {
        return Err(RuntimeError::State(format!("container {id} is not running")));
    };
    println!("{}", stats_event(id, &first));
    if once {
        return Ok(());
    }
    let mut oom_kills = first.oom_kills;
    let mut next = Instant::now() + interval;
    loop {
        // Wake for signals (SIGINT/SIGTERM end the stream) while waiting for the next tick.
        while Instant::now() < next {
            if let Ok(sig) = signals.recv_timeout(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(200))) {
                if matches!(sig, libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGPIPE) {
                    return Ok(());
                }
            }
        }
        next += interval;
        let Some(s) = stats(root, id)? else { return Ok(()) };
        for _ in oom_kills..s.oom_kills {
            println!("{}", json!({"type": "oom", "id": id}));
        }
        oom_kills = oom_kills.max(s.oom_kills);
        println!("{}", stats_event(id, &s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5", "s", "5x", "-1s", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stats_events_have_runcs_shape() {
        let s = CgroupStats {
            cpu_usage_us: 2,
            cpu_user_us: 1,
            memory_usage: 4096,
            pids_current: 3,
            pids_limit: Some(9),
            ..CgroupStats::default()
        };
        let e = stats_event("c1", &s);
        assert_eq!(e["type"], "stats");
        assert_eq!(e["id"], "c1");
        assert_eq!(e["data"]["cpu"]["usage"]["total"], 2000);
        assert_eq!(e["data"]["memory"]["usage"]["usage"], 4096);
        assert_eq!(e["data"]["memory"]["usage"]["limit"], u64::MAX, "no limit is the largest u64, as runc reports it");
        assert_eq!(e["data"]["pids"], json!({"current": 3, "limit": 9}));
    }
}
