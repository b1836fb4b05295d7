//! The guest's base mounts, made by PID 1 (an initramfs gets none from the kernel).

use std::path::Path;

use nix::mount::MsFlags;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating {path}: {source}")]
    Mkdir { path: String, source: std::io::Error },
    #[error("mounting {fstype} on {target}: {errno}")]
    Mount { fstype: String, target: String, errno: nix::errno::Errno },
    #[error("linking /dev/ptmx to pts/ptmx: {0}")]
    Ptmx(std::io::Error),
}

/// One base mount of PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseMount {
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Without it the agent cannot work; otherwise a failure is only a warning.
    pub required: bool,
}

/// The base mounts, in order.
pub fn base_mounts() -> Vec<BaseMount> {
    let nsn = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let m = |fstype, target, flags, data, required| BaseMount { fstype, target, flags, data, required };
    vec![
        m("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755"), true),
        m("proc", "/proc", nsn, None, true),
        m("sysfs", "/sys", nsn, None, true),
        m("devpts", "/dev/pts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620,gid=5"), true),
        m("tmpfs", "/dev/shm", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"), false),
        m("cgroup2", "/sys/fs/cgroup", nsn, None, false),
        m("tmpfs", "/tmp", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"), true),
        m("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"), true),
    ]
}

fn mount_one(m: &BaseMount) -> Result<(), MountError> {
    std::fs::create_dir_all(m.target).map_err(|source| MountError::Mkdir { path: m.target.into(), source })?;
    match nix::mount::mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
        // EBUSY: already mounted (e.g. by the kernel); fine.
        Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
        Err(errno) => return Err(MountError::Mount { fstype: m.fstype.into(), target: m.target.into(), errno }),
    }
    if m.target == "/dev/pts" {
        let ptmx = Path::new("/dev/ptmx");
        let _ = std::fs::remove_file(ptmx);
        std::os::unix::fs::symlink("pts/ptmx", ptmx).map_err(MountError::Ptmx)?;
    }
    Ok(())
}

/// Mounts everything in [`base_mounts`] (and points /dev/ptmx at the devpts instance).
/// Returns the failures of optional mounts, to be logged once logging works.
pub fn mount_base() -> Result<Vec<MountError>, MountError> {
    let mut warnings = Vec::new();
    for m in base_mounts() {
        match mount_one(&m) {
            Ok(()) => {}
            Err(e) if !m.required => warnings.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(warnings)
}

/// Makes sure fds 0, 1 and 2 are open (on the console, else /dev/null), so no later
/// descriptor takes their numbers and gets clobbered as a child's stdio.
pub fn ensure_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            // SAFETY: open with a valid NUL-terminated path; the result is checked.
            let opened = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
            if opened < 0 {
                continue;
            }
            if opened != fd {
                // SAFETY: dup2/close on descriptors we just opened.
                unsafe {
                    libc::dup2(opened, fd);
                    libc::close(opened);
                }
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_comes_first_and_pts_after_it() {
        let mounts = base_mounts();
        let pos = |t: &str| mounts.iter().position(|m| m.target == t).unwrap();
        assert_eq!(pos("/dev"), 0);
        assert!(pos("/dev/pts") > pos("/dev") && pos("/dev/shm") > pos("/dev"));
        assert!(pos("/sys/fs/cgroup") > pos("/sys"));
        let pts = &mounts[pos("/dev/pts")];
        assert!(pts.data.unwrap_or_default().contains("ptmxmode=0666"));
        assert!(!mounts[pos("/sys/fs/cgroup")].required, "a kernel without cgroup2 must still boot");
    }
}
