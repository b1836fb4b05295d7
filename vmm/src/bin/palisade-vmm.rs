//! `palisade-vmm`: boots one micro-VM and exits when it stops.
//!
//! Exit status 0 when the guest resets through the i8042 (how our guests power off:
//! `reboot=k`) other than after a kernel panic (a warm reset: `reboot=k,panic_warm`);
//! otherwise 1 (128 + N when the jailed VMM was killed by signal N), with one
//! line `palisade-vmm: <reason>` on stderr (2 for a command-line error, also one line).
//! `--exit-record FILE` also writes how the VM ended as JSON (`palisade_vmm::ExitRecord`).
//! The VM is described by the flags, or by `--config FILE`: the JSON form of
//! `palisade_vmm::VmConfig`, which is what programs that start the VMM use.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use palisade_vmm::config::{ConfigError, DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use palisade_vmm::devices::virtio::rng::DEFAULT_RATES as DEFAULT_RNG_RATES;
use palisade_vmm::jail::{JailConfig, Jailed, PathMap, Role, DEFAULT_BASE_DIR, DEFAULT_MEMORY_OVERHEAD_MIB};
use palisade_vmm::rate_limiter::Rates;
use palisade_vmm::{
    run_vm, run_vm_with, DiskConfig, ExitRecord, FsConfig, NetConfig, SerialConfig, VmConfig, VmExit, VmmError, VsockConfig,
};

/// Boot a KVM micro-VM: a Linux kernel with a serial console, an i8042 reset line and
/// optional virtio-mmio block, vsock and rng devices.
#[derive(Debug, Parser)]
#[command(name = "palisade-vmm", version)]
struct Args {
    /// The whole VM as JSON (the serde form of palisade_vmm::VmConfig: `kernel`, `initrd`,
    /// `cmdline`, `vcpus`, `memory_mib`, `disks`, `vsock`, `rng`, `rng_rates`, `serial`),
    /// instead of the flags that describe it.
    #[arg(long, value_name = "FILE", conflicts_with_all = VM_FLAGS)]
    config: Option<PathBuf>,
    /// When the VMM ends, write how the VM ended here as one line of JSON: `ending`
    /// (reset, power-off, triple-fault, kvm-internal-error, kvm-fail-entry, halted,
    /// vcpu-error, vmm-error, killed, stopped), `clean`, `vcpu`, `signal`, `message`,
    /// `exit_status`.
    #[arg(long, value_name = "FILE")]
    exit_record: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux (PVH entry if it has the note) or a bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk, loaded high in guest memory.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line; a `virtio_mmio.device=` entry is appended per virtio device.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs (1 to 32).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPUS)]
    cpus: u8,
    /// Guest memory in MiB (at least 16).
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEMORY_MIB)]
    memory: u32,
    /// A virtio block device backed by a raw image; append `,ro` for read-only, and
    /// `,read-bps=N`, `,write-bps=N` (bytes a second), `,read-iops=N`, `,write-iops=N`
    /// (requests a second) to limit the guest's I/O (0: no limit). Repeat for more disks:
    /// the first is /dev/vda.
    #[arg(long, value_name = "PATH[,ro][,read-bps=N]…", value_parser = parse_disk)]
    disk: Vec<DiskConfig>,
    /// Add a virtio-vsock device whose host side is this Unix socket (`CONNECT <port>\n`).
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID (with --vsock-uds).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "vsock_uds")]
    vsock_cid: u64,
    /// Where the guest's serial console goes: stdout, stderr, file:PATH or none.
    #[arg(long, value_name = "WHERE", default_value = "stdout", value_parser = parse_serial)]
    serial: SerialConfig,
    /// Add a virtio-fs device: the guest mounts TAG (`mount -t virtiofs TAG DIR`), a
    /// vhost-user backend (virtiofsd) listening on PATH serves it. Repeat for more.
    #[arg(long, value_name = "tag=TAG,socket=PATH", value_parser = parse_fs)]
    fs: Vec<FsConfig>,
    /// Add a virtio-net device backed by host tap NAME (attached to if it exists, made for
    /// the VM otherwise), optionally in network namespace PATH, with the guest's MAC
    /// [default: random], MTU [default: 1500] and frame rates (0: no limit). Repeat for more.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,mtu=N][,netns=PATH][,rx-bps=N][,rx-pps=N][,tx-bps=N][,tx-pps=N]", value_parser = parse_net)]
    net: Vec<NetConfig>,
    /// Add a virtio-rng device fed from the host's /dev/urandom.
    #[arg(long)]
    rng: bool,
    /// The most random bytes the guest may draw a second (0: no limit).
    #[arg(long, value_name = "N", requires = "rng", default_value_t = DEFAULT_RNG_RATES.bytes_per_sec.unwrap_or(0))]
    rng_bps: u64,
    /// The most rng requests the guest may make a second (0: no limit).
    #[arg(long, value_name = "N", requires = "rng", default_value_t = DEFAULT_RNG_RATES.ops_per_sec.unwrap_or(0))]
    rng_iops: u64,
    /// Run without the host jail (namespaces, pivot_root, unprivileged uid, no capabilities,
    /// seccomp, cgroups). For debugging only: the VMM then runs with all of the caller's rights.
    #[arg(long)]
    no_jail: bool,
    /// The jailed VMM's uid [default: 900000 + this process's pid: one uid per VM].
    #[arg(long, value_name = "UID", conflicts_with = "no_jail")]
    jail_uid: Option<u32>,
    /// The jailed VMM's gid [default: the same number as its uid].
    #[arg(long, value_name = "GID", conflicts_with = "no_jail")]
    jail_gid: Option<u32>,
    /// Where the per-VM jail directories go (each removed when its VM ends).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASE_DIR)]
    jail_dir: PathBuf,
    /// The jailed VMM's cgroup memory limit is guest memory plus this.
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEMORY_OVERHEAD_MIB)]
    jail_memory_overhead: u32,
    /// The jailed VMM's CPU time limit, in CPUs [default: one more than --cpus].
    #[arg(long, value_name = "CPUS", conflicts_with = "no_jail")]
    jail_cpus: Option<f64>,
    /// Put the VM's cgroup (`palisade/<id>`) under this cgroup, a path from the hierarchies'
    /// roots that exists in each (a Kubernetes pod's, so that the VM counts in the pod and is
    /// held to its limits) [default: under palisade-vmm's own cgroup].
    #[arg(long, value_name = "CGROUP", conflicts_with = "no_jail")]
    jail_cgroup_parent: Option<PathBuf>,
    /// A process (the VM's virtiofsd, say) that joins the VM's cgroup, with its threads and
    /// children, before the guest runs: what it does for the guest counts against the VM's
    /// limits. Repeatable.
    #[arg(long, value_name = "PID", conflicts_with = "no_jail")]
    jail_cgroup_companion: Vec<i32>,
}

/// The flags that describe the VM, which `--config` replaces.
const VM_FLAGS: [&str; 14] = [
    "kernel",
    "initrd",
    "cmdline",
    "cpus",
    "memory",
    "disk",
    "vsock_uds",
    "vsock_cid",
    "fs",
    "net",
    "serial",
    "rng",
    "rng_bps",
    "rng_iops",
];

/// `PATH[,ro|,rw][,read-bps=N][,write-bps=N][,read-iops=N][,write-iops=N]`; options are
/// taken from the end up to the first that is not one, so a path may hold commas when an
/// option follows it.
fn parse_disk(value: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig::default();
    let mut rest = value;
    let mut seen = Vec::new();
    while let Some((before, option)) = rest.rsplit_once(',') {
        let (key, number) = option.split_once('=').unwrap_or((option, ""));
        if seen.contains(&key) {
            return Err(format!("disk option {key} given twice"));
        }
        let rate = || match number.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(format!("disk option {option:?}: expected {key}=N, N a whole number (0: no limit)")),
        };
        match key {
            "ro" | "rw" if number.is_empty() => disk.read_only = key == "ro",
            "read-bps" => disk.read_rates.bytes_per_sec = rate()?,
            "write-bps" => disk.write_rates.bytes_per_sec = rate()?,
            "read-iops" => disk.read_rates.ops_per_sec = rate()?,
            "write-iops" => disk.write_rates.ops_per_sec = rate()?,
            // Before the options, the rest is the path (which may hold commas itself).
            _ if !seen.is_empty() && !option.contains('=') => break,
            _ => {
                return Err(format!(
                    "unknown disk option {option:?} (expected ro, rw, read-bps=N, write-bps=N, read-iops=N or write-iops=N)"
                ))
            }
        }
        seen.push(key);
        rest = before;
    }
    if rest.is_empty() {
        return Err("empty disk path".into());
    }
    disk.path = rest.into();
    Ok(disk)
}

/// `tag=TAG,socket=PATH` (in either order; the path is the rest after `socket=`, so it may
/// hold commas when it comes last).
fn parse_fs(value: &str) -> Result<FsConfig, String> {
    let (mut tag, mut socket) = (None, None);
    let mut rest = value;
    while !rest.is_empty() {
        if let Some(path) = rest.strip_prefix("socket=") {
            let (path, after) = match path.split_once(",tag=") {
                Some((path, after)) => (path, Some(after)),
                None => (path, None),
            };
            socket = Some(path.to_string());
            match after {
                Some(after) => rest = &value[value.len() - after.len() - 4..],
                None => break,
            }
        } else if let Some(after) = rest.strip_prefix("tag=") {
            let (t, next) = after.split_once(',').unwrap_or((after, ""));
            tag = Some(t.to_string());
            rest = next;
        } else {
            return Err(format!("{value:?}: expected tag=TAG,socket=PATH"));
        }
    }
    match (tag, socket) {
        (Some(tag), Some(socket)) if !tag.is_empty() && !socket.is_empty() => Ok(FsConfig { tag, socket: socket.into() }),
        _ => Err(format!("{value:?}: expected tag=TAG,socket=PATH, both not empty")),
    }
}

/// `tap=NAME[,mac=MAC][,mtu=N][,netns=PATH][,rx-bps=N][,rx-pps=N][,tx-bps=N][,tx-pps=N]`,
/// in any order (a namespace path with a comma cannot be given here; `--config` can).
fn parse_net(value: &str) -> Result<NetConfig, String> {
    let mut net = NetConfig::new("");
    let number = |key: &str, v: &str| v.parse::<u64>().map_err(|_| format!("{value:?}: {key}={v:?} is not a number"));
    let rate = |key: &str, v: &str| number(key, v).map(|n| Some(n).filter(|&n| n > 0));
    for part in value.split(',') {
        let (key, v) = part.split_once('=').ok_or_else(|| format!("{value:?}: {part:?} is not KEY=VALUE"))?;
        match key {
            "tap" => net.tap = v.to_string(),
            "mac" => net.mac = Some(v.parse().map_err(|e| format!("{value:?}: {e}"))?),
            "mtu" => {
                net.mtu =
                    v.parse().ok().filter(|m| (68..=65535).contains(m)).ok_or_else(|| format!("{value:?}: mtu={v:?} is not 68 to 65535"))?
            }
            "netns" => net.netns = Some(v.into()),
            "rx-bps" => net.rx_rates.bytes_per_sec = rate(key, v)?,
            "rx-pps" => net.rx_rates.ops_per_sec = rate(key, v)?,
            "tx-bps" => net.tx_rates.bytes_per_sec = rate(key, v)?,
            "tx-pps" => net.tx_rates.ops_per_sec = rate(key, v)?,
            _ => return Err(format!("{value:?}: unknown option {key:?}")),
        }
    }
    if net.tap.is_empty() || net.tap.len() > 15 {
        return Err(format!("{value:?}: expected tap=NAME (1 to 15 bytes)"));
    }
    Ok(net)
}

fn parse_serial(value: &str) -> Result<SerialConfig, String> {
    let mut config = SerialConfig::none();
    match value {
        "stdout" => config.to_stdout = true,
        "stderr" => config.to_stderr = true,
        "none" => {}
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => config.log_file = Some(path.into()),
            _ => return Err(format!("{value:?}: expected stdout, stderr, file:PATH or none")),
        },
    }
    Ok(config)
}

impl Args {
    /// How to jail the VMM; `None` with --no-jail.
    fn jail_config(&self) -> Option<JailConfig> {
        if self.no_jail {
            return None;
        }
        Some(JailConfig {
            base_dir: self.jail_dir.clone(),
            uid: self.jail_uid,
            gid: self.jail_gid,
            memory_overhead_mib: self.jail_memory_overhead,
            cpus: self.jail_cpus,
            cgroup_parent: self.jail_cgroup_parent.clone(),
            cgroup_companions: self.jail_cgroup_companion.clone(),
            seccomp_selftest: seccomp_selftest_requested(),
        })
    }

    /// The VM to run: the `--config` file's, or the flags'.
    fn vm_config(self) -> Result<VmConfig, ConfigError> {
        match &self.config {
            Some(path) => VmConfig::from_json_file(path),
            None => Ok(self.into_config()),
        }
    }

    fn into_config(self) -> VmConfig {
        VmConfig {
            // Present: clap requires --kernel unless --config is given.
            kernel: self.kernel.unwrap_or_default(),
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.cpus,
            memory_mib: self.memory,
            disks: self.disk,
            vsock: self.vsock_uds.map(|uds_path| VsockConfig { guest_cid: self.vsock_cid, uds_path }),
            fs: self.fs,
            net: self.net,
            rng: self.rng,
            rng_rates: Rates { bytes_per_sec: Some(self.rng_bps).filter(|&n| n > 0), ops_per_sec: Some(self.rng_iops).filter(|&n| n > 0) },
            serial: self.serial,
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (`LEVEL` or `target=LEVEL,…`; default `warn`).
///
/// A `Targets` filter rather than an `EnvFilter`: it has no regex engine, which keeps about
/// 250 KB of code out of the binary and its resident set.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let default = || Targets::new().with_default(LevelFilter::WARN);
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|e| {
            eprintln!("palisade-vmm: RUST_LOG={spec:?} ignored ({e}): expected LEVEL or target=LEVEL,…");
            default()
        }),
        _ => default(),
    };
    // Lines at INFO and above (those a guest can trigger again and again) are held to a
    // budget; DEBUG and TRACE, which an operator asks for, are not. Checked after `filter`,
    // so lines it hides do not spend the budget.
    let budget = palisade_vmm::log_budget::LogBudget::new();
    let limit = tracing_subscriber::filter::filter_fn(move |meta| {
        use palisade_vmm::log_budget::Verdict;
        if !meta.is_event() || *meta.level() > tracing::Level::INFO {
            return true;
        }
        // Each log statement has one 'static Metadata: its address names the site.
        match budget.judge(meta as *const _ as usize, std::time::Instant::now()) {
            Verdict::Write { held_back: 0 } => true,
            Verdict::Write { held_back } => {
                eprintln!(
                    "palisade-vmm: {held_back} log lines from {}:{} were held back (log budget)",
                    meta.file().unwrap_or("?"),
                    meta.line().unwrap_or(0)
                );
                true
            }
            Verdict::Drop => false,
            Verdict::Summary { dropped } => {
                eprintln!("palisade-vmm: log budget spent: {dropped} log lines dropped since the last such line");
                false
            }
        }
    });
    // The builder's own level cap (INFO by default) would hide debug and trace: `filter` decides.
    tracing_subscriber::fmt().with_max_level(LevelFilter::TRACE).with_writer(std::io::stderr).finish().with(limit).with(filter).init();
}

/// A command-line error as one line: clap's message with its continuation lines joined, its
/// usage and tips left out (they are in `--help`).
fn one_line_usage_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(|l| l.trim()).collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("palisade-vmm: {message} (see palisade-vmm --help)")
}

/// Exit status for command-line errors, as clap (and runc) use.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help or --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line_usage_error(&e));
            return ExitCode::from(USAGE_ERROR);
        }
    };
    init_logging();
    let record_path = args.exit_record.clone();
    // The supervisor's (or unjailed VMM's) end: the record to the caller's file, its status.
    let finish = |record: ExitRecord| {
        if let Some(path) = &record_path {
            if let Err(e) = record.write_to(path) {
                eprintln!("palisade-vmm: {e}");
            }
        }
        ExitCode::from(record.exit_status)
    };
    if let Some(exit) = injected_lost_boot() {
        // Marked, so that soak counts (scripts/soak) tell it from the emulator's own faults.
        // The mark goes into the record too: vmrun's message comes from there.
        let message = format!("{exit} [injected: PALISADE_VMM_LOSE_FIRST_BOOT]");
        eprintln!("palisade-vmm: {message}");
        return finish(ExitRecord::of_exit(&exit, message));
    }

    let jail = args.jail_config();
    let config = match args.vm_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("palisade-vmm: {e}");
            return finish(ExitRecord::vmm_error(e.to_string()));
        }
    };
    let Some(jail) = jail else {
        eprintln!("palisade-vmm: warning: --no-jail: the VMM runs unconfined (no namespaces, seccomp, cgroups or privilege drop); use it for debugging only");
        return finish(outcome_record(run_vm(config), &PathMap::default()));
    };
    match palisade_vmm::jail::enter(config, &jail) {
        // The jailed VMM has ended (its message, if any, is printed) and its jail is gone.
        Ok(Role::Supervisor(record)) => finish(record),
        Ok(Role::Jailed(Jailed { config, options, paths, report })) => {
            let record = outcome_record(run_vm_with(config, options), &paths);
            Jailed::report(&report, &record);
            ExitCode::from(record.exit_status)
        }
        Err(e) => {
            eprintln!("palisade-vmm: {e}");
            finish(ExitRecord::vmm_error(e.to_string()))
        }
    }
}

/// The record of how the VM ended, with one line on stderr unless it ended cleanly; paths
/// in the line are the caller's, not the jail's.
fn outcome_record(outcome: Result<VmExit, VmmError>, paths: &PathMap) -> ExitRecord {
    match outcome {
        Ok(exit) => {
            let message = paths.host_text(&exit.to_string());
            if !exit.is_clean() {
                eprintln!("palisade-vmm: {message}");
            }
            ExitRecord::of_exit(&exit, message)
        }
        Err(e) => {
            let message = paths.host_text(&e.to_string());
            eprintln!("palisade-vmm: {message}");
            ExitRecord::vmm_error(message)
        }
    }
}

/// `PALISADE_VMM_SECCOMP_SELFTEST=1` makes vCPU 0 attempt a forbidden system call once its
/// seccomp filter is in, which must kill the VMM with SIGSYS. Debug builds only: a release
/// VMM ignores the variable (and has no such code).
fn seccomp_selftest_requested() -> bool {
    cfg!(debug_assertions) && std::env::var_os("PALISADE_VMM_SECCOMP_SELFTEST").is_some_and(|v| v == "1")
}

/// `PALISADE_VMM_LOSE_FIRST_BOOT=PATH` makes the first VMM that can create PATH report the
/// triple fault an emulator loses a guest with, without booting: the end-to-end tests use it
/// to check that a lost boot is booted once more inside the test host, and only there.
/// Later VMMs (PATH exists) boot normally. Debug builds only: a release VMM ignores it.
fn injected_lost_boot() -> Option<VmExit> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let path = std::env::var_os("PALISADE_VMM_LOSE_FIRST_BOOT").filter(|p| !p.is_empty())?;
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path).ok()?;
    tracing::warn!(marker = %std::path::Path::new(&path).display(), "PALISADE_VMM_LOSE_FIRST_BOOT: reporting a triple fault instead of booting");
    Some(VmExit::TripleFault { vcpu: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flag_takes_an_optional_ro_and_rates() {
        assert_eq!(parse_disk("/a.img").unwrap(), DiskConfig { path: "/a.img".into(), ..Default::default() });
        assert_eq!(parse_disk("/a,b.img,ro").unwrap(), DiskConfig { path: "/a,b.img".into(), read_only: true, ..Default::default() });
        let limited = parse_disk("/a.img,ro,read-bps=1048576,read-iops=100,write-bps=0,write-iops=7").unwrap();
        assert!(limited.read_only);
        assert_eq!(limited.read_rates, Rates { bytes_per_sec: Some(1 << 20), ops_per_sec: Some(100) });
        assert_eq!(limited.write_rates, Rates { bytes_per_sec: None, ops_per_sec: Some(7) });
        assert!(parse_disk("/a.img,rx").is_err());
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("/a.img,read-bps=1mb").unwrap_err().contains("read-bps=N"));
        assert!(parse_disk("/a.img,read-bps=1,read-bps=2").unwrap_err().contains("twice"));
        assert!(parse_disk("/a.img,ro=1").is_err());
        assert!(parse_disk("/a.img,ro,speed=9").is_err());
        assert_eq!(parse_disk("/a,b,c.img,read-iops=3").unwrap().path, std::path::PathBuf::from("/a,b,c.img"));
    }

    #[test]
    fn rng_rates_default_to_the_devices_and_zero_is_no_limit() {
        let config = Args::parse_from(["palisade-vmm", "--kernel", "/k", "--rng"]).into_config();
        assert_eq!(config.rng_rates, DEFAULT_RNG_RATES);
        let config = Args::parse_from(["palisade-vmm", "--kernel", "/k", "--rng", "--rng-bps", "0", "--rng-iops", "5"]).into_config();
        assert_eq!(config.rng_rates, Rates { bytes_per_sec: None, ops_per_sec: Some(5) });
    }

    #[test]
    fn fs_flag_takes_a_tag_and_a_socket() {
        let net = parse_net("tap=tap0,mac=02:00:00:00:00:09,mtu=1400,netns=/run/netns/x,rx-bps=0,tx-pps=1000").unwrap();
        assert_eq!((net.tap.as_str(), net.mtu, net.netns.as_deref()), ("tap0", 1400, Some(std::path::Path::new("/run/netns/x"))));
        assert_eq!((net.mac.unwrap().0[5], net.rx_rates.bytes_per_sec, net.tx_rates.ops_per_sec), (9, None, Some(1000)));
        for bad in [
            "",
            "mac=02:00:00:00:00:09",
            "tap=",
            "tap=a,mtu=10",
            "tap=a,mtu=x",
            "tap=a,colour=red",
            "tap=a,mac=01:00:00:00:00:00",
            "tap=abcdefghijklmnop",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
        let fs = |tag: &str, socket: &str| FsConfig { tag: tag.into(), socket: socket.into() };
        assert_eq!(parse_fs("tag=root,socket=/run/fs.sock").unwrap(), fs("root", "/run/fs.sock"));
        assert_eq!(parse_fs("socket=/run/fs.sock,tag=root").unwrap(), fs("root", "/run/fs.sock"));
        assert_eq!(parse_fs("tag=v,socket=/a,b/fs.sock").unwrap(), fs("v", "/a,b/fs.sock"));
        for bad in ["", "tag=root", "socket=/s", "tag=,socket=/s", "tag=x,socket=", "name=x,socket=/s"] {
            assert!(parse_fs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serial_flag_names_one_destination() {
        assert!(parse_serial("stdout").unwrap().to_stdout);
        assert!(parse_serial("stderr").unwrap().to_stderr);
        assert_eq!(parse_serial("none").unwrap(), SerialConfig::none());
        assert_eq!(parse_serial("file:/tmp/x").unwrap().log_file, Some("/tmp/x".into()));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tty").is_err());
    }

    #[test]
    fn every_flag_has_help_text() {
        for arg in Args::command_for_tests().get_arguments() {
            assert!(arg.get_help().is_some(), "--{} has no help text", arg.get_id());
        }
    }

    #[test]
    fn usage_errors_are_one_line() {
        for argv in [
            &["palisade-vmm", "--kernel", "/k", "--no-such-flag"][..],
            &["palisade-vmm"],
            &["palisade-vmm", "--kernel", "/k", "--cpus", "many"],
            &["palisade-vmm", "--kernel", "/k", "--serial", "tty"],
        ] {
            let e = Args::try_parse_from(argv).unwrap_err();
            let line = one_line_usage_error(&e);
            assert_eq!(line.lines().count(), 1, "{line}");
            assert!(line.starts_with("palisade-vmm: ") && !line.contains("error:"), "{line}");
        }
        let e = Args::try_parse_from(["palisade-vmm"]).unwrap_err();
        assert!(one_line_usage_error(&e).contains("--kernel <PATH>"), "{}", one_line_usage_error(&e));
    }

    #[test]
    fn a_config_file_replaces_the_vm_flags_and_holds_the_same_vm() {
        let dir = tempfile::tempdir().unwrap();
        let argv = ["palisade-vmm", "--kernel", "/k", "--cpus", "2", "--memory", "64", "--disk", "/d.img,ro,read-bps=5", "--rng"];
        let from_flags = Args::parse_from(argv).into_config();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, from_flags.to_json()).unwrap();
        let args = Args::parse_from(["palisade-vmm", "--config", path.to_str().unwrap(), "--no-jail"]);
        assert_eq!(args.vm_config().unwrap(), from_flags);
        // Only the kernel is needed; the rest defaults as the flags do.
        std::fs::write(&path, r#"{"kernel": "/k"}"#).unwrap();
        let args = Args::parse_from(["palisade-vmm", "--config", path.to_str().unwrap()]);
        assert_eq!(args.vm_config().unwrap(), VmConfig::new("/k"));
        for flags in [&["--kernel", "/k"][..], &["--cpus", "2"], &["--rng"], &["--disk", "/d.img"]] {
            let mut argv = vec!["palisade-vmm", "--config", "/c.json"];
            argv.extend_from_slice(flags);
            let e = Args::try_parse_from(&argv).unwrap_err();
            assert!(one_line_usage_error(&e).contains("cannot be used with"), "{flags:?}: {}", one_line_usage_error(&e));
        }
        // Mistakes in the file are named with the file, the line and the column.
        std::fs::write(&path, "{\"kernel\": \"/k\",\n \"vcpu\": 2}").unwrap();
        let e = Args::parse_from(["palisade-vmm", "--config", path.to_str().unwrap()]).vm_config().unwrap_err().to_string();
        assert!(e.starts_with(&format!("VM config {}: unknown field `vcpu`", path.display())) && e.contains("line 2"), "{e}");
        std::fs::write(&path, r#"{"memory_mib": 64}"#).unwrap();
        let e = Args::parse_from(["palisade-vmm", "--config", path.to_str().unwrap()]).vm_config().unwrap_err().to_string();
        assert!(e.contains("missing field `kernel`"), "{e}");
        let e = Args::parse_from(["palisade-vmm", "--config", "/no/such.json"]).vm_config().unwrap_err().to_string();
        assert!(e.starts_with("VM config /no/such.json: No such file"), "{e}");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = Args::parse_from(["palisade-vmm", "--kernel", "/k"]).into_config();
        assert_eq!(config, VmConfig::new("/k"));
        Args::command_for_tests().debug_assert();
    }

    impl Args {
        fn command_for_tests() -> clap::Command {
            <Args as clap::CommandFactory>::command()
        }
    }
}
