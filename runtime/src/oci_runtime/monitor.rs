//! A monitor: the host process whose PID `create` (or `exec`) writes to `--pid-file`, which
//! containerd's shim and conmon wait on. It holds the caller's stdio (inherited pipes) and
//! relays it over the agent's stream port, creates the container (or starts the exec'd
//! process) in the guest, reports the result to the command that started it, then lives
//! exactly as long as the guest process and ends with its status: the same exit code, or
//! killed by the same signal. Its own log goes to a file (`monitor.log`, or the exec's
//! log); its stdio is the guest process's.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_protocol::{ContainerSpec, ExecSpec, ExitStatus, Request, Response, StreamKind};
use serde::{Deserialize, Serialize};

use super::console::{send_master, HostPty};
use super::host_cgroup::HostCgroup;
use super::stdio_slot::StdioSlot;
use super::store::{read_json, write_json_atomic, ContainerDir};
use super::RuntimeError;
use crate::sandbox::ProcessRef;
use crate::vmrun::connect::{attach_stream, request_timeout, ConnectError, ControlClient};
use crate::vmrun::session::{copy_output, relay_input};
use crate::vmrun::terminal::window_size;

/// The guest process's streams, as attached.
enum Streams {
    Tty(std::os::unix::net::UnixStream),
    Pipes { stdin: std::os::unix::net::UnixStream, stdout: std::os::unix::net::UnixStream, stderr: std::os::unix::net::UnixStream },
}

/// The descriptor of the pipe on which the monitor reports to `create`.
pub const REPORT_FD: i32 = 3;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the exit status, how long output may stay silent before the monitor stops waiting
/// for its end (a daemonised child may hold the streams open for ever).
const OUTPUT_IDLE_AFTER_EXIT: Duration = Duration::from_secs(3);

/// What a monitor starts in the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launch {
    /// The container itself (`create`).
    Container(ContainerSpec),
    /// A process exec'd into it (`exec`).
    Exec(ExecSpec),
}

impl Launch {
    /// The guest process's id (streams, `Wait` and `Signal` use it).
    pub fn id(&self) -> &str {
        match self {
            Launch::Container(c) => &c.id,
            Launch::Exec(e) => &e.id,
        }
    }
}

/// What `create` or `exec` asks its monitor to do (`monitor.json`, or the exec's file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorRequest {
    /// The sandbox's vsock socket.
    pub socket: PathBuf,
    pub launch: Launch,
    /// The process runs on a terminal whose master goes to this socket
    /// ([`super::console`]); otherwise its stdio is the monitor's.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
    /// The container's cgroup on the host: the monitor joins it and makes it count the
    /// guest's OOM kills ([`super::host_cgroup`]).
    #[serde(default)]
    pub host_cgroup: Option<HostCgroup>,
}

/// What the monitor tells `create` or `exec`, one JSON line on [`REPORT_FD`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorReport {
    /// The guest process exists: a container's init at its exec barrier, or an exec'd
    /// program running. `pid` is the guest's.
    Ready {
        pid: u32,
        warnings: Vec<String>,
    },
    Failed {
        message: String,
    },
}

/// Where a monitor's request is, and where it writes how its process ended.
pub struct MonitorFiles {
    pub request: PathBuf,
    /// `exit.json` of a container; `None` for an exec'd process, whose files the monitor
    /// removes when it ends.
    pub exit: Option<PathBuf>,
    pub log: PathBuf,
}

impl MonitorFiles {
    pub fn of(dir: &ContainerDir, exec: Option<&str>) -> MonitorFiles {
        match exec {
            None => MonitorFiles { request: dir.monitor_request(), exit: Some(dir.exit_file()), log: dir.monitor_log() },
            Some(e) => MonitorFiles { request: dir.exec_request(e), exit: None, log: dir.exec_log(e) },
        }
    }
}

/// Starts a monitor (`palisade --root ROOT monitor ID [--exec EXEC]`), detached in a
/// session of its own, and reads its report. Its stdio is this command's, which the guest
/// process's stdio is; with a `terminal` the process has the terminal instead, and the
/// monitor gets /dev/null, as runc's process does not hold the caller's stdio then
/// (containerd's shim reads `create`'s output to its end: a monitor holding it would hang
/// the shim).
pub fn spawn(
    exe: &Path,
    root: &Path,
    dir: &ContainerDir,
    exec: Option<&str>,
    terminal: bool,
) -> Result<(ProcessRef, MonitorReport), RuntimeError> {
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Other(format!("pipe: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(root).arg("monitor").arg(dir.id());
    if let Some(e) = exec {
        cmd.arg("--exec").arg(e);
    }
    if terminal {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    }
    let w = report_w.as_raw_fd();
    // SAFETY: dup2, setsid and sigprocmask are async-signal-safe and act on the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w, REPORT_FD) < 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::vmrun::signals::unblock_all_in_child()
        });
    }
    let child = cmd.spawn().map_err(|e| RuntimeError::Other(format!("starting the monitor {}: {e}", exe.display())))?;
    drop(report_w);
    drop(cmd);
    let monitor = ProcessRef::of(child.id()).ok_or_else(|| RuntimeError::Other("the monitor exited at once".into()))?;
    let mut line = String::new();
    let read = BufReader::new(std::fs::File::from(report_r)).take(1 << 20).read_line(&mut line);
    // The monitor is not waited for: it lives on, and our caller (a subreaper) reaps it.
    std::mem::forget(child);
    match read {
        Ok(n) if n > 0 => {}
        _ => {
            let log = std::fs::read_to_string(MonitorFiles::of(dir, exec).log).unwrap_or_default();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no log");
            return Err(RuntimeError::Other(format!("the monitor of {} ended without a report ({last})", dir.id())));
        }
    }
    let report = serde_json::from_str(line.trim()).map_err(|e| RuntimeError::Other(format!("the monitor's report: {e}")))?;
    Ok((monitor, report))
}

/// Runs a monitor; never returns.
pub fn run(files: &MonitorFiles, signals: &Receiver<i32>) -> ! {
    // SAFETY: `create` or `exec` started us with the report pipe's write end as fd 3, and
    // nothing else in this process owns that descriptor.
    let mut report = unsafe { File::from(OwnedFd::from_raw_fd(REPORT_FD)) };
    let (status, lost) = match monitor(files, &mut report, signals) {
        Ok(ended) => ended,
        Err(message) => {
            tracing::error!("{message}");
            let _ = writeln!(report, "{}", serde_json::to_string(&MonitorReport::Failed { message }).unwrap_or_default());
            std::process::exit(1);
        }
    };
    match &files.exit {
        Some(exit) => {
            if let Err(e) = write_json_atomic(exit, &status) {
                tracing::error!("writing {}: {e}", exit.display());
            }
        }
        None => {
            let _ = std::fs::remove_file(&files.request);
            // A status made up here (the wait failed) keeps the log that says why.
            if !lost {
                let _ = std::fs::remove_file(&files.log);
            }
        }
    }
    tracing::info!(?status, "the guest process ended");
    end_like(&status)
}

/// The guest process's status, and whether it was lost (the wait failed: SIGKILL is assumed).
fn monitor(files: &MonitorFiles, report: &mut File, signals: &Receiver<i32>) -> Result<(ExitStatus, bool), String> {
    let request: MonitorRequest = read_json(&files.request).map_err(|e| format!("reading {}: {e:?}", files.request.display()))?;
    // In the container's host cgroup before its PID reaches the caller, who looks there.
    let oom = request.host_cgroup.clone().filter(|cg| match cg.join(std::process::id()) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("{e}: the guest's OOM kills will not be counted on the host");
            false
        }
    });
    let id = request.launch.id().to_string();
    let socket = request.socket.as_path();
    let mut launch = request.launch.clone();
    // A terminal: made here, its master sent to the caller before anything starts.
    let pty = match &request.console_socket {
        Some(console) => {
            let pty = HostPty::open().map_err(|e| format!("the terminal: {e}"))?;
            if let Err(e) = pty.control() {
                tracing::warn!("window-size changes will not reach the container: {e}");
            }
            send_master(console, &pty.name, &pty.master).map_err(|e| e.to_string())?;
            let size = window_size(pty.slave.as_raw_fd());
            match &mut launch {
                Launch::Container(c) => c.tty_size = size,
                Launch::Exec(e) => e.tty_size = size,
            }
            Some(pty.slave)
        }
        None => None,
    };
    let attach = |kind| attach_stream(socket, &id, kind, HANDSHAKE_TIMEOUT).map_err(|e| e.to_string());
    let streams = match pty {
        Some(_) => Streams::Tty(attach(StreamKind::Tty)?),
        None => {
            Streams::Pipes { stdin: attach(StreamKind::Stdin)?, stdout: attach(StreamKind::Stdout)?, stderr: attach(StreamKind::Stderr)? }
        }
    };
    let mut control = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, request_timeout()).map_err(|e| e.to_string())?;
    let call = match &launch {
        Launch::Container(c) => Request::CreateContainer(c.clone()),
        Launch::Exec(e) => Request::ExecProcess(e.clone()),
    };
    let (pid, warnings) = match control.call(&call).map_err(|e| e.to_string())? {
        Response::Created { pid, warnings } => (pid, warnings),
        Response::Started { pid } => (pid, Vec::new()),
        Response::Error { message } => {
            let message = match &request.launch {
                Launch::Container(_) => message.strip_prefix(&format!("container {id}: ")).map(str::to_string).unwrap_or(message),
                Launch::Exec(_) => message.strip_prefix(&format!("process {id}: ")).map(str::to_string).unwrap_or(message),
            };
            return Err(message);
        }
        other => return Err(format!("the agent answered {} with {other:?}", call.name())),
    };
    let line = serde_json::to_string(&MonitorReport::Ready { pid, warnings }).unwrap_or_default();
    writeln!(report, "{line}").map_err(|e| format!("reporting to create: {e}"))?;

    let (done_tx, done_rx) = channel::<()>();
    let progress = Arc::new(AtomicU64::new(0));
    let done = |tx: &std::sync::mpsc::Sender<()>| {
        let tx = tx.clone();
        move || {
            let _ = tx.send(());
        }
    };
    let outputs = match (streams, &pty) {
        (Streams::Tty(tty), Some(slave)) => {
            let slave_in = slave.try_clone().map_err(|e| format!("the terminal: {e}"))?;
            let slave_out = slave.try_clone().map_err(|e| format!("the terminal: {e}"))?;
            let tty_in = tty.try_clone().map_err(|e| format!("the terminal's stream: {e}"))?;
            copy_output(tty, Box::new(File::from(slave_out)), progress.clone(), done(&done_tx));
            relay_input(Box::new(File::from(slave_in)), tty_in);
            1
        }
        (Streams::Pipes { stdin, stdout, stderr }, _) => {
            // SAFETY: fds 0-2 are the monitor's; the relays are their only users.
            let (out, err, inp) = unsafe { (StdioSlot::new(1), StdioSlot::new(2), StdioSlot::new(0)) };
            copy_output(stdout, Box::new(out), progress.clone(), done(&done_tx));
            copy_output(stderr, Box::new(err), progress.clone(), done(&done_tx));
            relay_input(Box::new(inp), stdin);
            2
        }
        (Streams::Tty(_), None) => return Err("internal error: a terminal stream without a terminal".into()),
    };
    drop(done_tx);

    let (exit_tx, exit_rx) = channel();
    let (wait_id, wait_socket) = (id.clone(), socket.to_path_buf());
    std::thread::Builder::new()
        .name("wait".into())
        .spawn(move || {
            let _ = exit_tx.send(wait_for_exit(control, &wait_socket, &wait_id));
        })
        .map_err(|e| format!("starting the wait thread: {e}"))?;
    // Its own thread: a slow agent delays the count, never a signal or a resize.
    let oom = oom.map(|cg| OomWatch::spawn(cg, socket.to_path_buf(), id.clone()));
    let (status, lost) = loop {
        match exit_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Response::Exited(status))) => {
                if let Some(watch) = oom {
                    watch.finish(&status);
                }
                break (status, false);
            }
            Ok(other) => {
                // The VM ended (or its agent failed): the process is gone with it.
                tracing::warn!("waiting for the guest process: {other:?}; it ended with its VM");
                break (ExitStatus { code: None, signal: Some(libc::SIGKILL), oom_killed: false }, true);
            }
            Err(RecvTimeoutError::Disconnected) => {
                tracing::warn!("the wait thread ended without a status; the guest process counts as killed");
                break (ExitStatus { code: None, signal: Some(libc::SIGKILL), oom_killed: false }, true);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        while let Ok(sig) = signals.try_recv() {
            if sig == libc::SIGWINCH {
                // The caller resized the terminal's master: the guest's terminal follows.
                if let Some(size) = pty.as_ref().and_then(|slave| window_size(slave.as_raw_fd())) {
                    let resize = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, request_timeout()).and_then(|mut c| {
                        c.call_ok("a window size", &Request::ResizeTty { id: id.clone(), rows: size.rows, cols: size.cols })
                    });
                    if let Err(e) = resize {
                        tracing::warn!("passing on a window size: {e}");
                    }
                }
                continue;
            }
            // Someone signalled the PID callers know: it is meant for the guest process.
            let forward = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, request_timeout())
                .and_then(|mut c| c.call_ok("a signal", &Request::Signal { id: id.clone(), signal: sig, all: false }));
            if let Err(e) = forward {
                tracing::warn!("forwarding signal {sig}: {e}");
            }
        }
    };
    // The output that was written before the exit, then an end once it goes quiet.
    let mut last = (progress.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
    let mut open = outputs;
    while open > 0 {
        match done_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => open -= 1,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let now = progress.load(std::sync::atomic::Ordering::Relaxed);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > OUTPUT_IDLE_AFTER_EXIT {
                    break;
                }
            }
        }
    }
    Ok((status, lost))
}

/// How many times a broken `Wait` connection is replaced before the VM counts as gone.
const WAIT_RECONNECTS: u32 = 3;
/// How long each replacement may take (a VMM that is gone refuses at once).
const WAIT_RECONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// `Wait` for process `id`. The agent keeps every exit status and answers every waiter, so
/// asking again is safe: when the connection breaks before the agent answers, the question
/// is asked again on a new connection, and the error stands only when none can be made
/// (the VM is gone).
fn wait_for_exit(mut control: ControlClient, socket: &Path, id: &str) -> Result<Response, ConnectError> {
    let mut reconnects = 0;
    loop {
        match control.call(&Request::Wait { id: id.to_string() }) {
            Err(ConnectError::Protocol(e)) if reconnects < WAIT_RECONNECTS => {
                reconnects += 1;
                tracing::warn!("waiting for the guest process: {e}; asking again on a new connection");
                control = ControlClient::connect_ready_within(socket, HANDSHAKE_TIMEOUT, request_timeout(), WAIT_RECONNECT_PATIENCE)?;
            }
            result => return result,
        }
    }
}

/// How often a container's monitor asks the guest how many OOM kills its cgroup counted.
const OOM_POLL: Duration = Duration::from_secs(1);

/// The thread that runs an [`OomRelay`] while the guest process lives.
struct OomWatch {
    ended: std::sync::mpsc::Sender<ExitStatus>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OomWatch {
    fn spawn(cgroup: HostCgroup, socket: PathBuf, id: String) -> OomWatch {
        let (ended, ended_rx) = channel::<ExitStatus>();
        let thread = std::thread::Builder::new().name("oom".into()).spawn(move || {
            let mut relay = OomRelay::new(cgroup);
            loop {
                match ended_rx.recv_timeout(OOM_POLL) {
                    Ok(status) => return relay.exited(&status, &socket, &id),
                    Err(RecvTimeoutError::Timeout) => {
                        relay.poll(&socket, &id);
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        match thread {
            Ok(thread) => OomWatch { ended, thread: Some(thread) },
            Err(e) => {
                tracing::warn!("starting the OOM relay: {e}; the guest's OOM kills will not be counted on the host");
                OomWatch { ended, thread: None }
            }
        }
    }

    /// The guest process ended with `status`: the last count is relayed before this returns.
    fn finish(self, status: &ExitStatus) {
        let _ = self.ended.send(*status);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// Passes the guest's OOM kills in a container on to its host cgroup, one for one: those
/// of any of its processes while it runs (from its guest cgroup's counter), and that of
/// its init when that is how it ended.
struct OomRelay {
    cgroup: HostCgroup,
    /// Guest OOM kills counted so far, and how many of those the host has counted.
    seen: u64,
    relayed: u64,
    client: Option<ControlClient>,
}

impl OomRelay {
    fn new(cgroup: HostCgroup) -> OomRelay {
        OomRelay { cgroup, seen: 0, relayed: 0, client: None }
    }

    /// Asks the guest for its count and relays what is new; whether the guest answered.
    fn poll(&mut self, socket: &Path, id: &str) -> bool {
        if self.client.is_none() {
            self.client = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, request_timeout()).ok();
        }
        let Some(client) = &mut self.client else { return false };
        match client.call(&Request::Stats { id: id.into() }) {
            Ok(Response::Stats(stats)) => {
                self.seen = self.seen.max(stats.oom_kills);
                self.relay();
                true
            }
            Ok(_) => false,
            // The connection is gone (the VM is ending): the next poll reconnects, if any.
            Err(_) => {
                self.client = None;
                false
            }
        }
    }

    /// The guest process ended: the OOM kills its cgroup counted until then (it outlives
    /// the process in the guest), and its own when that is how it ended.
    fn exited(&mut self, status: &ExitStatus, socket: &Path, id: &str) {
        // The guest's count includes the init's own kill; without an answer, that one is
        // still known from the status.
        if !self.poll(socket, id) && status.oom_killed {
            self.seen = self.seen.max(self.relayed + 1);
        }
        self.relay();
        if self.relayed > 0 {
            // Callers watch the cgroup's events asynchronously: give them a moment to
            // read them while this process, whose exit they also watch, still lives.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn relay(&mut self) {
        // Bounded: a guest that claims many kills at once gets a few.
        let mut budget = 4;
        while self.relayed < self.seen && budget > 0 {
            budget -= 1;
            match self.cgroup.provoke_oom_kill() {
                Ok(()) => {
                    self.relayed += 1;
                    tracing::info!("the guest's OOM kill {} counted in {}", self.relayed, self.cgroup.dir.display());
                }
                Err(e) => {
                    tracing::warn!("counting the guest's OOM kill on the host: {e}");
                    self.relayed = self.seen;
                }
            }
        }
    }
}

/// Waits for `pid`, a monitor that is this process's child, passing on the signals this
/// process receives (they are meant for the guest process); returns the status as a shell
/// reports it (the code, or 128 + the signal).
pub fn wait_forwarding(pid: u32, signals: &Receiver<i32>) -> Result<i32, String> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for the monitor {pid}: {e}")),
        }
        while let Ok(sig) = signals.try_recv() {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends this process the way the guest process ended: killed by the same signal
/// (without a core dump), or exiting with the same code.
pub fn end_like(status: &ExitStatus) -> ! {
    if let Some(sig) = status.signal.filter(|s| (1..=64).contains(s)) {
        // SAFETY: plain libc calls on this process: no core file, the default action for
        // `sig`, `sig` unblocked in this thread, then the signal.
        unsafe {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        // A signal whose default action is to ignore it (SIGCHLD, SIGURG, SIGWINCH).
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code.filter(|c| (0..=255).contains(c)).unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_protocol::{read_frame, write_frame, PROTOCOL_VERSION};
    use std::os::unix::net::{UnixListener, UnixStream};

    /// A fake VMM socket whose agent says hello on every connection, then answers `Wait` on
    /// connection `n` with `answers[n]`, or breaks the connection when that is `None`.
    /// Returns how many connections it served.
    fn fake_agent(listener: UnixListener, answers: Vec<Option<Response>>) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let mut served = 0;
            for answer in answers {
                let (mut conn, _) = listener.accept().unwrap();
                served += 1;
                let mut line = [0u8; 13];
                conn.read_exact(&mut line).unwrap();
                assert_eq!(&line, b"CONNECT 1024\n");
                conn.write_all(b"OK 1073741824\n").unwrap();
                let _: Request = read_frame(&mut conn).unwrap();
                write_frame(&mut conn, &Response::Hello { version: PROTOCOL_VERSION, agent_version: "test".into() }).unwrap();
                let wait: Request = read_frame(&mut conn).unwrap();
                assert_eq!(wait, Request::Wait { id: "exec-1".into() });
                match answer {
                    Some(response) => write_frame(&mut conn, &response).unwrap(),
                    None => drop(conn),
                }
            }
            served
        })
    }

    fn client(socket: &Path) -> ControlClient {
        ControlClient::connect_ready(socket, Duration::from_secs(5), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn a_wait_whose_connection_breaks_is_asked_again_and_gets_the_real_status() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let exited = Response::Exited(ExitStatus { code: Some(0), signal: None, oom_killed: false });
        let agent = fake_agent(UnixListener::bind(&socket).unwrap(), vec![None, None, Some(exited.clone())]);
        let answer = wait_for_exit(client(&socket), &socket, "exec-1").unwrap();
        assert_eq!(answer, exited);
        assert_eq!(agent.join().unwrap(), 3);
    }

    #[test]
    fn a_wait_gives_up_when_no_new_connection_can_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let agent = fake_agent(listener, vec![None]);
        let control = client(&socket);
        // The VMM is gone once the first connection breaks: its socket refuses from then on.
        let gone = std::thread::spawn({
            let socket = socket.clone();
            move || {
                let served = agent.join().unwrap();
                std::fs::remove_file(&socket).unwrap();
                UnixStream::connect(&socket).unwrap_err();
                served
            }
        });
        let start = Instant::now();
        let err = wait_for_exit(control, &socket, "exec-1").unwrap_err();
        assert_eq!(gone.join().unwrap(), 1);
        assert!(matches!(err, ConnectError::NotYet { .. }), "{err:?}");
        assert!(start.elapsed() < WAIT_RECONNECT_PATIENCE * 2, "took {:?}", start.elapsed());
    }
}
