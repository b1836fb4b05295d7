//! The stdio of a started process: pipes (or a pty) between the child and the agent,
//! and the relay threads between those and the host's stream connections.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use palisade_protocol::TtySize;

use crate::conn::Conn;

const RELAY_BUFFER: usize = 64 * 1024;

/// The host's stream connections of one process.
pub enum Streams {
    Pipes { stdin: Option<Conn>, stdout: Conn, stderr: Conn },
    Tty(Conn),
}

/// The agent's ends, kept until the child is started.
enum AgentEnds {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Pty { master: OwnedFd },
}

/// Descriptors for a child to start with, and what the agent keeps.
pub struct ChildStdio {
    child: [OwnedFd; 3],
    agent: AgentEnds,
}

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("creating a pipe for {what}: {source}")]
    Pipe { what: &'static str, source: io::Error },
    #[error("opening /dev/null for stdin: {0}")]
    DevNull(io::Error),
    #[error("opening a pseudo-terminal: {0}")]
    Pty(io::Error),
}

fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), StdioError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| StdioError::Pipe { what, source: e.into() })
}

impl ChildStdio {
    /// Pipes for stdout and stderr, and for stdin when `stdin` (else /dev/null).
    pub fn pipes(stdin: bool) -> Result<Self, StdioError> {
        let (out_r, out_w) = pipe("stdout")?;
        let (err_r, err_w) = pipe("stderr")?;
        let (in_child, in_agent) = if stdin {
            let (r, w) = pipe("stdin")?;
            (r, Some(w))
        } else {
            let null = std::fs::OpenOptions::new().read(true).open("/dev/null").map_err(StdioError::DevNull)?;
            (OwnedFd::from(null), None)
        };
        Ok(ChildStdio { child: [in_child, out_w, err_w], agent: AgentEnds::Pipes { stdin: in_agent, stdout: out_r, stderr: err_r } })
    }

    /// A pseudo-terminal of the given size; the slave becomes fds 0, 1, 2.
    pub fn pty(size: Option<TtySize>) -> Result<Self, StdioError> {
        let mut master: RawFd = -1;
        let mut slave: RawFd = -1;
        let ws = size.map(|s| libc::winsize { ws_row: s.rows, ws_col: s.cols, ws_xpixel: 0, ws_ypixel: 0 });
        let ws_ptr = ws.as_ref().map_or(std::ptr::null(), |w| w as *const libc::winsize);
        // SAFETY: openpty writes two descriptors into the given integers; a null name and
        // termios are allowed; `ws_ptr` is null or points to a live winsize.
        let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), ws_ptr) };
        if rc != 0 {
            return Err(StdioError::Pty(io::Error::last_os_error()));
        }
        // SAFETY: openpty succeeded: both are fresh descriptors owned by nobody else.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [&master, &slave] {
            // SAFETY: F_SETFD on a descriptor we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::Pty);
        Ok(ChildStdio { child: [dup(&slave)?, dup(&slave)?, slave], agent: AgentEnds::Pty { master } })
    }

    /// A pseudo-terminal of the devpts instance mounted at `dev/pts` under `root` (a
    /// container's root, `/proc/PID/root`), so the process sees its terminal by name
    /// (`/dev/pts/N`) in the container, as with runc. The path is resolved inside `root`
    /// (its symlinks cannot lead out of it), and must be a devpts `ptmx`: anything else
    /// the container put there is not opened. `None` when the container has no devpts.
    pub fn pty_in_root(root: &std::path::Path, size: Option<TtySize>) -> Result<Option<Self>, StdioError> {
        const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
        const RESOLVE_IN_ROOT: u64 = 0x10;
        const DEVPTS_SUPER_MAGIC: libc::c_long = 0x1cd1;
        #[repr(C)]
        struct OpenHow {
            flags: u64,
            mode: u64,
            resolve: u64,
        }
        let pty_err = |e: io::Error| StdioError::Pty(e);
        let dir = File::open(root).map_err(pty_err)?;
        let how = OpenHow { flags: (libc::O_PATH | libc::O_CLOEXEC) as u64, mode: 0, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
        // SAFETY: openat2 with a live directory descriptor, a NUL-terminated path and a live
        // open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c"dev/pts/ptmx".as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Ok(None);
        }
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        let path_fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: fstat/fstatfs write into live, zeroed locals.
        let (st, fs) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            let mut fs: libc::statfs = std::mem::zeroed();
            if libc::fstat(path_fd.as_raw_fd(), &mut st) < 0 || libc::fstatfs(path_fd.as_raw_fd(), &mut fs) < 0 {
                return Err(pty_err(io::Error::last_os_error()));
            }
            (st, fs)
        };
        let is_ptmx = st.st_mode & libc::S_IFMT == libc::S_IFCHR && libc::major(st.st_rdev) == 5 && libc::minor(st.st_rdev) == 2;
        if !is_ptmx || fs.f_type as libc::c_long != DEVPTS_SUPER_MAGIC {
            return Ok(None);
        }
        let master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", path_fd.as_raw_fd()))
            .map_err(pty_err)?;
        let master = OwnedFd::from(master);
        // SAFETY: unlockpt and TIOCGPTPEER on the master we own; TIOCSWINSZ reads a live winsize.
        let slave = unsafe {
            if libc::unlockpt(master.as_raw_fd()) < 0 {
                return Err(pty_err(io::Error::last_os_error()));
            }
            let fd = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(pty_err(io::Error::last_os_error()));
            }
            let slave = OwnedFd::from_raw_fd(fd);
            if let Some(s) = size {
                let ws = libc::winsize { ws_row: s.rows, ws_col: s.cols, ws_xpixel: 0, ws_ypixel: 0 };
                libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
            slave
        };
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::Pty);
        Ok(Some(ChildStdio { child: [dup(&slave)?, dup(&slave)?, slave], agent: AgentEnds::Pty { master } }))
    }

    /// The descriptors the child gets as 0, 1, 2.
    pub fn child_fds(&self) -> [RawFd; 3] {
        [self.child[0].as_raw_fd(), self.child[1].as_raw_fd(), self.child[2].as_raw_fd()]
    }

    /// The pty master (for window-size changes), if this is a terminal.
    pub fn pty_master(&self) -> io::Result<Option<Arc<OwnedFd>>> {
        match &self.agent {
            AgentEnds::Pty { master } => Ok(Some(Arc::new(master.try_clone()?))),
            AgentEnds::Pipes { .. } => Ok(None),
        }
    }

    /// After the child started: closes the child's ends here and relays between the
    /// agent's ends and the host's streams until each side ends.
    pub fn start_relays(self, id: &str, streams: Streams) {
        drop(self.child);
        match (self.agent, streams) {
            (AgentEnds::Pipes { stdin, stdout, stderr }, Streams::Pipes { stdin: in_conn, stdout: out_conn, stderr: err_conn }) => {
                relay_output(id, "stdout", File::from(stdout), out_conn);
                relay_output(id, "stderr", File::from(stderr), err_conn);
                if let (Some(pipe), Some(conn)) = (stdin, in_conn) {
                    relay_input(id, "stdin", conn, File::from(pipe));
                }
            }
            (AgentEnds::Pty { master }, Streams::Tty(conn)) => {
                match (master.try_clone(), conn.try_clone()) {
                    (Ok(master_in), Ok(conn_in)) => relay_input(id, "tty input", conn_in, File::from(master_in)),
                    (Err(e), _) | (_, Err(e)) => tracing::error!(id, "tty input relay: {e}"),
                }
                relay_output(id, "tty output", File::from(master), conn);
            }
            _ => tracing::error!(id, "stdio kinds do not match the streams; closing them"),
        }
    }
}

/// Copies until end of input; a pty master's EIO (all slaves closed) is end of input.
pub fn copy_stream(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(total),
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn spawn_relay(name: String, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.clone()).spawn(f) {
        tracing::error!("starting relay thread {name}: {e}");
    }
}

/// Child output → host, then a half-close so the host sees end of stream.
fn relay_output(id: &str, what: &'static str, mut from: File, mut to: Conn) {
    let id = id.to_string();
    spawn_relay(format!("{what} {id}"), move || {
        if let Err(e) = copy_stream(&mut from, &mut to) {
            tracing::warn!(id, "relaying {what} to the host: {e}");
        }
        let _ = to.shutdown_write();
    });
}

/// Host → child input; closing the pipe (dropping it) tells the child end of input.
fn relay_input(id: &str, what: &'static str, mut from: Conn, mut to: File) {
    let id = id.to_string();
    spawn_relay(format!("{what} {id}"), move || match copy_stream(&mut from, &mut to) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => tracing::warn!(id, "relaying {what} from the host: {e}"),
    });
}

/// Sets the window size of a pty (through its master).
pub fn resize(master: &OwnedFd, size: TtySize) -> io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from a live local on a descriptor we hold.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
