//! The Kubernetes API source (kube-rs) against recorded API responses.
//!
//! No kube-apiserver can run on this machine, so a small HTTP server in this
//! test answers with API responses in the exact shape kube-apiserver returns
//! (tests/fixtures/kube) and records the requests it gets. Everything else is
//! real: the plugin binary, the kube-rs client, namespaces and reference plugins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{Netns, Node};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    content_type: String,
    body: String,
}

/// A fake API server: answers GETs from fixtures, PATCHes with the pod.
struct FakeApi {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/kube/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

impl FakeApi {
    /// Listens on the loopback of `node`'s namespace, where the plugin runs.
    fn start(node: &Node, pod_uid: &str) -> Self {
        let ipam = node.ipam().to_str().unwrap().to_string();
        let ipam = ipam.as_str();
        let listener = bind_in(node);
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let pod =
            fixture("pod-default-a.json").replace("6f1c3a52-9d7e-4b1a-8f0e-2b8c4a1d9e01", pod_uid);
        let nad = fixture("nad-default-blue.json").replace("@IPAM@", ipam);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (seen, pod, nad) = (seen.clone(), pod.clone(), nad.clone());
                std::thread::spawn(move || serve(stream, &seen, &pod, &nad));
            }
        });
        FakeApi { port, requests }
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{token: test-token}}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn bind_in(node: &Node) -> TcpListener {
    netattach::netns::run_in(std::path::Path::new(&node.ns.path()), || {
        TcpListener::bind("127.0.0.1:0")
    })
    .unwrap()
    .unwrap()
}

fn serve(stream: std::net::TcpStream, seen: &Mutex<Vec<Request>>, pod: &str, nad: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path_only = path.split('?').next().unwrap_or_default().to_string();
        seen.lock().unwrap().push(Request {
            method: method.clone(),
            path: path_only.clone(),
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let nads = "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions/";
        let (status, text) = match (method.as_str(), path_only.as_str()) {
            ("GET", "/api/v1/namespaces/default/pods/a") => (200, pod.to_string()),
            ("PATCH", "/api/v1/namespaces/default/pods/a/status") => (200, pod.to_string()),
            ("GET", p) if p == format!("{nads}blue") => (200, nad.to_string()),
            ("GET", p) if p.starts_with(nads) => {
                (404, fixture("nad-not-found.json").replace("@NAME@", &p[nads.len()..]))
            }
            _ => (404, json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}).to_string()),
        };
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
    }
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
    let api = FakeApi::start(&node, uid);
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
    assert_eq!(patch.path, "/api/v1/namespaces/default/pods/a/status");
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
            .any(|r| r.method == "GET" && r.path.ends_with("network-attachment-definitions/blue")),
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
    let api = FakeApi::start(&node, "uid-1");
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
    let dead = bind_in(&node).local_addr().unwrap().port();
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
