//! vsock: tx packets the fuzzer wrote (any header, any split over descriptors) through the
//! device into the Unix backend's state machine — requests to a port a host program
//! listens on (a real connection), to one nobody listens on, data, credit updates,
//! shutdowns, resets — and the replies the backend then puts into rx buffers the fuzzer
//! also wrote.
#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{queue_memory, ready_queue, Input};
use palisade_vmm::devices::virtio::vsock::Vsock;
use palisade_vmm::devices::virtio::{IrqTrigger, VirtioDevice};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let rounds = 1 + input.u8() % 4;
    let mem = queue_memory(&mut input, 3);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let uds = dir.path().join("vsock.sock");
    // A host program listening on guest-initiated port 1024.
    let _listener = UnixListener::bind(format!("{}_1024", uds.display())).expect("a listener");
    let mut vsock = Vsock::new(3, &uds).expect("a vsock device");
    let irq = Arc::new(IrqTrigger::new().expect("an eventfd"));
    // rx, tx and event queues at 0x0000, 0x1000, 0x2000.
    vsock.activate(mem, irq, vec![ready_queue(0), ready_queue(1), ready_queue(2)]).expect("activation");
    for _ in 0..rounds {
        vsock.process_tx();
        vsock.process_rx();
    }
});
