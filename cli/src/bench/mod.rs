//! `virtlink bench ...`: benchmarks that compare virtlink with its baseline
//! in the same run. Results are printed as a Markdown table for
//! docs/BENCHMARKS.md.

mod agent;
mod cni;
mod datapath;
mod vm;
mod vnet;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// ADD+DEL of a pod with three networks: virtlink-cni against calling
    /// the same delegates directly; peak RSS; a burst of concurrent pods.
    Cni {
        /// Pods added and deleted one after another, per side.
        #[arg(long, default_value_t = 40)]
        rounds: usize,
        /// Pods added concurrently in the burst.
        #[arg(long, default_value_t = 50)]
        concurrent: usize,
    },
    /// ADD latency through the node agent (virtlink-cni as a shim) against
    /// direct mode, interleaved; then a burst of concurrent ADDs through the
    /// agent and its peak RSS.
    Agent {
        /// ADDs (each followed by a DEL) per mode.
        #[arg(long, default_value_t = 40)]
        rounds: usize,
        /// Pods added concurrently through the agent in the burst.
        #[arg(long, default_value_t = 200)]
        burst: usize,
        /// The agent's --max-in-flight.
        #[arg(long, default_value_t = 16)]
        max_in_flight: usize,
    },
    /// A real guest's TCP throughput (iperf3 in the guest) and latency
    /// through the masquerade binding on eBPF, the masquerade binding on
    /// nftables and the bridge binding, interleaved in one run.
    Vm {
        /// Interleaved rounds per binding.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// The masquerade datapaths between namespaces (no guest CPU in the
    /// way): bare veth pair; plain routing, nftables masquerade, untranslated
    /// redirect_peer and the eBPF masquerade through a pod namespace; TCP
    /// with tx off, 64-byte UDP packets/s, RTT, conn/s.
    Datapath {
        /// Interleaved rounds over all paths.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per tool and path.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// Isolated tenant networks (docs/vnet.md): two pods of one network
    /// with 1 and with 10,000 networks defined, against the same isolation
    /// as 1,000 iptables rules and as one nftables set; cross node over
    /// VXLAN against plain routed VXLAN.
    Vnet {
        /// Interleaved rounds over all paths.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per tool and path.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only the same-node path with 1 and with 10,000 networks.
        #[arg(long)]
        networks_only: bool,
    },
}

pub fn run(what: Bench) -> Result<()> {
    match what {
        Bench::Datapath { rounds, seconds } => datapath::run(
            &[
                datapath::Path::Routed,
                datapath::Path::Nftables,
                datapath::Path::Redirect,
                datapath::Path::Ebpf,
            ],
            rounds,
            seconds,
        ),
        Bench::Cni { rounds, concurrent } => cni::run(rounds, concurrent),
        Bench::Agent {
            rounds,
            burst,
            max_in_flight,
        } => agent::run(rounds, burst, max_in_flight),
        Bench::Vm { rounds, seconds } => vm::run(rounds, seconds),
        Bench::Vnet {
            rounds,
            seconds,
            networks_only,
        } => vnet::run(rounds, seconds, networks_only),
    }
}

/// Runs `args` inside the named network namespace; its stdout, or an error
/// with what it printed.
fn sh(ns: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("run {} in {ns}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} in {ns}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS` inside the named network namespace.
fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["ip"];
    all.extend_from_slice(args);
    sh(ns, &all)
}

/// iperf3's `-J` output.
fn iperf3_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| format!("iperf3 output: {text}"))
}

/// The received TCP throughput of an iperf3 run, in Gbit/s.
fn iperf3_tcp_gbps(v: &serde_json::Value) -> Result<f64> {
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no sum_received in iperf3 output")?;
    Ok(bps / 1e9)
}

/// The packets per second that arrived in an iperf3 UDP run of `seconds`.
fn iperf3_udp_pps(v: &serde_json::Value, seconds: u32) -> Result<f64> {
    let sum = &v["end"]["sum"];
    let packets = sum["packets"]
        .as_f64()
        .context("no packets in iperf3 output")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(f64::from(seconds));
    Ok((packets - lost) / secs)
}

/// `avg-rtt=21.034` (µs) from sockperf's summary (`avg-lat=` without
/// `--full-rtt`).
fn parse_sockperf_avg(text: &str) -> Option<f64> {
    let at = text.find("avg-rtt=").or_else(|| text.find("avg-lat="))?;
    let rest = &text[at + 8..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The median (the mean of the middle two for an even count; NaN when empty).
fn median(v: impl AsRef<[f64]>) -> f64 {
    let mut v = v.as_ref().to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
