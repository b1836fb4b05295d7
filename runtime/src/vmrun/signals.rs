//! Signals vmrun forwards to the command (SIGINT, SIGTERM, SIGHUP) or acts on
//! (SIGWINCH): blocked in every thread and collected by one `sigwait` thread.

use std::sync::mpsc::{channel, Receiver};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// Signals passed on to the command.
pub const FORWARDED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH] {
        set.add(s);
    }
    set
}

#[derive(Debug, thiserror::Error)]
#[error("setting up signal handling: {0}")]
pub struct SignalError(#[from] nix::errno::Errno);

/// Blocks the handled signals in the calling thread (and so in every thread it starts
/// afterwards: call this first in `main`) and delivers them on the returned channel.
pub fn start() -> Result<Receiver<i32>, SignalError> {
    let set = handled();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    let (tx, rx) = channel();
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        match set.wait() {
            Ok(signal) => {
                if tx.send(signal as i32).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!("sigwait: {e}"),
        }
    });
    spawned.map_err(|e| SignalError(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN))))?;
    Ok(rx)
}

/// For a child between fork and exec: unblocks every signal (vmrun blocks the ones it
/// handles, and a blocked mask survives exec). Async-signal-safe.
pub fn unblock_all_in_child() -> std::io::Result<()> {
    // SAFETY: sigemptyset initialises the local set; pthread_sigmask reads it.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
