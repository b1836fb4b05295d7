//! One command's life in a booted VM, from the host: wait for the agent, mount the
//! rootfs, attach the streams, create and start the container (or start a plain
//! process), relay stdio and signals, collect the exit status, shut the VM down.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_protocol::{ContainerSpec, ExitStatus, ProcessSpec, Request, Response, RootfsSpec, StreamKind};

use super::connect::{attach_stream, ConnectError, ControlClient};
use super::signals::FORWARDED;
use super::vmm::Vm;

/// How often the boot loop retries connecting to the agent: every 20 ms at first, then a
/// tenth of the time the boot has taken so far, at most every 500 ms ([`retry_pause`]).
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
const MAX_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How long the VMM may take to answer one `CONNECT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the exit status, how long output may stay silent before vmrun stops waiting
/// for its end (a background process may hold the streams open forever).
const OUTPUT_IDLE_AFTER_EXIT: Duration = Duration::from_secs(3);
/// How long the VMM gets to exit after `Shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// While the command runs, how often vmrun checks that the guest agent still answers (a
/// `Ping` on a connection of its own, with the request deadline): a guest that has
/// stopped (a wedged vCPU, an emulator fault) must not leave vmrun waiting for ever.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);

/// What to run on the mounted rootfs.
#[derive(Debug, Clone)]
pub enum Launch {
    /// An OCI container: `CreateContainer`, then `StartContainer`. `terminal` is the
    /// spec's `process.terminal`.
    Container { spec: ContainerSpec, terminal: bool },
    /// A plain process chrooted into the rootfs (`StartProcess`).
    Process(ProcessSpec),
}

impl Launch {
    /// The id its streams, `Wait` and `Signal` use.
    pub fn id(&self) -> &str {
        match self {
            Launch::Container { spec, .. } => &spec.id,
            Launch::Process(p) => &p.id,
        }
    }

    pub fn terminal(&self) -> bool {
        match self {
            Launch::Container { terminal, .. } => *terminal,
            Launch::Process(p) => p.terminal,
        }
    }

    /// Whether an stdin stream is attached (without a terminal).
    pub fn stdin(&self) -> bool {
        match self {
            Launch::Container { spec, .. } => spec.stdin,
            Launch::Process(p) => p.stdin,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The virtio-fs share to mount first (the rootfs or the container's volumes use it).
    pub share: Option<String>,
    /// The root filesystem to mount (`None`: it already is, e.g. in a running sandbox).
    pub rootfs: Option<RootfsSpec>,
    /// After the command: shut the VM down (vmrun), or leave it running (a command run in
    /// a sandbox that lives on).
    pub shutdown: bool,
    pub launch: Launch,
    pub boot_timeout: Duration,
    /// The deadline of each agent request but `Wait`, and of the liveness pings.
    pub request_timeout: Duration,
    /// Warnings of `CreateContainer` that start with one of these are expected and
    /// only logged; the others are shown on stderr as `vmrun: warning from the guest: …`.
    pub quiet_warnings: Vec<String>,
    /// The guest's network interfaces (`ConfigureNetwork`), set up before the rootfs.
    pub network: Option<palisade_protocol::NetworkSpec>,
    /// Run once the agent answered (the VM's devices exist then), before the guest's
    /// network is configured: the host's side of the VM's network.
    pub host_setup: Option<HostSetup>,
}

/// Work on the host once the VM runs; its error is [`SessionError::HostSetup`].
#[derive(Clone)]
pub struct HostSetup(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for HostSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostSetup")
    }
}

/// The host side of the command's stdio.
pub struct HostIo {
    /// Relayed to the command (stdin or terminal input) when present.
    pub stdin: Option<Box<dyn Read + Send>>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("interrupted by signal {0} while the VM was starting")]
    Interrupted(i32),
    #[error("the VM failed to boot: {0}")]
    BootFailed(String),
    #[error("the guest agent did not answer within {secs} s (PALISADE_BOOT_TIMEOUT_SECS): {last}")]
    BootTimeout { secs: u64, last: String },
    #[error("the VM ended before the command finished: {0}")]
    VmEnded(String),
    #[error("the guest stopped answering ({detail}); the VM was stopped{}", console_tail(.last_console))]
    GuestSilent { detail: String, last_console: Option<String> },
    #[error("the guest rebooted while the command was running, which ends the VM ({0})")]
    GuestRebooted(String),
    #[error("{0}")]
    CommandNotFound(String),
    #[error("{0}")]
    NotExecutable(String),
    #[error("starting the command: {0}")]
    StartFailed(String),
    #[error("{0}")]
    Agent(#[from] ConnectError),
    #[error("{0}")]
    HostSetup(String),
}

impl SessionError {
    /// vmrun's exit code for this failure (Docker's conventions).
    pub fn exit_code(&self) -> i32 {
        match self {
            SessionError::Interrupted(sig) => 128 + sig,
            SessionError::CommandNotFound(_) => 127,
            SessionError::NotExecutable(_) => 126,
            _ => 125,
        }
    }
}

/// Classifies the agent's answer to a failed `StartProcess`, `CreateContainer` or
/// `StartContainer` (without the agent's `container ID: ` prefix).
pub fn start_error(message: String) -> SessionError {
    if message.ends_with(": command not found") {
        SessionError::CommandNotFound(message)
    } else if message.ends_with(": permission denied") || message.contains(": exec failed: ") {
        SessionError::NotExecutable(message)
    } else {
        SessionError::StartFailed(message)
    }
}

fn console_tail(line: &Option<String>) -> String {
    line.as_deref().map(|l| format!(" (last console line: {l})")).unwrap_or_default()
}

enum Event {
    Exited(Result<ExitStatus, ConnectError>),
    OutputDone,
    /// The liveness check got no answer from the agent.
    GuestSilent(String),
}

/// How the VM's end while the command ran is reported: a clean end is the guest resetting
/// the VM — a reboot, or a kernel panic with `panic=-1`, which the reason's console note may
/// show — since vmrun had not asked for a shutdown yet. What the VMM saw decides, not the
/// console.
fn ended_early(end: super::vmm::VmEnd) -> SessionError {
    if end.clean {
        SessionError::GuestRebooted(end.reason)
    } else {
        SessionError::VmEnded(end.reason)
    }
}

/// Runs the session; returns the command's exit status. A connection to the agent that
/// fails because the VM has ended is reported as the VM's end, which says why.
pub fn run_session(
    socket: &Path,
    vm: &mut dyn Vm,
    spec: &SessionSpec,
    io: HostIo,
    signals: &Receiver<i32>,
) -> Result<ExitStatus, SessionError> {
    match session(socket, vm, spec, io, signals) {
        Err(SessionError::Agent(e)) => {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Some(end) = vm.poll_end() {
                    return Err(ended_early(end));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The agent had answered, the VM still runs, and now it takes no connection or
            // answers no request: the guest has stopped answering.
            match e {
                ConnectError::NotYet { .. } | ConnectError::NoAnswer { .. } => {
                    Err(SessionError::GuestSilent { detail: e.to_string(), last_console: vm.last_console_line() })
                }
                e => Err(SessionError::Agent(e)),
            }
        }
        other => other,
    }
}

fn session(socket: &Path, vm: &mut dyn Vm, spec: &SessionSpec, io: HostIo, signals: &Receiver<i32>) -> Result<ExitStatus, SessionError> {
    let id = spec.launch.id().to_string();
    let terminal = spec.launch.terminal();
    let mut control = wait_for_agent(socket, vm, spec, signals)?;
    tracing::info!("the guest agent answered");
    super::timings::mark("agent_ready_ms");
    if let Some(setup) = &spec.host_setup {
        (setup.0)().map_err(SessionError::HostSetup)?;
    }
    if let Some(network) = &spec.network {
        control.call_ok("configuring the network", &Request::ConfigureNetwork(network.clone()))?;
        tracing::debug!("the guest's network is configured");
    }
    if let Some(tag) = &spec.share {
        control.call_ok("mounting the shared directories", &Request::MountShare { tag: tag.clone() })?;
        super::timings::mark("share_mounted_ms");
    }
    if let Some(rootfs) = &spec.rootfs {
        control.call_ok("mounting the rootfs", &Request::MountRootfs(rootfs.clone()))?;
        tracing::debug!("the rootfs is mounted");
        super::timings::mark("rootfs_mounted_ms");
    }
    let mut side = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, spec.request_timeout)?;

    let attach = |kind| attach_stream(socket, &id, kind, HANDSHAKE_TIMEOUT);
    let (input, outputs): (Option<UnixStream>, Vec<UnixStream>) = if terminal {
        let tty = attach(StreamKind::Tty)?;
        (Some(tty.try_clone().map_err(|e| ConnectError::Protocol(e.into()))?), vec![tty])
    } else {
        let stdin = if spec.launch.stdin() { Some(attach(StreamKind::Stdin)?) } else { None };
        (stdin, vec![attach(StreamKind::Stdout)?, attach(StreamKind::Stderr)?])
    };
    tracing::debug!("the streams are attached");

    let mut stderr = io.stderr;
    let prefix = format!("container {id}: ");
    let failed = |message: String| start_error(message.strip_prefix(&prefix).map(str::to_string).unwrap_or(message));
    let start = match &spec.launch {
        Launch::Container { spec: container, .. } => {
            match control.call(&Request::CreateContainer(container.clone()))? {
                Response::Created { pid, warnings } => {
                    tracing::info!(pid, "the container was created");
                    super::timings::mark("container_created_ms");
                    for w in warnings {
                        if spec.quiet_warnings.iter().any(|q| w.starts_with(q.as_str())) {
                            tracing::info!("container warning: {w}");
                        } else {
                            let _ = writeln!(stderr, "vmrun: warning from the guest: {w}");
                        }
                    }
                }
                Response::Error { message } => return Err(failed(message)),
                other => return Err(ConnectError::Unexpected { what: "create container".into(), answer: Box::new(other) }.into()),
            }
            Request::StartContainer { id: id.clone() }
        }
        Launch::Process(p) => Request::StartProcess(p.clone()),
    };
    match control.call(&start)? {
        Response::Started { pid } => {
            tracing::info!(pid, "the command started");
            super::timings::mark("command_started_ms");
        }
        Response::Error { message } => return Err(failed(message)),
        other => return Err(ConnectError::Unexpected { what: "start".into(), answer: Box::new(other) }.into()),
    }

    let (events, event_rx) = channel();
    let progress = Arc::new(AtomicU64::new(0));
    let output_count = outputs.len();
    let mut sinks = vec![io.stdout, stderr].into_iter();
    for stream in outputs {
        if let Some(sink) = sinks.next() {
            relay_output(stream, sink, events.clone(), progress.clone());
        }
    }
    if let (Some(stream), Some(source)) = (input, io.stdin) {
        relay_input(source, stream);
    }
    let wait_events = events.clone();
    let wait_id = id.clone();
    std::thread::Builder::new()
        .name("wait".into())
        .spawn(move || {
            let result = match control.call(&Request::Wait { id: wait_id }) {
                Ok(Response::Exited(status)) => Ok(status),
                Ok(Response::Error { message }) => Err(ConnectError::Refused { what: "wait".into(), message }),
                Ok(other) => Err(ConnectError::Unexpected { what: "wait".into(), answer: Box::new(other) }),
                Err(e) => Err(e),
            };
            let _ = wait_events.send(Event::Exited(result));
        })
        .map_err(|e| ConnectError::Protocol(e.into()))?;
    let liveness_stop = Arc::new(AtomicBool::new(false));
    watch_liveness(socket, spec.request_timeout, events.clone(), liveness_stop.clone());
    drop(events);

    let status = relay_until_done(&id, vm, &mut side, &event_rx, signals, output_count, &progress, terminal);
    liveness_stop.store(true, Ordering::Relaxed);
    let status = status?;
    if !spec.shutdown {
        tracing::info!(?status, "the command exited; the VM runs on");
        return Ok(status);
    }
    tracing::info!(?status, "the command exited; shutting the VM down");
    super::timings::mark("command_exit_ms");
    if let Some(pid) = vm.pid() {
        super::timings::mark_vmm_memory(pid);
    }
    if let Err(e) = side.call(&Request::Shutdown) {
        tracing::debug!("shutdown request: {e} (the VM may already be going down)");
    }
    let end = vm.finish(SHUTDOWN_TIMEOUT);
    if !end.clean {
        tracing::warn!("the VM did not end cleanly after the command: {}", end.reason);
    }
    Ok(status)
}

/// Retries connecting until the agent answers Hello, the VM ends, a signal comes or the
/// boot timeout passes.
fn wait_for_agent(socket: &Path, vm: &mut dyn Vm, spec: &SessionSpec, signals: &Receiver<i32>) -> Result<ControlClient, SessionError> {
    wait_for_boot(socket, vm, spec.boot_timeout, spec.request_timeout, signals)
}

/// Retries connecting until the agent answers Hello (within `timeout`), the VM ends or a
/// signal comes; the client's requests then have `request_timeout` as their deadline.
pub fn wait_for_boot(
    socket: &Path,
    vm: &mut dyn Vm,
    timeout: Duration,
    request_timeout: Duration,
    signals: &Receiver<i32>,
) -> Result<ControlClient, SessionError> {
    let start = Instant::now();
    loop {
        if let Some(end) = vm.poll_end() {
            return Err(SessionError::BootFailed(end.reason));
        }
        while let Ok(sig) = signals.try_recv() {
            if FORWARDED.contains(&sig) {
                return Err(SessionError::Interrupted(sig));
            }
        }
        let left = timeout.saturating_sub(start.elapsed());
        let last = match ControlClient::connect(socket, HANDSHAKE_TIMEOUT.min(left.max(Duration::from_millis(100))), request_timeout) {
            Ok(client) => return Ok(client),
            Err(e @ ConnectError::NotYet { .. }) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        if start.elapsed() >= timeout {
            return Err(SessionError::BootTimeout { secs: timeout.as_secs(), last });
        }
        std::thread::sleep(retry_pause(start.elapsed()));
    }
}

/// The pause before the next attempt to reach a booting agent, `elapsed` into the boot.
///
/// Every attempt costs the guest work: once its vsock driver is up, the VMM hands it the
/// connection request and it answers with a reset until the agent listens. A boot that
/// takes 100 ms (hardware) is tried every 20 ms and found at most 20 ms late; a boot that
/// takes seconds (the emulated test host, or many VMs booting at once) is tried less often,
/// found at most a tenth of its time late, and not slowed further by resets every 20 ms
/// (five VMs booting at once on a test host of one vCPU were all still unanswered after
/// 240 s when each was tried 50 times a second).
fn retry_pause(elapsed: Duration) -> Duration {
    (elapsed / 10).clamp(RETRY_INTERVAL, MAX_RETRY_INTERVAL)
}

#[allow(clippy::too_many_arguments)]
fn relay_until_done(
    id: &str,
    vm: &mut dyn Vm,
    side: &mut ControlClient,
    events: &Receiver<Event>,
    signals: &Receiver<i32>,
    mut outputs_left: usize,
    progress: &AtomicU64,
    terminal: bool,
) -> Result<ExitStatus, SessionError> {
    let mut status = None;
    let mut last_progress = (progress.load(Ordering::Relaxed), Instant::now());
    loop {
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Exited(Ok(s))) => status = Some(s),
            Ok(Event::Exited(Err(e))) => {
                // The wait connection broke: most likely the VM is going down.
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if let Some(end) = vm.poll_end() {
                        return Err(ended_early(end));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Err(e.into());
            }
            Ok(Event::OutputDone) => outputs_left = outputs_left.saturating_sub(1),
            Ok(Event::GuestSilent(detail)) if status.is_none() => {
                // A VM on its way down stops answering too: that end explains more.
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if let Some(end) = vm.poll_end() {
                        return Err(ended_early(end));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Err(SessionError::GuestSilent { detail, last_console: vm.last_console_line() });
            }
            Ok(Event::GuestSilent(_)) => {}
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(sig) = signals.try_recv() {
            forward_signal(id, side, sig, terminal);
        }
        match status {
            Some(s) => {
                if outputs_left == 0 {
                    return Ok(s);
                }
                let now = progress.load(Ordering::Relaxed);
                if now != last_progress.0 {
                    last_progress = (now, Instant::now());
                } else if last_progress.1.elapsed() > OUTPUT_IDLE_AFTER_EXIT {
                    tracing::info!("output still open {OUTPUT_IDLE_AFTER_EXIT:?} after the exit; not waiting for it");
                    return Ok(s);
                }
            }
            None => {
                if let Some(end) = vm.poll_end() {
                    return Err(ended_early(end));
                }
            }
        }
    }
}

/// Pings the agent every [`LIVENESS_INTERVAL`] on a control connection of its own until
/// `stop`; reports the first unanswered ping (or a connection that cannot be made) as
/// [`Event::GuestSilent`].
fn watch_liveness(socket: &Path, timeout: Duration, events: Sender<Event>, stop: Arc<AtomicBool>) {
    let socket = socket.to_path_buf();
    let spawned = std::thread::Builder::new().name("liveness".into()).spawn(move || {
        let silent = |detail: String| {
            if !stop.load(Ordering::Relaxed) {
                let _ = events.send(Event::GuestSilent(detail));
            }
        };
        let mut client = match ControlClient::connect_ready(&socket, HANDSHAKE_TIMEOUT, timeout) {
            Ok(client) => client,
            Err(e) => return silent(format!("no liveness connection: {e}")),
        };
        loop {
            let wake = Instant::now() + LIVENESS_INTERVAL;
            while Instant::now() < wake {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            match client.call(&Request::Ping) {
                Ok(Response::Ok) => {}
                Ok(other) => return silent(format!("ping answered with {other:?}")),
                Err(e) => return silent(e.to_string()),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("starting the liveness thread: {e}; a guest that stops answering will not be noticed");
    }
}

fn forward_signal(id: &str, side: &mut ControlClient, sig: i32, terminal: bool) {
    let request = if sig == libc::SIGWINCH {
        if !terminal {
            return;
        }
        match super::terminal::window_size(0).or_else(|| super::terminal::window_size(1)) {
            Some(size) => Request::ResizeTty { id: id.into(), rows: size.rows, cols: size.cols },
            None => return,
        }
    } else {
        Request::Signal { id: id.into(), signal: sig, all: false }
    };
    if let Err(e) = side.call_ok("a signal or window size", &request) {
        tracing::warn!("forwarding signal {sig}: {e}");
    }
}

fn relay_output(stream: UnixStream, sink: Box<dyn Write + Send>, events: Sender<Event>, progress: Arc<AtomicU64>) {
    copy_output(stream, sink, progress, move || {
        let _ = events.send(Event::OutputDone);
    });
}

/// Copies one output stream of a guest process to `sink` on a thread of its own, counting
/// the bytes in `progress`, and calls `done` at its end (or when `sink` is gone).
pub(crate) fn copy_output(
    mut stream: UnixStream,
    mut sink: Box<dyn Write + Send>,
    progress: Arc<AtomicU64>,
    done: impl FnOnce() + Send + 'static,
) {
    let spawned = std::thread::Builder::new().name("output".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("reading command output: {e}");
                    break;
                }
            };
            progress.fetch_add(n as u64, Ordering::Relaxed);
            if sink.write_all(&buf[..n]).and_then(|_| sink.flush()).is_err() {
                break; // our stdout is gone (e.g. a closed pipe): drop the rest
            }
        }
        done();
    });
    if let Err(e) = spawned {
        tracing::error!("starting an output relay thread: {e}");
    }
}

/// Copies `source` into a guest process's input stream on a thread of its own, and
/// half-closes the stream at the end of `source`.
pub(crate) fn relay_input(mut source: Box<dyn Read + Send>, mut stream: UnixStream) {
    let spawned = std::thread::Builder::new().name("input".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if stream.write_all(&buf[..n]).is_err() {
                return;
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
    });
    if let Err(e) = spawned {
        tracing::error!("starting the input relay thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_booting_agent_is_tried_often_at_first_and_less_often_as_the_boot_drags_on() {
        let ms = Duration::from_millis;
        assert_eq!(retry_pause(ms(0)), ms(20));
        assert_eq!(retry_pause(ms(150)), ms(20));
        assert_eq!(retry_pause(ms(1000)), ms(100));
        assert_eq!(retry_pause(ms(4000)), ms(400));
        assert_eq!(retry_pause(Duration::from_secs(60)), ms(500));
    }

    #[test]
    fn start_errors_map_to_docker_exit_codes() {
        assert_eq!(start_error("nope: command not found".into()).exit_code(), 127);
        assert_eq!(start_error("/etc: permission denied".into()).exit_code(), 126);
        assert_eq!(start_error("/x: exec failed: Exec format error (os error 8)".into()).exit_code(), 126);
        assert_eq!(start_error("working directory /nope: No such file".into()).exit_code(), 125);
        assert_eq!(SessionError::Interrupted(libc::SIGINT).exit_code(), 130);
        assert_eq!(SessionError::VmEnded("panic".into()).exit_code(), 125);
        use super::super::vmm::VmEnd;
        let reset = ended_early(VmEnd { clean: true, reason: "the VM reset (last console line: sysrq: Resetting)".into() });
        assert!(matches!(reset, SessionError::GuestRebooted(_)) && reset.to_string().contains("rebooted"), "{reset}");
        assert_eq!(reset.exit_code(), 125);
        let crash = ended_early(VmEnd { clean: false, reason: "vCPU 0: triple fault".into() });
        assert!(matches!(crash, SessionError::VmEnded(_)));
    }
}
