//! The CNI type's contract: bad input is a CNI error with the spec's code
//! and a clear message and leaves nothing behind (links, slices, network
//! registrations, pins), also when a step fails halfway; DEL never fails
//! because something is gone; CHECK notices what is missing.

#![allow(clippy::panic)] // test code: a panic is a failed test

mod common;

use anyhow::Result;
use common::*;
use serde_json::{json, Value};
use virtlink_vnet::cni::code;
use virtlink_vnet::store::NodeDir;

/// Nothing of an attachment is left on `node`.
fn assert_clean(node: &TestNode, cluster: &Cluster) -> Result<()> {
    assert_eq!(node.ns.links()?, vec!["lo".to_string()], "links left");
    assert!(
        !node.config().pin_dir().exists(),
        "pins left in {}",
        node.config().pin_dir().display()
    );
    let slices = cluster.dir.path().join("slices");
    let left: Vec<_> = walk(&slices);
    assert!(left.is_empty(), "slices left: {left:?}");
    assert!(NodeDir::new(node.state.path()).networks()?.is_empty());
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

fn add_err(node: &TestNode, pod: &Netns, config: &Value) -> virtlink_vnet::cni::Failure {
    match node.call("ADD", pod.name(), pod.path(), config) {
        Ok(v) => panic!("ADD succeeded: {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 302, "10.32.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let pod = Netns::with_prefix("vnp")?;

    // Overlapping CIDRs in one network.
    let e = add_err(
        &node,
        &pod,
        &node.cni_config(
            json!({"name": "ov", "id": 301, "cidrs": ["10.30.0.0/16", "10.30.1.0/24"]}),
        ),
    );
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert_eq!(
        e.msg,
        "network ov: CIDRs 10.30.0.0/16 and 10.30.1.0/24 overlap"
    );
    assert_clean(&node, &cluster)?;

    // A VNI collision with the cluster's network.
    let e = add_err(
        &node,
        &pod,
        &node.cni_config(json!({"name": "other", "id": 302, "cidrs": ["10.31.0.0/24"]})),
    );
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert_eq!(
        e.msg,
        "VNI collision: networks red and other both have id 302"
    );
    assert_clean(&node, &cluster)?;

    // An address outside the CIDR requested in the annotation.
    let mut c = node.cni_config(json!({"name": "red"}));
    c["runtimeConfig"] = json!({"ips": ["10.99.0.5/24"]});
    let e = add_err(&node, &pod, &c);
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert_eq!(
        e.msg,
        "network red: requested address 10.99.0.5 is outside its CIDRs (10.32.0.0/24)"
    );
    assert_clean(&node, &cluster)?;

    // The same network defined differently inline.
    let e = add_err(
        &node,
        &pod,
        &node.cni_config(json!({"name": "red", "id": 303, "cidrs": ["10.32.0.0/24"]})),
    );
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("id differs"), "{}", e.msg);

    // A namespace that does not exist.
    let config = node.cni_config(json!({"name": "red"}));
    let e = node
        .call(
            "ADD",
            "gone",
            std::path::Path::new("/run/netns/vn-none"),
            &config,
        )
        .unwrap_err();
    assert_eq!(e.code, code::CONTAINER_UNKNOWN);
    assert_clean(&node, &cluster)?;
    Ok(())
}

#[test]
fn a_failure_halfway_undoes_every_step() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 311, "10.33.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;

    // CNI_NETNS exists but is no namespace: the address was recorded and the
    // veth made before moving its end fails.
    let not_ns = tempfile::NamedTempFile::new()?;
    let config = node.cni_config(json!({"name": "red"}));
    let e = node.call("ADD", "c1", not_ns.path(), &config).unwrap_err();
    assert_eq!(e.code, code::DATAPATH, "{}", e.msg);
    assert!(e.msg.contains("create veth"), "{}", e.msg);
    assert_clean(&node, &cluster)?;

    // A VXLAN name the kernel would reject is bad config, found first.
    let pod = Netns::with_prefix("vnp")?;
    let mut config = node.cni_config(json!({"name": "inl", "id": 312, "cidrs": ["10.34.0.0/24"]}));
    config["node"]["vxlan"] = json!("a-name-far-too-long-for-a-link");
    let e = add_err(&node, &pod, &config);
    assert_eq!(e.code, code::INVALID_CONFIG, "{}", e.msg);
    assert_clean(&node, &cluster)?;

    // The node's datapath cannot be set up (its VXLAN device's name is taken
    // by a veth): the veth pair and the pod interface existed and are removed,
    // with the address and the inline network's registration.
    node.ns.ip(&[
        "link",
        "add",
        "vnet-vxlan",
        "type",
        "veth",
        "peer",
        "name",
        "squat",
    ])?;
    let config = node.cni_config(json!({"name": "inl", "id": 312, "cidrs": ["10.34.0.0/24"]}));
    let e = add_err(&node, &pod, &config);
    assert_eq!(e.code, code::DATAPATH, "{}", e.msg);
    assert!(
        e.msg
            .contains("vnet-vxlan exists and is not a collect-metadata VXLAN device"),
        "{}",
        e.msg
    );
    assert_eq!(pod.links()?, vec!["lo".to_string()]);
    node.ns.ip(&["link", "del", "vnet-vxlan"])?;
    assert_clean(&node, &cluster)?;
    Ok(())
}

#[test]
fn del_never_fails_on_what_is_gone_and_check_notices() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 321, "10.35.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let p1 = node.pod(json!({"name": "red"}))?;
    let p2 = node.pod(json!({"name": "red"}))?;
    assert!(p1.ping(&p2));

    node.call("CHECK", p1.ns.name(), p1.ns.path(), &p1.config)
        .map_err(|e| anyhow::anyhow!("CHECK: {}", e.msg))?;
    // The host end disappears behind our back: CHECK says so.
    node.ns.ip(&["link", "del", &p2.host])?;
    let e = node
        .call("CHECK", p2.ns.name(), p2.ns.path(), &p2.config)
        .unwrap_err();
    assert_eq!(e.code, code::CHECK_FAILED);
    assert!(e.msg.contains("is gone"), "{}", e.msg);
    // DEL still works, twice, and with the namespace gone.
    for netns in [p2.ns.path().to_path_buf(), std::path::PathBuf::new()] {
        node.call("DEL", p2.ns.name(), &netns, &p2.config)
            .map_err(|e| anyhow::anyhow!("DEL: {}", e.msg))?;
    }
    node.call("DEL", "never-added", std::path::Path::new(""), &p2.config)
        .map_err(|e| anyhow::anyhow!("DEL: {}", e.msg))?;
    let e = node
        .call("CHECK", p2.ns.name(), p2.ns.path(), &p2.config)
        .unwrap_err();
    assert_eq!(e.code, code::CHECK_FAILED);
    // The datapath forgot p2 (pruned), p1 is intact.
    let pins = virtlink_xdp::isolation::Pins::new(&node.config().pin_dir());
    assert_eq!(pins.endpoints()?.keys()?.len(), 1);
    assert_eq!(pins.pod_links()?.len(), 1);

    // DEL of the last endpoint leaves only the node's VXLAN device.
    node.call("DEL", p1.ns.name(), p1.ns.path(), &p1.config)
        .map_err(|e| anyhow::anyhow!("DEL: {}", e.msg))?;
    assert_eq!(pins.endpoints()?.keys()?.len(), 0);
    assert_eq!(pins.ifaces()?.keys()?.len(), 0);
    assert!(pins.pod_links()?.is_empty());
    let mut links = node.ns.links()?;
    links.sort();
    assert_eq!(links, vec!["lo".to_string(), "vnet-vxlan".to_string()]);
    assert!(walk(&cluster.dir.path().join("slices")).is_empty());
    Ok(())
}

#[test]
fn a_requested_address_is_honoured_once() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::new()?;
    cluster.network("red", 331, "10.36.0.0/24")?;
    let node = TestNode::new(&cluster, "192.168.50.1".parse()?)?;
    let mut c = node.cni_config(json!({"name": "red"}));
    c["runtimeConfig"] = json!({"ips": ["10.36.0.77/24"], "mac": "02:00:00:00:00:77"});
    let pod = Netns::with_prefix("vnp")?;
    let r = node
        .call("ADD", pod.name(), pod.path(), &c)
        .map_err(|e| anyhow::anyhow!("ADD: {}", e.msg))?
        .unwrap_or_default();
    assert_eq!(r["ips"][0]["address"], "10.36.0.77/24");
    assert_eq!(r["ips"][0]["gateway"], "10.36.0.1");
    assert_eq!(r["interfaces"][1]["mac"], "02:00:00:00:00:77");
    let addrs = pod.ip(&["-4", "-o", "addr", "show", "dev", "net1"])?;
    assert!(addrs.contains("10.36.0.77/24"), "{addrs}");

    let other = Netns::with_prefix("vnp")?;
    let e = add_err(&node, &other, &c);
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("10.36.0.77 is already used by"), "{}", e.msg);
    assert_eq!(other.links()?, vec!["lo".to_string()]);
    Ok(())
}
