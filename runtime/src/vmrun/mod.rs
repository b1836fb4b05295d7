//! `vmrun`: one command in one micro-VM, like `docker run`.
//!
//! The flow, in [`run::run`]: write the container's spec ([`container`]), check the host and the assets ([`assets`], [`image`]),
//! make a per-run directory ([`rundir`]), start the VMM child ([`vmm`]), then drive the
//! agent session ([`session`]) over vsock-through-Unix-socket connections ([`connect`]),
//! with the host terminal ([`terminal`]) and signals ([`signals`]) wired in.

pub mod args;
pub mod assets;
pub mod connect;
pub mod container;
pub mod guest_text;
pub mod image;
pub mod network;
pub mod run;
pub mod rundir;
pub mod session;
pub mod signals;
pub mod terminal;
pub mod timings;
pub mod vmm;
pub mod volume;

pub use args::VmrunArgs;
pub use run::{run, VmrunError};
