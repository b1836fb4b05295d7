//! `state` and `list`: the OCI state of containers, as runc prints it.

use std::path::Path;

use serde::Serialize;

use super::store::{ContainerDir, ContainerRecord, Status, StoreError};
use super::time::rfc3339;
use super::RuntimeError;

/// The OCI state (runtime-spec `state.json` schema, and runc's `created`/`owner` fields).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    /// The monitor's PID (what `--pid-file` holds); 0 once stopped.
    pub pid: u32,
    pub status: Status,
    pub bundle: String,
    pub rootfs: String,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

pub const OCI_VERSION: &str = "1.0.2";

pub fn oci_state(record: &ContainerRecord) -> OciState {
    let status = record.status();
    OciState {
        oci_version: OCI_VERSION.into(),
        id: record.id.clone(),
        pid: if status == Status::Stopped { 0 } else { record.monitor.map_or(0, |m| m.pid) },
        status,
        bundle: record.bundle.display().to_string(),
        rootfs: record.rootfs.display().to_string(),
        created: rfc3339(record.created_unix_ns),
        owner: String::new(),
        annotations: record.annotations.clone(),
    }
}

/// `state ID`.
pub fn state(root: &Path, id: &str) -> Result<OciState, RuntimeError> {
    let locked = ContainerDir::open(root, id)?;
    Ok(oci_state(&locked.read_record()?))
}

/// `list`: every container (one that vanished meanwhile, or whose `create` has not written
/// its record yet, is left out).
pub fn list(root: &Path) -> Result<Vec<OciState>, RuntimeError> {
    let mut states = Vec::new();
    for id in ContainerDir::list(root)? {
        match ContainerDir::open(root, &id).and_then(|l| l.read_record()) {
            Ok(r) => states.push(oci_state(&r)),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(states)
}

/// `list --format table`, laid out as runc's tabwriter does (cells at least 12 wide, 3
/// spaces of padding).
pub fn table(states: &[OciState]) -> String {
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from).to_vec()];
    for s in states {
        rows.push(vec![s.id.clone(), s.pid.to_string(), s.status.name().into(), s.bundle.clone(), s.created.clone(), s.owner.clone()]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].len() + 3).max().unwrap_or(0).max(12)).collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c == 5 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}", w = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}
