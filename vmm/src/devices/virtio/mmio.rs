//! The virtio-mmio transport, version 2 ("modern"), per the virtio 1.2 spec §4.2.2.
//!
//! One `MmioTransport` sits in front of one device: the vCPU threads forward MMIO accesses in
//! its 4 KiB window to [`MmioTransport::read`] / [`MmioTransport::write`]. Where KVM maps a
//! register page ([`RegisterPage`]), the guest's reads never reach the transport: it keeps
//! the page equal to what [`MmioTransport::read`] would answer. The transport keeps
//! the register-level state (status, feature selection, queue configuration) and talks to the
//! device only at the points the [`VirtioDevice`] contract names: feature negotiation,
//! configuration space, activation and reset. Nothing the driver writes can panic the VMM: bad
//! values are ignored or refused, and logged.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, error, warn};
use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};

use super::device::{GuestMemory, IrqTrigger, VirtioDevice};
#[cfg(test)]
use super::interrupt::VirtioInterrupt;
use super::interrupt::INTERRUPT_STATUS_OFFSET;
use super::register_page::RegisterPage;

/// Size of one device's MMIO window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register (the builder puts the ioeventfds here).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

/// "virt" in little endian.
const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver (not interpreted by Linux).
const VENDOR_ID: u32 = 0;

// Register offsets (virtio 1.2, table 4.1).
const REG_MAGIC_VALUE: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = INTERRUPT_STATUS_OFFSET;
/// `InterruptACK`, where the driver acknowledges the `InterruptStatus` bits it has seen.
pub const INTERRUPT_ACK_OFFSET: u64 = 0x064;
const REG_INTERRUPT_ACK: u64 = INTERRUPT_ACK_OFFSET;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

/// The largest queue size the split ring allows.
const MAX_QUEUE_SIZE: u16 = 32768;

/// The virtio-mmio register file of one device.
pub struct MmioTransport {
    mem: GuestMemory,
    device: Arc<Mutex<dyn VirtioDevice>>,
    irq: Arc<IrqTrigger>,
    /// The device status register, as the driver has built it up.
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// Exactly what the driver wrote to DriverFeatures (checked at FEATURES_OK).
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
    /// Where the guest reads the registers without an exit, when KVM maps one
    /// ([`RegisterPage`]); written anew after every write that reaches the transport.
    page: Option<Arc<RegisterPage>>,
}

fn lock<'a>(device: &'a Mutex<dyn VirtioDevice + 'static>) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    // A panic elsewhere while holding the lock leaves the device state as it was; keep serving.
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A queue able to hold `max` entries, adjusted to what the split ring allows (a power of
/// two in 1..=32768) so a device's bad maximum cannot make the transport fail.
fn new_queue(device: &'static str, index: usize, max: u16) -> Queue {
    let mut size = max.clamp(1, MAX_QUEUE_SIZE);
    if !size.is_power_of_two() {
        size = 1 << (15 - size.leading_zeros().min(15));
        warn!(device, index, max, size, "virtio queue maximum size is not a power of two; using {size}");
    }
    match Queue::new(size) {
        Ok(q) => q,
        Err(e) => {
            // Unreachable for a power of two in range; a one-entry queue is always valid.
            error!(device, index, "cannot create virtio queue of size {size}: {e}");
            Queue::new(1).unwrap_or_else(|_| unreachable!("a one-entry queue is valid"))
        }
    }
}

impl MmioTransport {
    /// A transport whose registers the guest reads by trapping ([`MmioTransport::read`]).
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>, irq: Arc<IrqTrigger>) -> MmioTransport {
        Self::with_register_page(mem, device, irq, None)
    }

    /// A transport that keeps `page` equal to its registers, for a guest that reads them
    /// there; `irq` must keep `InterruptStatus` in the same page
    /// ([`IrqTrigger::with_register_page`]).
    pub fn with_register_page(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<IrqTrigger>,
        page: Option<Arc<RegisterPage>>,
    ) -> MmioTransport {
        let queues = {
            let dev = lock(&device);
            let name = dev.name();
            dev.queue_max_sizes().iter().enumerate().map(|(i, &max)| new_queue(name, i, max)).collect()
        };
        let transport = MmioTransport {
            mem,
            device,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            page,
        };
        transport.refresh_page();
        transport
    }

    /// Writes every register but `InterruptStatus` (the interrupt's to keep) and the
    /// configuration space into the register page, as [`MmioTransport::read`] answers them.
    /// Devices' configuration spaces change only when the driver writes (this runs then).
    fn refresh_page(&self) {
        let Some(page) = &self.page else { return };
        for offset in (0..REG_CONFIG).step_by(4) {
            if offset != REG_INTERRUPT_STATUS {
                page.store(offset, self.register_value(offset).unwrap_or(0));
            }
        }
        let mut config = [0u8; (MMIO_DEVICE_SIZE - REG_CONFIG) as usize];
        lock(&self.device).read_config(0, &mut config);
        page.store_bytes(REG_CONFIG, &config);
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn name(&self) -> &'static str {
        lock(&self.device).name()
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_FEATURES_OK) && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the device window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            data.fill(0);
            let config_offset = offset - REG_CONFIG;
            if offset.saturating_add(data.len() as u64) <= MMIO_DEVICE_SIZE {
                lock(&self.device).read_config(config_offset, data);
            } else {
                debug!(device = self.name(), offset, len = data.len(), "virtio-mmio: config read past the window ignored");
            }
            return;
        }
        let Ok(out) = <&mut [u8; 4]>::try_from(&mut *data) else {
            debug!(device = self.name(), offset, len = data.len(), "virtio-mmio: register read of wrong width ignored");
            data.fill(0);
            return;
        };
        let value = self.register_value(offset).unwrap_or_else(|| {
            debug!(device = self.name(), offset, "virtio-mmio: read of unknown or write-only register ignored");
            0
        });
        *out = value.to_le_bytes();
    }

    /// What a read of the 32-bit register at `offset` answers; `None` for an offset that
    /// is no readable register.
    fn register_value(&self, offset: u64) -> Option<u32> {
        Some(match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => lock(&self.device).device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.irq.interrupt_status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => return None,
        })
    }

    /// Handles a guest write of `data` at `offset` in the device window (and brings the
    /// register page in line before the vCPU that wrote runs on).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.apply_write(offset, data);
        self.refresh_page();
    }

    fn apply_write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if offset.saturating_add(data.len() as u64) > MMIO_DEVICE_SIZE {
                debug!(device = self.name(), offset, len = data.len(), "virtio-mmio: config write past the window ignored");
            } else if self.status & VIRTIO_CONFIG_S_FAILED != 0 {
                debug!(device = self.name(), offset, "virtio-mmio: config write after FAILED ignored");
            } else {
                lock(&self.device).write_config(offset - REG_CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(device = self.name(), offset, len = data.len(), "virtio-mmio: register write of wrong width ignored");
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => self.write_queue_register(offset, |q| u16::try_from(value).is_ok_and(|size| q.try_set_size(size).is_ok())),
            REG_QUEUE_READY => self.write_queue_register(offset, |q| match value {
                0 | 1 => {
                    q.set_ready(value == 1);
                    true
                }
                _ => false,
            }),
            REG_QUEUE_DESC_LOW => self.write_queue_register(offset, |q| {
                q.set_desc_table_address(Some(value), None);
                true
            }),
            REG_QUEUE_DESC_HIGH => self.write_queue_register(offset, |q| {
                q.set_desc_table_address(None, Some(value));
                true
            }),
            REG_QUEUE_DRIVER_LOW => self.write_queue_register(offset, |q| {
                q.set_avail_ring_address(Some(value), None);
                true
            }),
            REG_QUEUE_DRIVER_HIGH => self.write_queue_register(offset, |q| {
                q.set_avail_ring_address(None, Some(value));
                true
            }),
            REG_QUEUE_DEVICE_LOW => self.write_queue_register(offset, |q| {
                q.set_used_ring_address(Some(value), None);
                true
            }),
            REG_QUEUE_DEVICE_HIGH => self.write_queue_register(offset, |q| {
                q.set_used_ring_address(None, Some(value));
                true
            }),
            REG_QUEUE_NOTIFY => self.notify_queue(value),
            REG_INTERRUPT_ACK => {
                tracing::trace!(device = self.name(), bits = value, "virtio-mmio: InterruptACK");
                self.irq.acknowledge(value);
            }
            REG_STATUS => self.write_status(value),
            _ => debug!(device = self.name(), offset, value, "virtio-mmio: write to unknown or read-only register ignored"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has(VIRTIO_CONFIG_S_DRIVER) || self.has(VIRTIO_CONFIG_S_FEATURES_OK) {
            debug!(device = self.name(), status = self.status, "virtio-mmio: DriverFeatures written outside feature negotiation; ignored");
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            sel => debug!(device = self.name(), sel, value, "virtio-mmio: DriverFeatures write to unknown bank ignored"),
        }
    }

    /// Applies `apply` to the selected queue if queue configuration is allowed now; `apply`
    /// returns false when it refused the value.
    fn write_queue_register(&mut self, offset: u64, apply: impl FnOnce(&mut Queue) -> bool) {
        let name = self.name();
        if !self.queue_config_allowed() {
            debug!(device = name, offset, status = self.status, "virtio-mmio: queue register written outside queue setup; ignored");
            return;
        }
        let sel = self.queue_sel;
        match self.selected_queue_mut() {
            Some(q) => {
                if !apply(q) {
                    debug!(device = name, offset, queue = sel, "virtio-mmio: invalid queue register value ignored");
                }
            }
            None => debug!(device = name, offset, queue = sel, "virtio-mmio: queue register write for a queue that does not exist ignored"),
        }
    }

    fn notify_queue(&self, index: u32) {
        let dev = lock(&self.device);
        match dev.queue_events().get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!(device = dev.name(), queue = index, "virtio-mmio: cannot signal queue eventfd: {e}");
                }
            }
            None => debug!(device = dev.name(), queue = index, "virtio-mmio: notification for a queue that does not exist ignored"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let name = self.name();
        if value & self.status != self.status {
            debug!(device = name, old = self.status, new = value, "virtio-mmio: status write clears bits without a reset; ignored");
            return;
        }
        let added = value & !self.status;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            warn!(device = name, "virtio-mmio: the driver gave up on the device (FAILED)");
            self.status |= VIRTIO_CONFIG_S_FAILED;
        }
        // Bits come in the spec's order: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK.
        if added & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            self.status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if added & VIRTIO_CONFIG_S_DRIVER != 0 {
            if self.has(VIRTIO_CONFIG_S_ACKNOWLEDGE) {
                self.status |= VIRTIO_CONFIG_S_DRIVER;
            } else {
                debug!(device = name, "virtio-mmio: DRIVER set before ACKNOWLEDGE; ignored");
            }
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.features_ok();
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.driver_ok();
        }
        let unknown = added
            & !(VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK
                | VIRTIO_CONFIG_S_FAILED);
        if unknown != 0 {
            debug!(device = name, bits = unknown, "virtio-mmio: unknown or device-owned status bits ignored");
        }
    }

    /// The driver proposes the features it wrote; accept them only if they are a subset of
    /// what the device offers and include VERSION_1 (this transport is modern only).
    fn features_ok(&mut self) {
        let name = self.name();
        if !self.has(VIRTIO_CONFIG_S_DRIVER) {
            debug!(device = name, "virtio-mmio: FEATURES_OK set before DRIVER; ignored");
            return;
        }
        let offered = lock(&self.device).avail_features();
        let wanted = self.driver_features;
        if wanted & !offered != 0 {
            warn!(device = name, offered, wanted, "virtio-mmio: driver accepted features the device did not offer; refusing FEATURES_OK");
            return;
        }
        if wanted & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!(
                device = name,
                wanted, "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported); refusing FEATURES_OK"
            );
            return;
        }
        lock(&self.device).set_acked_features(wanted);
        self.status |= VIRTIO_CONFIG_S_FEATURES_OK;
    }

    /// Activates the device with the queues the driver configured, after checking each
    /// against guest memory; on any failure the device is marked NEEDS_RESET instead.
    fn driver_ok(&mut self) {
        let name = self.name();
        if !self.has(VIRTIO_CONFIG_S_FEATURES_OK) {
            debug!(device = name, "virtio-mmio: DRIVER_OK set before FEATURES_OK; ignored");
            return;
        }
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for queue in &mut self.queues {
            queue.set_event_idx(event_idx);
        }
        if let Some((index, queue)) = self.queues.iter().enumerate().find(|(_, q)| !q.is_valid(&self.mem)) {
            error!(
                device = name,
                queue = index,
                ready = queue.ready(),
                size = queue.size(),
                desc = queue.desc_table(),
                avail = queue.avail_ring(),
                used = queue.used_ring(),
                "virtio-mmio: queue is not ready or not inside guest memory; device needs reset"
            );
            self.needs_reset();
            return;
        }
        // The device gets its own copies; the transport keeps the registers' view.
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            match Queue::try_from(queue.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    error!(device = name, queue = index, "virtio-mmio: cannot copy queue configuration: {e}");
                    self.needs_reset();
                    return;
                }
            }
        }
        let result = lock(&self.device).activate(self.mem.clone(), self.irq.clone(), queues);
        match result {
            Ok(()) => self.status |= VIRTIO_CONFIG_S_DRIVER_OK,
            Err(e) => {
                error!(device = name, "virtio-mmio: activation failed: {e}");
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if let Err(e) = self.irq.trigger_config() {
            error!(device = self.name(), "virtio-mmio: cannot signal the configuration interrupt: {e}");
        }
    }

    /// Writing 0 to Status: the device and the transport go back to their initial state.
    fn reset(&mut self) {
        {
            let mut dev = lock(&self.device);
            debug!(device = dev.name(), "virtio-mmio: device reset");
            dev.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.irq.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::device::{ActivateError, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
    use crate::devices::virtio::interrupt::InterruptKind;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    const FEATURE_X: u64 = 1 << 3;
    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    struct DummyDevice {
        queue_sizes: Vec<u16>,
        events: Vec<EventFd>,
        acked: u64,
        activated_with: Option<Vec<Queue>>,
        config: [u8; 8],
        resets: u32,
        refuse_activation: bool,
    }

    impl DummyDevice {
        fn new(queue_sizes: &[u16]) -> Self {
            Self {
                queue_sizes: queue_sizes.to_vec(),
                events: queue_sizes.iter().map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect(),
                acked: 0,
                activated_with: None,
                config: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
                resets: 0,
                refuse_activation: false,
            }
        }
    }

    impl VirtioDevice for DummyDevice {
        fn name(&self) -> &'static str {
            "dummy"
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.queue_sizes
        }
        fn avail_features(&self) -> u64 {
            VERSION_1 | FEATURE_X
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset).ok().and_then(|o| self.config.get(o + i)).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = self.config.get_mut(offset as usize + i) {
                    *slot = *b;
                }
            }
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn activate(&mut self, _mem: GuestMemory, _irq: Arc<dyn VirtioInterrupt>, queues: Vec<Queue>) -> Result<(), ActivateError> {
            if self.refuse_activation {
                return Err(ActivateError::Backend { device: "dummy", reason: "refused".into() });
            }
            self.activated_with = Some(queues);
            Ok(())
        }
        fn reset(&mut self) {
            self.activated_with = None;
            self.resets += 1;
        }
        fn is_activated(&self) -> bool {
            self.activated_with.is_some()
        }
    }

    struct Harness {
        t: MmioTransport,
        dev: Arc<Mutex<DummyDevice>>,
        irq: Arc<IrqTrigger>,
    }

    fn harness(queue_sizes: &[u16]) -> Harness {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(DummyDevice::new(queue_sizes)));
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let t = MmioTransport::new(mem, dev.clone(), irq.clone());
        Harness { t, dev, irq }
    }

    impl Harness {
        fn r32(&mut self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.t.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn w32(&mut self, offset: u64, v: u32) {
            self.t.write(offset, &v.to_le_bytes());
        }
        fn negotiate(&mut self, features: u64) -> u32 {
            self.w32(REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
            self.w32(REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
            self.w32(REG_DRIVER_FEATURES_SEL, 0);
            self.w32(REG_DRIVER_FEATURES, features as u32);
            self.w32(REG_DRIVER_FEATURES_SEL, 1);
            self.w32(REG_DRIVER_FEATURES, (features >> 32) as u32);
            self.w32(REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
            self.r32(REG_STATUS)
        }
        /// Configures queue `i` with rings at `base` (desc), `base + 0x1000`, `base + 0x2000`.
        fn setup_queue(&mut self, i: u32, size: u32, base: u64) {
            self.w32(REG_QUEUE_SEL, i);
            self.w32(REG_QUEUE_NUM, size);
            self.w32(REG_QUEUE_DESC_LOW, base as u32);
            self.w32(REG_QUEUE_DESC_HIGH, (base >> 32) as u32);
            self.w32(REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
            self.w32(REG_QUEUE_DRIVER_HIGH, 0);
            self.w32(REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
            self.w32(REG_QUEUE_DEVICE_HIGH, 0);
            self.w32(REG_QUEUE_READY, 1);
        }
        fn driver_ok(&mut self) -> u32 {
            let s = self.r32(REG_STATUS);
            self.w32(REG_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
            self.r32(REG_STATUS)
        }
    }

    const NEGOTIATED: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

    /// A harness whose transport keeps a register page, as the builder makes it.
    fn paged_harness(queue_sizes: &[u16]) -> (Harness, Arc<RegisterPage>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(DummyDevice::new(queue_sizes)));
        let page = Arc::new(RegisterPage::new().unwrap());
        let irq = Arc::new(IrqTrigger::with_register_page(page.clone()).unwrap());
        let t = MmioTransport::with_register_page(mem, dev.clone(), irq.clone(), Some(page.clone()));
        (Harness { t, dev, irq }, page)
    }

    /// Every word of the window reads the same from the page as through the transport.
    fn assert_page_matches(h: &mut Harness, page: &RegisterPage, when: &str) {
        for offset in (0..MMIO_DEVICE_SIZE).step_by(4) {
            let trapped = h.r32(offset);
            assert_eq!(page.load(offset), trapped, "{when}: the page differs at {offset:#x}");
        }
    }

    #[test]
    fn the_register_page_always_says_what_a_trapped_read_answers() {
        let (mut h, page) = paged_harness(&[16, 8]);
        assert_page_matches(&mut h, &page, "new");
        assert_eq!(page.load(REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(page.load(REG_CONFIG), u32::from_le_bytes([1, 2, 3, 4]));
        h.w32(REG_DEVICE_FEATURES_SEL, 1);
        assert_page_matches(&mut h, &page, "feature bank 1 selected");
        assert_eq!(page.load(REG_DEVICE_FEATURES), 1);
        h.w32(REG_QUEUE_SEL, 1);
        assert_page_matches(&mut h, &page, "queue 1 selected");
        assert_eq!(page.load(REG_QUEUE_NUM_MAX), 8);
        assert_eq!(h.negotiate(VERSION_1), NEGOTIATED);
        assert_page_matches(&mut h, &page, "negotiated");
        h.setup_queue(0, 8, 0x1_0000);
        h.setup_queue(1, 8, 0x2_0000);
        assert_page_matches(&mut h, &page, "queues set up");
        h.t.write(REG_CONFIG + 2, &[0xaa]);
        assert_page_matches(&mut h, &page, "config written");
        assert_eq!(page.load(REG_CONFIG), u32::from_le_bytes([1, 2, 0xaa, 4]));
        assert_eq!(h.driver_ok(), NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_page_matches(&mut h, &page, "driver ok");
        // Interrupts set their bits in the page, from outside the transport.
        h.irq.trigger(InterruptKind::Queue(0)).unwrap();
        h.irq.trigger(InterruptKind::Config).unwrap();
        assert_page_matches(&mut h, &page, "interrupted");
        assert_eq!(page.load(REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        h.w32(REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
        assert_page_matches(&mut h, &page, "acknowledged");
        assert_eq!(page.load(REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        h.w32(REG_STATUS, 0);
        assert_page_matches(&mut h, &page, "reset");
        assert_eq!(page.load(REG_STATUS), 0);
        assert_eq!(page.load(REG_INTERRUPT_STATUS), 0);
        // A refused activation sets NEEDS_RESET and raises the configuration interrupt.
        h.dev.lock().unwrap().refuse_activation = true;
        assert_eq!(h.negotiate(VERSION_1), NEGOTIATED);
        h.setup_queue(0, 8, 0x1_0000);
        h.setup_queue(1, 8, 0x2_0000);
        h.driver_ok();
        assert_page_matches(&mut h, &page, "activation refused");
        assert_ne!(page.load(REG_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_ne!(page.load(REG_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG, 0);
    }

    #[test]
    fn identification_registers() {
        let mut h = harness(&[16]);
        assert_eq!(h.r32(REG_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(h.r32(REG_VERSION), 2);
        assert_eq!(h.r32(REG_DEVICE_ID), 42);
        assert_eq!(h.r32(REG_VENDOR_ID), VENDOR_ID);
        h.w32(REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(h.r32(REG_DEVICE_FEATURES), FEATURE_X as u32);
        h.w32(REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(h.r32(REG_DEVICE_FEATURES), 1); // VERSION_1 is bit 32
        h.w32(REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(h.r32(REG_DEVICE_FEATURES), 0);
    }

    #[test]
    fn wrong_width_and_unknown_offsets_are_ignored() {
        let mut h = harness(&[16]);
        let mut two = [0xffu8; 2];
        h.t.read(REG_MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        let mut b = [0xffu8; 4];
        h.t.read(0x0e8, &mut b);
        assert_eq!(b, [0; 4]);
        // A 1-byte status write does nothing.
        h.t.write(REG_STATUS, &[VIRTIO_CONFIG_S_ACKNOWLEDGE as u8]);
        assert_eq!(h.r32(REG_STATUS), 0);
        h.w32(0x0e8, 5);
        assert_eq!(h.r32(REG_STATUS), 0);
    }

    #[test]
    fn config_space_reads_and_writes_go_to_the_device() {
        let mut h = harness(&[16]);
        let mut b = [0u8; 2];
        h.t.read(REG_CONFIG + 2, &mut b);
        assert_eq!(b, [3, 4]);
        h.t.write(REG_CONFIG + 1, &[0xaa]);
        let mut b = [0u8; 4];
        h.t.read(REG_CONFIG, &mut b);
        assert_eq!(b, [1, 0xaa, 3, 4]);
        let mut past = [0xffu8; 8];
        h.t.read(MMIO_DEVICE_SIZE - 4, &mut past);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn feature_negotiation_accepts_a_subset() {
        let mut h = harness(&[16]);
        assert_eq!(h.negotiate(VERSION_1 | FEATURE_X), NEGOTIATED);
        assert_eq!(h.dev.lock().unwrap().acked, VERSION_1 | FEATURE_X);
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_features_or_no_version_1() {
        let mut h = harness(&[16]);
        let status = h.negotiate(VERSION_1 | (1 << 5));
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        assert_eq!(h.dev.lock().unwrap().acked, 0);

        let mut h = harness(&[16]);
        let status = h.negotiate(FEATURE_X);
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn status_bits_must_come_in_order() {
        let mut h = harness(&[16]);
        h.w32(REG_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(h.r32(REG_STATUS), 0);
        h.w32(REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        h.w32(REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(h.r32(REG_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        // Clearing a bit without a reset is ignored.
        h.w32(REG_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(h.r32(REG_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        // Features written after FEATURES_OK are ignored.
        h.negotiate(VERSION_1);
        h.w32(REG_DRIVER_FEATURES_SEL, 0);
        h.w32(REG_DRIVER_FEATURES, FEATURE_X as u32);
        assert_eq!(h.dev.lock().unwrap().acked, VERSION_1);
    }

    #[test]
    fn queue_setup_and_activation() {
        let mut h = harness(&[16, 8]);
        h.w32(REG_QUEUE_SEL, 1);
        assert_eq!(h.r32(REG_QUEUE_NUM_MAX), 8);
        h.w32(REG_QUEUE_SEL, 2);
        assert_eq!(h.r32(REG_QUEUE_NUM_MAX), 0);
        // Queue registers are ignored before FEATURES_OK.
        h.w32(REG_QUEUE_SEL, 0);
        h.w32(REG_QUEUE_READY, 1);
        assert_eq!(h.r32(REG_QUEUE_READY), 0);

        assert_eq!(h.negotiate(VERSION_1), NEGOTIATED);
        h.setup_queue(0, 8, 0x1_0000);
        // Invalid sizes (not a power of two, above the maximum) are refused.
        h.setup_queue(1, 16, 0x2_0000);
        h.w32(REG_QUEUE_NUM, 3);
        assert_eq!(h.r32(REG_QUEUE_READY), 1);
        assert_eq!(h.driver_ok(), NEGOTIATED | VIRTIO_CONFIG_S_DRIVER_OK);

        let dev = h.dev.lock().unwrap();
        let queues = dev.activated_with.as_ref().expect("device activated");
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].size(), 8);
        assert_eq!(queues[0].desc_table(), 0x1_0000);
        assert_eq!(queues[0].avail_ring(), 0x1_1000);
        assert_eq!(queues[0].used_ring(), 0x1_2000);
        assert_eq!(queues[1].size(), 8, "size 16 exceeds the maximum of 8 and 3 is not a power of two");
        drop(dev);

        // Queue registers are frozen after DRIVER_OK.
        h.w32(REG_QUEUE_SEL, 0);
        h.w32(REG_QUEUE_READY, 0);
        assert_eq!(h.r32(REG_QUEUE_READY), 1);
    }

    #[test]
    fn queues_outside_memory_or_not_ready_set_needs_reset() {
        let mut h = harness(&[16]);
        h.negotiate(VERSION_1);
        h.setup_queue(0, 16, 0xfff_0000); // beyond the 1 MiB of guest memory
        let status = h.driver_ok();
        assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(!h.dev.lock().unwrap().is_activated());
        assert_ne!(h.irq.interrupt_status() & VIRTIO_MMIO_INT_CONFIG, 0);

        let mut h = harness(&[16, 16]);
        h.negotiate(VERSION_1);
        h.setup_queue(0, 16, 0x1_0000); // queue 1 left unready
        assert_ne!(h.driver_ok() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(!h.dev.lock().unwrap().is_activated());
    }

    #[test]
    fn activation_refused_by_the_device_sets_needs_reset() {
        let mut h = harness(&[16]);
        h.dev.lock().unwrap().refuse_activation = true;
        h.negotiate(VERSION_1);
        h.setup_queue(0, 16, 0x1_0000);
        let status = h.driver_ok();
        assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn reset_returns_device_and_transport_to_initial_state() {
        let mut h = harness(&[16]);
        h.negotiate(VERSION_1);
        h.setup_queue(0, 8, 0x1_0000);
        h.driver_ok();
        h.irq.trigger_vring().unwrap();
        h.w32(REG_STATUS, 0);
        assert_eq!(h.r32(REG_STATUS), 0);
        assert_eq!(h.r32(REG_INTERRUPT_STATUS), 0);
        h.w32(REG_QUEUE_SEL, 0);
        assert_eq!(h.r32(REG_QUEUE_READY), 0);
        let dev = h.dev.lock().unwrap();
        assert_eq!(dev.resets, 1);
        assert!(!dev.is_activated());
        drop(dev);
        // And it can be brought up again.
        assert_eq!(h.negotiate(VERSION_1), NEGOTIATED);
        h.setup_queue(0, 16, 0x1_0000);
        assert_eq!(h.driver_ok() & VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(h.dev.lock().unwrap().activated_with.as_ref().unwrap()[0].size(), 16);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let mut h = harness(&[16]);
        h.irq.trigger_vring().unwrap();
        h.irq.trigger_config().unwrap();
        assert_eq!(h.r32(REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        h.w32(REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(h.r32(REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        h.w32(REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(h.r32(REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_notify_write_signals_the_queue_eventfd() {
        let mut h = harness(&[16, 16]);
        h.w32(REG_QUEUE_NOTIFY, 1);
        h.w32(REG_QUEUE_NOTIFY, 9); // no such queue: ignored
        let dev = h.dev.lock().unwrap();
        assert!(dev.events[0].read().is_err(), "queue 0 was not notified");
        assert_eq!(dev.events[1].read().unwrap(), 1);
    }

    #[test]
    fn bad_queue_maximum_is_rounded_down() {
        let mut h = harness(&[100, 0]);
        h.w32(REG_QUEUE_SEL, 0);
        assert_eq!(h.r32(REG_QUEUE_NUM_MAX), 64);
        h.w32(REG_QUEUE_SEL, 1);
        assert_eq!(h.r32(REG_QUEUE_NUM_MAX), 1);
    }
}
