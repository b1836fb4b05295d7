//! How a virtio device interrupts its driver, whatever the transport ([`VirtioInterrupt`]),
//! and the virtio-mmio implementation ([`IrqTrigger`]: the `InterruptStatus` register and
//! an eventfd registered with KVM as the irqfd of the device's GSI).
//!
//! Devices the VMM serves itself [`trigger`](VirtioInterrupt::trigger) interrupts. A device
//! whose queues a separate process serves (a vhost-user backend) hands that process the
//! [`notifier`](VirtioInterrupt::notifier) instead, and the backend's writes interrupt the
//! guest through KVM with no VMM code in the path.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// `InterruptStatus` bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// `InterruptStatus` bit: the configuration space changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// What an interrupt tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// Queue `n` has used buffers.
    Queue(u16),
    /// The configuration space changed.
    Config,
}

/// A device's way to interrupt its driver.
pub trait VirtioInterrupt: Send + Sync {
    /// Interrupts the driver for `kind`.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
    /// An eventfd whose every write interrupts the driver for `kind`, with nothing of the
    /// VMM in the path (a vhost-user backend's `call` fd); `None` if the transport has none.
    fn notifier(&self, kind: InterruptKind) -> Option<&EventFd>;
}

/// The interrupt line of one virtio-mmio device.
pub struct IrqTrigger {
    pub status: AtomicU32,
    pub evt: EventFd,
    /// The eventfd was handed out as a queue notifier: queues are served outside the VMM,
    /// which then does not know when they have used buffers.
    direct_queues: AtomicBool,
}

impl IrqTrigger {
    pub fn new() -> io::Result<Self> {
        Ok(Self { status: AtomicU32::new(0), evt: EventFd::new(libc::EFD_NONBLOCK)?, direct_queues: AtomicBool::new(false) })
    }

    /// Signals "used buffers available" to the guest.
    pub fn trigger_vring(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Signals "configuration changed" to the guest.
    pub fn trigger_config(&self) -> io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The `InterruptStatus` register. When queues are served outside the VMM it always
    /// shows "used buffers" (Firecracker's way for vhost-user over mmio): the driver then
    /// checks its queues on every interrupt, which costs it a look at each used ring,
    /// instead of missing the backend's interrupts.
    pub fn interrupt_status(&self) -> u32 {
        let direct = if self.direct_queues.load(Ordering::SeqCst) { VIRTIO_MMIO_INT_VRING } else { 0 };
        self.status.load(Ordering::SeqCst) | direct
    }

    /// `InterruptACK`: the driver has seen `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: nothing pending, and queues are the VMM's again until handed out anew.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.direct_queues.store(false, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for IrqTrigger {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        match kind {
            InterruptKind::Queue(_) => self.trigger_vring(),
            InterruptKind::Config => self.trigger_config(),
        }
    }

    fn notifier(&self, kind: InterruptKind) -> Option<&EventFd> {
        match kind {
            InterruptKind::Queue(_) => {
                self.direct_queues.store(true, Ordering::SeqCst);
                Some(&self.evt)
            }
            // The config bit must be set with the interrupt: only the VMM can.
            InterruptKind::Config => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_are_raised_and_acknowledged() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(InterruptKind::Queue(0)).unwrap();
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(irq.interrupt_status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.evt.read().unwrap(), 2);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.interrupt_status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn a_queue_notifier_interrupts_through_the_same_line_and_keeps_the_vring_bit_up() {
        let irq = IrqTrigger::new().unwrap();
        assert!(irq.notifier(InterruptKind::Config).is_none());
        let call = irq.notifier(InterruptKind::Queue(1)).unwrap();
        call.write(1).unwrap();
        assert_eq!(irq.evt.read().unwrap(), 1, "the backend's write is the device's interrupt");
        // The VMM never saw that interrupt, so the register must not hide it.
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.interrupt_status(), VIRTIO_MMIO_INT_VRING);
        irq.reset();
        assert_eq!(irq.interrupt_status(), 0);
    }
}
