//! runc's command line: global flags before a command, `--flag value` and `--flag=value`.
//! Each command calls one function of the library.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;

use clap::{Parser, Subcommand};

use super::create::CreateOptions;
use super::log::LogFormat;
use super::store::ContainerDir;
use super::{create, lifecycle, query, run, spec_cmd, RuntimeError};

#[derive(Debug, Parser)]
#[command(name = "palisade", version, about = "An OCI runtime (runc's command line) that runs every container in a KVM micro-VM")]
pub struct Cli {
    /// Where containers keep their state.
    #[arg(long, default_value = super::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write the log here instead of stderr.
    #[arg(long)]
    pub log: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log at debug level.
    #[arg(long)]
    pub debug: bool,
    /// Accepted for runc's callers; the guest has no systemd, so cgroups are always the
    /// agent's own (cgroupfs) inside the VM.
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Accepted for runc's callers (true, false, auto); palisade needs root on the host.
    #[arg(long, value_name = "true|false|auto", num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the PID callers wait on (the container's monitor) here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to which the terminal's master is sent (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Pass this many extra descriptors (3…) to the container: refused, a VM cannot take them.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc's callers; the container always gets pivot_root in the guest.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc's callers.
    #[arg(long)]
    pub no_new_keyring: bool,
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's OCI state (JSON).
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's process.
    Kill {
        /// Every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a stopped container (a running one with --force) and its VM.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, and wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// List the containers.
    List {
        #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
        /// Only the IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a starting config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
    /// Print what this runtime implements (JSON).
    Features,
    /// Hold a container's VM. Not for people: `create` starts it.
    #[command(hide = true)]
    Supervise { id: String },
    /// Relay a container's stdio and end with its status. Not for people: `create` starts it.
    #[command(hide = true)]
    Monitor { id: String },
}

impl CreateArgs {
    fn options<'a>(&'a self, root: &'a std::path::Path) -> CreateOptions<'a> {
        CreateOptions {
            root,
            id: &self.id,
            bundle: &self.bundle,
            pid_file: self.pid_file.as_deref(),
            console_socket: self.console_socket.as_deref(),
            preserve_fds: self.preserve_fds,
        }
    }
}

/// Runs one command; returns its exit code.
pub fn dispatch(cli: &Cli, signals: &Receiver<i32>) -> Result<i32, RuntimeError> {
    let root = cli.root.as_path();
    match &cli.command {
        Command::Create(a) => create::create(&a.options(root), signals).map(|()| 0),
        Command::Start { id } => lifecycle::start(root, id).map(|()| 0),
        Command::State { id } => {
            println!("{}", serde_json::to_string_pretty(&query::state(root, id)?).unwrap_or_default());
            Ok(0)
        }
        Command::Kill { all, id, signal } => lifecycle::kill(root, id, signal, *all).map(|()| 0),
        Command::Delete { force, id } => lifecycle::delete(root, id, *force).map(|()| 0),
        Command::Run { create, detach, keep } => run::run(&create.options(root), *detach, *keep, signals),
        Command::List { format, quiet } => {
            let states = query::list(root)?;
            if *quiet {
                states.iter().for_each(|s| println!("{}", s.id));
            } else if format == "json" {
                println!("{}", serde_json::to_string(&states).unwrap_or_default());
            } else {
                print!("{}", query::table(&states));
            }
            Ok(0)
        }
        Command::Spec { bundle, rootless } => spec_cmd::spec(bundle, *rootless).map(|()| 0),
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&spec_cmd::features()).unwrap_or_default());
            Ok(0)
        }
        Command::Supervise { id } => {
            let id = crate::sandbox::SandboxId::parse(id).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
            crate::sandbox::supervisor::supervise(root, &id, signals).map_err(|e| RuntimeError::Other(e.to_string()))?;
            Ok(0)
        }
        Command::Monitor { id } => super::monitor::run(&ContainerDir::new(root, id), signals),
    }
}
