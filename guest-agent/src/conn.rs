//! A connected stream socket (vsock in the guest, Unix in tests) and the listeners
//! that produce them, so the server code does not care which transport it runs on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

/// One accepted connection. Reads and writes are plain `read(2)`/`write(2)` on the
/// socket; [`Conn::shutdown_write`] half-closes it.
#[derive(Debug)]
pub struct Conn {
    file: File,
}

impl Conn {
    pub fn from_fd(fd: OwnedFd) -> Self {
        Conn { file: File::from(fd) }
    }

    /// A second handle on the same socket (for a reader and a writer thread).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(Conn { file: self.file.try_clone()? })
    }

    /// Signals end of output to the peer; reading stays possible.
    pub fn shutdown_write(&self) -> io::Result<()> {
        socket::shutdown(self.file.as_raw_fd(), socket::Shutdown::Write).map_err(io::Error::from)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Something that accepts connections.
pub trait Listener: Send + Sync {
    fn accept(&self) -> io::Result<Conn>;
    /// What this listens on, for log lines.
    fn describe(&self) -> String;
}

/// An AF_VSOCK listener on `VMADDR_CID_ANY:port`.
pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
}

impl VsockListener {
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket::socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
        socket::bind(fd.as_raw_fd(), &addr)?;
        socket::listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
        Ok(VsockListener { fd, port })
    }
}

impl Listener for VsockListener {
    fn accept(&self) -> io::Result<Conn> {
        loop {
            match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    return Ok(Conn::from_fd(fd));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    fn describe(&self) -> String {
        format!("vsock port {}", self.port)
    }
}

/// A Unix-socket listener (test mode on a host).
pub struct UnixConnListener {
    inner: UnixListener,
    path: String,
}

impl UnixConnListener {
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        Ok(UnixConnListener { inner: UnixListener::bind(path)?, path: path.display().to_string() })
    }
}

impl Listener for UnixConnListener {
    fn accept(&self) -> io::Result<Conn> {
        let (stream, _) = self.inner.accept()?;
        Ok(Conn::from_fd(OwnedFd::from(stream)))
    }
    fn describe(&self) -> String {
        format!("unix socket {}", self.path)
    }
}
