//! A pod gets eth0 + net1 + net2 from the Debian reference plugins (bridge +
//! host-local, macvlan + static IPAM, a ptp + tuning config list), traffic flows
//! between two pods on every network, and DEL leaves no link and no reserved IP.
//! Runs over every CNI version virtlink-cni accepts. Real kernel, real plugins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::{Mode, Netns, Node, VERSIONS};
use serde_json::Value;

fn networks(static_ip: &str, mac: &str) -> String {
    format!(r#"[{{"name":"green","ips":["{static_ip}"]}},{{"name":"red","mac":"{mac}"}}]"#)
}

fn eth0_ip(result: &Value) -> String {
    let ips = result["ips"].as_array().expect("result has ips");
    ips[0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn three_networks_traffic_and_clean_delete_in_every_version(mode: Mode) {
    for version in VERSIONS {
        let node = Node::with_mode(mode);
        node.standard_nads();
        node.pod("a", &networks("10.72.0.10/24", "02:00:00:00:aa:01"));
        node.pod("b", &networks("10.72.0.11/24", "02:00:00:00:bb:01"));
        let (pa, pb) = (Netns::new("vlpa"), Netns::new("vlpb"));
        let conf = node.conf(version);

        let ra = node
            .call("ADD", Some(&pa), "ctr-a", "a", &conf)
            .expect_ok("ADD a")
            .clone();
        let rb = node
            .call("ADD", Some(&pb), "ctr-b", "b", &conf)
            .expect_ok("ADD b")
            .clone();

        // The default network's result, in the version the runtime asked for.
        assert_eq!(ra["cniVersion"], *version, "result version");
        assert!(eth0_ip(&ra).starts_with("10.70.0."), "{ra}");
        let has_ip_version = ra["ips"][0].get("version").is_some();
        assert_eq!(
            has_ip_version,
            *version == "0.4.0",
            "ips[].version only before 1.0.0: {ra}"
        );

        for p in [&pa, &pb] {
            let mut links = p.links();
            links.sort();
            assert_eq!(links, vec!["eth0", "net1", "net2"], "{version}");
        }
        assert_eq!(
            pa.addrs("net1"),
            vec!["10.72.0.10/24"],
            "static IPAM via the ips capability"
        );
        assert_eq!(
            pa.mac("net2"),
            "02:00:00:00:aa:01",
            "tuning applied the requested MAC"
        );
        assert_eq!(pb.mac("net2"), "02:00:00:00:bb:01");
        let b_red = pb.addrs("net2")[0].split('/').next().unwrap().to_string();
        assert!(b_red.starts_with("10.73.0."), "{b_red}");

        // Traffic between the two pods on every network.
        assert!(pa.ping(&eth0_ip(&rb)), "{version}: eth0 (bridge) a -> b");
        assert!(pa.ping("10.72.0.11"), "{version}: net1 (macvlan) a -> b");
        assert!(pa.ping(&b_red), "{version}: net2 (ptp) a -> b");
        assert!(pb.ping(&eth0_ip(&ra)), "{version}: eth0 b -> a");

        // network-status (standalone: a status file).
        let status: Value = serde_json::from_slice(
            &std::fs::read(node.state().join("status/default/a.json")).expect("status file"),
        )
        .unwrap();
        let names: Vec<&str> = status
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["podnet", "default/green", "default/red"]);
        assert_eq!(status[0]["default"], true);
        assert_eq!(status[0]["interface"], "eth0");
        assert!(status[1].get("default").is_none());
        assert_eq!(status[1]["ips"][0], "10.72.0.10");
        assert_eq!(status[2]["mac"], "02:00:00:00:aa:01");

        node.call("CHECK", Some(&pa), "ctr-a", "a", &conf)
            .expect_ok("CHECK a");

        // Break net1 behind the plugin's back: CHECK must notice.
        pa.sh("ip link del net1");
        let msg = node
            .call("CHECK", Some(&pa), "ctr-a", "a", &conf)
            .expect_err_any("CHECK after net1 was removed");
        assert!(
            msg.contains("default/green"),
            "CHECK error names the network: {msg}"
        );

        // DEL, then the runtime's second DEL without a namespace.
        node.call("DEL", Some(&pa), "ctr-a", "a", &conf)
            .expect_ok("DEL a");
        node.call("DEL", Some(&pb), "ctr-b", "b", &conf)
            .expect_ok("DEL b");
        node.call("DEL", None, "ctr-a", "a", &conf)
            .expect_ok("second DEL a");
        node.call("DEL", None, "ctr-b", "b", &conf)
            .expect_ok("second DEL b");

        common::assert_clean(&node, &pa);
        common::assert_clean(&node, &pb);
        assert!(
            !node.state().join("status/default/a.json").exists(),
            "status file left"
        );
    }
}

fn short_form_names_interfaces_and_default_route_moves(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue@in0,default/red");
    node.manifest(
        "pod-c.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: c
  namespace: default
  annotations:
    k8s.v1.cni.cncf.io/networks: '[{"name":"blue","default-route":["10.71.0.1"]}]'
"#,
    );
    node.manifest(
        "pod-d.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: d
  namespace: default
  annotations:
    v1.multus-cni.io/default-network: default/blue
"#,
    );
    let conf = node.conf("1.0.0");

    let pa = Netns::new("vlpa");
    node.call("ADD", Some(&pa), "ctr-a", "a", &conf)
        .expect_ok("ADD a");
    let mut links = pa.links();
    links.sort();
    assert_eq!(
        links,
        vec!["eth0", "in0", "net2"],
        "ns/name@ifname and positional net2"
    );

    let pc = Netns::new("vlpc");
    node.call("ADD", Some(&pc), "ctr-c", "c", &conf)
        .expect_ok("ADD c");
    let route = pc.sh("ip route show default");
    assert!(
        route.contains("via 10.71.0.1 dev net1"),
        "default route moved: {route}"
    );
    assert_eq!(route.lines().count(), 1, "only one default route: {route}");
    let status: Value =
        serde_json::from_slice(&std::fs::read(node.state().join("status/default/c.json")).unwrap())
            .unwrap();
    assert!(
        status[0].get("default").is_none(),
        "cluster network no longer default"
    );
    assert_eq!(status[1]["default"], true);
    assert_eq!(status[1]["gateway"][0], "10.71.0.1");

    let pd = Netns::new("vlpd");
    let rd = node
        .call("ADD", Some(&pd), "ctr-d", "d", &conf)
        .expect_ok("ADD d")
        .clone();
    assert!(
        eth0_ip(&rd).starts_with("10.71.0."),
        "default-network override: {rd}"
    );

    for (p, c, n) in [
        (&pa, "ctr-a", "a"),
        (&pc, "ctr-c", "c"),
        (&pd, "ctr-d", "d"),
    ] {
        node.call("DEL", Some(p), c, n, &conf).expect_ok("DEL");
    }
    assert!(node.veths().is_empty());
    assert!(node.reserved_ips().is_empty(), "{:?}", node.reserved_ips());
}

fn runtime_port_mappings_reach_the_cluster_networks_portmap(mode: Mode) {
    let node = Node::with_mode(mode);
    let mut conf = node.conf("1.0.0");
    conf["clusterNetwork"] = serde_json::json!({
        "cniVersion": "1.0.0", "name": "podnet", "plugins": [
            {"type": "bridge", "bridge": "cni-pod", "isGateway": true,
             "ipam": {"type": "host-local", "subnet": "10.70.0.0/24", "dataDir": node.ipam()}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]
    });
    // What containerd injects for a pod with hostPort 18080 -> 80.
    conf["runtimeConfig"] = serde_json::json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let pod = Netns::new("vlpa");
    let r = node
        .call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD")
        .clone();
    let ip = eth0_ip(&r);
    let nat = node.ns.sh("iptables-save -t nat");
    assert!(
        nat.contains("--dport 18080") && nat.contains(&format!("{ip}:80")),
        "portmap DNAT for 18080 -> {ip}:80 missing:\n{nat}"
    );
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL");
    let nat = node.ns.sh("iptables-save -t nat");
    assert!(
        !nat.contains("--dport 18080"),
        "portmap rule left after DEL:\n{nat}"
    );
    assert!(node.reserved_ips().is_empty());
}

in_both_modes!(
    three_networks_traffic_and_clean_delete_in_every_version,
    short_form_names_interfaces_and_default_route_moves,
    runtime_port_mappings_reach_the_cluster_networks_portmap,
);
