//! virtio-rng (entropy device) fed from the host's `/dev/urandom`.
//!
//! `device.rs` holds the device and its request handling, `event_handler.rs` wires the
//! queue eventfd and the rate limiter's timer into the event manager.

mod device;
mod event_handler;

pub use device::{Rng, RngError, DEFAULT_RATES, MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
