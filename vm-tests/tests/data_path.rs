//! A guest in a launcher namespace reaches that namespace over a tap: ping,
//! TCP both ways, and iperf3 throughput.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{ensure, Context};
use common::{BOOT, CMD};
use vm_tests::{mac_from, Netns, Vm, VmSpec};

#[test]
fn guest_pings_and_talks_tcp_to_its_netns() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let ns = Netns::new()?;
    let _tap = ns.add_tap("tap0", Some("192.168.77.1/24"))?;
    let http = ns.enter(|| TcpListener::bind("192.168.77.1:0"))??;
    let http_port = http.local_addr()?.port();
    let sink = ns.enter(|| TcpListener::bind("192.168.77.1:0"))??;
    let sink_port = sink.local_addr()?.port();
    let body = "hello from the launcher netns\n";
    let http_server = std::thread::spawn(move || common::serve_http_once(&http, body, BOOT));
    let sink_server = std::thread::spawn(move || common::read_once(&sink, BOOT));

    let vm = Vm::boot(
        VmSpec::new("datapath")
            .netns(ns.path())
            .tap("tap0", mac_from(1)),
    )?;
    vm.wait_ready(BOOT)?;
    vm.run_ok(
        "ip addr add 192.168.77.2/24 dev eth0 && ip link set eth0 up",
        CMD,
    )?;

    let ping = vm.run("ping -c 3 -W 2 192.168.77.1", CMD)?;
    ensure!(ping.status == 0, "ping failed: {}", ping.output);
    ensure!(
        ping.output.contains("3 packets received"),
        "{}",
        ping.output
    );

    let got = vm.run_ok(
        &format!("wget -q -O - http://192.168.77.1:{http_port}/from-guest"),
        CMD,
    )?;
    ensure!(got == body, "guest fetched {got:?}");
    let request = http_server
        .join()
        .map_err(|_| anyhow::anyhow!("http thread"))??;
    ensure!(
        request == "GET /from-guest HTTP/1.1" || request == "GET /from-guest HTTP/1.0",
        "{request}"
    );

    vm.run_ok(
        &format!("echo sent-by-guest | nc 192.168.77.1 {sink_port}"),
        CMD,
    )?;
    let sent = sink_server
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread"))??;
    ensure!(sent == "sent-by-guest\n", "host read {sent:?}");

    // A failing command reports its status rather than an error.
    let missing = vm.run("ls /nonexistent", CMD)?;
    ensure!(missing.status != 0, "{missing:?}");
    Ok(())
}

#[test]
fn guest_iperf3_to_its_netns() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let ns = Netns::new()?;
    let _tap = ns.add_tap("tap0", Some("192.168.77.1/24"))?;
    let _server = ns.spawn("iperf3", &["-s", "-B", "192.168.77.1", "-p", "5201"])?;
    ns.wait_listening(5201, Duration::from_secs(10))?;

    // Address from the kernel command line this time (the guest's init).
    let started = std::time::Instant::now();
    let vm = Vm::boot(
        VmSpec::new("iperf3")
            .netns(ns.path())
            .tap("tap0", mac_from(2))
            .cmdline("virtlink.ip=eth0:192.168.77.2/24"),
    )?;
    vm.wait_ready(BOOT)?;
    eprintln!("booted in {:?}", started.elapsed());
    let json = vm.run_ok(
        "iperf3 -c 192.168.77.1 -p 5201 -t 2 -J",
        Duration::from_secs(60),
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("iperf3 output: {json}"))?;
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in {json}"))?;
    eprintln!("guest -> netns iperf3: {:.0} Mbit/s", bps / 1e6);
    ensure!(bps > 0.0, "iperf3 measured {bps} bit/s");
    Ok(())
}
