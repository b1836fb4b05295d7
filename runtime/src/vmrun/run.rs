//! `vmrun` from start to end: write and check the container's spec, check the host
//! and the assets, prepare the run directory and the rootfs image, start the VMM,
//! drive the session, report the container's end.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use palisade_protocol::{ContainerSpec, ExitStatus, RootfsSource, RootfsSpec};
use palisade_vmm::host::{probe_kvm_host, KvmHostKind, PVM_EXPLANATION};

use super::args::{disk_rates, vm_memory_mib, ArgsError, VmrunArgs};
use super::assets::{self, AssetError};
use super::container::{self, ContainerError};
use super::image::{self, ImageError, RootKind};
use super::network::{self, NetworkError, TableGuard};
use super::rundir::{candidate_bases, RunDir, RunDirError};
use super::session::{run_session, HostIo, HostSetup, Launch, SessionError, SessionSpec};
use super::terminal::{self, RawMode};
use super::vmm::VmmConfig;
use crate::sandbox::control::{self, Attachment, SandboxVm};
use crate::sandbox::{SandboxSpec, SharedPath};
use crate::share::{self, ShareError, SharePlan};

/// Default of `PALISADE_BOOT_TIMEOUT_SECS`.
pub const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 120;
/// How long the VM's supervisor may take to start the VMM (and virtiofsd).
const SUPERVISOR_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The container's id in the guest.
pub const CONTAINER_ID: &str = "main";
/// vmrun's exit code when the OOM killer ended the container (Docker's: 128 + SIGKILL).
pub const OOM_EXIT_CODE: i32 = 137;

#[derive(Debug, thiserror::Error)]
pub enum VmrunError {
    #[error("/dev/kvm: no such device — this host has no KVM")]
    NoKvm,
    #[error("/dev/kvm: permission denied — run as root or add the user to the kvm group")]
    KvmPermission,
    #[error("/dev/kvm: {0}")]
    Kvm(std::io::Error),
    #[error("{PVM_EXPLANATION}")]
    Pvm,
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("--volume: {0}")]
    Volume(ShareError),
    #[error("--rootfs: {0}")]
    RootShare(ShareError),
    #[error("--device-read-bps/--device-write-bps/--device-*-iops: the root filesystem {0} is a directory, shared with the VM, so the VM has no disk to limit (give an erofs or ext4 image as --rootfs)")]
    NoDiskToLimit(PathBuf),
    #[error(transparent)]
    Sandbox(control::ControlError),
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl VmrunError {
    /// vmrun's exit code: 125 for its own failures, 126/127 for a command that cannot
    /// run, 128+N when interrupted by signal N before the command started.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmrunError::Session(e) => e.exit_code(),
            _ => 125,
        }
    }

    /// Whether the error deserves no message (an interrupt the user caused).
    pub fn is_quiet(&self) -> bool {
        matches!(self, VmrunError::Session(SessionError::Interrupted(_)))
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

/// What kind of `/dev/kvm` this host has, or why it has none this process can use.
pub fn check_kvm() -> Result<KvmHostKind, VmrunError> {
    let kind = probe_kvm_host();
    if kind == KvmHostKind::Missing {
        return Err(VmrunError::NoKvm);
    }
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(kind),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(VmrunError::KvmPermission),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VmrunError::NoKvm),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) || e.raw_os_error() == Some(libc::ENODEV) => Err(VmrunError::NoKvm),
        Err(e) => Err(VmrunError::Kvm(e)),
    }
}

/// The line vmrun prints when the OOM killer ended the container.
pub fn oom_message(limit_mib: Option<u32>, vm_mib: u32) -> String {
    match limit_mib {
        Some(l) => format!("the container was killed by the OOM killer (memory limit {l} MiB)"),
        None => format!("the container was killed by the OOM killer (no memory limit of its own; the VM has {vm_mib} MiB)"),
    }
}

/// Runs `vmrun`; returns the command's exit code. `signals` comes from
/// [`super::signals::start`].
pub fn run(args: &VmrunArgs, signals: &Receiver<i32>) -> Result<i32, VmrunError> {
    // The container first: a bad option or bundle fails here, before any VM.
    let plan = container::plan(args, |k| std::env::var(k).ok())?;
    let memory_mib = vm_memory_mib(args.vm_memory, plan.memory_limit_mib)?;
    let disk_rates = disk_rates(args)?;

    let kind = check_kvm()?;
    if kind == KvmHostKind::Pvm && args.kernel.is_none() {
        return Err(VmrunError::Pvm);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vmrun"));
    let assets_dir = assets::assets_dir(env_path("PALISADE_ASSETS_DIR"), &exe);
    let kernel = args.kernel.clone().unwrap_or_else(|| assets_dir.join("vmlinux"));
    assets::check_kernel(&kernel)?;
    if kind == KvmHostKind::Pvm {
        eprintln!("vmrun: warning: {PVM_EXPLANATION}; trying {} anyway", kernel.display());
    }
    let initrd = args.initrd.clone().unwrap_or_else(|| assets_dir.join("initramfs.cpio"));
    assets::require_file("initramfs", &initrd)?;
    let rootfs = plan.rootfs.clone().unwrap_or_else(|| assets_dir.join("busybox.erofs"));
    let vmm_binary = assets::vmm_binary(env_path("PALISADE_VMM"), &exe);
    if !vmm_binary.is_file() {
        return Err(AssetError::NoVmm(vmm_binary).into());
    }
    // A directory root and the volumes are shared live (virtio-fs); an image is the VM's disk.
    let mut shared = SharePlan::default();
    let (disk, root_source) = match image::classify(&rootfs)? {
        RootKind::Directory if disk_rates != Default::default() => return Err(VmrunError::NoDiskToLimit(rootfs)),
        RootKind::Directory => {
            shared.add(&rootfs, share::ROOT_PATH.into(), plan.read_only).map_err(VmrunError::RootShare)?;
            (None, RootfsSource::Share { tag: share::TAG.into(), path: share::ROOT_PATH.into() })
        }
        RootKind::Image(kind) => (Some(rootfs.clone()), RootfsSource::Device { device: "/dev/vda".into(), fstype: kind.fstype().into() }),
    };
    for (i, v) in plan.volumes.iter().enumerate() {
        shared.add(&v.host, share::volume_path(i), v.read_only).map_err(VmrunError::Volume)?;
    }
    let tuning = args.share_tuning.tuning(!shared.is_empty())?;
    let virtiofsd_binary = assets::virtiofsd_binary(env_path("PALISADE_VIRTIOFSD"), &assets_dir);
    if !shared.is_empty() && !virtiofsd_binary.is_file() {
        return Err(AssetError::NoVirtiofsd(virtiofsd_binary).into());
    }

    let sandbox_binary = assets::sandbox_binary(env_path("PALISADE_SANDBOX"), &exe);
    if !sandbox_binary.is_file() {
        return Err(AssetError::NoSandbox(sandbox_binary).into());
    }
    // The network: a `nat` VM's /30 is chosen (and what SIGKILLed vmruns left is swept)
    // here; its host side is set up once the VM runs, and its table deleted when this
    // function returns, however it returns.
    let net = network::prepare(&plan.network, &plan.publish, std::process::id())?;
    let _table = net.nat.as_ref().map(|nat| TableGuard(nat.table.clone()));
    let host_setup = net.nat.clone().map(|nat| HostSetup(std::sync::Arc::new(move || nat.set_up_host().map_err(|e| e.to_string()))));
    let (run_dir, lock) = RunDir::create(&candidate_bases(env_path("XDG_RUNTIME_DIR")))?;
    tracing::debug!(dir = %run_dir.path().display(), "run directory");
    let tty_size = if plan.terminal { terminal::window_size(0).or_else(|| terminal::window_size(1)) } else { None };
    let spec = SessionSpec {
        share: (!shared.is_empty()).then(|| share::TAG.to_string()),
        rootfs: Some(RootfsSpec { id: "root".into(), source: root_source, writable: !plan.read_only, process_mounts: false }),
        shutdown: true,
        launch: Launch::Container {
            spec: ContainerSpec {
                id: CONTAINER_ID.into(),
                spec_json: plan.spec_json.clone(),
                rootfs: "root".into(),
                stdin: args.interactive && !plan.terminal,
                tty_size,
            },
            terminal: plan.terminal,
        },
        boot_timeout: Duration::from_secs(
            std::env::var("PALISADE_BOOT_TIMEOUT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_BOOT_TIMEOUT_SECS),
        ),
        request_timeout: super::connect::request_timeout(),
        quiet_warnings: plan.quiet_warnings.clone(),
        network: net.guest.clone(),
        host_setup,
    };

    // The VM is a sandbox of its own, tied to vmrun: its supervisor holds the VMM and
    // virtiofsd, ends the VM if vmrun dies however it dies, and then removes the directory.
    // Its vsock socket, console log and files are set by the supervisor.
    let mut vm = VmmConfig {
        binary: &vmm_binary,
        kernel: &kernel,
        initrd: &initrd,
        disk: disk.as_deref(),
        fs: vec![],
        disk_rates,
        cpus: args.cpus,
        memory_mib,
        vsock_socket: &run_dir.vsock_socket(),
        serial_log: None,
        stderr_file: None,
        config_file: Path::new("vm.json"),
        exit_record: Path::new("exit.json"),
    }
    .vm_config();
    vm.net = net.devices.clone();
    let sandbox_spec = SandboxSpec {
        vmm_binary: vmm_binary.clone(),
        virtiofsd_binary: (!shared.is_empty()).then(|| virtiofsd_binary.clone()),
        vm,
        shared: shared.entries.iter().map(|e| SharedPath { host: e.host.clone(), path: e.path.clone(), read_only: e.read_only }).collect(),
        virtiofsd: tuning,
        ephemeral: true,
        remove_empty_root: run_dir.own_base(),
        console: args.console,
        cgroup_parent: None,
    };
    control::start_in(lock, &sandbox_spec, &sandbox_binary, Attachment::Tied { inherit_stderr: args.console }, SUPERVISOR_START_TIMEOUT)
        .map_err(VmrunError::Sandbox)?;
    super::timings::mark("sandbox_started_ms");
    let mut vmm = SandboxVm::new(run_dir.base(), run_dir.id());

    // As with `docker run`: `-t` alone gives the command a terminal for its output but does
    // not read ours (Ctrl-C stays a signal to vmrun, which forwards it); `-it` puts our
    // terminal in raw mode and relays every key to the guest's. Raw mode only once the VM is
    // on its way; restored when this function returns.
    let _raw = if plan.terminal && args.interactive { RawMode::enable(0).map_err(VmrunError::Terminal)? } else { None };
    let io = HostIo {
        stdin: args.interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
        stdout: Box::new(std::io::stdout()),
        stderr: Box::new(std::io::stderr()),
    };
    let status = run_session(&run_dir.vsock_socket(), &mut vmm, &spec, io, signals)?;
    drop(_raw);
    drop(run_dir);
    Ok(exit_code(&status, plan.memory_limit_mib, memory_mib))
}

/// vmrun's exit code for the container's status, saying so on stderr when the OOM
/// killer ended it.
fn exit_code(status: &ExitStatus, limit_mib: Option<u32>, vm_mib: u32) -> i32 {
    if status.oom_killed {
        eprintln!("vmrun: {}", oom_message(limit_mib, vm_mib));
        return OOM_EXIT_CODE;
    }
    status.shell_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_kill_is_137_whatever_the_status() {
        let oom = ExitStatus { code: Some(1), signal: None, oom_killed: true };
        assert_eq!(exit_code(&oom, Some(64), 128), 137);
        assert_eq!(exit_code(&ExitStatus { code: Some(3), signal: None, oom_killed: false }, None, 128), 3);
        assert_eq!(oom_message(Some(64), 128), "the container was killed by the OOM killer (memory limit 64 MiB)");
        assert!(oom_message(None, 128).contains("the VM has 128 MiB"));
    }
}
