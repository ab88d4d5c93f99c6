//! A real guest behind the masquerade binding on a dual-stack pod: the
//! guest's dhcpcd (vm-tests guest, `virtlink.dhcp6=1`) takes fd10:0:2::2
//! from the binder's DHCPv6 server and its default route from the binder's
//! router advertisement, reaches the pod's network over IPv6 with the pod's
//! address, and is reached through the IPv6 DNAT of a listed port. The
//! datapath is eBPF: its IPv6 counters must rise (NAT66 in the programs,
//! not netfilter), and the guest reaches its own forwarded port through the
//! pod's IPv6 address (hairpin).

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{Pod, NET_IP6, POD_IP6};
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
fn guest_gets_ipv6_by_ra_and_dhcpv6_and_traffic_flows() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    pod.add_ipv6()?;
    let bpffs = Bpffs(tempfile::Builder::new().prefix("vb-bpffs").tempdir()?);
    virtlink_xdp::bpffs::ensure_mounted(bpffs.0.path())?;
    let root = bpffs.0.path().to_path_buf();
    let (vm, binding, guest, _dir) = common::bind_and_boot_with(
        &pod,
        r#"{"metadata":{"name":"guest6","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[
                {"name":"default","masquerade":{},"ports":[{"port":5201},{"port":5203}]}]}},
              "networks":[{"name":"default","pod":{}}]}}"#,
        "vbv6",
        "nameserver 10.96.0.10\nnameserver fd00::10\nsearch test.svc.cluster.local\n",
        &["virtlink.dhcp6=1"],
        |o| {
            o.datapath = Datapath::Ebpf;
            o.bpffs_root = root;
        },
    )?;
    let pins = vm_binder::pin_dir(bpffs.0.path(), &vm, pod.pod.path(), "default");
    let pinned = virtlink_xdp::nat::Pinned::open(&pins)?;
    assert_eq!(
        binding.interfaces[0].ip6.map(|n| n.to_string()).as_deref(),
        Some("fd10:0:2::2/120")
    );

    let t = Duration::from_secs(30);
    let addr = guest.run_ok("ip -6 addr show eth0 scope global", t)?;
    assert!(
        addr.contains("inet6 fd10:0:2::2/"),
        "{addr}\n{}",
        guest.console_output()
    );
    let routes = guest.run_ok("ip -6 route", t)?;
    assert!(
        routes.lines().any(|l| l.starts_with("default via fe80::")),
        "{routes}"
    );
    let resolv = guest.run_ok("cat /etc/resolv.conf", t)?;
    assert!(resolv.contains("nameserver fd00::10"), "{resolv}");

    // Outbound over IPv6, translated to the pod's IPv6 address by the
    // programs.
    guest.run_ok(
        &format!("ping -6 -c 2 -W 5 {NET_IP6}"),
        Duration::from_secs(40),
    )?;
    let out6 = pinned.counter(Counter::OutPackets6)?;
    assert!(out6 >= 2, "IPv6 out packets {out6}: not through eBPF");
    assert!(pinned.counter(Counter::InPackets6)? >= 2);
    assert!(
        pinned.conntrack()?.iter().any(|c| c.is_ipv6()),
        "no IPv6 conntrack entry"
    );

    // Inbound: a connection to the pod's IPv6 address, listed port, reaches
    // the guest.
    guest.run_ok("iperf3 -s -1 -p 5201 >/dev/null 2>&1 &", t)?;
    std::thread::sleep(Duration::from_secs(2));
    let out = pod.net.exec(
        "iperf3",
        &["-6", "-c", POD_IP6, "-p", "5201", "-t", "1", "-J"],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "no data through the IPv6 DNAT: {out}");
    assert!(pinned.counter(Counter::InPackets6)? > 10);

    // Hairpin: the guest reaches its own forwarded port through the pod's
    // IPv6 address (the pod has nothing on it).
    let hairpin = guest.run(
        &format!(
            "iperf3 -s -1 -p 5203 >/dev/null 2>&1 & sleep 1; \
             iperf3 -6 -c {POD_IP6} -p 5203 -t 1 >/dev/null 2>&1; echo rc=$?"
        ),
        t,
    )?;
    assert!(
        hairpin.output.contains("rc=0"),
        "hairpin: {}",
        hairpin.output
    );
    assert!(pinned.counter(Counter::Hairpin)? > 10);

    drop(guest);
    binding.unbind(&vm, &[])?;
    assert!(pod.pod.link("tap0").is_none(), "tap left behind");
    assert!(!pins.exists(), "pins left behind");
    Ok(())
}
