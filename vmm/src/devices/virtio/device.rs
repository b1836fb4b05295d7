//! The contract between the virtio-mmio transport and a virtio device.
//!
//! A device is created by the builder as `Arc<Mutex<D>>` where `D: VirtioDevice +
//! event_manager::MutEventSubscriber`. The transport (on vCPU threads, for MMIO register
//! accesses) and the event manager (on the event-loop thread, for queue notifications
//! and backend file descriptors) share it through that mutex.
//!
//! Queue notifications: each device owns one `EventFd` per queue ([`VirtioDevice::queue_events`]).
//! The builder registers each as a KVM ioeventfd on the transport's `QueueNotify` register
//! (datamatch = queue index), so a guest kick wakes the event loop without a userspace exit.
//! The device registers the same fds with the event manager in `init` and processes its
//! queues from `process` once activated (before activation, it just drains the eventfd).

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use super::interrupt::{InterruptKind, IrqTrigger, VirtioInterrupt, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtio device {device}: expected {expected} queues, got {got}")]
    QueueCount { device: &'static str, expected: usize, got: usize },
    #[error("virtio device {device}: queue {index} is not valid for the guest memory")]
    InvalidQueue { device: &'static str, index: usize },
    #[error("virtio device {device}: {reason}")]
    Backend { device: &'static str, reason: String },
}

/// What a virtio device implements; the transport does everything register-level.
pub trait VirtioDevice: Send {
    /// Short name for logs and errors ("block", "vsock", "rng").
    fn name(&self) -> &'static str;
    /// Virtio device ID (2 = block, 4 = rng, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver; must include `VIRTIO_F_VERSION_1`.
    fn avail_features(&self) -> u64;
    /// Features the driver accepted (a subset of `avail_features`; the transport masks it).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; writes outside writable fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// One eventfd per queue, in queue order.
    fn queue_events(&self) -> &[EventFd];
    /// Called when the driver sets DRIVER_OK, with the queues it configured.
    /// `irq` is how the device interrupts the driver, whatever the transport.
    fn activate(&mut self, mem: GuestMemory, irq: Arc<dyn VirtioInterrupt>, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// Called when the driver writes 0 to `Status`: drop queues, go back to pre-activation.
    fn reset(&mut self);
    fn is_activated(&self) -> bool;
}

/// Copies the bytes of a device's configuration space `config` at `offset` into `data`;
/// bytes past its end read as 0 (what a driver reading out of range gets).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).and_then(|o| config.get(o)).copied().unwrap_or(0);
    }
}
