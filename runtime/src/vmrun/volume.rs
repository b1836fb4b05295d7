//! `-v|--volume HOST:CTR[:OPTS]`, as Docker writes it: a host directory or single file
//! bound at CTR in the container, shared live with the VM through virtio-fs.

use std::path::{Component, Path, PathBuf};

/// One `--volume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Absolute host path (a directory or a regular file).
    pub host: PathBuf,
    /// Absolute path in the container.
    pub container: String,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("--volume {0:?}: expected HOST:CONTAINER[:ro|rw]")]
    Syntax(String),
    #[error("--volume {0:?}: named and anonymous volumes are not supported; give an absolute host path")]
    NotAHostPath(String),
    #[error("--volume {value:?}: the container path {path:?} must be absolute, not / and without '..'")]
    BadContainerPath { value: String, path: String },
    #[error("--volume {value:?}: unknown option {option:?} (vmrun knows ro and rw; the guest has no SELinux for z/Z)")]
    UnknownOption { value: String, option: String },
    #[error("--volume: {0} is the destination of two volumes")]
    Duplicate(String),
}

/// Parses one `--volume` value.
pub fn parse(value: &str) -> Result<Volume, VolumeError> {
    let mut parts = value.splitn(3, ':');
    let (host, container, options) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), o) if !h.is_empty() && !c.is_empty() => (h, c, o),
        (Some(_), None, None) => return Err(VolumeError::NotAHostPath(value.into())),
        _ => return Err(VolumeError::Syntax(value.into())),
    };
    if !host.starts_with('/') {
        return Err(VolumeError::NotAHostPath(value.into()));
    }
    let path_ok = container.starts_with('/')
        && !container.trim_end_matches('/').is_empty()
        && !Path::new(container).components().any(|c| c == Component::ParentDir)
        && !container.contains('\0');
    if !path_ok {
        return Err(VolumeError::BadContainerPath { value: value.into(), path: container.into() });
    }
    let mut read_only = false;
    for option in options.into_iter().flat_map(|o| o.split(',')) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            _ => return Err(VolumeError::UnknownOption { value: value.into(), option: option.into() }),
        }
    }
    Ok(Volume { host: PathBuf::from(host), container: container.trim_end_matches('/').to_string(), read_only })
}

/// Parses every `--volume`; two with the same destination are refused (as by Docker).
pub fn parse_all(values: &[String]) -> Result<Vec<Volume>, VolumeError> {
    let volumes = values.iter().map(|v| parse(v)).collect::<Result<Vec<_>, _>>()?;
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|w| w.container == v.container) {
            return Err(VolumeError::Duplicate(v.container.clone()));
        }
    }
    Ok(volumes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_syntax() {
        assert_eq!(parse("/srv/data:/data").unwrap(), Volume { host: "/srv/data".into(), container: "/data".into(), read_only: false });
        assert!(parse("/srv/data:/data:ro").unwrap().read_only);
        assert!(!parse("/srv/data:/data:ro,rw").unwrap().read_only);
        assert_eq!(parse("/etc/hosts:/etc/hosts/:ro").unwrap().container, "/etc/hosts");
    }

    #[test]
    fn refusals_name_the_value() {
        assert_eq!(parse("/data").unwrap_err(), VolumeError::NotAHostPath("/data".into()));
        assert_eq!(parse("data:/data").unwrap_err(), VolumeError::NotAHostPath("data:/data".into()));
        assert_eq!(parse(":/data").unwrap_err(), VolumeError::Syntax(":/data".into()));
        assert_eq!(parse("/a:").unwrap_err(), VolumeError::Syntax("/a:".into()));
        for bad in ["/a:data", "/a:/", "/a:/x/../etc"] {
            assert!(matches!(parse(bad), Err(VolumeError::BadContainerPath { .. })), "{bad}");
        }
        let e = parse("/a:/b:Z").unwrap_err().to_string();
        assert!(e.contains("\"Z\"") && e.contains("SELinux"), "{e}");
        let e = parse_all(&["/a:/data".into(), "/b:/data/".into()]).unwrap_err();
        assert_eq!(e.to_string(), "--volume: /data is the destination of two volumes");
    }
}
