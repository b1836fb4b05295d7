//! End-to-end tests: real micro-VMs with the real guest kernel and agent.
//!
//! On a host whose /dev/kvm cannot boot a standard guest (PVM, like the project's
//! build machines), this binary re-executes itself inside the KVM test host first.

mod kvm;
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
    let mut args = Arguments::from_args();
    if palisade_e2e::inside_testhost() && args.test_threads.is_none() {
        // Nested virtualization under emulation (QEMU TCG's AMD-V) is fragile when
        // several guests run heavy I/O at once: seen here as guest triple faults and even
        // test-host kernel crashes. One VM test at a time there; the leak test still
        // boots its 5 VMs in parallel.
        args.test_threads = Some(1);
    }
    let mut tests = Vec::new();
    tests.extend(kvm::tests());
    tests.extend(vmrun::tests());
    libtest_mimic::run(&args, tests).exit();
}

pub fn trial(name: &'static str, f: fn() -> TestResult) -> Trial {
    Trial::test(name, f)
}
