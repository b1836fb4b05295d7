//! Shared by the integration tests: tiny hand-assembled guests.

#![allow(dead_code)]

pub mod tiny_guest;

/// Whether this machine has a KVM to boot guests on (tests that need one skip otherwise).
pub fn have_kvm() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        true
    } else {
        eprintln!("skipped: no /dev/kvm on this machine");
        false
    }
}
