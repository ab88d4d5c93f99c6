//! A real guest (QEMU/TCG) behind the masquerade binding on the eBPF
//! datapath: DHCP, outbound and inbound connections through the programs
//! (counters rise, the source port comes from the eBPF NAT range), an Envoy
//! port is not forwarded, and a guest sending from a forged IP or MAC gets
//! nothing through while the drop counters rise.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Pod, NET_IP, POD_IP};
use virtlink_xdp::common::Counter;
use vm_binder::masquerade::Datapath;

/// A bpffs on a temp dir, unmounted on drop.
struct Bpffs(tempfile::TempDir);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn guest_on_ebpf_masquerade() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let bpffs = Bpffs(tempfile::Builder::new().prefix("vb-bpffs").tempdir()?);
    virtlink_xdp::bpffs::ensure_mounted(bpffs.0.path())?;
    let root = bpffs.0.path().to_path_buf();
    let (vm, binding, guest, _dir) = common::bind_and_boot_with(
        &pod,
        r#"{"metadata":{"name":"guest1","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[
                {"name":"default","masquerade":{},"ports":[{"port":5201},{"port":15006}]}]}},
              "networks":[{"name":"default","pod":{}}]}}"#,
        "vbve",
        "nameserver 10.96.0.10\n",
        &[],
        |o| {
            o.datapath = Datapath::Ebpf;
            o.bpffs_root = root;
        },
    )?;
    let pins = vm_binder::pin_dir(bpffs.0.path(), &vm, pod.pod.path(), "default");
    let pinned = virtlink_xdp::nat::Pinned::open(&pins)?;
    let t = Duration::from_secs(30);

    let addr = guest.run_ok("ip -4 addr show eth0", t)?;
    assert!(addr.contains("inet 10.0.2.2/24"), "{addr}");

    // Outbound ICMP and TCP (iperf3 to a server in the network namespace).
    guest.run_ok(&format!("ping -c 2 -W 5 {NET_IP}"), t)?;
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.net.name(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5202",
            "-J",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    let client = guest.run_ok(&format!("iperf3 -c {NET_IP} -p 5202 -t 1"), t);
    let out = server.wait_with_output()?;
    client?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let port = report["start"]["connected"][0]["remote_port"]
        .as_u64()
        .unwrap_or(0);
    let host = report["start"]["connected"][0]["remote_host"]
        .as_str()
        .unwrap_or("");
    assert_eq!(host, POD_IP, "{report}");
    // The guest's ephemeral port is in the NAT range and kept (the pod's
    // own sockets moved below it); the counters show the programs carried it.
    let range = virtlink_xdp::nat::DEFAULT_NAT_PORTS;
    assert!(
        (range.0..=range.1).contains(&u16::try_from(port)?),
        "client port {port} is not from the eBPF NAT range"
    );
    let out_before = pinned.counter(Counter::OutPackets)?;
    assert!(out_before > 10, "out packets {out_before}");

    // A forged source IP, then a forged MAC: nothing gets through. (Before
    // the background servers below: the harness's console shell has been
    // seen to restart once background jobs are around.)
    guest.run_ok("ip addr add 10.0.2.99/24 dev eth0", t)?;
    let forged = guest.run(&format!("ping -c 2 -W 2 -I 10.0.2.99 {NET_IP}"), t)?;
    assert!(forged.status != 0, "ping from a forged IP answered");
    assert!(pinned.counter(Counter::DropSpoofIp)? >= 1);
    guest.run_ok("ip addr del 10.0.2.99/24 dev eth0", t)?;
    let mac = binding.interfaces[0].mac.to_string();
    guest.run_ok("ip link set eth0 address 02:00:00:00:00:66", t)?;
    let forged = guest.run(&format!("ping -c 2 -W 2 {NET_IP}"), t)?;
    assert!(forged.status != 0, "ping from a forged MAC answered");
    assert!(pinned.counter(Counter::DropSpoofMac)? >= 1);
    guest.run_ok(&format!("ip link set eth0 address {mac}"), t)?;
    guest.run_ok(&format!("ping -c 2 -W 5 {NET_IP}"), t)?;

    // Inbound to a listed port.
    guest.run_ok(
        // The last guest command: nothing runs on the console after it.
        "iperf3 -s -1 -p 5201 </dev/null >/dev/null 2>&1 & \
         iperf3 -s -1 -p 15006 </dev/null >/dev/null 2>&1 &",
        t,
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let out = pod
        .net
        .exec("iperf3", &["-c", POD_IP, "-p", "5201", "-t", "1", "-J"])?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "no data through the eBPF DNAT: {out}");
    assert!(pinned.counter(Counter::InPackets)? > 10);

    // Envoy's port, although listed, is not forwarded.
    assert!(
        pod.net
            .exec("iperf3", &["-c", POD_IP, "-p", "15006", "-t", "1"])
            .is_err(),
        "Envoy's port reached the guest"
    );

    drop(guest);
    binding.unbind(&vm, &[])?;
    assert!(!pins.exists(), "pins left");
    Ok(())
}
