//! `state` and `list`: the OCI state of containers, as runc prints it; `ps`: the processes
//! of a container, as its VM's agent sees them.

use std::path::Path;

use serde::Serialize;

use palisade_protocol::{ProcessInfo, Request, Response};

use super::lifecycle::{agent, refused};
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

/// The state a hook at a point of the lifecycle gets on stdin: the container's, with
/// `status` what it is at that point.
pub fn hook_state(record: &ContainerRecord, status: Status) -> String {
    let mut state = oci_state(record);
    state.status = status;
    if status == Status::Stopped {
        state.pid = 0;
    } else if let Some(m) = record.monitor {
        state.pid = m.pid;
    }
    serde_json::to_string(&state).unwrap_or_default()
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

/// `ps ID`: the container's processes (none once it has stopped). Their pids are the
/// guest's: the container's processes are not host processes.
pub fn ps(root: &Path, id: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
    let locked = ContainerDir::open(root, id)?;
    let record = locked.read_record()?;
    if matches!(record.status(), Status::Stopped | Status::Creating) {
        return Ok(Vec::new());
    }
    match agent(root, &record)?.call(&Request::ListProcesses { id: id.into() }) {
        Ok(Response::Processes { processes }) => Ok(processes),
        Ok(other) => Err(refused(id, "list-processes", other)),
        Err(e) => Err(RuntimeError::Other(format!("container {id}: ps: {e}"))),
    }
}

/// `ps --format table`: one line per process under `ps -f`'s column names, the guest's
/// pids and uids, CPU time as [[DD-]hh:]mm:ss.
pub fn ps_table(processes: &[ProcessInfo]) -> String {
    let mut out = format!("{:<8} {:>7} {:>7} {:>10} {}\n", "UID", "PID", "PPID", "TIME", "CMD");
    for p in processes {
        let secs = p.cpu_ms / 1000;
        let time = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
        // The guest's text, printed on the host: no control characters reach the terminal.
        let cmd: String = p.cmd.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        out.push_str(&format!("{:<8} {:>7} {:>7} {:>10} {}\n", p.uid, p.pid, p.ppid, time, cmd));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table_columns_and_control_characters() {
        let rows = [
            ProcessInfo { pid: 1, ppid: 0, uid: 0, cpu_ms: 3_723_000, cmd: "sleep 600".into() },
            ProcessInfo { pid: 12, ppid: 1, uid: 1000, cpu_ms: 10, cmd: "evil\x1b[2Jname".into() },
        ];
        let t = ps_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["UID", "PID", "PPID", "TIME", "CMD"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["0", "1", "0", "01:02:03", "sleep", "600"]);
        assert!(lines[2].ends_with("evil?[2Jname") && !t.contains('\x1b'), "{t}");
    }
}
