//! `virtlink bench vm`: a real guest's traffic through the masquerade binding
//! on virtlink's eBPF datapath, through the masquerade binding on nftables
//! (KubeVirt's way), and through the bridge binding (no translation), in one
//! run with interleaved rounds. Two guests (QEMU/TCG) run in the standalone
//! environment `vmbench`: `guest` with a masquerade interface on the pod
//! network (eBPF, the default datapath) and a bridge interface on the NAD
//! `blue`, and `guest-nft` with a masquerade interface whose VM annotation
//! chooses nftables; a peer pod sits on both networks. iperf3 runs in the
//! guests, ping and TCP request/response latency are measured from both
//! sides. Only one guest is measured at a time (the other one idles).

use super::median;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{launcher, standalone};

const OBJECTS: &str = r#"
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: blue, namespace: default}
spec:
  config: '{"cniVersion": "1.0.0", "name": "blue", "type": "bridge", "bridge": "vl-blue",
            "ipam": {"type": "host-local", "subnet": "10.10.8.0/24"}}'
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: guest, namespace: default}
spec:
  domain:
    devices:
      interfaces:
      - {name: default, masquerade: {}}
      - {name: blue, bridge: {}}
  networks:
  - {name: default, pod: {}}
  - {name: blue, multus: {networkName: blue}}
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: guest-nft
  namespace: default
  annotations: {virtlink.io/masquerade-datapath: nftables}
spec:
  domain:
    devices:
      interfaces:
      - {name: default, masquerade: {}}
  networks:
  - {name: default, pod: {}}
---
apiVersion: v1
kind: Pod
metadata:
  name: peer
  namespace: default
  annotations: {k8s.v1.cni.cncf.io/networks: blue}
"#;

/// One binding's path: how the guest reaches the peer and the peer the guest.
struct Path2 {
    binding: &'static str,
    /// The guest's launcher directory (its console).
    ctl: std::path::PathBuf,
    guest_nic: &'static str,
    /// The peer's address on the network.
    peer: String,
    /// Where the peer reaches the guest's web server.
    guest: String,
}

#[derive(Default)]
struct Samples {
    tx_mbps: Vec<f64>,
    rx_mbps: Vec<f64>,
    ping_ms: Vec<f64>,
    rr_us: Vec<f64>,
}

pub fn run(rounds: usize, seconds: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("vmbench.yaml");
    std::fs::write(&file, OBJECTS)?;
    let run_dir = dir.path().join("run");
    standalone::up(&file, &run_dir).context("bring the benchmark VM up")?;
    let result = measure(&file, &run_dir, rounds, seconds);
    if let Err(e) = standalone::down(&file, &run_dir) {
        eprintln!("{e:#}");
    }
    result
}

fn measure(file: &Path, run_dir: &Path, rounds: usize, seconds: u32) -> Result<()> {
    let ctl = standalone::launcher_dir(file, run_dir, "guest")?;
    let ctl_nft = standalone::launcher_dir(file, run_dir, "guest-nft")?;
    let peer_ns = standalone::pod_netns_name(file, run_dir, "peer")?;
    let peer = standalone::pod_network_status(file, run_dir, "default", "peer")?;
    let launcher = standalone::pod_network_status(file, run_dir, "default", "virt-launcher-guest")?;
    let launcher_nft =
        standalone::pod_network_status(file, run_dir, "default", "virt-launcher-guest-nft")?;
    let ip = |list: &[netattach::status::NetworkStatus], default: bool| -> Result<String> {
        list.iter()
            .find(|s| s.default == default)
            .and_then(|s| s.ips.first())
            .map(|s| s.split('/').next().unwrap_or(s).to_string())
            .context("an address missing in network-status")
    };
    let paths = [
        Path2 {
            binding: "masquerade (eBPF)",
            ctl: ctl.clone(),
            guest_nic: "eth0",
            peer: ip(&peer, true)?,
            guest: ip(&launcher, true)?,
        },
        Path2 {
            binding: "masquerade (nftables)",
            ctl: ctl_nft,
            guest_nic: "eth0",
            peer: ip(&peer, true)?,
            guest: ip(&launcher_nft, true)?,
        },
        Path2 {
            binding: "bridge",
            ctl,
            guest_nic: "eth1",
            peer: ip(&peer, false)?,
            // The guest holds the launcher pod's address on `blue`.
            guest: ip(&launcher, false)?,
        },
    ];
    let guest = |ctl: &Path, cmd: &str, timeout: u64| -> Result<String> {
        let (status, out) = launcher::run_in_guest(ctl, cmd, Duration::from_secs(timeout))?;
        if status != 0 {
            bail!("`{cmd}` in the guest failed ({status}): {out}");
        }
        Ok(out)
    };
    for p in &paths[..2] {
        guest(
            &p.ctl,
            "mkdir -p /tmp/w && echo ok > /tmp/w/index.html && httpd -p 8090 -h /tmp/w",
            20,
        )?;
    }
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    eprintln!(
        "measuring {rounds} round(s), {seconds} s per iperf3 run, paths interleaved (TCG guest: slow)"
    );
    for round in 0..rounds {
        for (i, p) in paths.iter().enumerate() {
            eprintln!("  round {}/{rounds}: {}", round + 1, p.binding);
            let s = &mut samples[i];
            for (reverse, out) in [(false, &mut s.tx_mbps), (true, &mut s.rx_mbps)] {
                iperf_server(&peer_ns)?;
                let text = guest(
                    &p.ctl,
                    &format!(
                        "iperf3 -c {} -t {seconds} -f m {} | tail -4",
                        p.peer,
                        if reverse { "-R" } else { "" }
                    ),
                    u64::from(seconds) + 30,
                )?;
                out.push(receiver_mbps(&text).with_context(|| format!("iperf3 output: {text}"))?);
            }
            let text = guest(
                &p.ctl,
                &format!("ping -c 20 -i 0.2 -I {} {}", p.guest_nic, p.peer),
                30,
            )?;
            samples[i]
                .ping_ms
                .push(ping_avg(&text).with_context(|| format!("ping: {text}"))?);
            let addr: SocketAddr = format!("{}:8090", p.guest).parse()?;
            let rr = netattach::netns::run_in(
                Path::new(netattach::netns::NETNS_RUN_DIR)
                    .join(&peer_ns)
                    .as_path(),
                move || request_latency(addr, 50),
            )??;
            samples[i].rr_us.push(rr);
        }
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", &peer_ns, "pkill", "-x", "iperf3"])
        .status();
    // Each masquerade path ran on the datapath it is named after.
    let root = Path::new(virtlink_xdp::bpffs::DEFAULT_ROOT);
    let translated: u64 = vm_binder::pin_dirs(root, "default", "guest")
        .iter()
        .filter_map(|(_, dir)| virtlink_xdp::nat::Pinned::open(dir).ok())
        .filter_map(|p| p.counter(virtlink_xdp::common::Counter::OutPackets).ok())
        .sum();
    if translated == 0 {
        bail!("the eBPF path's programs translated nothing");
    }
    if !vm_binder::pin_dirs(root, "default", "guest-nft").is_empty() {
        bail!("the nftables guest has eBPF pins");
    }
    eprintln!(
        "eBPF masquerade translated {translated} packets out; the nftables guest has no programs"
    );

    println!();
    println!("| guest path | guest->peer TCP Mbit/s | peer->guest TCP Mbit/s | ping RTT ms | HTTP request peer->guest µs |");
    println!("|---|---|---|---|---|");
    for (p, s) in paths.iter().zip(&samples) {
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.0} |",
            p.binding,
            median(&s.tx_mbps),
            median(&s.rx_mbps),
            median(&s.ping_ms),
            median(&s.rr_us)
        );
    }
    let ratio = |name: &str, a: &Samples, b: &Samples| {
        println!(
            "{name}: TCP out {:.2}x, TCP in {:.2}x, RTT {:.2}x, request {:.2}x",
            median(&a.tx_mbps) / median(&b.tx_mbps),
            median(&a.rx_mbps) / median(&b.rx_mbps),
            median(&b.ping_ms) / median(&a.ping_ms),
            median(&b.rr_us) / median(&a.rr_us),
        );
    };
    println!("\nMedians of {rounds} round(s); RTT and request as the other / this, so higher is better everywhere:");
    ratio(
        "masquerade eBPF / masquerade nftables",
        &samples[0],
        &samples[1],
    );
    ratio("masquerade eBPF / bridge", &samples[0], &samples[2]);
    ratio("masquerade nftables / bridge", &samples[1], &samples[2]);
    Ok(())
}

/// Starts a one-shot iperf3 server in the peer pod.
fn iperf_server(netns: &str) -> Result<()> {
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "pkill", "-x", "iperf3"])
        .status();
    let ok = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "iperf3", "-s", "-D", "-1"])
        .status()
        .context("start iperf3 in the peer pod")?
        .success();
    if !ok {
        bail!("iperf3 server did not start");
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// The receiver's rate from iperf3's summary (`... Mbits/sec ... receiver`).
fn receiver_mbps(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_end().ends_with("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

/// The average of a ping summary (`min/avg/max`).
fn ping_avg(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("round-trip") || l.contains("rtt"))?;
    line.split('=')
        .nth(1)?
        .split('/')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Median microseconds of `n` sequential HTTP requests (connect, request,
/// whole answer) to the guest's web server.
fn request_latency(addr: SocketAddr, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        buf.clear();
        s.read_to_end(&mut buf)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        if !buf.starts_with(b"HTTP/1") {
            bail!("unexpected answer from {addr}");
        }
    }
    Ok(median(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_borrows_for_generic_args)] // the assertion predates the shared median
    fn parses_tool_output() {
        let iperf = "[  5]   0.00-5.00   sec   120 MBytes   201 Mbits/sec    3             sender\n[  5]   0.00-5.01   sec   119 MBytes   199.5 Mbits/sec                  receiver\n";
        assert_eq!(receiver_mbps(iperf), Some(199.5));
        assert_eq!(
            ping_avg("round-trip min/avg/max = 0.512/0.934/2.101 ms"),
            Some(0.934)
        );
        assert_eq!(
            ping_avg("rtt min/avg/max/mdev = 0.1/0.2/0.3/0.01 ms"),
            Some(0.2)
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(receiver_mbps("nothing").is_none());
    }
}
