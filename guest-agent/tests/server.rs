//! The agent's protocol server on Unix sockets, as the host sees it: real processes
//! are spawned, reaped and relayed (no chroot, no mounts).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use palisade_agent::conn::UnixConnListener;
use palisade_agent::process::{reaper, table::ProcessTable};
use palisade_agent::server::{serve, Agent, AgentConfig};
use palisade_protocol::*;

/// One agent per test process (there is one reaper per process).
fn agent_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let processes = Arc::new(ProcessTable::new());
        reaper::start(processes.clone()).unwrap();
        let control = Box::new(UnixConnListener::bind(&dir.join("control.sock")).unwrap());
        let streams = Box::new(UnixConnListener::bind(&dir.join("stream.sock")).unwrap());
        let config = AgentConfig {
            mount_rootfs: false,
            rootfs_base: dir.join("rootfs"),
            shares_base: dir.join("shares"),
            on_shutdown: Box::new(|| {}),
        };
        let agent = Arc::new(Agent::new(config, processes));
        std::thread::spawn(move || serve(agent, control, streams));
        dir
    })
}

fn control() -> UnixStream {
    let mut c = UnixStream::connect(agent_dir().join("control.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert!(matches!(call(&mut c, Request::Hello { version: PROTOCOL_VERSION }), Response::Hello { version: PROTOCOL_VERSION, .. }));
    c
}

fn call(c: &mut UnixStream, r: Request) -> Response {
    write_frame(c, &r).unwrap();
    read_frame(c).unwrap()
}

fn stream(id: &str, kind: StreamKind) -> UnixStream {
    let mut s = UnixStream::connect(agent_dir().join("stream.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write_frame(&mut s, &StreamHello { version: PROTOCOL_VERSION, id: id.into(), kind }).unwrap();
    let r: Response = read_frame(&mut s).unwrap();
    assert_eq!(r, Response::Ok, "attaching {kind:?} of {id}");
    s
}

fn spec(id: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        id: id.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hi".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        terminal: false,
        stdin: false,
        rootfs: None,
        tty_size: None,
    }
}

fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn runs_a_process_relays_output_and_reports_its_exit() {
    let mut c = control();
    let (out, err) = (stream("p1", StreamKind::Stdout), stream("p1", StreamKind::Stderr));
    let mut s = spec("p1", &["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 3"]);
    s.cwd = "/tmp".into();
    assert!(matches!(call(&mut c, Request::StartProcess(s)), Response::Started { .. }));
    assert_eq!(read_all(out), b"hi\n/tmp\n");
    assert_eq!(read_all(err), b"oops\n");
    assert_eq!(
        call(&mut c, Request::Wait { id: "p1".into() }),
        Response::Exited(ExitStatus { code: Some(3), signal: None, oom_killed: false })
    );
    // A second waiter, on another connection, gets the same answer.
    assert_eq!(
        call(&mut control(), Request::Wait { id: "p1".into() }),
        Response::Exited(ExitStatus { code: Some(3), signal: None, oom_killed: false })
    );
}

#[test]
fn stdin_is_relayed_until_the_host_half_closes() {
    let mut c = control();
    let mut input = stream("cat", StreamKind::Stdin);
    let (out, _err) = (stream("cat", StreamKind::Stdout), stream("cat", StreamKind::Stderr));
    let mut s = spec("cat", &["cat"]);
    s.stdin = true;
    assert!(matches!(call(&mut c, Request::StartProcess(s)), Response::Started { .. }));
    input.write_all(b"abc").unwrap();
    input.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(out), b"abc");
    assert_eq!(
        call(&mut c, Request::Wait { id: "cat".into() }),
        Response::Exited(ExitStatus { code: Some(0), signal: None, oom_killed: false })
    );
}

#[test]
fn signals_reach_the_process() {
    let mut c = control();
    let (_out, _err) = (stream("sleeper", StreamKind::Stdout), stream("sleeper", StreamKind::Stderr));
    assert!(matches!(call(&mut c, Request::StartProcess(spec("sleeper", &["sleep", "60"]))), Response::Started { .. }));
    assert_eq!(call(&mut c, Request::Signal { id: "sleeper".into(), signal: 9, all: false }), Response::Ok);
    let status = match call(&mut c, Request::Wait { id: "sleeper".into() }) {
        Response::Exited(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(status.shell_code(), 137);
    assert!(matches!(call(&mut c, Request::Signal { id: "sleeper".into(), signal: 0, all: false }), Response::Error { .. }));
}

#[test]
fn exec_errors_say_not_found_or_permission_denied() {
    let mut c = control();
    let _s = (stream("nf", StreamKind::Stdout), stream("nf", StreamKind::Stderr));
    match call(&mut c, Request::StartProcess(spec("nf", &["no-such-command-xyz"]))) {
        Response::Error { message } => assert_eq!(message, "no-such-command-xyz: command not found"),
        other => panic!("{other:?}"),
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().display().to_string();
    let _s = (stream("pd", StreamKind::Stdout), stream("pd", StreamKind::Stderr));
    match call(&mut c, Request::StartProcess(spec("pd", &[&path]))) {
        Response::Error { message } => assert_eq!(message, format!("{path}: permission denied")),
        other => panic!("{other:?}"),
    }
    let _s = (stream("cwd", StreamKind::Stdout), stream("cwd", StreamKind::Stderr));
    let mut s = spec("cwd", &["true"]);
    s.cwd = "/no/such/dir".into();
    match call(&mut c, Request::StartProcess(s)) {
        Response::Error { message } => assert!(message.contains("/no/such/dir") && !message.contains("command not found"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_streams_are_named_and_duplicates_refused() {
    let mut c = control();
    let mut out = stream("ms", StreamKind::Stdout);
    let mut dup = UnixStream::connect(agent_dir().join("stream.sock")).unwrap();
    write_frame(&mut dup, &StreamHello { version: PROTOCOL_VERSION, id: "ms".into(), kind: StreamKind::Stdout }).unwrap();
    assert!(matches!(read_frame::<_, Response>(&mut dup).unwrap(), Response::Error { .. }));
    match call(&mut c, Request::StartProcess(spec("ms", &["true"]))) {
        Response::Error { message } => assert!(message.contains("Stderr stream is not attached"), "{message}"),
        other => panic!("{other:?}"),
    }
    // The streams of a process that did not start are closed.
    let mut rest = Vec::new();
    assert_eq!(out.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn terminal_has_the_requested_size_and_resizes() {
    let mut c = control();
    let mut tty = stream("tty", StreamKind::Tty);
    let mut s = spec("tty", &["sh", "-c", "stty size; tty; read line; stty size"]);
    s.terminal = true;
    s.tty_size = Some(TtySize { rows: 33, cols: 77 });
    assert!(matches!(call(&mut c, Request::StartProcess(s)), Response::Started { .. }));
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("/dev/pts/") {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0, "tty closed early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("33 77"), "{:?}", String::from_utf8_lossy(&seen));
    assert_eq!(call(&mut c, Request::ResizeTty { id: "tty".into(), rows: 40, cols: 100 }), Response::Ok);
    tty.write_all(b"go\n").unwrap();
    let rest = read_all(tty);
    assert!(String::from_utf8_lossy(&rest).contains("40 100"), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(
        call(&mut c, Request::Wait { id: "tty".into() }),
        Response::Exited(ExitStatus { code: Some(0), signal: None, oom_killed: false })
    );
}

#[test]
fn many_quick_processes_are_all_reaped_and_waited() {
    let mut c = control();
    for i in 0..30 {
        let id = format!("quick{i}");
        let _s = (stream(&id, StreamKind::Stdout), stream(&id, StreamKind::Stderr));
        assert!(matches!(
            call(&mut c, Request::StartProcess(spec(&id, &["sh", "-c", &format!("exit {}", i % 5)]))),
            Response::Started { .. }
        ));
        assert_eq!(call(&mut c, Request::Wait { id }), Response::Exited(ExitStatus { code: Some(i % 5), signal: None, oom_killed: false }));
    }
}

#[test]
fn bad_frames_and_missing_hello_close_only_that_connection() {
    let mut raw = UnixStream::connect(agent_dir().join("control.sock")).unwrap();
    raw.write_all(&[0, 0, 0, 5, b'n', b'o', b'p', b'e', b'!']).unwrap();
    assert!(matches!(read_frame::<_, Response>(&mut raw).unwrap(), Response::Error { .. }));
    assert!(matches!(read_frame::<_, Response>(&mut raw), Err(ProtocolError::Closed)));

    let mut no_hello = UnixStream::connect(agent_dir().join("control.sock")).unwrap();
    assert!(matches!(call(&mut no_hello, Request::Ping), Response::Error { .. }));

    let mut old = UnixStream::connect(agent_dir().join("control.sock")).unwrap();
    match call(&mut old, Request::Hello { version: PROTOCOL_VERSION + 1 }) {
        Response::Error { message } => assert!(message.contains("version"), "{message}"),
        other => panic!("{other:?}"),
    }
    // The agent still serves.
    assert_eq!(call(&mut control(), Request::Ping), Response::Ok);
    assert!(matches!(call(&mut control(), Request::Wait { id: "never-started".into() }), Response::Error { .. }));
}
