//! A log file of bounded size that keeps its newest part: where the guest's console goes.
//!
//! The guest decides how much it prints, and run directories are often tmpfs (host RAM).
//! When the file reaches its limit, its newer half is moved to the front after a line that
//! says how many bytes were dropped so far; the file never exceeds the limit, the most recent
//! console output (what explains how a VM ended) is always there, and the cost is one copy of
//! half the limit per half-limit written. It runs on vCPU threads (console writes are port
//! I/O exits): plain `write(2)` normally, `pread64`/`pwrite64`/`ftruncate`/`lseek` when it
//! shrinks, which the vCPU threads' seccomp allowlist has for this reason.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Default size limit of a console log.
pub const DEFAULT_LIMIT: u64 = 4 << 20;

/// A file that holds at most `limit` bytes: the newest output, behind a "dropped" line.
pub struct TailLog {
    file: File,
    limit: u64,
    len: u64,
    /// Length of the "dropped" line at the front (0 before the first shrink).
    header: u64,
    dropped: u64,
}

impl TailLog {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, limit: u64) -> io::Result<TailLog> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(TailLog { file, limit: limit.max(4096), len: 0, header: 0, dropped: 0 })
    }

    /// Bytes dropped so far to stay under the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Moves the newer half to the front, behind the "dropped" line.
    fn shrink(&mut self) -> io::Result<()> {
        let keep = self.limit / 2;
        // The old "dropped" line is always in the part that goes (it is far shorter than half).
        let from = self.len.saturating_sub(keep).max(self.header);
        let mut tail = vec![0u8; (self.len - from) as usize];
        self.file.read_exact_at(&mut tail, from)?;
        // Start the kept part at a line boundary when there is one.
        let start = tail.iter().position(|&b| b == b'\n').map(|i| i + 1).filter(|&i| i < tail.len()).unwrap_or(0);
        self.dropped += from - self.header + start as u64;
        let header =
            format!("[palisade-vmm: {} bytes of older console output dropped to keep this log under {} bytes]\n", self.dropped, self.limit);
        self.file.write_all_at(header.as_bytes(), 0)?;
        self.file.write_all_at(&tail[start..], header.len() as u64)?;
        self.header = header.len() as u64;
        self.len = (header.len() + tail.len() - start) as u64;
        self.file.set_len(self.len)?;
        self.file.seek(SeekFrom::Start(self.len)).map(|_| ())
    }
}

impl Write for TailLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Never more than a quarter of the limit at once, so the file stays under it.
        let buf = &buf[..buf.len().min((self.limit / 4) as usize)];
        if self.len + buf.len() as u64 > self.limit {
            self.shrink()?;
        }
        // Sequential writes (`write(2)`, as any log): the file offset is always `len`.
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_keeps_the_newest_lines_under_the_limit_and_counts_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut log = TailLog::create(&path, 64 * 1024).unwrap();
        let mut written = 0u64;
        for i in 0..20_000 {
            let line = format!("line {i:06} of a guest that never stops printing\n");
            log.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            assert!(std::fs::metadata(&path).unwrap().len() <= 64 * 1024);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("line 019999 of a guest that never stops printing\n"));
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            format!("[palisade-vmm: {} bytes of older console output dropped to keep this log under 65536 bytes]", log.dropped())
        );
        // Every line after the header is whole, and nothing kept was counted as dropped.
        assert!(text.lines().skip(1).all(|l| l.starts_with("line ") && l.ends_with("printing")));
        assert_eq!(written - log.dropped(), (text.len() - first.len() - 1) as u64);
    }

    #[test]
    fn small_logs_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut log = TailLog::create(&path, DEFAULT_LIMIT).unwrap();
        log.write_all(b"booting\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"booting\n");
        assert_eq!(log.dropped(), 0);
    }
}
