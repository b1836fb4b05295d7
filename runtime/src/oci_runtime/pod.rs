//! Pods: one VM for a CRI sandbox and every container of it. A container annotated as a
//! sandbox (`io.kubernetes.cri.container-type=sandbox`, CRI-O's
//! `io.kubernetes.cri-o.ContainerType=sandbox`) boots the VM as any container does; one
//! annotated as a container of sandbox S (`…container-type=container` with
//! `io.kubernetes.cri.sandbox-id` / `io.kubernetes.cri-o.SandboxID` = S) joins S's VM: its root
//! and bind-mount sources are bound live into the VM's share ([`crate::live_share`]), under
//! `pods/KEY/`, its root is mounted by the agent as a root filesystem of its own, and the
//! namespaces its spec joins by path (the sandbox's network, IPC, UTS; a shared pid
//! namespace) become the sandbox init's namespaces in the guest. `delete` gives all of it back;
//! the VM goes with the sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_protocol::{Request, RootfsSource, RootfsSpec};
use serde::{Deserialize, Serialize};

use super::store::{ContainerDir, ContainerRecord, Status};
use super::RuntimeError;
use crate::live_share::LiveShare;
use crate::sandbox::{control, SandboxDir, SandboxId, Status as SandboxStatus};
use crate::share::{self, SharePlan};
use crate::vmrun::connect::{request_timeout, ControlClient};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a container goes, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A VM of its own (no annotations, or a sandbox).
    Own,
    /// Into the VM of the container `sandbox` (its sandbox ID is its container ID).
    Join { sandbox: String },
}

/// Whether the container is a pod's sandbox (CRI's or CRI-O's annotation): its VM is the
/// pod's.
pub fn is_sandbox(annotations: &BTreeMap<String, String>) -> bool {
    ["io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"]
        .iter()
        .any(|key| annotations.get(*key).map(String::as_str) == Some("sandbox"))
}

/// The cgroup a pod's VM goes under: the pod's, which holds its sandbox container's
/// cgroup `container_cgroup` (a path from the hierarchy's root, as kubelet's
/// `cgroup_parent` and the sandbox's ID make it: `kubepods/burstable/pod<uid>/<id>`).
/// `None` when the container's cgroup is directly under the root.
pub fn vm_cgroup_parent(container_cgroup: &Path) -> Option<PathBuf> {
    let parent = container_cgroup.parent().filter(|p| !p.as_os_str().is_empty())?;
    Some(Path::new("/").join(parent))
}

/// The container's placement: CRI's annotations (containerd), else CRI-O's (and podman's).
pub fn placement(annotations: &BTreeMap<String, String>) -> Result<Placement, RuntimeError> {
    let pairs = [
        ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id"),
        ("io.kubernetes.cri-o.ContainerType", "io.kubernetes.cri-o.SandboxID"),
    ];
    for (type_key, sandbox_key) in pairs {
        match annotations.get(type_key).map(String::as_str) {
            None => continue,
            Some("sandbox") => return Ok(Placement::Own),
            Some("container") => {
                let sandbox = annotations
                    .get(sandbox_key)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| RuntimeError::Invalid(format!("config.json: annotation {type_key}=container without {sandbox_key}")))?;
                return Ok(Placement::Join { sandbox: sandbox.clone() });
            }
            Some(other) => {
                return Err(RuntimeError::Invalid(format!("config.json: annotation {type_key}={other:?} (sandbox or container)")));
            }
        }
    }
    Ok(Placement::Own)
}

/// What a container that joined a pod's VM holds in it (kept in its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMember {
    /// The sandbox's container ID.
    pub sandbox_container: String,
    /// Its directory inside the VM's share (`pods/KEY`).
    pub dir: String,
    /// What is bound under it, inside the share.
    pub binds: Vec<String>,
    /// The root filesystem the agent mounted for it.
    pub rootfs: String,
}

/// The running sandbox a container joins.
pub struct SandboxVm {
    pub sandbox: SandboxId,
    /// The sandbox init's pid in the guest: whose namespaces the container joins.
    pub init_pid: u32,
    pub share: LiveShare,
    pub socket: PathBuf,
}

/// Finds sandbox container `id`'s VM; it must have been created and not have stopped.
pub fn sandbox_vm(root: &Path, id: &str) -> Result<SandboxVm, RuntimeError> {
    let record = ContainerDir::open(root, id)
        .and_then(|locked| locked.read_record())
        .map_err(|e| RuntimeError::Invalid(format!("the pod's sandbox container {id}: {e}")))?;
    if !matches!(record.status(), Status::Created | Status::Running | Status::Paused) {
        return Err(RuntimeError::State(format!("the pod's sandbox container {id} is {}", record.status().name())));
    }
    let sandbox = record
        .sandbox_id()
        .filter(|_| record.owns_sandbox)
        .ok_or_else(|| RuntimeError::Invalid(format!("container {id} is not a pod's sandbox (it runs in the VM of another container)")))?;
    let sroot = super::create::sandbox_root(root);
    let state = control::state(&sroot, &sandbox).map_err(|e| RuntimeError::State(format!("the pod's sandbox container {id}: {e}")))?;
    let virtiofsd = state.virtiofsd.filter(|_| state.status == SandboxStatus::Running && state.vmm.is_some_and(|v| v.is_alive()));
    let virtiofsd = virtiofsd
        .filter(|p| p.is_alive())
        .ok_or_else(|| RuntimeError::State(format!("the VM of the pod's sandbox container {id} is not running")))?;
    let init_pid = record.guest_pid.ok_or_else(|| RuntimeError::State(format!("the pod's sandbox container {id} has no init")))?;
    let dir = SandboxDir::new(&sroot, &sandbox);
    Ok(SandboxVm { sandbox, init_pid, share: LiveShare { pid: virtiofsd.pid, dir: dir.share_dir() }, socket: dir.vsock_socket() })
}

/// Binds `plan` (paths relative to the member's directory `dir` in the share) into the VM
/// and mounts its root filesystem (`root_path` in the plan) as `rootfs`. On failure, what
/// was done is undone.
pub fn join(vm: &SandboxVm, sandbox_container: &str, dir: &str, plan: &SharePlan, rootfs: RootfsSpec) -> Result<PodMember, RuntimeError> {
    let mut member = PodMember { sandbox_container: sandbox_container.into(), dir: dir.into(), binds: Vec::new(), rootfs: String::new() };
    let result = (|| {
        let host_dir = vm.share.dir.join(dir);
        let parent = host_dir.parent().unwrap_or(&vm.share.dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| RuntimeError::Other(format!("{}: {e}", parent.display())))?;
        let placeholders =
            share::ShareDir::create(&host_dir, plan).map_err(|e| RuntimeError::Other(format!("the pod's shared directory: {e}")))?;
        // Kept: removed by `leave`, once nothing is bound on them.
        placeholders.keep();
        for entry in &plan.entries {
            let path = format!("{dir}/{}", entry.path);
            vm.share.attach(&entry.host, &path, entry.read_only).map_err(|e| RuntimeError::Other(e.to_string()))?;
            member.binds.push(path);
        }
        let id = rootfs.id.clone();
        let mut agent = ControlClient::connect_ready(&vm.socket, HANDSHAKE_TIMEOUT, request_timeout())
            .map_err(|e| RuntimeError::Other(format!("the pod's VM: {e}")))?;
        agent.call_ok("mounting the container's root", &Request::MountRootfs(rootfs)).map_err(|e| RuntimeError::Guest(e.to_string()))?;
        member.rootfs = id;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(member),
        Err(e) => {
            leave(vm, &member);
            Err(e)
        }
    }
}

/// Gives back what `member` holds in the VM: its root filesystem, its binds, its
/// placeholders. Best effort: what is gone already (the VM ended) is skipped.
pub fn leave(vm: &SandboxVm, member: &PodMember) {
    give_back(vm, None, member);
}

/// Has the VM's agent delete container `id` (what is left of it is killed, its cgroup in
/// the guest removed, its id freed), then [`leave`]s.
pub fn delete_and_leave(vm: &SandboxVm, id: &str, member: &PodMember) {
    give_back(vm, Some(id), member);
}

fn give_back(vm: &SandboxVm, container: Option<&str>, member: &PodMember) {
    let mut requests = Vec::new();
    if let Some(id) = container {
        requests.push(("deleting the container in the VM", Request::DeleteContainer { id: id.to_string() }));
    }
    if !member.rootfs.is_empty() {
        requests.push(("unmounting the container's root", Request::UnmountRootfs { id: member.rootfs.clone() }));
    }
    let mut agent: Option<ControlClient> = None;
    for (what, request) in &requests {
        let client = match agent.take() {
            Some(c) => Ok(c),
            None => ControlClient::connect_ready(&vm.socket, HANDSHAKE_TIMEOUT, request_timeout()),
        };
        // A failed request may have closed the connection (an agent older than the
        // request does): the next one gets a new connection.
        match client.and_then(|mut c| c.call_ok(what, request).map(|()| c)) {
            Ok(c) => agent = Some(c),
            Err(e) => tracing::warn!("pod member {}: {e}", member.dir),
        }
    }
    drop(agent);
    for path in member.binds.iter().rev() {
        if let Err(e) = vm.share.detach(path) {
            tracing::warn!("pod member {}: {e}", member.dir);
        }
    }
    share::remove_placeholders(&vm.share.dir.join(&member.dir));
}

/// `leave` for `delete`: the sandbox's VM may be gone (then only the placeholders are left,
/// and they went with the sandbox's directory, or are removed here).
pub fn leave_after(root: &Path, record: &ContainerRecord, member: &PodMember) {
    match sandbox_vm(root, &member.sandbox_container) {
        Ok(vm) => delete_and_leave(&vm, &record.id, member),
        Err(e) => {
            tracing::info!("container {}: its pod's VM: {e}; removing what is left of it", record.id);
            if let Some(sandbox) = record.sandbox_id() {
                let dir = SandboxDir::new(&super::create::sandbox_root(root), &sandbox).share_dir();
                share::remove_placeholders(&dir.join(&member.dir));
            }
        }
    }
}

/// The root filesystem spec of a pod member whose root is at `dir/root` in the share.
pub fn member_rootfs(id: &str, dir: &str, writable: bool) -> RootfsSpec {
    RootfsSpec {
        id: id.into(),
        source: RootfsSource::Share { tag: share::TAG.into(), path: format!("{dir}/{}", share::ROOT_PATH) },
        writable,
        process_mounts: false,
    }
}

/// The guest path of namespace `kind` (an OCI type) of guest process `pid`, or `None` for a
/// kind that cannot be joined (mount: the member has its own root).
pub fn guest_namespace(kind: &str, pid: u32) -> Option<String> {
    let name = match kind {
        "network" => "net",
        "ipc" => "ipc",
        "uts" => "uts",
        "pid" => "pid",
        "user" => "user",
        "cgroup" => "cgroup",
        "time" => "time",
        _ => return None,
    };
    Some(format!("/proc/{pid}/ns/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn placement_follows_cri_and_cri_o_annotations() {
        assert_eq!(placement(&annotations(&[])).unwrap(), Placement::Own);
        assert_eq!(placement(&annotations(&[("io.kubernetes.cri.container-type", "sandbox")])).unwrap(), Placement::Own);
        let cri = [("io.kubernetes.cri.container-type", "container"), ("io.kubernetes.cri.sandbox-id", "pod1")];
        assert_eq!(placement(&annotations(&cri)).unwrap(), Placement::Join { sandbox: "pod1".into() });
        let crio = [("io.kubernetes.cri-o.ContainerType", "container"), ("io.kubernetes.cri-o.SandboxID", "pod2")];
        assert_eq!(placement(&annotations(&crio)).unwrap(), Placement::Join { sandbox: "pod2".into() });
        let missing = placement(&annotations(&[("io.kubernetes.cri.container-type", "container")])).unwrap_err().to_string();
        assert!(missing.contains("io.kubernetes.cri.sandbox-id"), "{missing}");
        assert!(placement(&annotations(&[("io.kubernetes.cri.container-type", "vm")])).is_err());
    }

    #[test]
    fn a_pods_vm_goes_under_the_pods_cgroup() {
        assert!(is_sandbox(&annotations(&[("io.kubernetes.cri.container-type", "sandbox")])));
        assert!(is_sandbox(&annotations(&[("io.kubernetes.cri-o.ContainerType", "sandbox")])));
        assert!(!is_sandbox(&annotations(&[("io.kubernetes.cri.container-type", "container")])));
        assert!(!is_sandbox(&annotations(&[])));
        let sandbox = Path::new("kubepods/burstable/pod1234/5678abcd");
        assert_eq!(vm_cgroup_parent(sandbox).as_deref(), Some(Path::new("/kubepods/burstable/pod1234")));
        // A container cgroup right under the root has no pod's to go under.
        assert_eq!(vm_cgroup_parent(Path::new("5678abcd")), None);
    }

    #[test]
    fn joined_namespaces_are_the_sandbox_inits() {
        assert_eq!(guest_namespace("network", 7).as_deref(), Some("/proc/7/ns/net"));
        assert_eq!(guest_namespace("ipc", 7).as_deref(), Some("/proc/7/ns/ipc"));
        assert_eq!(guest_namespace("mount", 7), None);
    }
}
