//! A tap interface: the host side of the virtio-net device.
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a vnet header size of 12
//! bytes (`struct virtio_net_hdr_v1`, `num_buffers` included), so one `read` gives and one
//! `write` takes exactly what a virtio-net queue carries: a 12-byte header and an Ethernet
//! frame. The descriptor is non-blocking and close-on-exec.
//!
//! [`Tap::open`] runs where the interface lives (the supervisor, in the pod's network
//! namespace, before the jail); the jailed VMM only reads, writes and sets offloads
//! (`TUNSETOFFLOAD`, allowed by the event loop's seccomp filter).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Where tap interfaces are created.
const TUN_PATH: &str = "/dev/net/tun";
/// The vnet header the device and the tap agree on: `struct virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap {name:?}: an interface name is 1 to 15 bytes, without NUL, '/', ':' or whitespace")]
    InvalidName { name: String },
    #[error("tap {name:?}: cannot open {TUN_PATH}: {source}")]
    Open { name: String, source: io::Error },
    #[error("tap {name:?}: TUNSETIFF (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) failed: {source}")]
    SetInterface { name: String, source: io::Error },
    #[error("tap {name:?}: TUNSETVNETHDRSZ {VNET_HDR_LEN} failed: {source}")]
    VnetHeaderSize { name: String, source: io::Error },
    #[error("tap: TUNSETOFFLOAD {flags:#x} failed: {source}")]
    Offload { flags: u32, source: io::Error },
}

/// An open tap interface (a `/dev/net/tun` descriptor attached to an interface).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
}

impl Tap {
    /// Opens `/dev/net/tun` and attaches to (or creates) the tap interface `name` in the calling
    /// thread's network namespace: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, `TUNSETVNETHDRSZ` = 12
    /// (`struct virtio_net_hdr_v1`, with `num_buffers`), `O_NONBLOCK`, `O_CLOEXEC`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName { name: name.to_string() });
        }
        // std opens with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|source| TapError::Open { name: name.to_string(), source })?;
        let fd = OwnedFd::from(file);
        // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives for the call; `fd` is open.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(TapError::SetInterface { name: name.to_string(), source: io::Error::last_os_error() });
        }
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives for the call; `fd` is open.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::VnetHeaderSize { name: name.to_string(), source: io::Error::last_os_error() });
        }
        Ok(Tap { fd })
    }

    /// A tap already opened and configured as [`Tap::open`] does (handed over as a descriptor).
    pub fn from_fd(fd: OwnedFd) -> Tap {
        Tap { fd }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Which offloads the tap may hand the guest (`TUNSETOFFLOAD`: `TUN_F_CSUM`, `TUN_F_TSO4`,
    /// `TUN_F_TSO6`, `TUN_F_UFO`): frames with a partial checksum, TCP and UDP super-frames.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is open.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) } < 0 {
            return Err(TapError::Offload { flags, source: io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Reads one vnet header and frame into `buf` (non-blocking: `WouldBlock` when none).
    pub(crate) fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call; `fd` is open.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Writes one vnet header and frame (non-blocking: `WouldBlock` when the tap is full).
    pub(crate) fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call; `fd` is open.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_anything_is_opened() {
        for bad in ["", "a/b", "a:b", "a b", "1234567890123456", ".", "..", "a\0b"] {
            assert!(matches!(Tap::open(bad), Err(TapError::InvalidName { .. })), "{bad:?}");
        }
        assert!(valid_name("tap0"));
        assert!(valid_name("123456789012345"));
    }
}
