//! Virtio devices over the virtio-mmio transport.
//!
//! `device.rs` is the contract between transport and devices, `interrupt.rs` how a device
//! interrupts its driver, `mmio.rs` the transport, `register_page.rs` the page the guest reads
//! the transport's registers from without an exit, `queue.rs` the validated descriptor-chain helpers every device uses, and each device
//! lives in its own folder (`net/`: virtio-net with a tap backend).

pub mod block;
pub mod device;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod register_page;
pub mod rng;
pub mod vhost_user;
pub mod vsock;

pub use device::{ActivateError, GuestMemory, VirtioDevice};
pub use interrupt::{InterruptKind, IrqTrigger, VirtioInterrupt};
