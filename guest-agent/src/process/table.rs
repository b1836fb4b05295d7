//! The table of processes started by the agent: who is running, who has exited, and
//! waiting for an exit.
//!
//! Race-free registration: [`ProcessTable::spawn_registered`] holds the table lock from
//! fork to registration, and the reaper takes the same lock to record an exit, so an
//! exit is never recorded for a pid the table does not know yet. Exits of pids that are
//! not ours (orphans reparented to PID 1) are kept, bounded, as unclaimed. So are the
//! exited processes that are not a container's init (`exec`s: a pod's exec probes make
//! thousands a day), the oldest forgotten first: a caller waits for an exit as soon as it
//! starts the process, long before [`MAX_EXITED_KEPT`] others have ended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use palisade_protocol::ExitStatus;

/// How many unclaimed exit statuses are kept.
const MAX_UNCLAIMED: usize = 1024;
/// How many exited processes other than containers' inits are remembered.
pub const MAX_EXITED_KEPT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("process {id}: no such process")]
    Unknown { id: String },
    #[error("process {id}: a process with this id was already started")]
    Duplicate { id: String },
}

/// One started process.
#[derive(Debug)]
pub struct Entry {
    pub pid: i32,
    pub status: Option<ExitStatus>,
    /// The pty master, for window-size changes, when the process runs on a terminal.
    pub pty_master: Option<Arc<OwnedFd>>,
    /// The cgroup of a container's init: its `memory.events` tells whether a SIGKILL
    /// came from the OOM killer.
    pub cgroup: Option<PathBuf>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    by_pid: HashMap<i32, String>,
    unclaimed: VecDeque<(i32, ExitStatus)>,
    /// The exited processes that are not a container's init, oldest exit first.
    exited: VecDeque<String>,
    /// Pids of children whose start failed: their exit is of no interest.
    discard: HashSet<i32>,
}

/// What a spawn closure reports.
pub struct Spawned {
    pub pid: i32,
    pub pty_master: Option<Arc<OwnedFd>>,
    /// See [`Entry::cgroup`].
    pub cgroup: Option<PathBuf>,
}

/// The process table; share it in an `Arc`.
#[derive(Default)]
pub struct ProcessTable {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it; the
        // data is plain maps that stay consistent, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` names a started process.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().by_id.contains_key(id)
    }

    /// Runs `spawn` with the table locked and registers the child under `id`.
    /// `spawn` returns the child's pid, or an error and the pid of a child that was
    /// forked but failed to start (its exit will be discarded).
    pub fn spawn_registered<E, F>(&self, id: &str, spawn: F) -> Result<Result<i32, E>, TableError>
    where
        F: FnOnce() -> Result<Spawned, (Option<i32>, E)>,
    {
        let mut inner = self.lock();
        if inner.by_id.contains_key(id) {
            return Err(TableError::Duplicate { id: id.to_string() });
        }
        match spawn() {
            Ok(spawned) => {
                inner.by_pid.insert(spawned.pid, id.to_string());
                inner.by_id.insert(
                    id.to_string(),
                    Entry { pid: spawned.pid, status: None, pty_master: spawned.pty_master, cgroup: spawned.cgroup },
                );
                Ok(Ok(spawned.pid))
            }
            Err((pid, e)) => {
                if let Some(pid) = pid {
                    inner.discard.insert(pid);
                }
                Ok(Err(e))
            }
        }
    }

    /// Records the exit of `pid` (called by the reaper) and wakes waiters. A container
    /// init killed by SIGKILL whose cgroup counted an `oom_kill` is marked
    /// `oom_killed` (read now, while the cgroup still exists).
    pub fn record_exit(&self, pid: i32, mut status: ExitStatus) {
        let mut inner = self.lock();
        if inner.discard.remove(&pid) {
            return;
        }
        match inner.by_pid.remove(&pid) {
            Some(id) => {
                if let Some(entry) = inner.by_id.get_mut(&id) {
                    if let (Some(libc::SIGKILL), Some(cgroup)) = (status.signal, &entry.cgroup) {
                        status.oom_killed = crate::container::cgroup::oom_kills(cgroup) > 0;
                    }
                    entry.status = Some(status);
                    entry.pty_master = None;
                    if entry.cgroup.is_none() {
                        inner.exited.push_back(id);
                        if inner.exited.len() > MAX_EXITED_KEPT {
                            if let Some(oldest) = inner.exited.pop_front() {
                                inner.by_id.remove(&oldest);
                            }
                        }
                    }
                }
            }
            None => {
                if inner.unclaimed.len() >= MAX_UNCLAIMED {
                    inner.unclaimed.pop_front();
                }
                inner.unclaimed.push_back((pid, status));
            }
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Blocks until process `id` has exited.
    pub fn wait(&self, id: &str) -> Result<ExitStatus, TableError> {
        let mut inner = self.lock();
        loop {
            match inner.by_id.get(id) {
                None => return Err(TableError::Unknown { id: id.to_string() }),
                Some(Entry { status: Some(status), .. }) => return Ok(*status),
                Some(_) => inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// The pid of `id` while it runs (`None` once it has exited, so that a signal
    /// never reaches a recycled pid).
    pub fn running_pid(&self, id: &str) -> Result<Option<i32>, TableError> {
        let inner = self.lock();
        let entry = inner.by_id.get(id).ok_or_else(|| TableError::Unknown { id: id.to_string() })?;
        Ok(if entry.status.is_none() { Some(entry.pid) } else { None })
    }

    /// The cgroup of `id` while it runs (a container's init; `None` for a plain process or
    /// once it has exited).
    pub fn running_cgroup(&self, id: &str) -> Result<Option<PathBuf>, TableError> {
        let inner = self.lock();
        let entry = inner.by_id.get(id).ok_or_else(|| TableError::Unknown { id: id.to_string() })?;
        Ok(if entry.status.is_none() { entry.cgroup.clone() } else { None })
    }

    /// The pty master of `id`, if it runs on a terminal and has not exited.
    pub fn pty_master(&self, id: &str) -> Result<Option<Arc<OwnedFd>>, TableError> {
        let inner = self.lock();
        let entry = inner.by_id.get(id).ok_or_else(|| TableError::Unknown { id: id.to_string() })?;
        Ok(entry.pty_master.clone())
    }

    /// Forgets `id` once it has exited, so that the id can be used again (a deleted
    /// container's init). False, and nothing forgotten, while it runs or when unknown.
    pub fn forget(&self, id: &str) -> bool {
        let mut inner = self.lock();
        if inner.by_id.get(id).is_none_or(|e| e.status.is_none()) {
            return false;
        }
        inner.by_id.remove(id);
        // Not left in the eviction order either, where it would later evict the id's
        // next holder.
        inner.exited.retain(|e| e != id);
        true
    }

    /// Exit statuses of children that were never ours (for diagnostics and tests).
    pub fn unclaimed(&self) -> Vec<(i32, ExitStatus)> {
        self.lock().unclaimed.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_process_frees_its_id_but_a_running_one_is_kept() {
        let table = ProcessTable::new();
        let exit = ExitStatus { code: Some(0), signal: None, oom_killed: false };
        table.spawn_registered("c", || ok(10)).unwrap().unwrap();
        assert!(!table.forget("c"), "a running process is not forgotten");
        assert_eq!(table.running_pid("c").unwrap(), Some(10));
        assert!(!table.forget("unknown"));
        table.record_exit(10, exit);
        assert!(table.forget("c"));
        assert!(!table.contains("c"));
        // The id is free again, and its new holder is not evicted in the old one's place.
        table.spawn_registered("c", || ok(11)).unwrap().unwrap();
        table.record_exit(11, exit);
        for n in 0..MAX_EXITED_KEPT - 1 {
            let pid = 100 + n as i32;
            table.spawn_registered(&format!("exec-{n}"), || ok(pid)).unwrap().unwrap();
            table.record_exit(pid, exit);
        }
        assert_eq!(table.wait("c").unwrap(), exit, "the id's new holder is still remembered");
    }

    #[test]
    fn exited_processes_are_forgotten_oldest_first_past_the_bound_but_containers_are_not() {
        let table = ProcessTable::new();
        let exit = ExitStatus { code: Some(0), signal: None, oom_killed: false };
        table
            .spawn_registered("container", || {
                Ok::<_, (Option<i32>, String)>(Spawned { pid: 10, pty_master: None, cgroup: Some("/sys/fs/cgroup/c".into()) })
            })
            .unwrap()
            .unwrap();
        table.record_exit(10, exit);
        let total = MAX_EXITED_KEPT + 5;
        for n in 0..total {
            let pid = 100 + n as i32;
            table.spawn_registered(&format!("exec-{n}"), || ok(pid)).unwrap().unwrap();
            table.record_exit(pid, exit);
        }
        for n in 0..5 {
            assert!(!table.contains(&format!("exec-{n}")), "exec-{n} is forgotten");
        }
        for n in 5..total {
            assert_eq!(table.wait(&format!("exec-{n}")).unwrap(), exit, "exec-{n} is remembered");
        }
        assert_eq!(table.wait("container").unwrap(), exit, "a container's init is never forgotten");
        // A process still running is never forgotten either, however many end around it.
        table.spawn_registered("running", || ok(50)).unwrap().unwrap();
        for n in total..total + MAX_EXITED_KEPT {
            let pid = 100 + n as i32;
            table.spawn_registered(&format!("exec-{n}"), || ok(pid)).unwrap().unwrap();
            table.record_exit(pid, exit);
        }
        assert_eq!(table.running_pid("running").unwrap(), Some(50));
    }

    fn ok(pid: i32) -> Result<Spawned, (Option<i32>, String)> {
        Ok(Spawned { pid, pty_master: None, cgroup: None })
    }

    #[test]
    fn wait_returns_the_recorded_status_to_every_waiter() {
        let table = Arc::new(ProcessTable::new());
        table.spawn_registered("p", || ok(4242)).unwrap().unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let t = table.clone();
                std::thread::spawn(move || t.wait("p").unwrap())
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let status = ExitStatus { code: Some(3), signal: None, oom_killed: false };
        table.record_exit(4242, status);
        for w in waiters {
            assert_eq!(w.join().unwrap(), status);
        }
        assert_eq!(table.running_pid("p").unwrap(), None);
    }

    #[test]
    fn duplicates_unknown_and_failed_spawns() {
        let table = ProcessTable::new();
        table.spawn_registered("p", || ok(10)).unwrap().unwrap();
        assert!(matches!(table.spawn_registered("p", || ok(11)), Err(TableError::Duplicate { .. })));
        assert!(matches!(table.wait("nope"), Err(TableError::Unknown { .. })));
        let failed = table.spawn_registered("q", || Err((Some(12), "exec failed".to_string()))).unwrap();
        assert_eq!(failed.unwrap_err(), "exec failed");
        // The failed child's exit is discarded, a stranger's is kept as unclaimed.
        table.record_exit(12, ExitStatus { code: Some(127), signal: None, oom_killed: false });
        table.record_exit(99, ExitStatus { code: Some(0), signal: None, oom_killed: false });
        assert_eq!(table.unclaimed(), vec![(99, ExitStatus { code: Some(0), signal: None, oom_killed: false })]);
        assert!(!table.contains("q"));
    }

    #[test]
    fn a_sigkilled_container_init_is_oom_killed_when_its_cgroup_says_so() {
        let cgroups = tempfile::tempdir().unwrap();
        let (oom, plain) = (cgroups.path().join("oom"), cgroups.path().join("plain"));
        for (dir, kills) in [(&oom, 1), (&plain, 0)] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("memory.events"), format!("low 0\nhigh 0\nmax 7\noom 1\noom_kill {kills}\n")).unwrap();
        }
        let table = ProcessTable::new();
        let spawn = |id: &str, pid: i32, cgroup: Option<&PathBuf>| {
            table
                .spawn_registered(id, || Ok::<_, (Option<i32>, String)>(Spawned { pid, pty_master: None, cgroup: cgroup.cloned() }))
                .unwrap()
                .unwrap();
        };
        spawn("oom", 20, Some(&oom));
        spawn("oom-but-exited", 21, Some(&oom));
        spawn("killed", 22, Some(&plain));
        spawn("not-a-container", 23, None);
        let killed = ExitStatus { code: None, signal: Some(libc::SIGKILL), oom_killed: false };
        table.record_exit(20, killed);
        table.record_exit(21, ExitStatus { code: Some(1), signal: None, oom_killed: false });
        table.record_exit(22, killed);
        table.record_exit(23, killed);
        assert_eq!(table.wait("oom").unwrap(), ExitStatus { oom_killed: true, ..killed });
        assert!(!table.wait("oom-but-exited").unwrap().oom_killed);
        assert_eq!(table.wait("killed").unwrap(), killed);
        assert_eq!(table.wait("not-a-container").unwrap(), killed);
    }
}
