//! `virtlink`: the command line tool. Standalone mode (`up`, `down`) runs the
//! same objects a cluster would (Pods, NADs) from a YAML file on one machine;
//! `bench` measures virtlink against its baselines.

mod agent;
mod bench;
mod launcher;
mod runtime;
mod standalone;
mod stats;
mod vnet_stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "virtlink",
    version,
    about = "Many fast network interfaces for KubeVirt VMs and pods"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `virtlink=debug`.
    #[arg(long, global = true, env = "VIRTLINK_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Standalone mode: attach the pods of FILE to their networks, exactly as
    /// a container runtime would call virtlink-cni, and check traffic.
    Up {
        file: PathBuf,
        /// Where standalone environments keep their state.
        #[arg(long, default_value = standalone::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Remove everything `up FILE` created.
    Down {
        file: PathBuf,
        #[arg(long, default_value = standalone::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Run a shell command in a VM that `up FILE` started (over its serial
    /// console); exits with the command's status.
    Exec {
        file: PathBuf,
        vm: String,
        /// The command (shell text).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        #[arg(long, default_value = standalone::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Seconds before the command is interrupted.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Standalone mode's virt-launcher for one VM (started by `up`).
    #[command(hide = true)]
    Launcher {
        #[arg(long)]
        dir: PathBuf,
    },
    /// The node agent: serves the CNI calls the virtlink-cni shim forwards
    /// (docs/agent.md).
    Agent(Box<agent::Args>),
    /// Print the CustomResourceDefinitions virtlink needs, generated from its
    /// Rust types (manifests/crds/ holds this output).
    Crd {
        /// The isolated networks' CRDs (VirtualNetwork, NetworkEndpointSlice;
        /// manifests/base/crd-virtual-networks.yaml) instead.
        #[arg(long)]
        vnet: bool,
    },
    /// A VM's eBPF datapath counters (packets, bytes, drops by reason,
    /// conntrack entries), read from its pinned maps.
    Stats {
        /// The VM's name.
        vm: String,
        /// The VM's Kubernetes namespace.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// The bpffs the binder pins under.
        #[arg(long, default_value = virtlink_xdp::bpffs::DEFAULT_ROOT)]
        bpffs_root: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// An isolated-network node's eBPF datapath (docs/vnet.md): forwarded
    /// packets, drops by reason, map sizes, read from its pins.
    VnetStats {
        /// The node's name.
        node: String,
        /// The bpffs the node pins under.
        #[arg(long, default_value = virtlink_xdp::bpffs::DEFAULT_ROOT)]
        bpffs_root: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (figures go to docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Up { file, run_dir } => standalone::up(&file, &run_dir),
        Command::Down { file, run_dir } => standalone::down(&file, &run_dir),
        Command::Exec {
            file,
            vm,
            command,
            run_dir,
            timeout,
        } => match standalone::exec(&file, &run_dir, &vm, &command.join(" "), timeout) {
            Ok(status) => return ExitCode::from(u8::try_from(status).unwrap_or(1)),
            Err(e) => Err(e),
        },
        Command::Launcher { dir } => launcher::run(&dir),
        Command::Agent(args) => agent::run(*args),
        Command::Crd { vnet: false } => agent::print_crds(),
        Command::Crd { vnet: true } => virtlink_vnet::model::crds_yaml()
            .map(|y| print!("{y}"))
            .map_err(|e| anyhow::anyhow!("render the vnet CRDs: {e}")),
        Command::Stats {
            vm,
            namespace,
            bpffs_root,
            json,
        } => stats::run(&bpffs_root, &namespace, &vm, json),
        Command::VnetStats {
            node,
            bpffs_root,
            json,
        } => vnet_stats::run(&bpffs_root, &node, json),
        Command::Bench { what } => bench::run(what),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtlink: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
