//! podman (Debian's 4.3, with conmon) drives `palisade` unchanged as its OCI runtime
//! (`--runtime`): private storage, run root and temporary directory, an image imported
//! from a locally built busybox layer, and containers run, exec'd into (with and without a
//! terminal), paused, stopped and removed the way podman's users do it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use libtest_mimic::Trial;
use palisade_e2e::{on_a_terminal, paths, run, vm_timeout, Output};

use crate::containerd::{busybox_layer, processes_naming};
use crate::vmrun::shared;
use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![trial("podman::run_logs_exec_it_run_it_pause_stop_rm_with_palisade_as_the_runtime", podman_drives_palisade)]
}

const IMAGE: &str = "localhost/palisade-busybox:e2e";

/// podman with everything of its own under `dir`, and palisade as its runtime.
fn podman(dir: &Path, args: &[&str]) -> Result<Output, String> {
    run(podman_command(dir, args), None, vm_timeout()).map_err(|e| format!("podman (scripts/setup installs Debian's package): {e}"))
}

fn podman_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .arg("--runtime")
        .arg(paths().profile_dir.join("palisade"))
        .args(args);
    cmd
}

fn podman_drives_palisade() -> TestResult {
    let _g = shared();
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = work.path();
    let layer = busybox_layer(dir)?;
    let out = podman(dir, &["import", &layer.display().to_string(), IMAGE])?;
    ensure!(out.code() == 0, "podman import: {}", out.describe());

    // podman run: output and exit status; podman's single-file binds reach the container.
    let out = podman(
        dir,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "echo hello; busybox test -f /run/.containerenv && echo containerenv; busybox uname -r; exit 3",
        ],
    )?;
    let stdout = out.stdout_str();
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(out.code() == 3 && lines.len() == 3 && lines[..2] == ["hello", "containerenv"], "podman run: {}", out.describe());
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ensure!(lines[2] != host_kernel.trim(), "the container ran on the host's kernel {host_kernel:?}, not in a VM");

    let name = "e2e-podman";
    let out = podman(dir, &["run", "-d", "--name", name, "--network", "none", IMAGE, "sh", "-c", "echo logged; exec busybox sleep 600"])?;
    ensure!(out.code() == 0, "podman run -d: {}", out.describe());
    let deadline = std::time::Instant::now() + vm_timeout();
    loop {
        let out = podman(dir, &["logs", name])?;
        if out.code() == 0 && out.stdout_str() == "logged\n" {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "podman logs: {}", out.describe());
        std::thread::sleep(Duration::from_millis(200));
    }
    // -it on a terminal of podman's own: exec and run.
    let out =
        run(on_a_terminal(&podman_command(dir, &["exec", "-it", name, "sh", "-c", "echo tty:$(busybox tty); exit 5"])), None, vm_timeout())
            .map_err(|e| e.to_string())?;
    ensure!(out.code() == 5 && out.stdout_str().contains("tty:/dev/pts/"), "podman exec -it: {}", out.describe());
    let it = ["run", "-it", "--rm", "--network", "none", IMAGE, "sh", "-c", "echo tty:$(busybox tty); exit 6"];
    let out = run(on_a_terminal(&podman_command(dir, &it)), None, vm_timeout()).map_err(|e| e.to_string())?;
    ensure!(out.code() == 6 && out.stdout_str().contains("tty:/dev/"), "podman run -it: {}", out.describe());
    let out = podman(dir, &["exec", name, "sh", "-c", "echo in-exec; exit 4"])?;
    ensure!(out.code() == 4 && out.stdout_str() == "in-exec\n", "podman exec: {}", out.describe());
    // A terminal: conmon's console socket gets the master; the process sees a /dev/pts name.
    let out = podman(dir, &["exec", "-t", name, "busybox", "tty"])?;
    ensure!(out.code() == 0 && out.stdout_str().starts_with("/dev/pts/"), "podman exec -t: {}", out.describe());
    let out = podman(dir, &["pause", name])?;
    ensure!(out.code() == 0, "podman pause: {}", out.describe());
    let out = podman(dir, &["inspect", "--format", "{{.State.Status}}", name])?;
    ensure!(out.stdout_str().trim() == "paused", "podman inspect after pause: {}", out.describe());
    let out = podman(dir, &["unpause", name])?;
    ensure!(out.code() == 0, "podman unpause: {}", out.describe());
    let out = podman(dir, &["stop", "--time", "2", name])?;
    ensure!(out.code() == 0, "podman stop: {}", out.describe());
    let out = podman(dir, &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name])?;
    ensure!(out.stdout_str().trim().starts_with("exited"), "podman inspect after stop: {}", out.describe());
    let out = podman(dir, &["rm", name])?;
    ensure!(out.code() == 0, "podman rm: {}", out.describe());
    std::thread::sleep(Duration::from_millis(500));
    // conmon passes no --root: palisade's default root is where podman's containers are.
    let left = processes_naming(palisade_runtime::oci_runtime::DEFAULT_ROOT);
    ensure!(left.is_empty(), "processes of podman's containers left after rm: {left:?}");
    Ok(())
}
