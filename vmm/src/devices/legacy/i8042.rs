//! The i8042 keyboard controller, as much of it as a Linux guest needs: the controller
//! commands its driver sends while it initialises (read and write the command byte, self
//! tests, enable and disable the ports), so the probe succeeds at once instead of waiting
//! ~0.5 s for answers that never come; and the reset line, so writing 0xFE (pulse the reset
//! line) to the command port ends the VM with [`VmExit::Reset`].
//!
//! There is no keyboard and no mouse behind it: bytes written for the keyboard are
//! dropped, and the controller never raises an interrupt. Guests should be told so
//! (`i8042.dumbkbd i8042.noaux i8042.nomux`, which vmrun passes): the keyboard driver
//! then does not probe a keyboard.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::VmExit;
use crate::devices::bus::BusDevice;
use crate::exit::ExitSignal;

/// Offset of the data port (0x60) and of the command/status port (0x64) from the base.
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
/// "Pulse output line 0": the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// Status register: output buffer full (a byte waits on the data port).
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status register: the system flag (set once the controller passed its self test).
const STATUS_SYSTEM: u8 = 0x04;
/// Status register: the last write was to the command port.
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

/// Command byte bits.
const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

/// Answers to the self tests: controller OK, port OK.
const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
/// The output port: the reset line high (not in reset), A20 enabled.
const OUTPUT_PORT: u8 = 0x03;

/// Most bytes the output buffer holds: every command answers at most one.
const OUTPUT_CAPACITY: usize = 16;

pub struct I8042 {
    exit: Arc<ExitSignal>,
    /// The command byte (CTR).
    ctr: u8,
    /// The command whose parameter the next data-port write is.
    pending: Option<u8>,
    output: VecDeque<u8>,
    last_was_command: bool,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            exit,
            ctr: CTR_SYSTEM | CTR_KBD_INTERRUPT,
            pending: None,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            last_was_command: false,
        }
    }

    fn answer(&mut self, byte: u8) {
        // A guest that never reads its answers must not grow the buffer.
        if self.output.len() < OUTPUT_CAPACITY {
            self.output.push_back(byte);
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn command(&mut self, command: u8) {
        self.pending = None;
        match command {
            CMD_READ_CTR => self.answer(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(command),
            CMD_DISABLE_AUX => self.ctr |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.ctr &= !CTR_AUX_DISABLED,
            CMD_DISABLE_KBD => self.ctr |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.ctr &= !CTR_KBD_DISABLED,
            CMD_SELF_TEST => self.answer(SELF_TEST_PASSED),
            CMD_TEST_KBD | CMD_TEST_AUX => self.answer(PORT_TEST_PASSED),
            CMD_READ_OUTPUT_PORT => self.answer(OUTPUT_PORT),
            CMD_RESET_CPU => {
                tracing::debug!("i8042: the guest pulsed the reset line");
                self.exit.request(VmExit::Reset);
            }
            other => tracing::trace!("i8042: command {other:#04x} ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = byte,
            // The reset and A20 lines of the output port: resetting this way is not
            // emulated (guests pulse the line with 0xFE instead).
            Some(_) => {}
            // A byte for the keyboard: there is none.
            None => tracing::trace!("i8042: keyboard byte {byte:#04x} dropped (no keyboard)"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.output.pop_front().unwrap_or(0),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Port I/O to these ports is one byte wide; wider accesses are not the guest's
        // driver talking to the controller.
        let &[byte] = data else { return };
        match offset {
            COMMAND_OFFSET => {
                self.last_was_command = true;
                self.command(byte);
            }
            DATA_OFFSET => {
                self.last_was_command = false;
                self.data(byte);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (I8042::new(exit.clone()), exit)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0xaa];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm_with_reset() {
        let (mut dev, exit) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        assert!(!exit.is_stopping(), "only 0xFE on the command port resets");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.outcome(), Some(VmExit::Reset));
    }

    #[test]
    fn idle_status_has_nothing_pending() {
        let (mut dev, _) = controller();
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_ne!(read(&mut dev, COMMAND_OFFSET), 0xff, "0xFF would mean no controller");
    }

    /// What Linux's i8042 driver does at probe: flush, self test, read the command byte
    /// twice, write it back changed, read it again.
    #[test]
    fn the_linux_probe_sequence_gets_its_answers() {
        let (mut dev, exit) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_PASSED);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);

        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        let ctr = read(&mut dev, DATA_OFFSET);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), ctr, "a stable command byte");

        let new = (ctr & !CTR_KBD_INTERRUPT) | CTR_KBD_DISABLED;
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[new]);
        dev.write(COMMAND_OFFSET, &[CMD_ENABLE_KBD]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), new & !CTR_KBD_DISABLED);

        dev.write(COMMAND_OFFSET, &[CMD_TEST_KBD]);
        assert_eq!(read(&mut dev, DATA_OFFSET), PORT_TEST_PASSED);
        assert!(!exit.is_stopping());
    }

    #[test]
    fn keyboard_bytes_and_odd_accesses_change_nothing() {
        let (mut dev, exit) = controller();
        dev.write(DATA_OFFSET, &[0xff]); // "reset keyboard": no keyboard answers
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe]); // not a byte-wide access
        dev.write(COMMAND_OFFSET, &[0x12]); // unknown command
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert!(!exit.is_stopping());
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), CTR_SYSTEM | CTR_KBD_INTERRUPT);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut dev, _) = controller();
        for _ in 0..10_000 {
            dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        }
        assert_eq!(dev.output.len(), OUTPUT_CAPACITY);
    }
}
