//! Guest RAM: anonymous mappings laid out by [`crate::arch::x86_64::layout`], registered
//! with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{self, HIMEM_START};
use crate::devices::virtio::GuestMemory;

/// Smallest guest the layout supports: boot structures, MP table and some high memory.
pub const MIN_MEMORY_MIB: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory: {mib} MiB requested, at least {MIN_MEMORY_MIB} MiB needed")]
    TooSmall { mib: u32 },
    #[error("guest memory: mapping {mib} MiB: {source}")]
    Mmap { mib: u32, source: vm_memory::mmap::FromRangesError },
    #[error("guest memory: KVM_SET_USER_MEMORY_REGION for slot {slot} at {addr:#x}: {source}")]
    Register { slot: u32, addr: u64, source: kvm_ioctls::Error },
    #[error("guest memory: starting the thread that registers it: {0}")]
    Helper(std::io::Error),
    #[error("guest memory: the thread registering it panicked")]
    HelperPanicked,
}

/// Maps `mib` MiB of guest RAM.
pub fn create_guest_memory(mib: u32) -> Result<GuestMemory, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall { mib });
    }
    let size = u64::from(mib) << 20;
    debug_assert!(size > HIMEM_START);
    let ranges: Vec<(GuestAddress, usize)> =
        layout::ram_regions(size).into_iter().map(|(addr, len)| (GuestAddress(addr), len as usize)).collect();
    GuestMemory::from_ranges(&ranges).map_err(|source| MemoryError::Mmap { mib, source })
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let addr = region.start_addr().0;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: addr,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`; the caller keeps `mem` alive
        // (it holds a clone) until the VM's vCPUs have stopped and the VM fd is closed.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(|source| MemoryError::Register { slot, addr, source })?;
    }
    Ok(())
}

/// Guest memory being registered with KVM on a helper thread: registration waits for an
/// SRCU grace period in KVM (milliseconds, the largest single item of a start-up), and
/// nothing but running a vCPU needs it done. [`MemoryRegistration::finish`] waits for it;
/// dropping an unfinished registration waits too, so the thread never outlives the run.
pub struct MemoryRegistration {
    thread: Option<std::thread::JoinHandle<Result<(), MemoryError>>>,
}

impl MemoryRegistration {
    /// Starts registering every region of `mem` with `vm`. The thread works on its own
    /// duplicate of the VM's descriptor and its own handle on the mappings, so nothing it
    /// uses can be closed or unmapped under it.
    pub fn start(kvm: &kvm_ioctls::Kvm, vm: &VmFd, mem: &GuestMemory) -> Result<Self, MemoryError> {
        use std::os::fd::AsRawFd;
        // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor for the VM's open file.
        let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(MemoryError::Helper(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor of a KVM VM file, owned by nobody else: the
        // VmFd built on it owns it and closes it when the thread is done.
        let vm = unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(|e| MemoryError::Helper(e.into()))?;
        let mem = mem.clone();
        let thread = std::thread::Builder::new()
            .name("memslots".into())
            .spawn(move || register_guest_memory(&vm, &mem))
            .map_err(MemoryError::Helper)?;
        Ok(MemoryRegistration { thread: Some(thread) })
    }

    /// Waits until the memory is registered.
    pub fn finish(mut self) -> Result<(), MemoryError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(MemoryError::HelperPanicked),
            None => Ok(()),
        }
    }
}

impl Drop for MemoryRegistration {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn maps_the_requested_size() {
        let mem = create_guest_memory(128).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr().0, (128 << 20) - 1);
    }

    #[test]
    fn refuses_tiny_guests() {
        assert!(matches!(create_guest_memory(1), Err(MemoryError::TooSmall { mib: 1 })));
    }
}
