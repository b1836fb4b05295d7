//! `vmrun`: a command in a micro-VM behaves like a local command.

use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use libtest_mimic::Trial;
use palisade_e2e::{inside_testhost, leftovers_snapshot, paths, run, run_vmrun, run_vmrun_on_pty, vmrun, Output};
use sha2::{Digest, Sha256};

use crate::{ensure, trial, TestResult};

/// VM tests share the machine; the leak test needs it to itself.
static MACHINE: RwLock<()> = RwLock::new(());

thread_local! {
    /// How long this thread has waited for [`MACHINE`] since [`take_machine_wait`] last ran.
    static MACHINE_WAIT: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

fn waited<G>(acquire: impl FnOnce() -> G) -> G {
    let started = std::time::Instant::now();
    let guard = acquire();
    MACHINE_WAIT.with(|w| w.set(w.get() + started.elapsed()));
    guard
}

/// The machine, shared with the other tests that share it.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    waited(|| MACHINE.read().unwrap_or_else(|e| e.into_inner()))
}

/// The machine to this test alone (a leak test: nothing else may start or end VMs meanwhile).
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    waited(|| MACHINE.write().unwrap_or_else(|e| e.into_inner()))
}

/// How long this thread waited for the machine since the last call (a test's time, less it,
/// is what the test itself took).
pub fn take_machine_wait() -> Duration {
    MACHINE_WAIT.with(|w| w.replace(Duration::ZERO))
}

pub fn vm(args: &[&str], stdin: Option<&[u8]>) -> Result<Output, String> {
    let _g = shared();
    run_vmrun(args, stdin).map_err(|e| e.to_string())
}

pub fn tests() -> Vec<Trial> {
    vec![
        trial("vmrun::echo_hello", echo_hello),
        trial("vmrun::exit_status_env_and_workdir", exit_status_env_and_workdir),
        trial("vmrun::killed_by_sigkill_gives_137", killed_by_sigkill_gives_137),
        trial("vmrun::stdin_reaches_the_command", stdin_reaches_the_command),
        trial("vmrun::sixteen_mib_of_stdout_arrive_intact", sixteen_mib_of_stdout_arrive_intact),
        trial("vmrun::cpus_and_memory_are_what_was_asked", cpus_and_memory_are_what_was_asked),
        trial("vmrun::guest_kernel_panic_is_reported", guest_kernel_panic_is_reported),
        trial("vmrun::rootfs_directory_becomes_the_root", rootfs_directory_becomes_the_root),
        trial("vmrun::device_read_bps_holds_a_16_mib_read_to_the_rate", device_read_bps_holds_a_16_mib_read_to_the_rate),
        trial("vmrun::tty_window_size_and_ctrl_c", tty_window_size_and_ctrl_c),
        trial("vmrun::tty_without_i_does_not_read_the_terminal", tty_without_i_does_not_read_the_terminal),
        trial("vmrun::a_lost_first_boot_is_booted_once_more_only_under_emulation", a_lost_first_boot_is_booted_once_more),
        trial("vmrun::errors::missing_dev_kvm", missing_dev_kvm),
        trial("vmrun::errors::missing_kernel", missing_kernel),
        trial("vmrun::errors::corrupt_kernel", corrupt_kernel),
        trial("vmrun::errors::missing_rootfs", missing_rootfs),
        trial("vmrun::no_leftovers_after_20_runs_two_at_a_time_and_5_at_once", no_leftovers),
        trial("vmrun::network_nat_publishes_a_port_and_leaves_nothing", network_nat_publishes_a_port_and_leaves_nothing),
        trial("vmrun::network_tap_reaches_the_guest_at_its_address", network_tap_reaches_the_guest_at_its_address),
    ]
}

fn echo_hello() -> TestResult {
    let out = vm(&["--", "echo", "hello"], None)?;
    ensure!(out.code() == 0 && out.stdout_str() == "hello\n", "{}", out.describe());
    Ok(())
}

fn exit_status_env_and_workdir() -> TestResult {
    let out = vm(&["-e", "GREETING=from-host", "-w", "/tmp", "--", "sh", "-c", "echo $GREETING; pwd; exit 7"], None)?;
    ensure!(out.code() == 7, "expected exit 7: {}", out.describe());
    ensure!(out.stdout_str() == "from-host\n/tmp\n", "{}", out.describe());
    Ok(())
}

fn killed_by_sigkill_gives_137() -> TestResult {
    // The command is its container's PID 1, which nothing inside the container can SIGKILL
    // (as with `docker run`); the guest kernel can: SysRq `i` kills every process but the
    // guest's init (the agent), so this needs --privileged for /proc/sysrq-trigger.
    let out = vm(&["--privileged", "--", "sh", "-c", "echo i > /proc/sysrq-trigger; sleep 60"], None)?;
    ensure!(out.code() == 137, "expected 137: {}", out.describe());
    Ok(())
}

fn stdin_reaches_the_command() -> TestResult {
    let out = vm(&["-i", "--", "cat"], Some(b"abc"))?;
    ensure!(out.code() == 0 && out.stdout == b"abc", "{}", out.describe());
    Ok(())
}

fn sixteen_mib_of_stdout_arrive_intact() -> TestResult {
    let script = "head -c 16777216 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob";
    let out = vm(&["--vm-memory", "256", "--", "sh", "-c", script], None)?;
    ensure!(out.code() == 0, "{}", out.stderr);
    ensure!(out.stdout.len() == 16 << 20, "got {} bytes of stdout, expected 16 MiB; stderr: {}", out.stdout.len(), out.stderr);
    let ours = format!("{:x}", Sha256::digest(&out.stdout));
    let theirs = out.stderr.split_whitespace().next().unwrap_or_default();
    ensure!(ours == theirs, "checksum mismatch: host {ours}, guest {theirs}");
    Ok(())
}

fn cpus_and_memory_are_what_was_asked() -> TestResult {
    // --memory is the container's limit; the VM gets 64 MiB more.
    let script = "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; cat /sys/fs/cgroup/memory.max";
    let out = vm(&["--cpus", "2", "--memory", "192", "--", "sh", "-c", script], None)?;
    ensure!(out.code() == 0, "{}", out.describe());
    let stdout = out.stdout_str();
    let mut lines = stdout.lines();
    ensure!(lines.next() == Some("2"), "expected 2 CPUs: {}", out.describe());
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no MemTotal: {}", out.describe()))?;
    // MemTotal is RAM minus what the kernel keeps for itself: a little under 256 MiB.
    ensure!((200 * 1024..=256 * 1024).contains(&kib), "MemTotal {kib} kB is not ~256 MiB");
    ensure!(lines.next() == Some("201326592"), "the container's memory.max is not 192 MiB: {}", out.describe());
    // --vm-memory sizes the VM itself.
    let out = vm(&["--vm-memory", "384", "--", "grep", "MemTotal", "/proc/meminfo"], None)?;
    let kib: u64 = out
        .stdout_str()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no MemTotal: {}", out.describe()))?;
    ensure!((320 * 1024..=384 * 1024).contains(&kib), "MemTotal {kib} kB is not ~384 MiB");
    Ok(())
}

fn guest_kernel_panic_is_reported() -> TestResult {
    // /proc/sysrq-trigger is read-only in a container unless it is privileged.
    let out = vm(&["--privileged", "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600"], None)?;
    ensure!(out.code() != 0, "a guest panic must fail vmrun: {}", out.describe());
    // The VMM's word (its exit record), not only the console's text.
    ensure!(out.stderr.contains("the guest kernel panicked"), "stderr must say the guest kernel panicked: {}", out.describe());
    Ok(())
}

/// A root filesystem directory: busybox as /bin/busybox and /bin/sh, and empty /proc, /dev,
/// /tmp.
pub fn busybox_rootfs() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path();
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| format!("/bin/busybox: {e}"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
    Ok(dir)
}

fn rootfs_directory_becomes_the_root() -> TestResult {
    let dir = busybox_rootfs()?;
    let root = dir.path();
    std::fs::write(root.join("marker"), "from-a-directory\n").map_err(|e| e.to_string())?;
    let out = vm(&["--rootfs", &root.display().to_string(), "--", "/bin/sh", "-c", "/bin/busybox cat /marker; /bin/busybox ls /"], None)?;
    ensure!(out.code() == 0, "{}", out.describe());
    ensure!(out.stdout_str().starts_with("from-a-directory\n"), "{}", out.describe());
    ensure!(out.stdout_str().contains("marker"), "{}", out.describe());
    Ok(())
}

/// `--device-read-bps /dev/vda:1mb`: reading a 16 MiB file of the root filesystem takes at
/// least 15 s in the guest (a one-second burst, then 1 MiB a second), and the bytes arrive
/// intact.
fn device_read_bps_holds_a_16_mib_read_to_the_rate() -> TestResult {
    let dir = busybox_rootfs()?;
    let root = dir.path();
    // Bytes that no file system would store smaller.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let blob: Vec<u8> = (0..16 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(root.join("blob"), &blob).map_err(|e| e.to_string())?;
    // The limit is the disk's: the root must be an image (a directory is shared, not a disk).
    let image = dir.path().with_extension("erofs");
    let _remove = RemoveOnDrop(image.clone());
    let mkfs = Command::new("mkfs.erofs").arg(&image).arg(root).output().map_err(|e| format!("mkfs.erofs: {e}"))?;
    ensure!(mkfs.status.success(), "mkfs.erofs: {}", String::from_utf8_lossy(&mkfs.stderr));
    let script = "read a _ </proc/uptime; /bin/busybox sha256sum /blob; read b _ </proc/uptime; echo \"$a $b\"";
    let out = vm(&["--device-read-bps", "/dev/vda:1mb", "--rootfs", &image.display().to_string(), "--", "/bin/sh", "-c", script], None)?;
    ensure!(out.code() == 0, "{}", out.describe());
    let stdout = out.stdout_str();
    let mut lines = stdout.lines();
    let theirs = lines.next().and_then(|l| l.split_whitespace().next()).unwrap_or_default().to_string();
    let ours = format!("{:x}", Sha256::digest(&blob));
    ensure!(theirs == ours, "the file read in the guest has sha256 {theirs}, expected {ours}: {}", out.describe());
    let times: Vec<f64> = lines.next().unwrap_or_default().split_whitespace().filter_map(|t| t.parse().ok()).collect();
    let [before, after] = times[..] else {
        return Err(format!("no uptimes in the output: {}", out.describe()).into());
    };
    let took = after - before;
    // 15 s by the limiter's arithmetic; 14 leaves room for the guest's clock.
    let held_to_the_rate = took >= 14.0;
    ensure!(held_to_the_rate, "16 MiB at 1 MiB/s took {took:.1} s in the guest, expected at least 14: {}", out.describe());
    eprintln!("[e2e] 16 MiB read at --device-read-bps /dev/vda:1mb took {took:.1} s in the guest");
    Ok(())
}

/// Removes a file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs vmrun ARGS… on a pty (see [`run_vmrun_on_pty`]).
fn vmrun_on_pty(args: &[&str], wait_for: Option<&str>, input: &[u8]) -> Result<(i32, String), String> {
    run_vmrun_on_pty(|| vmrun(args), wait_for, input).map(|o| (o.code, o.text)).map_err(|e| format!("{e:#}"))
}

fn tty_window_size_and_ctrl_c() -> TestResult {
    let _g = shared();
    // `sleep` must not be exec'ed (busybox sh execs the last command of `-c`, hence the
    // `exit`): the container's PID 1 ignores signals it has no handler for (as with
    // `docker run` without --init), its children do not.
    let (code, out) =
        vmrun_on_pty(&["-i", "-t", "--", "sh", "-c", "stty size; tty; echo ready; sleep 300; exit $?"], Some("ready"), b"\x03")?;
    ensure!(out.contains("33 77"), "the guest terminal does not have the host's window size: {out:?}");
    // The terminal is the guest's pty, bind-mounted as the container's /dev/console (runc
    // would allocate it in the container's own devpts, and `tty` would say /dev/pts/0).
    ensure!(out.contains("/dev/console") || out.contains("/dev/pts/"), "the command is not on a pseudo-terminal: {out:?}");
    ensure!(code == 130, "Ctrl-C must reach the guest's foreground process (exit 130), got {code}: {out:?}");
    let _ = paths();
    Ok(())
}

fn tty_without_i_does_not_read_the_terminal() -> TestResult {
    let _g = shared();
    // As with `docker run -t`: a terminal for the command's output, but our keys stay ours.
    let script = "echo ready; if read -t 5 line; then echo got=$line; else echo nothing-read; fi";
    let (code, out) = vmrun_on_pty(&["-t", "--", "sh", "-c", script], Some("ready"), b"typed\n")?;
    ensure!(code == 0, "exit {code}: {out:?}");
    ensure!(out.contains("nothing-read") && !out.contains("got=typed"), "-t without -i relayed the host terminal's input: {out:?}");
    Ok(())
}

fn a_lost_first_boot_is_booted_once_more() -> TestResult {
    let _g = shared();
    // The first VMM to start with this variable reports a triple fault without booting
    // (palisade-vmm, debug builds), as QEMU's emulation sometimes makes a real boot end.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let marker = dir.path().join("lost-once");
    let cmd = || {
        let mut c = vmrun(["-t", "--", "sh", "-c", "echo booted-on-a-tty"]);
        c.env("PALISADE_VMM_LOSE_FIRST_BOOT", &marker);
        c
    };
    let out = run_vmrun_on_pty(cmd, None, b"").map_err(|e| format!("{e:#}"))?;
    ensure!(marker.exists(), "the VMM did not inject the lost boot (is palisade-vmm a debug build?): {out:?}");
    if inside_testhost() {
        // The injected loss took one boot; the emulator may still lose the next, as it may
        // lose any boot, and that gets booted again too.
        ensure!(out.boots >= 2, "the lost boot was not booted once more: {out:?}");
        ensure!(out.code == 0 && out.text.contains("booted-on-a-tty"), "the second boot did not run the command: {out:?}");
    } else {
        // Real VT-x/AMD-V: nothing is retried, the triple fault is what the test sees.
        ensure!(out.boots == 1, "a boot was retried on real hardware: {out:?}");
        ensure!(out.code == 125 && out.text.contains("triple fault"), "vmrun did not report the triple fault: {out:?}");
        // Marked as injected, so that soak counts (scripts/soak) leave it out.
        ensure!(out.text.contains("[injected: PALISADE_VMM_LOSE_FIRST_BOOT]"), "the injected loss is not marked: {out:?}");
    }
    Ok(())
}

fn expect_one_line_error(out: &Output, needle: &str) -> TestResult {
    ensure!(out.code() != 0, "expected a failure: {}", out.describe());
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected a one-line error, got {} lines: {}", lines.len(), out.describe());
    ensure!(lines[0].contains(needle), "the error does not name {needle:?}: {}", out.describe());
    Ok(())
}

fn missing_dev_kvm() -> TestResult {
    // A mount namespace whose /dev has no kvm node.
    let vmrun = paths().vmrun.display().to_string();
    let script = format!(
        "set -e; d=$(mktemp -d); mknod -m 666 $d/null c 1 3; mknod -m 666 $d/urandom c 1 9; \
         mount --bind $d /dev; exec {vmrun} -- true"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let out = run(cmd, None, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    expect_one_line_error(&out, "/dev/kvm")
}

fn missing_kernel() -> TestResult {
    let out = run_vmrun(&["--kernel", "/nonexistent/vmlinux", "--", "true"], None).map_err(|e| e.to_string())?;
    expect_one_line_error(&out, "/nonexistent/vmlinux")
}

fn corrupt_kernel() -> TestResult {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), vec![0x5a; 64 * 1024]).map_err(|e| e.to_string())?;
    let path = file.path().display().to_string();
    let out = run_vmrun(&["--kernel", &path, "--", "true"], None).map_err(|e| e.to_string())?;
    expect_one_line_error(&out, &path)
}

fn missing_rootfs() -> TestResult {
    let out = run_vmrun(&["--rootfs", "/nonexistent/rootfs", "--", "true"], None).map_err(|e| e.to_string())?;
    expect_one_line_error(&out, "/nonexistent/rootfs")
}

fn no_leftovers() -> TestResult {
    let _exclusive = crate::vmrun::exclusive();
    let before = leftovers_snapshot();
    // Two runs at a time, ten after another each: the same 20 VMs in half the time.
    let streams: Vec<_> = (0..2)
        .map(|stream| {
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..10 {
                    let out = run_vmrun(&["--", "true"], None).map_err(|e| e.to_string())?;
                    if out.code() != 0 {
                        return Err(format!("run {i} of 10 in stream {stream} failed: {}", out.describe()));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for stream in streams {
        stream.join().map_err(|_| "thread panicked")??;
    }
    // Five boots at once share the test host's two vCPUs: there a slow boot is given twice
    // the usual time before it counts as lost.
    let boot_secs = if inside_testhost() { 240 } else { 120 };
    let parallel: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || {
                palisade_e2e::boot_retrying(&format!("parallel vmrun {i}"), || {
                    let script = format!("echo {i}");
                    let mut cmd = vmrun(["--", "sh", "-c", &script]);
                    cmd.env("PALISADE_BOOT_TIMEOUT_SECS", boot_secs.to_string());
                    run(cmd, None, palisade_e2e::vm_timeout())
                })
            })
        })
        .collect();
    for (i, handle) in parallel.into_iter().enumerate() {
        let out = handle.join().map_err(|_| "thread panicked")?.map_err(|e| e.to_string())?;
        ensure!(out.code() == 0 && out.stdout_str() == format!("{i}\n"), "parallel run {i}: {}", out.describe());
    }
    let after = leftovers_snapshot();
    let new: Vec<_> = after.iter().filter(|a| !before.contains(a)).collect();
    ensure!(new.is_empty(), "left behind after 25 VMs: {new:?}");
    Ok(())
}

/// A container that serves `hi-from-the-vm` on port 80 until SIGTERM (its shell traps it: a
/// container's PID 1 ignores a signal it has no handler for).
const SERVE: &str = "trap 'exit 0' TERM; mkdir -p /www && echo hi-from-the-vm > /www/index.html && busybox httpd -f -p 80 -h /www & wait";

/// vmrun running in the background, its output in files; killed if still running when dropped.
struct Background {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Background {
    fn start(args: &[&str]) -> Result<Background, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let file = |name: &str| std::fs::File::create(dir.path().join(name)).map_err(|e| e.to_string());
        let child = vmrun(args)
            .stdin(std::process::Stdio::null())
            .stdout(file("stdout")?)
            .stderr(file("stderr")?)
            .spawn()
            .map_err(|e| format!("vmrun: {e}"))?;
        Ok(Background { child, dir })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Its exit code once it ended within `timeout` (a signal's as 128+N).
    fn wait(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                use std::os::unix::process::ExitStatusExt;
                return Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("vmrun still runs {timeout:?} later; stderr: {}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `curl URL`, tried until it answers or vmrun ends (its exit code then) or the VM
    /// timeout passes.
    fn fetch(&mut self, url: &str) -> Result<Result<String, i32>, String> {
        let deadline = std::time::Instant::now() + palisade_e2e::vm_timeout();
        loop {
            let out = Command::new("curl").args(["-sS", "--max-time", "5", url]).output().map_err(|e| format!("curl: {e}"))?;
            if out.status.success() {
                return Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()));
            }
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(Err(status.code().unwrap_or(-1)));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("curl {url}: {}; vmrun's stderr: {}", String::from_utf8_lossy(&out.stderr).trim(), self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts vmrun `args` in the background and fetches `url` from it; a VM the emulator lost
/// is booted again ([`palisade_e2e::lost_boot_fault`]).
fn serve_and_fetch(args: &[&str], url: &str) -> Result<(Background, String), String> {
    let mut boot = 1;
    loop {
        let mut bg = Background::start(args)?;
        match bg.fetch(url)? {
            Ok(body) => return Ok((bg, body)),
            Err(code) => {
                let stderr = bg.stderr();
                match palisade_e2e::lost_boot_fault(inside_testhost(), boot, code, &stderr) {
                    Some(fault) => eprintln!("[e2e] vmrun {args:?}: the VM was lost under emulation ({fault}); booting it once more"),
                    None => return Err(format!("vmrun {args:?} exited {code} before serving {url}: {stderr}")),
                }
            }
        }
        boot += 1;
    }
}

/// The nftables tables of vmrun's (`palisade_*`) and the host's `plsd*` interfaces.
fn nat_leftovers() -> Result<(Vec<String>, Vec<String>), String> {
    let out = Command::new("nft").args(["list", "tables"]).output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft list tables: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let tables = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("palisade_")).map(|l| l.trim().to_string()).collect();
    let links = std::fs::read_dir("/sys/class/net")
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("plsd"))
        .collect();
    Ok((tables, links))
}

/// Waits (up to 15 s: the VM's supervisor ends a VM shortly after vmrun) until nothing of
/// vmrun's NAT is left but the tables `keep`.
fn nothing_left_but(keep: &[String]) -> TestResult {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (tables, links) = nat_leftovers()?;
        let tables: Vec<_> = tables.into_iter().filter(|t| !keep.contains(t)).collect();
        if tables.is_empty() && links.is_empty() {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "left behind: tables {tables:?}, interfaces {links:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn network_nat_publishes_a_port_and_leaves_nothing() -> TestResult {
    let _g = shared();
    let args = ["--network", "nat", "-p", "18081:80", "--", "sh", "-c", SERVE];
    let url = "http://127.0.0.1:18081/";
    // Served through 127.0.0.1 on the host; SIGTERM ends the container, then the VM.
    let (mut bg, body) = serve_and_fetch(&args, url)?;
    ensure!(body == "hi-from-the-vm\n", "{url} gave {body:?}");
    let table = format!("table ip palisade_plsd{}", bg.pid());
    let (tables, links) = nat_leftovers()?;
    ensure!(tables.contains(&table) && links == [format!("plsd{}", bg.pid())], "while running: tables {tables:?}, interfaces {links:?}");
    bg.signal(libc::SIGTERM);
    let code = bg.wait(Duration::from_secs(60))?;
    ensure!(code == 0, "vmrun ended with {code} after SIGTERM: {}", bg.stderr());
    nothing_left_but(&[])?;
    drop(bg);

    // A SIGKILLed vmrun leaves its table (the tap goes with its VM); the next run sweeps it.
    let (mut bg, body) = serve_and_fetch(&args, url)?;
    ensure!(body == "hi-from-the-vm\n", "{url} gave {body:?}");
    let table = format!("table ip palisade_plsd{}", bg.pid());
    bg.signal(libc::SIGKILL);
    bg.wait(Duration::from_secs(10))?;
    nothing_left_but(std::slice::from_ref(&table))?;
    ensure!(nat_leftovers()?.0 == [table.clone()], "after SIGKILL: the table {table:?} should be left");
    let out = run_vmrun(&["--network", "nat", "--", "cat", "/proc/net/route"], None).map_err(|e| e.to_string())?;
    ensure!(out.code() == 0, "{}", out.describe());
    // The guest's default route (destination 0) leads out eth0.
    ensure!(out.stdout_str().lines().any(|l| l.starts_with("eth0\t00000000\t")), "no default route via eth0: {}", out.describe());
    nothing_left_but(&[])?;
    Ok(())
}

/// Deletes the host interface it names when dropped.
struct HostLink(&'static str);

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "delete", self.0]).output();
    }
}

fn ip(args: &[&str]) -> TestResult {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn network_tap_reaches_the_guest_at_its_address() -> TestResult {
    let _g = shared();
    const TAP: &str = "vmrtap0";
    let _ = Command::new("ip").args(["link", "delete", TAP]).output();
    ip(&["tuntap", "add", TAP, "mode", "tap"])?;
    let _link = HostLink(TAP);
    ip(&["addr", "add", "100.65.0.1/30", "dev", TAP])?;
    ip(&["link", "set", TAP, "up"])?;
    let network = format!("tap:{TAP},ip=100.65.0.2/30,gw=100.65.0.1");
    let (mut bg, body) = serve_and_fetch(&["--network", &network, "--", "sh", "-c", SERVE], "http://100.65.0.2/")?;
    ensure!(body == "hi-from-the-vm\n", "the guest gave {body:?}");
    bg.signal(libc::SIGTERM);
    let code = bg.wait(Duration::from_secs(60))?;
    ensure!(code == 0, "vmrun ended with {code} after SIGTERM: {}", bg.stderr());
    // The tap was the caller's: it is still there.
    ensure!(Path::new("/sys/class/net").join(TAP).exists(), "the tap {TAP} went with the VM");
    Ok(())
}
