//! fork + exec of one process: new session (and controlling terminal), stdio, chroot,
//! working directory, groups and ids, then exec with a `PATH` search done *inside* the
//! new root. Everything the child needs is prepared before `fork`, so the child only
//! makes async-signal-safe system calls. A close-on-exec pipe reports which step failed
//! and its errno, so "command not found" and "permission denied" are told apart from a
//! missing working directory.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `PATH` when the environment gives none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a process did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("{program}: permission denied")]
    PermissionDenied { program: String },
    #[error("{program}: exec failed: {source}")]
    Exec { program: String, source: io::Error },
    #[error("{step} {what}: {source}")]
    Setup { step: &'static str, what: String, source: io::Error },
    #[error("invalid process spec: {0}")]
    Invalid(String),
    #[error("fork: {0}")]
    Fork(io::Error),
    #[error("exec status pipe: {0}")]
    StatusPipe(io::Error),
}

/// What to start.
pub struct SpawnRequest<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub root: Option<&'a Path>,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
    /// Descriptors that become the child's 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// Make fd 0 (a pty slave) the controlling terminal of the child's new session.
    pub controlling_tty: bool,
}

/// Steps of the child, as reported through the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Exec = 0,
    Setsid,
    Stdio,
    Tty,
    Chroot,
    Chdir,
    Setgroups,
    Setgid,
    Setuid,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [Exec, Setsid, Stdio, Tty, Chroot, Chdir, Setgroups, Setgid, Setuid].into_iter().find(|s| *s as u32 == v)
    }
    fn name(self) -> &'static str {
        match self {
            Step::Exec => "exec",
            Step::Setsid => "setsid",
            Step::Stdio => "stdio",
            Step::Tty => "controlling terminal",
            Step::Chroot => "chroot",
            Step::Chdir => "chdir",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
        }
    }
}

fn cstring(what: &str, s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Invalid(format!("{what} contains a NUL byte")))
}

/// The candidate paths `execve` tries, in order: the program itself when it has a
/// slash, otherwise each `PATH` directory of `env` (or [`DEFAULT_PATH`]).
pub fn exec_candidates(program: &str, env: &[String]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    let path = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .collect()
}

/// Everything the child touches, built before `fork`.
struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    root: Option<CString>,
    cwd: CString,
    groups: Vec<libc::gid_t>,
}

fn prepare(req: &SpawnRequest<'_>) -> Result<Prepared, SpawnError> {
    let program = req.args.first().filter(|a| !a.is_empty()).ok_or_else(|| SpawnError::Invalid("args is empty".into()))?;
    let argv = req.args.iter().map(|a| cstring("an argument", a.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let envp = req
        .env
        .iter()
        .map(|e| {
            if !e.contains('=') || e.starts_with('=') {
                return Err(SpawnError::Invalid(format!("environment entry {e:?} is not KEY=VALUE")));
            }
            cstring("an environment entry", e.as_bytes())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let candidates =
        exec_candidates(program, req.env).iter().map(|c| cstring("the program path", c.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let root = req.root.map(|r| cstring("the root path", r.as_os_str().as_bytes())).transpose()?;
    let cwd = if req.cwd.is_empty() { "/" } else { req.cwd };
    Ok(Prepared {
        candidates,
        argv,
        envp,
        root,
        cwd: cstring("the working directory", OsStr::new(cwd).as_bytes())?,
        groups: req.groups.to_vec(),
    })
}

/// Starts the process; returns its pid. On failure after `fork`, the error comes with
/// the pid of the failed child (already exiting with 127) so its exit can be ignored.
pub fn spawn(req: &SpawnRequest<'_>) -> Result<i32, (Option<i32>, SpawnError)> {
    let p = prepare(req).map_err(|e| (None, e))?;
    let program = req.args.first().cloned().unwrap_or_default();
    let mut argv_ptrs: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = p.envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let (status_read, status_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| (None, SpawnError::StatusPipe(e.into())))?;

    // SAFETY: fork in a multithreaded process; the child below only makes
    // async-signal-safe calls on memory prepared before the fork, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((None, SpawnError::Fork(io::Error::last_os_error())));
    }
    if pid == 0 {
        // SAFETY: we are the child; see child_after_fork.
        unsafe { child_after_fork(req, &p, &argv_ptrs, &envp_ptrs, status_write.as_raw_fd()) }
    }
    drop(status_write);
    read_child_status(status_read, pid, &program, &p)
}

fn read_child_status(status_read: OwnedFd, pid: i32, program: &str, p: &Prepared) -> Result<i32, (Option<i32>, SpawnError)> {
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the live local buffer, within its bounds.
        let n = unsafe { libc::read(status_read.as_raw_fd(), report[got..].as_mut_ptr().cast(), report.len() - got) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((Some(pid), SpawnError::StatusPipe(err)));
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(pid); // closed on exec: the program runs
    }
    if got < report.len() {
        return Err((Some(pid), SpawnError::StatusPipe(io::ErrorKind::UnexpectedEof.into())));
    }
    let step = Step::from_u32(u32::from_ne_bytes([report[0], report[1], report[2], report[3]])).unwrap_or(Step::Exec);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let source = io::Error::from_raw_os_error(errno);
    let program = program.to_string();
    let err = match step {
        Step::Exec if errno == libc::ENOENT || errno == libc::ENOTDIR => SpawnError::NotFound { program },
        Step::Exec if errno == libc::EACCES || errno == libc::EPERM => SpawnError::PermissionDenied { program },
        Step::Exec => SpawnError::Exec { program, source },
        Step::Chroot => SpawnError::Setup {
            step: step.name(),
            what: String::from_utf8_lossy(p.root.as_ref().map(|r| r.as_bytes()).unwrap_or_default()).into_owned(),
            source,
        },
        Step::Chdir => {
            SpawnError::Setup { step: "working directory", what: String::from_utf8_lossy(p.cwd.as_bytes()).into_owned(), source }
        }
        other => SpawnError::Setup { step: other.name(), what: String::new(), source },
    };
    Err((Some(pid), err))
}

/// The child between fork and exec. Never returns.
///
/// # Safety
/// Must only be called in a freshly forked child; it calls async-signal-safe functions
/// only, on data prepared before the fork.
unsafe fn child_after_fork(
    req: &SpawnRequest<'_>,
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    status_fd: RawFd,
) -> ! {
    let fail = |step: Step| -> ! {
        let errno = *libc::__errno_location();
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        report[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(status_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127);
    };

    // Signals: nothing blocked, default dispositions (the agent ignores SIGPIPE).
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }

    if libc::setsid() < 0 {
        fail(Step::Setsid);
    }

    // Stdio: first move the sources above 2 so no dup2 clobbers a later source.
    let mut high = [-1; 3];
    for (i, fd) in req.stdio.iter().enumerate() {
        high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
        if high[i] < 0 {
            fail(Step::Stdio);
        }
    }
    for (target, fd) in high.iter().enumerate() {
        if libc::dup2(*fd, target as libc::c_int) < 0 {
            fail(Step::Stdio);
        }
    }
    if req.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
        fail(Step::Tty);
    }

    if let Some(root) = &p.root {
        if libc::chroot(root.as_ptr()) < 0 {
            fail(Step::Chroot);
        }
        if libc::chdir(c"/".as_ptr()) < 0 {
            fail(Step::Chroot);
        }
    }
    if libc::chdir(p.cwd.as_ptr()) < 0 {
        fail(Step::Chdir);
    }

    if libc::setgroups(p.groups.len(), p.groups.as_ptr()) < 0 {
        // Unprivileged (tests on a host) cannot setgroups; only fail when it matters.
        if libc::geteuid() == 0 || !p.groups.is_empty() {
            fail(Step::Setgroups);
        }
    }
    if libc::setgid(req.gid) < 0 {
        fail(Step::Setgid);
    }
    if libc::setuid(req.uid) < 0 {
        fail(Step::Setuid);
    }

    // PATH search inside the new root, like execvp: remember EACCES, keep looking.
    let mut denied = false;
    for candidate in &p.candidates {
        libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
        match *libc::__errno_location() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            _ => fail(Step::Exec),
        }
    }
    *libc::__errno_location() = if denied { libc::EACCES } else { libc::ENOENT };
    fail(Step::Exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let env = vec!["PATH=/a:/b/:".to_string()];
        assert_eq!(exec_candidates("ls", &env), vec!["/a/ls", "/b/ls", "./ls"]);
        assert_eq!(exec_candidates("./x", &env), vec!["./x"]);
        assert_eq!(exec_candidates("sh", &[]).first().map(String::as_str), Some("/usr/local/sbin/sh"));
    }
}
