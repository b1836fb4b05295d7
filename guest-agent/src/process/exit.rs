//! Turning a raw `waitpid` status into the protocol's [`ExitStatus`].

use palisade_protocol::ExitStatus;

/// Decodes a `waitpid` status word. `None` for stop/continue notifications, which
/// are not exits.
pub fn from_wait_status(status: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(ExitStatus { code: Some(libc::WEXITSTATUS(status)), signal: None, oom_killed: false })
    } else if libc::WIFSIGNALED(status) {
        Some(ExitStatus { code: None, signal: Some(libc::WTERMSIG(status)), oom_killed: false })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_signals_decode() {
        // Exit code in bits 8..16, signal in the low 7 bits.
        assert_eq!(from_wait_status(7 << 8), Some(ExitStatus { code: Some(7), signal: None, oom_killed: false }));
        assert_eq!(from_wait_status(0), Some(ExitStatus { code: Some(0), signal: None, oom_killed: false }));
        assert_eq!(from_wait_status(9), Some(ExitStatus { code: None, signal: Some(9), oom_killed: false }));
        assert_eq!(from_wait_status(9).map(|s| s.shell_code()), Some(137));
        // Stopped by SIGSTOP (0x137f) is not an exit.
        assert_eq!(from_wait_status(0x137f), None);
    }
}
