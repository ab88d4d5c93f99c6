//! virtlink's binder as a KubeVirt network binding plugin
//! (`domainAttachmentType: tap`, docs/agent.md): a launcher pod whose
//! networks annotation is what KubeVirt's virt-controller writes for a VM
//! with a pod-network interface bound by `virtlink-masquerade` and a
//! secondary interface bound by `virtlink-bridge`, attached through the shim
//! and a real agent, then a real QEMU guest plugged into the taps the way
//! virt-launcher plugs the domain (`<interface type='ethernet'>`, target
//! `tap0` / `tap<hash>`, `managed='no'`, the pod interface's MAC).
//!
//! Fakes: no kubelet, API server or KubeVirt can run here; the pod and NADs
//! come from manifest files and this test plays virt-launcher's part
//! (reading the MACs and starting QEMU). Everything else is real: the
//! reference plugins, the eBPF masquerade, the agent's DHCP, the guest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_clean, Netns, Node};
use serde_json::{json, Value};

/// KubeVirt's pod interface name for a secondary VM network.
fn hashed(network: &str) -> String {
    vm_binder::launcher::pod_interface_name(network)
}

/// A bpffs on a temp dir, unmounted on drop.
struct Bpffs(tempfile::TempDir);

impl Bpffs {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vl-bpffs")
            .tempdir()
            .unwrap();
        common::sh(&format!("mount -t bpf bpf {}", dir.path().display()));
        Bpffs(dir)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

struct Setup {
    node: Node,
    bpffs: Bpffs,
    records: PathBuf,
}

/// A node with an agent serving the binding records, the blue network and
/// the two binding NADs.
fn setup() -> Setup {
    let mut node = Node::new();
    let records = node.dir.path().join("bindings");
    let bpffs = Bpffs::new();
    node.start_agent(&["--bindings-dir", records.to_str().unwrap()]);
    node.standard_nads();
    let resolv = node.dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local\n",
    )
    .unwrap();
    for (name, kind) in [
        ("virtlink-masquerade", "masquerade"),
        ("virtlink-bridge", "bridge"),
    ] {
        node.nad(
            name,
            json!({"cniVersion": "1.0.0", "name": name, "type": "virtlink-cni",
                   "binding": kind, "datapath": "ebpf",
                   "recordsDir": records, "bpffsRoot": bpffs.path(), "resolvConf": resolv}),
        );
    }
    Setup {
        node,
        bpffs,
        records,
    }
}

/// The networks annotation virt-controller writes for a VM with
/// `default` (pod network, binding virtlink-masquerade) and `blue` (multus
/// blue, binding virtlink-bridge): the network entries, then one entry per
/// binding plugin with the VM network in `cni-args`.
fn kubevirt_networks() -> String {
    json!([
        {"name": "blue", "namespace": "default", "interface": hashed("blue")},
        {"name": "virtlink-masquerade", "namespace": "default",
         "cni-args": {"logicNetworkName": "default"}},
        {"name": "virtlink-bridge", "namespace": "default",
         "cni-args": {"logicNetworkName": "blue"}},
    ])
    .to_string()
}

fn records(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn stats(bpffs: &Path, vm: &str) -> Value {
    let out = std::process::Command::new(common::virtlink_binary())
        .args(["stats", "--json", "--namespace", "default", "--bpffs-root"])
        .arg(bpffs)
        .arg(vm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virtlink stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kubevirt_launcher_pod_with_binding_plugins_boots_a_guest() {
    let s = setup();
    let node = &s.node;
    let blue_if = hashed("blue");
    let blue_tap = vm_binder::plugin::tap_for(&blue_if);
    node.pod("virt-launcher-testvm-abcde", &kubevirt_networks());
    let pod = Netns::new("vlkv");
    let conf = node.conf("1.0.0");

    let out = node.call(
        "ADD",
        Some(&pod),
        "ctr-kv",
        "virt-launcher-testvm-abcde",
        &conf,
    );
    out.expect_ok("ADD of a KubeVirt launcher pod with binding plugins");
    let links = pod.links();
    for l in ["eth0", blue_if.as_str(), "tap0", blue_tap.as_str()] {
        assert!(links.iter().any(|x| x == l), "{l} missing in {links:?}");
    }
    assert_eq!(
        records(&s.records),
        vec![
            "ctr-kv_blue.json".to_string(),
            "ctr-kv_default.json".to_string()
        ]
    );
    // The bridge binding moved blue's address off the pod interface (the
    // guest gets it by DHCP) and kept its MAC.
    assert!(pod.addrs(&blue_if).is_empty(), "{:?}", pod.addrs(&blue_if));
    let pod_ip = pod.addrs("eth0")[0].split('/').next().unwrap().to_string();
    let blue_ip = {
        let rec: Value =
            serde_json::from_slice(&std::fs::read(s.records.join("ctr-kv_blue.json")).unwrap())
                .unwrap();
        rec["dhcp"]["lease"]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(blue_ip.starts_with("10.71.0."), "{blue_ip}");
    let agent = node.agent.as_ref().unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || agent
            .log_text()
            .matches("serving binding DHCP")
            .count()
            == 2),
        "agent does not serve both bindings:\n{}",
        agent.log_text()
    );

    // virt-launcher's part: QEMU on tap0 and tap<hash> with the pod
    // interfaces' MACs.
    node.ns
        .sh("ip addr add 10.71.0.254/24 dev cni-blue && ip link set cni-blue up");
    let spec = vm_tests::VmSpec::new(common::unique("vlkvm"))
        .netns(pod.path())
        .tap("tap0", pod.mac("eth0"))
        .tap(&blue_tap, pod.mac(&blue_if))
        .cmdline("virtlink.dhcp=1");
    let guest = vm_tests::Vm::boot(spec).expect("boot guest");
    guest.wait_ready(Duration::from_secs(180)).unwrap();
    let t = Duration::from_secs(30);
    let eth0 = guest.run_ok("ip -4 addr show eth0", t).unwrap();
    assert!(eth0.contains("inet 10.0.2.2/24"), "{eth0}");
    let eth1 = guest.run_ok("ip -4 addr show eth1", t).unwrap();
    assert!(eth1.contains(&format!("inet {blue_ip}")), "{eth1}");
    let resolv = guest.run_ok("cat /etc/resolv.conf", t).unwrap();
    assert!(resolv.contains("10.96.0.10"), "{resolv}");

    // Out through the eBPF masquerade to the cluster network's gateway, and
    // over the bridge to blue's.
    guest.run_ok("ping -c 2 -W 5 10.70.0.1", t).unwrap();
    guest.run_ok("ping -c 2 -W 5 10.71.0.254", t).unwrap();
    let st = stats(s.bpffs.path(), "testvm");
    let out_packets = st[0]["counters"]["out_packets"].as_u64().unwrap_or(0);
    assert!(out_packets >= 2, "eBPF counters: {st}");
    // In: the node reaches a server in the guest on the pod IP (every port
    // is forwarded).
    guest
        .run_ok("iperf3 -s -1 -p 5201 </dev/null >/dev/null 2>&1 &", t)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let report = node
        .ns
        .sh(&format!("iperf3 -c {pod_ip} -p 5201 -t 1 -J || true"));
    let report: Value = serde_json::from_str(&report).unwrap_or_default();
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        bytes > 0,
        "nothing reached the guest through the DNAT: {report}"
    );
    let st = stats(s.bpffs.path(), "testvm");
    assert!(
        st[0]["counters"]["in_packets"].as_u64().unwrap_or(0) > 10,
        "eBPF counters: {st}"
    );

    drop(guest);
    let out = node.call(
        "DEL",
        Some(&pod),
        "ctr-kv",
        "virt-launcher-testvm-abcde",
        &conf,
    );
    out.expect_ok("DEL");
    assert!(records(&s.records).is_empty(), "{:?}", records(&s.records));
    assert!(
        vm_binder::pin_dirs(s.bpffs.path(), "default", "testvm").is_empty(),
        "eBPF pins left"
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || agent
            .log_text()
            .matches("stopping binding DHCP")
            .count()
            == 2),
        "agent still serves:\n{}",
        agent.log_text()
    );
    assert_clean(node, &pod);
}

#[test]
fn binding_without_a_network_to_bind_fails_cleanly() {
    let s = setup();
    let node = &s.node;
    // Two VM networks bound, neither with a pod interface of its own: the
    // first takes eth0, the second finds it taken.
    node.pod(
        "virt-launcher-bad-abcde",
        &json!([
            {"name": "virtlink-masquerade", "namespace": "default",
             "cni-args": {"logicNetworkName": "default"}},
            {"name": "virtlink-bridge", "namespace": "default",
             "cni-args": {"logicNetworkName": "nosuch"}},
        ])
        .to_string(),
    );
    let pod = Netns::new("vlkb");
    let conf = node.conf("1.0.0");
    let out = node.call(
        "ADD",
        Some(&pod),
        "ctr-bad",
        "virt-launcher-bad-abcde",
        &conf,
    );
    let msg = out.expect_err(7, "ADD with a binding for a network the pod lacks");
    assert!(msg.contains("is bound already"), "{msg}");
    assert!(records(&s.records).is_empty(), "{:?}", records(&s.records));
    assert!(
        vm_binder::pin_dirs(s.bpffs.path(), "default", "bad").is_empty(),
        "eBPF pins left"
    );
    assert_clean(node, &pod);
    // DEL after the failed ADD is fine.
    node.call(
        "DEL",
        Some(&pod),
        "ctr-bad",
        "virt-launcher-bad-abcde",
        &conf,
    )
    .expect_ok("DEL after a failed ADD");

    // A binding NAD called without the VM network to bind.
    node.pod(
        "virt-launcher-noarg-abcde",
        r#"[{"name": "virtlink-masquerade", "namespace": "default"}]"#,
    );
    let out = node.call(
        "ADD",
        Some(&pod),
        "ctr-noarg",
        "virt-launcher-noarg-abcde",
        &conf,
    );
    let msg = out.expect_err(7, "ADD of a binding without logicNetworkName");
    assert!(msg.contains("logicNetworkName"), "{msg}");
    assert_clean(node, &pod);
}

#[test]
fn binding_del_works_without_the_agent_and_after_the_namespace_is_gone() {
    let mut s = setup();
    s.node.pod("virt-launcher-gone-abcde", &kubevirt_networks());
    let pod = Netns::new("vlkg");
    let conf = s.node.conf("1.0.0");
    s.node
        .call(
            "ADD",
            Some(&pod),
            "ctr-g",
            "virt-launcher-gone-abcde",
            &conf,
        )
        .expect_ok("ADD");
    assert_eq!(records(&s.records).len(), 2);
    assert_eq!(
        vm_binder::pin_dirs(s.bpffs.path(), "default", "gone").len(),
        1
    );
    // The agent dies; the runtime removes the namespace, then calls DEL
    // (the shim falls back to direct mode from the state on disk).
    s.node.agent().kill();
    let path = pod.path();
    drop(pod);
    assert!(!Path::new(&path).exists());
    s.node
        .call_env(
            "DEL",
            &path,
            "ctr-g",
            "virt-launcher-gone-abcde",
            &conf,
            &[],
        )
        .expect_ok("DEL with the agent down and the namespace gone");
    assert!(records(&s.records).is_empty(), "{:?}", records(&s.records));
    assert!(
        vm_binder::pin_dirs(s.bpffs.path(), "default", "gone").is_empty(),
        "eBPF pins left"
    );
    assert!(s.node.attachments().is_empty());
}
