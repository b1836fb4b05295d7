//! A VM's shared directory: the one directory its virtiofsd serves (virtio-fs tag [`TAG`]),
//! with the container's root and its volumes bound under it.
//!
//! The binds exist only in virtiofsd's own mount namespace ([`crate::virtiofsd`] makes them
//! after it unshares, before it execs): in the caller's namespace the shared directory holds
//! nothing but empty placeholders ([`ShareDir`]), so removing a run directory can never reach
//! into a user's files, and no mount outlives virtiofsd, however it ends.

use std::path::{Path, PathBuf};

/// The virtio-fs tag of a VM's shared directory (the agent mounts it at
/// `palisade_protocol::share_dir(TAG)`).
pub const TAG: &str = "palisade";
/// Where the container's root directory is bound, inside the share.
pub const ROOT_PATH: &str = "root";

/// Where volume `index` (counted from 0) is bound, inside the share.
pub fn volume_path(index: usize) -> String {
    format!("volumes/{index}")
}

/// The guest path of volume `index`: the source of its bind mount in the container's spec.
pub fn volume_guest_path(index: usize) -> String {
    palisade_protocol::share_path(TAG, &volume_path(index))
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Stat { path: PathBuf, source: std::io::Error },
    #[error("{0}: only directories and regular files can be shared")]
    NotShareable(PathBuf),
    #[error("shared directory {path}: creating {what}: {source}")]
    Create { path: PathBuf, what: String, source: std::io::Error },
}

/// Whether a shared host path is a directory or a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// One host directory or file, bound at `path` inside the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    pub host: PathBuf,
    /// Inside the share (`palisade_protocol::valid_share_path`).
    pub path: String,
    pub kind: EntryKind,
    pub read_only: bool,
}

/// What goes into a VM's shared directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharePlan {
    pub entries: Vec<ShareEntry>,
}

impl SharePlan {
    /// Adds `host` at `path`; it must exist and be a directory or a regular file (symlinks
    /// are followed: the user named them).
    pub fn add(&mut self, host: &Path, path: String, read_only: bool) -> Result<(), ShareError> {
        debug_assert!(palisade_protocol::valid_share_path(&path) && !path.is_empty(), "{path:?}");
        let meta = match std::fs::metadata(host) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ShareError::Missing(host.into())),
            Err(source) => return Err(ShareError::Stat { path: host.into(), source }),
        };
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File
        } else {
            return Err(ShareError::NotShareable(host.into()));
        };
        self.entries.push(ShareEntry { host: host.to_path_buf(), path, kind, read_only });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The shared directory on the host, holding an empty placeholder (directory or file) for
/// every entry. On drop, exactly those are removed, never recursively: if a placeholder is
/// not empty, something was bound or written where it must not be, and it is left alone
/// (with a warning) rather than deleted.
#[derive(Debug)]
pub struct ShareDir {
    dir: PathBuf,
    /// Everything created, in creation order (removed in reverse).
    created: Vec<(PathBuf, EntryKind)>,
}

impl ShareDir {
    /// Creates `dir` (which must not exist) and the placeholders of `plan`.
    pub fn create(dir: &Path, plan: &SharePlan) -> Result<ShareDir, ShareError> {
        let mut share = ShareDir { dir: dir.to_path_buf(), created: Vec::new() };
        share.mkdir(dir.to_path_buf(), "the directory")?;
        for entry in &plan.entries {
            let target = dir.join(&entry.path);
            let mut parents = Vec::new();
            let mut p = target.parent();
            while let Some(parent) = p.filter(|p| *p != dir) {
                parents.push(parent.to_path_buf());
                p = parent.parent();
            }
            for parent in parents.into_iter().rev() {
                if !share.created.iter().any(|(c, _)| *c == parent) {
                    share.mkdir(parent, "a directory")?;
                }
            }
            match entry.kind {
                EntryKind::Dir => share.mkdir(target, "a mount point")?,
                EntryKind::File => {
                    std::fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(|source| ShareError::Create {
                        path: dir.to_path_buf(),
                        what: format!("the mount point {}", entry.path),
                        source,
                    })?;
                    share.created.push((target, EntryKind::File));
                }
            }
        }
        Ok(share)
    }

    fn mkdir(&mut self, path: PathBuf, what: &str) -> Result<(), ShareError> {
        std::fs::create_dir(&path).map_err(|source| ShareError::Create {
            path: self.dir.clone(),
            what: format!("{what} {}", path.display()),
            source,
        })?;
        self.created.push((path, EntryKind::Dir));
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where `entry` is bound (for virtiofsd's binds).
    pub fn target(&self, entry: &ShareEntry) -> PathBuf {
        self.dir.join(&entry.path)
    }

    /// Leaves the placeholders in place (someone else removes them, with
    /// [`remove_placeholders`]).
    pub fn keep(mut self) {
        self.created.clear();
    }
}

/// Removes a tree of placeholders: empty files and the directories holding them, never
/// anything with content (left in place, with a warning).
pub fn remove_placeholders(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            remove_placeholders(&entry.path());
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            tracing::warn!("shared directory: leaving {} in place: {e}", dir.display());
        }
    } else if meta.is_file() && meta.len() == 0 {
        let _ = std::fs::remove_file(dir);
    } else {
        tracing::warn!("shared directory: leaving {} in place: it is not an empty placeholder", dir.display());
    }
}

impl Drop for ShareDir {
    fn drop(&mut self) {
        for (path, kind) in self.created.drain(..).rev() {
            let removed = match kind {
                EntryKind::Dir => std::fs::remove_dir(&path),
                EntryKind::File => match std::fs::metadata(&path) {
                    Ok(m) if m.len() == 0 => std::fs::remove_file(&path),
                    Ok(_) => Err(std::io::Error::other("it is not empty")),
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = removed {
                tracing::warn!("shared directory: leaving {} in place: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_made_and_removed_and_nothing_else_is_touched() {
        let host = tempfile::tempdir().unwrap();
        let data = host.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("keep"), "precious").unwrap();
        let hosts = host.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 x\n").unwrap();
        let mut plan = SharePlan::default();
        plan.add(&data, ROOT_PATH.into(), false).unwrap();
        plan.add(&data, volume_path(0), true).unwrap();
        plan.add(&hosts, volume_path(1), true).unwrap();
        assert_eq!(plan.entries[2].kind, EntryKind::File);

        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("share");
        let share = ShareDir::create(&dir, &plan).unwrap();
        assert!(dir.join("root").is_dir() && dir.join("volumes/0").is_dir());
        assert_eq!(std::fs::read(dir.join("volumes/1")).unwrap(), b"");
        assert_eq!(share.target(&plan.entries[1]), dir.join("volumes/0"));
        drop(share);
        assert!(!dir.exists());
        assert_eq!(std::fs::read_to_string(data.join("keep")).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "127.0.0.1 x\n");
    }

    #[test]
    fn a_placeholder_that_is_not_empty_is_left_alone() {
        let host = tempfile::tempdir().unwrap();
        let mut plan = SharePlan::default();
        plan.add(host.path(), ROOT_PATH.into(), false).unwrap();
        let run = tempfile::tempdir().unwrap();
        let dir = run.path().join("share");
        let share = ShareDir::create(&dir, &plan).unwrap();
        // As if a bind had leaked into our namespace: its files must survive the cleanup.
        std::fs::write(dir.join("root/user-file"), "x").unwrap();
        drop(share);
        assert_eq!(std::fs::read_to_string(dir.join("root/user-file")).unwrap(), "x");
    }

    #[test]
    fn what_cannot_be_shared_is_named() {
        let mut plan = SharePlan::default();
        let e = plan.add(Path::new("/nonexistent/dir"), volume_path(0), false).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/dir: no such file or directory");
        let e = plan.add(Path::new("/dev/null"), volume_path(0), false).unwrap_err();
        assert_eq!(e.to_string(), "/dev/null: only directories and regular files can be shared");
        assert!(plan.is_empty());
        assert_eq!(volume_guest_path(3), "/run/palisade/shares/palisade/volumes/3");
    }
}
