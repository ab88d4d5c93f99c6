//! `virtlink up` / `exec` / `down` with KubeVirt VMs: the README's demo file
//! (examples/vms.yaml) boots two real guests (QEMU/TCG) behind launcher pods
//! attached by virtlink-cni and bound by vm-binder: vm-a with the pod network
//! by masquerade and two secondary networks by bridge binding (over a bridge
//! NAD and a macvlan NAD), vm-b on the pod network, the bridge network and
//! an isolated network (a VirtualNetwork in the file, `"type": "virtlink"`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn virtlink(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Takes the environment down even when an assertion fails.
struct Down(Vec<String>);

impl Drop for Down {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let _ = virtlink(&args);
    }
}

/// A copy of `example` under a unique name (unique namespace names), its
/// run dir, and the guard that takes it down.
struct Env {
    // Fields drop in order: take the environment down before its files go.
    _down: Down,
    _dir: tempfile::TempDir,
    name: String,
    file: String,
    run: String,
}

impl Env {
    fn new(prefix: &str, yaml: &str) -> Env {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_virtlink")).parent().unwrap();
        assert!(
            bin_dir.join("virtlink-cni").exists(),
            "build virtlink-cni first (cargo build --workspace --bins)"
        );
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{prefix}{}", std::process::id());
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let run = dir.path().join("run");
        let (file, run) = (
            file.to_str().unwrap().to_string(),
            run.to_str().unwrap().to_string(),
        );
        Env {
            _down: Down(vec![
                "down".into(),
                file.clone(),
                "--run-dir".into(),
                run.clone(),
            ]),
            _dir: dir,
            name,
            file,
            run,
        }
    }

    fn up(&self) -> (bool, String) {
        virtlink(&["up", &self.file, "--run-dir", &self.run])
    }

    fn down(&self) -> (bool, String) {
        virtlink(&["down", &self.file, "--run-dir", &self.run])
    }

    fn exec(&self, vm: &str, command: &str) -> (bool, String) {
        virtlink(&[
            "exec",
            &self.file,
            vm,
            "--run-dir",
            &self.run,
            "--timeout",
            "30",
            command,
        ])
    }

    fn env_dir(&self) -> PathBuf {
        Path::new(&self.run).join(&self.name)
    }

    /// A bash command inside a pod's namespace.
    fn in_pod(&self, pod: &str, script: &str) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("vl-{}-{pod}", self.name)])
            .args(["bash", "-c", script])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn launcher_state(&self, vm: &str) -> serde_json::Value {
        let path = self.env_dir().join("vms").join(vm).join("state.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }
}

/// An HTTP GET from a pod to `ip:port`; the body on success.
fn http_from(env: &Env, pod: &str, ip: &str, port: u16) -> (bool, String) {
    env.in_pod(
        pod,
        &format!(
            "exec 3<>/dev/tcp/{ip}/{port} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
        ),
    )
}

fn line<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

/// The launcher pod's IP on the pod network, from the pods table.
fn pod_ip(out: &str, pod: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(pod) && l.contains(" eth0 "))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("no eth0 row for {pod}:\n{out}"))
        .to_string()
}

#[test]
fn two_vms_with_several_networks_boot_talk_and_go_away() {
    let example = include_str!("../../examples/vms.yaml");
    let env = Env::new("vm", example);
    let (ok, out) = env.up();
    assert!(ok, "up failed:\n{out}");

    // Every interface got its address by DHCP: the guest has what the
    // binder leased (the launcher pod's own address for bridge bindings).
    for (vm, iface, network) in [
        ("vm-a", "default", "pod"),
        ("vm-a", "blue", "default/blue"),
        ("vm-a", "green", "default/green"),
        ("vm-b", "default", "pod"),
        ("vm-b", "blue", "default/blue"),
        ("vm-b", "red", "default/red"),
    ] {
        let row = out
            .lines()
            .find(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 8 && w[0] == vm && w[1] == iface && w[3] == network
            })
            .unwrap_or_else(|| panic!("no row for {vm}/{iface}:\n{out}"));
        let w: Vec<&str> = row.split_whitespace().collect();
        assert!(w[2].starts_with("eth"), "guest NIC not found: {row}");
        assert_ne!(w[6], "-", "no address in the guest: {row}");
        assert_eq!(w[6], w[7], "guest address differs from the lease: {row}");
    }
    assert!(
        line(&out, "vm-b     blue").contains("02:00:00:00:0b:01"),
        "the spec's macAddress is the guest's:\n{out}"
    );
    assert!(line(&out, "vm-a     default").contains("10.0.2.2/24"));
    // The isolated network's addresses come from its VirtualNetwork's CIDR,
    // and its eBPF datapath carried the guest's pings.
    assert!(line(&out, "vm-b     red").contains("10.10.3."), "{out}");
    let node = format!("vl-{}-node", env.name);
    let (ok, stats) = virtlink(&["vnet-stats", &node, "--json"]);
    assert!(ok, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["endpoints"], 2, "{stats}");
    assert!(
        stats["counters"]["forward_local"].as_u64().unwrap() >= 4,
        "{stats}"
    );

    // Traffic on every network, from inside the guests, and inbound through
    // the masquerade binding; the two VMs reach each other on `blue`.
    for needle in [
        "vm-a/eth0 -> peer",
        "vm-a/eth0 -> vm-b",
        "peer -> vm-a:8080 (inbound)",
        "vm-a/eth1 -> peer",
        "vm-a/eth1 -> vm-b",
        "vm-a/eth2 -> peer",
        "vm-b/eth0 -> peer",
        "peer -> vm-b:80 (inbound)",
        "vm-b/eth1 -> vm-a",
        "vm-b/eth2 -> peer",
    ] {
        let l = line(&out, needle);
        assert!(l.contains(" ok") && !l.contains("FAILED"), "{l}");
    }

    // `exec` runs in the guest and passes its exit status on. The lease
    // named the guest after its VM.
    let (ok, lease) = env.exec("vm-a", "cat /run/udhcpc.eth0.env");
    assert!(ok && lease.contains("hostname=vm-a"), "{lease}");
    assert!(!env.exec("vm-a", "false").0);

    // Istio: with every port forwarded, an Envoy port still is not.
    let (ok, o) = env.exec(
        "vm-a",
        "mkdir -p /tmp/w && echo guest-a > /tmp/w/index.html && httpd -p 9090 -h /tmp/w && httpd -p 15001 -h /tmp/w",
    );
    assert!(ok, "{o}");
    let ip_a = pod_ip(&out, "virt-launcher-vm-a");
    let (ok, body) = http_from(&env, "peer", &ip_a, 9090);
    assert!(ok && body.contains("guest-a"), "port 9090: {body}");
    let (ok, body) = http_from(&env, "peer", &ip_a, 15001);
    assert!(
        !ok && !body.contains("guest-a"),
        "Istio port 15001 reached the guest: {body}"
    );
    // vm-b lists only port 80: others are not forwarded.
    let (ok, o) = env.exec(
        "vm-b",
        "mkdir -p /tmp/w && echo guest-b > /tmp/w/index.html && httpd -p 9090 -h /tmp/w",
    );
    assert!(ok, "{o}");
    let ip_b = pod_ip(&out, "virt-launcher-vm-b");
    let (ok, body) = http_from(&env, "peer", &ip_b, 9090);
    assert!(!ok && !body.contains("guest-b"), "unlisted port: {body}");

    // Down: no namespace, process, IP reservation or state is left.
    let pids: Vec<u64> = ["vm-a", "vm-b"]
        .iter()
        .flat_map(|vm| {
            let s = env.launcher_state(vm);
            [s["qemu_pid"].as_u64().unwrap()]
        })
        .chain(["vm-a", "vm-b"].iter().map(|vm| {
            std::fs::read_to_string(env.env_dir().join("vms").join(vm).join("launcher.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        }))
        .collect();
    let (ok, o) = env.down();
    assert!(ok, "down failed:\n{o}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived down"
        );
    }
    assert_eq!(
        netns_with_prefix(&format!("vl-{}-", env.name)),
        Vec::<String>::new()
    );
    assert!(!env.env_dir().exists(), "state dir left behind");
    assert!(
        !Path::new(&format!("/sys/fs/bpf/virtlink/vnet-{node}")).exists(),
        "the isolated network's pins left behind"
    );
    for net in ["blue", "green"] {
        let dir = Path::new("/var/lib/cni/networks").join(net);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            assert!(
                !owner.contains(&format!("vl-{}-", env.name)),
                "IP {:?} of {net} still reserved",
                e.file_name()
            );
        }
    }
}

#[test]
fn a_vm_that_cannot_be_bound_is_rolled_back() {
    // An SR-IOV interface on a network that has no device: the CNI attaches
    // the launcher pod, then the binder fails; `up` must remove everything.
    let env = Env::new(
        "vmbad",
        r#"
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: blue, namespace: default}
spec:
  config: '{"cniVersion": "1.0.0", "name": "blue", "type": "bridge", "bridge": "vl-blue",
            "ipam": {"type": "host-local", "subnet": "10.10.9.0/24"}}'
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: broken, namespace: default}
spec:
  domain:
    devices:
      interfaces:
      - {name: default, masquerade: {}}
      - {name: fast, sriov: {}}
  networks:
  - {name: default, pod: {}}
  - {name: fast, multus: {networkName: blue}}
"#,
    );
    let (ok, out) = env.up();
    assert!(!ok, "up should fail:\n{out}");
    assert!(
        out.contains("fast") && out.contains("device-info"),
        "the error names the interface and the step:\n{out}"
    );
    assert_eq!(
        netns_with_prefix(&format!("vl-{}-", env.name)),
        Vec::<String>::new()
    );
    assert!(!env.env_dir().exists(), "state dir left behind:\n{out}");
    let leftover = Command::new("pgrep")
        .args(["-f", &format!("launcher --dir {}", env.env_dir().display())])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "launcher still running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}
