//! virtiofsd, the virtio-fs backend the host side starts for a VM: one per VM, one shared
//! directory (containers' roots and volumes live under it), confined in a sandbox of its own,
//! and never outliving whoever started it.
//!
//! The VMM is handed the socket's path (`palisade_vmm::FsConfig`); its jail's supervisor
//! connects to it. virtiofsd serves one connection and exits when it closes, i.e. with its VM.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How virtiofsd lets the guest cache what it reads (its `--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Cache while the host does not change the file (virtiofsd's default).
    Auto,
    /// Cache everything: for directories nobody else changes.
    Always,
    /// Cache nothing: every access goes to the host.
    Never,
    /// Cache metadata only.
    Metadata,
}

impl Cache {
    fn as_arg(self) -> &'static str {
        match self {
            Cache::Auto => "auto",
            Cache::Always => "always",
            Cache::Never => "never",
            Cache::Metadata => "metadata",
        }
    }
}

/// How virtiofsd confines itself (its `--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Its own mount, pid and network namespaces, the shared directory as its root
    /// (`pivot_root`), no capabilities it does not need, a seccomp filter.
    Namespace,
    /// `chroot` into the shared directory (for hosts without namespaces).
    Chroot,
    /// None: debugging only.
    None,
}

impl Sandbox {
    fn as_arg(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
            Sandbox::None => "none",
        }
    }
}

/// One virtiofsd to start.
#[derive(Debug, Clone)]
pub struct VirtiofsdConfig {
    pub binary: PathBuf,
    pub shared_dir: PathBuf,
    /// Where it listens (the VMM's `FsConfig::socket`).
    pub socket: PathBuf,
    pub read_only: bool,
    pub cache: Cache,
    /// Worker threads (0: requests are served on the queue's thread).
    pub thread_pool_size: u32,
    pub sandbox: Sandbox,
    /// Where its stderr goes (`None`: nowhere).
    pub log: Option<PathBuf>,
}

impl VirtiofsdConfig {
    /// The defaults for a VM's shared directory: namespace sandbox, `auto` cache, no pool.
    pub fn new(binary: impl Into<PathBuf>, shared_dir: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        VirtiofsdConfig {
            binary: binary.into(),
            shared_dir: shared_dir.into(),
            socket: socket.into(),
            read_only: false,
            cache: Cache::Auto,
            thread_pool_size: 0,
            sandbox: Sandbox::Namespace,
            log: None,
        }
    }

    /// virtiofsd's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--shared-dir".into(),
            self.shared_dir.clone().into(),
            "--socket-path".into(),
            self.socket.clone().into(),
            "--sandbox".into(),
            self.sandbox.as_arg().into(),
            "--cache".into(),
            self.cache.as_arg().into(),
            "--thread-pool-size".into(),
            self.thread_pool_size.to_string().into(),
            "--log-level".into(),
            "error".into(),
        ];
        if self.read_only {
            args.push("--readonly".into());
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error("shared directory {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("virtiofsd {path}: {source} (scripts/setup installs it)")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("virtiofsd log {path}: {source}")]
    Log { path: PathBuf, source: std::io::Error },
    #[error("virtiofsd for {dir} exited before it listened ({status}){said}")]
    Exited { dir: PathBuf, status: std::process::ExitStatus, said: String },
    #[error("virtiofsd for {dir} did not create its socket {socket} within {secs} s")]
    NoSocket { dir: PathBuf, socket: PathBuf, secs: u64 },
}

/// How long virtiofsd gets to create its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A running virtiofsd; stopped and reaped on drop.
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd and waits until it listens. It gets SIGTERM if the calling thread's
    /// process dies, so it cannot outlive its starter even when that is SIGKILLed.
    pub fn spawn(config: &VirtiofsdConfig) -> Result<Virtiofsd, VirtiofsdError> {
        if !config.shared_dir.is_dir() {
            return Err(VirtiofsdError::NotADirectory(config.shared_dir.clone()));
        }
        let _ = std::fs::remove_file(&config.socket);
        let mut cmd = Command::new(&config.binary);
        cmd.args(config.args()).stdin(Stdio::null()).stdout(Stdio::null());
        match &config.log {
            Some(path) => {
                let file = std::fs::File::create(path).map_err(|source| VirtiofsdError::Log { path: path.clone(), source })?;
                cmd.stderr(file);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        // Its own process group: a Ctrl-C on the caller's terminal is not for it.
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| VirtiofsdError::Spawn { path: config.binary.clone(), source })?;
        let mut running = Virtiofsd { child, socket: config.socket.clone() };
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while !config.socket.exists() {
            if let Ok(Some(status)) = running.child.try_wait() {
                let said = config.log.as_deref().and_then(last_line).map(|l| format!(": {l}")).unwrap_or_default();
                return Err(VirtiofsdError::Exited { dir: config.shared_dir.clone(), status, said });
            }
            if Instant::now() > deadline {
                return Err(VirtiofsdError::NoSocket {
                    dir: config.shared_dir.clone(),
                    socket: config.socket.clone(),
                    secs: LISTEN_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(running)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether it has exited (it does when its VM's connection closes).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then SIGKILL after a grace period; reaps it and removes its socket.
    pub fn stop(&mut self) {
        if !self.has_exited() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.has_exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last non-empty line of a (bounded) log, sanitised: virtiofsd's error message.
fn last_line(path: &Path) -> Option<String> {
    let mut text = Vec::new();
    std::fs::File::open(path).ok()?.take(64 * 1024).read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty())?;
    Some(crate::vmrun::guest_text::sanitize(line).chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary() -> PathBuf {
        palisade_vmm::testing::virtiofsd::path()
    }

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn the_arguments_say_what_the_config_says() {
        let mut config = VirtiofsdConfig::new("/bin/virtiofsd", "/shared", "/run/fs.sock");
        let args: Vec<String> = config.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "--shared-dir /shared --socket-path /run/fs.sock --sandbox namespace --cache auto --thread-pool-size 0 --log-level error"
        );
        config.read_only = true;
        config.cache = Cache::Never;
        config.thread_pool_size = 4;
        let args: Vec<String> = config.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert!(args.join(" ").ends_with("--cache never --thread-pool-size 4 --log-level error --readonly"), "{args:?}");
    }

    #[test]
    fn a_sandboxed_virtiofsd_serves_vhost_user_and_stops_with_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let mut config = VirtiofsdConfig::new(binary(), &shared, dir.path().join("fs.sock"));
        config.log = Some(dir.path().join("virtiofsd.log"));
        if !root() {
            config.sandbox = Sandbox::None;
        }
        let mut fsd = Virtiofsd::spawn(&config).unwrap();
        if root() {
            // Its own mount and network namespaces (it enters them just after it listens,
            // in itself or in the child it serves from).
            let ns_of = |pid: u32, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
            let children = |pid: u32| -> Vec<u32> {
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            };
            for ns in ["mnt", "net"] {
                let ours = ns_of(std::process::id(), ns);
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let mut theirs = vec![fsd.pid()];
                    theirs.extend(children(fsd.pid()));
                    if theirs.iter().any(|&pid| ns_of(pid, ns).is_some_and(|n| Some(n) != ours)) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "virtiofsd never left our {ns} namespace");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // A vhost-user frontend can take it over (the VMM's own code).
        let stream = std::os::unix::net::UnixStream::connect(fsd.socket()).unwrap();
        let frontend = palisade_vmm::devices::virtio::vhost_user::VhostUserFrontend::new(stream, 2).unwrap();
        assert_ne!(frontend.device_features(), 0);
        drop(frontend);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fsd.has_exited() {
            assert!(Instant::now() < deadline, "virtiofsd outlived its connection");
            std::thread::sleep(Duration::from_millis(20));
        }
        fsd.stop();
        assert!(!config.socket.exists());
    }

    #[test]
    fn failures_name_the_directory_and_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let config = VirtiofsdConfig::new(binary(), &missing, dir.path().join("fs.sock"));
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert_eq!(e, format!("shared directory {}: not a directory", missing.display()));
        let config = VirtiofsdConfig::new(dir.path().join("no-virtiofsd"), dir.path(), dir.path().join("fs.sock"));
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert!(e.contains("no-virtiofsd") && e.contains("scripts/setup"), "{e}");
        // virtiofsd itself refuses (a socket path in a directory that does not exist).
        let mut config = VirtiofsdConfig::new(binary(), dir.path(), dir.path().join("no/such/dir/fs.sock"));
        config.log = Some(dir.path().join("virtiofsd.log"));
        config.sandbox = Sandbox::None;
        let e = Virtiofsd::spawn(&config).err().unwrap().to_string();
        assert!(e.starts_with(&format!("virtiofsd for {} exited before it listened", dir.path().display())), "{e}");
    }
}
