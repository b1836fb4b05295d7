//! The control port: Hello first, then one response per request, in order.

use palisade_protocol::{
    read_frame, write_frame, ProcessSpec, ProtocolError, Request, Response, RootfsSource, RootfsSpec, StreamKind, TtySize, PROTOCOL_VERSION,
};

use super::Agent;
use crate::conn::Conn;
use crate::process::spawn::{spawn, SpawnRequest};
use crate::process::stdio::{self, ChildStdio, Streams};
use crate::process::table::Spawned;
use crate::rootfs;

/// Longest process id accepted.
const MAX_ID_LEN: usize = 128;

fn error(message: impl Into<String>) -> Response {
    Response::Error { message: message.into() }
}

/// Handles one control connection until the host closes it or sends a bad frame.
pub fn handle(agent: &Agent, mut conn: Conn) {
    let mut greeted = false;
    loop {
        let request: Request = match read_frame(&mut conn) {
            Ok(r) => r,
            Err(ProtocolError::Closed) => return,
            Err(e) => {
                tracing::error!("control connection: {e}; closing it");
                let _ = write_frame(&mut conn, &error(e.to_string()));
                return;
            }
        };
        let shutdown = matches!(request, Request::Shutdown);
        let response = if !greeted {
            match request {
                Request::Hello { version } if version == PROTOCOL_VERSION => {
                    greeted = true;
                    hello()
                }
                Request::Hello { version } => {
                    error(format!("protocol version mismatch: agent speaks {PROTOCOL_VERSION}, host sent {version}"))
                }
                _ => error("the first request on a control connection must be hello"),
            }
        } else {
            handle_request(agent, request)
        };
        let failed_hello = !greeted;
        if let Err(e) = write_frame(&mut conn, &response) {
            tracing::warn!("control connection: writing a response: {e}");
            return;
        }
        if failed_hello {
            return;
        }
        if shutdown {
            (agent.config.on_shutdown)();
        }
    }
}

fn hello() -> Response {
    Response::Hello { version: PROTOCOL_VERSION, agent_version: env!("CARGO_PKG_VERSION").to_string() }
}

/// Answers one request (after Hello). Blocks for `Wait`.
pub fn handle_request(agent: &Agent, request: Request) -> Response {
    let what = request.name();
    tracing::debug!(request = what, "request");
    let response = answer_request(agent, request);
    match &response {
        Response::Error { message } => tracing::debug!(request = what, %message, "refused"),
        _ => tracing::debug!(request = what, "answered"),
    }
    response
}

fn answer_request(agent: &Agent, request: Request) -> Response {
    match request {
        Request::Hello { version } if version == PROTOCOL_VERSION => hello(),
        Request::Hello { version } => error(format!("protocol version mismatch: agent speaks {PROTOCOL_VERSION}, host sent {version}")),
        Request::Ping | Request::Shutdown => Response::Ok,
        Request::MountShare { tag } => mount_share(agent, &tag),
        Request::MountRootfs(spec) => mount_rootfs(agent, &spec),
        Request::UnmountRootfs { id } => unmount_rootfs(agent, &id),
        Request::StartProcess(spec) => {
            let id = spec.id.clone();
            let response = start_process(agent, spec);
            if matches!(response, Response::Error { .. }) && !agent.processes.contains(&id) {
                // Close the streams of a process that did not start: the host sees EOF.
                agent.streams.discard(&id);
            }
            response
        }
        Request::Signal { id, signal, all } => send_signal(agent, &id, signal, all),
        Request::ResizeTty { id, rows, cols } => resize_tty(agent, &id, TtySize { rows, cols }),
        Request::CreateContainer(spec) => crate::container::agent::create(agent, spec),
        Request::StartContainer { id } => crate::container::agent::start(agent, &id),
        Request::ExecProcess(spec) => crate::container::agent::exec(agent, spec),
        Request::ListProcesses { id } => crate::container::agent::list_processes(&id),
        Request::Freeze { id, frozen } => crate::container::agent::freeze(&id, frozen),
        Request::UpdateResources { id, resources_json } => crate::container::agent::update_resources(&id, &resources_json),
        Request::Stats { id } => crate::container::agent::stats(&id),
        Request::DeleteContainer { id } => crate::container::agent::delete(agent, &id),
        Request::ConfigureNetwork(spec) => crate::system::net::configure(&spec).map_or_else(|e| error(e.to_string()), |()| Response::Ok),
        Request::Wait { id } => match agent.processes.wait(&id) {
            Ok(status) => Response::Exited(status),
            Err(e) => error(e.to_string()),
        },
    }
}

fn mount_share(agent: &Agent, tag: &str) -> Response {
    let plan = match rootfs::share_plan(tag, &agent.config.shares_base) {
        Ok(p) => p,
        Err(e) => return error(e.to_string()),
    };
    let mut shares = agent.shares.lock().unwrap_or_else(|e| e.into_inner());
    if shares.contains(tag) {
        return error(format!("share {tag}: already mounted"));
    }
    if agent.config.mount_rootfs {
        if let Err(e) = rootfs::apply(&plan) {
            tracing::error!("share {tag}: {e}");
            return error(format!("share {tag}: {e}"));
        }
        // Best effort: the share works with the kernel's read-ahead, only slower.
        if let Err(e) = rootfs::set_readahead(&plan.root, rootfs::SHARE_READAHEAD_KIB) {
            tracing::warn!("share {tag}: setting its read-ahead: {e}");
        }
    }
    shares.insert(tag.to_string());
    Response::Ok
}

fn mount_rootfs(agent: &Agent, spec: &RootfsSpec) -> Response {
    let plan = match rootfs::plan(spec, &agent.config.rootfs_base, &agent.config.shares_base) {
        Ok(p) => p,
        Err(e) => return error(e.to_string()),
    };
    if let RootfsSource::Share { tag, .. } = &spec.source {
        if !agent.shares.lock().unwrap_or_else(|e| e.into_inner()).contains(tag) {
            return error(format!("rootfs {}: share {tag} is not mounted", spec.id));
        }
    }
    let mut mounted = agent.rootfs.lock().unwrap_or_else(|e| e.into_inner());
    if mounted.contains_key(&spec.id) {
        return error(rootfs::RootfsError::AlreadyMounted(spec.id.clone()).to_string());
    }
    if agent.config.mount_rootfs {
        if let Err(e) = rootfs::apply(&plan) {
            tracing::error!("rootfs {}: {e}", spec.id);
            return error(format!("rootfs {}: {e}", spec.id));
        }
        mounted.insert(spec.id.clone(), Some(plan.root));
    } else {
        mounted.insert(spec.id.clone(), None);
    }
    Response::Ok
}

fn unmount_rootfs(agent: &Agent, id: &str) -> Response {
    let mut mounted = agent.rootfs.lock().unwrap_or_else(|e| e.into_inner());
    if !mounted.contains_key(id) {
        return error(rootfs::RootfsError::Unknown(id.to_string()).to_string());
    }
    if agent.config.mount_rootfs {
        if let Err(e) = rootfs::unmount(&agent.config.rootfs_base, id) {
            tracing::error!("rootfs {id}: {e}");
            return error(format!("rootfs {id}: {e}"));
        }
    }
    mounted.remove(id);
    Response::Ok
}

fn start_process(agent: &Agent, spec: ProcessSpec) -> Response {
    let id = spec.id.as_str();
    if id.is_empty() || id.len() > MAX_ID_LEN || id.contains('\0') {
        return error(format!("process id {id:?} is invalid (1-{MAX_ID_LEN} bytes)"));
    }
    if spec.args.is_empty() {
        return error(format!("process {id}: args is empty"));
    }
    if agent.processes.contains(id) {
        return error(format!("process {id}: a process with this id was already started"));
    }
    let root = match &spec.rootfs {
        None => None,
        Some(r) => match agent.rootfs.lock().unwrap_or_else(|e| e.into_inner()).get(r) {
            Some(root) => root.clone(),
            None => return error(format!("process {id}: rootfs {r}: not mounted")),
        },
    };
    let kinds: Vec<StreamKind> = if spec.terminal {
        vec![StreamKind::Tty]
    } else if spec.stdin {
        vec![StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr]
    } else {
        vec![StreamKind::Stdout, StreamKind::Stderr]
    };
    let conns = match agent.streams.take_all(id, &kinds) {
        Ok(c) => c,
        Err(missing) => return error(format!("process {id}: the {missing:?} stream is not attached")),
    };
    // Streams of kinds this spec does not use (e.g. stdin without `stdin`) are closed.
    agent.streams.discard(id);
    let mut conns = conns.into_iter();
    let streams = match (spec.terminal, spec.stdin) {
        (true, _) => conns.next().map(Streams::Tty),
        (false, true) => match (conns.next(), conns.next(), conns.next()) {
            (Some(i), Some(o), Some(e)) => Some(Streams::Pipes { stdin: Some(i), stdout: o, stderr: e }),
            _ => None,
        },
        (false, false) => match (conns.next(), conns.next()) {
            (Some(o), Some(e)) => Some(Streams::Pipes { stdin: None, stdout: o, stderr: e }),
            _ => None,
        },
    };
    let Some(streams) = streams else {
        return error(format!("process {id}: internal error collecting streams"));
    };
    let child_stdio = match if spec.terminal { ChildStdio::pty(spec.tty_size) } else { ChildStdio::pipes(spec.stdin) } {
        Ok(s) => s,
        Err(e) => return error(format!("process {id}: {e}")),
    };
    let pty_master = match child_stdio.pty_master() {
        Ok(m) => m,
        Err(e) => return error(format!("process {id}: pty: {e}")),
    };
    let request = SpawnRequest {
        args: &spec.args,
        env: &spec.env,
        cwd: &spec.cwd,
        root: root.as_deref(),
        uid: spec.uid,
        gid: spec.gid,
        groups: &spec.additional_gids,
        stdio: child_stdio.child_fds(),
        controlling_tty: spec.terminal,
    };
    let result =
        agent.processes.spawn_registered(id, || spawn(&request).map(|pid| Spawned { pid, pty_master: pty_master.clone(), cgroup: None }));
    match result {
        Ok(Ok(pid)) => {
            child_stdio.start_relays(id, streams);
            tracing::debug!(id, pid, "process started");
            Response::Started { pid: pid as u32 }
        }
        Ok(Err(e)) => error(e.to_string()),
        Err(e) => error(e.to_string()),
    }
}

fn send_signal(agent: &Agent, id: &str, signal: i32, all: bool) -> Response {
    if !(1..=64).contains(&signal) {
        return error(format!("signal {signal} is not a valid signal number"));
    }
    if all {
        return signal_cgroup(agent, id, signal);
    }
    match agent.processes.running_pid(id) {
        Err(e) => error(e.to_string()),
        Ok(None) => Response::Ok, // already exited: nothing to signal
        Ok(Some(pid)) => {
            // SAFETY: kill(2) with a pid the reaper has not collected yet (the table
            // says it is still running), so it cannot be a recycled pid.
            if unsafe { libc::kill(pid, signal) } < 0 {
                error(format!("process {id}: signal {signal}: {}", std::io::Error::last_os_error()))
            } else {
                Response::Ok
            }
        }
    }
}

/// Signals every process of container `id`'s cgroup (`kill --all`). The init first, so a
/// SIGKILL of a pid namespace's init takes the rest with it even if the list is stale.
fn signal_cgroup(agent: &Agent, id: &str, signal: i32) -> Response {
    let (pid, cgroup) = match (agent.processes.running_pid(id), agent.processes.running_cgroup(id)) {
        (Err(e), _) | (_, Err(e)) => return error(e.to_string()),
        (Ok(None), _) => return Response::Ok, // exited
        (Ok(Some(pid)), Ok(cgroup)) => (pid, cgroup),
    };
    let Some(cgroup) = cgroup else { return error(format!("process {id}: not a container (--all needs its cgroup)")) };
    // SAFETY: kill(2) of a pid the reaper has not collected (see send_signal).
    unsafe { libc::kill(pid, signal) };
    let procs = match std::fs::read_to_string(cgroup.join("cgroup.procs")) {
        Ok(p) => p,
        Err(e) => return error(format!("container {id}: {}: {e}", cgroup.join("cgroup.procs").display())),
    };
    for other in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|&p| p != pid && p > 1) {
        // SAFETY: kill(2) of a pid listed in the container's cgroup a moment ago; a pid
        // that exited since and was reused would have to be in this cgroup again to be
        // listed, and only the container's processes are.
        unsafe { libc::kill(other, signal) };
    }
    Response::Ok
}

fn resize_tty(agent: &Agent, id: &str, size: TtySize) -> Response {
    match agent.processes.pty_master(id) {
        Err(e) => error(e.to_string()),
        Ok(Some(master)) => match stdio::resize(&master, size) {
            Ok(()) => Response::Ok,
            Err(e) => error(format!("process {id}: window size: {e}")),
        },
        Ok(None) => match agent.processes.running_pid(id) {
            Ok(None) => Response::Ok, // exited
            _ => error(format!("process {id}: not running on a terminal")),
        },
    }
}
