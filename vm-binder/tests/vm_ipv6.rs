//! A real guest behind the masquerade binding on a dual-stack pod: the
//! guest's dhcpcd (vm-tests guest, `virtlink.dhcp6=1`) takes fd10:0:2::2
//! from the binder's DHCPv6 server and its default route from the binder's
//! router advertisement, reaches the pod's network over IPv6 with the pod's
//! address, and is reached through the IPv6 DNAT of a listed port.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Pod, NET_IP6, POD_IP6};

#[test]
fn guest_gets_ipv6_by_ra_and_dhcpv6_and_traffic_flows() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    pod.add_ipv6()?;
    let (vm, binding, guest, _dir) = common::bind_and_boot_with(
        &pod,
        r#"{"metadata":{"name":"guest6","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[
                {"name":"default","masquerade":{},"ports":[{"port":5201}]}]}},
              "networks":[{"name":"default","pod":{}}]}}"#,
        "vbv6",
        "nameserver 10.96.0.10\nnameserver fd00::10\nsearch test.svc.cluster.local\n",
        &["virtlink.dhcp6=1"],
        |_| {},
    )?;
    assert_eq!(
        binding.interfaces[0].ip6.map(|n| n.to_string()).as_deref(),
        Some("fd10:0:2::2/120")
    );

    let t = Duration::from_secs(30);
    let addr = guest.run_ok("ip -6 addr show eth0 scope global", t)?;
    assert!(
        addr.contains("inet6 fd10:0:2::2/"),
        "{addr}\n{}",
        guest.console_output()
    );
    let routes = guest.run_ok("ip -6 route", t)?;
    assert!(
        routes.lines().any(|l| l.starts_with("default via fe80::")),
        "{routes}"
    );
    let resolv = guest.run_ok("cat /etc/resolv.conf", t)?;
    assert!(resolv.contains("nameserver fd00::10"), "{resolv}");

    // Outbound over IPv6, masqueraded to the pod's IPv6 address.
    guest.run_ok(
        &format!("ping -6 -c 2 -W 5 {NET_IP6}"),
        Duration::from_secs(40),
    )?;

    // Inbound: a connection to the pod's IPv6 address, listed port, reaches
    // the guest.
    guest.run_ok("iperf3 -s -1 -p 5201 >/dev/null 2>&1 &", t)?;
    std::thread::sleep(Duration::from_secs(2));
    let out = pod.net.exec(
        "iperf3",
        &["-6", "-c", POD_IP6, "-p", "5201", "-t", "1", "-J"],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "no data through the IPv6 DNAT: {out}");

    drop(guest);
    binding.unbind(&vm, &[])?;
    assert!(pod.pod.link("tap0").is_none(), "tap left behind");
    Ok(())
}
