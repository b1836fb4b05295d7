//! virtio-fs against a real virtiofsd, driven as a guest driver would (queues in memfd guest
//! memory, a kick on the queue's eventfd, the answer signalled on the interrupt eventfd),
//! without a VM: the FUSE requests are written by hand.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::*;
use crate::devices::virtio::device::{IrqTrigger, VirtioDevice};
use crate::devices::virtio::queue::test_utils::{r, w, TestQueue};
use crate::memory::{create_guest_memory, Backing};
use crate::testing::virtiofsd::Virtiofsd;

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const HIPRIO_AT: u64 = 0x10_0000;
const REQUEST_AT: u64 = 0x20_0000;
const IN_BUF: u64 = 0x30_0000;
const OUT_BUF: u64 = 0x31_0000;

fn in_header(len: u32, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Waits until the device has interrupted the driver.
fn wait_for_interrupt(irq: &IrqTrigger) {
    let mut poll = [libc::pollfd { fd: irq.evt.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: one valid pollfd, its length, a timeout.
    let ready = unsafe { libc::poll(poll.as_mut_ptr(), 1, 20_000) };
    assert_eq!(ready, 1, "no interrupt from the backend");
    irq.evt.read().unwrap();
}

#[test]
fn requests_on_the_queue_are_answered_by_virtiofsd_through_guest_memory() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), b"from the host\n").unwrap();
    let backend = Virtiofsd::start(&shared, &dir.path().join("fs.sock"));

    let fs = Fs::new("palisade", UnixStream::connect(&backend.socket).unwrap()).unwrap();
    assert_ne!(fs.avail_features() & (1 << VIRTIO_F_VERSION_1), 0);
    let mut config = [0u8; MAX_TAG_LEN + 4];
    fs.read_config(0, &mut config);
    assert_eq!(&config[..9], b"palisade\0");
    assert_eq!(u32_at(&config, MAX_TAG_LEN), 1, "one request queue");

    let mem = create_guest_memory(64, Backing::Memfd).unwrap();
    let (hiprio, request) = (TestQueue::at(&mem, HIPRIO_AT), TestQueue::at(&mem, REQUEST_AT));
    let fs = Arc::new(Mutex::new(fs));
    let mut em = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
    em.add_subscriber(fs.clone());
    let irq = Arc::new(IrqTrigger::new().unwrap());
    {
        let mut dev = fs.lock().unwrap();
        dev.set_acked_features(1 << VIRTIO_F_VERSION_1);
        dev.activate(mem.clone(), irq.clone(), vec![hiprio.queue(), request.queue()]).unwrap();
    }
    // The vhost-user setup happens on the event loop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs.lock().unwrap().started {
        assert!(Instant::now() < deadline, "the device never handed its queues to virtiofsd");
        em.run_with_timeout(100).unwrap();
    }
    assert_eq!(
        irq.interrupt_status() & crate::devices::virtio::device::VIRTIO_MMIO_INT_VRING,
        1,
        "the backend's interrupts are not hidden"
    );

    // FUSE_INIT (protocol 7.31), then a LOOKUP of the host's file.
    let mut init = in_header(56, FUSE_INIT, 1, 0);
    for word in [7u32, 31, 0, 0] {
        init.extend_from_slice(&word.to_le_bytes());
    }
    request.write(IN_BUF, &init);
    request.add_chain_at(&[r(IN_BUF, init.len() as u32), w(OUT_BUF, 256)], 0);
    fs.lock().unwrap().queue_events()[1].write(1).unwrap();
    wait_for_interrupt(&irq);
    assert_eq!(request.used_idx(), 1);
    let (head, len) = request.used(0);
    assert_eq!(head, 0);
    let out = request.read(OUT_BUF, len as usize);
    assert!(len >= 16 + 8, "INIT answered with {len} bytes");
    assert_eq!((u32_at(&out, 4) as i32, u64_at(&out, 8)), (0, 1), "error and unique of the INIT reply");
    assert_eq!(u32_at(&out, 16), 7, "FUSE major version");

    let mut lookup = in_header(40 + 10, FUSE_LOOKUP, 2, 1);
    lookup.extend_from_slice(b"hello.txt\0");
    request.write(IN_BUF, &lookup);
    request.add_chain_at(&[r(IN_BUF, lookup.len() as u32), w(OUT_BUF, 256)], 2);
    fs.lock().unwrap().queue_events()[1].write(1).unwrap();
    wait_for_interrupt(&irq);
    assert_eq!(request.used_idx(), 2);
    let (_, len) = request.used(1);
    let out = request.read(OUT_BUF, len as usize);
    assert_eq!(u32_at(&out, 4) as i32, 0, "LOOKUP hello.txt failed");
    // fuse_entry_out: nodeid, generation, entry_valid, attr_valid, two nsec fields, then
    // fuse_attr: ino, size…
    assert_eq!(u64_at(&out, 16 + 40 + 8), 14, "the size of the host's file");

    // A reset stops the backend's queues; the device can be started again.
    fs.lock().unwrap().reset();
    assert!(!fs.lock().unwrap().started);
    fs.lock().unwrap().activate(mem.clone(), irq.clone(), vec![hiprio.queue(), request.queue()]).unwrap();
    em.run_with_timeout(1000).unwrap();
    assert!(fs.lock().unwrap().started, "started again after the reset");
}

#[test]
fn bad_tags_are_refused_before_the_backend_is_touched() {
    for tag in ["", "a\0b", &"x".repeat(MAX_TAG_LEN + 1)] {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        assert!(matches!(Fs::new(tag, ours), Err(FsError::BadTag(_))), "{tag:?}");
    }
    // A peer that is not a vhost-user backend (it hangs up): a clear error, not a hang.
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let e = Fs::new("tag", ours).err().unwrap().to_string();
    assert!(e.starts_with("virtio-fs tag \"tag\": vhost-user backend: "), "{e}");
}
