//! The root filesystem: a directory (shared live with the VM) or an erofs or ext4 image
//! used as is ([`classify`]); and `mkfs.erofs`, which makes an image of a directory (the
//! benchmarks compare the two ways).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// erofs superblock magic, little-endian u32 at byte 1024.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// ext2/3/4 superblock magic, little-endian u16 at byte 1080.
pub const EXT4_MAGIC: u16 = 0xEF53;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Erofs,
    Ext4,
}

impl ImageKind {
    /// The filesystem type the guest mounts it with.
    pub fn fstype(self) -> &'static str {
        match self {
            ImageKind::Erofs => "erofs",
            ImageKind::Ext4 => "ext4",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("rootfs {0}: no such file or directory")]
    Missing(PathBuf),
    #[error("rootfs {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("rootfs {0}: not an erofs or ext4 image (and not a directory)")]
    Unknown(PathBuf),
    #[error("mkfs.erofs: not found — install erofs-utils (apt-get install erofs-utils) to use a directory as --rootfs")]
    NoMkfs,
    #[error("mkfs.erofs of rootfs {path} failed: {detail}")]
    Mkfs { path: PathBuf, detail: String },
}

/// Classifies an image by its superblock magic.
pub fn detect(path: &Path) -> Result<ImageKind, ImageError> {
    let io = |source| ImageError::Io { path: path.into(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut sb = [0u8; 64];
    file.seek(SeekFrom::Start(1024)).map_err(io)?;
    let mut got = 0;
    while got < sb.len() {
        match file.read(&mut sb[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    if got >= 4 && u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]) == EROFS_MAGIC {
        return Ok(ImageKind::Erofs);
    }
    if got >= 58 && u16::from_le_bytes([sb[56], sb[57]]) == EXT4_MAGIC {
        return Ok(ImageKind::Ext4);
    }
    Err(ImageError::Unknown(path.into()))
}

/// What a root filesystem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKind {
    /// A directory, shared with the VM.
    Directory,
    /// An image for the VM's disk.
    Image(ImageKind),
}

/// Whether `rootfs` is a directory or an image (and which).
pub fn classify(rootfs: &Path) -> Result<RootKind, ImageError> {
    let meta = match std::fs::metadata(rootfs) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ImageError::Missing(rootfs.into())),
        Err(source) => return Err(ImageError::Io { path: rootfs.into(), source }),
    };
    if meta.is_dir() {
        return Ok(RootKind::Directory);
    }
    Ok(RootKind::Image(detect(rootfs)?))
}

/// `mkfs.erofs OUT DIR`.
pub fn make_erofs(dir: &Path, out: &Path) -> Result<(), ImageError> {
    tracing::info!("making an erofs image of {} at {}", dir.display(), out.display());
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg(out).arg(dir).stdin(Stdio::null());
    // SAFETY: the hook only calls pthread_sigmask, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, crate::vmrun::signals::unblock_all_in_child);
    }
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::NoMkfs
        } else {
            ImageError::Mkfs { path: dir.into(), detail: e.to_string() }
        }
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
        return Err(ImageError::Mkfs { path: dir.into(), detail: format!("{detail} ({})", output.status) });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(offset: usize, magic: &[u8]) -> tempfile::NamedTempFile {
        let mut data = vec![0u8; 4096];
        data[offset..offset + magic.len()].copy_from_slice(magic);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), data).unwrap();
        f
    }

    #[test]
    fn detects_erofs_and_ext4_and_names_anything_else() {
        assert_eq!(detect(image_with(1024, &EROFS_MAGIC.to_le_bytes()).path()).unwrap(), ImageKind::Erofs);
        assert_eq!(detect(image_with(1080, &EXT4_MAGIC.to_le_bytes()).path()).unwrap(), ImageKind::Ext4);
        let junk = image_with(0, b"hello");
        let err = detect(junk.path()).unwrap_err().to_string();
        assert!(err.contains(&junk.path().display().to_string()) && err.contains("not an erofs or ext4"), "{err}");
        let tiny = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(detect(tiny.path()), Err(ImageError::Unknown(_))));
    }

    #[test]
    fn missing_rootfs_is_named() {
        let err = classify(Path::new("/nonexistent/rootfs")).unwrap_err();
        assert_eq!(err.to_string(), "rootfs /nonexistent/rootfs: no such file or directory");
    }

    #[test]
    fn a_directory_becomes_an_erofs_image() {
        if Command::new("mkfs.erofs").arg("--version").output().is_err() {
            eprintln!("mkfs.erofs not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("marker"), "x").unwrap();
        assert_eq!(classify(dir.path()).unwrap(), RootKind::Directory);
        let out = tempfile::tempdir().unwrap();
        let image = out.path().join("rootfs.erofs");
        make_erofs(dir.path(), &image).unwrap();
        assert_eq!(classify(&image).unwrap(), RootKind::Image(ImageKind::Erofs));
    }
}
