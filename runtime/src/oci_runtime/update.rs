//! `update`: changes a running container's resources (its cgroup in the guest), from
//! runc's flags and/or an OCI `linux.resources` object (`-r FILE`, `-` for stdin).

use std::io::Read;
use std::path::Path;

use palisade_protocol::{Request, Response};
use serde_json::{json, Value};

use super::lifecycle::{agent, refused};
use super::store::{ContainerDir, Status};
use super::RuntimeError;

/// The largest `-r` file read.
const MAX_RESOURCES_FILE: u64 = 1 << 20;

/// runc's `update` flags (each `None` when not given).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct UpdateFlags {
    /// An OCI linux.resources object (JSON; `-` reads stdin); the flags apply over it.
    #[arg(short, long)]
    pub resources: Option<String>,
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period, µs.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota, µs (-1: none).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit (e.g. 512m; -1: none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1: none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Most processes (-1 or 0: none).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
}

/// A size as runc and Docker write it: bytes, or a number with k, m, g, t or p (powers of
/// 1024, an optional trailing `b`/`ib`, any case); `-1` is unlimited.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix("ib").or_else(|| t.strip_suffix('b')).unwrap_or(&t);
    let (number, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        Some('p') => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let bad = || format!("{text:?} is not a size (bytes, or a number with k, m, g, t or p)");
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// The `linux.resources` object `flags` ask for: the `-r` file (if any) with every given
/// flag over it.
pub fn resources(flags: &UpdateFlags) -> Result<Value, RuntimeError> {
    let mut r = match &flags.resources {
        Some(file) => read_resources(file)?,
        None => json!({}),
    };
    let size = |flag: &str, v: &str| parse_bytes(v).map_err(|e| RuntimeError::Invalid(format!("--{flag}: {e}")));
    if let Some(v) = &flags.memory {
        r["memory"]["limit"] = json!(size("memory", v)?);
    }
    if let Some(v) = &flags.memory_reservation {
        r["memory"]["reservation"] = json!(size("memory-reservation", v)?);
    }
    if let Some(v) = &flags.memory_swap {
        r["memory"]["swap"] = json!(size("memory-swap", v)?);
    }
    if let Some(v) = flags.cpu_share {
        r["cpu"]["shares"] = json!(v);
    }
    if let Some(v) = flags.cpu_quota {
        r["cpu"]["quota"] = json!(v);
    }
    if let Some(v) = flags.cpu_period {
        r["cpu"]["period"] = json!(v);
    }
    if let Some(v) = &flags.cpuset_cpus {
        r["cpu"]["cpus"] = json!(v);
    }
    if let Some(v) = &flags.cpuset_mems {
        r["cpu"]["mems"] = json!(v);
    }
    if let Some(v) = flags.pids_limit {
        r["pids"]["limit"] = json!(v);
    }
    if let Some(v) = flags.blkio_weight {
        r["blockIO"]["weight"] = json!(v);
    }
    // The same checks the guest makes, before anything is sent.
    serde_json::from_value::<oci_spec::runtime::LinuxResources>(r.clone())
        .map_err(|e| RuntimeError::Invalid(format!("resources: not an OCI linux.resources object: {e}")))?;
    Ok(r)
}

fn read_resources(file: &str) -> Result<Value, RuntimeError> {
    let mut text = Vec::new();
    let read = if file == "-" {
        std::io::stdin().take(MAX_RESOURCES_FILE + 1).read_to_end(&mut text)
    } else {
        std::fs::File::open(Path::new(file)).and_then(|f| f.take(MAX_RESOURCES_FILE + 1).read_to_end(&mut text))
    };
    read.map_err(|e| RuntimeError::Invalid(format!("-r {file}: {e}")))?;
    if text.len() as u64 > MAX_RESOURCES_FILE {
        return Err(RuntimeError::Invalid(format!("-r {file}: larger than {MAX_RESOURCES_FILE} bytes")));
    }
    let v: Value = serde_json::from_slice(&text).map_err(|e| RuntimeError::Invalid(format!("-r {file}: not JSON: {e}")))?;
    if !v.is_object() {
        return Err(RuntimeError::Invalid(format!("-r {file}: not a JSON object")));
    }
    Ok(v)
}

/// `update [flags] ID`.
pub fn update(root: &Path, id: &str, flags: &UpdateFlags) -> Result<(), RuntimeError> {
    let resources = resources(flags)?;
    let locked = ContainerDir::open(root, id)?;
    let record = locked.read_record()?;
    if !matches!(record.status(), Status::Created | Status::Running | Status::Paused) {
        return Err(RuntimeError::State(format!("container {id} is not running")));
    }
    let request = Request::UpdateResources { id: id.into(), resources_json: resources.to_string() };
    match agent(root, &record)?.call(&request) {
        Ok(Response::Ok) => Ok(()),
        Ok(other) => Err(refused(id, "update-resources", other)),
        Err(e) => Err(RuntimeError::Other(format!("container {id}: update: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_runc_writes_them() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("2kb"), Ok(2048));
        assert_eq!(parse_bytes("-1"), Ok(-1));
        for bad in ["", "m", "ten", "-5m", "1e30t", "NaN"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_over_the_resources_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.json");
        std::fs::write(&file, r#"{"memory":{"limit":1048576},"pids":{"limit":3}}"#).unwrap();
        let flags = UpdateFlags {
            resources: Some(file.display().to_string()),
            memory: Some("128m".into()),
            cpu_quota: Some(50000),
            cpu_period: Some(100000),
            ..UpdateFlags::default()
        };
        let r = resources(&flags).unwrap();
        assert_eq!(r["memory"]["limit"], 128 << 20);
        assert_eq!(r["pids"]["limit"], 3);
        assert_eq!(r["cpu"], json!({"quota": 50000, "period": 100000}));
        let e = resources(&UpdateFlags { memory: Some("lots".into()), ..UpdateFlags::default() }).unwrap_err();
        assert!(e.to_string().contains("--memory"), "{e}");
        std::fs::write(&file, "[]").unwrap();
        let e = resources(&UpdateFlags { resources: Some(file.display().to_string()), ..UpdateFlags::default() }).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
    }
}
