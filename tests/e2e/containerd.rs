//! containerd (Debian's 1.6, its runc shim `containerd-shim-runc-v2`) drives `palisade` as
//! its runc binary, unchanged: a containerd of the test's own on a private socket and root,
//! an image built here (an OCI archive of a busybox root: there is no registry) imported
//! with `ctr`, and containers run, exec'd into, paused, killed and deleted through `ctr`
//! the way any containerd client does it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use palisade_e2e::{on_a_terminal, paths, run, vm_timeout, Output};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::vmrun::{busybox_rootfs, shared};
use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![trial("containerd::ctr_run_tty_signal_exec_ps_pause_kill_with_palisade_from_a_local_image", ctr_drives_palisade)]
}

const IMAGE: &str = "docker.io/palisade/busybox:e2e";
const NAMESPACE: &str = "palisade-e2e";

/// A containerd of the test's own; killed (with what it started) on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Result<Containerd, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).map_err(|e| e.to_string())?;
        let child = spawn_containerd(d)?;
        let c = Containerd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while run(c.ctr(&["version"]), None, Duration::from_secs(30)).map(|o| o.code()).unwrap_or(1) != 0 {
            if Instant::now() > deadline {
                return Err(format!("containerd did not answer on its socket within 60 s:\n{}", c.log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(c)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).arg("--namespace").arg(NAMESPACE).args(args);
        cmd
    }

    fn run_ctr(&self, args: &[&str]) -> Result<Output, String> {
        run(self.ctr(args), None, vm_timeout()).map_err(|e| e.to_string())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd on `dir/config.toml`, logging to `dir/containerd.log`.
pub fn spawn_containerd(dir: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
    Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("containerd (scripts/setup installs Debian's package): {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tar of a busybox root (`/bin/busybox`, `/bin/sh`): an image's single layer.
pub fn busybox_layer(work: &Path) -> Result<PathBuf, String> {
    layer_of(&busybox_rootfs()?, work)
}

/// A tar of `root`, as an image's layer.
pub fn layer_of(root: &tempfile::TempDir, work: &Path) -> Result<PathBuf, String> {
    let layer_tar = work.join("layer.tar");
    let tar = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(root.path())
        .arg("-cf")
        .arg(&layer_tar)
        .arg(".")
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    ensure_status(tar.success(), "tar of the image's layer")?;
    Ok(layer_tar)
}

/// An OCI image archive (what `docker save` or `skopeo copy oci-archive:` makes) of a
/// busybox root, named [`IMAGE`].
fn image_archive(work: &Path) -> Result<PathBuf, String> {
    let layer = busybox_layer(work)?;
    images_archive(work, &layer, &[(IMAGE, json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"}))])
}

/// An OCI image archive of images that share one layer (a tar): each `(name, config)` is an
/// image of that name whose image config (Env, Entrypoint, Cmd, …) is `config`.
pub fn images_archive(work: &Path, layer_tar: &Path, images: &[(&str, serde_json::Value)]) -> Result<PathBuf, String> {
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let layer = std::fs::read(layer_tar).map_err(|e| e.to_string())?;
    let blob = |bytes: &[u8]| -> Result<(String, usize), String> {
        let digest = sha256_hex(bytes);
        std::fs::write(blobs.join(&digest), bytes).map_err(|e| e.to_string())?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let (layer_digest, layer_size) = blob(&layer)?;
    let mut manifests = Vec::new();
    for (name, image_config) in images {
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        });
        let (config_digest, config_size) = blob(config.to_string().as_bytes())?;
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
        });
        let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes())?;
        let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
        }));
    }
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(layout.join("index.json"), index.to_string()).map_err(|e| e.to_string())?;
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| e.to_string())?;
    let archive = work.join("image.tar");
    let tar = Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg(".").status().map_err(|e| format!("tar: {e}"))?;
    ensure_status(tar.success(), "tar of the image archive")?;
    Ok(archive)
}

fn ensure_status(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what} failed"))
    }
}

/// Processes whose command line names `needle`.
pub fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(|p| p.parse::<u32>().is_ok()) {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn ctr_drives_palisade() -> TestResult {
    let _g = shared();
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let archive = image_archive(work.path())?;
    let containerd = Containerd::start()?;
    let palisade = paths().profile_dir.join("palisade").display().to_string();
    let out = containerd.run_ctr(&["images", "import", "--snapshotter", "native", &archive.display().to_string()])?;
    ensure!(out.code() == 0, "ctr images import: {}", out.describe());
    let out = containerd.run_ctr(&["images", "ls", "-q"])?;
    ensure!(out.stdout_str().lines().any(|l| l == IMAGE), "the imported image is not listed: {}", out.describe());
    let runtime = ["--snapshotter", "native", "--runtime", "io.containerd.runc.v2", "--runc-binary", palisade.as_str()];

    // ctr run: the container's output and exit status come back through the shim.
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&runtime);
    args.extend_from_slice(&[IMAGE, "e2e-ctr-run", "sh", "-c", "echo hello from $(busybox uname -r); exit 3"]);
    let out = containerd.run_ctr(&args)?;
    ensure!(
        out.code() == 3 && out.stdout_str().starts_with("hello from "),
        "ctr run: {}\ncontainerd's log:\n{}",
        out.describe(),
        containerd.log()
    );
    let guest_kernel = out.stdout_str().trim().trim_start_matches("hello from ").to_string();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ensure!(guest_kernel != host_kernel.trim(), "the container ran on the host's kernel {host_kernel:?}, not in a VM");

    // ctr run -t: the container on a terminal (ctr's own is a pty here).
    let mut args = vec!["run", "-t", "--rm"];
    args.extend_from_slice(&runtime);
    args.extend_from_slice(&[IMAGE, "e2e-ctr-tty", "sh", "-c", "echo tty:$(busybox tty); exit 6"]);
    let out = run(on_a_terminal(&containerd.ctr(&args)), None, vm_timeout()).map_err(|e| e.to_string())?;
    ensure!(out.code() == 6 && out.stdout_str().contains("tty:/dev/"), "ctr run -t: {}", out.describe());

    // A signal that ends the container is its exit status (128 + 9), as ctr run reports it.
    let id = "e2e-ctr-signal";
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&runtime);
    args.extend_from_slice(&[IMAGE, id, "busybox", "sleep", "600"]);
    let attached = containerd.ctr(&args);
    let runner = std::thread::spawn(move || run(attached, None, vm_timeout()).map_err(|e| e.to_string()));
    let deadline = Instant::now() + vm_timeout();
    while !containerd.run_ctr(&["task", "ls"])?.stdout_str().lines().any(|l| l.starts_with(id) && l.contains("RUNNING")) {
        ensure!(
            !runner.is_finished() && Instant::now() < deadline,
            "ctr run of {id} never ran: {:?}",
            runner.join().map(|o| o.map(|o| o.describe()))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = containerd.run_ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
    ensure!(out.code() == 0, "ctr task kill: {}", out.describe());
    let out = runner.join().map_err(|_| "the ctr run thread panicked".to_string())??;
    ensure!(out.code() == 137, "ctr run of a container killed by SIGKILL: {}", out.describe());

    // A detached task: exec into it (the same VM: the same guest boot id; the same mount
    // namespace: the file its init wrote), list its processes, pause, resume, kill, delete.
    let id = "e2e-ctr-task";
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(&runtime);
    let init = "busybox cat /proc/sys/kernel/random/boot_id > /tmp/init-boot-id; exec busybox sleep 600";
    args.extend_from_slice(&[IMAGE, id, "sh", "-c", init]);
    let out = containerd.run_ctr(&args)?;
    ensure!(out.code() == 0, "ctr run -d: {}\ncontainerd's log:\n{}", out.describe(), containerd.log());
    let probe = "echo in-exec; until [ -s /tmp/init-boot-id ]; do busybox sleep 0.1; done; \
                 busybox cat /tmp/init-boot-id /proc/sys/kernel/random/boot_id; exit 4";
    let out = containerd.run_ctr(&["task", "exec", "--exec-id", "probe", id, "sh", "-c", probe])?;
    let stdout = out.stdout_str();
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        out.code() == 4 && lines.len() == 3 && lines[0] == "in-exec" && lines[1] == lines[2] && lines[1].len() == 36,
        "ctr task exec (in-exec, then the init's boot id and the exec's, equal): {}",
        out.describe()
    );
    let out = containerd.run_ctr(&["task", "ps", id])?;
    if out.code() != 0 || out.stdout_str().lines().count() < 2 {
        // What palisade itself says, asked as the shim asks it (seen once: an empty list).
        let ask = |what: &[&str]| {
            Command::new(&palisade)
                .arg("--root")
                .arg(format!("/run/containerd/runc/{NAMESPACE}"))
                .args(what)
                .arg(id)
                .output()
                .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
                .unwrap_or_else(|e| e.to_string())
        };
        return Err(format!(
            "ctr task ps: {}\npalisade ps --format json: {}\npalisade ps: {}\npalisade state: {}",
            out.describe(),
            ask(&["ps", "--format", "json"]),
            ask(&["ps"]),
            ask(&["state"])
        )
        .into());
    }
    let out = containerd.run_ctr(&["task", "pause", id])?;
    ensure!(out.code() == 0, "ctr task pause: {}", out.describe());
    let out = containerd.run_ctr(&["task", "ls"])?;
    ensure!(out.stdout_str().lines().any(|l| l.starts_with(id) && l.contains("PAUSED")), "ctr task ls after pause: {}", out.describe());
    let out = containerd.run_ctr(&["task", "resume", id])?;
    ensure!(out.code() == 0, "ctr task resume: {}", out.describe());
    let out = containerd.run_ctr(&["task", "kill", "--signal", "SIGKILL", id])?;
    ensure!(out.code() == 0, "ctr task kill: {}", out.describe());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = containerd.run_ctr(&["task", "ls"])?;
        if out.stdout_str().lines().any(|l| l.starts_with(id) && l.contains("STOPPED")) {
            break;
        }
        ensure!(Instant::now() < deadline, "the task did not stop after SIGKILL: {}", out.describe());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = containerd.run_ctr(&["task", "delete", id])?;
    ensure!(out.code() == 0, "ctr task delete: {}", out.describe());
    let out = containerd.run_ctr(&["container", "delete", id])?;
    ensure!(out.code() == 0, "ctr container delete: {}", out.describe());
    // The shim's runc root: every monitor, supervisor, VMM and virtiofsd of these tasks names it.
    let left = processes_naming(&format!("/run/containerd/runc/{NAMESPACE}"));
    ensure!(left.is_empty(), "palisade processes left after the tasks were deleted: {left:?}");
    // ctr places each task's cgroup at /NAMESPACE/ID; palisade made them and removed them.
    let cgroups = crate::podman::cgroups_named(&Path::new("/sys/fs/cgroup").join(NAMESPACE), "e2e-ctr", 1);
    ensure!(cgroups.is_empty(), "host cgroups of deleted tasks left: {cgroups:?}");
    Ok(())
}
