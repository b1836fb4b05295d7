//! `palisade-vmm`: boots one micro-VM and exits when it stops.
//!
//! Exit status 0 when the guest resets through the i8042 (how our guests power off:
//! `reboot=k`); otherwise 1, with one line `palisade-vmm: <reason>` on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use palisade_vmm::config::{DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use palisade_vmm::{run_vm, DiskConfig, SerialConfig, VmConfig, VsockConfig};

/// Boot a KVM micro-VM: a Linux kernel with a serial console, an i8042 reset line and
/// optional virtio-mmio block, vsock and rng devices.
#[derive(Debug, Parser)]
#[command(name = "palisade-vmm", version)]
struct Args {
    /// Guest kernel: an ELF vmlinux (PVH entry if it has the note) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
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
    /// A virtio block device backed by a raw image; append `,ro` for read-only. Repeat for
    /// more disks: the first is /dev/vda.
    #[arg(long, value_name = "PATH[,ro]", value_parser = parse_disk)]
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
    /// Add a virtio-rng device fed from the host's /dev/urandom.
    #[arg(long)]
    rng: bool,
}

fn parse_disk(value: &str) -> Result<DiskConfig, String> {
    let (path, read_only) = match value.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((path, "rw")) => (path, false),
        Some((_, option)) => return Err(format!("unknown disk option {option:?} (expected ro or rw)")),
        None => (value, false),
    };
    if path.is_empty() {
        return Err("empty disk path".into());
    }
    Ok(DiskConfig { path: path.into(), read_only })
}

fn parse_serial(value: &str) -> Result<SerialConfig, String> {
    let mut config = SerialConfig::default();
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
    fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.cpus,
            memory_mib: self.memory,
            disks: self.disk,
            vsock: self.vsock_uds.map(|uds_path| VsockConfig { guest_cid: self.vsock_cid, uds_path }),
            rng: self.rng,
            serial: self.serial,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    match run_vm(args.into_config()) {
        Ok(exit) if exit.is_clean() => ExitCode::SUCCESS,
        Ok(exit) => {
            eprintln!("palisade-vmm: {exit}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("palisade-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flag_takes_an_optional_ro() {
        assert_eq!(parse_disk("/a.img").unwrap(), DiskConfig { path: "/a.img".into(), read_only: false });
        assert_eq!(parse_disk("/a,b.img,ro").unwrap(), DiskConfig { path: "/a,b.img".into(), read_only: true });
        assert!(parse_disk("/a.img,rx").is_err());
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn serial_flag_names_one_destination() {
        assert!(parse_serial("stdout").unwrap().to_stdout);
        assert!(parse_serial("stderr").unwrap().to_stderr);
        assert_eq!(parse_serial("none").unwrap(), SerialConfig::default());
        assert_eq!(parse_serial("file:/tmp/x").unwrap().log_file, Some("/tmp/x".into()));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tty").is_err());
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
