//! virtio-net: tx chains the fuzzer wrote (any split over descriptors, any vnet header, any
//! direction and address) through the device to its backend, and frames the fuzzer sends from
//! the host side into rx buffer layouts it also wrote, with any set of negotiated features
//! (mergeable rx buffers or not, offloads or not). The backend is one end of a Unix datagram
//! socket pair standing in for the tap (a tap has the same one-frame-per-read/write shape; its
//! `TUNSETOFFLOAD` just fails here).
#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{queue_memory, ready_queue, Input};
use palisade_vmm::devices::virtio::net::{Net, Tap};
use palisade_vmm::devices::virtio::{IrqTrigger, VirtioDevice};

/// Host frames per input, and their size limit (the rx buffers live in 32 KiB of data).
const MAX_HOST_FRAMES: u8 = 8;
const MAX_HOST_FRAME: u16 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let features = u64::from(input.u32()) | (1 << 32);
    let rounds = 1 + input.u8() % 4;
    let frames = input.u8() % (MAX_HOST_FRAMES + 1);
    let mut host_frames = Vec::new();
    for _ in 0..frames {
        let len = usize::from(input.u16() % MAX_HOST_FRAME);
        host_frames.push(input.bytes(len));
    }
    // rx queue at 0x0000, tx queue at 0x1000.
    let mem = queue_memory(&mut input, 2);
    let (tap_end, host) = UnixDatagram::pair().expect("a socket pair");
    tap_end.set_nonblocking(true).expect("non-blocking");
    host.set_nonblocking(true).expect("non-blocking");
    for frame in &host_frames {
        let _ = host.send(frame);
    }
    let mut net = Net::new(Tap::from_fd(OwnedFd::from(tap_end)), [2, 0, 0, 0, 0, 1], 1500).expect("a net device");
    net.set_acked_features(features);
    let irq = Arc::new(IrqTrigger::new().expect("an eventfd"));
    net.activate(mem, irq, vec![ready_queue(0), ready_queue(1)]).expect("activation");
    for _ in 0..rounds {
        net.process_tx();
        net.process_rx();
    }
    let counters = net.counters();
    assert!(counters.rx_frames + counters.rx_dropped_no_buffer + counters.rx_dropped_malformed <= host_frames.len() as u64);
    // Everything the device sent is a whole frame with its vnet header.
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = host.recv(&mut buf) {
        assert!(n >= 12 + 14, "a {n}-byte frame reached the backend");
    }
});
