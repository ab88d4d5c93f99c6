//! The supervisor: keeps the config, the discovered devices, the per-pool
//! gRPC servers and the registrations with kubelet in line with the world.
//!
//! One cancellable task loops: reload the config if its text changed, rescan
//! sysfs and publish each pool's devices on its watch channel (ListAndWatch
//! streams re-send the full list on any change), restart pool servers whose
//! socket vanished (kubelet deletes them when it restarts), and register every
//! pool with the current `kubelet.sock` (a re-created socket means a new
//! kubelet, so all pools register again). It wakes every `rescan_interval`
//! and on inotify events in the config and kubelet dirs.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::deviceinfo::DevInfoDir;
use crate::pool::{self, PoolSnapshot};
use crate::registration::{self, KUBELET_SOCKET};
use crate::server::{self, PoolService};
use crate::state::{self, StateStore};
use crate::sysfs::Sysfs;

/// Where things are; all of it is configuration so tests run side by side.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    pub sysfs_root: PathBuf,
    /// kubelet's device-plugins dir: `kubelet.sock`, our sockets, its checkpoint.
    pub kubelet_dir: PathBuf,
    pub devinfo_dir: PathBuf,
    pub state_dir: PathBuf,
    pub rescan_interval: Duration,
}

/// Errors that stop the plugin from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("load config")]
    Config(#[from] config::Error),
    #[error("open allocation state")]
    State(#[from] state::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long to wait before retrying a failed registration.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The socket file name of a pool in kubelet's dir.
pub fn endpoint_name(resource: &str) -> String {
    format!("virtlink-{}.sock", resource.replace('/', "_"))
}

#[derive(Debug)]
struct ServerHandle {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    socket: FileId,
}

#[derive(Debug)]
struct PoolRuntime {
    resource: String,
    endpoint: String,
    tx: watch::Sender<Arc<PoolSnapshot>>,
    server: Option<ServerHandle>,
    registered_with: Option<FileId>,
    registering: Option<(FileId, JoinHandle<registration::Result<()>>)>,
    next_attempt: Instant,
    cleaned: bool,
}

impl PoolRuntime {
    fn stop(&mut self, kubelet_dir: &Path) {
        if let Some(s) = self.server.take() {
            s.cancel.cancel();
            s.task.abort();
            let path = kubelet_dir.join(&self.endpoint);
            // Only remove the file if it is still ours.
            if file_id(&path) == Some(s.socket) {
                let _ = std::fs::remove_file(path);
            }
        }
        if let Some((_, h)) = self.registering.take() {
            h.abort();
        }
    }
}

#[derive(Debug)]
struct Supervisor {
    settings: Settings,
    sysfs: Sysfs,
    devinfo: DevInfoDir,
    state: Arc<StateStore>,
    config: Config,
    config_text: Option<String>,
    pools: BTreeMap<String, PoolRuntime>,
    cancel: CancellationToken,
}

/// Runs the plugin until `cancel` fires. Fails only at start (bad config,
/// unusable state dir); later problems are logged and retried.
pub async fn run(settings: Settings, cancel: CancellationToken) -> Result<()> {
    let text =
        std::fs::read_to_string(&settings.config_path).map_err(|source| config::Error::Read {
            path: settings.config_path.display().to_string(),
            source,
        })?;
    let config = Config::parse(&text)?;
    let state = Arc::new(StateStore::open(
        &settings.state_dir,
        &settings.kubelet_dir,
    )?);
    tracing::info!(
        pools = config.pools.len(),
        config = %settings.config_path.display(),
        sysfs = %settings.sysfs_root.display(),
        kubelet_dir = %settings.kubelet_dir.display(),
        "starting"
    );
    let mut sup = Supervisor {
        sysfs: Sysfs::new(&settings.sysfs_root),
        devinfo: DevInfoDir::new(&settings.devinfo_dir),
        state,
        config: Config::default(),
        config_text: Some(text),
        pools: BTreeMap::new(),
        cancel: cancel.clone(),
        settings,
    };
    sup.apply(config);
    let wake = Arc::new(Notify::new());
    let _watcher = watch_dirs(
        &[
            sup.settings
                .config_path
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            sup.settings.kubelet_dir.clone(),
        ],
        wake.clone(),
    );
    loop {
        let t0 = Instant::now();
        sup.step().await;
        let took = t0.elapsed();
        if took > sup.settings.rescan_interval / 2 {
            tracing::warn!(?took, "slow rescan step");
        } else {
            tracing::trace!(?took, "rescan step");
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(sup.settings.rescan_interval) => {}
            () = wake.notified() => {}
        }
    }
    sup.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// inotify on the config's and kubelet's dirs, to react before the next
/// poll. Polling alone still works when a dir cannot be watched.
fn watch_dirs(dirs: &[PathBuf], wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Our own reads of the config show up as access events: only changes
        // wake the loop, or it would spin.
        if res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
            wake.notify_one();
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no inotify; polling only");
            return None;
        }
    };
    for d in dirs {
        if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch; polling it");
        }
    }
    Some(w)
}

impl Supervisor {
    fn apply(&mut self, config: Config) {
        let wanted: BTreeMap<String, Arc<config::PoolConfig>> = config
            .pools
            .iter()
            .map(|p| (p.full_name(), p.clone()))
            .collect();
        let gone: Vec<String> = self
            .pools
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut p) = self.pools.remove(&name) {
                tracing::info!(resource = %name, "pool removed from config");
                p.stop(&self.settings.kubelet_dir);
            }
        }
        for (name, pc) in wanted {
            self.pools.entry(name.clone()).or_insert_with(|| {
                tracing::info!(resource = %name, device_type = ?pc.device_type, "pool added");
                let (tx, _) = watch::channel(Arc::new(PoolSnapshot {
                    config: pc,
                    devices: Vec::new(),
                }));
                PoolRuntime {
                    endpoint: endpoint_name(&name),
                    resource: name,
                    tx,
                    server: None,
                    registered_with: None,
                    registering: None,
                    next_attempt: Instant::now(),
                    cleaned: false,
                }
            });
        }
        self.config = config;
    }

    fn reload_config(&mut self) {
        let text = match std::fs::read_to_string(&self.settings.config_path) {
            Ok(t) => t,
            Err(e) => {
                // A ConfigMap update swaps symlinks; a missing file is transient.
                tracing::debug!(error = %e, "config unreadable, keeping the current one");
                return;
            }
        };
        if self.config_text.as_deref() == Some(text.as_str()) {
            return;
        }
        match Config::parse(&text) {
            Ok(c) => {
                tracing::info!(pools = c.pools.len(), "config changed, applying");
                self.apply(c);
            }
            Err(e) => tracing::error!(
                error = %crate::chain(&e),
                "config changed but is invalid, keeping the current one"
            ),
        }
        self.config_text = Some(text);
    }

    fn rescan(&mut self) {
        let devices = match self.sysfs.scan() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %crate::chain(&e), "scan sysfs");
                return;
            }
        };
        for snap in pool::assign(&self.config, &devices, &self.sysfs) {
            let Some(p) = self.pools.get(&snap.config.full_name()) else {
                continue;
            };
            p.tx.send_if_modified(|cur| {
                if cur.same_as(&snap) {
                    return false;
                }
                let healthy = snap.devices.iter().filter(|d| d.healthy).count();
                tracing::info!(
                    resource = %p.resource,
                    devices = snap.devices.len(),
                    healthy,
                    "pool devices changed"
                );
                *cur = Arc::new(snap);
                true
            });
        }
    }

    fn ensure_servers(&mut self) {
        if self.cancel.is_cancelled() {
            return; // stopping: servers end on purpose
        }
        let dir = self.settings.kubelet_dir.clone();
        for p in self.pools.values_mut() {
            let socket = dir.join(&p.endpoint);
            let alive = p
                .server
                .as_ref()
                .is_some_and(|s| !s.task.is_finished() && file_id(&socket) == Some(s.socket));
            if alive {
                continue;
            }
            if p.server.is_some() {
                tracing::info!(resource = %p.resource, "pool socket gone (kubelet restart?), restarting server");
            }
            p.stop(&dir);
            if !dir.is_dir() {
                continue; // no kubelet dir yet
            }
            if !p.cleaned {
                // Device-info files of devices no pod holds are stale.
                let held = self.state.held(&p.resource);
                for d in &p.tx.borrow().devices {
                    if !held.contains(&d.id) {
                        if let Err(e) = self.devinfo.remove(&p.resource, &d.id) {
                            tracing::warn!(error = %crate::chain(&e), "clean device-info");
                        }
                    }
                }
                p.cleaned = true;
            }
            let listener = match server::bind(&socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(resource = %p.resource, error = %crate::chain(&e), "start pool server");
                    continue;
                }
            };
            let Some(id) = file_id(&socket) else { continue };
            let cancel = self.cancel.child_token();
            let svc = PoolService::new(
                p.tx.subscribe(),
                self.devinfo.clone(),
                self.state.clone(),
                cancel.clone(),
            );
            let resource = p.resource.clone();
            let task = tokio::spawn({
                let cancel = cancel.clone();
                async move {
                    if let Err(e) = server::serve(listener, svc, cancel).await {
                        tracing::error!(%resource, error = %crate::chain(&e), "pool server stopped");
                    }
                }
            });
            tracing::info!(resource = %p.resource, socket = %socket.display(), "serving");
            p.server = Some(ServerHandle {
                cancel,
                task,
                socket: id,
            });
            p.registered_with = None;
        }
    }

    async fn ensure_registered(&mut self) {
        let kubelet_socket = self.settings.kubelet_dir.join(KUBELET_SOCKET);
        let kubelet = file_id(&kubelet_socket);
        for p in self.pools.values_mut() {
            if let Some((kid, h)) = &p.registering {
                if !h.is_finished() {
                    continue;
                }
                let kid = *kid;
                if let Some((_, h)) = p.registering.take() {
                    match h.await {
                        Ok(Ok(())) => {
                            tracing::info!(resource = %p.resource, "registered with kubelet");
                            p.registered_with = Some(kid);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(resource = %p.resource, error = %crate::chain(&e), "register, will retry");
                            p.next_attempt = Instant::now() + REGISTER_RETRY;
                        }
                        Err(e) => tracing::warn!(error = %e, "register task"),
                    }
                }
            }
            let Some(kid) = kubelet else { continue };
            if p.server.is_none() || p.registered_with == Some(kid) || p.registering.is_some() {
                continue;
            }
            if Instant::now() < p.next_attempt {
                continue;
            }
            if p.registered_with.is_some() {
                tracing::info!(resource = %p.resource, "kubelet socket re-created, registering again");
            }
            let (sock, endpoint, resource) = (
                kubelet_socket.clone(),
                p.endpoint.clone(),
                p.resource.clone(),
            );
            p.registering = Some((
                kid,
                tokio::spawn(
                    async move { registration::register(&sock, &endpoint, &resource).await },
                ),
            ));
        }
    }

    async fn step(&mut self) {
        self.reload_config();
        self.rescan();
        self.ensure_servers();
        self.ensure_registered().await;
    }

    fn shutdown(&mut self) {
        for p in self.pools.values_mut() {
            p.stop(&self.settings.kubelet_dir);
        }
    }
}
