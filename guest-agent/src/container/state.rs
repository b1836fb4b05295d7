//! OCI state semantics inside the guest: `creating` (namespaces and mounts being set
//! up) → `created` (the init waits at the exec barrier) → `running` (exec'd the user's
//! program) → `stopped`, so create and start are two steps.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }

    /// Whether `start` is allowed now.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// The status after the init's process exited.
    pub fn on_exit(self) -> Status {
        Status::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_created_container_starts() {
        assert!(Status::Created.can_start());
        for s in [Status::Creating, Status::Running, Status::Stopped] {
            assert!(!s.can_start(), "{}", s.name());
        }
        assert_eq!(serde_json::to_string(&Status::Created).unwrap(), "\"created\"");
        assert_eq!(Status::Running.on_exit(), Status::Stopped);
    }
}
