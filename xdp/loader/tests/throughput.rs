//! Not a timed test (ignored by default): a quick side-by-side of the eBPF
//! masquerade and nftables masquerade between the test namespaces, one
//! iperf3 TCP stream with tx checksum offload off on the endpoints.
//! `cargo test -p virtlink-xdp --test throughput -- --ignored --nocapture`

mod common;

use anyhow::Result;
use common::{Topology, PEER_IP};
use virtlink_xdp::nat::Forward;

fn iperf(t: &Topology, extra: &[&str]) -> Result<f64> {
    let p = &t.pods[0];
    let server = t
        .peer
        .command("iperf3")
        .args(["-s", "-1", "-B", PEER_IP])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut args = vec!["-c", PEER_IP, "-t", "3", "-J"];
    args.extend_from_slice(extra);
    let out = p.guest.exec("iperf3", &args);
    let _ = server.wait_with_output();
    let v: serde_json::Value = serde_json::from_str(&out?)?;
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore]
fn ebpf_against_nftables() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    p.guest.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
    t.peer.exec("ethtool", &["-K", "p0", "tx", "off"])?;
    let (mut nft, mut nft_udp, mut ebpf, mut ebpf_udp) = (vec![], vec![], vec![], vec![]);
    // Interleaved rounds: the machine's load changes under us.
    for _ in 0..3 {
        p.pod.sysctl("net.ipv4.ip_forward", "1")?;
        p.pod.exec(
            "nft",
            &["add table ip m; add chain ip m post { type nat hook postrouting priority srcnat; }; \
               add rule ip m post oifname eth0 ip saddr 10.0.2.2 masquerade"],
        )?;
        nft.push(iperf(&t, &[])?);
        nft_udp.push(iperf(&t, &["-u", "-l", "64", "-b", "0"])?);
        p.pod.exec("nft", &["delete table ip m"])?;
        p.pod.sysctl("net.ipv4.ip_forward", "0")?;
        t.attach(0, t.spec(0, Forward::All))?;
        ebpf.push(iperf(&t, &[])?);
        ebpf_udp.push(iperf(&t, &["-u", "-l", "64", "-b", "0"])?);
        virtlink_xdp::nat::detach(&p.pin_dir)?;
    }
    let (nft, nft_udp, ebpf, ebpf_udp) =
        (median(nft), median(nft_udp), median(ebpf), median(ebpf_udp));
    eprintln!(
        "medians of 3: TCP tx-off: nftables {nft:.2} Gb/s, ebpf {ebpf:.2} Gb/s ({:.2}x); \
         UDP 64 B: nftables {:.1} Mb/s, ebpf {:.1} Mb/s ({:.2}x)",
        ebpf / nft,
        nft_udp * 1e3,
        ebpf_udp * 1e3,
        ebpf_udp / nft_udp
    );
    Ok(())
}
