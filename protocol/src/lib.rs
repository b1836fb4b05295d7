//! The host ↔ guest-agent protocol.
//!
//! Transport: AF_VSOCK stream connections (on the host, through the VMM's Unix-socket
//! vsock backend). Two agent ports:
//!
//! * [`AGENT_CONTROL_PORT`]: request/response. The first exchange on every connection is
//!   [`Request::Hello`] / [`Response::Hello`], which checks [`PROTOCOL_VERSION`]. After it,
//!   each request gets exactly one response, in order. A connection may block in
//!   [`Request::Wait`], so clients open one connection per concurrent concern.
//! * [`AGENT_STREAM_PORT`]: one connection per stdio stream of one process. The host
//!   sends a single [`StreamHello`] frame, the agent answers with one [`Response`] frame
//!   (`Ok` or `Error`), and from then on the connection carries raw bytes. End of input
//!   is a half-close (shutdown of the write side).
//!
//! Every message is a frame: a 4-byte big-endian length followed by that many bytes of
//! JSON. Frames larger than [`MAX_MESSAGE_SIZE`] are refused on both sides, before any
//! allocation of that size.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 5;
/// Largest frame payload either side sends or accepts.
pub const MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Agent port for requests and responses.
pub const AGENT_CONTROL_PORT: u32 = 1024;
/// Agent port for per-process stdio streams.
pub const AGENT_STREAM_PORT: u32 = 1025;

/// A request from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First request of every control connection.
    Hello { version: u32 },
    /// Liveness check; answered with `Ok`.
    Ping,
    /// Mount the virtio-fs share `tag` at [`share_dir`]`(tag)`, where root filesystems
    /// ([`RootfsSource::Share`]) and a container's bind mounts find its directories.
    MountShare { tag: String },
    /// Mount a root filesystem that processes can be chrooted into and containers use.
    MountRootfs(RootfsSpec),
    /// Unmount root filesystem `id` (every mount under it, detached: containers that still
    /// use it keep their copy until they end); answered with `Ok`. A container of a pod
    /// that is deleted gives its root back this way.
    UnmountRootfs { id: String },
    /// Start a process. Its streams must already be attached on the stream port.
    StartProcess(ProcessSpec),
    /// Send a signal to a started process; with `all`, to every process in the cgroup of
    /// container `id` (runc's `kill --all`).
    Signal {
        id: String,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Set the window size of a process's terminal.
    ResizeTty { id: String, rows: u16, cols: u16 },
    /// Block until the process has exited, then answer `Exited`.
    Wait { id: String },
    /// Create an OCI container on a mounted rootfs from its runtime spec. Its init
    /// waits at the exec barrier (OCI state `created`) until [`Request::StartContainer`].
    /// Its streams must already be attached on the stream port under the container id.
    CreateContainer(ContainerSpec),
    /// Release a created container's exec barrier; answered with `Started`. `Wait`,
    /// `Signal` and `ResizeTty` then work with the container id as the process id.
    StartContainer { id: String },
    /// Start a process in a created or running container (runc's `exec`): it joins the
    /// namespaces and cgroup of the container's init and gets the container's seccomp
    /// profile. Its streams must already be attached under `id`; `Wait`, `Signal` and
    /// `ResizeTty` then work with `id`. Answered with `Started`.
    ExecProcess(ExecSpec),
    /// The processes of a container (every process in its cgroup); answered with
    /// `Processes`.
    ListProcesses { id: String },
    /// Freeze (`frozen`) or thaw every process of a container (its cgroup's
    /// `cgroup.freeze`); answered with `Ok` once the cgroup says it is done.
    Freeze { id: String, frozen: bool },
    /// Change a container's resources (runc's `update`): `resources_json` is an OCI
    /// `linux.resources` object; what it names is written to the container's cgroup, the rest
    /// stays. Answered with `Ok`.
    UpdateResources { id: String, resources_json: String },
    /// A container's resource usage (its cgroup's counters); answered with `Stats`.
    Stats { id: String },
    /// Forget container `id` (runc's `delete` inside the guest): whatever of it still runs
    /// is killed (SIGKILL to its cgroup, or to its init without one), its cgroup is
    /// removed and its id can be used again. A container of a pod that is deleted ends
    /// this way before it gives its root back. Answered with `Ok`, also for an id the
    /// agent does not know (nothing to delete).
    DeleteContainer { id: String },
    /// Set up the guest's network as the caller's network namespace had it: each interface
    /// (found by its MAC) renamed, its MTU set, brought up with its addresses; then the
    /// routes. Answered with `Ok`.
    ConfigureNetwork(NetworkSpec),
    /// Sync filesystems and power the VM off.
    Shutdown,
}

impl Request {
    /// The request's name, for logs and error messages (`mount-rootfs`, `wait`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Ping => "ping",
            Request::Shutdown => "shutdown",
            Request::MountShare { .. } => "mount-share",
            Request::MountRootfs(_) => "mount-rootfs",
            Request::UnmountRootfs { .. } => "unmount-rootfs",
            Request::StartProcess(_) => "start-process",
            Request::Signal { .. } => "signal",
            Request::ResizeTty { .. } => "resize-tty",
            Request::CreateContainer(_) => "create-container",
            Request::StartContainer { .. } => "start-container",
            Request::Wait { .. } => "wait",
            Request::ExecProcess(_) => "exec-process",
            Request::ListProcesses { .. } => "list-processes",
            Request::Freeze { .. } => "freeze",
            Request::UpdateResources { .. } => "update-resources",
            Request::Stats { .. } => "stats",
            Request::DeleteContainer { .. } => "delete-container",
            Request::ConfigureNetwork(_) => "configure-network",
        }
    }
}

/// A response from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        agent_version: String,
    },
    Ok,
    Started {
        pid: u32,
    },
    /// A container was created; `pid` is its init as the guest sees it.
    Created {
        pid: u32,
        warnings: Vec<String>,
    },
    Exited(ExitStatus),
    /// The processes of a container ([`Request::ListProcesses`]).
    Processes {
        processes: Vec<ProcessInfo>,
    },
    /// A container's resource usage ([`Request::Stats`]).
    Stats(CgroupStats),
    Error {
        message: String,
    },
}

/// Longest command line of a [`ProcessInfo`] the agent sends (longer ones are cut).
pub const MAX_PROCESS_CMD_LEN: usize = 4096;
/// Most processes one [`Response::Processes`] lists.
pub const MAX_LISTED_PROCESSES: usize = 1024;

/// One process of a container, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid in the guest (the agent's pid namespace).
    pub pid: u32,
    pub ppid: u32,
    /// Real uid, in the guest's initial user namespace.
    pub uid: u32,
    /// User plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// The command line, arguments separated by spaces (the name in brackets when empty).
    pub cmd: String,
}

/// A container's resource usage, from its cgroup (v2) in the guest. A limit of `None` is
/// "max" (no limit); a counter the kernel does not offer is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// CPU time, microseconds (`cpu.stat`): all, in user mode, in the kernel.
    pub cpu_usage_us: u64,
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
    /// Periods throttled by `cpu.max`, and the time throttled (microseconds).
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_us: u64,
    /// Memory in use, bytes (`memory.current`), its limit (`memory.max`) and its peak
    /// (`memory.peak`).
    pub memory_usage: u64,
    pub memory_limit: Option<u64>,
    pub memory_peak: u64,
    /// Swap in use (`memory.swap.current`) and its limit.
    pub swap_usage: u64,
    pub swap_limit: Option<u64>,
    /// Times a process of the container was killed by the OOM killer.
    pub oom_kills: u64,
    /// Times the memory limit was hit (`memory.events` max).
    pub memory_limit_hits: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
}

/// Most interfaces a [`NetworkSpec`] configures.
pub const MAX_NETWORK_INTERFACES: usize = 16;
/// Most addresses of one [`InterfaceSpec`].
pub const MAX_INTERFACE_ADDRESSES: usize = 64;
/// Most routes a [`NetworkSpec`] adds.
pub const MAX_NETWORK_ROUTES: usize = 256;
/// Longest interface name (IFNAMSIZ without its NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// The guest's network, as the caller's namespace had it ([`Request::ConfigureNetwork`]).
/// At most [`MAX_NETWORK_INTERFACES`] interfaces and [`MAX_NETWORK_ROUTES`] routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub interfaces: Vec<InterfaceSpec>,
    /// Added in this order, except that routes without a gateway come before routes
    /// through one (whose gateway they may make reachable).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One guest interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSpec {
    /// `aa:bb:cc:dd:ee:ff`: the guest interface with this MAC (the VMM gives its
    /// virtio-net device the MAC of the namespace's interface) is the one configured.
    pub mac: String,
    /// Its new name (at most [`MAX_INTERFACE_NAME_LEN`] bytes), e.g. `eth0`.
    pub name: String,
    pub mtu: u32,
    /// `10.0.0.2/24`, `fd00::2/64`; at most [`MAX_INTERFACE_ADDRESSES`].
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// `10.1.0.0/16`, `fd01::/64`; `None` is the default route (of the gateway's family).
    pub destination: Option<String>,
    pub gateway: Option<String>,
    /// The [`InterfaceSpec::name`] of the interface it goes out of.
    pub interface: String,
    /// Path MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Preferred source address.
    #[serde(default)]
    pub source: Option<String>,
    /// The destination is on the link (no gateway needed).
    #[serde(default)]
    pub scope_link: bool,
}

/// A process to start in a container ([`Request::ExecProcess`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container to join.
    pub container: String,
    /// Caller-chosen unique name of the new process (streams and later requests use it).
    pub id: String,
    /// The OCI `process` object (runc's `exec --process` file) as JSON text; its
    /// `terminal` chooses a single `Tty` stream.
    pub process_json: String,
    /// An stdin stream is attached (otherwise stdin is /dev/null).
    pub stdin: bool,
    #[serde(default)]
    pub tty_size: Option<TtySize>,
}

/// Where the agent mounts virtio-fs shares: share `tag` is at `SHARES_DIR/tag`.
pub const SHARES_DIR: &str = "/run/palisade/shares";
/// Longest virtio-fs tag (the device's config space field).
pub const MAX_SHARE_TAG_LEN: usize = 36;

/// Whether `tag` is a share tag both sides accept: 1 to [`MAX_SHARE_TAG_LEN`] letters,
/// digits, `-`, `_` or `.`, and not `.` or `..` (it names a directory in the guest).
pub fn valid_share_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_SHARE_TAG_LEN
        && tag != "."
        && tag != ".."
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `path` is a path inside a share: relative, `/`-separated, without `.`, `..` or
/// empty components, without NUL; `""` is the share's root.
pub fn valid_share_path(path: &str) -> bool {
    path.is_empty() || (!path.contains('\0') && path.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// The guest directory of share `tag`.
pub fn share_dir(tag: &str) -> String {
    format!("{SHARES_DIR}/{tag}")
}

/// The guest path of `path` inside share `tag`: what a container spec's bind mount names
/// as its source to mount a shared host directory or file.
pub fn share_path(tag: &str, path: &str) -> String {
    if path.is_empty() {
        share_dir(tag)
    } else {
        format!("{SHARES_DIR}/{tag}/{path}")
    }
}

/// What a root filesystem is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootfsSource {
    /// A filesystem image on a guest block device.
    Device {
        /// Guest block device, e.g. `/dev/vda`.
        device: String,
        /// Filesystem type of the device: `erofs` or `ext4`.
        fstype: String,
    },
    /// A directory of a mounted virtio-fs share ([`Request::MountShare`]): a host directory,
    /// live. Writes go to the host.
    Share {
        tag: String,
        /// Inside the share ([`valid_share_path`]); `""` is the share's root.
        path: String,
    },
}

/// A root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Name processes refer to in [`ProcessSpec::rootfs`].
    pub id: String,
    pub source: RootfsSource,
    /// Writable. A device gets an overlay with a tmpfs upper layer over its read-only
    /// filesystem; a share is written through to the host. Otherwise the root is read-only.
    pub writable: bool,
    /// Also mount /proc, the guest's /dev and a /tmp tmpfs inside it, for processes
    /// chrooted into it ([`Request::StartProcess`]). Containers get theirs from their
    /// spec and must not inherit these: leave it off for a container's root.
    #[serde(default = "default_true")]
    pub process_mounts: bool,
}

fn default_true() -> bool {
    true
}

/// What to run, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Caller-chosen unique name of the process (streams and later requests use it).
    pub id: String,
    /// argv; `args[0]` is looked up in `PATH` of `env` when it has no slash.
    pub args: Vec<String>,
    /// Environment as `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Run on a pseudo-terminal; a single `Tty` stream carries both directions.
    pub terminal: bool,
    /// An stdin stream is attached (otherwise stdin is /dev/null).
    pub stdin: bool,
    /// Id of a mounted [`RootfsSpec`] to chroot into; `None` runs in the guest's root.
    pub rootfs: Option<String>,
    /// Initial window size of the terminal (with `terminal`), so the process sees the
    /// right size from its first instruction; later changes use [`Request::ResizeTty`].
    #[serde(default)]
    pub tty_size: Option<TtySize>,
}

/// An OCI container to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Caller-chosen unique name (streams, `Wait`, `Signal` use it).
    pub id: String,
    /// The OCI runtime spec, config.json as text (`root.path` is ignored: the root is
    /// `rootfs`). Must fit in a frame with the rest: [`MAX_MESSAGE_SIZE`].
    pub spec_json: String,
    /// Id of a mounted [`RootfsSpec`] that becomes the container's root.
    pub rootfs: String,
    /// An stdin stream is attached (otherwise stdin is /dev/null). A terminal comes
    /// from `process.terminal` of the spec, and uses a single `Tty` stream.
    pub stdin: bool,
    #[serde(default)]
    pub tty_size: Option<TtySize>,
}

/// A terminal window size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (its container's cgroup counted an `oom_kill`).
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitStatus {
    /// The status a shell (and `docker run`) reports: the code, or 128 + signal. The values
    /// come from the guest: a code outside 0–255 or a signal outside 1–127 (no process can
    /// have either) is reported as 255 rather than trusted (or overflowing).
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) if (0..=255).contains(&code) => code,
            (None, Some(signal)) if (1..=127).contains(&signal) => 128 + signal,
            _ => 255,
        }
    }
}

/// Which stdio stream a stream-port connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// Both directions of a terminal.
    Tty,
}

/// First (and only) frame the host sends on a stream-port connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHello {
    pub version: u32,
    /// [`ProcessSpec::id`] of the process this stream belongs to.
    pub id: String,
    pub kind: StreamKind,
}

/// Errors of framing and decoding.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("agent protocol: i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("agent protocol: frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("agent protocol: malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("agent protocol: connection closed by peer")]
    Closed,
    #[error("agent protocol: version mismatch (ours {ours}, theirs {theirs})")]
    Version { ours: u32, theirs: u32 },
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, message: &T) -> Result<(), ProtocolError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_MESSAGE_SIZE {
        return Err(ProtocolError::TooLarge { size: body.len(), max: MAX_MESSAGE_SIZE });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. A clean end of stream before the first byte is [`ProtocolError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let size = u32::from_be_bytes(len) as usize;
    if size > MAX_MESSAGE_SIZE {
        return Err(ProtocolError::TooLarge { size, max: MAX_MESSAGE_SIZE });
    }
    let mut body = vec![0u8; size];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: T) {
        let mut buf = Vec::new();
        write_frame(&mut buf, &m).unwrap();
        let back: T = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn messages_roundtrip() {
        roundtrip(Request::Hello { version: PROTOCOL_VERSION });
        roundtrip(Request::StartProcess(ProcessSpec {
            id: "p1".into(),
            args: vec!["echo".into(), "hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            terminal: false,
            stdin: true,
            rootfs: Some("root".into()),
            tty_size: Some(TtySize { rows: 24, cols: 80 }),
        }));
        roundtrip(Request::CreateContainer(ContainerSpec {
            id: "c1".into(),
            spec_json: "{\"ociVersion\":\"1.0.2\"}".into(),
            rootfs: "root".into(),
            stdin: false,
            tty_size: None,
        }));
        roundtrip(Request::StartContainer { id: "c1".into() });
        roundtrip(Request::ExecProcess(ExecSpec {
            container: "c1".into(),
            id: "e1".into(),
            process_json: "{\"args\":[\"sh\"],\"cwd\":\"/\"}".into(),
            stdin: true,
            tty_size: None,
        }));
        roundtrip(Request::ListProcesses { id: "c1".into() });
        roundtrip(Request::Freeze { id: "c1".into(), frozen: true });
        roundtrip(Request::UpdateResources { id: "c1".into(), resources_json: "{\"pids\":{\"limit\":5}}".into() });
        roundtrip(Request::Stats { id: "c1".into() });
        roundtrip(Request::DeleteContainer { id: "c1".into() });
        roundtrip(Request::UnmountRootfs { id: "c1".into() });
        roundtrip(Request::ConfigureNetwork(NetworkSpec {
            interfaces: vec![InterfaceSpec {
                mac: "02:00:00:00:00:01".into(),
                name: "eth0".into(),
                mtu: 1400,
                addresses: vec!["10.0.0.2/24".into(), "fd00::2/64".into()],
            }],
            routes: vec![
                RouteSpec {
                    destination: Some("10.0.0.0/24".into()),
                    gateway: None,
                    interface: "eth0".into(),
                    mtu: None,
                    source: Some("10.0.0.2".into()),
                    scope_link: true,
                },
                RouteSpec {
                    destination: None,
                    gateway: Some("10.0.0.1".into()),
                    interface: "eth0".into(),
                    mtu: Some(1300),
                    source: None,
                    scope_link: false,
                },
            ],
        }));
        roundtrip(Response::Stats(CgroupStats { memory_usage: 4096, memory_limit: Some(1 << 20), ..CgroupStats::default() }));
        roundtrip(Response::Processes { processes: vec![ProcessInfo { pid: 7, ppid: 1, uid: 0, cpu_ms: 12, cmd: "sleep 60".into() }] });
        roundtrip(Request::MountShare { tag: "palisade".into() });
        roundtrip(Request::MountRootfs(RootfsSpec {
            id: "root".into(),
            source: RootfsSource::Share { tag: "palisade".into(), path: "root".into() },
            writable: true,
            process_mounts: false,
        }));
        roundtrip(Request::MountRootfs(RootfsSpec {
            id: "root".into(),
            source: RootfsSource::Device { device: "/dev/vda".into(), fstype: "erofs".into() },
            writable: false,
            process_mounts: true,
        }));
        roundtrip(Response::Created { pid: 42, warnings: vec!["w".into()] });
        roundtrip(Response::Exited(ExitStatus { code: None, signal: Some(9), oom_killed: false }));
        roundtrip(StreamHello { version: 1, id: "p1".into(), kind: StreamKind::Stdout });
    }

    #[test]
    fn configure_network_is_named_and_optional_fields_default() {
        let request = Request::ConfigureNetwork(NetworkSpec::default());
        assert_eq!(request.name(), "configure-network");
        let json = r#"{"type":"configure_network","interfaces":[{"mac":"02:00:00:00:00:01","name":"eth0","mtu":1500}],
            "routes":[{"destination":null,"gateway":"10.0.0.1","interface":"eth0"}]}"#;
        let Request::ConfigureNetwork(spec) = serde_json::from_str(json).unwrap() else { panic!("not configure_network") };
        assert!(spec.interfaces[0].addresses.is_empty());
        assert_eq!(
            spec.routes[0],
            RouteSpec {
                destination: None,
                gateway: Some("10.0.0.1".into()),
                interface: "eth0".into(),
                mtu: None,
                source: None,
                scope_link: false,
            }
        );
    }

    #[test]
    fn share_tags_and_paths_stay_inside_their_directory() {
        assert!(valid_share_tag("palisade") && valid_share_tag("a.b-c_1") && valid_share_tag(&"t".repeat(36)));
        for bad in ["", ".", "..", "a/b", "a\0", "x y", &"t".repeat(37)] {
            assert!(!valid_share_tag(bad), "{bad:?}");
        }
        assert!(valid_share_path("") && valid_share_path("root") && valid_share_path("volumes/0"));
        for bad in ["/", "/etc", "..", "a/../b", "a//b", "a/", "./a", "a\0b"] {
            assert!(!valid_share_path(bad), "{bad:?}");
        }
        assert_eq!(share_path("palisade", "volumes/1"), "/run/palisade/shares/palisade/volumes/1");
        assert_eq!(share_path("palisade", ""), share_dir("palisade"));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let mut buf = ((MAX_MESSAGE_SIZE + 1) as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<_, Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [&b"not json"[..], b"{\"type\":\"nope\"}", b"{\"type\":\"signal\"}", b"\xff\xfe"] {
            let mut buf = (body.len() as u32).to_be_bytes().to_vec();
            buf.extend_from_slice(body);
            let err = read_frame::<_, Request>(&mut buf.as_slice()).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        assert!(matches!(read_frame::<_, Request>(&mut &b""[..]), Err(ProtocolError::Closed)));
        assert!(matches!(read_frame::<_, Request>(&mut &b"\0\0"[..]), Err(ProtocolError::Io(_))));
        assert!(matches!(read_frame::<_, Request>(&mut &b"\0\0\0\x10{}"[..]), Err(ProtocolError::Io(_))));
    }

    #[test]
    fn shell_codes_follow_docker() {
        assert_eq!(ExitStatus { code: Some(7), signal: None, oom_killed: false }.shell_code(), 7);
        assert_eq!(ExitStatus { code: None, signal: Some(9), oom_killed: false }.shell_code(), 137);
    }

    #[test]
    fn impossible_statuses_from_a_hostile_agent_are_255_not_an_overflow() {
        let status = |code, signal| ExitStatus { code, signal, oom_killed: false }.shell_code();
        assert_eq!(status(None, Some(i32::MAX)), 255);
        assert_eq!(status(None, Some(i32::MIN)), 255);
        assert_eq!(status(None, Some(0)), 255);
        assert_eq!(status(Some(256), None), 255);
        assert_eq!(status(Some(-1), None), 255);
        assert_eq!(status(None, None), 255);
        assert_eq!(status(None, Some(64)), 192);
    }
}
