//! The agent's Kubernetes side of isolated networks (docs/vnet.md, "The
//! agent's sync"), end to end: runtime call -> virtlink-cni shim ->
//! `virtlink agent --kubeconfig ... --underlay-ip ...` -> the `virtlink`
//! type in-process, with the API.
//!
//! No kube-apiserver can run on this machine: a small HTTP server
//! (common/fake_api.rs) plays it from recorded API responses
//! (tests/fixtures/kube, in the shape kube-apiserver returns them): the
//! node's pods and their NAD (type `virtlink`, no `node`: the agent fills in
//! its own settings), the VirtualNetwork list and watch, the list of this node's own slices (one
//! stale slice, of a network the node no longer has), the slices of network
//! `vblue` (a remote node's) and a live watch of them the test feeds with
//! MODIFIED, DELETED and ADDED events, the SSA PATCH and the DELETE of a
//! slice. Everything else is real: the shim, the agent, kube-rs, namespaces,
//! the eBPF datapath and its pinned maps (read with `virtlink vnet-stats`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::fake_api::{fixture, FakeApi, Feed, Reply, Request};
use common::{unique, Netns, Node};
use serde_json::{json, Value};

const UID_VA: &str = "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c41";
const UID_VB: &str = "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c42";
const SLICES: &str = "/apis/virtlink.io/v1alpha1/networkendpointslices";

/// Removes the node's pins (maps and tcx links) on drop.
struct Pins(virtlink_vnet::node::NodeConfig);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = virtlink_vnet::node::remove_pins(&self.0);
    }
}

/// A node (direct-mode CNI until an agent is started on it) with its own
/// vnet node name, cluster and state directories, and the substitutions
/// that put them into the recorded API responses.
struct Setup {
    node: Node,
    node_name: String,
    cluster: PathBuf,
    vstate: PathBuf,
    _pins: Pins,
    subst: Vec<(&'static str, String)>,
}

impl Setup {
    fn new() -> Self {
        let node = Node::new();
        let node_name = unique("vnk");
        let cluster: PathBuf = node.dir.path().join("cluster");
        let vstate = node.dir.path().join("vnet");
        let _pins = Pins(virtlink_vnet::node::NodeConfig::new(
            &node_name,
            "192.168.65.1".parse().unwrap(),
            &cluster,
            &vstate,
        ));
        let subst = vec![
            ("@NODE@", node_name.clone()),
            ("@CLUSTER@", cluster.display().to_string()),
            ("@VSTATE@", vstate.display().to_string()),
        ];
        Self {
            node,
            node_name,
            cluster,
            vstate,
            _pins,
            subst,
        }
    }
}

/// A recorded response with this test's paths and node name filled in.
fn fill(name: &str, subst: &[(&str, String)]) -> String {
    let mut text = fixture(name, "");
    for (k, v) in subst {
        text = text.replace(k, v);
    }
    text
}

/// kube-apiserver's answer to a server-side apply: the applied object with
/// the server's metadata.
fn applied(req: &Request) -> String {
    let mut obj: Value = serde_json::from_str(&req.body).unwrap();
    let meta = obj["metadata"].as_object_mut().unwrap();
    meta.insert("uid".into(), json!("4c5d6e7f-8091-4a2b-b3c4-d5e6f7a8b9c0"));
    meta.insert("resourceVersion".into(), json!("52200"));
    meta.insert("generation".into(), json!(1));
    meta.insert("creationTimestamp".into(), json!("2026-12-01T10:03:00Z"));
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "virtlink-agent", "operation": "Apply", "apiVersion": "virtlink.io/v1alpha1",
                "time": "2026-12-01T10:03:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {}}}]),
    );
    obj.to_string()
}

fn start_api(
    node: &Node,
    port: u16,
    subst: Vec<(&'static str, String)>,
    feed: Arc<Feed>,
) -> FakeApi {
    // What the API holds of this node's slices: the stale one until the
    // agent deletes it, then what it applied.
    let held = std::sync::Mutex::new(Vec::<Value>::new());
    FakeApi::start_on(node, port, move |req| {
        let nads = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
        let vnets = "/apis/virtlink.io/v1alpha1/virtualnetworks";
        let of_vblue = req
            .target
            .contains("labelSelector=virtlink.io%2Fnetwork%3Dvblue");
        if req.method == "GET" && req.is_watch() {
            return match req.path() {
                SLICES if of_vblue => Reply::Live(String::new(), feed.clone()),
                _ => Reply::Watch(String::new()),
            };
        }
        match (req.method.as_str(), req.path()) {
            ("GET", "/api/v1/pods") => {
                Reply::Json(200, fill("pods-vnet-metadata-list.json", &subst))
            }
            ("GET", p) if p == nads => Reply::Json(200, fill("nads-vnet-list.json", &subst)),
            ("GET", p) if p == vnets => Reply::Json(200, fill("virtualnetworks-list.json", &subst)),
            ("GET", SLICES) if of_vblue => Reply::Json(200, fill("slices-vblue-list.json", &subst)),
            ("GET", SLICES) if req.target.contains("virtlink.io%2Fnode%3D") => {
                let mut list: Value =
                    serde_json::from_str(&fill("slices-node-list.json", &subst)).unwrap();
                let held = held.lock().unwrap();
                if !held.is_empty() {
                    list["items"] = Value::Array(held.clone());
                }
                Reply::Json(200, list.to_string())
            }
            ("PATCH", p) if p.starts_with(SLICES) => {
                let obj = applied(req);
                let mut held = held.lock().unwrap();
                held.clear();
                held.push(serde_json::from_str(&obj).unwrap());
                Reply::Json(200, obj)
            }
            ("DELETE", p) if p.starts_with(SLICES) => {
                let name = p.rsplit('/').next().unwrap_or_default().to_string();
                Reply::Json(
                    200,
                    fill("slice-deleted-status.json", &subst).replace("@NAME@", &name),
                )
            }
            ("PATCH", p) if p.starts_with("/api/v1/namespaces/default/pods/") => {
                Reply::Json(200, fixture("pod-default-a.json", ""))
            }
            _ => Reply::not_found(),
        }
    })
}

/// `virtlink vnet-stats NODE --json`.
fn stats(node_name: &str) -> Value {
    let out = std::process::Command::new(common::virtlink_binary())
        .args(["vnet-stats", node_name, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The SSA PATCHes of slice `name`, in order.
fn applies(api: &FakeApi, name: &str) -> Vec<Request> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path() == format!("{SLICES}/{name}"))
        .collect()
}

/// Lists of this node's slices and slice PATCHes so far.
fn slice_calls(api: &FakeApi) -> (usize, usize) {
    let r = api.requests();
    (
        r.iter()
            .filter(|r| r.path() == SLICES && r.target.contains("virtlink.io%2Fnode%3D"))
            .count(),
        r.iter()
            .filter(|r| r.method == "PATCH" && r.path().starts_with(SLICES))
            .count(),
    )
}

fn deleted(api: &FakeApi, name: &str) -> bool {
    api.requests()
        .iter()
        .any(|r| r.method == "DELETE" && r.path() == format!("{SLICES}/{name}"))
}

/// The endpoint addresses of the last applied body.
fn applied_ips(r: &Request) -> Vec<String> {
    let body: Value = serde_json::from_str(&r.body).unwrap();
    body["spec"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_string())
        .collect()
}

/// Watches retry with backoff (up to half a minute) after the API was away.
fn wait_long(what: &str, cond: impl FnMut() -> bool, diag: impl Fn() -> String) {
    assert!(
        common::wait_until(Duration::from_secs(60), cond),
        "{what}\n{}",
        diag()
    );
}

fn wait(what: &str, cond: impl FnMut() -> bool, diag: impl Fn() -> String) {
    assert!(
        common::wait_until(Duration::from_secs(20), cond),
        "{what}\n{}",
        diag()
    );
}

#[test]
fn slices_and_networks_sync_with_the_api_and_forwarding_survives_its_loss() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let Setup {
        mut node,
        node_name,
        cluster,
        vstate,
        _pins,
        subst,
    } = Setup::new();
    let feed = Arc::new(Feed::default());
    let api = start_api(&node, 0, subst.clone(), feed.clone());
    let port = api.port;
    let kubeconfig = api.kubeconfig(node.dir.path());
    node.start_agent(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        &node_name,
        "--underlay-ip",
        "192.168.65.1",
        "--cluster-dir",
        cluster.to_str().unwrap(),
        "--vnet-state-dir",
        vstate.to_str().unwrap(),
        "--no-bindings",
    ]);
    let log_path = node.dir.path().join("agent.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut conf = node.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("manifestsDir");

    // The VirtualNetwork is mirrored; the stale slice of this node (its
    // file is gone) is deleted from the API.
    let net_file = cluster.join("networks/vblue.yaml");
    wait(
        "VirtualNetwork mirrored",
        || net_file.exists(),
        || format!("{:?}", api.requests()),
    );
    let text = std::fs::read_to_string(&net_file).unwrap();
    assert!(text.contains("id: 651"), "{text}");
    let stale = format!("vgone.{node_name}");
    wait(
        "stale slice deleted",
        || deleted(&api, &stale),
        || format!("{:?}", api.requests()),
    );
    assert!(
        api.requests()
            .iter()
            .all(|r| !(r.method == "GET" && r.path() == SLICES && r.target.contains("network%3D"))),
        "no slice watch before a local member"
    );

    // Two pods of vblue on this node: the agent applies its slice.
    let (pa, pb) = (Netns::new("vlka"), Netns::new("vlkb"));
    node.add_pod(&pa, "va", UID_VA, &conf).expect_ok("ADD va");
    node.add_pod(&pb, "vb", UID_VB, &conf).expect_ok("ADD vb");
    let mine = format!("vblue.{node_name}");
    wait(
        "slice applied with both endpoints",
        || {
            applies(&api, &mine)
                .last()
                .is_some_and(|r| applied_ips(r).len() == 2)
        },
        || format!("{:?}", api.requests()),
    );
    let last = applies(&api, &mine).pop().unwrap();
    assert_eq!(last.content_type, "application/apply-patch+yaml");
    assert!(
        last.target.contains("fieldManager=virtlink-agent"),
        "{}",
        last.target
    );
    assert!(last.target.contains("force=true"), "{}", last.target);
    let body: Value = serde_json::from_str(&last.body).unwrap();
    assert_eq!(body["apiVersion"], "virtlink.io/v1alpha1");
    assert_eq!(body["kind"], "NetworkEndpointSlice");
    assert_eq!(body["metadata"]["name"], mine.as_str());
    assert_eq!(body["metadata"]["labels"]["virtlink.io/network"], "vblue");
    assert_eq!(
        body["metadata"]["labels"]["virtlink.io/node"],
        node_name.as_str()
    );
    assert_eq!(body["spec"]["nodeIp"], "192.168.65.1");
    assert_eq!(applied_ips(&last), ["10.65.0.2", "10.65.0.3"]);
    assert_eq!(body["spec"]["endpoints"][0]["mac"], pa.mac("net1").as_str());
    assert!(pa.ping("10.65.0.3"), "va -> vb");

    // The network has local members now: its slices are watched (label
    // selector) and node-2's endpoint reaches the maps.
    let remote_file = cluster.join("slices/vblue/node-2.yaml");
    wait("remote slice mirrored", || remote_file.exists(), log);
    wait(
        "remote endpoint in the maps",
        || stats(&node_name)["endpoints"] == 3,
        || format!("{}\n{}", stats(&node_name), log()),
    );
    assert!(
        api.requests().iter().any(|r| r.path() == SLICES
            && r.is_watch()
            && r.target
                .contains("labelSelector=virtlink.io%2Fnetwork%3Dvblue")),
        "the slices of vblue, and only those, are watched"
    );

    // Watch events: node-2 gains an endpoint, then its slice goes, then it
    // comes back with one.
    let events = fixture("slices-vblue-watch.jsonl", "");
    let events: Vec<&str> = events.lines().filter(|l| !l.trim().is_empty()).collect();
    feed.push(events[0]);
    wait(
        "MODIFIED: two remote endpoints",
        || stats(&node_name)["endpoints"] == 4,
        || stats(&node_name).to_string(),
    );
    feed.push(events[1]);
    wait(
        "DELETED: no remote endpoint",
        || stats(&node_name)["endpoints"] == 2,
        || stats(&node_name).to_string(),
    );
    assert!(!remote_file.exists());
    feed.push(events[2]);
    wait(
        "ADDED: one remote endpoint",
        || stats(&node_name)["endpoints"] == 3,
        || stats(&node_name).to_string(),
    );

    // The agent restarts: it lists its node's slices, finds them as it left
    // them (no new apply), and the maps stay as they are.
    let (node_lists, patches) = slice_calls(&api);
    node.agent().restart();
    wait(
        "restarted agent listed its slices",
        || slice_calls(&api).0 > node_lists,
        log,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        slice_calls(&api).1,
        patches,
        "an unchanged slice is not applied again"
    );
    wait(
        "maps as before the restart",
        || stats(&node_name)["endpoints"] == 3,
        || stats(&node_name).to_string(),
    );
    assert!(pa.ping("10.65.0.3"), "va -> vb after the restart");

    // The API goes away: nothing is removed, forwarding goes on.
    drop(api);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stats(&node_name)["endpoints"], 3);
    assert!(remote_file.exists() && net_file.exists());
    assert!(pb.ping("10.65.0.2"), "vb -> va without the API");
    // A DEL while the API is away works from the files; the slice is
    // applied once the API is back.
    node.call("DEL", Some(&pa), "ctr-va", "va", &conf)
        .expect_ok("DEL va without the API");
    assert!(node.agent().alive());

    // The API comes back on the same address, without node-2's slice: the
    // re-list prunes it, and the slice with one endpoint is applied.
    let api = FakeApi::start_on(&node, port, {
        let subst = subst.clone();
        move |req: &Request| {
            if req.method == "GET" && req.path() == SLICES && req.target.contains("network%3Dvblue")
            {
                // The watch resumes from the last event it saw; this API
                // has compacted that away (410 Expired, as kube-apiserver
                // answers), so the agent re-lists.
                if req.is_watch() && req.target.contains("resourceVersion=52140") {
                    return Reply::Watch(fixture("watch-expired.jsonl", ""));
                }
                if req.is_watch() {
                    return Reply::Watch(String::new());
                }
                let mut list: Value =
                    serde_json::from_str(&fill("slices-vblue-list.json", &subst)).unwrap();
                list["items"] = json!([]);
                return Reply::Json(200, list.to_string());
            }
            match (req.method.as_str(), req.path()) {
                ("GET", p)
                    if p.starts_with("/apis/virtlink.io/v1alpha1/virtualnetworks")
                        && !req.is_watch() =>
                {
                    Reply::Json(200, fill("virtualnetworks-list.json", &subst))
                }
                ("PATCH", p) if p.starts_with(SLICES) => Reply::Json(200, applied(req)),
                ("DELETE", p) if p.starts_with(SLICES) => {
                    let name = p.rsplit('/').next().unwrap_or_default().to_string();
                    Reply::Json(
                        200,
                        fill("slice-deleted-status.json", &subst).replace("@NAME@", &name),
                    )
                }
                _ if req.is_watch() => Reply::Watch(String::new()),
                _ => Reply::not_found(),
            }
        }
    });
    wait(
        "slice re-applied after the API came back",
        || {
            applies(&api, &mine)
                .last()
                .is_some_and(|r| applied_ips(r) == ["10.65.0.3"])
        },
        || format!("{:?}\n{}", api.requests(), log()),
    );
    wait_long(
        "remote endpoint pruned on the re-list",
        || stats(&node_name)["endpoints"] == 1,
        || format!("{}\n{}", stats(&node_name), log()),
    );
    assert!(!remote_file.exists());

    // The last local endpoint goes: the slice is deleted from the API.
    node.call("DEL", Some(&pb), "ctr-vb", "vb", &conf)
        .expect_ok("DEL vb");
    wait(
        "slice deleted",
        || deleted(&api, &mine),
        || format!("{:?}\n{}", api.requests(), log()),
    );
    assert!(!Path::new(&cluster.join(format!("slices/vblue/{node_name}.yaml"))).exists());
}

/// A stateful stand-in for the slices part of kube-apiserver: applies,
/// deletes and label-selected lists of what it holds. `rival`: on this
/// node's first claim, node-0 claims the same block at the same moment.
fn start_slice_store(
    node: &Node,
    subst: Vec<(&'static str, String)>,
    held: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Value>>>,
    rival: Arc<std::sync::atomic::AtomicBool>,
) -> FakeApi {
    FakeApi::start_on(node, 0, move |req| {
        let nads = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
        let vnets = "/apis/virtlink.io/v1alpha1/virtualnetworks";
        if req.method == "GET" && req.is_watch() {
            return Reply::Watch(String::new());
        }
        let mut held = held.lock().unwrap();
        match (req.method.as_str(), req.path()) {
            ("GET", "/api/v1/pods") => {
                Reply::Json(200, fill("pods-vnet-metadata-list.json", &subst))
            }
            ("GET", p) if p == nads => Reply::Json(200, fill("nads-vnet-list.json", &subst)),
            ("GET", p) if p == vnets => Reply::Json(200, fill("virtualnetworks-list.json", &subst)),
            ("GET", SLICES) => {
                let query = req.target.split('?').nth(1).unwrap_or_default();
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .unwrap_or_default()
                    .replace("%2F", "/")
                    .replace("%3D", "=");
                let (label, value) = selector.split_once('=').unwrap_or_default();
                let items: Vec<Value> = held
                    .values()
                    .filter(|o| label.is_empty() || o["metadata"]["labels"][label] == value)
                    .cloned()
                    .collect();
                let mut list: Value =
                    serde_json::from_str(&fill("slices-vblue-list.json", &subst)).unwrap();
                list["items"] = Value::Array(items);
                Reply::Json(200, list.to_string())
            }
            ("PATCH", p) if p.starts_with(SLICES) => {
                let obj: Value = serde_json::from_str(&applied(req)).unwrap();
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                if rival.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    let mut other = obj.clone();
                    other["metadata"]["name"] = json!("vblue.node-0");
                    other["metadata"]["labels"]["virtlink.io/node"] = json!("node-0");
                    other["spec"]["node"] = json!("node-0");
                    other["spec"]["nodeIp"] = json!("192.168.65.9");
                    held.insert("vblue.node-0".into(), other);
                }
                held.insert(name, obj.clone());
                Reply::Json(200, obj.to_string())
            }
            ("DELETE", p) if p.starts_with(SLICES) => {
                let name = p.rsplit('/').next().unwrap_or_default().to_string();
                if held.remove(&name).is_none() {
                    return Reply::not_found();
                }
                Reply::Json(
                    200,
                    fill("slice-deleted-status.json", &subst).replace("@NAME@", &name),
                )
            }
            ("PATCH", p) if p.starts_with("/api/v1/namespaces/default/pods/") => {
                Reply::Json(200, fixture("pod-default-a.json", ""))
            }
            _ => Reply::not_found(),
        }
    })
}

/// The blocks of a slice PATCH's body.
fn applied_blocks(r: &Request) -> Vec<String> {
    let body: Value = serde_json::from_str(&r.body).unwrap();
    body["spec"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_first_claim_reads_the_api_and_yields_to_a_rival() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let Setup {
        mut node,
        node_name,
        cluster,
        vstate,
        _pins,
        subst,
    } = Setup::new();
    // The API holds node-2's slice of vblue, which claims the first block;
    // this node has no member of vblue, so it has not mirrored that slice.
    let mut node2: Value = serde_json::from_str(&fill("slices-vblue-list.json", &subst)).unwrap();
    let node2 = serde_json::from_str(
        &node2["items"][0]
            .take()
            .to_string()
            .replace("10.65.0.128/28", "10.65.0.0/28")
            .replace("10.65.0.130", "10.65.0.5"),
    )
    .unwrap();
    let held = Arc::new(std::sync::Mutex::new(
        [("vblue.node-2".to_string(), node2)].into_iter().collect(),
    ));
    let rival = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let api = start_slice_store(&node, subst, held.clone(), rival.clone());
    let kubeconfig = api.kubeconfig(node.dir.path());
    node.start_agent(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        &node_name,
        "--underlay-ip",
        "192.168.65.1",
        "--cluster-dir",
        cluster.to_str().unwrap(),
        "--vnet-state-dir",
        vstate.to_str().unwrap(),
        "--no-bindings",
    ]);
    let log_path = node.dir.path().join("agent.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut conf = node.conf("1.0.0");
    conf.as_object_mut().unwrap().remove("manifestsDir");
    wait(
        "VirtualNetwork mirrored",
        || cluster.join("networks/vblue.yaml").exists(),
        || format!("{:?}", api.requests()),
    );
    assert!(!cluster.join("slices/vblue/node-2.yaml").exists());

    // The first ADD reads the API: node-2's block is taken, so it claims
    // the next one; node-0 claims that one at the same moment (the API
    // shows both claims), and this node, the greater name, withdraws and
    // claims the one after. All of it before the ADD returns.
    let (pa, pb) = (Netns::new("vlka"), Netns::new("vlkb"));
    node.add_pod(&pa, "va", UID_VA, &conf).expect_ok("ADD va");
    assert_eq!(pa.addrs("net1"), ["10.65.0.32/24"], "{}", log());
    let mine = format!("vblue.{node_name}");
    let calls: Vec<Request> = api
        .requests()
        .into_iter()
        .filter(|r| r.path().starts_with(SLICES) && !r.is_watch())
        .collect();
    let claims: Vec<Vec<String>> = calls
        .iter()
        .filter(|r| r.method == "PATCH" && r.path() == format!("{SLICES}/{mine}"))
        .map(applied_blocks)
        .collect();
    assert_eq!(
        claims.first().map(Vec::as_slice),
        Some(&["10.65.0.16/28".to_string()][..]),
        "{calls:?}"
    );
    assert!(
        claims.contains(&vec!["10.65.0.32/28".to_string()]),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|r| r.method == "DELETE" && r.path() == format!("{SLICES}/{mine}")),
        "the withdrawn claim (no endpoint left) is deleted: {calls:?}"
    );
    let reads = calls
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains("virtlink.io%2Fnetwork%3Dvblue"))
        .count();
    assert!(reads >= 3, "read before, after each claim: {calls:?}");
    let api_blocks = |node: &str| {
        held.lock().unwrap().get(&format!("vblue.{node}")).map(|o| {
            o["spec"]["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        api_blocks(&node_name),
        Some(vec!["10.65.0.32/28".to_string()])
    );
    assert_eq!(
        api_blocks("node-0"),
        Some(vec!["10.65.0.16/28".to_string()])
    );
    // The other nodes' slices were mirrored on the way.
    assert!(cluster.join("slices/vblue/node-2.yaml").exists());
    assert!(cluster.join("slices/vblue/node-0.yaml").exists());

    // The second ADD allocates inside the node's own block.
    node.add_pod(&pb, "vb", UID_VB, &conf).expect_ok("ADD vb");
    assert_eq!(pb.addrs("net1"), ["10.65.0.33/24"]);
    assert!(pa.ping("10.65.0.33"), "va -> vb");
    wait(
        "slice with both endpoints in the API",
        || {
            held.lock()
                .unwrap()
                .get(&mine)
                .is_some_and(|o| o["spec"]["endpoints"].as_array().map(Vec::len) == Some(2))
        },
        log,
    );
}
