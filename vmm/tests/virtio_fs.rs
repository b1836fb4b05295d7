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
