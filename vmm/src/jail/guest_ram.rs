//! Guest RAM that a vhost-user backend (virtiofsd) maps too: a file on a tmpfs of the VMM's
//! own, mounted `huge=always`, so that the host backs it with transparent huge pages whoever
//! touches it first — the guest through the VMM's mapping, or virtiofsd writing a file's
//! data into guest pages the guest has not touched yet — whatever the host's policy for
//! shared memory (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`, `never` on Debian,
//! which is what a memfd follows). Only `deny` on the host still turns it off.
//!
//! The tmpfs is mounted in the VMM's own mount namespace and detached as soon as the file
//! is made and unlinked: the file lives on through its descriptor alone, nothing is
//! mounted for the VMM to reach, and nothing is left when the VMM ends.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::JailError;
use crate::memory::GUEST_RAM_NAME;

/// A transparent huge page of x86-64 (the tmpfs is sized in whole ones).
const HUGE_PAGE: u64 = 2 << 20;

/// Makes an empty file for `size` bytes of guest RAM on a `huge=always` tmpfs mounted at
/// `mount_point` (an empty directory), then detaches the tmpfs. The calling thread must be
/// in a mount namespace of its own whose mounts do not propagate to the host's. Returns
/// `None` when the kernel cannot give tmpfs huge pages (built without transparent huge
/// pages): guest RAM is then a memfd.
pub fn create(mount_point: &Path, size: u64) -> Result<Option<File>, JailError> {
    let limit = size.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let options = format!("huge=always,size={limit},nr_inodes=2,mode=0700");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some(GUEST_RAM_NAME), mount_point, Some("tmpfs"), flags, Some(options.as_str())) {
        Ok(()) => {}
        Err(nix::Error::EINVAL) => {
            tracing::debug!("guest RAM: this kernel's tmpfs has no huge pages (mount -o huge=always: EINVAL): a memfd instead");
            return Ok(None);
        }
        Err(e) => return Err(JailError::sys(format!("mounting the guest RAM's tmpfs ({options}) on {}", mount_point.display()), e)),
    }
    let path = mount_point.join(GUEST_RAM_NAME);
    let made = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path);
    let unlinked = match &made {
        Ok(_) => std::fs::remove_file(&path),
        Err(_) => Ok(()),
    };
    // Detached whatever happened: the file, if made, keeps its tmpfs alive.
    let detached = umount2(mount_point, MntFlags::MNT_DETACH);
    let file = made.map_err(|source| JailError::Sys { what: format!("creating guest RAM's file {}", path.display()), source })?;
    unlinked.map_err(|source| JailError::Sys { what: format!("unlinking guest RAM's file {}", path.display()), source })?;
    detached.map_err(|e| JailError::sys(format!("detaching the guest RAM's tmpfs from {}", mount_point.display()), e))?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// What virtiofsd does to guest RAM: it maps the file without any huge-page advice and
    /// writes into pages nobody has touched. On the guest RAM file one byte so written
    /// brings a whole huge page in, whatever the host's `shmem_enabled` says (short of
    /// `deny`); on a memfd under Debian's `never` (or `advise`) it would be a 4 KiB page.
    #[test]
    fn a_backends_first_write_into_guest_ram_gets_a_huge_page() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let policy = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").unwrap_or_default();
        if policy.is_empty() || policy.contains("[deny]") {
            eprintln!("skipped: this host has no shared-memory huge pages ({})", policy.trim());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mount_point = dir.path().to_path_buf();
        // A thread of its own, in a mount namespace of its own, so that nothing is mounted
        // for the rest of the tests or the host.
        let (file, left) = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
            let file = create(&mount_point, 64 << 20).unwrap().expect("a kernel with transparent huge pages");
            (file, std::fs::read_dir(&mount_point).unwrap().count())
        })
        .join()
        .unwrap();
        assert_eq!(left, 0, "the tmpfs is still mounted or the file still named");
        let len = 64usize << 20;
        file.set_len(len as u64).unwrap();
        assert_eq!(file.metadata().unwrap().blocks(), 0, "a new guest RAM file holds no memory");
        // SAFETY: a new shared mapping of the whole file, which nothing else in this process maps.
        let addr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: 5 MiB is inside the 64 MiB mapping made above.
        unsafe { addr.cast::<u8>().add(5 << 20).write_volatile(1) };
        // SAFETY: unmaps exactly the mapping made above, which nothing uses any more.
        unsafe { libc::munmap(addr, len) };
        // st_blocks counts 512-byte blocks: a huge page is 4096 of them, a small page 8.
        let held_kib = file.metadata().unwrap().blocks() / 2;
        assert_eq!(held_kib, 2048, "one byte written into guest RAM brought in {held_kib} KiB, not one huge page");
    }
}
