//! A real guest (QEMU/TCG, busybox, vm-tests harness) behind the masquerade
//! binding: it gets 10.0.2.2 from our DHCP server with udhcpc, reaches the
//! network namespace behind the pod's eth0, and is reached through the DNAT
//! of a listed port. QEMU runs with exactly the arguments `bind` produced.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Pod, NET_IP, POD_IP};

#[test]
fn guest_gets_dhcp_address_and_traffic_flows() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let (vm, binding, guest, _dir) = common::bind_and_boot(
        &pod,
        r#"{"metadata":{"name":"guest1","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[
                {"name":"default","masquerade":{},"ports":[{"port":5201}]}]}},
              "networks":[{"name":"default","pod":{}}]}}"#,
        "vbvm",
    )?;

    let addr = guest.run_ok("ip -4 addr show eth0", Duration::from_secs(20))?;
    assert!(addr.contains("inet 10.0.2.2/24"), "{addr}");
    let mac = binding.interfaces[0].mac.to_string();
    let link = guest.run_ok("cat /sys/class/net/eth0/address", Duration::from_secs(20))?;
    assert!(link.contains(&mac), "guest MAC {link} != {mac}");
    let routes = guest.run_ok("ip route", Duration::from_secs(20))?;
    assert!(routes.contains("default via 10.0.2.1"), "{routes}");

    // Outbound: through the tap, masqueraded to the pod IP, to the network.
    guest.run_ok(&format!("ping -c 2 -W 5 {NET_IP}"), Duration::from_secs(30))?;

    // Inbound: a connection to the pod IP's listed port reaches the guest.
    guest.run_ok(
        "iperf3 -s -1 -p 5201 >/dev/null 2>&1 &",
        Duration::from_secs(20),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let out = pod
        .net
        .exec("iperf3", &["-c", POD_IP, "-p", "5201", "-t", "1", "-J"])?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "no data through DNAT: {out}");

    drop(guest);
    binding.unbind(&vm, &[])?;
    Ok(())
}
