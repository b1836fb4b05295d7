//! The VMM child process (`palisade-vmm`), and how a VM's end is explained.
//!
//! The VMM is told what to run by its typed configuration (`palisade_vmm::VmConfig`, written
//! as `vm.json` in the run directory and passed with `--config`), and says how the VM ended
//! as data (`--exit-record`: `palisade_vmm::ExitRecord`), not as text to be parsed.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use palisade_vmm::{DiskConfig, ExitRecord, FsConfig, SerialConfig, VmConfig, VsockConfig};

use super::args::DiskRates;

/// The guest kernel command line.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k,panic_warm panic=-1 quiet nomodules i8042.noaux i8042.nomux i8042.dumbkbd";
/// The command line, with `RUST_LOG=<filter>` for the guest agent when
/// `PALISADE_AGENT_LOG` asks for its logs on the console (debugging, with `--console`).
pub fn kernel_cmdline(agent_log: Option<&str>) -> String {
    match agent_log.filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || "_=,:.".contains(c))) {
        Some(filter) => format!("{KERNEL_CMDLINE} RUST_LOG={filter}"),
        None => KERNEL_CMDLINE.to_string(),
    }
}

/// The guest's vsock CID.
pub const GUEST_CID: u32 = 3;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEnd {
    /// The VMM exited 0: the guest reset the VM (how it powers off, `reboot=k`, and
    /// how it reboots; not a panic, which the VMM tells apart: `reboot=k,panic_warm`).
    pub clean: bool,
    /// One line saying why, for the user.
    pub reason: String,
}

/// A running VM as the session sees it.
pub trait Vm {
    /// `Some` once the VM has ended.
    fn poll_end(&mut self) -> Option<VmEnd>;
    /// Waits up to `timeout` for the VM to end, then kills it.
    fn finish(&mut self, timeout: Duration) -> VmEnd;
    /// The VMM's process id, when it is a process of its own.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// The guest console's last non-empty line, when it is kept (for error messages).
    fn last_console_line(&self) -> Option<String> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("palisade-vmm {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("writing the VM's configuration {path}: {source}")]
    Config { path: PathBuf, source: std::io::Error },
}

/// What the VMM is started with.
pub struct VmmConfig<'a> {
    pub binary: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The root filesystem image (`None`: the root is a shared directory).
    pub disk: Option<&'a Path>,
    /// virtio-fs devices (the VM's shared directory).
    pub fs: Vec<FsConfig>,
    /// Limits on the guest's reads and writes of the disk.
    pub disk_rates: DiskRates,
    pub cpus: u32,
    pub memory_mib: u32,
    pub vsock_socket: &'a Path,
    /// `None`: serial to the VMM's stderr (`--console`).
    pub serial_log: Option<&'a Path>,
    /// Where the VMM's own stderr goes (`None`: inherited).
    pub stderr_file: Option<&'a Path>,
    /// Where the VM's configuration is written for the VMM (`--config`).
    pub config_file: &'a Path,
    /// Where the VMM writes how the VM ended (`--exit-record`).
    pub exit_record: &'a Path,
}

impl VmmConfig<'_> {
    /// The VM, as the VMM's own configuration type.
    pub fn vm_config(&self) -> VmConfig {
        let serial = match self.serial_log {
            Some(log) => SerialConfig { log_file: Some(log.to_path_buf()), ..SerialConfig::none() },
            None => SerialConfig { to_stderr: true, ..SerialConfig::none() },
        };
        VmConfig {
            initrd: Some(self.initrd.to_path_buf()),
            cmdline: kernel_cmdline(std::env::var("PALISADE_AGENT_LOG").ok().as_deref()),
            vcpus: u8::try_from(self.cpus).unwrap_or(u8::MAX),
            memory_mib: self.memory_mib,
            disks: self
                .disk
                .map(|disk| DiskConfig {
                    path: disk.to_path_buf(),
                    read_only: true,
                    read_rates: self.disk_rates.read,
                    write_rates: self.disk_rates.write,
                })
                .into_iter()
                .collect(),
            fs: self.fs.clone(),
            vsock: Some(VsockConfig { guest_cid: u64::from(GUEST_CID), uds_path: self.vsock_socket.to_path_buf() }),
            rng: true,
            serial,
            ..VmConfig::new(self.kernel)
        }
    }

    /// The VMM's arguments.
    pub fn args(&self) -> Vec<String> {
        VmmArgs {
            binary: self.binary,
            config_file: self.config_file,
            exit_record: self.exit_record,
            cgroup_parent: None,
            cgroup_companions: &[],
        }
        .args()
    }
}

/// The files of one VMM run.
pub struct VmmFiles<'a> {
    /// Where the VM's configuration is written for the VMM (`--config`).
    pub config_file: &'a Path,
    /// Where the VMM writes how the VM ended (`--exit-record`).
    pub exit_record: &'a Path,
    /// Where the VMM's own stderr goes (`None`: inherited).
    pub stderr_file: Option<&'a Path>,
    /// The cgroup the VM's cgroup goes under (`--jail-cgroup-parent`); `None`: the VMM's own.
    pub cgroup_parent: Option<&'a Path>,
    /// Processes that join the VM's cgroup (`--jail-cgroup-companion`): its virtiofsd.
    pub cgroup_companions: &'a [u32],
}

struct VmmArgs<'a> {
    binary: &'a Path,
    config_file: &'a Path,
    exit_record: &'a Path,
    cgroup_parent: Option<&'a Path>,
    cgroup_companions: &'a [u32],
}

impl VmmArgs<'_> {
    fn args(&self) -> Vec<String> {
        let mut args =
            vec!["--config".into(), self.config_file.display().to_string(), "--exit-record".into(), self.exit_record.display().to_string()];
        if let Some(parent) = self.cgroup_parent {
            args.extend(["--jail-cgroup-parent".into(), parent.display().to_string()]);
        }
        for pid in self.cgroup_companions {
            args.extend(["--jail-cgroup-companion".into(), pid.to_string()]);
        }
        args
    }
}

/// The VMM child; killed and reaped on drop if still running.
pub struct VmmProcess {
    child: Child,
    stderr_file: Option<PathBuf>,
    serial_log: Option<PathBuf>,
    exit_record: PathBuf,
    ended: Option<VmEnd>,
}

impl VmmProcess {
    pub fn spawn(config: &VmmConfig<'_>) -> Result<VmmProcess, VmmError> {
        let files = VmmFiles {
            config_file: config.config_file,
            exit_record: config.exit_record,
            stderr_file: config.stderr_file,
            cgroup_parent: None,
            cgroup_companions: &[],
        };
        VmmProcess::start(config.binary, &config.vm_config(), &files)
    }

    /// Starts `binary` on the VM `vm`, written to `files.config_file`.
    pub fn start(binary: &Path, vm: &VmConfig, files: &VmmFiles<'_>) -> Result<VmmProcess, VmmError> {
        std::fs::write(files.config_file, vm.to_json()).map_err(|source| VmmError::Config { path: files.config_file.into(), source })?;
        let config = VmmArgs {
            binary,
            config_file: files.config_file,
            exit_record: files.exit_record,
            cgroup_parent: files.cgroup_parent,
            cgroup_companions: files.cgroup_companions,
        };
        let serial_log = vm.serial.log_file.clone();
        // A record left by an earlier VM in the same place must not explain this one.
        let _ = std::fs::remove_file(config.exit_record);
        let mut cmd = Command::new(config.binary);
        cmd.args(config.args()).stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(path) = files.stderr_file {
            let file = std::fs::File::create(path).map_err(|source| VmmError::Output { path: path.into(), source })?;
            cmd.stderr(file);
        }
        // Its own process group: a Ctrl-C on vmrun's terminal is for the command, not
        // the VMM. And it dies with vmrun even if vmrun is killed outright.
        cmd.process_group(0);
        // SAFETY: prctl and pthread_sigmask are async-signal-safe and touch only the
        // child's own state.
        unsafe {
            cmd.pre_exec(|| {
                // SIGTERM, not SIGKILL: the jailed VMM's supervisor then still removes
                // its jail directory and cgroups.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                crate::vmrun::signals::unblock_all_in_child()
            });
        }
        tracing::debug!(binary = %config.binary.display(), args = ?config.args(), "starting the VMM");
        let child = cmd.spawn().map_err(|source| VmmError::Spawn { path: config.binary.into(), source })?;
        Ok(VmmProcess {
            child,
            stderr_file: files.stderr_file.map(Path::to_path_buf),
            serial_log,
            exit_record: config.exit_record.to_path_buf(),
            ended: None,
        })
    }

    /// What to do once the VMM was reaped: a `palisade-vmm` killed by a signal could not
    /// remove its jail (directory, cgroups), so that is swept now rather than by the next
    /// run; then why the VM ended.
    fn reaped(&self, status: std::process::ExitStatus) -> VmEnd {
        if status.signal().is_some() {
            palisade_vmm::jail::sweep_killed(Path::new(palisade_vmm::jail::DEFAULT_BASE_DIR), self.child.id(), JAIL_SWEEP_WAIT);
        }
        self.explain(status)
    }

    fn explain(&self, status: std::process::ExitStatus) -> VmEnd {
        let tail = |path: Option<&Path>| path.and_then(|p| read_tail(p, EXPLAIN_TAIL).ok()).unwrap_or_default();
        // No record when the VMM itself was killed outright (SIGKILL): then its status and
        // stderr say what there is to say.
        let record = match ExitRecord::read_from(&self.exit_record) {
            Ok(record) => Some(record),
            Err(palisade_vmm::exit_record::ExitRecordError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        };
        let stderr = tail(self.stderr_file.as_deref());
        let serial = tail(self.serial_log.as_deref());
        let clean = status.success() && record.as_ref().is_none_or(|r| r.clean);
        explain_end(clean, &status.to_string(), record.as_ref(), &String::from_utf8_lossy(&stderr), &String::from_utf8_lossy(&serial))
    }
}

/// How much of the end of the VMM's stderr and of the console log is read to explain a VM's
/// end: the guest decides how long they are.
const EXPLAIN_TAIL: u64 = 64 * 1024;

/// The last `max` bytes of `path` (all of a shorter file).
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::with_capacity(max.min(len) as usize);
    file.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// One line saying why a VM ended. The reason is what the VMM saw: its exit record's
/// message, else its `palisade-vmm: …` line, else its exit status (0: the guest reset the
/// VM). The console is the guest's text and only adds to it, marked as such: its kernel
/// panic line when it printed one, else its last line.
pub fn explain_end(clean: bool, status: &str, record: Option<&ExitRecord>, vmm_stderr: &str, serial: &str) -> VmEnd {
    let stderr_line = || {
        vmm_stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with("palisade-vmm:"))
            .or_else(|| vmm_stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()))
            .map(|l| l.trim_start_matches("palisade-vmm:").trim().to_string())
    };
    // A clean record's message says the guest reset the VM: as terse as before.
    let vmm_line = match record {
        Some(record) if record.clean => None,
        Some(record) => Some(super::guest_text::sanitize(&record.message)),
        None => stderr_line(),
    };
    let reason = match (vmm_line, clean) {
        (Some(line), _) => line,
        (None, true) => "the VM reset".to_string(),
        (None, false) => format!("palisade-vmm {status}"),
    };
    let lines = || serial.lines().map(|l| l.trim_matches(|c: char| c.is_whitespace() || c == '\0'));
    let note = match lines().find(|l| l.contains("Kernel panic")) {
        Some(panic) => format!(" (the guest's console said: {})", console_line(panic)),
        None => match lines().rev().find(|l| !l.is_empty()) {
            Some(last) => format!(" (last line of the guest's console: {})", console_line(last)),
            None => String::new(),
        },
    };
    VmEnd { clean, reason: reason + &note }
}

/// A console line as the host shows it: without the kernel's timestamp, [`sanitize`]d.
///
/// [`sanitize`]: super::guest_text::sanitize
fn console_line(line: &str) -> String {
    super::guest_text::sanitize(strip_kernel_timestamp(line))
}

fn strip_kernel_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        Some((stamp, rest)) if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') => rest.trim(),
        _ => line,
    }
}

impl Vm for VmmProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    fn last_console_line(&self) -> Option<String> {
        let serial = read_tail(self.serial_log.as_deref()?, 4096).ok()?;
        let text = String::from_utf8_lossy(&serial).into_owned();
        let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty())?;
        Some(console_line(line).chars().take(200).collect())
    }

    fn poll_end(&mut self) -> Option<VmEnd> {
        if self.ended.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.ended = Some(self.reaped(status));
            }
        }
        self.ended.clone()
    }

    fn finish(&mut self, timeout: Duration) -> VmEnd {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(end) = self.poll_end() {
                return end;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("the VMM did not exit within {timeout:?} after shutdown; stopping it");
        self.terminate()
    }
}

/// How long a killed `palisade-vmm`'s jailed VMM gets to die (its cgroups go only once
/// empty) before its jail is left to the next run's sweep.
const JAIL_SWEEP_WAIT: Duration = Duration::from_secs(5);

/// How long the jailed VMM's supervisor gets to kill the VMM and remove its jail after
/// SIGTERM before it is killed outright (its jail is then swept by the next run).
const STOP_GRACE: Duration = Duration::from_secs(3);

impl VmmProcess {
    /// Ends the VM now (as [`Self::stop`] does) and says how it ended.
    pub fn terminate(&mut self) -> VmEnd {
        if let Some(end) = self.poll_end() {
            return end;
        }
        match self.stop() {
            Ok(status) => {
                let end = self.reaped(status);
                self.ended = Some(end.clone());
                end
            }
            Err(e) => VmEnd { clean: false, reason: format!("waiting for palisade-vmm: {e}") },
        }
    }

    /// The VMM's exit status, once it has exited and was reaped.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (the supervisor then kills the VMM and removes the jail directory and
    /// cgroups), SIGKILL if that does not end it within [`STOP_GRACE`]; then reaps it.
    fn stop(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Some(status) = self.child.try_wait()? {
                    return Ok(status);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        self.child.wait()
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.ended.is_none() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_vmm::rate_limiter::Rates;

    #[test]
    fn the_reason_is_what_the_vmm_saw_and_a_panic_line_is_the_guests_text() {
        let serial = "[    0.1] booting\n[    3.2] Kernel panic - not syncing: sysrq triggered crash\n[    3.3] Rebooting in 1 seconds..\n";
        let end = explain_end(true, "exit status: 0", None, "", serial);
        assert_eq!(end.reason, "the VM reset (the guest's console said: Kernel panic - not syncing: sysrq triggered crash)");
        // Console text cannot replace what the VMM saw.
        let end = explain_end(false, "exit status: 1", None, "palisade-vmm: vCPU 0: triple fault\n", "Kernel panic - not syncing: fake\n");
        assert_eq!(end.reason, "vCPU 0: triple fault (the guest's console said: Kernel panic - not syncing: fake)");
    }

    #[test]
    fn the_exit_record_is_the_reason_when_there_is_one() {
        let record = ExitRecord::of_exit(&palisade_vmm::VmExit::TripleFault { vcpu: 1 }, "vCPU 1: triple fault");
        let end = explain_end(false, "exit status: 1", Some(&record), "palisade-vmm: something else\n", "");
        assert_eq!(end, VmEnd { clean: false, reason: "vCPU 1: triple fault".into() });
        let clean = ExitRecord::of_exit(&palisade_vmm::VmExit::Reset, "the guest reset the VM (power-off)");
        assert_eq!(explain_end(true, "exit status: 0", Some(&clean), "", "").reason, "the VM reset");
        // A panic is the VMM's record, not only the guest's text.
        let panic = ExitRecord::of_exit(&palisade_vmm::VmExit::Panic, palisade_vmm::VmExit::Panic.to_string());
        let end = explain_end(false, "exit status: 1", Some(&panic), "", "Kernel panic - not syncing: sysrq triggered crash\n");
        assert!(!end.clean && end.reason.starts_with("the guest kernel panicked"), "{end:?}");
        // The record is the VMM's, but shown to a person: no escape sequences get through.
        let odd = ExitRecord::vmm_error("disk /d\u{1b}[2J: gone");
        assert!(!explain_end(false, "exit status: 1", Some(&odd), "", "").reason.contains('\u{1b}'));
    }

    #[test]
    fn the_vmm_line_is_the_reason() {
        let end = explain_end(false, "exit status: 1", None, "palisade-vmm: kernel /k: bad ELF header\n", "");
        assert_eq!(end, VmEnd { clean: false, reason: "kernel /k: bad ELF header".into() });
        let end = explain_end(false, "signal: 9 (SIGKILL)", None, "", "last words\n");
        assert_eq!(end.reason, "palisade-vmm signal: 9 (SIGKILL) (last line of the guest's console: last words)");
    }

    #[test]
    fn only_the_end_of_a_huge_log_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nthe end\n");
        std::fs::write(&path, &text).unwrap();
        let tail = read_tail(&path, 100).unwrap();
        assert_eq!(tail.len(), 100);
        assert!(tail.ends_with(b"\nthe end\n"));
        assert_eq!(read_tail(&path, 1 << 30).unwrap().len(), text.len());
    }

    fn test_config<'a>(kernel: &'a Path, serial_log: Option<&'a Path>) -> VmmConfig<'a> {
        VmmConfig {
            binary: Path::new("/b/palisade-vmm"),
            kernel,
            initrd: Path::new("/a/initramfs.cpio"),
            disk: Some(Path::new("/a/busybox.erofs")),
            fs: vec![],
            disk_rates: DiskRates::default(),
            cpus: 2,
            memory_mib: 256,
            vsock_socket: Path::new("/r/vsock.sock"),
            serial_log,
            stderr_file: None,
            config_file: Path::new("/r/vm.json"),
            exit_record: Path::new("/r/exit.json"),
        }
    }

    #[test]
    fn the_vmm_gets_its_typed_config_not_an_argv() {
        let c = test_config(Path::new("/a/vmlinux"), Some(Path::new("/r/serial.log")));
        assert_eq!(c.args(), ["--config", "/r/vm.json", "--exit-record", "/r/exit.json"]);
        let vm = c.vm_config();
        assert_eq!((vm.kernel.to_str(), vm.vcpus, vm.memory_mib, vm.rng), (Some("/a/vmlinux"), 2, 256, true));
        assert_eq!(vm.initrd.as_deref(), Some(Path::new("/a/initramfs.cpio")));
        assert_eq!(vm.disks.len(), 1);
        assert!(vm.disks[0].read_only && vm.disks[0].read_rates.is_unlimited());
        assert_eq!(vm.vsock, Some(VsockConfig { guest_cid: 3, uds_path: "/r/vsock.sock".into() }));
        assert_eq!(vm.serial, SerialConfig { log_file: Some("/r/serial.log".into()), ..SerialConfig::none() });
        assert!(vm.cmdline.starts_with("console=ttyS0 reboot=k,panic_warm panic=-1"), "{}", vm.cmdline);
        let limited = VmmConfig {
            disk_rates: DiskRates {
                read: Rates { bytes_per_sec: Some(1 << 20), ops_per_sec: None },
                write: Rates { bytes_per_sec: None, ops_per_sec: Some(5) },
            },
            ..c
        };
        let disk = &limited.vm_config().disks[0];
        assert_eq!((disk.read_rates.bytes_per_sec, disk.write_rates.ops_per_sec), (Some(1 << 20), Some(5)));
        // A shared root: no disk, a virtio-fs device.
        let fs = vec![FsConfig { tag: "palisade".into(), socket: "/r/virtiofsd.sock".into() }];
        let shared = VmmConfig { disk: None, fs: fs.clone(), ..test_config(Path::new("/a/vmlinux"), None) }.vm_config();
        assert!(shared.disks.is_empty());
        assert_eq!(shared.fs, fs);
        // --console: the guest's console on the VMM's stderr.
        let console = test_config(Path::new("/a/vmlinux"), None).vm_config();
        assert!(console.serial.to_stderr && console.serial.log_file.is_none() && !console.serial.to_stdout);
    }

    #[test]
    fn the_vmm_child_is_reaped_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-vmm");
        std::fs::write(&script, "#!/bin/sh\necho 'palisade-vmm: triple fault' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let stderr = dir.path().join("vmm.stderr");
        let (config_file, exit_record) = (dir.path().join("vm.json"), dir.path().join("exit.json"));
        let c = VmmConfig {
            binary: &script,
            stderr_file: Some(&stderr),
            config_file: &config_file,
            exit_record: &exit_record,
            ..test_config(Path::new("k"), None)
        };
        // A record of an earlier VM there is not taken for this one's.
        ExitRecord::vmm_error("an older VM").write_to(&exit_record).unwrap();
        let mut vmm = VmmProcess::spawn(&c).unwrap();
        let end = vmm.finish(Duration::from_secs(10));
        assert_eq!(end, VmEnd { clean: false, reason: "triple fault".into() });
        assert_eq!(VmConfig::from_json_file(&config_file).unwrap(), c.vm_config(), "the VMM was given its config");

        // A VMM that leaves a record: the record is the reason.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho '{}' > \"$4\"\necho 'palisade-vmm: noise' >&2\nexit 1\n",
                ExitRecord::vmm_error("disk d: gone").to_json()
            ),
        )
        .unwrap();
        let mut vmm = VmmProcess::spawn(&c).unwrap();
        assert_eq!(vmm.finish(Duration::from_secs(10)), VmEnd { clean: false, reason: "disk d: gone".into() });
    }
}
