//! Failure paths with real namespaces and the reference plugins: a delegate
//! failing mid-ADD leaves nothing behind, DEL works from state after the NAD
//! is gone, DEL is idempotent, real DEL errors are reported, GC removes stale
//! attachments and their IPs, STATUS tells whether ADD can be served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::{assert_clean, Mode, Netns, Node};
use serde_json::json;

fn delegate_failing_on_a_later_network_rolls_back_everything(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.nad(
        "broken",
        json!({"cniVersion": "1.0.0", "name": "broken", "type": "macvlan", "master": "nosuchdev",
               "ipam": {"type": "host-local", "subnet": "10.75.0.0/24", "dataDir": node.ipam()}}),
    );
    node.pod("a", "blue,broken,red");
    let pod = Netns::new("vlpa");
    // Concurrent attach (default) and the one-by-one order both undo everything.
    for parallel in [true, false] {
        let mut conf = node.conf("1.0.0");
        conf["parallel"] = json!(parallel);
        let msg = node
            .call("ADD", Some(&pod), "ctr-a", "a", &conf)
            .expect_err_any("ADD with a broken second network");
        assert!(
            msg.contains("default/broken") && msg.contains("net2"),
            "{msg}"
        );
        assert_clean(&node, &pod);
    }
}

fn failure_inside_a_config_list_releases_the_earlier_plugins(mode: Mode) {
    let node = Node::with_mode(mode);
    // ptp reserves an IP and makes a veth, then tuning fails on a bad sysctl.
    node.nad(
        "chain",
        json!({"cniVersion": "1.0.0", "name": "chain", "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.76.0.0/24", "dataDir": node.ipam()}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.no_such_knob": "1"}}]}),
    );
    node.pod("a", "chain");
    let pod = Netns::new("vlpa");
    let msg = node
        .call("ADD", Some(&pod), "ctr-a", "a", &node.conf("1.1.0"))
        .expect_err_any("ADD with a failing tuning");
    assert!(
        msg.contains("default/chain") && msg.contains("tuning"),
        "{msg}"
    );
    assert_clean(&node, &pod);
}

fn del_works_from_state_after_the_nad_is_deleted(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue,red");
    let pod = Netns::new("vlpa");
    let conf = node.conf("1.0.0");
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD");
    assert_eq!(node.reserved_ips().len(), 3);
    for f in ["nad-blue.yaml", "nad-red.yaml", "pod-a.yaml"] {
        std::fs::remove_file(node.manifests().join(f)).unwrap();
    }
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL without NADs");
    assert_clean(&node, &pod);
}

fn del_is_idempotent_and_unknown_attachments_are_fine(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue");
    let pod = Netns::new("vlpa");
    let conf = node.conf("0.4.0");
    node.call("DEL", Some(&pod), "never-added", "a", &conf)
        .expect_ok("DEL of an unknown container");
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD");
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL 1");
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL 2");
    node.call("DEL", None, "ctr-a", "a", &conf)
        .expect_ok("DEL with empty CNI_NETNS");
    node.call_env(
        "DEL",
        "/var/run/netns/gone-already",
        "ctr-a",
        "a",
        &conf,
        &[],
    )
    .expect_ok("DEL with a namespace that no longer exists");
    assert_clean(&node, &pod);
}

fn del_when_the_namespace_is_already_gone_still_releases_ips(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue");
    let conf = node.conf("1.0.0");
    let pod = Netns::new("vlpa");
    let path = pod.path();
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD");
    drop(pod); // the runtime removed the sandbox first
    node.call_env("DEL", &path, "ctr-a", "a", &conf, &[])
        .expect_ok("DEL after netns removal");
    assert!(node.reserved_ips().is_empty(), "{:?}", node.reserved_ips());
    assert!(node.attachments().is_empty());
    // The kernel removes a dead namespace's veths asynchronously.
    assert!(
        common::wait_until(std::time::Duration::from_secs(5), || node
            .veths()
            .is_empty()),
        "{:?}",
        node.veths()
    );
}

fn a_real_delegate_del_error_is_reported_and_retried_later(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue");
    let pod = Netns::new("vlpa");
    let conf = node.conf("1.0.0");
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD");
    // The bridge plugin disappears from CNI_PATH: DEL cannot release its IPs.
    let link = node.bin().join("bridge");
    std::fs::remove_file(&link).unwrap();
    let msg = node
        .call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_err(7, "DEL with the delegate missing");
    assert!(msg.contains("bridge"), "{msg}");
    assert_eq!(node.attachments(), vec!["ctr-a"], "state kept for a retry");
    std::os::unix::fs::symlink("/usr/lib/cni/bridge", &link).unwrap();
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL retry");
    assert_clean(&node, &pod);
}

fn gc_removes_stale_attachments_and_their_ips(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue");
    node.pod("b", "blue");
    let (pa, pb) = (Netns::new("vlpa"), Netns::new("vlpb"));
    let mut conf = node.conf("1.1.0");
    node.call("ADD", Some(&pa), "ctr-a", "a", &conf)
        .expect_ok("ADD a");
    node.call("ADD", Some(&pb), "ctr-b", "b", &conf)
        .expect_ok("ADD b");
    assert_eq!(node.reserved_ips().len(), 4);
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-a", "ifname": "eth0"}]);
    node.call_env("GC", "", "", "", &conf, &[]).expect_ok("GC");
    assert_eq!(node.attachments(), vec!["ctr-a"]);
    assert_eq!(
        node.reserved_ips().len(),
        2,
        "b's IPs released: {:?}",
        node.reserved_ips()
    );
    assert!(pb.links().is_empty(), "b's links removed: {:?}", pb.links());
    assert_eq!(pa.links().len(), 2, "a untouched");
    // GC with a list that holds everything changes nothing.
    node.call_env("GC", "", "", "", &conf, &[])
        .expect_ok("GC again");
    assert_eq!(node.attachments(), vec!["ctr-a"]);
    node.call("DEL", Some(&pa), "ctr-a", "a", &node.conf("1.1.0"))
        .expect_ok("DEL a");
    assert_clean(&node, &pa);
}

fn repeated_add_starts_clean(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue");
    let pod = Netns::new("vlpa");
    let conf = node.conf("1.0.0");
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD 1");
    node.call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("ADD 2");
    assert_eq!(node.reserved_ips().len(), 2, "no IP leaked by the retry");
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL");
    assert_clean(&node, &pod);
}

fn status_reports_whether_add_can_be_served(mode: Mode) {
    let node = Node::with_mode(mode);
    let conf = node.conf("1.1.0");
    node.call_env("STATUS", "", "", "", &conf, &[])
        .expect_ok("STATUS");
    let mut broken = conf.clone();
    broken["clusterNetwork"]["type"] = json!("not-installed");
    let msg = node
        .call_env("STATUS", "", "", "", &broken, &[])
        .expect_err(50, "STATUS without the cluster plugin");
    assert!(msg.contains("not-installed"), "{msg}");
}

in_both_modes!(
    delegate_failing_on_a_later_network_rolls_back_everything,
    failure_inside_a_config_list_releases_the_earlier_plugins,
    del_works_from_state_after_the_nad_is_deleted,
    del_is_idempotent_and_unknown_attachments_are_fine,
    del_when_the_namespace_is_already_gone_still_releases_ips,
    a_real_delegate_del_error_is_reported_and_retried_later,
    gc_removes_stale_attachments_and_their_ips,
    repeated_add_starts_clean,
    status_reports_whether_add_can_be_served,
);
