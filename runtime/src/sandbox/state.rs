//! What `state.json` holds, and how a sandbox's liveness is decided: by its supervisor
//! process, named by pid *and* start time (a pid that was reused is not the supervisor).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use palisade_vmm::ExitRecord;
use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Being set up: its supervisor has not said it runs yet.
    Creating,
    /// Its VM runs.
    Running,
    /// Its VM has ended (or its supervisor is gone).
    Stopped,
}

/// One process, for good: its pid and its start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessRef {
    /// The running process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<ProcessRef> {
        palisade_vmm::jail::start_time(pid).map(|start_time| ProcessRef { pid, start_time })
    }

    /// Whether this very process still runs (and is not a zombie).
    pub fn is_alive(&self) -> bool {
        if palisade_vmm::jail::start_time(self.pid) != Some(self.start_time) {
            return false;
        }
        // A zombie has exited: it only waits for its parent to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    }
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxState {
    pub id: String,
    pub status: Status,
    /// The host process that holds the VM (its end is the VM's end).
    #[serde(default)]
    pub supervisor: Option<ProcessRef>,
    /// The VMM (`palisade-vmm`), a child of the supervisor.
    #[serde(default)]
    pub vmm: Option<ProcessRef>,
    /// The VM's virtiofsd, when it has shared directories.
    #[serde(default)]
    pub virtiofsd: Option<ProcessRef>,
    /// The command that started the sandbox (what an ephemeral sandbox lives for).
    #[serde(default)]
    pub starter: Option<ProcessRef>,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    #[serde(default)]
    pub stopped_unix_ms: Option<u64>,
    /// How the VM ended, once it has.
    #[serde(default)]
    pub exit: Option<ExitRecord>,
    /// The same in one line for a person: what the VMM saw, with the guest console's panic
    /// or last line when it kept one (`vmrun`'s explanation of a VM's end).
    #[serde(default)]
    pub end_reason: Option<String>,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl SandboxState {
    pub fn new(id: &str) -> SandboxState {
        SandboxState {
            id: id.to_string(),
            status: Status::Creating,
            supervisor: None,
            vmm: None,
            virtiofsd: None,
            starter: None,
            created_unix_ms: now_unix_ms(),
            started_unix_ms: None,
            stopped_unix_ms: None,
            exit: None,
            end_reason: None,
        }
    }

    /// Brings the recorded status in line with the processes: a sandbox whose supervisor is
    /// gone has stopped, whatever the file said (its supervisor was SIGKILLed, or the host
    /// rebooted). How the VM ended comes from `exit_record` when the VMM wrote one. Returns
    /// whether anything changed.
    pub fn refresh(&mut self, exit_record: &Path) -> bool {
        let gone = match (self.status, self.supervisor) {
            (Status::Stopped, _) => false,
            (_, Some(supervisor)) => !supervisor.is_alive(),
            // Creating, and nobody holds it: its creator died before the supervisor ran.
            (Status::Creating, None) => false,
            (Status::Running, None) => true,
        };
        if !gone {
            return false;
        }
        self.status = Status::Stopped;
        self.stopped_unix_ms = Some(now_unix_ms());
        if self.exit.is_none() {
            self.exit = ExitRecord::read_from(exit_record).ok().or_else(|| {
                Some(ExitRecord::signalled(libc::SIGKILL, false, "the sandbox's supervisor ended without saying how its VM ended"))
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_process_is_named_by_pid_and_start_time() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = ProcessRef::of(child.id()).unwrap();
        assert!(me.is_alive());
        assert!(!ProcessRef { start_time: me.start_time + 1, ..me }.is_alive(), "a reused pid is someone else");
        child.kill().unwrap();
        // Killed but not reaped: a zombie, which is not alive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while me.is_alive() {
            assert!(std::time::Instant::now() < deadline, "the killed process still counts as alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(!me.is_alive());
        assert!(ProcessRef::of(child.id()).is_none_or(|p| p != me));
    }

    #[test]
    fn a_running_sandbox_whose_supervisor_died_is_stopped_with_the_vms_record() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("exit.json");
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut state = SandboxState::new("s1");
        state.status = Status::Running;
        state.supervisor = ProcessRef::of(child.id());
        assert!(!state.refresh(&record), "alive: nothing changes");
        assert_eq!(state.status, Status::Running);

        child.kill().unwrap();
        child.wait().unwrap();
        // No record: the supervisor was killed before the VMM said anything.
        let mut killed = state.clone();
        assert!(killed.refresh(&record));
        assert_eq!(killed.status, Status::Stopped);
        assert_eq!(killed.exit.as_ref().map(|e| e.ending), Some(palisade_vmm::Ending::Killed));
        // With the VMM's record, that is how it ended.
        ExitRecord::of_exit(&palisade_vmm::VmExit::Reset, "the guest reset the VM (power-off)").write_to(&record).unwrap();
        assert!(state.refresh(&record));
        assert_eq!(state.exit.as_ref().map(|e| (e.ending, e.clean)), Some((palisade_vmm::Ending::Reset, true)));
        assert!(!state.refresh(&record), "stopped stays stopped");
    }

    #[test]
    fn the_file_form_names_the_status_in_words_and_refuses_unknown_fields() {
        let mut state = SandboxState::new("pod-1");
        state.status = Status::Running;
        state.supervisor = Some(ProcessRef { pid: 42, start_time: 7 });
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains(r#""status":"running""#), "{json}");
        assert_eq!(serde_json::from_str::<SandboxState>(&json).unwrap(), state);
        assert!(serde_json::from_str::<SandboxState>(&json.replace("\"id\"", "\"name\"")).is_err());
    }
}
