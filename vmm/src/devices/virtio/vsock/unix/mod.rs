//! The host side of the device: Unix sockets instead of vhost-vsock.

pub mod backend;
pub mod connection;
pub mod handshake;

pub use backend::UnixBackend;
