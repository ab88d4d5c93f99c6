//! The agent's watch-based cache of the Kubernetes API, end to end: runtime
//! call -> virtlink-cni shim -> `virtlink agent --kubeconfig` -> reflectors.
//!
//! No kube-apiserver can run on this machine, so a small HTTP server in this
//! test plays it from recorded API responses (tests/fixtures/kube): the
//! metadata-only list of this node's pods and the NAD list, then watch
//! streams (ADDED, MODIFIED, DELETED, BOOKMARK events, chunked and kept open
//! like the real thing), a GET for a pod the cache lacks, and the
//! network-status PATCH. It records every request so the test can tell which
//! calls reached the API. Everything else is real: the shim and agent
//! binaries, kube-rs, namespaces and the reference plugins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_clean, Netns, Node};
use serde_json::{json, Value};

const UID_A: &str = "6f1c3a52-9d7e-4b1a-8f0e-2b8c4a1d9e01";
const UID_B: &str = "1d2e3f4a-5b6c-4d7e-8f90-a1b2c3d4e5f6";
const UID_C: &str = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";

#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query, as sent.
    target: String,
    content_type: String,
    body: String,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
    fn is_watch(&self) -> bool {
        self.target.contains("watch=true") || self.target.contains("watch=1")
    }
}

struct FakeApi {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn fixture(name: &str, ipam: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/kube/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("@IPAM@", ipam)
}

impl FakeApi {
    fn start(node: &Node) -> Self {
        let ipam = node.ipam().to_str().unwrap().to_string();
        let listener = netattach::netns::run_in(std::path::Path::new(&node.ns.path()), || {
            TcpListener::bind("127.0.0.1:0")
        })
        .unwrap()
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (seen, stopped, ipam) = (seen.clone(), stopped.clone(), ipam.clone());
                        std::thread::spawn(move || serve(stream, &seen, &stopped, &ipam));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeApi {
            port,
            requests,
            stop,
        }
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

fn serve(stream: std::net::TcpStream, seen: &Mutex<Vec<Request>>, stop: &AtomicBool, ipam: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
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
        let req = Request {
            method,
            target,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        seen.lock().unwrap().push(req.clone());
        let nads = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
        if req.method == "GET" && req.is_watch() {
            let events = match req.path() {
                "/api/v1/pods" => fixture("pods-node-1-metadata-watch.jsonl", ipam),
                p if p == nads => fixture("nads-watch.jsonl", ipam),
                _ => String::new(),
            };
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            for event in events.lines().filter(|l| !l.trim().is_empty()) {
                let chunk = format!("{event}\n");
                let _ = write!(out, "{:x}\r\n{chunk}\r\n", chunk.len());
                let _ = out.flush();
            }
            // A watch stays open until the server ends it.
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = write!(out, "0\r\n\r\n");
            return;
        }
        let (status, text) = match (req.method.as_str(), req.path()) {
            ("GET", "/api/v1/pods") => (200, fixture("pods-node-1-metadata-list.json", ipam)),
            ("GET", p) if p == nads => (200, fixture("nads-list.json", ipam)),
            ("GET", "/api/v1/namespaces/default/pods/c") => {
                (200, fixture("pod-default-c-metadata.json", ipam))
            }
            ("PATCH", p) if p.starts_with("/api/v1/namespaces/default/pods/") => {
                (200, fixture("pod-default-a.json", ipam))
            }
            _ => (
                404,
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404})
                    .to_string(),
            ),
        };
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
    }
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

fn free_port(node: &Node) -> u16 {
    netattach::netns::run_in(std::path::Path::new(&node.ns.path()), || {
        TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port())
    })
    .unwrap()
    .unwrap()
}

fn add(node: &Node, pod: &Netns, name: &str, uid: &str, conf: &Value) -> common::Outcome {
    node.call_env(
        "ADD",
        &pod.path(),
        &format!("ctr-{name}"),
        name,
        conf,
        &[(
            "CNI_ARGS",
            &format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_UID={uid}"
            ),
        )],
    )
}

#[test]
fn add_is_served_from_the_watch_cache_and_network_status_is_patched() {
    let mut node = Node::new();
    let api = FakeApi::start(&node);
    let kubeconfig = api.kubeconfig(node.dir.path());
    let port = free_port(&node);
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
    add(&node, &pa, "a", UID_A, &conf).expect_ok("ADD a");
    add(&node, &pb, "b", UID_B, &conf).expect_ok("ADD b");
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
    add(&node, &pc, "c", UID_C, &conf).expect_ok("ADD c (cache miss)");
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path() == "/api/v1/namespaces/default/pods/c"),
        "the miss was served by a GET"
    );
    // A pod the API does not know either: retry later.
    let pz = Netns::new("vlpz");
    add(&node, &pz, "zz", "uid-z", &conf).expect_err(11, "unknown pod");

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
    let dead = free_port(&node);
    let kubeconfig = node.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{dead}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{token: test-token}}\n"
        ),
    )
    .unwrap();
    let port = free_port(&node);
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
    let msg = add(&node, &pod, "a", UID_A, &conf).expect_err(11, "ADD with the API down");
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
