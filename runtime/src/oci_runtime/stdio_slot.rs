//! One of a monitor's standard descriptors (0, 1 or 2), lent to the relay that copies it.
//!
//! The monitor's stdio is the caller's pipes. When the guest process's stream ends, the
//! caller must see the end (EOF), so the monitor must let go of its end of the pipe. Closing
//! the descriptor would do that, but would leave its number free: the next descriptor the
//! monitor opens (a connection to the agent, a log file) would become its stdout, and
//! anything written there would land in it. Dropping a [`StdioSlot`] puts /dev/null in the
//! number instead (`dup2`, which releases the pipe in the same step).

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// A standard descriptor lent to one relay; see the module's documentation.
pub struct StdioSlot {
    fd: RawFd,
    /// The descriptor as a file, never closed by dropping it (see `Drop`).
    file: ManuallyDrop<File>,
}

impl StdioSlot {
    /// Lends descriptor `fd`.
    ///
    /// # Safety
    ///
    /// `fd` must be open and used by nothing else while the slot lives.
    pub unsafe fn new(fd: RawFd) -> StdioSlot {
        // SAFETY: the caller lends `fd` to this slot alone; the file is never dropped, so
        // it never closes `fd` behind the slot's `Drop`.
        StdioSlot { fd, file: ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }) }
    }
}

impl Read for StdioSlot {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for StdioSlot {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for StdioSlot {
    fn drop(&mut self) {
        let replaced = File::options().read(true).write(true).open("/dev/null").is_ok_and(|null| {
            // SAFETY: dup2 onto the descriptor this slot was lent: it closes the pipe and
            // puts /dev/null in its number in one step; `null` itself is closed after.
            unsafe { libc::dup2(null.as_raw_fd(), self.fd) >= 0 }
        });
        if !replaced {
            tracing::warn!("stdio descriptor {}: could not put /dev/null in its place; closing it", self.fd);
            // SAFETY: the slot's own descriptor, which nothing else uses.
            unsafe { libc::close(self.fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn a_dropped_slot_lets_go_of_the_pipe_but_keeps_its_number_on_dev_null() {
        let (mut read_end, write_end) = std::io::pipe().unwrap();
        let fd = OwnedFdNumber(write_end.into_raw_fd());
        // SAFETY: `fd` is the open write end of a pipe this test made, used by nothing else.
        let mut slot = unsafe { StdioSlot::new(fd.0) };
        slot.write_all(b"out").unwrap();
        drop(slot);
        let mut got = Vec::new();
        read_end.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"out", "the reader saw the bytes, then the end of the pipe");
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.0)).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "the number stays taken, by /dev/null");
    }

    /// Closes a descriptor number at the end of the test.
    struct OwnedFdNumber(RawFd);

    impl Drop for OwnedFdNumber {
        fn drop(&mut self) {
            // SAFETY: the test's own descriptor.
            unsafe { libc::close(self.0) };
        }
    }
}
