//! Wall 1: the VMM runs jailed on the host.
//!
//! `palisade-vmm` calls [`enter`] before it builds the VM. The calling process becomes the
//! *supervisor*: it prepares the jail, forks the VMM and waits for it, forwarding
//! termination signals and the VMM's exit status, then removes the jail. The forked child
//! becomes the *jailed VMM*, which — before it touches any guest input — is:
//!
//! 1. PID 1 of a new pid namespace, in new mount, ipc, uts, network and cgroup namespaces
//!    ([`namespaces`]);
//! 2. in its own cgroup `palisade/<id>` with memory (guest RAM + overhead), pids and cpu
//!    limits, on v1, v2 and hybrid hosts ([`cgroup`]), before it writes into guest memory
//!    or starts a vCPU thread ([`CgroupGate`]);
//! 3. inside a root of its own, entered with `pivot_root`, the old root unmounted: a tiny
//!    read-only tmpfs with `/dev/kvm` (and `/dev/urandom` for virtio-rng) owned by the
//!    VMM's uid, and the caller's kernel, initrd, disks and serial log bind-mounted under
//!    `/vm` ([`mount`]);
//! 4. left with stdin/stdout/stderr and the descriptors it needs ([`fds`]), an empty
//!    environment, and rlimits on open files, file size, processes and core dumps
//!    ([`rlimits`]);
//! 5. an unprivileged uid and gid with no capability in any set, the bounding set included,
//!    and `no_new_privs` ([`user`]);
//! 6. filtered by seccomp, with one allowlist per thread kind, installed by each thread
//!    before it handles guest input ([`seccomp`]; see [`crate::RunOptions`]).
//!
//! The vsock device's Unix socket is bound by the supervisor at the caller's path (outside
//! the jail) and handed to the VMM as an open listener; each virtio-fs backend's socket is
//! connected by the supervisor and handed over as an open connection; each virtio-net
//! device's tap is opened by the supervisor in the network namespace its config names and
//! handed over open (the jailed VMM's own network namespace stays empty). Guest-initiated vsock connections
//! (to `<socket>_<port>` on the host) cannot be made from inside the jail and are refused.
//!
//! How the VM ended reaches the supervisor as data: the jailed VMM writes its
//! [`ExitRecord`] into a pipe before it exits ([`Jailed::report`]); the supervisor checks it
//! against what it saw itself (the exit status, a killing signal, the cgroup's OOM count)
//! and returns it ([`Role::Supervisor`]).
//!
//! What a killed supervisor leaves behind (a jail directory, cgroups) is removed by the
//! next jailed run, or by [`sweep_stale`] (a runtime's `delete` can call it). Mounts
//! never outlive the VMM: they exist only in its mount namespace.

pub mod cgroup;
pub mod fds;
pub mod guest_ram;
pub mod mount;
pub mod namespaces;
pub mod rlimits;
pub mod seccomp;
pub mod user;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::builder::RunOptions;
use crate::config::VmConfig;
use crate::exit_record::{ExitRecord, MAX_RECORD_BYTES};
use cgroup::{CgroupLimits, Hierarchy, VmCgroups};
use mount::{Entry, VM_DIR};
use seccomp::{SeccompError, ThreadFilters};

/// Where jail directories go by default.
pub const DEFAULT_BASE_DIR: &str = "/run/palisade/jail";
/// Memory the VMM may use beyond guest RAM, by default: its own code and heap, thread
/// stacks, device buffers, and page cache of the files it reads.
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u32 = 128;

/// How to jail a VMM.
#[derive(Debug, Clone, PartialEq)]
pub struct JailConfig {
    /// Jail directories are `<base_dir>/<id>`.
    pub base_dir: PathBuf,
    /// Default: [`user::default_id`] of the supervisor's pid.
    pub uid: Option<u32>,
    /// Default: the same number as the uid.
    pub gid: Option<u32>,
    /// The cgroup memory limit is guest RAM plus this.
    pub memory_overhead_mib: u32,
    /// CPU time limit, in CPUs; `None`: one more than the vCPUs.
    pub cpus: Option<f64>,
    /// The cgroup the VM's cgroup goes under, as a path from the hierarchies' roots (a
    /// Kubernetes pod's, say); `None`: under the supervisor's own cgroup.
    pub cgroup_parent: Option<PathBuf>,
    /// Processes that join the VM's cgroup with the VMM, with their threads and children,
    /// before the guest runs (the VM's virtiofsd): what they do for the guest then counts
    /// against the VM's limits, and the guest pages they touch first are charged there.
    pub cgroup_companions: Vec<i32>,
    /// Debug builds: vCPU 0 makes a forbidden system call once filtered (see
    /// [`seccomp::ThreadFilters::with_selftest`]).
    pub seccomp_selftest: bool,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            uid: None,
            gid: None,
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
            cpus: None,
            cgroup_parent: None,
            cgroup_companions: Vec::new(),
            seccomp_selftest: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "the jail needs root (namespaces, pivot_root, device nodes, cgroups): run palisade-vmm as root, or pass --no-jail (debugging only)"
    )]
    NotRoot,
    #[error("jail: palisade-vmm must still be single-threaded when it jails itself ({0} threads)")]
    Threaded(usize),
    /// A caller-supplied file (named as the non-jailed VMM names it).
    #[error("{what} {path}: {source}")]
    Input { what: &'static str, path: PathBuf, source: io::Error },
    #[error("jail: {what}: {source}")]
    Sys { what: String, source: io::Error },
    #[error("jail: cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("jail: cgroup parent {parent}: {problem}")]
    CgroupParent { parent: PathBuf, problem: String },
    #[error("jail: cgroup companion {pid}: {problem}")]
    CgroupCompanion { pid: i32, problem: String },
    #[error("jail: {0}: not a character device")]
    NotADevice(PathBuf),
    #[error("jail: refusing uid {uid} gid {gid}: the VMM must not run as root (0)")]
    RootId { uid: u32, gid: u32 },
    #[error("jail: the VMM kept privileges after dropping them (capabilities or ids)")]
    PrivilegesKept,
    #[error("jail: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("jail: the supervising palisade-vmm process went away")]
    SupervisorGone,
    /// A virtio-net device's tap could not be opened (the message names it).
    #[error("{0}")]
    Tap(String),
}

impl JailError {
    pub(crate) fn sys(what: impl Into<String>, e: nix::Error) -> Self {
        JailError::Sys { what: what.into(), source: e.into() }
    }
}

/// A jail's name: the supervisor's pid and start time (so a reused pid is not mistaken
/// for the owner), e.g. `4242-1234567`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailId {
    pub pid: u32,
    pub start_time: u64,
}

impl std::fmt::Display for JailId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.pid, self.start_time)
    }
}

impl JailId {
    pub fn parse(name: &str) -> Option<JailId> {
        let (pid, start) = name.split_once('-')?;
        Some(JailId { pid: pid.parse().ok()?, start_time: start.parse().ok()? })
    }

    fn of_self() -> Result<JailId, JailError> {
        let pid = std::process::id();
        let start_time = start_time(pid)
            .ok_or_else(|| JailError::Sys { what: "reading /proc/self/stat".into(), source: io::Error::from(ErrorKind::NotFound) })?;
        Ok(JailId { pid, start_time })
    }

    /// Whether the process that made this jail is still running.
    pub fn owner_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot. With
/// the pid, it names a process for good (a pid is reused, the pair is not); `None` when no
/// such process exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// What [`enter`] made of this process.
// Made once per process and matched at once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Role {
    /// The supervisor: the jailed VMM has ended and the jail is gone; exit with the record's
    /// status (any message has been printed).
    Supervisor(ExitRecord),
    /// The jailed VMM: run the VM.
    Jailed(Jailed),
}

/// The jailed VMM's view: the configuration rewritten to the jail's paths, what to run it
/// with, and how to name the caller's paths in messages.
pub struct Jailed {
    pub config: VmConfig,
    pub options: RunOptions,
    pub paths: PathMap,
    /// Where the VMM's [`ExitRecord`] goes: [`Jailed::report`].
    pub report: OwnedFd,
}

impl Jailed {
    /// Hands the supervisor how the VM ended (its message with the caller's paths). Called
    /// once, just before the jailed VMM exits.
    pub fn report(report: &OwnedFd, record: &ExitRecord) {
        let json = record.to_json();
        if let Err(e) = nix::unistd::write(report, json.as_bytes()) {
            eprintln!("palisade-vmm: cannot hand the exit record to the supervisor: {e}");
        }
    }
}

/// In-jail paths and the caller's paths they stand for.
#[derive(Debug, Clone, Default)]
pub struct PathMap {
    /// (in the jail, the caller's), longest in-jail path first.
    pairs: Vec<(String, String)>,
    uid: u32,
}

impl PathMap {
    fn push(&mut self, in_jail: &Path, host: &Path) {
        self.pairs.push((in_jail.display().to_string(), host.display().to_string()));
        self.pairs.sort_by_key(|(j, _)| std::cmp::Reverse(j.len()));
    }

    /// `message` with in-jail paths replaced by the caller's, and a hint after a
    /// permission error (the VMM opens its files as its own unprivileged uid).
    pub fn host_text(&self, message: &str) -> String {
        let mut text = message.to_string();
        for (in_jail, host) in &self.pairs {
            text = text.replace(in_jail.as_str(), host);
        }
        if text.contains("Permission denied") {
            text.push_str(&format!(
                " (the jailed VMM runs as uid {}: its kernel, initrd and disks must be readable by it, writable disks writable; or pass --jail-uid)",
                self.uid
            ));
        }
        text
    }
}

/// The jail directory of one VM: `<base>/<id>/root` (the mount point of the jail's root,
/// only ever mounted in the VMM's own mount namespace) and `<base>/<id>/cgroups` (the
/// VM's cgroup directories, for a sweep to remove if the supervisor is killed).
struct JailDir {
    base: PathBuf,
    dir: PathBuf,
}

const CGROUPS_FILE: &str = "cgroups";
const ROOT_DIR: &str = "root";

impl JailDir {
    fn create(base: &Path, id: &JailId) -> Result<JailDir, JailError> {
        let dir = base.join(id.to_string());
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| JailError::Sys { what: format!("creating {}", path.display()), source }
        };
        // A concurrent run may remove an empty base between our two mkdirs: retry.
        for attempt in 0.. {
            std::fs::create_dir_all(base).map_err(err(base))?;
            match std::fs::create_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < 5 => continue,
                Err(e) => return Err(err(&dir)(e)),
            }
        }
        let jail = JailDir { base: base.to_owned(), dir };
        std::fs::set_permissions(&jail.dir, std::fs::Permissions::from_mode(0o700)).map_err(err(&jail.dir))?;
        std::fs::create_dir(jail.root()).map_err(err(&jail.root()))?;
        Ok(jail)
    }

    fn root(&self) -> PathBuf {
        self.dir.join(ROOT_DIR)
    }

    fn record_cgroups(&self, cgroups: &VmCgroups) -> Result<(), JailError> {
        let list: String = cgroups.dirs().map(|d| format!("{}\n", d.display())).collect();
        let path = self.dir.join(CGROUPS_FILE);
        std::fs::write(&path, list).map_err(|source| JailError::Sys { what: format!("writing {}", path.display()), source })
    }

    fn remove(&self) {
        remove_jail_dir(&self.dir);
        remove_empty_base(&self.base);
    }
}

/// Removes the jails' base directory (and `/run/palisade` above the default one) when
/// empty: only then does no other VM use it.
fn remove_empty_base(base: &Path) {
    let _ = std::fs::remove_dir(base);
    if base == Path::new(DEFAULT_BASE_DIR) {
        let _ = std::fs::remove_dir("/run/palisade");
    }
}

/// Removes a jail directory's own files; never recursive beyond them (nothing is mounted
/// in it on the host, but a sweep must not follow anything it does not know).
fn remove_jail_dir(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(CGROUPS_FILE));
    let _ = std::fs::remove_dir(dir.join(ROOT_DIR));
    if let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() != ErrorKind::NotFound {
            tracing::warn!("removing the jail directory {}: {e}", dir.display());
        }
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub jail_dirs: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
}

/// Removes the jail directories under `base_dir` and the VM cgroups whose supervisor is
/// gone (killed with SIGKILL, say). Jails of running VMs are left alone.
pub fn sweep_stale(base_dir: &Path) -> Swept {
    sweep(base_dir, &cgroup::detect())
}

/// Sweeps the jail of the killed supervisor `pid` (the process a caller started as
/// `palisade-vmm`), waiting up to `timeout` for its jailed VMM to finish dying (its cgroups
/// go only once empty). Returns whether nothing of that jail is left; other stale jails
/// are swept on the way.
pub fn sweep_killed(base_dir: &Path, pid: u32, timeout: std::time::Duration) -> bool {
    let hierarchies = cgroup::detect();
    let deadline = std::time::Instant::now() + timeout;
    let of_pid = |name: &OsString| name.to_str().and_then(JailId::parse).is_some_and(|id| id.pid == pid && !id.owner_alive());
    loop {
        sweep(base_dir, &hierarchies);
        let in_dir = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| of_pid(&e.file_name()));
        let left = in_dir(base_dir) || cgroup::parent_dirs(&hierarchies).iter().any(|d| in_dir(d));
        if !left {
            remove_empty_base(base_dir);
            return true;
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(pid, "the jail of a killed palisade-vmm is still there after {timeout:?}: the next run sweeps it");
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn sweep(base_dir: &Path, hierarchies: &[Hierarchy]) -> Swept {
    let mut swept = Swept::default();
    let stale = |name: &OsString| name.to_str().and_then(JailId::parse).is_some_and(|id| !id.owner_alive());
    if let Ok(entries) = std::fs::read_dir(base_dir) {
        for entry in entries.flatten() {
            if !stale(&entry.file_name()) {
                continue;
            }
            let dir = entry.path();
            let recorded = std::fs::read_to_string(dir.join(CGROUPS_FILE)).unwrap_or_default();
            let mut all_gone = true;
            for cg in recorded.lines().filter(|l| !l.is_empty()).map(PathBuf::from) {
                // Only our own cgroups: `…/palisade/<this id>`.
                let ours = cg.file_name() == Some(entry.file_name().as_os_str())
                    && cg.parent().and_then(Path::file_name) == Some(cgroup::PARENT_NAME.as_ref());
                if !ours {
                    continue;
                }
                if cg.exists() {
                    if cgroup::remove_stale(&cg) {
                        swept.cgroups.push(cg);
                    } else {
                        all_gone = false; // its VMM is still dying: next time
                    }
                }
            }
            if all_gone {
                remove_jail_dir(&dir);
                swept.jail_dirs.push(dir);
            }
        }
    }
    for parent in cgroup::parent_dirs(hierarchies) {
        let Ok(entries) = std::fs::read_dir(&parent) else { continue };
        for entry in entries.flatten() {
            if entry.path().is_dir() && stale(&entry.file_name()) && cgroup::remove_stale(&entry.path()) {
                swept.cgroups.push(entry.path());
            }
        }
    }
    if !swept.jail_dirs.is_empty() || !swept.cgroups.is_empty() {
        tracing::info!(?swept, "removed what killed VMMs left behind");
    }
    swept
}

/// The jail's contents and the VMM's configuration inside it.
struct Plan {
    entries: Vec<Entry>,
    config: VmConfig,
    paths: PathMap,
    vsock_listener: Option<UnixListener>,
    /// The socket file bound at the caller's path, removed when the VM ends.
    vsock_path: Option<PathBuf>,
    /// Connections to the virtio-fs backends, in `config.fs` order.
    fs_streams: Vec<UnixStream>,
    /// The virtio-net devices' taps, in `config.net` order, opened here in their
    /// namespaces (the jailed VMM's own namespace is empty).
    taps: Vec<OwnedFd>,
    largest_writable: u64,
}

fn input_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JailError {
    let path = path.to_owned();
    move |source| JailError::Input { what, path, source }
}

/// Checks a caller-supplied file: it exists and is not a directory. Returns its size.
fn check_input(what: &'static str, path: &Path) -> Result<u64, JailError> {
    let meta = std::fs::metadata(path).map_err(input_err(what, path))?;
    if meta.is_dir() {
        return Err(input_err(what, path)(io::Error::new(ErrorKind::IsADirectory, "is a directory")));
    }
    Ok(meta.len())
}

fn plan(config: &VmConfig, uid: u32, gid: u32) -> Result<Plan, JailError> {
    let vm = Path::new(VM_DIR);
    let mut jailed = config.clone();
    let mut entries = vec![Entry::Device { path: "/dev/kvm".into(), host: "/dev/kvm".into() }];
    if config.rng {
        entries.push(Entry::Device { path: "/dev/urandom".into(), host: "/dev/urandom".into() });
    }
    let mut paths = PathMap { uid, ..PathMap::default() };
    let mut bind = |entries: &mut Vec<Entry>, host: &Path, name: &str, read_only: bool| -> PathBuf {
        let path = vm.join(name);
        paths.push(&path, host);
        entries.push(Entry::Bind { path: path.clone(), host: host.to_owned(), read_only });
        path
    };

    check_input("kernel", &config.kernel)?;
    jailed.kernel = bind(&mut entries, &config.kernel, "kernel", true);
    if let Some(initrd) = &config.initrd {
        check_input("initrd", initrd)?;
        jailed.initrd = Some(bind(&mut entries, initrd, "initrd", true));
    }
    let mut largest_writable = 0;
    for (i, disk) in config.disks.iter().enumerate() {
        let size = check_input("disk", &disk.path)?;
        if !disk.read_only {
            largest_writable = largest_writable.max(size);
        }
        jailed.disks[i].path = bind(&mut entries, &disk.path, &format!("disk{i}"), disk.read_only);
    }
    if let Some(log) = &config.serial.log_file {
        // Created here, as the caller asked, and handed to the VMM's uid, which writes it.
        // Only a regular file named directly is handed over: never a device (/dev/null)
        // or whatever a symbolic link points to.
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(log).map_err(input_err("serial log", log))?;
        let direct = std::fs::symlink_metadata(log).is_ok_and(|m| m.file_type().is_file());
        let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
        if direct && regular {
            nix::unistd::fchown(file.as_fd(), Some(uid.into()), Some(gid.into())).map_err(|e| input_err("serial log", log)(e.into()))?;
        }
        jailed.serial.log_file = Some(bind(&mut entries, log, "serial.log", false));
    }
    let (mut vsock_listener, mut vsock_path) = (None, None);
    if let (Some(vsock), Some(jailed_vsock)) = (&config.vsock, jailed.vsock.as_mut()) {
        let path = &vsock.uds_path;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(input_err("vsock socket", path))?,
            Ok(_) => return Err(input_err("vsock socket", path)(io::Error::new(ErrorKind::AlreadyExists, "exists and is not a socket"))),
            Err(_) => {}
        }
        vsock_listener = Some(UnixListener::bind(path).map_err(input_err("vsock socket", path))?);
        vsock_path = Some(path.clone());
        jailed_vsock.uds_path = vm.join("vsock.sock");
        paths.push(&jailed_vsock.uds_path, path);
    }
    // The virtio-fs backends' sockets are outside the jail: connected here, handed over open.
    let mut fs_streams = Vec::with_capacity(config.fs.len());
    for (i, fs) in config.fs.iter().enumerate() {
        fs_streams.push(UnixStream::connect(&fs.socket).map_err(input_err("virtio-fs socket", &fs.socket))?);
        jailed.fs[i].socket = vm.join(format!("fs{i}.sock"));
        paths.push(&jailed.fs[i].socket, &fs.socket);
    }
    if !config.fs.is_empty() {
        // Guest RAM is then a memfd, which the file-size limit applies to.
        largest_writable = largest_writable.max(u64::from(config.memory_mib) << 20);
    }
    let mut taps = Vec::with_capacity(config.net.len());
    for net in &config.net {
        taps.push(crate::builder::open_tap(net).map_err(JailError::Tap)?.into_fd());
    }
    Ok(Plan { entries, config: jailed, paths, vsock_listener, vsock_path, fs_streams, taps, largest_writable })
}

/// What the supervisor removes when the VM is over (or when setting up fails).
struct Cleanup {
    dir: Option<JailDir>,
    cgroups: VmCgroups,
    vsock_path: Option<PathBuf>,
}

impl Cleanup {
    fn run(&mut self) {
        for left in self.cgroups.remove(Duration::from_secs(2)) {
            tracing::warn!("could not remove cgroup {} (the next run removes it)", left.display());
        }
        if let Some(dir) = self.dir.take() {
            dir.remove();
        }
        if let Some(path) = self.vsock_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// The signals the supervisor handles: its child ending, and requests to end.
fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        set.add(s);
    }
    set
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1)
}

/// Jails this process's VMM (see the module documentation). Must be called while the
/// process is single-threaded. Returns in both processes: see [`Role`].
pub fn enter(config: VmConfig, jail: &JailConfig) -> Result<Role, JailError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(JailError::NotRoot);
    }
    let threads = threads();
    if threads > 1 {
        return Err(JailError::Threaded(threads));
    }
    let filters = ThreadFilters::compile()?.with_selftest(jail.seccomp_selftest);
    let mut hierarchies = cgroup::detect();
    sweep(&jail.base_dir, &hierarchies);
    if let Some(parent) = &jail.cgroup_parent {
        hierarchies = cgroup::under_parent(hierarchies, parent)?;
    }

    let id = JailId::of_self()?;
    let uid = jail.uid.unwrap_or_else(|| user::default_id(id.pid));
    let gid = jail.gid.unwrap_or(uid);
    if uid == 0 || gid == 0 {
        return Err(JailError::RootId { uid, gid });
    }
    let plan = plan(&config, uid, gid)?;
    let mut cleanup = Cleanup { dir: None, cgroups: VmCgroups::default(), vsock_path: plan.vsock_path.clone() };
    let dir = JailDir::create(&jail.base_dir, &id)?;
    let root = dir.root();
    cleanup.dir = Some(dir);

    let limits = CgroupLimits {
        memory_bytes: (u64::from(config.memory_mib) + u64::from(jail.memory_overhead_mib)) << 20,
        pids: u64::from(config.vcpus)
            + rlimits::EXTRA_TASKS
            + cgroup::COMPANION_TASKS * u64::try_from(jail.cgroup_companions.len()).unwrap_or(u64::MAX / 2),
        cpu_quota_us: Some(cpu_quota(jail.cpus, config.vcpus)),
    };
    if hierarchies.is_empty() {
        tracing::warn!("no cgroup hierarchy with the memory, pids or cpu controller is mounted: the VMM runs without cgroup limits");
    } else {
        cleanup.cgroups = VmCgroups::create(&hierarchies, &id.to_string(), &limits)?;
    }
    if let Some(dir) = &cleanup.dir {
        dir.record_cgroups(&cleanup.cgroups)?;
    }
    let rlimits = rlimits::Limits::for_vm(config.vcpus, plan.largest_writable);

    // The supervisor takes its signals from a signalfd: block them before the fork so none
    // is lost; the child restores the mask it had.
    let old_mask = supervisor_signals().thread_swap_mask(SigmaskHow::SIG_BLOCK).map_err(|e| JailError::sys("blocking signals", e))?;
    let (go_read, go_write) = nix::unistd::pipe().map_err(|e| JailError::sys("pipe", e))?;
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).map_err(|e| JailError::sys("pipe", e))?;
    namespaces::unshare_pid_for_children()?;
    // SAFETY: the process is single-threaded (checked above), so the child may do anything.
    match unsafe { fork() }.map_err(|e| JailError::sys("fork", e))? {
        ForkResult::Child => {
            // The jail directory and cgroups belong to the supervisor.
            std::mem::forget(cleanup);
            drop(go_write);
            drop(report_read);
            let Plan { entries, config, paths, vsock_listener, fs_streams, taps, .. } = plan;
            let listener_fd = vsock_listener.as_ref().map(|l| l.as_raw_fd());
            let mut keep = vec![report_write.as_raw_fd()];
            keep.extend(fs_streams.iter().map(|s| s.as_raw_fd()));
            keep.extend(taps.iter().map(|t| t.as_raw_fd()));
            let guest_ram_size = (!config.fs.is_empty()).then_some(u64::from(config.memory_mib) << 20);
            let setup = ChildSetup { old_mask, go_read, root, entries, uid, gid, rlimits, guest_ram_size, listener_fd, keep: &keep };
            let (cgroup_gate, guest_ram) = match in_child(setup) {
                Ok(done) => done,
                Err(e) => {
                    // The child ends here: its caller must not take it for the supervisor.
                    let message = paths.host_text(&e.to_string());
                    eprintln!("palisade-vmm: {message}");
                    Jailed::report(&report_write, &ExitRecord::vmm_error(message));
                    std::process::exit(1);
                }
            };
            let options =
                RunOptions { vsock_listener, fs_streams, taps, guest_ram, seccomp: Some(filters), cgroup_gate: Some(cgroup_gate) };
            Ok(Role::Jailed(Jailed { config, options, paths, report: report_write }))
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            drop(report_write);
            // Clients must not queue on a socket whose VMM is gone: only the child holds it.
            drop(plan.vsock_listener);
            // Nor may a backend outlive its VM because the supervisor kept its connection,
            // nor a tap made for the VM.
            drop(plan.fs_streams);
            drop(plan.taps);
            let placed = cleanup
                .cgroups
                .add(child.as_raw())
                .and_then(|()| jail.cgroup_companions.iter().try_for_each(|&companion| cleanup.cgroups.add_companion(companion)));
            if let Err(e) = placed {
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(e);
            }
            // Go. The write end stays open until the VMM ends: its hang-up tells the VMM
            // that the supervisor is gone.
            nix::unistd::write(&go_write, b"1").map_err(|e| JailError::sys("starting the jailed VMM", e))?;
            let record = match supervise(child, &cleanup.cgroups, limits.memory_bytes, &report_read) {
                Ok(record) => record,
                Err(e) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(e);
                }
            };
            cleanup.run();
            drop(go_write);
            Ok(Role::Supervisor(record))
        }
    }
}

/// The CFS quota for `cpus` CPUs (default: one more than the vCPUs).
fn cpu_quota(cpus: Option<f64>, vcpus: u8) -> u64 {
    let cpus = cpus.filter(|c| c.is_finite() && *c > 0.0).unwrap_or(f64::from(vcpus) + 1.0);
    ((cpus * cgroup::CPU_PERIOD_US as f64) as u64).max(1000)
}

struct ChildSetup<'a> {
    old_mask: SigSet,
    go_read: OwnedFd,
    root: PathBuf,
    entries: Vec<Entry>,
    uid: u32,
    gid: u32,
    rlimits: rlimits::Limits,
    /// Bytes of guest RAM a vhost-user backend will map too ([`guest_ram`]); `None`: the
    /// VMM maps its guest RAM itself.
    guest_ram_size: Option<u64>,
    listener_fd: Option<RawFd>,
    /// Other descriptors the jailed VMM keeps.
    keep: &'a [RawFd],
}

/// The jailed VMM's side, from the fork to an unprivileged process in its jail; returns
/// the gate to its cgroups (it does not wait for them here: see [`CgroupGate`]) and the
/// file for its guest RAM when it was asked for one.
fn in_child(setup: ChildSetup<'_>) -> Result<(CgroupGate, Option<std::fs::File>), JailError> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(JailError::Sys { what: "prctl(PR_SET_PDEATHSIG)".into(), source: io::Error::last_os_error() });
    }
    setup.old_mask.thread_set_mask().map_err(|e| JailError::sys("restoring the signal mask", e))?;
    let mut keep = vec![setup.go_read.as_raw_fd()];
    keep.extend(setup.listener_fd);
    keep.extend_from_slice(setup.keep);
    fds::close_all_except(&keep)?;
    let env_area = env_area();
    namespaces::unshare_own()?;
    mount::make_private()?;
    // Made on the root's mount point before the root is mounted there.
    let guest_ram = match setup.guest_ram_size {
        Some(size) => guest_ram::create(&setup.root, size)?,
        None => None,
    };
    mount::enter_root(&setup.root, &setup.entries, setup.uid, setup.gid)?;
    clear_environment(env_area);
    // One malloc arena: glibc's per-thread arenas, when they shrink, open
    // /proc/sys/vm/overcommit_memory, which no thread's seccomp filter allows.
    // SAFETY: mallopt only changes allocator parameters; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    rlimits::apply(&setup.rlimits)?;
    user::drop_privileges(setup.uid, setup.gid)?;
    Ok((CgroupGate { go_read: setup.go_read }, guest_ram))
}

/// The jailed VMM's wait for its supervisor to have put it in its cgroups
/// ([`CgroupGate::wait`]).
///
/// Moving a task into a cgroup waits for an RCU grace period in the kernel (the first
/// write to a v1 `cgroup.procs`: ~10 ms on an idle 2-CPU machine, much more under load).
/// The VMM does not sit idle meanwhile: it builds its jail, drops its privileges, creates
/// the VM and starts registering guest memory, and waits at this gate only before it
/// writes anything into guest memory or starts a vCPU thread. So guest RAM and every vCPU
/// thread are charged to and counted in the VM's cgroups; what is allocated before the
/// gate (the VM's kernel structures and memory-slot metadata, whose size the
/// configuration fixes and the guest cannot change) is charged to the supervisor's.
#[must_use = "the VMM must wait at the gate before it loads the guest"]
pub struct CgroupGate {
    go_read: OwnedFd,
}

impl CgroupGate {
    /// Returns once the supervisor says the VMM is in its cgroups; fails if the supervisor
    /// went away instead.
    pub fn wait(self) -> Result<(), JailError> {
        let mut go = [0u8; 1];
        loop {
            match nix::unistd::read(&self.go_read, &mut go) {
                Ok(1) => break,
                Err(nix::Error::EINTR) => continue,
                _ => return Err(JailError::SupervisorGone),
            }
        }
        // The supervisor may have died before the parent-death signal was re-armed (it
        // is cleared when the ids change): then the pipe has hung up.
        let mut poll = [nix::poll::PollFd::new(self.go_read.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut poll, nix::poll::PollTimeout::ZERO) {
            Ok(0) => Ok(()),
            _ => Err(JailError::SupervisorGone),
        }
    }
}

/// Where the strings of the environment the process started with are (fields 50 and 51
/// of `/proc/self/stat`: what `/proc/<pid>/environ` shows).
fn env_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Field N (1-based, counting pid and comm) is fields[N - 3].
    let start = fields.get(47)?.parse().ok()?;
    let end = fields.get(48)?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// Empties the environment, and wipes the strings it started with so that not even
/// `/proc/<pid>/environ` shows them.
fn clear_environment(area: Option<(usize, usize)>) {
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    if let Some((start, end)) = area {
        // SAFETY: [start, end) is the process's initial environment block on its stack,
        // mapped and writable for the life of the process. The process is single-threaded
        // and, with every variable removed, `environ` no longer points into it; nothing
        // else kept a pointer (values read earlier were copied).
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
}

/// Waits for the jailed VMM, killing it if the supervisor is asked to end; returns how it
/// ended, from its own record when it exited (read from `report`) and from what the
/// supervisor saw when it was killed.
fn supervise(child: Pid, cgroups: &VmCgroups, memory_limit: u64, report: &OwnedFd) -> Result<ExitRecord, JailError> {
    let signals = SignalFd::with_flags(&supervisor_signals(), SfdFlags::SFD_CLOEXEC).map_err(|e| JailError::sys("signalfd", e))?;
    let mut asked_to_end: Option<Signal> = None;
    let status = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => break status,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(JailError::sys("waiting for the jailed VMM", e)),
        }
        match signals.read_signal() {
            Ok(Some(info)) if info.ssi_signo != libc::SIGCHLD as u32 => {
                let signal = Signal::try_from(info.ssi_signo as i32).unwrap_or(Signal::SIGTERM);
                tracing::debug!(%signal, "ending the jailed VMM");
                asked_to_end.get_or_insert(signal);
                // PID 1 of its namespace ignores anything else from outside.
                let _ = kill(child, Signal::SIGKILL);
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(JailError::sys("reading the supervisor's signals", e)),
        }
    };
    Ok(match status {
        WaitStatus::Exited(_, code) => checked_record(read_report(report), code as u8),
        WaitStatus::Signaled(_, signal, _) => match asked_to_end {
            // We killed it because we were asked to end: say so the shell's way.
            Some(asked) => ExitRecord::signalled(asked as i32, true, format!("the VMM was stopped by {asked}")),
            None => {
                let message = death_message(signal, cgroups.oom_kills(), memory_limit);
                eprintln!("palisade-vmm: {message}");
                ExitRecord::signalled(signal as i32, false, message)
            }
        },
        other => {
            let message = format!("the jailed VMM stopped unexpectedly ({other:?})");
            eprintln!("palisade-vmm: {message}");
            ExitRecord::vmm_error(message)
        }
    })
}

/// What the jailed VMM wrote into its report pipe before it exited (bounded; it has exited,
/// so the pipe holds all it will ever hold).
fn read_report(report: &OwnedFd) -> Option<ExitRecord> {
    let mut buf = vec![0u8; MAX_RECORD_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(report, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
    }
    ExitRecord::from_json(&buf[..len]).ok()
}

/// The jailed VMM's own record, held to its exit status: it cannot claim a clean end with a
/// failing status (nor the other way round), and a VMM that said nothing gets a record of
/// its status alone.
fn checked_record(reported: Option<ExitRecord>, code: u8) -> ExitRecord {
    match reported {
        Some(mut record) if record.clean == (code == 0) => {
            record.exit_status = code;
            record
        }
        _ if code == 0 => ExitRecord { exit_status: 0, ..ExitRecord::of_exit(&crate::VmExit::Reset, crate::VmExit::Reset.to_string()) },
        _ => {
            let message = format!("the jailed VMM exited with status {code} without saying why");
            ExitRecord { exit_status: code, ..ExitRecord::vmm_error(message) }
        }
    }
}

/// One line saying why the jailed VMM died of `signal`.
fn death_message(signal: Signal, oom_kills: u64, memory_limit: u64) -> String {
    match signal {
        Signal::SIGSYS => "killed by seccomp (SIGSYS): a VMM thread made a system call outside its allowlist".to_string(),
        Signal::SIGKILL if oom_kills > 0 => format!(
            "killed by the out-of-memory killer: the VMM exceeded its cgroup memory limit of {} MiB (guest RAM + --jail-memory-overhead)",
            memory_limit >> 20
        ),
        other => format!("the jailed VMM was killed by {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_round_trip_and_name_their_owner() {
        let id = JailId::of_self().unwrap();
        assert_eq!(JailId::parse(&id.to_string()), Some(id));
        assert!(id.owner_alive());
        assert!(!JailId { start_time: id.start_time + 1, ..id }.owner_alive(), "a reused pid is not the owner");
        assert_eq!(JailId::parse("12-x"), None);
        assert_eq!(JailId::parse("palisade"), None);
    }

    #[test]
    fn messages_name_the_callers_paths() {
        let mut map = PathMap { uid: 900_001, ..PathMap::default() };
        map.push(Path::new("/vm/disk1"), Path::new("/data/one.img"));
        map.push(Path::new("/vm/disk10"), Path::new("/data/ten.img"));
        map.push(Path::new("/vm/kernel"), Path::new("/k/vmlinux"));
        assert_eq!(map.host_text("disk /vm/disk10: bad"), "disk /data/ten.img: bad");
        assert_eq!(map.host_text("kernel /vm/kernel: is not a Linux kernel"), "kernel /k/vmlinux: is not a Linux kernel");
        assert!(map.host_text("disk /vm/disk1: Permission denied (os error 13)").contains("uid 900001"));
    }

    #[test]
    fn the_plan_binds_inputs_under_vm_and_checks_them() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, "k").unwrap();
        let disk = dir.path().join("rw.img");
        std::fs::write(&disk, vec![0; 4096]).unwrap();
        let mut config = VmConfig::new(&kernel);
        config.disks.push(crate::DiskConfig { path: disk.clone(), ..Default::default() });
        config.rng = true;
        let p = plan(&config, 900_001, 900_001).unwrap();
        assert_eq!(p.config.kernel, Path::new("/vm/kernel"));
        assert_eq!(p.config.disks[0].path, Path::new("/vm/disk0"));
        assert_eq!(p.largest_writable, 4096);
        assert!(p.entries.contains(&Entry::Device { path: "/dev/urandom".into(), host: "/dev/urandom".into() }));
        assert!(p.entries.contains(&Entry::Bind { path: "/vm/disk0".into(), host: disk, read_only: false }));

        config.kernel = dir.path().join("missing");
        let e = plan(&config, 900_001, 900_001).err().unwrap().to_string();
        assert!(e.starts_with(&format!("kernel {}: No such file", config.kernel.display())), "{e}");
        config.kernel = dir.path().to_owned();
        assert!(plan(&config, 900_001, 900_001).err().unwrap().to_string().ends_with("is a directory"));
    }

    #[test]
    fn cpu_quota_defaults_to_one_more_than_the_vcpus() {
        assert_eq!(cpu_quota(None, 2), 300_000);
        assert_eq!(cpu_quota(Some(0.5), 2), 50_000);
        assert_eq!(cpu_quota(Some(f64::NAN), 1), 200_000);
    }

    #[test]
    fn seccomp_deaths_are_named() {
        assert!(death_message(Signal::SIGSYS, 0, 0).starts_with("killed by seccomp (SIGSYS)"));
        assert!(death_message(Signal::SIGKILL, 1, 256 << 20).contains("256 MiB"));
        assert_eq!(death_message(Signal::SIGKILL, 0, 0), "the jailed VMM was killed by SIGKILL");
    }
}
