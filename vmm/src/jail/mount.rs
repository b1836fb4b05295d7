//! The VMM's root: a small tmpfs holding only what the VMM needs — device nodes it owns
//! and read-only (or, for writable disks and the serial log, read-write) bind mounts of
//! the caller's files — entered with `pivot_root`, the old root unmounted.
//!
//! Everything here happens in the VMM's own mount namespace (made private first), so
//! nothing is mounted on the host and nothing is left mounted when the VMM ends, however
//! it ends.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{major, makedev, minor, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, pivot_root, Gid, Uid};

use super::JailError;

/// The directory of the VM's files inside the jail.
pub const VM_DIR: &str = "/vm";

/// One thing in the jail's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A character device node like the host's `host` node (same major/minor), owned by the
    /// VMM's uid and gid, mode 0600.
    Device { path: PathBuf, host: PathBuf },
    /// The host file `host` bind-mounted at `path`.
    Bind { path: PathBuf, host: PathBuf, read_only: bool },
}

impl Entry {
    pub fn path(&self) -> &Path {
        match self {
            Entry::Device { path, .. } | Entry::Bind { path, .. } => path,
        }
    }
}

/// Paths inside the jail are absolute; this is where they are while the root is built.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn sys(what: String) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError::Sys { what, source: e.into() }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// Makes every mount of the new mount namespace private: nothing mounted from then on
/// reaches the host's mount namespace.
pub fn make_private() -> Result<(), JailError> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("making / private in the new mount namespace".into()))
}

/// Builds the root at `root` (an empty directory) and makes it the process's `/`; after
/// [`make_private`].
pub fn enter_root(root: &Path, entries: &[Entry], uid: u32, gid: u32) -> Result<(), JailError> {
    mount(Some("palisade-jail"), root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=0755,size=256k,nr_inodes=64"))
        .map_err(sys(format!("mounting the jail's tmpfs on {}", root.display())))?;

    for entry in entries {
        let target = under(root, entry.path());
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        match entry {
            Entry::Device { host, .. } => {
                let meta = std::fs::metadata(host).map_err(io(format!("device {}", host.display())))?;
                if !meta.file_type().is_char_device() {
                    return Err(JailError::NotADevice(host.clone()));
                }
                let rdev = meta.rdev();
                mknod(&target, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(major(rdev), minor(rdev)))
                    .map_err(sys(format!("mknod {} (like {})", target.display(), host.display())))?;
                chown(&target, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(sys(format!("chown {} to {uid}:{gid}", target.display())))?;
            }
            Entry::Bind { host, read_only, .. } => {
                std::fs::File::create(&target).map_err(io(format!("creating the mount point {}", target.display())))?;
                mount(Some(host.as_path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(sys(format!(
                    "bind-mounting {} at {}",
                    host.display(),
                    entry.path().display()
                )))?;
                let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
                if *read_only {
                    flags |= MsFlags::MS_RDONLY;
                }
                mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
                    .map_err(sys(format!("remounting {} with its flags", entry.path().display())))?;
            }
        }
    }

    // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached.
    chdir(root).map_err(sys(format!("chdir {}", root.display())))?;
    pivot_root(".", ".").map_err(sys(format!("pivot_root into {}", root.display())))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("unmounting the old root".into()))?;
    chdir("/").map_err(sys("chdir / in the jail".into()))?;
    // The root itself is read-only: the VMM writes only to its bind-mounted files.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("remounting the jail root read-only".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_paths_land_under_the_root() {
        assert_eq!(under(Path::new("/run/j/root"), Path::new("/vm/kernel")), Path::new("/run/j/root/vm/kernel"));
        assert_eq!(under(Path::new("/r"), Path::new("dev/kvm")), Path::new("/r/dev/kvm"));
    }
}
