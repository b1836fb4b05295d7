//! What a VM is made of ([`VmConfig`]) and how it ended ([`VmExit`]).
//!
//! The configuration types are the VMM's contract with whoever starts it: their serde form
//! (JSON) is what `palisade-vmm --config FILE` reads, and what the runtime writes. Every
//! field but `kernel` may be left out (the defaults of [`VmConfig::new`]); a field the VMM
//! does not know is an error, not silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rate_limiter::Rates;

/// Default kernel command line: serial console, reset through the i8042 on reboot (our
/// clean power-off), reboot immediately on panic.
/// (The i8042 options tell Linux there is no keyboard to probe and no mouse port: the VMM's
/// i8042 is a controller with a reset line and nothing behind it.)
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k,panic_warm panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 128;

/// A VM to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Virtio block devices, in order (`/dev/vda`, `/dev/vdb`, …).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices: host directories a vhost-user backend (virtiofsd) serves.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, each backed by a tap on the host (the guest's `eth0`, `eth1`, …
    /// in this order).
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// Attach a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// What the guest may draw from the rng device a second (default
    /// [`crate::devices::virtio::rng::DEFAULT_RATES`]).
    #[serde(default = "default_rng_rates")]
    pub rng_rates: Rates,
    #[serde(default)]
    pub serial: SerialConfig,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

fn default_rng_rates() -> Rates {
    crate::devices::virtio::rng::DEFAULT_RATES
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("VM config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("VM config {path}: larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("VM config {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// A VM configuration file is small; anything bigger is not one.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl VmConfig {
    /// A configuration with the defaults: 1 vCPU, 128 MiB, [`DEFAULT_CMDLINE`], serial to
    /// stdout, no devices.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            rng: false,
            rng_rates: crate::devices::virtio::rng::DEFAULT_RATES,
            serial: SerialConfig::default(),
        }
    }

    /// Reads a configuration from its JSON form (as written by [`VmConfig::to_json`]).
    pub fn from_json_file(path: &Path) -> Result<VmConfig, ConfigError> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut text = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut text).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.into() });
        }
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        // A VmConfig has string keys and plain values only: serialising it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The guest's reads of the disk, at most this a second (bytes, requests).
    #[serde(default)]
    pub read_rates: Rates,
    /// The guest's writes to the disk, at most this a second.
    #[serde(default)]
    pub write_rates: Rates,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// The host side: a Unix socket the VMM listens on (`CONNECT <port>\n`).
    pub uds_path: PathBuf,
}

/// A virtio-fs device: the guest mounts `tag` (`mount -t virtiofs TAG DIR`); the vhost-user
/// backend listens on `socket` (started by the caller, e.g. `virtiofsd --socket-path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
}

/// A virtio-net device and the host tap behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap interface on the host: attached to if it exists, made otherwise (and then
    /// gone with the VM).
    pub tap: String,
    /// The network namespace the tap is in (`/var/run/netns/NAME`, `/proc/PID/ns/net`);
    /// none: the caller's. The VMM itself stays in an empty namespace of its own.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The guest's MAC address; none: a random locally administered one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The MTU offered to the guest.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Frames to the guest, at most this a second (bytes, frames).
    #[serde(default)]
    pub rx_rates: Rates,
    /// Frames from the guest, at most this a second (bytes, frames).
    #[serde(default)]
    pub tx_rates: Rates,
}

/// Ethernet's MTU.
pub const DEFAULT_MTU: u16 = 1500;

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

impl NetConfig {
    /// A device on tap `tap` in the caller's namespace, with the defaults.
    pub fn new(tap: impl Into<String>) -> NetConfig {
        NetConfig { tap: tap.into(), netns: None, mac: None, mtu: DEFAULT_MTU, rx_rates: Rates::default(), tx_rates: Rates::default() }
    }
}

/// A MAC address; its serde and text form is `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random, locally administered, unicast address.
    pub fn random() -> MacAddr {
        let mut bytes = [0u8; 6];
        // SAFETY: getrandom writes at most `bytes.len()` bytes into the live array.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != bytes.len() as isize {
            // Unlikely (getrandom on 6 bytes does not fail once the pool is ready); a
            // time-derived address is still unique enough for one host.
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            bytes.copy_from_slice(&t.as_nanos().to_le_bytes()[..6]);
        }
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bad = || format!("MAC address {s:?}: expected six hexadecimal bytes such as 02:00:00:00:00:01");
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 == 1 {
            return Err(format!("MAC address {s}: a multicast address cannot be an interface's"));
        }
        Ok(MacAddr(bytes))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;

    fn try_from(s: String) -> Result<MacAddr, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// Where the guest's serial console (COM1) output goes; any combination, or nowhere.
/// The default is stdout, as `palisade-vmm`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialConfig {
    pub log_file: Option<PathBuf>,
    pub to_stdout: bool,
    pub to_stderr: bool,
}

impl SerialConfig {
    /// Nowhere.
    pub fn none() -> SerialConfig {
        SerialConfig { log_file: None, to_stdout: false, to_stderr: false }
    }
}

impl Default for SerialConfig {
    fn default() -> SerialConfig {
        SerialConfig { to_stdout: true, ..SerialConfig::none() }
    }
}

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine through the i8042 (`reboot=k`): our clean power-off.
    Reset,
    /// The guest reset the machine asking for a warm reset, which a Palisade guest kernel
    /// does only when it panics (`reboot=k,panic_warm`): see
    /// [`crate::arch::x86_64::reset::warm_reset_requested`].
    Panic,
    /// The guest asked KVM for a shutdown (a clean power-off).
    PowerOff,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8 },
    /// KVM could not emulate or handle something the guest did.
    InternalError { vcpu: u8, reason: String },
    /// KVM failed to enter the guest.
    FailEntry { vcpu: u8, hardware_reason: u64 },
    /// A vCPU halted with nothing that could wake it.
    Halted { vcpu: u8 },
    /// Running a vCPU failed, or it exited for a reason the VMM does not handle.
    VcpuError { vcpu: u8, reason: String },
}

impl VmExit {
    /// Whether the guest ended the VM on purpose (exit status 0).
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::Reset | VmExit::PowerOff)
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Reset => write!(f, "the guest reset the VM (power-off)"),
            VmExit::Panic => write!(
                f,
                "the guest kernel panicked (it reset the VM asking for a warm reset, as a Palisade guest kernel does only on a panic)"
            ),
            VmExit::PowerOff => write!(f, "the guest powered off"),
            VmExit::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu}: triple fault (the guest hit an exception it could not handle)")
            }
            VmExit::InternalError { vcpu, reason } => write!(f, "vCPU {vcpu}: KVM internal error: {reason}"),
            VmExit::FailEntry { vcpu, hardware_reason } => {
                write!(f, "vCPU {vcpu}: KVM failed to enter the guest (hardware reason {hardware_reason:#x})")
            }
            VmExit::Halted { vcpu } => write!(f, "vCPU {vcpu}: halted for good"),
            VmExit::VcpuError { vcpu, reason } => write!(f, "vCPU {vcpu}: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_as_text() {
        let mac: MacAddr = "02:ab:00:10:ff:01".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0xab, 0x00, 0x10, 0xff, 0x01]);
        assert_eq!(mac.to_string(), "02:ab:00:10:ff:01");
        for bad in ["", "02:ab:00:10:ff", "02:ab:00:10:ff:01:02", "02:ab:00:10:ff:1", "0g:ab:00:10:ff:01", "01:00:5e:00:00:01"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
        let random = MacAddr::random();
        assert_eq!(random.0[0] & 0x03, 0x02, "locally administered and unicast: {random}");
        let net: NetConfig = serde_json::from_str(r#"{"tap": "tap0", "mac": "02:00:00:00:00:07"}"#).unwrap();
        assert_eq!((net.mac.unwrap().0[5], net.mtu), (7, DEFAULT_MTU));
        assert!(serde_json::from_str::<NetConfig>(r#"{"tap": "tap0", "mac": "zz"}"#).is_err());
    }

    #[test]
    fn only_reset_and_power_off_are_clean() {
        assert!(VmExit::Reset.is_clean());
        assert!(VmExit::PowerOff.is_clean());
        assert!(!VmExit::Panic.is_clean());
        assert!(!VmExit::TripleFault { vcpu: 0 }.is_clean());
        assert!(!VmExit::InternalError { vcpu: 0, reason: "emulation failure".into() }.is_clean());
    }

    #[test]
    fn exits_display_as_one_line() {
        for exit in [VmExit::Reset, VmExit::Panic, VmExit::TripleFault { vcpu: 1 }, VmExit::FailEntry { vcpu: 0, hardware_reason: 7 }] {
            assert!(!exit.to_string().contains('\n'));
        }
    }
}
