//! Helpers of the end-to-end tests: where the binaries and assets are, whether VMs
//! boot directly or inside the KVM test host, and running commands with a timeout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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
    let profile_dir = if bin_dir.file_name().is_some_and(|n| n == "deps") { bin_dir.parent().expect("target/<profile>") } else { bin_dir }.to_path_buf();
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

/// Re-executes the current test binary, with the same arguments, inside the KVM test
/// host when this host cannot boot the guests; returns when tests should run here.
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
    // A bound well inside CI's 90 minutes, so a wedged test host fails the run instead of
    // eating it (PALISADE_TESTHOST_TIMEOUT overrides).
    // A full run takes ~3 minutes there; a test host that stops making progress (QEMU's
    // emulation has wedged it) is given up on after 15 and retried like a crashed one.
    let timeout = std::env::var("PALISADE_TESTHOST_TIMEOUT").unwrap_or_else(|_| "900".into());
    // Exit status 125 is the test host itself failing (its kernel crashed: QEMU's emulation
    // of nested AMD-V does that now and then on these machines), not a test failing — the
    // tests report failures with 101. Such a run is retried in a new test host, at most
    // three times, and says so; the tests that already passed are skipped (exactly those).
    let mut passed: Vec<String> = Vec::new();
    let mut attempt = 1;
    let status = loop {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        if !passed.is_empty() {
            args.push("--exact".into());
            for name in &passed {
                args.push("--skip".into());
                args.push(name.into());
            }
        }
        let mut child = Command::new(&p.testhost)
            .arg("--timeout")
            .arg(&timeout)
            .arg("--")
            .arg(&exe)
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", p.testhost.display()));
        // Relay the report line by line, noting which tests passed.
        let stdout = child.stdout.take().expect("stdout piped");
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            println!("{line}");
            if let Some(name) = line.strip_prefix("test ").and_then(|l| l.strip_suffix(" ok")) {
                passed.push(name.trim_end_matches([' ', '.']).trim().to_string());
            }
        }
        let status = child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", p.testhost.display()));
        // 125: the test host crashed; 124: it timed out (wedged). Test failures are 101.
        if !matches!(status.code(), Some(124) | Some(125)) || attempt == 4 {
            break status;
        }
        eprintln!(
            "[e2e] the test host itself failed (exit {}, attempt {attempt} of 4): running the tests that have not passed yet in a new test host ({} passed, skipped)",
            status.code().unwrap_or(-1),
            passed.len()
        );
        attempt += 1;
    };
    std::process::exit(status.code().unwrap_or(125));
}

/// Multiplier for timeouts: emulation (the test host) is 20–50× slower than hardware.
pub fn timeout_scale() -> u32 {
    if let Some(v) = std::env::var("PALISADE_TIMEOUT_SCALE").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    if inside_testhost() { 10 } else { 1 }
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

/// Runs `cmd` feeding `stdin` (or /dev/null), killing it (and its process group) after
/// `timeout`. Never waits forever: output still held open by a stray descendant is
/// reported as an error a few seconds after the command ended.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
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
            Ok(Output { status, stdout, stderr: String::from_utf8_lossy(&stderr).into_owned(), elapsed: start.elapsed() })
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

/// Runs `vmrun ARGS…` with the VM timeout.
///
/// Inside the emulated test host only, a VM that never reached its agent because of a
/// fault of the emulator (QEMU's TCG emulation of nested AMD-V occasionally loses the
/// guest: a triple fault or a silent hang during boot, seen about once in 40 boots under
/// load) is booted once more, and the test log says so. A VM that fails to boot twice,
/// or fails in any other way, fails the test; on real hardware nothing is retried.
pub fn run_vmrun(args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
    let out = run(vmrun(args), stdin, vm_timeout())?;
    if inside_testhost() && is_emulator_boot_fault(&out) {
        eprintln!("[e2e] vmrun {args:?}: the VM was lost during boot under emulation ({}); booting it once more", out.stderr.trim());
        return run(vmrun(args), stdin, vm_timeout());
    }
    Ok(out)
}

/// vmrun's own failure (125) before the agent answered, of the kinds the emulator causes.
pub fn is_emulator_boot_fault(out: &Output) -> bool {
    out.code() == 125
        && ((out.stderr.contains("the VM failed to boot:") && out.stderr.contains("triple fault"))
            || out.stderr.contains("the guest agent did not answer within"))
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
        if comm == "vmrun" || comm.starts_with("palisade-vmm") {
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

