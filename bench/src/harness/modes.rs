//! The ways a workload runs: as a plain host process (bare metal), in a namespace container
//! (Debian's crun: "just a container"), and in a Palisade micro-VM container, through
//! `palisade run` (the OCI runtime containerd and podman drive) and through `vmrun --bundle`
//! (the one-shot command). The containers run the same bundle: a busybox root with the
//! static `palisade-workload` in it, `palisade spec`'s config (Docker's capabilities and
//! seccomp profile), and a volume bound at `/data`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::host_link::{HostLink, HostServer};
use super::workloads::Place;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Bare,
    Crun,
    Palisade,
    Vmrun,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Bare, Mode::Crun, Mode::Palisade, Mode::Vmrun];

    /// Whether the mode runs its workload in a micro-VM.
    pub fn is_vm(self) -> bool {
        matches!(self, Mode::Palisade | Mode::Vmrun)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Crun => "crun",
            Mode::Palisade => "palisade",
            Mode::Vmrun => "vmrun",
        }
    }

    /// What the mode is, for tables and plots.
    pub fn about(self) -> &'static str {
        match self {
            Mode::Bare => "bare metal (a host process)",
            Mode::Crun => "namespace container (crun)",
            Mode::Palisade => "Palisade micro-VM container (palisade run)",
            Mode::Vmrun => "Palisade micro-VM container (vmrun --bundle)",
        }
    }

    /// `--modes bare,crun,palisade,vmrun`; bare is always measured (every ratio is to it).
    pub fn parse_list(text: &str) -> Result<Vec<Mode>> {
        let mut modes = vec![Mode::Bare];
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let mode = Mode::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .with_context(|| format!("--modes: no mode {name:?} (bare, crun, palisade, vmrun)"))?;
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        Ok(modes)
    }
}

/// What the modes run from: a work directory with the bundle, the volume, the host's own
/// directories for bare metal, and the runtimes' state roots.
pub struct Setup {
    work: tempfile::TempDir,
    workload: PathBuf,
    palisade: PathBuf,
    vmrun: PathBuf,
    /// The size of a workload's VM ([`Mode::Vmrun`] says it with vmrun's flags).
    vm: VmSize,
    /// The bundle's config for workloads run to their end: the VM sized by [`VmSize`].
    config: Value,
    /// The bundle's config for the many idle or starting sandboxes (start-parallel,
    /// footprint): no size annotations, so each gets palisade's default VM (1 vCPU, 128
    /// MiB), what a Kubernetes pod without them gets and `podFixed` has to cover.
    sandbox_config: Value,
    runs: std::cell::Cell<u64>,
    /// The network to the host and the server on it, for workloads that talk to the host.
    host: Option<(HostServer, HostLink)>,
    /// The config.json last written into the bundle.
    written: std::cell::RefCell<String>,
}

/// The VM a Palisade container that runs a workload gets (its annotations,
/// docs/oci-runtime.md): by default the host's CPUs and enough memory for the workloads.
#[derive(Debug, Clone, Copy)]
pub struct VmSize {
    pub vcpus: usize,
    pub memory_mib: u32,
}

impl Setup {
    /// `bin_dir` holds palisade and vmrun. `to_host`: make the network to the host and its
    /// server ([`HostLink`], [`HostServer`]) for the workloads that talk to the host.
    pub fn new(workload: &Path, bin_dir: &Path, vm: &VmSize, to_host: bool) -> Result<Setup> {
        let palisade = bin_dir.join("palisade");
        let vmrun = bin_dir.join("vmrun");
        let work = tempfile::Builder::new().prefix("palisade-bench.").tempdir().context("a work directory")?;
        let bundle = work.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for dir in ["bin", "proc", "dev", "sys", "tmp", "etc", "data"] {
            std::fs::create_dir_all(rootfs.join(dir)).with_context(|| format!("{}/{dir}", rootfs.display()))?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("/bin/busybox (busybox-static)")?;
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).context("bin/sh")?;
        std::fs::copy(workload, rootfs.join("palisade-workload")).with_context(|| format!("copying {}", workload.display()))?;
        for dir in ["volume", "bare-root", "crun-root", "palisade-root"] {
            std::fs::create_dir_all(work.path().join(dir)).with_context(|| format!("{dir} in the work directory"))?;
        }
        let out = Command::new(&palisade).arg("spec").current_dir(&bundle).output().context("palisade spec")?;
        if !out.status.success() {
            bail!("palisade spec: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let path = bundle.join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&path).context("palisade spec's config.json")?).context("config.json")?;
        config["process"]["terminal"] = json!(false);
        config["root"]["readonly"] = json!(false);
        config["hostname"] = json!("bench");
        let volume = json!({"destination": "/data", "type": "bind", "source": work.path().join("volume"), "options": ["rbind", "rw"]});
        config["mounts"].as_array_mut().context("config.json has no mounts")?.push(volume);
        let sandbox_config = config.clone();
        config["annotations"] = json!({
            "palisade.dev/vm-vcpus": vm.vcpus.to_string(),
            "palisade.dev/vm-memory-mib": vm.memory_mib.to_string(),
        });
        let host = match to_host {
            true => {
                let link = HostLink::new().context("the network to the host (tcp-host)")?;
                Some((HostServer::start(workload)?, link))
            }
            false => None,
        };
        Ok(Setup {
            host,
            work,
            workload: workload.into(),
            palisade,
            vmrun,
            vm: *vm,
            config,
            sandbox_config,
            runs: std::cell::Cell::new(0),
            written: Default::default(),
        })
    }

    /// The directory a workload of `place` works in, as `mode` sees it.
    pub fn dir(&self, mode: Mode, place: Place) -> String {
        match (mode, place) {
            (Mode::Bare, Place::Root) => self.work.path().join("bare-root").display().to_string(),
            (Mode::Bare, Place::Volume) => self.work.path().join("volume").display().to_string(),
            (_, Place::Root) => "/tmp".into(),
            (_, Place::Volume) => "/data".into(),
        }
    }

    /// The command that runs `palisade-workload ARGS` in `mode`, to its end.
    pub fn command(&self, mode: Mode, args: &[String]) -> Result<Command> {
        self.runtime_run(mode, args, false, false).map(|(cmd, _)| cmd)
    }

    /// The same with a network to the host, where [`Setup::server_address`] is reachable:
    /// crun and palisade join [`HostLink`]'s namespace, vmrun runs with `--network nat`.
    pub fn command_to_host(&self, mode: Mode, args: &[String]) -> Result<Command> {
        self.runtime_run(mode, args, false, true).map(|(cmd, _)| cmd)
    }

    /// The host's server as `palisade-workload tcp --connect` takes it in `mode`: the host's
    /// address for bare metal, the sandbox's gateway (the host's end of its link) otherwise.
    pub fn server_address(&self, mode: Mode) -> Result<String> {
        let (server, link) = self.host.as_ref().context("no server on the host: the setup was made without one")?;
        Ok(match mode {
            Mode::Bare => format!("{}:{}", link.host_ip, server.port),
            _ => format!("gateway:{}", server.port),
        })
    }

    /// The command that starts `palisade-workload ARGS` in `mode` and returns once it runs
    /// (`run -d`), and the container's ID (none for bare metal, whose command is the process).
    /// A Palisade container started so gets palisade's default VM, not [`VmSize`]. vmrun has
    /// no detached runs: its command, which stays in the foreground, is the sandbox (as bare
    /// metal's process is).
    pub fn detached(&self, mode: Mode, args: &[String]) -> Result<(Command, Option<String>)> {
        self.runtime_run(mode, args, true, false)
    }

    fn runtime_run(&self, mode: Mode, args: &[String], detach: bool, to_host: bool) -> Result<(Command, Option<String>)> {
        if mode == Mode::Bare {
            let mut cmd = Command::new(&self.workload);
            cmd.args(args);
            return Ok((cmd, None));
        }
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let id = format!("bench-{}-{n}", std::process::id());
        let mut config = if detach { self.sandbox_config.clone() } else { self.config.clone() };
        let mut argv = vec![json!("/palisade-workload")];
        argv.extend(args.iter().map(|a| json!(a)));
        config["process"]["args"] = Value::Array(argv);
        if to_host && mode != Mode::Vmrun {
            let (_, link) = self.host.as_ref().context("no network to the host: the setup was made without one")?;
            let namespaces = config["linux"]["namespaces"].as_array_mut().context("config.json has no linux.namespaces")?;
            let network = namespaces.iter_mut().find(|ns| ns["type"] == "network").context("config.json has no network namespace")?;
            network["path"] = json!(link.netns());
        }
        let bundle = self.work.path().join("bundle");
        // Written only when it changes: a container being created may be reading it.
        let text = config.to_string();
        if *self.written.borrow() != text {
            std::fs::write(bundle.join("config.json"), &text).context("writing the bundle's config.json")?;
            *self.written.borrow_mut() = text;
        }
        if mode == Mode::Vmrun {
            let mut cmd = Command::new(&self.vmrun);
            cmd.arg("--bundle").arg(&bundle);
            if !detach {
                cmd.args(["--cpus", &self.vm.vcpus.to_string(), "--vm-memory", &self.vm.memory_mib.to_string()]);
            }
            if to_host {
                cmd.args(["--network", "nat"]);
            }
            return Ok((cmd, None));
        }
        let mut cmd = Command::new(self.runtime(mode));
        cmd.arg("--root").arg(self.root(mode)).arg("run");
        if detach {
            cmd.arg("--detach");
        }
        cmd.arg("--bundle").arg(bundle).arg(&id);
        Ok((cmd, Some(id)))
    }

    /// The container runtime of `mode`.
    pub fn runtime(&self, mode: Mode) -> PathBuf {
        match mode {
            Mode::Palisade => self.palisade.clone(),
            Mode::Vmrun => self.vmrun.clone(),
            _ => PathBuf::from("crun"),
        }
    }

    /// The runtime's state root (`--root`) of `mode`.
    pub fn root(&self, mode: Mode) -> PathBuf {
        self.work.path().join(match mode {
            Mode::Palisade => "palisade-root",
            _ => "crun-root",
        })
    }

    /// A container's init as its runtime's `state` names it.
    pub fn container_pid(&self, mode: Mode, id: &str) -> Option<u32> {
        let out = Command::new(self.runtime(mode)).arg("--root").arg(self.root(mode)).args(["state", id]).output().ok()?;
        let state: Value = serde_json::from_slice(&out.stdout).ok()?;
        state["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0)
    }
}

/// What one run gave: when its first stdout line came and when it exited (from its spawn),
/// its output, its status.
pub struct RunOutput {
    pub first_line: Option<Duration>,
    pub exited: Duration,
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

/// Runs `cmd` to its end (killed after `timeout`), timing its first line and its exit.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<RunOutput> {
    let program = format!("{:?}", cmd.get_program());
    let start = Instant::now();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("running {program}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let (first_tx, first_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        let mut first = true;
        while lines.read_line(&mut line).unwrap_or(0) > 0 {
            if first {
                let _ = first_tx.send(start.elapsed());
                first = false;
            }
            text.push_str(&line);
            line.clear();
        }
        text
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting")? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let exited = start.elapsed();
    let stdout = reader.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    Ok(RunOutput { first_line: first_rx.try_recv().ok(), exited, stdout, stderr, status })
}
