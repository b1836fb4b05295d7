//! A container's monitor: the host process whose PID `create` writes to `--pid-file`, which
//! containerd's shim and conmon wait on. It holds the caller's stdio (inherited pipes) and
//! relays it over the agent's stream port, creates the container in the guest, reports the
//! result to `create`, then lives exactly as long as the container's process and ends with
//! its status: the same exit code, or killed by the same signal. Its own log goes to
//! `monitor.log`; its stdio is the container's.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_protocol::{ContainerSpec, ExitStatus, Request, Response, StreamKind};
use serde::{Deserialize, Serialize};

use super::store::{read_json, write_json_atomic, ContainerDir};
use crate::vmrun::connect::{attach_stream, request_timeout, ControlClient};
use crate::vmrun::session::{copy_output, relay_input};

/// The descriptor of the pipe on which the monitor reports to `create`.
pub const REPORT_FD: i32 = 3;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the exit status, how long output may stay silent before the monitor stops waiting
/// for its end (a daemonised child may hold the streams open for ever).
const OUTPUT_IDLE_AFTER_EXIT: Duration = Duration::from_secs(3);

/// What `create` asks its monitor to do (`monitor.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorRequest {
    /// The sandbox's vsock socket.
    pub socket: PathBuf,
    pub container: ContainerSpec,
}

/// What the monitor tells `create`, one JSON line on [`REPORT_FD`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorReport {
    Created { pid: u32, warnings: Vec<String> },
    Failed { message: String },
}

/// Runs the monitor of container `dir`; never returns.
pub fn run(dir: &ContainerDir, signals: &Receiver<i32>) -> ! {
    // SAFETY: `create` started us with the report pipe's write end as fd 3, and nothing else
    // in this process owns that descriptor.
    let mut report = unsafe { File::from(OwnedFd::from_raw_fd(REPORT_FD)) };
    let status = match monitor(dir, &mut report, signals) {
        Ok(status) => status,
        Err(message) => {
            tracing::error!("{message}");
            let _ = writeln!(report, "{}", serde_json::to_string(&MonitorReport::Failed { message }).unwrap_or_default());
            std::process::exit(1);
        }
    };
    if let Err(e) = write_json_atomic(&dir.exit_file(), &status) {
        tracing::error!("writing {}: {e}", dir.exit_file().display());
    }
    tracing::info!(?status, "the container's process ended");
    end_like(&status)
}

fn monitor(dir: &ContainerDir, report: &mut File, signals: &Receiver<i32>) -> Result<ExitStatus, String> {
    let request: MonitorRequest =
        read_json(&dir.monitor_request()).map_err(|e| format!("reading {}: {e:?}", dir.monitor_request().display()))?;
    let id = request.container.id.clone();
    let socket = request.socket.as_path();
    let attach = |kind| attach_stream(socket, &id, kind, HANDSHAKE_TIMEOUT).map_err(|e| e.to_string());
    let stdin = attach(StreamKind::Stdin)?;
    let stdout = attach(StreamKind::Stdout)?;
    let stderr = attach(StreamKind::Stderr)?;
    let mut control = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, request_timeout()).map_err(|e| e.to_string())?;
    let (pid, warnings) = match control.call(&Request::CreateContainer(request.container.clone())).map_err(|e| e.to_string())? {
        Response::Created { pid, warnings } => (pid, warnings),
        Response::Error { message } => {
            return Err(message.strip_prefix(&format!("container {id}: ")).map(str::to_string).unwrap_or(message))
        }
        other => return Err(format!("the agent answered create-container with {other:?}")),
    };
    let line = serde_json::to_string(&MonitorReport::Created { pid, warnings }).unwrap_or_default();
    writeln!(report, "{line}").map_err(|e| format!("reporting to create: {e}"))?;

    let (done_tx, done_rx) = channel::<()>();
    let progress = Arc::new(AtomicU64::new(0));
    // SAFETY: fds 0-2 are ours for the monitor's life; the relays are their only users.
    let (out, err, inp) = unsafe { (File::from_raw_fd(1), File::from_raw_fd(2), File::from_raw_fd(0)) };
    for (stream, sink) in [(stdout, out), (stderr, err)] {
        let done = done_tx.clone();
        copy_output(stream, Box::new(sink), progress.clone(), move || {
            let _ = done.send(());
        });
    }
    drop(done_tx);
    relay_input(Box::new(inp), stdin);

    let (exit_tx, exit_rx) = channel();
    let wait_id = id.clone();
    std::thread::Builder::new()
        .name("wait".into())
        .spawn(move || {
            let _ = exit_tx.send(control.call(&Request::Wait { id: wait_id }));
        })
        .map_err(|e| format!("starting the wait thread: {e}"))?;
    let status = loop {
        match exit_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Response::Exited(status))) => break status,
            Ok(other) => {
                // The VM ended (or its agent failed): the container is gone with it.
                tracing::warn!("waiting for the container: {other:?}; it ended with its VM");
                break ExitStatus { code: None, signal: Some(libc::SIGKILL), oom_killed: false };
            }
            Err(RecvTimeoutError::Disconnected) => {
                break ExitStatus { code: None, signal: Some(libc::SIGKILL), oom_killed: false };
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        while let Ok(sig) = signals.try_recv() {
            if sig == libc::SIGWINCH {
                continue;
            }
            // Someone signalled the PID callers know: it is meant for the container.
            let forward = ControlClient::connect_ready(socket, HANDSHAKE_TIMEOUT, request_timeout())
                .and_then(|mut c| c.call_ok("a signal", &Request::Signal { id: id.clone(), signal: sig, all: false }));
            if let Err(e) = forward {
                tracing::warn!("forwarding signal {sig}: {e}");
            }
        }
    };
    // The output that was written before the exit, then an end once it goes quiet.
    let mut last = (progress.load(std::sync::atomic::Ordering::Relaxed), Instant::now());
    let mut open = 2;
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
    Ok(status)
}

/// Ends this process the way the container's process ended: killed by the same signal
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
