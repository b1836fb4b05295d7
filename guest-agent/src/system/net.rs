//! Bringing up the loopback interface (`ip link set lo up`) with one ioctl.

use std::io;

/// Sets IFF_UP on `lo`.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket used only for interface ioctls; checked below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` was just created and is owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: an all-zero ifreq is valid; the name fits in IFNAMSIZ with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the live `req`.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The container's network ([`configure`]).
// ---------------------------------------------------------------------------------------

use std::net::IpAddr;

use palisade_netlink::link::{format_mac, parse_mac, valid_name};
use palisade_netlink::{Link, Netlink, NetlinkError, Route, IFA_F_NODAD, RTPROT_BOOT, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE};
use palisade_protocol::{
    InterfaceSpec, NetworkSpec, RouteSpec, MAX_INTERFACE_ADDRESSES, MAX_INTERFACE_NAME_LEN, MAX_NETWORK_INTERFACES, MAX_NETWORK_ROUTES,
};

/// Smallest MTU accepted (IPv4's minimum).
const MIN_MTU: u32 = 68;
/// Largest MTU accepted.
const MAX_MTU: u32 = 65535;

/// Errors of [`configure`]; each names the interface or route.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network spec: {0}")]
    Invalid(String),
    #[error("network: {0}")]
    Netlink(#[source] NetlinkError),
    #[error("interface {name} ({mac}): no guest interface has this MAC")]
    NoSuchInterface { name: String, mac: String },
    #[error("interface {name} ({mac}): {source}")]
    Interface {
        name: String,
        mac: String,
        #[source]
        source: NetlinkError,
    },
    #[error("route {route}: {source}")]
    Route {
        route: String,
        #[source]
        source: NetlinkError,
    },
}

/// An interface of a validated spec.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedInterface {
    mac: [u8; 6],
    name: String,
    /// `None` (an MTU of 0 in the spec) keeps the device's.
    mtu: Option<u32>,
    addresses: Vec<(IpAddr, u8)>,
}

/// A route of a validated spec.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedRoute {
    /// How errors name it: `10.1.0.0/16 via 10.0.0.1 dev eth0`.
    text: String,
    /// Index into the planned interfaces.
    interface: usize,
    dst: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    mtu: Option<u32>,
    source: Option<IpAddr>,
    scope_link: bool,
    ipv6: bool,
}

/// Sets up the guest's network as `spec` says: each interface (found by its MAC) is taken
/// down, renamed, given its MTU, brought up and given its addresses; then the routes are
/// added, those without a gateway first. Addresses and routes that exist already (the
/// kernel makes a prefix route for each address) are fine.
pub fn configure(spec: &NetworkSpec) -> Result<(), NetError> {
    let (interfaces, routes) = validate(spec)?;
    if interfaces.is_empty() {
        return Ok(());
    }
    let mut nl = Netlink::open().map_err(NetError::Netlink)?;
    let links = nl.links().map_err(NetError::Netlink)?;
    let mut matched: Vec<Link> = Vec::with_capacity(interfaces.len());
    for iface in &interfaces {
        let candidates = links.iter().filter(|l| !l.loopback && l.mac == Some(iface.mac));
        // A physical (virtio-net) device before anything stacked on it with the same MAC.
        let link = candidates.clone().find(|l| l.kind.is_none()).or_else(|| candidates.clone().next());
        let link = link.ok_or_else(|| NetError::NoSuchInterface { name: iface.name.clone(), mac: format_mac(&iface.mac) })?;
        if matched.iter().any(|m| m.index == link.index) {
            return Err(NetError::Invalid(format!("interfaces share the MAC {}", format_mac(&iface.mac))));
        }
        matched.push(link.clone());
    }

    // Down first (names change only on interfaces that are down); interfaces whose names
    // another interface of the spec wants move aside to a temporary name.
    for (iface, link) in interfaces.iter().zip(&matched) {
        nl.set_link(link.index, None, None, Some(false)).map_err(iface_err(iface))?;
    }
    for (i, (iface, link)) in interfaces.iter().zip(matched.iter_mut()).enumerate() {
        let wanted_by_other = interfaces.iter().enumerate().any(|(j, other)| j != i && other.name == link.name);
        if link.name != iface.name && wanted_by_other {
            let temporary = format!("pnet{}", link.index);
            nl.set_link(link.index, Some(&temporary), None, None).map_err(iface_err(iface))?;
            link.name = temporary;
        }
    }
    for (iface, link) in interfaces.iter().zip(&matched) {
        let name = (link.name != iface.name).then_some(iface.name.as_str());
        nl.set_link(link.index, name, iface.mtu, None).map_err(iface_err(iface))?;
        nl.set_link(link.index, None, None, Some(true)).map_err(iface_err(iface))?;
        for &(addr, prefix_len) in &iface.addresses {
            // The address moved here from the caller's namespace: no duplicate detection,
            // so an IPv6 address is usable at once.
            let flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
            match nl.add_address_flags(link.index, addr, prefix_len, flags) {
                Err(e) if !e.is_exists() => return Err(iface_err(iface)(e)),
                _ => {}
            }
        }
    }

    // Routes on the link first: a gateway must be reachable when its route is added.
    let ordered = routes.iter().filter(|r| r.gateway.is_none()).chain(routes.iter().filter(|r| r.gateway.is_some()));
    for planned in ordered {
        let oif = matched[planned.interface].index;
        let route = Route {
            dst: planned.dst,
            gateway: planned.gateway,
            oif: Some(oif),
            table: 0,
            protocol: RTPROT_BOOT,
            // As `ip route` chooses: IPv4 routes without a gateway are on the link.
            scope: if !planned.ipv6 && (planned.scope_link || planned.gateway.is_none()) { RT_SCOPE_LINK } else { RT_SCOPE_UNIVERSE },
            mtu: planned.mtu,
            src: planned.source,
            ipv6: planned.ipv6,
        };
        let route_err = |source| NetError::Route { route: planned.text.clone(), source };
        match nl.add_route(&route) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {
                // Fine when the kernel made it already (the prefix route of an address) or
                // an earlier configuration did: the same destination through the same way.
                let existing = nl.routes().map_err(route_err)?;
                let same =
                    existing.iter().any(|r| r.ipv6 == route.ipv6 && r.dst == route.dst && r.oif == Some(oif) && r.gateway == route.gateway);
                if !same {
                    return Err(route_err(e));
                }
            }
            Err(e) => return Err(route_err(e)),
        }
    }
    Ok(())
}

/// The error of a netlink operation on `iface`.
fn iface_err(iface: &PlannedInterface) -> impl Fn(NetlinkError) -> NetError + '_ {
    move |source| NetError::Interface { name: iface.name.clone(), mac: format_mac(&iface.mac), source }
}

/// Checks `spec` and parses its strings, without touching the system.
fn validate(spec: &NetworkSpec) -> Result<(Vec<PlannedInterface>, Vec<PlannedRoute>), NetError> {
    let invalid = |msg: String| NetError::Invalid(msg);
    if spec.interfaces.len() > MAX_NETWORK_INTERFACES {
        return Err(invalid(format!("{} interfaces, at most {MAX_NETWORK_INTERFACES} are supported", spec.interfaces.len())));
    }
    if spec.routes.len() > MAX_NETWORK_ROUTES {
        return Err(invalid(format!("{} routes, at most {MAX_NETWORK_ROUTES} are supported", spec.routes.len())));
    }
    let mut interfaces: Vec<PlannedInterface> = Vec::with_capacity(spec.interfaces.len());
    for iface in &spec.interfaces {
        interfaces.push(validate_interface(iface, &interfaces)?);
    }
    let routes = spec.routes.iter().map(|r| validate_route(r, &interfaces)).collect::<Result<_, _>>()?;
    Ok((interfaces, routes))
}

fn validate_interface(iface: &InterfaceSpec, earlier: &[PlannedInterface]) -> Result<PlannedInterface, NetError> {
    let name = &iface.name;
    let invalid = |msg: String| NetError::Invalid(format!("interface {name:?}: {msg}"));
    if !valid_name(name) {
        return Err(invalid(format!("not a valid interface name (1-{MAX_INTERFACE_NAME_LEN} bytes, no '/', ':' or spaces)")));
    }
    let mac = parse_mac(&iface.mac).ok_or_else(|| invalid(format!("MAC {:?} is not aa:bb:cc:dd:ee:ff", iface.mac)))?;
    if earlier.iter().any(|e| e.name == *name) {
        return Err(invalid("named twice".into()));
    }
    if earlier.iter().any(|e| e.mac == mac) {
        return Err(invalid(format!("MAC {} is also another interface's", iface.mac)));
    }
    let mtu = match iface.mtu {
        0 => None,
        mtu @ MIN_MTU..=MAX_MTU => Some(mtu),
        mtu => return Err(invalid(format!("MTU {mtu} is outside {MIN_MTU}-{MAX_MTU}"))),
    };
    if iface.addresses.len() > MAX_INTERFACE_ADDRESSES {
        return Err(invalid(format!("{} addresses, at most {MAX_INTERFACE_ADDRESSES} are supported", iface.addresses.len())));
    }
    let addresses = iface.addresses.iter().map(|a| parse_prefix(a).map_err(invalid)).collect::<Result<_, _>>()?;
    Ok(PlannedInterface { mac, name: name.clone(), mtu, addresses })
}

fn validate_route(route: &RouteSpec, interfaces: &[PlannedInterface]) -> Result<PlannedRoute, NetError> {
    let mut text = route.destination.clone().unwrap_or_else(|| "default".into());
    if let Some(gw) = &route.gateway {
        text.push_str(&format!(" via {gw}"));
    }
    text.push_str(&format!(" dev {}", route.interface));
    let invalid = |msg: String| NetError::Invalid(format!("route {text}: {msg}"));
    let interface = interfaces
        .iter()
        .position(|i| i.name == route.interface)
        .ok_or_else(|| invalid(format!("interface {:?} is not one of the spec's interfaces", route.interface)))?;
    let dst = route.destination.as_deref().map(parse_prefix).transpose().map_err(invalid)?;
    let parse_ip = |what: &str, s: &str| s.parse::<IpAddr>().map_err(|_| invalid(format!("{what} {s:?} is not an IP address")));
    let gateway = route.gateway.as_deref().map(|g| parse_ip("gateway", g)).transpose()?;
    let source = route.source.as_deref().map(|s| parse_ip("source", s)).transpose()?;
    // The family: the destination's, else the gateway's, else the source's, else IPv4.
    let ipv6 = dst.map(|(a, _)| a).or(gateway).or(source).is_some_and(|a| a.is_ipv6());
    if [dst.map(|(a, _)| a), gateway, source].into_iter().flatten().any(|a| a.is_ipv6() != ipv6) {
        return Err(invalid("mixes IPv4 and IPv6 addresses".into()));
    }
    if let Some(mtu) = route.mtu {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(invalid(format!("MTU {mtu} is outside {MIN_MTU}-{MAX_MTU}")));
        }
    }
    Ok(PlannedRoute { text, interface, dst, gateway, mtu: route.mtu, source, scope_link: route.scope_link, ipv6 })
}

/// Parses `10.0.0.2/24` or `fd00::2/64`.
fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{text:?} is not an address with a prefix length (10.0.0.2/24, fd00::2/64)");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > if addr.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok((addr, len))
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
