//! One relayed stream: a host Unix socket paired with one guest vsock connection.
//!
//! Flow control follows the virtio spec. Every header we send carries `buf_alloc` (the fixed
//! [`CONN_BUF_ALLOC`] bytes we will buffer for guest->host data) and `fwd_cnt` (how many of the
//! guest's bytes we have written to the host socket); the guest never has more than
//! `buf_alloc - (rx_cnt - fwd_cnt)` bytes in flight, so `to_host` never grows past
//! `CONN_BUF_ALLOC` unless the guest breaks the rules (which resets the connection). In the other
//! direction we read from the host socket only into an rx buffer the guest gave us, and never
//! more than the guest's advertised free space.

use std::cmp::min;
use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;
use nix::sys::socket::{send, MsgFlags};
use vm_memory::{ReadVolatile, VolatileMemoryError};

use super::super::packet::{
    Header, HEADER_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_F_RCV,
    SHUTDOWN_F_SEND, TYPE_STREAM,
};
use super::super::rx_buffer::RxBuffer;
use super::super::HOST_CID;

/// Bytes of guest->host data we buffer per connection (the `buf_alloc` we advertise).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send the guest a credit update once we have forwarded this much since the last one it saw.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// The largest payload of one packet, in either direction.
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// A connection's identity: the host-side port and the guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug)]
pub enum ConnState {
    /// Host-initiated: we sent (or will send) OP_REQUEST and wait for OP_RESPONSE.
    AwaitingResponse {
        deadline: Instant,
    },
    Established,
}

/// Why a connection is to be dropped, and whether the guest must be told with OP_RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Drop and send OP_RST to the guest.
    Reset(&'static str),
    /// Drop without telling the guest (it reset the connection, or was already told).
    Silent(&'static str),
}

/// What [`Connection::fill`] put into an rx buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// A packet of this many bytes (header included).
    Sent(u32),
    /// Nothing to send now; the buffer is untouched.
    Nothing,
    /// The host socket failed; the caller must send OP_RST in this buffer and drop the connection.
    Broken,
}

pub struct Connection {
    pub stream: UnixStream,
    pub key: ConnKey,
    guest_cid: u64,
    pub state: ConnState,
    /// Set when the connection must go; acted upon by the backend.
    pub close: Option<Close>,
    /// The epoll interest currently registered for `stream` (`None`: not registered).
    pub registered: Option<EventSet>,
    /// Whether `key` is in the backend's rx work queue.
    pub in_rx_queue: bool,

    // Control packets owed to the guest.
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    pending_credit_request: bool,
    credit_request_sent: bool,

    // host -> guest
    /// The host socket may have data (or EOF) to read: epoll said so and no read has blocked since.
    host_readable: bool,
    /// The host closed its write side and the guest has been sent OP_SHUTDOWN(SEND).
    host_eof: bool,
    /// The guest said it will receive no more.
    guest_shut_rcv: bool,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,

    // guest -> host
    /// `OK <port>\n` (or what is left of it) to write before any data.
    reply: Vec<u8>,
    to_host: VecDeque<u8>,
    /// The guest said it will send no more.
    guest_shut_send: bool,
    /// We shut down the host socket's write side (after flushing).
    host_write_shut: bool,
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: ConnState) -> Self {
        Self {
            stream,
            key,
            guest_cid,
            state,
            close: None,
            registered: None,
            in_rx_queue: false,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_credit_request: false,
            credit_request_sent: false,
            host_readable: false,
            host_eof: false,
            guest_shut_rcv: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            reply: Vec::new(),
            to_host: VecDeque::new(),
            guest_shut_send: false,
            host_write_shut: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
        }
    }

    /// A connection a host client asked for; OP_REQUEST goes to the guest next.
    pub fn host_initiated(stream: UnixStream, key: ConnKey, guest_cid: u64, deadline: Instant) -> Self {
        let mut conn = Self::new(stream, key, guest_cid, ConnState::AwaitingResponse { deadline });
        conn.pending_request = true;
        conn
    }

    /// A connection the guest asked for and the host accepted; OP_RESPONSE goes to the guest next.
    pub fn guest_initiated(stream: UnixStream, key: ConnKey, guest_cid: u64, req: &Header) -> Self {
        let mut conn = Self::new(stream, key, guest_cid, ConnState::Established);
        conn.update_peer_credit(req);
        conn.pending_response = true;
        // The host side may already have written something.
        conn.host_readable = true;
        conn
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, ConnState::Established)
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ConnState::AwaitingResponse { deadline } => Some(deadline),
            ConnState::Established => None,
        }
    }

    /// Marks the connection for closing, keeping the first reason.
    pub fn set_close(&mut self, close: Close) {
        if self.close.is_none() {
            self.close = Some(close);
        }
    }

    /// Records the credit information every guest packet carries.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest accepted our OP_REQUEST.
    pub fn on_response(&mut self) {
        self.state = ConnState::Established;
        self.reply = format!("OK {}\n", self.key.local_port).into_bytes();
        // The client may have sent data before `OK`; find out by reading.
        self.host_readable = true;
    }

    pub fn on_shutdown(&mut self, flags: u32) -> io::Result<()> {
        if flags & SHUTDOWN_F_RCV != 0 {
            self.guest_shut_rcv = true;
        }
        if flags & SHUTDOWN_F_SEND != 0 {
            self.guest_shut_send = true;
        }
        self.flush_to_host()
    }

    pub fn on_credit_request(&mut self) {
        self.pending_credit_update = true;
    }

    /// The host socket became readable (or hung up / errored: the read will tell).
    pub fn on_host_readable(&mut self) {
        self.host_readable = true;
    }

    /// Guest data (OP_RW) for the host socket: written at once as far as the socket takes it,
    /// the rest buffered. `Err` names the broken rule or the failed write.
    pub fn on_guest_data(&mut self, data: &[u8]) -> Result<(), &'static str> {
        if self.guest_shut_send {
            return Err("guest sent data after shutting down its send side");
        }
        let len = data.len();
        let buffered = self.rx_cnt.wrapping_sub(self.fwd_cnt) as usize;
        if buffered.saturating_add(len) > CONN_BUF_ALLOC as usize {
            return Err("guest sent more data than its credit allows");
        }
        let bytes = data;
        self.rx_cnt = self.rx_cnt.wrapping_add(len as u32);

        let mut written = 0;
        if self.reply.is_empty() && self.to_host.is_empty() && !self.host_write_shut {
            written = send_nonblocking(&self.stream, bytes).map_err(|e| {
                tracing::debug!(port = self.key.local_port, "vsock: write to host socket: {e}");
                "writing to the host socket failed"
            })?;
            self.forwarded(written);
        }
        if let Some(rest) = bytes.get(written..) {
            self.to_host.extend(rest);
        }
        Ok(())
    }

    /// Writes buffered guest data to the host socket until it would block; once everything is
    /// written and the guest shut down its send side, shuts down the socket's write side.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        if self.host_write_shut {
            return Ok(());
        }
        while !self.reply.is_empty() {
            let n = send_nonblocking(&self.stream, &self.reply)?;
            if n == 0 {
                return Ok(());
            }
            self.reply.drain(..min(n, self.reply.len()));
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            let n = send_nonblocking(&self.stream, front)?;
            if n == 0 {
                return Ok(());
            }
            self.to_host.drain(..min(n, self.to_host.len()));
            self.forwarded(n);
        }
        if self.guest_shut_send && self.is_established() {
            // ENOTCONN here means the peer is gone already; either way the write side is done.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        Ok(())
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if !self.guest_shut_send && self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }

    fn can_send_data(&self) -> bool {
        self.is_established() && self.host_readable && !self.host_eof && !self.guest_shut_rcv && self.peer_credit() > 0
    }

    /// Whether the connection has something for the guest's rx queue. Also decides to ask the
    /// guest for credit when host data waits on it.
    pub fn wants_rx(&mut self) -> bool {
        if self.is_established()
            && self.host_readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() == 0
            && !self.credit_request_sent
        {
            self.pending_credit_request = true;
        }
        self.pending_request || self.pending_response || self.pending_credit_update || self.pending_credit_request || self.can_send_data()
    }

    /// Both directions are done: the connection can go (with OP_RST, as the spec wants).
    pub fn is_finished(&self) -> bool {
        self.is_established() && self.guest_shut_send && self.host_write_shut && (self.host_eof || self.guest_shut_rcv)
    }

    /// The epoll interest the connection needs now. Empty means: unregister, nothing to wait for
    /// (this keeps a level-triggered epoll from spinning on a socket we cannot serve yet).
    pub fn desired_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if !self.is_established() {
            return set;
        }
        if !self.host_readable && !self.host_eof && !self.guest_shut_rcv {
            set |= EventSet::IN;
        }
        if (!self.reply.is_empty() || !self.to_host.is_empty()) && !self.host_write_shut {
            set |= EventSet::OUT;
        }
        set
    }

    /// A header from this connection's host end to its guest end.
    pub fn header(&self, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Puts the most urgent thing this connection has for the guest into `pkt`.
    pub fn fill(&mut self, pkt: &mut RxBuffer<'_>) -> Fill {
        if self.pending_request {
            self.pending_request = false;
            return self.send_control(pkt, OP_REQUEST, 0);
        }
        if self.pending_response {
            self.pending_response = false;
            return self.send_control(pkt, OP_RESPONSE, 0);
        }
        if self.can_send_data() {
            if let Some(fill) = self.read_host_into(pkt) {
                return fill;
            }
        }
        if self.pending_credit_update {
            return self.send_control(pkt, OP_CREDIT_UPDATE, 0);
        }
        if self.pending_credit_request {
            self.pending_credit_request = false;
            self.credit_request_sent = true;
            return self.send_control(pkt, OP_CREDIT_REQUEST, 0);
        }
        Fill::Nothing
    }

    /// Reads host data (or EOF) into `pkt`. `None`: the socket had nothing after all.
    fn read_host_into(&mut self, pkt: &mut RxBuffer<'_>) -> Option<Fill> {
        let max = min(self.peer_credit() as usize, MAX_PKT_DATA);
        if max == 0 {
            return None;
        }
        let mut buf = pkt.data_slice(max)?;
        match self.stream.read_volatile(&mut buf) {
            Ok(0) => {
                self.host_eof = true;
                Some(self.send_control(pkt, OP_SHUTDOWN, SHUTDOWN_F_SEND))
            }
            Ok(n) => {
                let n = min(n, max) as u32;
                self.tx_cnt = self.tx_cnt.wrapping_add(n);
                let hdr = self.header(OP_RW, 0, n);
                Some(self.send_header(pkt, &hdr, n))
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.host_readable = false;
                None
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => None,
            Err(e) => {
                tracing::debug!(port = self.key.local_port, "vsock: read from host socket: {e}");
                self.set_close(Close::Silent("reading the host socket failed"));
                Some(Fill::Broken)
            }
        }
    }

    fn send_control(&mut self, pkt: &mut RxBuffer<'_>, op: u16, flags: u32) -> Fill {
        let hdr = self.header(op, flags, 0);
        self.send_header(pkt, &hdr, 0)
    }

    fn send_header(&mut self, pkt: &mut RxBuffer<'_>, hdr: &Header, data_len: u32) -> Fill {
        // Every header tells the guest our fwd_cnt: no separate credit update is owed now.
        self.last_fwd_cnt_sent = hdr.fwd_cnt;
        self.pending_credit_update = false;
        Fill::Sent(write_header(pkt, hdr) + data_len)
    }
}

/// Writes `hdr` into the rx packet; returns the header's size, or 0 if the buffer refused it.
pub fn write_header(pkt: &mut RxBuffer<'_>, hdr: &Header) -> u32 {
    match pkt.write_header(hdr) {
        Ok(()) => HEADER_SIZE as u32,
        Err(e) => {
            tracing::warn!("vsock: cannot write a packet header into an rx buffer: {e}");
            0
        }
    }
}

/// The header of an OP_RST for `key` (also used for connections that do not exist).
pub fn reset_header(key: ConnKey, guest_cid: u64) -> Header {
    Header {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: key.local_port,
        dst_port: key.peer_port,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_RST,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    }
}

/// `send(2)` with `MSG_NOSIGNAL` (a closed peer is an error, not a SIGPIPE); `Ok(0)` when the
/// socket would block.
fn send_nonblocking(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    loop {
        match send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}
