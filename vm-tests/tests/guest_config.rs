//! The guest's init applies what the kernel command line asks for: DHCP on
//! every NIC (address, router, DNS, MTU from the lease) and static MTUs.

mod common;

use anyhow::{ensure, Context};
use common::{BOOT, CMD};
use vm_tests::{mac_from, Netns, Vm, VmSpec};

#[test]
fn guest_dhcp_applies_the_lease() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let ns = Netns::new()?;
    let _tap = ns.add_tap("tap0", Some("192.168.77.1/24"))?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start 192.168.77.50\nend 192.168.77.60\ninterface tap0\n\
             lease_file {leases}\npidfile {pid}\n\
             opt subnet 255.255.255.0\nopt router 192.168.77.1\n\
             opt dns 192.168.77.53\nopt mtu 1400\nopt lease 3600\n",
            leases = dir.path().join("leases").display(),
            pid = dir.path().join("pid").display(),
        ),
    )?;
    let conf = conf.to_str().context("temp path is not UTF-8")?;
    let _dhcpd = ns.spawn("busybox", &["udhcpd", "-f", conf])?;

    let vm = Vm::boot(
        VmSpec::new("dhcp")
            .netns(ns.path())
            .tap("tap0", mac_from(4))
            .cmdline("virtlink.dhcp=1"),
    )?;
    // init finishes DHCP before it prints the ready line.
    vm.wait_ready(BOOT)?;
    let console = vm.console_output();
    ensure!(
        console.contains("virtlink-dhcp: eth0 bound ip=192.168.77.5"),
        "{console}"
    );

    let addr = vm.run_ok("ip -4 -o addr show dev eth0", CMD)?;
    ensure!(
        addr.contains("inet 192.168.77.5") && addr.contains("/24"),
        "{addr}"
    );
    let route = vm.run_ok("ip route show default", CMD)?;
    ensure!(
        route.contains("default via 192.168.77.1 dev eth0"),
        "{route}"
    );
    let resolv = vm.run_ok("cat /etc/resolv.conf", CMD)?;
    ensure!(resolv.contains("nameserver 192.168.77.53"), "{resolv}");
    let mtu = vm.run_ok("cat /sys/class/net/eth0/mtu", CMD)?;
    ensure!(mtu.trim() == "1400", "mtu {mtu}");
    let lease = vm.run_ok("cat /run/udhcpc.eth0.env", CMD)?;
    ensure!(lease.contains("router=192.168.77.1"), "{lease}");
    vm.run_ok("ping -c 1 -W 2 192.168.77.1", CMD)?;
    Ok(())
}

#[test]
fn guest_applies_static_settings_from_cmdline() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let ns = Netns::new()?;
    let _tap0 = ns.add_tap("tap0", Some("10.9.0.1/24"))?;
    let _tap1 = ns.add_tap("tap1", None)?;
    let vm = Vm::boot(
        VmSpec::new("static")
            .netns(ns.path())
            .tap("tap0", mac_from(5))
            .tap("tap1", mac_from(6))
            .memory_mib(192)
            .cmdline("virtlink.ip=eth0:10.9.0.2/24,eth1:10.10.0.2/24")
            .cmdline("virtlink.gw=10.9.0.1")
            .cmdline("virtlink.mtu=eth1:1300"),
    )?;
    let addrs = vm.run_ok("ip -4 -o addr show", BOOT)?;
    ensure!(
        addrs.contains("eth0    inet 10.9.0.2/24") || addrs.contains("eth0 inet 10.9.0.2/24"),
        "{addrs}"
    );
    ensure!(addrs.contains("10.10.0.2/24"), "{addrs}");
    let macs = vm.run_ok(
        "cat /sys/class/net/eth0/address /sys/class/net/eth1/address",
        CMD,
    )?;
    ensure!(
        macs == format!("{}\n{}\n", mac_from(5), mac_from(6)),
        "{macs}"
    );
    let route = vm.run_ok("ip route show default", CMD)?;
    ensure!(route.contains("via 10.9.0.1"), "{route}");
    let mtu = vm.run_ok("cat /sys/class/net/eth1/mtu", CMD)?;
    ensure!(mtu.trim() == "1300", "{mtu}");
    vm.run_ok("ping -c 1 -W 2 10.9.0.1", CMD)?;
    Ok(())
}
