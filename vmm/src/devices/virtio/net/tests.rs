//! Behaviour of the whole device: a test "guest driver" writes descriptors into guest memory, a
//! real tap in a private network namespace (one per test) is the backend, an `AF_PACKET`
//! socket bound to it plays the host, and a real event manager runs the device. These tests
//! need root (`unshare(CLONE_NEWNET)`, creating a tap).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_GSO_TCPV4};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::device::{IrqTrigger, VirtioDevice};
use crate::devices::virtio::queue::test_utils::DriverQueue;
use crate::rate_limiter::Rates;

const TAP_NAME: &str = "ptap0";
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// IEEE 802 local experimental ethertype: no host stack answers it, so every such frame is ours.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const MEM_SIZE: usize = 0x100_0000;
const QSIZE: u16 = QUEUE_SIZE;
const RX_QUEUE_ADDR: u64 = 0x1_0000;
const TX_QUEUE_ADDR: u64 = 0x2_0000;
/// rx chain j's buffer at RX_POOL + j * RX_STRIDE.
const RX_POOL: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x1000;
/// tx slot j's frame at TX_POOL + j * TX_STRIDE.
const TX_POOL: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x1000;
const RO: u16 = 0;
const WO: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WAIT: Duration = Duration::from_secs(5);
/// A chain as (address, length, flags) per descriptor.
type Descs = Vec<(u64, u32, u16)>;

fn check(ret: libc::c_int, what: &str) {
    assert!(ret >= 0, "{what}: {}", io::Error::last_os_error());
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// A tap `ptap0`, up, in a new network namespace (IPv6 off, so the host stack sends nothing on
/// its own), and an `AF_PACKET` socket bound to it there.
fn tap_in_new_netns() -> (Tap, OwnedFd) {
    std::thread::spawn(|| {
        // SAFETY: unshare changes only this thread's network namespace; the thread ends here.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "unshare(CLONE_NEWNET) (the virtio-net tests need root)");
        for path in ["/proc/sys/net/ipv6/conf/default/disable_ipv6", "/proc/sys/net/ipv6/conf/all/disable_ipv6"] {
            let _ = std::fs::write(path, "1");
        }
        let tap = Tap::open(TAP_NAME).expect("a tap in the new namespace");
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let ctl = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(ctl, "AF_INET socket");
        // SAFETY: `ctl` was just created and is owned by nothing else.
        let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
        let mut ifr = ifreq(TAP_NAME);
        // SAFETY: SIOC[GS]IFFLAGS and SIOCGIFINDEX read and write one `ifreq`, alive for each call.
        unsafe {
            check(libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr), "SIOCGIFFLAGS");
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr), "SIOCSIFFLAGS");
            check(libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr), "SIOCGIFINDEX");
        }
        // SAFETY: the union member SIOCGIFINDEX filled.
        let ifindex = unsafe { ifr.ifr_ifru.ifru_ifindex };
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let pkt = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::c_int::from(all)) };
        check(pkt, "AF_PACKET socket");
        // SAFETY: `pkt` was just created and is owned by nothing else.
        let pkt = unsafe { OwnedFd::from_raw_fd(pkt) };
        // SAFETY: `sockaddr_ll` is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = ifindex;
        let rcvbuf: libc::c_int = 16 << 20;
        // SAFETY: `addr` and `rcvbuf` live for the calls, with their sizes passed.
        unsafe {
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            check(libc::bind(pkt.as_raw_fd(), (&raw const addr).cast(), len), "bind AF_PACKET");
            let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            check(libc::setsockopt(pkt.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const rcvbuf).cast(), size), "rcvbuf");
        }
        (tap, pkt)
    })
    .join()
    .expect("the namespace thread")
}

/// An Ethernet frame of ours: `to`, `from`, our ethertype, `payload`.
fn frame(to: [u8; 6], from: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&to);
    f.extend_from_slice(&from);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(payload);
    f
}

fn payload(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7))) as u8).collect()
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    rx: DriverQueue,
    tx: DriverQueue,
    /// The host's side: an `AF_PACKET` socket on the tap.
    host: OwnedFd,
    next_rx_chain: u16,
}

impl Harness {
    /// A device on a fresh tap, activated with `features` acked (VERSION_1 always).
    fn new(features: u64, rx_rates: Rates, tx_rates: Rates) -> Harness {
        let (tap, host) = tap_in_new_netns();
        let net = Net::new(tap, GUEST_MAC, 1500).unwrap().with_rate_limits(rx_rates, tx_rates).unwrap();
        Self::with_device(net, features, host)
    }

    fn with_device(mut net: Net, features: u64, host: OwnedFd) -> Harness {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, rxq) = DriverQueue::new(&mem, RX_QUEUE_ADDR, QSIZE);
        let (tx, txq) = DriverQueue::new(&mem, TX_QUEUE_ADDR, QSIZE);
        net.set_acked_features(features | (1 << 32));
        let irq = Arc::new(IrqTrigger::new().unwrap());
        net.activate(mem.clone(), irq, vec![rxq, txq]).unwrap();
        let dev = Arc::new(Mutex::new(net));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut h = Harness { mem, dev, em, rx, tx, host, next_rx_chain: 0 };
        h.pump();
        h
    }

    fn counters(&self) -> NetCounters {
        self.dev.lock().unwrap().counters()
    }

    fn kick(&self, queue: usize) {
        self.dev.lock().unwrap().queue_events()[queue].write(1).unwrap();
    }

    /// Runs the event loop until it is idle.
    fn pump(&mut self) {
        while self.em.run_with_timeout(0).unwrap() > 0 {}
    }

    /// Runs the event loop until `done` or [`WAIT`] passed; returns `done`'s last answer.
    fn pump_until(&mut self, done: impl Fn(&Harness) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            self.em.run_with_timeout(20).unwrap();
        }
    }

    /// Gives the device one rx chain of `len` bytes (one descriptor) and returns its head.
    fn add_rx_buffer(&mut self, len: u32) -> u16 {
        let head = self.next_rx_chain;
        self.next_rx_chain += 1;
        self.mem.write_slice(&vec![0xee; len as usize], GuestAddress(RX_POOL + u64::from(head) * RX_STRIDE)).unwrap();
        self.rx.add_chain(&self.mem, head, &[(RX_POOL + u64::from(head) * RX_STRIDE, len, WO)]);
        head
    }

    fn rx_buffer(&self, head: u32, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.mem.read_slice(&mut v, GuestAddress(RX_POOL + u64::from(head) * RX_STRIDE)).unwrap();
        v
    }

    /// Puts `hdr + frame` in tx slot `slot` (one descriptor at table index `slot`), available.
    fn add_tx_frame(&mut self, slot: u16, hdr: [u8; 12], frame: &[u8]) {
        let at = TX_POOL + u64::from(slot) * TX_STRIDE;
        self.mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        self.mem.write_slice(frame, GuestAddress(at + 12)).unwrap();
        self.tx.add_chain(&self.mem, slot, &[(at, 12 + frame.len() as u32, RO)]);
    }

    /// Sends a frame from the host side (it goes out of the namespace's interface into the tap).
    fn host_send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length for the call.
        let n = unsafe { libc::send(self.host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "send on the packet socket: {}", io::Error::last_os_error());
    }

    /// The next frame of ours the host side receives, within [`WAIT`].
    fn host_recv(&self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 70_000];
        while Instant::now() < deadline {
            let mut fds = [libc::pollfd { fd: self.host.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } <= 0 {
                continue;
            }
            // SAFETY: `buf` is valid for writes of its length for the call.
            let n = unsafe { libc::recv(self.host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n >= 14 && buf[12..14] == ETHERTYPE {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}

fn no_rates() -> Rates {
    Rates::default()
}

/// A device on one end of a socket pair (no tap): for what needs no real network.
fn socket_net() -> (Net, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (Net::new(Tap::from_fd(OwnedFd::from(a)), GUEST_MAC, 9000).unwrap(), b)
}

#[test]
fn config_space_features_and_arguments() {
    let (net, _peer) = socket_net();
    let mut config = [0u8; 12];
    net.read_config(0, &mut config);
    assert_eq!(config[..6], GUEST_MAC);
    assert_eq!(config[6..], [1, 0, 1, 0, 0x28, 0x23], "link up, one queue pair, MTU 9000");
    let mut past = [0xffu8; 4];
    net.read_config(10, &mut past);
    assert_eq!(past, [0x28, 0x23, 0, 0]);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = net.avail_features();
    for feature in [32, 0, 1, 3, 5, 7, 8, 10, 11, 12, 14, 15, 16] {
        assert_ne!(f & (1 << feature), 0, "feature {feature} offered");
    }
    assert_eq!(f & (1 << 17), 0, "no control queue");
    let tap = || Tap::from_fd(OwnedFd::from(UnixDatagram::pair().unwrap().0));
    assert!(matches!(Net::new(tap(), GUEST_MAC, 67), Err(NetError::Mtu { mtu: 67 })));
    assert!(matches!(Net::new(tap(), [1, 0, 0, 0, 0, 1], 1500), Err(NetError::MulticastMac { .. })));
    assert!(Net::new(tap(), GUEST_MAC, 65535).is_ok());
}

#[test]
fn a_guest_tx_frame_arrives_byte_exact() {
    let mut h = Harness::new(0, no_rates(), no_rates());
    let sent = frame(HOST_MAC, GUEST_MAC, &payload(1, 1000));
    h.add_tx_frame(0, [0; 12], &sent);
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.tx.take_used(&h.mem), vec![(0, 0)]);
    assert_eq!(h.host_recv().as_deref(), Some(&sent[..]));
    let c = h.counters();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped_malformed), (1, sent.len() as u64, 0));
}

#[test]
fn a_host_frame_arrives_in_one_rx_buffer_without_mrg_rxbuf() {
    let mut h = Harness::new(0, no_rates(), no_rates());
    let head = h.add_rx_buffer(2048);
    h.kick(RX_QUEUE);
    h.pump();
    let sent = frame(GUEST_MAC, HOST_MAC, &payload(2, 300));
    h.host_send(&sent);
    assert!(h.pump_until(|h| h.counters().rx_frames == 1), "{:?}", h.counters());
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used, vec![(u32::from(head), 12 + sent.len() as u32)]);
    let got = h.rx_buffer(used[0].0, used[0].1);
    assert_eq!(got[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "no offloads, num_buffers 1");
    assert_eq!(got[12..], sent[..]);
    assert_eq!(h.counters().rx_bytes, sent.len() as u64);

    // A frame bigger than the next buffer is dropped (counted); the buffer takes the next one.
    let small = h.add_rx_buffer(100);
    h.kick(RX_QUEUE);
    h.host_send(&frame(GUEST_MAC, HOST_MAC, &payload(3, 300)));
    assert!(h.pump_until(|h| h.counters().rx_dropped_no_buffer == 1), "{:?}", h.counters());
    assert!(h.rx.take_used(&h.mem).is_empty());
    let fits = frame(GUEST_MAC, HOST_MAC, &payload(4, 50));
    h.host_send(&fits);
    assert!(h.pump_until(|h| h.counters().rx_frames == 2), "{:?}", h.counters());
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used, vec![(u32::from(small), 12 + fits.len() as u32)]);
    assert_eq!(h.rx_buffer(used[0].0, used[0].1)[12..], fits[..]);
}

#[test]
fn a_host_frame_spreads_over_small_buffers_with_mrg_rxbuf() {
    let mut h = Harness::new(1 << VIRTIO_NET_F_MRG_RXBUF, no_rates(), no_rates());
    let heads: Vec<u16> = (0..10).map(|_| h.add_rx_buffer(100)).collect();
    h.kick(RX_QUEUE);
    h.pump();
    let sent = frame(GUEST_MAC, HOST_MAC, &payload(5, 600 - 14));
    h.host_send(&sent);
    assert!(h.pump_until(|h| h.counters().rx_frames == 1), "{:?}", h.counters());
    let used = h.rx.take_used(&h.mem);
    // 12 + 600 bytes: six full buffers and 12 bytes in a seventh.
    let expected: Vec<(u32, u32)> =
        heads[..7].iter().enumerate().map(|(i, &head)| (u32::from(head), if i < 6 { 100 } else { 12 })).collect();
    assert_eq!(used, expected);
    let mut got = Vec::new();
    for (head, len) in &used {
        got.extend(h.rx_buffer(*head, *len));
    }
    assert_eq!(got[10..12], [7, 0], "num_buffers");
    assert_eq!(got[..10], [0; 10]);
    assert_eq!(got[12..], sent[..]);

    // The next frame starts in the eighth buffer, alone: num_buffers 1.
    let next = frame(GUEST_MAC, HOST_MAC, &payload(6, 40));
    h.host_send(&next);
    assert!(h.pump_until(|h| h.counters().rx_frames == 2), "{:?}", h.counters());
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used, vec![(u32::from(heads[7]), 12 + next.len() as u32)]);
    let got = h.rx_buffer(used[0].0, used[0].1);
    assert_eq!(got[10..12], [1, 0]);
    assert_eq!(got[12..], next[..]);
}

#[test]
fn a_frame_without_rx_buffers_waits_for_the_drivers_kick() {
    let mut h = Harness::new(1 << VIRTIO_NET_F_MRG_RXBUF, no_rates(), no_rates());
    let sent = frame(GUEST_MAC, HOST_MAC, &payload(7, 200));
    let later = frame(GUEST_MAC, HOST_MAC, &payload(8, 100));
    h.host_send(&sent);
    h.host_send(&later);
    h.em.run_with_timeout(1000).unwrap();
    h.pump();
    assert_eq!(h.counters(), NetCounters::default(), "nothing delivered, nothing dropped");
    assert!(h.dev.lock().unwrap().rx_pending.is_some(), "one frame read and kept");
    // Buffers without a kick: nothing happens (the device is not polling).
    let first = h.add_rx_buffer(1024);
    h.em.run_with_timeout(100).unwrap();
    h.pump();
    assert_eq!(h.counters().rx_frames, 0);
    h.kick(RX_QUEUE);
    h.pump();
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used, vec![(u32::from(first), 12 + sent.len() as u32)]);
    assert_eq!(h.rx_buffer(used[0].0, used[0].1)[12..], sent[..]);
    // The second frame stayed in the tap, and comes with the next buffers.
    let second = h.add_rx_buffer(1024);
    h.kick(RX_QUEUE);
    h.pump();
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used, vec![(u32::from(second), 12 + later.len() as u32)]);
    assert_eq!(h.rx_buffer(used[0].0, used[0].1)[12..], later[..]);
    assert_eq!(h.counters().rx_frames, 2);
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted_and_the_queue_goes_on() {
    let mut h = Harness::new(0, no_rates(), no_rates());
    let at = TX_POOL;
    h.mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
    h.mem.write_slice(&frame(HOST_MAC, GUEST_MAC, &[0xab; 64]), GuestAddress(at + 12)).unwrap();
    let end = MEM_SIZE as u64;
    let cases: Vec<(&str, Descs)> = vec![
        ("write-only descriptor", vec![(at, 90, WO)]),
        ("readable then writable", vec![(at, 90, RO), (at + 0x200, 10, WO)]),
        ("shorter than the header", vec![(at, 8, RO)]),
        ("header without a frame", vec![(at, 12, RO)]),
        ("over MAX_FRAME", vec![(at, 40_000, RO), (at + 40_000, 40_000, RO)]),
        ("outside guest memory", vec![(at, 12, RO), (end - 10, 100, RO)]),
        ("at a huge address", vec![(u64::MAX - 50, 100, RO)]),
    ];
    let count = cases.len() as u64;
    for (what, descs) in cases {
        h.tx.add_chain(&h.mem, 0, &descs);
        h.kick(TX_QUEUE);
        h.pump();
        assert_eq!(h.tx.take_used(&h.mem), vec![(0, 0)], "case {what}");
    }
    // A descriptor loop, and a GSO header the driver did not negotiate.
    h.tx.write_desc(&h.mem, 0, (at, 40, RO | NEXT, 1));
    h.tx.write_desc(&h.mem, 1, (at + 40, 50, RO | NEXT, 0));
    h.tx.publish(&h.mem, 0);
    let mut gso = [0u8; 12];
    gso[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    h.add_tx_frame(5, gso, &frame(HOST_MAC, GUEST_MAC, &[1; 64]));
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.tx.take_used(&h.mem), vec![(0, 0), (5, 0)]);
    assert_eq!(h.counters().tx_dropped_malformed, count + 2);
    assert_eq!(h.counters().tx_frames, 0);

    let good = frame(HOST_MAC, GUEST_MAC, &payload(9, 77));
    h.add_tx_frame(3, [0; 12], &good);
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.tx.take_used(&h.mem), vec![(3, 0)]);
    assert_eq!(h.host_recv().as_deref(), Some(&good[..]), "the good frame, and nothing of the bad ones");
    assert_eq!(h.counters().tx_frames, 1);
}

#[test]
fn bad_rx_buffers_are_returned_unused_and_counted() {
    let mut h = Harness::new(1 << VIRTIO_NET_F_MRG_RXBUF, no_rates(), no_rates());
    h.rx.add_chain(&h.mem, 0, &[(RX_POOL, 100, RO)]);
    h.rx.add_chain(&h.mem, 1, &[(RX_POOL, 8, WO)]);
    h.rx.add_chain(&h.mem, 2, &[(MEM_SIZE as u64 - 4, 100, WO)]);
    h.next_rx_chain = 3;
    let good = h.add_rx_buffer(1500);
    h.kick(RX_QUEUE);
    let sent = frame(GUEST_MAC, HOST_MAC, &payload(10, 500));
    h.host_send(&sent);
    assert!(h.pump_until(|h| h.counters().rx_frames == 1), "{:?}", h.counters());
    let used = h.rx.take_used(&h.mem);
    assert_eq!(used, vec![(0, 0), (1, 0), (2, 0), (u32::from(good), 12 + sent.len() as u32)]);
    assert_eq!(h.counters().rx_bad_buffers, 3);
    assert_eq!(h.rx_buffer(used[3].0, used[3].1)[12..], sent[..]);
}

#[test]
fn a_tx_flood_beyond_the_budget_goes_out_over_several_calls() {
    let mut h = Harness::new(0, no_rates(), no_rates());
    let frames: Vec<Vec<u8>> = (0..250u32).map(|i| frame(HOST_MAC, GUEST_MAC, &payload(i, 100))).collect();
    for (i, f) in frames.iter().enumerate() {
        h.add_tx_frame(i as u16, [0; 12], f);
    }
    // One call: one budget's worth, and the device re-armed its own queue eventfd.
    h.dev.lock().unwrap().process_tx();
    assert_eq!(h.tx.take_used(&h.mem).len(), FRAMES_PER_CALL);
    assert_eq!(h.dev.lock().unwrap().queue_events()[TX_QUEUE].read().unwrap(), 1, "self-kick");
    h.dev.lock().unwrap().queue_events()[TX_QUEUE].write(1).unwrap();
    // The event loop finishes the rest on its own.
    h.pump();
    assert_eq!(h.tx.take_used(&h.mem).len(), frames.len() - FRAMES_PER_CALL);
    assert_eq!(h.counters().tx_frames, frames.len() as u64);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(h.host_recv().as_deref(), Some(&f[..]), "frame {i}");
    }
}

#[test]
fn a_tx_packet_rate_holds_frames_back() {
    let mut h = Harness::new(0, no_rates(), Rates { bytes_per_sec: None, ops_per_sec: Some(2) });
    let frames: Vec<Vec<u8>> = (0..5u32).map(|i| frame(HOST_MAC, GUEST_MAC, &payload(100 + i, 60))).collect();
    for (i, f) in frames.iter().enumerate() {
        h.add_tx_frame(i as u16, [0; 12], f);
    }
    let started = Instant::now();
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.tx.take_used(&h.mem).len(), 2, "a second's worth at once");
    assert!(h.dev.lock().unwrap().tx_limiter.is_blocked());
    h.kick(TX_QUEUE);
    h.pump();
    assert_eq!(h.tx.take_used(&h.mem).len(), 0, "a kick while blocked sends nothing");
    assert!(h.pump_until(|h| h.counters().tx_frames == 5), "{:?}", h.counters());
    assert!(started.elapsed() >= Duration::from_millis(1200), "three more at 2/s: {:?}", started.elapsed());
    assert_eq!(h.tx.take_used(&h.mem).len(), 3);
    for f in &frames {
        assert_eq!(h.host_recv().as_deref(), Some(&f[..]));
    }
}

#[test]
fn guest_offloads_set_the_tap_and_reset_keeps_it() {
    let mut h = Harness::new(1 << VIRTIO_NET_F_GUEST_CSUM, no_rates(), no_rates());
    assert!(h.dev.lock().unwrap().offload_pending.is_none(), "applied by the event loop after activation");
    // The real tap takes every offload combination the device may ask for.
    for acked in [0, u64::MAX] {
        h.dev.lock().unwrap().tap().set_offload(frame::offload_flags(acked)).unwrap();
    }
    h.dev.lock().unwrap().reset();
    assert!(!h.dev.lock().unwrap().is_activated());
    let head = h.add_rx_buffer(1024);
    h.kick(RX_QUEUE);
    h.host_send(&frame(GUEST_MAC, HOST_MAC, &[1; 40]));
    h.em.run_with_timeout(200).unwrap();
    h.pump();
    assert!(h.rx.take_used(&h.mem).is_empty(), "a reset device serves nothing");
    // The tap is still the device's: activate again on fresh queues and the frame comes.
    let (rx, rxq) = DriverQueue::new(&h.mem, RX_QUEUE_ADDR, QSIZE);
    let (tx, txq) = DriverQueue::new(&h.mem, TX_QUEUE_ADDR, QSIZE);
    (h.rx, h.tx, h.next_rx_chain) = (rx, tx, head);
    {
        let mut dev = h.dev.lock().unwrap();
        dev.set_acked_features(1 << 32);
        dev.activate(h.mem.clone(), Arc::new(IrqTrigger::new().unwrap()), vec![rxq, txq]).unwrap();
    }
    let head = h.add_rx_buffer(1024);
    h.kick(RX_QUEUE);
    assert!(h.pump_until(|h| h.counters().rx_frames == 1), "{:?}", h.counters());
    assert_eq!(h.rx.take_used(&h.mem), vec![(u32::from(head), 12 + 54)]);
}
