//! A NETLINK_ROUTE socket: requests acknowledged by the kernel, and dumps.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::message::{self, malformed, Message, MessageBuilder, NLMSG_HDRLEN};
use crate::NetlinkError;

/// Largest datagram accepted from the kernel.
const MAX_DATAGRAM: usize = 1 << 20;
/// Initial receive buffer; grown (up to [`MAX_DATAGRAM`]) when a datagram is larger.
const INITIAL_BUFFER: usize = 32 << 10;
/// Most entries one dump returns.
pub const MAX_DUMP_ENTRIES: usize = 1 << 16;
/// How long to wait for the kernel before giving up.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a dump is restarted after the kernel says it was interrupted by a change.
const DUMP_RETRIES: usize = 5;

/// An open NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Socket, NetlinkError> {
        let io_err = |what: &str| NetlinkError::Io { op: what.to_string(), source: io::Error::last_os_error() };
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io_err("opening a netlink socket"));
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 lets the kernel choose.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a live sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err("binding a netlink socket"));
        }
        let timeout = libc::timeval { tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .map_err(|source| NetlinkError::Io { op: "setting the netlink receive timeout".into(), source })?;
        // Best effort: errors then carry the kernel's explanation, and do not echo requests.
        let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, &1i32);
        let _ = set_option(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, &1i32);
        Ok(Socket { fd, seq: 0, buf: vec![0; INITIAL_BUFFER] })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&mut self, message: MessageBuilder, op: &str) -> Result<u32, NetlinkError> {
        let seq = self.next_seq();
        let bytes = message.finish(seq);
        // SAFETY: an all-zero sockaddr_nl is valid; nl_pid 0 is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `bytes` and `kernel` are live for the call, with the lengths passed.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                if n as usize != bytes.len() {
                    return Err(NetlinkError::Io { op: op.into(), source: io::Error::other("short netlink send") });
                }
                return Ok(seq);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkError::Io { op: op.into(), source: e });
            }
        }
    }

    /// Receives one datagram from the kernel into `self.buf`; returns its length.
    fn recv(&mut self, op: &str) -> Result<usize, NetlinkError> {
        loop {
            // Learn the size first, so a large datagram is not truncated.
            let size = self.recv_raw(libc::MSG_PEEK | libc::MSG_TRUNC, op)?;
            if size > MAX_DATAGRAM {
                let _ = self.recv_raw(0, op);
                return Err(malformed(format!("{op}: datagram of {size} bytes exceeds {MAX_DATAGRAM}")));
            }
            if size > self.buf.len() {
                self.buf.resize(size, 0);
            }
            // SAFETY: an all-zero sockaddr_nl is valid; recvfrom fills it.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `self.buf`, `from` and `from_len` are live for the call, with the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io { op: op.into(), source: e });
            }
            if from.nl_pid != 0 {
                // Not from the kernel: ignore it.
                continue;
            }
            return Ok(n as usize);
        }
    }

    fn recv_raw(&mut self, flags: i32, op: &str) -> Result<usize, NetlinkError> {
        loop {
            // SAFETY: `self.buf` is live and at least as long as the length passed.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                let e = if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel")
                } else {
                    e
                };
                return Err(NetlinkError::Io { op: op.into(), source: e });
            }
        }
    }

    /// Sends `message` with NLM_F_REQUEST | NLM_F_ACK (plus its own flags) and waits for
    /// the kernel's acknowledgement. `op` names the operation in errors.
    pub fn request(&mut self, message: MessageBuilder, op: &str) -> Result<(), NetlinkError> {
        let seq = self.send(message, op)?;
        loop {
            let n = self.recv(op)?;
            for m in message::messages(&self.buf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                if m.ty == libc::NLMSG_ERROR as u16 {
                    return check_error(&m, op);
                }
                // Anything else for this request (none expected): keep waiting for the ack.
            }
        }
    }

    /// Sends a dump request and passes each answer message (other than the control
    /// messages) to `parse`, collecting what it returns. Restarts the dump when the
    /// kernel flags it as interrupted by a concurrent change.
    pub fn dump<T>(
        &mut self,
        mut build: impl FnMut() -> MessageBuilder,
        op: &str,
        mut parse: impl FnMut(&Message<'_>) -> Result<Option<T>, NetlinkError>,
    ) -> Result<Vec<T>, NetlinkError> {
        let mut attempt = 0;
        'restart: loop {
            attempt += 1;
            let seq = self.send(build(), op)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            loop {
                let n = self.recv(op)?;
                // Parse out of a copy-free view; `parse` only borrows it.
                let buf = std::mem::take(&mut self.buf);
                let result = (|| -> Result<bool, NetlinkError> {
                    for m in message::messages(&buf[..n]) {
                        let m = m?;
                        if m.seq != seq {
                            continue;
                        }
                        if m.flags & libc::NLM_F_DUMP_INTR as u16 != 0 {
                            interrupted = true;
                        }
                        match m.ty as i32 {
                            libc::NLMSG_DONE => {
                                // A dump that failed midway carries a negative errno here.
                                if let Some(err) = message::u32_at(m.payload, 0).map(|e| e as i32) {
                                    if err < 0 {
                                        return Err(NetlinkError::Kernel {
                                            op: op.into(),
                                            source: io::Error::from_raw_os_error(-err),
                                            detail: None,
                                        });
                                    }
                                }
                                return Ok(true);
                            }
                            libc::NLMSG_ERROR => {
                                check_error(&m, op)?;
                            }
                            libc::NLMSG_NOOP => {}
                            _ => {
                                if let Some(item) = parse(&m)? {
                                    if out.len() >= MAX_DUMP_ENTRIES {
                                        return Err(malformed(format!("{op}: more than {MAX_DUMP_ENTRIES} entries")));
                                    }
                                    out.push(item);
                                }
                            }
                        }
                    }
                    Ok(false)
                })();
                self.buf = buf;
                if result? {
                    if interrupted && attempt < DUMP_RETRIES {
                        continue 'restart;
                    }
                    return Ok(out);
                }
            }
        }
    }
}

/// The result an NLMSG_ERROR message carries: `Ok` for an acknowledgement (errno 0).
fn check_error(m: &Message<'_>, op: &str) -> Result<(), NetlinkError> {
    let errno = message::u32_at(m.payload, 0).ok_or_else(|| malformed(format!("{op}: error message without an errno")))? as i32;
    if errno == 0 {
        return Ok(());
    }
    Err(NetlinkError::Kernel {
        op: op.into(),
        source: io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(libc::EINVAL)),
        detail: ext_ack_message(m),
    })
}

/// The kernel's explanation (NLMSGERR_ATTR_MSG) of an error, when it gave one.
fn ext_ack_message(m: &Message<'_>) -> Option<String> {
    const NLM_F_ACK_TLVS: u16 = 0x200;
    const NLM_F_CAPPED: u16 = 0x100;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if m.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // errno, then the request's header (and its payload unless capped), then the TLVs.
    let echoed = message::u32_at(m.payload, 4)? as usize;
    let skip = if m.flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { message::align(echoed)? };
    let tlvs = m.payload.get(message::align(4usize.checked_add(skip)?)?..)?;
    message::attrs_of(tlvs)
        .map_while(Result::ok)
        .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
        .and_then(|(ty, data)| message::attr_string(ty, data, "ext ack").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size passed.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
