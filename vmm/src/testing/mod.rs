//! Test support shared by the VMM's own tests and the start-up benchmark: tiny guests that
//! boot in microseconds on any KVM (even PVM, which cannot run a standard Linux guest), and
//! a virtiofsd to connect virtio-fs to.

pub mod tiny_guest;
pub mod virtiofsd;
