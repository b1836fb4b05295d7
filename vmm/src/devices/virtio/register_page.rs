//! A virtio-mmio device's registers as the guest reads them, kept in a page of host memory
//! that KVM maps read-only at the device's window (a `KVM_MEM_READONLY` slot), so that a
//! register read is a memory read inside the guest instead of an exit out to the VMM.
//!
//! The one read a driver makes on every interrupt is `InterruptStatus`; over virtio-mmio it
//! was the last exit out to the VMM of each request a vhost-user backend serves
//! (docs/benchmarks.md, "Exits of one request"). Writes still trap: a write to a read-only
//! slot is an MMIO exit (or an ioeventfd KVM completes), and the transport writes the page
//! anew after each one ([`crate::devices::virtio::mmio::MmioTransport`]), before the vCPU
//! that wrote runs on. `InterruptStatus` lives in the page itself: the interrupt's side
//! ([`crate::devices::virtio::IrqTrigger`]) sets and clears its bits there.
//!
//! The guest can only read the page; what it reads is exactly what a trapped read would
//! have answered (the transport's unit tests compare every word).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// The size of the page: one device's window (`mmio::MMIO_DEVICE_SIZE`).
pub const REGISTER_PAGE_SIZE: usize = 0x1000;

/// One page of registers, mapped in the VMM; shared by a device's transport and interrupt.
pub struct RegisterPage {
    base: NonNull<AtomicU32>,
}

// SAFETY: the page is only ever accessed through `AtomicU32`s (here, and by the guest through
// KVM's read-only mapping), so sharing it between threads is what atomics are for.
unsafe impl Send for RegisterPage {}
// SAFETY: as above.
unsafe impl Sync for RegisterPage {}

impl RegisterPage {
    /// A zeroed page.
    pub fn new() -> io::Result<RegisterPage> {
        // SAFETY: a fresh anonymous private mapping; nothing else refers to that range.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGISTER_PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(addr.cast::<AtomicU32>()).ok_or_else(|| io::Error::other("mmap returned a null page"))?;
        Ok(RegisterPage { base })
    }

    /// The page's address in the VMM, for KVM's memory slot.
    pub fn host_address(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// The 32-bit word at byte `offset` (rounded down to a multiple of 4; `None` past the
    /// page).
    pub fn word(&self, offset: u64) -> Option<&AtomicU32> {
        let index = usize::try_from(offset / 4).ok().filter(|&i| i < REGISTER_PAGE_SIZE / 4)?;
        // SAFETY: `index` is inside the page, which stays mapped (and 4-aligned) as long as
        // `self` lives; every access to it is atomic.
        Some(unsafe { &*self.base.as_ptr().add(index) })
    }

    /// Writes `value` (the register's little-endian bytes, as the guest reads them) at
    /// `offset`; offsets past the page are ignored.
    pub fn store(&self, offset: u64, value: u32) {
        if let Some(word) = self.word(offset) {
            word.store(value.to_le(), Ordering::SeqCst);
        }
    }

    /// Writes `bytes` from byte `offset` (a multiple of 4), word by word, so that no word a
    /// guest reads is ever half old and half new.
    pub fn store_bytes(&self, offset: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            self.store(offset + 4 * i as u64, u32::from_le_bytes(word));
        }
    }

    /// The value at `offset`, as the guest reads it.
    pub fn load(&self, offset: u64) -> u32 {
        self.word(offset).map_or(0, |w| u32::from_le(w.load(Ordering::SeqCst)))
    }
}

impl Drop for RegisterPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once. KVM's slot for it belongs to the
        // VM, which the owners of this page (its device's transport and interrupt) outlive.
        unsafe { libc::munmap(self.base.as_ptr().cast(), REGISTER_PAGE_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_bytes_land_where_the_guest_reads_them() {
        let page = RegisterPage::new().unwrap();
        assert_eq!(page.load(0), 0);
        page.store(0x60, 3);
        assert_eq!(page.load(0x60), 3);
        assert_eq!(page.load(0x61), 3, "an offset inside a word reads that word");
        page.store_bytes(0x100, b"myfs\0\0");
        assert_eq!(page.load(0x100), u32::from_le_bytes(*b"myfs"));
        assert_eq!(page.load(0x104), 0);
        // SAFETY: reading the page's bytes as the guest would (the page is live).
        let bytes = unsafe { std::slice::from_raw_parts((page.host_address() + 0x100) as *const u8, 4) };
        assert_eq!(bytes, b"myfs");
        // Past the page: nothing written, zero read, no panic.
        page.store(REGISTER_PAGE_SIZE as u64, 1);
        assert_eq!(page.load(REGISTER_PAGE_SIZE as u64), 0);
        assert!(page.word(u64::MAX).is_none());
    }
}
