//! cgroup v2 (the guest owns its kernel, so v2 only): the container's own cgroup under
//! the agent's hierarchy, and `linux.resources` turned into interface-file writes.
//! [`settings`] is pure (unit-tested); [`Cgroup::create`] applies it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// Controllers the agent enables for containers when the kernel has them.
pub const CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.resources.{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("linux.cgroupsPath: {0:?} is not a valid cgroup path")]
    BadPath(String),
    #[error("cgroup {path}: {what}: {source}")]
    Io { path: PathBuf, what: String, source: std::io::Error },
    #[error("cgroup v2 is not available at {0} (container limits need it)")]
    Unavailable(PathBuf),
}

fn invalid(field: &str, message: impl Into<String>) -> CgroupError {
    CgroupError::Invalid { field: field.into(), message: message.into() }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// cgroup v1 cpu.shares (2–262144) to v2 cpu.weight (1–10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// blkio weight (10–1000) to io.weight (1–10000).
pub fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// Interface-file writes (file, value) and warnings.
pub type Settings = (Vec<(String, String)>, Vec<String>);

/// The (file, value) writes that apply `r`, in order, plus warnings for what is not
/// applied. The device allowlist is not a write: see [`super::cgroup_devices`].
pub fn settings(r: &LinuxResources) -> Result<Settings, CgroupError> {
    let mut w: Vec<(String, String)> = Vec::new();
    let mut warnings = Vec::new();
    let mut set = |f: &str, v: String| w.push((f.to_string(), v));
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit() {
            if (0..4096 * 2).contains(&limit) {
                return Err(invalid("memory.limit", format!("{limit} bytes is too small")));
            }
            set("memory.max", max_or(limit));
        }
        if let Some(res) = m.reservation() {
            set("memory.low", max_or(res));
        }
        if let Some(swap) = m.swap() {
            // OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
            let v = match (swap, m.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => {
                    if s < l {
                        return Err(invalid("memory.swap", format!("memory+swap {s} is below the memory limit {l}")));
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            set("memory.swap.max", v);
        }
        if m.disable_oom_killer() == Some(true) {
            warnings.push("linux.resources.memory.disableOOMKiller is not available on cgroup v2; ignored".into());
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares() {
            set("cpu.weight", shares_to_weight(shares).to_string());
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = c.quota().map(max_or).unwrap_or_else(|| "max".into());
            let period = c.period().unwrap_or(100_000);
            if !(1000..=1_000_000).contains(&period) {
                return Err(invalid("cpu.period", format!("{period} is outside 1000-1000000 µs")));
            }
            set("cpu.max", format!("{quota} {period}"));
        }
        if let Some(idle) = c.idle() {
            set("cpu.idle", idle.to_string());
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            set("cpuset.cpus", cpus.to_string());
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            set("cpuset.mems", mems.to_string());
        }
    }
    if let Some(p) = r.pids() {
        set("pids.max", if p.limit() <= 0 { "max".into() } else { p.limit().to_string() });
    }
    if let Some(b) = r.block_io() {
        if let Some(weight) = b.weight() {
            set("io.weight", format!("default {}", blkio_to_io_weight(weight)));
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(weight) = d.weight() {
                set("io.weight", format!("{}:{} {}", d.major(), d.minor(), blkio_to_io_weight(weight)));
            }
        }
        let throttles = [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ];
        for (key, list) in throttles {
            for d in list.iter().flatten() {
                set("io.max", format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()));
            }
        }
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(&format!("hugepageLimits[{i}].pageSize"), format!("{size:?} is not a page size like 2MB")));
        }
        set(&format!("hugetlb.{size}.max"), h.limit().to_string());
    }
    if let Some(unified) = r.unified() {
        let mut keys: Vec<_> = unified.keys().collect();
        keys.sort();
        for k in keys {
            let ok = !k.is_empty() && !k.contains('/') && k.contains('.') && !k.starts_with("cgroup.");
            if !ok {
                return Err(invalid(&format!("unified.{k}"), "not a controller interface file"));
            }
            set(k, unified[k].clone());
        }
    }
    if r.network().is_some() || r.rdma().is_some() {
        warnings.push("linux.resources.network/rdma have no cgroup v2 equivalent here; ignored".into());
    }
    Ok((w, warnings))
}

/// Where the container's cgroup goes under the hierarchy root: `linux.cgroupsPath`
/// when given (absolute paths are taken relative to the root), else `palisade/<id>`.
pub fn relative_path(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf, CgroupError> {
    let p = match cgroups_path {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("palisade").join(id),
    };
    let s = p.to_str().ok_or_else(|| CgroupError::BadPath(p.display().to_string()))?;
    // systemd-style "slice:prefix:name" paths mean nothing without systemd.
    if s.contains(':') || s.split('/').any(|c| c == "..") || s.trim_matches('/').is_empty() {
        return Err(CgroupError::BadPath(s.to_string()));
    }
    Ok(PathBuf::from(s.trim_start_matches('/')))
}

/// Whether `root` is a cgroup v2 hierarchy with controllers available.
pub fn available(root: &Path) -> bool {
    std::fs::read_to_string(root.join("cgroup.controllers")).map(|c| !c.trim().is_empty()).unwrap_or(false)
}

/// Whether `root` is a cgroup v2 hierarchy, with or without controllers (enough for
/// the device allowlist, which is a BPF program, not a controller).
pub fn is_v2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The `oom_kill` count of a `memory.events` file (0 when absent or malformed).
pub fn parse_oom_kills(memory_events: &str) -> u64 {
    memory_events.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// The `oom_kill` count of the cgroup directory `path` (0 without a memory controller).
pub fn oom_kills(path: &Path) -> u64 {
    std::fs::read_to_string(path.join("memory.events")).map(|s| parse_oom_kills(&s)).unwrap_or(0)
}

/// Most cgroups below a container's that [`pids`] walks (a container may make its own).
const MAX_WALKED_CGROUPS: usize = 4096;

/// Every pid in the cgroup at `path` and the cgroups below it, sorted, without repeats.
pub fn pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    let mut walked = 0;
    while let Some(dir) = dirs.pop() {
        walked += 1;
        let procs = dir.join("cgroup.procs");
        match std::fs::read_to_string(&procs) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
            // A cgroup removed while we walk is simply empty.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != path => continue,
            Err(source) => return Err(CgroupError::Io { path: dir, what: "reading cgroup.procs".into(), source }),
        }
        if walked >= MAX_WALKED_CGROUPS {
            break;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Whether `cgroup.events` text says a process is left in the cgroup or below it.
pub fn parse_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|l| l.strip_prefix("populated ")).map(|v| v.trim() == "1")
}

/// Kills every process of the cgroup at `path` and below (`cgroup.kill`), waits until the
/// kernel says none is left (`cgroup.events`), then removes the cgroup and the cgroups
/// below it, deepest first. A cgroup that is gone already is fine.
pub fn kill_and_remove(path: &Path, timeout: std::time::Duration) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    let io = |what: &str, source: std::io::Error| CgroupError::Io { path: path.to_path_buf(), what: what.into(), source };
    if path.join("cgroup.kill").exists() {
        std::fs::write(path.join("cgroup.kill"), "1").map_err(|e| io("writing \"1\" to cgroup.kill", e))?;
    } else {
        // Before Linux 5.14: one by one, as `kill --all` does.
        for pid in pids(path)?.into_iter().filter(|&p| p > 1) {
            // SAFETY: kill(2) of a pid listed in the cgroup a moment ago; a pid that
            // exited since and was reused would have to be in this cgroup to be listed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    wait_for_events(path, timeout, "its processes did not end", |events| parse_populated(events) != Some(true))?;
    remove_tree(path)
}

/// Waits until the text of the cgroup's `cgroup.events` satisfies `done`, reading it every
/// 10 ms for at most `timeout`; past it, the error says `what` did not happen in time.
fn wait_for_events(path: &Path, timeout: std::time::Duration, what: &str, done: impl Fn(&str) -> bool) -> Result<(), CgroupError> {
    let deadline = std::time::Instant::now() + timeout;
    let events = path.join("cgroup.events");
    loop {
        let text = std::fs::read_to_string(&events).map_err(|source| CgroupError::Io {
            path: path.to_path_buf(),
            what: "reading cgroup.events".into(),
            source,
        })?;
        if done(&text) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let what = format!("{what} within {} s", timeout.as_secs());
            return Err(CgroupError::Io { path: path.to_path_buf(), what, source: std::io::ErrorKind::TimedOut.into() });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes the (empty) cgroup at `path` and the cgroups below it, deepest first.
fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    let mut order = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if order.len() >= MAX_WALKED_CGROUPS {
            break;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
        order.push(dir);
    }
    // Every cgroup comes after its parent in `order`.
    for dir in order.iter().rev() {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CgroupError::Io { path: dir.clone(), what: "removing the cgroup".into(), source }),
        }
    }
    Ok(())
}

/// Whether `cgroup.events` text says the cgroup is frozen.
pub fn parse_frozen(events: &str) -> Option<bool> {
    events.lines().find_map(|l| l.strip_prefix("frozen ")).map(|v| v.trim() == "1")
}

/// Freezes (or thaws) every process of the cgroup at `path` and below, and waits until
/// the kernel says it is done (`cgroup.events`).
pub fn freeze(path: &Path, frozen: bool, timeout: std::time::Duration) -> Result<(), CgroupError> {
    write(path, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let what = if frozen { "freezing did not finish" } else { "thawing did not finish" };
    wait_for_events(path, timeout, what, |events| parse_frozen(events) == Some(frozen))
}

/// A cgroup's resource usage from the text of its interface files (`name` → content;
/// a missing file counts as absent, as on a kernel without that controller).
pub fn parse_stats(read: impl Fn(&str) -> Option<String>) -> palisade_protocol::CgroupStats {
    let keyed = |file: &str, key: &str| -> u64 {
        read(file)
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    };
    let value = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    let limit = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok());
    palisade_protocol::CgroupStats {
        cpu_usage_us: keyed("cpu.stat", "usage_usec"),
        cpu_user_us: keyed("cpu.stat", "user_usec"),
        cpu_system_us: keyed("cpu.stat", "system_usec"),
        cpu_throttled_periods: keyed("cpu.stat", "nr_throttled"),
        cpu_throttled_us: keyed("cpu.stat", "throttled_usec"),
        memory_usage: value("memory.current"),
        memory_limit: limit("memory.max"),
        memory_peak: value("memory.peak"),
        swap_usage: value("memory.swap.current"),
        swap_limit: limit("memory.swap.max"),
        oom_kills: keyed("memory.events", "oom_kill"),
        memory_limit_hits: keyed("memory.events", "max"),
        pids_current: value("pids.current"),
        pids_limit: limit("pids.max"),
    }
}

/// The resource usage of the cgroup at `path`.
pub fn stats(path: &Path) -> palisade_protocol::CgroupStats {
    parse_stats(|file| std::fs::read_to_string(path.join(file)).ok())
}

/// Applies `resources` to the existing cgroup at `path` (runc's `update`): what they name
/// is written, the rest stays. Returns warnings for what is not applied.
pub fn update(path: &Path, resources: &LinuxResources) -> Result<Vec<String>, CgroupError> {
    let (writes, mut warnings) = settings(resources)?;
    if resources.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        warnings.push("linux.resources.devices: the device allowlist is not changed by an update".into());
    }
    for (file, value) in &writes {
        write(path, file, value)?;
    }
    Ok(warnings)
}

/// A container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: PathBuf,
}

fn write(path: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path.join(file), value).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        what: format!("writing {value:?} to {file}"),
        source,
    })
}

impl Cgroup {
    /// Creates `root/rel`, enabling the controllers on the way, and applies `resources`.
    /// Returns warnings for settings that are not applied.
    pub fn create(root: &Path, rel: &Path, resources: Option<&LinuxResources>) -> Result<(Cgroup, Vec<String>), CgroupError> {
        let (writes, warnings) = match resources {
            Some(r) => settings(r)?,
            None => (Vec::new(), Vec::new()),
        };
        if !(available(root) || writes.is_empty() && is_v2(root)) {
            return Err(CgroupError::Unavailable(root.to_path_buf()));
        }
        let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<String> =
            CONTROLLERS.iter().filter(|c| offered.split_whitespace().any(|o| o == **c)).map(|c| format!("+{c}")).collect();
        let mut dir = root.to_path_buf();
        for component in rel.components() {
            // Enable the controllers for the children of each ancestor.
            for e in &enable {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), e);
            }
            dir.push(component);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Io { path: dir, what: "creating it".into(), source }),
            }
        }
        let cgroup = Cgroup { path: dir };
        for (file, value) in &writes {
            write(&cgroup.path, file, value)?;
        }
        Ok((cgroup, warnings))
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.path, "cgroup.procs", &pid.to_string())
    }

    /// How many times the OOM killer killed a process of this cgroup (or below it).
    pub fn oom_kills(&self) -> u64 {
        oom_kills(&self.path)
    }

    /// Attaches the device allowlist (see [`super::cgroup_devices`]).
    pub fn restrict_devices(&self, rules: &[super::cgroup_devices::Rule]) -> Result<(), super::cgroup_devices::DeviceRulesError> {
        super::cgroup_devices::attach(&self.path, rules)
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_of_a_cgroup_tree_and_its_frozen_state() {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "12\n3\n").unwrap();
        std::fs::write(sub.join("cgroup.procs"), "7\n12\ngarbage\n").unwrap();
        assert_eq!(pids(root.path()).unwrap(), [3, 7, 12]);
        assert!(pids(&root.path().join("gone")).is_err(), "a container's own cgroup must exist");
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_frozen("populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(parse_frozen("populated 1\n"), None);
    }

    #[test]
    fn populated_from_cgroup_events() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }

    #[test]
    fn a_cgroup_tree_is_removed_deepest_first() {
        // Empty directories stand in for cgroups without processes (the kernel hides
        // their interface files from rmdir).
        let root = tempfile::tempdir().unwrap();
        let c = root.path().join("c");
        std::fs::create_dir_all(c.join("a/deeper/deepest")).unwrap();
        std::fs::create_dir_all(c.join("b")).unwrap();
        remove_tree(&c).unwrap();
        assert!(!c.exists());
        assert!(kill_and_remove(&c, std::time::Duration::from_millis(50)).is_ok(), "a cgroup gone already is fine");
    }

    #[test]
    fn a_cgroup_whose_processes_stay_is_not_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.kill"), "").unwrap();
        std::fs::write(root.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let err = kill_and_remove(root.path(), std::time::Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("did not end within"), "{err}");
        assert_eq!(std::fs::read_to_string(root.path().join("cgroup.kill")).unwrap(), "1", "the cgroup was killed");
        assert!(root.path().exists());
    }

    #[test]
    fn stats_from_interface_files() {
        let files: std::collections::HashMap<&str, &str> = [
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 9\nnr_throttled 2\nthrottled_usec 77\n"),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "8192\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            ("pids.current", "2\n"),
            ("pids.max", "20\n"),
        ]
        .into();
        let s = parse_stats(|f| files.get(f).map(|t| t.to_string()));
        assert_eq!((s.cpu_usage_us, s.cpu_user_us, s.cpu_system_us, s.cpu_throttled_periods, s.cpu_throttled_us), (1500, 1000, 500, 2, 77));
        assert_eq!((s.memory_usage, s.memory_limit, s.memory_peak), (4096, None, 8192));
        assert_eq!((s.oom_kills, s.memory_limit_hits), (1, 3), "oom_kill is not oom_group_kill, max is not the limit");
        assert_eq!((s.pids_current, s.pids_limit, s.swap_usage, s.swap_limit), (2, Some(20), 0, None));
    }

    #[test]
    fn update_writes_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "max").unwrap();
        std::fs::write(dir.path().join("cpu.max"), "max 100000").unwrap();
        let w = update(dir.path(), &resources(r#"{"pids":{"limit":7},"devices":[{"allow":true,"access":"rwm"}]}"#)).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("pids.max")).unwrap(), "7");
        assert_eq!(std::fs::read_to_string(dir.path().join("memory.max")).unwrap(), "max", "not named, not written");
        assert!(w.iter().any(|w| w.contains("devices")), "{w:?}");
        let e = update(dir.path(), &resources(r#"{"memory":{"limit":1}}"#)).unwrap_err();
        assert!(e.to_string().contains("memory.limit"), "{e}");
    }

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn memory_cpu_pids_io_and_hugetlb() {
        let r = resources(
            r#"{"memory":{"limit":67108864,"swap":134217728,"reservation":1048576},
                "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1","mems":"0"},
                "pids":{"limit":20},
                "blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":254,"minor":0,"rate":1048576}]},
                "hugepageLimits":[{"pageSize":"2MB","limit":4194304}],
                "unified":{"memory.high":"50000000"}}"#,
        );
        let (w, warnings) = settings(&r).unwrap();
        let get = |f: &str| w.iter().filter(|(k, _)| k == f).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("memory.max"), ["67108864"]);
        assert_eq!(get("memory.swap.max"), ["67108864"]);
        assert_eq!(get("memory.low"), ["1048576"]);
        assert_eq!(get("cpu.weight"), ["39"]);
        assert_eq!(get("cpu.max"), ["50000 100000"]);
        assert_eq!(get("cpuset.cpus"), ["0-1"]);
        assert_eq!(get("pids.max"), ["20"]);
        assert_eq!(get("io.weight"), ["default 4950"]);
        assert_eq!(get("io.max"), ["254:0 rbps=1048576"]);
        assert_eq!(get("hugetlb.2MB.max"), ["4194304"]);
        assert_eq!(get("memory.high"), ["50000000"]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn unlimited_values_are_max() {
        let (w, _) = settings(&resources(r#"{"memory":{"limit":-1,"swap":-1},"pids":{"limit":-1},"cpu":{"quota":-1}}"#)).unwrap();
        assert!(w.contains(&("memory.max".into(), "max".into())));
        assert!(w.contains(&("memory.swap.max".into(), "max".into())));
        assert!(w.contains(&("pids.max".into(), "max".into())));
        assert!(w.contains(&("cpu.max".into(), "max 100000".into())));
    }

    #[test]
    fn bad_resources_name_the_field() {
        let e = settings(&resources(r#"{"memory":{"limit":104857600,"swap":1048576}}"#)).unwrap_err();
        assert!(e.to_string().starts_with("linux.resources.memory.swap"), "{e}");
        let e = settings(&resources(r#"{"unified":{"../escape":"1"}}"#)).unwrap_err();
        assert!(e.to_string().contains("unified"), "{e}");
        let e = settings(&resources(r#"{"cpu":{"quota":1000,"period":10}}"#)).unwrap_err();
        assert!(e.to_string().contains("cpu.period"), "{e}");
    }

    #[test]
    fn device_rules_are_no_writes_and_no_warnings() {
        let (w, warnings) = settings(&resources(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#)).unwrap();
        assert!(w.is_empty() && warnings.is_empty(), "{w:?} {warnings:?}");
    }

    #[test]
    fn memory_events_oom_kill_count() {
        let events = "low 0\nhigh 12\nmax 40\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), 2);
        // "oom" alone (the limit was hit) and "oom_group_kill" are not kills of a process.
        assert_eq!(parse_oom_kills("oom 5\noom_group_kill 1\noom_kill 0\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
        assert_eq!(parse_oom_kills("oom_kill x\n"), 0);
    }

    #[test]
    fn paths() {
        assert_eq!(relative_path(None, "c1").unwrap(), Path::new("palisade/c1"));
        assert_eq!(relative_path(Some(Path::new("/pods/a")), "c1").unwrap(), Path::new("pods/a"));
        assert!(relative_path(Some(Path::new("/a/../../b")), "c1").is_err());
        assert!(relative_path(Some(Path::new("system.slice:docker:x")), "c1").is_err());
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10000);
    }
}
