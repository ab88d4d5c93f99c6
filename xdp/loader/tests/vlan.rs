//! 802.1Q tagging in TC: three namespaces on a plain bridge (no VLAN
//! filtering, no 802.1Q devices); only the programs separate the VLANs.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{veth, Netns, PING_WAIT};
use virtlink_xdp::vlan::attach_vlan;

#[test]
fn same_vlan_talks_other_vlan_does_not_and_frames_carry_the_tag() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let wire = Netns::with_prefix("xvw")?;
    wire.ip(&["link", "add", "br0", "type", "bridge"])?;
    wire.ip(&["link", "set", "br0", "up"])?;
    let mut hosts = Vec::new();
    for (i, vid) in [(1u8, 100u16), (2, 100), (3, 200)] {
        let ns = Netns::with_prefix("xvh")?;
        let port = format!("w{i}");
        veth(&wire, &port, &ns, "eth0")?;
        wire.ip(&["link", "set", &port, "master", "br0"])?;
        ns.ip(&["addr", "add", &format!("192.168.50.{i}/24"), "dev", "eth0"])?;
        let vlan = ns.enter(move || attach_vlan("eth0", vid))??;
        hosts.push((ns, vlan));
    }
    let (a, b, c) = (&hosts[0].0, &hosts[1].0, &hosts[2].0);

    // Capture on a's bridge port while a pings b.
    let dump = wire
        .command("timeout")
        .args(["5", "tcpdump"])
        .args(["-i", "w1", "-e", "-nn", "-c", "2", "vlan", "and", "icmp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run tcpdump")?;
    std::thread::sleep(Duration::from_millis(700));
    let same = a.ping("192.168.50.2", 1, PING_WAIT, &[]);
    let out = dump.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(same, "same VLAN: no answer");
    assert!(
        text.contains("vlan 100"),
        "no 802.1Q tag on the wire: {text}"
    );

    assert!(
        !a.ping("192.168.50.3", 1, PING_WAIT, &[]),
        "VLAN 100 reached VLAN 200"
    );
    assert!(
        !c.ping("192.168.50.2", 1, PING_WAIT, &[]),
        "VLAN 200 reached VLAN 100"
    );
    assert!(b.ping("192.168.50.1", 1, PING_WAIT, &[]));

    // Dropping the handles detaches: untagged frames flow between a and c.
    let (namespaces, vlans): (Vec<Netns>, Vec<_>) = hosts.into_iter().unzip();
    drop(vlans);
    // (a's neighbour entry for c failed above: allow its re-resolution.)
    assert!(
        (0..3).any(|_| namespaces[0].ping("192.168.50.3", 1, PING_WAIT, &[])),
        "no untagged traffic after detach"
    );
    Ok(())
}

#[test]
fn vlan_ids_are_checked() {
    assert!(attach_vlan("lo", 0).is_err());
    assert!(attach_vlan("lo", 4095).is_err());
}
