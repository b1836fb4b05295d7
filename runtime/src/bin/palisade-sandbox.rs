//! `palisade-sandbox`: micro-VMs that outlive the command that started them.
//!
//! `start ID` boots a sandbox (a VM, its VMM and supervisor, its virtiofsd when its root is
//! a directory) detached and returns once its agent answers; `exec ID -- CMD` runs a
//! command in it; `state`, `list`, `stop` and `delete` find it again by its ID. The OCI
//! runtime uses the same library (`palisade_runtime::sandbox`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use palisade_protocol::{ProcessSpec, RootfsSource, RootfsSpec};
use palisade_runtime::sandbox::control::Attachment;
use palisade_runtime::sandbox::{control, supervisor, SandboxId, SandboxSpec, SharedPath};
use palisade_runtime::share;
use palisade_runtime::vmrun::args::{ShareTuningArgs, DEFAULT_PATH, DEFAULT_VM_MEMORY_MIB};
use palisade_runtime::vmrun::assets;
use palisade_runtime::vmrun::image::{self, RootKind};
use palisade_runtime::vmrun::session::HostIo;
use palisade_runtime::vmrun::vmm::kernel_cmdline;
use palisade_vmm::host::{KvmHostKind, PVM_EXPLANATION};
use palisade_vmm::{DiskConfig, VmConfig};

#[derive(Debug, Parser)]
#[command(name = "palisade-sandbox", version, about = "Micro-VMs that outlive the command that started them")]
struct Cli {
    /// Where sandboxes keep their state.
    #[arg(long, default_value = palisade_runtime::sandbox::DEFAULT_ROOT, global = true)]
    root: PathBuf,
    /// Log level (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot sandbox ID detached; returns once its guest agent answers.
    Start {
        id: String,
        /// Root filesystem: a directory (shared live through virtio-fs) or an erofs/ext4
        /// image (default: <assets>/busybox.erofs).
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// The root filesystem is read-only.
        #[arg(long)]
        read_only: bool,
        /// Guest kernel (default: <assets>/vmlinux).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Initramfs holding the guest agent (default: <assets>/initramfs.cpio).
        #[arg(long)]
        initrd: Option<PathBuf>,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
        cpus: u8,
        /// Memory of the VM in MiB.
        #[arg(long, value_name = "MiB", default_value_t = DEFAULT_VM_MEMORY_MIB, value_parser = clap::value_parser!(u32).range(16..=65536))]
        memory: u32,
        /// Seconds the guest may take to boot (default: PALISADE_BOOT_TIMEOUT_SECS or 120).
        #[arg(long, value_name = "SECS")]
        boot_timeout: Option<u64>,
        #[command(flatten)]
        share_tuning: ShareTuningArgs,
    },
    /// Run a command in running sandbox ID (chrooted into its root filesystem) and exit
    /// with its status; the sandbox runs on.
    Exec {
        id: String,
        /// Relay stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Working directory.
        #[arg(short = 'w', long, default_value = "/")]
        workdir: String,
        /// Environment (KEY=VALUE), repeatable.
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Print sandbox ID's state (JSON).
    State { id: String },
    /// List the sandboxes: ID, status, supervisor pid.
    List,
    /// Stop sandbox ID: its guest powers off (or its VM is ended).
    Stop {
        id: String,
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Remove stopped sandbox ID (running too, stopping it first, with --force).
    Delete {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// Hold sandbox ID's VM: what `start` runs, detached. Not for people.
    #[command(hide = true)]
    Supervise { id: String },
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the blocked signals.
    let signals = match palisade_runtime::vmrun::signals::start() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("palisade-sandbox: {e}");
            return ExitCode::from(125);
        }
    };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let filter = match cli.log_level.as_deref() {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
    match run(cli, &signals) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("palisade-sandbox: {e:#}");
            let code = e.downcast_ref::<control::ControlError>().map_or(125, |c| c.exit_code());
            ExitCode::from(u8::try_from(code).unwrap_or(125))
        }
    }
}

fn sandbox_id(id: &str) -> anyhow::Result<SandboxId> {
    Ok(SandboxId::parse(id)?)
}

fn run(cli: Cli, signals: &std::sync::mpsc::Receiver<i32>) -> anyhow::Result<u8> {
    let root = cli.root;
    match cli.command {
        Cmd::Start { id, rootfs, read_only, kernel, initrd, cpus, memory, boot_timeout, share_tuning } => {
            let id = sandbox_id(&id)?;
            // As vmrun: a host whose /dev/kvm cannot boot the standard guest kernel is said
            // at once, not after a boot timeout.
            if palisade_runtime::vmrun::run::check_kvm()? == KvmHostKind::Pvm && kernel.is_none() {
                bail!("{PVM_EXPLANATION}");
            }
            let exe = std::env::current_exe().context("finding palisade-sandbox itself")?;
            let assets_dir = assets::assets_dir(std::env::var_os("PALISADE_ASSETS_DIR").map(PathBuf::from), &exe);
            let kernel = kernel.unwrap_or_else(|| assets_dir.join("vmlinux"));
            assets::check_kernel(&kernel)?;
            let initrd = initrd.unwrap_or_else(|| assets_dir.join("initramfs.cpio"));
            assets::require_file("initramfs", &initrd)?;
            let vmm_binary = assets::vmm_binary(std::env::var_os("PALISADE_VMM").map(PathBuf::from), &exe);
            if !vmm_binary.is_file() {
                return Err(assets::AssetError::NoVmm(vmm_binary).into());
            }
            let rootfs = rootfs.unwrap_or_else(|| assets_dir.join("busybox.erofs"));
            let mut vm = VmConfig {
                initrd: Some(initrd),
                cmdline: kernel_cmdline(std::env::var("PALISADE_AGENT_LOG").ok().as_deref()),
                vcpus: cpus,
                memory_mib: memory,
                rng: true,
                ..VmConfig::new(&kernel)
            };
            let mut shared = Vec::new();
            let source = match image::classify(&rootfs)? {
                RootKind::Directory => {
                    shared.push(SharedPath { host: rootfs.clone(), path: share::ROOT_PATH.into(), read_only });
                    RootfsSource::Share { tag: share::TAG.into(), path: share::ROOT_PATH.into() }
                }
                RootKind::Image(kind) => {
                    vm.disks.push(DiskConfig { path: rootfs.clone(), read_only: true, ..DiskConfig::default() });
                    RootfsSource::Device { device: "/dev/vda".into(), fstype: kind.fstype().into() }
                }
            };
            let tuning = share_tuning.tuning(!shared.is_empty())?;
            let virtiofsd_binary = assets::virtiofsd_binary(std::env::var_os("PALISADE_VIRTIOFSD").map(PathBuf::from), &assets_dir);
            if !shared.is_empty() && !virtiofsd_binary.is_file() {
                return Err(assets::AssetError::NoVirtiofsd(virtiofsd_binary).into());
            }
            let spec = SandboxSpec {
                vmm_binary,
                virtiofsd_binary: Some(virtiofsd_binary),
                vm,
                shared: shared.clone(),
                virtiofsd: tuning,
                ephemeral: false,
                remove_empty_root: false,
                console: false,
                cgroup_parent: None,
            };
            control::start(&root, &id, &spec, &exe, Attachment::Detached, Duration::from_secs(30))?;
            let boot_secs = boot_timeout
                .or_else(|| std::env::var("PALISADE_BOOT_TIMEOUT_SECS").ok().and_then(|v| v.parse().ok()))
                .unwrap_or(palisade_runtime::vmrun::run::DEFAULT_BOOT_TIMEOUT_SECS);
            let rootfs_spec = RootfsSpec { id: "root".into(), source, writable: !read_only, process_mounts: true };
            let share_tag = (!shared.is_empty()).then_some(share::TAG);
            if let Err(e) = control::boot(
                &root,
                &id,
                Duration::from_secs(boot_secs),
                control::GuestSetup { network: None, share: share_tag, rootfs: Some(&rootfs_spec) },
                signals,
            ) {
                // A sandbox that never became usable is not left behind.
                let _ = control::delete(&root, &id, true, Duration::from_secs(10));
                return Err(e.into());
            }
            println!("{}", id.as_str());
            Ok(0)
        }
        Cmd::Exec { id, interactive, workdir, env, command } => {
            let id = sandbox_id(&id)?;
            let mut env = env;
            if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
                bail!("-e {bad:?}: expected KEY=VALUE");
            }
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.insert(0, format!("PATH={DEFAULT_PATH}"));
            }
            let process = ProcessSpec {
                id: format!("exec-{}", std::process::id()),
                args: command,
                env,
                cwd: workdir,
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                terminal: false,
                stdin: interactive,
                rootfs: Some("root".into()),
                tty_size: None,
            };
            let io = HostIo {
                stdin: interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
                stdout: Box::new(std::io::stdout()),
                stderr: Box::new(std::io::stderr()),
            };
            let status = control::exec(&root, &id, process, io, signals)?;
            Ok(u8::try_from(status.shell_code()).unwrap_or(255))
        }
        Cmd::State { id } => {
            let state = control::state(&root, &sandbox_id(&id)?)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        Cmd::List => {
            println!("{:<32} {:<9} SUPERVISOR", "ID", "STATUS");
            for s in control::list(&root)? {
                let status = serde_json::to_value(s.status)?.as_str().unwrap_or("?").to_string();
                let pid = s
                    .supervisor
                    .filter(|_| s.status != palisade_runtime::sandbox::Status::Stopped)
                    .map_or("-".into(), |p| p.pid.to_string());
                println!("{:<32} {:<9} {pid}", s.id, status);
            }
            Ok(0)
        }
        Cmd::Stop { id, timeout } => {
            let state = control::stop(&root, &sandbox_id(&id)?, Duration::from_secs(timeout))?;
            if let Some(exit) = state.exit {
                eprintln!("palisade-sandbox: {id}: {}", exit.message);
            }
            Ok(0)
        }
        Cmd::Delete { id, force } => {
            control::delete(&root, &sandbox_id(&id)?, force, Duration::from_secs(30))?;
            Ok(0)
        }
        Cmd::Supervise { id } => {
            supervisor::supervise(&root, &sandbox_id(&id)?, signals)?;
            Ok(0)
        }
    }
}
