//! Palisade's virtual machine monitor: a KVM micro-VM with a minimal device model.
//!
//! This crate knows nothing of containers or OCI: it boots a kernel with devices.

pub mod devices;
pub mod host;
