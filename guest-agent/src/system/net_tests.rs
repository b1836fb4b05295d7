//! Tests of [`super::configure`]: validation alone, and the real thing in a private network
//! namespace (as root), checked with `ip`.

use palisade_protocol::{InterfaceSpec, NetworkSpec, RouteSpec};
use serde_json::Value;

use super::{configure, validate, NetError};
use palisade_netlink::testing::{in_netns, ip, ip_json};

fn iface(mac: &str, name: &str, mtu: u32, addresses: &[&str]) -> InterfaceSpec {
    InterfaceSpec { mac: mac.into(), name: name.into(), mtu, addresses: addresses.iter().map(|a| a.to_string()).collect() }
}

fn route(destination: Option<&str>, gateway: Option<&str>, interface: &str) -> RouteSpec {
    RouteSpec {
        destination: destination.map(Into::into),
        gateway: gateway.map(Into::into),
        interface: interface.into(),
        mtu: None,
        source: None,
        scope_link: gateway.is_none(),
    }
}

fn spec() -> NetworkSpec {
    NetworkSpec {
        interfaces: vec![
            iface("02:00:00:00:00:01", "eth0", 1400, &["10.0.0.2/24", "fd00::2/64"]),
            iface("02:00:00:00:00:02", "eth1", 1500, &["10.3.0.2/24"]),
        ],
        routes: vec![
            // Listed before the routes that make their gateways reachable: configure
            // adds the on-link routes first.
            route(None, Some("10.0.0.1"), "eth0"),
            RouteSpec { mtu: Some(1300), ..route(Some("10.1.0.0/16"), Some("10.0.0.1"), "eth0") },
            route(Some("fd01::/64"), Some("fd00::1"), "eth0"),
            // The kernel's prefix route of 10.0.0.2/24, as the caller's namespace lists it.
            RouteSpec { source: Some("10.0.0.2".into()), ..route(Some("10.0.0.0/24"), None, "eth0") },
            route(Some("10.2.0.0/16"), None, "eth1"),
        ],
    }
}

#[test]
fn configure_sets_up_interfaces_found_by_mac() {
    in_netns(|| {
        // Guest interfaces whose names are the other way round from what the spec wants.
        ip("link add eth1 type veth peer name p1");
        ip("link set eth1 address 02:00:00:00:00:01");
        ip("link add eth0 type veth peer name p2");
        ip("link set eth0 address 02:00:00:00:00:02 up");
        ip("link set p1 up");
        ip("link set p2 up");

        let spec = spec();
        configure(&spec).unwrap();
        // Again: everything exists, nothing fails.
        configure(&spec).unwrap();

        let eth0 = &ip_json("addr show dev eth0")[0];
        assert_eq!(eth0["address"], "02:00:00:00:00:01");
        assert_eq!(eth0["mtu"], 1400);
        assert!(eth0["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{eth0}");
        let has = |link: &Value, local: &str, len: u64| {
            link["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == local && a["prefixlen"] == len)
        };
        assert!(has(eth0, "10.0.0.2", 24) && has(eth0, "fd00::2", 64), "{eth0}");
        let eth1 = &ip_json("addr show dev eth1")[0];
        assert_eq!((&eth1["address"], &eth1["mtu"]), (&"02:00:00:00:00:02".into(), &1500.into()));
        assert!(has(eth1, "10.3.0.2", 24), "{eth1}");

        let routes = ip_json("route show");
        let routes = routes.as_array().unwrap();
        let find = |dst: &str| routes.iter().find(|r| r["dst"] == dst).unwrap_or_else(|| panic!("{dst} in {routes:?}")).clone();
        let default = find("default");
        assert_eq!((&default["gateway"], &default["dev"]), (&"10.0.0.1".into(), &"eth0".into()));
        let via = find("10.1.0.0/16");
        assert_eq!((&via["gateway"], &via["metrics"][0]["mtu"]), (&"10.0.0.1".into(), &1300.into()));
        let link = find("10.2.0.0/16");
        assert_eq!((&link["dev"], &link["scope"]), (&"eth1".into(), &"link".into()));
        let routes6 = ip_json("-6 route show");
        let r6 = routes6.as_array().unwrap().iter().find(|r| r["dst"] == "fd01::/64").unwrap_or_else(|| panic!("{routes6}")).clone();
        assert_eq!((&r6["gateway"], &r6["dev"]), (&"fd00::1".into(), &"eth0".into()));
    });
}

#[test]
fn configure_errors_name_the_interface_or_route() {
    in_netns(|| {
        ip("link add x0 type veth peer name x1");
        ip("link set x0 address 02:00:00:00:00:01");
        let err = configure(&NetworkSpec { interfaces: vec![iface("02:00:00:00:00:09", "eth0", 1500, &[])], routes: vec![] }).unwrap_err();
        assert!(matches!(err, NetError::NoSuchInterface { .. }));
        assert_eq!(err.to_string(), "interface eth0 (02:00:00:00:00:09): no guest interface has this MAC");

        // A gateway nothing makes reachable: the kernel refuses, the error names the route.
        let spec = NetworkSpec {
            interfaces: vec![iface("02:00:00:00:00:01", "eth0", 1500, &["10.0.0.2/24"])],
            routes: vec![route(Some("10.9.0.0/16"), Some("192.168.7.1"), "eth0")],
        };
        let err = configure(&spec).unwrap_err();
        assert!(err.to_string().starts_with("route 10.9.0.0/16 via 192.168.7.1 dev eth0: adding route"), "{err}");
    });
}

#[test]
fn invalid_specs_are_refused_before_anything_changes() {
    let check = |spec: NetworkSpec, expected: &str| {
        let err = validate(&spec).unwrap_err();
        assert!(matches!(err, NetError::Invalid(_)), "{err}");
        assert!(err.to_string().contains(expected), "{err} (expected {expected:?})");
    };
    let one = |i: InterfaceSpec| NetworkSpec { interfaces: vec![i], routes: vec![] };
    let good = || iface("02:00:00:00:00:01", "eth0", 1500, &["10.0.0.2/24"]);
    assert!(validate(&spec()).is_ok());
    check(one(InterfaceSpec { name: "a-name-of-16-byt".into(), ..good() }), "not a valid interface name");
    check(one(InterfaceSpec { name: "".into(), ..good() }), "not a valid interface name");
    check(one(InterfaceSpec { name: "a/b".into(), ..good() }), "not a valid interface name");
    check(one(InterfaceSpec { mac: "02:00:00:00:00".into(), ..good() }), "MAC");
    check(one(InterfaceSpec { mtu: 67, ..good() }), "MTU 67");
    check(one(InterfaceSpec { mtu: 65536, ..good() }), "MTU 65536");
    check(one(InterfaceSpec { addresses: vec!["10.0.0.2".into()], ..good() }), "\"10.0.0.2\" is not an address with a prefix");
    check(one(InterfaceSpec { addresses: vec!["10.0.0.2/33".into()], ..good() }), "10.0.0.2/33");
    check(one(InterfaceSpec { addresses: vec!["fd00::1/64".into(); 65], ..good() }), "65 addresses");
    check(NetworkSpec { interfaces: vec![good(), good()], routes: vec![] }, "named twice");
    check(NetworkSpec { interfaces: vec![good(), InterfaceSpec { name: "eth1".into(), ..good() }], routes: vec![] }, "also another");
    let many = (0..17).map(|i| iface(&format!("02:00:00:00:00:{i:02x}"), &format!("eth{i}"), 1500, &[])).collect();
    check(NetworkSpec { interfaces: many, routes: vec![] }, "17 interfaces");
    let with_route = |r: RouteSpec| NetworkSpec { interfaces: vec![good()], routes: vec![r] };
    check(with_route(route(None, Some("10.0.0.1"), "eth9")), "route default via 10.0.0.1 dev eth9: interface \"eth9\" is not one");
    check(with_route(route(Some("10.1.0.0/16"), Some("fd00::1"), "eth0")), "mixes IPv4 and IPv6");
    check(with_route(route(None, Some("nonsense"), "eth0")), "gateway \"nonsense\"");
    check(with_route(RouteSpec { mtu: Some(10), ..route(None, Some("10.0.0.1"), "eth0") }), "MTU 10");
    check(NetworkSpec { interfaces: vec![good()], routes: vec![route(None, Some("10.0.0.1"), "eth0"); 257] }, "257 routes");
}
