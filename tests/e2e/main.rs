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
    palisade_e2e::run_tests_in_testhosts_if_needed(&args, &tests, expected_secs);
    // Well before the test host's bound: say where a stalled run stalls.
    palisade_e2e::watch_for_stalls(std::time::Duration::from_secs(420));
    libtest_mimic::run(&args, palisade_e2e::without_already_passed(tests)).exit();
}

/// About how long a test takes inside an emulated test host of one vCPU, for sharing the
/// tests out evenly between test hosts (`PALISADE_TESTHOST_SHARDS`): rounded from a run of
/// 2026-12-07 where one was measured, guessed from the test's VM boots elsewhere; every test
/// not named here takes about 20 s.
fn expected_secs(name: &str) -> u64 {
    const LONG: &[(&str, u64)] = &[
        ("bench::", 900),
        ("cri::ten_pods", 600),
        ("vmrun::no_leftovers", 500),
        ("virtio_fs::nothing_is_left_after_20_runs", 500),
        ("oci_runtime::create_start_delete_cycles_five_at_a_time", 300),
        ("cri::", 200),
        ("podman::", 200),
        ("containerd::", 200),
        ("oci_runtime::sigkill", 160),
        ("virtio_fs::a_volume_carries_64_mib", 150),
        ("vmrun::network", 80),
        ("network::", 80),
        ("container::a_flooding", 80),
        ("vmrun::sixteen_mib", 60),
        ("vmrun::cpus_and_memory", 60),
        ("vmrun::device_read_bps", 45),
        ("oci_runtime::", 40),
        ("kvm::", 1),
        ("::errors::", 1),
    ];
    LONG.iter().find(|(part, _)| name.starts_with(part) || (part.starts_with("::") && name.contains(part))).map_or(20, |&(_, secs)| secs)
}

pub fn trial(name: &'static str, f: fn() -> TestResult) -> Trial {
    Trial::test(name, move || {
        let started = std::time::Instant::now();
        let result = f();
        palisade_e2e::note_progress();
        // Where a run's time goes, test by test (CI has a bound on the whole run).
        let waited = vmrun::take_machine_wait();
        let took = started.elapsed();
        if waited >= std::time::Duration::from_secs(1) {
            eprintln!("[e2e] {name}: {:.0} s ({:.0} s of it waiting for the machine)", took.as_secs_f64(), waited.as_secs_f64());
        } else {
            eprintln!("[e2e] {name}: {:.0} s", took.as_secs_f64());
        }
        if let Err(failed) = &result {
            // Said at once too: a test host that later wedges or crashes never reaches the
            // summary at the end of the run.
            eprintln!("[e2e] {name} failed: {}", failed.message().unwrap_or("(no message)"));
        }
        result
    })
}
