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
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::register_page::{RegisterPage, REGISTER_PAGE_SIZE};

/// Offset of `InterruptStatus` in a virtio-mmio device's window.
pub const INTERRUPT_STATUS_OFFSET: u64 = 0x060;
const _: () = assert!(INTERRUPT_STATUS_OFFSET < REGISTER_PAGE_SIZE as u64);

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

/// Where the `InterruptStatus` bits are kept.
enum StatusWord {
    /// In the VMM only: the guest's reads trap and the transport answers them.
    Own(AtomicU32),
    /// In the device's register page, which the guest reads without an exit
    /// ([`RegisterPage`]); little-endian, as the guest reads it.
    Page(Arc<RegisterPage>),
}

/// The interrupt line of one virtio-mmio device.
pub struct IrqTrigger {
    status: StatusWord,
    pub evt: EventFd,
    /// The eventfd was handed out as a queue notifier: queues are served outside the VMM,
    /// which then does not know when they have used buffers.
    direct_queues: AtomicBool,
}

impl IrqTrigger {
    pub fn new() -> io::Result<Self> {
        Self::with_status(StatusWord::Own(AtomicU32::new(0)))
    }

    /// An interrupt whose `InterruptStatus` is the word of `page` the guest reads.
    pub fn with_register_page(page: Arc<RegisterPage>) -> io::Result<Self> {
        page.store(INTERRUPT_STATUS_OFFSET, 0);
        Self::with_status(StatusWord::Page(page))
    }

    fn with_status(status: StatusWord) -> io::Result<Self> {
        Ok(Self { status, evt: EventFd::new(libc::EFD_NONBLOCK)?, direct_queues: AtomicBool::new(false) })
    }

    fn word(&self) -> &AtomicU32 {
        match &self.status {
            StatusWord::Own(word) => word,
            StatusWord::Page(page) => {
                page.word(INTERRUPT_STATUS_OFFSET).unwrap_or_else(|| unreachable!("InterruptStatus is inside the page"))
            }
        }
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
        // The bit is in the word before the interrupt is: a driver woken by it reads it.
        self.word().fetch_or(bit.to_le(), Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The `InterruptStatus` register. When queues are served outside the VMM it always
    /// shows "used buffers" (Firecracker's way for vhost-user over mmio): the driver then
    /// checks its queues on every interrupt, which costs it a look at each used ring,
    /// instead of missing the backend's interrupts.
    pub fn interrupt_status(&self) -> u32 {
        u32::from_le(self.word().load(Ordering::SeqCst))
    }

    /// `InterruptACK`: the driver has seen `bits`. The used-buffer bit of queues served
    /// outside the VMM stays.
    pub fn acknowledge(&self, bits: u32) {
        let kept = if self.direct_queues.load(Ordering::SeqCst) { VIRTIO_MMIO_INT_VRING } else { 0 };
        self.word().fetch_and(!(bits & !kept).to_le(), Ordering::SeqCst);
    }

    /// Device reset: nothing pending, and queues are the VMM's again until handed out anew.
    pub fn reset(&self) {
        self.direct_queues.store(false, Ordering::SeqCst);
        self.word().store(0, Ordering::SeqCst);
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
                self.word().fetch_or(VIRTIO_MMIO_INT_VRING.to_le(), Ordering::SeqCst);
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

    #[test]
    fn with_a_register_page_the_guest_reads_the_status_there() {
        let page = Arc::new(RegisterPage::new().unwrap());
        page.store(INTERRUPT_STATUS_OFFSET, 0xff);
        let irq = IrqTrigger::with_register_page(page.clone()).unwrap();
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), 0, "a new line has nothing pending");
        irq.trigger(InterruptKind::Config).unwrap();
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_CONFIG);
        irq.trigger(InterruptKind::Queue(0)).unwrap();
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        irq.acknowledge(VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), 0);
        // A backend's writes never pass the VMM: the bit is up in the page from the handover.
        assert!(irq.notifier(InterruptKind::Queue(0)).is_some());
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), VIRTIO_MMIO_INT_VRING);
        irq.reset();
        assert_eq!(page.load(INTERRUPT_STATUS_OFFSET), 0);
        assert_eq!(irq.interrupt_status(), 0);
    }
}
