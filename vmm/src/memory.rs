//! Guest RAM laid out by [`crate::arch::x86_64::layout`], registered with KVM as memory
//! slots: anonymous mappings, or — when another process must map it too (a vhost-user
//! backend such as virtiofsd) — shared mappings of one file, a memfd ([`Backing::Memfd`])
//! or the jail's ([`Backing::File`]), whose descriptor and offsets are then handed to that
//! process.

use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{self, HIMEM_START};
use crate::devices::virtio::GuestMemory;

/// The name of a guest RAM file (a memfd's, or the jail's tmpfs file:
/// [`crate::jail::guest_ram`]), which `/proc/PID/maps` shows.
pub const GUEST_RAM_NAME: &str = "palisade-guest-ram";
/// [`GUEST_RAM_NAME`] for `memfd_create`.
const GUEST_RAM_CNAME: &std::ffi::CStr = c"palisade-guest-ram";

/// Whether `path`, a mapping's path in `/proc/PID/maps` or `smaps`, is guest RAM's file:
/// `/memfd:palisade-guest-ram` or `/palisade-guest-ram` (either with " (deleted)" after it,
/// which the caller has split off with the rest of the line).
pub fn is_guest_ram_path(path: &str) -> bool {
    path.trim_start_matches("/memfd:").trim_start_matches('/') == GUEST_RAM_NAME
}

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
    #[error("guest memory: creating a {mib} MiB memfd: {source}")]
    Memfd { mib: u32, source: std::io::Error },
    #[error("guest memory: sizing its file to {mib} MiB: {source}")]
    File { mib: u32, source: std::io::Error },
}

/// What guest RAM is made of.
#[derive(Debug)]
pub enum Backing {
    /// Private anonymous memory: nothing outside the VMM maps it.
    Anonymous,
    /// One memfd, mapped shared: a vhost-user backend can map it too.
    Memfd,
    /// This empty file (made by the jail: [`crate::jail::guest_ram`]), sized and mapped
    /// shared, as a memfd is.
    File(File),
}

/// Maps `mib` MiB of guest RAM.
pub fn create_guest_memory(mib: u32, backing: Backing) -> Result<GuestMemory, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall { mib });
    }
    let size = u64::from(mib) << 20;
    debug_assert!(size > HIMEM_START);
    let regions = layout::ram_regions(size);
    let file = match backing {
        Backing::Anonymous => None,
        Backing::Memfd => Some(guest_memfd(mib, size)?),
        Backing::File(file) => {
            file.set_len(size).map_err(|source| MemoryError::File { mib, source })?;
            Some(file)
        }
    };
    let mut offset = 0u64;
    let mut ranges = Vec::with_capacity(regions.len());
    for (addr, len) in regions {
        let file_offset = match &file {
            Some(file) => Some(FileOffset::new(file.try_clone().map_err(|source| MemoryError::Memfd { mib, source })?, offset)),
            None => None,
        };
        ranges.push((GuestAddress(addr), len as usize, file_offset));
        offset += len;
    }
    let mem = GuestMemory::from_ranges_with_files(ranges).map_err(|source| MemoryError::Mmap { mib, source })?;
    advise_huge_pages(&mem);
    Ok(mem)
}

/// Asks the host kernel to back guest RAM with transparent huge pages (`MADV_HUGEPAGE`), as
/// Cloud Hypervisor does by default: a guest's first touch of 2 MiB then costs the host one
/// fault and KVM one 2 MiB mapping instead of 512 of each. The kernel follows the advice
/// when `/sys/kernel/mm/transparent_hugepage/enabled` (anonymous RAM) or `shmem_enabled`
/// (memfd RAM, shared with a vhost-user backend) is `madvise`/`advise`, `within_size` or
/// `always`; with `never` guest RAM stays in 4 KiB pages. Advice the kernel refuses (no THP support) is
/// not an error.
fn advise_huge_pages(mem: &GuestMemory) {
    for region in mem.iter() {
        // SAFETY: the range is exactly one of `mem`'s live mappings; MADV_HUGEPAGE changes
        // only how the kernel backs it, never its contents or its validity.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!(
                "guest memory at {:#x}: madvise(MADV_HUGEPAGE): {} (guest RAM stays in small pages)",
                region.start_addr().0,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A memfd of `size` bytes for guest RAM (close-on-exec; its pages are allocated as the
/// guest touches them).
fn guest_memfd(mib: u32, size: u64) -> Result<File, MemoryError> {
    let err = |source| MemoryError::Memfd { mib, source };
    // SAFETY: memfd_create takes a NUL-terminated name and flags, and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(GUEST_RAM_CNAME.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(err)?;
    Ok(file)
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

/// The first KVM memory slot of the devices' register pages (guest RAM takes the slots
/// below: one per region, at most two).
pub const FIRST_REGISTER_PAGE_SLOT: u32 = 16;

/// Maps `size` bytes of the VMM's memory at `host_addr` into the guest at `guest_addr`,
/// read-only, as memory slot `slot`: the guest's reads are memory reads, its writes MMIO
/// exits (or ioeventfds KVM completes), as for an unmapped address.
///
/// # Safety
///
/// `host_addr..host_addr + size` must stay mapped as long as the VM can run.
pub unsafe fn register_read_only(vm: &VmFd, slot: u32, guest_addr: u64, host_addr: u64, size: u64) -> Result<(), MemoryError> {
    let region = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: guest_addr,
        memory_size: size,
        userspace_addr: host_addr,
        flags: kvm_bindings::KVM_MEM_READONLY,
    };
    // SAFETY: the caller keeps the range mapped while the VM runs (this function's contract).
    unsafe { vm.set_user_memory_region(region) }.map_err(|source| MemoryError::Register { slot, addr: guest_addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    use vm_memory::Bytes;

    #[test]
    fn maps_the_requested_size() {
        for backing in [Backing::Anonymous, Backing::Memfd, Backing::File(tempfile::tempfile().unwrap())] {
            let mem = create_guest_memory(128, backing).unwrap();
            assert_eq!(mem.num_regions(), 1);
            assert_eq!(mem.last_addr().0, (128 << 20) - 1);
        }
    }

    #[test]
    fn memfd_memory_is_what_another_mapping_of_the_file_sees() {
        let mem = create_guest_memory(64, Backing::Memfd).unwrap();
        mem.write_slice(b"seen by the backend", GuestAddress(0x20_0000)).unwrap();
        let region = mem.iter().next().unwrap();
        let file_offset = region.file_offset().expect("a memfd region has its file");
        let mut seen = vec![0u8; 19];
        std::os::unix::fs::FileExt::read_exact_at(file_offset.file(), &mut seen, file_offset.start() + 0x20_0000).unwrap();
        assert_eq!(seen, b"seen by the backend");
        assert!(create_guest_memory(64, Backing::Anonymous).unwrap().iter().next().unwrap().file_offset().is_none());
    }

    /// The `VmFlags` smaps shows for the mapping that starts at `addr`.
    fn vm_flags_of_mapping_at(addr: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((start, _)) = range.split_once('-') {
                    if let Ok(start) = u64::from_str_radix(start, 16) {
                        inside = start == addr;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.trim().to_string();
                }
            }
        }
        panic!("no mapping starts at {addr:#x} in /proc/self/smaps");
    }

    #[test]
    fn guest_ram_is_advised_to_use_huge_pages() {
        for backing in [Backing::Anonymous, Backing::Memfd] {
            let name = format!("{backing:?}");
            let mem = create_guest_memory(64, backing).unwrap();
            let region = mem.iter().next().unwrap();
            let flags = vm_flags_of_mapping_at(region.as_ptr() as u64);
            assert!(flags.split(' ').any(|f| f == "hg"), "{name} guest RAM has VmFlags {flags:?}, without hg (MADV_HUGEPAGE)");
        }
    }

    #[test]
    fn guest_ram_files_are_known_by_their_name() {
        assert_eq!(GUEST_RAM_CNAME.to_str(), Ok(GUEST_RAM_NAME));
        assert!(is_guest_ram_path("/memfd:palisade-guest-ram"));
        assert!(is_guest_ram_path("/palisade-guest-ram"));
        assert!(!is_guest_ram_path("/memfd:something-else"));
        assert!(!is_guest_ram_path("/usr/bin/palisade-vmm"));
    }

    #[test]
    fn refuses_tiny_guests() {
        assert!(matches!(create_guest_memory(1, Backing::Anonymous), Err(MemoryError::TooSmall { mib: 1 })));
    }
}
