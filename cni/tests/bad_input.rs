//! Bad input gets a CNI error object with the spec's code and a message that
//! names what is wrong, and nothing is left behind (links, IPs, state):
//! called directly and through the shim and `virtlink agent` alike.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::{assert_clean, Mode, Netns, Node};
use serde_json::json;

fn env<'a>(node: &'a Node, pod: &'a Netns, bin: &'a str) -> Vec<(&'static str, String)> {
    let _ = node;
    vec![
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "ctr-a".to_string()),
        ("CNI_NETNS", pod.path()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", bin.to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a".to_string(),
        ),
    ]
}

fn call_without(node: &Node, pod: &Netns, drop_var: &str, stdin: &[u8]) -> common::Outcome {
    let bin = node.bin().to_string_lossy().into_owned();
    let vars = env(node, pod, &bin);
    let kept: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| *k != drop_var)
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    node.call_raw(&kept, &[], stdin)
}

fn malformed_json_is_code_6(mode: Mode) {
    let node = Node::with_mode(mode);
    let pod = Netns::new("vlpa");
    let out = call_without(&node, &pod, "", b"{\"cniVersion\": \"1.0.0\", ");
    let msg = out.expect_err(6, "malformed JSON");
    assert!(msg.contains("decode network config"), "{msg}");
    assert_clean(&node, &pod);
}

fn missing_cni_variables_are_code_4(mode: Mode) {
    let node = Node::with_mode(mode);
    let pod = Netns::new("vlpa");
    let conf = serde_json::to_vec(&node.conf("1.0.0")).unwrap();
    for var in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ] {
        let msg = call_without(&node, &pod, var, &conf).expect_err(4, var);
        assert!(msg.contains(var), "{var}: {msg}");
    }
    assert_clean(&node, &pod);
}

fn unknown_cni_version_is_code_1(mode: Mode) {
    let node = Node::with_mode(mode);
    let pod = Netns::new("vlpa");
    let mut conf = node.conf("1.0.0");
    conf["cniVersion"] = json!("9.9.9");
    let msg = node
        .call("ADD", Some(&pod), "ctr-a", "a", &conf)
        .expect_err(1, "unknown version");
    assert!(msg.contains("9.9.9"), "{msg}");
    assert_clean(&node, &pod);
}

fn unknown_nad_is_code_7_and_creates_nothing(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue,does-not-exist");
    let pod = Netns::new("vlpa");
    let msg = node
        .call("ADD", Some(&pod), "ctr-a", "a", &node.conf("1.0.0"))
        .expect_err(7, "unknown NAD");
    assert!(
        msg.contains("default/does-not-exist") && msg.contains("not found"),
        "{msg}"
    );
    assert_clean(&node, &pod);
}

fn malformed_annotation_is_rejected(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    let pod = Netns::new("vlpa");
    for (annotation, code) in [
        (r#"[{"name": "blue""#, 6),
        ("Blue_Net", 7),
        ("blue@name-far-too-long-x", 7),
        ("blue,blue@net1", 7),
    ] {
        node.pod("a", annotation);
        let msg = node
            .call("ADD", Some(&pod), "ctr-a", "a", &node.conf("1.0.0"))
            .expect_err(code, annotation);
        assert!(
            msg.contains("k8s.v1.cni.cncf.io/networks"),
            "{annotation}: {msg}"
        );
        assert_clean(&node, &pod);
    }
}

fn delegate_binary_that_does_not_exist_is_code_7(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.nad(
        "ghost",
        json!({"cniVersion": "1.0.0", "name": "ghost", "type": "no-such-plugin"}),
    );
    node.pod("a", "blue,ghost");
    let pod = Netns::new("vlpa");
    let msg = node
        .call("ADD", Some(&pod), "ctr-a", "a", &node.conf("1.0.0"))
        .expect_err(7, "missing delegate");
    assert!(
        msg.contains("no-such-plugin") && msg.contains("default/ghost"),
        "{msg}"
    );
    assert_clean(&node, &pod);
}

fn netns_that_does_not_exist_is_code_3(mode: Mode) {
    let node = Node::with_mode(mode);
    node.standard_nads();
    node.pod("a", "blue");
    let pod = Netns::new("vlpa");
    let msg = node
        .call_env(
            "ADD",
            "/var/run/netns/no-such-netns",
            "ctr-a",
            "a",
            &node.conf("1.0.0"),
            &[],
        )
        .expect_err(3, "missing netns");
    assert!(msg.contains("no-such-netns"), "{msg}");
    assert_clean(&node, &pod);
}

fn nad_with_broken_config_names_the_network(mode: Mode) {
    let node = Node::with_mode(mode);
    node.manifest(
        "nad-bad.yaml",
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: bad}\nspec:\n  config: '{not json'\n",
    );
    node.pod("a", "bad");
    let pod = Netns::new("vlpa");
    let msg = node
        .call("ADD", Some(&pod), "ctr-a", "a", &node.conf("1.0.0"))
        .expect_err(6, "NAD with invalid JSON");
    assert!(msg.contains("default/bad"), "{msg}");
    assert_clean(&node, &pod);
}

in_both_modes!(
    malformed_json_is_code_6,
    missing_cni_variables_are_code_4,
    unknown_cni_version_is_code_1,
    unknown_nad_is_code_7_and_creates_nothing,
    malformed_annotation_is_rejected,
    delegate_binary_that_does_not_exist_is_code_7,
    netns_that_does_not_exist_is_code_3,
    nad_with_broken_config_names_the_network,
);
