//! New namespaces for the VMM: pid (for its children, so the process forked next is PID 1
//! of its own namespace), then mount, ipc, uts, network and cgroup in that child.

use nix::sched::{unshare, CloneFlags};

use super::JailError;

/// Makes the next child of the calling process PID 1 of a new pid namespace.
pub fn unshare_pid_for_children() -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| JailError::sys("unshare(CLONE_NEWPID)", e))
}

/// The namespaces the VMM itself moves into. The network namespace is new and empty (only
/// a loopback that stays down): the VMM has no network device of its own; a VMM that must
/// hold a tap in a given namespace would open the tap before this step.
pub fn unshare_own() -> Result<(), JailError> {
    for (flag, name) in [
        (CloneFlags::CLONE_NEWNS, "unshare(CLONE_NEWNS)"),
        (CloneFlags::CLONE_NEWIPC, "unshare(CLONE_NEWIPC)"),
        (CloneFlags::CLONE_NEWUTS, "unshare(CLONE_NEWUTS)"),
        (CloneFlags::CLONE_NEWNET, "unshare(CLONE_NEWNET)"),
        // The VMM is not in its own cgroups yet (it waits for them later, at the
        // `CgroupGate`), so the root it sees is the supervisor's cgroup and its own shows as
        // `/palisade/<id>`. It has no cgroup filesystem and no privilege to mount one: the
        // namespace only hides the host's cgroup paths.
        (CloneFlags::CLONE_NEWCGROUP, "unshare(CLONE_NEWCGROUP)"),
    ] {
        unshare(flag).map_err(|e| JailError::sys(name, e))?;
    }
    nix::unistd::sethostname("palisade-vmm").map_err(|e| JailError::sys("sethostname in the new uts namespace", e))
}
