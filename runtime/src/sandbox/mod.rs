//! A sandbox: one micro-VM and what serves it on the host (its VMM and supervisor,
//! virtiofsd, run directory and vsock socket), with its state on disk under a root directory
//! so that later commands can find it, check it is alive, stop it and clean it up — also
//! after any of its processes was SIGKILLed.
//!
//! ```text
//! <root>/<id>/        (default root /run/palisade)
//!   lock              held (flock) by whoever reads or changes the sandbox
//!   state.json        [`SandboxState`]: status, the supervisor (pid + start time), times
//!   vm.json           the VMM's typed config (`palisade-vmm --config`)
//!   exit.json         how the VM ended (`palisade-vmm --exit-record`)
//!   vsock.sock        the agent's channel
//!   sandbox.json      [`SandboxSpec`]: what the supervisor runs
//!   share/            the VM's shared directory (placeholders; the binds are virtiofsd's)
//!   virtiofsd.sock    virtiofsd's vhost-user socket
//!   supervisor.log, vmm.stderr, serial.log, virtiofsd.log
//! ```
//!
//! [`id`] says which names a sandbox may have, [`state`] what is on disk and how liveness is
//! decided, [`dir`] where everything is and the lock, [`spec`] what runs, [`supervisor`] the
//! detached process that runs it, [`control`] how other commands start, find and stop one.

pub mod control;
pub mod dir;
pub mod id;
pub mod spec;
pub mod state;
pub mod supervisor;

pub use dir::{LockedSandbox, SandboxDir, SandboxError};
pub use id::{SandboxId, SandboxIdError};
pub use spec::{SandboxSpec, SharedPath};
pub use state::{ProcessRef, SandboxState, Status};

/// Where sandboxes live unless a root is given (runc's is `/run/runc`).
pub const DEFAULT_ROOT: &str = "/run/palisade";
