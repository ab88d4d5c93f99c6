//! The rtnetlink wrapper against the real kernel, in namespaces of its own:
//! every request once, and the idempotent ones twice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;

use ipnet::IpNet;
use netattach::netlink::{Netlink, Route4};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A named network namespace deleted on drop.
struct Ns {
    name: String,
    path: PathBuf,
}

impl Ns {
    fn new(tag: &str) -> Result<Self> {
        let name = format!("nl{tag}{}", std::process::id() % 100_000);
        let path = netattach::netns::create(&name)?;
        Ok(Self { name, path })
    }

    /// `ip ARGS` inside the namespace, its stdout.
    fn ip(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip"])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netattach::netns::delete(&self.name);
    }
}

#[test]
fn links_addresses_and_routes() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root (CAP_NET_ADMIN) for network namespaces");
        return Ok(());
    }
    let ns = Ns::new("a")?;
    let other = Ns::new("b")?;
    let other_path = other.path.clone();
    netattach::netns::run_in(&ns.path, move || {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let n = Netlink::new().unwrap();

        // Absent links are `None`, deleting them is fine.
        assert_eq!(n.link("nothere").unwrap(), None);
        assert_eq!(n.link_by_index(99_999).unwrap(), None);
        n.del_link("nothere").unwrap();

        // A veth pair; a second one with the same names is an error.
        n.add_veth("va", "vb", 1400).unwrap();
        let e = n.add_veth("va", "vb", 1400).unwrap_err();
        assert_eq!(e.to_string(), "create veth pair va/vb");
        let va = n.link("va").unwrap().unwrap();
        assert_eq!(va.kind.as_deref(), Some("veth"));
        assert_eq!(va.mtu, Some(1400));
        assert!(!va.up);
        assert_eq!(n.link_by_index(va.index).unwrap(), Some(va.clone()));
        n.set_up(&va).unwrap();
        let va = n.link("va").unwrap().unwrap();
        assert!(va.up);

        // MAC, MTU and alias are written once and then match.
        let mac = [0x02, 0, 0, 0, 0, 0x0a];
        n.set_mac(&va, mac).unwrap();
        n.set_mtu(&va, 1300).unwrap();
        n.set_alias(&va, "state").unwrap();
        let va = n.link("va").unwrap().unwrap();
        assert_eq!(va.mac, Some(mac));
        assert_eq!(va.mtu, Some(1300));
        assert_eq!(va.alias.as_deref(), Some("state"));
        n.set_mac(&va, mac).unwrap();
        n.set_mtu(&va, 1300).unwrap();
        n.set_alias(&va, "state").unwrap();

        // Addresses: adding twice is fine, removing takes it away.
        for a in ["10.9.0.1/24", "fd00:9::1/64"] {
            n.add_addr(&va, net(a)).unwrap();
            n.add_addr(&va, net(a)).unwrap();
        }
        let addrs = n.global_addrs(va.index).unwrap();
        assert!(addrs.contains(&net("10.9.0.1/24")), "{addrs:?}");
        assert!(addrs.contains(&net("fd00:9::1/64")), "{addrs:?}");
        n.del_addr(&va, net("fd00:9::1/64")).unwrap();
        n.del_addr(&va, net("fd00:9::1/64")).unwrap();
        assert!(!n
            .global_addrs(va.index)
            .unwrap()
            .contains(&net("fd00:9::1/64")));

        // IPv4 routes: on-link and via a gateway, added twice; the kernel's
        // own route for the address is not listed.
        let on_link = Route4 {
            dst: "10.9.1.0/24".parse().unwrap(),
            gateway: None,
        };
        let via = Route4 {
            dst: "10.9.2.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 9, 0, 2)),
        };
        for r in [on_link, via, on_link, via] {
            n.add_route4(&va, r).unwrap();
        }
        let mut routes = n.routes4(va.index).unwrap();
        routes.sort_by_key(|r| r.dst);
        assert_eq!(routes, vec![on_link, via]);

        // Default routes of both families, then those of one family go.
        n.add_default_route(&va, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)))
            .unwrap();
        n.add_default_route(&va, IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)))
            .unwrap();
        assert!(n
            .routes4(va.index)
            .unwrap()
            .iter()
            .any(|r| r.dst.prefix_len() == 0));
        n.del_default_routes(false).unwrap();
        assert!(!n
            .routes4(va.index)
            .unwrap()
            .iter()
            .any(|r| r.dst.prefix_len() == 0));
        // (`ip` runs in this thread's namespace.)
        let v6 = Command::new("ip")
            .args(["-6", "route", "show", "default"])
            .output()
            .unwrap();
        let v6 = String::from_utf8_lossy(&v6.stdout);
        assert!(v6.contains("fe80::2 dev va"), "{v6}");
        n.del_default_routes(true).unwrap();

        // A bridge (twice), a port attached and detached, and its local FDB
        // entry for a MAC it never had.
        n.add_bridge("br9").unwrap();
        n.add_bridge("br9").unwrap();
        let br = n.link("br9").unwrap().unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        let vb = n.link("vb").unwrap().unwrap();
        n.set_controller(&vb, Some(br.index)).unwrap();
        let vb = n.link("vb").unwrap().unwrap();
        assert_eq!(vb.controller, Some(br.index));
        n.set_controller(&vb, Some(br.index)).unwrap();
        n.del_local_fdb(&vb, [0x02, 0, 0, 0, 0, 0x0b]).unwrap();
        n.set_controller(&vb, None).unwrap();
        assert_eq!(n.link("vb").unwrap().unwrap().controller, None);

        // A collect-metadata VXLAN device; one that exists is kept.
        n.add_vxlan_external("vx9", 4799, Ipv4Addr::new(10, 9, 0, 1))
            .unwrap();
        n.add_vxlan_external("vx9", 4799, Ipv4Addr::new(10, 9, 0, 1))
            .unwrap();
        let vx = n.link("vx9").unwrap().unwrap();
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert!(vx.collect_metadata);
        assert!(!va.collect_metadata);

        // Rename + MAC + MTU in one request, then move one end away.
        n.add_veth("vc", "vd", 1500).unwrap();
        let vc = n.link("vc").unwrap().unwrap();
        let mac = [0x02, 0, 0, 0, 0, 0x0c];
        n.configure(&vc, "ve", Some(mac), 1280).unwrap();
        assert_eq!(n.link("vc").unwrap(), None);
        let ve = n.link("ve").unwrap().unwrap();
        assert_eq!((ve.mac, ve.mtu), (Some(mac), Some(1280)));
        n.configure(&ve, "ve", Some(mac), 1280).unwrap();
        n.move_to_netns("vd", &other_path).unwrap();
        assert_eq!(n.link("vd").unwrap(), None);
        let e = n
            .move_to_netns("ve", std::path::Path::new("/nonexistent/ns"))
            .unwrap_err();
        assert_eq!(e.to_string(), "open network namespace /nonexistent/ns");

        // Deleting twice is fine; the peer goes with it.
        n.del_link("va").unwrap();
        n.del_link("va").unwrap();
        assert_eq!(n.link("vb").unwrap(), None);
    })?;
    assert!(ns.ip(&["-6", "route", "show", "default"])?.is_empty());
    assert!(other.ip(&["link", "show", "vd"]).is_ok());
    Ok(())
}
