//! The VMM's cgroup: memory (guest RAM plus overhead), pids and cpu limits, on cgroup v1
//! hosts, pure v2 hosts and hybrid ones (v1 controllers with a controller-less v2 tree at
//! `/sys/fs/cgroup/unified`, like the machines Palisade is developed on).
//!
//! For each controller the VMM is limited by, the v1 hierarchy carrying it is used if there
//! is one, else the v2 hierarchy if that controller is available there. The VM's cgroup is
//! `palisade/<jail id>`:
//! - v1: under the supervisor's own cgroup in that hierarchy (so the VMM stays inside
//!   whatever limits the caller is under);
//! - v2: under the supervisor's own cgroup if controllers can be enabled there, else under
//!   the root (v2 forbids enabling controllers below a cgroup that holds processes, which
//!   the supervisor's own cgroup does unless it is the root).
//!
//! The supervisor moves the VMM in before the VMM enters its cgroup namespace, and removes
//! the cgroup once the VMM has been reaped. A cgroup left by a SIGKILLed supervisor is
//! removed by the next jailed run's sweep ([`super::sweep_stale`]).

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::JailError;

/// The controllers the VMM is limited by.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The cgroup directory (under the base) that holds the VMs' cgroups.
pub const PARENT_NAME: &str = "palisade";
/// The CFS period quotas are expressed in.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What the VMM may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU time per [`CPU_PERIOD_US`]; `None`: unlimited.
    pub cpu_quota_us: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A hierarchy the VM gets a cgroup in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// Where the hierarchy is mounted.
    pub mount: PathBuf,
    /// The supervisor's own cgroup in it.
    pub own: PathBuf,
    /// The controllers used from it.
    pub controllers: Vec<&'static str>,
    /// `own` is a cgroup the caller named ([`under_parent`]), not the supervisor's: the
    /// VM's cgroup goes under it or nowhere.
    pub named: bool,
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    version: Version,
    /// The cgroup path the mount shows at its mount point.
    root: String,
    mount_point: PathBuf,
    /// v1: the controllers the hierarchy carries.
    controllers: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next()?;
            let options = after.next().unwrap_or("");
            let version = match fstype {
                "cgroup" => Version::V1,
                "cgroup2" => Version::V2,
                _ => return None,
            };
            let controllers = match version {
                Version::V1 => options.split(',').map(str::to_string).collect(),
                Version::V2 => Vec::new(),
            };
            Some(CgroupMount { version, root: root.to_string(), mount_point: PathBuf::from(mount_point), controllers })
        })
        .collect()
}

/// `/proc/self/cgroup`: (controllers, path) per hierarchy; v2's line has no controllers.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some((controllers, path.to_string()))
        })
        .collect()
}

/// The directory of cgroup `path` in a hierarchy whose mount shows `root` at `mount_point`.
fn cgroup_dir(mount_point: &Path, root: &str, path: &str) -> PathBuf {
    let relative = match path.strip_prefix(root) {
        Some(rest) if root != "/" => rest,
        _ => path,
    };
    mount_point.join(relative.trim_start_matches('/'))
}

/// Which hierarchies carry [`CONTROLLERS`] for this process, from the texts of
/// `/proc/self/mountinfo` and `/proc/self/cgroup`; `v2_available` says which controllers
/// a v2 cgroup directory offers (its `cgroup.controllers`).
fn plan(mountinfo: &str, proc_cgroup: &str, v2_available: impl Fn(&Path) -> Vec<String>) -> Vec<Hierarchy> {
    let mounts = parse_mountinfo(mountinfo);
    let memberships = parse_proc_cgroup(proc_cgroup);
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut add = |version, mount: &CgroupMount, own: PathBuf, controller: &'static str| match hierarchies.iter_mut().find(|h| h.own == own)
    {
        Some(h) => h.controllers.push(controller),
        None => hierarchies.push(Hierarchy { version, mount: mount.mount_point.clone(), own, controllers: vec![controller], named: false }),
    };
    let v2 = mounts.iter().find(|m| m.version == Version::V2);
    let v2_own = v2.and_then(|m| {
        let (_, path) = memberships.iter().find(|(c, _)| c.is_empty())?;
        Some((m, cgroup_dir(&m.mount_point, &m.root, path)))
    });
    let v2_offers = v2_own.as_ref().map(|(_, own)| v2_available(own)).unwrap_or_default();
    for controller in CONTROLLERS {
        let v1 = mounts.iter().find(|m| m.version == Version::V1 && m.controllers.iter().any(|c| c == controller));
        let v1_own = v1.and_then(|m| {
            let (_, path) = memberships.iter().find(|(c, _)| c.iter().any(|c| c == controller))?;
            Some((m, cgroup_dir(&m.mount_point, &m.root, path)))
        });
        if let Some((mount, own)) = v1_own {
            add(Version::V1, mount, own, controller);
        } else if let Some((mount, own)) = v2_own.as_ref().filter(|_| v2_offers.iter().any(|c| c == controller)) {
            add(Version::V2, mount, own.clone(), controller);
        }
    }
    hierarchies
}

/// The hierarchies of this host, as this process sees them.
pub fn detect() -> Vec<Hierarchy> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    plan(&mountinfo, &proc_cgroup, |dir| {
        std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default().split_whitespace().map(str::to_string).collect()
    })
}

/// `hierarchies` with the VM's cgroups to go under the cgroup `parent` (a path from each
/// hierarchy's root, such as a Kubernetes pod's `/kubepods/burstable/pod<uid>`: the VM then
/// counts in the pod's cgroup and is held to its limits) instead of under the supervisor's
/// own. `parent` must exist in every hierarchy.
pub fn under_parent(hierarchies: Vec<Hierarchy>, parent: &Path) -> Result<Vec<Hierarchy>, JailError> {
    let relative = parent
        .strip_prefix("/")
        .ok()
        .filter(|r| !r.as_os_str().is_empty() && r.components().all(|c| matches!(c, std::path::Component::Normal(_))));
    let Some(relative) = relative else {
        let problem = "not an absolute cgroup path below the root, without . or ..".into();
        return Err(JailError::CgroupParent { parent: parent.to_owned(), problem });
    };
    hierarchies
        .into_iter()
        .map(|mut h| {
            let own = h.mount.join(relative);
            if !own.is_dir() {
                let problem = format!("{} does not exist", own.display());
                return Err(JailError::CgroupParent { parent: parent.to_owned(), problem });
            }
            h.own = own;
            h.named = true;
            Ok(h)
        })
        .collect()
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(path, value).map_err(|source| JailError::Cgroup { path: path.to_owned(), source })
}

fn mkdir(path: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(JailError::Cgroup { path: path.to_owned(), source: e }),
        _ => Ok(()),
    }
}

/// The VM's cgroups, one per hierarchy used.
#[derive(Debug, Default)]
pub struct VmCgroups {
    dirs: Vec<(Version, PathBuf)>,
}

impl VmCgroups {
    /// Creates `palisade/<id>` in every hierarchy of `hierarchies` and sets `limits` there.
    /// On error, what was created is removed.
    pub fn create(hierarchies: &[Hierarchy], id: &str, limits: &CgroupLimits) -> Result<VmCgroups, JailError> {
        let mut created = VmCgroups::default();
        for h in hierarchies {
            match create_in(h, id, limits, &mut created) {
                Ok(()) => {}
                Err(e) => {
                    created.remove(Duration::ZERO);
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// The cgroup directories, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    /// Moves process `pid` into every one of the VM's cgroups.
    pub fn add(&self, pid: i32) -> Result<(), JailError> {
        for (_, dir) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves process `pid`, every thread of it and every process below it into every one
    /// of the VM's cgroups (a companion: `JailConfig::cgroup_companions`). Nothing to do
    /// without cgroups; an error names the process.
    pub fn add_companion(&self, pid: i32) -> Result<(), JailError> {
        if self.dirs.is_empty() {
            return Ok(());
        }
        let err = |problem: String| JailError::CgroupCompanion { pid, problem };
        if pid <= 1 {
            return Err(err("not a process that can be moved".into()));
        }
        let tree = process_tree(pid).map_err(|e| err(format!("reading its threads and children: {e}")))?;
        for member in tree {
            for (_, dir) in &self.dirs {
                let procs = dir.join("cgroup.procs");
                match std::fs::write(&procs, member.to_string()) {
                    Ok(()) => {}
                    // A child that ended since it was listed.
                    Err(e) if member != pid && e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(err(format!("moving process {member} into {}: {e}", procs.display()))),
                }
            }
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer struck in the VM's memory cgroup.
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .flat_map(|(_, dir)| ["memory.oom_control", "memory.events"].map(|f| dir.join(f)))
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|text| {
                text.lines().filter_map(|l| l.strip_prefix("oom_kill ")).filter_map(|n| n.trim().parse::<u64>().ok()).collect::<Vec<_>>()
            })
            .sum()
    }

    /// Removes the cgroups, waiting up to `patience` for their last task to be gone, and
    /// their `palisade` parents when empty. Returns the directories that could not be removed.
    pub fn remove(&mut self, patience: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + patience;
        let mut left = Vec::new();
        for (_, dir) in self.dirs.drain(..) {
            if !remove_dir_until(&dir, deadline) {
                left.push(dir.clone());
            }
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        left
    }
}

/// Tasks the VM's pids limit allows each companion (virtiofsd: its sandbox's parent and
/// child, their few threads, and a thread pool of up to 64, the most the runtime asks for).
pub const COMPANION_TASKS: u64 = 128;

/// `pid` and every process below it, parents first, from `/proc/PID/task/TID/children`.
fn process_tree(pid: i32) -> io::Result<Vec<i32>> {
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        next += 1;
        let tasks = match std::fs::read_dir(format!("/proc/{parent}/task")) {
            Ok(tasks) => tasks,
            // A child that ended since it was listed has no children left to find.
            Err(e) if parent != pid && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if !tree.contains(&child) {
                    tree.push(child);
                }
            }
            if tree.len() > MAX_COMPANION_PROCESSES {
                return Err(io::Error::other(format!("more than {MAX_COMPANION_PROCESSES} processes below it")));
            }
        }
    }
    Ok(tree)
}

/// A bound on the processes a companion may bring along.
const MAX_COMPANION_PROCESSES: usize = 64;

fn create_in(h: &Hierarchy, id: &str, limits: &CgroupLimits, created: &mut VmCgroups) -> Result<(), JailError> {
    let base = match h.version {
        Version::V1 => h.own.clone(),
        Version::V2 => enable_v2_controllers(h)?,
    };
    let parent = base.join(PARENT_NAME);
    // A concurrent run may remove an empty `palisade` between our two mkdirs: retry.
    let dir = parent.join(id);
    let mut tries = 0;
    loop {
        mkdir(&parent)?;
        if h.version == Version::V2 {
            let wanted: Vec<String> = h.controllers.iter().map(|c| format!("+{c}")).collect();
            write(&parent.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => break,
            Err(e) if e.kind() == ErrorKind::NotFound && tries < 5 => tries += 1,
            Err(source) => return Err(JailError::Cgroup { path: dir, source }),
        }
    }
    created.dirs.push((h.version, dir.clone()));
    for controller in &h.controllers {
        match (*controller, h.version) {
            ("memory", Version::V1) => {
                write(&dir.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &limits.memory_bytes.to_string())?;
                }
            }
            ("memory", Version::V2) => {
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
            ("pids", _) => write(&dir.join("pids.max"), &limits.pids.to_string())?,
            ("cpu", Version::V1) => {
                if let Some(quota) = limits.cpu_quota_us {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    tolerate_parent_quota(write(&dir.join("cpu.cfs_quota_us"), &quota.to_string()))?;
                }
            }
            ("cpu", Version::V2) => {
                if let Some(quota) = limits.cpu_quota_us {
                    tolerate_parent_quota(write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}")))?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// v1 refuses a child CPU quota above its parent's (EINVAL): the parent's, lower, then
/// applies anyway.
fn tolerate_parent_quota(result: Result<(), JailError>) -> Result<(), JailError> {
    match result {
        Err(JailError::Cgroup { path, source }) if source.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!("{}: {source}: the caller's own, lower CPU limit applies", path.display());
            Ok(())
        }
        other => other,
    }
}

/// Enables the controllers for children of the supervisor's own v2 cgroup, or of the root
/// when that is refused (the own cgroup holds processes); returns the cgroup used.
fn enable_v2_controllers(h: &Hierarchy) -> Result<PathBuf, JailError> {
    let wanted: Vec<String> = h.controllers.iter().map(|c| format!("+{c}")).collect();
    let wanted = wanted.join(" ");
    if h.named {
        // A named parent (a pod's cgroup) holds no processes of its own: the controllers are
        // enabled from the root down to it, and the VM goes there or nowhere.
        let mut dir = h.mount.clone();
        for part in h.own.strip_prefix(&h.mount).unwrap_or(Path::new("")).components() {
            write(&dir.join("cgroup.subtree_control"), &wanted)?;
            dir.push(part);
        }
        write(&h.own.join("cgroup.subtree_control"), &wanted)?;
        return Ok(h.own.clone());
    }
    let own = h.own.join("cgroup.subtree_control");
    match std::fs::write(&own, &wanted) {
        Ok(()) => Ok(h.own.clone()),
        Err(e) if h.own != h.mount && matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EOPNOTSUPP)) => {
            write(&h.mount.join("cgroup.subtree_control"), &wanted)?;
            Ok(h.mount.clone())
        }
        Err(source) => Err(JailError::Cgroup { path: own, source }),
    }
}

/// rmdir, retrying while the cgroup still has tasks (EBUSY) until `deadline`.
fn remove_dir_until(dir: &Path, deadline: Instant) -> bool {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::debug!("removing cgroup {}: {e}", dir.display());
                return false;
            }
        }
    }
}

/// Removes a cgroup directory left by a dead VMM (waiting a little for a VMM that is still
/// exiting), and its parent when empty.
pub fn remove_stale(dir: &Path) -> bool {
    let removed = remove_dir_until(dir, Instant::now() + Duration::from_millis(100));
    if removed {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    removed
}

/// The `palisade` directories the VMs of this host's hierarchies live in (to sweep).
pub fn parent_dirs(hierarchies: &[Hierarchy]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for h in hierarchies {
        for base in [&h.own, &h.mount] {
            let dir = base.join(PARENT_NAME);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_companions_tree_is_the_process_and_every_process_below_it() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & (sleep 30 & wait) & wait"]).spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let tree = loop {
            let tree = process_tree(pid).unwrap();
            if tree.len() == 4 || Instant::now() > deadline {
                break tree;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // sh, its sleep, the subshell and the subshell's sleep.
        assert_eq!(tree.len(), 4, "{tree:?}");
        assert_eq!(tree[0], pid);
        for &p in tree.iter().rev() {
            // SAFETY: kill has no memory-safety preconditions; the pids are our children's.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        child.wait().unwrap();
        assert!(process_tree(pid).is_err(), "a process that is gone has no tree");
    }

    const HYBRID_MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/7d59
1:cpu:/
0::/
";

    #[test]
    fn hybrid_hosts_use_the_v1_controllers() {
        let plan = plan(HYBRID_MOUNTINFO, HYBRID_CGROUP, |_| Vec::new());
        assert_eq!(
            plan,
            vec![
                Hierarchy {
                    version: Version::V1,
                    mount: "/sys/fs/cgroup/memory".into(),
                    own: "/sys/fs/cgroup/memory/process_api/7d59".into(),
                    controllers: vec!["memory"],
                    named: false,
                },
                Hierarchy {
                    version: Version::V1,
                    mount: "/sys/fs/cgroup/pids".into(),
                    own: "/sys/fs/cgroup/pids".into(),
                    controllers: vec!["pids"],
                    named: false,
                },
                Hierarchy {
                    version: Version::V1,
                    mount: "/sys/fs/cgroup/cpu".into(),
                    own: "/sys/fs/cgroup/cpu".into(),
                    controllers: vec!["cpu"],
                    named: false,
                },
            ]
        );
    }

    #[test]
    fn a_named_parent_must_exist_and_stay_below_the_root() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            version: Version::V2,
            mount: root.path().into(),
            own: root.path().join("user.slice"),
            controllers: vec!["memory"],
            named: false,
        };
        let refused = |parent: &str| match under_parent(vec![h.clone()], Path::new(parent)) {
            Err(e) => e.to_string(),
            Ok(h) => panic!("{parent} taken: {h:?}"),
        };
        assert!(refused("/kubepods/pod1").contains("does not exist"), "{}", refused("/kubepods/pod1"));
        std::fs::create_dir_all(root.path().join("kubepods/pod1")).unwrap();
        for bad in ["kubepods/pod1", "/kubepods/../kubepods/pod1", "/"] {
            assert!(refused(bad).contains("not an absolute cgroup path"), "{bad}: {}", refused(bad));
        }
        let placed = under_parent(vec![h.clone()], Path::new("/kubepods/pod1")).unwrap();
        assert_eq!(placed, vec![Hierarchy { own: root.path().join("kubepods/pod1"), named: true, ..h }]);
    }

    #[test]
    fn pure_v2_hosts_use_one_hierarchy() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let plan = plan(mountinfo, "0::/user.slice/session-1.scope\n", |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/user.slice/session-1.scope"));
            vec!["cpuset".into(), "cpu".into(), "io".into(), "memory".into(), "pids".into()]
        });
        assert_eq!(
            plan,
            vec![Hierarchy {
                version: Version::V2,
                mount: "/sys/fs/cgroup".into(),
                own: "/sys/fs/cgroup/user.slice/session-1.scope".into(),
                controllers: vec!["memory", "pids", "cpu"],
                named: false,
            }]
        );
    }

    #[test]
    fn co_mounted_v1_controllers_and_container_roots() {
        let mountinfo = "\
40 31 0:40 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct
41 31 0:41 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
";
        let plan = plan(mountinfo, "3:cpu,cpuacct:/docker/abc\n2:memory:/docker/abc/x\n", |_| Vec::new());
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].own, Path::new("/sys/fs/cgroup/memory/x"));
        assert_eq!(plan[1].own, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(plan[1].controllers, vec!["cpu"]);
    }

    #[test]
    fn no_cgroups_mounted_means_no_hierarchy() {
        assert!(plan("27 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n", |_| Vec::new()).is_empty());
    }
}
