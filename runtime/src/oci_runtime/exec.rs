//! `exec`: a further process in a created or running container, inside its VM. Its
//! `process` object comes from `--process FILE` (what containerd's shim and conmon pass) or
//! from the container's config.json with runc's flags applied (`--cwd`, `--env`, `--user`,
//! `--additional-gids`, `--cap`, `--no-new-privs`, the command). A monitor of its own holds
//! the caller's stdio and is the PID `--pid-file` names; without `--detach`, `exec` waits
//! for it and exits with the process's status.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::Receiver;

use palisade_protocol::ExecSpec;
use serde_json::{json, Value};

use super::monitor::{self, wait_forwarding, Launch, MonitorReport, MonitorRequest};
use super::store::{write_atomic, write_json_atomic, ContainerDir, Status};
use super::RuntimeError;
use crate::sandbox::SandboxDir;

/// The largest `--process` file read.
const MAX_PROCESS_FILE: u64 = 1 << 20;

/// What `exec` was asked.
#[derive(Debug)]
pub struct ExecOptions<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub process: Option<&'a Path>,
    pub command: &'a [String],
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub tty: bool,
    pub cwd: Option<&'a str>,
    pub env: &'a [String],
    pub user: Option<&'a str>,
    pub additional_gids: &'a [u32],
    pub caps: &'a [String],
    pub no_new_privs: bool,
    pub ignore_paused: bool,
    pub preserve_fds: u32,
}

impl<'a> ExecOptions<'a> {
    /// `exec` of container `id` with no flags.
    pub fn new(root: &'a Path, id: &'a str) -> ExecOptions<'a> {
        ExecOptions {
            root,
            id,
            process: None,
            command: &[],
            detach: false,
            pid_file: None,
            console_socket: None,
            tty: false,
            cwd: None,
            env: &[],
            user: None,
            additional_gids: &[],
            caps: &[],
            no_new_privs: false,
            ignore_paused: false,
            preserve_fds: 0,
        }
    }
}

/// Runs `exec`; returns `exec`'s exit code (the process's status unless `--detach`).
pub fn exec(o: &ExecOptions<'_>, signals: &Receiver<i32>) -> Result<i32, RuntimeError> {
    if o.preserve_fds > 0 {
        return Err(RuntimeError::Unsupported("--preserve-fds: passing descriptors into a VM is not supported".into()));
    }
    let locked = ContainerDir::open(o.root, o.id)?;
    let record = locked.read_record()?;
    match record.status() {
        Status::Created | Status::Running => {}
        Status::Paused if o.ignore_paused => {}
        Status::Paused => return Err(RuntimeError::State("cannot exec in a paused container (use --ignore-paused to override)".into())),
        Status::Stopped => return Err(RuntimeError::State("cannot exec in a stopped container".into())),
        Status::Creating => return Err(RuntimeError::State(format!("cannot exec in a container in the creating state: {}", o.id))),
    }
    let process = match o.process {
        Some(file) => read_process_file(file)?,
        None => process_from_flags(o, &record.bundle)?,
    };
    let terminal = process.get("terminal").and_then(Value::as_bool).unwrap_or(false);
    let console_socket = super::console::console_socket(terminal, o.console_socket)?;
    let sandbox = record.sandbox_id().ok_or_else(|| RuntimeError::Other(format!("container {}: bad sandbox name", o.id)))?;
    let exec_id = new_exec_id()?;
    std::fs::create_dir_all(locked.exec_dir()).map_err(|e| RuntimeError::Other(format!("{}: {e}", locked.exec_dir().display())))?;
    let request = MonitorRequest {
        host_cgroup: None,
        socket: SandboxDir::new(&super::create::sandbox_root(o.root), &sandbox).vsock_socket(),
        launch: Launch::Exec(ExecSpec {
            container: o.id.into(),
            id: format!("exec-{exec_id}"),
            process_json: process.to_string(),
            stdin: true,
            tty_size: None,
        }),
        console_socket,
    };
    let request_file = locked.exec_request(&exec_id);
    write_json_atomic(&request_file, &request).map_err(|e| RuntimeError::Other(format!("{}: {e}", request_file.display())))?;
    let exe = std::env::current_exe().map_err(|e| RuntimeError::Other(format!("finding palisade itself: {e}")))?;
    let terminal = request.console_socket.is_some();
    let (monitor, report) = match monitor::spawn(&exe, o.root, &locked, Some(&exec_id), terminal) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&request_file);
            let _ = std::fs::remove_file(locked.exec_log(&exec_id));
            return Err(e);
        }
    };
    match report {
        MonitorReport::Ready { .. } => {}
        MonitorReport::Failed { message } => {
            let _ = std::fs::remove_file(&request_file);
            let _ = std::fs::remove_file(locked.exec_log(&exec_id));
            return Err(RuntimeError::Guest(message));
        }
    }
    if let Some(pid_file) = o.pid_file {
        write_atomic(pid_file, monitor.pid.to_string().as_bytes())
            .map_err(|e| RuntimeError::Other(format!("--pid-file {}: {e}", pid_file.display())))?;
    }
    drop(locked);
    if o.detach {
        return Ok(0);
    }
    wait_forwarding(monitor.pid, signals).map_err(RuntimeError::Other)
}

/// A name for the exec, unique in its VM: 16 hex digits from the kernel's random pool.
fn new_exec_id() -> Result<String, RuntimeError> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| RuntimeError::Other(format!("/dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `--process FILE`: an OCI `process` object.
pub fn read_process_file(file: &Path) -> Result<Value, RuntimeError> {
    let mut text = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PROCESS_FILE + 1).read_to_end(&mut text))
        .map_err(|e| RuntimeError::Invalid(format!("--process {}: {e}", file.display())))?;
    if text.len() as u64 > MAX_PROCESS_FILE {
        return Err(RuntimeError::Invalid(format!("--process {}: larger than {MAX_PROCESS_FILE} bytes", file.display())));
    }
    let value: Value =
        serde_json::from_slice(&text).map_err(|e| RuntimeError::Invalid(format!("--process {}: not JSON: {e}", file.display())))?;
    if !value.is_object() {
        return Err(RuntimeError::Invalid(format!("--process {}: not a JSON object", file.display())));
    }
    Ok(value)
}

/// The `process` of the container's config.json with runc's `exec` flags applied.
pub fn process_from_flags(o: &ExecOptions<'_>, bundle: &Path) -> Result<Value, RuntimeError> {
    if o.command.is_empty() {
        return Err(RuntimeError::Invalid("exec: a command to run is required (or --process FILE)".into()));
    }
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| RuntimeError::Other(format!("{}: {e}", config.display())))?;
    let spec: Value = serde_json::from_str(&text).map_err(|e| RuntimeError::Other(format!("{}: {e}", config.display())))?;
    let mut p = spec.get("process").cloned().unwrap_or_else(|| json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}));
    apply_flags(&mut p, o)?;
    Ok(p)
}

/// runc's `exec` flags over a `process` object.
pub fn apply_flags(p: &mut Value, o: &ExecOptions<'_>) -> Result<(), RuntimeError> {
    p["args"] = json!(o.command);
    p["terminal"] = json!(o.tty);
    if let Some(cwd) = o.cwd {
        p["cwd"] = json!(cwd);
    }
    if !o.env.is_empty() {
        // A later KEY=VALUE replaces an earlier one of the same KEY.
        let mut env: Vec<String> = p["env"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect();
        for e in o.env {
            let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
            env.retain(|old| old.split_once('=').map_or(old.as_str(), |(k, _)| k) != key);
            env.push(e.clone());
        }
        p["env"] = json!(env);
    }
    if let Some(user) = o.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let number = |what: &str, v: &str| {
            v.parse::<u32>().map_err(|_| RuntimeError::Invalid(format!("--user {user}: the {what} {v:?} is not a number (UID[:GID])")))
        };
        p["user"]["uid"] = json!(number("uid", uid)?);
        p["user"]["gid"] = json!(match gid {
            Some(g) => number("gid", g)?,
            None => 0,
        });
    }
    if !o.additional_gids.is_empty() {
        p["user"]["additionalGids"] = json!(o.additional_gids);
    }
    for cap in o.caps {
        let name = if cap.starts_with("CAP_") { cap.clone() } else { format!("CAP_{}", cap.to_uppercase()) };
        let has_inheritable = p["capabilities"]["inheritable"].is_array();
        for set in ["bounding", "effective", "permitted"].into_iter().chain(has_inheritable.then_some("ambient")) {
            let list = &mut p["capabilities"][set];
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(a) = list.as_array_mut() {
                if !a.iter().any(|c| c.as_str() == Some(name.as_str())) {
                    a.push(json!(name));
                }
            }
        }
    }
    if o.no_new_privs {
        p["noNewPrivileges"] = json!(true);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_the_containers_process() {
        let mut p = json!({"args": ["sleep", "600"], "cwd": "/", "env": ["PATH=/bin", "A=1"], "user": {"uid": 0, "gid": 0},
                           "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}});
        let command = ["sh".to_string(), "-c".into(), "id".into()];
        let env = ["A=2".to_string(), "B=3".into()];
        let caps = ["NET_ADMIN".to_string(), "CAP_KILL".into()];
        let o = ExecOptions {
            command: &command,
            cwd: Some("/tmp"),
            env: &env,
            user: Some("1000:100"),
            additional_gids: &[10, 20],
            caps: &caps,
            no_new_privs: true,
            ..ExecOptions::new(Path::new("/"), "c")
        };
        apply_flags(&mut p, &o).unwrap();
        assert_eq!(p["args"], json!(["sh", "-c", "id"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 100, "additionalGids": [10, 20]}));
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_KILL", "CAP_NET_ADMIN"]));
        assert!(p["capabilities"].get("ambient").is_none(), "no ambient capabilities without inheritable ones (as runc)");
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["terminal"], false);

        let o = ExecOptions { command: &command, user: Some("root"), ..ExecOptions::new(Path::new("/"), "c") };
        assert!(apply_flags(&mut p, &o).unwrap_err().to_string().contains("--user root"));
    }

    #[test]
    fn process_files_are_bounded_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"args":["true"],"cwd":"/"}"#).unwrap();
        assert_eq!(read_process_file(&file).unwrap()["args"][0], "true");
        std::fs::write(&file, "[1]").unwrap();
        assert!(read_process_file(&file).unwrap_err().to_string().contains("not a JSON object"));
        std::fs::write(&file, "{").unwrap();
        assert!(read_process_file(&file).unwrap_err().to_string().contains("not JSON"));
        assert!(read_process_file(&dir.path().join("none")).is_err());
        let no_command = ExecOptions::new(Path::new("/"), "c");
        assert!(process_from_flags(&no_command, dir.path()).unwrap_err().to_string().contains("command to run is required"));
    }
}
