//! A real container runtime calls virtlink-cni exactly as it does for
//! kubelet's pods: Debian's containerd (CRI plugin) with runc, started by the
//! test in a temp dir, runs a pod sandbox whose pod names two NADs. The sandbox
//! gets eth0, net1 and net2 with addresses; a container in it reaches a peer on
//! each network; StopPodSandbox (DEL) and RemovePodSandbox (a second DEL with
//! an empty CNI_NETNS) leave nothing behind.
//!
//! Real: containerd, runc, the CRI gRPC API (driven by a Python CRI client,
//! cni/tests/containerd_cri/cri.py), the reference plugins, the kernel.
//! Absent: kubelet (the CRI client plays its part) and the API server (the
//! pod and NADs come from the plugin's manifests directory).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{sh, Netns};
use serde_json::{json, Value};

const CRI_PYTHON: &str = "/opt/virtlink/cri-venv/bin/python";
const IMAGE: &str = "virtlink.test/busybox:1";

fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/containerd_cri")
        .join(file)
}

/// containerd in a temp dir, running in the test's node namespace (so the
/// bridges and host-side links of the CNI plugins it calls stay there).
struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    node: Netns,
}

impl Containerd {
    fn start() -> Self {
        let node = Netns::new("vlctd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["bin", "net.d", "manifests"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for e in std::fs::read_dir(common::REFERENCE_PLUGINS)
            .unwrap()
            .flatten()
        {
            std::os::unix::fs::symlink(e.path(), d.join("bin").join(e.file_name())).unwrap();
        }
        std::os::unix::fs::symlink(common::plugin_binary(), d.join("bin/virtlink-cni")).unwrap();
        let dd = d.display();
        std::fs::write(
            d.join("config.toml"),
            format!(
                r#"version = 2
root = "{dd}/root"
state = "{dd}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{dd}/containerd.sock"
[ttrpc]
  address = "{dd}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dd}/bin"
    conf_dir = "{dd}/net.d"
"#
            ),
        )
        .unwrap();
        let ns_file = std::fs::File::open(node.path()).unwrap();
        let fd = ns_file.as_raw_fd();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: setns is async-signal-safe and only moves the forked child
        // into the node namespace before exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .expect("start containerd (apt-get install containerd runc)");
        drop(ns_file);
        let me = Containerd {
            dir,
            child: Some(child),
            node,
        };
        assert!(
            common::wait_until(Duration::from_secs(20), || me.sock().exists()),
            "containerd did not start: {}",
            me.log()
        );
        let image = me.dir.path().join("image.tar");
        sh(&format!(
            "python3 {} {} {IMAGE}",
            support("mkimage.py").display(),
            image.display()
        ));
        sh(&format!(
            "ctr --address {} -n k8s.io images import {} >/dev/null",
            me.sock().display(),
            image.display()
        ));
        me
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs one CRI call; returns its JSON answer.
    fn cri(&self, args: &[&str]) -> Value {
        let out = Command::new(CRI_PYTHON)
            .arg(support("cri.py"))
            .arg(self.sock())
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("run the CRI client (scripts/setup.sh installs it)");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success(),
            "CRI {args:?} failed: {v}\ncontainerd log tail:\n{}",
            tail(&self.log())
        );
        v
    }
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.dir.path().display().to_string();
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
        // Shims outlive containerd: stop the ones of this instance.
        let _ = Command::new("pkill")
            .args(["-f", &format!("{d}/containerd.sock")])
            .status();
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("{d}/containerd.sock")])
            .status();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "mount | awk '{{print $3}}' | grep '^{d}/' | sort -r | xargs -r umount -l"
            ))
            .status();
    }
}

/// A peer namespace on a network of the node: a veth into `bridge`, or a
/// macvlan on `bridge` for the macvlan network.
fn peer(node: &Netns, bridge: &str, addr: &str, macvlan: bool) -> Netns {
    let p = Netns::new("vlpeer");
    let n = &node.name;
    let link = common::unique("pr");
    if macvlan {
        sh(&format!(
            "ip -n {n} link add {link} link {bridge} type macvlan mode bridge"
        ));
    } else {
        sh(&format!(
            "ip -n {n} link add {link} type veth peer name {link}b"
        ));
        sh(&format!("ip -n {n} link set {link}b master {bridge} up"));
    }
    sh(&format!("ip -n {n} link set {link} netns {}", p.name));
    p.sh(&format!(
        "ip link set {link} name eth0 && ip addr add {addr} dev eth0 && ip link set eth0 up"
    ));
    p
}

#[test]
fn containerd_pod_gets_three_networks_and_leaves_nothing() {
    assert!(
        Path::new(CRI_PYTHON).exists(),
        "the CRI client is missing: run scripts/setup.sh"
    );
    let ctd = Containerd::start();
    let d = ctd.dir.path();
    let node = &ctd.node;
    node.sh("ip link add vlcbr0 type bridge && ip link set vlcbr0 up");
    node.sh("ip link add vlcblue type bridge && ip link set vlcblue up");
    node.sh("ip link add vlcmv type bridge && ip link set vlcmv up");
    let ipam = d.join("ipam");
    let state = d.join("state-virtlink");
    // containerd loads the first config file in sort order: this one.
    std::fs::write(
        d.join("net.d/00-virtlink.conflist"),
        json!({"cniVersion": "1.0.0", "name": "virtlink", "plugins": [{
            "type": "virtlink-cni",
            "clusterNetwork": {"cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "vlcbr0",
                "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.88.7.0/24", "dataDir": ipam}},
            "manifestsDir": d.join("manifests"), "stateDir": state, "capabilities": {"portMappings": true}}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("manifests/objects.yaml"),
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {{name: blue, namespace: default}}\nspec:\n  config: '{}'\n---\n\
             apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {{name: green, namespace: default}}\nspec:\n  config: '{}'\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  annotations: {{k8s.v1.cni.cncf.io/networks: 'blue,green'}}\n",
            json!({"cniVersion": "1.0.0", "name": "blue", "type": "bridge", "bridge": "vlcblue",
                   "ipam": {"type": "host-local", "subnet": "10.88.8.0/24", "dataDir": ipam}}),
            json!({"cniVersion": "1.0.0", "name": "green", "type": "macvlan", "master": "vlcmv", "mode": "bridge",
                   "ipam": {"type": "host-local", "subnet": "10.88.9.0/24", "dataDir": ipam}}),
        ),
    )
    .unwrap();
    let peers = [
        peer(node, "vlcbr0", "10.88.7.250/24", false),
        peer(node, "vlcblue", "10.88.8.250/24", false),
        peer(node, "vlcmv", "10.88.9.250/24", true),
    ];
    let links_before = node.sh("ip -o link show").lines().count();

    // containerd picks the config up asynchronously.
    std::thread::sleep(Duration::from_millis(1500));
    let sandbox = ctd.cri(&[
        "run-sandbox",
        "web",
        "default",
        "5d6c1f0e-7b1a-4e0c-9a55-c0ffee000001",
        "{}",
    ]);
    let sid = sandbox["id"].as_str().unwrap().to_string();
    let status = ctd.cri(&["sandbox-status", &sid]);
    let netns = status["netns"].as_str().unwrap().to_string();
    assert!(
        status["ip"].as_str().unwrap().starts_with("10.88.7."),
        "pod IP from eth0: {status}"
    );
    let cid = ctd.cri(&[
        "create-container",
        &sid,
        "web",
        "default",
        "5d6c1f0e-7b1a-4e0c-9a55-c0ffee000001",
        IMAGE,
        "sleep",
        "3600",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();

    let addrs = ctd.cri(&["exec", &cid, "10", "ip", "-o", "-4", "addr"]);
    let text = addrs["stdout"].as_str().unwrap();
    for (ifname, subnet) in [
        ("eth0", "10.88.7."),
        ("net1", "10.88.8."),
        ("net2", "10.88.9."),
    ] {
        assert!(
            text.lines().any(
                |l| l.contains(&format!(" {ifname} ")) && l.contains(&format!("inet {subnet}"))
            ),
            "{ifname} with an address in {subnet}0/24 missing:\n{text}"
        );
    }
    for target in ["10.88.7.250", "10.88.8.250", "10.88.9.250"] {
        let r = ctd.cri(&["exec", &cid, "10", "ping", "-c", "1", "-W", "2", target]);
        assert_eq!(r["exit"], 0, "the container cannot reach {target}: {r}");
    }
    let status_file: Value =
        serde_json::from_slice(&std::fs::read(state.join("status/default/web.json")).unwrap())
            .unwrap();
    assert_eq!(status_file.as_array().unwrap().len(), 3, "{status_file}");

    ctd.cri(&["stop-sandbox", &sid]);
    assert!(
        !Path::new(&netns).exists(),
        "sandbox netns left after StopPodSandbox"
    );
    ctd.cri(&["remove-sandbox", &sid]);

    let attachments: Vec<_> = std::fs::read_dir(state.join("attachments"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        attachments.is_empty(),
        "virtlink state left: {attachments:?}"
    );
    let reserved: Vec<String> = std::fs::read_dir(&ipam)
        .unwrap()
        .flatten()
        .flat_map(|n| std::fs::read_dir(n.path()).unwrap().flatten())
        .map(|f| f.file_name().to_string_lossy().into_owned())
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(reserved.is_empty(), "host-local IPs left: {reserved:?}");
    let links_after = node.sh("ip -o link show").lines().count();
    assert_eq!(
        links_after,
        links_before,
        "links left in the node:\n{}",
        node.sh("ip -o link show")
    );
    drop(peers);
}
