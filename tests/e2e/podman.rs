//! podman (Debian's 4.3, with conmon) drives `palisade` unchanged as its OCI runtime
//! (`--runtime`): private storage, run root and temporary directory, an image imported
//! from a locally built busybox layer, and containers run, exec'd into (with and without a
//! terminal), paused, stopped and removed the way podman's users do it; an OOM kill in the
//! guest is what podman reports (137, OOMKilled).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use libtest_mimic::Trial;
use palisade_e2e::{on_a_terminal, paths, run, vm_timeout, Output};

use crate::containerd::{busybox_layer, processes_naming};
use crate::vmrun::shared;
use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("podman::run_oom_logs_exec_it_run_it_pause_stop_rm_with_palisade_as_the_runtime", podman_drives_palisade),
        trial("podman::a_bridge_network_and_a_published_port_reach_the_container_in_its_vm", podman_network),
    ]
}

const IMAGE: &str = "localhost/palisade-busybox:e2e";

/// podman's locks are one shared-memory segment per host (`/libpod_lock`), whatever its
/// root: two podman stores in use at once collide, so the tests take turns.
static PODMAN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// podman with everything of its own under `dir`, and palisade as its runtime.
fn podman(dir: &Path, args: &[&str]) -> Result<Output, String> {
    run(podman_command(dir, args), None, vm_timeout()).map_err(|e| format!("podman (scripts/setup installs Debian's package): {e}"))
}

fn podman_command(dir: &Path, args: &[&str]) -> Command {
    podman_with(dir, &paths().profile_dir.join("palisade"), args)
}

/// A podman store of the test's own, with [`IMAGE`] imported from a busybox layer.
fn store_with_image() -> Result<tempfile::TempDir, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let layer = busybox_layer(work.path())?;
    let out = podman(work.path(), &["import", &layer.display().to_string(), IMAGE])?;
    if out.code() != 0 {
        return Err(format!("podman import: {}", out.describe()));
    }
    Ok(work)
}

/// `wget -q -O - URL` on the host, tried until it answers or `timeout` has passed.
fn fetch(url: &str, timeout: Duration) -> Result<String, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = Command::new("wget").args(["-q", "-T", "10", "-O", "-", url]).output().map_err(|e| format!("wget: {e}"))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("wget {url}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// podman's own network (its default bridge, through CNI's bridge, host-local and portmap
/// plugins, Debian's containernetworking-plugins): the container, in its VM, has the address
/// CNI gave it, the host reaches it there, and `-p 18080:80` serves it on 127.0.0.1:18080.
fn podman_network() -> TestResult {
    let _g = shared();
    let _podman = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let work = store_with_image()?;
    let dir = work.path();
    let name = "e2e-podman-net";
    let serve = "busybox mkdir -p /www && echo served-from-the-vm > /www/index.html && exec busybox httpd -f -p 80 -h /www";
    let cni = dir.join("cni");
    let cni_arg = cni.display().to_string();
    let args =
        ["--network-config-dir", &cni_arg, "run", "-d", "--name", name, "--network", "bridge", "-p", "18080:80", IMAGE, "sh", "-c", serve];
    let out = podman(dir, &args)?;
    ensure!(out.code() == 0, "podman run --network bridge -p 18080:80: {}", out.describe());
    let result = (|| -> TestResult {
        let out = podman(dir, &["inspect", "--format", "{{.NetworkSettings.IPAddress}}", name])?;
        let address = out.stdout_str().trim().to_string();
        ensure!(out.code() == 0 && address.parse::<std::net::Ipv4Addr>().is_ok(), "the container's address: {}", out.describe());
        let body = fetch(&format!("http://{address}/"), vm_timeout())?;
        ensure!(body == "served-from-the-vm\n", "http://{address}/ gave {body:?}");
        let body = fetch("http://127.0.0.1:18080/", Duration::from_secs(30))?;
        ensure!(body == "served-from-the-vm\n", "the published port 127.0.0.1:18080 gave {body:?}");
        // Inside, the address CNI gave the container's namespace, on the guest's kernel.
        let out = podman(dir, &["exec", name, "sh", "-c", "busybox ip -4 addr show eth0; busybox uname -r"])?;
        let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        ensure!(
            out.code() == 0 && out.stdout_str().contains(&format!("inet {address}/")) && !out.stdout_str().contains(host_kernel.trim()),
            "inside the container: {}",
            out.describe()
        );
        Ok(())
    })();
    let removed = podman(dir, &["--network-config-dir", &cni_arg, "rm", "-f", name])?;
    result?;
    ensure!(removed.code() == 0, "podman rm -f: {}", removed.describe());
    ensure!(fetch("http://127.0.0.1:18080/", Duration::ZERO).is_err(), "127.0.0.1:18080 still answers after podman rm");
    Ok(())
}

/// podman with `runtime` as its OCI runtime.
fn podman_with(dir: &Path, runtime: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .arg("--runtime")
        .arg(runtime)
        .args(args);
    cmd
}

/// The cgroups under `dir` (`depth` levels down) whose names start with `prefix`.
pub fn cgroups_named(dir: &Path, prefix: &str, depth: u32) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(prefix) {
            found.push(e.path());
        }
        if depth > 1 {
            found.extend(cgroups_named(&e.path(), prefix, depth - 1));
        }
    }
    found
}

fn podman_drives_palisade() -> TestResult {
    let _g = shared();
    let _podman = PODMAN.lock().unwrap_or_else(|e| e.into_inner());
    let work = store_with_image()?;
    let dir = work.path();

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

    // --memory: the guest's OOM killer ends the container. What podman sees is what it sees
    // with crun: exit 137, conmon told of the OOM kill by the host cgroup's memory events,
    // and OOMKilled in inspect. (conmon 2.1.6 marks the kill with a file `oom` in its working
    // directory, which is podman's; podman 4.3 looks for it in the container's bundle, its
    // StaticDir, and takes it away when it has seen it. So the container is created first and
    // started from there: from anywhere else, podman reports OOMKilled false with crun too.
    // docs/oci-runtime.md.)
    let hog = "x=0123456789abcdef; while :; do x=$x$x; done";
    let mut seen = Vec::new();
    for (runtime, path) in [("crun", Path::new("/usr/bin/crun").to_path_buf()), ("palisade", paths().profile_dir.join("palisade"))] {
        let name = format!("e2e-oom-{runtime}");
        let args = ["create", "--name", &name, "--memory", "48m", "--network", "none", IMAGE, "sh", "-c", hog];
        let out = run(podman_with(dir, &path, &args), None, vm_timeout()).map_err(|e| e.to_string())?;
        ensure!(out.code() == 0, "podman --runtime {runtime} create --memory 48m: {}", out.describe());
        let out = run(podman_with(dir, &path, &["inspect", "--format", "{{.StaticDir}}", &name]), None, vm_timeout())
            .map_err(|e| e.to_string())?;
        let bundle = std::path::PathBuf::from(out.stdout_str().trim());
        ensure!(out.code() == 0 && bundle.is_dir(), "podman inspect --format {{{{.StaticDir}}}}: {}", out.describe());
        let mut cmd = podman_with(dir, &path, &["start", "--attach", &name]);
        cmd.current_dir(&bundle);
        let out = run(cmd, None, vm_timeout()).map_err(|e| e.to_string())?;
        ensure!(out.code() == 137, "podman --runtime {runtime} start of a memory hog limited to 48m: {}", out.describe());
        let out =
            run(podman_with(dir, &path, &["inspect", "--format", "{{.State.OOMKilled}} {{.State.ExitCode}}", &name]), None, vm_timeout())
                .map_err(|e| e.to_string())?;
        seen.push((runtime, out.stdout_str().trim().to_string()));
        let out = run(podman_with(dir, &path, &["rm", &name]), None, vm_timeout()).map_err(|e| e.to_string())?;
        ensure!(out.code() == 0, "podman rm {name}: {}", out.describe());
        // The OOM killer ends a process that is not the container's init: the container
        // lives on and exits 0 at once, and conmon was told of the kill all the same.
        let cwd = dir.join(format!("oom-child-{runtime}"));
        std::fs::create_dir_all(&cwd).map_err(|e| e.to_string())?;
        let child = format!("( {hog} ); echo survived");
        let args = ["run", "--rm", "--memory", "48m", "--network", "none", IMAGE, "sh", "-c", &child];
        let mut cmd = podman_with(dir, &path, &args);
        cmd.current_dir(&cwd);
        let out = run(cmd, None, vm_timeout()).map_err(|e| e.to_string())?;
        ensure!(
            out.code() == 0 && out.stdout_str() == "survived\n",
            "{runtime}: a container whose child was OOM-killed: {}",
            out.describe()
        );
        ensure!(cwd.join("oom").exists(), "conmon was not told of the OOM kill of a child with {runtime} (no {}/oom)", cwd.display());
    }
    ensure!(
        seen[0].1 == seen[1].1 && seen[1].1 == "true 137",
        "podman inspect of the OOM-killed containers (OOMKilled, exit code): {seen:?}"
    );

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
    let cgroups = cgroups_named(Path::new("/sys/fs/cgroup"), "libpod-", 4);
    ensure!(cgroups.is_empty(), "containers' host cgroups left after rm: {cgroups:?}");
    Ok(())
}
