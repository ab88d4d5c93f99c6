//! Masquerade binding against real kernel objects: tap, nftables table,
//! forwarding, and the DHCP server answering a fake guest on the tap.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use common::{msg_type, FakeGuest, Pod};
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use vm_binder::masquerade::ISTIO_PORTS;
use vm_binder::{bind, unbind, BindOptions, Vm};

fn vm(ports: &str) -> Result<Vm> {
    Ok(Vm::parse(&format!(
        r#"{{"metadata":{{"name":"masq","namespace":"test"}},
            "spec":{{"domain":{{"devices":{{"interfaces":[{{"name":"default","masquerade":{{}}{ports}}}]}}}},
                    "networks":[{{"name":"default","pod":{{}}}}]}}}}"#
    ))?)
}

fn opts(dir: &std::path::Path) -> BindOptions {
    let resolv = dir.join("resolv.conf");
    let _ = std::fs::write(
        &resolv,
        "nameserver 10.96.0.10\nsearch test.svc.cluster.local svc.cluster.local\n",
    );
    BindOptions {
        resolv_conf: resolv,
        ..Default::default()
    }
}

/// `nft -j list table inet virtlink-default` in the pod, as text.
fn table(pod: &Pod) -> Result<String> {
    Ok(pod
        .pod
        .exec("nft", &["-j", "list", "table", "inet", "virtlink-default"])?)
}

#[test]
fn masquerade_listed_ports_dhcp_and_unbind() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let dir = tempfile::tempdir()?;
    let vm = vm(r#","ports":[{"port":8080},{"port":15001},{"port":53,"protocol":"UDP"}]"#)?;
    let binding = bind(&vm, pod.pod.path(), &[], &opts(dir.path()))?;
    let iface = &binding.interfaces[0];
    assert_eq!(
        iface.ip.map(|i| i.to_string()).as_deref(),
        Some("10.0.2.2/24")
    );
    assert_eq!(iface.tap.as_deref(), Some("tap0"));
    assert_eq!(iface.mac, vm_binder::Mac::stable("test", "masq", "default"));

    // The tap is the guest's gateway.
    assert_eq!(pod.pod.addrs4("tap0"), vec!["10.0.2.1/24".to_string()]);
    assert_eq!(
        pod.pod
            .exec("cat", &["/proc/sys/net/ipv4/ip_forward"])?
            .trim(),
        "1"
    );

    // The ruleset as the kernel holds it.
    let json: serde_json::Value = serde_json::from_str(&table(&pod)?)?;
    let text = json.to_string();
    assert!(text.contains("\"dnat\""), "{text}");
    assert!(text.contains("10.0.2.2"), "{text}");
    assert!(text.contains("8080") && text.contains("53"), "{text}");
    assert!(text.contains("\"masquerade\""), "{text}");
    for p in ISTIO_PORTS {
        assert!(
            !text.contains(&p.to_string()),
            "Istio port {p} forwarded: {text}"
        );
    }

    // A guest on the tap gets 10.0.2.2 with everything else.
    let mut guest = FakeGuest::attach(pod.pod.path(), "tap0", iface.mac.octets())?;
    let (src, offer) = guest.exchange(
        &guest.dhcp_message(MessageType::Discover, 0x5151, None),
        Duration::from_secs(10),
    )?;
    assert_eq!(src, Ipv4Addr::new(10, 0, 2, 1));
    assert_eq!(msg_type(&offer), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
    let o = offer.opts();
    let gw = Ipv4Addr::new(10, 0, 2, 1);
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![gw]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 96, 0, 10
        )]))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1450))
    );
    assert_eq!(
        o.get(OptionCode::ClasslessStaticRoute),
        Some(&DhcpOption::ClasslessStaticRoute(vec![(
            "0.0.0.0/0".parse()?,
            gw
        )]))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("masq".into()))
    );
    assert!(
        matches!(o.get(OptionCode::DomainSearch), Some(DhcpOption::DomainSearch(n)) if n.len() == 2)
    );
    let request = guest.dhcp_message(MessageType::Request, 0x5152, Some(offer.yiaddr()));
    let (_, ack) = guest.exchange(&request, Duration::from_secs(10))?;
    assert_eq!(msg_type(&ack), Some(MessageType::Ack));
    // Another MAC gets no answer.
    drop(guest);
    let mut stranger = FakeGuest::attach(pod.pod.path(), "tap0", [2, 9, 9, 9, 9, 9])?;
    let m = stranger.dhcp_message(MessageType::Discover, 0x5153, None);
    assert!(stranger.exchange(&m, Duration::from_secs(2)).is_err());
    drop(stranger);

    // Binding twice is harmless (the table is replaced, not duplicated).
    drop(binding);
    let again = bind(&vm, pod.pod.path(), &[], &opts(dir.path()))?;
    let json: serde_json::Value = serde_json::from_str(&table(&pod)?)?;
    let dnats = json.to_string().matches("\"dnat\"").count();
    assert_eq!(dnats, 2, "one TCP and one UDP rule: {json}");

    again.unbind(&vm, &[])?;
    assert!(table(&pod).is_err(), "table still there");
    assert!(pod.pod.link("tap0").is_none());
    unbind(&vm, pod.pod.path(), &[])?;
    Ok(())
}

#[test]
fn masquerade_all_ports_excludes_istio() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let dir = tempfile::tempdir()?;
    let vm = vm("")?;
    let mut o = opts(dir.path());
    o.dhcp = false;
    let binding = bind(&vm, pod.pod.path(), &[], &o)?;
    assert!(binding.dhcp_devices().is_empty());
    let text = table(&pod)?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let flat = json.to_string();
    assert!(flat.contains("\"!=\""), "{flat}");
    for p in ISTIO_PORTS {
        assert!(
            flat.contains(&p.to_string()),
            "Istio port {p} not excluded: {flat}"
        );
    }
    assert!(flat.contains(common::POD_IP), "{flat}");
    binding.unbind(&vm, &[])?;
    Ok(())
}
