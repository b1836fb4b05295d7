//! The host side's `CONNECT <port>\n` handshake, read from a freshly accepted client.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// The longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// A client that has connected to the device's Unix socket and not finished its `CONNECT` line.
pub struct PendingClient {
    pub stream: UnixStream,
    line: Vec<u8>,
    /// When the client is closed if its line is still not complete.
    pub deadline: Instant,
}

/// Progress of reading a `CONNECT` line.
#[derive(Debug, PartialEq, Eq)]
pub enum LineStatus {
    /// More bytes needed; the socket would block.
    Incomplete,
    /// A well-formed request for this guest port.
    Connect(u32),
    /// The client must be closed: it hung up, failed, or sent something that is not a
    /// `CONNECT` line.
    Reject(&'static str),
}

impl PendingClient {
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self { stream, line: Vec::with_capacity(MAX_CONNECT_LINE), deadline }
    }

    /// Reads the line one byte at a time, so that nothing the client sends after the newline is
    /// consumed here: it stays in the socket for the guest.
    pub fn read_line(&mut self) -> LineStatus {
        loop {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return LineStatus::Reject("client hung up before finishing its CONNECT line"),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return match parse_connect_line(&self.line) {
                            Some(port) => LineStatus::Connect(port),
                            None => LineStatus::Reject("malformed CONNECT line"),
                        };
                    }
                    self.line.push(byte[0]);
                    if self.line.len() >= MAX_CONNECT_LINE {
                        return LineStatus::Reject("CONNECT line too long");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return LineStatus::Incomplete,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return LineStatus::Reject("reading the CONNECT line failed"),
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline; a trailing `\r` is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"CONNECT "), None);
        assert_eq!(parse_connect_line(b"CONNECT +5"), None);
        assert_eq!(parse_connect_line(b"CONNECT 5 6"), None);
        assert_eq!(parse_connect_line(b"connect 5"), None);
        assert_eq!(parse_connect_line(b"CONNECT\t5"), None);
        assert_eq!(parse_connect_line(b"\xff\xfe"), None);
    }
}
