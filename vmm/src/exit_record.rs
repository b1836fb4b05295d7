//! How a VMM process ended, as data: the exit record (`palisade-vmm --exit-record FILE`).
//!
//! Whoever started the VMM reads this instead of scraping its stderr. The record says what
//! the VMM saw (never what the guest printed): the guest reset the VM, a vCPU
//! triple-faulted, KVM failed, the VMM could not build the VM, or the jailed VMM was killed
//! (by seccomp, the out-of-memory killer or a signal from outside), or its kernel panicked.
//! A Palisade guest powers off, reboots and — with `panic=-1` — ends after a kernel panic
//! all the same way, by an i8042 reset (`reboot=k`); with `reboot=k,panic_warm` its
//! kernel asks for a warm reset only on a panic, which the VMM reads from guest memory
//! ([`crate::arch::x86_64::reset`]): a power-off and a reboot are a `reset`, a panic is a
//! `panic`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmExit;

/// What ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// The guest reset the VM through the i8042 (how a Palisade guest powers off).
    Reset,
    /// The guest kernel panicked (it reset the VM asking for a warm reset:
    /// [`crate::arch::x86_64::reset`]).
    Panic,
    /// The guest asked KVM for a shutdown.
    PowerOff,
    /// A vCPU triple-faulted (an exception the guest could not handle).
    TripleFault,
    /// KVM could not emulate or handle something the guest did.
    KvmInternalError,
    /// KVM could not enter the guest.
    KvmFailEntry,
    /// A vCPU halted with nothing that could wake it.
    Halted,
    /// Running a vCPU failed, or it exited for a reason the VMM does not handle.
    VcpuError,
    /// The VMM could not build or run the VM (a missing kernel, no /dev/kvm, a jail error).
    VmmError,
    /// The jailed VMM was killed by a signal it was not asked to end by (seccomp's SIGSYS,
    /// the out-of-memory killer, a SIGKILL from outside).
    Killed,
    /// The VMM was asked to end (SIGTERM, SIGINT, SIGHUP) and ended the VM.
    Stopped,
}

/// The record of one VMM's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub ending: Ending,
    /// Whether the guest ended the VM on purpose (the VMM's exit status is then 0).
    pub clean: bool,
    /// The vCPU that saw the end, for the endings a vCPU sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u8>,
    /// The signal, for [`Ending::Killed`] and [`Ending::Stopped`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// One line for a person, with the caller's paths.
    pub message: String,
    /// The VMM's exit status.
    pub exit_status: u8,
}

/// The largest record a reader accepts (a record is one short line of JSON).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// The longest message a record carries; longer ones are cut.
pub const MAX_MESSAGE_CHARS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ExitRecordError {
    #[error("exit record {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("exit record {path}: larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("exit record {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl ExitRecord {
    /// The record of a VM that ran to `exit`; `message` is the line the VMM prints for it.
    pub fn of_exit(exit: &VmExit, message: impl Into<String>) -> ExitRecord {
        let (ending, vcpu) = match exit {
            VmExit::Reset => (Ending::Reset, None),
            VmExit::Panic => (Ending::Panic, None),
            VmExit::PowerOff => (Ending::PowerOff, None),
            VmExit::TripleFault { vcpu } => (Ending::TripleFault, Some(*vcpu)),
            VmExit::InternalError { vcpu, .. } => (Ending::KvmInternalError, Some(*vcpu)),
            VmExit::FailEntry { vcpu, .. } => (Ending::KvmFailEntry, Some(*vcpu)),
            VmExit::Halted { vcpu } => (Ending::Halted, Some(*vcpu)),
            VmExit::VcpuError { vcpu, .. } => (Ending::VcpuError, Some(*vcpu)),
        };
        let clean = exit.is_clean();
        ExitRecord { ending, clean, vcpu, signal: None, message: bounded(message.into()), exit_status: u8::from(!clean) }
    }

    /// The record of a VMM that could not build or run its VM.
    pub fn vmm_error(message: impl Into<String>) -> ExitRecord {
        ExitRecord { ending: Ending::VmmError, clean: false, vcpu: None, signal: None, message: bounded(message.into()), exit_status: 1 }
    }

    /// The record of a VMM killed by `signal` (`asked`: because the VMM was asked to end).
    pub fn signalled(signal: i32, asked: bool, message: impl Into<String>) -> ExitRecord {
        ExitRecord {
            ending: if asked { Ending::Stopped } else { Ending::Killed },
            clean: false,
            vcpu: None,
            signal: Some(signal),
            message: bounded(message.into()),
            exit_status: 128u8.wrapping_add(signal as u8),
        }
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        // Plain fields with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a record of at most [`MAX_RECORD_BYTES`]; the message is cut to
    /// [`MAX_MESSAGE_CHARS`].
    pub fn from_json(bytes: &[u8]) -> Result<ExitRecord, serde_json::Error> {
        let mut record: ExitRecord = serde_json::from_slice(bytes)?;
        record.message = bounded(std::mem::take(&mut record.message));
        Ok(record)
    }

    /// Writes the record to `path`, whole or not at all (a temporary file renamed over it).
    pub fn write_to(&self, path: &Path) -> Result<(), ExitRecordError> {
        let io = |source| ExitRecordError::Io { path: path.into(), source };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(self.to_json().as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads the record at `path`.
    pub fn read_from(path: &Path) -> Result<ExitRecord, ExitRecordError> {
        let io = |source| ExitRecordError::Io { path: path.into(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(ExitRecordError::TooLarge { path: path.into() });
        }
        ExitRecord::from_json(&bytes).map_err(|source| ExitRecordError::Parse { path: path.into(), source })
    }
}

/// `message` as one line of at most [`MAX_MESSAGE_CHARS`] characters.
fn bounded(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS && !message.contains(['\n', '\r']) {
        return message;
    }
    message.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).take(MAX_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vm_exit_has_its_ending_and_only_clean_ones_exit_0() {
        let cases = [
            (VmExit::Reset, Ending::Reset, true, None),
            (VmExit::Panic, Ending::Panic, false, None),
            (VmExit::PowerOff, Ending::PowerOff, true, None),
            (VmExit::TripleFault { vcpu: 1 }, Ending::TripleFault, false, Some(1)),
            (VmExit::InternalError { vcpu: 0, reason: "x".into() }, Ending::KvmInternalError, false, Some(0)),
            (VmExit::FailEntry { vcpu: 2, hardware_reason: 7 }, Ending::KvmFailEntry, false, Some(2)),
            (VmExit::Halted { vcpu: 0 }, Ending::Halted, false, Some(0)),
            (VmExit::VcpuError { vcpu: 3, reason: "y".into() }, Ending::VcpuError, false, Some(3)),
        ];
        for (exit, ending, clean, vcpu) in cases {
            let record = ExitRecord::of_exit(&exit, exit.to_string());
            assert_eq!((record.ending, record.clean, record.vcpu, record.exit_status), (ending, clean, vcpu, u8::from(!clean)));
            assert_eq!(record.message, exit.to_string());
        }
    }

    #[test]
    fn the_json_form_names_the_ending_in_words_and_round_trips() {
        let record = ExitRecord::of_exit(&VmExit::TripleFault { vcpu: 0 }, "vCPU 0: triple fault");
        let json = record.to_json();
        assert!(json.contains(r#""ending":"triple-fault""#), "{json}");
        assert!(!json.contains("signal"), "{json}");
        assert_eq!(ExitRecord::from_json(json.as_bytes()).unwrap(), record);
        let killed = ExitRecord::signalled(31, false, "killed by seccomp (SIGSYS)");
        assert_eq!((killed.ending, killed.exit_status, killed.signal), (Ending::Killed, 159, Some(31)));
        assert_eq!(ExitRecord::signalled(15, true, "stopped").ending, Ending::Stopped);
    }

    #[test]
    fn records_are_written_whole_and_bounded_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        let record = ExitRecord::vmm_error("kernel /k: No such file or directory");
        record.write_to(&path).unwrap();
        assert_eq!(ExitRecord::read_from(&path).unwrap(), record);
        assert!(!dir.path().join("exit.json.tmp").exists());
        // A record someone else wrote: an endless message is cut, a huge file refused,
        // garbage named.
        let long = format!(r#"{{"ending":"reset","clean":true,"message":"{}\n!","exit_status":0}}"#, "a".repeat(5000));
        std::fs::write(&path, long).unwrap();
        let read = ExitRecord::read_from(&path).unwrap();
        assert_eq!(read.message.chars().count(), MAX_MESSAGE_CHARS);
        std::fs::write(&path, vec![b' '; MAX_RECORD_BYTES + 1]).unwrap();
        assert!(matches!(ExitRecord::read_from(&path), Err(ExitRecordError::TooLarge { .. })));
        std::fs::write(&path, "{\"ending\":\"exploded\"}").unwrap();
        let e = ExitRecord::read_from(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("exit record {}: unknown variant", path.display())), "{e}");
    }
}
