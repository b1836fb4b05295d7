//! The host end of the `tcp-host` workload: a network namespace joined to the host by a veth
//! pair (what a CNI bridge or ptp plugin gives a pod, without the bridge), and a
//! `palisade-workload tcp-serve` on the host that the sandboxes connect to.
//!
//! crun runs its container in that namespace; palisade carries its interface into the VM (as
//! it does a pod's, docs/oci-runtime.md); vmrun makes its own network (`--network nat`, a tap
//! on the host); bare metal connects to the host's address from the host.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A network namespace with a veth to the host: the host's end `pbh<pid>` has `.1` of a /30
/// of 10.231.0.0/16 chosen from this process's pid, the namespace's end is `eth0` with `.2`
/// and a default route through `.1`. Deleted when dropped.
pub struct HostLink {
    name: String,
    host_interface: String,
    pub host_ip: Ipv4Addr,
}

impl HostLink {
    pub fn new() -> Result<HostLink> {
        let pid = std::process::id();
        let name = format!("palisade-bench-{pid}");
        let host_interface = format!("pbh{pid}");
        let peer = format!("pbn{pid}");
        let block = (pid % 16384) * 4;
        let [_, _, c, d] = block.to_be_bytes();
        let host_ip = Ipv4Addr::new(10, 231, c, d + 1);
        let guest_ip = Ipv4Addr::new(10, 231, c, d + 2);
        // Made before the first step, so whatever a failed step leaves is deleted.
        let link = HostLink { name: name.clone(), host_interface: host_interface.clone(), host_ip };
        let host = host_ip.to_string();
        let steps: [&[&str]; 10] = [
            &["netns", "add", &name],
            &["link", "add", &host_interface, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &name],
            &["-n", &name, "link", "set", &peer, "name", "eth0"],
            &["-n", &name, "addr", "add", &format!("{guest_ip}/30"), "dev", "eth0"],
            &["-n", &name, "link", "set", "eth0", "up"],
            &["-n", &name, "link", "set", "lo", "up"],
            &["-n", &name, "route", "add", "default", "via", &host],
            &["addr", "add", &format!("{host}/30"), "dev", &host_interface],
            &["link", "set", &host_interface, "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(link)
    }

    /// The namespace's path, for a container's `linux.namespaces` (`network`).
    pub fn netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // The namespace's end of the veth goes with the namespace, and the host's end with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = Command::new("ip").args(["link", "del", &self.host_interface]).stderr(Stdio::null()).status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `palisade-workload tcp-serve` on the host, listening on every address; killed when dropped.
pub struct HostServer {
    child: Child,
    pub port: u16,
}

impl HostServer {
    pub fn start(workload: &Path) -> Result<HostServer> {
        let mut child = Command::new(workload)
            .args(["tcp-serve", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} tcp-serve", workload.display()))?;
        let stdout = child.stdout.take().context("tcp-serve's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = HostServer { child, port: 0 };
        let line = rx.recv_timeout(Duration::from_secs(10)).context("tcp-serve did not say its port within 10 s")?;
        server.port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("tcp-serve's first line {line:?} is not `listening PORT`"))?;
        Ok(server)
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
