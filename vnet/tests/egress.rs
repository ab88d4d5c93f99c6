//! Egress (`egress: true`, docs/vnet.md): pods of two egress networks with
//! the same address reach a server in an "outside" namespace at the same
//! time, masqueraded to the node's address, and each gets its own replies;
//! a network without egress still drops (`drop_no_endpoint`); the last DEL
//! removes the node's egress state (nftables table, rules).

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::json;
use virtlink_xdp::common::vnet::VnCounter;

const OUTSIDE: &str = "192.168.67.2";

#[test]
fn egress_is_masqueraded_and_closed_networks_still_drop() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network_with_egress("ered", 131, "10.30.0.0/24", true)?;
    cluster.network_with_egress("eblue", 132, "10.30.0.0/24", true)?;
    cluster.network("closed", 133, "10.31.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.67.1".parse()?)?;
    node.ns.sysctl("net.ipv4.ip_forward", "1")?;
    // The outside: a namespace behind the node's underlay interface.
    let outside = Netns::with_prefix("vno")?;
    veth(&node.ns, "ul0", &outside, "eth0")?;
    node.ns
        .ip(&["addr", "add", "192.168.67.1/24", "dev", "ul0"])?;
    outside.ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"])?;

    let red = node.pod(json!({"name": "ered"}))?;
    let blue = node.pod(json!({"name": "eblue"}))?;
    let closed = node.pod(json!({"name": "closed"}))?;
    assert_eq!(red.ip, blue.ip, "the same address in both egress networks");

    // What the outside server sees.
    let dump = outside
        .command("timeout")
        .args(["15", "tcpdump"])
        .args([
            "-l",
            "-n",
            "-i",
            "eth0",
            "-c",
            "4",
            "icmp[icmptype] == icmp-echo",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let forwarded = node.counter(VnCounter::ForwardLocal)?;
    // Both pods at once: identical tuples in two networks.
    let (r, b) = std::thread::scope(|s| {
        let r = s.spawn(|| red.ns.ping(OUTSIDE, 2, PING_WAIT, &[]));
        let b = s.spawn(|| blue.ns.ping(OUTSIDE, 2, PING_WAIT, &[]));
        (r.join().unwrap_or(false), b.join().unwrap_or(false))
    });
    let seen = String::from_utf8_lossy(&dump.wait_with_output()?.stdout).into_owned();
    assert!(r, "red pod -> outside\n{seen}");
    assert!(b, "blue pod (same address) -> outside\n{seen}");
    let lines: Vec<&str> = seen.lines().filter(|l| l.contains("ICMP")).collect();
    assert_eq!(lines.len(), 4, "{seen}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("192.168.67.1 > {OUTSIDE}"))),
        "the server sees the node's address only:\n{seen}"
    );
    assert_eq!(
        node.counter(VnCounter::ForwardLocal)?,
        forwarded,
        "egress is not delivered to a local endpoint"
    );

    // Without egress: dropped by membership, counted.
    closed
        .ns
        .ip(&["route", "add", "default", "via", "10.31.0.1"])?;
    let before = node.counter(VnCounter::DropNoEndpoint)?;
    assert!(
        !closed.ns.ping(OUTSIDE, 2, PING_WAIT, &[]),
        "a closed network reached outside"
    );
    assert!(node.counter(VnCounter::DropNoEndpoint)? >= before + 2);

    // The last egress endpoint gone: no table, no rules.
    for p in [&red, &blue, &closed] {
        node.call("DEL", p.ns.name(), p.ns.path(), &p.config)
            .map_err(|e| anyhow::anyhow!("DEL: {}", e.msg))?;
    }
    let table = node
        .ns
        .command("nft")
        .args(["list", "table", "ip", "virtlink_vnet"])
        .output()?;
    assert!(!table.status.success(), "nftables table left");
    let rules = node.ns.ip(&["rule", "list", "pref", "20000"])?;
    assert!(rules.trim().is_empty(), "rules left: {rules}");
    Ok(())
}
