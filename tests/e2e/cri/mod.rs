//! The Kubernetes node path: containerd's CRI plugin drives palisade as the RuntimeClass
//! handler `palisade`, and this test calls CRI exactly as kubelet does (there is no kubelet
//! package here; every other piece is the real one): a pod sandbox with a CNI network, its
//! containers with kubelet's volumes and resources, exec (synchronous and streamed), stats,
//! logs, the failure reasons kubelet reports, and nothing left after the pod is removed.

mod exec_stream;
mod node;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse, LinuxContainerConfig, LinuxContainerResources,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, Mount, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use libtest_mimic::{Failed, Trial};
use palisade_e2e::{inside_testhost, leftovers_snapshot, lost_boot_fault, vm_timeout, MAX_BOOTS};

use self::node::{image, Node, BUSYBOX};
use crate::containerd::processes_naming;
use crate::oci_runtime::mounts_naming;
use crate::podman::cgroups_named;
use crate::vmrun::shared;
use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cri::a_pod_of_two_containers_runs_in_one_vm_with_cni_volumes_exec_stats_and_logs", pod_of_two_containers),
        trial("cri::a_missing_command_an_oom_kill_and_removing_a_running_pod_are_reported_as_kubelet_expects", failures),
        trial("cri::ten_pods_created_and_removed_two_at_a_time_leave_nothing", ten_pods),
    ]
}

/// Where kubelet's pods live in these tests, under the node's directory.
const CGROUP_PARENT: &str = "palisade-e2e-kubepods";

/// A pod sandbox run through CRI with runtime handler `palisade`, and its kubelet directory.
struct Pod<'a> {
    node: &'a Node,
    id: String,
    config: PodSandboxConfig,
    /// kubelet's directory of the pod: logs, volumes, files it bind-mounts.
    dir: PathBuf,
    /// The pod's cgroup (`linux.cgroup_parent`), relative to the cgroup root.
    cgroup: String,
    /// The VMs palisade made for it (names under palisade's `@vm`), for the leak check.
    vms: Vec<String>,
    /// Its sandbox's and containers' IDs, for the leak check.
    containers: RefCell<Vec<String>>,
    /// Its network namespace (CNI's), for the leak check.
    netns: String,
    /// What its VMs' directories last held, for [`Pod::diagnose`].
    seen: VmFilesSeen,
}

/// The files of a VM's directory that explain a failure.
const VM_FILES: [&str; 6] = ["state.json", "exit.json", "vmm.stderr", "supervisor.log", "virtiofsd.log", "serial.log"];

/// The last contents seen of [`VM_FILES`] in some VMs' directories, read every 0.2 s while it
/// lives: when a pod's VM ends under a test, containerd deletes the pod's sandbox, and with
/// it the VM's directory, on its own, at times before the failing test gets to read them.
struct VmFilesSeen {
    seen: Arc<Mutex<BTreeMap<PathBuf, String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VmFilesSeen {
    fn watch(dirs: Vec<PathBuf>) -> VmFilesSeen {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for path in dirs.iter().flat_map(|dir| VM_FILES.iter().map(move |file| dir.join(file))) {
                        if let Ok(text) = std::fs::read_to_string(&path) {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).insert(path, text);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        VmFilesSeen { seen, stop, thread: Some(thread) }
    }

    /// `path` as it is now, or as last seen when it is gone.
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok().or_else(|| self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(path).cloned())
    }
}

impl Drop for VmFilesSeen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<'a> Pod<'a> {
    /// `RunPodSandbox` as kubelet makes it: its own network (CNI), IPC and UTS namespaces, a
    /// pid namespace per container, a log directory, a cgroup parent. A VM the emulator lost
    /// while booting is booted once more (inside the test host only, as everywhere in the suite).
    fn run(node: &'a Node, name: &str) -> Result<Pod<'a>, String> {
        Pod::run_annotated(node, name, &[])
    }

    /// [`Pod::run`] with the pod's annotations (containerd passes them to the sandbox).
    fn run_annotated(node: &'a Node, name: &str, annotations: &[(&str, &str)]) -> Result<Pod<'a>, String> {
        let dir = node.dir().join("pods").join(name);
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let cgroup = format!("/{CGROUP_PARENT}-{}/pod-{name}", node.subnet.replace('.', "-"));
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata { name: name.into(), uid: format!("{name}-uid"), namespace: "e2e".into(), attempt: 0 }),
            hostname: name.into(),
            log_directory: dir.join("logs").display().to_string(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut boots = 1;
        loop {
            let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "palisade".into() };
            match node.call("RunPodSandbox", node.runtime().run_pod_sandbox(request)) {
                Ok(response) => {
                    // The VM palisade made for the pod: its sandbox container's record names it.
                    let record = node.palisade_root().join(&response.pod_sandbox_id).join("container.json");
                    let record: serde_json::Value = std::fs::read(&record)
                        .map_err(|e| e.to_string())
                        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                        .map_err(|e| format!("palisade's record of the pod's sandbox {}: {e}", record.display()))?;
                    let vm = record["sandbox"].as_str().ok_or("palisade's record of the pod's sandbox names no VM")?.to_string();
                    let id = response.pod_sandbox_id;
                    let seen = VmFilesSeen::watch(vec![node.palisade_root().join("@vm").join(&vm)]);
                    let mut pod = Pod {
                        node,
                        containers: RefCell::new(vec![id.clone()]),
                        id,
                        config,
                        dir,
                        cgroup,
                        vms: vec![vm],
                        netns: String::new(),
                        seen,
                    };
                    pod.netns = pod.netns()?;
                    return Ok(pod);
                }
                Err(e) => match lost_boot_fault(inside_testhost(), boots, 125, &e) {
                    Some(fault) if boots < MAX_BOOTS => {
                        eprintln!("[e2e] RunPodSandbox {name}: the VM was lost under emulation ({fault}); running the pod once more");
                        boots += 1;
                    }
                    _ => return Err(format!("{e}\ncontainerd's log:\n{}", node.log())),
                },
            }
        }
    }

    /// `CreateContainer` of `name` running `command` in [`BUSYBOX`], logging to `name.log`.
    fn create(
        &self,
        name: &str,
        command: &[&str],
        mounts: Vec<Mount>,
        resources: Option<LinuxContainerResources>,
    ) -> Result<String, String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: image(BUSYBOX),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            mounts,
            linux: Some(LinuxContainerConfig { resources, security_context: None }),
            ..Default::default()
        };
        let request =
            CreateContainerRequest { pod_sandbox_id: self.id.clone(), config: Some(config), sandbox_config: Some(self.config.clone()) };
        let id = self.node.call(&format!("CreateContainer {name}"), self.node.runtime().create_container(request))?.container_id;
        self.containers.borrow_mut().push(id.clone());
        Ok(id)
    }

    fn start(&self, id: &str) -> Result<(), String> {
        self.node.call("StartContainer", self.node.runtime().start_container(StartContainerRequest { container_id: id.into() })).map(|_| ())
    }

    /// Creates and starts a container.
    fn container(
        &self,
        name: &str,
        command: &[&str],
        mounts: Vec<Mount>,
        resources: Option<LinuxContainerResources>,
    ) -> Result<String, String> {
        let id = self.create(name, command, mounts, resources)?;
        self.start(&id).map_err(|e| format!("{e}\ncontainerd's log:\n{}", self.node.log()))?;
        Ok(id)
    }

    fn exec_sync(&self, id: &str, cmd: &str) -> Result<ExecSyncResponse, String> {
        let request = ExecSyncRequest { container_id: id.into(), cmd: vec!["sh".into(), "-c".into(), cmd.into()], timeout: 60 };
        self.node.call(&format!("ExecSync {cmd:?}"), self.node.runtime().exec_sync(request))
    }

    /// ExecSync that must succeed: its stdout.
    fn output(&self, id: &str, cmd: &str) -> Result<String, String> {
        let out = self.exec_sync(id, cmd)?;
        if out.exit_code != 0 {
            return Err(format!("ExecSync {cmd:?}: exit code {}, stderr {:?}", out.exit_code, String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self, id: &str) -> Result<ContainerStatus, String> {
        let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
        let response = self.node.call("ContainerStatus", self.node.runtime().container_status(request))?;
        response.status.ok_or_else(|| format!("ContainerStatus {id}: no status"))
    }

    /// The container's status once it has exited (within `timeout`).
    fn exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id)?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("container {id} has not exited within {timeout:?}: {status:?}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The path of the pod's network namespace, from the sandbox's runtime spec (CRI's
    /// verbose status).
    fn netns(&self) -> Result<String, String> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: self.id.clone(), verbose: true };
        let response = self.node.call("PodSandboxStatus", self.node.runtime().pod_sandbox_status(request))?;
        let info: serde_json::Value = serde_json::from_str(response.info.get("info").map_or("", String::as_str))
            .map_err(|e| format!("PodSandboxStatus's verbose info: {e}"))?;
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .map(String::from)
            .ok_or_else(|| "the sandbox's runtime spec names no network namespace".to_string())
    }

    /// `StopPodSandbox` (unless `stop_first` is false: `RemovePodSandbox` then stops it
    /// itself) and `RemovePodSandbox`; then what is left of the pod ([`Pod::leftovers`]), and
    /// its cgroups removed as kubelet removes them.
    fn remove(&self, stop_first: bool) -> Result<Vec<String>, String> {
        if stop_first {
            self.node
                .call("StopPodSandbox", self.node.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: self.id.clone() }))?;
        }
        self.node.call(
            "RemovePodSandbox",
            self.node.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: self.id.clone() }),
        )?;
        let left = self.leftovers();
        self.remove_cgroup();
        Ok(left)
    }

    /// What is left of the pod on the host after its removal: processes, mounts, palisade's
    /// state, its VMs' jails and run directories, its network namespace, its cgroups, its
    /// CNI address lease.
    fn leftovers(&self) -> Vec<String> {
        let netns = self.netns.as_str();
        let mut left = Vec::new();
        let containers = self.containers.borrow();
        for needle in containers.iter().chain(&self.vms) {
            left.extend(processes_naming(needle));
            left.extend(mounts_naming(needle));
            left.extend(leftovers_snapshot().into_iter().filter(|l| l.contains(needle.as_str())));
            let state = self.node.palisade_root().join(needle);
            if state.exists() {
                left.push(state.display().to_string());
            }
        }
        for vm in &self.vms {
            let dir = self.node.palisade_root().join("@vm").join(vm);
            if dir.exists() {
                left.push(dir.display().to_string());
            }
        }
        if Path::new(netns).exists() {
            left.push(format!("network namespace {netns}"));
        }
        let pod_cgroup = Path::new("/sys/fs/cgroup").join(self.cgroup.trim_start_matches('/'));
        left.extend(cgroups_named(&pod_cgroup, "", 3).into_iter().map(|c| format!("cgroup {}", c.display())));
        if let Some(ip) = self.ip_seen() {
            for lease in std::fs::read_dir(self.node.dir().join("ipam")).into_iter().flatten().flatten() {
                if lease.path().join(&ip).exists() {
                    left.push(format!("CNI lease of {ip}"));
                }
            }
        }
        left
    }

    /// What the pod's VMs left to explain a failure: each VM's exit record, the last lines
    /// of its VMM's stderr, its supervisor's, virtiofsd's and its console's logs, and its
    /// cgroup's memory and pids events while it still has one.
    fn diagnose(&self) -> String {
        let mut out = String::new();
        for vm in &self.vms {
            let dir = self.node.palisade_root().join("@vm").join(vm);
            for file in VM_FILES {
                let Some(text) = self.seen.read(&dir.join(file)) else { continue };
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out.push_str(&format!("--- VM {vm}: {file}, last lines:\n{tail}\n"));
            }
        }
        let pod_cgroup = Path::new("/sys/fs/cgroup").join(self.cgroup.trim_start_matches('/'));
        for cgroup in cgroups_named(&pod_cgroup.join("palisade"), "", 1) {
            for file in ["memory.events", "memory.peak", "memory.current", "pids.events", "pids.peak"] {
                if let Ok(text) = std::fs::read_to_string(cgroup.join(file)) {
                    out.push_str(&format!("--- {}: {}\n", cgroup.join(file).display(), text.trim().replace('\n', ", ")));
                }
            }
        }
        out
    }

    /// How the emulator lost one of the pod's VMs under the test, inside the test host only
    /// (on hardware, a VM that dies is a failure to see): its exit record says triple fault,
    /// or that KVM could not emulate an instruction, the ways QEMU's TCG emulation of nested
    /// AMD-V loses a running guest (`docs/testing.md`).
    fn lost_under_emulation(&self) -> Option<String> {
        if !inside_testhost() {
            return None;
        }
        self.vms.iter().find_map(|vm| {
            let text = self.seen.read(&self.node.palisade_root().join("@vm").join(vm).join("exit.json"))?;
            let record: serde_json::Value = serde_json::from_str(&text).ok()?;
            let message = record["message"].as_str().unwrap_or_default();
            match record["ending"].as_str()? {
                "triple-fault" => Some(message.to_string()),
                "kvm-internal-error" if message.contains("emulation failure") => Some(message.to_string()),
                _ => None,
            }
        })
    }

    fn ip_seen(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("ip")).ok()
    }

    /// The pod's IP (`PodSandboxStatus`), remembered for the leak check.
    fn ip(&self) -> Result<String, String> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: self.id.clone(), verbose: false };
        let status = self.node.call("PodSandboxStatus", self.node.runtime().pod_sandbox_status(request))?.status.ok_or("no status")?;
        if status.state != PodSandboxState::SandboxReady as i32 {
            return Err(format!("the pod is not ready: {status:?}"));
        }
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        std::fs::write(self.dir.join("ip"), &ip).map_err(|e| e.to_string())?;
        Ok(ip)
    }

    /// Removes the pod's cgroups kubelet would remove (the pod's and its QoS parent).
    fn remove_cgroup(&self) {
        let pod_cgroup = Path::new("/sys/fs/cgroup").join(self.cgroup.trim_start_matches('/'));
        let _ = std::fs::remove_dir(&pod_cgroup);
        if let Some(parent) = pod_cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn mount(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount { container_path: container.into(), host_path: host.display().to_string(), readonly, ..Default::default() }
}

/// A volume directory as kubelet's atomic writer makes configMap, secret and projected
/// volumes: the files in a timestamped directory, `..data` a symlink to it, and each name a
/// symlink through `..data`.
fn atomic_volume(dir: &Path, files: &[(&str, &str)]) -> Result<(), String> {
    let data = dir.join("..2026_12_06_18_00_00.000000001");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    for (name, content) in files {
        std::fs::write(data.join(name), content).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::symlink(data.file_name().expect("a name"), dir.join("..data")).map_err(|e| e.to_string())
}

/// The pod's log lines of a container as kubelet reads them (CRI's log format:
/// `TIMESTAMP STREAM P|F TEXT`): the texts of full lines.
fn log_lines(pod: &Pod, name: &str) -> Vec<String> {
    std::fs::read_to_string(pod.dir.join("logs").join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_time, stream, tag, text) = (parts.next()?, parts.next()?, parts.next()?, parts.next().unwrap_or(""));
            (matches!(stream, "stdout" | "stderr") && tag == "F").then(|| text.to_string())
        })
        .collect()
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe()? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `wget -q -O - URL` on the host, tried until it answers or `timeout` has passed.
fn fetch(url: &str, timeout: Duration) -> Result<String, String> {
    wait_for(&format!("wget {url}"), timeout, || {
        let out = std::process::Command::new("wget").args(["-q", "-T", "10", "-O", "-", url]).output().map_err(|e| format!("wget: {e}"))?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })
}

const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

/// A pod as kubelet runs one: an HTTP server and a client in one VM, with an emptyDir both
/// mount, a configMap, a projected service-account token, kubelet's /etc/hosts and
/// termination-log files, and the server's CPU and memory limits.
fn pod_of_two_containers() -> TestResult {
    let _g = shared();
    let mut runs = 1;
    loop {
        let mut lost = None;
        match (pod_of_two_containers_once(&mut lost), lost) {
            (Err(e), Some(fault)) if runs < MAX_BOOTS => {
                let first = e.message().unwrap_or("failed").lines().next().unwrap_or_default().to_string();
                eprintln!(
                    "[e2e] cri pod: the pod's VM was lost under emulation ({fault}) and the test failed ({first}); running it once more"
                );
                runs += 1;
            }
            (result, _) => return result,
        }
    }
}

/// One run of [`pod_of_two_containers`]; when it fails because the emulator lost the pod's
/// VM, `lost` says how, and the pod is removed.
fn pod_of_two_containers_once(lost: &mut Option<String>) -> TestResult {
    let node = Node::start()?;
    // The pod asks for a VM of 2 vCPUs and 256 MiB (palisade's annotations, passed through).
    let pod = Pod::run_annotated(&node, "web", &[("palisade.dev/vm-memory-mib", "256"), ("palisade.dev/vm-vcpus", "2")])?;
    // A failure says what the VM left: it may have ended under the test.
    let checks = || -> TestResult {
        let ip = pod.ip()?;
        ensure!(ip.starts_with(&format!("{}.", node.subnet)), "the pod's IP {ip:?} is not from the CNI network's {}.0/24", node.subnet);
        // The pod's VM counts in the pod's cgroup, as kubelet's overhead.podFixed assumes: its
        // jail's cgroup is under it, with the VM's processes and its memory limit.
        let pod_cgroup = Path::new("/sys/fs/cgroup").join(pod.cgroup.trim_start_matches('/'));
        let vm_cgroups = cgroups_named(&pod_cgroup.join("palisade"), "", 1);
        let [vm_cgroup] = &vm_cgroups[..] else {
            return Err(format!("not one VM cgroup under the pod's cgroup {}/palisade: {vm_cgroups:?}", pod_cgroup.display()).into());
        };
        let read = |file: &str| std::fs::read_to_string(vm_cgroup.join(file)).map_err(|e| format!("{}/{file}: {e}", vm_cgroup.display()));
        let comms: Vec<String> = read("cgroup.procs")?
            .lines()
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string())
            .collect();
        ensure!(
            // The VMM and the VM's virtiofsd (its sandbox's parent and child); KVM puts the VM's
            // own kernel worker, kvm-nx-lpage-recovery, in its VMM's cgroup.
            ["palisade-vmm", "virtiofsd"].iter().all(|want| comms.iter().any(|c| c == want))
                && comms.iter().all(|c| c == "palisade-vmm" || c == "virtiofsd" || c.starts_with("kvm-")),
            "the VM's cgroup {} holds {comms:?}, not its VMM and its virtiofsd",
            vm_cgroup.display()
        );
        let max = read("memory.max")?;
        ensure!(max.trim() == ((256u64 + 128) << 20).to_string(), "the VM's memory.max {max:?}: not its 256 MiB + 128 MiB of overhead");

        // Volumes and files, made as kubelet makes them under the pod's directory.
        let volumes = pod.dir.join("volumes");
        let cache = volumes.join("kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
        let settings = volumes.join("kubernetes.io~configmap/settings");
        atomic_volume(&settings, &[("greeting", "hello from a configMap\n")])?;
        let token = volumes.join("kubernetes.io~projected/kube-api-access-e2e");
        atomic_volume(
            &token,
            &[("token", "eyJhbGciOiJSUzI1NiJ9.e2e.token"), ("namespace", "e2e"), ("ca.crt", "-----BEGIN CERTIFICATE-----\n")],
        )?;
        let hosts = pod.dir.join("etc-hosts");
        std::fs::write(&hosts, format!("127.0.0.1\tlocalhost\n{ip}\tweb\n")).map_err(|e| e.to_string())?;
        let termination_log = pod.dir.join("containers/server/termination-log");
        std::fs::create_dir_all(termination_log.parent().expect("a parent")).map_err(|e| e.to_string())?;
        std::fs::write(&termination_log, "").map_err(|e| e.to_string())?;
        let server_mounts = vec![
            mount(&cache, "/cache", false),
            mount(&settings, "/etc/config", true),
            mount(&token, "/var/run/secrets/kubernetes.io/serviceaccount", true),
            mount(&hosts, "/etc/hosts", false),
            mount(&termination_log, "/dev/termination-log", false),
        ];
        let limits = LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 900,
            ..Default::default()
        };
        let serve = "mkdir -p /www && echo served-by-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www";
        let server = pod.container("server", &["sh", "-c", serve], server_mounts, Some(limits))?;
        let client_script = "until wget -q -O /tmp/page http://127.0.0.1:8080/; do sleep 0.2; done; echo \"fetched: $(cat /tmp/page)\"; \
                             trap 'exit 0' TERM; while :; do sleep 1; done";
        let client = pod.container("client", &["sh", "-c", client_script], vec![mount(&cache, "/cache", false)], None)?;

        // Status, listing, the pod's IP.
        for (name, id) in [("server", &server), ("client", &client)] {
            let status = pod.status(id)?;
            ensure!(status.state == ContainerState::ContainerRunning as i32, "ContainerStatus of the {name}: {status:?}");
        }
        let filter = ContainerFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() };
        let listed = node.call("ListContainers", node.runtime().list_containers(ListContainersRequest { filter: Some(filter) }))?;
        let mut ids: Vec<&str> = listed.containers.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        let mut want = vec![server.as_str(), client.as_str()];
        want.sort();
        ensure!(ids == want, "ListContainers of the pod: {ids:?}, not {want:?}");

        // The client reached the server over localhost, and said so in its log.
        let fetched = wait_for("the client's log line", vm_timeout(), || {
            Ok(log_lines(&pod, "client").into_iter().find(|l| l.starts_with("fetched: ")))
        })?;
        ensure!(fetched == "fetched: served-by-the-pod", "the client's log: {fetched:?}");
        // The host reaches the server at the pod's IP, over CNI's bridge.
        let body = fetch(&format!("http://{ip}:8080/"), vm_timeout())?;
        ensure!(body == "served-by-the-pod\n", "http://{ip}:8080/ from the host gave {body:?}");

        // One VM: both containers see the same guest boot id, not the host's.
        let server_boot = pod.output(&server, BOOT_ID)?;
        let client_boot = pod.output(&client, BOOT_ID)?;
        let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        ensure!(
            server_boot == client_boot && server_boot.trim().len() == 36 && server_boot != host_boot,
            "boot ids: server {server_boot:?}, client {client_boot:?}, host {host_boot:?}"
        );
        // The VM has the size the pod's annotations asked for.
        let size = pod.output(&server, "nproc; grep MemTotal /proc/meminfo")?;
        let mem_kib: u64 = size.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok()).unwrap_or(0);
        ensure!(
            size.starts_with("2\n") && (200 << 10..=256 << 10).contains(&mem_kib),
            "the VM's vCPUs and memory (asked: 2, 256 MiB): {size:?}"
        );
        // The pod's address is on the guest's eth0.
        let addresses = pod.output(&server, "ip -4 addr show")?;
        ensure!(addresses.contains(&format!("inet {ip}/")), "the guest's addresses do not include the pod's IP {ip}: {addresses}");

        // ExecSync: output, error output and exit code; a streamed Exec likewise.
        let out = pod.exec_sync(&server, "echo out; echo err >&2; exit 3")?;
        ensure!(
            out.exit_code == 3 && out.stdout == b"out\n" && out.stderr == b"err\n",
            "ExecSync: code {}, stdout {:?}, stderr {:?}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let request = ExecRequest {
            container_id: client.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo streamed; echo to-stderr >&2; cat /cache/from-host; exit 5".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        std::fs::write(cache.join("from-host"), "written on the host during the run\n").map_err(|e| e.to_string())?;
        let url = node.call("Exec", node.runtime().exec(request))?.url;
        let streamed = exec_stream::exec(&url, vm_timeout())?;
        ensure!(
            streamed.exit_code == 5
                && streamed.stdout == b"streamed\nwritten on the host during the run\n"
                && streamed.stderr == b"to-stderr\n",
            "Exec through the streaming server: {streamed:?}"
        );

        // The limits kubelet set are the container's cgroup in the guest.
        let cgroup = pod.output(&server, "p=$(cut -d: -f3 /proc/self/cgroup); cat /sys/fs/cgroup$p/memory.max /sys/fs/cgroup$p/cpu.max")?;
        ensure!(cgroup == format!("{}\n50000 100000\n", 64 << 20), "the server's memory.max and cpu.max in the guest: {cgroup:?}");

        // Volumes: the emptyDir is shared with the host and between the containers, the
        // configMap and the token are read-only and read through kubelet's symlinks, the
        // single files are kubelet's.
        let volumes_out = pod.output(
            &server,
            "echo from-the-pod > /cache/note; cat /etc/config/greeting /var/run/secrets/kubernetes.io/serviceaccount/token; echo; \
             touch /etc/config/new 2>/dev/null && echo writable || echo read-only; grep -c web /etc/hosts; \
             echo ended-as-expected > /dev/termination-log",
        )?;
        ensure!(
            volumes_out == "hello from a configMap\neyJhbGciOiJSUzI1NiJ9.e2e.token\nread-only\n1\n",
            "the server's volumes (configMap, token, read-only, /etc/hosts): {volumes_out:?}"
        );
        let note = std::fs::read_to_string(cache.join("note")).map_err(|e| format!("the emptyDir's note on the host: {e}"))?;
        ensure!(note == "from-the-pod\n", "the emptyDir on the host: {note:?}");
        let seen = pod.output(&client, "cat /cache/note")?;
        ensure!(seen == "from-the-pod\n", "the emptyDir from the other container: {seen:?}");
        let log = std::fs::read_to_string(&termination_log).map_err(|e| e.to_string())?;
        ensure!(log == "ended-as-expected\n", "the termination-log file on the host: {log:?}");

        // Stats: CPU time and memory in use.
        let stats = node.call("ContainerStats", node.runtime().container_stats(ContainerStatsRequest { container_id: server.clone() }))?;
        let stats = stats.stats.ok_or("ContainerStats: no stats")?;
        let cpu = stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
        let memory = stats.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value);
        ensure!(cpu > 0 && memory > 0, "ContainerStats of the server: cpu {cpu} ns, memory working set {memory} bytes: {stats:?}");

        // Stop and remove as kubelet does: containers (SIGTERM, then the grace period), then the pod.
        node.call("StopContainer", node.runtime().stop_container(StopContainerRequest { container_id: client.clone(), timeout: 30 }))?;
        let status = pod.exited(&client, vm_timeout())?;
        ensure!(status.exit_code == 0, "the client's exit after StopContainer (its TERM trap exits 0): {status:?}");
        node.call("StopContainer", node.runtime().stop_container(StopContainerRequest { container_id: server.clone(), timeout: 2 }))?;
        pod.exited(&server, vm_timeout())?;
        for id in [&client, &server] {
            node.call("RemoveContainer", node.runtime().remove_container(RemoveContainerRequest { container_id: id.clone() }))?;
        }
        let mut left = pod.remove(true)?;
        left.extend(node.everything_left());
        ensure!(left.is_empty(), "left after RemovePodSandbox: {left:#?}");
        Ok(())
    };
    checks().map_err(|e| {
        let failure = Failed::from(format!("{}\n{}", e.message().unwrap_or("failed"), pod.diagnose()));
        *lost = pod.lost_under_emulation();
        if lost.is_some() {
            let _ = pod.remove(true);
        }
        failure
    })
}

/// What kubelet reports when things go wrong: a command that does not exist fails to start
/// with a reason, a container killed by its memory limit is `OOMKilled` (137), and
/// `RemovePodSandbox` on a running pod stops its VM and leaves nothing.
fn failures() -> TestResult {
    let _g = shared();
    let node = Node::start()?;
    let pod = Pod::run(&node, "faults")?;
    pod.ip()?;

    let missing = pod.create("missing", &["/no/such/command"], Vec::new(), None)?;
    let started = pod.start(&missing);
    ensure!(started.is_err(), "StartContainer of a command that does not exist succeeded");
    let status = pod.status(&missing)?;
    ensure!(
        status.state == ContainerState::ContainerExited as i32 && !status.reason.is_empty() && status.message.contains("/no/such/command"),
        "ContainerStatus of a container whose command does not exist (StartContainer said {started:?}): {status:?}"
    );

    let hog = "x=0123456789abcdef; while :; do x=$x$x; done";
    let limit = LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() };
    let hog_id = pod.container("hog", &["sh", "-c", hog], Vec::new(), Some(limit))?;
    let status = pod.exited(&hog_id, vm_timeout() * 2)?;
    ensure!(status.reason == "OOMKilled" && status.exit_code == 137, "ContainerStatus of a container over its memory limit: {status:?}");

    pod.container("sleeper", &["sh", "-c", "echo up; while :; do sleep 1; done"], Vec::new(), None)?;
    wait_for("the sleeper's log", vm_timeout(), || Ok(log_lines(&pod, "sleeper").contains(&"up".to_string()).then_some(())))?;
    // Straight to RemovePodSandbox, the pod running: it stops the pod (its VM) itself.
    let mut left = pod.remove(false)?;
    let listed = node.call("ListPodSandbox", node.runtime().list_pod_sandbox(ListPodSandboxRequest { filter: None }))?;
    ensure!(listed.items.is_empty(), "ListPodSandbox after RemovePodSandbox: {:?}", listed.items);
    left.extend(node.everything_left());
    ensure!(left.is_empty(), "left after RemovePodSandbox of a running pod: {left:#?}");
    Ok(())
}

/// A pod with a container, checked and removed: what is left of it.
fn one_pod(node: &Node, name: &str) -> Result<Vec<String>, String> {
    let pod = Pod::run(node, name)?;
    let checked = (|| {
        pod.ip()?;
        let id = pod.container("main", &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"], Vec::new(), None)?;
        let boot = pod.output(&id, BOOT_ID)?;
        if boot.trim().len() != 36 {
            return Err(format!("{name}: boot id {boot:?}"));
        }
        Ok(())
    })();
    match checked {
        Ok(()) => pod.remove(true),
        // The pod goes whatever happened to it (what is left of it, the node's check at the
        // end finds), so that it can be run again.
        Err(e) => match pod.remove(true) {
            Ok(_) => Err(e),
            Err(removing) => Err(format!("{e}\n(and removing the pod: {removing})")),
        },
    }
}

/// Ten pods, each with a container, created, checked and removed, two at a time; nothing of
/// any of them is left.
fn ten_pods() -> TestResult {
    let _exclusive = crate::vmrun::exclusive();
    let node = Node::start()?;
    let lefts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let node = &node;
                scope.spawn(move || -> Result<Vec<String>, String> {
                    let mut left = Vec::new();
                    for round in 0..5 {
                        let name = format!("pod-{worker}-{round}");
                        // A pod whose VM the emulator loses after it booted is removed (its
                        // VM with it: palisade's SIGKILL ends a container whose agent does
                        // not answer) and run once more, as a lost boot is.
                        let mut boots = 1;
                        loop {
                            match one_pod(node, &name) {
                                Ok(pod_left) => {
                                    left.extend(pod_left);
                                    break;
                                }
                                Err(e) => match lost_boot_fault(inside_testhost(), boots, 125, &e) {
                                    Some(fault) if boots < MAX_BOOTS => {
                                        eprintln!("[e2e] {name}: the VM was lost under emulation ({fault}); running the pod once more");
                                        boots += 1;
                                    }
                                    _ => return Err(e),
                                },
                            }
                        }
                    }
                    Ok(left)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("a worker panicked".into()))).collect::<Vec<_>>()
    });
    let mut left = Vec::new();
    for result in lefts {
        left.extend(result?);
    }
    // And nothing at all of the node's pods: palisade's state, VMs, processes, mounts.
    left.extend(node.everything_left());
    ensure!(left.is_empty(), "left after ten pods were removed: {left:#?}");
    Ok(())
}
