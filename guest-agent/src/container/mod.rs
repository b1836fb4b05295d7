//! OCI containers inside the guest: everything runc or crun would apply, from an OCI
//! runtime spec. One file per concern: [`spec`] (load and check), [`namespaces`],
//! [`rootfs`] (mounts), [`devices`], [`capabilities`], [`seccomp`], [`rlimits`],
//! [`cgroup`] (v2) with its device allowlist [`cgroup_devices`], [`process`] (user, caps, exec), [`state`]; [`child`] runs the
//! prepared steps in the container's init; [`exec`] starts further processes in a container.
//!
//! [`create`] turns a spec into a list of init actions (all memory prepared up front),
//! clones the init into its namespaces, writes its id maps and cgroup from the agent's
//! side, and returns once the init waits at the exec barrier (state `created`).
//! [`Container::start`] releases the barrier; the init execs the user's program.

pub mod agent;
pub mod capabilities;
pub mod cgroup;
pub mod cgroup_devices;
pub mod child;
pub mod devices;
pub mod exec;
pub mod namespaces;
pub mod process;
pub mod ps;
pub mod rlimits;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::Spec;

use child::{Action, InRoot, REPORT_ERROR, REPORT_PID, REPORT_READY, REPORT_SIZE, REPORT_STEP};
use namespaces::{JoinFd, Kind, Namespaces};
pub use state::Status;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Devices(#[from] cgroup_devices::DeviceRulesError),
    #[error("namespace {path}: {source}")]
    Namespace { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("{program}: permission denied")]
    PermissionDenied { program: String },
    /// A step of the container's init failed: "mount proc on /proc: EPERM: …".
    #[error("{step}: {errno}")]
    Init { step: String, errno: Errno },
    #[error("the container's init exited {when} without saying why (a seccomp profile that kills it?)")]
    InitVanished { when: &'static str },
    #[error("the container's init was not ready after {secs} s; it is stuck in {where_}")]
    InitStuck { secs: u64, where_: String },
    #[error("container {id} is {status}; {action} needs it {needed}")]
    WrongState { id: String, status: &'static str, action: &'static str, needed: &'static str },
}

fn invalid(msg: String) -> ContainerError {
    ContainerError::Spec(spec::SpecError::Invalid(msg))
}

/// Where and how to create a container.
pub struct CreateOptions<'a> {
    pub id: &'a str,
    /// The root filesystem directory (already mounted by the agent; `root.path` of
    /// the spec is not consulted).
    pub rootfs: &'a Path,
    /// Relative bind-mount sources are resolved against it.
    pub bundle: Option<&'a Path>,
    /// Descriptors that become the init's 0, 1, 2 (a pty slave when
    /// `process.terminal`).
    pub stdio: [RawFd; 3],
    /// The cgroup v2 hierarchy to put the container in; `None` puts it in none (tests
    /// on hosts without cgroup v2 controllers), which is refused when the spec sets
    /// resources.
    pub cgroup_root: Option<&'a Path>,
}

/// What the agent does around the init: the plan built from a spec.
#[derive(Debug)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Flags of the clone that creates the init.
    pub clone_flags: libc::c_int,
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    pub oom_score_adj: Option<i32>,
    pub warnings: Vec<String>,
}

fn cstr(field: &str, s: &str) -> Result<CString, ContainerError> {
    CString::new(s).map_err(|_| invalid(format!("{field}: contains a NUL byte")))
}

/// Builds the init's actions. `joined` are the opened namespaces to join (their
/// descriptors must stay open until the init is created); `seccomp` the compiled
/// `linux.seccomp`.
pub fn plan(spec: &Spec, opts: &CreateOptions<'_>, joined: &[JoinFd], seccomp: Option<seccomp::Program>) -> Result<Plan, ContainerError> {
    let linux = spec.linux().as_ref().ok_or_else(|| invalid("linux: missing".into()))?;
    let process = spec.process().as_ref().ok_or_else(|| invalid("process: missing".into()))?;
    let ns = Namespaces::from_spec(linux.namespaces().as_deref().unwrap_or_default()).map_err(invalid)?;
    if !ns.is_new(Kind::Mount) {
        return Err(invalid("linux.namespaces: the container needs a new mount namespace".into()));
    }
    if spec.hostname().is_some() && !ns.is_new(Kind::Uts) {
        return Err(invalid("hostname: setting it needs a new uts namespace".into()));
    }
    let mut warnings = Vec::new();
    let mut a = vec![Action::WaitParent];
    let new_user = ns.is_new(Kind::User);
    let (uid_map, gid_map) = if new_user {
        let uids = linux.uid_mappings().clone().unwrap_or_default();
        let gids = linux.gid_mappings().clone().unwrap_or_default();
        if uids.is_empty() || gids.is_empty() {
            return Err(invalid("linux.uidMappings/gidMappings: a new user namespace needs both".into()));
        }
        namespaces::check_mappings("linux.uidMappings", &uids).map_err(invalid)?;
        namespaces::check_mappings("linux.gidMappings", &gids).map_err(invalid)?;
        if namespaces::map_id(&uids, 0).is_none() || namespaces::map_id(&gids, 0).is_none() {
            return Err(invalid("linux.uidMappings/gidMappings: container id 0 must be mapped".into()));
        }
        a.push(Action::BecomeNamespaceRoot);
        (Some(namespaces::map_text(&uids)), Some(namespaces::map_text(&gids)))
    } else {
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
            warnings.push("linux.uidMappings without a new user namespace are ignored".into());
        }
        (None, None)
    };
    for j in joined {
        a.push(Action::SetNs { fd: j.fd.as_raw_fd(), nstype: j.kind.flag() });
    }
    if ns.unshare_flags() != 0 {
        a.push(Action::Unshare { flags: ns.unshare_flags() });
    }
    if ns.is_new(Kind::Network) {
        a.push(Action::LoopbackUp);
    }
    let second_fork = ns.needs_second_fork();
    if ns.is_new(Kind::Time) {
        a.push(Action::Unshare { flags: Kind::Time.flag() });
        let offsets: String = linux
            .time_offsets()
            .iter()
            .flatten()
            .map(|(clock, o)| format!("{clock} {} {}\n", o.secs().unwrap_or(0), o.nanosecs().unwrap_or(0)))
            .collect();
        if !offsets.is_empty() {
            a.push(Action::WriteFile { path: c"/proc/self/timens_offsets".to_owned(), content: offsets.into_bytes() });
        }
    }
    let mut clone_flags = libc::SIGCHLD;
    if new_user {
        clone_flags |= libc::CLONE_NEWUSER;
    }
    if second_fork {
        if ns.is_new(Kind::Pid) {
            a.push(Action::Unshare { flags: libc::CLONE_NEWPID });
        }
        a.push(Action::ForkAgain);
    } else if ns.is_new(Kind::Pid) {
        clone_flags |= libc::CLONE_NEWPID;
    }
    let terminal = process.terminal().unwrap_or(false);
    a.push(Action::Stdio { fds: opts.stdio, controlling_tty: terminal });
    a.push(Action::Umask(0));

    // The root and its mounts.
    let root_str = opts.rootfs.to_str().ok_or_else(|| invalid("root: the rootfs path is not UTF-8".into()))?;
    if !opts.rootfs.is_absolute() {
        return Err(invalid(format!("root: {root_str} is not absolute")));
    }
    let root = cstr("root.path", root_str)?;
    let propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => None,
        Some(p) => {
            Some(rootfs::propagation(p).ok_or_else(|| invalid(format!("linux.rootfsPropagation: {p:?} is not a propagation type")))?)
        }
    };
    let shared = propagation.is_some_and(|p| p & libc::MS_SHARED != 0);
    let first = match propagation {
        Some(p) if !shared => p | libc::MS_REC,
        _ => libc::MS_SLAVE | libc::MS_REC,
    };
    a.push(Action::Propagation { target: c"/".to_owned(), flags: first });
    a.push(Action::PrepareRoot { root: root.clone() });
    let mut dev_is_tmpfs = false;
    let mut has_devpts = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let step = rootfs::mount_step(i, m, opts.bundle, |p| std::fs::metadata(p).map(|md| md.is_dir())).map_err(invalid)?;
        if step.target.display == "/dev" && step.fstype.is_some() {
            dev_is_tmpfs = true;
        }
        if step.target.display == "/dev/pts" && step.fstype.as_deref() == Some(c"devpts") {
            has_devpts = true;
        }
        a.push(Action::Mount(step));
    }
    // Devices: in a user namespace mknod is refused, so the agent's nodes are bound.
    if dev_is_tmpfs {
        a.extend(devices::defaults(new_user).into_iter().map(Action::Device));
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        a.push(Action::Device(devices::from_spec(i, d, new_user).map_err(invalid)?));
    }
    if dev_is_tmpfs {
        for (link, target) in devices::DEFAULT_LINKS {
            if *link == "/dev/ptmx" && !has_devpts {
                continue;
            }
            a.push(Action::Symlink { target: cstr("link", target)?, link: InRoot::new(link).expect("valid default link") });
        }
        if terminal {
            a.push(Action::Device(child::DeviceStep {
                path: InRoot::new("/dev/console").expect("valid"),
                mode: libc::S_IFCHR | 0o620,
                dev: 0,
                uid: 0,
                gid: 0,
                bind_from: Some(c"/proc/self/fd/0".to_owned()),
            }));
        }
    }
    a.push(Action::PivotRoot { root });
    if shared {
        a.push(Action::Propagation { target: c"/".to_owned(), flags: propagation.unwrap_or(0) | libc::MS_REC });
    }
    let mut sysctls: Vec<_> = linux.sysctl().iter().flatten().collect();
    sysctls.sort();
    for (key, value) in sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        a.push(Action::WriteFile { path: cstr("linux.sysctl", &path)?, content: value.clone().into_bytes() });
    }
    for (i, p) in linux.masked_paths().iter().flatten().enumerate() {
        a.push(Action::Mask { path: rootfs::container_path(&format!("linux.maskedPaths[{i}]"), p).map_err(invalid)? });
    }
    for (i, p) in linux.readonly_paths().iter().flatten().enumerate() {
        a.push(Action::ReadOnly { path: rootfs::container_path(&format!("linux.readonlyPaths[{i}]"), p).map_err(invalid)? });
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        a.push(Action::ReadOnlyRoot);
    }
    if let Some(h) = spec.hostname() {
        a.push(Action::Hostname { name: cstr("hostname", h)? });
    }
    if let Some(d) = spec.domainname() {
        a.push(Action::Domainname { name: cstr("domainname", d)? });
    }
    a.extend(process::actions(process, seccomp).map_err(invalid)?);
    Ok(Plan { actions: a, clone_flags, uid_map, gid_map, oom_score_adj: process.oom_score_adj(), warnings })
}

/// A created container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// The container's init (its PID 1), as the agent sees it.
    pub pid: i32,
    /// The first child when the init is a grandchild (joined pid or new time
    /// namespace); it exits by itself once the init runs, and its exit is of no
    /// interest.
    pub helper_pid: Option<i32>,
    pub cgroup: Option<cgroup::Cgroup>,
    pub warnings: Vec<String>,
    /// The spec's `linux.seccomp`, which processes exec'd into the container get too.
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    status: Status,
    go: Option<OwnedFd>,
    reports: Option<OwnedFd>,
    descriptions: Vec<String>,
    program: String,
}

/// How long a container's init may take to reach its exec barrier.
const INIT_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until `fd` is readable (or closed); false when `timeout` passed first.
fn wait_readable(fd: &OwnedFd, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        match n {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// Where process `pid` is blocked, from /proc (for the error of a stuck init).
fn where_stuck(pid: i32) -> String {
    let read = |what: &str| std::fs::read_to_string(format!("/proc/{pid}/{what}")).map(|s| s.trim().to_string()).unwrap_or_default();
    let syscall = read("syscall");
    let stat = read("stat");
    // Fields after "(comm) ": state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize| fields.get(i).copied().unwrap_or("?");
    let status = read("status");
    let pick = |key: &str| {
        status.lines().find(|l| l.starts_with(key)).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")).unwrap_or_default()
    };
    format!(
        "pid {pid} (state {}, system call {}, {} user and {} system ticks, wchan {}, NSpid {}, SigPnd {}, SigBlk {})",
        field(0),
        syscall.split_whitespace().next().unwrap_or("?"),
        field(11),
        field(12),
        read("wchan"),
        pick("NSpid:"),
        pick("SigPnd:"),
        pick("SigBlk:"),
    )
}

fn read_report(fd: &OwnedFd) -> io::Result<Option<(u32, u32, i32)>> {
    let mut rec = [0u8; REPORT_SIZE];
    let mut got = 0;
    while got < REPORT_SIZE {
        // SAFETY: reading into the live local buffer, within its bounds.
        let n = unsafe { libc::read(fd.as_raw_fd(), rec[got..].as_mut_ptr().cast(), REPORT_SIZE - got) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        got += n as usize;
    }
    let u = |i: usize| u32::from_ne_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    Ok(Some((u(0), u(4), u(8) as i32)))
}

fn write_go(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: writing one byte from a live local to our pipe.
    if unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// The (kind, major, minor) of the nodes `linux.devices` creates, for the allowlist
/// (their numbers were range-checked by [`plan`]).
fn created_devices(linux: &oci_spec::runtime::Linux) -> Vec<(libc::mode_t, u32, u32)> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let kind = |t| match t {
        T::B => Some(libc::S_IFBLK),
        T::C | T::U => Some(libc::S_IFCHR),
        T::A | T::P => None,
    };
    linux.devices().iter().flatten().filter_map(|d| Some((kind(d.typ())?, d.major() as u32, d.minor() as u32))).collect()
}

/// Creates the container from `spec`: returns when its init waits at the exec barrier.
pub fn create(spec: &Spec, opts: &CreateOptions<'_>) -> Result<Container, ContainerError> {
    spec::validate(spec)?;
    let linux = spec.linux().as_ref().ok_or_else(|| invalid("linux: missing".into()))?;
    let program = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first().cloned()).unwrap_or_default();
    let ns = Namespaces::from_spec(linux.namespaces().as_deref().unwrap_or_default()).map_err(invalid)?;
    let joined = namespaces::open_joined(&ns).map_err(|(path, source)| ContainerError::Namespace { path, source })?;
    let seccomp = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
    let mut warnings = Vec::new();
    if let Some(p) = &seccomp {
        if !p.unknown_syscalls.is_empty() {
            warnings.push(format!(
                "linux.seccomp: syscalls unknown to this kernel's libseccomp were skipped: {}",
                p.unknown_syscalls.join(", ")
            ));
        }
    }
    let plan = plan(spec, opts, &joined, seccomp)?;
    warnings.extend(plan.warnings.iter().cloned());
    let resources = linux.resources().as_ref();
    let cgroup = match opts.cgroup_root {
        Some(root) => {
            let rel = cgroup::relative_path(linux.cgroups_path().as_deref(), opts.id)?;
            let (cg, w) = cgroup::Cgroup::create(root, &rel, resources)?;
            warnings.extend(w);
            // Default deny, the spec's rules, then what every container needs.
            let rules = cgroup_devices::container_rules(
                resources.and_then(|r| r.devices().as_deref()).unwrap_or_default(),
                &created_devices(linux),
            )?;
            cg.restrict_devices(&rules)?;
            Some(cg)
        }
        None if resources.is_some_and(|r| r.memory().is_some() || r.pids().is_some() || r.cpu().is_some()) => {
            return Err(cgroup::CgroupError::Unavailable(PathBuf::from("/sys/fs/cgroup")).into())
        }
        None => {
            if resources.and_then(|r| r.devices().as_ref()).is_some_and(|d| !d.is_empty()) {
                warnings.push("linux.resources.devices: not applied (the container has no cgroup)".into());
            }
            None
        }
    };
    let mut container = launch(opts.id, &plan, cgroup, program, warnings)?;
    drop(joined);
    container.seccomp = linux.seccomp().clone();
    Ok(container)
}

/// Clones a process that runs `plan`'s actions, does the agent's side of its set-up (id
/// maps, the cgroup, oom_score_adj), releases it, and returns once it waits at its
/// barrier. A process that fails on the way is SIGKILLed (the caller reaps it).
fn launch(
    id: &str,
    plan: &Plan,
    cgroup: Option<cgroup::Cgroup>,
    program: String,
    warnings: Vec<String>,
) -> Result<Container, ContainerError> {
    let descriptions: Vec<String> = plan.actions.iter().map(Action::describe).collect();
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("report pipe")(e.into()))?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("start pipe")(e.into()))?;
    let actions = &plan.actions;
    let (rfd, gfd) = (report_w.as_raw_fd(), go_r.as_raw_fd());
    // SAFETY: a raw clone without a new stack behaves like fork for the calling
    // thread. The child only runs child::run, which makes raw system calls on memory
    // prepared above (no allocation, no locks) and never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, plan.clone_flags as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; see child::run.
        unsafe { child::run(actions, rfd, gfd) }
    }
    if pid < 0 {
        return Err(io_err(format!("clone of {id}'s first process"))(io::Error::last_os_error()));
    }
    let pid = pid as i32;
    drop(report_w);
    drop(go_r);
    let mut container = Container {
        id: id.to_string(),
        pid,
        helper_pid: None,
        cgroup,
        warnings,
        seccomp: None,
        status: Status::Creating,
        go: Some(go_w),
        reports: Some(report_r),
        descriptions,
        program,
    };
    let kill = |c: &Container| {
        // SAFETY: signalling our own child, not yet reaped (the caller reaps it).
        unsafe { libc::kill(c.pid, libc::SIGKILL) };
    };
    let setup = (|| {
        if let Some(map) = &plan.uid_map {
            std::fs::write(format!("/proc/{pid}/uid_map"), map).map_err(io_err(format!("writing /proc/{pid}/uid_map")))?;
        }
        if let Some(map) = &plan.gid_map {
            std::fs::write(format!("/proc/{pid}/gid_map"), map).map_err(io_err(format!("writing /proc/{pid}/gid_map")))?;
        }
        if let Some(cg) = &container.cgroup {
            cg.add(pid)?;
        }
        if let Some(adj) = plan.oom_score_adj {
            std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
                .map_err(io_err(format!("writing /proc/{pid}/oom_score_adj")))?;
        }
        write_go(container.go.as_ref().expect("go pipe")).map_err(io_err(format!("releasing {id}'s first process")))
    })();
    if let Err(e) = setup {
        kill(&container);
        return Err(e);
    }
    match container.read_until_ready() {
        Ok(()) => {
            container.status = Status::Created;
            Ok(container)
        }
        Err(e) => {
            kill(&container);
            Err(e)
        }
    }
}

impl Container {
    pub fn status(&self) -> Status {
        self.status
    }

    fn step_error(&self, step: u32, errno: i32) -> ContainerError {
        let errno = Errno::from_raw(errno);
        let description = self.descriptions.get(step as usize).cloned().unwrap_or_else(|| "exec".into());
        if description.starts_with("exec ") {
            let program = self.program.clone();
            return match errno {
                Errno::ENOENT | Errno::ENOTDIR => ContainerError::NotFound { program },
                Errno::EACCES | Errno::EPERM => ContainerError::PermissionDenied { program },
                errno => ContainerError::Init { step: description, errno },
            };
        }
        ContainerError::Init { step: description, errno }
    }

    fn read_until_ready(&mut self) -> Result<(), ContainerError> {
        let reports = self.reports.as_ref().expect("report pipe");
        let deadline = std::time::Instant::now() + INIT_READY_TIMEOUT;
        let mut step = None;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !wait_readable(reports, left).map_err(io_err("waiting for the init's reports"))? {
                let doing = step.and_then(|s: u32| self.descriptions.get(s as usize)).map(String::as_str).unwrap_or("its first step");
                return Err(ContainerError::InitStuck {
                    secs: INIT_READY_TIMEOUT.as_secs(),
                    where_: format!("{doing}: {}", where_stuck(self.pid)),
                });
            }
            match read_report(reports).map_err(io_err("reading the init's reports"))? {
                None => return Err(ContainerError::InitVanished { when: "before it was ready" }),
                Some((REPORT_READY, _, _)) => return Ok(()),
                Some((REPORT_STEP, s, _)) => step = Some(s),
                Some((REPORT_PID, _, pid)) => {
                    tracing::debug!(helper = self.pid, init = pid, "the container's init was forked into its pid namespace");
                    self.helper_pid = Some(self.pid);
                    self.pid = pid;
                }
                Some((REPORT_ERROR, step, errno)) => return Err(self.step_error(step, errno)),
                Some((kind, _, _)) => return Err(io_err("reading the init's reports")(io::Error::other(format!("unknown report {kind}")))),
            }
        }
    }

    /// Releases the exec barrier; returns once the user's program is exec'd.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        if !self.status.can_start() {
            return Err(ContainerError::WrongState { id: self.id.clone(), status: self.status.name(), action: "start", needed: "created" });
        }
        let go = self.go.take().expect("go pipe while created");
        write_go(&go).map_err(io_err("releasing the exec barrier"))?;
        drop(go);
        let reports = self.reports.take().expect("report pipe while created");
        let next = || loop {
            match read_report(&reports) {
                Ok(Some((REPORT_STEP, _, _))) => continue,
                other => return other,
            }
        };
        match next().map_err(io_err("reading the init's reports"))? {
            None => {
                self.status = Status::Running;
                Ok(())
            }
            Some((REPORT_ERROR, step, errno)) => {
                self.status = Status::Stopped;
                Err(self.step_error(step, errno))
            }
            Some(_) => {
                self.status = Status::Stopped;
                Err(ContainerError::InitVanished { when: "after start" })
            }
        }
    }

    /// Records that the init exited (the caller reaps it).
    pub fn mark_stopped(&mut self) {
        self.status = self.status.on_exit();
    }
}
