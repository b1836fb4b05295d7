//! virtiofsd, the virtio-fs backend the host side starts for a VM: one per VM, one shared
//! directory (containers' roots and volumes live under it), confined in a sandbox of its own,
//! and never outliving whoever started it.
//!
//! The VMM is handed the socket's path (`palisade_vmm::FsConfig`); its jail's supervisor
//! connects to it. virtiofsd serves one connection and exits when it closes, i.e. with its VM.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How virtiofsd lets the guest cache what it reads (its `--cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// Cache while the host does not change the file (virtiofsd's default).
    #[default]
    Auto,
    /// Cache everything: for directories nobody else changes.
    Always,
    /// Cache nothing: every access goes to the host.
    Never,
    /// Cache metadata only.
    Metadata,
}

impl Cache {
    fn as_arg(self) -> &'static str {
        match self {
            Cache::Auto => "auto",
            Cache::Always => "always",
            Cache::Never => "never",
            Cache::Metadata => "metadata",
        }
    }
}

/// How virtiofsd confines itself (its `--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Its own mount, pid and network namespaces, the shared directory as its root
    /// (`pivot_root`), no capabilities it does not need, a seccomp filter.
    Namespace,
    /// `chroot` into the shared directory (for hosts without namespaces).
    Chroot,
    /// None: debugging only.
    None,
}

impl Sandbox {
    fn as_arg(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
            Sandbox::None => "none",
        }
    }
}

/// A host directory or file bound into the shared directory, in virtiofsd's mount namespace
/// only (see [`crate::share`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// An existing empty directory or file inside the shared directory.
    pub target: PathBuf,
    pub read_only: bool,
}

/// How a VM's virtiofsd serves the guest: what `docs/benchmarks.md` measured chose the
/// defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    #[serde(default)]
    pub cache: Cache,
    /// Worker threads (0: requests are served on the queue's thread).
    #[serde(default)]
    pub thread_pool_size: u32,
}

/// The largest worker pool a VM's virtiofsd may be given.
pub const MAX_THREAD_POOL_SIZE: u32 = 64;

// virtiofsd runs in the VM's cgroup, whose pids limit allows it this many tasks: its largest
// thread pool must fit, with its sandbox's two processes and their own threads beside it.
const _: () = assert!(MAX_THREAD_POOL_SIZE as u64 + 16 <= palisade_vmm::jail::cgroup::COMPANION_TASKS);

/// One virtiofsd to start.
#[derive(Debug, Clone)]
pub struct VirtiofsdConfig {
    pub binary: PathBuf,
    pub shared_dir: PathBuf,
    /// Where it listens (the VMM's `FsConfig::socket`).
    pub socket: PathBuf,
    pub read_only: bool,
    pub cache: Cache,
    /// Worker threads (0: requests are served on the queue's thread).
    pub thread_pool_size: u32,
    pub sandbox: Sandbox,
    /// Where its stderr goes (`None`: nowhere).
    pub log: Option<PathBuf>,
    /// Made in a mount namespace of its own before it starts; none of them is visible to
    /// the caller, and they vanish with virtiofsd.
    pub binds: Vec<Bind>,
}

impl VirtiofsdConfig {
    /// The defaults for a VM's shared directory: namespace sandbox, `auto` cache, no pool.
    pub fn new(binary: impl Into<PathBuf>, shared_dir: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        let tuning = Tuning::default();
        VirtiofsdConfig {
            binary: binary.into(),
            shared_dir: shared_dir.into(),
            socket: socket.into(),
            read_only: false,
            cache: tuning.cache,
            thread_pool_size: tuning.thread_pool_size,
            sandbox: Sandbox::Namespace,
            log: None,
            binds: Vec::new(),
        }
    }

    /// virtiofsd's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--shared-dir".into(),
            self.shared_dir.clone().into(),
            "--socket-path".into(),
            self.socket.clone().into(),
            "--sandbox".into(),
            self.sandbox.as_arg().into(),
            "--cache".into(),
            self.cache.as_arg().into(),
            "--thread-pool-size".into(),
            self.thread_pool_size.to_string().into(),
            "--log-level".into(),
            "error".into(),
        ];
        if self.read_only {
            args.push("--readonly".into());
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error("shared directory {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("virtiofsd {path}: {source} (scripts/setup installs it)")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("virtiofsd for {dir}: bind {target}: not inside the shared directory")]
    BindOutside { dir: PathBuf, target: PathBuf },
    #[error("virtiofsd for {dir}: binding the shared files in its own mount namespace: {source}")]
    Binds { dir: PathBuf, source: std::io::Error },
    #[error("virtiofsd log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("virtiofsd for {dir} exited before it listened ({status}){said}")]
    Exited { dir: PathBuf, status: std::process::ExitStatus, said: String },
    #[error("virtiofsd for {dir} did not create its socket {socket} within {secs} s")]
    NoSocket { dir: PathBuf, socket: PathBuf, secs: u64 },
}

/// How long virtiofsd gets to create its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A running virtiofsd; stopped and reaped on drop.
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd and waits until it listens. It gets SIGKILL when the calling thread
    /// ends (its parent-death signal; a thread's end counts, so call this from a thread that
    /// lives as long as the VM), and the process it serves from (with `--sandbox namespace`,
    /// PID 1 of a pid namespace of its own) then gets virtiofsd's own parent-death signal,
    /// SIGTERM, for which it has a handler. It ends with its connection, i.e. with its VM;
    /// one whose VM died before it connected is ended by [`Virtiofsd::stop`], or with its
    /// starter.
    pub fn spawn(config: &VirtiofsdConfig) -> Result<Virtiofsd, VirtiofsdError> {
        if !config.shared_dir.is_dir() {
            return Err(VirtiofsdError::NotADirectory(config.shared_dir.clone()));
        }
        let _ = std::fs::remove_file(&config.socket);
        let mut cmd = Command::new(&config.binary);
        cmd.args(config.args()).stdin(Stdio::null()).stdout(Stdio::null());
        match &config.log {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(|source| VirtiofsdError::Log { path: path.clone(), source })?;
                cmd.stderr(file);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        // Its own process group: a Ctrl-C on the caller's terminal is not for it.
        cmd.process_group(0);
        let binds = prepared_binds(config)?;
        let has_binds = !binds.is_empty();
        let shared_dir = CString::new(config.shared_dir.as_os_str().as_bytes())
            .map_err(|e| VirtiofsdError::Binds { dir: config.shared_dir.clone(), source: std::io::Error::other(e) })?;
        // SAFETY: between fork and exec the hook only makes raw syscalls (prctl, unshare,
        // mount) on memory prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                bind_in_own_namespace(&shared_dir, &binds)
            });
        }
        if !config.binary.is_file() {
            let source = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(VirtiofsdError::Spawn { path: config.binary.clone(), source });
        }
        let child = cmd.spawn().map_err(|source| {
            if has_binds && source.kind() != std::io::ErrorKind::PermissionDenied {
                VirtiofsdError::Binds { dir: config.shared_dir.clone(), source }
            } else {
                VirtiofsdError::Spawn { path: config.binary.clone(), source }
            }
        })?;
        let mut running = Virtiofsd { child, socket: config.socket.clone() };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while !config.socket.exists() {
            if let Ok(Some(status)) = running.child.try_wait() {
                let said = config.log.as_deref().and_then(last_line).map(|l| format!(": {l}")).unwrap_or_default();
                return Err(VirtiofsdError::Exited { dir: config.shared_dir.clone(), status, said });
            }
            if Instant::now() > deadline {
                return Err(VirtiofsdError::NoSocket {
                    dir: config.shared_dir.clone(),
                    socket: config.socket.clone(),
                    secs: LISTEN_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(running)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether it has exited (it does when its VM's connection closes).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Ends it, and the process it serves from, at once (SIGKILL to its process group);
    /// reaps it and removes its socket.
    ///
    /// SIGKILL, not SIGTERM first: nothing is lost, virtiofsd holds no data of its own (every
    /// write it was given went to the host's files when it answered), and SIGKILL cannot be
    /// ignored, also by a pid namespace's PID 1.
    pub fn stop(&mut self) {
        if !self.has_exited() {
            // Its own process group (`spawn`): the serving child is in it too.
            let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A bind as the child's hook needs it: paths as C strings, the remount's flags.
struct PreparedBind {
    source: CString,
    target: CString,
    remount_flags: libc::c_ulong,
}

fn prepared_binds(config: &VirtiofsdConfig) -> Result<Vec<PreparedBind>, VirtiofsdError> {
    let dir = &config.shared_dir;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|e| VirtiofsdError::Binds { dir: dir.clone(), source: std::io::Error::other(e) })
    };
    config
        .binds
        .iter()
        .map(|b| {
            if !b.target.starts_with(dir) || b.target.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(VirtiofsdError::BindOutside { dir: dir.clone(), target: b.target.clone() });
            }
            // virtiofsd opens no device node and runs nothing from the share: neither may a
            // file it serves be one for it.
            let mut remount_flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
            if b.read_only {
                remount_flags |= libc::MS_RDONLY;
            }
            Ok(PreparedBind { source: c(&b.source)?, target: c(&b.target)?, remount_flags })
        })
        .collect()
}

/// In the child before exec: a mount namespace of its own, nothing propagating back to the
/// caller's, then every bind (recursive, then remounted with its flags). The shared
/// directory is a mount of its own there, and a shared one: virtiofsd's sandbox (a slave
/// copy of this namespace) then sees what [`crate::live_share`] binds into it later.
fn bind_in_own_namespace(shared_dir: &CString, binds: &[PreparedBind]) -> std::io::Result<()> {
    if binds.is_empty() {
        return Ok(());
    }
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: raw syscalls on NUL-terminated strings that live as long as `binds`; a null
    // source, type or data is what mount(2) takes for "none".
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        let root = c"/";
        check(libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
        check(libc::mount(shared_dir.as_ptr(), shared_dir.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
        check(libc::mount(std::ptr::null(), shared_dir.as_ptr(), std::ptr::null(), libc::MS_SHARED, std::ptr::null()))?;
        for b in binds {
            let bind = libc::MS_BIND | libc::MS_REC;
            check(libc::mount(b.source.as_ptr(), b.target.as_ptr(), std::ptr::null(), bind, std::ptr::null()))?;
            check(libc::mount(std::ptr::null(), b.target.as_ptr(), std::ptr::null(), b.remount_flags, std::ptr::null()))?;
        }
    }
    Ok(())
}

/// The last non-empty line of a (bounded) log, sanitised: virtiofsd's error message.
fn last_line(path: &Path) -> Option<String> {
    let mut text = Vec::new();
    std::fs::File::open(path).ok()?.take(64 * 1024).read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty())?;
    Some(crate::vmrun::guest_text::sanitize(line).chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary() -> PathBuf {
        palisade_vmm::testing::virtiofsd::path()
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn the_arguments_say_what_the_config_says() {
        let mut config = VirtiofsdConfig::new("/bin/virtiofsd", "/shared", "/run/fs.sock");
        let args: Vec<String> = config.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "--shared-dir /shared --socket-path /run/fs.sock --sandbox namespace --cache auto --thread-pool-size 0 --log-level error"
        );
        config.read_only = true;
        config.cache = Cache::Never;
        config.thread_pool_size = 4;
        let args: Vec<String> = config.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert!(args.join(" ").ends_with("--cache never --thread-pool-size 4 --log-level error --readonly"), "{args:?}");
    }

    #[test]
    fn a_sandboxed_virtiofsd_serves_vhost_user_and_stops_with_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let mut config = VirtiofsdConfig::new(binary(), &shared, dir.path().join("fs.sock"));
        config.log = Some(dir.path().join("virtiofsd.log"));
        if !root() {
            config.sandbox = Sandbox::None;
        }
        let mut fsd = Virtiofsd::spawn(&config).unwrap();
        if root() {
            // Its own mount and network namespaces (it enters them just after it listens,
            // in itself or in the child it serves from).
            let ns_of = |pid: u32, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
            let children = |pid: u32| -> Vec<u32> {
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            };
            for ns in ["mnt", "net"] {
                let ours = ns_of(std::process::id(), ns);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let mut theirs = vec![fsd.pid()];
                    theirs.extend(children(fsd.pid()));
                    if theirs.iter().any(|&pid| ns_of(pid, ns).is_some_and(|n| Some(n) != ours)) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "virtiofsd never left our {ns} namespace");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // A vhost-user frontend can take it over (the VMM's own code).
        let stream = std::os::unix::net::UnixStream::connect(fsd.socket()).unwrap();
        let frontend = palisade_vmm::devices::virtio::vhost_user::VhostUserFrontend::new(stream, 2).unwrap();
        assert_ne!(frontend.device_features(), 0);
        drop(frontend);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fsd.has_exited() {
            assert!(Instant::now() < deadline, "virtiofsd outlived its connection");
            std::thread::sleep(Duration::from_millis(20));
        }
        fsd.stop();
        assert!(!config.socket.exists());
    }

    /// A virtiofsd whose starter dies before a VM ever connected ends, with the process it
    /// serves from (PID 1 of a pid namespace of virtiofsd's own, which a PID 1 only gets
    /// signals it handles from: virtiofsd gives it SIGTERM as its parent-death signal, and a
    /// handler), with nobody left to stop them.
    #[test]
    fn a_virtiofsd_whose_starter_dies_before_any_connection_ends() {
        if !root() {
            eprintln!("virtiofsd's namespace sandbox needs root; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let mut config = VirtiofsdConfig::new(binary(), &shared, dir.path().join("fs.sock"));
        config.log = Some(dir.path().join("virtiofsd.log"));
        // The parent-death signal follows the thread that spawned: a thread that starts
        // virtiofsd, waits for the process it serves from and ends stands for a supervisor
        // SIGKILLed at that moment (the handle is leaked, so nothing stops it on the way).
        let pgid = std::thread::spawn(move || {
            let fsd = Virtiofsd::spawn(&config).unwrap();
            let pgid = fsd.pid();
            std::mem::forget(fsd);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !processes_in_group(pgid).iter().any(|&pid| comm(pid) == "virtiofsd" && comm(parent(pid)) == "virtiofsd") {
                assert!(Instant::now() < deadline, "virtiofsd's sandboxed child never appeared");
                std::thread::sleep(Duration::from_millis(20));
            }
            pgid
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Reaped once it ends (it was this process's child): only live processes count.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pgid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            if processes_in_group(pgid).is_empty() {
                break;
            }
            let left: Vec<(u32, String)> = processes_in_group(pgid).into_iter().map(|pid| (pid, comm(pid))).collect();
            assert!(Instant::now() < deadline, "virtiofsd outlived its starter: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn comm(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
    }

    fn parent(pid: u32) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    }

    #[test]
    fn failures_name_the_directory_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let config = VirtiofsdConfig::new(binary(), &missing, dir.path().join("fs.sock"));
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert_eq!(e, format!("shared directory {}: not a directory", missing.display()));
        let config = VirtiofsdConfig::new(dir.path().join("no-virtiofsd"), dir.path(), dir.path().join("fs.sock"));
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert!(e.contains("no-virtiofsd") && e.contains("scripts/setup"), "{e}");
        // virtiofsd itself refuses (a socket path in a directory that does not exist).
        let mut config = VirtiofsdConfig::new(binary(), dir.path(), dir.path().join("no/such/dir/fs.sock"));
        config.log = Some(dir.path().join("virtiofsd.log"));
        config.sandbox = Sandbox::None;
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert!(e.starts_with(&format!("virtiofsd for {} exited before it listened", dir.path().display())), "{e}");
    }

    /// The live (not zombie) processes of process group `pgid`.
    fn processes_in_group(pgid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return false };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first().is_some_and(|s| *s != "Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
            .collect()
    }

    /// The mount points of process `pid`, as it sees them.
    fn mount_points(pid: u32) -> Vec<String> {
        mounts(pid).into_iter().map(|(point, _)| point).collect()
    }

    /// (mount point, per-mount options) of process `pid`'s mounts.
    fn mounts(pid: u32) -> Vec<(String, String)> {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut fields = l.split(' ').skip(4);
                Some((fields.next()?.to_string(), fields.next()?.to_string()))
            })
            .collect()
    }

    /// What a live bind ([`crate::live_share`]) attaches after virtiofsd started reaches the
    /// files it serves from its sandbox (read through /proc/PID/root of the process that
    /// serves), not the host's placeholder; detached, it is gone there too.
    #[test]
    fn a_live_bind_reaches_a_sandboxed_virtiofsd_and_leaves_with_detach() {
        if !root() {
            eprintln!("binds need root; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (data, late) = (dir.path().join("data"), dir.path().join("late"));
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&late).unwrap();
        std::fs::write(late.join("file"), "arrived").unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("vol")).unwrap();
        std::fs::create_dir_all(shared.join("pods/c1")).unwrap();
        let mut config = VirtiofsdConfig::new(binary(), &shared, dir.path().join("fs.sock"));
        config.binds = vec![Bind { source: data.clone(), target: shared.join("vol"), read_only: true }];
        let mut fsd = Virtiofsd::spawn(&config).unwrap();
        // The process that serves: virtiofsd's child, in its sandbox (root = the share).
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", fsd.pid())).unwrap_or_default();
            let pivoted = children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|pid| std::fs::read_dir(format!("/proc/{pid}/root/pods")).is_ok());
            if let Some(pid) = pivoted {
                break pid;
            }
            assert!(Instant::now() < deadline, "virtiofsd's sandboxed child never appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        let live = crate::live_share::LiveShare { pid: fsd.pid(), dir: shared.clone() };
        live.attach(&late, "pods/c1", true).unwrap();
        let seen = format!("/proc/{server}/root/pods/c1/file");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&seen).ok().as_deref() != Some("arrived") {
            assert!(Instant::now() < deadline, "the live bind did not reach virtiofsd's sandbox");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(std::fs::read_dir(shared.join("pods/c1")).unwrap().next().is_none(), "the bind is visible on the host");
        let write = std::fs::write(format!("/proc/{server}/root/pods/c1/new"), "x");
        assert!(write.is_err(), "a read-only live bind took a write");
        live.detach("pods/c1").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&seen).exists() {
            assert!(Instant::now() < deadline, "the detached bind is still in virtiofsd's sandbox");
            std::thread::sleep(Duration::from_millis(20));
        }
        live.detach("pods/c1").unwrap();
        fsd.stop();
        assert_eq!(std::fs::read_to_string(late.join("file")).unwrap(), "arrived");
    }

    #[test]
    fn binds_exist_in_virtiofsds_namespace_only_and_go_with_it() {
        if !root() {
            eprintln!("binds need root; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("keep"), "precious").unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("vol")).unwrap();
        let mut config = VirtiofsdConfig::new(binary(), &shared, dir.path().join("fs.sock"));
        config.log = Some(dir.path().join("virtiofsd.log"));
        config.binds = vec![Bind { source: data.clone(), target: shared.join("vol"), read_only: true }];
        let mut fsd = Virtiofsd::spawn(&config).unwrap();
        let target = shared.join("vol").display().to_string();
        assert!(!mount_points(std::process::id()).contains(&target), "the bind leaked into our namespace");
        assert!(std::fs::read_dir(shared.join("vol")).unwrap().next().is_none(), "our placeholder is not empty");
        // virtiofsd (or the child it serves from, after its pivot_root) has it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut pids = vec![fsd.pid()];
            pids.extend(
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", fsd.pid()))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
            let found = pids.iter().flat_map(|&pid| mounts(pid)).find(|(m, _)| m == &target || m == "/vol");
            if let Some((_, options)) = found {
                let options: Vec<&str> = options.split(',').collect();
                assert!(options.contains(&"ro") && options.contains(&"nosuid") && options.contains(&"nodev"), "{options:?}");
                break;
            }
            assert!(Instant::now() < deadline, "virtiofsd does not have the bind: {:?}", mount_points(fsd.pid()));
            std::thread::sleep(Duration::from_millis(20));
        }
        let pgid = fsd.pid();
        fsd.stop();
        assert!(!mount_points(std::process::id()).contains(&target));
        // The process it served from is gone too (it never got a connection).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_in_group(pgid).is_empty() {
            assert!(Instant::now() < deadline, "virtiofsd processes outlived stop: {:?}", processes_in_group(pgid));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(std::fs::read_to_string(data.join("keep")).unwrap(), "precious");

        // A target outside the shared directory is refused before anything starts.
        config.binds = vec![Bind { source: data.clone(), target: dir.path().join("elsewhere"), read_only: false }];
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert!(e.contains("not inside the shared directory"), "{e}");
        // A source that does not exist fails the start, named.
        config.binds = vec![Bind { source: dir.path().join("missing"), target: shared.join("vol"), read_only: false }];
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert!(e.contains("binding the shared files") && e.contains(&shared.display().to_string()), "{e}");
    }
}
