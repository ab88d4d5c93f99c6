//! A real container runtime calls virtlink-cni exactly as it does for
//! kubelet's pods.
//!
//! Real: Debian's containerd 1.6 with its CRI plugin, started by the test in a
//! temp dir (inside a "node" network namespace of its own); runc and the
//! runc v2 shim; the CRI gRPC API; the Debian reference CNI plugins (bridge,
//! macvlan, host-local) that virtlink-cni delegates to; the kernel (network
//! namespaces, veth, bridge, macvlan, overlayfs, cgroups). The pod's container
//! runs from a local busybox-static image whose pause process is catatonit.
//!
//! Absent: kubelet (cni/tests/cri/cri.py, a CRI client, plays its part:
//! RunPodSandbox, CreateContainer/StartContainer, ExecSync, StopPodSandbox,
//! RemovePodSandbox) and the Kubernetes API server (the pod and its
//! NetworkAttachmentDefinitions come from virtlink-cni's manifests directory).
//! Between containerd and virtlink-cni sits a transparent recording wrapper
//! (same env, stdin, stdout and exit code) so a failure shows every CNI call.
//!
//! Needs root and what scripts/setup.sh installs (containerd, runc,
//! catatonit, busybox-static, the CRI client's virtualenv).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic is a failed test

mod common;
mod cri;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Mode;
use cri::{Containerd, Peer, IMAGE};
use serde_json::{json, Value};

const POD: &str = "web";
const POD_NAMESPACE: &str = "default";
const POD_UID: &str = "8f4b2c1e-6d3a-4e5f-9a7b-0c1d2e3f4a5b";

/// Returns true (after saying why, loudly) when this machine cannot run the test.
fn skip(test: &str) -> bool {
    match cri::skip_reason() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// The virtlink-cni binary built with this test, if it speaks the contract
/// the test relies on (CNI 1.0.0 configs); otherwise why not.
fn virtlink_cni() -> Result<PathBuf, String> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_virtlink-cni"));
    let out = Command::new(&bin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "VERSION answer of {} is not JSON ({e}): {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let speaks_1_0 = v["supportedVersions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "1.0.0"));
    if speaks_1_0 {
        Ok(bin)
    } else {
        Err(format!("{} does not support CNI 1.0.0: {v}", bin.display()))
    }
}

fn sandbox_spec() -> Value {
    json!({"name": POD, "namespace": POD_NAMESPACE, "uid": POD_UID})
}

/// A sandbox with one long-running container in it.
struct RunningPod {
    sandbox: String,
    container: String,
    /// The sandbox's network namespace as containerd reports it.
    netns: String,
    /// The pod IP containerd took from the CNI result.
    ip: String,
}

fn run_pod(ctd: &Containerd) -> RunningPod {
    let spec = sandbox_spec();
    let sandbox = ctd.cri(&["run-sandbox", &spec.to_string()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = ctd.cri(&["inspect", &sandbox]);
    assert_eq!(status["state"], "SANDBOX_READY", "{status}");
    let container_spec = json!({"sandbox_id": sandbox, "sandbox": spec, "name": "work",
                                "image": IMAGE, "command": ["sleep", "3600"]});
    let container = ctd.cri(&["create-container", &container_spec.to_string()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    RunningPod {
        sandbox,
        container,
        netns: status["netns"].as_str().unwrap_or_default().to_string(),
        ip: status["ip"].as_str().unwrap_or_default().to_string(),
    }
}

/// Runs `cmd` in the pod's container; returns (exit code, stdout + stderr).
fn exec(ctd: &Containerd, pod: &RunningPod, cmd: &[&str]) -> (i64, String) {
    let mut args = vec!["exec", &pod.container, "10"];
    args.extend_from_slice(cmd);
    let r = ctd.cri(&args);
    (
        r["exit"].as_i64().unwrap_or(-1),
        format!(
            "{}{}",
            r["stdout"].as_str().unwrap_or_default(),
            r["stderr"].as_str().unwrap_or_default()
        ),
    )
}

/// The pod's interfaces (lo excluded) with their IPv4 addresses, as the
/// container sees them.
fn pod_addrs(ctd: &Containerd, pod: &RunningPod) -> Vec<(String, String)> {
    let (code, text) = exec(ctd, pod, &["ip", "-o", "-4", "addr"]);
    assert_eq!(code, 0, "ip addr in the container: {text}");
    cri::parse_ip_addr(&text)
        .into_iter()
        .filter(|(ifname, _)| ifname != "lo")
        .collect()
}

fn assert_pings(ctd: &Containerd, pod: &RunningPod, peer: &Peer, network: &str) {
    let (code, text) = exec(ctd, pod, &["ping", "-c", "1", "-W", "2", &peer.addr]);
    assert_eq!(
        code,
        0,
        "the container cannot reach the {network} peer {}:\n{text}\n{}",
        peer.addr,
        ctd.diagnostics()
    );
}

/// StopPodSandbox (containerd: CNI DEL, then the netns goes) and
/// RemovePodSandbox (a second DEL, with an empty CNI_NETNS).
fn stop_and_remove(ctd: &Containerd, pod: &RunningPod) {
    ctd.cri(&["stop", &pod.sandbox]);
    assert!(
        !Path::new(&pod.netns).exists(),
        "the sandbox netns {} is left after StopPodSandbox",
        pod.netns
    );
    ctd.cri(&["remove", &pod.sandbox]);
}

/// What must hold once the sandbox is gone: no sandbox, no sandbox netns, no
/// mount left under containerd's dirs, the node's links as before the pod,
/// no host-local reservation.
fn assert_nothing_left(ctd: &Containerd, links_before: &[String], ipam: &Path) {
    let list = ctd.cri(&["list"]);
    assert_eq!(list["sandboxes"], json!([]), "sandboxes left: {list}");
    let netns = cri::entries(&ctd.netns_dir());
    assert!(netns.is_empty(), "sandbox netns left: {netns:?}");
    let mounts = ctd.mounts();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert_eq!(
        ctd.node.links(),
        links_before,
        "links left in the node namespace:\n{}\n{}",
        ctd.node.ip("-o link show"),
        ctd.diagnostics()
    );
    let reserved = cri::reserved_ips(ipam);
    assert!(
        reserved.is_empty(),
        "host-local IPs still reserved: {reserved:?}\n{}",
        ctd.diagnostics()
    );
}

/// The harness itself (containerd, runc, CRI client, image, reference bridge),
/// without virtlink: when this fails, the virtlink test's failure is not
/// virtlink's.
#[test]
fn containerd_runs_a_pod_on_the_reference_bridge() {
    if skip("containerd_runs_a_pod_on_the_reference_bridge") {
        return;
    }
    let o = cri::subnet_octet();
    let bridge = cri::unique("vlpod");
    let ctd = Containerd::start(
        |d| {
            json!({"cniVersion": "1.0.0", "name": "plain", "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{o}.1.0/24"),
                         "rangeEnd": format!("10.{o}.1.200")}]], "dataDir": d.join("ipam")}}]})
        },
        None,
    );
    ctd.node.ip(&format!("link add {bridge} type bridge"));
    ctd.node.ip(&format!("link set {bridge} up"));
    let peer = Peer::new(&ctd.node, Some(&bridge), &format!("10.{o}.1.250/24"));
    let links_before = ctd.node.links();

    let pod = run_pod(&ctd);
    assert!(
        pod.ip.starts_with(&format!("10.{o}.1.")),
        "pod IP {}",
        pod.ip
    );
    let addrs = pod_addrs(&ctd, &pod);
    assert_eq!(addrs, vec![("eth0".to_string(), format!("{}/24", pod.ip))]);
    assert_pings(&ctd, &pod, &peer, "bridge");
    stop_and_remove(&ctd, &pod);
    assert_nothing_left(&ctd, &links_before, &ctd.dir().join("ipam"));
}

/// In [`Mode::Agent`] virtlink-cni is the shim and `virtlink agent` (in the
/// node namespace, next to containerd) does the work.
fn containerd_pod_with_two_nads_gets_three_networks_and_leaves_nothing(mode: Mode) {
    let test = "containerd_pod_with_two_nads_gets_three_networks_and_leaves_nothing";
    if skip(test) {
        return;
    }
    let bin = match virtlink_cni() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED {test}: virtlink-cni is not ready for it: {why}");
            return;
        }
    };
    let o = cri::subnet_octet();
    let pod_bridge = cri::unique("vlpod");
    let blue_bridge = cri::unique("vlblue");
    let ctd = Containerd::start(
        |d| {
            let mut conf = json!({"cniVersion": "1.0.0", "name": "virtlink", "plugins": [{
                "type": "virtlink-cni",
                "clusterNetwork": {"cniVersion": "1.0.0", "name": "podnet", "type": "bridge",
                    "bridge": pod_bridge, "isGateway": true, "ipMasq": false,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{o}.1.0/24"),
                             "rangeEnd": format!("10.{o}.1.200")}]], "dataDir": d.join("ipam")}},
                "manifestsDir": d.join("manifests"),
                "stateDir": d.join("virtlink"),
                "capabilities": {"portMappings": true}}]});
            if mode == Mode::Agent {
                conf["plugins"][0]["daemonSocket"] = json!(d.join("agent.sock"));
            }
            conf
        },
        Some(&bin),
    );
    let d = ctd.dir().to_path_buf();
    let node = &ctd.node;
    let agent = (mode == Mode::Agent).then(|| {
        common::Agent::start(
            &node.path(),
            &d.join("agent.sock"),
            &d.join("agent.log"),
            &[],
        )
    });
    for br in [&pod_bridge, &blue_bridge] {
        node.ip(&format!("link add {br} type bridge"));
        node.ip(&format!("link set {br} up"));
    }
    // eth0's peer and net1's peer are ports of their bridges; net2 is a
    // macvlan whose master is the node end of the green peer's veth.
    let cluster_peer = Peer::new(node, Some(&pod_bridge), &format!("10.{o}.1.250/24"));
    let blue_peer = Peer::new(node, Some(&blue_bridge), &format!("10.{o}.2.250/24"));
    let green_peer = Peer::new(node, None, &format!("10.{o}.3.250/24"));
    let ipam = |k: u32| {
        json!({"type": "host-local", "ranges": [[{"subnet": format!("10.{o}.{k}.0/24"),
               "rangeEnd": format!("10.{o}.{k}.200")}]], "dataDir": d.join("ipam")})
    };
    let nad = |name: &str, config: Value| {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": name, "namespace": POD_NAMESPACE},
               "spec": {"config": config.to_string()}})
    };
    let objects = [
        nad(
            "blue",
            json!({"cniVersion": "1.0.0", "name": "blue", "type": "bridge",
                   "bridge": blue_bridge, "ipam": ipam(2)}),
        ),
        nad(
            "green",
            json!({"cniVersion": "1.0.0", "name": "green", "type": "macvlan",
                   "master": green_peer.host_end, "mode": "bridge", "ipam": ipam(3)}),
        ),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": POD, "namespace": POD_NAMESPACE, "uid": POD_UID,
                            "annotations": {"k8s.v1.cni.cncf.io/networks": "blue,green"}}}),
    ];
    let yaml: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect();
    std::fs::write(d.join("manifests/objects.yaml"), yaml.join("---\n")).unwrap();
    let links_before = node.links();

    let pod = run_pod(&ctd);
    assert!(
        pod.ip.starts_with(&format!("10.{o}.1.")),
        "containerd's pod IP {} is not eth0's\n{}",
        pod.ip,
        ctd.diagnostics()
    );
    // By name: ifindex order depends on where each delegate made its link.
    let mut addrs = pod_addrs(&ctd, &pod);
    addrs.sort();
    let names: Vec<&str> = addrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["eth0", "net1", "net2"], "{addrs:?}");
    for ((ifname, addr), k) in addrs.iter().zip(1..) {
        assert!(
            addr.starts_with(&format!("10.{o}.{k}.")) && addr.ends_with("/24"),
            "{ifname} has {addr}, expected an address in 10.{o}.{k}.0/24"
        );
    }
    assert_eq!(addrs[0].1, format!("{}/24", pod.ip));
    assert_pings(&ctd, &pod, &cluster_peer, "cluster (eth0)");
    assert_pings(&ctd, &pod, &blue_peer, "blue (net1)");
    assert_pings(&ctd, &pod, &green_peer, "green (net2)");

    // Standalone mode publishes the NPWG network-status.
    let status_file = d.join(format!("virtlink/status/{POD_NAMESPACE}/{POD}.json"));
    let status: Value = serde_json::from_slice(
        &std::fs::read(&status_file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", status_file.display(), ctd.diagnostics())),
    )
    .unwrap();
    let published: Vec<(Value, Value)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["interface"].clone(), s["ips"].clone()))
        .collect();
    let expected: Vec<(Value, Value)> = addrs
        .iter()
        .map(|(ifname, addr)| (json!(ifname), json!([addr.trim_end_matches("/24")])))
        .collect();
    assert_eq!(published, expected, "network-status: {status}");

    stop_and_remove(&ctd, &pod);
    assert_nothing_left(&ctd, &links_before, &d.join("ipam"));
    let attachments = cri::entries(&d.join("virtlink/attachments"));
    assert!(
        attachments.is_empty(),
        "virtlink attachments left: {attachments:?}\n{}",
        ctd.diagnostics()
    );
    assert!(
        !status_file.exists(),
        "the network-status of the removed pod is left: {}",
        status_file.display()
    );
    // containerd's calls, as the wrapper saw them: ADD, DEL on stop, DEL
    // without a netns on remove; every one answered with success.
    let calls = ctd.cni_calls();
    eprintln!("virtlink-cni calls (containerd -> plugin):\n{calls}");
    let commands: Vec<(&str, bool)> = calls
        .lines()
        .filter_map(|l| l.strip_prefix("=== "))
        .map(|l| {
            (
                l.split(' ').next().unwrap_or_default(),
                l.contains("CNI_NETNS= "),
            )
        })
        .collect();
    assert_eq!(
        commands,
        [("ADD", false), ("DEL", false), ("DEL", true)],
        "(command, empty netns) of each call:\n{calls}"
    );
    assert!(
        calls
            .lines()
            .filter(|l| l.starts_with("exit: "))
            .all(|l| l == "exit: 0"),
        "a CNI call failed:\n{calls}"
    );
    if let Some(agent) = &agent {
        assert_eq!(
            agent.served(),
            3,
            "the agent served ADD, DEL, DEL:\n{}",
            agent.log_text()
        );
    }
    drop((cluster_peer, blue_peer, green_peer));
}

in_both_modes!(containerd_pod_with_two_nads_gets_three_networks_and_leaves_nothing);

/// The cluster install path with a real runtime: containerd starts with a
/// plain bridge network as its only config; `virtlink agent --install` puts
/// the shim into containerd's CNI bin dir and 00-virtlink.conflist (wrapping
/// that bridge config) first into its conf dir; containerd picks it up and
/// the pod's network comes through the shim and the agent.
#[test]
fn containerd_uses_the_config_the_agent_installs() {
    let test = "containerd_uses_the_config_the_agent_installs";
    if skip(test) {
        return;
    }
    let bin = match virtlink_cni() {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("SKIPPED {test}: virtlink-cni is not ready for it: {why}");
            return;
        }
    };
    let o = cri::subnet_octet();
    let bridge = cri::unique("vlpod");
    let ctd = Containerd::start(
        |d| {
            json!({"cniVersion": "1.0.0", "name": "plain", "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.{o}.1.0/24"),
                         "rangeEnd": format!("10.{o}.1.200")}]], "dataDir": d.join("ipam")}}]})
        },
        None,
    );
    let d = ctd.dir().to_path_buf();
    let node = &ctd.node;
    node.ip(&format!("link add {bridge} type bridge"));
    node.ip(&format!("link set {bridge} up"));
    let peer = Peer::new(node, Some(&bridge), &format!("10.{o}.1.250/24"));
    let links_before = node.links();

    let (bin_dir, conf_dir, state) = (d.join("bin"), d.join("net.d"), d.join("virtlink"));
    let agent = common::Agent::start(
        &node.path(),
        &d.join("agent.sock"),
        &d.join("agent.log"),
        &[
            "--install",
            "--cni-bin-dir",
            bin_dir.to_str().unwrap(),
            "--cni-conf-dir",
            conf_dir.to_str().unwrap(),
            "--shim-binary",
            bin.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let installed = conf_dir.join("00-virtlink.conflist");
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || installed.exists()),
        "{}",
        agent.log_text()
    );
    // containerd watches its conf dir; give it a moment to load the new first file.
    std::thread::sleep(std::time::Duration::from_secs(2));

    let pod = run_pod(&ctd);
    assert!(
        pod.ip.starts_with(&format!("10.{o}.1.")),
        "pod IP {}\n{}\n{}",
        pod.ip,
        agent.log_text(),
        ctd.diagnostics()
    );
    assert_eq!(
        pod_addrs(&ctd, &pod),
        vec![("eth0".to_string(), format!("{}/24", pod.ip))]
    );
    assert_pings(&ctd, &pod, &peer, "bridge (through the agent)");
    assert_eq!(agent.served(), 1, "the ADD went through the agent");
    assert_eq!(
        cri::entries(&state.join("attachments")).len(),
        1,
        "the agent keeps the attachment's state"
    );
    stop_and_remove(&ctd, &pod);
    assert_nothing_left(&ctd, &links_before, &d.join("ipam"));
    assert_eq!(agent.served(), 3, "ADD, DEL, DEL:\n{}", agent.log_text());
    assert!(cri::entries(&state.join("attachments")).is_empty());
    drop(agent);
    drop(peer);
}
