//! Start-up timings for benchmarks: with `PALISADE_TIMINGS=1`, vmrun prints one line
//! `vmrun-timings: sandbox_started_ms=… agent_ready_ms=… [share_mounted_ms=…]
//! [rootfs_mounted_ms=…] [container_created_ms=…] command_started_ms=… command_exit_ms=…
//! vmm_rss_kib=… vmm_overhead_rss_kib=…` to stderr when it ends, each mark present when its
//! step happened. Times count from vmrun's start.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();
static MARKS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// Guest memory mappings are anonymous and at least this large; the VMM's own heap
/// and stacks are far smaller, so this splits "guest RAM" from "VMM overhead".
const GUEST_RAM_MAPPING_MIN_KIB: u64 = 32 * 1024;

/// Records vmrun's start; call first thing in `main`.
pub fn start() {
    START.get_or_init(Instant::now);
}

fn enabled() -> bool {
    std::env::var("PALISADE_TIMINGS").as_deref() == Ok("1")
}

/// Records the time of a named event.
pub fn mark(name: &'static str) {
    if !enabled() {
        return;
    }
    let ms = START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0;
    if let Ok(mut marks) = MARKS.lock() {
        marks.push((name, format!("{ms:.1}")));
    }
}

/// Records the VMM's resident memory: in all, and without the guest RAM mappings.
/// `pid` is the process vmrun started: the jail's supervisor, whose one child is the
/// jailed VMM (or, with `--no-jail`, the VMM itself). The supervisor's own RSS is
/// recorded as `supervisor_rss_kib`.
pub fn mark_vmm_memory(pid: u32) {
    if !enabled() {
        return;
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let vmm = children.split_whitespace().next().and_then(|c| c.parse::<u32>().ok());
    let rss = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok().map(|s| rss_split(&s));
    let Some((total, overhead)) = rss(vmm.unwrap_or(pid)) else { return };
    if let Ok(mut marks) = MARKS.lock() {
        marks.push(("vmm_rss_kib", total.to_string()));
        marks.push(("vmm_overhead_rss_kib", overhead.to_string()));
        if let Some((supervisor, _)) = vmm.and_then(|_| rss(pid)) {
            marks.push(("supervisor_rss_kib", supervisor.to_string()));
        }
    }
}

/// (total Rss, Rss outside guest RAM) in KiB, from `/proc/PID/smaps`. Guest RAM is a large
/// anonymous mapping, or the VMM's guest RAM file (when a vhost-user backend shares it).
pub fn rss_split(smaps: &str) -> (u64, u64) {
    let (mut total, mut overhead) = (0, 0);
    let (mut size, mut anonymous) = (0u64, false);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Size:") => size = words.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let rss: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                total += rss;
                if !(anonymous && size >= GUEST_RAM_MAPPING_MIN_KIB) {
                    overhead += rss;
                }
            }
            Some(first) if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) => {
                // A mapping header: "start-end perms offset dev inode [path]".
                anonymous = line.split_whitespace().nth(5).is_none_or(palisade_vmm::memory::is_guest_ram_path);
            }
            _ => {}
        }
    }
    (total, overhead)
}

/// Prints the timings line if enabled.
pub fn report() {
    if !enabled() {
        return;
    }
    let Ok(marks) = MARKS.lock() else { return };
    let fields: Vec<String> = marks.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("vmrun-timings: {}", fields.join(" "));
}

#[cfg(test)]
mod tests {
    use super::rss_split;

    #[test]
    fn guest_ram_is_split_from_vmm_overhead() {
        let smaps = "\
55d0-55e0 r-xp 00000000 08:01 123 /usr/bin/palisade-vmm
Size:                 64 kB
Rss:                  60 kB
7f00-7f10 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
7f20-7f30 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 500 kB
";
        assert_eq!(rss_split(smaps), (100560, 560));
        // Guest RAM in a memfd (shared with virtiofsd) is guest RAM too; other files are not.
        let memfd = "7f00-7f10 rw-s 00000000 00:01 77 /memfd:palisade-guest-ram (deleted)
Size:             262144 kB
Rss:              100000 kB
7f20-7f30 rw-s 00000000 00:01 78 /memfd:something-else (deleted)
Size:              65536 kB
Rss:                 700 kB
";
        assert_eq!(rss_split(memfd), (100700, 700));
        // So is guest RAM on the jail's tmpfs.
        let file = "7f00-7f10 rw-s 00000000 00:2a 2 /palisade-guest-ram (deleted)
Size:             262144 kB
Rss:              100000 kB
";
        assert_eq!(rss_split(file), (100000, 0));
    }
}
