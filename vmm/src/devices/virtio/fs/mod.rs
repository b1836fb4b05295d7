//! virtio-fs (device type 26): host directories shared with the guest, served by a vhost-user
//! backend (virtiofsd) in a process of its own.
//!
//! `device.rs` is the device: its config space (the tag the guest mounts by and the number
//! of request queues) and the `VirtioDevice` contract; the queues themselves are the
//! backend's ([`super::vhost_user`]). `event_handler.rs` runs the vhost-user setup on the
//! event loop when the driver starts the device (not on the vCPU thread that wrote the
//! status register, whose seccomp filter has no socket calls) and notices a backend that
//! went away.

mod device;
mod event_handler;
#[cfg(test)]
mod tests;

pub use device::{Fs, FsError, MAX_TAG_LEN, QUEUE_SIZE, VIRTIO_ID_FS};
