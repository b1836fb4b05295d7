//! `palisade`, the OCI runtime with runc's command line: containerd's runc shim (with
//! `BinaryName`), podman and CRI-O drive it unchanged, and every container runs in a
//! micro-VM of its own. The binary (`src/bin/palisade.rs`) is a thin CLI ([`cli`]) over
//! this library.
//!
//! [`create`] boots the container's sandbox ([`crate::sandbox`]) (or, for a container of a
//! [`pod`], joins its sandbox's VM) and has its [`monitor`] create the container in the guest; [`lifecycle`] starts, signals, pauses, resumes and
//! deletes it; [`exec`] runs further processes in it, each with a monitor of its own;
//! [`update`] changes its resources and [`events`] reports their use;
//! [`query`] reports OCI state and processes; [`run`] is create + start + wait; [`spec_cmd`] writes a
//! starting config.json and the feature list; [`console`] gives processes a terminal.
//! Containers are kept on disk by [`store`];
//! [`log`] is runc's `--log`/`--log-format`; [`host_cgroup`] is the container's cgroup on the
//! host, where its monitor passes on the guest's OOM kills to containerd and conmon.

pub mod cli;
pub mod console;
pub mod create;
pub mod events;
pub mod exec;
pub mod hooks;
pub mod host_cgroup;
pub mod lifecycle;
pub mod log;
pub mod monitor;
pub mod network;
pub mod pod;
pub mod query;
pub mod run;
pub mod signal;
pub mod spec_cmd;
mod stdio_slot;
pub mod store;
pub mod time;
pub mod update;

pub use store::StoreError;

/// Where containers live unless `--root` says otherwise (not `palisade-sandbox`'s
/// `/run/palisade`: each would take the other's directories for its own).
pub const DEFAULT_ROOT: &str = "/run/palisade-oci";

/// Why a command failed. runc exits 1 for all of them; the message is what callers show.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad input: a bundle, a flag, a signal.
    #[error("{0}")]
    Invalid(String),
    /// The container is not in a state the command works on.
    #[error("{0}")]
    State(String),
    /// Something runc does that palisade does not (yet, or in a VM at all).
    #[error("{0}")]
    Unsupported(String),
    /// The guest refused: the container's init could not be created or started.
    #[error("{0}")]
    Guest(String),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::control::ControlError),
    #[error("{0}")]
    Other(String),
}
