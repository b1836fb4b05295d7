//! Network interfaces (RTM_GETLINK / RTM_NEWLINK).

use crate::message::{self, malformed, Message, MessageBuilder};
use crate::socket::Socket;
use crate::NetlinkError;

/// Size of `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// Longest interface name (IFNAMSIZ without the NUL).
pub const MAX_NAME_LEN: usize = 15;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address of an Ethernet-like interface.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The link type (IFLA_INFO_KIND): "veth", "tun", "bridge", …; `None` for a physical
    /// device (a virtio-net interface) or the loopback.
    pub kind: Option<String>,
    pub loopback: bool,
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether the kernel accepts `name` as an interface name: 1–15 bytes, not `.` or `..`,
/// no `/`, `:`, whitespace or NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

pub(crate) fn dump(socket: &mut Socket) -> Result<Vec<Link>, NetlinkError> {
    let build = || MessageBuilder::new(libc::RTM_GETLINK, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, &ifinfomsg(0, 0, 0));
    socket.dump(build, "listing interfaces", |m| if m.ty == libc::RTM_NEWLINK { parse(m).map(Some) } else { Ok(None) })
}

/// Parses one RTM_NEWLINK message.
pub fn parse(m: &Message<'_>) -> Result<Link, NetlinkError> {
    let (fixed, attrs) = message::split_fixed(m.payload, IFINFOMSG_LEN, "ifinfomsg")?;
    let index = message::u32_at(fixed, 4).unwrap_or(0);
    let flags = message::u32_at(fixed, 8).unwrap_or(0);
    let what = format!("interface {index}");
    let mut link = Link {
        index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: flags & libc::IFF_UP as u32 != 0,
        kind: None,
        loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
    };
    for attr in attrs {
        let (ty, data) = attr?;
        match ty {
            libc::IFLA_IFNAME => link.name = message::attr_string(ty, data, &what)?,
            libc::IFLA_ADDRESS => link.mac = data.try_into().ok(),
            libc::IFLA_MTU => link.mtu = message::attr_u32(ty, data, &what)?,
            libc::IFLA_LINKINFO => {
                for info in message::attrs_of(data) {
                    let (ty, data) = info?;
                    if ty == libc::IFLA_INFO_KIND {
                        link.kind = Some(message::attr_string(ty, data, &what)?);
                    }
                }
            }
            _ => {}
        }
    }
    if link.name.is_empty() {
        return Err(malformed(format!("{what}: no name")));
    }
    Ok(link)
}

pub(crate) fn set(socket: &mut Socket, index: u32, name: Option<&str>, mtu: Option<u32>, up: Option<bool>) -> Result<(), NetlinkError> {
    let mut what = Vec::new();
    if let Some(name) = name {
        what.push(format!("name {name}"));
    }
    if let Some(mtu) = mtu {
        what.push(format!("mtu {mtu}"));
    }
    if let Some(up) = up {
        what.push(if up { "up".to_string() } else { "down".to_string() });
    }
    if what.is_empty() {
        return Ok(());
    }
    let op = format!("setting interface {index} {}", what.join(", "));
    if index == 0 || index > i32::MAX as u32 {
        return Err(NetlinkError::Invalid(format!("{op}: no interface has index {index}")));
    }
    if let Some(name) = name {
        if !valid_name(name) {
            return Err(NetlinkError::Invalid(format!("{op}: {name:?} is not a valid interface name")));
        }
    }
    let (flags, change) = match up {
        Some(true) => (libc::IFF_UP as u32, libc::IFF_UP as u32),
        Some(false) => (0, libc::IFF_UP as u32),
        None => (0, 0),
    };
    let mut m = MessageBuilder::new(libc::RTM_NEWLINK, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, &ifinfomsg(index, flags, change));
    if let Some(name) = name {
        m.attr_str(libc::IFLA_IFNAME, name);
    }
    if let Some(mtu) = mtu {
        m.attr_u32(libc::IFLA_MTU, mtu);
    }
    socket.request(m, &op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_names() {
        assert_eq!(parse_mac("02:00:00:00:00:0A"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(format_mac(&[2, 0, 0, 0, 0, 10]), "02:00:00:00:00:0a");
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "2:00:00:00:00:000", "zz:00:00:00:00:00", "+2:00:00:00:00:00"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert!(valid_name("eth0") && valid_name(&"e".repeat(15)));
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\0", &"e".repeat(16)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
