//! Two tenants on one node with the same addresses: every pair inside a
//! tenant talks, nothing crosses (counted on the target interfaces), and
//! the drop counters say why. Spoofed MACs and IPs are dropped.

mod common;

use anyhow::Result;
use common::*;
use serde_json::json;
use virtlink_xdp::common::vnet::VnCounter;

#[test]
fn two_tenants_with_the_same_addresses_stay_apart() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 101, "10.10.0.0/24")?;
    cluster.network("blue", 102, "10.10.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let a1 = node.pod(json!({"name": "red"}))?;
    let a2 = node.pod(json!({"name": "red"}))?;
    let b1 = node.pod(json!({"name": "blue"}))?;
    let b2 = node.pod(json!({"name": "blue"}))?;
    let b3 = node.pod(json!({"name": "blue"}))?;
    // Same addresses in both tenants.
    assert_eq!((a1.ip.as_str(), a2.ip.as_str()), ("10.10.0.2", "10.10.0.3"));
    assert_eq!((b1.ip.as_str(), b2.ip.as_str()), ("10.10.0.2", "10.10.0.3"));
    assert_eq!(b3.ip, "10.10.0.4");

    let (b1_rx, b2_rx, b3_rx) = (b1.rx(), b2.rx(), b3.rx());
    assert!(a1.ping(&a2), "red 10.10.0.2 -> 10.10.0.3");
    assert!(a2.ping(&a1), "red 10.10.0.3 -> 10.10.0.2");
    // Nothing of red's traffic reached blue's pods with the same addresses.
    assert_eq!(
        (b1.rx(), b2.rx(), b3.rx()),
        (b1_rx, b2_rx, b3_rx),
        "red traffic reached blue"
    );
    let (a1_rx, a2_rx) = (a1.rx(), a2.rx());
    assert!(b1.ping(&b2), "blue 10.10.0.2 -> 10.10.0.3");
    assert!(b3.ping(&b1), "blue 10.10.0.4 -> 10.10.0.2");
    assert_eq!(
        (a1.rx(), a2.rx()),
        (a1_rx, a2_rx),
        "blue traffic reached red"
    );
    assert!(node.counter(VnCounter::ForwardLocal)? >= 16);
    assert!(node.counter(VnCounter::ArpReplied)? >= 4);

    // 10.10.0.4 exists only in blue: red's ARP for it is not answered ...
    let arp_miss = node.counter(VnCounter::DropArpMiss)?;
    assert!(!a1.ns.ping("10.10.0.4", 1, PING_WAIT, &[]));
    assert!(node.counter(VnCounter::DropArpMiss)? > arp_miss);
    // ... and a frame sent straight to blue's MAC is dropped by membership.
    a1.ns.ip(&[
        "neigh",
        "replace",
        "10.10.0.4",
        "lladdr",
        "0a:58:0a:0a:00:04",
        "dev",
        "net1",
    ])?;
    let (no_ep, b3_rx) = (node.counter(VnCounter::DropNoEndpoint)?, b3.rx());
    assert!(!a1.ns.ping("10.10.0.4", 3, PING_WAIT, &[]));
    assert!(node.counter(VnCounter::DropNoEndpoint)? >= no_ep + 3);
    assert_eq!(b3.rx(), b3_rx, "red reached blue's 10.10.0.4");

    // The gateway answers ARP (its MAC is the network's).
    a1.ns
        .exec("ping", &["-c", "1", "-W", "1", "10.10.0.1"])
        .ok();
    let neigh = a1.ns.ip(&["neigh", "show", "10.10.0.1", "dev", "net1"])?;
    assert!(
        neigh.contains("02:76:6e:00:00:65"),
        "gateway neighbour: {neigh}"
    );
    Ok(())
}

#[test]
fn spoofed_source_mac_or_ip_is_dropped() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("green", 103, "10.11.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let p1 = node.pod(json!({"name": "green"}))?;
    let p2 = node.pod(json!({"name": "green"}))?;
    assert!(p1.ping(&p2));

    // Another source IP on the same interface.
    p1.ns.ip(&["addr", "add", "10.11.0.50/24", "dev", "net1"])?;
    let (spoof_ip, p2_rx) = (node.counter(VnCounter::DropSpoofIp)?, p2.rx());
    assert!(!p1.ns.ping(&p2.ip, 2, PING_WAIT, &["-I", "10.11.0.50"]));
    assert!(node.counter(VnCounter::DropSpoofIp)? > spoof_ip);
    assert_eq!(p2.rx(), p2_rx, "a spoofed IPv4 source got through");
    p1.ns.ip(&["addr", "del", "10.11.0.50/24", "dev", "net1"])?;
    assert!(p1.ping(&p2));

    // Another MAC.
    p1.ns
        .ip(&["link", "set", "net1", "address", "0a:58:0a:0b:00:63"])?;
    let (spoof_mac, p2_rx) = (node.counter(VnCounter::DropSpoofMac)?, p2.rx());
    assert!(!p1.ping(&p2));
    assert!(node.counter(VnCounter::DropSpoofMac)? > spoof_mac);
    assert_eq!(p2.rx(), p2_rx, "a spoofed MAC got through");
    Ok(())
}
