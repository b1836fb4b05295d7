//! `vmrun --network` and `-p`: the VM's network.
//!
//! - `none` (the default): no network device; the container has its loopback only.
//! - `tap:NAME[,ip=ADDR/LEN[,gw=ADDR]]`: the guest's `eth0` is attached to the host's
//!   existing tap NAME (the host side is the caller's to address and bring up); the guest
//!   gets the address and default route asked for, or none (its `eth0` is just up).
//! - `nat` (implied by `-p`): vmrun makes a tap `plsd<pid>` (the VM's supervisor makes it
//!   when it starts the VMM; it goes with the VMM), gives the VM a /30 of 100.64.0.0/10
//!   chosen from its pid (the host side `.1`, the guest `.2`), and NATs with nftables in a
//!   table of the VM's own, `table ip palisade_plsd<pid>`: the guest's outbound traffic is
//!   masqueraded, each `-p HOSTPORT:CTRPORT` is DNATed to the guest (from elsewhere and
//!   from the host itself, 127.0.0.1 included: `route_localnet` on the tap). The table is
//!   deleted when vmrun ends; one a SIGKILLed vmrun left is swept by the next `--network
//!   nat` run ([`sweep`]).
//!
//! With a network the container runs in the guest's own network namespace (where `eth0`
//! is), not a new one.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use palisade_netlink::Netlink;
use palisade_protocol::{InterfaceSpec, NetworkSpec, RouteSpec};
use palisade_vmm::{MacAddr, NetConfig};

/// The guest's interface name.
pub const GUEST_INTERFACE: &str = "eth0";
/// The MTU of a `nat` VM's link.
pub const NAT_MTU: u16 = 1500;
/// Prefix of the taps vmrun makes (`plsd<pid>`) and of their nftables tables.
pub const TAP_PREFIX: &str = "plsd";
pub const TABLE_PREFIX: &str = "palisade_";
/// The range `nat` VMs' /30s come from (RFC 6598 shared address space).
const NAT_RANGE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The /30s in 100.64.0.0/10.
const NAT_BLOCKS: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("--network {0:?}: expected none, nat or tap:NAME[,ip=ADDR/LEN[,gw=ADDR]]")]
    BadNetwork(String),
    #[error("--network {value:?}: {problem}")]
    BadTap { value: String, problem: String },
    #[error("--publish {0:?}: expected [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp] (ports 1-65535)")]
    BadPublish(String),
    #[error("--publish is for --network nat (which it implies); --network {0} publishes no ports")]
    PublishWithout(String),
    #[error("--publish: host port {port}/{proto} is given twice")]
    PublishTwice { port: u16, proto: &'static str },
    #[error("--network tap:{name}: no such interface on the host (make one with `ip tuntap add {name} mode tap`)")]
    NoTap { name: String },
    #[error("--network tap:{name}: {name} is not a tap (a tun/tap device made with `ip tuntap add {name} mode tap`)")]
    NotATap { name: String },
    #[error("--network nat: every /30 of 100.64.0.0/10 is taken by an interface of this host")]
    NoSubnet,
    #[error("--network nat: reading this host's addresses: {0}")]
    Addresses(String),
    #[error("--network nat: {0}")]
    Host(String),
    #[error("nft {args}: {problem}")]
    Nft { args: String, problem: String },
}

/// What `--network` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    None,
    Tap { name: String, address: Option<(Ipv4Addr, u8)>, gateway: Option<Ipv4Addr> },
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p`: traffic to the host's `host_port` (on `host_ip` only, if given) goes to the
/// guest's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

/// Parses a `--network` value.
pub fn parse_network(value: &str) -> Result<Choice, NetworkError> {
    match value {
        "none" => return Ok(Choice::None),
        "nat" => return Ok(Choice::Nat),
        _ => {}
    }
    let Some(rest) = value.strip_prefix("tap:") else { return Err(NetworkError::BadNetwork(value.into())) };
    let bad = |problem: &str| NetworkError::BadTap { value: value.into(), problem: problem.into() };
    let mut parts = rest.split(',');
    let name = parts.next().unwrap_or_default();
    if name.is_empty() || name.len() > 15 || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(bad("the tap's name must be 1-15 characters, no '/', ':' or spaces"));
    }
    let (mut address, mut gateway) = (None, None);
    for part in parts {
        if let Some(a) = part.strip_prefix("ip=") {
            let (ip, len) = a.split_once('/').ok_or_else(|| bad("ip= needs a prefix length: ip=ADDR/LEN"))?;
            let ip: Ipv4Addr = ip.parse().map_err(|_| bad("ip= takes an IPv4 address"))?;
            let len: u8 = len.parse().ok().filter(|l| (1..=32).contains(l)).ok_or_else(|| bad("ip=ADDR/LEN: LEN is 1-32"))?;
            address = Some((ip, len));
        } else if let Some(g) = part.strip_prefix("gw=") {
            gateway = Some(g.parse::<Ipv4Addr>().map_err(|_| bad("gw= takes an IPv4 address"))?);
        } else {
            return Err(bad(&format!("unknown option {part:?} (tap: takes ip=ADDR/LEN and gw=ADDR)")));
        }
    }
    if gateway.is_some() && address.is_none() {
        return Err(bad("gw= needs ip= (the guest reaches its gateway from its address)"));
    }
    Ok(Choice::Tap { name: name.into(), address, gateway })
}

/// Parses a `-p` value: `[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`.
pub fn parse_publish(value: &str) -> Result<Publish, NetworkError> {
    let bad = || NetworkError::BadPublish(value.into());
    let (ports, proto) = match value.rsplit_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some(_) => return Err(bad()),
        None => (value, Proto::Tcp),
    };
    let fields: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match fields[..] {
        [h, c] => (None, h, c),
        [ip, h, c] => (Some(ip.parse::<Ipv4Addr>().map_err(|_| bad())?), h, c),
        _ => return Err(bad()),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad);
    // 0.0.0.0 is every address of the host, as without one.
    let host_ip = host_ip.filter(|ip| !ip.is_unspecified());
    Ok(Publish { host_ip, host_port: port(host)?, container_port: port(container)?, proto })
}

/// The network `--network` and `-p` ask for: `-p` alone implies `nat` (as `docker run -p`
/// works on Docker's default NAT network); with `--network none` or `tap:` it is an error.
pub fn choose(network: Option<&str>, publish: &[String]) -> Result<(Choice, Vec<Publish>), NetworkError> {
    let choice = match network {
        Some(n) => parse_network(n)?,
        None if publish.is_empty() => Choice::None,
        None => Choice::Nat,
    };
    let published = publish.iter().map(|p| parse_publish(p)).collect::<Result<Vec<_>, _>>()?;
    if !published.is_empty() && choice != Choice::Nat {
        return Err(NetworkError::PublishWithout(network.unwrap_or_default().into()));
    }
    for (i, p) in published.iter().enumerate() {
        if published[..i].iter().any(|q| q.host_port == p.host_port && q.proto == p.proto) {
            return Err(NetworkError::PublishTwice { port: p.host_port, proto: p.proto.name() });
        }
    }
    Ok((choice, published))
}

/// The tap a `nat` VM of vmrun `pid` has.
pub fn nat_tap(pid: u32) -> String {
    format!("{TAP_PREFIX}{pid}")
}

/// The nftables table (family ip) of the `nat` VM whose tap is `tap`.
pub fn nat_table(tap: &str) -> String {
    format!("{TABLE_PREFIX}{tap}")
}

/// The host and guest addresses of /30 number `block` of 100.64.0.0/10.
fn block_addresses(block: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(NAT_RANGE) + (block % NAT_BLOCKS) * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// The first /30 from the one `pid` picks on that no address in `taken` falls in.
fn choose_block(pid: u32, taken: &[Ipv4Addr]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    (0..NAT_BLOCKS).map(|i| (pid.wrapping_add(i)) % NAT_BLOCKS).map(block_addresses).find(|(host, _)| {
        let base = u32::from(*host) & !3;
        !taken.iter().any(|a| u32::from(*a) & !3 == base)
    })
}

/// The guest's MAC in a `nat` VM: locally administered, from vmrun's pid.
fn nat_mac(pid: u32) -> [u8; 6] {
    let b = pid.to_be_bytes();
    [0x02, 0x50, 0x4c, b[1], b[2], b[3]]
}

/// A `nat` VM's network: its tap, addresses and published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    pub tap: String,
    pub table: String,
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub mac: [u8; 6],
    pub publish: Vec<Publish>,
}

impl Nat {
    /// The nftables ruleset (for `nft -f -`) that makes the table: DNAT of the published
    /// ports to the guest, for traffic from elsewhere (prerouting) and from the host itself
    /// (output); masquerade of the host's loopback traffic that goes out the tap (so the
    /// guest can answer `curl 127.0.0.1:PORT`) and of the guest's traffic that leaves
    /// elsewhere.
    pub fn ruleset(&self) -> String {
        let (tap, guest) = (&self.tap, self.guest);
        let mut dnat = String::new();
        for p in &self.publish {
            let to = match p.host_ip {
                Some(ip) => format!("ip daddr {ip}"),
                None => "fib daddr type local".into(),
            };
            let _ = writeln!(dnat, "\t\t{to} {} dport {} dnat to {guest}:{}", p.proto.name(), p.host_port, p.container_port);
        }
        format!(
            "table ip {table} {{\n\
             \tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n{dnat}\t}}\n\
             \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{dnat}\t}}\n\
             \tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\
             \t\toifname \"{tap}\" ip saddr 127.0.0.0/8 masquerade\n\
             \t\tip saddr {guest} oifname != \"{tap}\" masquerade\n\t}}\n}}\n",
            table = self.table
        )
    }

    /// The host's side, once the VM's supervisor has made the tap: the tap's address, up,
    /// `route_localnet`, IPv4 forwarding, the nftables table. `table` is deleted when
    /// dropped, however vmrun ends.
    pub fn set_up_host(&self) -> Result<(), NetworkError> {
        let host = |e: String| NetworkError::Host(format!("tap {}: {e}", self.tap));
        let mut nl = Netlink::open().map_err(|e| host(e.to_string()))?;
        let links = nl.links().map_err(|e| host(e.to_string()))?;
        let link = links.iter().find(|l| l.name == self.tap).ok_or_else(|| host("missing (the VM's supervisor makes it)".into()))?;
        nl.add_address(link.index, self.host.into(), 30).map_err(|e| host(format!("adding {}/30: {e}", self.host)))?;
        nl.set_link(link.index, None, None, Some(true)).map_err(|e| host(format!("bringing it up: {e}")))?;
        let localnet = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.tap);
        std::fs::write(&localnet, "1").map_err(|e| NetworkError::Host(format!("{localnet}: {e}")))?;
        enable_forwarding()?;
        nft(&["-f", "-"], Some(&self.ruleset()))?;
        tracing::info!(tap = %self.tap, host = %self.host, guest = %self.guest, table = %self.table, "the host side of the VM's network is up");
        Ok(())
    }
}

/// Turns on IPv4 forwarding (`net.ipv4.ip_forward`), as Docker does, if it is off; it
/// stays on.
fn enable_forwarding() -> Result<(), NetworkError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let now = std::fs::read_to_string(PATH).map_err(|e| NetworkError::Host(format!("{PATH}: {e}")))?;
    if now.trim() != "1" {
        std::fs::write(PATH, "1").map_err(|e| NetworkError::Host(format!("{PATH}: turning IPv4 forwarding on: {e}")))?;
        tracing::info!("turned IPv4 forwarding on (net.ipv4.ip_forward=1)");
    }
    Ok(())
}

/// Runs `nft ARGS` with `stdin`; its stdout.
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, NetworkError> {
    let fail = |problem: String| NetworkError::Nft { args: args.join(" "), problem };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("{e} (Debian's nftables package has nft)")))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes nftables table `table` (family ip) when dropped; one already gone is fine.
#[derive(Debug)]
pub struct TableGuard(pub String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        delete_table(&self.0);
    }
}

fn delete_table(table: &str) {
    match nft(&["delete", "table", "ip", table], None) {
        Ok(_) => tracing::debug!(table, "deleted nftables table"),
        Err(e) if e.to_string().contains("No such file or directory") => {}
        Err(e) => tracing::warn!("{e}"),
    }
}

/// The pid in a name vmrun gave (`plsd<pid>`, `palisade_plsd<pid>`), if it is one.
fn pid_of(name: &str, prefix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// The tables of vmrun's in `nft list tables` output: (name, pid).
fn vmrun_tables(listing: &str) -> Vec<(String, u32)> {
    let prefix = format!("{TABLE_PREFIX}{TAP_PREFIX}");
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .filter_map(|name| pid_of(name.trim(), &prefix).map(|pid| (name.trim().to_string(), pid)))
        .collect()
}

/// Whether `pid` is a vmrun other than this one that is still running.
fn live_vmrun(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "vmrun")
}

/// Deletes what `nat` VMs of vmruns that are gone left (a SIGKILLed vmrun cannot clean
/// up): each table `palisade_plsd<pid>` and tap `plsd<pid>` whose pid is no running
/// vmrun. Failures are logged, not fatal.
pub fn sweep() {
    match nft(&["list", "tables"], None) {
        Ok(listing) => {
            for (table, pid) in vmrun_tables(&listing) {
                if !live_vmrun(pid) {
                    tracing::info!(table, "deleting the nftables table of vmrun {pid}, which is gone");
                    delete_table(&table);
                }
            }
        }
        Err(e) => tracing::warn!("sweeping the tables of vmruns that are gone: {e}"),
    }
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = pid_of(&name, TAP_PREFIX) else { continue };
        if live_vmrun(pid) || !entry.path().join("tun_flags").exists() {
            continue;
        }
        tracing::info!("deleting tap {name} of vmrun {pid}, which is gone");
        match Command::new("ip").args(["link", "delete", &name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!("ip link delete {name}: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => tracing::warn!("ip link delete {name}: {e}"),
        }
    }
}

/// The VM's side of the network asked for: its devices, what the guest is told, and the
/// host side to set up once the VM runs.
#[derive(Debug, Clone, Default)]
pub struct VmNetwork {
    pub devices: Vec<NetConfig>,
    pub guest: Option<NetworkSpec>,
    pub nat: Option<Nat>,
}

/// The guest's spec for one interface with `mac`, `mtu`, an optional address and default
/// route via `gateway`.
fn guest_spec(mac: [u8; 6], mtu: u16, address: Option<(Ipv4Addr, u8)>, gateway: Option<Ipv4Addr>) -> NetworkSpec {
    NetworkSpec {
        interfaces: vec![InterfaceSpec {
            mac: MacAddr(mac).to_string(),
            name: GUEST_INTERFACE.into(),
            mtu: u32::from(mtu),
            addresses: address.map(|(ip, len)| format!("{ip}/{len}")).into_iter().collect(),
        }],
        routes: gateway
            .map(|gw| RouteSpec {
                destination: None,
                gateway: Some(gw.to_string()),
                interface: GUEST_INTERFACE.into(),
                mtu: None,
                source: None,
                scope_link: false,
            })
            .into_iter()
            .collect(),
    }
}

/// Plans the network for `choice` (vmrun's pid is `pid`): checks a tap is there, picks a
/// `nat` VM's /30 and sweeps what vmruns that are gone left.
pub fn prepare(choice: &Choice, publish: &[Publish], pid: u32) -> Result<VmNetwork, NetworkError> {
    match choice {
        Choice::None => Ok(VmNetwork::default()),
        Choice::Tap { name, address, gateway } => {
            let dir = Path::new("/sys/class/net").join(name);
            if !dir.exists() {
                return Err(NetworkError::NoTap { name: name.clone() });
            }
            if !dir.join("tun_flags").exists() {
                return Err(NetworkError::NotATap { name: name.clone() });
            }
            let mtu = std::fs::read_to_string(dir.join("mtu")).ok().and_then(|m| m.trim().parse::<u16>().ok()).unwrap_or(NAT_MTU);
            let mac = MacAddr::random().0;
            Ok(VmNetwork {
                devices: vec![NetConfig { mac: Some(MacAddr(mac)), mtu, ..NetConfig::new(name) }],
                guest: Some(guest_spec(mac, mtu, *address, *gateway)),
                nat: None,
            })
        }
        Choice::Nat => {
            sweep();
            let taken = host_ipv4_addresses()?;
            let (host, guest) = choose_block(pid, &taken).ok_or(NetworkError::NoSubnet)?;
            let tap = nat_tap(pid);
            let mac = nat_mac(pid);
            Ok(VmNetwork {
                devices: vec![NetConfig { mac: Some(MacAddr(mac)), mtu: NAT_MTU, ..NetConfig::new(&tap) }],
                guest: Some(guest_spec(mac, NAT_MTU, Some((guest, 30)), Some(host))),
                nat: Some(Nat { table: nat_table(&tap), tap, host, guest, mac, publish: publish.to_vec() }),
            })
        }
    }
}

fn host_ipv4_addresses() -> Result<Vec<Ipv4Addr>, NetworkError> {
    let mut nl = Netlink::open().map_err(|e| NetworkError::Addresses(e.to_string()))?;
    let addresses = nl.addresses().map_err(|e| NetworkError::Addresses(e.to_string()))?;
    Ok(addresses
        .iter()
        .filter_map(|a| match a.addr {
            std::net::IpAddr::V4(v4) => Some(v4),
            _ => None,
        })
        .collect())
}

/// Takes the network namespace out of a spec's `linux.namespaces`: with a network the
/// container runs in the guest's own (where its interface is).
pub fn use_guest_network_namespace(spec: &mut serde_json::Value) {
    if let Some(ns) = spec.pointer_mut("/linux/namespaces").and_then(serde_json::Value::as_array_mut) {
        ns.retain(|n| n.get("type").and_then(serde_json::Value::as_str) != Some("network"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_values_parse() {
        assert_eq!(parse_network("none").unwrap(), Choice::None);
        assert_eq!(parse_network("nat").unwrap(), Choice::Nat);
        assert_eq!(parse_network("tap:tap7").unwrap(), Choice::Tap { name: "tap7".into(), address: None, gateway: None });
        assert_eq!(
            parse_network("tap:t0,ip=100.65.0.2/30,gw=100.65.0.1").unwrap(),
            Choice::Tap {
                name: "t0".into(),
                address: Some(("100.65.0.2".parse().unwrap(), 30)),
                gateway: Some("100.65.0.1".parse().unwrap())
            }
        );
        let err = |v: &str| parse_network(v).unwrap_err().to_string();
        assert!(err("bridge").contains("expected none, nat or tap:NAME"), "{}", err("bridge"));
        assert!(err("tap:").contains("1-15 characters"));
        assert!(err("tap:averyveryverylongname").contains("1-15 characters"));
        assert!(err("tap:t0,ip=10.0.0.2").contains("prefix length"));
        assert!(err("tap:t0,ip=10.0.0.2/33").contains("LEN is 1-32"));
        assert!(err("tap:t0,ip=fe80::1/64").contains("IPv4"));
        assert!(err("tap:t0,gw=10.0.0.1").contains("gw= needs ip="));
        assert!(err("tap:t0,mtu=9000").contains("unknown option \"mtu=9000\""));
    }

    #[test]
    fn publish_values_parse() {
        let p = parse_publish("18081:80").unwrap();
        assert_eq!(p, Publish { host_ip: None, host_port: 18081, container_port: 80, proto: Proto::Tcp });
        assert_eq!(parse_publish("53:5353/udp").unwrap().proto, Proto::Udp);
        assert_eq!(parse_publish("8080:80/tcp").unwrap().proto, Proto::Tcp);
        assert_eq!(parse_publish("127.0.0.1:8080:80").unwrap().host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(parse_publish("0.0.0.0:8080:80").unwrap().host_ip, None);
        for bad in ["80", "0:80", "80:0", "70000:80", "8080:80/sctp", "x:8080:80", "a:b", "1:2:3:4"] {
            assert!(matches!(parse_publish(bad), Err(NetworkError::BadPublish(_))), "{bad}");
        }
    }

    #[test]
    fn publish_implies_nat_and_refuses_other_networks() {
        assert_eq!(choose(None, &[]).unwrap(), (Choice::None, vec![]));
        let (c, p) = choose(None, &["8080:80".into()]).unwrap();
        assert_eq!((c, p.len()), (Choice::Nat, 1));
        assert_eq!(choose(Some("nat"), &[]).unwrap().0, Choice::Nat);
        let e = choose(Some("none"), &["8080:80".into()]).unwrap_err().to_string();
        assert!(e.contains("--network none publishes no ports"), "{e}");
        assert!(choose(Some("tap:t0"), &["8080:80".into()]).is_err());
        let e = choose(Some("nat"), &["8080:80".into(), "8080:81".into()]).unwrap_err().to_string();
        assert!(e.contains("8080/tcp is given twice"), "{e}");
        assert!(choose(Some("nat"), &["8080:80".into(), "8080:80/udp".into()]).is_ok());
    }

    #[test]
    fn a_nat_vm_gets_a_free_slash_30_from_its_pid() {
        assert_eq!(block_addresses(0), ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap()));
        assert_eq!(block_addresses(1234), ("100.64.19.73".parse().unwrap(), "100.64.19.74".parse().unwrap()));
        assert_eq!(block_addresses(NAT_BLOCKS - 1), ("100.127.255.253".parse().unwrap(), "100.127.255.254".parse().unwrap()));
        assert_eq!(block_addresses(NAT_BLOCKS + 3), block_addresses(3));
        let taken: Vec<Ipv4Addr> = vec!["100.64.19.74".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert_eq!(choose_block(1234, &taken), Some(block_addresses(1235)));
        assert_eq!(choose_block(1233, &taken), Some(block_addresses(1233)));
        assert_eq!(nat_mac(0x12_3456), [0x02, 0x50, 0x4c, 0x12, 0x34, 0x56]);
        assert_eq!(nat_table(&nat_tap(42)), "palisade_plsd42");
    }

    #[test]
    fn the_ruleset_dnats_published_ports_and_masquerades() {
        let nat = Nat {
            tap: "plsd42".into(),
            table: "palisade_plsd42".into(),
            host: "100.64.0.169".parse().unwrap(),
            guest: "100.64.0.170".parse().unwrap(),
            mac: nat_mac(42),
            publish: vec![parse_publish("18081:80").unwrap(), parse_publish("127.0.0.1:5353:53/udp").unwrap()],
        };
        let expected = "table ip palisade_plsd42 {
\tchain prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tfib daddr type local tcp dport 18081 dnat to 100.64.0.170:80
\t\tip daddr 127.0.0.1 udp dport 5353 dnat to 100.64.0.170:53
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tfib daddr type local tcp dport 18081 dnat to 100.64.0.170:80
\t\tip daddr 127.0.0.1 udp dport 5353 dnat to 100.64.0.170:53
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\toifname \"plsd42\" ip saddr 127.0.0.0/8 masquerade
\t\tip saddr 100.64.0.170 oifname != \"plsd42\" masquerade
\t}
}
";
        assert_eq!(nat.ruleset(), expected);
        let bare = Nat { publish: vec![], ..nat }.ruleset();
        assert!(bare.contains("priority -100; policy accept;\n\t}") && !bare.contains("dnat"), "{bare}");
    }

    #[test]
    fn the_sweep_finds_vmruns_tables_only() {
        let listing = "table ip palisade_plsd4242\ntable inet filter\ntable ip palisade_plsdx\ntable ip nat\ntable ip palisade_plsd7\n";
        assert_eq!(vmrun_tables(listing), [("palisade_plsd4242".to_string(), 4242), ("palisade_plsd7".to_string(), 7)]);
        assert_eq!(pid_of("plsd12", TAP_PREFIX), Some(12));
        assert_eq!(pid_of("plsd", TAP_PREFIX), None);
        assert_eq!(pid_of("tap0_plsd", TAP_PREFIX), None);
        assert!(!live_vmrun(std::process::id()), "this very process is no other vmrun");
    }

    #[test]
    fn guests_get_eth0_with_its_address_and_default_route() {
        let g = guest_spec(nat_mac(1), 1500, Some(("100.64.0.6".parse().unwrap(), 30)), Some("100.64.0.5".parse().unwrap()));
        assert_eq!(g.interfaces[0].name, "eth0");
        assert_eq!(g.interfaces[0].mac, "02:50:4c:00:00:01");
        assert_eq!(g.interfaces[0].addresses, ["100.64.0.6/30"]);
        assert_eq!(g.routes[0].destination, None);
        assert_eq!(g.routes[0].gateway.as_deref(), Some("100.64.0.5"));
        let bare = guest_spec(nat_mac(1), 1500, None, None);
        assert!(bare.interfaces[0].addresses.is_empty() && bare.routes.is_empty());
        let mut spec = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]}});
        use_guest_network_namespace(&mut spec);
        assert_eq!(spec["linux"]["namespaces"], serde_json::json!([{"type": "pid"}, {"type": "mount"}]));
    }
}
