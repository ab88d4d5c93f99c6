//! `virtlink bench ...`: benchmarks that compare virtlink with its baseline
//! in the same run. Results are printed as a Markdown table for
//! docs/BENCHMARKS.md.

mod agent;
mod cni;
mod datapath;
mod vm;

use anyhow::Result;
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
    /// through the masquerade binding (nftables) against the bridge binding.
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
    }
}
