//! Connections to the guest agent through the VMM's vsock Unix socket: connect, send
//! `CONNECT <port>\n`, read `OK <hostport>\n`, then the stream is the guest's. And the
//! agent protocol on top: a control client and attached stdio streams.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use palisade_protocol::{
    read_frame, write_frame, ProtocolError, Request, Response, StreamHello, StreamKind, AGENT_CONTROL_PORT, AGENT_STREAM_PORT,
    PROTOCOL_VERSION,
};

/// Longest `OK …` line accepted from the VMM.
const MAX_HANDSHAKE_LINE: usize = 64;
/// Once the agent has answered it is listening, so a connection the VMM closes before
/// `OK` means the guest did not answer within the VMM's connect timeout (2 s; seen under
/// emulation with several VMs at once): such connections are retried for this long.
pub const READY_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between those retries.
const READY_RETRY_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The guest is not listening (yet), or the socket is not there yet: retry.
    #[error("vsock port {port} via {socket}: not reachable yet: {detail}")]
    NotYet { socket: String, port: u32, detail: String },
    #[error("vsock port {port} via {socket}: unexpected handshake answer {answer:?}")]
    BadAnswer { socket: String, port: u32, answer: String },
    #[error("agent: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("agent refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("agent answered {what} with an unexpected {answer:?}")]
    Unexpected { what: String, answer: Box<Response> },
    #[error("the guest agent did not answer {what} within {secs} s (PALISADE_REQUEST_TIMEOUT_SECS)")]
    NoAnswer { what: &'static str, secs: u64 },
}

/// How long a request other than `Wait` may stay unanswered (a wedged guest must not
/// hang vmrun). Generous, because under emulation creating a container takes seconds
/// and the agent gives a container init 60 s to reach its exec barrier.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// [`DEFAULT_REQUEST_TIMEOUT`], or `PALISADE_REQUEST_TIMEOUT_SECS`.
pub fn request_timeout() -> Duration {
    std::env::var("PALISADE_REQUEST_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
}

/// Opens a connection to guest port `port`.
pub fn connect_port(socket: &Path, port: u32, handshake_timeout: Duration) -> Result<UnixStream, ConnectError> {
    let not_yet = |detail: String| ConnectError::NotYet { socket: socket.display().to_string(), port, detail };
    let mut stream = UnixStream::connect(socket).map_err(|e| not_yet(e.to_string()))?;
    stream.set_read_timeout(Some(handshake_timeout)).map_err(|e| not_yet(e.to_string()))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(|e| not_yet(e.to_string()))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(not_yet("closed by the VMM (the guest is not listening yet)".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_HANDSHAKE_LINE {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(not_yet(e.to_string())),
        }
    }
    let answer = String::from_utf8_lossy(&line).into_owned();
    let ok = answer.strip_prefix("OK ").is_some_and(|n| n.trim().parse::<u32>().is_ok());
    if !ok {
        return Err(ConnectError::BadAnswer { socket: socket.display().to_string(), port, answer });
    }
    stream.set_read_timeout(None).map_err(|e| not_yet(e.to_string()))?;
    Ok(stream)
}

/// Opens a connection to guest port `port` of an agent known to be listening: retries
/// what [`connect_port`] calls [`ConnectError::NotYet`] for up to `patience`.
pub fn connect_ready_port(socket: &Path, port: u32, handshake_timeout: Duration, patience: Duration) -> Result<UnixStream, ConnectError> {
    let start = std::time::Instant::now();
    loop {
        match connect_port(socket, port, handshake_timeout) {
            Err(ConnectError::NotYet { .. }) if start.elapsed() + READY_RETRY_INTERVAL < patience => {
                tracing::debug!(port, "the guest did not take the connection in time; retrying");
                std::thread::sleep(READY_RETRY_INTERVAL);
            }
            result => return result,
        }
    }
}

/// A control connection after a successful Hello. Every request but `Wait` has a deadline
/// ([`request_timeout`]); `Wait` lasts as long as the command.
pub struct ControlClient {
    stream: UnixStream,
    timeout: Duration,
}

impl ControlClient {
    /// One attempt (the boot loop retries it while the guest comes up); `timeout` is the
    /// deadline of each request but `Wait` ([`request_timeout`] in vmrun).
    pub fn connect(socket: &Path, handshake_timeout: Duration, timeout: Duration) -> Result<ControlClient, ConnectError> {
        Self::hello(connect_port(socket, AGENT_CONTROL_PORT, handshake_timeout)?, timeout)
    }

    /// A further control connection to an agent that already answered.
    pub fn connect_ready(socket: &Path, handshake_timeout: Duration, timeout: Duration) -> Result<ControlClient, ConnectError> {
        Self::connect_ready_within(socket, handshake_timeout, timeout, READY_PATIENCE)
    }

    /// [`ControlClient::connect_ready`], trying for `patience` instead of [`READY_PATIENCE`].
    pub fn connect_ready_within(
        socket: &Path,
        handshake_timeout: Duration,
        timeout: Duration,
        patience: Duration,
    ) -> Result<ControlClient, ConnectError> {
        Self::hello(connect_ready_port(socket, AGENT_CONTROL_PORT, handshake_timeout, patience)?, timeout)
    }

    fn hello(stream: UnixStream, timeout: Duration) -> Result<ControlClient, ConnectError> {
        let mut client = ControlClient { stream, timeout };
        match client.call(&Request::Hello { version: PROTOCOL_VERSION })? {
            Response::Hello { version, .. } if version == PROTOCOL_VERSION => Ok(client),
            Response::Hello { version, .. } => Err(ProtocolError::Version { ours: PROTOCOL_VERSION, theirs: version }.into()),
            Response::Error { message } => Err(ConnectError::Refused { what: "hello".into(), message }),
            other => Err(ConnectError::Unexpected { what: "hello".into(), answer: Box::new(other) }),
        }
    }

    /// Sends one request and reads its response, within the request deadline unless it is
    /// `Wait`. The deadline is for the whole exchange, not for each read: an agent that
    /// trickles its answer a byte at a time still misses it. After a missed deadline the
    /// connection is out of step: drop it.
    pub fn call(&mut self, request: &Request) -> Result<Response, ConnectError> {
        let deadline = match request {
            Request::Wait { .. } => None,
            _ => Some(std::time::Instant::now() + self.timeout),
        };
        let no_answer = |e: ProtocolError| match &e {
            ProtocolError::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                ConnectError::NoAnswer { what: request.name(), secs: self.timeout.as_secs() }
            }
            _ => ConnectError::Protocol(e),
        };
        if deadline.is_none() {
            self.stream
                .set_read_timeout(None)
                .and_then(|_| self.stream.set_write_timeout(None))
                .map_err(|e| ConnectError::Protocol(e.into()))?;
        }
        let mut io = DeadlineStream { stream: &self.stream, deadline };
        write_frame(&mut io, request).map_err(no_answer)?;
        read_frame(&mut io).map(super::guest_text::sanitize_response).map_err(no_answer)
    }

    /// Sends a request whose only good answer is `Ok`.
    pub fn call_ok(&mut self, what: &str, request: &Request) -> Result<(), ConnectError> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(ConnectError::Refused { what: what.into(), message }),
            other => Err(ConnectError::Unexpected { what: what.into(), answer: Box::new(other) }),
        }
    }
}

/// A socket whose every read and write must finish by one deadline (`None`: no deadline;
/// the caller then has cleared the socket's timeouts). Each call sets the socket's timeout
/// to the time left, so the deadline holds for a whole exchange of many reads.
struct DeadlineStream<'a> {
    stream: &'a UnixStream,
    deadline: Option<std::time::Instant>,
}

impl DeadlineStream<'_> {
    fn arm(&self, set: impl Fn(&UnixStream, Option<Duration>) -> io::Result<()>) -> io::Result<()> {
        let Some(deadline) = self.deadline else { return Ok(()) };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // A zero timeout would mean "none": at least a millisecond.
        set(self.stream, Some(left.max(Duration::from_millis(1))))
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(UnixStream::set_read_timeout)?;
        (&mut &*self.stream).read(buf)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(UnixStream::set_write_timeout)?;
        (&mut &*self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Attaches one stdio stream of process `id` (the agent has answered already); the
/// returned socket then carries raw bytes.
pub fn attach_stream(socket: &Path, id: &str, kind: StreamKind, handshake_timeout: Duration) -> Result<UnixStream, ConnectError> {
    let mut stream = connect_ready_port(socket, AGENT_STREAM_PORT, handshake_timeout, READY_PATIENCE)?;
    write_frame(&mut stream, &StreamHello { version: PROTOCOL_VERSION, id: id.into(), kind })?;
    let what = format!("the {kind:?} stream of {id}");
    match super::guest_text::sanitize_response(read_frame(&mut stream)?) {
        Response::Ok => Ok(stream),
        Response::Error { message } => Err(ConnectError::Refused { what, message }),
        other => Err(ConnectError::Unexpected { what, answer: Box::new(other) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A fake VMM socket: answers each connection with `answer` (or closes it).
    fn fake_vmm(answers: Vec<Option<&'static str>>) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("vsock.sock")).unwrap();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut conn, _) = listener.accept().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(conn.try_clone().unwrap()).read_line(&mut line).unwrap();
                requests.push(line);
                if let Some(a) = answer {
                    // A client that refused the answer may have closed already: the bytes
                    // after it then meet a closed socket, which is fine.
                    let _ = conn.write_all(a.as_bytes()).and_then(|()| conn.write_all(b"payload"));
                }
            }
            requests
        });
        (dir, handle)
    }

    #[test]
    fn handshake_ok_then_raw_bytes() {
        let (dir, vmm) = fake_vmm(vec![Some("OK 1073741824\n")]);
        let mut s = connect_port(&dir.path().join("vsock.sock"), 1024, Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"payload");
        assert_eq!(vmm.join().unwrap(), ["CONNECT 1024\n"]);
    }

    #[test]
    fn closed_or_missing_is_retryable_and_garbage_is_not() {
        let (dir, vmm) = fake_vmm(vec![None, Some("NOPE\n")]);
        let sock = dir.path().join("vsock.sock");
        assert!(matches!(connect_port(&sock, 1025, Duration::from_secs(5)), Err(ConnectError::NotYet { .. })));
        assert!(matches!(connect_port(&sock, 1025, Duration::from_secs(5)), Err(ConnectError::BadAnswer { .. })));
        vmm.join().unwrap();
        assert!(matches!(connect_port(&dir.path().join("absent"), 1024, Duration::from_secs(1)), Err(ConnectError::NotYet { .. })));
    }

    #[test]
    fn a_ready_agent_is_retried_when_the_guest_was_slow_but_not_forever() {
        // The VMM closed the first two connections (the guest did not answer in time).
        let (dir, vmm) = fake_vmm(vec![None, None, Some("OK 1073741825\n")]);
        let sock = dir.path().join("vsock.sock");
        let mut s = connect_ready_port(&sock, 1025, Duration::from_secs(5), Duration::from_secs(10)).unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"payload");
        assert_eq!(vmm.join().unwrap().len(), 3);
        let start = std::time::Instant::now();
        let gone = connect_ready_port(&dir.path().join("absent"), 1025, Duration::from_secs(1), Duration::from_millis(300));
        assert!(matches!(gone, Err(ConnectError::NotYet { .. })), "gives up: {gone:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_agent_error_cannot_send_escape_sequences_to_the_terminal() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let mut client = ControlClient { stream: host, timeout: Duration::from_secs(5) };
        let fake = std::thread::spawn(move || {
            let _: Request = read_frame(&mut agent).unwrap();
            write_frame(&mut agent, &Response::Error { message: "no\x1b]0;owned\x07\x1b[2J\nvmrun: all good".into() }).unwrap();
        });
        let err = client.call_ok("ping", &Request::Ping).unwrap_err().to_string();
        fake.join().unwrap();
        assert!(!err.chars().any(char::is_control), "{err:?}");
        assert_eq!(err, "agent refused ping: no]0;owned[2J vmrun: all good");
    }

    #[test]
    fn an_answer_trickled_a_byte_at_a_time_misses_the_whole_request_deadline() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let mut client = ControlClient { stream: host, timeout: Duration::from_millis(300) };
        let trickle = std::thread::spawn(move || {
            let _: Request = read_frame(&mut agent).unwrap();
            let body = serde_json::to_vec(&Response::Ok).unwrap();
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            // One byte per 100 ms: every read is well inside 300 ms, the whole is not.
            for byte in frame {
                if agent.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = std::time::Instant::now();
        let err = client.call(&Request::Ping).unwrap_err();
        assert!(matches!(err, ConnectError::NoAnswer { what: "ping", .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(900), "took {:?}", start.elapsed());
        drop(client);
        trickle.join().unwrap();
    }

    #[test]
    fn a_request_the_agent_never_answers_fails_at_its_deadline_but_wait_does_not() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let mut client = ControlClient { stream: host, timeout: Duration::from_millis(300) };
        let start = std::time::Instant::now();
        let err = client.call(&Request::Ping).unwrap_err();
        assert!(matches!(err, ConnectError::NoAnswer { what: "ping", .. }), "{err:?}");
        assert!(err.to_string().contains("did not answer ping"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        // The agent read the ping; `Wait` blocks until the agent answers, however late.
        let _: Request = read_frame(&mut agent).unwrap();
        let answer = std::thread::spawn(move || {
            let _: Request = read_frame(&mut agent).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            write_frame(&mut agent, &Response::Ok).unwrap();
        });
        assert_eq!(client.call(&Request::Wait { id: "c".into() }).unwrap(), Response::Ok);
        answer.join().unwrap();
    }
}
