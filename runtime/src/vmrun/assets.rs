//! Where vmrun finds its assets (kernel, initramfs, default rootfs) and the VMM binary.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{what} {path}: no such file")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {source}")]
    Unreadable { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("kernel {0}: not a Linux kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel(PathBuf),
    #[error("palisade-vmm {0}: no such file — build it with `cargo build -p palisade-vmm` or set PALISADE_VMM")]
    NoVmm(PathBuf),
    #[error("palisade-sandbox {0}: no such file — build it with `cargo build -p palisade-runtime` or set PALISADE_SANDBOX (it holds vmrun's VM)")]
    NoSandbox(PathBuf),
    #[error("virtiofsd {0}: no such file — scripts/setup installs it, or set PALISADE_VIRTIOFSD (a directory root or volume needs it)")]
    NoVirtiofsd(PathBuf),
}

/// `$PALISADE_ASSETS_DIR`, else `<dir of the executable>/../palisade`
/// (`target/debug/vmrun` → `target/palisade`).
pub fn assets_dir(env_value: Option<PathBuf>, exe: &Path) -> PathBuf {
    if let Some(dir) = env_value.filter(|d| !d.as_os_str().is_empty()) {
        return dir;
    }
    let bin_dir = exe.parent().unwrap_or(Path::new("."));
    bin_dir.parent().unwrap_or(bin_dir).join("palisade")
}

/// `$PALISADE_VMM`, else `palisade-vmm` beside the executable.
pub fn vmm_binary(env_value: Option<PathBuf>, exe: &Path) -> PathBuf {
    env_value.filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| exe.parent().unwrap_or(Path::new(".")).join("palisade-vmm"))
}

/// `$PALISADE_SANDBOX`, else `palisade-sandbox` beside the executable (the supervisor that
/// holds vmrun's VM).
pub fn sandbox_binary(env_value: Option<PathBuf>, exe: &Path) -> PathBuf {
    env_value.filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| exe.parent().unwrap_or(Path::new(".")).join("palisade-sandbox"))
}

/// `$PALISADE_VIRTIOFSD`, else `<assets>/virtiofsd` (where `scripts/setup` links it).
pub fn virtiofsd_binary(env_value: Option<PathBuf>, assets_dir: &Path) -> PathBuf {
    env_value.filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| assets_dir.join("virtiofsd"))
}

/// A file that must exist (and be readable).
pub fn require_file(what: &'static str, path: &Path) -> Result<(), AssetError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(AssetError::Unreadable { what, path: path.into(), source: std::io::ErrorKind::InvalidInput.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AssetError::Missing { what, path: path.into() }),
        Err(source) => Err(AssetError::Unreadable { what, path: path.into(), source }),
    }
}

/// Checks that `path` looks like a kernel the VMM can load: an ELF file (vmlinux) or a
/// bzImage (`HdrS` at 0x202).
pub fn check_kernel(path: &Path) -> Result<(), AssetError> {
    require_file("kernel", path)?;
    let mut head = [0u8; 0x206];
    let mut file = std::fs::File::open(path).map_err(|source| AssetError::Unreadable { what: "kernel", path: path.into(), source })?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(source) => return Err(AssetError::Unreadable { what: "kernel", path: path.into(), source }),
        }
    }
    let elf = got >= 4 && head[..4] == *b"\x7fELF";
    let bzimage = got >= 0x206 && head[0x202..0x206] == *b"HdrS";
    if elf || bzimage {
        Ok(())
    } else {
        Err(AssetError::NotAKernel(path.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_beside_the_target_dir_unless_overridden() {
        let exe = Path::new("/w/target/debug/vmrun");
        assert_eq!(assets_dir(None, exe), Path::new("/w/target/palisade"));
        assert_eq!(assets_dir(Some("/a".into()), exe), Path::new("/a"));
        assert_eq!(assets_dir(Some("".into()), exe), Path::new("/w/target/palisade"));
        assert_eq!(vmm_binary(None, exe), Path::new("/w/target/debug/palisade-vmm"));
        assert_eq!(vmm_binary(Some("/v".into()), exe), Path::new("/v"));
    }

    #[test]
    fn kernels_are_recognised_and_junk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
        let err = check_kernel(&junk).unwrap_err().to_string();
        assert!(err.contains(&junk.display().to_string()) && err.contains("not a Linux kernel"), "{err}");
        let elf = dir.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        check_kernel(&elf).unwrap();
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzimage = dir.path().join("bzImage");
        std::fs::write(&bzimage, bz).unwrap();
        check_kernel(&bzimage).unwrap();
        let missing = check_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err().to_string();
        assert_eq!(missing, "kernel /nonexistent/vmlinux: no such file");
    }
}
