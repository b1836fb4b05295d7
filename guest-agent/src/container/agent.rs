//! The agent's container requests ([`create`] for `CreateContainer`, [`start`] for
//! `StartContainer`): the protocol glue between the control port and [`super::create`].
//! A container's init is registered in the agent's process table under the container
//! id, so `Wait`, `Signal` and `ResizeTty` work on containers as on processes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use palisade_protocol::{ContainerSpec, Response, StreamKind};

use super::{cgroup, spec, Container, CreateOptions};
use crate::process::stdio::{ChildStdio, Streams};
use crate::process::table::Spawned;
use crate::server::Agent;

/// Longest container id accepted.
const MAX_ID_LEN: usize = 128;
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
    let kinds: Vec<StreamKind> = match (terminal, req.stdin) {
        (true, _) => vec![StreamKind::Tty],
        (false, true) => vec![StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr],
        (false, false) => vec![StreamKind::Stdout, StreamKind::Stderr],
    };
    let conns = match agent.streams.take_all(id, &kinds) {
        Ok(c) => c,
        Err(missing) => return error(format!("container {id}: the {missing:?} stream is not attached")),
    };
    agent.streams.discard(id);
    let mut conns = conns.into_iter();
    let streams = match (terminal, req.stdin) {
        (true, _) => conns.next().map(Streams::Tty),
        (false, stdin) => {
            let stdin_conn = if stdin { conns.next() } else { None };
            match (conns.next(), conns.next()) {
                (Some(o), Some(e)) => Some(Streams::Pipes { stdin: stdin_conn, stdout: o, stderr: e }),
                _ => None,
            }
        }
    };
    let Some(streams) = streams else { return error(format!("container {id}: internal error collecting streams")) };
    let stdio = match if terminal { ChildStdio::pty(req.tty_size) } else { ChildStdio::pipes(req.stdin) } {
        Ok(s) => s,
        Err(e) => return error(format!("container {id}: {e}")),
    };
    let pty_master = match stdio.pty_master() {
        Ok(m) => m,
        Err(e) => return error(format!("container {id}: pty: {e}")),
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

/// Handles `StartContainer`.
pub fn start(_agent: &Agent, id: &str) -> Response {
    let mut all = containers().lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = all.get_mut(id) else { return error(format!("container {id}: no such container")) };
    match c.start() {
        Ok(()) => Response::Started { pid: c.pid as u32 },
        Err(e) => error(format!("container {id}: {e}")),
    }
}
