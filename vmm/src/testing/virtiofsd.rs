//! virtiofsd, as `scripts/setup` installs it, for tests of virtio-fs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where virtiofsd is: `$VIRTIOFSD`, `~/.cargo/bin` (where `cargo install` puts it), `PATH`.
/// Panics with what to do when it is nowhere: it is a dependency, not an option.
pub fn path() -> PathBuf {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd"));
    std::env::var_os("VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(home)
        .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join("virtiofsd")))
        .find(|p| p.is_file())
        .expect("virtiofsd not found (in $VIRTIOFSD, ~/.cargo/bin or PATH): scripts/setup installs it")
}

/// A virtiofsd serving `shared` on `socket` (unsandboxed: these tests are about the VMM's
/// side), killed on drop.
pub struct Virtiofsd {
    pub child: Child,
    pub socket: PathBuf,
}

impl Virtiofsd {
    /// Starts it and waits for its socket.
    pub fn start(shared: &Path, socket: &Path) -> Virtiofsd {
        let child = Command::new(path())
            .arg("--shared-dir")
            .arg(shared)
            .arg("--socket-path")
            .arg(socket)
            .args(["--sandbox", "none", "--log-level", "error"])
            .spawn()
            .expect("starting virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd did not create its socket {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Virtiofsd { child, socket: socket.to_path_buf() }
    }

    /// Whether it exits within `timeout` (it is killed if not).
    pub fn exits_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
