//! The Kubernetes API source (kube-rs) against recorded API responses.
//!
//! No kube-apiserver can run on this machine, so a small HTTP server
//! (common/fake_api.rs) answers with API responses in the exact shape kube-apiserver returns
//! (tests/fixtures/kube) and records the requests it gets. Everything else is
//! real: the plugin binary, the kube-rs client, namespaces and reference plugins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use common::fake_api::{fixture, FakeApi, Reply};
use common::{Netns, Node};
use serde_json::{json, Value};

/// The API as the plugin sees it in direct mode: GET of pod a (its UID
/// set to `pod_uid`) and of NAD blue, 404 for other NADs, the PATCH of the
/// pod's status.
fn start_api(node: &Node, pod_uid: &str) -> FakeApi {
    let ipam = node.ipam().to_str().unwrap().to_string();
    let pod = fixture("pod-default-a.json", &ipam)
        .replace("6f1c3a52-9d7e-4b1a-8f0e-2b8c4a1d9e01", pod_uid);
    let nad = fixture("nad-default-blue.json", &ipam);
    FakeApi::start(node, move |req| {
        let nads = "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions/";
        match (req.method.as_str(), req.path()) {
            ("GET", "/api/v1/namespaces/default/pods/a") => Reply::Json(200, pod.clone()),
            ("PATCH", "/api/v1/namespaces/default/pods/a/status") => Reply::Json(200, pod.clone()),
            ("GET", p) if p == format!("{nads}blue") => Reply::Json(200, nad.clone()),
            ("GET", p) if p.starts_with(nads) => Reply::Json(
                404,
                fixture("nad-not-found.json", &ipam).replace("@NAME@", &p[nads.len()..]),
            ),
            _ => Reply::not_found(),
        }
    })
}

fn kube_conf(node: &Node, kubeconfig: &std::path::Path) -> Value {
    let mut conf = node.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("manifestsDir");
    conf["kubeconfig"] = json!(kubeconfig);
    conf
}

#[test]
fn add_reads_pod_and_nads_from_the_api_and_patches_network_status() {
    let node = Node::new();
    let uid = "6f1c3a52-9d7e-4b1a-8f0e-2b8c4a1d9e01";
    let api = start_api(&node, uid);
    let conf = kube_conf(&node, &api.kubeconfig(node.dir.path()));
    let pod = Netns::new("vlpa");
    node.call_env(
        "ADD",
        &pod.path(),
        "ctr-a",
        "a",
        &conf,
        &[(
            "CNI_ARGS",
            &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_UID={uid}"),
        )],
    )
    .expect_ok("ADD through the API");
    let mut links = pod.links();
    links.sort();
    assert_eq!(
        links,
        vec!["eth0", "pod1a2b3c4d5e6"],
        "KubeVirt-style interface name from the annotation"
    );

    let reqs = api.requests();
    let patch = reqs
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("network-status patched");
    assert_eq!(patch.path(), "/api/v1/namespaces/default/pods/a/status");
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let body: Value = serde_json::from_str(&patch.body).unwrap();
    let status: Value = serde_json::from_str(
        body["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status[0]["name"], "podnet");
    assert_eq!(status[0]["default"], true);
    assert_eq!(status[1]["name"], "default/blue");
    assert_eq!(status[1]["interface"], "pod1a2b3c4d5e6");
    assert!(status[1]["ips"][0]
        .as_str()
        .unwrap()
        .starts_with("10.71.0."));
    assert!(
        reqs.iter()
            .any(|r| r.method == "GET" && r.path().ends_with("network-attachment-definitions/blue")),
        "{reqs:?}"
    );

    // DEL needs no API at all: it works from state.
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL");
    assert!(node.reserved_ips().is_empty());
    let before = api.requests().len();
    node.call("DEL", None, "ctr-a", "a", &conf)
        .expect_ok("second DEL");
    assert_eq!(api.requests().len(), before, "DEL made API calls");
}

#[test]
fn api_errors_map_to_cni_codes() {
    let node = Node::new();
    let api = start_api(&node, "uid-1");
    let conf = kube_conf(&node, &api.kubeconfig(node.dir.path()));
    let pod = Netns::new("vlpa");

    // The pod in the API is a different incarnation than the one being set up.
    let msg = node
        .call_env(
            "ADD",
            &pod.path(),
            "ctr-a",
            "a",
            &conf,
            &[(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_UID=other",
            )],
        )
        .expect_err(11, "UID mismatch");
    assert!(msg.contains("UID"), "{msg}");

    // A pod the API does not know.
    let msg = node
        .call_env("ADD", &pod.path(), "ctr-z", "zz", &conf, &[])
        .expect_err(11, "unknown pod");
    assert!(msg.contains("default/zz"), "{msg}");

    // The default network named as a NAD the API does not have.
    let mut named = conf.clone();
    named["clusterNetwork"] = json!("default/missing");
    let msg = node
        .call("ADD", Some(&pod), "ctr-a", "a", &named)
        .expect_err(7, "unknown NAD");
    assert!(
        msg.contains("default/missing") && msg.contains("not found"),
        "{msg}"
    );

    // The API server is down: try again later.
    let dead = node.free_port();
    let kc = node.dir.path().join("dead-kubeconfig");
    std::fs::write(
        &kc,
        std::fs::read_to_string(api.kubeconfig(node.dir.path()))
            .unwrap()
            .replace(&api.port.to_string(), &dead.to_string()),
    )
    .unwrap();
    let down = kube_conf(&node, &kc);
    node.call("ADD", Some(&pod), "ctr-a", "a", &down)
        .expect_err(11, "API down");

    assert!(pod.links().is_empty());
    assert!(node.reserved_ips().is_empty());
    assert!(node.attachments().is_empty());
}
