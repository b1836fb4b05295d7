//! Container root filesystems: a plan of mounts built as pure data from a
//! [`RootfsSpec`] ([`plan`]), and its execution ([`apply`]).
//!
//! Layout under `<base>/<id>/`: `lower` (the device, read-only); when writable, `rw`
//! (a tmpfs holding the overlay's `upper` and `work`) and `merged` (the overlay). The
//! root processes are chrooted into gets `proc`, `dev` (a recursive bind of the agent's
//! `/dev`, so pty slaves the agent opens are visible, with `/dev/pts` in it) and `tmp`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use palisade_protocol::RootfsSpec;

/// Filesystem types accepted for a root device.
pub const ROOT_FSTYPES: &[&str] = &["erofs", "ext4", "ext3", "ext2", "squashfs"];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs id {0:?} is invalid (use 1-64 letters, digits, '-', '_' or '.')")]
    InvalidId(String),
    #[error("rootfs device {0:?} is not a device under /dev")]
    InvalidDevice(String),
    #[error("rootfs filesystem type {0:?} is not supported (one of {ROOT_FSTYPES:?})")]
    InvalidFstype(String),
    #[error("rootfs {0}: already mounted")]
    AlreadyMounted(String),
    #[error("rootfs {0}: no such rootfs")]
    Unknown(String),
    #[error("creating directory {path}: {source}")]
    Mkdir { path: PathBuf, source: std::io::Error },
    #[error("mounting {source_name} on {target} ({fstype}): {errno}")]
    Mount { source_name: String, target: PathBuf, fstype: String, errno: nix::errno::Errno },
}

/// One step of a mount plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create a directory (and its parents).
    Mkdir(PathBuf),
    /// Mount. An `optional` mount creates its target if it can and is skipped (with a
    /// debug line) when that or the mount fails: a read-only root may lack `/proc`.
    Mount { source: String, target: PathBuf, fstype: Option<String>, flags: MsFlags, data: Option<String>, optional: bool },
}

/// What to do, and the directory processes are chrooted into afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub steps: Vec<Step>,
    pub root: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Builds the plan for `spec` under `base` (e.g. `/run/palisade/rootfs`), validating
/// every field that comes from the host.
pub fn plan(spec: &RootfsSpec, base: &Path) -> Result<MountPlan, RootfsError> {
    if !valid_id(&spec.id) {
        return Err(RootfsError::InvalidId(spec.id.clone()));
    }
    let device_ok = spec.device.starts_with("/dev/")
        && spec.device.len() > 5
        && !spec.device.split('/').any(|c| c == "..")
        && !spec.device.contains('\0');
    if !device_ok {
        return Err(RootfsError::InvalidDevice(spec.device.clone()));
    }
    if !ROOT_FSTYPES.contains(&spec.fstype.as_str()) {
        return Err(RootfsError::InvalidFstype(spec.fstype.clone()));
    }
    let dir = base.join(&spec.id);
    let lower = dir.join("lower");
    let mut steps = vec![
        Step::Mkdir(lower.clone()),
        Step::Mount {
            source: spec.device.clone(),
            target: lower.clone(),
            fstype: Some(spec.fstype.clone()),
            flags: MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            data: None,
            optional: false,
        },
    ];
    let root = if spec.writable {
        let rw = dir.join("rw");
        let merged = dir.join("merged");
        let (upper, work) = (rw.join("upper"), rw.join("work"));
        steps.push(Step::Mkdir(rw.clone()));
        steps.push(Step::Mount {
            source: "tmpfs".into(),
            target: rw,
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_NODEV,
            data: Some("mode=0755".into()),
            optional: false,
        });
        steps.push(Step::Mkdir(upper.clone()));
        steps.push(Step::Mkdir(work.clone()));
        steps.push(Step::Mkdir(merged.clone()));
        steps.push(Step::Mount {
            source: "overlay".into(),
            target: merged.clone(),
            fstype: Some("overlay".into()),
            flags: MsFlags::empty(),
            data: Some(format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display())),
            optional: false,
        });
        merged
    } else {
        lower
    };
    if !spec.process_mounts {
        return Ok(MountPlan { steps, root });
    }
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    steps.push(Step::Mount {
        source: "proc".into(),
        target: root.join("proc"),
        fstype: Some("proc".into()),
        flags: nosuid_noexec,
        data: None,
        optional: true,
    });
    steps.push(Step::Mount {
        source: "/dev".into(),
        target: root.join("dev"),
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
        optional: true,
    });
    steps.push(Step::Mount {
        source: "tmpfs".into(),
        target: root.join("tmp"),
        fstype: Some("tmpfs".into()),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data: Some("mode=1777".into()),
        optional: true,
    });
    Ok(MountPlan { steps, root })
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Mkdir { path: path.to_path_buf(), source })
}

/// Executes a plan, in order. A failed required step stops it.
pub fn apply(plan: &MountPlan) -> Result<(), RootfsError> {
    for step in &plan.steps {
        match step {
            Step::Mkdir(path) => mkdir(path)?,
            Step::Mount { source, target, fstype, flags, data, optional } => {
                if *optional && !target.is_dir() {
                    if let Err(e) = mkdir(target) {
                        tracing::debug!("skipping the mount on {}: {e}", target.display());
                        continue;
                    }
                }
                let result = nix::mount::mount(Some(source.as_str()), target, fstype.as_deref(), *flags, data.as_deref());
                match result {
                    Ok(()) => {}
                    Err(errno) if *optional => tracing::debug!("skipping the mount on {}: {errno}", target.display()),
                    Err(errno) => {
                        return Err(RootfsError::Mount {
                            source_name: source.clone(),
                            target: target.clone(),
                            fstype: fstype.clone().unwrap_or_else(|| "bind".into()),
                            errno,
                        })
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, device: &str, fstype: &str, writable: bool) -> RootfsSpec {
        RootfsSpec { id: id.into(), device: device.into(), fstype: fstype.into(), writable, process_mounts: true }
    }

    fn mount_targets(plan: &MountPlan) -> Vec<String> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Mount { target, .. } => Some(target.display().to_string()),
                Step::Mkdir(_) => None,
            })
            .collect()
    }

    #[test]
    fn writable_root_is_an_overlay_over_the_read_only_device() {
        let plan = plan(&spec("root", "/dev/vda", "erofs", true), Path::new("/run/palisade/rootfs")).unwrap();
        assert_eq!(plan.root, Path::new("/run/palisade/rootfs/root/merged"));
        assert_eq!(
            mount_targets(&plan),
            [
                "/run/palisade/rootfs/root/lower",
                "/run/palisade/rootfs/root/rw",
                "/run/palisade/rootfs/root/merged",
                "/run/palisade/rootfs/root/merged/proc",
                "/run/palisade/rootfs/root/merged/dev",
                "/run/palisade/rootfs/root/merged/tmp",
            ]
        );
        let Step::Mount { fstype, flags, .. } = &plan.steps[1] else { panic!("device mount expected") };
        assert_eq!(fstype.as_deref(), Some("erofs"));
        assert!(flags.contains(MsFlags::MS_RDONLY));
        let overlay = plan.steps.iter().find_map(|s| match s {
            Step::Mount { fstype: Some(t), data, .. } if t == "overlay" => data.clone(),
            _ => None,
        });
        assert_eq!(
            overlay.as_deref(),
            Some("lowerdir=/run/palisade/rootfs/root/lower,upperdir=/run/palisade/rootfs/root/rw/upper,workdir=/run/palisade/rootfs/root/rw/work")
        );
    }

    #[test]
    fn read_only_root_is_the_device_itself() {
        let plan = plan(&spec("ro", "/dev/vdb", "ext4", false), Path::new("/r")).unwrap();
        assert_eq!(plan.root, Path::new("/r/ro/lower"));
        assert_eq!(mount_targets(&plan), ["/r/ro/lower", "/r/ro/lower/proc", "/r/ro/lower/dev", "/r/ro/lower/tmp"]);
    }

    #[test]
    fn a_container_root_gets_no_process_mounts() {
        // `--read-only` must leave /tmp read-only too: no tmpfs, and no guest /dev or /proc
        // hidden under the container's own.
        let mut s = spec("ro", "/dev/vdb", "ext4", false);
        s.process_mounts = false;
        let plan = plan(&s, Path::new("/r")).unwrap();
        assert_eq!(mount_targets(&plan), ["/r/ro/lower"]);
    }

    #[test]
    fn hostile_specs_are_refused() {
        let base = Path::new("/r");
        assert!(matches!(plan(&spec("../x", "/dev/vda", "erofs", true), base), Err(RootfsError::InvalidId(_))));
        assert!(matches!(plan(&spec("", "/dev/vda", "erofs", true), base), Err(RootfsError::InvalidId(_))));
        assert!(matches!(plan(&spec("a", "/etc/passwd", "erofs", true), base), Err(RootfsError::InvalidDevice(_))));
        assert!(matches!(plan(&spec("a", "/dev/../etc", "erofs", true), base), Err(RootfsError::InvalidDevice(_))));
        assert!(matches!(plan(&spec("a", "/dev/vda", "nfs", true), base), Err(RootfsError::InvalidFstype(_))));
    }
}
