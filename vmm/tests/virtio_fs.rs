//! `palisade-vmm --fs`: the VMM connects a virtio-fs device to a real virtiofsd (itself when
//! unjailed, through its supervisor when jailed), the guest finds the device, and virtiofsd
//! does not outlive the VM. (The device's requests are tested against virtiofsd in the
//! VMM's unit tests; a real guest mounts it in the end-to-end tests.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::tiny_guest::{write_guest, Code};
use palisade_vmm::testing::virtiofsd::Virtiofsd;

const VMM: &str = env!("CARGO_BIN_EXE_palisade-vmm");

fn boots_with_a_virtio_fs_device(jailed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.path().join("fs.sock");
    let mut backend = Virtiofsd::start(&shared, &socket);
    // The first virtio device's DeviceID register reads 26 (virtio-fs).
    let code = Code::new().print_if_mmio_equals(0xd000_0008, 26, b'F', b'?').print("\n").reset().halt();
    let guest = write_guest(dir.path(), "fs", &code);
    let fs = format!("tag=shared,socket={}", socket.display());
    let mut args = vec!["--kernel", guest.to_str().unwrap(), "--fs", &fs, "--memory", "64"];
    if !jailed {
        args.push("--no-jail");
    }
    let out = Command::new(VMM).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}, stderr: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "F\n");
    assert!(backend.exits_within(Duration::from_secs(10)), "virtiofsd outlived its VM");
}

#[test]
fn an_unjailed_vmm_connects_its_virtio_fs_device_to_virtiofsd() {
    if !common::have_kvm() {
        return;
    }
    boots_with_a_virtio_fs_device(false);
}

#[test]
fn a_jailed_vmm_gets_its_virtio_fs_connection_from_the_supervisor() {
    if !common::have_kvm() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the jail needs root");
        return;
    }
    boots_with_a_virtio_fs_device(true);
}

/// The first virtio-mmio device's registers (virtio-fs when it is the only device).
const MMIO: u32 = 0xd000_0000;

/// A guest that drives the virtio-mmio handshake of the fs device up to DRIVER_OK with both
/// queues (the hiprio and one request queue, empty), prints `A` if the device took it, gives
/// the VMM's event loop time to hand the queues to the backend, resets the device (`R` if
/// it took that), gives the loop time to stop the backend's queues, and resets the VM.
fn activating_guest() -> Code {
    let reg = |offset: u32| MMIO + offset;
    let mut code = Code::new()
        .write_mmio(reg(0x70), 1) // ACKNOWLEDGE
        .write_mmio(reg(0x70), 3) // DRIVER
        .write_mmio(reg(0x24), 1) // DriverFeaturesSel: bits 32..63
        .write_mmio(reg(0x20), 1) // VIRTIO_F_VERSION_1
        .write_mmio(reg(0x24), 0)
        .write_mmio(reg(0x20), 0)
        .write_mmio(reg(0x70), 0xb); // FEATURES_OK
    for queue in 0..2u32 {
        let base = 0x40_0000 + queue * 0x4000;
        code = code
            .write_mmio(reg(0x30), queue) // QueueSel
            .write_mmio(reg(0x38), 16) // QueueNum
            .write_mmio(reg(0x80), base) // descriptor table
            .write_mmio(reg(0x84), 0)
            .write_mmio(reg(0x90), base + 0x1000) // available ring
            .write_mmio(reg(0x94), 0)
            .write_mmio(reg(0xa0), base + 0x2000) // used ring
            .write_mmio(reg(0xa4), 0)
            .write_mmio(reg(0x44), 1); // QueueReady
    }
    code.write_mmio(reg(0x70), 0xf) // DRIVER_OK
        .print_if_mmio_equals(reg(0x70), 0xf, b'A', b'!')
        .print("\n")
        .wait_on_port_reads(20_000)
        // The driver resets the device (as a guest kernel does at power-off), on the vCPU's
        // thread, whose seccomp filter has no socket calls.
        .write_mmio(reg(0x70), 0)
        .print_if_mmio_equals(reg(0x70), 0, b'R', b'!')
        .print("\n")
        .wait_on_port_reads(20_000)
        .reset()
        .halt()
}

fn activates_with_virtiofsd(jailed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.path().join("fs.sock");
    let mut backend = Virtiofsd::start(&shared, &socket);
    let guest = write_guest(dir.path(), "activate", &activating_guest());
    let fs = format!("tag=shared,socket={}", socket.display());
    let mut args = vec!["--kernel", guest.to_str().unwrap(), "--fs", &fs, "--memory", "64"];
    if !jailed {
        args.push("--no-jail");
    }
    let out = Command::new(VMM).args(&args).env("RUST_LOG", "debug").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}, stderr: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "A\nR\n", "stderr: {stderr}");
    // The event loop handed guest memory (the memfd) and the queues to virtiofsd, and took
    // them back at the reset, which a jailed VMM does under its seccomp filter.
    assert!(stderr.contains("queues handed to the vhost-user backend"), "{stderr}");
    assert!(stderr.contains("queues taken back from the vhost-user backend"), "{stderr}");
    assert!(!stderr.contains("cannot start the device"), "{stderr}");
    assert!(backend.exits_within(Duration::from_secs(10)), "virtiofsd outlived its VM");
}

#[test]
fn a_guest_that_activates_the_device_gets_its_queues_served_by_virtiofsd() {
    if !common::have_kvm() {
        return;
    }
    activates_with_virtiofsd(false);
}

#[test]
fn a_jailed_vmm_hands_guest_memory_and_queues_to_virtiofsd_under_its_seccomp_filter() {
    if !common::have_kvm() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the jail needs root");
        return;
    }
    activates_with_virtiofsd(true);
}

#[test]
fn a_missing_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "never", &Code::new().halt());
    let socket = dir.path().join("nobody.sock");
    let fs = format!("tag=x,socket={}", socket.display());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for extra in [&["--no-jail"][..], &[]] {
        if extra.is_empty() && !root {
            continue; // the jail needs root
        }
        let out = Command::new(VMM).args(["--kernel", guest.to_str().unwrap(), "--fs", &fs]).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&socket.display().to_string()) && stderr.contains("No such file"), "{stderr}");
    }
}
