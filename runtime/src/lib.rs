//! Host-side pieces of Palisade's command-line tools.
//!
//! [`vmrun`] is the standalone `docker run`-like command: it boots a micro-VM with the
//! `palisade-vmm` binary, talks to the guest agent through the VMM's vsock Unix socket,
//! runs one command and relays its stdio, signals and exit status. [`virtiofsd`] starts the
//! virtio-fs backend that shares host directories with a VM. [`sandbox`] is a VM's state on
//! disk, for commands that outlive one another; [`oci_runtime`] is `palisade`, the OCI runtime
//! with runc's command line, on top of it.

pub mod live_share;
pub mod oci;
pub mod oci_runtime;
pub mod sandbox;
pub mod share;
pub mod virtiofsd;
pub mod vmrun;
