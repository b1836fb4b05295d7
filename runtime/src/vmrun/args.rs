//! The `vmrun` command line, and the environment a command gets.

use std::path::PathBuf;

use clap::Parser;

/// `PATH` of the command unless `-e PATH=…` says otherwise (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Run a command in a fresh micro-VM, like `docker run`.
#[derive(Debug, Clone, Parser)]
#[command(name = "vmrun", version, about, trailing_var_arg = true)]
pub struct VmrunArgs {
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(16..=65536))]
    pub memory: u32,
    /// Guest kernel (default: <assets>/vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs holding the guest agent (default: <assets>/initramfs.cpio).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Root filesystem: a directory (made into an erofs image) or an erofs/ext4 image
    /// (default: <assets>/busybox.erofs).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
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
    /// Show the guest's serial console on stderr (debugging).
    #[arg(long)]
    pub console: bool,
    /// Log level of vmrun itself (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("-e {0:?}: expected KEY=VALUE")]
    BadEnv(String),
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

    fn parse(args: &[&str]) -> Result<VmrunArgs, clap::Error> {
        VmrunArgs::try_parse_from(std::iter::once("vmrun").chain(args.iter().copied()))
    }

    #[test]
    fn parses_like_docker_run() {
        let a = parse(&["--cpus", "2", "--memory", "256", "-e", "A=1", "-e", "B=2", "-w", "/tmp", "-i", "-t", "--", "sh", "-c", "echo hi"]).unwrap();
        assert_eq!((a.cpus, a.memory, a.interactive, a.tty), (2, 256, true, true));
        assert_eq!(a.env, ["A=1", "B=2"]);
        assert_eq!(a.workdir, "/tmp");
        assert_eq!(a.command, ["sh", "-c", "echo hi"]);
        // Options after the command belong to the command.
        let b = parse(&["ls", "-l", "--cpus"]).unwrap();
        assert_eq!(b.command, ["ls", "-l", "--cpus"]);
        assert_eq!((b.cpus, b.memory, b.workdir.as_str()), (1, 128, "/"));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse(&[]).is_err(), "a command is required");
        assert!(parse(&["--cpus", "0", "true"]).is_err());
        assert!(parse(&["--memory", "lots", "true"]).is_err());
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
