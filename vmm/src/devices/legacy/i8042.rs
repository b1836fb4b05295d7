//! Just enough of the i8042 keyboard controller for the guest to reset the machine:
//! writing 0xFE (pulse the reset line) to the command port ends the VM with
//! [`VmExit::Reset`]. There is no keyboard: the status register never reports data.

use std::sync::Arc;

use crate::config::VmExit;
use crate::devices::bus::BusDevice;
use crate::exit::ExitSignal;

/// Offset of the data port (0x60) and of the command/status port (0x64) from the base.
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0": the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status: output buffer empty, input buffer empty, nothing pending.
const STATUS_IDLE: u8 = 0;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET | COMMAND_OFFSET => STATUS_IDLE,
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            tracing::debug!("i8042: the guest pulsed the reset line");
            self.exit.request(VmExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm_with_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(COMMAND_OFFSET, &[0xaa]);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        assert!(!exit.is_stopping(), "only 0xFE on the command port resets");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.outcome(), Some(VmExit::Reset));
    }

    #[test]
    fn status_reports_nothing_pending() {
        let mut dev = I8042::new(Arc::new(ExitSignal::new().unwrap()));
        let mut status = [0xaa];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
