//! Leaving the initramfs. The kernel starts PID 1 on `rootfs`, the one mount that
//! pivot_root(2) refuses to move (EINVAL), so containers could only be entered with
//! MS_MOVE + chroot, which leaves the agent's root reachable from a container that
//! escapes its chroot. Like switch_root (util-linux, u-root) and systemd, PID 1 first
//! moves itself onto a tmpfs: mount a tmpfs, move the initramfs's files into it, move
//! the tmpfs onto `/`, chroot into it and exec `/init` again. The new root is an
//! ordinary mount with a parent, so pivot_root works for every container after that.

use std::ffi::{CStr, CString};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// Where the new root is built before it is moved onto `/`.
const NEW_ROOT: &str = "/.palisade-root";
/// statfs magic of ramfs (include/uapi/linux/magic.h), the initramfs without tmpfs.
const RAMFS_MAGIC: libc::__fsword_t = 0x858458f6;
/// The mount source that names the agent's root in /proc/mounts.
const ROOT_SOURCE: &str = "palisade-root";

#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    #[error("leaving the initramfs: {what}: {errno}")]
    Sys { what: String, errno: nix::errno::Errno },
    #[error("leaving the initramfs: {what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SwitchRootError {
    let what = what.into();
    move |errno| SwitchRootError::Sys { what, errno }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SwitchRootError {
    let what = what.into();
    move |source| SwitchRootError::Io { what, source }
}

/// The filesystem type of the topmost mount on `/` in a /proc/self/mountinfo text
/// (`rootfs` for the initramfs), or `None` when no mount is on `/`.
pub fn root_fstype(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = *fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            (mount_point == "/").then(|| fields.get(dash + 1).copied()).flatten()
        })
        .next_back()
}

/// Whether `/` is the kernel's initial rootfs: a ramfs/tmpfs (statfs) whose mount is
/// of type `rootfs` (mountinfo; /proc is mounted for the look and left mounted).
pub fn on_initramfs() -> Result<bool, SwitchRootError> {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    let fs = statfs("/").map_err(sys("statfs /"))?;
    if fs.filesystem_type() != FsType(RAMFS_MAGIC) && fs.filesystem_type() != TMPFS_MAGIC {
        return Ok(false);
    }
    fs::DirBuilder::new().recursive(true).mode(0o555).create("/proc").map_err(io("creating /proc"))?;
    match nix::mount::mount(Some("proc"), "/proc", Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
    {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(e) => return Err(sys("mounting proc on /proc")(e)),
    }
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(io("reading /proc/self/mountinfo"))?;
    Ok(root_fstype(&info) == Some("rootfs"))
}

/// Copies the tree `from` into the existing directory `to`, keeping modes, owners,
/// symlinks and device nodes, and not descending into other filesystems (or into
/// `to` itself). Removes each copied entry from `from` when `remove` (freeing the
/// initramfs's memory).
pub fn move_tree(from: &Path, to: &Path, remove: bool) -> Result<(), SwitchRootError> {
    let dev = fs::symlink_metadata(from).map_err(io(format!("stat {}", from.display())))?.dev();
    copy_dir(from, to, dev, remove)
}

fn c_path(p: &Path) -> Result<CString, SwitchRootError> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| io(format!("{}", p.display()))(std::io::ErrorKind::InvalidInput.into()))
}

fn copy_dir(from: &Path, to: &Path, dev: u64, remove: bool) -> Result<(), SwitchRootError> {
    let target = fs::symlink_metadata(to).map_err(io(format!("stat {}", to.display())))?;
    for entry in fs::read_dir(from).map_err(io(format!("reading {}", from.display())))? {
        let entry = entry.map_err(io(format!("reading {}", from.display())))?;
        let src = entry.path();
        let dst: PathBuf = to.join(entry.file_name());
        let md = fs::symlink_metadata(&src).map_err(io(format!("stat {}", src.display())))?;
        let ft = md.file_type();
        if ft.is_dir() && md.ino() == target.ino() && md.dev() == target.dev() {
            continue; // the new root itself
        }
        if ft.is_dir() {
            fs::create_dir(&dst).map_err(io(format!("creating {}", dst.display())))?;
            if md.dev() == dev {
                copy_dir(&src, &dst, dev, remove)?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(io(format!("reading link {}", src.display())))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io(format!("creating link {}", dst.display())))?;
        } else if ft.is_file() {
            fs::copy(&src, &dst).map_err(io(format!("copying {} to {}", src.display(), dst.display())))?;
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() {
            let kind = if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            let perm = nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777);
            nix::sys::stat::mknod(&dst, kind, perm, md.rdev()).map_err(sys(format!("mknod {}", dst.display())))?;
        } else {
            continue; // sockets: nothing to carry over
        }
        let c_dst = c_path(&dst)?;
        // SAFETY: lchown on a valid NUL-terminated path we just created.
        if unsafe { libc::lchown(c_dst.as_ptr(), md.uid(), md.gid()) } != 0 {
            return Err(io(format!("chown {}", dst.display()))(std::io::Error::last_os_error()));
        }
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io(format!("chmod {}", dst.display())))?;
        }
        if remove && md.dev() == dev {
            let removed = if ft.is_dir() { fs::remove_dir(&src) } else { fs::remove_file(&src) };
            // Best effort: a leftover only costs memory in the hidden initramfs.
            let _ = removed;
        }
    }
    Ok(())
}

/// Moves PID 1 from the initramfs onto a tmpfs and re-executes `/init` there; returns
/// only on error. `argv` are the agent's arguments (passed on unchanged).
pub fn switch_to_tmpfs(argv: &[CString]) -> Result<std::convert::Infallible, SwitchRootError> {
    let new_root = Path::new(NEW_ROOT);
    fs::DirBuilder::new().mode(0o755).create(new_root).map_err(io(format!("creating {NEW_ROOT}")))?;
    nix::mount::mount(Some(ROOT_SOURCE), new_root, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(sys(format!("mounting a tmpfs on {NEW_ROOT}")))?;
    // /proc was mounted to look at the root; the new root mounts its own.
    let _ = nix::mount::umount2("/proc", nix::mount::MntFlags::MNT_DETACH);
    move_tree(Path::new("/"), new_root, true)?;
    nix::unistd::chdir(new_root).map_err(sys(format!("chdir {NEW_ROOT}")))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(sys(format!("moving {NEW_ROOT} onto /")))?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir / in the new root"))?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let init: &CStr = c"/init";
    nix::unistd::execve(init, argv, &env).map_err(sys("executing /init in the new root"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_fstype_is_the_topmost_mount_on_slash() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n17 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n";
        assert_eq!(root_fstype(initramfs), Some("rootfs"));
        // After the switch: the tmpfs is on "/", its parent (rootfs) outside the root.
        let switched = "24 1 0:20 / / rw,relatime - tmpfs palisade-root rw,mode=755\n25 24 0:21 / /proc rw - proc proc rw\n";
        assert_eq!(root_fstype(switched), Some("tmpfs"));
        // Optional fields before the separator do not shift the type.
        let ext4 = "29 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/vda rw\n";
        assert_eq!(root_fstype(ext4), Some("ext4"));
        assert_eq!(root_fstype("25 24 0:21 / /proc rw - proc proc rw\n"), None);
    }

    #[test]
    fn move_tree_keeps_files_links_and_modes_and_skips_the_target() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::write(s.join("init"), b"\x7fELF agent").unwrap();
        fs::set_permissions(s.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(s.join("dev")).unwrap();
        fs::create_dir_all(s.join("tmp")).unwrap();
        fs::set_permissions(s.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("../init", s.join("dev/agent")).unwrap();
        let fifo = nix::sys::stat::SFlag::S_IFIFO;
        nix::sys::stat::mknod(&s.join("dev/fifo"), fifo, nix::sys::stat::Mode::from_bits_truncate(0o600), 0).unwrap();
        // The new root lives inside the old one, as /.palisade-root does.
        let dst = s.join(".palisade-root");
        fs::create_dir(&dst).unwrap();
        move_tree(s, &dst, true).unwrap();
        assert_eq!(fs::read(dst.join("init")).unwrap(), b"\x7fELF agent");
        assert_eq!(fs::metadata(dst.join("init")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(dst.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(fs::read_link(dst.join("dev/agent")).unwrap(), Path::new("../init"));
        assert!(fs::symlink_metadata(dst.join("dev/fifo")).unwrap().file_type().is_fifo());
        assert!(!dst.join(".palisade-root").exists(), "the target was copied into itself");
        assert!(!s.join("init").exists() && !s.join("dev").exists(), "the originals were not removed");
    }
}
