//! `vmrun`: a command in a micro-VM behaves like a local command.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use palisade_e2e::{leftovers_snapshot, paths, run, run_vmrun, vm_timeout, vmrun, Output};
use sha2::{Digest, Sha256};

use crate::{ensure, trial, TestResult};

/// VM tests share the machine; the leak test needs it to itself.
static MACHINE: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

fn vm(args: &[&str], stdin: Option<&[u8]>) -> Result<Output, String> {
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
        trial("vmrun::tty_window_size_and_ctrl_c", tty_window_size_and_ctrl_c),
        trial("vmrun::tty_without_i_does_not_read_the_terminal", tty_without_i_does_not_read_the_terminal),
        trial("vmrun::errors::missing_dev_kvm", missing_dev_kvm),
        trial("vmrun::errors::missing_kernel", missing_kernel),
        trial("vmrun::errors::corrupt_kernel", corrupt_kernel),
        trial("vmrun::errors::missing_rootfs", missing_rootfs),
        trial("vmrun::no_leftovers_after_20_in_a_row_and_5_in_parallel", no_leftovers),
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
    let kib: u64 = out.stdout_str().split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or_else(|| format!("no MemTotal: {}", out.describe()))?;
    ensure!((320 * 1024..=384 * 1024).contains(&kib), "MemTotal {kib} kB is not ~384 MiB");
    Ok(())
}

fn guest_kernel_panic_is_reported() -> TestResult {
    // /proc/sysrq-trigger is read-only in a container unless it is privileged.
    let out = vm(&["--privileged", "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600"], None)?;
    ensure!(out.code() != 0, "a guest panic must fail vmrun: {}", out.describe());
    ensure!(out.stderr.to_lowercase().contains("panic"), "stderr must say the guest kernel panicked: {}", out.describe());
    Ok(())
}

fn rootfs_directory_becomes_the_root() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path();
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| format!("/bin/busybox: {e}"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("marker"), "from-a-directory\n").map_err(|e| e.to_string())?;
    let out = vm(&["--rootfs", &root.display().to_string(), "--", "/bin/sh", "-c", "/bin/busybox cat /marker; /bin/busybox ls /"], None)?;
    ensure!(out.code() == 0, "{}", out.describe());
    ensure!(out.stdout_str().starts_with("from-a-directory\n"), "{}", out.describe());
    ensure!(out.stdout_str().contains("marker"), "{}", out.describe());
    Ok(())
}

/// Opens a pty pair with the given window size: (master, slave).
fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two fds into the provided integers; null name and termios
    // are allowed, and `ws` is a valid winsize that outlives the call.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if rc != 0 {
        return Err(format!("openpty: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: openpty succeeded, so both are fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Runs vmrun on a pty; `input` is written once `wait_for` has appeared in the output.
fn vmrun_on_pty(args: &[&str], wait_for: Option<&str>, input: &[u8]) -> Result<(i32, String), String> {
    let (master, slave) = openpty(33, 77)?;
    let mut cmd = vmrun(args);
    let s = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| e.to_string());
    cmd.stdin(s(&slave)?).stdout(s(&slave)?).stderr(s(&slave)?);
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the pty slave here.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    drop(slave);
    let mut file = std::fs::File::from(master);
    let mut writer = file.try_clone().map_err(|e| e.to_string())?;
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
        writer.write_all(input).map_err(|e| e.to_string())?;
    }
    loop {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.extend_from_slice(&chunk);
        }
        if !sent && String::from_utf8_lossy(&seen).contains(wait_for.unwrap_or_default()) {
            writer.write_all(input).map_err(|e| e.to_string())?;
            sent = true;
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend_from_slice(&chunk);
            }
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return Ok((code, String::from_utf8_lossy(&seen).into_owned()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("vmrun on a pty did not finish; output so far: {:?}", String::from_utf8_lossy(&seen)));
        }
    }
}

fn tty_window_size_and_ctrl_c() -> TestResult {
    let _g = shared();
    // `sleep` must not be exec'ed (busybox sh execs the last command of `-c`, hence the
    // `exit`): the container's PID 1 ignores signals it has no handler for (as with
    // `docker run` without --init), its children do not.
    let (code, out) = vmrun_on_pty(&["-i", "-t", "--", "sh", "-c", "stty size; tty; echo ready; sleep 300; exit $?"], Some("ready"), b"\x03")?;
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
    let _exclusive = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    let before = leftovers_snapshot();
    for i in 0..20 {
        let out = run_vmrun(&["--", "true"], None).map_err(|e| e.to_string())?;
        ensure!(out.code() == 0, "run {i} of 20 failed: {}", out.describe());
    }
    let parallel: Vec<_> = (0..5)
        .map(|i| std::thread::spawn(move || run_vmrun(&["--", "sh", "-c", &format!("echo {i}")], None)))
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
