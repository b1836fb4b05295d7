//! A small rtnetlink (NETLINK_ROUTE) client: read a network namespace's links, addresses
//! and routes, and set them up again elsewhere.
//!
//! The host side reads the configuration of a container's network namespace with
//! [`Netlink::links`], [`Netlink::addresses`] and [`Netlink::routes`]; the guest agent
//! re-creates it with [`Netlink::set_link`], [`Netlink::add_address`] and
//! [`Netlink::add_route`]. A [`Netlink`] works in the network namespace of the thread that
//! opened it.
//!
//! Everything the kernel sends is parsed with every length checked ([`message`]): bad
//! input is a [`NetlinkError::Malformed`], never a panic.

use std::io;

pub mod address;
pub mod link;
pub mod message;
pub mod route;
pub mod socket;

pub use address::Address;
pub use link::Link;
pub use route::Route;

/// `IFA_F_NODAD`: an IPv6 address usable at once, without duplicate address detection
/// (for [`Netlink::add_address_flags`]).
pub const IFA_F_NODAD: u32 = libc::IFA_F_NODAD;
/// Route scopes ([`Route::scope`]).
pub const RT_SCOPE_UNIVERSE: u8 = libc::RT_SCOPE_UNIVERSE;
pub const RT_SCOPE_LINK: u8 = libc::RT_SCOPE_LINK;
pub const RT_SCOPE_HOST: u8 = libc::RT_SCOPE_HOST;
/// The main routing table ([`Route::table`]).
pub const RT_TABLE_MAIN: u32 = libc::RT_TABLE_MAIN as u32;
/// Route origins ([`Route::protocol`]): the kernel (from an address), boot (`ip route add`), static.
pub const RTPROT_KERNEL: u8 = libc::RTPROT_KERNEL;
pub const RTPROT_BOOT: u8 = libc::RTPROT_BOOT;
pub const RTPROT_STATIC: u8 = libc::RTPROT_STATIC;

/// Errors of netlink operations; each names the operation (and so the interface, address
/// or route) it is about.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket itself failed (open, send, receive, timeout).
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("{op}: {source}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
        /// The kernel's explanation (extended ack), when it gave one.
        detail: Option<String>,
    },
    /// A message did not parse.
    #[error("malformed netlink message: {0}")]
    Malformed(String),
    /// The caller asked for something that cannot be encoded (a name too long, a prefix
    /// length beyond the address, mixed address families).
    #[error("{0}")]
    Invalid(String),
}

impl NetlinkError {
    /// The errno the kernel (or the socket) answered with.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Io { source, .. } | NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel said the object exists already (EEXIST).
    pub fn is_exists(&self) -> bool {
        matches!(self, NetlinkError::Kernel { .. }) && self.raw_os_error() == Some(libc::EEXIST)
    }
}

/// A NETLINK_ROUTE connection in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Netlink {
    socket: socket::Socket,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        Ok(Netlink { socket: socket::Socket::open()? })
    }

    /// Every network interface.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        link::dump(&mut self.socket)
    }

    /// Every IPv4 and IPv6 address.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        address::dump(&mut self.socket)
    }

    /// The unicast routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        route::dump(&mut self.socket)
    }

    /// Changes interface `index`: renames it (it must be down), sets its MTU, brings it up
    /// or down; `None` leaves that property alone.
    pub fn set_link(&mut self, index: u32, name: Option<&str>, mtu: Option<u32>, up: Option<bool>) -> Result<(), NetlinkError> {
        link::set(&mut self.socket, index, name, mtu, up)
    }

    /// Adds `addr/prefix_len` to interface `index` (`ip addr add`).
    pub fn add_address(&mut self, index: u32, addr: std::net::IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        address::add(&mut self.socket, index, addr, prefix_len, 0)
    }

    /// [`Netlink::add_address`] with `IFA_F_*` flags, e.g. [`IFA_F_NODAD`].
    pub fn add_address_flags(&mut self, index: u32, addr: std::net::IpAddr, prefix_len: u8, flags: u32) -> Result<(), NetlinkError> {
        address::add(&mut self.socket, index, addr, prefix_len, flags)
    }

    /// Adds a unicast route (`ip route add`). A `table` of 0 is the main table, a
    /// `protocol` of 0 is [`RTPROT_BOOT`].
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        route::add(&mut self.socket, route)
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod testns;
