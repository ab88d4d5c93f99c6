//! `virtlink agent`: command line options mapped onto the agent's config.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use virtlink_agent::{Config, KubeSettings, Limits};
use virtlink_vnet::node::NodeConfig;

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
    /// Copy the shim into --cni-bin-dir and write 00-virtlink.conflist into
    /// --cni-conf-dir, wrapping the first existing config (the default network).
    #[arg(long)]
    install: bool,
    /// Remove what --install wrote and exit.
    #[arg(long, conflicts_with = "install")]
    uninstall: bool,
    /// With --install: remove it again on SIGTERM/SIGINT.
    #[arg(long, requires = "install")]
    uninstall_on_exit: bool,
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The shim to install (default: virtlink-cni next to this binary).
    #[arg(long)]
    shim_binary: Option<PathBuf>,
    /// `stateDir` written into the CNI config (default: virtlink-cni's).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The network binding plugin's records: the agent answers the DHCP of
    /// every VM interface bound there (`recordsDir` of the binding NAD).
    #[arg(long, default_value = virtlink_cni::binding::DEFAULT_RECORDS_DIR)]
    bindings_dir: PathBuf,
    /// Do not serve the binding plugin's DHCP.
    #[arg(long)]
    no_bindings: bool,
    /// Isolated networks (with --kube): this node's underlay address (the
    /// "virtlink" CNI type's `node.underlayIp`). Turns on the sync of
    /// VirtualNetworks and endpoint slices with the API.
    #[arg(long)]
    underlay_ip: Option<std::net::Ipv4Addr>,
    /// The node's cluster directory, the API's local mirror (`node.clusterDir`).
    #[arg(long, default_value = "/var/lib/virtlink/vnet/cluster")]
    cluster_dir: PathBuf,
    /// The node's isolated-network state (`node.stateDir`).
    #[arg(long, default_value = virtlink_vnet::cni::DEFAULT_STATE_DIR)]
    vnet_state_dir: PathBuf,
    /// Where the node's maps and links are pinned (`node.bpffsRoot`).
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs_root: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let shim_source = match &args.shim_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locate this binary")?
            .with_file_name(virtlink_agent::install::SHIM_NAME),
    };
    let install = virtlink_agent::install::InstallConfig {
        shim_source,
        cni_bin_dir: args.cni_bin_dir.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        socket: args.socket.clone(),
        state_dir: args.state_dir.clone(),
    };
    if args.uninstall {
        return virtlink_agent::install::uninstall(&install)
            .map_err(|e| anyhow::anyhow!(virtlink_cni::error_chain(&e)))
            .context("virtlink agent --uninstall");
    }
    let kube = if args.kube || args.kubeconfig.is_some() {
        let node_name = args
            .node_name
            .context("--node-name (or NODE_NAME) is required with --kube")?;
        let vnet = args.underlay_ip.map(|ip| {
            let mut n = NodeConfig::new(&node_name, ip, &args.cluster_dir, &args.vnet_state_dir);
            n.bpffs_root = args.bpffs_root.clone();
            n
        });
        Some(KubeSettings {
            kubeconfig: args.kubeconfig,
            node_name,
            vnet,
        })
    } else {
        if args.underlay_ip.is_some() {
            anyhow::bail!("--underlay-ip syncs isolated networks with the API: it needs --kube or --kubeconfig");
        }
        None
    };
    let config = Config {
        kube,
        install: args.install.then_some(install),
        uninstall_on_exit: args.uninstall_on_exit,
        socket: args.socket,
        limits: Limits {
            max_in_flight: args.max_in_flight,
            max_queued: args.max_queued,
        },
        http: args.http,
        worker_threads: args.worker_threads,
        bindings_dir: (!args.no_bindings).then_some(args.bindings_dir),
    };
    virtlink_agent::run(config)
        .map_err(|e| anyhow::anyhow!(virtlink_cni::error_chain(&e)))
        .context("virtlink agent")
}

/// The CRDs as multi-document YAML on stdout.
pub fn print_crds() -> anyhow::Result<()> {
    print!("{}", virtlink_agent::crds::yaml().context("render CRDs")?);
    Ok(())
}
