//! The whole host side of vmrun (minus the VMM process) against the real agent code:
//! the agent serves from Unix sockets in this process, and a fake VMM socket plays the
//! vsock muxer (`CONNECT <port>\n` → `OK <n>\n`, then relays bytes).

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use palisade_agent::conn::UnixConnListener;
use palisade_agent::process::{reaper, table::ProcessTable};
use palisade_agent::server::{serve, Agent, AgentConfig};
use palisade_protocol::{ProcessSpec, RootfsSource, RootfsSpec, TtySize};
use palisade_runtime::vmrun::session::{run_session, HostIo, Launch, SessionError, SessionSpec};
use palisade_runtime::vmrun::vmm::{Vm, VmEnd};

/// One process table (and reaper) per test process.
fn processes() -> Arc<ProcessTable> {
    static TABLE: OnceLock<Arc<ProcessTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let t = Arc::new(ProcessTable::new());
            reaper::start(t.clone()).unwrap();
            t
        })
        .clone()
}

type Ended = Arc<Mutex<Option<VmEnd>>>;

struct FakeVm {
    ended: Ended,
}

impl Vm for FakeVm {
    fn poll_end(&mut self) -> Option<VmEnd> {
        self.ended.lock().unwrap().clone()
    }
    fn finish(&mut self, timeout: Duration) -> VmEnd {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(end) = self.poll_end() {
                return end;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        VmEnd { clean: false, reason: "killed".into() }
    }
}

/// A fake guest: the agent on Unix sockets, and the VMM's vsock socket in front of it
/// that refuses connections until `booted`.
struct FakeGuest {
    dir: tempfile::TempDir,
    booted: Arc<AtomicBool>,
    /// Once set, the guest stops answering: no connection relays another byte.
    frozen: Arc<AtomicBool>,
    ended: Ended,
}

impl FakeGuest {
    fn start(booted: bool) -> FakeGuest {
        let dir = tempfile::tempdir().unwrap();
        let ended: Ended = Arc::new(Mutex::new(None));
        let on_shutdown = ended.clone();
        let config = AgentConfig {
            mount_rootfs: false,
            rootfs_base: dir.path().join("rootfs"),
            shares_base: dir.path().join("shares"),
            on_shutdown: Box::new(move || {
                *on_shutdown.lock().unwrap() = Some(VmEnd { clean: true, reason: "the guest powered off".into() })
            }),
        };
        let control = Box::new(UnixConnListener::bind(&dir.path().join("control.sock")).unwrap());
        let streams = Box::new(UnixConnListener::bind(&dir.path().join("stream.sock")).unwrap());
        let agent = Arc::new(Agent::new(config, processes()));
        std::thread::spawn(move || serve(agent, control, streams));
        let booted = Arc::new(AtomicBool::new(booted));
        let frozen = Arc::new(AtomicBool::new(false));
        let muxer = UnixListener::bind(dir.path().join("vsock.sock")).unwrap();
        let (b, f, d) = (booted.clone(), frozen.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            for conn in muxer.incoming().flatten() {
                let (b, f, d) = (b.clone(), f.clone(), d.clone());
                std::thread::spawn(move || mux(conn, &b, &f, &d));
            }
        });
        FakeGuest { dir, booted, frozen, ended }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    fn vm(&self) -> FakeVm {
        FakeVm { ended: self.ended.clone() }
    }
}

/// Copies `from` to `to` until the end, holding every byte back once `frozen` is set.
fn relay(mut from: UnixStream, mut to: UnixStream, frozen: Arc<AtomicBool>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn mux(mut host: UnixStream, booted: &AtomicBool, frozen: &Arc<AtomicBool>, dir: &Path) {
    let mut line = String::new();
    if std::io::BufReader::new(&mut host).read_line(&mut line).is_err() || !booted.load(Ordering::SeqCst) {
        return; // closing: the guest is not listening yet
    }
    let target = match line.trim() {
        "CONNECT 1024" => "control.sock",
        "CONNECT 1025" => "stream.sock",
        _ => return,
    };
    let Ok(guest) = UnixStream::connect(dir.join(target)) else { return };
    host.write_all(b"OK 1073741824\n").unwrap();
    let (h2, g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
    let f2 = frozen.clone();
    std::thread::spawn(move || relay(h2, g2, f2));
    relay(guest, host, frozen.clone());
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A plain process (containers need a real rootfs, which this fake guest has not).
fn spec(id: &str, args: &[&str]) -> SessionSpec {
    spec_with(id, args, |_| {})
}

fn spec_with(id: &str, args: &[&str], patch: impl FnOnce(&mut ProcessSpec)) -> SessionSpec {
    let mut process = ProcessSpec {
        id: id.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=from-host".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        terminal: false,
        stdin: false,
        rootfs: None,
        tty_size: None,
    };
    patch(&mut process);
    SessionSpec {
        share: None,
        rootfs: Some(RootfsSpec {
            id: "root".into(),
            source: RootfsSource::Device { device: "/dev/vda".into(), fstype: "erofs".into() },
            writable: true,
            process_mounts: true,
        }),
        shutdown: true,
        launch: Launch::Process(process),
        boot_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(20),
        quiet_warnings: vec![],
        network: None,
        host_setup: None,
    }
}

struct Outcome {
    result: Result<i32, SessionError>,
    stdout: String,
    stderr: String,
}

fn run(guest: &FakeGuest, spec: &SessionSpec, stdin: Option<&'static [u8]>, signals: &Receiver<i32>) -> Outcome {
    let (out, err) = (Sink::default(), Sink::default());
    let io =
        HostIo { stdin: stdin.map(|s| Box::new(s) as Box<dyn Read + Send>), stdout: Box::new(out.clone()), stderr: Box::new(err.clone()) };
    let result = run_session(&guest.socket(), &mut guest.vm(), spec, io, signals).map(|s| s.shell_code());
    Outcome { result, stdout: out.text(), stderr: err.text() }
}

fn no_signals() -> (Sender<i32>, Receiver<i32>) {
    channel()
}

#[test]
fn a_command_runs_with_env_workdir_and_exit_status_and_the_vm_is_shut_down() {
    let guest = FakeGuest::start(true);
    let s = spec_with("env", &["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 7"], |p| p.cwd = "/tmp".into());
    let (_tx, rx) = no_signals();
    let o = run(&guest, &s, None, &rx);
    assert_eq!(o.result.unwrap(), 7);
    assert_eq!(o.stdout, "from-host\n/tmp\n");
    assert_eq!(o.stderr, "oops\n");
    assert_eq!(guest.ended.lock().unwrap().as_ref().map(|e| e.clean), Some(true), "Shutdown was not sent");
}

#[test]
fn stdin_reaches_the_command_and_large_output_arrives_intact() {
    let guest = FakeGuest::start(true);
    let s = spec_with("cat", &["cat"], |p| p.stdin = true);
    let (_tx, rx) = no_signals();
    let o = run(&guest, &s, Some(b"abc"), &rx);
    assert_eq!((o.result.unwrap(), o.stdout.as_str()), (0, "abc"));

    let guest = FakeGuest::start(true);
    let s = spec("big", &["sh", "-c", "head -c 4194304 /dev/zero | tr '\\0' x"]);
    let o = run(&guest, &s, None, &rx);
    assert_eq!(o.result.unwrap(), 0);
    assert_eq!(o.stdout.len(), 4 << 20);
    assert!(o.stdout.bytes().all(|b| b == b'x'));
}

#[test]
fn unknown_commands_give_127() {
    let guest = FakeGuest::start(true);
    let (_tx, rx) = no_signals();
    let o = run(&guest, &spec("nf", &["no-such-command-xyz"]), None, &rx);
    let err = o.result.unwrap_err();
    assert_eq!(err.exit_code(), 127);
    assert_eq!(err.to_string(), "no-such-command-xyz: command not found");
}

#[test]
fn connecting_retries_until_the_agent_listens() {
    let guest = FakeGuest::start(false);
    let booted = guest.booted.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        booted.store(true, Ordering::SeqCst);
    });
    let (_tx, rx) = no_signals();
    let start = Instant::now();
    let o = run(&guest, &spec("late", &["echo", "hello"]), None, &rx);
    assert_eq!((o.result.unwrap(), o.stdout.as_str()), (0, "hello\n"));
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[test]
fn a_guest_that_never_answers_times_out_and_a_signal_interrupts_the_boot() {
    let guest = FakeGuest::start(false);
    let mut s = spec("never", &["true"]);
    s.boot_timeout = Duration::from_millis(300);
    let (_tx, rx) = no_signals();
    let err = run(&guest, &s, None, &rx).result.unwrap_err();
    assert!(matches!(err, SessionError::BootTimeout { .. }), "{err}");
    assert_eq!(err.exit_code(), 125);

    s.boot_timeout = Duration::from_secs(30);
    let (tx, rx) = channel();
    tx.send(libc::SIGINT).unwrap();
    let err = run(&guest, &s, None, &rx).result.unwrap_err();
    assert!(matches!(err, SessionError::Interrupted(2)), "{err}");
    assert_eq!(err.exit_code(), 130);
}

#[test]
fn a_vm_that_ends_first_is_reported_with_its_reason() {
    let guest = FakeGuest::start(true);
    let ended = guest.ended.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        *ended.lock().unwrap() = Some(VmEnd { clean: false, reason: "vCPU 0: KVM internal error: emulation failure".into() });
    });
    let (_tx, rx) = no_signals();
    let start = Instant::now();
    let err = run(&guest, &spec("dies", &["sleep", "3"]), None, &rx).result.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert_eq!(err.exit_code(), 125);
    assert_eq!(err.to_string(), "the VM ended before the command finished: vCPU 0: KVM internal error: emulation failure");
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let guest = FakeGuest::start(true);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        tx.send(libc::SIGTERM).unwrap();
        std::thread::sleep(Duration::from_secs(30));
    });
    let o = run(&guest, &spec("term", &["sleep", "30"]), None, &rx);
    assert_eq!(o.result.unwrap(), 143);
}

#[test]
fn a_terminal_has_the_host_window_size() {
    let guest = FakeGuest::start(true);
    let s = spec_with("tty", &["sh", "-c", "stty size; tty"], |p| {
        p.terminal = true;
        p.tty_size = Some(TtySize { rows: 33, cols: 77 });
    });
    let (_tx, rx) = no_signals();
    let o = run(&guest, &s, Some(b""), &rx);
    assert_eq!(o.result.unwrap(), 0);
    assert!(o.stdout.contains("33 77") && o.stdout.contains("/dev/pts/"), "{:?}", o.stdout);
}

#[test]
fn a_guest_reboot_while_the_command_runs_is_named() {
    let guest = FakeGuest::start(true);
    let ended = guest.ended.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        *ended.lock().unwrap() = Some(VmEnd { clean: true, reason: "the VM reset (last console line: sysrq: Resetting)".into() });
    });
    let (_tx, rx) = no_signals();
    let err = run(&guest, &spec("reboots", &["sleep", "3"]), None, &rx).result.unwrap_err();
    assert!(matches!(err, SessionError::GuestRebooted(_)), "{err}");
    assert_eq!(err.exit_code(), 125);
    assert!(err.to_string().starts_with("the guest rebooted while the command was running"), "{err}");
}

#[test]
fn a_guest_that_stops_answering_while_the_command_runs_is_given_up_on() {
    let guest = FakeGuest::start(true);
    let mut s = spec("frozen", &["sleep", "60"]);
    s.request_timeout = Duration::from_secs(1);
    let frozen = guest.frozen.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        frozen.store(true, Ordering::SeqCst);
    });
    let (_tx, rx) = no_signals();
    let start = Instant::now();
    let err = run(&guest, &s, None, &rx).result.unwrap_err();
    // One liveness interval (5 s) and the ping's deadline (1 s), then 2 s for a VM end.
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert!(matches!(err, SessionError::GuestSilent { .. }), "{err}");
    assert_eq!(err.exit_code(), 125);
    assert!(err.to_string().starts_with("the guest stopped answering (the guest agent did not answer ping"), "{err}");
}

#[test]
fn a_guest_that_answers_is_not_given_up_on_however_long_the_command_runs() {
    // Longer than two liveness intervals, each ping answered within its 1 s deadline.
    let guest = FakeGuest::start(true);
    let mut s = spec("long", &["sh", "-c", "sleep 12; echo done"]);
    s.request_timeout = Duration::from_secs(1);
    let (_tx, rx) = no_signals();
    let o = run(&guest, &s, None, &rx);
    assert_eq!((o.result.unwrap(), o.stdout.as_str()), (0, "done\n"));
}

#[test]
fn a_vm_that_ends_while_the_command_is_being_set_up_is_reported_as_its_end() {
    // The agent answered, then the VM died (the VMM removed its socket): vmrun says how the
    // VM ended, not that a port was unreachable.
    let guest = FakeGuest::start(true);
    let (ended, socket) = (guest.ended.clone(), guest.socket());
    let booted = guest.booted.clone();
    let mut s = spec("dies-early", &["true"]);
    s.boot_timeout = Duration::from_secs(20);
    s.request_timeout = Duration::from_secs(1);
    // Kill the guest as soon as the first control connection exists.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        booted.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&socket);
        *ended.lock().unwrap() =
            Some(VmEnd { clean: false, reason: "vCPU 0: triple fault (the guest hit an exception it could not handle)".into() });
    });
    let guest_frozen = guest.frozen.clone();
    guest_frozen.store(true, Ordering::SeqCst); // the first requests hang until the VM is gone
    let (_tx, rx) = no_signals();
    let err = run(&guest, &s, None, &rx).result.unwrap_err();
    assert!(matches!(err, SessionError::VmEnded(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "the VM ended before the command finished: vCPU 0: triple fault (the guest hit an exception it could not handle)"
    );
}
