//! The device model: legacy PC devices and virtio devices.

pub mod virtio;
