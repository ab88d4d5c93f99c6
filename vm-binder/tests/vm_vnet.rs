//! A real guest on an isolated tenant network (docs/vnet.md): the launcher
//! pod's eth0 is a `"type": "virtlink"` attachment on node 1, the bridge
//! binding hands its address and MAC to the guest, and the guest reaches a
//! pod of the same network on node 2 over VXLAN (and is reached from it).
//! A pod of another tenant with the same address on node 2 sees nothing,
//! and what the guest sends from another IP or MAC is dropped and counted.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{unique_name, veth, Netns};
use serde_json::{json, Value};
use virtlink_vnet::model::{Network, VirtualNetworkSpec};
use virtlink_vnet::node::{remove_pins, Node, NodeConfig};
use virtlink_vnet::store::ClusterDir;
use virtlink_xdp::common::vnet::VnCounter;

/// A node namespace with its pins, removed on drop.
struct TestNode {
    /// Keeps the node's namespace (and its VXLAN device) alive.
    _ns: Netns,
    cfg: NodeConfig,
    _state: tempfile::TempDir,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = remove_pins(&self.cfg);
    }
}

fn node(cluster: &Path, underlay: &Netns, i: u8) -> Result<TestNode> {
    let ns = Netns::with_prefix("vbvn")?;
    let state = tempfile::tempdir()?;
    let ip = Ipv4Addr::new(192, 168, 88, i);
    let port = unique_name("vbul");
    veth(underlay, &port, &ns, "ul0")?;
    underlay.ip(&["link", "set", &port, "master", "br0"])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])?;
    let mut cfg = NodeConfig::new(ns.name(), ip, cluster, state.path());
    cfg.netns = Some(ns.path().to_path_buf());
    Ok(TestNode {
        _ns: ns,
        cfg,
        _state: state,
    })
}

/// CNI ADD of `pod` to `network` on `n` as `ifname`; returns the address.
fn add(n: &TestNode, pod: &Netns, network: &str, ifname: &str) -> Result<String> {
    let conf = json!({
        "cniVersion": "1.0.0", "name": network, "type": "virtlink",
        "network": {"name": network},
        "node": {"name": n.cfg.name, "underlayIp": n.cfg.underlay_ip.to_string(),
                 "clusterDir": n.cfg.cluster_dir, "stateDir": n.cfg.state_dir,
                 "netns": n.cfg.netns},
    });
    let netns = pod.path().to_string_lossy().to_string();
    let out: Value = virtlink_vnet::cni::call(&virtlink_vnet::cni::Request {
        command: "ADD",
        container_id: pod.name(),
        netns: &netns,
        ifname,
        config: &conf,
    })
    .map_err(|e| anyhow::anyhow!("ADD {}: {}", pod.name(), e.msg))?
    .context("ADD printed nothing")?;
    Ok(out["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .context("address")?
        .to_string())
}

fn network(cluster: &Path, name: &str, id: u32) -> Result<()> {
    let n = Network::from_spec(
        name,
        &VirtualNetworkSpec {
            id,
            cidrs: vec!["10.88.0.0/24".parse()?],
            gateway: None,
            mtu: None,
            tenant: name.to_string(),
            egress: false,
        },
    )?;
    ClusterDir::new(cluster).put_network(&n)?;
    Ok(())
}

#[test]
fn a_bridged_guest_reaches_a_pod_of_its_network_on_another_node() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let cluster = tempfile::tempdir()?;
    network(cluster.path(), "red", 801)?;
    network(cluster.path(), "blue", 802)?;
    let underlay = Netns::with_prefix("vbvu")?;
    underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
    underlay.ip(&["link", "set", "br0", "up"])?;
    let (n1, n2) = (
        node(cluster.path(), &underlay, 1)?,
        node(cluster.path(), &underlay, 2)?,
    );

    // On node 2, a red pod and a blue pod with the same address.
    let red_pod = Netns::with_prefix("vbvp")?;
    let red_ip = add(&n2, &red_pod, "red", "net1")?;
    let blue_pod = Netns::with_prefix("vbvp")?;
    let blue_ip = add(&n2, &blue_pod, "blue", "net1")?;
    assert_eq!(red_ip, blue_ip, "the tenants reuse addresses");

    // The launcher pod on node 1: eth0 on red, then the bridge binding.
    let launcher = Netns::with_prefix("vbvl")?;
    let guest_ip = add(&n1, &launcher, "red", "eth0")?;
    for n in [&n1, &n2] {
        Node::open(n.cfg.clone())?.resync()?;
    }
    let dir = tempfile::tempdir()?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.96.0.10\n")?;
    let vm = vm_binder::Vm::parse(
        r#"{"metadata":{"name":"vnet-guest","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","bridge":{}}]}},
              "networks":[{"name":"default","pod":{}}]}}"#,
    )?;
    let opts = vm_binder::BindOptions {
        resolv_conf: resolv,
        ..Default::default()
    };
    let binding = vm_binder::bind(&vm, launcher.path(), &[], &opts)?;
    let guest = vm_tests::Vm::boot(
        vm_tests::VmSpec::new(unique_name("vbvg"))
            .netns(PathBuf::from(launcher.path()))
            .qemu_args(binding.qemu_args())
            .cmdline("virtlink.dhcp=1"),
    )
    .context("boot guest")?;
    guest.wait_ready(Duration::from_secs(180))?;
    let addr = guest.run_ok("ip -4 addr show eth0", Duration::from_secs(20))?;
    assert!(addr.contains(&format!("inet {guest_ip}/24")), "{addr}");

    let blue_rx = blue_pod.rx_packets("net1")?;
    guest.run_ok(&format!("ping -c 3 -W 5 {red_ip}"), Duration::from_secs(40))?;
    red_pod
        .exec("ping", &["-c", "2", "-W", "5", &guest_ip])
        .context("the red pod on node 2 reaches the guest")?;
    assert_eq!(
        blue_pod.rx_packets("net1")?,
        blue_rx,
        "the guest's traffic reached the other tenant"
    );

    // The guest spoofs: another source IP, then another MAC. Node 1's
    // program drops and counts both; the red pod on node 2 sees nothing.
    let pins = virtlink_xdp::isolation::Pins::new(&n1.cfg.pin_dir());
    let rx = |ns: &Netns| ns.rx_packets("net1");
    let mut o = guest_ip.parse::<Ipv4Addr>()?.octets();
    o[3] = if o[3] == 200 { 201 } else { 200 };
    let spoofed = Ipv4Addr::from(o);
    guest.run_ok(
        &format!("ip addr add {spoofed}/32 dev eth0"),
        Duration::from_secs(20),
    )?;
    let (drops, red_rx) = (pins.counter(VnCounter::DropSpoofIp)?, rx(&red_pod)?);
    let out = guest.run(
        &format!("ping -c 2 -W 2 -I {spoofed} {red_ip}"),
        Duration::from_secs(30),
    )?;
    assert_ne!(
        out.status, 0,
        "a spoofed source IP got an answer: {}",
        out.output
    );
    assert!(
        pins.counter(VnCounter::DropSpoofIp)? > drops,
        "not counted as spoofed IP"
    );
    assert_eq!(
        rx(&red_pod)?,
        red_rx,
        "a spoofed source IP reached the red pod"
    );
    guest.run_ok(
        &format!("ip addr del {spoofed}/32 dev eth0; ip link set eth0 address 0a:58:0a:0b:00:63"),
        Duration::from_secs(20),
    )?;
    let (drops, red_rx) = (pins.counter(VnCounter::DropSpoofMac)?, rx(&red_pod)?);
    let out = guest.run(&format!("ping -c 2 -W 2 {red_ip}"), Duration::from_secs(30))?;
    assert_ne!(out.status, 0, "a spoofed MAC got an answer: {}", out.output);
    assert!(
        pins.counter(VnCounter::DropSpoofMac)? > drops,
        "not counted as spoofed MAC"
    );
    assert_eq!(rx(&red_pod)?, red_rx, "a spoofed MAC reached the red pod");

    drop(guest);
    binding.unbind(&vm, &[])?;
    Ok(())
}
