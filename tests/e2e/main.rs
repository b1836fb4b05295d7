//! End-to-end tests: real micro-VMs with the real guest kernel and agent.
//!
//! On a host whose /dev/kvm cannot boot a standard guest (PVM, like the project's
//! build machines), this binary re-executes itself inside the KVM test host first.

mod bench;
mod container;
mod containerd;
mod cri;
mod kvm;
mod network;
mod oci_runtime;
mod podman;
mod virtio_fs;
mod vmrun;

use libtest_mimic::{Arguments, Failed, Trial};

pub type TestResult = Result<(), Failed>;

/// `ensure!(cond, "fmt", args…)`: fail the test with a message.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(libtest_mimic::Failed::from(format!($($arg)+)));
        }
    };
}

fn main() {
    palisade_e2e::reexec_in_testhost_if_needed();
    // Well before the test host's 15-minute bound: say where a stalled run stalls.
    palisade_e2e::watch_for_stalls(std::time::Duration::from_secs(420));
    let args = Arguments::from_args();
    let mut tests = Vec::new();
    tests.extend(kvm::tests());
    tests.extend(vmrun::tests());
    tests.extend(container::tests());
    tests.extend(virtio_fs::tests());
    tests.extend(oci_runtime::tests());
    tests.extend(network::tests());
    tests.extend(containerd::tests());
    tests.extend(podman::tests());
    tests.extend(cri::tests());
    tests.extend(bench::tests());
    libtest_mimic::run(&args, palisade_e2e::without_already_passed(tests)).exit();
}

pub fn trial(name: &'static str, f: fn() -> TestResult) -> Trial {
    Trial::test(name, move || {
        let result = f();
        palisade_e2e::note_progress();
        if let Err(failed) = &result {
            // Said at once too: a test host that later wedges or crashes never reaches the
            // summary at the end of the run.
            eprintln!("[e2e] {name} failed: {}", failed.message().unwrap_or("(no message)"));
        }
        result
    })
}
