//! Binding host directories and files into the share of a VM that is already running: how
//! a container joins a pod's VM. virtiofsd serves from a mount namespace of its own whose
//! root is the shared directory (its `--sandbox namespace`), so a bind attached there
//! reaches the files it serves, and nothing on the host sees it. (Were virtiofsd still in
//! the namespace [`crate::virtiofsd`] made for it, the bind goes there, under the shared
//! directory, which is a shared mount that its sandbox would receive.)
//!
//! The bind is cloned here, in the caller's namespace (where containerd or podman mounted
//! the container's root), with `open_tree`, made nosuid, nodev (and read-only if asked) with
//! `mount_setattr`, and attached by a child that entered virtiofsd's namespace with
//! `move_mount`. A child, because a threaded process cannot change its mount namespace.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LiveShareError {
    #[error("{path}: {what}: {source}")]
    Sys { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("{target}: in the mount namespace of virtiofsd {pid}: {what}: {source}")]
    InNamespace { target: PathBuf, pid: u32, what: &'static str, source: std::io::Error },
}

fn c_path(path: &Path) -> Result<CString, LiveShareError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| LiveShareError::Sys {
        path: path.into(),
        what: "a path with a NUL byte",
        source: std::io::Error::other(e),
    })
}

/// A running virtiofsd's shared directory.
#[derive(Debug, Clone)]
pub struct LiveShare {
    /// virtiofsd (the process the sandbox records).
    pub pid: u32,
    /// Its shared directory, as the host sees it.
    pub dir: PathBuf,
}

impl LiveShare {
    /// Where `path` (inside the share) is in virtiofsd's mount namespace: under `/` when the
    /// namespace's root is the shared directory (virtiofsd's own sandbox, after its
    /// pivot_root), else where the host has it.
    fn target(&self, path: &str) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata(format!("/proc/{}/root", self.pid));
        let share = std::fs::metadata(&self.dir);
        match (root, share) {
            (Ok(r), Ok(s)) if r.dev() == s.dev() && r.ino() == s.ino() => Path::new("/").join(path),
            _ => self.dir.join(path),
        }
    }

    /// Binds `host` (a directory or a file, with everything mounted under it) at `path`
    /// inside the share, where a placeholder of the same kind must be.
    pub fn attach(&self, host: &Path, path: &str, read_only: bool) -> Result<(), LiveShareError> {
        attach(self.pid, host, &self.target(path), read_only)
    }

    /// Unmounts what is bound at `path` inside the share (nothing there is not an error).
    pub fn detach(&self, path: &str) -> Result<(), LiveShareError> {
        detach(self.pid, &self.target(path))
    }
}

/// Binds `host` at `target`, a path in the mount namespace of `virtiofsd_pid`.
fn attach(virtiofsd_pid: u32, host: &Path, target: &Path, read_only: bool) -> Result<(), LiveShareError> {
    let sys = |what| {
        let path = host.to_path_buf();
        move |source| LiveShareError::Sys { path, what, source }
    };
    let host_c = c_path(host)?;
    let target_c = c_path(&relative(target))?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree takes a NUL-terminated path that outlives the call; it returns a
    // new descriptor, owned here.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, host_c.as_ptr(), flags) };
    if tree < 0 {
        return Err(sys("open_tree")(std::io::Error::last_os_error()));
    }
    // SAFETY: `tree` was just returned by open_tree and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if read_only {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    // Private: nothing mounted later on the host under `host` propagates into the VM.
    let attr = libc::mount_attr { attr_set, attr_clr: 0, propagation: libc::MS_PRIVATE, userns_fd: 0 };
    // SAFETY: mount_setattr on our descriptor with an empty path (AT_EMPTY_PATH) and a
    // mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(sys("mount_setattr")(std::io::Error::last_os_error()));
    }
    in_namespace(virtiofsd_pid, target, "move_mount", move || {
        // SAFETY: move_mount of our detached tree onto a NUL-terminated path.
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            ) as i32
        }
    })
}

/// Unmounts (detaches) what is bound at `target` in the mount namespace of `virtiofsd_pid`.
fn detach(virtiofsd_pid: u32, target: &Path) -> Result<(), LiveShareError> {
    let target_c = c_path(&relative(target))?;
    in_namespace(virtiofsd_pid, target, "umount", move || {
        // SAFETY: umount2 of a NUL-terminated path; EINVAL (not a mount point) is success.
        let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            0
        } else {
            rc
        }
    })
}

/// `path` (absolute, as the process whose namespace it is sees it) relative to its root.
fn relative(path: &Path) -> PathBuf {
    path.strip_prefix("/").map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
}

/// Runs `op` (raw syscalls only; it returns a syscall's result) in a child that entered the
/// mount namespace of `pid`, its working directory `pid`'s root (so `op`'s paths are
/// relative: [`relative`]); its errno comes back as the child's exit code.
fn in_namespace(pid: u32, target: &Path, what: &'static str, op: impl FnOnce() -> i32) -> Result<(), LiveShareError> {
    let fail = |what, source| LiveShareError::InNamespace { target: target.into(), pid, what, source };
    let ns_path = format!("/proc/{pid}/ns/mnt");
    let ns = std::fs::File::open(&ns_path).map_err(|e| fail("opening its namespace", e))?;
    // Its root, for paths: setns puts the caller at the namespace's top mount, which is not
    // virtiofsd's root when that came from a chroot before its pivot_root.
    let root = std::fs::File::open(format!("/proc/{pid}/root")).map_err(|e| fail("opening its root", e))?;
    // SAFETY: the child only makes raw syscalls (setns, then `op`'s) and _exit; the parent
    // waits for it.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(fail("fork", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: this is the child; setns on an open descriptor, then `op`, then _exit.
        unsafe {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 || libc::fchdir(root.as_raw_fd()) != 0 {
                libc::_exit(200);
            }
            let rc = op();
            let errno = if rc < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(1) } else { 0 };
            libc::_exit(errno.clamp(0, 199));
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(fail("waiting for the child", e));
        }
    }
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(0) => Ok(()),
        Some(200) => Err(fail("setns", std::io::Error::other("could not enter the namespace"))),
        Some(errno) => Err(fail(what, std::io::Error::from_raw_os_error(errno))),
        None => Err(fail(what, std::io::Error::other(format!("the child ended with wait status {status:#x}")))),
    }
}
