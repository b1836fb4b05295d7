//! `create`: a sandbox (VM) for the container, its root and bind-mount sources shared into
//! it, the container created in the guest (its init waits at the exec barrier) by the
//! container's monitor, whose PID goes to `--pid-file`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use palisade_protocol::{ContainerSpec, RootfsSource, RootfsSpec};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::hooks::{Hooks, Point};
use super::host_cgroup::{self, Hierarchy, HostCgroup};
use super::monitor::{self, Launch, MonitorReport, MonitorRequest};
use super::network::PodNetwork;
use super::pod::{self, Placement};
use super::query::hook_state;
use super::store::{write_atomic, write_json_atomic, ContainerDir, ContainerRecord, Recorded, Status, SANDBOX_DIR};
use super::RuntimeError;
use crate::oci::bundle;
use crate::sandbox::control::{self, Attachment};
use crate::sandbox::{ProcessRef, SandboxDir, SandboxId, SandboxSpec, SharedPath};
use crate::share::{self, SharePlan};
use crate::vmrun::args::{vm_memory_mib, ShareTuningArgs};
use crate::vmrun::assets::{self, AssetError};
use crate::vmrun::vmm::kernel_cmdline;

/// How long the supervisor may take to say the VM runs.
const SUPERVISOR_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `create` was asked.
pub struct CreateOptions<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: u32,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is `slice:prefix:name`.
    pub systemd_cgroup: bool,
}

/// The sandboxes' root under the runtime's root.
pub fn sandbox_root(root: &Path) -> PathBuf {
    root.join(SANDBOX_DIR)
}

/// The sandbox of a container of its own: a short name (socket paths must stay under
/// 108 bytes however long the root and the ID are).
fn own_sandbox_id(id: &str) -> SandboxId {
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    SandboxId::parse(&hex).expect("hex is a valid sandbox id")
}

/// How [`guest_spec`] rewrites a spec.
#[derive(Debug, Clone, Default)]
pub struct GuestSpecOptions<'a> {
    /// `--systemd-cgroup`.
    pub systemd: bool,
    /// The directory of the VM's share the container's binds go under (`""`: the share's
    /// root, for a VM of its own; `pods/KEY` for a pod member).
    pub share_dir: &'a str,
    /// A pod member: the namespaces its spec joins by path are this guest process's (the
    /// pod's sandbox init's).
    pub join_pid: Option<u32>,
}

/// The container's spec as the guest gets it: host bind-mount sources become paths in the
/// VM's share (added to `plan`, relative to `options.share_dir`); a network namespace given
/// by path (the caller's, whose interfaces are carried into the VM: [`super::network`])
/// becomes the guest's own, where those interfaces are; a pod member's namespaces by path
/// become its sandbox's.
/// With `systemd` cgroups, `linux.cgroupsPath` becomes the path systemd's would be (the
/// guest has no systemd).
pub fn guest_spec(config: &str, plan: &mut SharePlan, bundle_dir: &Path, options: &GuestSpecOptions<'_>) -> Result<String, RuntimeError> {
    let mut v: Value = serde_json::from_str(config).map_err(|e| RuntimeError::Invalid(format!("config.json: {e}")))?;
    if let Some(path) = v.pointer_mut("/linux/cgroupsPath").filter(|_| options.systemd) {
        let given = path.as_str().map(str::to_string);
        let relative = host_cgroup::relative_path(given.as_deref(), "", true, Path::new(""))
            .map_err(|e| RuntimeError::Invalid(format!("config.json: {e}")))?;
        *path = Value::String(format!("/{}", relative.display()));
    }
    // Hooks run on the host ([`super::hooks`]), not in the guest.
    v.as_object_mut().map(|o| o.remove("hooks"));
    if let Some(ns) = v.pointer_mut("/linux/namespaces").and_then(Value::as_array_mut) {
        for n in ns.iter_mut() {
            let kind = n.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
            if n.get("path").is_some_and(|p| p.as_str().is_some_and(|p| !p.is_empty())) {
                if let Some(pid) = options.join_pid {
                    let path = super::pod::guest_namespace(&kind, pid).ok_or_else(|| {
                        RuntimeError::Unsupported(format!(
                            "config.json: linux.namespaces: a pod's container cannot join a {kind} namespace"
                        ))
                    })?;
                    n["path"] = Value::String(path);
                } else if kind == "network" {
                    // Marked, and taken out below: the container is in the guest's own.
                    *n = Value::Null;
                } else {
                    return Err(RuntimeError::Unsupported(format!(
                        "config.json: linux.namespaces: joining a host {kind} namespace by path is not possible from a VM"
                    )));
                }
            }
        }
        ns.retain(|n| !n.is_null());
    }
    crate::oci::bundle::rewrite_bind_sources(&mut v, bundle_dir, |bind| -> Result<String, RuntimeError> {
        let path = share::volume_path(bind.index);
        let in_share = if options.share_dir.is_empty() { path.clone() } else { format!("{}/{path}", options.share_dir) };
        plan.add(&bind.host, path, bind.read_only)
            .map_err(|e| RuntimeError::Invalid(format!("config.json: mount {}: {e}", bind.host.display())))?;
        Ok(palisade_protocol::share_path(share::TAG, &in_share))
    })?;
    let text = v.to_string();
    if text.len() > palisade_protocol::MAX_MESSAGE_SIZE - 4096 {
        return Err(RuntimeError::Invalid(format!("config.json: {} bytes, more than the guest accepts", text.len())));
    }
    Ok(text)
}

/// The network namespace the spec names by path (the caller's), if any.
fn host_network_namespace(config: &Value) -> Option<PathBuf> {
    let namespaces = config.pointer("/linux/namespaces")?.as_array()?;
    let network = namespaces.iter().find(|n| n.get("type").and_then(Value::as_str) == Some("network"))?;
    network.get("path").and_then(Value::as_str).filter(|p| !p.is_empty()).map(PathBuf::from)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

/// When each step of `create` ended, from its start: logged at info level (`--debug`, or
/// RUST_LOG=info) as "create timings" with the steps in milliseconds, for the benchmark's
/// breakdown (`bench/scripts/oci-create-steps`). A pod member has no VM steps (0).
#[derive(Debug, Default)]
struct Timings {
    /// The bundle read and checked, the assets found.
    checked: Duration,
    /// The VM's supervisor, VMM and virtiofsd running.
    vm_started: Duration,
    /// The guest booted: its agent answered, the share and the root mounted.
    booted: Duration,
    /// The container created in the guest (its init at the exec barrier).
    created: Duration,
}

impl Timings {
    fn log(&self, id: &str) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let after = |d: Duration, before: Duration| if d.is_zero() { 0.0 } else { ms(d.saturating_sub(before)) };
        tracing::info!(
            container = id,
            check_ms = ms(self.checked),
            vm_start_ms = after(self.vm_started, self.checked),
            boot_ms = after(self.booted, self.vm_started),
            container_ms = ms(self.created.saturating_sub(self.booted.max(self.checked))),
            total_ms = ms(self.created),
            "create timings"
        );
    }
}

/// Runs `create`.
pub fn create(o: &CreateOptions<'_>, signals: &Receiver<i32>) -> Result<(), RuntimeError> {
    let began = Instant::now();
    let mut timings = Timings::default();
    SandboxId::parse(o.id).map_err(|e| RuntimeError::Invalid(e.to_string().replace("sandbox ID", "container ID")))?;
    if o.preserve_fds > 0 {
        return Err(RuntimeError::Unsupported("--preserve-fds: passing descriptors into a VM is not supported".into()));
    }
    let bundle_dir = std::path::absolute(o.bundle).map_err(|e| RuntimeError::Invalid(format!("bundle {}: {e}", o.bundle.display())))?;
    let b = bundle::load(&bundle_dir).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    let console_socket = super::console::console_socket(b.terminal, o.console_socket)?;
    let config: Value = serde_json::from_str(&b.config).unwrap_or_default();
    let annotations: std::collections::BTreeMap<String, String> = serde_json::from_value(config["annotations"].clone()).unwrap_or_default();
    let cgroups_path = config.pointer("/linux/cgroupsPath").and_then(Value::as_str);
    // The VM of a pod goes under the pod's cgroup (on the host, next to its sandbox
    // container's), so that the pod's cgroup counts the VM and holds it to the pod's limits.
    let mut vm_cgroup_parent = None;
    let host_cgroup = match Hierarchy::detect() {
        Some(h) => {
            let relative = host_cgroup::relative_path(cgroups_path, o.id, o.systemd_cgroup, &host_cgroup::own_cgroup(h))
                .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
            if pod::is_sandbox(&annotations) {
                vm_cgroup_parent = pod::vm_cgroup_parent(&relative);
            }
            Some(HostCgroup::new(h, &relative))
        }
        None => {
            tracing::warn!("no memory cgroup on this host: OOM kills in container {} reach callers only through events", o.id);
            None
        }
    };
    let hooks = Hooks::from_config(&config).map_err(RuntimeError::Invalid)?;
    // A container of a pod joins its sandbox's VM.
    let pod_vm = match pod::placement(&annotations)? {
        Placement::Own => None,
        Placement::Join { sandbox } => Some((pod::sandbox_vm(o.root, &sandbox)?, sandbox)),
    };
    let key = own_sandbox_id(o.id);
    let pod_dir = format!("pods/{key}");
    let mut plan = SharePlan::default();
    // The root is shared writable even when `root.readonly` is set, as runc's root directory
    // is writable to runc: mount points the spec names but the image lacks (CRI's pause
    // container gets /sys, /dev/shm, /etc/resolv.conf in a read-only root) are made in it
    // first, and the guest then makes the container's root read-only (docs/security.md).
    plan.add(&b.rootfs, share::ROOT_PATH.into(), false).map_err(|e| RuntimeError::Invalid(format!("root.path: {e}")))?;
    let options = GuestSpecOptions {
        systemd: o.systemd_cgroup,
        share_dir: if pod_vm.is_some() { &pod_dir } else { "" },
        join_pid: pod_vm.as_ref().map(|(vm, _)| vm.init_pid),
    };
    let spec_json = guest_spec(&b.config, &mut plan, &bundle_dir, &options)?;
    // A network namespace the caller prepared: its interfaces are carried into the VM.
    let network = match (&pod_vm, host_network_namespace(&config)) {
        (None, Some(netns)) => Some(super::network::read(&netns)?),
        _ => None,
    };

    let exe = std::env::current_exe().map_err(|e| RuntimeError::Other(format!("finding palisade itself: {e}")))?;
    // A VM of its own (not a pod's): its parts are checked before anything is made.
    let own_vm = match pod_vm {
        None => Some(SandboxSpec { cgroup_parent: vm_cgroup_parent, ..own_vm_spec(&exe, &b, &plan, network.as_ref(), &annotations)? }),
        Some(_) => None,
    };

    let locked = ContainerDir::create(o.root, o.id)?;
    let sandbox_id = pod_vm.as_ref().map(|(vm, _)| vm.sandbox.clone()).unwrap_or_else(|| key.clone());
    let mut record = ContainerRecord {
        id: o.id.into(),
        bundle: bundle_dir.clone(),
        rootfs: b.rootfs.clone(),
        annotations,
        created_unix_ns: super::time::now_unix_ns(),
        recorded: Recorded::Creating,
        monitor: None,
        guest_pid: None,
        sandbox: sandbox_id.as_str().into(),
        owns_sandbox: pod_vm.is_none(),
        host_cgroup: None,
        pod: None,
        network: None,
        hooks,
    };
    locked.write_record(&record)?;
    let sroot = sandbox_root(o.root);
    let result = (|| -> Result<ProcessRef, RuntimeError> {
        let rootfs_id = match &pod_vm {
            Some((vm, sandbox)) => {
                let rootfs_id = format!("pod-{key}");
                let member = pod::join(vm, sandbox, &pod_dir, &plan, pod::member_rootfs(&rootfs_id, &pod_dir, true))?;
                record.pod = Some(member);
                locked.write_record(&record)?;
                rootfs_id
            }
            None => {
                let Some(spec) = &own_vm else {
                    return Err(RuntimeError::Other("internal error: a container with neither a pod nor a VM".into()));
                };
                timings.checked = began.elapsed();
                if let Some(parent) = &spec.cgroup_parent {
                    make_cgroup_parent(parent)?;
                }
                control::start(&sroot, &sandbox_id, spec, &exe, Attachment::Detached, SUPERVISOR_START_TIMEOUT)?;
                timings.vm_started = began.elapsed();
                if let Some(network) = &network {
                    // Recorded first: whatever happens next, delete takes the redirections away.
                    record.network = Some(network.clone());
                    locked.write_record(&record)?;
                }
                let boot_secs = std::env::var("PALISADE_BOOT_TIMEOUT_SECS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(crate::vmrun::run::DEFAULT_BOOT_TIMEOUT_SECS);
                let rootfs = RootfsSpec {
                    id: "root".into(),
                    source: RootfsSource::Share { tag: share::TAG.into(), path: share::ROOT_PATH.into() },
                    writable: true,
                    process_mounts: false,
                };
                let setup = control::GuestSetup {
                    network: network.as_ref().map(|n| &n.guest).filter(|g| !g.interfaces.is_empty()),
                    share: Some(share::TAG),
                    rootfs: Some(&rootfs),
                };
                control::boot(&sroot, &sandbox_id, Duration::from_secs(boot_secs), setup, signals)?;
                if let Some(network) = &network {
                    // The VM's jail made the taps before the guest ran: the caller's interfaces
                    // now lead to them, before the container's process starts.
                    network.connect()?;
                }
                timings.booted = began.elapsed();
                "root".to_string()
            }
        };
        // The monitor's cgroup on the host, where callers watch for OOM kills.
        record.host_cgroup = host_cgroup.clone().and_then(|mut cg| match cg.create() {
            Ok(()) => Some(cg),
            Err(e) => {
                tracing::warn!("container {}: {e}; OOM kills reach callers only through events", o.id);
                None
            }
        });
        locked.write_record(&record)?;
        let request = MonitorRequest {
            host_cgroup: record.host_cgroup.clone(),
            socket: SandboxDir::new(&sroot, &sandbox_id).vsock_socket(),
            launch: Launch::Container(ContainerSpec { id: o.id.into(), spec_json, rootfs: rootfs_id, stdin: true, tty_size: None }),
            console_socket: console_socket.clone(),
        };
        write_json_atomic(&locked.monitor_request(), &request)
            .map_err(|e| RuntimeError::Other(format!("{}: {e}", locked.monitor_request().display())))?;
        let (monitor, report) = monitor::spawn(&exe, o.root, &locked, None, console_socket.is_some())?;
        timings.created = began.elapsed();
        match report {
            MonitorReport::Ready { pid, warnings } => {
                for w in warnings {
                    tracing::warn!("container {}: {w}", o.id);
                }
                record.guest_pid = Some(pid);
                Ok(monitor)
            }
            MonitorReport::Failed { message } => Err(explain_vm_end(&sroot, &sandbox_id, RuntimeError::Guest(message))),
        }
    })();
    match result {
        Ok(monitor) => {
            timings.log(o.id);
            record.monitor = Some(monitor);
            record.recorded = Recorded::Created;
            locked.write_record(&record)?;
            let points = [Point::Prestart, Point::CreateRuntime, Point::CreateContainer];
            if let Err(e) = record.hooks.run(&points, &hook_state(&record, Status::Creating)) {
                // The container is removed, as delete does it (its poststop hooks included).
                drop(locked);
                if let Err(d) = super::lifecycle::delete(o.root, o.id, true) {
                    tracing::warn!("container {}: removing it after its hook failed: {d}", o.id);
                }
                return Err(RuntimeError::Other(e));
            }
            if let Some(pid_file) = o.pid_file {
                write_atomic(pid_file, monitor.pid.to_string().as_bytes())
                    .map_err(|e| RuntimeError::Other(format!("--pid-file {}: {e}", pid_file.display())))?;
            }
            Ok(())
        }
        Err(e) => {
            // Nothing of a container that was not created stays behind.
            if let (Some((vm, _)), Some(member)) = (&pod_vm, &record.pod) {
                pod::delete_and_leave(vm, o.id, member);
            } else if record.owns_sandbox && SandboxDir::new(&sroot, &sandbox_id).path().exists() {
                if let Err(d) = control::delete(&sroot, &sandbox_id, true, Duration::from_secs(30)) {
                    tracing::warn!("removing the sandbox of container {}: {d}", o.id);
                }
            }
            if let Some(network) = &record.network {
                network.disconnect();
            }
            let _ = std::fs::remove_dir(&sroot);
            if let Some(cg) = &record.host_cgroup {
                if let Err(e) = cg.remove() {
                    tracing::warn!("container {}: {e}", o.id);
                }
            }
            let _ = locked.remove();
            Err(e)
        }
    }
}

/// Annotation: the VM's memory in MiB (a pod's sandbox container carries its pod's
/// annotations: containerd's `pod_annotations`, CRI-O's `allowed_annotations`).
pub const VM_MEMORY_ANNOTATION: &str = "palisade.dev/vm-memory-mib";
/// Annotation: the VM's vCPUs.
pub const VM_VCPUS_ANNOTATION: &str = "palisade.dev/vm-vcpus";

/// The VM's vCPUs and memory (MiB): the annotations when given, else one vCPU and the
/// memory the container's limit needs (the default size without one).
fn vm_size(annotations: &std::collections::BTreeMap<String, String>, limit_mib: Option<u32>) -> Result<(u8, u32), RuntimeError> {
    let number = |key: &str, range: std::ops::RangeInclusive<u32>| -> Result<Option<u32>, RuntimeError> {
        let Some(text) = annotations.get(key) else { return Ok(None) };
        match text.trim().parse::<u32>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(RuntimeError::Invalid(format!(
                "config.json: annotation {key}={text:?}: a whole number from {} to {}",
                range.start(),
                range.end()
            ))),
        }
    };
    let max_vcpus = palisade_vmm::arch::x86_64::mptable::MAX_VCPUS;
    let vcpus = number(VM_VCPUS_ANNOTATION, 1..=u32::from(max_vcpus))?.map_or(1, |n| n as u8);
    let memory = number(VM_MEMORY_ANNOTATION, 64..=1 << 20)?;
    let memory_mib = vm_memory_mib(memory, limit_mib)
        .map_err(|e| RuntimeError::Invalid(format!("config.json: annotation {VM_MEMORY_ANNOTATION}: {e}")))?;
    Ok((vcpus, memory_mib))
}

/// Makes the cgroup `parent` (a pod's) in every hierarchy the VM's jail uses, with its
/// missing ancestors, as runc makes a container's cgroup path; kubelet has made it already.
fn make_cgroup_parent(parent: &Path) -> Result<(), RuntimeError> {
    for h in palisade_vmm::jail::cgroup::detect() {
        let dir = h.mount.join(parent.strip_prefix("/").unwrap_or(parent));
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::Other(format!("the pod's cgroup {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The VM of a container that is not a pod's: the kernel, initramfs, VMM and virtiofsd
/// found (a clear error naming what is missing), its size from its annotations or the
/// container's limit.
fn own_vm_spec(
    exe: &Path,
    b: &bundle::Bundle,
    plan: &SharePlan,
    network: Option<&PodNetwork>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<SandboxSpec, RuntimeError> {
    let assets_dir = assets::assets_dir(env_path("PALISADE_ASSETS_DIR"), exe);
    let kernel = env_path("PALISADE_KERNEL").unwrap_or_else(|| assets_dir.join("vmlinux"));
    if crate::vmrun::run::check_kvm().map_err(|e| RuntimeError::Other(e.to_string()))? == palisade_vmm::host::KvmHostKind::Pvm
        && std::env::var_os("PALISADE_KERNEL").is_none()
    {
        return Err(RuntimeError::Other(palisade_vmm::host::PVM_EXPLANATION.to_string()));
    }
    let asset = |e: AssetError| RuntimeError::Other(e.to_string());
    assets::check_kernel(&kernel).map_err(asset)?;
    let initrd = assets_dir.join("initramfs.cpio");
    assets::require_file("initramfs", &initrd).map_err(asset)?;
    let vmm_binary = assets::vmm_binary(env_path("PALISADE_VMM"), exe);
    if !vmm_binary.is_file() {
        return Err(asset(AssetError::NoVmm(vmm_binary)));
    }
    let virtiofsd_binary = assets::virtiofsd_binary(env_path("PALISADE_VIRTIOFSD"), &assets_dir);
    if !virtiofsd_binary.is_file() {
        return Err(asset(AssetError::NoVirtiofsd(virtiofsd_binary)));
    }
    let limit_mib = b.memory_limit.map(|bytes| bytes.div_ceil(1 << 20).min(u32::MAX as u64) as u32);
    let (vcpus, memory_mib) = vm_size(annotations, limit_mib)?;
    let tuning = ShareTuningArgs::default().tuning(true).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
    let vm = palisade_vmm::VmConfig {
        initrd: Some(initrd),
        cmdline: kernel_cmdline(std::env::var("PALISADE_AGENT_LOG").ok().as_deref()),
        vcpus,
        memory_mib,
        rng: true,
        net: network.map(PodNetwork::devices).unwrap_or_default(),
        ..palisade_vmm::VmConfig::new(&kernel)
    };
    Ok(SandboxSpec {
        vmm_binary,
        virtiofsd_binary: Some(virtiofsd_binary),
        vm,
        shared: plan.entries.iter().map(|e| SharedPath { host: e.host.clone(), path: e.path.clone(), read_only: e.read_only }).collect(),
        virtiofsd: tuning,
        ephemeral: false,
        remove_empty_root: false,
        console: false,
        cgroup_parent: None,
    })
}

/// A failure to reach the guest while the container was being created: when the VM has
/// ended meanwhile (its guest died: a triple fault, a panic), that is what failed, and the
/// error says so with the VM's end. Refusals by the agent (a bad spec, a missing program)
/// are passed on as they are.
fn explain_vm_end(root: &Path, id: &SandboxId, e: RuntimeError) -> RuntimeError {
    let lost_contact = matches!(&e, RuntimeError::Guest(m) if m.contains("agent protocol:"));
    if !lost_contact {
        return e;
    }
    match super::lifecycle::vm_end(root, id) {
        Some(reason) => RuntimeError::Other(format!("sandbox {id}: the VM ended before the container was created: {reason} ({e})")),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_size_the_vm() {
        let at = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(vm_size(&at(&[]), None).unwrap(), (1, 128));
        assert_eq!(vm_size(&at(&[]), Some(512)).unwrap(), (1, 576));
        let sized = at(&[(VM_MEMORY_ANNOTATION, "1024"), (VM_VCPUS_ANNOTATION, "2")]);
        assert_eq!(vm_size(&sized, Some(512)).unwrap(), (2, 1024));
        // Smaller than the container's limit, not a number, out of range: refused, named.
        let small = vm_size(&at(&[(VM_MEMORY_ANNOTATION, "256")]), Some(512)).unwrap_err().to_string();
        assert!(small.contains(VM_MEMORY_ANNOTATION), "{small}");
        for bad in [(VM_MEMORY_ANNOTATION, "lots"), (VM_MEMORY_ANNOTATION, "16"), (VM_VCPUS_ANNOTATION, "0"), (VM_VCPUS_ANNOTATION, "9999")]
        {
            let e = vm_size(&at(&[bad]), None).unwrap_err().to_string();
            assert!(e.contains(bad.0) && e.contains(bad.1), "{e}");
        }
    }

    #[test]
    fn binds_become_share_paths_and_a_host_network_namespace_the_guests_own() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let config = serde_json::json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "data", "options": ["bind"]},
            ],
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/x"}, {"type": "pid"}]}
        });
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut plan = SharePlan::default();
        let out: Value =
            serde_json::from_str(&guest_spec(&config.to_string(), &mut plan, dir.path(), &GuestSpecOptions::default()).unwrap()).unwrap();
        assert_eq!(out["mounts"][0]["source"], "proc");
        assert_eq!(out["mounts"][1]["source"], "/run/palisade/shares/palisade/volumes/0");
        assert_eq!(out["mounts"][2]["source"], "/run/palisade/shares/palisade/volumes/1");
        assert_eq!(plan.entries.len(), 2);
        assert!(plan.entries[0].read_only && !plan.entries[1].read_only);
        assert_eq!(plan.entries[1].host, dir.path().join("data"));
        // The caller's network namespace is the guest's own: the container joins no other.
        assert_eq!(out["linux"]["namespaces"], serde_json::json!([{"type": "pid"}]));
        assert_eq!(host_network_namespace(&config), Some(PathBuf::from("/var/run/netns/x")));
        assert_eq!(host_network_namespace(&serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}})), None);

        let ipc = serde_json::json!({"linux": {"namespaces": [{"type": "ipc", "path": "/proc/1/ns/ipc"}]}});
        let e = guest_spec(&ipc.to_string(), &mut SharePlan::default(), dir.path(), &GuestSpecOptions::default()).unwrap_err().to_string();
        assert!(e.contains("ipc namespace"), "{e}");
        let hooks = serde_json::json!({"hooks": {"prestart": [{"path": "/bin/true"}]}});
        let out: Value = serde_json::from_str(
            &guest_spec(&hooks.to_string(), &mut SharePlan::default(), dir.path(), &GuestSpecOptions::default()).unwrap(),
        )
        .unwrap();
        assert!(out.get("hooks").is_none(), "the guest got the hooks: {out}");
        let systemd = serde_json::json!({"linux": {"cgroupsPath": "machine.slice:libpod:abc"}});
        let out: Value = serde_json::from_str(
            &guest_spec(
                &systemd.to_string(),
                &mut SharePlan::default(),
                dir.path(),
                &GuestSpecOptions { systemd: true, ..Default::default() },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["linux"]["cgroupsPath"], "/machine.slice/libpod-abc.scope");
    }

    #[test]
    fn sandbox_names_are_short() {
        let id = own_sandbox_id(&"x".repeat(1024));
        assert_eq!(id.as_str().len(), 16);
        assert_ne!(own_sandbox_id("a"), own_sandbox_id("b"));
    }
}
