//! The container's filesystem view: `mounts` (with their options turned into mount
//! flags, data and propagation), the root's propagation, masked and read-only paths.
//! Pure functions from the spec to [`MountStep`]s; the init executes them.

use std::ffi::CString;
use std::path::Path;

use oci_spec::runtime::Mount;

use super::child::{InRoot, Leaf, MountStep};

/// Mount options parsed into what mount(2) takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub flags: libc::c_ulong,
    /// Flags an option cleared (`rw`, `suid`, …), so a remount does not set them.
    pub cleared: libc::c_ulong,
    pub propagation: Option<libc::c_ulong>,
    pub bind: bool,
    pub recursive: bool,
    /// Options the kernel interprets per filesystem (`mode=755`, `size=64m`).
    pub data: Vec<String>,
}

/// Parses `options` of one mount. Unknown options are filesystem data.
pub fn parse_options(options: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "nolazytime" => (0, libc::MS_LAZYTIME),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                o.propagation = Some(propagation(opt).unwrap_or(0));
                (0, 0)
            }
            "remount" => return Err("option remount is not allowed in a container mount".into()),
            "rro" | "rrw" | "rnosuid" | "rsuid" | "rnodev" | "rdev" | "rnoexec" | "rexec" | "rnoatime" | "ratime" | "rrelatime"
            | "rnorelatime" | "rstrictatime" | "rnostrictatime" | "rnodiratime" | "rdiratime" => {
                return Err(format!("recursive mount option {opt} is not supported yet"))
            }
            "idmap" | "ridmap" => return Err(format!("option {opt} (id-mapped mounts) is not supported yet")),
            other => {
                if other.contains('\0') || other.contains(',') {
                    return Err(format!("option {other:?} is malformed"));
                }
                o.data.push(other.to_string());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
        o.cleared = (o.cleared | clear) & !set;
    }
    Ok(o)
}

/// MS_* propagation flags of a `rootfsPropagation` or mount option value.
pub fn propagation(name: &str) -> Option<libc::c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

fn cstring(field: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{field}: contains a NUL byte"))
}

/// The filesystem types a container may mount (besides binds). Everything a
/// runc-compatible spec uses; block-device filesystems need a device the container
/// cannot name anyway.
pub const FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "overlay",
    "ramfs",
    "bpf",
    "securityfs",
    "fusectl",
    "configfs",
    "debugfs",
    "tracefs",
    "hugetlbfs",
    "binfmt_misc",
];

/// Turns `mounts[index]` into a mount step. `bundle` resolves relative bind sources;
/// `source_is_dir` tells whether a bind source is a directory (checked by the caller
/// on the real filesystem).
pub fn mount_step(
    index: usize,
    m: &Mount,
    bundle: Option<&Path>,
    source_is_dir: impl Fn(&Path) -> std::io::Result<bool>,
) -> Result<MountStep, String> {
    let field = format!("mounts[{index}]");
    let dest = m.destination().to_str().ok_or_else(|| format!("{field}.destination: not UTF-8"))?;
    if !dest.starts_with('/') {
        return Err(format!("{field}.destination: {dest:?} is not an absolute path"));
    }
    let target = InRoot::new(dest).ok_or_else(|| format!("{field}.destination: {dest:?} is not a valid mount point"))?;
    let opts = parse_options(m.options().as_deref().unwrap_or_default()).map_err(|e| format!("{field}.options: {e}"))?;
    let typ = m.typ().as_deref().unwrap_or("");
    let bind = opts.bind || typ == "bind";
    let data = if opts.data.is_empty() { None } else { Some(cstring(&format!("{field}.options"), &opts.data.join(","))?) };
    if bind {
        let source = m.source().as_ref().ok_or_else(|| format!("{field}.source: a bind mount needs a source"))?;
        let source = if source.is_relative() {
            bundle.ok_or_else(|| format!("{field}.source: {} is relative and there is no bundle", source.display()))?.join(source)
        } else {
            source.clone()
        };
        let is_dir = source_is_dir(&source).map_err(|e| format!("{field}.source: {}: {e}", source.display()))?;
        let mut flags = libc::MS_BIND;
        if opts.recursive {
            flags |= libc::MS_REC;
        }
        let remount_flags = opts.flags & !(libc::MS_REC | libc::MS_BIND);
        return Ok(MountStep {
            source: Some(cstring(&format!("{field}.source"), source.to_str().ok_or_else(|| format!("{field}.source: not UTF-8"))?)?),
            target,
            leaf: if is_dir { Leaf::Dir } else { Leaf::File },
            fstype: None,
            flags,
            data: None,
            remount: (remount_flags != 0).then_some(libc::MS_BIND | libc::MS_REMOUNT | remount_flags),
            propagation: opts.propagation,
        });
    }
    // cgroup v1 is not offered in the guest: "cgroup" means the v2 hierarchy.
    let fstype = match typ {
        "" => return Err(format!("{field}.type: missing (and the mount is not a bind)")),
        "cgroup" => "cgroup2",
        t if FSTYPES.contains(&t) => t,
        t => return Err(format!("{field}.type: filesystem {t:?} is not allowed in a container")),
    };
    let source = m.source().as_ref().and_then(|s| s.to_str()).unwrap_or(fstype);
    Ok(MountStep {
        source: Some(cstring(&format!("{field}.source"), source)?),
        target,
        leaf: Leaf::Dir,
        fstype: Some(cstring(&format!("{field}.type"), fstype)?),
        flags: opts.flags,
        data,
        remount: None,
        propagation: opts.propagation,
    })
}

/// Checks a maskedPaths/readonlyPaths entry: absolute, no `..`.
pub fn container_path(field: &str, p: &str) -> Result<CString, String> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(format!("{field}: {p:?} is not an absolute path without '..'"));
    }
    cstring(field, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(json: &str) -> Mount {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_become_flags_and_data() {
        let o = parse_options(&["nosuid".into(), "noexec".into(), "nodev".into(), "mode=755".into(), "size=65536k".into(), "ro".into()])
            .unwrap();
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV | libc::MS_RDONLY);
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        let rw = parse_options(&["ro".into(), "rw".into(), "rslave".into()]).unwrap();
        assert_eq!(rw.flags & libc::MS_RDONLY, 0);
        assert_eq!(rw.propagation, Some(libc::MS_SLAVE | libc::MS_REC));
        assert!(parse_options(&["rro".into()]).unwrap_err().contains("not supported"));
        assert!(parse_options(&["remount".into()]).is_err());
    }

    #[test]
    fn proc_and_tmpfs_mounts() {
        let p = mount_step(0, &mount(r#"{"destination":"/proc","type":"proc","source":"proc"}"#), None, |_| Ok(true)).unwrap();
        assert_eq!(p.fstype.as_deref(), Some(c"proc"));
        assert_eq!(p.target.full, c"proc".to_owned());
        assert_eq!(p.remount, None);
        let t = mount_step(
            1,
            &mount(r#"{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]}"#),
            None,
            |_| Ok(true),
        )
        .unwrap();
        assert_eq!(t.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(t.data.as_deref(), Some(c"mode=755,size=65536k"));
        let cg =
            mount_step(2, &mount(r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup"}"#), None, |_| Ok(true)).unwrap();
        assert_eq!(cg.fstype.as_deref(), Some(c"cgroup2"));
    }

    #[test]
    fn bind_mounts_remount_with_their_flags() {
        let b = mount_step(
            3,
            &mount(r#"{"destination":"/etc/hosts","type":"bind","source":"hosts","options":["rbind","ro","nosuid","rprivate"]}"#),
            Some(Path::new("/bundle")),
            |p| {
                assert_eq!(p, Path::new("/bundle/hosts"));
                Ok(false)
            },
        )
        .unwrap();
        assert_eq!(b.source.as_deref(), Some(c"/bundle/hosts"));
        assert_eq!(b.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(b.leaf, Leaf::File);
        assert_eq!(b.remount, Some(libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID));
        assert_eq!(b.propagation, Some(libc::MS_PRIVATE | libc::MS_REC));
    }

    #[test]
    fn bad_mounts_name_the_field() {
        let e = mount_step(4, &mount(r#"{"destination":"rel","type":"tmpfs"}"#), None, |_| Ok(true)).unwrap_err();
        assert!(e.starts_with("mounts[4].destination"), "{e}");
        let e = mount_step(5, &mount(r#"{"destination":"/x","type":"ext4","source":"/dev/vda"}"#), None, |_| Ok(true)).unwrap_err();
        assert!(e.starts_with("mounts[5].type"), "{e}");
        let e = mount_step(6, &mount(r#"{"destination":"/x","type":"bind","source":"/nope","options":["bind"]}"#), None, |_| {
            Err(std::io::ErrorKind::NotFound.into())
        })
        .unwrap_err();
        assert!(e.starts_with("mounts[6].source: /nope"), "{e}");
        let e = mount_step(7, &mount(r#"{"destination":"/a/../b","type":"tmpfs"}"#), None, |_| Ok(true)).unwrap_err();
        assert!(e.starts_with("mounts[7].destination"), "{e}");
    }
}
