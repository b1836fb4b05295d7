//! Palisade's virtual machine monitor: a KVM micro-VM with a minimal device model.
//!
//! This crate knows nothing of containers or OCI: it boots a kernel with devices.
//! [`run_vm`] takes a [`VmConfig`] and runs the VM to its end ([`VmExit`]).

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod exit_record;
pub mod host;
pub mod jail;
pub mod log_budget;
pub mod memory;
pub mod netns;
pub mod rate_limiter;
pub mod testing;
pub mod vcpu;

pub use builder::{run_vm, run_vm_with, RunOptions, VmmError};
pub use config::{DiskConfig, FsConfig, MacAddr, NetConfig, SerialConfig, VmConfig, VmExit, VsockConfig};
pub use exit_record::{Ending, ExitRecord};
