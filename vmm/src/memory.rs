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
