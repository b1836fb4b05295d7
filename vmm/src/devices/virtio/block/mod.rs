//! virtio-blk backed by a raw image file.
//!
//! `device.rs` holds the device (features, configuration space, activation),
//! `request.rs` parses and serves one request chain (through its rate limiter),
//! `event_handler.rs` wires the queue eventfd and the rate limiters' timers into the event
//! manager.

mod device;
mod event_handler;
mod request;

pub use device::{Block, BlockError, QUEUE_SIZE, SECTOR_SIZE};
pub use request::RequestError;
