//! Tests of the KVM test host runner (scripts/testhost) itself. They run on this host.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use palisade_e2e::{paths, run};

/// The runner's tests boot one test host each; one at a time keeps the process checks exact.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn testhost(args: &[&str]) -> Command {
    let mut cmd = Command::new(paths().testhost);
    cmd.args(args);
    cmd
}

fn qemu_processes_of_the_runner() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains("palisade-testhost.") {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn runs_a_command_with_kvm_inside_and_returns_its_status() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = run(testhost(&["--", "sh", "-c", "uname -r; ls -l /dev/kvm"]), None, Duration::from_secs(600)).unwrap();
    assert_eq!(out.code(), 0, "{}", out.describe());
    let stdout = out.stdout_str();
    let installed: Vec<String> = std::fs::read_dir("/boot")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    let first = stdout.lines().next().unwrap_or_default();
    assert!(installed.iter().any(|v| v == first), "test host kernel {first:?} is not one of /boot's {installed:?}\n{}", out.describe());
    let kvm = stdout.lines().find(|l| l.ends_with("/dev/kvm")).unwrap_or_default();
    assert!(kvm.starts_with('c'), "/dev/kvm is not a character device inside the test host:\n{}", out.describe());
}

#[test]
fn returns_a_nonzero_status_and_separates_stdout_from_stderr() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cwd = std::env::current_dir().unwrap();
    let mut cmd = testhost(&["--", "sh", "-c", "pwd; echo to-stderr >&2; echo \"$PALISADE_E2E_MARK\"; exit 42"]);
    cmd.env("PALISADE_E2E_MARK", "env-arrives");
    let out = run(cmd, None, Duration::from_secs(600)).unwrap();
    assert_eq!(out.code(), 42, "{}", out.describe());
    assert_eq!(out.stdout_str(), format!("{}\nenv-arrives\n", cwd.display()), "{}", out.describe());
    assert!(out.stderr.contains("to-stderr"), "{}", out.describe());
}

#[test]
fn kills_a_hanging_command_at_the_timeout_and_leaves_no_qemu() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = run_directories();
    let out = run(testhost(&["--timeout", "40", "--", "sleep", "600"]), None, Duration::from_secs(600)).unwrap();
    assert_eq!(out.code(), 124, "{}", out.describe());
    assert!(out.stderr.contains("timed out after 40s"), "{}", out.describe());
    assert!(out.elapsed < Duration::from_secs(300), "the runner did not stop at its timeout: {}", out.describe());
    let left = qemu_processes_of_the_runner();
    assert!(left.is_empty(), "qemu processes left behind: {left:?}");
    let tmp_left: Vec<_> = run_directories().difference(&before).cloned().collect();
    assert!(tmp_left.is_empty(), "run directories left behind: {tmp_left:?}");
}

/// The test host's run directories (`mktemp -d palisade-testhost.XXXXXX`) in the temporary
/// directory. Files with that prefix (a lock file some users keep there) are not run directories.
fn run_directories() -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("palisade-testhost."))
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}
