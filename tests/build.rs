//! Builds the static helper programs the end-to-end tests put into container images
//! (`probes/*.c`, with the system's C compiler: `build-essential`, which scripts/setup installs).

use std::path::PathBuf;
use std::process::Command;

/// The probes, each `probes/NAME.c`, built to `$OUT_DIR/NAME`.
const PROBES: &[&str] = &["vsock_probe", "vsock_flood"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for probe in PROBES {
        let source = format!("probes/{probe}.c");
        println!("cargo:rerun-if-changed={source}");
        let binary = out.join(probe);
        let status = Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("cc (for {source}): {e}; install build-essential (scripts/setup does)"));
        assert!(status.success(), "cc -static {source} failed ({status})");
    }
}
