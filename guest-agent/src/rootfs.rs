//! Container root filesystems: a plan of mounts built as pure data from a
//! [`RootfsSpec`] ([`plan`]), and its execution ([`apply`]).
//!
//! Layout under `<base>/<id>/`. From a device: `lower` (the device, read-only); when
//! writable, `rw` (a tmpfs holding the overlay's `upper` and `work`) and `merged` (the
//! overlay). From a share: `shared`, a bind of the share's directory (read-only unless
//! writable: writes go to the host). The root processes are chrooted into gets `proc`,
//! `dev` (a recursive bind of the agent's `/dev`, so pty slaves the agent opens are
//! visible, with `/dev/pts` in it) and `tmp`.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use palisade_protocol::{valid_share_path, valid_share_tag, RootfsSource, RootfsSpec};

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
    #[error("rootfs share tag {0:?} is invalid")]
    InvalidTag(String),
    #[error("rootfs path {0:?} is not a path inside a share (relative, without '.' or '..')")]
    InvalidSharePath(String),
    #[error("rootfs {0}: already mounted")]
    AlreadyMounted(String),
    #[error("rootfs {0}: no such rootfs")]
    Unknown(String),
    #[error("creating directory {path}: {source}")]
    Mkdir { path: PathBuf, source: std::io::Error },
    #[error("mounting {source_name} on {target} ({fstype}): {errno}")]
    Mount { source_name: String, target: PathBuf, fstype: String, errno: nix::errno::Errno },
    #[error("unmounting {target}: {errno}")]
    Unmount { target: PathBuf, errno: nix::errno::Errno },
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

/// Builds the plan for `spec` under `base` (e.g. `/run/palisade/rootfs`), with shares
/// mounted under `shares_base`, validating every field that comes from the host.
pub fn plan(spec: &RootfsSpec, base: &Path, shares_base: &Path) -> Result<MountPlan, RootfsError> {
    if !valid_id(&spec.id) {
        return Err(RootfsError::InvalidId(spec.id.clone()));
    }
    let dir = base.join(&spec.id);
    let (mut steps, root) = match &spec.source {
        RootfsSource::Device { device, fstype } => device_steps(&dir, device, fstype, spec.writable)?,
        RootfsSource::Share { tag, path } => share_steps(&dir, shares_base, tag, path, spec.writable)?,
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

/// A device's filesystem, read-only, under an overlay with a tmpfs upper when writable.
fn device_steps(dir: &Path, device: &str, fstype: &str, writable: bool) -> Result<(Vec<Step>, PathBuf), RootfsError> {
    let device_ok = device.starts_with("/dev/") && device.len() > 5 && !device.split('/').any(|c| c == "..") && !device.contains('\0');
    if !device_ok {
        return Err(RootfsError::InvalidDevice(device.to_string()));
    }
    if !ROOT_FSTYPES.contains(&fstype) {
        return Err(RootfsError::InvalidFstype(fstype.to_string()));
    }
    let lower = dir.join("lower");
    let mut steps = vec![
        Step::Mkdir(lower.clone()),
        Step::Mount {
            source: device.to_string(),
            target: lower.clone(),
            fstype: Some(fstype.to_string()),
            flags: MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            data: None,
            optional: false,
        },
    ];
    if !writable {
        return Ok((steps, lower));
    }
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
    Ok((steps, merged))
}

/// A directory of a mounted share, bound (recursively, so the host's binds under it come
/// along) and made read-only unless writable. The share's directory must exist: the host
/// made it before the VM started.
fn share_steps(dir: &Path, shares_base: &Path, tag: &str, path: &str, writable: bool) -> Result<(Vec<Step>, PathBuf), RootfsError> {
    if !valid_share_tag(tag) {
        return Err(RootfsError::InvalidTag(tag.to_string()));
    }
    if !valid_share_path(path) {
        return Err(RootfsError::InvalidSharePath(path.to_string()));
    }
    let mut source = shares_base.join(tag);
    if !path.is_empty() {
        source.push(path);
    }
    let shared = dir.join("shared");
    let mut steps = vec![
        Step::Mkdir(shared.clone()),
        Step::Mount {
            source: source.display().to_string(),
            target: shared.clone(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
            optional: false,
        },
    ];
    if !writable {
        steps.push(Step::Mount {
            source: "none".into(),
            target: shared.clone(),
            fstype: None,
            // A bind remount sets the mount's flags: keep the share's nodev.
            flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            data: None,
            optional: false,
        });
    }
    Ok((steps, shared))
}

/// The mount of share `tag` at `shares_base/tag`: virtiofs, without device nodes (a host
/// directory's device files are not the guest's devices to open).
pub fn share_plan(tag: &str, shares_base: &Path) -> Result<MountPlan, RootfsError> {
    if !valid_share_tag(tag) {
        return Err(RootfsError::InvalidTag(tag.to_string()));
    }
    let target = shares_base.join(tag);
    let steps = vec![
        Step::Mkdir(target.clone()),
        Step::Mount {
            source: tag.to_string(),
            target: target.clone(),
            fstype: Some("virtiofs".into()),
            flags: MsFlags::MS_NODEV,
            data: None,
            optional: false,
        },
    ];
    Ok(MountPlan { steps, root: target })
}

/// Read-ahead for a virtio-fs mount, KiB: four requests of the largest size virtiofsd and
/// the kernel agree on (256 pages), which the kernel sends without waiting for each other.
/// The kernel's default, 128 KiB, makes a sequential read cost one FUSE round trip — a
/// kick, an interrupt, a wake-up of virtiofsd — per 128 KiB; 1 MiB, one per MiB. Under
/// emulation 4 MiB read a volume ~10 % faster than 1 MiB (`docs/benchmarks.md`).
pub const SHARE_READAHEAD_KIB: u32 = 4096;

/// Sets the read-ahead of the filesystem mounted at `mount` (its backing device's
/// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`) to `kib`. For virtio-fs, `mount` must be the
/// share's root: the FUSE connection's bdi is named after it, and the submounts virtiofsd
/// announces under it (other host filesystems) have device numbers of their own but share
/// that bdi.
pub fn set_readahead(mount: &Path, kib: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mount)?.dev();
    let bdi = bdi_path(dev);
    std::fs::write(&bdi, kib.to_string()).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", bdi.display())))
}

/// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb` of device number `dev`.
fn bdi_path(dev: u64) -> PathBuf {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
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

/// The mount points at or under `dir`, deepest (last mounted) first, from a mountinfo
/// text (its fifth field; octal escapes such as `\040` decoded).
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.reverse();
    points
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts root filesystem `id` under `base`: every mount under its directory, detached,
/// then the directory (best effort: an empty tree).
pub fn unmount(base: &Path, id: &str) -> Result<(), RootfsError> {
    if !valid_id(id) {
        return Err(RootfsError::InvalidId(id.to_string()));
    }
    let dir = base.join(id);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in mounts_under(&mountinfo, &dir) {
        match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => return Err(RootfsError::Unmount { target, errno }),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mounts_of_a_rootfs_are_found_deepest_first() {
        let info = "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:30 / /run/palisade/rootfs/c1/shared rw - virtiofs palisade rw\n\
                    31 30 0:31 / /run/palisade/rootfs/c1/shared/proc rw - proc proc rw\n\
                    32 22 0:32 / /run/palisade/rootfs/c10/shared rw - virtiofs palisade rw\n\
                    33 22 0:33 / /run/palisade/rootfs/c1/a\\040b rw - tmpfs t rw\n";
        let found = mounts_under(info, Path::new("/run/palisade/rootfs/c1"));
        assert_eq!(
            found,
            ["/run/palisade/rootfs/c1/a b", "/run/palisade/rootfs/c1/shared/proc", "/run/palisade/rootfs/c1/shared"].map(PathBuf::from)
        );
    }

    fn spec(id: &str, device: &str, fstype: &str, writable: bool) -> RootfsSpec {
        RootfsSpec {
            id: id.into(),
            source: RootfsSource::Device { device: device.into(), fstype: fstype.into() },
            writable,
            process_mounts: true,
        }
    }

    fn shared(tag: &str, path: &str, writable: bool) -> RootfsSpec {
        RootfsSpec {
            id: "root".into(),
            source: RootfsSource::Share { tag: tag.into(), path: path.into() },
            writable,
            process_mounts: false,
        }
    }

    const SHARES: &str = "/run/palisade/shares";

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
        let plan = plan(&spec("root", "/dev/vda", "erofs", true), Path::new("/run/palisade/rootfs"), Path::new(SHARES)).unwrap();
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
        let plan = plan(&spec("ro", "/dev/vdb", "ext4", false), Path::new("/r"), Path::new(SHARES)).unwrap();
        assert_eq!(plan.root, Path::new("/r/ro/lower"));
        assert_eq!(mount_targets(&plan), ["/r/ro/lower", "/r/ro/lower/proc", "/r/ro/lower/dev", "/r/ro/lower/tmp"]);
    }

    #[test]
    fn a_container_root_gets_no_process_mounts() {
        // `--read-only` must leave /tmp read-only too: no tmpfs, and no guest /dev or /proc
        // hidden under the container's own.
        let mut s = spec("ro", "/dev/vdb", "ext4", false);
        s.process_mounts = false;
        let plan = plan(&s, Path::new("/r"), Path::new(SHARES)).unwrap();
        assert_eq!(mount_targets(&plan), ["/r/ro/lower"]);
    }

    #[test]
    fn hostile_specs_are_refused() {
        let base = Path::new("/r");
        assert!(matches!(plan(&spec("../x", "/dev/vda", "erofs", true), base, Path::new(SHARES)), Err(RootfsError::InvalidId(_))));
        assert!(matches!(plan(&spec("", "/dev/vda", "erofs", true), base, Path::new(SHARES)), Err(RootfsError::InvalidId(_))));
        assert!(matches!(plan(&spec("a", "/etc/passwd", "erofs", true), base, Path::new(SHARES)), Err(RootfsError::InvalidDevice(_))));
        assert!(matches!(plan(&spec("a", "/dev/../etc", "erofs", true), base, Path::new(SHARES)), Err(RootfsError::InvalidDevice(_))));
        assert!(matches!(plan(&spec("a", "/dev/vda", "nfs", true), base, Path::new(SHARES)), Err(RootfsError::InvalidFstype(_))));
    }

    #[test]
    fn a_shared_root_is_a_bind_of_the_share_directory_read_only_unless_writable() {
        let rw = plan(&shared("palisade", "root", true), Path::new("/r"), Path::new(SHARES)).unwrap();
        assert_eq!(rw.root, Path::new("/r/root/shared"));
        assert_eq!(rw.steps.len(), 2);
        let Step::Mount { source, flags, fstype, .. } = &rw.steps[1] else { panic!("bind expected") };
        assert_eq!(source, "/run/palisade/shares/palisade/root");
        assert_eq!(*flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(fstype.is_none());
        let ro = plan(&shared("palisade", "", false), Path::new("/r"), Path::new(SHARES)).unwrap();
        let Step::Mount { source, .. } = &ro.steps[1] else { panic!("bind expected") };
        assert_eq!(source, "/run/palisade/shares/palisade");
        let Step::Mount { flags, target, .. } = &ro.steps[2] else { panic!("read-only remount expected") };
        assert_eq!(target, Path::new("/r/root/shared"));
        assert!(flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV));
    }

    #[test]
    fn readahead_is_set_on_the_mounts_backing_device() {
        assert_eq!(bdi_path(nix::sys::stat::makedev(0, 42)), Path::new("/sys/class/bdi/0:42/read_ahead_kb"));
        assert_eq!(bdi_path(nix::sys::stat::makedev(254, 1)), Path::new("/sys/class/bdi/254:1/read_ahead_kb"));
    }

    #[test]
    fn shares_are_virtiofs_without_device_nodes() {
        let plan = share_plan("palisade", Path::new(SHARES)).unwrap();
        assert_eq!(plan.root, Path::new("/run/palisade/shares/palisade"));
        let Step::Mount { source, fstype, flags, .. } = &plan.steps[1] else { panic!("mount expected") };
        assert_eq!((source.as_str(), fstype.as_deref()), ("palisade", Some("virtiofs")));
        assert!(flags.contains(MsFlags::MS_NODEV));
        assert!(matches!(share_plan("../etc", Path::new(SHARES)), Err(RootfsError::InvalidTag(_))));
    }

    #[test]
    fn hostile_share_specs_are_refused() {
        let base = Path::new("/r");
        let refused = |tag: &str, path: &str| plan(&shared(tag, path, true), base, Path::new(SHARES)).unwrap_err();
        assert!(matches!(refused("..", "root"), RootfsError::InvalidTag(_)));
        assert!(matches!(refused("a/b", "root"), RootfsError::InvalidTag(_)));
        for path in ["/etc", "../..", "root/../../etc", "root//x", "root/"] {
            let e = refused("palisade", path);
            assert!(matches!(e, RootfsError::InvalidSharePath(_)), "{path}: {e}");
        }
    }
}
