//! The vhost-user frontend shared by devices whose queues another process serves (the
//! backend: virtiofsd for virtio-fs).
//!
//! The VMM keeps the control path: it negotiates features, hands the backend guest memory
//! (the memfd regions, [`crate::memory::Backing::Memfd`]) and each queue's addresses, its
//! kick eventfd (the KVM ioeventfd on `QueueNotify`) and its call eventfd (the transport's
//! [`VirtioInterrupt::notifier`], a KVM irqfd). From then on the guest and the backend talk
//! with no VMM code in the data path.
//!
//! The connection is a Unix stream the caller opened (the jail's supervisor connects, the
//! jailed VMM has no filesystem to find the socket in).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vhost::vhost_user::{Frontend, VhostUserFrontend as _, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::device::GuestMemory;
use super::interrupt::{InterruptKind, VirtioInterrupt};

/// Device features a vhost-user backend may offer the driver through this VMM: the ring
/// layouts the virtio-mmio transport sets up (split rings), nothing that needs the VMM.
pub const PASSED_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("vhost-user backend: {step}: {source}")]
    Protocol { step: &'static str, source: vhost::Error },
    #[error("vhost-user backend: it does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    #[error("vhost-user backend: guest memory region at {0:#x} is not backed by a file it could map (the VM needs memfd memory)")]
    AnonymousMemory(u64),
    #[error("vhost-user backend: queue {0}: its rings are not in guest memory")]
    QueueOutsideMemory(usize),
    #[error("vhost-user backend: the transport cannot deliver the backend's interrupts directly")]
    NoNotifier,
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> VhostUserError {
    move |source| VhostUserError::Protocol { step, source }
}

/// A connection to one vhost-user backend.
pub struct VhostUserFrontend {
    frontend: Frontend,
    /// What the backend offers (without the vhost-user-only bit).
    backend_features: u64,
    /// Whether `VHOST_USER_F_PROTOCOL_FEATURES` was offered (rings then start disabled).
    protocol_features: bool,
    /// Queues handed to the backend, to stop on reset.
    started_queues: usize,
}

impl VhostUserFrontend {
    /// Takes ownership of the backend on `stream` and learns its features.
    pub fn new(stream: UnixStream, queues: usize) -> Result<Self, VhostUserError> {
        let mut frontend = Frontend::from_stream(stream, queues as u64);
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VhostUserError::NoVersion1(features));
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let protocol_features = features & protocol_bit != 0;
        if protocol_features {
            // Nothing optional is needed: the tag and queue count are in the VMM's config
            // space, memory is one table.
            let offered = frontend.get_protocol_features().map_err(step("GET_PROTOCOL_FEATURES"))?;
            let wanted = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend.set_protocol_features(wanted).map_err(step("SET_PROTOCOL_FEATURES"))?;
        }
        Ok(VhostUserFrontend { frontend, backend_features: features & !protocol_bit, protocol_features, started_queues: 0 })
    }

    /// The device features to offer the driver.
    pub fn device_features(&self) -> u64 {
        self.backend_features & PASSED_FEATURES
    }

    /// Hands the backend the driver's features, guest memory and every queue, then enables
    /// the queues: from here the backend serves them.
    pub fn activate(
        &mut self,
        acked_features: u64,
        mem: &GuestMemory,
        queues: &[Queue],
        kicks: &[EventFd],
        irq: &dyn VirtioInterrupt,
    ) -> Result<(), VhostUserError> {
        let protocol_bit = if self.protocol_features { VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() } else { 0 };
        self.frontend.set_features((acked_features & self.device_features()) | protocol_bit).map_err(step("SET_FEATURES"))?;
        self.frontend.set_mem_table(&memory_table(mem)?).map_err(step("SET_MEM_TABLE"))?;
        for (index, (queue, kick)) in queues.iter().zip(kicks).enumerate() {
            let call = irq.notifier(InterruptKind::Queue(index as u16)).ok_or(VhostUserError::NoNotifier)?;
            let host = |addr: u64| {
                mem.get_host_address(GuestAddress(addr)).map(|p| p as u64).map_err(|_| VhostUserError::QueueOutsideMemory(index))
            };
            let rings = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_num(index, queue.size()).map_err(step("SET_VRING_NUM"))?;
            self.frontend.set_vring_addr(index, &rings).map_err(step("SET_VRING_ADDR"))?;
            self.frontend.set_vring_base(index, 0).map_err(step("SET_VRING_BASE"))?;
            self.frontend.set_vring_call(index, call).map_err(step("SET_VRING_CALL"))?;
            self.frontend.set_vring_kick(index, kick).map_err(step("SET_VRING_KICK"))?;
            self.started_queues = index + 1;
        }
        if self.protocol_features {
            for index in 0..self.started_queues {
                self.frontend.set_vring_enable(index, true).map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops every queue the backend serves (the driver reset the device): `GET_VRING_BASE`
    /// stops a ring in vhost-user.
    pub fn reset(&mut self) -> Result<(), VhostUserError> {
        for index in 0..std::mem::take(&mut self.started_queues) {
            if self.protocol_features {
                self.frontend.set_vring_enable(index, false).map_err(step("SET_VRING_ENABLE"))?;
            }
            self.frontend.get_vring_base(index).map_err(step("GET_VRING_BASE"))?;
        }
        Ok(())
    }

    /// The socket, for the event loop to notice a backend that went away.
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }
}

/// Guest memory as vhost-user describes it: each region's guest address, size, address in
/// this process, and the file and offset the backend maps.
fn memory_table(mem: &GuestMemory) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserError> {
    mem.iter()
        .map(|region| {
            let start = region.start_addr().0;
            let file = region.file_offset().ok_or(VhostUserError::AnonymousMemory(start))?;
            Ok(VhostUserMemoryRegionInfo {
                guest_phys_addr: start,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                mmap_offset: file.start(),
                mmap_handle: file.file().as_raw_fd(),
            })
        })
        .collect()
}
