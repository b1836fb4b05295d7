//! An OCI bundle given to `vmrun --bundle DIR`: DIR/config.json and the root
//! filesystem it names, checked on the host before a VM is booted. Every error is one
//! line naming the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The largest config.json accepted (it travels in one 1 MiB protocol frame).
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// The namespace types of the OCI runtime spec.
pub const NAMESPACE_TYPES: [&str; 8] = ["pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"];

/// A checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// config.json as given (the agent parses it again; `root.path` is not used there).
    pub config: String,
    /// The root filesystem: `root.path` resolved against the bundle directory.
    pub rootfs: PathBuf,
    /// `root.readonly`.
    pub readonly: bool,
    /// `process.terminal`.
    pub terminal: bool,
    /// `linux.resources.memory.limit` in bytes, when set and positive.
    pub memory_limit: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {size} bytes, more than the {MAX_CONFIG_SIZE} accepted")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: not valid JSON: {message} at line {line} column {column}")]
    Json { path: PathBuf, message: String, line: usize, column: usize },
    #[error("{path}: {field}: {problem}")]
    Field { path: PathBuf, field: String, problem: String },
}

/// Reads and checks `dir/config.json` and its root filesystem.
pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
    let path = dir.join("config.json");
    let read = |source| BundleError::Read { path: path.clone(), source };
    let size = std::fs::metadata(&path).map_err(read)?.len();
    if size > MAX_CONFIG_SIZE {
        return Err(BundleError::TooLarge { path, size });
    }
    let text = std::fs::read_to_string(&path).map_err(read)?;
    check(&text, dir, &path)
}

/// Checks config.json `text` of the bundle in `dir` (`path` names it in errors).
pub fn check(text: &str, dir: &Path, path: &Path) -> Result<Bundle, BundleError> {
    let field = |field: &str, problem: String| BundleError::Field { path: path.to_path_buf(), field: field.to_string(), problem };
    let v: Value = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let message = full.rsplit_once(" at line ").map(|(m, _)| m.to_string()).unwrap_or(full);
        BundleError::Json { path: path.to_path_buf(), message, line: e.line(), column: e.column() }
    })?;
    if !v.is_object() {
        return Err(field("(top level)", "not a JSON object".into()));
    }
    match v.get("ociVersion").and_then(Value::as_str) {
        Some(ver) if ver.starts_with("1.") => {}
        Some(ver) => return Err(field("ociVersion", format!("{ver:?} is not a 1.x version"))),
        None => return Err(field("ociVersion", "missing".into())),
    }

    let process =
        v.get("process").filter(|p| !p.is_null()).ok_or_else(|| field("process", "missing: the bundle must say what to run".into()))?;
    let args = match process.get("args") {
        None | Some(Value::Null) => return Err(field("process.args", "missing: the bundle must name a program".into())),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(field("process.args", "not a list of strings".into())),
    };
    if args.is_empty() {
        return Err(field("process.args", "empty: the bundle must name a program".into()));
    }
    for (i, a) in args.iter().enumerate() {
        match a.as_str() {
            Some(s) if i == 0 && s.is_empty() => return Err(field("process.args[0]", "empty: the bundle must name a program".into())),
            Some(_) => {}
            None => return Err(field(&format!("process.args[{i}]"), "not a string".into())),
        }
    }
    if !process.get("cwd").and_then(Value::as_str).is_some_and(|c| c.starts_with('/')) {
        return Err(field("process.cwd", "missing or not an absolute path".into()));
    }
    let terminal = process.get("terminal").and_then(Value::as_bool).unwrap_or(false);

    let linux = v.get("linux").filter(|l| !l.is_null()).ok_or_else(|| field("linux", "missing (Palisade runs Linux containers)".into()))?;
    if let Some(ns) = linux.get("namespaces").filter(|n| !n.is_null()) {
        let ns = ns.as_array().ok_or_else(|| field("linux.namespaces", "not a list".into()))?;
        for (i, n) in ns.iter().enumerate() {
            let name = format!("linux.namespaces[{i}].type");
            match n.get("type").and_then(Value::as_str) {
                Some(t) if NAMESPACE_TYPES.contains(&t) => {}
                Some(t) => return Err(field(&name, format!("unknown namespace type {t:?} (known: {})", NAMESPACE_TYPES.join(", ")))),
                None => return Err(field(&name, "missing".into())),
            }
        }
    }

    let root =
        v.get("root").filter(|r| !r.is_null()).ok_or_else(|| field("root", "missing: the bundle must name its root filesystem".into()))?;
    let root_path =
        root.get("path").and_then(Value::as_str).filter(|p| !p.is_empty()).ok_or_else(|| field("root.path", "missing".into()))?;
    let rootfs = dir.join(root_path);
    match std::fs::metadata(&rootfs) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(field("root.path", format!("{}: no such directory", rootfs.display())));
        }
        Err(e) => return Err(field("root.path", format!("{}: {e}", rootfs.display()))),
    }
    let readonly = match root.get("readonly") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(field("root.readonly", "not true or false".into())),
    };

    let memory_limit = linux.pointer("/resources/memory/limit").and_then(Value::as_i64).filter(|l| *l > 0).map(|l| l as u64);

    // Everything else has the types of the OCI runtime spec (the agent checks the
    // rest of the rules when it builds the container).
    if let Err(e) = serde_json::from_str::<oci_spec::runtime::Spec>(text) {
        return Err(field("(spec)", format!("not a valid OCI runtime spec: {e}")));
    }
    Ok(Bundle { config: text.to_string(), rootfs, readonly, terminal, memory_limit })
}

/// A bind mount of a spec, its source as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// Its index among the spec's bind mounts (counted from 0).
    pub index: usize,
    /// `source`, resolved against the bundle directory.
    pub host: PathBuf,
    /// `destination`.
    pub destination: String,
    /// Its options hold `ro`.
    pub read_only: bool,
}

/// Gives each bind mount of `spec` (type `bind`, or a `bind`/`rbind` option) a new source:
/// what `guest_source` says for it, as the host sees it. A VM cannot reach a host path, so
/// the callers share each one with the VM and give the path it has there.
pub fn rewrite_bind_sources<E>(
    spec: &mut Value,
    bundle_dir: &Path,
    mut guest_source: impl FnMut(&HostBind) -> Result<String, E>,
) -> Result<(), E> {
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else { return Ok(()) };
    let mut index = 0;
    for m in mounts.iter_mut() {
        let options: Vec<&str> = m.get("options").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let is_bind = m.get("type").and_then(Value::as_str) == Some("bind") || options.iter().any(|&o| o == "bind" || o == "rbind");
        if !is_bind {
            continue;
        }
        let read_only = options.contains(&"ro");
        let Some(source) = m.get("source").and_then(Value::as_str) else { continue };
        let destination = m.get("destination").and_then(Value::as_str).unwrap_or_default().to_string();
        let bind = HostBind { index, host: bundle_dir.join(source), destination, read_only };
        m["source"] = Value::String(guest_source(&bind)?);
        index += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "process": {"cwd": "/", "args": ["sh", "-c", "true"], "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "terminal": false},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}], "resources": {"memory": {"limit": 67108864}}}
        })
    }

    fn bundle_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        dir
    }

    fn err(dir: &Path, text: &str) -> String {
        let e = check(text, dir, &dir.join("config.json")).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    }

    #[test]
    fn a_good_bundle_is_read() {
        let dir = bundle_dir();
        std::fs::write(dir.path().join("config.json"), good().to_string()).unwrap();
        let b = load(dir.path()).unwrap();
        assert_eq!(b.rootfs, dir.path().join("rootfs"));
        assert!(b.readonly && !b.terminal);
        assert_eq!(b.memory_limit, Some(64 << 20));
    }

    #[test]
    fn broken_bundles_name_the_field() {
        let dir = bundle_dir();
        let d = dir.path();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = good();
            f(&mut v);
            v.to_string()
        };
        let e = err(d, "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {,\n}");
        assert!(e.contains("config.json: not valid JSON: ") && e.contains("at line 3 column"), "{e}");
        let e = err(d, &with(&|v| v["linux"]["namespaces"][1]["type"] = "bogus".into()));
        assert!(e.contains("linux.namespaces[1].type: unknown namespace type \"bogus\""), "{e}");
        let e = err(d, &with(&|v| v["root"]["path"] = "nope".into()));
        assert!(e.contains("root.path: ") && e.contains("nope: no such directory"), "{e}");
        assert!(err(d, &with(&|v| v["process"]["args"] = json!([]))).contains("process.args: empty"));
        assert!(err(d, &with(&|v| v["process"]["args"] = json!(["", "x"]))).contains("process.args[0]: empty"));
        assert!(err(d, &with(&|v| v["process"]["args"] = json!(["sh", 1]))).contains("process.args[1]: not a string"));
        assert!(err(d, &with(&|v| drop(v.as_object_mut().unwrap().remove("process")))).contains("process: missing"));
        assert!(err(d, &with(&|v| drop(v.as_object_mut().unwrap().remove("root")))).contains("root: missing"));
        assert!(err(d, &with(&|v| v["ociVersion"] = "0.9".into())).contains("ociVersion"));
        assert!(err(d, &with(&|v| v["process"]["cwd"] = "tmp".into())).contains("process.cwd"));
        assert!(err(d, &with(&|v| v["process"]["user"]["uid"] = "root".into())).contains("not a valid OCI runtime spec"));
        let e = load(&d.join("nowhere")).unwrap_err().to_string();
        assert!(e.contains("nowhere/config.json: No such file"), "{e}");
    }
}
