//! The `virtlink` network type (isolated tenant networks, docs/vnet.md)
//! through virtlink-cni as a runtime calls it: two pods on one tenant
//! network talk over net1, the same addresses in another tenant stay apart,
//! a bad network is a CNI error, and DEL leaves nothing. Runs in direct and
//! agent mode over every CNI version virtlink-cni accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::{assert_clean, unique, Mode, Netns, Node, VERSIONS};
use serde_json::{json, Value};

/// Removes the node's pins (maps and tcx links) on drop.
struct Pins(virtlink_vnet::node::NodeConfig);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = virtlink_vnet::node::remove_pins(&self.0);
    }
}

fn vnet_nad(node: &Node, cluster: &std::path::Path, node_name: &str, name: &str, id: u32) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "virtlink",
           "network": {"id": id, "cidrs": ["10.61.0.0/24"]},
           "node": {"name": node_name, "underlayIp": "192.168.61.1",
                    "clusterDir": cluster, "stateDir": node.dir.path().join("vnet")}})
}

fn net1_ip(node: &Node, pod: &Netns) -> String {
    let _ = node;
    pod.addrs("net1")
        .first()
        .and_then(|a| a.split('/').next().map(str::to_string))
        .expect("net1 has an address")
}

fn tenants_through_the_meta_plugin(mode: Mode) {
    for version in VERSIONS {
        let node = Node::with_mode(mode);
        let cluster = tempfile::tempdir().unwrap();
        let node_name = unique("vnc");
        let _pins = Pins(virtlink_vnet::node::NodeConfig::new(
            &node_name,
            "192.168.61.1".parse().unwrap(),
            cluster.path(),
            cluster.path(),
        ));
        node.nad("ta", vnet_nad(&node, cluster.path(), &node_name, "ta", 611));
        node.nad("tb", vnet_nad(&node, cluster.path(), &node_name, "tb", 612));
        node.pod("a1", "ta");
        node.pod("a2", "ta");
        node.pod("b1", "tb");
        let conf = node.conf(version);
        let pods: Vec<(Netns, &str)> = ["a1", "a2", "b1"]
            .into_iter()
            .map(|p| (Netns::new("vlvn"), p))
            .collect();
        for (ns, name) in &pods {
            node.call("ADD", Some(ns), &format!("ctr-{name}"), name, &conf)
                .expect_ok(&format!("ADD {name} ({version})"));
        }
        let ips: Vec<String> = pods.iter().map(|(ns, _)| net1_ip(&node, ns)).collect();
        assert_eq!(ips, ["10.61.0.2", "10.61.0.3", "10.61.0.2"], "{version}");
        assert!(pods[0].0.ping(&ips[1]), "a1 -> a2 ({version})");
        // b1 has a1's address in another tenant; a2 is not in its network.
        assert!(!pods[2].0.ping(&ips[1]), "b1 reached a2 ({version})");
        // `virtlink vnet-stats` reads the node's counters and maps.
        let out = std::process::Command::new(common::virtlink_binary())
            .args(["vnet-stats", &node_name, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stats["endpoints"], 3, "{stats}");
        assert_eq!(stats["networks"], 2, "{stats}");
        assert!(
            stats["counters"]["forward_local"].as_u64() > Some(0),
            "{stats}"
        );
        assert!(
            stats["counters"]["drop_arp_miss"].as_u64() > Some(0),
            "{stats}"
        );

        // A network definition that collides is the type's CNI error.
        node.nad(
            "bad",
            vnet_nad(&node, cluster.path(), &node_name, "bad", 611),
        );
        node.pod("c", "bad");
        let pc = Netns::new("vlvn");
        let veths = node.veths();
        let msg = node
            .call("ADD", Some(&pc), "ctr-c", "c", &conf)
            .expect_err(7, "VNI collision");
        assert!(msg.contains("VNI collision"), "{msg}");
        assert!(pc.links().is_empty(), "{:?}", pc.links());
        assert_eq!(node.veths(), veths);

        for (ns, name) in &pods {
            node.call("DEL", Some(ns), &format!("ctr-{name}"), name, &conf)
                .expect_ok(&format!("DEL {name} ({version})"));
        }
        for (ns, _) in &pods {
            assert_clean(&node, ns);
        }
    }
}

#[test]
fn tenant_networks_through_virtlink_cni() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    tenants_through_the_meta_plugin(Mode::Direct);
}

#[test]
fn tenant_networks_through_the_agent() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    tenants_through_the_meta_plugin(Mode::Agent);
}
