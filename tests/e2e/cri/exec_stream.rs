//! CRI's streaming `Exec`, as `kubectl exec` reaches it through kubelet: `Exec` answers with
//! a URL on containerd's streaming server, and the client speaks Kubernetes' websocket
//! protocol `v4.channel.k8s.io` there. Each binary message is a channel byte (1 stdout,
//! 2 stderr, 3 the end) and its bytes; the end is a JSON `metav1.Status` that names the
//! command's exit code.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const PROTOCOL: &str = "v4.channel.k8s.io";

#[derive(Debug, Default)]
pub struct Streamed {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Runs the exec that `url` (CRI's `ExecResponse.url`) stands for, to its end.
pub fn exec(url: &str, timeout: Duration) -> Result<Streamed, String> {
    let ws_url =
        url.strip_prefix("http://").map(|rest| format!("ws://{rest}")).ok_or_else(|| format!("exec URL {url:?} is not http://"))?;
    let mut request = ws_url.as_str().into_client_request().map_err(|e| format!("exec URL {url}: {e}"))?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", PROTOCOL.parse().expect("a header value"));
    let authority = request.uri().authority().map(|a| a.to_string()).ok_or_else(|| format!("exec URL {url} has no host"))?;
    let stream = TcpStream::connect(&authority).map_err(|e| format!("containerd's streaming server {authority}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let (mut socket, response) = tungstenite::client(request, stream).map_err(|e| format!("websocket handshake with {url}: {e}"))?;
    let agreed = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if agreed != PROTOCOL {
        return Err(format!("the streaming server agreed to protocol {agreed:?}, not {PROTOCOL}"));
    }
    let deadline = Instant::now() + timeout;
    let mut out = Streamed::default();
    let mut status = Vec::new();
    loop {
        match socket.read() {
            Ok(Message::Binary(data)) => match data.split_first() {
                Some((1, bytes)) => out.stdout.extend_from_slice(bytes),
                Some((2, bytes)) => out.stderr.extend_from_slice(bytes),
                Some((3, bytes)) => status.extend_from_slice(bytes),
                _ => {}
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("exec stream {url}: {e}")),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "exec stream {url}: not ended within {timeout:?} (stdout so far {:?})",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    out.exit_code = exit_code(&status)?;
    Ok(out)
}

/// The exit code in the status message: `Success` is 0; a `NonZeroExitCode` failure names it
/// as the cause `ExitCode`.
fn exit_code(status: &[u8]) -> Result<i32, String> {
    let text = String::from_utf8_lossy(status);
    let value: serde_json::Value = serde_json::from_slice(status).map_err(|e| format!("the exec's status {text:?}: {e}"))?;
    match value["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if value["reason"] == "NonZeroExitCode" => value["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("the exec's status has no exit code: {text}")),
        _ => Err(format!("the exec failed: {text}")),
    }
}
