//! The `vmrun` command line, and the environment a command gets.

use std::path::PathBuf;

use clap::Parser;
use palisade_vmm::rate_limiter::Rates;

use crate::virtiofsd::{Cache, Tuning, MAX_THREAD_POOL_SIZE};

/// `PATH` of the command unless `-e PATH=…` says otherwise (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// VM memory when neither `--memory` nor `--vm-memory` is given, and the least the VM
/// gets for a container limit.
pub const DEFAULT_VM_MEMORY_MIB: u32 = 128;
/// What the VM gets on top of the container's memory limit: the guest kernel, the
/// agent and the page cache of the root filesystem.
pub const VM_MEMORY_OVERHEAD_MIB: u32 = 64;
/// The guest uid (and gid) that container root maps to with `--userns`; 65536 ids
/// from there on are the container's.
pub const USERNS_BASE_ID: u32 = 100_000;

/// Options that shape the container's spec, which a bundle's config.json already says.
const SPEC_OPTIONS: [&str; 16] = [
    "command",
    "rootfs",
    "env",
    "workdir",
    "tty",
    "user",
    "hostname",
    "privileged",
    "read_only",
    "cap_add",
    "cap_drop",
    "security_opt",
    "memory",
    "pids_limit",
    "userns",
    "volume",
];

/// Run a command in a fresh micro-VM as an OCI container, like `docker run`.
///
/// The container gets Docker's defaults: 14 capabilities, the default seccomp
/// profile, masked and read-only /proc and /sys paths, new pid, mount, ipc, uts,
/// network (unless --network gives it one) and cgroup namespaces, and a writable overlay
/// over the root filesystem.
#[derive(Debug, Clone, Parser)]
#[command(name = "vmrun", version, about, trailing_var_arg = true)]
pub struct VmrunArgs {
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Memory limit of the container in MiB (its cgroup's memory.max; swap included).
    /// The VM gets this plus 64 MiB (at least 128) unless --vm-memory says otherwise.
    /// Without it the container has no limit of its own.
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(6..=65536))]
    pub memory: Option<u32>,
    /// Memory of the VM in MiB (default: --memory + 64, at least 128; 128 without --memory).
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u32).range(16..=65536))]
    pub vm_memory: Option<u32>,
    /// Guest kernel (default: <assets>/vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs holding the guest agent (default: <assets>/initramfs.cpio).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Root filesystem: a directory, shared live with the VM (virtio-fs: what the container
    /// writes lands in it), or an erofs/ext4 image, whose writes go to an overlay in memory
    /// (default: <assets>/busybox.erofs).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Bind a host directory or file into the container, shared live: HOST:CONTAINER, with
    /// `:ro` for read-only (as Docker's; HOST must exist and be absolute). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volume: Vec<String>,
    /// Run the OCI bundle DIR as is: DIR/config.json, with `root.path` (relative to DIR)
    /// as the root filesystem, a directory or an image like --rootfs. Takes no CMD and
    /// none of the options that shape the container (they are in config.json).
    #[arg(long, value_name = "DIR", conflicts_with_all = SPEC_OPTIONS)]
    pub bundle: Option<PathBuf>,
    /// Give the container every capability, no seccomp filter, no masked or read-only
    /// paths, a writable /sys and /sys/fs/cgroup, and all of the guest's devices in /dev.
    #[arg(long)]
    pub privileged: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a capability to Docker's default 14 (CAP_ prefix optional; ALL adds every
    /// one). Repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (ALL drops every one; --cap-add ones then come back). Repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Security options: `seccomp=PATH` (a Docker or OCI seccomp profile, JSON),
    /// `seccomp=unconfined` (no filter), `no-new-privileges`. Repeatable.
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Run as UID[:GID] (numbers only; GID defaults to 0).
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Host name of the container (its own UTS namespace).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Most processes and threads the container may have at once (its cgroup's pids.max).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=4194304))]
    pub pids_limit: Option<i64>,
    /// Run the container in its own user namespace: its root is guest uid/gid 100000
    /// (65536 ids mapped), unprivileged outside the container. The container gets no /sys.
    #[arg(long, conflicts_with = "privileged")]
    pub userns: bool,
    /// Set an environment variable (KEY=VALUE; KEY alone takes it from vmrun's environment).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", default_value = "/")]
    pub workdir: String,
    /// Keep stdin open and relay it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Limit the reads of a disk of the VM, in bytes a second: `/dev/vda:RATE` (the root
    /// disk, the VM's only one), RATE a number with an optional unit kb, mb or gb
    /// (1024-based, like Docker's).
    #[arg(long, value_name = "DEVICE:RATE")]
    pub device_read_bps: Vec<String>,
    /// Limit the writes to a disk, in bytes a second (`/dev/vda:RATE`). The root disk is
    /// read-only (the container writes to an overlay in memory), so no write reaches it.
    #[arg(long, value_name = "DEVICE:RATE")]
    pub device_write_bps: Vec<String>,
    /// Limit the reads of a disk, in requests a second: `/dev/vda:N`.
    #[arg(long, value_name = "DEVICE:N")]
    pub device_read_iops: Vec<String>,
    /// Limit the writes to a disk, in requests a second: `/dev/vda:N`.
    #[arg(long, value_name = "DEVICE:N")]
    pub device_write_iops: Vec<String>,
    /// The VM's network: `none` (the default: the container has its loopback only); `nat`
    /// (a tap `plsd<PID>` with a /30 of 100.64.0.0/10, the guest's traffic masqueraded, ports
    /// published with -p; turns IPv4 forwarding on and adds an nftables table
    /// `palisade_plsd<PID>` while vmrun runs); or `tap:NAME[,ip=ADDR/LEN[,gw=ADDR]]` (the
    /// guest's eth0 on the host's existing tap NAME, with that IPv4 address and default
    /// gateway, or none). With a network the container shares the guest's network namespace.
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// Publish a container port on the host: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp], reachable
    /// from elsewhere and from the host itself (127.0.0.1 included). Implies --network nat.
    /// Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "HOSTPORT:CONTAINERPORT")]
    pub publish: Vec<String>,
    #[command(flatten)]
    pub share_tuning: ShareTuningArgs,
    /// Show the guest's serial console on stderr (debugging).
    #[arg(long)]
    pub console: bool,
    /// Log level of vmrun itself (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// The command and its arguments.
    #[arg(required_unless_present = "bundle", num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// How the VM's virtiofsd serves a directory root and the volumes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShareTuningArgs {
    /// How much of the shared files the guest may cache: auto (until the host changes a
    /// file), always (for files only the container changes: a host change may go unseen),
    /// metadata, or never [default: auto].
    #[arg(long, value_name = "MODE")]
    pub share_cache: Option<Cache>,
    /// virtiofsd's worker threads (0: it serves requests on its queue's thread) [default: 0].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=MAX_THREAD_POOL_SIZE as i64))]
    pub share_threads: Option<u32>,
}

impl ShareTuningArgs {
    /// The tuning asked for; an error if anything was asked for and nothing is shared.
    pub fn tuning(&self, shares_anything: bool) -> Result<Tuning, ArgsError> {
        if !shares_anything && (self.share_cache.is_some() || self.share_threads.is_some()) {
            return Err(ArgsError::NothingShared);
        }
        let default = Tuning::default();
        Ok(Tuning {
            cache: self.share_cache.unwrap_or(default.cache),
            thread_pool_size: self.share_threads.unwrap_or(default.thread_pool_size),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--share-cache/--share-threads: nothing is shared with the VM (the root filesystem is an image and there is no --volume)")]
    NothingShared,
    #[error("-e {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    #[error("--user {0:?}: expected UID[:GID] as numbers (names are not looked up)")]
    BadUser(String),
    #[error("--security-opt {0:?}: unknown option (vmrun knows seccomp=PATH, seccomp=unconfined, no-new-privileges)")]
    UnknownSecurityOpt(String),
    #[error("--security-opt {0:?}: Palisade's guest has no AppArmor or SELinux")]
    NoLsm(String),
    #[error("--security-opt: seccomp is given twice ({0:?} and {1:?})")]
    SeccompTwice(String, String),
    #[error("--hostname {0:?}: expected 1-64 letters, digits, '-' or '.'")]
    BadHostname(String),
    #[error("--cap-add/--cap-drop cannot be combined with --privileged, which grants every capability")]
    CapsWithPrivileged,
    #[error("--vm-memory {vm} MiB is less than the container's --memory {limit} MiB")]
    VmSmallerThanLimit { vm: u32, limit: u32 },
    #[error("--{flag} {value:?}: expected {ROOT_DISK}:{expected}")]
    BadDeviceRate { flag: &'static str, value: String, expected: &'static str },
    #[error("--{flag} {value:?}: the VM has one disk, {ROOT_DISK} (the container's root filesystem)")]
    NoSuchDevice { flag: &'static str, value: String },
}

/// The VM's root disk, as the guest names it.
pub const ROOT_DISK: &str = "/dev/vda";

/// The read and write limits of the root disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskRates {
    pub read: Rates,
    pub write: Rates,
}

/// A rate with an optional unit: `1048576`, `512k`, `1mb`, `2G` (1024-based, case-insensitive,
/// as Docker's `--device-read-bps`). `None` for no number, zero, or an overflow.
fn bytes_with_unit(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&n| n > 0)
}

/// The `--device-{read,write}-{bps,iops}` values, as the root disk's limits (the last of a
/// flag given twice wins, as with Docker).
pub fn disk_rates(args: &VmrunArgs) -> Result<DiskRates, ArgsError> {
    let mut rates = DiskRates::default();
    let flags: [(&'static str, &[String], bool); 4] = [
        ("device-read-bps", &args.device_read_bps, true),
        ("device-write-bps", &args.device_write_bps, true),
        ("device-read-iops", &args.device_read_iops, false),
        ("device-write-iops", &args.device_write_iops, false),
    ];
    for (flag, values, bytes) in flags {
        for value in values {
            let expected = if bytes { "RATE (bytes a second, e.g. 1mb)" } else { "N (requests a second)" };
            let bad = || ArgsError::BadDeviceRate { flag, value: value.clone(), expected };
            let (device, rate) = value.rsplit_once(':').ok_or_else(bad)?;
            if device != ROOT_DISK {
                return Err(ArgsError::NoSuchDevice { flag, value: value.clone() });
            }
            let n = if bytes { bytes_with_unit(rate) } else { rate.trim().parse::<u64>().ok().filter(|&n| n > 0) };
            let n = Some(n.ok_or_else(bad)?);
            match flag {
                "device-read-bps" => rates.read.bytes_per_sec = n,
                "device-write-bps" => rates.write.bytes_per_sec = n,
                "device-read-iops" => rates.read.ops_per_sec = n,
                _ => rates.write.ops_per_sec = n,
            }
        }
    }
    Ok(rates)
}

/// The seccomp profile asked for with `--security-opt seccomp=…`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeccompOpt {
    /// Palisade's default profile (no filter at all with --privileged).
    #[default]
    Default,
    Unconfined,
    /// A profile file on the host (Docker or OCI `linux.seccomp` JSON).
    File(PathBuf),
}

/// `--security-opt` values, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityOpts {
    pub seccomp: SeccompOpt,
    pub no_new_privileges: bool,
}

/// Parses the `--security-opt` values (Docker accepts `:` for `=` too).
pub fn security_opts(values: &[String]) -> Result<SecurityOpts, ArgsError> {
    let mut o = SecurityOpts::default();
    let mut seccomp_from: Option<&str> = None;
    for v in values {
        let (key, value) = match v.split_once(['=', ':']) {
            Some((k, val)) => (k, Some(val)),
            None => (v.as_str(), None),
        };
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => o.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => o.no_new_privileges = false,
            ("seccomp", Some(val)) if !val.is_empty() => {
                if let Some(first) = seccomp_from {
                    return Err(ArgsError::SeccompTwice(first.to_string(), v.clone()));
                }
                seccomp_from = Some(v);
                o.seccomp = if val == "unconfined" { SeccompOpt::Unconfined } else { SeccompOpt::File(PathBuf::from(val)) };
            }
            ("apparmor" | "label", _) => return Err(ArgsError::NoLsm(v.clone())),
            _ => return Err(ArgsError::UnknownSecurityOpt(v.clone())),
        }
    }
    Ok(o)
}

/// `--user UID[:GID]` as (uid, gid).
pub fn user(value: Option<&str>) -> Result<(u32, u32), ArgsError> {
    let Some(v) = value else { return Ok((0, 0)) };
    let bad = || ArgsError::BadUser(v.to_string());
    let (u, g) = match v.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (v, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => 0,
    };
    Ok((uid, gid))
}

/// Checks `--hostname`: what sethostname takes and a resolver would accept.
pub fn hostname(value: Option<&str>) -> Result<Option<String>, ArgsError> {
    let Some(h) = value else { return Ok(None) };
    let ok = !h.is_empty() && h.len() <= 64 && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(Some(h.to_string()))
    } else {
        Err(ArgsError::BadHostname(h.to_string()))
    }
}

/// The VM's memory in MiB for a container limit of `limit` MiB: `--vm-memory` when
/// given (never below the limit), else the limit plus [`VM_MEMORY_OVERHEAD_MIB`], at
/// least [`DEFAULT_VM_MEMORY_MIB`].
pub fn vm_memory_mib(vm_memory: Option<u32>, limit: Option<u32>) -> Result<u32, ArgsError> {
    match (vm_memory, limit) {
        (Some(vm), Some(limit)) if vm < limit => Err(ArgsError::VmSmallerThanLimit { vm, limit }),
        (Some(vm), _) => Ok(vm),
        (None, Some(limit)) => Ok(limit.saturating_add(VM_MEMORY_OVERHEAD_MIB).max(DEFAULT_VM_MEMORY_MIB)),
        (None, None) => Ok(DEFAULT_VM_MEMORY_MIB),
    }
}

/// The command's environment: the defaults, then each `-e` in order (later wins).
/// `-e KEY` without `=` copies KEY from `lookup` (vmrun's environment) when set.
pub fn command_env(args: &VmrunArgs, lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, ArgsError> {
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into()), ("HOME".into(), "/root".into())];
    if args.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    for entry in &args.env {
        let (key, value) = match entry.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match lookup(entry) {
                Some(v) => (entry.clone(), v),
                None => continue,
            },
        };
        if key.is_empty() || key.contains('\0') || value.contains('\0') {
            return Err(ArgsError::BadEnv(entry.clone()));
        }
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rates_take_dockers_syntax_for_the_root_disk_only() {
        let args = parse(&[
            "--device-read-bps",
            "/dev/vda:1mb",
            "--device-write-bps=/dev/vda:512K",
            "--device-read-iops",
            "/dev/vda:100",
            "--device-write-iops",
            "/dev/vda:7",
            "true",
        ])
        .unwrap();
        let rates = disk_rates(&args).unwrap();
        assert_eq!(rates.read, Rates { bytes_per_sec: Some(1 << 20), ops_per_sec: Some(100) });
        assert_eq!(rates.write, Rates { bytes_per_sec: Some(512 << 10), ops_per_sec: Some(7) });
        assert_eq!(disk_rates(&parse(&["true"]).unwrap()).unwrap(), DiskRates::default());
        let last_wins = parse(&["--device-read-bps", "/dev/vda:1", "--device-read-bps", "/dev/vda:2gb", "true"]).unwrap();
        assert_eq!(disk_rates(&last_wins).unwrap().read.bytes_per_sec, Some(2 << 30));
        for (flag, value, says) in [
            ("--device-read-bps", "/dev/sda:1mb", "one disk, /dev/vda"),
            ("--device-read-bps", "/dev/vda", "expected /dev/vda:RATE"),
            ("--device-read-bps", "/dev/vda:fast", "expected /dev/vda:RATE"),
            ("--device-read-bps", "/dev/vda:0", "expected /dev/vda:RATE"),
            ("--device-read-bps", "/dev/vda:1tb", "expected /dev/vda:RATE"),
            ("--device-read-bps", "/dev/vda:99999999999999gb", "expected /dev/vda:RATE"),
            ("--device-read-iops", "/dev/vda:1k", "expected /dev/vda:N"),
        ] {
            let err = disk_rates(&parse(&[flag, value, "true"]).unwrap()).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(value), "{flag} {value}: {err}");
        }
    }

    fn parse(args: &[&str]) -> Result<VmrunArgs, clap::Error> {
        VmrunArgs::try_parse_from(std::iter::once("vmrun").chain(args.iter().copied()))
    }

    #[test]
    fn parses_like_docker_run() {
        let a = parse(&["--cpus", "2", "--memory", "256", "-e", "A=1", "-e", "B=2", "-w", "/tmp", "-i", "-t", "--", "sh", "-c", "echo hi"])
            .unwrap();
        assert_eq!((a.cpus, a.memory, a.interactive, a.tty), (2, Some(256), true, true));
        assert_eq!(a.env, ["A=1", "B=2"]);
        assert_eq!(a.workdir, "/tmp");
        assert_eq!(a.command, ["sh", "-c", "echo hi"]);
        // Options after the command belong to the command.
        let b = parse(&["ls", "-l", "--cpus"]).unwrap();
        assert_eq!(b.command, ["ls", "-l", "--cpus"]);
        assert_eq!((b.cpus, b.memory, b.vm_memory, b.workdir.as_str()), (1, None, None, "/"));
    }

    #[test]
    fn virtiofsd_tuning_is_taken_only_when_something_is_shared() {
        let a = parse(&["--share-cache", "never", "--share-threads", "4", "true"]).unwrap();
        assert_eq!(a.share_tuning.tuning(true).unwrap(), Tuning { cache: Cache::Never, thread_pool_size: 4 });
        let e = a.share_tuning.tuning(false).unwrap_err().to_string();
        assert!(e.starts_with("--share-cache/--share-threads: nothing is shared"), "{e}");
        assert_eq!(parse(&["true"]).unwrap().share_tuning.tuning(false).unwrap(), Tuning::default());
        assert!(parse(&["--share-cache", "sometimes", "true"]).is_err());
        assert!(parse(&["--share-threads", "65", "true"]).is_err());
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse(&[]).is_err(), "a command is required");
        assert!(parse(&["--cpus", "0", "true"]).is_err());
        assert!(parse(&["--memory", "lots", "true"]).is_err());
        assert!(parse(&["--pids-limit", "0", "true"]).is_err());
        assert!(parse(&["--userns", "--privileged", "true"]).is_err());
    }

    #[test]
    fn container_options() {
        let a = parse(&[
            "--privileged",
            "--read-only",
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--security-opt",
            "seccomp=/p.json",
            "-u",
            "1000:100",
            "--hostname",
            "box",
            "--pids-limit",
            "20",
            "--userns",
            "--memory",
            "64",
            "--vm-memory",
            "300",
            "true",
        ]);
        assert!(a.is_err(), "--userns and --privileged conflict");
        let a = parse(&[
            "--read-only",
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--security-opt",
            "seccomp=/p.json",
            "-u",
            "1000:100",
            "--hostname",
            "box",
            "--pids-limit",
            "20",
            "--userns",
            "--memory",
            "64",
            "--vm-memory",
            "300",
            "true",
        ])
        .unwrap();
        assert!(a.read_only && a.userns && !a.privileged);
        assert_eq!((a.cap_add.len(), a.cap_drop.len(), a.pids_limit, a.memory, a.vm_memory), (2, 1, Some(20), Some(64), Some(300)));
        let s = security_opts(&a.security_opt).unwrap();
        assert_eq!(s, SecurityOpts { seccomp: SeccompOpt::File("/p.json".into()), no_new_privileges: true });
        assert_eq!(user(a.user.as_deref()).unwrap(), (1000, 100));
        assert_eq!(hostname(a.hostname.as_deref()).unwrap().as_deref(), Some("box"));
    }

    #[test]
    fn bundle_takes_no_command_and_no_spec_options() {
        let a = parse(&["--bundle", "/b", "--cpus", "2", "-i", "--vm-memory", "512"]).unwrap();
        assert_eq!(a.bundle.as_deref(), Some(std::path::Path::new("/b")));
        assert!(a.command.is_empty());
        for extra in
            [&["--", "sh"][..], &["--privileged"], &["--memory", "64"], &["-e", "A=1"], &["--rootfs", "/r"], &["-t"], &["--cap-add", "ALL"]]
        {
            let mut v = vec!["--bundle", "/b"];
            v.extend_from_slice(extra);
            assert!(parse(&v).is_err(), "--bundle with {extra:?} must be refused");
        }
    }

    #[test]
    fn security_opts_user_hostname_and_memory() {
        let o = |v: &[&str]| security_opts(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(o(&["seccomp=unconfined"]).unwrap().seccomp, SeccompOpt::Unconfined);
        assert_eq!(
            o(&["seccomp:unconfined", "no-new-privileges:true"]).unwrap(),
            SecurityOpts { seccomp: SeccompOpt::Unconfined, no_new_privileges: true }
        );
        assert!(!o(&["no-new-privileges=false"]).unwrap().no_new_privileges);
        assert!(matches!(o(&["apparmor=unconfined"]), Err(ArgsError::NoLsm(_))));
        assert!(matches!(o(&["seccomp="]), Err(ArgsError::UnknownSecurityOpt(_))));
        assert!(matches!(o(&["bogus"]), Err(ArgsError::UnknownSecurityOpt(_))));
        assert!(matches!(o(&["seccomp=a", "seccomp=b"]), Err(ArgsError::SeccompTwice(..))));
        assert_eq!(user(None).unwrap(), (0, 0));
        assert_eq!(user(Some("7")).unwrap(), (7, 0));
        assert!(user(Some("nobody")).is_err() && user(Some("1:x")).is_err());
        assert!(hostname(Some("a b")).is_err() && hostname(Some(&"x".repeat(65))).is_err());
        assert_eq!(vm_memory_mib(None, None).unwrap(), 128);
        assert_eq!(vm_memory_mib(None, Some(32)).unwrap(), 128);
        assert_eq!(vm_memory_mib(None, Some(192)).unwrap(), 256);
        assert_eq!(vm_memory_mib(Some(200), Some(64)).unwrap(), 200);
        assert!(vm_memory_mib(Some(100), Some(200)).is_err());
    }

    #[test]
    fn env_defaults_and_overrides() {
        let a = parse(&["-t", "-e", "PATH=/x", "-e", "FOO", "-e", "NOPE", "-e", "Z=a=b", "true"]).unwrap();
        let env = command_env(&a, |k| (k == "FOO").then(|| "from-host".to_string())).unwrap();
        assert_eq!(env, ["HOME=/root", "TERM=xterm", "PATH=/x", "FOO=from-host", "Z=a=b"]);
        let b = parse(&["true"]).unwrap();
        assert_eq!(command_env(&b, |_| None).unwrap(), [format!("PATH={DEFAULT_PATH}"), "HOME=/root".into()]);
        let c = parse(&["-e", "=v", "true"]).unwrap();
        assert!(command_env(&c, |_| None).is_err());
    }
}
