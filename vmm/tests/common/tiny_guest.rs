//! The tiny guests live in the library (`palisade_vmm::testing::tiny_guest`), shared with
//! the start-up benchmark; here the file writers panic instead of returning errors.

use std::path::{Path, PathBuf};

pub use palisade_vmm::testing::tiny_guest::*;

/// Writes the PVH guest running `code` to `dir/name`.
pub fn write_guest(dir: &Path, name: &str, code: &Code) -> PathBuf {
    palisade_vmm::testing::tiny_guest::write_guest(dir, name, code).expect("writing the test guest")
}

/// Writes the guest running `code`, without a PVH note, to `dir/name`.
pub fn write_linux64_guest(dir: &Path, name: &str, code: &Code) -> PathBuf {
    palisade_vmm::testing::tiny_guest::write_linux64_guest(dir, name, code).expect("writing the test guest")
}
