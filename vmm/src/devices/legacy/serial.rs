//! COM1: a 16550A UART (vm-superio) whose output goes to a log file and/or the VMM's
//! stdout/stderr. Its interrupt is an eventfd registered as an irqfd for IRQ 4.
//!
//! The console is the guest's text: the VMM does not read meaning into it (how the VM ended
//! is what the VMM saw, see [`crate::exit`]); tools that show it mark it as the guest's.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::tail_log::{self, TailLog};
use crate::config::SerialConfig;
use crate::devices::bus::BusDevice;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial log {path}: {source}")]
    LogFile { path: PathBuf, source: io::Error },
    #[error("serial port interrupt eventfd: {0}")]
    IrqEvent(io::Error),
}

/// The UART's interrupt line.
pub struct IrqEvt(EventFd);

impl Trigger for IrqEvt {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go.
pub struct ConsoleOutput {
    sinks: Vec<Box<dyn Write + Send>>,
}

impl ConsoleOutput {
    pub fn new(sinks: Vec<Box<dyn Write + Send>>) -> Self {
        ConsoleOutput { sinks }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for sink in &mut self.sinks {
            // A console nobody reads (closed pipe, full disk) must not stop the guest.
            let _ = sink.write_all(buf);
            // A line is written out whole (a guest's prompt waits for the next line).
            if buf.contains(&b'\n') {
                let _ = sink.flush();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        for sink in &mut self.sinks {
            let _ = sink.flush();
        }
        Ok(())
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The COM1 device on the port I/O bus.
pub struct Serial {
    uart: vm_superio::Serial<IrqEvt, NoEvents, ConsoleOutput>,
}

impl Serial {
    /// A serial port writing where `config` says.
    pub fn new(config: &SerialConfig) -> Result<Self, SerialError> {
        let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
        if let Some(path) = &config.log_file {
            // Bounded: the guest decides how much it prints (see tail_log).
            let log =
                TailLog::create(path, tail_log::DEFAULT_LIMIT).map_err(|source| SerialError::LogFile { path: path.clone(), source })?;
            sinks.push(Box::new(BufWriter::new(log)));
        }
        if config.to_stdout {
            sinks.push(Box::new(BufWriter::new(io::stdout())));
        }
        if config.to_stderr {
            sinks.push(Box::new(BufWriter::new(io::stderr())));
        }
        Self::with_output(ConsoleOutput::new(sinks))
    }

    pub fn with_output(output: ConsoleOutput) -> Result<Self, SerialError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::IrqEvent)?;
        Ok(Serial { uart: vm_superio::Serial::new(IrqEvt(evt), output) })
    }

    /// The eventfd to register as the irqfd of the serial GSI.
    pub fn irq_evt(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *byte) {
                tracing::warn!("serial port: write at offset {offset}: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Shared) {
        let out = Shared::default();
        let serial = Serial::with_output(ConsoleOutput::new(vec![Box::new(out.clone())])).unwrap();
        (serial, out)
    }

    fn type_text(serial: &mut Serial, text: &str) {
        for b in text.bytes() {
            serial.write(0, &[b]);
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_output() {
        let (mut serial, out) = serial();
        type_text(&mut serial, "hello\r\n");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\r\n");
    }

    #[test]
    fn console_text_does_not_decide_how_the_vm_ends() {
        // A guest (or a process in it) may print the kernel's panic line; it is only text.
        let (mut serial, out) = serial();
        type_text(&mut serial, "[    0.512000] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n");
        assert!(out.0.lock().unwrap().ends_with(b"root fs\r\n"));
    }

    #[test]
    fn overlong_lines_are_passed_through_not_buffered() {
        let (mut serial, out) = serial();
        type_text(&mut serial, &"x".repeat(5000));
        type_text(&mut serial, "\n");
        assert_eq!(out.0.lock().unwrap().len(), 5001);
    }

    #[test]
    fn a_console_flood_does_not_grow_the_log_file_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let config = SerialConfig { log_file: Some(path.clone()), to_stdout: false, to_stderr: false };
        let mut serial = Serial::new(&config).unwrap();
        let line = "flood flood flood flood flood flood flood flood flood flood flood flood\n";
        for _ in 0..(3 * tail_log::DEFAULT_LIMIT as usize / line.len()) {
            type_text(&mut serial, line);
        }
        type_text(&mut serial, "the last words\n");
        drop(serial);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= tail_log::DEFAULT_LIMIT, "the console log grew to {size} bytes");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[palisade-vmm: ") && text.ends_with("the last words\n"), "{}", &text[..200]);
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (mut serial, out) = serial();
        serial.write(0, b"ab");
        let mut data = [0u8; 2];
        serial.read(5, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert!(out.0.lock().unwrap().is_empty());
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
    }
}
