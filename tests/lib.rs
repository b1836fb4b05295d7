//! Helpers of the end-to-end tests: where the binaries and assets are, whether VMs
//! boot directly or inside the KVM test host, and running commands with a timeout.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod termination;
pub use termination::{forward_termination, termination_signal, ForwardedChild};

/// Where things are, from the running test binary (`target/<profile>/deps/<test>-<hash>`).
pub struct Paths {
    pub repo: PathBuf,
    pub profile_dir: PathBuf,
    pub vmrun: PathBuf,
    pub palisade_vmm: PathBuf,
    pub testhost: PathBuf,
    pub assets: PathBuf,
}

pub fn paths() -> Paths {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf();
    let exe = std::env::current_exe().expect("current_exe");
    // Test binaries live in target/<profile>/deps, binaries (the benchmarks) in target/<profile>.
    let bin_dir = exe.parent().expect("the executable's directory");
    let profile_dir =
        if bin_dir.file_name().is_some_and(|n| n == "deps") { bin_dir.parent().expect("target/<profile>") } else { bin_dir }.to_path_buf();
    Paths {
        vmrun: profile_dir.join("vmrun"),
        palisade_vmm: profile_dir.join("palisade-vmm"),
        testhost: repo.join("scripts/testhost"),
        assets: profile_dir.parent().expect("target").join("palisade"),
        profile_dir,
        repo,
    }
}

/// How VMs boot in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This host's /dev/kvm boots standard guests (VT-x/AMD-V), or we are in the test host.
    Direct,
    /// VMs boot only inside the KVM test host (this host's /dev/kvm is PVM, or forced).
    TestHost,
}

pub fn inside_testhost() -> bool {
    std::env::var("PALISADE_INSIDE_TESTHOST").as_deref() == Ok("1")
}

/// `PALISADE_TESTHOST=always|never|auto` (default auto: the test host when this host
/// cannot boot a standard guest).
pub fn mode() -> Mode {
    if inside_testhost() {
        return Mode::Direct;
    }
    match std::env::var("PALISADE_TESTHOST").as_deref() {
        Ok("always") => Mode::TestHost,
        Ok("never") => Mode::Direct,
        _ => match palisade_vmm::host::probe_kvm_host() {
            palisade_vmm::host::KvmHostKind::Hardware => Mode::Direct,
            _ => Mode::TestHost,
        },
    }
}

/// Re-executes the current binary, with the same arguments, inside one KVM test host of
/// all this host's CPUs when this host cannot boot the guests; returns when it should run
/// here. For the benchmark binaries; the e2e tests use [`run_tests_in_testhosts_if_needed`].
pub fn reexec_in_testhost_if_needed() {
    if mode() == Mode::Direct {
        return;
    }
    let p = paths();
    let exe = std::env::current_exe().expect("current_exe");
    eprintln!(
        "[e2e] this host's /dev/kvm cannot boot a standard guest: running {} inside the KVM test host ({})",
        exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        p.testhost.display()
    );
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let code = run_in_testhosts_with_retries(&TestHostRun { exe, args, only: None, cpus: None, label: String::new() });
    std::process::exit(code);
}

/// One shard of a run: a binary and its arguments, run in one test host after another
/// until it ends by itself ([`run_in_testhosts_with_retries`]).
struct TestHostRun {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// The tests this shard runs, exactly ([`ONLY`]); `None`: every test the arguments select.
    only: Option<Vec<String>>,
    /// The test host's vCPUs (`--cpus`); `None`: scripts/testhost's default.
    cpus: Option<u32>,
    /// How its lines are told apart from other shards' ("" when it is the only one).
    label: String,
}

/// The e2e tests: when this host cannot boot the guests, runs `tests` (those `args`
/// select) inside KVM test hosts and exits with their status; returns when they should run
/// here (on a VT-x/AMD-V host, inside a test host, or to `--list` them).
///
/// By default one test host of all this host's CPUs runs them (libtest: as many at once as
/// it has vCPUs). `PALISADE_TESTHOST_SHARDS=N` splits them instead into N shards, each run
/// one at a time in its own test host of **one vCPU**, the shards side by side, each shard
/// with the tests [`balance`] gives it by their expected length (`expected_secs`). Every
/// test-host kernel crash read so far began with an interrupt one of its vCPUs sent another
/// (docs/testing.md), which a test host of one vCPU never sends; but there three VMs booting
/// at once took 4 times as long as one, and five did not boot within 240 s, so the tests
/// that boot five at once fail there, and sharding is not the default.
pub fn run_tests_in_testhosts_if_needed(
    args: &libtest_mimic::Arguments,
    tests: &[libtest_mimic::Trial],
    expected_secs: impl Fn(&str) -> u64,
) {
    if mode() == Mode::Direct || args.list {
        return;
    }
    let p = paths();
    let exe = std::env::current_exe().expect("current_exe");
    let raw_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let selected: Vec<(String, u64)> =
        tests.iter().filter(|t| selected_by(args, t.name())).map(|t| (t.name().to_string(), expected_secs(t.name()))).collect();
    let shards = testhost_shards().clamp(1, selected.len().max(1));
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if shards > 1 {
        eprintln!(
            "[e2e] this host's /dev/kvm cannot boot a standard guest: running {} test(s) of {name} inside {shards} KVM test hosts of one vCPU side by side ({})",
            selected.len(),
            p.testhost.display()
        );
    } else {
        eprintln!(
            "[e2e] this host's /dev/kvm cannot boot a standard guest: running {name} inside the KVM test host ({})",
            p.testhost.display()
        );
    }
    let runs: Vec<TestHostRun> = balance(&selected, shards)
        .into_iter()
        .enumerate()
        .map(|(i, names)| TestHostRun {
            exe: exe.clone(),
            args: raw_args.clone(),
            only: Some(names),
            cpus: (shards > 1 && std::env::var("PALISADE_TESTHOST_CPUS").is_err()).then_some(1),
            label: if shards > 1 { format!(" (shard {}/{shards})", i + 1) } else { String::new() },
        })
        .collect();
    let codes: Vec<i32> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs.iter().map(|run| scope.spawn(move || run_in_testhosts_with_retries(run))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(101)).collect()
    });
    // The first failure decides: a test that failed (101) before a test host that did.
    let code = codes.iter().copied().find(|&c| c == 101).or_else(|| codes.iter().copied().find(|&c| c != 0)).unwrap_or(0);
    if shards > 1 {
        eprintln!("[e2e] the {shards} shards ended with {codes:?}");
    }
    std::process::exit(code);
}

/// Whether libtest's filter and `--skip`s in `args` select the test `name` (as
/// libtest-mimic decides it, so a shard's list and the run inside agree).
pub fn selected_by(args: &libtest_mimic::Arguments, name: &str) -> bool {
    let matches = |pattern: &str| if args.exact { name == pattern } else { name.contains(pattern) };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|s| matches(s))
}

/// How many test hosts of one vCPU run side by side: `PALISADE_TESTHOST_SHARDS`, else 1
/// (then one test host of scripts/testhost's default size runs every test).
pub fn testhost_shards() -> usize {
    std::env::var("PALISADE_TESTHOST_SHARDS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1)
}

/// Splits tests (name, expected seconds) into `shards` lists of about the same expected
/// length: the longest first, each to the shard with the least so far; each list in the
/// tests' own order.
pub fn balance(tests: &[(String, u64)], shards: usize) -> Vec<Vec<String>> {
    let shards = shards.max(1);
    let mut order: Vec<usize> = (0..tests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tests[i].1));
    let mut load = vec![0u64; shards];
    let mut assigned = vec![Vec::new(); shards];
    for i in order {
        let lightest = (0..shards).min_by_key(|&s| load[s]).unwrap_or(0);
        load[lightest] += tests[i].1;
        assigned[lightest].push(i);
    }
    assigned
        .into_iter()
        .map(|mut idx| {
            idx.sort_unstable();
            idx.into_iter().map(|i| tests[i].0.clone()).collect()
        })
        .collect()
}

/// Runs one shard in a test host, and in a new one after each that failed, and returns
/// the exit status of the last.
///
/// A test host that itself failed (exit 123 wedged, 124 timed out, 125 crashed: QEMU's
/// emulation of nested AMD-V does that now and then on these machines) is not a test
/// failing — the tests report failures with 101. Such a run is retried in a new test host
/// and says so; the tests that already passed are skipped (exactly those). It is retried
/// while the test hosts get somewhere (a test passed in one of the last three), at most
/// [`MAX_TESTHOST_ATTEMPTS`] in all: the emulator's crashes come at random, a few in a long
/// suite, so a fixed small count failed suites whose every test passed.
fn run_in_testhosts_with_retries(run: &TestHostRun) -> i32 {
    let p = paths();
    // A bound well inside CI's 90 minutes, so a test host that runs but whose tests make no
    // progress fails the run instead of eating it (PALISADE_TESTHOST_TIMEOUT overrides); the
    // whole suite takes 30 to 45 minutes in one test host. A test host that stops making
    // progress altogether (QEMU's emulation has wedged it) is noticed by its missing
    // heartbeat within about a minute (scripts/testhost, PALISADE_TESTHOST_WEDGE_SECS), and
    // one with a stalled CPU by its kernel's RCU stall reports within about 90 s.
    let timeout = std::env::var("PALISADE_TESTHOST_TIMEOUT").unwrap_or_else(|_| "3000".into());
    let label = &run.label;
    let mut passed: Vec<String> = Vec::new();
    let mut attempt = 1;
    // How many tests had passed when each test host started.
    let mut passed_at_start: Vec<usize> = Vec::new();
    loop {
        passed_at_start.push(passed.len());
        // The same arguments (a filter keeps its meaning); the tests that passed are named
        // exactly in the environment ([`ALREADY_PASSED`]), not as `--skip`s, which would
        // match as substrings (or make a filter exact with `--exact`).
        let mut cmd = Command::new(&p.testhost);
        cmd.arg("--timeout").arg(&timeout);
        if let Some(cpus) = run.cpus {
            cmd.arg("--cpus").arg(cpus.to_string());
        }
        cmd.arg("--").arg(&run.exe).args(&run.args).env(ALREADY_PASSED, passed.join("\n")).stdout(Stdio::piped());
        if let Some(only) = &run.only {
            cmd.env(ONLY, only.join("\n"));
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", p.testhost.display()));
        let forwarded = forward_termination(&child);
        // Relay the report line by line, noting which tests passed.
        let stdout = child.stdout.take().expect("stdout piped");
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            println!("{line}");
            if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ok")) {
                passed.push(name.trim_end_matches([' ', '.']).trim().to_string());
            }
        }
        let status = child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", p.testhost.display()));
        drop(forwarded);
        if let Some(signal) = termination_signal() {
            eprintln!("[e2e] stopped by signal {signal}: the test host{label} was told to end, and no other starts");
            return 128 + signal;
        }
        let code = status.code().unwrap_or(125);
        let Some(failure) = testhost_failure(status.code()) else { return code };
        let stuck = testhosts_stuck(&passed_at_start, passed.len());
        if attempt == MAX_TESTHOST_ATTEMPTS || stuck {
            eprintln!(
                "[e2e] the test host{label} {failure} (exit {code}, attempt {attempt}): giving up{}",
                if stuck { format!(" (no test passed in the last {STUCK_AFTER_TESTHOSTS} test hosts)") } else { String::new() }
            );
            return code;
        }
        eprintln!(
            "[e2e] the test host{label} {failure} (exit {code}, attempt {attempt} of at most {MAX_TESTHOST_ATTEMPTS}): running the tests that have not passed yet in a new test host ({} passed, skipped)",
            passed.len(),
        );
        attempt += 1;
    }
}

/// How many test hosts one run of the e2e binary may use (see [`reexec_in_testhost_if_needed`]).
pub const MAX_TESTHOST_ATTEMPTS: u32 = 8;

/// A run gives up when this many test hosts in a row failed without a test passing.
pub const STUCK_AFTER_TESTHOSTS: usize = 3;

/// Whether the test hosts of a run are stuck: the last [`STUCK_AFTER_TESTHOSTS`] of them
/// (`passed_at_start` holds how many tests had passed when each started) failed without a
/// test passing, `passed_now` counting those that have passed so far.
pub fn testhosts_stuck(passed_at_start: &[usize], passed_now: usize) -> bool {
    passed_at_start.len() >= STUCK_AFTER_TESTHOSTS && passed_at_start[passed_at_start.len() - STUCK_AFTER_TESTHOSTS] == passed_now
}

/// The environment variable that names (one per line, exactly) the tests that already
/// passed in an earlier test host of this run; [`without_already_passed`] drops them.
pub const ALREADY_PASSED: &str = "PALISADE_E2E_ALREADY_PASSED";

/// The environment variable that names (one per line, exactly) the tests of this test
/// host's shard ([`run_tests_in_testhosts_if_needed`]); unset: every test.
pub const ONLY: &str = "PALISADE_E2E_ONLY";

/// The tests of this shard ([`ONLY`]), less those [`ALREADY_PASSED`] names.
pub fn without_already_passed(tests: Vec<libtest_mimic::Trial>) -> Vec<libtest_mimic::Trial> {
    let passed = std::env::var(ALREADY_PASSED).unwrap_or_default();
    let passed: std::collections::HashSet<&str> = passed.lines().filter(|l| !l.is_empty()).collect();
    let only = std::env::var(ONLY).ok();
    let only: Option<std::collections::HashSet<&str>> = only.as_deref().map(|o| o.lines().filter(|l| !l.is_empty()).collect());
    tests.into_iter().filter(|t| !passed.contains(t.name()) && only.as_ref().is_none_or(|o| o.contains(t.name()))).collect()
}

/// What scripts/testhost's exit status says about the test host itself, when it failed:
/// 123 wedged (no heartbeat, or a CPU stalled), 124 timed out, 125 crashed (or could not start).
pub fn testhost_failure(code: Option<i32>) -> Option<&'static str> {
    match code {
        Some(123) => Some("wedged"),
        Some(124) => Some("timed out"),
        Some(125) => Some("crashed"),
        _ => None,
    }
}

/// Multiplier for timeouts: emulation (the test host) is 20–50× slower than hardware.
pub fn timeout_scale() -> u32 {
    if let Some(v) = std::env::var("PALISADE_TIMEOUT_SCALE").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    if inside_testhost() {
        10
    } else {
        1
    }
}

/// A generous bound for one VM run (to catch hangs, not to measure speed).
pub fn vm_timeout() -> Duration {
    Duration::from_secs(30 * u64::from(timeout_scale()))
}

/// What a finished command gave.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
    /// How many times the VM was booted ([`boot_retrying`]); 1 for other commands.
    pub boots: u32,
}

impl Output {
    /// Exit code as a shell reports it (128 + signal when killed).
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status.code().unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// A one-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        let out = self.stdout_str();
        let out = if out.len() > 2000 { format!("{}… ({} bytes)", &out[..2000], out.len()) } else { out };
        format!("exit {} after {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code(), self.elapsed, out, self.stderr)
    }
}

/// `cmd` run on a terminal of its own (util-linux `script`, as a person's shell would give
/// it one): what it prints comes back as stdout, its exit status as script's.
pub fn on_a_terminal(cmd: &Command) -> Command {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(quote).collect();
    let mut script = Command::new("script");
    script.arg("-qec").arg(line.join(" ")).arg("/dev/null");
    script
}

/// Runs `cmd` feeding `stdin` (or /dev/null), killing it (and its process group) after
/// `timeout`. Never waits forever: output still held open by a stray descendant is
/// reported as an error a few seconds after the command ended.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let input = stdin.map(<[u8]>::to_vec);
    let mut child_stdin = child.stdin.take();
    std::thread::spawn(move || {
        if let (Some(mut s), Some(data)) = (child_stdin.take(), input) {
            let _ = s.write_all(&data);
        }
    });
    let reader = |mut from: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = from.read_to_end(&mut v);
            let _ = tx.send(v);
        });
        rx
    };
    let out_rx = reader(Box::new(child.stdout.take().expect("stdout piped")));
    let err_rx = reader(Box::new(child.stderr.take().expect("stderr piped")));
    let pgid = child.id() as i32;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            // SAFETY: kill(2) on the process group this function created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            let stderr = err_rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            bail!("{cmd:?} did not finish within {timeout:?}; stderr so far:\n{}", String::from_utf8_lossy(&stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let grace = Duration::from_secs(10);
    let stdout = out_rx.recv_timeout(grace);
    let stderr = err_rx.recv_timeout(grace);
    match (stdout, stderr) {
        (Ok(stdout), Ok(stderr)) => {
            Ok(Output { status, stdout, stderr: String::from_utf8_lossy(&stderr).into_owned(), elapsed: start.elapsed(), boots: 1 })
        }
        _ => {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            bail!("{cmd:?} exited ({status}) but its stdout/stderr stayed open {grace:?} later: a process it started is still running")
        }
    }
}

/// `vmrun ARGS…`
pub fn vmrun<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(paths().vmrun);
    cmd.args(args);
    cmd
}

/// Runs `vmrun ARGS…` with the VM timeout, through [`boot_retrying`].
pub fn run_vmrun(args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    boot_retrying(&format!("vmrun {args:?}"), || run(vmrun(args), stdin, vm_timeout()))
}

/// What a VM-booting run gave, as far as the lost-boot decision needs it.
pub trait VmOutcome {
    /// The exit code of vmrun (or of whatever booted the VM).
    fn exit_code(&self) -> i32;
    /// Where it said why it failed (its stderr, or the terminal's text).
    fn diagnostics(&self) -> String;
    /// Records how many boots it took.
    fn set_boots(&mut self, boots: u32);
}

impl VmOutcome for Output {
    fn exit_code(&self) -> i32 {
        self.code()
    }
    fn diagnostics(&self) -> String {
        self.stderr.clone()
    }
    fn set_boots(&mut self, boots: u32) {
        self.boots = boots;
    }
}

/// The most boots [`boot_retrying`] makes of one run.
pub const MAX_BOOTS: u32 = 3;

/// The one protection every VM-booting test goes through. Inside the emulated test host
/// only, a VM lost in one of the emulator's known ways ([`lost_boot_fault`]: QEMU's TCG
/// emulation of nested AMD-V occasionally loses a guest, about once in 40 boots, more often
/// when several boot at once) is booted again, up to [`MAX_BOOTS`] boots, and the test log
/// names each fault. A VM lost every time, or a run that failed in any other way, is
/// returned as it is (and fails its test); on real hardware nothing is retried. `what`
/// names the run in the log.
pub fn boot_retrying<T: VmOutcome, E>(what: &str, mut boot: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut out = boot()?;
    let mut boots = 1;
    while let Some(fault) = lost_boot_fault(inside_testhost(), boots, out.exit_code(), &out.diagnostics()) {
        eprintln!(
            "[e2e] {what}: the VM was lost under emulation ({fault}: {}); booting it once more",
            out.diagnostics().trim().lines().last().unwrap_or_default()
        );
        out = boot()?;
        boots += 1;
        out.set_boots(boots);
    }
    Ok(out)
}

/// Whether boot number `boot` of a run that exited with `code`, saying `text`, is a VM lost
/// by the emulator that is booted once more: only inside the test host, only before the
/// last of [`MAX_BOOTS`], only for vmrun's own failure (125) of the kinds the emulator causes.
/// Returns the fault's name.
pub fn lost_boot_fault(in_testhost: bool, boot: u32, code: i32, text: &str) -> Option<&'static str> {
    if !in_testhost || boot >= MAX_BOOTS || code != 125 {
        return None;
    }
    if text.contains("the VM failed to boot:") && text.contains("triple fault") {
        Some("triple fault during boot")
    } else if text.contains("the VM ended before the command finished:") && text.contains("triple fault") {
        // Seen after the agent had answered, while the command was being set up.
        Some("triple fault while running")
    } else if text.contains("the VM ended before the container was created:") && text.contains("triple fault") {
        // palisade create: the guest died while its container was being made.
        Some("triple fault while creating the container")
    } else if text.contains("the VM ended before the container started:") && text.contains("triple fault") {
        // palisade start: the guest died between create and start.
        Some("triple fault before the container started")
    } else if text.contains("the guest agent did not answer within") {
        Some("no agent answer during boot")
    } else if text.contains("the guest stopped answering") {
        Some("the guest stopped answering")
    } else if text.contains("the guest agent did not answer ") && text.contains(" within ") {
        // A request to a guest that had answered before: seen in containerd's CRI path
        // ("did not answer create-container within 120 s") while two pods ran.
        Some("no agent answer to a request")
    } else {
        None
    }
}

/// What a run of vmrun on a pseudo-terminal gave: its exit code and everything the
/// terminal showed (stdout and stderr together, as on a terminal).
#[derive(Debug)]
pub struct PtyOutput {
    pub code: i32,
    pub text: String,
    pub boots: u32,
}

impl VmOutcome for PtyOutput {
    fn exit_code(&self) -> i32 {
        self.code
    }
    fn diagnostics(&self) -> String {
        self.text.clone()
    }
    fn set_boots(&mut self, boots: u32) {
        self.boots = boots;
    }
}

/// Opens a pty pair with the given window size: (master, slave).
fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two fds into the provided integers; null name and termios
    // are allowed, and `ws` is a valid winsize that outlives the call.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if rc != 0 {
        bail!("openpty: {}", std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Runs `cmd` (vmrun) on a 33×77 pty as its controlling terminal, through
/// [`boot_retrying`]; `input` is typed once `wait_for` has appeared on the terminal (at
/// once without it).
pub fn run_vmrun_on_pty(cmd: impl Fn() -> Command, wait_for: Option<&str>, input: &[u8]) -> Result<PtyOutput> {
    boot_retrying("vmrun on a pty", || on_pty(cmd(), wait_for, input))
}

fn on_pty(mut cmd: Command, wait_for: Option<&str>, input: &[u8]) -> Result<PtyOutput> {
    use std::os::unix::process::CommandExt;
    let (master, slave) = openpty(33, 77)?;
    let s = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).context("duplicating the pty");
    cmd.stdin(s(&slave)?).stdout(s(&slave)?).stderr(s(&slave)?);
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the pty slave here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    drop(slave);
    let mut file = std::fs::File::from(master);
    let mut writer = file.try_clone().context("duplicating the pty")?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + vm_timeout();
    let mut seen = Vec::new();
    let mut sent = wait_for.is_none();
    if sent {
        writer.write_all(input).context("typing on the pty")?;
    }
    loop {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.extend_from_slice(&chunk);
        }
        if !sent && String::from_utf8_lossy(&seen).contains(wait_for.unwrap_or_default()) {
            writer.write_all(input).context("typing on the pty")?;
            sent = true;
        }
        if let Some(status) = child.try_wait()? {
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend_from_slice(&chunk);
            }
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return Ok(PtyOutput { code, text: String::from_utf8_lossy(&seen).into_owned(), boots: 1 });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("vmrun on a pty did not finish within {:?}; the terminal so far: {:?}", vm_timeout(), String::from_utf8_lossy(&seen));
        }
    }
}

/// Processes whose command name is one of ours, as `pid name` strings.
pub fn palisade_processes() -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        // comm is cut to 15 bytes: `palisade-sandbo` is the sandbox supervisor.
        if comm == "vmrun" || comm.starts_with("palisade-vmm") || comm == "virtiofsd" || comm.starts_with("palisade-sandbo") {
            found.push(format!("{pid} {comm}"));
        }
    }
    found
}

/// Everything a VM run may leave behind: our processes, and the entries of the
/// directories where runs keep sockets, logs and images.
/// This process's cgroup under the hierarchy mounted at `root`, from /proc/self/cgroup.
fn own_cgroup(root: &str) -> Option<PathBuf> {
    let controller = root.rsplit('/').next()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            "cgroup" => controllers.is_empty(),
            "unified" => controllers.is_empty(),
            c => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| Path::new(root).join(path.trim_start_matches('/')))
    })
}

pub fn leftovers_snapshot() -> Vec<String> {
    let mut items = palisade_processes();
    // Shared directories (other programs write there too): only what vmrun names
    // (`vmrun-XXXXXX` run directories) or what carries the project's name.
    let mut shared = vec![std::env::temp_dir()];
    if let Ok(x) = std::env::var("XDG_RUNTIME_DIR") {
        shared.push(PathBuf::from(x));
    }
    for dir in shared {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("vmrun-") || name.starts_with("palisade") {
                items.push(entry.path().display().to_string());
            }
        }
    }
    // Palisade's own directories: everything in them.
    let mut dirs = vec![
        PathBuf::from("/run/palisade"),
        PathBuf::from("/run/palisade/vmrun"),
        // The VMM's jails and their cgroups (pure v2, the v2 tree of a hybrid host, and
        // the v1 controllers).
        PathBuf::from("/run/palisade/jail"),
    ];
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu"] {
        dirs.push(Path::new(root).join("palisade"));
        // On v1 the VM's cgroup is made under the caller's own cgroup.
        if let Some(own) = own_cgroup(root) {
            dirs.push(own.join("palisade"));
        }
    }
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            items.push(entry.path().display().to_string());
        }
    }
    items.sort();
    items
}

/// Seconds since the Unix epoch at which a test last finished (or the run started).
static LAST_PROGRESS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Records that a test finished (see [`watch_for_stalls`]).
pub fn note_progress() {
    LAST_PROGRESS.store(now_secs(), std::sync::atomic::Ordering::Relaxed);
}

/// Starts a thread that, whenever no test has finished for `after`, prints to stderr
/// what is still running: the processes of the tests (state, wait channel, age) and the
/// last console lines of every VM whose run directory still exists. A stalled run then
/// says where it stalls before the test host's timeout kills it. Once per stall.
pub fn watch_for_stalls(after: Duration) {
    note_progress();
    let spawned = std::thread::Builder::new().name("stall-watch".into()).spawn(move || {
        let mut reported_at = 0;
        loop {
            std::thread::sleep(Duration::from_secs(15));
            let last = LAST_PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
            if now_secs().saturating_sub(last) >= after.as_secs() && reported_at != last {
                reported_at = last;
                eprintln!("{}", stall_report(now_secs().saturating_sub(last)));
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("[e2e] cannot start the stall watch: {e}");
    }
}

fn stall_report(idle_secs: u64) -> String {
    let mut out = format!("[e2e] no test has finished for {idle_secs} s; still running:\n");
    let ps = Command::new("ps").args(["-eo", "pid,ppid,etimes,stat,wchan:28,args", "--sort", "pid"]).output();
    match ps {
        Ok(o) => {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let interesting = ["PID", "vmrun", "palisade", "e2e-", "crun", "sleep", "sh -c"];
                if interesting.iter().any(|w| line.contains(w)) && !line.contains(" ps -eo ") {
                    out.push_str(&format!("[e2e]   {}\n", line.chars().take(220).collect::<String>()));
                }
            }
        }
        Err(e) => out.push_str(&format!("[e2e]   (ps: {e})\n")),
    }
    let mut bases = vec![PathBuf::from("/run/palisade/vmrun"), std::env::temp_dir()];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        bases.insert(0, PathBuf::from(x));
    }
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        for entry in entries.flatten() {
            let log = entry.path().join("serial.log");
            let Ok(text) = std::fs::read_to_string(&log) else { continue };
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("[e2e]   {} (last lines):\n", log.display()));
            for line in &lines[lines.len().saturating_sub(8)..] {
                out.push_str(&format!("[e2e]     {}\n", line.chars().take(200).collect::<String>()));
            }
        }
    }
    out
}

#[cfg(test)]
mod lost_boot_tests {
    use super::*;

    const TRIPLE: &str = "vmrun: the VM failed to boot: vCPU 0: triple fault (the guest hit an exception it could not handle)";

    #[test]
    fn a_lost_boot_is_retried_once_inside_the_test_host_and_never_on_hardware() {
        assert_eq!(lost_boot_fault(true, 1, 125, TRIPLE), Some("triple fault during boot"));
        // Real VT-x/AMD-V: a triple fault is a bug to see, not an emulator fault to hide.
        assert_eq!(lost_boot_fault(false, 1, 125, TRIPLE), None);
        // Booted once more already: the second loss fails the test.
        assert_eq!(lost_boot_fault(true, 2, 125, TRIPLE), Some("triple fault during boot"));
        assert_eq!(lost_boot_fault(true, MAX_BOOTS, 125, TRIPLE), None);
        let silent = "vmrun: the guest agent did not answer within 120 s (PALISADE_BOOT_TIMEOUT_SECS): vsock port 1024";
        assert_eq!(lost_boot_fault(true, 1, 125, silent), Some("no agent answer during boot"));
        let stopped = "vmrun: the guest stopped answering (the guest agent did not answer ping within 120 s); the VM was stopped";
        assert_eq!(lost_boot_fault(true, 1, 125, stopped), Some("the guest stopped answering"));
        let request = "CRI StartContainer: Unknown: failed to create containerd task: OCI runtime create failed: the guest agent \
                       did not answer create-container within 120 s (PALISADE_REQUEST_TIMEOUT_SECS): unknown";
        assert_eq!(lost_boot_fault(true, 1, 125, request), Some("no agent answer to a request"));
        assert_eq!(lost_boot_fault(false, 1, 125, stopped), None);
        let running =
            "vmrun: the VM ended before the command finished: vCPU 1: triple fault (the guest hit an exception it could not handle)";
        assert_eq!(lost_boot_fault(true, 1, 125, running), Some("triple fault while running"));
        let creating = "palisade: sandbox 1a2b: the VM ended before the container was created: vCPU 0: triple fault (the guest hit \
                        an exception it could not handle) (agent: agent protocol: connection closed by peer)";
        assert_eq!(lost_boot_fault(true, 1, 125, creating), Some("triple fault while creating the container"));
        let starting = "palisade: container cycle-2-2: start: the VM ended before the container started: vCPU 0: triple fault \
                        (the guest hit an exception it could not handle) (agent protocol: connection closed by peer)";
        assert_eq!(lost_boot_fault(true, 1, 125, starting), Some("triple fault before the container started"));
        let panicked = "palisade: sandbox 1a2b: the VM ended before the container was created: guest kernel panic: Oops";
        assert_eq!(lost_boot_fault(true, 1, 125, panicked), None, "only the emulator's triple faults are booted again");
    }

    #[test]
    fn other_failures_are_not_retried() {
        // The command's own status, however it ends.
        assert_eq!(lost_boot_fault(true, 1, 1, TRIPLE), None);
        assert_eq!(lost_boot_fault(true, 1, 137, ""), None);
        // vmrun's other failures: a guest kernel panic, a missing kernel.
        assert_eq!(lost_boot_fault(true, 1, 125, "vmrun: the VM ended before the command finished: the guest kernel panicked"), None);
        assert_eq!(lost_boot_fault(true, 1, 125, "vmrun: kernel /nonexistent/vmlinux: No such file"), None);
    }

    struct Fake(i32, &'static str, u32);
    impl VmOutcome for Fake {
        fn exit_code(&self) -> i32 {
            self.0
        }
        fn diagnostics(&self) -> String {
            self.1.into()
        }
        fn set_boots(&mut self, boots: u32) {
            self.2 = boots;
        }
    }

    #[test]
    fn boot_retrying_boots_once_outside_the_test_host() {
        // Outside the test host (this host test), a lost boot is returned as it is.
        if inside_testhost() {
            return;
        }
        let mut boots = 0;
        let out = boot_retrying::<_, ()>("test", || {
            boots += 1;
            Ok(Fake(125, TRIPLE, 1))
        })
        .unwrap();
        assert_eq!((boots, out.2, out.0), (1, 1, 125));
    }
}

#[cfg(test)]
mod stall_report_tests {
    use super::*;

    #[test]
    fn the_stall_report_names_the_idle_time_and_lists_processes() {
        let report = stall_report(421);
        assert!(report.starts_with("[e2e] no test has finished for 421 s; still running:"), "{report}");
        // The header of `ps`, and this test binary (its name starts with the crate's).
        assert!(report.contains("PID") && report.contains("STAT"), "{report}");
    }
}

#[cfg(test)]
mod testhost_retry_tests {
    use super::*;

    #[test]
    fn a_run_is_stuck_only_after_three_test_hosts_in_a_row_passed_nothing() {
        // One or two failed test hosts are never stuck.
        assert!(!testhosts_stuck(&[0], 0));
        assert!(!testhosts_stuck(&[0, 0], 0));
        // Three that passed nothing: stuck.
        assert!(testhosts_stuck(&[0, 0, 0], 0));
        // The CI run of 2026-12-06: 42 passed in the first two, one in the third, then two
        // test hosts with none — not stuck yet (it used to give up here).
        assert!(!testhosts_stuck(&[0, 30, 42, 43, 43], 43));
        assert!(testhosts_stuck(&[0, 30, 42, 43, 43, 43], 43));
        // A pass in the last of three counts.
        assert!(!testhosts_stuck(&[5, 5, 5], 6));
    }

    fn named(tests: &[(&str, u64)]) -> Vec<(String, u64)> {
        tests.iter().map(|&(n, s)| (n.to_string(), s)).collect()
    }

    #[test]
    fn shards_get_about_the_same_expected_time_and_keep_the_tests_order() {
        let tests = named(&[("a", 30), ("bench", 600), ("b", 30), ("cri::ten", 400), ("c", 30), ("podman", 200), ("d", 30)]);
        let shards = balance(&tests, 2);
        // 660 s each: the longest first (bench, cri, podman), then the short ones in turn.
        assert_eq!(
            shards,
            vec![vec!["a".to_string(), "bench".into(), "c".into()], vec!["b".into(), "cri::ten".into(), "podman".into(), "d".into()]]
        );
        // Every test in exactly one shard, whatever the count.
        for n in 1..=9 {
            let shards = balance(&tests, n);
            assert_eq!(shards.len(), n);
            let mut all: Vec<String> = shards.concat();
            all.sort();
            let mut want: Vec<String> = tests.iter().map(|t| t.0.clone()).collect();
            want.sort();
            assert_eq!(all, want, "{n} shards");
        }
        assert_eq!(balance(&[], 2), vec![Vec::<String>::new(), Vec::new()]);
    }

    #[test]
    fn a_shard_is_chosen_among_the_tests_libtests_filter_and_skips_select() {
        use libtest_mimic::Arguments;
        let args = |a: &[&str]| Arguments::from_iter(std::iter::once("e2e").chain(a.iter().copied()));
        assert!(selected_by(&args(&[]), "vmrun::echo_hello"));
        assert!(selected_by(&args(&["vmrun::"]), "vmrun::echo_hello"));
        assert!(!selected_by(&args(&["cri::"]), "vmrun::echo_hello"));
        assert!(!selected_by(&args(&["--skip", "echo"]), "vmrun::echo_hello"));
        assert!(!selected_by(&args(&["--exact", "vmrun::echo"]), "vmrun::echo_hello"));
        assert!(selected_by(&args(&["--exact", "vmrun::echo_hello"]), "vmrun::echo_hello"));
    }
}
