//! Ending the test hosts this process started when it is told to end.
//!
//! A test host is a child process (`scripts/testhost`, which runs QEMU) that outlives its
//! parent unless someone ends it. A runner that starts one calls [`forward_termination`]:
//! from then on SIGINT, SIGTERM or SIGHUP no longer kill the runner at once; the handler
//! sends SIGTERM to every child registered (scripts/testhost then stops its QEMU and removes
//! its run directory), and the runner, whose wait for the child then returns, sees
//! [`termination_signal`], cleans up what it made and exits instead of starting another
//! test host.

use std::process::Child;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

/// The children to end, by pid (0: a free slot). Runners start at most a few at once.
static CHILDREN: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];
/// The first termination signal received, 0 before any.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_termination(signal: libc::c_int) {
    // Only atomics and kill(2) here: both are async-signal-safe.
    let _ = SIGNALLED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    for slot in &CHILDREN {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; a pid that already ended
            // (and was not yet unregistered) gets ESRCH, or at worst a zombie gets it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// A child whose end follows this process's: unregistered when dropped.
pub struct ForwardedChild {
    slot: Option<&'static AtomicI32>,
}

impl Drop for ForwardedChild {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.store(0, Ordering::SeqCst);
        }
    }
}

/// Makes a termination signal to this process end `child` too (see the module's doc).
/// Drop the guard once the child has been waited for.
pub fn forward_termination(child: &Child) -> ForwardedChild {
    INSTALL.call_once(|| {
        for signal in SIGNALS {
            // SAFETY: a zeroed sigaction is valid; the handler only touches atomics and
            // calls kill, and SA_RESTART keeps the runner's blocking reads and waits going.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_termination as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    eprintln!("[e2e] cannot handle signal {signal}: {}", std::io::Error::last_os_error());
                }
            }
        }
    });
    let Ok(pid) = i32::try_from(child.id()) else { return ForwardedChild { slot: None } };
    let slot = CHILDREN.iter().find(|slot| slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst).is_ok());
    if slot.is_none() {
        eprintln!("[e2e] more children than a termination signal can reach: pid {pid} is not among them");
    }
    // A signal that came before the child was registered still reaches it.
    if SIGNALLED.load(Ordering::SeqCst) != 0 {
        // SAFETY: as in the handler.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    ForwardedChild { slot }
}

/// The termination signal this process received since [`forward_termination`] took over,
/// if any: the runner should then clean up and exit with 128 + it.
pub fn termination_signal() -> Option<i32> {
    Some(SIGNALLED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn a_termination_signal_ends_the_registered_child_and_is_remembered() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let guard = forward_termination(&child);
        assert_eq!(termination_signal(), None);
        let start = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; our own handler catches it.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        drop(guard);
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
        assert!(start.elapsed() < Duration::from_secs(30), "the child lived on for {:?}", start.elapsed());
        assert_eq!(termination_signal(), Some(libc::SIGTERM));
        assert!(CHILDREN.iter().all(|slot| slot.load(Ordering::SeqCst) == 0), "the guard unregistered it");
    }
}
