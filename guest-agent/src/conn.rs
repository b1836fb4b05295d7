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

/// The only peer the agent serves: the host (`VMADDR_CID_HOST`). vsock is not confined by
/// network namespaces, so a process in a container whose seccomp profile allows AF_VSOCK can
/// reach the agent's ports through the guest's own CID or `VMADDR_CID_LOCAL` (loopback);
/// such connections are closed unread.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

/// Whether a connection from `peer_cid` may talk to the agent.
pub fn is_host_peer(peer_cid: u32) -> bool {
    peer_cid == HOST_CID
}

/// An AF_VSOCK listener on `VMADDR_CID_ANY:port` that accepts the host alone ([`is_host_peer`]).
pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
    /// Connections closed because they did not come from the host.
    refused: std::sync::atomic::AtomicU64,
}

impl VsockListener {
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket::socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
        socket::bind(fd.as_raw_fd(), &addr)?;
        socket::listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
        Ok(VsockListener { fd, port, refused: std::sync::atomic::AtomicU64::new(0) })
    }
}

impl Listener for VsockListener {
    fn accept(&self) -> io::Result<Conn> {
        loop {
            match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    match socket::getpeername::<VsockAddr>(fd.as_raw_fd()) {
                        Ok(peer) if is_host_peer(peer.cid()) => return Ok(Conn::from_fd(fd)),
                        Ok(peer) => {
                            // Counted, and said once per 64: a container could flood the log.
                            let refused = self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if refused.is_multiple_of(64) {
                                tracing::warn!(
                                    port = self.port,
                                    peer_cid = peer.cid(),
                                    peer_port = peer.port(),
                                    refused = refused + 1,
                                    "closed a connection from inside the guest: the agent serves the host alone"
                                );
                            }
                        }
                        Err(e) => tracing::warn!(port = self.port, "closed a connection whose peer is unknown: {e}"),
                    }
                    drop(fd);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_is_served() {
        assert!(is_host_peer(2));
        // VMADDR_CID_LOCAL (loopback), the guest's own CID as vmrun gives it, the hypervisor,
        // VMADDR_CID_ANY.
        for cid in [1, 3, 0, u32::MAX] {
            assert!(!is_host_peer(cid), "CID {cid} must not reach the agent");
        }
    }
}
