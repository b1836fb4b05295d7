//! Descriptor chains as the devices read them: `Chain::read`, `ChainBuffers::parse`, and the
//! sub-range helpers over the buffers, on a descriptor table and memory the fuzzer wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{guest_memory, Input, MEM_SIZE, QUEUE_SIZE};
use palisade_vmm::devices::virtio::queue::{read_bytes, sub_segments, total_len, write_bytes, Chain, ChainBuffers};
use vm_memory::GuestAddress;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let head = input.u16() % (QUEUE_SIZE + 2);
    let offset = u64::from(input.u16());
    let len = input.u16();
    let mem = guest_memory(input.rest());
    let Ok(chain) = Chain::read(&mem, GuestAddress(0), QUEUE_SIZE, head) else {
        return;
    };
    assert!(chain.descriptors().len() <= usize::from(QUEUE_SIZE), "a chain is never longer than its queue");
    let _ = chain.last_writable_byte(&mem);
    let Ok(buffers) = ChainBuffers::parse(&mem, &chain) else {
        return;
    };
    for segments in [&buffers.readable, &buffers.writable] {
        for segment in segments.iter() {
            assert!(segment.addr.0 + segment.len <= MEM_SIZE as u64, "a parsed buffer lies in guest memory");
        }
        if let Ok(pieces) = sub_segments(buffers.head_index, segments, offset, u64::from(len)) {
            assert_eq!(total_len(&pieces), u64::from(len), "sub-segments cover exactly the range asked for");
            let mut buf = vec![0u8; usize::from(len)];
            read_bytes(&mem, buffers.head_index, segments, offset, &mut buf).expect("a covered range is readable");
            write_bytes(&mem, buffers.head_index, segments, offset, &buf).expect("and writable");
        }
    }
});
