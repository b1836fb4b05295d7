//! Terminals for containers and exec'd processes, as runc gives them: the runtime makes a
//! pseudo-terminal on the host and sends its master to the caller's `--console-socket` (a
//! Unix socket; the master travels as SCM_RIGHTS with the terminal's name as the message,
//! which containerd's and conmon's `RecvFd` read). The monitor keeps the slave, in raw mode
//! (the guest's own terminal does the line discipline), as its controlling terminal, so a
//! window-size change the caller makes on the master reaches it as SIGWINCH.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// runc's rule: a process on a terminal needs `--console-socket`, and `--console-socket`
/// needs a process on a terminal. Returns the socket's absolute path.
pub fn console_socket(terminal: bool, socket: Option<&Path>) -> Result<Option<std::path::PathBuf>, super::RuntimeError> {
    use super::RuntimeError::Invalid;
    match (terminal, socket) {
        (true, None) => Err(Invalid("process.terminal is set: --console-socket is required".into())),
        (false, Some(_)) => Err(Invalid("--console-socket is given but process.terminal is not set".into())),
        (false, None) => Ok(None),
        (true, Some(s)) => std::path::absolute(s).map(Some).map_err(|e| Invalid(format!("--console-socket {}: {e}", s.display()))),
    }
}

/// A host pseudo-terminal pair.
pub struct HostPty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path (`/dev/pts/N`).
    pub name: String,
}

fn last_error(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl HostPty {
    /// Opens a new pair; the slave is in raw mode and not yet anyone's controlling terminal.
    pub fn open() -> std::io::Result<HostPty> {
        // SAFETY: posix_openpt returns a new descriptor or -1; nothing else is touched.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(last_error("posix_openpt"));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: grantpt/unlockpt act on our master; ptsname_r writes at most name.len()
        // bytes into the live local, NUL-terminated on success.
        unsafe {
            if libc::grantpt(master.as_raw_fd()) < 0 || libc::unlockpt(master.as_raw_fd()) < 0 {
                return Err(last_error("unlocking the pseudo-terminal"));
            }
            if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
                return Err(last_error("ptsname"));
            }
        }
        // SAFETY: ptsname_r NUL-terminated the buffer.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        // SAFETY: opening the slave whose NUL-terminated name we just got.
        let sfd = unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if sfd < 0 {
            return Err(last_error(&format!("opening {}", name.to_string_lossy())));
        }
        // SAFETY: sfd is a new descriptor that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
        let pty = HostPty { master, slave, name: name.to_string_lossy().into_owned() };
        pty.make_raw()?;
        Ok(pty)
    }

    fn make_raw(&self) -> std::io::Result<()> {
        // SAFETY: an all-zero termios is valid storage; tcgetattr fills it, cfmakeraw and
        // tcsetattr use it, all on our slave.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(self.slave.as_raw_fd(), &mut t) < 0 {
                return Err(last_error("tcgetattr"));
            }
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(self.slave.as_raw_fd(), libc::TCSANOW, &t) < 0 {
                return Err(last_error("tcsetattr"));
            }
        }
        Ok(())
    }

    /// Makes the slave this process's controlling terminal (it must lead a session with
    /// none), so that it gets SIGWINCH when the master's window size changes.
    pub fn control(&self) -> std::io::Result<()> {
        // SAFETY: TIOCSCTTY on our own slave descriptor, with no pointer argument.
        if unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
            return Err(last_error("making the terminal the controlling terminal"));
        }
        Ok(())
    }
}

/// Sends `master` to the Unix socket at `socket`, with `name` as the message (runc's
/// protocol).
pub fn send_master(socket: &Path, name: &str, master: &OwnedFd) -> std::io::Result<()> {
    let stream =
        UnixStream::connect(socket).map_err(|e| std::io::Error::new(e.kind(), format!("--console-socket {}: {e}", socket.display())))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| std::io::Error::other(format!("--console-socket {}: sending the terminal: {e}", socket.display())))?;
    Ok(())
}

/// What a caller (containerd's shim, conmon) does with a connection to its console
/// socket: receives the master and its name.
pub fn receive_master(stream: &UnixStream) -> std::io::Result<(String, OwnedFd)> {
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| std::io::Error::other(format!("receiving a terminal: {e}")))?;
    let mut fd = None;
    for c in msg.cmsgs().map_err(|e| std::io::Error::other(format!("receiving a terminal: {e}")))? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            for (i, raw) in fds.into_iter().enumerate() {
                // SAFETY: the kernel gave us these new descriptors; each is owned once.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if i == 0 && fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    let n = msg.bytes;
    let fd = fd.ok_or_else(|| std::io::Error::other("receiving a terminal: the message carried no descriptor"))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    fn receive(listener: &UnixListener) -> (String, OwnedFd) {
        let (stream, _) = listener.accept().unwrap();
        receive_master(&stream).unwrap()
    }

    #[test]
    fn the_master_reaches_the_console_socket_and_talks_to_the_raw_slave() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let pty = HostPty::open().unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        send_master(&socket, &pty.name, &pty.master).unwrap();
        let (name, master) = receive(&listener);
        assert_eq!(name, pty.name);
        // Raw: what the caller types reaches the slave byte for byte (no echo, no ^C
        // handling, no CR translation), and what the slave writes reaches the caller as is.
        let mut caller = std::fs::File::from(master);
        caller.write_all(b"a\x03\r\n").unwrap();
        let mut slave = std::fs::File::from(pty.slave.try_clone().unwrap());
        let mut got = [0u8; 4];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\x03\r\n");
        slave.write_all(b"out\n").unwrap();
        let mut back = [0u8; 4];
        caller.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"out\n");
    }

    #[test]
    fn a_missing_console_socket_is_named() {
        let pty = HostPty::open().unwrap();
        let e = send_master(Path::new("/nonexistent/console.sock"), &pty.name, &pty.master).unwrap_err();
        assert!(e.to_string().contains("--console-socket /nonexistent/console.sock"), "{e}");
    }
}
