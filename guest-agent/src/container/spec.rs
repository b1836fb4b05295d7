//! Loading and checking an OCI runtime spec (config.json). Errors name the field.

use std::path::Path;

use oci_spec::runtime::Spec;

/// The largest config.json accepted (the protocol's frame limit is 1 MiB too).
pub const MAX_SPEC_SIZE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("config.json: {0}")]
    Invalid(String),
    #[error("config.json: not a valid OCI runtime spec: {0}")]
    Parse(String),
    #[error("config.json: {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// Checks a `process` object: of the container's init, or of a process exec'd into it.
pub fn validate_process(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(invalid("process.args: must name a program"));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("process.args: contains a NUL byte"));
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(invalid(format!("process.cwd: {} is not an absolute path", cwd.display())));
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(invalid(format!("process.env[{i}]: {e:?} is not KEY=VALUE")));
        }
    }
    if let Some(umask) = process.user().umask() {
        if umask > 0o777 {
            return Err(invalid(format!("process.user.umask: {umask:o} is not a permission mask")));
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return Err(invalid(format!("process.oomScoreAdj: {adj} is outside -1000..1000")));
        }
    }
    Ok(())
}

/// Parses a `process` object (runc's `exec --process` file) and checks it.
pub fn parse_process(json: &str) -> Result<oci_spec::runtime::Process, SpecError> {
    if json.len() > MAX_SPEC_SIZE {
        return Err(invalid(format!("process: {} bytes, more than the {MAX_SPEC_SIZE} accepted", json.len())));
    }
    let process = serde_json::from_str(json).map_err(|e| SpecError::Parse(format!("process: {e}")))?;
    validate_process(&process)?;
    Ok(process)
}

/// Parses config.json text and checks it.
pub fn parse(json: &str) -> Result<Spec, SpecError> {
    if json.len() > MAX_SPEC_SIZE {
        return Err(invalid(format!("{} bytes, more than the {MAX_SPEC_SIZE} accepted", json.len())));
    }
    let spec: Spec = serde_json::from_str(json).map_err(|e| SpecError::Parse(e.to_string()))?;
    validate(&spec)?;
    Ok(spec)
}

/// Reads `bundle/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read { path: path.display().to_string(), source })?;
    parse(&text)
}

/// The checks that do not depend on the machine: required fields and their shapes.
/// (Mounts, devices, seccomp and resources are checked when they are converted.)
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(invalid(format!("ociVersion: {version:?} is not a 1.x version")));
    }
    let process = spec.process().as_ref().ok_or_else(|| invalid("process: missing"))?;
    validate_process(process)?;
    if spec.root().is_none() {
        return Err(invalid("root: missing"));
    }
    let linux = spec.linux().as_ref().ok_or_else(|| invalid("linux: missing (Palisade runs Linux containers)"))?;
    for (key, _) in linux.sysctl().iter().flatten() {
        if key.is_empty() || key.contains('/') || key.split('.').any(|c| c.is_empty() || c == "..") {
            return Err(invalid(format!("linux.sysctl: {key:?} is not a sysctl name")));
        }
    }
    for field in ["hostname", "domainname"] {
        let value = if field == "hostname" { spec.hostname() } else { spec.domainname() };
        if let Some(v) = value {
            if v.len() > 64 || v.contains('\0') {
                return Err(invalid(format!("{field}: {v:?} is longer than 64 bytes or has a NUL")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const MINIMAL: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"env":["PATH=/bin"]},
        "linux":{"namespaces":[{"type":"mount"}]}}"#;

    fn with(patch: impl Fn(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        patch(&mut v);
        v.to_string()
    }

    fn err(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_spec_parses() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.process().as_ref().unwrap().args().as_ref().unwrap(), &["sh"]);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(&with(|v| v["ociVersion"] = "0.9".into())).contains("ociVersion"));
        assert!(err(&with(|v| v["process"]["args"] = serde_json::json!([]))).contains("process.args"));
        assert!(err(&with(|v| v["process"]["cwd"] = "rel".into())).contains("process.cwd"));
        assert!(err(&with(|v| v["process"]["env"] = serde_json::json!(["A=1", "novalue"]))).contains("process.env[1]"));
        assert!(err(&with(|v| v["process"]["oomScoreAdj"] = 5000.into())).contains("process.oomScoreAdj"));
        assert!(err(&with(|v| v["linux"]["sysctl"] = serde_json::json!({"../../etc/x": "1"}))).contains("linux.sysctl"));
        assert!(err(&with(|v| v["hostname"] = "x".repeat(65).into())).contains("hostname"));
        assert!(err(&with(|v| {
            v.as_object_mut().unwrap().remove("linux");
        }))
        .contains("linux: missing"));
        assert!(err("{").contains("not a valid OCI runtime spec"));
        assert!(err(&with(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]))).contains("not a valid OCI runtime spec"));
    }
}
