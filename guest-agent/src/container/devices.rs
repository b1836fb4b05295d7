//! Device nodes in the container's /dev: the default set every container gets when
//! /dev is a fresh tmpfs (null, zero, full, random, urandom, tty, with ptmx, fd, stdin,
//! stdout and stderr links, and console on a terminal), plus `linux.devices`.

use std::ffi::CString;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::child::{DeviceStep, InRoot};

/// A character device of the default set: path, major, minor, mode.
pub const DEFAULT_DEVICES: &[(&str, u32, u32, u32)] = &[
    ("/dev/null", 1, 3, 0o666),
    ("/dev/zero", 1, 5, 0o666),
    ("/dev/full", 1, 7, 0o666),
    ("/dev/random", 1, 8, 0o666),
    ("/dev/urandom", 1, 9, 0o666),
    ("/dev/tty", 5, 0, 0o666),
];

/// The /dev links of every container: (link, target).
pub const DEFAULT_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
];

#[allow(clippy::too_many_arguments)]
fn step(path: &str, kind: libc::mode_t, major: u32, minor: u32, mode: u32, uid: u32, gid: u32, bind: bool) -> Result<DeviceStep, String> {
    let p = InRoot::new(path).filter(|p| p.display.starts_with("/dev/")).ok_or_else(|| format!("{path:?} is not a path under /dev"))?;
    Ok(DeviceStep {
        bind_from: if bind { Some(CString::new(p.display.clone()).map_err(|_| "NUL byte".to_string())?) } else { None },
        path: p,
        mode: kind | (mode & 0o7777),
        dev: libc::makedev(major, minor),
        uid,
        gid,
    })
}

/// The default devices. `bind`: bind the agent's nodes (in a user namespace).
pub fn defaults(bind: bool) -> Vec<DeviceStep> {
    DEFAULT_DEVICES
        .iter()
        .map(|(p, ma, mi, mode)| step(p, libc::S_IFCHR, *ma, *mi, *mode, 0, 0, bind).expect("default devices are valid"))
        .collect()
}

/// `linux.devices[index]`.
pub fn from_spec(index: usize, d: &LinuxDevice, bind: bool) -> Result<DeviceStep, String> {
    let field = format!("linux.devices[{index}]");
    let path = d.path().to_str().ok_or_else(|| format!("{field}.path: not UTF-8"))?;
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => return Err(format!("{field}.type: \"a\" is only valid in linux.resources.devices")),
    };
    let (major, minor) = (d.major(), d.minor());
    if kind != libc::S_IFIFO && !(0..=0xfff).contains(&major) || !(0..=0xfffff).contains(&minor) {
        return Err(format!("{field}: major {major} / minor {minor} out of range"));
    }
    step(
        path,
        kind,
        major as u32,
        minor as u32,
        d.file_mode().unwrap_or(0o666),
        d.uid().unwrap_or(0),
        d.gid().unwrap_or(0),
        bind && kind != libc::S_IFIFO,
    )
    .map_err(|e| format!("{field}.path: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_exactly_the_minimal_dev() {
        let d = defaults(false);
        let names: Vec<&str> = d.iter().map(|s| s.path.display.as_str()).collect();
        assert_eq!(names, ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]);
        assert_eq!(d[0].dev, libc::makedev(1, 3));
        assert_eq!(d[0].mode, libc::S_IFCHR | 0o666);
        assert!(d[0].bind_from.is_none());
        assert_eq!(defaults(true)[5].bind_from.as_deref(), Some(c"/dev/tty"));
    }

    #[test]
    fn spec_devices() {
        let fuse: LinuxDevice =
            serde_json::from_str(r#"{"path":"/dev/fuse","type":"c","major":10,"minor":229,"fileMode":438,"uid":0,"gid":0}"#).unwrap();
        let s = from_spec(0, &fuse, false).unwrap();
        assert_eq!((s.dev, s.mode), (libc::makedev(10, 229), libc::S_IFCHR | 0o666));
        let outside: LinuxDevice = serde_json::from_str(r#"{"path":"/etc/evil","type":"b","major":8,"minor":0}"#).unwrap();
        assert!(from_spec(1, &outside, false).unwrap_err().starts_with("linux.devices[1].path"));
    }
}
