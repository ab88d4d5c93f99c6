//! `virtlink bench ...`: benchmarks that compare virtlink with its baseline
//! in the same run. Results are printed as a Markdown table for
//! docs/BENCHMARKS.md.

mod cni;

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
}

pub fn run(what: Bench) -> Result<()> {
    match what {
        Bench::Cni { rounds, concurrent } => cni::run(rounds, concurrent),
    }
}
