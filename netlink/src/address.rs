//! Interface addresses (RTM_GETADDR / RTM_NEWADDR).

use std::net::IpAddr;

use crate::message::{self, ip_bytes, malformed, Message, MessageBuilder};
use crate::socket::Socket;
use crate::NetlinkError;

/// Size of `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// RT_SCOPE_UNIVERSE (0), RT_SCOPE_LINK (253: IPv6 link-local), RT_SCOPE_HOST (254: loopback).
    pub scope: u8,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The longest prefix of `addr`'s family.
pub fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn ifaddrmsg(family: i32, prefix_len: u8, scope: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut m = [0u8; IFADDRMSG_LEN];
    m[0] = family as u8;
    m[1] = prefix_len;
    m[3] = scope;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

pub(crate) fn dump(socket: &mut Socket) -> Result<Vec<Address>, NetlinkError> {
    let build =
        || MessageBuilder::new(libc::RTM_GETADDR, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, &ifaddrmsg(libc::AF_UNSPEC, 0, 0, 0));
    socket.dump(build, "listing addresses", |m| if m.ty == libc::RTM_NEWADDR { parse(m) } else { Ok(None) })
}

/// Parses one RTM_NEWADDR message; `None` for a family other than IPv4 and IPv6.
pub fn parse(m: &Message<'_>) -> Result<Option<Address>, NetlinkError> {
    let (fixed, attrs) = message::split_fixed(m.payload, IFADDRMSG_LEN, "ifaddrmsg")?;
    let ipv6 = match fixed[0] as i32 {
        libc::AF_INET => false,
        libc::AF_INET6 => true,
        _ => return Ok(None),
    };
    let prefix_len = fixed[1];
    let scope = fixed[3];
    let index = message::u32_at(fixed, 4).unwrap_or(0);
    let what = format!("address of interface {index}");
    let (mut local, mut address) = (None, None);
    for attr in attrs {
        let (ty, data) = attr?;
        match ty {
            libc::IFA_LOCAL => local = Some(message::attr_ip(ty, data, ipv6, &what)?),
            libc::IFA_ADDRESS => address = Some(message::attr_ip(ty, data, ipv6, &what)?),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
    // point-to-point link, and the only one IPv6 usually sends.
    let addr = local.or(address).ok_or_else(|| malformed(format!("{what}: no address")))?;
    if prefix_len > max_prefix(&addr) {
        return Err(malformed(format!("{what}: prefix length {prefix_len} for {addr}")));
    }
    Ok(Some(Address { index, addr, prefix_len, scope }))
}

pub(crate) fn add(socket: &mut Socket, index: u32, addr: IpAddr, prefix_len: u8, flags: u32) -> Result<(), NetlinkError> {
    let op = format!("adding {addr}/{prefix_len} to interface {index}");
    if prefix_len > max_prefix(&addr) {
        return Err(NetlinkError::Invalid(format!("{op}: the prefix length is beyond the address")));
    }
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let mut m = MessageBuilder::new(
        libc::RTM_NEWADDR,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16,
        &ifaddrmsg(family, prefix_len, 0, index),
    );
    let bytes = ip_bytes(&addr);
    m.attr(libc::IFA_LOCAL, &bytes).attr(libc::IFA_ADDRESS, &bytes);
    if flags != 0 {
        m.attr_u32(libc::IFA_FLAGS, flags);
    }
    socket.request(m, &op)
}
