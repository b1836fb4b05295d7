//! A container's network, as Kata gives it: the caller (CNI, podman) prepared a network
//! namespace on the host — a veth with addresses, routes, an MTU — and names it in the
//! spec. palisade keeps it as it is and moves its traffic into the VM: for each interface a
//! tap is made beside it in that namespace (by the VM's supervisor), and tc redirects every
//! frame that arrives on one to the other (`mirred`, both ways). The guest's interface gets
//! the host interface's MAC, MTU, addresses and routes, so neighbours, gateways and the
//! caller's bookkeeping stay right. The container runs in the guest's network namespace.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_netlink::{Link, Netlink, Route};
use palisade_protocol::{InterfaceSpec, NetworkSpec, RouteSpec};
use palisade_vmm::{MacAddr, NetConfig};
use serde::{Deserialize, Serialize};

use super::RuntimeError;

/// The most interfaces of a namespace that are carried into a VM.
pub const MAX_INTERFACES: usize = 8;

/// A host namespace's network as the VM takes it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The caller's network namespace.
    pub netns: PathBuf,
    /// Each interface carried into the VM and the tap beside it.
    pub links: Vec<CarriedLink>,
    /// What the guest is told to set up.
    #[serde(skip)]
    pub guest: NetworkSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedLink {
    /// The caller's interface (a veth's end, say).
    pub interface: String,
    /// The tap made beside it.
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// The tap beside the `index`th carried interface.
fn tap_name(index: usize) -> String {
    format!("tap{index}_plsd")
}

/// Reads namespace `netns`: its interfaces other than loopback (and taps this runtime
/// made), their addresses, and the routes of its main table.
pub fn read(netns: &Path) -> Result<PodNetwork, RuntimeError> {
    let fail = |what: &str, e: String| RuntimeError::Other(format!("network namespace {}: {what}: {e}", netns.display()));
    let read = palisade_vmm::netns::in_netns(Some(netns), || -> Result<_, palisade_netlink::NetlinkError> {
        let mut nl = Netlink::open()?;
        Ok((nl.links()?, nl.addresses()?, nl.routes()?))
    })
    .map_err(|e| fail("entering it", e.to_string()))?;
    let (links, addresses, routes) = read.map_err(|e| fail("reading it", e.to_string()))?;
    let carried: Vec<&Link> =
        links.iter().filter(|l| !l.loopback && l.mac.is_some() && l.kind.as_deref() != Some("tun") && !l.name.ends_with("_plsd")).collect();
    if carried.len() > MAX_INTERFACES {
        return Err(fail("its interfaces", format!("{} of them, more than the {MAX_INTERFACES} a VM takes", carried.len())));
    }
    let mut network = PodNetwork { netns: netns.to_owned(), links: Vec::new(), guest: NetworkSpec::default() };
    for (i, link) in carried.iter().enumerate() {
        let mac = link.mac.unwrap_or_default();
        let mtu =
            u16::try_from(link.mtu).ok().filter(|m| *m >= 68).ok_or_else(|| fail(&link.name, format!("MTU {} out of range", link.mtu)))?;
        network.links.push(CarriedLink { interface: link.name.clone(), tap: tap_name(i), mac, mtu });
        let addrs = addresses
            .iter()
            .filter(|a| a.index == link.index && !is_link_local_v6(&a.addr))
            .map(|a| format!("{}/{}", a.addr, a.prefix_len))
            .collect();
        network.guest.interfaces.push(InterfaceSpec {
            mac: MacAddr(mac).to_string(),
            name: link.name.clone(),
            mtu: link.mtu,
            addresses: addrs,
        });
    }
    for route in routes.iter().filter(|r| carried_route(r)) {
        let Some(link) = carried.iter().find(|l| Some(l.index) == route.oif) else { continue };
        network.guest.routes.push(RouteSpec {
            destination: route.dst.map(|(ip, len)| format!("{ip}/{len}")),
            gateway: route.gateway.map(|g| g.to_string()),
            interface: link.name.clone(),
            mtu: route.mtu,
            source: route.src.map(|s| s.to_string()),
            scope_link: route.scope == libc::RT_SCOPE_LINK,
        });
    }
    Ok(network)
}

/// Routes the kernel makes by itself from an address (the prefix route, IPv6 multicast and
/// link-local) are made again by the guest's kernel; the rest are carried.
fn carried_route(r: &Route) -> bool {
    const RTPROT_KERNEL: u8 = 2;
    if r.protocol == RTPROT_KERNEL {
        return false;
    }
    !matches!(r.dst, Some((std::net::IpAddr::V6(ip), _)) if ip.segments()[0] & 0xffc0 == 0xfe80 || ip.segments()[0] & 0xff00 == 0xff00)
}

fn is_link_local_v6(ip: &std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

impl PodNetwork {
    /// The VM's virtio-net devices: a tap each, made in the caller's namespace, the guest
    /// side with the host interface's MAC and MTU.
    pub fn devices(&self) -> Vec<NetConfig> {
        self.links
            .iter()
            .map(|l| NetConfig { netns: Some(self.netns.clone()), mac: Some(MacAddr(l.mac)), mtu: l.mtu, ..NetConfig::new(&l.tap) })
            .collect()
    }

    /// Redirects each interface's traffic to its tap and back (the taps exist: the VM's
    /// supervisor made them).
    pub fn connect(&self) -> Result<(), RuntimeError> {
        let fail = |e: String| RuntimeError::Other(format!("network namespace {}: {e}", self.netns.display()));
        let up = palisade_vmm::netns::in_netns(Some(&self.netns), || -> Result<(), String> {
            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
            let links = nl.links().map_err(|e| e.to_string())?;
            for l in &self.links {
                let tap = links.iter().find(|k| k.name == l.tap).ok_or_else(|| format!("tap {} is missing", l.tap))?;
                nl.set_link(tap.index, None, None, Some(true)).map_err(|e| format!("tap {}: {e}", l.tap))?;
            }
            Ok(())
        })
        .map_err(|e| fail(e.to_string()))?;
        up.map_err(fail)?;
        for l in &self.links {
            for (from, to) in [(&l.interface, &l.tap), (&l.tap, &l.interface)] {
                // A redirection left by a container that was not deleted goes first.
                let _ = tc(&self.netns, &["qdisc", "del", "dev", from, "ingress"]);
                tc(&self.netns, &["qdisc", "add", "dev", from, "ingress"])?;
                tc(
                    &self.netns,
                    &[
                        "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0", "0", "action",
                        "mirred", "egress", "redirect", "dev", to,
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Takes the redirections away (the taps go with the VM); what is already gone is fine.
    pub fn disconnect(&self) {
        for l in &self.links {
            if let Err(e) = tc(&self.netns, &["qdisc", "del", "dev", &l.interface, "ingress"]) {
                tracing::debug!("{e}");
            }
        }
    }
}

/// Runs `tc ARGS` (iproute2's) in network namespace `netns`.
fn tc(netns: &Path, args: &[&str]) -> Result<(), RuntimeError> {
    let ns: OwnedFd = File::open(netns).map_err(|e| RuntimeError::Other(format!("network namespace {}: {e}", netns.display())))?.into();
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("tc");
    cmd.args(args);
    // SAFETY: between fork and exec the child only calls setns(2), which is
    // async-signal-safe, on a descriptor that stays open until the command has run.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let what = format!("tc {} (in network namespace {})", args.join(" "), netns.display());
    let out = cmd.output().map_err(|e| RuntimeError::Other(format!("{what}: {e} (Debian's iproute2 has tc)")))?;
    drop(ns);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(RuntimeError::Other(format!("{what}: {}", err.trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use palisade_netlink::testing::{in_netns, ip};

    use super::*;

    /// A namespace as CNI leaves it (a veth with an address, MTU 1400, a default route and
    /// one more): what is carried into the VM, and what is left to the guest's kernel.
    #[test]
    fn a_namespace_is_read_as_the_guest_gets_it() {
        let Some(network) = in_netns(|| {
            ip("link add eth0 type veth peer name peer0");
            ip("link set eth0 address 02:00:00:00:00:05 mtu 1400 up");
            ip("link set peer0 up");
            ip("addr add 10.9.0.2/24 dev eth0");
            ip("addr add fd00:9::2/64 dev eth0 nodad");
            ip("route add default via 10.9.0.1");
            ip("route add 10.10.0.0/16 via 10.9.0.1 mtu 1300");
            read(Path::new("/proc/thread-self/ns/net")).unwrap()
        }) else {
            return;
        };
        let eth0 = network.links.iter().find(|l| l.interface == "eth0").expect("eth0 carried");
        assert_eq!((eth0.mac, eth0.mtu), ([2, 0, 0, 0, 0, 5], 1400));
        assert!(eth0.tap.ends_with("_plsd") && eth0.tap.len() <= 15, "{}", eth0.tap);
        assert!(network.links.iter().all(|l| l.interface != "lo"));
        let spec = network.guest.interfaces.iter().find(|i| i.name == "eth0").unwrap();
        assert_eq!(spec.mac, "02:00:00:00:00:05");
        assert_eq!(spec.mtu, 1400);
        // The addresses given, not the link-local one the kernel made.
        assert_eq!(spec.addresses, ["10.9.0.2/24", "fd00:9::2/64"]);
        let routes: Vec<(Option<&str>, Option<&str>, Option<u32>)> =
            network.guest.routes.iter().map(|r| (r.destination.as_deref(), r.gateway.as_deref(), r.mtu)).collect();
        // Not the prefix routes the kernel made from the addresses.
        assert!(routes.contains(&(None, Some("10.9.0.1"), None)), "{routes:?}");
        assert!(routes.contains(&(Some("10.10.0.0/16"), Some("10.9.0.1"), Some(1300))), "{routes:?}");
        assert!(!routes.iter().any(|r| r.0 == Some("10.9.0.0/24")), "{routes:?}");
        let devices = network.devices();
        assert_eq!(devices.len(), network.links.len());
        assert!(devices.iter().all(|d| d.netns.as_deref() == Some(Path::new("/proc/thread-self/ns/net"))));
    }
}
