//! A Kubernetes node's container runtime as kubelet finds it: containerd with its CRI
//! plugin, configured by the repository's `kubernetes/containerd.toml` and CNI network
//! `kubernetes/cni/10-palisade-bridge.conflist` (their node paths moved into a directory of
//! the test's own, the bridge and subnet made the test's own), images imported into the
//! `k8s.io` namespace the way a node side-loads them, and a CRI client (k8s-cri over tonic)
//! on containerd's socket: what kubelet holds.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ImageSpec, ListImagesRequest, ListPodSandboxRequest, RemovePodSandboxRequest, StatusRequest, VersionRequest};
use palisade_e2e::{paths, run, vm_timeout};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{images_archive, layer_of, processes_naming, spawn_containerd};
use crate::oci_runtime::mounts_naming;
use crate::vmrun::busybox_rootfs;

/// The busybox image the pods' containers run.
pub const BUSYBOX: &str = "docker.io/palisade/busybox:cri";
/// The pod sandbox's (pause) image: busybox sleeping until it is killed, as CRI kills it.
pub const PAUSE: &str = "docker.io/palisade/pause:cri";

/// Each node its own bridge and subnet (`plsd-criN`, 10.77.N.0/24).
static NODES: AtomicU32 = AtomicU32::new(0);

pub struct Node {
    child: Child,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// The CNI bridge, and the first three octets of its subnet.
    pub bridge: String,
    pub subnet: String,
}

/// `text` with `from` replaced by `to`; an error if `from` is not in it (the repository's
/// file changed under the test).
fn replace(text: &str, from: &str, to: &str) -> Result<String, String> {
    if !text.contains(from) {
        return Err(format!("kubernetes/containerd.toml no longer has {from:?}"));
    }
    Ok(text.replace(from, to))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl Node {
    /// Starts containerd on the repository's configuration, waits until its CRI plugin
    /// answers with its network ready, and imports [`BUSYBOX`] and [`PAUSE`].
    pub fn start() -> Result<Node, String> {
        let n = NODES.fetch_add(1, Ordering::Relaxed) + 1;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let repo = paths().repo;
        let at = |p: &str| d.join(p).display().to_string();

        let template =
            std::fs::read_to_string(repo.join("kubernetes/containerd.toml")).map_err(|e| format!("kubernetes/containerd.toml: {e}"))?;
        let mut config = replace(&template, "\"/run/containerd/containerd.sock", &format!("\"{}", at("containerd.sock")))?;
        config = replace(&config, "state = \"/run/containerd\"", &format!("state = \"{}\"", at("state")))?;
        config = replace(&config, "root = \"/var/lib/containerd\"", &format!("root = \"{}\"", at("root")))?;
        config = replace(&config, "\"/usr/local/bin/palisade\"", &format!("\"{}\"", paths().profile_dir.join("palisade").display()))?;
        config = replace(&config, "Root = \"/run/palisade\"", &format!("Root = \"{}\"", at("palisade")))?;
        config = replace(&config, "\"/etc/cni/net.d\"", &format!("\"{}\"", at("cni")))?;
        config = replace(&config, "registry.k8s.io/pause:3.6", PAUSE)?;
        config = replace(&config, "stream_server_port = \"10010\"", &format!("stream_server_port = \"{}\"", free_port()?))?;
        // The test host's root cannot hold overlayfs upper directories.
        config = replace(&config, "snapshotter = \"overlayfs\"", "snapshotter = \"native\"")?;
        std::fs::write(d.join("config.toml"), config).map_err(|e| e.to_string())?;

        let conflist = repo.join("kubernetes/cni/10-palisade-bridge.conflist");
        let mut network: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&conflist).map_err(|e| format!("{}: {e}", conflist.display()))?)
                .map_err(|e| format!("{}: {e}", conflist.display()))?;
        let bridge = format!("plsd-cri{n}");
        let subnet = format!("10.77.{n}");
        network["name"] = json!(format!("palisade-e2e-{n}"));
        let plugin = &mut network["plugins"][0];
        plugin["bridge"] = json!(bridge);
        plugin["ipam"]["ranges"] = json!([[{"subnet": format!("{subnet}.0/24")}]]);
        plugin["ipam"]["dataDir"] = json!(at("ipam"));
        std::fs::create_dir_all(d.join("cni")).map_err(|e| e.to_string())?;
        std::fs::write(d.join("cni/10-palisade-bridge.conflist"), network.to_string()).map_err(|e| e.to_string())?;

        let child = spawn_containerd(d)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("a tokio runtime: {e}"))?;
        let socket = d.join("containerd.sock");
        // The channel's worker is a task of this runtime (it runs while a call is awaited).
        let entered = rt.enter();
        let channel = Endpoint::try_from("http://[::]:50051").map_err(|e| e.to_string())?.connect_with_connector_lazy(tower::service_fn(
            move |_: Uri| {
                let socket = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
            },
        ));
        drop(entered);
        let node = Node { child, dir, rt, channel, bridge, subnet };
        node.wait_ready()?;
        node.import_images()?;
        Ok(node)
    }

    /// Until `Version` answers and `Status` says the runtime and its network are ready.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            let version = self.call("Version", self.runtime().version(VersionRequest { version: "v1".into() }));
            match version.and_then(|_| self.call("Status", self.runtime().status(StatusRequest { verbose: false }))) {
                Ok(status) => {
                    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
                    if conditions.len() >= 2 && conditions.iter().all(|c| c.status) {
                        return Ok(());
                    }
                    last = format!("conditions {conditions:?}");
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("containerd's CRI plugin was not ready within 60 s: {last}\ncontainerd's log:\n{}", self.log()))
    }

    /// Side-loads the images (`ctr -n k8s.io images import`, as on a node without a registry).
    fn import_images(&self) -> Result<(), String> {
        let work = self.dir.path().join("images");
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let busybox = json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"});
        let pause = json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sleep"], "Cmd": ["2147483647"], "WorkingDir": "/"});
        let layer = layer_of(&busybox_image_root()?, &work)?;
        let archive = images_archive(&work, &layer, &[(BUSYBOX, busybox), (PAUSE, pause)])?;
        let mut ctr = Command::new("ctr");
        ctr.arg("--address").arg(self.dir.path().join("containerd.sock")).args([
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
        ]);
        ctr.arg(&archive);
        let out = run(ctr, None, vm_timeout()).map_err(|e| e.to_string())?;
        if out.code() != 0 {
            return Err(format!("ctr images import: {}", out.describe()));
        }
        let _ = std::fs::remove_dir_all(&work);
        let images = self.call("ListImages", self.images().list_images(ListImagesRequest { filter: None }))?;
        for name in [BUSYBOX, PAUSE] {
            if !images.images.iter().any(|i| i.repo_tags.iter().any(|t| t == name)) {
                return Err(format!("CRI's ListImages does not list {name}: {:?}", images.images));
            }
        }
        Ok(())
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// One CRI call, as kubelet makes it; a failure names the call and shows containerd's log.
    pub fn call<T>(&self, what: &str, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, String> {
        let limit = vm_timeout() * 4;
        match self.rt.block_on(async { tokio::time::timeout(limit, call).await }) {
            Err(_) => Err(format!("CRI {what}: no answer within {limit:?}\ncontainerd's log:\n{}", self.log())),
            Ok(Err(status)) => Err(format!("CRI {what}: {:?}: {}", status.code(), status.message())),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Where the node's pods and files are: the test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// palisade's root (`--root`) as the shim passes it: the configured Root and the namespace.
    pub fn palisade_root(&self) -> PathBuf {
        self.dir.path().join("palisade/k8s.io")
    }

    /// What is left on the host of every pod the node ran, once all are removed: palisade's
    /// state and VMs, processes and mounts naming the node's directory (shims, monitors,
    /// supervisors, VMMs, virtiofsd; CRI's shm mounts).
    pub fn everything_left(&self) -> Vec<String> {
        let root = self.palisade_root();
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name() != "@vm")
            .chain(std::fs::read_dir(root.join("@vm")).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .collect();
        let needle = self.dir.path().display().to_string();
        left.extend(processes_naming(&needle).into_iter().filter(|p| !p.contains("containerd --config")));
        left.extend(mounts_naming(&needle));
        left
    }

    /// The last lines of containerd's log.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// A busybox root as busybox images have it: every applet a link in /bin.
fn busybox_image_root() -> Result<tempfile::TempDir, String> {
    let root = busybox_rootfs()?;
    let list = Command::new("/bin/busybox").arg("--list").output().map_err(|e| format!("busybox --list: {e}"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && !a.contains('/')) {
        let link = root.path().join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|e| format!("{}: {e}", link.display()))?;
        }
    }
    Ok(root)
}

pub fn image(name: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: name.into(), ..Default::default() })
}

impl Drop for Node {
    fn drop(&mut self) {
        // A test that failed half-way leaves pods: removed as kubelet would, so their VMs end.
        if let Ok(pods) = self.call("ListPodSandbox", self.runtime().list_pod_sandbox(ListPodSandboxRequest { filter: None })) {
            for pod in pods.items {
                let request = RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() };
                if let Err(e) = self.call("RemovePodSandbox", self.runtime().remove_pod_sandbox(request)) {
                    eprintln!("[e2e] cleaning up pod {}: {e}", pod.id);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The bridge CNI made goes with the node (kubelet's nodes keep theirs).
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}
