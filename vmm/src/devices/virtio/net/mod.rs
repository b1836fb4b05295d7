//! virtio-net (device type 1) with a tap backend.
//!
//! [`device`] is the device (features, configuration space, activation, the rx and tx paths
//! with their budgets and rate limits), [`frame`] reads a tx chain into a frame, checks an rx
//! chain as a buffer and the vnet headers both ways, [`tap`] is the host side (a
//! `/dev/net/tun` descriptor with 12-byte vnet headers), and `event_handler.rs` wires the
//! queue eventfds, the tap and the rate limiters' timers into the event manager.

pub mod device;
mod event_handler;
pub mod frame;
pub mod tap;

#[cfg(test)]
mod tests;

pub use device::{Net, NetCounters, NetError, BYTES_PER_CALL, FRAMES_PER_CALL, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use frame::{MAX_FRAME, MIN_FRAME};
pub use tap::{Tap, TapError, VNET_HDR_LEN};
