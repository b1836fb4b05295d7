//! Port I/O sequences against the serial port (COM1, vm-superio's 16550A behind ours) and
//! the i8042 controller: any offset, any width, reads and writes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::Input;
use palisade_vmm::devices::bus::BusDevice;
use palisade_vmm::devices::legacy::serial::ConsoleOutput;
use palisade_vmm::devices::legacy::{Serial, I8042};
use palisade_vmm::exit::ExitSignal;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut serial = Serial::with_output(ConsoleOutput::new(vec![Box::new(std::io::sink())])).expect("a serial port");
    let exit = Arc::new(ExitSignal::new().expect("an exit eventfd"));
    let mut i8042 = I8042::new(exit.clone());
    while !input.is_empty() {
        let kind = input.u8();
        let offset = u64::from(input.u8() % 16);
        let width = [1usize, 1, 2, 4][usize::from(kind >> 2) % 4];
        let mut bytes = [input.u8(), input.u8(), input.u8(), input.u8()];
        let device: &mut dyn BusDevice = if kind & 2 == 0 { &mut serial } else { &mut i8042 };
        if kind & 1 == 0 {
            device.read(offset, &mut bytes[..width]);
        } else {
            device.write(offset, &bytes[..width]);
        }
    }
    // A reset request is an outcome, never a crash.
    let _ = exit.outcome();
});
