//! virtlink's node agent (`virtlink agent`, one per node): serves the CNI
//! calls that the `virtlink-cni` shim forwards over a unix socket
//! ([`server`]), with the pods of this node and the NetworkAttachmentDefinitions
//! in a watch-based cache ([`cache`]), installs the shim and its CNI config
//! ([`install`]), exposes health and metrics ([`http`], [`metrics`]), and
//! syncs the node's isolated networks with the API ([`vnet_sync`]).
//! Architecture, protocol and limits: docs/agent.md.

pub mod cache;
pub mod crds;
pub mod http;
pub mod install;
pub mod metrics;
pub mod server;
pub mod vnet_sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use virtlink_cni::source::Services;

pub use server::Limits;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("start the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("CNI socket")]
    Server(#[from] server::Error),
    #[error("health and metrics endpoint")]
    Http(#[from] http::Error),
    #[error("uninstall")]
    Uninstall(#[from] install::Error),
    #[error("Kubernetes client")]
    Kube(#[from] cache::Error),
    #[error("wait for a signal")]
    Signal(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Everything the agent is told; paths are configuration so tests run in
/// temp dirs.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub limits: Limits,
    /// `/healthz`, `/readyz`, `/metrics`; `None` turns the endpoint off.
    pub http: Option<SocketAddr>,
    /// Async worker threads (CNI calls run on blocking threads of their own).
    pub worker_threads: usize,
    /// Pods and NADs from the Kubernetes API; `None`: from each call's config
    /// (`manifestsDir`), as in direct mode.
    pub kube: Option<KubeSettings>,
    /// Install the shim and the CNI config at start (and keep them current).
    pub install: Option<install::InstallConfig>,
    /// Remove them again on SIGTERM/SIGINT.
    pub uninstall_on_exit: bool,
    /// The binding plugin's records (`virtlink-cni` with `binding`): the
    /// agent answers the guests' DHCP for each of them. `None`: off.
    pub bindings_dir: Option<PathBuf>,
}

/// Where the API is and which node's pods to watch.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// This node's isolated networks (docs/vnet.md): the VirtualNetworks
    /// and endpoint slices are synced between the API and the node's
    /// cluster directory. `None`: off.
    pub vnet: Option<virtlink_vnet::node::NodeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(virtlink_cni::daemon::DEFAULT_SOCKET),
            limits: Limits::default(),
            http: None,
            worker_threads: 2,
            kube: None,
            install: None,
            uninstall_on_exit: false,
            bindings_dir: Some(PathBuf::from(virtlink_cni::binding::DEFAULT_RECORDS_DIR)),
        }
    }
}

/// How long a stopping agent waits for the calls it admitted; below the
/// DaemonSet's terminationGracePeriodSeconds (30).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// How often the binding records are re-read: a guest's first DHCP request
/// comes seconds after its ADD (the VM boots), and retries.
const BINDINGS_RESYNC: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps a DHCP (and IPv6) server running for every binding record in
/// `dir` (docs/agent.md, "KubeVirt network binding plugin"); stops them all
/// on stop.
async fn serve_bindings(dir: PathBuf, mut stop: watch::Receiver<bool>) {
    tracing::info!(dir = %dir.display(), "serving the DHCP of bound VM interfaces");
    let servers = Arc::new(std::sync::Mutex::new(vm_binder::plugin::Servers::new()));
    loop {
        let (s, d) = (servers.clone(), dir.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut s) = s.lock() {
                s.sync(&d);
            }
        })
        .await;
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(BINDINGS_RESYNC) => {}
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut s) = servers.lock() {
            *s = vm_binder::plugin::Servers::new();
        }
    })
    .await;
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .max_blocking_threads(config.limits.max_in_flight.max(1) + 4)
        .thread_stack_size(1 << 20)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = config.http {
        let listener = http::bind(addr).await?;
        let bound = listener.local_addr().ok();
        tracing::info!(addr = ?bound, "health and metrics endpoint");
        let health = http::Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve(listener, health, stop).await {
                tracing::error!(error = %virtlink_cni::error_chain(&e), "HTTP endpoint stopped");
            }
        });
    }

    let mut services = Services::default();
    let cache = match &config.kube {
        Some(k) => {
            let client = cache::client(k.kubeconfig.as_deref()).await?;
            let cache = cache::KubeCache::start(
                client.clone(),
                &k.node_name,
                metrics.clone(),
                stop_rx.clone(),
            );
            let cache = match &k.vnet {
                Some(node) => cache.with_vnet_node(node),
                None => cache,
            };
            services.lookup = Some(Arc::new(cache.clone()));
            if let Some(node) = k.vnet.clone() {
                vnet_sync::start(client.clone(), node, stop_rx.clone());
            }
            Some(cache)
        }
        None => None,
    };
    let listener = server::bind(&config.socket)?;
    let server = server::Server::new(services, metrics.clone(), config.limits);
    tasks.spawn(server.clone().serve(listener, stop_rx.clone()));
    tracing::info!(socket = %config.socket.display(), "serving CNI calls");
    // The CNI config is written once the socket listens, so the first call
    // a runtime sends finds the agent; re-checked every 10 s to follow the
    // default network's config.
    let (installed_tx, mut installed_rx) = watch::channel(config.install.is_none());
    if let Some(cfg) = config.install.clone() {
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                let c = cfg.clone();
                match tokio::task::spawn_blocking(move || install::install(&c)).await {
                    Ok(Ok(_)) => {
                        let _ = installed_tx.send(true);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %virtlink_cni::error_chain(&e), "install (retrying)")
                    }
                    Err(e) => tracing::warn!(error = %e, "install task"),
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                }
            }
        });
    }
    if let Some(dir) = config.bindings_dir.clone() {
        tasks.spawn(serve_bindings(dir, stop_rx.clone()));
    }
    // Calls are served before the caches sync (a miss is a GET); readiness
    // waits for them so a rollout does not move on with cold caches.
    let became_ready = ready.clone();
    let mut stop = stop_rx.clone();
    tasks.spawn(async move {
        let prerequisites = async {
            if let Some(cache) = cache {
                cache.synced().await;
                tracing::info!("pod and NAD caches synced");
            }
            let _ = installed_rx.wait_for(|installed| *installed).await;
        };
        tokio::select! {
            _ = stop.changed() => {}
            _ = prerequisites => {
                became_ready.store(true, Ordering::SeqCst);
                tracing::info!("virtlink agent ready");
            }
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    if let (true, Some(cfg)) = (config.uninstall_on_exit, &config.install) {
        if let Err(e) = install::uninstall(cfg) {
            tracing::error!(error = %virtlink_cni::error_chain(&e), "uninstall on exit");
        }
    }
    // New calls are refused (the socket is closed and removed); the ones
    // admitted are answered before the agent exits.
    let _ = std::fs::remove_file(&config.socket);
    if !server.drain(DRAIN_TIMEOUT).await {
        tracing::warn!("stopping with CNI calls still running");
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .ok();
    Ok(())
}
