//! 100 VMs in a row in one process leave no thread or file descriptor behind.
//! (Its own test binary: other tests running alongside would change the counts.)

mod common;

use palisade_vmm::{run_vm, SerialConfig, VmConfig, VmExit};

use common::tiny_guest::{write_guest, Code};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn a_hundred_boots_leak_no_threads_or_fds() {
    if !common::have_kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = write_guest(dir.path(), "marker", &Code::new().print("up\n").reset().halt());
    let log = dir.path().join("serial.log");
    let config = VmConfig {
        vcpus: 2,
        memory_mib: 32,
        rng: true,
        serial: SerialConfig { log_file: Some(log.clone()), to_stdout: false, to_stderr: false },
        ..VmConfig::new(&guest)
    };
    // One boot first, so one-time process state (the kick signal handler) is in place.
    assert_eq!(run_vm(config.clone()).unwrap(), VmExit::Reset);
    let threads = count("/proc/self/task");
    let fds = count("/proc/self/fd");
    for i in 0..100 {
        std::fs::remove_file(&log).unwrap();
        assert_eq!(run_vm(config.clone()).unwrap(), VmExit::Reset, "boot {i}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "up\n", "boot {i}");
    }
    assert_eq!(count("/proc/self/task"), threads, "threads before and after");
    assert_eq!(count("/proc/self/fd"), fds, "fds before and after");
}
