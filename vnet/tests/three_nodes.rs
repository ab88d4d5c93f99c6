//! Three nodes (namespaces joined by an underlay bridge, each with its own
//! `Node` state and VXLAN device): pods of one network on different nodes
//! talk, the other tenant with the same addresses does not, and a plain
//! `ip link ... type vxlan id N` peer proves the VNI on the wire.

mod common;

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use common::*;
use serde_json::json;
use virtlink_vnet::model::{format_mac, EndpointRecord, NetworkEndpointSliceSpec};
use virtlink_xdp::common::vnet::VnCounter;

struct Three {
    cluster: Cluster,
    underlay: Underlay,
    nodes: Vec<TestNode>,
}

fn three_nodes() -> Result<Three> {
    let cluster = Cluster::new()?;
    let underlay = Underlay::new()?;
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        let ip = Ipv4Addr::new(192, 168, 77, i);
        let n = TestNode::new(&cluster, ip)?;
        underlay.connect(&n.ns, ip)?;
        nodes.push(n);
    }
    Ok(Three {
        cluster,
        underlay,
        nodes,
    })
}

impl Three {
    /// What each agent's watch does when a slice changes.
    fn resync_all(&self) -> Result<()> {
        for n in &self.nodes {
            n.open()?.resync()?;
        }
        Ok(())
    }
}

#[test]
fn cross_node_pods_of_one_network_talk_and_tenants_stay_apart() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let t = three_nodes()?;
    t.cluster.network("red", 201, "10.20.0.0/24")?;
    t.cluster.network("blue", 202, "10.20.0.0/24")?;
    let [n1, n2, n3] = [&t.nodes[0], &t.nodes[1], &t.nodes[2]];
    let a1 = n1.pod(json!({"name": "red"}))?;
    let a2 = n2.pod(json!({"name": "red"}))?;
    let b1 = n1.pod(json!({"name": "blue"}))?;
    let b3 = n3.pod(json!({"name": "blue"}))?;
    // Per-node blocks: n1 has 10.20.0.0/28, the others the next blocks; the
    // tenants reuse the addresses.
    assert_eq!((a1.ip.as_str(), b1.ip.as_str()), ("10.20.0.2", "10.20.0.2"));
    assert_eq!(
        (a2.ip.as_str(), b3.ip.as_str()),
        ("10.20.0.16", "10.20.0.16")
    );
    t.resync_all()?;

    let b3_rx = b3.rx();
    assert!(a1.ping(&a2), "red n1 -> red n2");
    assert!(a2.ping(&a1), "red n2 -> red n1");
    assert_eq!(
        b3.rx(),
        b3_rx,
        "red traffic reached blue's 10.20.0.16 on n3"
    );
    let a2_rx = a2.rx();
    assert!(b1.ping(&b3), "blue n1 -> blue n3");
    assert!(b3.ping(&b1), "blue n3 -> blue n1");
    assert_eq!(
        a2.rx(),
        a2_rx,
        "blue traffic reached red's 10.20.0.16 on n2"
    );
    assert!(n1.counter(VnCounter::ForwardRemote)? >= 4);
    assert!(n2.counter(VnCounter::FromTunnel)? >= 4);
    assert!(n3.counter(VnCounter::FromTunnel)? >= 4);

    // n3 has no red member: red's address space does not exist there, even
    // for a forged tunnel packet from a known node (it is not watched).
    assert!(!n3.open()?.desired()?.networks.iter().any(|n| n.id == 201));
    Ok(())
}

#[test]
fn a_plain_vxlan_peer_sees_the_network_id_as_vni() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let t = three_nodes()?;
    t.cluster.network("red", 211, "10.21.0.0/24")?;
    let n1 = &t.nodes[0];
    let a1 = n1.pod(json!({"name": "red"}))?;

    // An independent peer: a namespace on the underlay with a plain VXLAN
    // device of VNI 211 (not collect-metadata), registered as a node with
    // one endpoint of the network.
    let peer = Netns::with_prefix("vnv")?;
    let peer_ip = Ipv4Addr::new(192, 168, 77, 9);
    t.underlay.connect(&peer, peer_ip)?;
    peer.ip(&[
        "link",
        "add",
        "vx",
        "type",
        "vxlan",
        "id",
        "211",
        "dstport",
        "4789",
        "local",
        "192.168.77.9",
        "remote",
        "192.168.77.1",
        "nolearning",
    ])?;
    peer.ip(&["link", "set", "vx", "address", "0a:58:0a:15:00:64", "up"])?;
    peer.ip(&["addr", "add", "10.21.0.100/24", "dev", "vx"])?;
    // Nothing answers ARP across the tunnel: the peer knows a1's MAC.
    peer.ip(&[
        "neigh",
        "add",
        &a1.ip,
        "lladdr",
        "0a:58:0a:15:00:02",
        "dev",
        "vx",
    ])?;
    t.cluster.store().put_slice(&NetworkEndpointSliceSpec {
        network: "red".into(),
        node: "plain-peer".into(),
        node_ip: peer_ip,
        blocks: vec!["10.21.0.96/28".parse()?],
        endpoints: vec![EndpointRecord {
            ip: "10.21.0.100".parse()?,
            mac: format_mac(&[0x0a, 0x58, 0x0a, 0x15, 0x00, 0x64]),
            container_id: "plain".into(),
            ifname: "vx".into(),
            host_ifname: "vx".into(),
        }],
    })?;
    n1.open()?.resync()?;

    // Capture on the peer's underlay interface while a1 pings the peer.
    let cap = peer
        .command("timeout")
        .args([
            "8", "tcpdump", "-i", "ul0", "-nn", "-c", "4", "-l", "udp", "port", "4789",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start tcpdump")?;
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        a1.ns.ping("10.21.0.100", 3, PING_WAIT, &[]),
        "red pod -> plain VXLAN peer (VNI 211)"
    );
    let out = cap.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vni 211"), "capture:\n{text}");
    assert!(!text
        .lines()
        .any(|l| l.contains("vni") && !l.contains("vni 211")));

    // The same peer with another VNI hears nothing of the network.
    peer.ip(&["link", "del", "vx"])?;
    peer.ip(&[
        "link",
        "add",
        "vx",
        "type",
        "vxlan",
        "id",
        "212",
        "dstport",
        "4789",
        "local",
        "192.168.77.9",
        "remote",
        "192.168.77.1",
        "nolearning",
    ])?;
    peer.ip(&["link", "set", "vx", "address", "0a:58:0a:15:00:64", "up"])?;
    peer.ip(&["addr", "add", "10.21.0.100/24", "dev", "vx"])?;
    let rx = peer.rx_packets("vx")?;
    assert!(!a1.ns.ping("10.21.0.100", 2, PING_WAIT, &[]));
    assert_eq!(peer.rx_packets("vx")?, rx);
    Ok(())
}

#[test]
fn first_adds_racing_on_three_nodes_get_disjoint_blocks() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let t = three_nodes()?;
    t.cluster.network("green", 203, "10.21.0.0/24")?;
    // Every node's first ADD claims a block at the same moment; the claim
    // protocol (write, read back, yield to a rival) sorts them out.
    let start = std::sync::Barrier::new(t.nodes.len());
    let pods: Vec<Vec<Pod>> = std::thread::scope(|s| {
        let handles: Vec<_> = t
            .nodes
            .iter()
            .map(|n| {
                let start = &start;
                s.spawn(move || -> Result<Vec<Pod>> {
                    start.wait();
                    (0..3).map(|_| n.pod(json!({"name": "green"}))).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("ADD thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut ips: Vec<Ipv4Addr> = pods
        .iter()
        .flatten()
        .map(|p| p.ip.parse())
        .collect::<std::result::Result<_, _>>()?;
    ips.sort();
    ips.dedup();
    let all: Vec<Vec<&str>> = pods
        .iter()
        .map(|p| p.iter().map(|p| p.ip.as_str()).collect())
        .collect();
    assert_eq!(ips.len(), 9, "an address handed out twice: {all:?}");
    let slices = t.cluster.store().slices("green")?;
    assert_eq!(slices.len(), 3);
    for (i, s) in slices.iter().enumerate() {
        for other in &slices[i + 1..] {
            assert!(
                s.blocks.iter().all(|b| !other.blocks.contains(b)),
                "block held by {} and {}: {slices:?}",
                s.node,
                other.node
            );
        }
        for e in &s.endpoints {
            assert!(
                s.blocks.iter().any(|b| b.contains(&e.ip)),
                "{} on {} outside its blocks {:?}",
                e.ip,
                s.node,
                s.blocks
            );
        }
    }

    // A requested address in another node's block is refused, and nothing
    // is left of the attempt.
    let n1_block = slices
        .iter()
        .find(|s| s.node == t.nodes[0].name)
        .context("n1's slice")?
        .blocks[0];
    let wanted = Ipv4Addr::from(u32::from(n1_block.network()) + 9);
    let mut c = t.nodes[1].cni_config(json!({"name": "green"}));
    c["runtimeConfig"] = json!({"ips": [format!("{wanted}/24")]});
    let pod = Netns::with_prefix("vnp")?;
    let e = t.nodes[1]
        .call("ADD", pod.name(), pod.path(), &c)
        .expect_err("an address in n1's block");
    assert_eq!(e.code, virtlink_vnet::cni::code::INVALID_CONFIG);
    assert!(
        e.msg.contains(&format!(
            "is in block {n1_block}, which node {} allocates from",
            t.nodes[0].name
        )),
        "{}",
        e.msg
    );
    assert_eq!(pod.links()?, vec!["lo".to_string()]);
    assert_eq!(t.cluster.store().slices("green")?, slices);
    Ok(())
}
