//! Test support shared by the VMM's own tests and the start-up benchmark: tiny guests that
//! boot in microseconds on any KVM (even PVM, which cannot run a standard Linux guest).

pub mod tiny_guest;
