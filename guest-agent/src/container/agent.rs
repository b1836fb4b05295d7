//! The agent's container requests ([`create`] for `CreateContainer`, [`start`] for
//! `StartContainer`): the protocol glue between the control port and [`super::create`].
//! A container's init is registered in the agent's process table under the container
//! id, so `Wait`, `Signal` and `ResizeTty` work on containers as on processes. [`exec`]
//! (`ExecProcess`) starts further processes in a container, [`list_processes`] and
//! [`freeze`] act on its cgroup, and [`delete`] (`DeleteContainer`) frees its id.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use palisade_protocol::{ContainerSpec, ExecSpec, Response, StreamKind, TtySize, MAX_LISTED_PROCESSES};

use super::{cgroup, spec, Container, CreateOptions};
use crate::process::stdio::{ChildStdio, Streams};
use crate::process::table::Spawned;
use crate::server::Agent;

/// Longest container id accepted.
const MAX_ID_LEN: usize = 128;
/// How long freezing or thawing a container may take.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `DeleteContainer` waits for what it killed to end.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// The guest's cgroup v2 hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Created containers of this agent (one agent per guest).
fn containers() -> &'static Mutex<HashMap<String, Container>> {
    static CONTAINERS: OnceLock<Mutex<HashMap<String, Container>>> = OnceLock::new();
    CONTAINERS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn error(message: impl Into<String>) -> Response {
    Response::Error { message: message.into() }
}

/// Handles `CreateContainer`.
pub fn create(agent: &Agent, req: ContainerSpec) -> Response {
    let id = req.id.as_str();
    let response = create_inner(agent, &req);
    if matches!(response, Response::Error { .. }) && !agent.processes.contains(id) {
        agent.streams.discard(id);
    }
    response
}

fn create_inner(agent: &Agent, req: &ContainerSpec) -> Response {
    let id = req.id.as_str();
    if id.is_empty() || id.len() > MAX_ID_LEN || id.contains('\0') || id.contains('/') {
        return error(format!("container id {id:?} is invalid (1-{MAX_ID_LEN} bytes, no '/')"));
    }
    if agent.processes.contains(id) {
        return error(format!("container {id}: the id is already in use"));
    }
    let spec = match spec::parse(&req.spec_json) {
        Ok(s) => s,
        Err(e) => return error(format!("container {id}: {e}")),
    };
    let root = match agent.rootfs.lock().unwrap_or_else(|e| e.into_inner()).get(&req.rootfs) {
        Some(Some(root)) => root.clone(),
        Some(None) => {
            return error(format!("container {id}: rootfs {} is not mounted for real (host test mode runs no containers)", req.rootfs))
        }
        None => return error(format!("container {id}: rootfs {}: not mounted", req.rootfs)),
    };
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let (streams, stdio, pty_master) = match attached_stdio(agent, id, terminal, req.stdin, req.tty_size, None) {
        Ok(s) => s,
        Err(message) => return error(format!("container {id}: {message}")),
    };
    let cgroup_root = Path::new(CGROUP_ROOT);
    let opts = CreateOptions {
        id,
        rootfs: &root,
        bundle: None,
        stdio: stdio.child_fds(),
        cgroup_root: cgroup::available(cgroup_root).then_some(cgroup_root),
    };
    let mut created = None;
    let result = agent.processes.spawn_registered(id, || match super::create(&spec, &opts) {
        Ok(c) => {
            let pid = c.pid;
            let cgroup = c.cgroup.as_ref().map(|cg| cg.path.clone());
            created = Some(c);
            Ok(Spawned { pid, pty_master: pty_master.clone(), cgroup })
        }
        Err(e) => Err((None, e)),
    });
    match result {
        Ok(Ok(pid)) => {
            stdio.start_relays(id, streams);
            let container = created.expect("created container");
            let warnings = container.warnings.clone();
            for w in &warnings {
                tracing::warn!("container {id}: {w}");
            }
            containers().lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), container);
            Response::Created { pid: pid as u32, warnings }
        }
        Ok(Err(e)) => error(format!("container {id}: {e}")),
        Err(e) => error(e.to_string()),
    }
}

/// Takes the streams attached for process `id` and makes the stdio its process gets
/// (a pty with `terminal`, of the devpts under `pty_root` if it has one; pipes otherwise);
/// streams of kinds it does not use are closed.
fn attached_stdio(
    agent: &Agent,
    id: &str,
    terminal: bool,
    stdin: bool,
    tty_size: Option<TtySize>,
    pty_root: Option<&Path>,
) -> Result<(Streams, ChildStdio, Option<Arc<OwnedFd>>), String> {
    let kinds: Vec<StreamKind> = match (terminal, stdin) {
        (true, _) => vec![StreamKind::Tty],
        (false, true) => vec![StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr],
        (false, false) => vec![StreamKind::Stdout, StreamKind::Stderr],
    };
    let conns = agent.streams.take_all(id, &kinds).map_err(|missing| format!("the {missing:?} stream is not attached"))?;
    agent.streams.discard(id);
    let mut conns = conns.into_iter();
    let streams = match (terminal, stdin) {
        (true, _) => conns.next().map(Streams::Tty),
        (false, stdin) => {
            let stdin_conn = if stdin { conns.next() } else { None };
            match (conns.next(), conns.next()) {
                (Some(o), Some(e)) => Some(Streams::Pipes { stdin: stdin_conn, stdout: o, stderr: e }),
                _ => None,
            }
        }
    };
    let streams = streams.ok_or("internal error collecting streams")?;
    let stdio = match (terminal, pty_root) {
        (false, _) => ChildStdio::pipes(stdin),
        (true, None) => ChildStdio::pty(tty_size),
        (true, Some(root)) => match ChildStdio::pty_in_root(root, tty_size) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => ChildStdio::pty(tty_size),
            Err(e) => Err(e),
        },
    }
    .map_err(|e| e.to_string())?;
    let pty_master = stdio.pty_master().map_err(|e| format!("pty: {e}"))?;
    Ok((streams, stdio, pty_master))
}

/// Handles `ExecProcess`.
pub fn exec(agent: &Agent, req: ExecSpec) -> Response {
    let response = exec_inner(agent, &req);
    if matches!(response, Response::Error { .. }) && !agent.processes.contains(&req.id) {
        agent.streams.discard(&req.id);
    }
    response
}

fn exec_inner(agent: &Agent, req: &ExecSpec) -> Response {
    let id = req.id.as_str();
    if id.is_empty() || id.len() > MAX_ID_LEN || id.contains('\0') {
        return error(format!("process id {id:?} is invalid (1-{MAX_ID_LEN} bytes)"));
    }
    if agent.processes.contains(id) {
        return error(format!("process {id}: the id is already in use"));
    }
    let target = match containers().lock().unwrap_or_else(|e| e.into_inner()).get(&req.container) {
        Some(c) => c.exec_target(),
        None => return error(format!("container {}: no such container", req.container)),
    };
    if !matches!(agent.processes.running_pid(&req.container), Ok(Some(_))) {
        return error(format!("container {}: cannot exec in a stopped container", req.container));
    }
    let process = match spec::parse_process(&req.process_json) {
        Ok(p) => p,
        Err(e) => return error(format!("process {id}: {e}")),
    };
    let terminal = process.terminal().unwrap_or(false);
    // A terminal of the container's own devpts, so the process sees it as /dev/pts/N.
    let root = PathBuf::from(format!("/proc/{}/root", target.init_pid));
    let (streams, stdio, pty_master) = match attached_stdio(agent, id, terminal, req.stdin, req.tty_size, Some(&root)) {
        Ok(s) => s,
        Err(message) => return error(format!("process {id}: {message}")),
    };
    let result = agent.processes.spawn_registered(id, || {
        let launched = super::exec::exec(&target, id, &process, stdio.child_fds())?;
        Ok(Spawned { pid: launched.pid, pty_master: pty_master.clone(), cgroup: target.cgroup.clone() })
    });
    match result {
        Ok(Ok(pid)) => {
            stdio.start_relays(id, streams);
            tracing::debug!(id, pid, container = req.container, "process exec'd");
            Response::Started { pid: pid as u32 }
        }
        Ok(Err(e)) => error(format!("process {id}: {e}")),
        Err(e) => error(e.to_string()),
    }
}

/// The cgroup of container `id`.
fn container_cgroup(id: &str) -> Result<PathBuf, String> {
    match containers().lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        Some(Container { cgroup: Some(cg), .. }) => Ok(cg.path.clone()),
        Some(_) => Err(format!("container {id}: it has no cgroup")),
        None => Err(format!("container {id}: no such container")),
    }
}

/// Handles `ListProcesses`: every process of the container's cgroup and the cgroups below.
pub fn list_processes(id: &str) -> Response {
    let path = match container_cgroup(id) {
        Ok(p) => p,
        Err(message) => return error(message),
    };
    match cgroup::pids(&path) {
        Ok(pids) => {
            Response::Processes { processes: pids.into_iter().take(MAX_LISTED_PROCESSES).filter_map(super::ps::process_info).collect() }
        }
        Err(e) => error(format!("container {id}: {e}")),
    }
}

/// Handles `Freeze`.
pub fn freeze(id: &str, frozen: bool) -> Response {
    let path = match container_cgroup(id) {
        Ok(p) => p,
        Err(message) => return error(message),
    };
    match cgroup::freeze(&path, frozen, FREEZE_TIMEOUT) {
        Ok(()) => Response::Ok,
        Err(e) => error(format!("container {id}: {e}")),
    }
}

/// Handles `UpdateResources`.
pub fn update_resources(id: &str, resources_json: &str) -> Response {
    let path = match container_cgroup(id) {
        Ok(p) => p,
        Err(message) => return error(message),
    };
    if resources_json.len() > spec::MAX_SPEC_SIZE {
        return error(format!("container {id}: resources: {} bytes, more than accepted", resources_json.len()));
    }
    let resources: oci_spec::runtime::LinuxResources = match serde_json::from_str(resources_json) {
        Ok(r) => r,
        Err(e) => return error(format!("container {id}: resources: {e}")),
    };
    match cgroup::update(&path, &resources) {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("container {id}: update: {w}");
            }
            Response::Ok
        }
        Err(e) => error(format!("container {id}: {e}")),
    }
}

/// Handles `Stats`.
pub fn stats(id: &str) -> Response {
    match container_cgroup(id) {
        Ok(path) => Response::Stats(cgroup::stats(&path)),
        Err(message) => error(message),
    }
}

/// Handles `DeleteContainer`: kills what is left of the container, removes its cgroup and
/// forgets it (its entry here, its init's in the process table, its streams), so that its
/// id is free again. An unknown id is not an error.
pub fn delete(agent: &Agent, id: &str) -> Response {
    let (pid, cgroup) = match containers().lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        Some(c) => (c.pid, c.cgroup.as_ref().map(|cg| cg.path.clone())),
        None => return Response::Ok,
    };
    match &cgroup {
        Some(path) => {
            if let Err(e) = cgroup::kill_and_remove(path, DELETE_TIMEOUT) {
                return error(format!("container {id}: {e}"));
            }
        }
        None => {
            if let Ok(Some(pid)) = agent.processes.running_pid(id) {
                // SAFETY: kill(2) of a pid the reaper has not collected yet (the table
                // says it is still running), so it cannot be a recycled pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    // The reaper records the init's exit; until then its entry cannot be forgotten.
    let deadline = std::time::Instant::now() + DELETE_TIMEOUT;
    while !agent.processes.forget(id) {
        if !agent.processes.contains(id) {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return error(format!("container {id}: its init (pid {pid}) did not end within {} s of SIGKILL", DELETE_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    containers().lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    agent.streams.discard(id);
    tracing::debug!(id, "container deleted");
    Response::Ok
}

/// Handles `StartContainer`.
pub fn start(_agent: &Agent, id: &str) -> Response {
    let mut all = containers().lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = all.get_mut(id) else { return error(format!("container {id}: no such container")) };
    match c.start() {
        Ok(()) => Response::Started { pid: c.pid as u32 },
        Err(e) => error(format!("container {id}: {e}")),
    }
}
