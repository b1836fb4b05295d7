//! Block requests end to end through the virtio-blk device: a queue, descriptors, headers and
//! data the fuzzer wrote, served against a 16-sector disk image.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{queue_memory, ready_queue, Input};
use palisade_vmm::devices::virtio::block::{Block, SECTOR_SIZE};
use palisade_vmm::devices::virtio::{IrqTrigger, VirtioDevice};

const DISK_SECTORS: u64 = 16;

/// One disk image for the whole run (in memory when /dev/shm is there), emptied per input.
fn disk() -> &'static tempfile::NamedTempFile {
    static DISK: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    DISK.get_or_init(|| tempfile::NamedTempFile::new_in("/dev/shm").or_else(|_| tempfile::NamedTempFile::new()).expect("a disk image"))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 == 1;
    let passes = 1 + input.u8() % 3;
    let mem = queue_memory(&mut input, 1);
    let disk = disk();
    disk.as_file().set_len(0).expect("disk emptied");
    disk.as_file().set_len(DISK_SECTORS * SECTOR_SIZE).expect("disk size");
    let mut block = Block::new(disk.path(), read_only).expect("a block device");
    let irq = Arc::new(IrqTrigger::new().expect("an eventfd"));
    block.activate(mem.clone(), irq, vec![ready_queue(0)]).expect("activation");
    for _ in 0..passes {
        block.process_queue();
    }
    let len = std::fs::metadata(disk.path()).expect("disk metadata").len();
    assert_eq!(len, DISK_SECTORS * SECTOR_SIZE, "the guest cannot grow the disk");
});
