//! Routes (RTM_GETROUTE / RTM_NEWROUTE).

use std::net::IpAddr;

use crate::address::max_prefix;
use crate::message::{self, ip_bytes, malformed, Message, MessageBuilder};
use crate::socket::Socket;
use crate::NetlinkError;

/// The path MTU metric, inside RTA_METRICS.
const RTAX_MTU: u16 = 2;
/// Size of `struct rtmsg`.
const RTMSG_LEN: usize = 12;

/// A unicast route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix; `None` is the default route.
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index.
    pub oif: Option<u32>,
    /// Routing table: 254 is main ([`crate::RT_TABLE_MAIN`]); 0 when adding means main.
    pub table: u32,
    /// Who made it: [`crate::RTPROT_KERNEL`] for a prefix route from an address,
    /// [`crate::RTPROT_BOOT`] for `ip route add`, …
    pub protocol: u8,
    /// [`crate::RT_SCOPE_UNIVERSE`] for routes through a gateway, [`crate::RT_SCOPE_LINK`]
    /// for directly reachable destinations.
    pub scope: u8,
    /// Path MTU (RTAX_MTU).
    pub mtu: Option<u32>,
    /// Preferred source address (RTA_PREFSRC).
    pub src: Option<IpAddr>,
    pub ipv6: bool,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dst {
            Some((addr, len)) => write!(f, "{addr}/{len}")?,
            None if self.ipv6 => f.write_str("default (IPv6)")?,
            None => f.write_str("default")?,
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev {oif}")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, " mtu {mtu}")?;
        }
        Ok(())
    }
}

fn rtmsg(family: i32, dst_len: u8, table: u8, protocol: u8, scope: u8, ty: u8) -> [u8; RTMSG_LEN] {
    let mut m = [0u8; RTMSG_LEN];
    m[0] = family as u8;
    m[1] = dst_len;
    m[4] = table;
    m[5] = protocol;
    m[6] = scope;
    m[7] = ty;
    m
}

pub(crate) fn dump(socket: &mut Socket) -> Result<Vec<Route>, NetlinkError> {
    let build =
        || MessageBuilder::new(libc::RTM_GETROUTE, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, &rtmsg(libc::AF_UNSPEC, 0, 0, 0, 0, 0));
    socket.dump(build, "listing routes", |m| {
        if m.ty != libc::RTM_NEWROUTE {
            return Ok(None);
        }
        Ok(parse(m)?.filter(|r| r.table == crate::RT_TABLE_MAIN))
    })
}

/// Parses one RTM_NEWROUTE message; `None` for what is not an IPv4 or IPv6 unicast route.
pub fn parse(m: &Message<'_>) -> Result<Option<Route>, NetlinkError> {
    let (fixed, attrs) = message::split_fixed(m.payload, RTMSG_LEN, "rtmsg")?;
    let ipv6 = match fixed[0] as i32 {
        libc::AF_INET => false,
        libc::AF_INET6 => true,
        _ => return Ok(None),
    };
    if fixed[7] != libc::RTN_UNICAST {
        return Ok(None);
    }
    let dst_len = fixed[1];
    let mut route = Route {
        dst: None,
        gateway: None,
        oif: None,
        table: u32::from(fixed[4]),
        protocol: fixed[5],
        scope: fixed[6],
        mtu: None,
        src: None,
        ipv6,
    };
    let what = "route";
    let mut dst = None;
    for attr in attrs {
        let (ty, data) = attr?;
        match ty {
            libc::RTA_DST => dst = Some(message::attr_ip(ty, data, ipv6, what)?),
            libc::RTA_GATEWAY => route.gateway = Some(message::attr_ip(ty, data, ipv6, what)?),
            libc::RTA_OIF => route.oif = Some(message::attr_u32(ty, data, what)?),
            libc::RTA_PREFSRC => route.src = Some(message::attr_ip(ty, data, ipv6, what)?),
            libc::RTA_TABLE => route.table = message::attr_u32(ty, data, what)?,
            libc::RTA_METRICS => {
                for metric in message::attrs_of(data) {
                    let (ty, data) = metric?;
                    if ty == RTAX_MTU {
                        route.mtu = Some(message::attr_u32(ty, data, what)?);
                    }
                }
            }
            _ => {}
        }
    }
    if dst_len > if ipv6 { 128 } else { 32 } {
        return Err(malformed(format!("route with prefix length {dst_len}")));
    }
    if dst_len > 0 {
        let dst = dst.ok_or_else(|| malformed(format!("route with prefix length {dst_len} and no destination")))?;
        route.dst = Some((dst, dst_len));
    }
    Ok(Some(route))
}

pub(crate) fn add(socket: &mut Socket, route: &Route) -> Result<(), NetlinkError> {
    let op = format!("adding route {route}");
    let invalid = |why: &str| NetlinkError::Invalid(format!("{op}: {why}"));
    let family_ok = |a: &IpAddr| a.is_ipv6() == route.ipv6;
    if let Some((dst, len)) = route.dst {
        if !family_ok(&dst) {
            return Err(invalid("the destination is not of the route's address family"));
        }
        if len > max_prefix(&dst) {
            return Err(invalid("the prefix length is beyond the address"));
        }
    }
    if route.gateway.is_some_and(|g| !family_ok(&g)) {
        return Err(invalid("the gateway is not of the route's address family"));
    }
    if route.src.is_some_and(|s| !family_ok(&s)) {
        return Err(invalid("the source is not of the route's address family"));
    }
    if route.oif.is_some_and(|i| i == 0 || i > i32::MAX as u32) {
        return Err(invalid("no interface has index 0"));
    }
    let table = if route.table == 0 { crate::RT_TABLE_MAIN } else { route.table };
    let protocol = if route.protocol == 0 { crate::RTPROT_BOOT } else { route.protocol };
    let family = if route.ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    let short_table = if table < 256 { table as u8 } else { libc::RT_TABLE_UNSPEC };
    let dst_len = route.dst.map_or(0, |(_, len)| len);
    let mut m = MessageBuilder::new(
        libc::RTM_NEWROUTE,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16,
        &rtmsg(family, dst_len, short_table, protocol, route.scope, libc::RTN_UNICAST),
    );
    m.attr_u32(libc::RTA_TABLE, table);
    if let Some((dst, _)) = route.dst {
        m.attr(libc::RTA_DST, &ip_bytes(&dst));
    }
    if let Some(gw) = route.gateway {
        m.attr(libc::RTA_GATEWAY, &ip_bytes(&gw));
    }
    if let Some(oif) = route.oif {
        m.attr_u32(libc::RTA_OIF, oif);
    }
    if let Some(src) = route.src {
        m.attr(libc::RTA_PREFSRC, &ip_bytes(&src));
    }
    if let Some(mtu) = route.mtu {
        let metrics = m.begin_nested(libc::RTA_METRICS);
        m.attr_u32(RTAX_MTU, mtu);
        m.end_nested(metrics);
    }
    socket.request(m, &op)
}
