//! Behaviour of the whole device: a test "guest driver" writes descriptors into guest memory,
//! real Unix sockets play the host, and a real event manager runs the device.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::*;
use super::unix::connection::CONN_BUF_ALLOC;
use super::{Vsock, VsockError, HOST_CID};
use crate::devices::virtio::device::{IrqTrigger, VirtioDevice};
use crate::devices::virtio::queue::test_utils::DriverQueue;

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
const QSIZE: u16 = 256;
const RX_QUEUE_ADDR: u64 = 0x1000;
const TX_QUEUE_ADDR: u64 = 0x4000;
const EV_QUEUE_ADDR: u64 = 0x8000;
/// rx chain j: header at RX_POOL + j * RX_STRIDE, data (4 KiB) one page later.
const RX_POOL: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x2000;
const RX_DATA_LEN: u32 = 4096;
const RX_CHAINS: u16 = 64;
/// tx slot j: header at TX_POOL + j * TX_STRIDE, data 0x100 later.
const TX_POOL: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x1_1000;
const TX_SLOTS: u16 = 128;
const RO: u16 = 0;
const WO: u16 = VRING_DESC_F_WRITE as u16;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Harness {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    irq: Arc<IrqTrigger>,
    rx: DriverQueue,
    tx: DriverQueue,
    queues: Option<Vec<Queue>>,
    tx_slot: u16,
}

/// A guest->host header.
fn gh(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: CONN_BUF_ALLOC,
        fwd_cnt: 0,
    }
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, &uds).unwrap()));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let (rx, rxq) = DriverQueue::new(&mem, RX_QUEUE_ADDR, QSIZE);
        let (tx, txq) = DriverQueue::new(&mem, TX_QUEUE_ADDR, QSIZE);
        let (_, evq) = DriverQueue::new(&mem, EV_QUEUE_ADDR, QSIZE);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let mut h = Harness { _dir: dir, uds, mem, dev, em, irq, rx, tx, queues: Some(vec![rxq, txq, evq]), tx_slot: 0 };
        h.pump();
        h
    }

    /// Activates the device without giving it any rx buffers.
    fn activate_bare(&mut self) {
        let queues = self.queues.take().expect("activate once per harness");
        self.dev.lock().unwrap().activate(self.mem.clone(), self.irq.clone(), queues).unwrap();
    }

    /// Activates the device and gives it `RX_CHAINS` rx buffers.
    fn activate(&mut self) {
        self.activate_bare();
        for j in 0..RX_CHAINS {
            self.publish_rx_chain(j);
        }
        self.kick(0);
        self.pump();
    }

    fn publish_rx_chain(&mut self, j: u16) {
        let hdr = RX_POOL + u64::from(j) * RX_STRIDE;
        let head = self.rx.write_chain(&self.mem, 2 * j, &[(hdr, 44, WO), (hdr + 0x1000, RX_DATA_LEN, WO)]);
        self.rx.publish(&self.mem, head);
    }

    fn kick(&self, queue: usize) {
        self.dev.lock().unwrap().queue_events()[queue].write(1).unwrap();
    }

    /// Runs the event loop until it is idle.
    fn pump(&mut self) {
        while self.em.run_with_timeout(0).unwrap() > 0 {}
    }

    /// Waits up to `ms` for an event, then runs the loop until idle.
    fn pump_wait(&mut self, ms: i32) {
        self.em.run_with_timeout(ms).unwrap();
        self.pump();
    }

    /// Puts a raw chain on the tx queue (descriptors of the next slot) and runs the loop.
    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        let first = 2 * (self.tx_slot % TX_SLOTS);
        self.tx_slot = self.tx_slot.wrapping_add(1);
        let head = self.tx.write_chain(&self.mem, first, descs);
        self.tx.publish(&self.mem, head);
        self.kick(1);
        self.pump();
        let used = self.tx.take_used(&self.mem);
        assert_eq!(used.len(), 1, "the device must consume every tx chain, valid or not");
    }

    /// Sends a well-formed packet (header and data in two descriptors).
    fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        let base = TX_POOL + u64::from(self.tx_slot % TX_SLOTS) * TX_STRIDE;
        self.mem.write_slice(&hdr.to_bytes(), GuestAddress(base)).unwrap();
        if data.is_empty() {
            self.send_raw(&[(base, 44, RO)]);
        } else {
            self.mem.write_slice(data, GuestAddress(base + 0x100)).unwrap();
            self.send_raw(&[(base, 44, RO), (base + 0x100, data.len() as u32, RO)]);
        }
    }

    /// Collects the packets the device put on the rx queue and recycles their buffers.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rx.take_used(&self.mem);
        let mut out = Vec::new();
        for &(id, len) in &used {
            let j = (id / 2) as u16;
            assert!(j < RX_CHAINS, "unexpected rx head {id}");
            let base = RX_POOL + u64::from(j) * RX_STRIDE;
            let mut raw = [0u8; 44];
            self.mem.read_slice(&mut raw, GuestAddress(base)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len, 44 + hdr.len, "used length must be header + payload");
            let mut data = vec![0u8; hdr.len as usize];
            self.mem.read_slice(&mut data, GuestAddress(base + 0x1000)).unwrap();
            out.push((hdr, data));
            self.publish_rx_chain(j);
        }
        if !used.is_empty() {
            self.kick(0);
        }
        out
    }

    fn pump_recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.pump();
        self.recv()
    }

    /// Waits (pumping) until the device sends a packet matching `pred`; returns everything
    /// received up to and including it.
    fn recv_until(&mut self, what: &str, pred: impl Fn(&Header) -> bool) -> Vec<(Header, Vec<u8>)> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut all = Vec::new();
        loop {
            let got = self.pump_recv();
            let done = got.iter().any(|(h, _)| pred(h));
            all.extend(got);
            if done {
                return all;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {all:?}");
            self.pump_wait(10);
        }
    }

    fn connect_client(&self) -> UnixStream {
        let client = UnixStream::connect(&self.uds).unwrap();
        client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        client
    }

    /// Host client connects to guest port `port` and the guest accepts: returns the client and
    /// the host-side port.
    fn establish_host_initiated(&mut self, port: u32) -> (UnixStream, u32) {
        let mut client = self.connect_client();
        client.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let pkts = self.pump_recv();
        assert_eq!(pkts.len(), 1, "expected one REQUEST, got {pkts:?}");
        let req = pkts[0].0;
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(req.dst_port, port);
        assert_eq!(req.type_, TYPE_STREAM);
        assert!(req.src_port >= 1 << 30);
        assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
        let local = req.src_port;
        self.send(gh(OP_RESPONSE, port, local), b"");
        assert_eq!(read_line(&mut client), format!("OK {local}\n"));
        (client, local)
    }

    fn with_backend<R>(&self, f: impl FnOnce(&mut super::unix::UnixBackend) -> R) -> R {
        f(&mut self.dev.lock().unwrap().backend)
    }

    fn conn_count(&self) -> usize {
        self.with_backend(|b| b.connection_count())
    }

    /// A full connection with data both ways works.
    fn assert_serves_a_connection(&mut self, port: u32) {
        let (mut client, local) = self.establish_host_initiated(port);
        client.write_all(b"ping").unwrap();
        let pkts = self.recv_until("RW ping", |h| h.op == OP_RW);
        assert_eq!(pkts.last().unwrap().1, b"ping");
        self.send(gh(OP_RW, port, local), b"pong");
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Whether the peer closed the stream (read returns EOF or a reset).
fn is_closed(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("reading the client: {e}"),
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn device_contract_values() {
    let h = Harness::new();
    let dev = h.dev.lock().unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_eq!(dev.queue_events().len(), 3);
    assert_eq!(dev.avail_features(), 1 << 32);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, GUEST_CID.to_le_bytes());
    let mut tail = [0xffu8; 8];
    dev.read_config(4, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0, 0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
}

#[test]
fn reserved_guest_cids_are_refused_and_stale_sockets_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    assert!(matches!(Vsock::new(2, &uds), Err(VsockError::InvalidGuestCid(2))));
    // A socket file left behind by a dead VMM.
    drop(UnixListener::bind(&uds).unwrap());
    assert!(uds.exists());
    let dev = Vsock::new(GUEST_CID, &uds).unwrap();
    UnixStream::connect(&uds).expect("the device listens on the path");
    drop(dev);
    assert!(!uds.exists(), "the socket file is removed with the device");
    // A regular file is not ours to delete.
    std::fs::write(&uds, b"data").unwrap();
    assert!(matches!(Vsock::new(GUEST_CID, &uds), Err(VsockError::RemoveStaleSocket { .. })));
}

#[test]
fn host_connect_handshake_and_data_both_ways() {
    let mut h = Harness::new();
    h.activate();
    let (mut client, local) = h.establish_host_initiated(1234);
    client.write_all(b"hello guest").unwrap();
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    let (hdr, data) = pkts.last().unwrap();
    assert_eq!((hdr.src_port, hdr.dst_port), (local, 1234));
    assert_eq!(data, b"hello guest");
    h.send(gh(OP_RW, 1234, local), b"hello host");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    assert!(h.irq.interrupt_status() & 1 != 0);
}

/// Linux guests split large tx packets over several descriptors; the spec allows any split,
/// even of the header.
#[test]
fn tx_packets_split_over_many_descriptors_arrive_whole() {
    let mut h = Harness::new();
    h.activate();
    let (mut client, local) = h.establish_host_initiated(1234);
    let data = pattern(3000, 9);
    let hdr = Header { len: data.len() as u32, ..gh(OP_RW, 1234, local) };
    let base = 0xE0_0000u64;
    let raw = hdr.to_bytes();
    h.mem.write_slice(&raw[..20], GuestAddress(base)).unwrap();
    h.mem.write_slice(&raw[20..], GuestAddress(base + 0x1000)).unwrap();
    h.mem.write_slice(&data[..1], GuestAddress(base + 0x2000)).unwrap();
    h.mem.write_slice(&data[1..2048], GuestAddress(base + 0x3000)).unwrap();
    h.mem.write_slice(&data[2048..], GuestAddress(base + 0x5000)).unwrap();
    h.send_raw(&[(base, 20, RO), (base + 0x1000, 24, RO), (base + 0x2000, 1, RO), (base + 0x3000, 2047, RO), (base + 0x5000, 952, RO)]);
    let mut got = vec![0u8; data.len()];
    client.read_exact(&mut got).unwrap();
    assert!(got == data, "the split packet's bytes must arrive in order");
    // The connection still works afterwards.
    h.send(gh(OP_RW, 1234, local), b"after");
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
}

#[test]
fn data_sent_by_the_client_before_ok_is_kept() {
    let mut h = Harness::new();
    h.activate();
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 77\nearly bytes").unwrap();
    let req = h.pump_recv()[0].0;
    assert_eq!(req.op, OP_REQUEST);
    h.send(gh(OP_RESPONSE, 77, req.src_port), b"");
    assert_eq!(read_line(&mut client), format!("OK {}\n", req.src_port));
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    assert_eq!(pkts.last().unwrap().1, b"early bytes");
}

#[test]
fn host_connect_refused_by_guest_closes_client() {
    let mut h = Harness::new();
    h.activate();
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 9\n").unwrap();
    let req = h.pump_recv()[0].0;
    h.send(gh(OP_RST, 9, req.src_port), b"");
    assert!(is_closed(&mut client));
    assert_eq!(h.conn_count(), 0);
    assert!(h.pump_recv().is_empty(), "no reply to a RST");
}

#[test]
fn host_connect_times_out_when_guest_is_silent() {
    let mut h = Harness::new();
    h.activate();
    h.with_backend(|b| b.set_connect_timeout(Duration::from_millis(50)));
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 9\n").unwrap();
    let req = h.pump_recv()[0].0;
    let pkts = h.recv_until("RST after the timeout", |p| p.op == OP_RST);
    assert_eq!(pkts.last().unwrap().0.src_port, req.src_port);
    assert!(is_closed(&mut client));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn a_host_client_that_never_finishes_its_connect_line_is_closed() {
    let mut h = Harness::new();
    h.activate();
    h.with_backend(|b| b.set_handshake_timeout(Duration::from_millis(50)));
    let mut silent = h.connect_client();
    let mut partial = h.connect_client();
    partial.write_all(b"CONNECT 9").unwrap(); // no newline
    let pending = |h: &Harness| h.with_backend(|b| b.pending_client_count());
    let start = std::time::Instant::now();
    while pending(&h) < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "the clients were never accepted");
        h.pump_wait(5);
    }
    while pending(&h) > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "pending clients were never closed");
        h.pump_wait(20);
    }
    for client in [&mut silent, &mut partial] {
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(is_closed(client));
    }
    // The slot is free again: a well-behaved client still gets through.
    h.assert_serves_a_connection(10);
}

#[test]
fn host_connect_before_activation_is_closed() {
    let mut h = Harness::new();
    let mut client = h.connect_client();
    let _ = client.write_all(b"CONNECT 9\n");
    h.pump();
    assert!(is_closed(&mut client));
}

#[test]
fn malformed_connect_lines_close_the_client() {
    let mut h = Harness::new();
    h.activate();
    let long = "A".repeat(40);
    for line in ["CONNECT abc\n", "HELLO 5\n", "CONNECT 99999999999\n", "CONNECT  5\n", "\n", &long] {
        let mut client = h.connect_client();
        let _ = client.write_all(line.as_bytes());
        h.pump();
        assert!(is_closed(&mut client), "{line:?} must close the client");
        assert!(h.recv().is_empty(), "{line:?} must not reach the guest");
    }
    // A client that hangs up half-way is forgotten too.
    let mut client = h.connect_client();
    client.write_all(b"CONN").unwrap();
    drop(client);
    h.pump();
    assert!(h.recv().is_empty());
    h.assert_serves_a_connection(5);
}

#[test]
fn guest_connects_to_a_listening_host_port() {
    let mut h = Harness::new();
    h.activate();
    let listener = UnixListener::bind(format!("{}_5000", h.uds.display())).unwrap();
    h.send(gh(OP_REQUEST, 777, 5000), b"");
    let pkts = h.pump_recv();
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!((resp.src_cid, resp.src_port, resp.dst_cid, resp.dst_port), (HOST_CID, 5000, GUEST_CID, 777));
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    h.send(gh(OP_RW, 777, 5000), b"from guest");
    let mut buf = [0u8; 10];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from guest");
    server.write_all(b"from host").unwrap();
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    assert_eq!(pkts.last().unwrap().1, b"from host");
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mut h = Harness::new();
    h.activate();
    h.send(gh(OP_REQUEST, 778, 5001), b"");
    let pkts = h.pump_recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5001, 778));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn sixteen_mib_guest_to_host_arrive_intact_within_credit() {
    const TOTAL: usize = 16 << 20;
    let mut h = Harness::new();
    h.activate();
    let listener = UnixListener::bind(format!("{}_6000", h.uds.display())).unwrap();
    let reader = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    h.send(gh(OP_REQUEST, 900, 6000), b"");
    let resp = h.pump_recv()[0].0;
    assert_eq!(resp.op, OP_RESPONSE);
    let data = pattern(TOTAL, 7);
    let (mut sent, mut host_buf, mut host_fwd) = (0usize, resp.buf_alloc, resp.fwd_cnt);
    let mut credit_updates = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent < TOTAL {
        let credit = host_buf as usize - (sent as u32).wrapping_sub(host_fwd) as usize;
        if credit > 0 {
            let n = credit.min(64 * 1024).min(TOTAL - sent);
            h.send(gh(OP_RW, 900, 6000), &data[sent..sent + n]);
            sent += n;
        } else {
            assert!(Instant::now() < deadline, "stalled at {sent} bytes: no credit update");
            h.pump_wait(5);
        }
        for (hdr, _) in h.recv() {
            assert_ne!(hdr.op, OP_RST, "the device reset a well-behaved stream");
            if hdr.op == OP_CREDIT_UPDATE {
                credit_updates += 1;
            }
            host_buf = hdr.buf_alloc;
            host_fwd = hdr.fwd_cnt;
        }
    }
    assert!(credit_updates > 0);
    // Half-close: the host reader sees EOF after the last byte.
    h.send(Header { flags: SHUTDOWN_F_SEND, ..gh(OP_SHUTDOWN, 900, 6000) }, b"");
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "host reader never saw EOF");
        h.pump_wait(5);
    }
    let got = reader.join().unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "guest->host data corrupted");
    // The host side closed too: the guest is told, then the connection is done.
    let pkts = h.recv_until("RST closing the connection", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|(p, _)| p.op == OP_SHUTDOWN && p.flags & SHUTDOWN_F_SEND != 0));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn sixteen_mib_host_to_guest_arrive_intact_within_credit() {
    const TOTAL: usize = 16 << 20;
    const GUEST_BUF: u32 = 64 * 1024;
    let mut h = Harness::new();
    h.activate();
    let uds = h.uds.clone();
    let data = pattern(TOTAL, 11);
    let to_send = data.clone();
    let writer = thread::spawn(move || {
        let mut c = UnixStream::connect(&uds).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        c.write_all(b"CONNECT 4000\n").unwrap();
        let ok = read_line(&mut c);
        assert!(ok.starts_with("OK "), "{ok:?}");
        c.write_all(&to_send).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        rest
    });
    let pkts = h.recv_until("REQUEST", |p| p.op == OP_REQUEST);
    let local = pkts.last().unwrap().0.src_port;
    let mut resp = gh(OP_RESPONSE, 4000, local);
    resp.buf_alloc = GUEST_BUF;
    h.send(resp, b"");

    let mut got = Vec::with_capacity(TOTAL);
    let mut advertised_fwd = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    'outer: loop {
        assert!(Instant::now() < deadline, "stalled after {} bytes", got.len());
        h.pump_wait(5);
        let pkts = h.recv();
        for (hdr, payload) in pkts {
            match hdr.op {
                OP_RW => {
                    got.extend_from_slice(&payload);
                    let in_flight = (got.len() as u32).wrapping_sub(advertised_fwd);
                    assert!(in_flight <= GUEST_BUF, "device overran the guest's credit: {in_flight}");
                }
                OP_SHUTDOWN => {
                    assert_ne!(hdr.flags & SHUTDOWN_F_SEND, 0);
                    break 'outer;
                }
                OP_CREDIT_REQUEST => {}
                op => panic!("unexpected {}", op_name(op)),
            }
        }
        // The guest application consumed everything: tell the device.
        if got.len() as u32 != advertised_fwd {
            advertised_fwd = got.len() as u32;
            let mut upd = gh(OP_CREDIT_UPDATE, 4000, local);
            upd.buf_alloc = GUEST_BUF;
            upd.fwd_cnt = advertised_fwd;
            h.send(upd, b"");
        }
    }
    assert_eq!(got.len(), TOTAL);
    assert!(got == data, "host->guest data corrupted");
    // The guest closes: the client sees EOF, the device finishes with RST.
    let mut bye = gh(OP_SHUTDOWN, 4000, local);
    bye.flags = SHUTDOWN_F_SEND | SHUTDOWN_F_RCV;
    bye.buf_alloc = GUEST_BUF;
    bye.fwd_cnt = advertised_fwd;
    h.send(bye, b"");
    h.recv_until("RST", |p| p.op == OP_RST);
    assert!(writer.join().unwrap().is_empty());
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn half_close_from_the_host_keeps_guest_to_host_flowing() {
    let mut h = Harness::new();
    h.activate();
    let (mut client, local) = h.establish_host_initiated(42);
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let pkts = h.recv_until("SHUTDOWN", |p| p.op == OP_SHUTDOWN);
    let data: Vec<u8> = pkts.iter().filter(|(p, _)| p.op == OP_RW).flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(data, b"last words");
    assert_eq!(pkts.last().unwrap().0.flags, SHUTDOWN_F_SEND);
    h.send(gh(OP_RW, 42, local), b"still here");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    h.send(Header { flags: SHUTDOWN_F_SEND, ..gh(OP_SHUTDOWN, 42, local) }, b"");
    assert!(is_closed(&mut client));
    let pkts = h.pump_recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST, "both directions done: the connection is closed");
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn half_close_from_the_guest_keeps_host_to_guest_flowing() {
    let mut h = Harness::new();
    h.activate();
    let (mut client, local) = h.establish_host_initiated(43);
    h.send(gh(OP_RW, 43, local), b"bye");
    h.send(Header { flags: SHUTDOWN_F_SEND, ..gh(OP_SHUTDOWN, 43, local) }, b"");
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye", "EOF after the guest's data");
    client.write_all(b"reply").unwrap();
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    assert_eq!(pkts.last().unwrap().1, b"reply");
    drop(client);
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    let ops: Vec<u16> = pkts.iter().map(|(p, _)| p.op).collect();
    assert_eq!(ops, [OP_SHUTDOWN, OP_RST]);
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn host_client_vanishing_resets_the_guest_connection() {
    let mut h = Harness::new();
    h.activate();
    let (client, local) = h.establish_host_initiated(44);
    drop(client);
    h.pump_wait(10);
    h.recv();
    h.send(gh(OP_RW, 44, local), b"anyone?");
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert_eq!(pkts.last().unwrap().0.dst_port, 44);
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn guest_reset_closes_the_client() {
    let mut h = Harness::new();
    h.activate();
    let (mut client, local) = h.establish_host_initiated(45);
    h.send(gh(OP_RST, 45, local), b"");
    assert!(is_closed(&mut client));
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn credit_request_is_answered_with_credit_update() {
    let mut h = Harness::new();
    h.activate();
    let (_client, local) = h.establish_host_initiated(46);
    h.send(gh(OP_CREDIT_REQUEST, 46, local), b"");
    let pkts = h.pump_recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_CREDIT_UPDATE);
    assert_eq!(pkts[0].0.buf_alloc, CONN_BUF_ALLOC);
}

#[test]
fn device_reset_drops_all_connections() {
    let mut h = Harness::new();
    h.activate();
    let (mut client, _) = h.establish_host_initiated(47);
    h.dev.lock().unwrap().reset();
    h.pump();
    assert!(is_closed(&mut client));
    assert!(!h.dev.lock().unwrap().is_activated());
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn guest_ignoring_credit_is_reset() {
    let mut h = Harness::new();
    h.activate();
    let listener = UnixListener::bind(format!("{}_6100", h.uds.display())).unwrap();
    h.send(gh(OP_REQUEST, 901, 6100), b"");
    assert_eq!(h.pump_recv()[0].0.op, OP_RESPONSE);
    let (_server_not_reading, _) = listener.accept().unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        h.send(gh(OP_RW, 901, 6100), &chunk);
        if h.recv().iter().any(|(p, _)| p.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest overrunning its credit must be reset");
    assert_eq!(h.conn_count(), 0);
}

#[test]
fn hostile_tx_packets_are_dropped_and_the_device_keeps_serving() {
    let mut h = Harness::new();
    h.activate();
    let scratch = 0xD0_0000;
    let write_hdr = |h: &Harness, hdr: Header| {
        h.mem.write_slice(&hdr.to_bytes(), GuestAddress(scratch)).unwrap();
    };
    let rw = Header { len: 1000, ..gh(OP_RW, 1, 2) };

    // Header descriptor shorter than a header.
    write_hdr(&h, gh(OP_REQUEST, 1, 2));
    h.send_raw(&[(scratch, 20, RO)]);
    // Header outside guest memory.
    h.send_raw(&[(0x4000_0000, 44, RO)]);
    // Header straddling the end of guest memory.
    h.send_raw(&[(MEM_SIZE as u64 - 20, 44, RO)]);
    // `len` larger than the data buffer.
    write_hdr(&h, rw);
    h.send_raw(&[(scratch, 44, RO), (scratch + 0x100, 100, RO)]);
    // `len` larger than any packet may be.
    write_hdr(&h, Header { len: 1 << 20, ..rw });
    h.send_raw(&[(scratch, 44, RO), (scratch + 0x100, 1 << 20, RO)]);
    // `len` but no data descriptor.
    write_hdr(&h, rw);
    h.send_raw(&[(scratch, 44, RO)]);
    // Data outside guest memory.
    h.send_raw(&[(scratch, 44, RO), (0x4000_0000, 1000, RO)]);
    // Device-writable descriptors on the tx queue.
    h.send_raw(&[(scratch, 44, WO), (scratch + 0x100, 1000, WO)]);
    // A head index outside the descriptor table.
    h.tx.publish(&h.mem, 300);
    h.kick(1);
    h.pump();
    h.tx.take_used(&h.mem);
    // Wrong source or destination CID: dropped silently.
    write_hdr(&h, Header { src_cid: 7, ..gh(OP_REQUEST, 1, 2) });
    h.send_raw(&[(scratch, 44, RO)]);
    write_hdr(&h, Header { dst_cid: 5, ..gh(OP_REQUEST, 1, 2) });
    h.send_raw(&[(scratch, 44, RO)]);
    assert!(h.pump_recv().is_empty(), "malformed or misaddressed packets get no answer");

    // Wrong socket type, unknown op, data for no connection: answered with RST.
    h.send(Header { type_: 2, ..gh(OP_REQUEST, 11, 12) }, b"");
    h.send(gh(42, 13, 14), b"");
    h.send(gh(OP_RW, 15, 16), b"orphan");
    let rsts: Vec<(u32, u32)> = h
        .pump_recv()
        .iter()
        .map(|(p, _)| {
            assert_eq!(p.op, OP_RST);
            (p.dst_port, p.src_port)
        })
        .collect();
    assert_eq!(rsts, [(11, 12), (13, 14), (15, 16)]);
    // A RST for no connection gets no answer (no RST ping-pong).
    h.send(gh(OP_RST, 17, 18), b"");
    assert!(h.pump_recv().is_empty());

    // An unknown op on a live connection resets it.
    let (mut client, local) = h.establish_host_initiated(20);
    h.send(gh(99, 20, local), b"");
    assert_eq!(h.pump_recv()[0].0.op, OP_RST);
    assert!(is_closed(&mut client));
    // So does data before RESPONSE.
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 21\n").unwrap();
    let req = h.pump_recv()[0].0;
    h.send(gh(OP_RW, 21, req.src_port), b"too early");
    assert_eq!(h.pump_recv()[0].0.op, OP_RST);
    assert!(is_closed(&mut client));

    assert_eq!(h.conn_count(), 0);
    h.assert_serves_a_connection(22);
}

#[test]
fn hostile_rx_buffers_are_skipped() {
    let mut h = Harness::new();
    h.activate_bare();
    let buf = RX_POOL + 100 * RX_STRIDE;
    let bad: Vec<Vec<(u64, u32, u16)>> = vec![
        // Read-only header.
        vec![(buf, 44, RO), (buf + 0x1000, 4096, WO)],
        // Read-only data.
        vec![(buf, 44, WO), (buf + 0x1000, 4096, RO)],
        // Only a header-sized descriptor: too short for header + data.
        vec![(buf, 44, WO)],
        // Shorter than a header.
        vec![(buf, 20, WO)],
        // Outside guest memory.
        vec![(0x4000_0000, 44, WO), (buf + 0x1000, 4096, WO)],
        vec![(buf, 44, WO), (0x4000_0000, 4096, WO)],
    ];
    let mut bad_heads = Vec::new();
    for (i, chain) in bad.iter().enumerate() {
        let head = h.rx.write_chain(&h.mem, 200 + 4 * i as u16, chain);
        h.rx.publish(&h.mem, head);
        bad_heads.push(u32::from(head));
    }
    // A well-formed header and data buffer whose data descriptor links back to the header:
    // a loop, which the packet parser alone would have taken.
    let looped = h.rx.write_chain(&h.mem, 240, &[(buf, 44, WO), (buf + 0x1000, 4096, WO)]);
    let data_desc = h.rx.desc + 16 * 241;
    h.mem.write_obj(WO | VRING_DESC_F_NEXT as u16, GuestAddress(data_desc + 12)).unwrap();
    h.mem.write_obj(240u16, GuestAddress(data_desc + 14)).unwrap();
    h.rx.publish(&h.mem, looped);
    bad_heads.push(u32::from(looped));
    h.publish_rx_chain(0);
    h.kick(0);
    h.pump();
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 30\n").unwrap();
    h.pump();
    let used = h.rx.take_used(&h.mem);
    let (skipped, good): (Vec<_>, Vec<_>) = used.iter().partition(|(id, _)| bad_heads.contains(id));
    assert_eq!(skipped.len(), bad.len() + 1, "{used:?}");
    assert!(skipped.iter().all(|&&(_, len)| len == 0));
    assert_eq!(good, [&(0, 44)], "the REQUEST lands in the first good buffer");
    let mut raw = [0u8; 44];
    h.mem.read_slice(&mut raw, GuestAddress(RX_POOL)).unwrap();
    assert_eq!(Header::from_bytes(&raw).op, OP_REQUEST);
}

#[test]
fn a_guest_refilling_the_rx_ring_with_bad_buffers_cannot_hold_the_event_loop() {
    // A packet waits for the guest (a host client's REQUEST), and every rx buffer is
    // malformed: one call handles at most RX_BATCH of them and asks to be called again.
    let mut h = Harness::new();
    h.activate_bare();
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 31\n").unwrap();
    h.pump();
    let buf = RX_POOL + 100 * RX_STRIDE;
    for i in 0..QSIZE {
        // Shorter than a header: malformed.
        let head = h.rx.write_chain(&h.mem, i, &[(buf, 20, WO)]);
        h.rx.publish(&h.mem, head);
    }
    // Drain the rx queue event the harness may have left, then one call.
    let _ = h.dev.lock().unwrap().queue_events()[0].read();
    assert!(h.dev.lock().unwrap().process_rx());
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used.len(), super::device::RX_BATCH, "one call used {} buffers", used.len());
    assert!(used.iter().all(|&(_, len)| len == 0));
    // It asked the event loop to come back, which then drops the rest and, with a good
    // buffer, delivers the waiting packet.
    assert_eq!(h.dev.lock().unwrap().queue_events()[0].read().ok(), Some(1));
    h.publish_rx_chain(0);
    h.kick(0);
    h.pump();
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used.len(), usize::from(QSIZE) - super::device::RX_BATCH + 1, "{used:?}");
    assert_eq!(used.last(), Some(&(0, 44)), "the REQUEST lands in the good buffer");
}

#[test]
fn rx_buffers_of_any_layout_carry_packets() {
    // Linux (6.2 on) gives one descriptor holding header and data; the spec allows any split,
    // even of the header. Each buffer gets the packet where the chain says.
    let mut h = Harness::new();
    h.activate_bare();
    let one = RX_POOL + 100 * RX_STRIDE;
    let head = h.rx.write_chain(&h.mem, 200, &[(one, 44 + 4096, WO)]);
    h.rx.publish(&h.mem, head);
    h.kick(0);
    let mut client = h.connect_client();
    client.write_all(b"CONNECT 40\n").unwrap();
    h.pump();
    assert_eq!(h.rx.take_used(&h.mem), [(200, 44)]);
    let mut raw = [0u8; 44];
    h.mem.read_slice(&mut raw, GuestAddress(one)).unwrap();
    let req = Header::from_bytes(&raw);
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 40));
    h.send(gh(OP_RESPONSE, 40, req.src_port), b"");
    assert_eq!(read_line(&mut client), format!("OK {}\n", req.src_port));

    // The header split 20 + 24 over two descriptors, the data after it in the second.
    let (a, b) = (RX_POOL + 101 * RX_STRIDE, RX_POOL + 102 * RX_STRIDE);
    let head = h.rx.write_chain(&h.mem, 210, &[(a, 20, WO), (b, 24 + 4096, WO)]);
    h.rx.publish(&h.mem, head);
    client.write_all(b"split").unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let used = loop {
        h.kick(0);
        h.pump_wait(10);
        let used = h.rx.take_used(&h.mem);
        if !used.is_empty() || Instant::now() > deadline {
            break used;
        }
    };
    assert_eq!(used, [(210, 44 + 5)]);
    h.mem.read_slice(&mut raw[..20], GuestAddress(a)).unwrap();
    h.mem.read_slice(&mut raw[20..], GuestAddress(b)).unwrap();
    let rw = Header::from_bytes(&raw);
    assert_eq!((rw.op, rw.len, rw.dst_port), (OP_RW, 5, 40));
    let mut data = [0u8; 5];
    h.mem.read_slice(&mut data, GuestAddress(b + 24)).unwrap();
    assert_eq!(&data, b"split");
}
