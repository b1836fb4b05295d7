//! The Palisade guest agent: PID 1 of the guest. It prepares the guest system
//! ([`system`]), mounts container root filesystems ([`rootfs`]), runs processes
//! ([`process`]) and serves the host ↔ agent protocol ([`server`]) on vsock — or, for
//! tests on a host, on Unix sockets.

pub mod conn;
pub mod container;
pub mod process;
pub mod rootfs;
pub mod server;
pub mod system;
