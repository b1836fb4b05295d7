//! Tests against the kernel, each in a private network namespace of its own thread, with
//! `ip` (which inherits the thread's namespace) as the reference.

use std::net::IpAddr;

use crate::testing::{in_netns, ip, ip_json};
use crate::{Netlink, Route, IFA_F_NODAD, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE};

fn ipaddr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn reads_what_ip_set() {
    in_netns(|| {
        ip("link add v0 type veth peer name v1");
        ip("link set v0 address 02:00:00:00:00:01 mtu 1400 up");
        ip("link set v1 up");
        ip("addr add 10.0.0.2/24 dev v0");
        ip("addr add fd00::2/64 dev v0 nodad");
        ip("route add default via 10.0.0.1");
        ip("route add 10.1.0.0/16 via 10.0.0.1 mtu 1300");
        ip("-6 route add default via fd00::1");

        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").unwrap();
        assert!(lo.loopback && !lo.up && lo.kind.is_none(), "{lo:?}");
        let v0 = links.iter().find(|l| l.name == "v0").unwrap();
        assert_eq!(v0.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(v0.mtu, 1400);
        assert!(v0.up && !v0.loopback);
        assert_eq!(v0.kind.as_deref(), Some("veth"));
        let v1 = links.iter().find(|l| l.name == "v1").unwrap();
        assert_eq!((v1.mtu, v1.kind.as_deref()), (1500, Some("veth")));

        let addrs = nl.addresses().unwrap();
        let mine: Vec<_> = addrs.iter().filter(|a| a.index == v0.index).collect();
        assert!(mine.iter().any(|a| a.addr == ipaddr("10.0.0.2") && a.prefix_len == 24 && a.scope == RT_SCOPE_UNIVERSE), "{mine:?}");
        assert!(mine.iter().any(|a| a.addr == ipaddr("fd00::2") && a.prefix_len == 64), "{mine:?}");
        assert!(mine.iter().any(|a| a.addr.is_ipv6() && a.scope == RT_SCOPE_LINK), "link-local: {mine:?}");

        let routes = nl.routes().unwrap();
        let find = |dst: Option<(&str, u8)>, ipv6: bool| {
            routes
                .iter()
                .find(|r| r.ipv6 == ipv6 && r.dst == dst.map(|(a, l)| (ipaddr(a), l)))
                .unwrap_or_else(|| panic!("{dst:?} in {routes:#?}"))
        };
        let default = find(None, false);
        assert_eq!((default.gateway, default.oif, default.table), (Some(ipaddr("10.0.0.1")), Some(v0.index), crate::RT_TABLE_MAIN));
        let prefix = find(Some(("10.0.0.0", 24)), false);
        assert_eq!((prefix.gateway, prefix.scope, prefix.protocol), (None, RT_SCOPE_LINK, crate::RTPROT_KERNEL));
        assert_eq!(prefix.src, Some(ipaddr("10.0.0.2")));
        let mtu = find(Some(("10.1.0.0", 16)), false);
        assert_eq!((mtu.gateway, mtu.mtu), (Some(ipaddr("10.0.0.1")), Some(1300)));
        let default6 = find(None, true);
        assert_eq!((default6.gateway, default6.oif), (Some(ipaddr("fd00::1")), Some(v0.index)));
        assert!(routes.iter().all(|r| r.table == crate::RT_TABLE_MAIN));
    });
}

#[test]
fn sets_what_ip_reads() {
    in_netns(|| {
        ip("link add v0 type veth peer name v1");
        ip("link set v1 up");
        let mut nl = Netlink::open().unwrap();
        let index = nl.links().unwrap().into_iter().find(|l| l.name == "v0").unwrap().index;

        nl.set_link(index, Some("eth7"), Some(1400), None).unwrap();
        nl.set_link(index, None, None, Some(true)).unwrap();
        let link = &ip_json("link show eth7")[0];
        assert_eq!(link["mtu"], 1400);
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{link}");
        // Taking the name of another interface is refused, and the error says what was tried.
        let err = nl.set_link(index, Some("v1"), None, None).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("setting interface {index} name v1: File exists (os error 17)")), "{text}");
        assert!(err.is_exists(), "{err}");
        assert!(nl.set_link(9999, None, Some(1400), None).is_err());
        assert!(nl.set_link(index, Some("much-too-long-name"), None, None).is_err());

        nl.add_address(index, ipaddr("10.0.0.2"), 24).unwrap();
        nl.add_address_flags(index, ipaddr("fd00::2"), 64, IFA_F_NODAD).unwrap();
        let err = nl.add_address(index, ipaddr("10.0.0.2"), 24).unwrap_err();
        assert!(err.is_exists());
        // The kernel's extended ack, when it gives one, follows in parentheses.
        let text = err.to_string();
        assert!(text.starts_with(&format!("adding 10.0.0.2/24 to interface {index}: File exists (os error 17)")), "{text}");
        assert!(nl.add_address(index, ipaddr("10.0.0.3"), 33).is_err());
        let addrs = &ip_json("addr show dev eth7")[0]["addr_info"];
        let has = |local: &str, len: u64| addrs.as_array().unwrap().iter().any(|a| a["local"] == local && a["prefixlen"] == len);
        assert!(has("10.0.0.2", 24) && has("fd00::2", 64), "{addrs}");

        let base = Route {
            dst: None,
            gateway: None,
            oif: Some(index),
            table: 0,
            protocol: 0,
            scope: RT_SCOPE_UNIVERSE,
            mtu: None,
            src: None,
            ipv6: false,
        };
        nl.add_route(&Route { gateway: Some(ipaddr("10.0.0.1")), ..base.clone() }).unwrap();
        nl.add_route(&Route {
            dst: Some((ipaddr("10.2.0.0"), 16)),
            scope: RT_SCOPE_LINK,
            mtu: Some(1300),
            src: Some(ipaddr("10.0.0.2")),
            ..base.clone()
        })
        .unwrap();
        nl.add_route(&Route { dst: Some((ipaddr("fd01::"), 64)), gateway: Some(ipaddr("fd00::1")), ipv6: true, ..base.clone() }).unwrap();
        // The kernel's own prefix route exists already.
        let err = nl.add_route(&Route { dst: Some((ipaddr("10.0.0.0"), 24)), scope: RT_SCOPE_LINK, ..base.clone() }).unwrap_err();
        assert!(err.is_exists(), "{err}");
        // Mixed families are refused before the kernel sees them.
        let err = nl.add_route(&Route { gateway: Some(ipaddr("fd00::1")), ..base.clone() }).unwrap_err();
        assert!(matches!(err, crate::NetlinkError::Invalid(_)), "{err}");
        // An unreachable gateway: the kernel's reason is in the error.
        let err = nl.add_route(&Route { dst: Some((ipaddr("10.9.0.0"), 16)), gateway: Some(ipaddr("192.168.99.1")), ..base.clone() });
        assert!(err.is_err());
        eprintln!("unreachable gateway: {}", err.unwrap_err());

        let routes = ip_json("route show");
        let routes = routes.as_array().unwrap();
        let route = |dst: &str| routes.iter().find(|r| r["dst"] == dst).unwrap_or_else(|| panic!("{dst} in {routes:?}"));
        assert_eq!(route("default")["gateway"], "10.0.0.1");
        assert_eq!(route("default")["dev"], "eth7");
        let r = route("10.2.0.0/16");
        assert_eq!(
            (&r["dev"], &r["scope"], &r["prefsrc"], &r["metrics"][0]["mtu"]),
            (&"eth7".into(), &"link".into(), &"10.0.0.2".into(), &1300.into())
        );
        let routes6 = ip_json("-6 route show");
        let r6 = routes6.as_array().unwrap().iter().find(|r| r["dst"] == "fd01::/64").unwrap_or_else(|| panic!("{routes6}"));
        assert_eq!((&r6["gateway"], &r6["dev"]), (&"fd00::1".into(), &"eth7".into()));

        // What was written reads back the same way.
        let back = nl.routes().unwrap();
        assert!(back.iter().any(|r| r.dst == Some((ipaddr("10.2.0.0"), 16)) && r.mtu == Some(1300) && r.oif == Some(index)), "{back:?}");
    });
}

#[test]
fn many_interfaces_dump_across_datagrams() {
    in_netns(|| {
        for i in 0..40 {
            ip(&format!("link add a{i} type veth peer name b{i}"));
        }
        let mut nl = Netlink::open().unwrap();
        // Several dumps on one socket: sequence numbers keep them apart.
        for _ in 0..3 {
            let links = nl.links().unwrap();
            assert_eq!(links.len(), 81, "lo and 40 pairs");
        }
    });
}
