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
        if cmdline.contains("qemu-system") && cmdline.contains("palisade-testhost.") {
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

#[test]
fn a_test_host_whose_kernel_reports_one_grace_period_stalled_twice_is_killed_as_wedged() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The test host's kernel's console gets what RCU prints for a stalled CPU (written to
    // /dev/kmsg at its level, 3); the heartbeat goes on, as it did when one vCPU of a real
    // test host stalled. Two stalls reported once each are survived (the kernel reports a
    // stall after 21 s, which an overloaded emulator may cause); the same grace period
    // reported again, a stall of over 80 s, is not.
    let kmsg = |line: String| format!("printf '<3>%s\\n' '{line}' > /dev/kmsg; ");
    let detected = |g: u32, t: u32| {
        kmsg("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:".into())
            + &kmsg(format!("        (detected by 1, t={t} jiffies, g={g}, q=12 ncpus=2)"))
    };
    let self_detected = |g: u32, t: u32| {
        kmsg("rcu: INFO: rcu_preempt self-detected stall on CPU".into()) + &kmsg(format!("        (t={t} jiffies g={g} q=40 ncpus=2)"))
    };
    let script = format!(
        "{}{}sleep 12; echo survived two stalls; {}sleep 600",
        detected(6389, 5252),
        detected(6401, 5251),
        self_detected(6401, 21004)
    );
    let out = run(testhost(&["--timeout", "400", "--", "sh", "-c", &script]), None, Duration::from_secs(900)).unwrap();
    assert_eq!(out.code(), 123, "the stalled test host was not killed as wedged: {}", out.describe());
    assert_eq!(out.stdout_str(), "survived two stalls\n", "{}", out.describe());
    assert!(
        out.stderr.contains("testhost: the test host is wedged: its kernel reported RCU grace period 6401 stalled twice"),
        "{}",
        out.describe()
    );
    let left = qemu_processes_of_the_runner();
    assert!(left.is_empty(), "qemu processes left behind: {left:?}");
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

/// The e2e test binary cargo built beside this one (the newest `deps/e2e-<hash>`).
fn e2e_binary() -> std::path::PathBuf {
    let deps = paths().profile_dir.join("deps");
    std::fs::read_dir(&deps)
        .unwrap_or_else(|e| panic!("{}: {e}", deps.display()))
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("e2e-") && !name.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("no e2e test binary in {} (cargo test builds it)", deps.display()))
}

#[test]
fn a_test_host_stopped_mid_suite_is_noticed_within_90_s_and_the_rest_rerun() {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Instant;
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Six quick tests, one at a time: echo_hello (a VM), exit_status… (a VM), four error cases.
    let mut cmd = Command::new(e2e_binary());
    cmd.args(["vmrun::e", "--test-threads", "1"]).env("PALISADE_TESTHOST", "always").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting the e2e binary");
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    for (is_err, pipe) in
        [(false, Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>), (true, Box::new(child.stderr.take().unwrap()))]
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send((is_err, line));
            }
        });
    }
    drop(tx);
    let start = Instant::now();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut stopped_at: Option<Instant> = None;
    let mut noticed_after: Option<Duration> = None;
    let mut stopped_pids = Vec::new();
    while let Ok((is_err, line)) = rx.recv_timeout(Duration::from_secs(600).saturating_sub(start.elapsed())) {
        if passed_test(&line).as_deref() == Some("vmrun::echo_hello") && stopped_at.is_none() {
            // The first test passed: freeze the whole test host, as a wedged emulator does.
            for pid in qemu_pids_of_the_runner() {
                // SAFETY: kill(2) with a pid read from /proc just now.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                stopped_pids.push(pid);
            }
            stopped_at = Some(Instant::now());
        }
        if is_err && line.starts_with("testhost: the test host is wedged") {
            noticed_after = stopped_at.map(|t| t.elapsed());
        }
        if is_err { &mut stderr } else { &mut stdout }.push(line);
    }
    let status = child.wait().unwrap();
    let (out, err) = (stdout.join("\n"), stderr.join("\n"));
    let report = format!("exit {status}\n--- stdout\n{out}\n--- stderr\n{err}");
    assert!(!stopped_pids.is_empty(), "no test host QEMU was found to stop:\n{report}");
    let noticed = noticed_after.unwrap_or_else(|| panic!("the runner never said the test host wedged:\n{report}"));
    assert!(noticed < Duration::from_secs(90), "the wedge was noticed only after {noticed:?}:\n{report}");
    assert!(err.contains("[e2e] the test host wedged (exit 123, attempt 1 of at most 8)"), "the harness did not retry:\n{report}");
    assert_eq!(status.code(), Some(0), "the remaining tests did not pass in a new test host:\n{report}");
    // Every test passed once: the first in the stopped test host, the others in the new one.
    for name in [
        "echo_hello",
        "exit_status_env_and_workdir",
        "errors::missing_dev_kvm",
        "errors::missing_kernel",
        "errors::corrupt_kernel",
        "errors::missing_rootfs",
    ] {
        let name = format!("vmrun::{name}");
        let times = stdout.iter().filter(|l| passed_test(l).as_deref() == Some(name.as_str())).count();
        assert_eq!(times, 1, "{name} did not pass exactly once:\n{report}");
    }
    for pid in stopped_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true),
            "the stopped QEMU {pid} is still there"
        );
    }
    assert!(qemu_processes_of_the_runner().is_empty(), "qemu processes left behind: {:?}", qemu_processes_of_the_runner());
}

/// The test a libtest report line says passed (`test NAME    ... ok`).
fn passed_test(line: &str) -> Option<String> {
    Some(line.strip_prefix("test ")?.strip_suffix(" ok")?.trim_end_matches([' ', '.']).trim().to_string())
}

fn qemu_pids_of_the_runner() -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains("palisade-testhost.") {
            found.push(pid);
        }
    }
    found
}
