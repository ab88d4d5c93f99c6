//! Agent restart: the datapath lives in pins, so established flows keep
//! working while no `Node` exists; an endpoint removed while the agent was
//! down is pruned when it comes back; losing the cluster directory (the
//! API server) prunes nothing.

mod common;

use anyhow::{Context, Result};
use common::*;
use serde_json::json;
use virtlink_vnet::cni::host_ifname;
use virtlink_xdp::common::vnet::{VnCounter, VnEndpointKey};
use virtlink_xdp::isolation::raw;

#[test]
fn flows_survive_a_restart_and_stale_endpoints_are_pruned() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 401, "10.40.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let p1 = node.pod(json!({"name": "red"}))?;
    let p2 = node.pod(json!({"name": "red"}))?;
    let p3 = node.pod(json!({"name": "red"}))?;
    assert!(p1.ping(&p3));

    // A flow that runs across the whole restart: 160 pings, 50 ms apart
    // (8 s), started now and still running when the agent is back.
    let mut flow = p1
        .ns
        .command("ping")
        .args(["-c", "160", "-i", "0.05", "-W", "1", "-q", &p2.ip])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;

    // The agent is down: no Node exists. Meanwhile p3 goes away (its
    // interface and its record), as a DEL from state alone would leave it.
    std::thread::sleep(std::time::Duration::from_millis(500));
    node.ns.ip(&["link", "del", &p3.host])?;
    let mut slice = cluster
        .store()
        .slices("red")?
        .into_iter()
        .find(|s| s.node == node.name)
        .context("the node's slice")?;
    slice.endpoints.retain(|e| e.ip.to_string() != p3.ip);
    cluster.store().put_slice(&slice)?;
    let pins = virtlink_xdp::isolation::Pins::new(&node.config().pin_dir());
    let p3_key = VnEndpointKey {
        net: 401,
        ip: raw(p3.ip.parse()?),
    };
    assert!(
        pins.endpoints()?.get(&p3_key)?.is_some(),
        "stale before resync"
    );

    // The agent comes back: re-open from the pins and resync.
    let n = node.open()?;
    let applied = n.resync()?;
    assert_eq!(applied.attached, 0, "{applied:?}");
    assert_eq!(applied.detached, 1, "{applied:?}");
    assert_eq!(applied.endpoints_removed, 1, "{applied:?}");
    assert_eq!(applied.ifaces_removed, 1, "{applied:?}");
    assert!(pins.endpoints()?.get(&p3_key)?.is_none());
    assert_eq!(pins.pod_links()?.len(), 2);
    assert!(!pins
        .pod_links()?
        .iter()
        .any(|l| l.contains(&host_ifname(p3.ns.name(), "net1"))));
    // A second resync changes nothing.
    assert_eq!(n.resync()?, Default::default());

    assert!(
        flow.try_wait()?.is_none(),
        "the flow ended before the agent was back: it did not span the restart"
    );
    let out = flow.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(" 0% packet loss"),
        "flow across the restart: {text}"
    );
    assert!(p2.ping(&p1));
    assert!(n.counter(VnCounter::ForwardLocal)? >= 120);
    Ok(())
}

#[test]
fn losing_the_cluster_directory_prunes_nothing() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 402, "10.41.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let p1 = node.pod(json!({"name": "red"}))?;
    let p2 = node.pod(json!({"name": "red"}))?;
    let away = cluster.dir.path().with_extension("away");
    std::fs::rename(cluster.dir.path(), &away)?;
    let n = node.open()?;
    let r = n.resync();
    std::fs::rename(&away, cluster.dir.path())?;
    let e = r.expect_err("resync without the cluster directory");
    assert!(e.to_string().contains("unavailable"), "{e}");
    assert!(p1.ping(&p2), "forwarding kept while the cluster is away");
    assert_eq!(n.resync()?, Default::default());
    Ok(())
}

#[test]
fn links_lost_while_down_are_reattached() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 403, "10.42.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let p1 = node.pod(json!({"name": "red"}))?;
    let p2 = node.pod(json!({"name": "red"}))?;
    let pins = virtlink_xdp::isolation::Pins::new(&node.config().pin_dir());
    // Both pods' programs go (as if bpffs had been remounted): no traffic.
    for link in pins.pod_links()? {
        pins.remove_link(&link)?;
    }
    assert!(!p1.ns.ping(&p2.ip, 1, PING_WAIT, &[]));
    // One resync attaches both again from one loaded program.
    let applied = node.open()?.resync()?;
    assert_eq!(applied.attached, 2, "{applied:?}");
    // (p1's neighbour entry for p2 failed above: allow its re-resolution.)
    assert!((0..3).any(|_| p1.ping(&p2)), "no traffic after the resync");
    Ok(())
}

#[test]
fn a_recreated_vxlan_device_gets_the_tunnel_program_again() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 404, "10.43.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let _p1 = node.pod(json!({"name": "red"}))?;
    let pins = virtlink_xdp::isolation::Pins::new(&node.config().pin_dir());
    let before = pins.config()?;
    // Opening again changes nothing.
    node.open()?;
    assert_eq!(pins.config()?, before);

    node.ns.ip(&["link", "del", "vnet-vxlan"])?;
    node.open()?;
    let after = pins.config()?;
    assert_ne!(after.vxlan_ifindex, before.vxlan_ifindex);
    let progs = node
        .ns
        .enter(|| virtlink_xdp::tcx_programs("vnet-vxlan"))??;
    assert_eq!(
        progs.len(),
        1,
        "tunnel programs on the new device: {progs:?}"
    );
    Ok(())
}
