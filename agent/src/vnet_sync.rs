//! The Kubernetes side of isolated networks (docs/vnet.md, "The agent's
//! sync"): the node's cluster directory stays the local mirror of the API,
//! so the in-process CNI type and restarts work from files as before.
//!
//! - VirtualNetworks (one watch, all of them) are mirrored into
//!   `networks/`;
//! - the NetworkEndpointSlices of the networks that have local members
//!   (this node has a slice file) are watched one watch per network, with
//!   the label selector `virtlink.io/network=<name>`, and other nodes'
//!   slices are mirrored into `slices/<network>/`;
//! - this node's own slice files (written by CNI ADD/DEL) are pushed to the
//!   API with server-side apply (field manager `virtlink-agent`), and an API
//!   slice of this node without its file is deleted;
//! - after a mirror change the node's maps are resynchronised
//!   (`Node::open` + `resync`, under the node's lock as the CNI takes it).
//!
//! Losing the API changes nothing local: the watches retry with backoff,
//! the files and the pinned maps stay, and the re-list after the API comes
//! back prunes what was deleted meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::{watch, Notify};
use virtlink_vnet::model::{
    slice_name, slice_object, Network, NetworkEndpointSlice, NetworkEndpointSliceSpec,
    VirtualNetwork, NETWORK_LABEL, NODE_LABEL,
};
use virtlink_vnet::node::{Node, NodeConfig};
use virtlink_vnet::store::{ClusterDir, NodeDir};

/// The field manager of this node's slices.
pub const FIELD_MANAGER: &str = "virtlink-agent";

/// How often the node's own slice files are compared with what was pushed:
/// CNI ADD and DEL write them (in this process or, with the agent down, in
/// the shim), so a poll catches both.
const POLL: Duration = Duration::from_millis(300);

/// Mirror changes closer together than this are applied with one resync.
const DEBOUNCE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster directory")]
    Store(#[from] virtlink_vnet::store::Error),
    #[error("node datapath")]
    Node(#[from] virtlink_vnet::node::Error),
    #[error("{step}")]
    Api {
        step: String,
        #[source]
        source: kube::Error,
    },
    #[error("task")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T> = std::result::Result<T, Error>;

fn api_err(step: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let step = step.into();
    move |source| Error::Api { step, source }
}

/// What the sync needs: the API and the node.
#[derive(Clone)]
struct Ctx {
    client: Client,
    node: NodeConfig,
    /// Set by the watches when the mirror changed.
    dirty: Arc<Notify>,
    /// Held while this node's slices are pushed: by the local loop from
    /// reading the files to the last write, and by a CNI claim's publish,
    /// so an older push never lands after a claim (docs/vnet.md,
    /// "Addresses").
    push_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Ctx {
    fn cluster(&self) -> ClusterDir {
        ClusterDir::new(&self.node.cluster_dir)
    }
}

/// Starts the sync on the current runtime; it stops when `stop` turns true.
pub fn start(client: Client, node: NodeConfig, stop: watch::Receiver<bool>) {
    tracing::info!(node = %node.name, cluster = %node.cluster_dir.display(), "syncing isolated networks with the API");
    let ctx = Ctx {
        client,
        node,
        dirty: Arc::new(Notify::new()),
        push_lock: Arc::new(tokio::sync::Mutex::new(())),
    };
    virtlink_vnet::registry::install(
        &ctx.node.cluster_dir,
        Some(Arc::new(ApiRegistry {
            ctx: ctx.clone(),
            rt: tokio::runtime::Handle::current(),
        })),
    );
    tokio::spawn(watch_networks(ctx.clone(), stop.clone()));
    tokio::spawn(resync_loop(ctx.clone(), stop.clone()));
    tokio::spawn(local_loop(ctx, stop));
}

/// Runs `f` on a blocking thread (file and kernel work).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Mirrors every VirtualNetwork into `networks/`.
async fn watch_networks(ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let api: Api<VirtualNetwork> = Api::all(ctx.client.clone());
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listed: Vec<VirtualNetwork> = Vec::new();
    while let Some(change) =
        next_change(&mut stream, &mut stop, &mut listed, "VirtualNetwork").await
    {
        let cluster = ctx.cluster();
        match blocking(move || change.write(&cluster)).await {
            Ok(()) => ctx.dirty.notify_one(),
            Err(e) => {
                tracing::warn!(error = %virtlink_cni::error_chain(&e), "mirror VirtualNetworks")
            }
        }
    }
}

/// One change of a mirrored collection: the whole list (after a watch's
/// initial list or relist), one object put, one object removed.
enum Change<K> {
    All(Vec<K>),
    Put(K),
    Remove(K),
}

impl<K> Change<K> {
    fn map<T>(self, f: impl Fn(K) -> T) -> Change<T> {
        match self {
            Change::All(list) => Change::All(list.into_iter().map(f).collect()),
            Change::Put(k) => Change::Put(f(k)),
            Change::Remove(k) => Change::Remove(f(k)),
        }
    }
}

/// The next change of a watch, `None` once stopped or ended. Watch errors
/// are logged and skipped: the watcher retries with backoff, and the mirror
/// keeps what it has meanwhile.
async fn next_change<K, S>(
    stream: &mut S,
    stop: &mut watch::Receiver<bool>,
    listed: &mut Vec<K>,
    what: &str,
) -> Option<Change<K>>
where
    S: futures_util::Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return None,
            e = stream.next() => e?,
        };
        match event {
            Err(e) => tracing::warn!(error = %e, "{what} watch error (retrying; the mirror stays)"),
            Ok(event) => {
                if let Some(change) = fold(event, listed) {
                    return Some(change);
                }
            }
        }
    }
}

/// Folds one watcher event into a change: the objects of an initial list
/// are collected until its end, which gives the whole list at once.
fn fold<K>(event: watcher::Event<K>, listed: &mut Vec<K>) -> Option<Change<K>> {
    match event {
        watcher::Event::Init => {
            listed.clear();
            None
        }
        watcher::Event::InitApply(k) => {
            listed.push(k);
            None
        }
        watcher::Event::InitDone => Some(Change::All(std::mem::take(listed))),
        watcher::Event::Apply(k) => Some(Change::Put(k)),
        watcher::Event::Delete(k) => Some(Change::Remove(k)),
    }
}

/// A valid network from the API, or `None` (logged).
fn valid(vn: &VirtualNetwork) -> Option<Network> {
    match Network::from_object(vn) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(network = ?vn.metadata.name, error = %e, "invalid VirtualNetwork not mirrored");
            None
        }
    }
}

impl Change<VirtualNetwork> {
    fn write(self, cluster: &ClusterDir) -> Result<()> {
        ensure_dir(cluster)?;
        match self {
            Change::All(list) => {
                let nets: Vec<Network> = list.iter().filter_map(valid).collect();
                let names: BTreeSet<&str> = nets.iter().map(|n| n.name.as_str()).collect();
                for old in cluster.network_names()? {
                    if !names.contains(old.as_str()) {
                        cluster.remove_network(&old)?;
                    }
                }
                for n in &nets {
                    cluster.put_network(n)?;
                }
            }
            Change::Put(vn) => match valid(&vn) {
                Some(n) => cluster.put_network(&n)?,
                None => {
                    if let Some(name) = &vn.metadata.name {
                        cluster.remove_network(name)?;
                    }
                }
            },
            Change::Remove(vn) => {
                if let Some(name) = &vn.metadata.name {
                    cluster.remove_network(name)?
                }
            }
        }
        Ok(())
    }
}

/// In kube mode the cluster directory is the agent's own mirror: it is
/// created rather than taken as "the API server is away".
fn ensure_dir(cluster: &ClusterDir) -> Result<()> {
    std::fs::create_dir_all(cluster.root()).map_err(|source| virtlink_vnet::store::Error::Io {
        step: "create directory",
        path: cluster.root().to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Mirrors the other nodes' slices of `network` into `slices/<network>/`,
/// from a watch with the selector `virtlink.io/network=<network>`.
async fn watch_slices(ctx: Ctx, network: String, mut stop: watch::Receiver<bool>) {
    let api: Api<NetworkEndpointSlice> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().labels(&format!("{NETWORK_LABEL}={network}"));
    let stream = watcher(api, cfg).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listed: Vec<NetworkEndpointSlice> = Vec::new();
    let what = format!("slices of {network}");
    while let Some(change) = next_change(&mut stream, &mut stop, &mut listed, &what).await {
        let change = change.map(|s| s.spec);
        let (cluster, me, net) = (ctx.cluster(), ctx.node.name.clone(), network.clone());
        match blocking(move || change.write(&cluster, &net, &me)).await {
            Ok(true) => ctx.dirty.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%network, error = %virtlink_cni::error_chain(&e), "mirror slices")
            }
        }
    }
}

impl Change<NetworkEndpointSliceSpec> {
    /// Writes other nodes' slices of `network` (this node's own are its
    /// files, never overwritten from the API); whether anything was written.
    fn write(self, cluster: &ClusterDir, network: &str, me: &str) -> Result<bool> {
        ensure_dir(cluster)?;
        let theirs = |s: &NetworkEndpointSliceSpec| s.node != me && s.network == network;
        match self {
            Change::All(list) => {
                let nodes: BTreeSet<&str> = list
                    .iter()
                    .filter(|s| theirs(s))
                    .map(|s| s.node.as_str())
                    .collect();
                for old in cluster.slice_nodes(network)? {
                    if old != me && !nodes.contains(old.as_str()) {
                        cluster.remove_slice(network, &old)?;
                    }
                }
                for s in list.iter().filter(|s| theirs(s)) {
                    cluster.put_slice(s)?;
                }
                Ok(true)
            }
            Change::Put(s) if theirs(&s) => {
                cluster.put_slice(&s)?;
                Ok(true)
            }
            Change::Remove(s) if theirs(&s) => {
                cluster.remove_slice(network, &s.node)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Applies the mirror to the node's maps after changes (debounced). A node
/// that has neither local members nor pins is left alone: its datapath is
/// set up by its first CNI ADD.
async fn resync_loop(ctx: Ctx, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ctx.dirty.notified() => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        let cfg = ctx.node.clone();
        let result = blocking(move || {
            let cluster = ClusterDir::new(&cfg.cluster_dir);
            if cluster.node_slices(&cfg.name)?.is_empty() && !cfg.pin_dir().exists() {
                return Ok(None);
            }
            let _lock = NodeDir::new(&cfg.state_dir).lock()?;
            Ok(Some(Node::open(cfg)?.resync()?))
        })
        .await;
        match result {
            Ok(Some(applied)) => tracing::info!(?applied, "vnet resync after an API change"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %virtlink_cni::error_chain(&e), "vnet resync (retrying)");
                // Retried on the next change, or after a while.
                let dirty = ctx.dirty.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    dirty.notify_one();
                });
            }
        }
    }
}

/// This node's slices as its files hold them, by object name.
fn local_slices(
    cluster: &ClusterDir,
    me: &str,
) -> Result<BTreeMap<String, NetworkEndpointSliceSpec>> {
    Ok(cluster
        .node_slices(me)?
        .into_iter()
        .map(|s| (slice_name(&s.network, &s.node), s))
        .collect())
}

/// Pushes the node's own slices and keeps one slice watch per local
/// network.
async fn local_loop(ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let api: Api<NetworkEndpointSlice> = Api::all(ctx.client.clone());
    // What the API holds of this node, as far as this process knows; `None`
    // until it has been listed once (slices deleted while the agent was
    // down are found that way).
    let mut pushed: Option<BTreeMap<String, NetworkEndpointSliceSpec>> = None;
    let mut watches: HashMap<String, watch::Sender<bool>> = HashMap::new();
    loop {
        let (cluster, me) = (ctx.cluster(), ctx.node.name.clone());
        let held = ctx.push_lock.lock().await;
        match blocking(move || local_slices(&cluster, &me)).await {
            Ok(local) => {
                let nets: BTreeSet<String> = local.values().map(|s| s.network.clone()).collect();
                watches.retain(|net, tx| {
                    let keep = nets.contains(net);
                    if !keep {
                        tracing::info!(network = %net, "no local member left: slice watch stopped");
                        let _ = tx.send(true);
                    }
                    keep
                });
                for net in nets {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        watches.entry(net.clone())
                    {
                        tracing::info!(network = %net, "local member: watching the network's slices");
                        let (tx, rx) = watch::channel(false);
                        tokio::spawn(watch_slices(ctx.clone(), net, rx));
                        slot.insert(tx);
                    }
                }
                if let Err(e) = push(&api, &ctx.node.name, &local, &mut pushed).await {
                    tracing::warn!(error = %virtlink_cni::error_chain(&e), "push this node's slices (retrying)");
                }
            }
            Err(e) => {
                tracing::debug!(error = %virtlink_cni::error_chain(&e), "read this node's slices")
            }
        }
        drop(held);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    for tx in watches.values() {
        let _ = tx.send(true);
    }
    virtlink_vnet::registry::install(&ctx.node.cluster_dir, None);
}

/// Makes the API hold exactly `local` of this node: server-side apply of
/// each changed slice, delete of each one without its file.
async fn push(
    api: &Api<NetworkEndpointSlice>,
    me: &str,
    local: &BTreeMap<String, NetworkEndpointSliceSpec>,
    pushed: &mut Option<BTreeMap<String, NetworkEndpointSliceSpec>>,
) -> Result<()> {
    let known = match pushed {
        Some(p) => p,
        None => {
            let list = api
                .list(&ListParams::default().labels(&format!("{NODE_LABEL}={me}")))
                .await
                .map_err(api_err("list this node's slices"))?;
            let mut have = BTreeMap::new();
            for s in list.items {
                if let Some(name) = s.metadata.name.clone() {
                    have.insert(name, s.spec);
                }
            }
            pushed.insert(have)
        }
    };
    for (name, spec) in local {
        if known.get(name) == Some(spec) {
            continue;
        }
        apply(api, name, spec).await?;
        known.insert(name.clone(), spec.clone());
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|n| !local.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        delete(api, &name).await?;
        known.remove(&name);
    }
    Ok(())
}

/// Server-side apply of this node's slice `name`.
async fn apply(
    api: &Api<NetworkEndpointSlice>,
    name: &str,
    spec: &NetworkEndpointSliceSpec,
) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&slice_object(spec)))
        .await
        .map_err(api_err(format!("apply slice {name}")))?;
    tracing::info!(slice = %name, endpoints = spec.endpoints.len(), "slice applied");
    Ok(())
}

/// Deletes this node's slice `name`; already gone is fine.
async fn delete(api: &Api<NetworkEndpointSlice>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(slice = %name, "slice deleted"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_err(format!("delete slice {name}"))(e)),
    }
    Ok(())
}

/// How long a CNI claim waits for the API (the runtime retries the ADD on
/// the "try again later" error that follows).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// The API as the place of IPAM claims (`virtlink_vnet::registry`): CNI
/// ADDs call it from their blocking threads when they claim a block.
struct ApiRegistry {
    ctx: Ctx,
    rt: tokio::runtime::Handle,
}

impl ApiRegistry {
    fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> virtlink_vnet::registry::Result<T> {
        let err = |e: String| virtlink_vnet::registry::Error(format!("{what}: {e}"));
        match self.rt.block_on(tokio::time::timeout(CLAIM_TIMEOUT, f)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(err(virtlink_cni::error_chain(&e))),
            Err(_) => Err(err(format!(
                "the Kubernetes API did not answer within {CLAIM_TIMEOUT:?}"
            ))),
        }
    }
}

impl virtlink_vnet::registry::Registry for ApiRegistry {
    fn publish(&self, slice: &NetworkEndpointSliceSpec) -> virtlink_vnet::registry::Result<()> {
        let api: Api<NetworkEndpointSlice> = Api::all(self.ctx.client.clone());
        let name = slice_name(&slice.network, &slice.node);
        self.run("publish the slice", async {
            let _held = self.ctx.push_lock.lock().await;
            if slice.endpoints.is_empty() {
                delete(&api, &name).await
            } else {
                apply(&api, &name, slice).await
            }
        })
    }

    /// A list without a resourceVersion: a consistent read. Other nodes'
    /// slices are mirrored on the way, so the ADD's datapath has them.
    fn slices(
        &self,
        network: &str,
    ) -> virtlink_vnet::registry::Result<Vec<NetworkEndpointSliceSpec>> {
        let api: Api<NetworkEndpointSlice> = Api::all(self.ctx.client.clone());
        let list = self.run("list the network's slices", async {
            api.list(&ListParams::default().labels(&format!("{NETWORK_LABEL}={network}")))
                .await
                .map_err(api_err(format!("list the slices of {network}")))
        })?;
        let specs: Vec<NetworkEndpointSliceSpec> = list
            .items
            .into_iter()
            .map(|s| s.spec)
            .filter(|s| s.network == network)
            .collect();
        let mirrored =
            Change::All(specs.clone()).write(&self.ctx.cluster(), network, &self.ctx.node.name);
        if let Err(e) = mirrored {
            tracing::warn!(%network, error = %virtlink_cni::error_chain(&e), "mirror slices");
        }
        Ok(specs)
    }
}
