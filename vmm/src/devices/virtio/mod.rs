//! Virtio devices over the virtio-mmio transport.

pub mod device;

pub use device::{ActivateError, GuestMemory, IrqTrigger, VirtioDevice};
