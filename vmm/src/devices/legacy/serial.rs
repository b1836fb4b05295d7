//! COM1: a 16550A UART (vm-superio) whose output goes to a log file and/or the VMM's
//! stdout/stderr. Its interrupt is an eventfd registered as an irqfd for IRQ 4.
//!
//! The console output is also watched for the kernel's "Kernel panic - not syncing" line,
//! which is recorded in the VM's [`ExitSignal`]: with `panic=-1` the guest resets right
//! after it, and that reset must be reported as the panic it is.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::tail_log::{self, TailLog};
use crate::config::SerialConfig;
use crate::devices::bus::BusDevice;
use crate::exit::ExitSignal;

/// What the kernel prints when it panics.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Longest console line kept for panic detection (the guest controls line lengths).
const MAX_LINE: usize = 1024;

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

/// Where console bytes go, watching for a kernel panic line on the way.
pub struct ConsoleOutput {
    sinks: Vec<Box<dyn Write + Send>>,
    line: Vec<u8>,
    exit: Arc<ExitSignal>,
}

impl ConsoleOutput {
    pub fn new(sinks: Vec<Box<dyn Write + Send>>, exit: Arc<ExitSignal>) -> Self {
        ConsoleOutput { sinks, line: Vec::new(), exit }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        if let Some(at) = line.find(PANIC_MARKER) {
            let message = line[at..].trim_end().to_string();
            self.exit.record_panic(message);
        }
        self.line.clear();
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for sink in &mut self.sinks {
            // A console nobody reads (closed pipe, full disk) must not stop the guest.
            let _ = sink.write_all(buf);
        }
        for &byte in buf {
            match byte {
                b'\n' => {
                    self.end_line();
                    for sink in &mut self.sinks {
                        let _ = sink.flush();
                    }
                }
                b'\r' => {}
                _ if self.line.len() < MAX_LINE => self.line.push(byte),
                _ => {}
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
        if !self.line.is_empty() {
            self.end_line();
        }
        let _ = self.flush();
    }
}

/// The COM1 device on the port I/O bus.
pub struct Serial {
    uart: vm_superio::Serial<IrqEvt, NoEvents, ConsoleOutput>,
}

impl Serial {
    /// A serial port writing where `config` says.
    pub fn new(config: &SerialConfig, exit: Arc<ExitSignal>) -> Result<Self, SerialError> {
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
        Self::with_output(ConsoleOutput::new(sinks, exit))
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
    use crate::config::VmExit;
    use std::sync::Mutex;

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

    fn serial() -> (Serial, Shared, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let out = Shared::default();
        let serial = Serial::with_output(ConsoleOutput::new(vec![Box::new(out.clone())], exit.clone())).unwrap();
        (serial, out, exit)
    }

    fn type_text(serial: &mut Serial, text: &str) {
        for b in text.bytes() {
            serial.write(0, &[b]);
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_output() {
        let (mut serial, out, exit) = serial();
        type_text(&mut serial, "hello\r\n");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\r\n");
        assert_eq!(exit.panic_age(), None);
    }

    #[test]
    fn a_kernel_panic_line_is_recorded_without_its_timestamp() {
        let (mut serial, _out, exit) = serial();
        type_text(&mut serial, "[    0.512000] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n");
        assert!(exit.panic_age().is_some());
        exit.request(VmExit::Reset);
        assert_eq!(exit.outcome(), Some(VmExit::Panic { message: "Kernel panic - not syncing: VFS: Unable to mount root fs".into() }));
    }

    #[test]
    fn overlong_lines_are_cut_not_buffered_forever() {
        let (mut serial, out, exit) = serial();
        type_text(&mut serial, &"x".repeat(5000));
        type_text(&mut serial, "\n");
        assert_eq!(out.0.lock().unwrap().len(), 5001);
        assert_eq!(exit.panic_age(), None);
    }

    #[test]
    fn a_console_flood_does_not_grow_the_log_file_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let exit = Arc::new(ExitSignal::new().unwrap());
        let config = SerialConfig { log_file: Some(path.clone()), to_stdout: false, to_stderr: false };
        let mut serial = Serial::new(&config, exit).unwrap();
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
        let (mut serial, out, _exit) = serial();
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
