//! Helpers for tests against the kernel: a private network namespace, and `ip` (iproute2,
//! which inherits the calling thread's namespace) as the reference. For this crate's tests
//! and its users' (feature `testing`).

use std::process::Command;

/// Runs `f` in a thread with a new network namespace; `None` (skipped) when not root.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a network namespace");
        return None;
    }
    let thread = std::thread::spawn(move || {
        // SAFETY: moves only this thread into a new network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        f()
    });
    Some(thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
}

/// `ip ARGS` (split on whitespace), which must succeed; its stdout.
pub fn ip(args: &str) -> String {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("running ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j ARGS`, parsed.
pub fn ip_json(args: &str) -> serde_json::Value {
    serde_json::from_str(&ip(&format!("-j {args}"))).expect("ip -j output")
}
