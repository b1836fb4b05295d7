//! The stream port: a connection announces which stream of which process it carries
//! with one [`StreamHello`], and waits in the registry until `StartProcess` takes it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use palisade_protocol::{read_frame, write_frame, Response, StreamHello, StreamKind, PROTOCOL_VERSION};

use super::Agent;
use crate::conn::Conn;

/// Attached, not yet used streams by (process id, kind).
#[derive(Default)]
pub struct StreamRegistry {
    waiting: Mutex<HashMap<(String, StreamKind), Conn>>,
}

impl StreamRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, StreamKind), Conn>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the streams `kinds` of process `id`: all of them, or none (naming the first
    /// missing one) so a failed start leaves them for a retry.
    pub fn take_all(&self, id: &str, kinds: &[StreamKind]) -> Result<Vec<Conn>, StreamKind> {
        let mut waiting = self.lock();
        if let Some(missing) = kinds.iter().find(|k| !waiting.contains_key(&(id.to_string(), **k))) {
            return Err(*missing);
        }
        Ok(kinds.iter().filter_map(|k| waiting.remove(&(id.to_string(), *k))).collect())
    }

    /// Drops (closes) every stream of `id` that is still waiting.
    pub fn discard(&self, id: &str) {
        self.lock().retain(|(pid, _), _| pid != id);
    }
}

fn refuse(conn: &mut Conn, message: String) {
    tracing::warn!("stream connection refused: {message}");
    let _ = write_frame(conn, &Response::Error { message });
}

/// Handles one stream-port connection.
pub fn handle(agent: &Agent, mut conn: Conn) {
    let hello: StreamHello = match read_frame(&mut conn) {
        Ok(h) => h,
        Err(e) => return refuse(&mut conn, format!("stream hello: {e}")),
    };
    if hello.version != PROTOCOL_VERSION {
        return refuse(&mut conn, format!("stream hello: protocol version mismatch (agent {PROTOCOL_VERSION}, host {})", hello.version));
    }
    if agent.processes.contains(&hello.id) {
        return refuse(&mut conn, format!("stream {:?} of process {}: the process was already started", hello.kind, hello.id));
    }
    let mut waiting = agent.streams.lock();
    let key = (hello.id.clone(), hello.kind);
    if waiting.contains_key(&key) {
        drop(waiting);
        return refuse(&mut conn, format!("stream {:?} of process {}: already attached", hello.kind, hello.id));
    }
    // Answer before registering, under the lock, so no relay can write first.
    if let Err(e) = write_frame(&mut conn, &Response::Ok) {
        tracing::warn!("stream {:?} of process {}: answering: {e}", hello.kind, hello.id);
        return;
    }
    waiting.insert(key, conn);
}
