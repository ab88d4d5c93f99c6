//! `virtlink stats` on a masquerade binding with the eBPF datapath: a pod
//! namespace made here, pins on a bpffs of the test's own, a forged frame
//! written into the tap to move a drop counter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

use std::io::Write;
use std::process::Command;

struct Ns(String);

impl Ns {
    fn new(name: &str) -> Self {
        let name = format!("{name}{}", std::process::id() % 100_000);
        netattach::netns::create(&name).unwrap();
        Ns(name)
    }
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(netattach::netns::NETNS_RUN_DIR).join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netattach::netns::delete(&self.0);
    }
}

struct Bpffs(tempfile::TempDir);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn stats_reads_a_vms_pinned_counters() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: needs root for namespaces and eBPF");
        return;
    }
    let pod = Ns::new("vlsp");
    let net = Ns::new("vlsn");
    pod.ip(&["link", "set", "lo", "up"]);
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", &net.0,
    ]);
    pod.ip(&["addr", "add", "10.99.7.5/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    let bpffs = Bpffs(tempfile::tempdir().unwrap());
    virtlink_xdp::bpffs::ensure_mounted(bpffs.0.path()).unwrap();
    let vm = vm_binder::Vm::parse(
        r#"{"metadata":{"name":"statsvm","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","masquerade":{}}]}},
                    "networks":[{"name":"default","pod":{}}]}}"#,
    )
    .unwrap();
    let opts = vm_binder::BindOptions {
        datapath: vm_binder::masquerade::Datapath::Ebpf,
        bpffs_root: bpffs.0.path().to_path_buf(),
        dhcp: false,
        ..Default::default()
    };
    let binding = vm_binder::bind(&vm, &pod.path(), &[], &opts).unwrap();
    // A frame from a MAC that is not the guest's.
    let mut tap = netattach::netns::run_in(&pod.path(), || vm_binder::tap::attach("tap0"))
        .unwrap()
        .unwrap();
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x66, 0x08, 0x06]);
    frame.extend_from_slice(&[0u8; 28]);
    tap.write_all(&frame).unwrap();

    let root = bpffs.0.path().to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink"))
        .args([
            "stats",
            "-n",
            "test",
            "statsvm",
            "--bpffs-root",
            &root,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ifaces = v.as_array().unwrap();
    assert_eq!(ifaces.len(), 1, "{v}");
    assert!(ifaces[0]["pins"]
        .as_str()
        .unwrap()
        .starts_with("test_statsvm_default_"));
    assert_eq!(ifaces[0]["counters"]["drop_spoof_mac"], 1, "{v}");
    assert_eq!(ifaces[0]["counters"]["out_packets"], 0, "{v}");
    assert_eq!(ifaces[0]["conntrack_entries"], 0, "{v}");

    // Text output, and an error for a VM without pins.
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink"))
        .args(["stats", "-n", "test", "statsvm", "--bpffs-root", &root])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("drop_spoof_mac"));
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink"))
        .args(["stats", "-n", "test", "nosuchvm", "--bpffs-root", &root])
        .output()
        .unwrap();
    assert!(!out.status.success());

    drop(tap);
    binding.unbind(&vm, &[]).unwrap();
}
