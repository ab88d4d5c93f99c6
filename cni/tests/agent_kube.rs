//! The agent's watch-based cache of the Kubernetes API, end to end: runtime
//! call -> virtlink-cni shim -> `virtlink agent --kubeconfig` -> reflectors.
//!
//! No kube-apiserver can run on this machine, so a small HTTP server
//! (common/fake_api.rs) plays it from recorded API responses (tests/fixtures/kube): the
//! metadata-only list of this node's pods and the NAD list, then watch
//! streams (ADDED, MODIFIED, DELETED, BOOKMARK events, chunked and kept open
//! like the real thing), a GET for a pod the cache lacks, and the
//! network-status PATCH. It records every request so the test can tell which
//! calls reached the API. Everything else is real: the shim and agent
//! binaries, kube-rs, namespaces and the reference plugins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::fake_api::{fixture, FakeApi, Reply, Request};
use common::{assert_clean, Netns, Node};
use serde_json::Value;

const UID_A: &str = "6f1c3a52-9d7e-4b1a-8f0e-2b8c4a1d9e01";
const UID_B: &str = "1d2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6";
const UID_C: &str = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";

/// The API as this node's agent sees it: the metadata-only list and watch
/// of this node's pods, the NAD list and watch, a GET for pod c (not in the
/// lists), the network-status PATCH.
fn start_api(node: &Node) -> FakeApi {
    let ipam = node.ipam().to_str().unwrap().to_string();
    FakeApi::start(node, move |req| {
        let nads = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
        if req.method == "GET" && req.is_watch() {
            return Reply::Watch(match req.path() {
                "/api/v1/pods" => fixture("pods-node-1-metadata-watch.jsonl", &ipam),
                p if p == nads => fixture("nads-watch.jsonl", &ipam),
                _ => String::new(),
            });
        }
        match (req.method.as_str(), req.path()) {
            ("GET", "/api/v1/pods") => {
                Reply::Json(200, fixture("pods-node-1-metadata-list.json", &ipam))
            }
            ("GET", p) if p == nads => Reply::Json(200, fixture("nads-list.json", &ipam)),
            ("GET", "/api/v1/namespaces/default/pods/c") => {
                Reply::Json(200, fixture("pod-default-c-metadata.json", &ipam))
            }
            ("PATCH", p) if p.starts_with("/api/v1/namespaces/default/pods/") => {
                Reply::Json(200, fixture("pod-default-a.json", &ipam))
            }
            _ => Reply::not_found(),
        }
    })
}

/// A GET on the agent's HTTP endpoint (in the node namespace).
fn http_get(node: &Node, port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    netattach::netns::run_in(std::path::Path::new(&node.ns.path()), move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>(text)
    })
    .unwrap()
    .map(|text| {
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
        (status, body.to_string())
    })
    .unwrap_or((0, String::new()))
}

/// The value of one metric sample line (`name{labels} value`).
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn add_is_served_from_the_watch_cache_and_network_status_is_patched() {
    let mut node = Node::new();
    let api = start_api(&node);
    let kubeconfig = api.kubeconfig(node.dir.path());
    let port = node.free_port();
    node.start_agent(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-1",
        "--http",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut conf = node.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("manifestsDir");

    // Liveness at once; readiness once both lists are in and the watch
    // events applied (a, b; short-lived came and went; blue, red).
    assert_eq!(http_get(&node, port, "/healthz").0, 200);
    let synced = common::wait_until(Duration::from_secs(20), || {
        let (status, _) = http_get(&node, port, "/readyz");
        let (_, m) = http_get(&node, port, "/metrics");
        status == 200
            && metric(&m, "virtlink_agent_cache_objects{kind=\"pods\"}") == Some(2.0)
            && metric(
                &m,
                "virtlink_agent_cache_objects{kind=\"network_attachment_definitions\"}",
            ) == Some(2.0)
    });
    assert!(
        synced,
        "caches never synced: {}\n{:?}\n{}",
        http_get(&node, port, "/metrics").1,
        api.requests(),
        node.agent().log_text()
    );
    let reqs = api.requests();
    let pod_list = reqs
        .iter()
        .find(|r| r.path() == "/api/v1/pods" && !r.is_watch())
        .expect("pods listed");
    assert!(
        pod_list
            .target
            .contains("fieldSelector=spec.nodeName%3Dnode-1"),
        "only this node's pods: {}",
        pod_list.target
    );
    assert!(
        reqs.iter().all(|r| r.method == "GET"),
        "nothing but list and watch so far: {reqs:?}"
    );

    // a: from the list; b and red: from watch events. No GET for either.
    let (pa, pb) = (Netns::new("vlpa"), Netns::new("vlpb"));
    node.add_pod(&pa, "a", UID_A, &conf).expect_ok("ADD a");
    node.add_pod(&pb, "b", UID_B, &conf).expect_ok("ADD b");
    assert_eq!(pa.links(), vec!["eth0", "pod1a2b3c4d5e6"]);
    assert_eq!(pb.links(), vec!["eth0", "net1"]);
    let reqs = api.requests();
    let gets: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path().contains("/namespaces/"))
        .collect();
    assert!(gets.is_empty(), "ADD went to the API: {gets:?}");

    // network-status, through pods/status, after each ADD.
    let patches: Vec<&Request> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    let paths: Vec<&str> = patches.iter().map(|r| r.path()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/default/pods/a/status",
            "/api/v1/namespaces/default/pods/b/status"
        ]
    );
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    let body: Value = serde_json::from_str(&patches[0].body).unwrap();
    let status: Value = serde_json::from_str(
        body["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status[0]["name"], "podnet");
    assert_eq!(status[1]["name"], "default/blue");
    assert_eq!(status[1]["interface"], "pod1a2b3c4d5e6");

    // c is not in the cache (its watch event has not come): one GET.
    let pc = Netns::new("vlpc");
    node.add_pod(&pc, "c", UID_C, &conf)
        .expect_ok("ADD c (cache miss)");
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path() == "/api/v1/namespaces/default/pods/c"),
        "the miss was served by a GET"
    );
    // A pod the API does not know either: retry later.
    let pz = Netns::new("vlpz");
    node.add_pod(&pz, "zz", "uid-z", &conf)
        .expect_err(11, "unknown pod");

    let m = http_get(&node, port, "/metrics").1;
    assert_eq!(
        metric(
            &m,
            "virtlink_agent_cni_calls_total{verb=\"ADD\",result=\"ok\"}"
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "virtlink_agent_cni_calls_total{verb=\"ADD\",result=\"error\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&m, "virtlink_agent_cache_misses_total").unwrap_or(0.0) >= 2.0);
    assert_eq!(
        metric(
            &m,
            "virtlink_agent_cni_call_duration_seconds_count{verb=\"ADD\"}"
        ),
        Some(4.0)
    );
    assert_eq!(metric(&m, "virtlink_agent_cni_calls_in_flight"), Some(0.0));

    for (p, n) in [(&pa, "a"), (&pb, "b"), (&pc, "c")] {
        node.call("DEL", Some(p), &format!("ctr-{n}"), n, &conf)
            .expect_ok("DEL");
    }
    for p in [&pa, &pb, &pc, &pz] {
        assert_clean(&node, p);
    }
}

/// The API server is unreachable: the agent still serves (DEL needs no API),
/// ADD is "try again later", and the agent never reports ready.
#[test]
fn api_down_means_not_ready_and_add_retries_later() {
    let mut node = Node::new();
    // A kubeconfig pointing at a port nothing listens on.
    let dead = node.free_port();
    let kubeconfig = node.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{dead}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{token: test-token}}\n"
        ),
    )
    .unwrap();
    let port = node.free_port();
    node.start_agent(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-1",
        "--http",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut conf = node.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("manifestsDir");
    assert!(common::wait_until(Duration::from_secs(10), || http_get(
        &node, port, "/healthz"
    )
    .0 == 200));
    let pod = Netns::new("vlpa");
    let msg = node
        .add_pod(&pod, "a", UID_A, &conf)
        .expect_err(11, "ADD with the API down");
    assert!(msg.contains("get pod default/a"), "{msg}");
    assert_eq!(http_get(&node, port, "/readyz").0, 503);
    node.call("DEL", Some(&pod), "ctr-a", "a", &conf)
        .expect_ok("DEL with the API down");
    assert_clean(&node, &pod);

    // Never ready, still stops promptly and cleanly on SIGTERM.
    let agent = node.agent();
    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", agent.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopping took {:?}",
        started.elapsed()
    );
}
