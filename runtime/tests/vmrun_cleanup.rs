//! What vmrun leaves behind when its VM never answers, when vmrun is SIGKILLed, and when
//! the VM's supervisor or VMM is: nothing — no process (supervisor, VMM, virtiofsd), no
//! mount, no run directory — and the shared files intact. The VMM is a stand-in that never
//! boots anything (booting real VMs is the end-to-end tests' part), so every run here ends
//! in the boot timeout or a kill.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VMRUN: &str = env!("CARGO_BIN_EXE_vmrun");

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Option<Setup> {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/kvm").exists() {
            eprintln!("vmrun needs root and /dev/kvm; skipping");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let vmm = dir.path().join("fake-vmm");
        std::fs::write(&vmm, "#!/bin/sh\nexec sleep 600\n").unwrap();
        std::fs::set_permissions(&vmm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // vmrun checks that the kernel is an ELF file or a bzImage before it starts a VM.
        std::fs::write(dir.path().join("vmlinux"), b"\x7fELF\x02\x01\x01\0").unwrap();
        std::fs::create_dir_all(dir.path().join("runs")).unwrap();
        std::fs::create_dir_all(dir.path().join("rootfs/bin")).unwrap();
        std::fs::write(dir.path().join("rootfs/keep"), "precious").unwrap();
        std::fs::create_dir_all(dir.path().join("volume")).unwrap();
        std::fs::write(dir.path().join("volume/keep"), "also precious").unwrap();
        Some(Setup { dir })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn vmrun(&self, boot_timeout_secs: u32) -> Command {
        let mut cmd = Command::new(VMRUN);
        cmd.env("XDG_RUNTIME_DIR", self.path("runs"))
            .env("PALISADE_VMM", self.path("fake-vmm"))
            .env("PALISADE_BOOT_TIMEOUT_SECS", boot_timeout_secs.to_string())
            .arg("--kernel")
            .arg(self.path("vmlinux"))
            .arg("--rootfs")
            .arg(self.path("rootfs"))
            .arg("-v")
            .arg(format!("{}:/data", self.path("volume").display()))
            .args(["--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// The run directories under the runs' base.
    fn runs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.path("runs")).unwrap().flatten().map(|e| e.path()).collect()
    }

    /// Waits until vmrun's VM runs (its state says so); returns its state.
    fn wait_running(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(run) = self.runs().first() {
                if let Ok(text) = std::fs::read_to_string(run.join("state.json")) {
                    let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if state["status"] == "running" {
                        return state;
                    }
                }
            }
            assert!(Instant::now() < deadline, "vmrun's VM never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Nothing of any run is left, and the shared files are intact.
    fn assert_nothing_left(&self) {
        let needle = self.dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let procs = processes_mentioning(&needle);
            let runs = self.runs();
            if procs.is_empty() && runs.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "left behind: processes {procs:?}, run directories {runs:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&needle), "a mount was left: {mounts}");
        assert_eq!(std::fs::read_to_string(self.path("rootfs/keep")).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(self.path("volume/keep")).unwrap(), "also precious");
    }
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().next()).is_none_or(|s| s == "Z") {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid} {cmdline}"));
        }
    }
    found
}

fn kill(pid: u64) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

fn finish(mut child: Child) -> (i32, String) {
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_vm_that_never_answers_is_given_up_on_and_leaves_nothing() {
    let Some(s) = Setup::new() else { return };
    let (code, stderr) = finish(s.vmrun(2).spawn().unwrap());
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("the guest agent did not answer within 2 s"), "{stderr}");
    s.assert_nothing_left();
}

#[test]
fn a_sigkilled_vmrun_leaves_nothing() {
    let Some(s) = Setup::new() else { return };
    let mut vmrun = s.vmrun(120).spawn().unwrap();
    let state = s.wait_running();
    assert!(state["virtiofsd"]["pid"].is_u64(), "a shared root and a volume: virtiofsd runs");
    vmrun.kill().unwrap();
    vmrun.wait().unwrap();
    s.assert_nothing_left();
}

#[test]
fn a_sigkilled_supervisor_or_vmm_ends_the_run_with_a_reason_and_leaves_nothing() {
    let Some(s) = Setup::new() else { return };
    for victim in ["supervisor", "vmm"] {
        let vmrun = s.vmrun(120).spawn().unwrap();
        let state = s.wait_running();
        kill(state[victim]["pid"].as_u64().unwrap());
        let (code, stderr) = finish(vmrun);
        assert_eq!(code, 125, "{victim}: {stderr}");
        // Killed while vmrun waits for the agent, or (a race) before vmrun saw it run.
        let said = stderr.contains("vmrun: the VM failed to boot: ") || stderr.contains(" did not start: ");
        assert!(said, "{victim}: {stderr}");
        if victim == "vmm" {
            assert!(stderr.contains("signal 9") || stderr.contains("SIGKILL"), "{victim}: {stderr}");
        }
        s.assert_nothing_left();
    }
}
