//! virtio-mmio register sequences (reads and writes of any width at any offset, queue
//! notifications) against each real device: block, rng and vsock behind the transport. After
//! every access, the register page the guest reads without trapping must say what a trapped
//! read answers, word for word.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{guest_memory, Input};
use palisade_vmm::devices::virtio::block::Block;
use palisade_vmm::devices::virtio::mmio::{MmioTransport, MMIO_DEVICE_SIZE, QUEUE_NOTIFY_OFFSET};
use palisade_vmm::devices::virtio::register_page::RegisterPage;
use palisade_vmm::devices::virtio::rng::Rng;
use palisade_vmm::devices::virtio::vsock::Vsock;
use palisade_vmm::devices::virtio::{IrqTrigger, VirtioDevice};

/// The most register accesses one input makes.
const MAX_OPS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8() % 3;
    let ops = input.bytes(MAX_OPS * 7).to_vec();
    let mem = guest_memory(input.rest());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 8192]).expect("a disk image");
    let page = Arc::new(RegisterPage::new().expect("a register page"));
    let irq = Arc::new(IrqTrigger::with_register_page(page.clone()).expect("an eventfd"));
    // The device, and how to serve its queues after a notification (the event loop's job).
    let (device, serve): (Arc<Mutex<dyn VirtioDevice>>, Box<dyn Fn()>) = match which {
        0 => {
            let block = Arc::new(Mutex::new(Block::new(&disk, false).expect("a block device")));
            let b = block.clone();
            (block, Box::new(move || b.lock().unwrap().process_queue()))
        }
        1 => {
            let rng = Arc::new(Mutex::new(Rng::new().expect("an rng device")));
            let r = rng.clone();
            (rng, Box::new(move || r.lock().unwrap().process_queue()))
        }
        _ => {
            let vsock = Arc::new(Mutex::new(Vsock::new(3, &dir.path().join("v.sock")).expect("a vsock device")));
            let v = vsock.clone();
            (
                vsock,
                Box::new(move || {
                    let mut v = v.lock().unwrap();
                    v.process_tx();
                    v.process_rx();
                }),
            )
        }
    };
    let mut transport = MmioTransport::with_register_page(mem, device, irq, Some(page.clone()));
    let mut ops = Input::new(&ops);
    while !ops.is_empty() {
        let kind = ops.u8();
        let offset = u64::from(ops.u16() % 0x200);
        let width = [1usize, 2, 4, 8][usize::from(kind >> 1) % 4];
        let value = ops.u32().to_le_bytes();
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value);
        if kind & 1 == 0 {
            transport.read(offset, &mut bytes[..width]);
        } else {
            transport.write(offset, &bytes[..width]);
            if offset == QUEUE_NOTIFY_OFFSET {
                serve();
            }
        }
        // The registers and the start of the configuration space after every access,
        // the whole window at the end.
        assert_page_matches(&mut transport, &page, 0x140);
    }
    assert_page_matches(&mut transport, &page, MMIO_DEVICE_SIZE);
});

fn assert_page_matches(transport: &mut MmioTransport, page: &RegisterPage, end: u64) {
    for at in (0..end).step_by(4) {
        let mut word = [0u8; 4];
        transport.read(at, &mut word);
        assert_eq!(page.load(at), u32::from_le_bytes(word), "the register page differs from a read at {at:#x}");
    }
}
