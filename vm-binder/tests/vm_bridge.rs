//! A real guest (QEMU/TCG, busybox, vm-tests harness) behind the bridge
//! binding: it gets the pod's own address and MAC from our DHCP server, talks
//! to the network behind the pod's eth0 at layer 2, and is reached at the
//! pod's address from that network. QEMU runs with exactly the arguments
//! `bind` produced; after unbind the pod has its address back.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{Pod, NET_IP, POD_IP};

#[test]
fn guest_takes_over_the_pod_address_on_the_bridge() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let (vm, binding, guest, _dir) = common::bind_and_boot(
        &pod,
        r#"{"metadata":{"name":"guest2","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","bridge":{}}]}},
              "networks":[{"name":"default","pod":{}}]}}"#,
        "vbbr",
    )?;
    let mac = binding.interfaces[0].mac.to_string();

    // The guest holds what the network gave the pod: address, MAC, gateway.
    let addr = guest.run_ok("ip -4 addr show eth0", Duration::from_secs(20))?;
    assert!(addr.contains(&format!("inet {POD_IP}/24")), "{addr}");
    let link = guest.run_ok("cat /sys/class/net/eth0/address", Duration::from_secs(20))?;
    assert!(link.contains(&mac), "guest MAC {link} != {mac}");
    let routes = guest.run_ok("ip route", Duration::from_secs(20))?;
    assert!(
        routes.contains(&format!("default via {NET_IP}")),
        "{routes}"
    );

    // Both directions across the in-pod bridge, no translation.
    guest.run_ok(&format!("ping -c 2 -W 5 {NET_IP}"), Duration::from_secs(30))?;
    pod.net
        .exec("ping", &["-c", "2", "-W", "5", POD_IP])
        .context("the network reaches the guest at the pod's address")?;

    drop(guest);
    binding.unbind(&vm, &[])?;
    pod.pod
        .exec("ping", &["-c", "1", "-W", "5", NET_IP])
        .context("the pod has its address back after unbind")?;
    Ok(())
}
