//! What `ps` shows of a container's process, read from `/proc/PID`: bounded, and a process
//! that exits meanwhile is left out.

use palisade_protocol::{ProcessInfo, MAX_PROCESS_CMD_LEN};

/// Clock ticks per second of `/proc/PID/stat`'s times (USER_HZ is 100 on every Linux ABI).
const TICKS_PER_SECOND: u64 = 100;

/// The process `pid`, or `None` when it is gone.
pub fn process_info(pid: i32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    parse(pid, &stat, &status, &cmdline)
}

/// [`process_info`] from the text of `stat`, `status` and `cmdline`.
pub fn parse(pid: i32, stat: &str, status: &str, cmdline: &[u8]) -> Option<ProcessInfo> {
    // "PID (comm) state ppid …": comm may hold spaces and parentheses, so split at the last ')'.
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next()).and_then(|u| u.parse().ok())?;
    let cmdline = &cmdline[..cmdline.len().min(MAX_PROCESS_CMD_LEN)];
    let mut cmd: String =
        String::from_utf8_lossy(cmdline).trim_end_matches('\0').chars().map(|c| if c == '\0' { ' ' } else { c }).collect();
    if cmd.is_empty() {
        cmd = format!("[{comm}]");
    }
    Some(ProcessInfo { pid: pid as u32, ppid, uid, cpu_ms: ticks * 1000 / TICKS_PER_SECOND, cmd })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_status_and_cmdline() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 500 1000 10";
        let status = "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\n";
        let p = parse(42, stat, status, b"sleep\x0060\x00").unwrap();
        assert_eq!(p, ProcessInfo { pid: 42, ppid: 1, uid: 1000, cpu_ms: 100, cmd: "sleep 60".into() });
        assert_eq!(parse(42, stat, status, b"").unwrap().cmd, "[my (odd) cmd]");
        assert!(parse(42, "garbage", status, b"").is_none());
        let long = vec![b'x'; 10 * MAX_PROCESS_CMD_LEN];
        assert_eq!(parse(42, stat, status, &long).unwrap().cmd.len(), MAX_PROCESS_CMD_LEN);
    }

    #[test]
    fn this_process_is_readable() {
        let me = process_info(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.cmd.is_empty());
    }
}
