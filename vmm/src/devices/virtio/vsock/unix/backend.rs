//! The Unix-socket backend: the listener on `uds_path`, the `CONNECT` handshake, outgoing
//! connections to `<uds_path>_<port>`, and the table of relayed connections.
//!
//! The backend never touches virtqueues: the device hands it each valid tx packet
//! ([`UnixBackend::on_guest_packet`]) and each rx buffer ([`UnixBackend::fill_rx`]). File
//! descriptors are (de)registered with the event manager only in [`UnixBackend::sync`], which
//! the device calls at the end of every `process`; streams that must close wait in `dead`
//! until then, so a closed fd number can never be reused while epoll still knows it.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::timerfd::TimerFd;

use super::super::packet::{
    op_name, Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};
use super::super::rx_buffer::RxBuffer;
use super::super::{VsockError, HOST_CID};
use super::connection::{reset_header, write_header, Close, ConnKey, Connection, Fill};
use super::handshake::{LineStatus, PendingClient};

/// How long the guest has to answer a host-initiated OP_REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections (and clients still sending `CONNECT`) open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// OP_RST packets waiting for rx buffers; beyond this the guest is flooding us and loses some.
const MAX_PENDING_RESETS: usize = 1024;
/// Host-side ports of host-initiated connections are allocated from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Connections accepted per listener event.
const ACCEPT_BATCH: usize = 64;
/// How long a host client may take to send its whole `CONNECT` line: one that connects and
/// stays silent (or stops mid-line) must not hold a connection slot for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct UnixBackend {
    uds_path: PathBuf,
    /// The backend bound `uds_path` itself and removes the file when dropped.
    owns_socket_file: bool,
    guest_cid: u64,
    listener: UnixListener,
    timer: TimerFd,
    timer_deadline: Option<Instant>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    /// The guest driver is up: connections can be made.
    driver_ready: bool,
    clients: HashMap<RawFd, PendingClient>,
    /// Registered with epoll: a client's registration carries over to its connection.
    client_registered: HashMap<RawFd, bool>,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Connections that may have something for the guest, in round-robin order.
    rx_ready: VecDeque<ConnKey>,
    /// OP_RST packets owed to the guest.
    resets: VecDeque<ConnKey>,
    /// Streams to unregister (if `true`) and close in the next `sync`.
    dead: Vec<(UnixStream, bool)>,
    next_local_port: u32,
}

impl UnixBackend {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        remove_stale_socket(uds_path)?;
        let listen_err = |source| VsockError::Listen { path: uds_path.to_owned(), source };
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        let mut backend = Self::with_listener(guest_cid, uds_path, listener)?;
        backend.owns_socket_file = true;
        Ok(backend)
    }

    /// A backend accepting host clients on `listener`, a socket someone else bound (the host
    /// jail binds it outside the VMM's jail, whose root does not contain it). The socket file
    /// is left alone; `uds_path` is only the prefix of guest-initiated `<uds_path>_<port>`.
    pub fn with_listener(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> Result<Self, VsockError> {
        listener.set_nonblocking(true).map_err(|source| VsockError::Listen { path: uds_path.to_owned(), source })?;
        Ok(Self {
            owns_socket_file: false,
            uds_path: uds_path.to_owned(),
            guest_cid,
            listener,
            timer: new_nonblocking_timer().map_err(VsockError::TimerFd)?,
            timer_deadline: None,
            connect_timeout: CONNECT_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            driver_ready: false,
            clients: HashMap::new(),
            client_registered: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rx_ready: VecDeque::new(),
            resets: VecDeque::new(),
            dead: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    #[cfg(test)]
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    #[cfg(test)]
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    #[cfg(test)]
    pub fn pending_client_count(&self) -> usize {
        self.clients.len()
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Registers the listener and the connect timer.
    pub fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!(path = %self.uds_path.display(), "vsock: cannot watch the listening socket: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            tracing::error!("vsock: cannot watch the connect timer: {e:?}");
        }
    }

    /// The driver became ready (activation) or went away (reset). Going away drops every
    /// connection and client; their fds are released in the next `sync`.
    pub fn set_driver_ready(&mut self, ready: bool) {
        self.driver_ready = ready;
        if ready {
            return;
        }
        let conns = std::mem::take(&mut self.conns);
        for (_, conn) in conns {
            self.dead.push((conn.stream, conn.registered.is_some()));
        }
        let clients = std::mem::take(&mut self.clients);
        for (fd, client) in clients {
            let registered = self.client_registered.remove(&fd).unwrap_or(false);
            self.dead.push((client.stream, registered));
        }
        self.client_registered.clear();
        self.by_fd.clear();
        self.rx_ready.clear();
        self.resets.clear();
    }

    /// Handles an event on one of the backend's fds; `false` if the fd is not ours.
    pub fn on_event(&mut self, fd: RawFd, set: EventSet) -> bool {
        if fd == self.listener.as_raw_fd() {
            self.accept_clients();
        } else if fd == self.timer.as_raw_fd() {
            self.on_timer();
        } else if self.clients.contains_key(&fd) {
            self.on_client_readable(fd);
        } else if let Some(key) = self.by_fd.get(&fd).copied() {
            self.on_connection_event(key, set);
        } else {
            return false;
        }
        true
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %self.uds_path.display(), "vsock: accept failed: {e}");
                    return;
                }
            };
            if !self.driver_ready {
                tracing::debug!("vsock: refusing a host connection: the guest driver is not ready");
                continue;
            }
            if self.clients.len() + self.conns.len() >= MAX_CONNECTIONS {
                tracing::warn!("vsock: refusing a host connection: {MAX_CONNECTIONS} connections open");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("vsock: refusing a host connection: cannot make it non-blocking: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            let deadline = Instant::now() + self.handshake_timeout;
            self.clients.insert(fd, PendingClient::new(stream, deadline));
            self.client_registered.insert(fd, false);
        }
    }

    fn on_client_readable(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let status = client.read_line();
        let port = match status {
            LineStatus::Incomplete => return,
            LineStatus::Connect(port) => port,
            LineStatus::Reject(reason) => {
                tracing::debug!("vsock: closing a host client: {reason}");
                self.drop_client(fd);
                return;
            }
        };
        if !self.driver_ready {
            tracing::debug!("vsock: closing a host client: the guest driver is not ready");
            self.drop_client(fd);
            return;
        }
        let Some(local_port) = self.allocate_local_port() else {
            tracing::warn!("vsock: closing a host client: no free local port");
            self.drop_client(fd);
            return;
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let registered = self.client_registered.remove(&fd).unwrap_or(false);
        let key = ConnKey { local_port, peer_port: port };
        let deadline = Instant::now() + self.connect_timeout;
        let mut conn = Connection::host_initiated(client.stream, key, self.guest_cid, deadline);
        conn.registered = registered.then_some(EventSet::IN);
        tracing::debug!(local_port, guest_port = port, "vsock: host connection request");
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
    }

    fn drop_client(&mut self, fd: RawFd) {
        if let Some(client) = self.clients.remove(&fd) {
            let registered = self.client_registered.remove(&fd).unwrap_or(false);
            self.dead.push((client.stream, registered));
        }
    }

    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(next) if next != u32::MAX => next,
                _ => FIRST_LOCAL_PORT,
            };
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    fn on_connection_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let hangup = set.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP);
        if set.contains(EventSet::IN) || hangup {
            conn.on_host_readable();
        }
        if set.contains(EventSet::OUT) || hangup {
            if let Err(e) = conn.flush_to_host() {
                tracing::debug!(local_port = key.local_port, "vsock: write to host socket: {e}");
                conn.set_close(Close::Reset("writing to the host socket failed"));
            }
        }
    }

    fn on_timer(&mut self) {
        // Non-blocking: a timer re-armed since epoll reported it just reads EAGAIN.
        let _ = self.timer.wait();
        self.timer_deadline = None;
        let now = Instant::now();
        let late: Vec<RawFd> = self.clients.iter().filter(|(_, c)| c.deadline <= now).map(|(&fd, _)| fd).collect();
        for fd in late {
            tracing::debug!("vsock: closing a host client: no complete CONNECT line within {:?}", self.handshake_timeout);
            self.drop_client(fd);
        }
        for conn in self.conns.values_mut() {
            if conn.deadline().is_some_and(|d| d <= now) {
                tracing::debug!(
                    local_port = conn.key.local_port,
                    guest_port = conn.key.peer_port,
                    "vsock: the guest did not answer a host connection request in time"
                );
                conn.set_close(Close::Reset("the guest did not answer the connection request"));
            }
        }
    }

    /// A tx packet from the guest (the chain itself was validated by
    /// [`read_tx_chain`](super::super::packet::read_tx_chain)); `data` is its payload.
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::warn!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "vsock: dropping a guest packet with wrong addresses (must be {} -> {HOST_CID})",
                self.guest_cid
            );
            return;
        }
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        if hdr.type_ != TYPE_STREAM {
            tracing::warn!(type_ = hdr.type_, "vsock: unsupported socket type from the guest");
            if hdr.op != OP_RST {
                self.queue_reset(key);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(key, hdr),
                OP_RST => {}
                op => {
                    tracing::debug!(
                        local_port = key.local_port,
                        guest_port = key.peer_port,
                        "vsock: guest {} for no connection",
                        op_name(op)
                    );
                    self.queue_reset(key);
                }
            }
            return;
        };
        conn.update_peer_credit(hdr);
        match hdr.op {
            OP_REQUEST => conn.set_close(Close::Reset("guest sent REQUEST on an open connection")),
            OP_RESPONSE => {
                if conn.is_established() {
                    conn.set_close(Close::Reset("guest sent RESPONSE on an established connection"));
                } else {
                    tracing::debug!(local_port = key.local_port, "vsock: guest accepted a host connection");
                    conn.on_response();
                    if let Err(e) = conn.flush_to_host() {
                        tracing::debug!("vsock: writing OK to the host client: {e}");
                        conn.set_close(Close::Reset("writing OK to the host client failed"));
                    }
                }
            }
            OP_RST => conn.set_close(Close::Silent("guest reset the connection")),
            OP_SHUTDOWN => {
                if !conn.is_established() {
                    conn.set_close(Close::Reset("guest sent SHUTDOWN before RESPONSE"));
                } else if let Err(e) = conn.on_shutdown(hdr.flags) {
                    tracing::debug!("vsock: flushing to the host socket: {e}");
                    conn.set_close(Close::Reset("writing to the host socket failed"));
                }
            }
            OP_RW => {
                if !conn.is_established() {
                    conn.set_close(Close::Reset("guest sent data before RESPONSE"));
                } else if !data.is_empty() {
                    if let Err(reason) = conn.on_guest_data(data) {
                        conn.set_close(Close::Reset(reason));
                    }
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.on_credit_request(),
            _ => conn.set_close(Close::Reset("guest sent an unknown operation")),
        }
        if let Some(Close::Reset(reason) | Close::Silent(reason)) = conn.close {
            tracing::debug!(local_port = key.local_port, guest_port = key.peer_port, "vsock: closing: {reason}");
        }
    }

    /// The guest connects to host port `key.local_port`: relay to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() + self.clients.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: refusing a guest connection: {MAX_CONNECTIONS} connections open");
            self.queue_reset(key);
            return;
        }
        let path = self.port_path(key.local_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(path = %path.display(), "vsock: guest connection refused: {e}");
                self.queue_reset(key);
                return;
            }
        };
        tracing::debug!(path = %path.display(), guest_port = key.peer_port, "vsock: guest connected");
        self.by_fd.insert(stream.as_raw_fd(), key);
        self.conns.insert(key, Connection::guest_initiated(stream, key, self.guest_cid, hdr));
    }

    /// `<uds_path>_<port>`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut path: OsString = self.uds_path.clone().into_os_string();
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }

    fn queue_reset(&mut self, key: ConnKey) {
        if self.resets.len() >= MAX_PENDING_RESETS {
            tracing::warn!("vsock: too many RST packets pending for the guest; dropping one");
            return;
        }
        self.resets.push_back(key);
    }

    /// Drops connections that are finished or broken, and queues those with something for the
    /// guest. Returns whether there is rx work.
    pub fn prepare(&mut self) -> bool {
        let closing: Vec<ConnKey> = self.conns.values().filter(|c| c.close.is_some() || c.is_finished()).map(|c| c.key).collect();
        for key in closing {
            let Some(conn) = self.conns.remove(&key) else {
                continue;
            };
            self.by_fd.remove(&conn.stream.as_raw_fd());
            match conn.close {
                Some(Close::Silent(_)) => {}
                Some(Close::Reset(_)) | None => self.queue_reset(key),
            }
            tracing::debug!(local_port = key.local_port, guest_port = key.peer_port, "vsock: connection closed");
            self.dead.push((conn.stream, conn.registered.is_some()));
        }
        for conn in self.conns.values_mut() {
            if !conn.in_rx_queue && conn.wants_rx() {
                conn.in_rx_queue = true;
                self.rx_ready.push_back(conn.key);
            }
        }
        self.has_rx_work()
    }

    pub fn has_rx_work(&self) -> bool {
        !self.resets.is_empty() || !self.rx_ready.is_empty()
    }

    /// Fills one rx buffer; `None` if there was nothing to send after all.
    pub fn fill_rx(&mut self, pkt: &mut RxBuffer<'_>) -> Option<u32> {
        if let Some(key) = self.resets.pop_front() {
            return Some(write_header(pkt, &reset_header(key, self.guest_cid)));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rx_queue = false;
            match conn.fill(pkt) {
                Fill::Sent(len) => {
                    if conn.wants_rx() {
                        conn.in_rx_queue = true;
                        self.rx_ready.push_back(key);
                    }
                    return Some(len);
                }
                Fill::Nothing => continue,
                Fill::Broken => {
                    conn.set_close(Close::Silent("host socket failed"));
                    return Some(write_header(pkt, &reset_header(key, self.guest_cid)));
                }
            }
        }
        None
    }

    /// Unregisters and closes the streams of dropped connections and clients.
    pub fn release_dead(&mut self, ops: &mut EventOps) {
        for (stream, registered) in self.dead.drain(..) {
            if registered {
                if let Err(e) = ops.remove(Events::empty(&stream)) {
                    tracing::warn!("vsock: cannot unwatch a closed connection: {e:?}");
                }
            }
        }
    }

    /// Brings epoll in line with what every stream needs, releases dead streams and arms the
    /// connect timer.
    pub fn sync(&mut self, ops: &mut EventOps) {
        self.release_dead(ops);
        for (fd, registered) in self.client_registered.iter_mut() {
            if *registered {
                continue;
            }
            if let Some(client) = self.clients.get(fd) {
                match ops.add(Events::new(&client.stream, EventSet::IN)) {
                    Ok(()) => *registered = true,
                    Err(e) => tracing::warn!("vsock: cannot watch a host client: {e:?}"),
                }
            }
        }
        for conn in self.conns.values_mut() {
            let want = conn.desired_interest();
            let result = match conn.registered {
                None if want.is_empty() => continue,
                None => ops.add(Events::new(&conn.stream, want)),
                Some(_) if want.is_empty() => ops.remove(Events::empty(&conn.stream)),
                Some(have) if have == want => continue,
                Some(_) => ops.modify(Events::new(&conn.stream, want)),
            };
            match result {
                Ok(()) => conn.registered = (!want.is_empty()).then_some(want),
                Err(e) => {
                    tracing::warn!(local_port = conn.key.local_port, "vsock: cannot update the watch on a connection: {e:?}");
                    conn.set_close(Close::Reset("the event loop refused the connection's socket"));
                }
            }
        }
        self.arm_timer();
    }

    fn arm_timer(&mut self) {
        let earliest = self.conns.values().filter_map(Connection::deadline).chain(self.clients.values().map(|c| c.deadline)).min();
        if earliest == self.timer_deadline {
            return;
        }
        let result = match earliest {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                self.timer.reset(wait.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_deadline = earliest,
            Err(e) => tracing::warn!("vsock: cannot arm the connect timer: {e}"),
        }
    }
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        if !self.owns_socket_file {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(path = %self.uds_path.display(), "vsock: cannot remove the socket file: {e}");
            }
        }
    }
}

/// Removes a socket file left behind by an earlier VMM; anything that is not a socket is left
/// alone and reported.
fn remove_stale_socket(path: &Path) -> Result<(), VsockError> {
    let err = |source| VsockError::RemoveStaleSocket { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err),
        Ok(_) => Err(err(io::Error::new(ErrorKind::AlreadyExists, "exists and is not a socket"))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Connects to a Unix socket without ever blocking the event loop (a listener with a full
/// backlog is an error, like a missing one).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// A `CLOCK_MONOTONIC` timerfd that is non-blocking, so a stale expiry never blocks the loop.
fn new_nonblocking_timer() -> io::Result<TimerFd> {
    // SAFETY: timerfd_create takes no pointers; the return value is checked below.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh timerfd that nothing else owns; TimerFd takes ownership of it.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}
