//! Docker-like defaults for a spec `vmrun` writes itself: Docker's 14 capabilities,
//! its masked and read-only /proc and /sys paths, the default seccomp allowlist (data
//! in `default-seccomp.json`, next to this file), the standard mounts, and new pid,
//! mount, ipc, uts, network and cgroup namespaces. [`default_spec`] applies the
//! `vmrun` options (--privileged, --read-only, --cap-add/--cap-drop, --user, …).

use serde_json::{json, Value};

/// Docker's default capability set.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (for --privileged and `--cap-add ALL`).
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The default seccomp profile, as data.
pub const DEFAULT_SECCOMP_PROFILE: &str = include_str!("default-seccomp.json");

#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("--cap-add/--cap-drop: unknown capability {0:?}")]
    UnknownCap(String),
    #[error("the default seccomp profile is malformed: {0}")]
    Profile(String),
}

/// Normalises `sys_admin`, `SYS_ADMIN` or `CAP_SYS_ADMIN` to `CAP_SYS_ADMIN`.
pub fn cap_name(name: &str) -> Result<String, DefaultsError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(DefaultsError::UnknownCap(name.to_string()))
    }
}

/// Docker's rule: the defaults, then --cap-add (ALL adds every one), then --cap-drop
/// (ALL drops every one, then the adds come back).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, DefaultsError> {
    let is_all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let adds: Vec<String> = add.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")).map(|c| cap_name(c)).collect::<Result<_, _>>()?;
    let drops: Vec<String> = drop.iter().filter(|c| !c.eq_ignore_ascii_case("ALL")).map(|c| cap_name(c)).collect::<Result<_, _>>()?;
    let mut caps: Vec<String> =
        if is_all(add) { ALL_CAPS.iter().map(|c| c.to_string()).collect() } else { DEFAULT_CAPS.iter().map(|c| c.to_string()).collect() };
    if is_all(drop) {
        caps.clear();
    }
    caps.retain(|c| !drops.contains(c));
    for a in adds {
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    caps.sort_by_key(|c| ALL_CAPS.iter().position(|a| a == c));
    Ok(caps)
}

/// `linux.seccomp` of the default profile for a container whose bounding set is `caps`.
pub fn default_seccomp(caps: &[String]) -> Result<Value, DefaultsError> {
    let profile: Value = serde_json::from_str(DEFAULT_SECCOMP_PROFILE).map_err(|e| DefaultsError::Profile(e.to_string()))?;
    seccomp_for_caps(&profile, caps).map_err(DefaultsError::Profile)
}

/// A seccomp profile in Docker's form (or already in OCI `linux.seccomp` form) turned
/// into `linux.seccomp` for a container whose bounding set is `caps`: rules whose
/// `includes.caps` are not all held or whose `excludes.caps` are are left out, `comment`,
/// `includes` and `excludes` are dropped, and Docker's `archMap` becomes `architectures`.
/// Errors name the field.
pub fn seccomp_for_caps(profile: &Value, caps: &[String]) -> Result<Value, String> {
    let obj = profile.as_object().ok_or("the profile is not a JSON object")?;
    if !obj.get("defaultAction").is_some_and(Value::is_string) {
        return Err("defaultAction: missing or not a string".into());
    }
    let has = |c: &Value| c.as_str().is_some_and(|c| caps.iter().any(|x| x == c));
    let mut syscalls = Vec::new();
    let rules = match obj.get("syscalls") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(rules)) => rules,
        Some(_) => return Err("syscalls: not a list".into()),
    };
    for (i, rule) in rules.iter().enumerate() {
        let r = rule.as_object().ok_or_else(|| format!("syscalls[{i}]: not an object"))?;
        let includes = rule["includes"]["caps"].as_array().map(|l| l.iter().all(has)).unwrap_or(true);
        let excludes = rule["excludes"]["caps"].as_array().map(|l| l.iter().any(has)).unwrap_or(false);
        if !includes || excludes {
            continue;
        }
        let mut r = r.clone();
        for k in ["comment", "includes", "excludes"] {
            r.remove(k);
        }
        syscalls.push(Value::Object(r));
    }
    let mut out = obj.clone();
    for k in ["comment", "includes", "excludes", "archMap"] {
        out.remove(k);
    }
    if !out.contains_key("architectures") {
        if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
            let mut archs = Vec::new();
            for entry in map {
                archs.extend(entry.get("architecture").cloned());
                archs.extend(entry.get("subArchitectures").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            out.insert("architectures".into(), Value::Array(archs));
        }
    }
    out.insert("syscalls".into(), Value::Array(syscalls));
    Ok(Value::Object(out))
}

/// How the user's seccomp option reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompChoice {
    #[default]
    Default,
    Unconfined,
    /// A profile in OCI `linux.seccomp` form.
    Profile(Value),
}

/// The options of a spec `vmrun` writes.
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub terminal: bool,
    pub uid: u32,
    pub gid: u32,
    pub hostname: Option<String>,
    pub read_only: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp: SeccompChoice,
    pub no_new_privileges: bool,
    /// Container memory limit in bytes.
    pub memory: Option<u64>,
    pub pids_limit: Option<i64>,
    /// Map container root to this unprivileged guest uid/gid (65536 ids).
    pub userns: Option<u32>,
    /// With --privileged: device nodes to create besides the guest's /dev, which a
    /// privileged container gets whole, as OCI `linux.devices` entries.
    pub devices: Vec<Value>,
    /// Bind mounts after the standard mounts (`--volume`), sources as the guest sees them.
    pub binds: Vec<BindMount>,
}

/// A bind mount of the spec: `source` (a guest path) at `destination` in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// Writes the spec.
pub fn default_spec(o: &SpecOptions) -> Result<Value, DefaultsError> {
    let caps = if o.privileged { ALL_CAPS.iter().map(|c| c.to_string()).collect() } else { capabilities(&o.cap_add, &o.cap_drop)? };
    let seccomp = match (&o.seccomp, o.privileged) {
        (SeccompChoice::Unconfined, _) | (SeccompChoice::Default, true) => Value::Null,
        (SeccompChoice::Default, false) => default_seccomp(&caps)?,
        (SeccompChoice::Profile(p), _) => p.clone(),
    };
    let sys_options = if o.privileged { json!(["nosuid", "noexec", "nodev", "rw"]) } else { json!(["nosuid", "noexec", "nodev", "ro"]) };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "network"}),
        json!({"type": "cgroup"}),
    ];
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if o.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    for b in &o.binds {
        let mode = if b.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": ["rbind", "rprivate", mode]}));
    }
    let mut linux = json!({
        "namespaces": [],
        "maskedPaths": if o.privileged { json!([]) } else { json!(MASKED_PATHS) },
        "readonlyPaths": if o.privileged { json!([]) } else { json!(READONLY_PATHS) },
    });
    if let Some(host) = o.userns {
        namespaces.push(json!({"type": "user"}));
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": host, "size": 65536}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": host, "size": 65536}]);
        // sysfs needs a network namespace the user namespace owns and cannot be
        // mounted otherwise; the container sees no /sys then.
        mounts.retain(|m| m["type"] != "sysfs" && m["type"] != "cgroup");
    }
    linux["namespaces"] = json!(namespaces);
    if !seccomp.is_null() {
        linux["seccomp"] = seccomp;
    }
    if o.privileged && !o.devices.is_empty() {
        linux["devices"] = json!(o.devices);
    }
    let mut resources = serde_json::Map::new();
    if o.privileged {
        // Every guest device: the guest's own /dev (devtmpfs) instead of a tmpfs with
        // the default nodes, and a device cgroup that allows them all.
        for m in mounts.iter_mut().filter(|m| m["destination"] == "/dev") {
            *m = json!({"destination": "/dev", "type": "bind", "source": "/dev", "options": ["bind", "nosuid"]});
        }
        resources.insert("devices".into(), json!([{"allow": true, "access": "rwm"}]));
    }
    if let Some(m) = o.memory {
        resources.insert("memory".into(), json!({"limit": m, "swap": m}));
    }
    if let Some(p) = o.pids_limit {
        resources.insert("pids".into(), json!({"limit": p}));
    }
    if !resources.is_empty() {
        linux["resources"] = Value::Object(resources);
    }
    let mut spec = json!({
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs", "readonly": o.read_only},
        "process": {
            "terminal": o.terminal,
            "user": {"uid": o.uid, "gid": o.gid},
            "args": o.args,
            "env": o.env,
            "cwd": if o.cwd.is_empty() { "/" } else { o.cwd.as_str() },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 524288, "soft": 1024}],
            "noNewPrivileges": o.no_new_privileges,
        },
        "mounts": mounts,
        "linux": linux,
    });
    if let Some(h) = &o.hostname {
        spec["hostname"] = json!(h);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_agent::container::{capabilities, seccomp, spec};

    fn opts() -> SpecOptions {
        SpecOptions { args: vec!["sh".into()], env: vec!["PATH=/bin".into()], cwd: "/".into(), ..Default::default() }
    }

    #[test]
    fn docker_caps_and_adds_and_drops() {
        assert_eq!(capabilities(&[], &[]).unwrap().len(), 14);
        let c = capabilities(&["sys_admin".into()], &["NET_RAW".into(), "cap_mknod".into()]).unwrap();
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()) && !c.contains(&"CAP_NET_RAW".to_string()) && c.len() == 13);
        assert_eq!(capabilities(&["CHOWN".into()], &["ALL".into()]).unwrap(), ["CAP_CHOWN"]);
        assert_eq!(capabilities(&["ALL".into()], &[]).unwrap().len(), 41);
        assert!(matches!(capabilities(&["CAP_NOPE".into()], &[]), Err(DefaultsError::UnknownCap(_))));
    }

    #[test]
    fn the_default_spec_is_valid_for_the_agent() {
        let s =
            default_spec(&SpecOptions { hostname: Some("box".into()), memory: Some(64 << 20), pids_limit: Some(20), ..opts() }).unwrap();
        let parsed = spec::parse(&s.to_string()).unwrap();
        let linux = parsed.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 6);
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), MASKED_PATHS.len());
        let caps = parsed.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        assert_eq!(capabilities::mask(caps.bounding().as_ref()), 0xa80425fb, "Docker's 14 capabilities");
        let r = linux.resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 20);
        assert_eq!(parsed.hostname().as_deref(), Some("box"));
        // The profile compiles, and knows (almost) every name it lists.
        let program = seccomp::compile(linux.seccomp().as_ref().unwrap()).unwrap();
        assert!(program.instructions.len() > 100);
        assert!(program.unknown_syscalls.len() < 10, "unknown: {:?}", program.unknown_syscalls);
    }

    #[test]
    fn the_default_profile_follows_the_capabilities() {
        let names = |v: &Value| -> Vec<String> {
            v["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
                .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()))
                .collect()
        };
        let plain = default_seccomp(&DEFAULT_CAPS.iter().map(|c| c.to_string()).collect::<Vec<_>>()).unwrap();
        let n = names(&plain);
        for denied in ["unshare", "mount", "keyctl", "add_key", "reboot", "init_module", "bpf", "setns"] {
            assert!(!n.contains(&denied.to_string()), "{denied} is allowed by default");
        }
        for allowed in ["read", "write", "execve", "clone", "chroot", "socket", "personality"] {
            assert!(n.contains(&allowed.to_string()), "{allowed} is not allowed by default");
        }
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        let admin = default_seccomp(&["CAP_SYS_ADMIN".to_string()]).unwrap();
        let a = names(&admin);
        assert!(a.contains(&"unshare".to_string()) && a.contains(&"mount".to_string()) && !a.contains(&"chroot".to_string()));
    }

    #[test]
    fn volumes_are_bind_mounts_after_the_standard_ones() {
        let binds = vec![
            BindMount { source: "/run/palisade/shares/palisade/volumes/0".into(), destination: "/data".into(), read_only: false },
            BindMount { source: "/run/palisade/shares/palisade/volumes/1".into(), destination: "/etc/hosts".into(), read_only: true },
        ];
        let p = default_spec(&SpecOptions { binds, ..opts() }).unwrap();
        let mounts = p["mounts"].as_array().unwrap();
        let n = mounts.len();
        assert_eq!(mounts[n - 2]["destination"], "/data");
        assert_eq!(mounts[n - 2]["options"], json!(["rbind", "rprivate", "rw"]));
        assert_eq!(mounts[n - 1]["source"], "/run/palisade/shares/palisade/volumes/1");
        assert_eq!(mounts[n - 1]["options"], json!(["rbind", "rprivate", "ro"]));
        spec::parse(&p.to_string()).unwrap();
    }

    #[test]
    fn privileged_read_only_userns_and_unconfined() {
        let p = default_spec(&SpecOptions { privileged: true, ..opts() }).unwrap();
        assert!(p["linux"].get("seccomp").is_none(), "no seccomp when privileged");
        assert_eq!(p["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 41);
        assert_eq!(p["linux"]["maskedPaths"], json!([]));
        assert!(p["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["type"] == "sysfs" && m["options"].as_array().unwrap().contains(&json!("rw"))));
        assert!(p["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/dev" && m["type"] == "bind" && m["source"] == "/dev"));
        assert_eq!(p["linux"]["resources"]["devices"], json!([{"allow": true, "access": "rwm"}]));
        spec::parse(&p.to_string()).unwrap();
        let r = default_spec(&SpecOptions { read_only: true, no_new_privileges: true, uid: 1000, gid: 1000, ..opts() }).unwrap();
        assert_eq!(r["root"]["readonly"], true);
        assert_eq!(r["process"]["noNewPrivileges"], true);
        assert_eq!(r["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        let u = default_spec(&SpecOptions { userns: Some(100000), ..opts() }).unwrap();
        assert_eq!(u["linux"]["uidMappings"], json!([{"containerID": 0, "hostID": 100000, "size": 65536}]));
        spec::parse(&u.to_string()).unwrap();
        let un = default_spec(&SpecOptions { seccomp: SeccompChoice::Unconfined, ..opts() }).unwrap();
        assert!(un["linux"].get("seccomp").is_none());
    }

    #[test]
    fn docker_profiles_become_oci_seccomp() {
        let docker = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_KILL_PROCESS", "comment": "no"},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_BOOT"]}}
            ]
        });
        let s = seccomp_for_caps(&docker, &["CAP_CHOWN".to_string()]).unwrap();
        assert_eq!(s["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        assert!(s.get("archMap").is_none());
        assert_eq!(
            s["syscalls"],
            json!([{"names": ["mkdir"], "action": "SCMP_ACT_KILL_PROCESS"}, {"names": ["mount"], "action": "SCMP_ACT_ERRNO"}])
        );
        seccomp::compile(&serde_json::from_value(s).unwrap()).unwrap();
        assert!(seccomp_for_caps(&json!({"syscalls": []}), &[]).unwrap_err().contains("defaultAction"));
        assert!(seccomp_for_caps(&json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [1]}), &[]).unwrap_err().contains("syscalls[0]"));
    }
}
