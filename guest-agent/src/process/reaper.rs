//! The one zombie reaper of the agent: a SIGCHLD handler pokes a pipe, a thread drains
//! `waitpid(-1, WNOHANG)` and hands every exit to the [`ProcessTable`]. As PID 1 it also
//! reaps orphans reparented to it. A one-second poll covers any coalesced signal.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use super::exit::from_wait_status;
use super::table::ProcessTable;

/// Write end of the SIGCHLD self-pipe, read by the signal handler.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static STARTED: OnceLock<()> = OnceLock::new();

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte. A full
        // (non-blocking) pipe just means a wake-up is already pending.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// Starts the reaper thread (once per process; later calls are no-ops).
pub fn start(table: Arc<ProcessTable>) -> io::Result<()> {
    if STARTED.get().is_some() {
        return Ok(());
    }
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    WAKE_FD.store(write_end.as_raw_fd(), Ordering::Relaxed);
    // The write end lives for the whole process: the handler may run at any time.
    std::mem::forget(write_end);
    // SAFETY: an all-zero sigaction is a valid starting point; the handler only calls
    // async-signal-safe functions; the pointer arguments are valid for the call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as *const () as usize;
        action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::thread::Builder::new().name("reaper".into()).spawn(move || reap_forever(&table, read_end))?;
    let _ = STARTED.set(());
    Ok(())
}

fn reap_forever(table: &ProcessTable, wake: OwnedFd) -> ! {
    let mut drain = [0u8; 64];
    loop {
        let mut pfd = libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 1000) };
        // SAFETY: reading into a live local buffer from our own non-blocking pipe.
        while unsafe { libc::read(wake.as_raw_fd(), drain.as_mut_ptr().cast(), drain.len()) } > 0 {}
        reap_all(table);
    }
}

/// Collects every exited child now; returns how many were collected.
pub fn reap_all(table: &ProcessTable) -> usize {
    let mut count = 0;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a live local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children exist but none exited; -1: ECHILD (none at all) or EINTR.
            if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return count;
        }
        if let Some(exit) = from_wait_status(status) {
            tracing::debug!(pid, ?exit, "child exited");
            table.record_exit(pid, exit);
            count += 1;
        }
    }
}
