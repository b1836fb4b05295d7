//! The container's cgroup on the host, as runc makes it (`linux.cgroupsPath`), holding the
//! container's monitor: the process callers know as the container. containerd's shim and
//! conmon learn of OOM kills from that cgroup's memory events (`memory.events` on cgroup
//! v2, `memory.oom_control` on v1), never from the runtime. The container's real limits
//! and its OOM kills are in the guest, so when the guest reports one, the monitor makes the
//! host's cgroup count one too: it lowers the cgroup's limit to just above what it uses,
//! and a child of its own, marked the OOM killer's first choice, allocates until the
//! kernel kills it. The limit is then lifted again.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroups are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How far above its usage the limit goes while an OOM kill is provoked.
const HEADROOM: u64 = 8 << 20;
/// The most a provoking child allocates before it gives up (the limit failed to hold).
const PROVOKE_MAX_BYTES: usize = 256 << 20;
const PROVOKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("linux.cgroupsPath {0:?}: {1}")]
    BadPath(String, &'static str),
    #[error("host cgroup {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("host cgroup {0}: {1}")]
    Failed(PathBuf, String),
}

/// The hierarchy the memory controller is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hierarchy {
    /// cgroup v2 (unified) at /sys/fs/cgroup.
    V2,
    /// cgroup v1's memory hierarchy at /sys/fs/cgroup/memory.
    V1,
}

impl Hierarchy {
    /// This host's, as conmon decides: v2 when /sys/fs/cgroup is a cgroup2 mount.
    pub fn detect() -> Option<Hierarchy> {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file() {
            Some(Hierarchy::V2)
        } else if Path::new(CGROUP_ROOT).join("memory/memory.limit_in_bytes").is_file() {
            Some(Hierarchy::V1)
        } else {
            None
        }
    }

    fn mount(self) -> PathBuf {
        match self {
            Hierarchy::V2 => PathBuf::from(CGROUP_ROOT),
            Hierarchy::V1 => Path::new(CGROUP_ROOT).join("memory"),
        }
    }

    fn limit_file(self) -> &'static str {
        match self {
            Hierarchy::V2 => "memory.max",
            Hierarchy::V1 => "memory.limit_in_bytes",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            Hierarchy::V2 => "memory.current",
            Hierarchy::V1 => "memory.usage_in_bytes",
        }
    }

    fn no_limit(self) -> &'static str {
        match self {
            Hierarchy::V2 => "max",
            Hierarchy::V1 => "-1",
        }
    }
}

/// The cgroup (relative to the hierarchy's root) of a container, from its
/// `linux.cgroupsPath` as runc reads it: absolute paths as they are, relative ones under
/// this process's cgroup, `slice:prefix:name` with `--systemd-cgroup` as systemd would
/// place the scope (`a-b.slice` is `a.slice/a-b.slice`), and none at all `/ID`
/// (`system.slice/palisade-ID.scope` with `--systemd-cgroup`).
pub fn relative_path(cgroups_path: Option<&str>, id: &str, systemd: bool, own: &Path) -> Result<PathBuf, HostCgroupError> {
    let given = cgroups_path.filter(|p| !p.is_empty());
    let bad = |why| HostCgroupError::BadPath(given.unwrap_or_default().into(), why);
    let path = match (given, systemd) {
        (None, false) => PathBuf::from(id),
        (None, true) => PathBuf::from(format!("system.slice/palisade-{id}.scope")),
        (Some(p), true) => {
            let parts: Vec<&str> = p.split(':').collect();
            let [slice, prefix, name] = parts[..] else {
                return Err(bad("with --systemd-cgroup it is slice:prefix:name"));
            };
            let mut path =
                slice_path(if slice.is_empty() { "system.slice" } else { slice }).ok_or_else(|| bad("not a systemd slice name"))?;
            let unit = if name.ends_with(".slice") {
                return Err(bad("a container's unit is a scope, not a slice"));
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            path.push(unit);
            path
        }
        (Some(p), false) if p.starts_with('/') => PathBuf::from(p.trim_start_matches('/')),
        (Some(p), false) => own.join(p),
    };
    if path.as_os_str().is_empty() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad("it must name a cgroup below the root, without '..'"));
    }
    Ok(path)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice` (`-.slice` is the root).
fn slice_path(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(PathBuf::new());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") || stem.contains('/') {
        return None;
    }
    let mut path = PathBuf::new();
    let mut acc = String::new();
    for part in stem.split('-') {
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(part);
        path.push(format!("{acc}.slice"));
    }
    Some(path)
}

/// This process's cgroup in `hierarchy`, relative to its root (from /proc/self/cgroup).
pub fn own_cgroup(hierarchy: Hierarchy) -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let found = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match hierarchy {
            Hierarchy::V2 => controllers.is_empty(),
            Hierarchy::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        wanted.then(|| PathBuf::from(path.trim_start_matches('/')))
    });
    found.unwrap_or_default()
}

/// A container's cgroup on the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostCgroup {
    pub hierarchy: Hierarchy,
    /// The directory.
    pub dir: PathBuf,
    /// Palisade made it (and removes it); a cgroup that existed before is used as runc
    /// does and left as it was. Records written before this was kept say yes.
    #[serde(default = "made_here_by_default")]
    pub made_here: bool,
}

fn made_here_by_default() -> bool {
    true
}

impl HostCgroup {
    pub fn new(hierarchy: Hierarchy, relative: &Path) -> HostCgroup {
        HostCgroup { hierarchy, dir: hierarchy.mount().join(relative), made_here: false }
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> HostCgroupError {
        move |source| HostCgroupError::Io { path, source }
    }

    /// Makes the cgroup (and its parents), the memory controller enabled down to it, and
    /// records whether it was made here ([`HostCgroup::made_here`]).
    pub fn create(&mut self) -> Result<(), HostCgroupError> {
        let existed = self.dir.is_dir();
        fs::create_dir_all(&self.dir).map_err(self.io(self.dir.clone()))?;
        if self.hierarchy == Hierarchy::V2 {
            let root = self.hierarchy.mount();
            let relative = self.dir.strip_prefix(&root).unwrap_or(&self.dir).to_path_buf();
            let mut parent = root;
            for part in relative.components() {
                let control = parent.join("cgroup.subtree_control");
                let enabled = fs::read_to_string(&control).unwrap_or_default();
                if !enabled.split_whitespace().any(|c| c == "memory") {
                    fs::write(&control, "+memory").map_err(self.io(control.clone()))?;
                }
                parent.push(part);
            }
        }
        self.made_here = !existed;
        Ok(())
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn join(&self, pid: u32) -> Result<(), HostCgroupError> {
        let procs = self.dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(self.io(procs))
    }

    /// Removes the cgroup if it was made here, waiting briefly for its processes to be
    /// gone; one that existed before is left.
    pub fn remove(&self) -> Result<(), HostCgroupError> {
        if !self.made_here {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.io(self.dir.clone())(e)),
            }
        }
    }

    /// Makes the kernel's OOM killer kill one process in this cgroup — a child made for
    /// it — so that the cgroup's memory events count it. The caller is in the cgroup.
    pub fn provoke_oom_kill(&self) -> Result<(), HostCgroupError> {
        let fail = |m: String| HostCgroupError::Failed(self.dir.clone(), m);
        let usage_file = self.dir.join(self.hierarchy.usage_file());
        let usage: u64 = fs::read_to_string(&usage_file)
            .map_err(self.io(usage_file.clone()))?
            .trim()
            .parse()
            .map_err(|_| fail(format!("{} is not a number", usage_file.display())))?;
        let limit = self.dir.join(self.hierarchy.limit_file());
        let previous = fs::read_to_string(&limit).map_err(self.io(limit.clone()))?;
        let previous = match previous.trim() {
            // v1 reports "no limit" as a huge number; writing -1 restores it.
            v if self.hierarchy == Hierarchy::V1 && v.parse::<u64>().is_ok_and(|n| n >= 1 << 62) => self.hierarchy.no_limit().to_string(),
            v => v.to_string(),
        };
        fs::write(&limit, (usage + HEADROOM).to_string()).map_err(self.io(limit.clone()))?;
        let result = provoke_in_child();
        if let Err(e) = fs::write(&limit, &previous) {
            tracing::warn!("restoring {} to {previous}: {e}", limit.display());
        }
        result.map_err(fail)
    }
}

/// Forks a child that asks to be the OOM killer's first choice and allocates until it is
/// killed; waits for it. `Ok` when the kernel killed it.
fn provoke_in_child() -> Result<(), String> {
    // SAFETY: the child runs only async-signal-safe calls (open, write, close, mmap,
    // _exit) and plain stores into memory it mapped, then ends; the parent only waits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; this is the child and it never returns.
        unsafe {
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
            let chunk = 1usize << 20;
            let mut total = 0usize;
            while total < PROVOKE_MAX_BYTES {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    chunk,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    libc::_exit(2);
                }
                let bytes = p.cast::<u8>();
                let mut off = 0;
                while off < chunk {
                    std::ptr::write_volatile(bytes.add(off), 1);
                    off += 4096;
                }
                total += chunk;
            }
            libc::_exit(1);
        }
    }
    let deadline = Instant::now() + PROVOKE_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
                Ok(())
            } else {
                Err(format!("the allocating child was not OOM-killed (wait status {status:#x})"))
            };
        }
        if r < 0 {
            return Err(format!("waiting for the allocating child: {}", std::io::Error::last_os_error()));
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err("the allocating child was not OOM-killed in time".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_as_runc_places_them() {
        let own = Path::new("user.slice/session-1.scope");
        let p = |path: Option<&str>, systemd| relative_path(path, "c1", systemd, own).map(|p| p.display().to_string());
        assert_eq!(p(None, false).unwrap(), "c1");
        assert_eq!(p(Some(""), false).unwrap(), "c1");
        assert_eq!(p(Some("/libpod_parent/libpod-abc"), false).unwrap(), "libpod_parent/libpod-abc");
        assert_eq!(p(Some("k8s/pod1"), false).unwrap(), "user.slice/session-1.scope/k8s/pod1");
        assert_eq!(p(None, true).unwrap(), "system.slice/palisade-c1.scope");
        assert_eq!(
            p(Some("kubepods-besteffort-pod1.slice:cri-containerd:abc"), true).unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
        );
        assert_eq!(p(Some(":libpod:abc"), true).unwrap(), "system.slice/libpod-abc.scope");
        assert_eq!(p(Some("-.slice::abc"), true).unwrap(), "abc.scope");
        for bad in ["/a/../../etc", "/", "../x"] {
            assert!(p(Some(bad), false).is_err(), "{bad}");
        }
        for bad in ["a:b", "bad:x:y", "a--b.slice:x:y", "machine.slice:x:y.slice"] {
            assert!(p(Some(bad), true).is_err(), "{bad}");
        }
    }

    /// The OOM-kill count of a cgroup, as containerd and conmon read it.
    fn oom_kills(cg: &HostCgroup) -> u64 {
        let file = match cg.hierarchy {
            Hierarchy::V2 => "memory.events",
            Hierarchy::V1 => "memory.oom_control",
        };
        let text = fs::read_to_string(cg.dir.join(file)).unwrap();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
    }

    const CHILD: &str = "PALISADE_TEST_HOST_CGROUP_CHILD";

    /// A process in a cgroup of its own provokes two OOM kills: the cgroup counts both, the
    /// process lives on, and its limit is what it was. (Root and a memory cgroup are needed:
    /// the CI machines and the test host have both.)
    #[test]
    fn a_provoked_oom_kill_is_counted_and_spares_the_caller() {
        if let Ok(dir) = std::env::var(CHILD) {
            let cg: HostCgroup = serde_json::from_str(&dir).unwrap();
            cg.join(std::process::id()).unwrap();
            cg.provoke_oom_kill().unwrap();
            cg.provoke_oom_kill().unwrap();
            return;
        }
        let h = Hierarchy::detect().expect("a memory cgroup hierarchy on this host");
        let mut cg = HostCgroup::new(h, &own_cgroup(h).join(format!("palisade-test-{}", std::process::id())));
        cg.create().expect("making a cgroup (as root)");
        assert!(cg.made_here);
        let limit = fs::read_to_string(cg.dir.join(h.limit_file())).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "oci_runtime::host_cgroup::tests::a_provoked_oom_kill_is_counted_and_spares_the_caller", "--nocapture"])
            .env(CHILD, serde_json::to_string(&cg).unwrap())
            .output()
            .unwrap();
        let kills = oom_kills(&cg);
        let limit_after = fs::read_to_string(cg.dir.join(h.limit_file())).unwrap();
        cg.remove().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(kills, 2);
        assert_eq!(limit_after, limit);
        assert!(!cg.dir.exists());
    }

    /// A cgroup that existed before (a caller's, named by linux.cgroupsPath) is used and
    /// left as it was; one made here is removed.
    #[test]
    fn only_a_cgroup_made_here_is_removed() {
        let h = Hierarchy::detect().expect("a memory cgroup hierarchy on this host");
        let relative = own_cgroup(h).join(format!("palisade-test-left-{}", std::process::id()));
        let mut first = HostCgroup::new(h, &relative);
        first.create().expect("making a cgroup (as root)");
        let mut second = HostCgroup::new(h, &relative);
        second.create().unwrap();
        assert!(first.made_here && !second.made_here);
        second.remove().unwrap();
        assert!(second.dir.is_dir(), "a cgroup that existed before was removed");
        first.remove().unwrap();
        assert!(!first.dir.exists());
        let old_record = format!(r#"{{"hierarchy":"{}","dir":"/x"}}"#, serde_json::to_value(h).unwrap().as_str().unwrap());
        assert!(serde_json::from_str::<HostCgroup>(&old_record).unwrap().made_here);
    }
}
