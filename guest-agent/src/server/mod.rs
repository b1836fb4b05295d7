//! The protocol server: the shared [`Agent`] state, accept loops for the control and
//! stream ports ([`serve`]), and the handlers ([`control`], [`stream`]).

pub mod control;
pub mod stream;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::{Conn, Listener};
use crate::process::table::ProcessTable;

/// What the agent does on a host-test run versus in a guest.
pub struct AgentConfig {
    /// Mount root filesystems for real (guest) or only record them (tests on a host,
    /// where processes then run in the host's root).
    pub mount_rootfs: bool,
    /// Where root filesystems are mounted.
    pub rootfs_base: PathBuf,
    /// Where virtio-fs shares are mounted (`palisade_protocol::SHARES_DIR` in a guest).
    pub shares_base: PathBuf,
    /// Called after `Shutdown` was answered: sync and reboot in a guest.
    pub on_shutdown: Box<dyn Fn() + Send + Sync>,
}

/// State shared by all connections.
pub struct Agent {
    pub config: AgentConfig,
    pub processes: Arc<ProcessTable>,
    pub streams: stream::StreamRegistry,
    /// Mounted root filesystems: id → directory to chroot into (`None` when not mounted
    /// for real).
    pub rootfs: Mutex<HashMap<String, Option<PathBuf>>>,
    /// Tags of the mounted virtio-fs shares.
    pub shares: Mutex<HashSet<String>>,
}

impl Agent {
    pub fn new(config: AgentConfig, processes: Arc<ProcessTable>) -> Self {
        Agent {
            config,
            processes,
            streams: stream::StreamRegistry::default(),
            rootfs: Mutex::new(HashMap::new()),
            shares: Mutex::new(HashSet::new()),
        }
    }
}

fn accept_loop(agent: Arc<Agent>, listener: Box<dyn Listener>, handler: fn(&Agent, Conn)) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let agent = agent.clone();
                let spawned = std::thread::Builder::new().name("connection".into()).spawn(move || handler(&agent, conn));
                if let Err(e) = spawned {
                    tracing::error!("{}: starting a connection thread: {e}", listener.describe());
                }
            }
            Err(e) => {
                tracing::error!("{}: accept: {e}", listener.describe());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves both ports; the control port on the calling thread (never returns).
pub fn serve(agent: Arc<Agent>, control: Box<dyn Listener>, streams: Box<dyn Listener>) -> std::io::Result<()> {
    let a = agent.clone();
    std::thread::Builder::new().name("stream-accept".into()).spawn(move || accept_loop(a, streams, stream::handle))?;
    accept_loop(agent, control, control::handle);
    Ok(())
}
