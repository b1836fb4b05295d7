//! `tcp-probe`: TCP throughput and request/response latency between two endpoints, small
//! enough to copy into a busybox container (std and serde_json only; built static, it runs
//! in a guest with no libraries: see `bench/scripts/net-throughput`).
//!
//! ```text
//! tcp-probe server --port P [--bind ADDR]
//! tcp-probe client --addr HOST:P --mode send|recv|rr --seconds S [--size N] [--wait S]
//! ```
//!
//! The server accepts connections until killed, each on its own thread. A client opens one
//! connection and names what it wants in an 8-byte header (a mode byte, three zero bytes,
//! the size as a little-endian u32):
//!
//! - `send`: the client writes N-byte buffers (default 128 KiB) for S seconds and shuts its
//!   side down; the server sinks them and answers with the count it read (u64, LE). The
//!   time runs until that answer, so bytes still in flight are counted as they land.
//! - `recv`: the server writes N-byte buffers until the client, having read for S seconds,
//!   closes the connection.
//! - `rr`: the client writes N bytes (default 1), the server echoes them, the client reads
//!   them back: one round trip, timed, again and again for S seconds (`TCP_NODELAY` on both).
//!
//! The client prints one JSON line: `{"mode","bytes","seconds","gbit_s"}` for a stream;
//! `{"mode","size","count","seconds","median_us","p99_us","min_us","max_us","mean_us"}` for
//! request/response.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

const USAGE: &str = "usage:
  tcp-probe server --port P [--bind ADDR]
  tcp-probe client --addr HOST:PORT --mode send|recv|rr --seconds S [--size N] [--wait S]

server: accepts connections until killed; a client's header picks the mode (sink, source, echo).
client: --size is the buffer per write for send/recv (default 131072) and the request and
        answer size for rr (default 1); --wait retries the connection for up to S seconds
        (default 0: one attempt). Prints one JSON line.";

const MODE_SEND: u8 = b'S';
const MODE_RECV: u8 = b'R';
const MODE_RR: u8 = b'E';
/// The largest request size (and stream buffer) accepted: 16 MiB.
const MAX_SIZE: u32 = 16 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => Options::parse(&args[1..]).and_then(|o| server(&o)),
        Some("client") => Options::parse(&args[1..]).and_then(|o| client(&o)),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("a subcommand is needed\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcp-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Options {
    port: Option<u16>,
    bind: Option<String>,
    addr: Option<String>,
    mode: Option<String>,
    seconds: Option<f64>,
    size: Option<u32>,
    wait: f64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let number = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
            match flag.as_str() {
                "--port" => o.port = Some(value()?.parse().map_err(|e| format!("--port: {e}"))?),
                "--bind" => o.bind = Some(value()?.clone()),
                "--addr" => o.addr = Some(value()?.clone()),
                "--mode" => o.mode = Some(value()?.clone()),
                "--seconds" => o.seconds = Some(number(value()?)?),
                "--wait" => o.wait = number(value()?)?,
                "--size" => {
                    let v = value()?;
                    let size: u32 = v.parse().map_err(|e| format!("--size {v}: {e}"))?;
                    if size == 0 || size > MAX_SIZE {
                        return Err(format!("--size {size}: must be 1 to {MAX_SIZE}"));
                    }
                    o.size = Some(size);
                }
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        Ok(o)
    }
}

fn server(o: &Options) -> Result<(), String> {
    let port = o.port.ok_or("server: --port is needed")?;
    let addr = format!("{}:{port}", o.bind.as_deref().unwrap_or("0.0.0.0"));
    let listener = TcpListener::bind(&addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    eprintln!("tcp-probe: listening on {addr}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    if let Err(e) = serve(stream) {
                        eprintln!("tcp-probe: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => eprintln!("tcp-probe: accept on {addr}: {e}"),
        }
    }
    Ok(())
}

/// One connection, in the mode its header names.
fn serve(mut stream: TcpStream) -> Result<(), String> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).map_err(|e| format!("reading the header: {e}"))?;
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if size == 0 || size > MAX_SIZE {
        return Err(format!("size {size} in the header: must be 1 to {MAX_SIZE}"));
    }
    let mut buf = vec![0u8; size as usize];
    match header[0] {
        MODE_SEND => {
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("sinking: {e}")),
                }
            }
            stream.write_all(&total.to_le_bytes()).map_err(|e| format!("answering the count: {e}"))
        }
        MODE_RECV => {
            fill(&mut buf);
            loop {
                if let Err(e) = stream.write_all(&buf) {
                    // The client closing the connection is how a stream ends.
                    return match e.kind() {
                        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => Ok(()),
                        _ => Err(format!("sourcing: {e}")),
                    };
                }
            }
        }
        MODE_RR => {
            stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
            loop {
                match stream.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => return Ok(()),
                    Err(e) => return Err(format!("reading a request: {e}")),
                }
                stream.write_all(&buf).map_err(|e| format!("answering a request: {e}"))?;
            }
        }
        other => Err(format!("unknown mode byte {other:#04x} in the header")),
    }
}

/// Bytes that do not compress to nothing (no link here compresses, but a pattern is cheap).
fn fill(buf: &mut [u8]) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Connects to `addr`, retrying every 100 ms for up to `wait` seconds.
fn connect(addr: &str, wait: f64) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs_f64(wait.max(0.0));
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(format!("connecting to {addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn client(o: &Options) -> Result<(), String> {
    let addr = o.addr.as_deref().ok_or("client: --addr is needed")?;
    let mode = o.mode.as_deref().ok_or("client: --mode is needed (send, recv or rr)")?;
    let seconds = o.seconds.ok_or("client: --seconds is needed")?;
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("--seconds {seconds}: must be positive"));
    }
    let duration = Duration::from_secs_f64(seconds);
    let (mode_byte, default_size) = match mode {
        "send" => (MODE_SEND, 128 << 10),
        "recv" => (MODE_RECV, 128 << 10),
        "rr" => (MODE_RR, 1),
        other => return Err(format!("--mode {other}: must be send, recv or rr")),
    };
    let size = o.size.unwrap_or(default_size);
    let mut stream = connect(addr, o.wait)?;
    if mode_byte == MODE_RR {
        stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    }
    let mut header = [mode_byte, 0, 0, 0, 0, 0, 0, 0];
    header[4..].copy_from_slice(&size.to_le_bytes());
    stream.write_all(&header).map_err(|e| format!("writing the header to {addr}: {e}"))?;
    let mut buf = vec![0u8; size as usize];
    let line = match mode_byte {
        MODE_SEND => {
            fill(&mut buf);
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < duration {
                stream.write_all(&buf).map_err(|e| format!("sending to {addr}: {e}"))?;
                sent += buf.len() as u64;
            }
            stream.shutdown(Shutdown::Write).map_err(|e| format!("shutting the connection to {addr} down: {e}"))?;
            let mut count = [0u8; 8];
            stream.read_exact(&mut count).map_err(|e| format!("reading the server's count from {addr}: {e}"))?;
            let secs = start.elapsed().as_secs_f64();
            let received = u64::from_le_bytes(count);
            if received != sent {
                return Err(format!("sent {sent} bytes to {addr}, the server counted {received}"));
            }
            json!({"mode": "send", "bytes": sent, "seconds": secs, "gbit_s": gbit_s(sent, secs)})
        }
        MODE_RECV => {
            let start = Instant::now();
            let mut got = 0u64;
            while start.elapsed() < duration {
                match stream.read(&mut buf) {
                    Ok(0) => return Err(format!("{addr} closed the stream after {got} bytes")),
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("receiving from {addr}: {e}")),
                }
            }
            let secs = start.elapsed().as_secs_f64();
            json!({"mode": "recv", "bytes": got, "seconds": secs, "gbit_s": gbit_s(got, secs)})
        }
        _ => {
            let mut answer = vec![0u8; size as usize];
            let mut rtts_ns: Vec<u64> = Vec::with_capacity(1 << 16);
            let start = Instant::now();
            while start.elapsed() < duration {
                let t = Instant::now();
                stream.write_all(&buf).map_err(|e| format!("writing a request to {addr}: {e}"))?;
                stream.read_exact(&mut answer).map_err(|e| format!("reading an answer from {addr}: {e}"))?;
                rtts_ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            let secs = start.elapsed().as_secs_f64();
            if rtts_ns.is_empty() {
                return Err(format!("no round trip to {addr} completed"));
            }
            let count = rtts_ns.len();
            let mean = rtts_ns.iter().map(|&n| n as f64).sum::<f64>() / count as f64;
            rtts_ns.sort_unstable();
            let us = |ns: u64| ns as f64 / 1000.0;
            let at = |q: f64| rtts_ns[((count - 1) as f64 * q).round() as usize];
            json!({
                "mode": "rr", "size": size, "count": count, "seconds": secs,
                "median_us": us(at(0.5)), "p99_us": us(at(0.99)),
                "min_us": us(rtts_ns[0]), "max_us": us(rtts_ns[count - 1]), "mean_us": mean / 1000.0,
            })
        }
    };
    println!("{line}");
    Ok(())
}

fn gbit_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}
