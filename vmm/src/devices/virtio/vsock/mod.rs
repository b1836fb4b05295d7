//! virtio-vsock (device type 19) with a Unix-socket backend.
//!
//! There is no vhost-vsock on the hosts Palisade runs on, so the whole device is emulated here
//! (the scheme Firecracker popularised):
//!
//! - **Host-initiated** connections: the VMM listens on the Unix socket `uds_path`. A client
//!   connects and sends `CONNECT <port>\n`; the device asks the guest for a connection from
//!   (cid 2, a fresh local port) to (guest cid, `port`). When the guest accepts, the client reads
//!   `OK <local port>\n` and from then on the socket is a byte stream to the guest. When the guest
//!   refuses (no listener), the driver is not ready, or the guest does not answer in time, the
//!   client is simply disconnected and should retry.
//! - **Guest-initiated** connections to cid 2 port `P` are relayed to the Unix socket
//!   `<uds_path>_<P>`.
//!
//! Layout: [`device`] is the virtio side (queues, packet parsing, the `VirtioDevice` contract),
//! [`event_handler`] wires it into the event loop, [`packet`] holds the wire format, [`rx_buffer`]
//! is one guest buffer a packet is written into, and
//! [`unix`] is the backend: the listener, the `CONNECT` handshake and one [`unix::connection`]
//! per stream with its credit-based flow control.

pub mod device;
pub mod event_handler;
pub mod packet;
pub mod rx_buffer;
pub mod unix;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::Vsock;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock: guest CID {0} is reserved (CIDs 0, 1, 2 and u32::MAX are not usable by a guest)")]
    InvalidGuestCid(u64),
    #[error("vsock: cannot remove the stale socket file {path}: {source}")]
    RemoveStaleSocket { path: PathBuf, source: io::Error },
    #[error("vsock: cannot listen on the Unix socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("vsock: cannot create the {what} eventfd: {source}")]
    EventFd { what: &'static str, source: io::Error },
    #[error("vsock: cannot create the connect-timeout timerfd: {0}")]
    TimerFd(io::Error),
}
