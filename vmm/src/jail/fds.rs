//! Closing every inherited file descriptor the VMM does not need.

use std::os::fd::RawFd;

use super::JailError;

/// Closes every descriptor except stdin, stdout, stderr and `keep`.
pub fn close_all_except(keep: &[RawFd]) -> Result<(), JailError> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: u32 = 3;
    for fd in keep {
        let fd = fd as u32;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> Result<(), JailError> {
    // SAFETY: close_range only closes descriptors; none in the range is used afterwards
    // (the caller keeps what it needs out of it).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(JailError::Sys { what: format!("close_range({first}, {last})"), source: e });
    }
    // Before Linux 5.9: close one by one up to the descriptor limit.
    // SAFETY: sysconf has no preconditions.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max = if max < 0 { 65_536 } else { max as u32 };
    for fd in first..=last.min(max) {
        // SAFETY: as above: closing a descriptor nobody uses any more; EBADF is harmless.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}
