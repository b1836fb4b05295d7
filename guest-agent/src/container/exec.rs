//! `exec`: a further process in a created or running container, as runc's `exec` starts
//! it. It joins the namespaces of the container's init (found through `/proc/PID/ns`: the
//! user namespace first, the mount namespace last, so the others are entered with the
//! container's privileges and the root is the container's), is put in the container's
//! cgroup, forks once more so it is inside the container's pid (and time) namespace, and
//! then becomes its `process` object: rlimits, the container's seccomp profile, user,
//! capabilities, umask, working directory, the program.

use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process};

use super::child::Action;
use super::namespaces::{JoinFd, Kind};
use super::{cgroup, invalid, launch, process, seccomp, Container, ContainerError, Plan};

/// The order in which a container's namespaces are joined, with their `/proc/PID/ns` names.
const JOIN_ORDER: [(Kind, &str); 8] = [
    (Kind::User, "user"),
    (Kind::Ipc, "ipc"),
    (Kind::Uts, "uts"),
    (Kind::Network, "net"),
    (Kind::Pid, "pid"),
    (Kind::Cgroup, "cgroup"),
    (Kind::Time, "time"),
    (Kind::Mount, "mnt"),
];

/// What a process exec'd into a container joins, taken from the container.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    /// The container's id, for messages.
    pub container: String,
    /// The container's init, whose namespaces are joined.
    pub init_pid: i32,
    pub cgroup: Option<PathBuf>,
    pub seccomp: Option<LinuxSeccomp>,
}

impl Container {
    /// What a process exec'd into this container joins.
    pub fn exec_target(&self) -> ExecTarget {
        ExecTarget {
            container: self.id.clone(),
            init_pid: self.pid,
            cgroup: self.cgroup.as_ref().map(|c| c.path.clone()),
            seccomp: self.seccomp.clone(),
        }
    }
}

/// Opens the namespaces of `pid` that differ from this process's own (joining one's own
/// user namespace is an error, and joining any other of one's own is pointless).
pub fn namespaces_of(pid: i32) -> Result<Vec<JoinFd>, ContainerError> {
    let mut out = Vec::new();
    for (kind, name) in JOIN_ORDER {
        let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let theirs = match std::fs::metadata(&path) {
            Ok(m) => m,
            // A kernel without this kind of namespace (time before 5.6).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && kind == Kind::Time => continue,
            Err(source) => return Err(ContainerError::Namespace { path, source }),
        };
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(|source| ContainerError::Namespace { path: PathBuf::from(format!("/proc/self/ns/{name}")), source })?;
        if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
            continue;
        }
        let file = std::fs::File::open(&path).map_err(|source| ContainerError::Namespace { path: path.clone(), source })?;
        out.push(JoinFd { kind, path, fd: file.into() });
    }
    Ok(out)
}

/// The actions of an exec'd process: join `joined`, fork into the pid namespace, stdio,
/// then what [`process::actions`] makes of its `process` object.
pub fn plan(process: &Process, joined: &[JoinFd], stdio: [RawFd; 3], seccomp: Option<seccomp::Program>) -> Result<Plan, ContainerError> {
    use std::os::fd::AsRawFd;
    let mut a = vec![Action::WaitParent];
    for j in joined {
        a.push(Action::SetNs { fd: j.fd.as_raw_fd(), nstype: j.kind.flag() });
    }
    // setns of a pid or time namespace applies to children only.
    if joined.iter().any(|j| matches!(j.kind, Kind::Pid | Kind::Time)) {
        a.push(Action::ForkAgain);
    }
    a.push(Action::Stdio { fds: stdio, controlling_tty: process.terminal().unwrap_or(false) });
    a.extend(process::actions(process, seccomp).map_err(invalid)?);
    Ok(Plan {
        actions: a,
        clone_flags: libc::SIGCHLD,
        uid_map: None,
        gid_map: None,
        oom_score_adj: process.oom_score_adj(),
        warnings: Vec::new(),
    })
}

/// Starts `process` in `target`'s container under the name `id`; returns once the
/// program runs (or why it could not). The returned process's `pid` is the program.
pub fn exec(target: &ExecTarget, id: &str, process: &Process, stdio: [RawFd; 3]) -> Result<Container, (Option<i32>, ContainerError)> {
    super::spec::validate_process(process).map_err(|e| (None, e.into()))?;
    let program = process.args().as_ref().and_then(|a| a.first().cloned()).unwrap_or_default();
    let joined = namespaces_of(target.init_pid).map_err(|e| (None, e))?;
    let seccomp = target.seccomp.as_ref().map(seccomp::compile).transpose().map_err(|e| (None, e.into()))?;
    let plan = plan(process, &joined, stdio, seccomp).map_err(|e| (None, e))?;
    let cgroup = target.cgroup.clone().map(|path| cgroup::Cgroup { path });
    let mut launched = launch(id, &plan, cgroup, program, Vec::new()).map_err(|e| (None, e))?;
    drop(joined);
    match launched.start() {
        Ok(()) => Ok(launched),
        Err(e) => Err((Some(launched.pid), e)),
    }
}
