//! runc's command line: global flags before a command, `--flag value` and `--flag=value`.
//! Each command calls one function of the library.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;

use clap::{Parser, Subcommand};

use super::create::CreateOptions;
use super::exec::ExecOptions;
use super::log::LogFormat;
use super::monitor::MonitorFiles;
use super::store::ContainerDir;
use super::update::UpdateFlags;
use super::{create, events, exec, lifecycle, query, run, spec_cmd, update, RuntimeError};

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
    /// linux.cgroupsPath is systemd's `slice:prefix:name`: the container's monitor goes
    /// where systemd would put that scope on the host (made directly, not through
    /// systemd); inside the VM, where there is no systemd, cgroups are the agent's own.
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

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The process to run: an OCI `process` object (JSON); the command and the flags below
    /// are then not used.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Unix socket to which the terminal's master is sent (with --tty).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Run on a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the PID callers wait on (the process's monitor) here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// KEY=VALUE, added to (or replacing in) the container's environment.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Supplementary group.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// A capability to add (CAP_NAME or NAME).
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Set no_new_privileges.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Exec even when the container is paused (the process waits until it is resumed).
    #[arg(long)]
    pub ignore_paused: bool,
    /// Pass this many extra descriptors (3…): refused, a VM cannot take them.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
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
    /// Run a further process in a container.
    Exec(ExecArgs),
    /// List a container's processes (their pids in its VM).
    Ps {
        #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
        id: String,
        /// ps(1) options: refused, the processes are in the VM.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Change a container's resources.
    Update {
        #[command(flatten)]
        flags: UpdateFlags,
        id: String,
    },
    /// Print a container's resource usage (and OOM kills) as JSON events.
    Events {
        /// Print one stats event and exit.
        #[arg(long)]
        stats: bool,
        /// Time between stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
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
    /// Relay a container's (or an exec'd process's) stdio and end with its status. Not for
    /// people: `create` and `exec` start it.
    #[command(hide = true)]
    Monitor {
        id: String,
        #[arg(long)]
        exec: Option<String>,
    },
}

impl ExecArgs {
    fn options<'a>(&'a self, root: &'a std::path::Path) -> ExecOptions<'a> {
        ExecOptions {
            root,
            id: &self.id,
            process: self.process.as_deref(),
            command: &self.command,
            detach: self.detach,
            pid_file: self.pid_file.as_deref(),
            console_socket: self.console_socket.as_deref(),
            tty: self.tty,
            cwd: self.cwd.as_deref(),
            env: &self.env,
            user: self.user.as_deref(),
            additional_gids: &self.additional_gids,
            caps: &self.cap,
            no_new_privs: self.no_new_privs,
            ignore_paused: self.ignore_paused,
            preserve_fds: self.preserve_fds,
        }
    }
}

impl CreateArgs {
    fn options<'a>(&'a self, root: &'a std::path::Path, systemd_cgroup: bool) -> CreateOptions<'a> {
        CreateOptions {
            root,
            id: &self.id,
            bundle: &self.bundle,
            pid_file: self.pid_file.as_deref(),
            console_socket: self.console_socket.as_deref(),
            preserve_fds: self.preserve_fds,
            systemd_cgroup,
        }
    }
}

/// Runs one command; returns its exit code.
pub fn dispatch(cli: &Cli, signals: &Receiver<i32>) -> Result<i32, RuntimeError> {
    let root = cli.root.as_path();
    match &cli.command {
        Command::Create(a) => create::create(&a.options(root, cli.systemd_cgroup), signals).map(|()| 0),
        Command::Start { id } => lifecycle::start(root, id).map(|()| 0),
        Command::State { id } => {
            println!("{}", serde_json::to_string_pretty(&query::state(root, id)?).unwrap_or_default());
            Ok(0)
        }
        Command::Kill { all, id, signal } => lifecycle::kill(root, id, signal, *all).map(|()| 0),
        Command::Delete { force, id } => lifecycle::delete(root, id, *force).map(|()| 0),
        Command::Exec(a) => exec::exec(&a.options(root), signals),
        Command::Ps { format, id, ps_args } => {
            if !ps_args.is_empty() {
                return Err(RuntimeError::Unsupported(format!(
                    "ps {}: ps(1) options are not supported (the container's processes are in its VM)",
                    ps_args.join(" ")
                )));
            }
            let processes = query::ps(root, id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&processes.iter().map(|p| p.pid).collect::<Vec<_>>()).unwrap_or_default());
            } else {
                print!("{}", query::ps_table(&processes));
            }
            Ok(0)
        }
        Command::Update { flags, id } => update::update(root, id, flags).map(|()| 0),
        Command::Events { stats, interval, id } => {
            let interval = events::parse_duration(interval).map_err(RuntimeError::Invalid)?;
            events::events(root, id, *stats, interval, signals).map(|()| 0)
        }
        Command::Pause { id } => lifecycle::pause(root, id).map(|()| 0),
        Command::Resume { id } => lifecycle::resume(root, id).map(|()| 0),
        Command::Run { create, detach, keep } => run::run(&create.options(root, cli.systemd_cgroup), *detach, *keep, signals),
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
        Command::Monitor { id, exec } => super::monitor::run(&MonitorFiles::of(&ContainerDir::new(root, id), exec.as_deref()), signals),
    }
}
