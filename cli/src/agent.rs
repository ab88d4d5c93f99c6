//! `virtlink agent`: command line options mapped onto the agent's config.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use virtlink_agent::{Config, KubeSettings, Limits};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The unix socket the virtlink-cni shim talks to (created 0600).
    #[arg(long, env = "VIRTLINK_AGENT_SOCKET", default_value = virtlink_cni::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// CNI calls running at once.
    #[arg(long, default_value_t = 16)]
    max_in_flight: usize,
    /// CNI calls waiting for a slot; beyond, callers get "try again later" (code 11).
    #[arg(long, default_value_t = 256)]
    max_queued: usize,
    /// Address for /healthz, /readyz and /metrics (e.g. 127.0.0.1:9471).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Async worker threads (CNI calls run on their own blocking threads).
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// Watch pods and NADs in the Kubernetes API (in-cluster service account
    /// unless --kubeconfig). Without it each call's config names its source.
    #[arg(long)]
    kube: bool,
    /// A kubeconfig file (implies --kube).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name: only its pods are watched.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let kube = if args.kube || args.kubeconfig.is_some() {
        let node_name = args
            .node_name
            .context("--node-name (or NODE_NAME) is required with --kube")?;
        Some(KubeSettings {
            kubeconfig: args.kubeconfig,
            node_name,
        })
    } else {
        None
    };
    let config = Config {
        kube,
        socket: args.socket,
        limits: Limits {
            max_in_flight: args.max_in_flight,
            max_queued: args.max_queued,
        },
        http: args.http,
        worker_threads: args.worker_threads,
    };
    virtlink_agent::run(config)
        .map_err(|e| anyhow::anyhow!(virtlink_cni::error_chain(&e)))
        .context("virtlink agent")
}
