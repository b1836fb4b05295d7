//! Boots tiny PVH guests with the `palisade-vmm` binary on this machine's KVM.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::tiny_guest::{write_guest, write_linux64_guest, Code};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade-vmm")).args(args).output().expect("running palisade-vmm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn guest_prints_its_marker_and_resets_cleanly() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "marker", &Code::new().print("palisade-marker-42\n").reset().halt());
    let out = vmm(&["--kernel", guest.to_str().unwrap()]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "palisade-marker-42\n");
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn an_elf_without_a_pvh_note_boots_through_the_linux_64_bit_entry() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The same code prints the mode it runs in: 6 for long mode, 3 for protected mode.
    let code = Code::new().print("mode ").print_cpu_mode().print("\n").reset().halt();
    let plain = write_linux64_guest(dir.path(), "vmlinux-no-pvh", &code);
    let out = vmm(&["--kernel", plain.to_str().unwrap()]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "mode 6\n");
    assert_eq!(text(&out.stderr), "");
    let pvh = write_guest(dir.path(), "vmlinux-pvh", &code);
    let out = vmm(&["--kernel", pvh.to_str().unwrap()]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "mode 3\n");
}

#[test]
fn serial_goes_to_a_log_file_and_smp_guests_boot() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "marker", &Code::new().print("to the log\n").reset().halt());
    let log = dir.path().join("serial.log");
    let serial = format!("file:{}", log.display());
    let out = vmm(&["--kernel", guest.to_str().unwrap(), "--serial", &serial, "--cpus", "4", "--memory", "64"]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to the log\n");
}

#[test]
fn virtio_device_registers_are_reachable_over_mmio() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The first virtio device's MagicValue register reads "virt".
    let code = Code::new().print_if_mmio_equals(0xd000_0000, 0x7472_6976, b'V', b'?').print("\n").reset().halt();
    let guest = write_guest(dir.path(), "mmio", &code);
    let out = vmm(&["--kernel", guest.to_str().unwrap(), "--rng"]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stdout), "V\n");
    // Without a device the window is unclaimed and reads all ones.
    let out = vmm(&["--kernel", guest.to_str().unwrap()]);
    assert_eq!(text(&out.stdout), "?\n");
}

#[test]
fn kvm_completes_the_drivers_used_buffer_acknowledgments_itself() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The driver acknowledges a used-buffer interrupt (1), then a configuration change (2),
    // on the first virtio device's InterruptACK register.
    let code = Code::new().write_mmio(0xd000_0064, 1).write_mmio(0xd000_0064, 2).print("K\n").reset().halt();
    let guest = write_guest(dir.path(), "ack", &code);
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-vmm"))
        .args(["--kernel", guest.to_str().unwrap(), "--rng", "--no-jail"])
        .env("RUST_LOG", "palisade_vmm=trace")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "status {:?}, stderr: {stderr}", out.status);
    assert_eq!(text(&out.stdout), "K\n", "stderr: {stderr}");
    let acks: Vec<&str> = stderr.lines().filter(|l| l.contains("InterruptACK")).collect();
    // The first never left the kernel; the second, which only the VMM can act on, did.
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(acks[0].trim_end().ends_with('2'), "{acks:?}");
}

#[test]
fn a_crashing_guest_fails_with_one_clear_line() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "crash", &Code::new().print("about to crash\n").triple_fault());
    let started = Instant::now();
    let out = vmm(&["--kernel", guest.to_str().unwrap()]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "about to crash\n");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Hardware KVM reports a triple fault; PVM reports the same crash as an internal error.
    assert!(
        stderr.starts_with("palisade-vmm: vCPU 0: triple fault") || stderr.starts_with("palisade-vmm: vCPU 0: KVM internal error"),
        "{stderr}"
    );
}

#[test]
fn console_text_does_not_choose_how_the_vm_ends() {
    // A guest that prints the kernel's panic line and then resets ended by a reset: that is
    // what the VMM saw (exit 0), whatever the console said (tools show that as guest text).
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let code = Code::new().print("[    1.000000] Kernel panic - not syncing: No working init found.\n").reset().halt();
    let guest = write_guest(dir.path(), "panic", &code);
    let out = vmm(&["--kernel", guest.to_str().unwrap(), "--serial", "none"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

/// The exit record `palisade-vmm --exit-record PATH` left.
fn record(path: &std::path::Path) -> palisade_vmm::ExitRecord {
    palisade_vmm::ExitRecord::read_from(path).unwrap()
}

#[test]
fn a_vm_described_by_a_config_file_boots_and_its_end_is_recorded() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "marker", &Code::new().print("from the config\n").reset().halt());
    let log = dir.path().join("serial.log");
    let mut config = palisade_vmm::VmConfig::new(&guest);
    config.vcpus = 2;
    config.memory_mib = 64;
    config.rng = true;
    config.serial = palisade_vmm::SerialConfig { log_file: Some(log.clone()), ..palisade_vmm::SerialConfig::none() };
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_json()).unwrap();
    let exit = dir.path().join("exit.json");
    let out = vmm(&["--config", config_path.to_str().unwrap(), "--exit-record", exit.to_str().unwrap()]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "from the config\n");
    let ended = record(&exit);
    assert_eq!((ended.ending, ended.clean, ended.exit_status), (palisade_vmm::Ending::Reset, true, 0), "{ended:?}");

    // A guest that crashes: the record says what stderr says, as data.
    let crash = write_guest(dir.path(), "crash", &Code::new().triple_fault());
    std::fs::write(&config_path, palisade_vmm::VmConfig::new(&crash).to_json()).unwrap();
    let out = vmm(&["--config", config_path.to_str().unwrap(), "--exit-record", exit.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let ended = record(&exit);
    // Hardware KVM reports a triple fault; PVM reports the same crash as an internal error.
    assert!(matches!(ended.ending, palisade_vmm::Ending::TripleFault | palisade_vmm::Ending::KvmInternalError), "{ended:?}");
    assert_eq!((ended.clean, ended.vcpu, ended.exit_status), (false, Some(0), 1));
    assert_eq!(text(&out.stderr), format!("palisade-vmm: {}\n", ended.message));

    // A VM that cannot be built, and a config that cannot be read, are recorded too.
    let missing = dir.path().join("no-such-kernel");
    std::fs::write(&config_path, palisade_vmm::VmConfig::new(&missing).to_json()).unwrap();
    let out = vmm(&["--config", config_path.to_str().unwrap(), "--exit-record", exit.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let ended = record(&exit);
    assert_eq!(ended.ending, palisade_vmm::Ending::VmmError);
    assert!(ended.message.starts_with(&format!("kernel {}: No such file", missing.display())), "{ended:?}");
    std::fs::write(&config_path, "{").unwrap();
    let out = vmm(&["--config", config_path.to_str().unwrap(), "--exit-record", exit.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(record(&exit).message.starts_with(&format!("VM config {}: EOF", config_path.display())), "{:?}", record(&exit));
}

#[test]
fn setup_errors_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let not_kernel = dir.path().join("notes.txt");
    std::fs::write(&not_kernel, "just some text, long enough to look at").unwrap();
    let out = vmm(&["--kernel", not_kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    if common::have_kvm() {
        assert_eq!(
            stderr,
            format!("palisade-vmm: kernel {}: is not a Linux kernel (neither ELF vmlinux nor bzImage)\n", not_kernel.display())
        );
        let missing = dir.path().join("vmlinux");
        let out = vmm(&["--kernel", missing.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(&format!("palisade-vmm: kernel {}: No such file", missing.display())), "{stderr}");
        let guest = write_guest(dir.path(), "ok", &Code::new().reset());
        let missing_disk = dir.path().join("disk.img");
        let out = vmm(&["--kernel", guest.to_str().unwrap(), "--disk", &format!("{},ro", missing_disk.display())]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(&format!("palisade-vmm: disk {}: ", missing_disk.display())), "{stderr}");
    } else {
        assert_eq!(stderr, "palisade-vmm: no /dev/kvm: this host has no KVM\n");
    }
}

#[test]
fn help_documents_every_flag() {
    let out = vmm(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--disk",
        "--vsock-uds",
        "--vsock-cid",
        "--serial",
        "--rng",
        "--help",
        "--version",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
    assert!(help.contains("bzImage") && help.contains("PVH"), "{help}");
}

#[test]
fn usage_errors_and_missing_files_are_one_line() {
    let one_line = |out: &Output| {
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("palisade-vmm: "), "{stderr}");
        stderr
    };
    let out = vmm(&["--kernel", "/k", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out).contains("'--no-such-flag'"));
    let out = vmm(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out).contains("--kernel <PATH>"));
    let out = vmm(&["--kernel", "/k", "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out).contains("'lots'"));
    if common::have_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let guest = write_guest(dir.path(), "ok", &Code::new().reset());
        let initrd = dir.path().join("initrd.cpio");
        let out = vmm(&["--kernel", guest.to_str().unwrap(), "--initrd", initrd.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(one_line(&out).starts_with(&format!("palisade-vmm: initrd {}: No such file", initrd.display())));
        let missing = dir.path().join("vmlinuz");
        let out = vmm(&["--kernel", missing.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        one_line(&out);
    }
}

#[test]
fn bad_flags_are_refused() {
    let out = vmm(&["--kernel", "/k", "--serial", "tty"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("expected stdout, stderr, file:PATH or none"));
    let out = vmm(&["--kernel", "/k", "--cpus", "0"]);
    assert!(!out.status.success());
    let out = vmm(&["--kernel", "/k", "--vsock-cid", "5"]);
    assert!(!out.status.success(), "--vsock-cid without --vsock-uds");
}

#[test]
fn a_guest_flooding_its_console_leaves_a_bounded_log_with_its_last_words() {
    if !common::have_kvm() {
        return;
    }
    // 4.5 MiB of console output, more than the log keeps (4 MiB), through the jailed VMM (the
    // vCPU thread's seccomp allowlist must let the log shrink).
    let dir = tempfile::tempdir().unwrap();
    let line = "a guest that floods its console with one line after another ......\n";
    let times = (9u32 << 19) / line.len() as u32;
    let code = Code::new().print_repeatedly(line, times).print("the last words\n").reset().halt();
    let guest = write_guest(dir.path(), "flood", &code);
    let log = dir.path().join("serial.log");
    let serial = format!("file:{}", log.display());
    let out = vmm(&["--kernel", guest.to_str().unwrap(), "--serial", &serial]);
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, text(&out.stderr));
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 4 << 20, "the console log is {size} bytes");
    let kept = std::fs::read_to_string(&log).unwrap();
    assert!(kept.starts_with("[palisade-vmm: ") && kept.contains(" bytes of older console output dropped"), "{}", &kept[..200]);
    assert!(kept.ends_with(&format!("{line}the last words\n")), "the end of the log is not the guest's last output");
}
