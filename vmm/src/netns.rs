//! Doing one thing inside another network namespace: the supervisor opens a VM's taps in
//! the namespace their caller prepared (a pod's), then comes back to its own.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    /// The thread could not go back: it must not go on in the other namespace.
    #[error("leaving network namespace {path}: {source}")]
    Leave { path: PathBuf, source: nix::Error },
}

/// Runs `f` in the calling thread with the network namespace `netns` (a bind-mounted
/// namespace such as `/var/run/netns/NAME`, or `/proc/PID/ns/net`), then returns the thread
/// to the namespace it was in; with no `netns`, runs `f` where it is. What `f` opened there
/// (a tap, a socket) stays in that namespace.
pub fn in_netns<T>(netns: Option<&Path>, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let Some(path) = netns else { return Ok(f()) };
    let open = |p: &Path| File::open(p).map_err(|source| NetnsError::Open { path: p.to_owned(), source });
    let own = open(Path::new("/proc/thread-self/ns/net"))?;
    let target = open(path)?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter { path: path.to_owned(), source })?;
    let result = f();
    setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Leave { path: path.to_owned(), source })?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_netns() -> String {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap().display().to_string()
    }

    /// A thread enters a namespace made for the test, sees it, and comes back (root needed:
    /// the CI machines and test host run tests as root).
    #[test]
    fn runs_inside_the_namespace_and_comes_back() {
        let (path_tx, path_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // A thread in a namespace of its own holds it while the test uses it.
        let holder = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) (as root)");
            let tid = nix::unistd::gettid();
            path_tx.send((format!("/proc/self/task/{tid}/ns/net"), own_netns())).unwrap();
            let _ = done_rx.recv();
        });
        let (path, inside) = path_rx.recv().unwrap();
        let before = own_netns();
        let seen = in_netns(Some(Path::new(&path)), own_netns).unwrap();
        assert_eq!(seen, inside);
        assert_ne!(seen, before);
        assert_eq!(own_netns(), before);
        assert_eq!(in_netns(None, own_netns).unwrap(), before);
        drop(done_tx);
        holder.join().unwrap();
        let missing = in_netns(Some(Path::new("/nonexistent/netns")), || ()).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/netns"), "{missing}");
    }
}
