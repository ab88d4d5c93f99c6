//! Bridge binding against real kernel objects: a pod namespace whose eth0 is
//! a veth to a "network" namespace.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use common::{msg_type, FakeGuest, Pod, NET_IP, POD_IP};
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use vm_binder::{bind, unbind, BindOptions, BindingKind, Vm};

const VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: bridged, namespace: test}
spec:
  template:
    spec:
      domain:
        devices:
          interfaces:
            - name: default
              bridge: {}
      networks:
        - name: default
          pod: {}
"#;

fn opts(dir: &std::path::Path) -> BindOptions {
    let resolv = dir.join("resolv.conf");
    let _ = std::fs::write(
        &resolv,
        "nameserver 10.96.0.10\nsearch test.svc.cluster.local\n",
    );
    BindOptions {
        resolv_conf: resolv,
        ..Default::default()
    }
}

fn master(pod: &Pod, link: &str) -> Option<String> {
    pod.pod
        .link(link)
        .and_then(|l| l["master"].as_str().map(str::to_string))
}

fn mac_of(pod: &Pod, link: &str) -> String {
    pod.pod
        .link(link)
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn bridge_bind_unbind_idempotent_and_dhcp() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let dir = tempfile::tempdir()?;
    let vm = Vm::parse(VM)?;
    let original_mac = mac_of(&pod, "eth0");
    assert!(!original_mac.is_empty());

    let binding = bind(&vm, pod.pod.path(), &[], &opts(dir.path()))?;
    let iface = &binding.interfaces[0];
    assert_eq!(iface.binding, BindingKind::Bridge);
    assert_eq!(iface.tap.as_deref(), Some("tap0"));
    assert_eq!(
        iface.mac.to_string(),
        original_mac,
        "guest gets the pod's MAC"
    );
    assert_eq!(
        iface.ip.map(|i| i.to_string()).as_deref(),
        Some("10.99.0.5/24")
    );
    assert_eq!(
        iface.gateway.map(|g| g.to_string()).as_deref(),
        Some(NET_IP)
    );
    assert!(iface.qemu_args.concat().contains("ifname=tap0"));
    assert!(iface
        .qemu_args
        .concat()
        .contains(&format!("mac={original_mac}")));
    assert_eq!(binding.dhcp_devices(), vec!["k6t-eth0"]);

    // Kernel state: bridge, tap and eth0 are ports, eth0 lost IP and MAC.
    let br = pod.pod.link("k6t-eth0").expect("bridge exists");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(master(&pod, "tap0").as_deref(), Some("k6t-eth0"));
    assert_eq!(master(&pod, "eth0").as_deref(), Some("k6t-eth0"));
    assert_ne!(mac_of(&pod, "eth0"), original_mac);
    assert!(
        pod.pod.addrs4("eth0").is_empty(),
        "{:?}",
        pod.pod.addrs4("eth0")
    );
    assert_eq!(pod.pod.link("tap0").unwrap()["mtu"], 1450);

    // The guest, on tap0, gets the pod's address by DHCP through the bridge.
    let mut guest = FakeGuest::attach(pod.pod.path(), "tap0", iface.mac.octets())?;
    let discover = guest.dhcp_message(MessageType::Discover, 0xb1d9e, None);
    let (_, offer) = guest.exchange(&discover, Duration::from_secs(10))?;
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), POD_IP.parse::<Ipv4Addr>()?);
    let gw: Ipv4Addr = NET_IP.parse()?;
    assert_eq!(
        offer.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![gw]))
    );
    assert_eq!(
        offer.opts().get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1450))
    );
    match offer.opts().get(OptionCode::ClasslessStaticRoute) {
        Some(DhcpOption::ClasslessStaticRoute(r)) => {
            assert!(r.contains(&("10.96.0.0/12".parse()?, gw)), "{r:?}");
            assert!(r.contains(&("0.0.0.0/0".parse()?, gw)), "{r:?}");
        }
        other => panic!("no routes: {other:?}"),
    }
    drop(guest);

    // Binding again (e.g. after a binder restart) changes nothing.
    let bridged_mac = mac_of(&pod, "eth0");
    drop(binding);
    let again = bind(&vm, pod.pod.path(), &[], &opts(dir.path()))?;
    assert_eq!(again.interfaces[0].mac.to_string(), original_mac);
    assert_eq!(
        again.interfaces[0].ip.map(|i| i.to_string()).as_deref(),
        Some("10.99.0.5/24")
    );
    assert_eq!(mac_of(&pod, "eth0"), bridged_mac);
    assert_eq!(master(&pod, "eth0").as_deref(), Some("k6t-eth0"));

    // Unbind restores eth0 and removes bridge and tap; twice is fine.
    again.unbind(&vm, &[])?;
    unbind(&vm, pod.pod.path(), &[])?;
    assert!(pod.pod.link("k6t-eth0").is_none());
    assert!(pod.pod.link("tap0").is_none());
    assert_eq!(master(&pod, "eth0"), None);
    assert_eq!(mac_of(&pod, "eth0"), original_mac);
    assert_eq!(pod.pod.addrs4("eth0"), vec!["10.99.0.5/24".to_string()]);
    let routes = pod.pod.ip(&["route"])?;
    assert!(
        routes.contains(&format!("default via {NET_IP} dev eth0")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("10.96.0.0/12 via {NET_IP} dev eth0")),
        "{routes}"
    );
    // And the pod reaches the network again.
    pod.pod.exec("ping", &["-c", "1", "-W", "2", NET_IP])?;
    Ok(())
}

#[test]
fn bridge_bind_names_missing_interface() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let ns = common::Netns::with_prefix("vbx")?;
    let vm = Vm::parse(VM)?;
    let dir = tempfile::tempdir()?;
    let err = bind(&vm, ns.path(), &[], &opts(dir.path())).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(chain.contains("interface default"), "{chain}");
    assert!(chain.contains("eth0 not found"), "{chain}");
    // Nothing left behind by the failed bind.
    assert!(ns.link("k6t-eth0").is_none());
    assert!(ns.link("tap0").is_none());
    Ok(())
}
