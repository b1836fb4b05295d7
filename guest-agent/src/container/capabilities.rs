//! Linux capabilities: names ↔ numbers, the five sets of `process.capabilities` as
//! bitmasks, and the system calls that apply them in the container's init.

use std::collections::BTreeSet;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

/// Every capability Linux knows (as of 6.x), by number.
pub const CAPABILITY_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability name (`CAP_SYS_ADMIN` or `SYS_ADMIN`, any case).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    CAPABILITY_NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// The name of capability number `n`.
pub fn name(n: u32) -> Option<&'static str> {
    CAPABILITY_NAMES.get(n as usize).copied()
}

fn capability_number(cap: &Capability) -> Option<u32> {
    // oci-spec serialises a capability as its `CAP_…` name.
    let value = serde_json::to_value(cap).ok()?;
    number(value.as_str()?)
}

/// A set of capabilities as the kernel's 64-bit mask.
pub fn mask(set: Option<&Capabilities>) -> u64 {
    set.into_iter().flatten().filter_map(capability_number).fold(0u64, |m, n| m | (1u64 << n))
}

/// The names of the capabilities in `mask`, sorted by number.
pub fn names(mask: u64) -> Vec<&'static str> {
    (0..64u32).filter(|n| mask & (1 << n) != 0).filter_map(name).collect()
}

/// The five sets, as masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    pub fn from_spec(caps: Option<&LinuxCapabilities>) -> CapSets {
        let Some(c) = caps else { return CapSets::default() };
        CapSets {
            bounding: mask(c.bounding().as_ref()),
            effective: mask(c.effective().as_ref()),
            permitted: mask(c.permitted().as_ref()),
            inheritable: mask(c.inheritable().as_ref()),
            ambient: mask(c.ambient().as_ref()),
        }
    }

    /// Restricts every set to the capabilities the running kernel knows (`last_cap`
    /// from /proc/sys/kernel/cap_last_cap): like runc, unknown ones are ignored.
    pub fn limited_to(self, last_cap: u32) -> CapSets {
        let known = if last_cap >= 63 { u64::MAX } else { (1u64 << (last_cap + 1)) - 1 };
        CapSets {
            bounding: self.bounding & known,
            effective: self.effective & known,
            permitted: self.permitted & known,
            inheritable: self.inheritable & known,
            ambient: self.ambient & known,
        }
    }

    /// Capabilities to drop from the bounding set: those the kernel knows but the
    /// spec's bounding set lacks.
    pub fn bounding_drops(&self, last_cap: u32) -> BTreeSet<u32> {
        (0..=last_cap.min(63)).filter(|n| self.bounding & (1 << n) == 0).collect()
    }
}

/// The highest capability number of the running kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAPABILITY_NAMES.len() as u32 - 1)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2) of the calling thread: effective, permitted and inheritable.
/// Async-signal-safe (one system call on stack data).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), nix::errno::Errno> {
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [
        CapData { effective: effective as u32, permitted: permitted as u32, inheritable: inheritable as u32 },
        CapData { effective: (effective >> 32) as u32, permitted: (permitted >> 32) as u32, inheritable: (inheritable >> 32) as u32 },
    ];
    // SAFETY: capset reads a valid v3 header and an array of two data structs, both
    // live on this stack frame for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    nix::errno::Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("sys_admin"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(name(13), Some("CAP_NET_RAW"));
    }

    #[test]
    fn sets_from_a_spec() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_KILL"],
                "permitted":["CAP_KILL","CAP_CHOWN"],"ambient":["CAP_KILL"]}"#,
        )
        .unwrap();
        let sets = CapSets::from_spec(Some(&caps));
        assert_eq!(sets.bounding, (1 << 0) | (1 << 5) | (1 << 10));
        assert_eq!(sets.effective, 1 << 5);
        assert_eq!(sets.permitted, (1 << 5) | 1);
        assert_eq!(sets.inheritable, 0);
        assert_eq!(sets.ambient, 1 << 5);
        assert_eq!(names(sets.bounding), ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        let drops = sets.bounding_drops(40);
        assert!(drops.contains(&21) && !drops.contains(&5) && drops.len() == 38);
        assert_eq!(CapSets::from_spec(None), CapSets::default());
    }
}
