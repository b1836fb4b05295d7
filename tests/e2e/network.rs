//! Container networks: the network namespace a caller prepared (as CNI does: a veth with an
//! address, routes and an MTU) is what a palisade container gets, inside its VM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use palisade_e2e::vm_timeout;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::oci_runtime::{bundle, create_booted, oci_leftovers, pal, tempdir};
use crate::vmrun::shared;
use crate::{ensure, trial, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![trial("network::a_containers_network_namespace_is_carried_into_its_vm", namespace_carried_into_the_vm)]
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Two network namespaces made for a test, joined by a veth; removed when dropped.
struct Namespaces {
    container: String,
    peer: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.container, &self.peer] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The container's namespace: `eth0` (a veth end, MTU 1400) with 10.201.0.2/24, a default
/// route and one more route through 10.201.0.1; the peer's: the other end with 10.201.0.1/24.
fn make_namespaces() -> Result<Namespaces, String> {
    let n = std::process::id() % 100_000;
    let ns = Namespaces { container: format!("pal-e2e-c{n}"), peer: format!("pal-e2e-p{n}") };
    let (c, p) = (ns.container.as_str(), ns.peer.as_str());
    let (vc, vp) = (format!("vc{n}"), format!("vp{n}"));
    ip(&["netns", "add", c])?;
    ip(&["netns", "add", p])?;
    ip(&["link", "add", &vp, "type", "veth", "peer", "name", &vc])?;
    ip(&["link", "set", &vp, "netns", p])?;
    ip(&["link", "set", &vc, "netns", c])?;
    for args in [
        vec!["-n", c, "link", "set", &vc, "name", "eth0"],
        vec!["-n", c, "link", "set", "eth0", "mtu", "1400"],
        vec!["-n", c, "addr", "add", "10.201.0.2/24", "dev", "eth0"],
        vec!["-n", c, "link", "set", "eth0", "up"],
        vec!["-n", c, "link", "set", "lo", "up"],
        vec!["-n", c, "route", "add", "default", "via", "10.201.0.1"],
        vec!["-n", c, "route", "add", "10.202.0.0/16", "via", "10.201.0.1"],
        vec!["-n", p, "link", "set", &vp, "mtu", "1400"],
        vec!["-n", p, "addr", "add", "10.201.0.1/24", "dev", &vp],
        vec!["-n", p, "link", "set", &vp, "up"],
        vec!["-n", p, "link", "set", "lo", "up"],
    ] {
        ip(&args)?;
    }
    Ok(ns)
}

/// A container whose spec names a namespace the test made serves a 64 MiB file over HTTP
/// (busybox httpd) to a client in the peer namespace, intact; inside, it sees the address,
/// MTU and routes the veth had. Its delete leaves no tap and no redirection behind.
fn namespace_carried_into_the_vm() -> TestResult {
    let _g = shared();
    let ns = make_namespaces()?;
    let root_dir = tempdir()?;
    let root = root_dir.path().display().to_string();
    let id = "e2e-net";
    let serve = "{ busybox ip -4 addr show eth0; busybox ip route; echo mtu=$(busybox cat /sys/class/net/eth0/mtu); } > /report.tmp \
                 && busybox mv /report.tmp /report && exec busybox httpd -f -p 8080 -h /srv";
    let b = bundle(&["sh", "-c", serve])?;
    let rootfs = b.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("srv")).map_err(|e| e.to_string())?;
    // 64 MiB that compress to nothing useful: a hash chain.
    let mut blob = Vec::with_capacity(64 << 20);
    let mut block = Sha256::digest(b"palisade network e2e").to_vec();
    while blob.len() < 64 << 20 {
        block = Sha256::digest(&block).to_vec();
        blob.extend_from_slice(&block);
    }
    std::fs::write(rootfs.join("srv/blob"), &blob).map_err(|e| e.to_string())?;
    let want = format!("{:x}", Sha256::digest(&blob));
    let config = b.path().join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&config).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let namespaces = spec["linux"]["namespaces"].as_array_mut().ok_or("the spec has no namespaces")?;
    namespaces.retain(|n| n["type"] != "network");
    namespaces.push(serde_json::json!({"type": "network", "path": format!("/var/run/netns/{}", ns.container)}));
    std::fs::write(&config, spec.to_string()).map_err(|e| e.to_string())?;

    let created = create_booted(&root, b.path(), &b.path().join("init.pid"), id)?;
    ensure!(created.code() == 0, "create with network namespace {}: {}", ns.container, created.describe());
    let result = (|| -> TestResult {
        let out = pal(&root, &["start", id])?;
        ensure!(out.code() == 0, "start: {}", out.describe());
        let report_path = rootfs.join("report");
        let deadline = Instant::now() + vm_timeout();
        while !report_path.exists() {
            ensure!(Instant::now() < deadline, "the container wrote no /report within {:?}", vm_timeout());
            std::thread::sleep(Duration::from_millis(100));
        }
        let report = std::fs::read_to_string(&report_path).map_err(|e| e.to_string())?;
        for seen in ["inet 10.201.0.2/24", "default via 10.201.0.1", "10.202.0.0/16 via 10.201.0.1", "mtu=1400"] {
            ensure!(report.contains(seen), "inside the container, no {seen:?} in:\n{report}");
        }
        // The client, in the peer namespace, fetches the file (httpd may still be starting).
        let fetched = b.path().join("fetched");
        let deadline = Instant::now() + vm_timeout();
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.peer, "wget", "-q", "-T", "30", "-O"])
                .arg(&fetched)
                .arg("http://10.201.0.2:8080/blob")
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                break;
            }
            ensure!(Instant::now() < deadline, "wget from the peer namespace: {}", String::from_utf8_lossy(&out.stderr).trim());
            std::thread::sleep(Duration::from_millis(200));
        }
        let got = std::fs::read(&fetched).map_err(|e| e.to_string())?;
        ensure!(got.len() == blob.len(), "fetched {} bytes of {}", got.len(), blob.len());
        ensure!(format!("{:x}", Sha256::digest(&got)) == want, "the fetched file differs from the served one");
        Ok(())
    })();
    let out = pal(&root, &["delete", "--force", id])?;
    result?;
    ensure!(out.code() == 0, "delete --force: {}", out.describe());
    // The tap went with the VM, the redirection with the container.
    let links = output("ip", &["-n", &ns.container, "-o", "link"]);
    ensure!(!links.contains("_plsd"), "a tap is left in the namespace: {links}");
    let qdiscs = output("tc", &["-n", &ns.container, "qdisc", "show", "dev", "eth0"]);
    ensure!(!qdiscs.contains("ingress"), "eth0 still redirects: {qdiscs}");
    let mine: Vec<String> = oci_leftovers(Path::new(&root)).into_iter().filter(|l| l.contains(&root)).collect();
    ensure!(mine.is_empty(), "left after delete: {mine:?}");
    Ok(())
}
