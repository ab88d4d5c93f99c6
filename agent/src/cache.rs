//! The pods of this node and the NetworkAttachmentDefinitions, kept by
//! kube-rs reflectors from list + watch, as the CNI calls' source: an ADD
//! reads them from memory. A miss (the watch has not delivered a new pod
//! yet, or a pod was re-created under the same name) costs one GET.
//!
//! Bounded: pods are watched with a `spec.nodeName` field selector and as
//! metadata only (`PartialObjectMetadata`), NADs in full; managed fields are
//! dropped from both before they are stored.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use netattach::nad::NetworkAttachmentDefinition;
use netattach::status::NetworkStatus;
use netattach::NETWORK_STATUS_ANNOTATION;
use tokio::runtime::Handle;
use tokio::sync::watch;
use virtlink_cni::source::{self, Lookup, NadInfo, PodInfo};

use crate::metrics::Metrics;

/// Every Kubernetes API access the agent makes, as (API group, resource,
/// verbs): the reflectors list and watch, a cache miss gets, network-status
/// is a patch of `pods/status`, and the isolated networks' sync
/// ([`crate::vnet_sync`]). manifests/base/rbac.yaml grants exactly this
/// (checked by agent/tests/manifests.rs).
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["get", "list", "watch"]),
    ("", "pods/status", &["patch"]),
    (
        "k8s.cni.cncf.io",
        "network-attachment-definitions",
        &["get", "list", "watch"],
    ),
    // Isolated networks (vnet_sync): the networks are watched; this node's
    // slices are listed once at start, written with server-side apply
    // (create for the first apply of a slice, patch after) and deleted;
    // the slices of the networks with local members are watched.
    ("virtlink.io", "virtualnetworks", &["list", "watch"]),
    (
        "virtlink.io",
        "networkendpointslices",
        &["list", "watch", "create", "patch", "delete"],
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("load kubeconfig {path}: {reason}")]
    Kubeconfig {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("in-cluster Kubernetes config: {0}")]
    InCluster(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long one API request of a CNI call (a GET on a miss, the status
/// PATCH) may take; well below the shim's wait for the agent.
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// A client from a kubeconfig file, or the in-cluster service account.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |reason: String| Error::Kubeconfig {
                path: path.to_path_buf(),
                reason,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| Error::InCluster(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::InCluster(e.to_string()))
}

/// The cache, shared by every CNI call.
#[derive(Clone)]
pub struct KubeCache {
    client: Client,
    handle: Handle,
    pods: Store<PartialObjectMeta<Pod>>,
    nads: Store<NetworkAttachmentDefinition>,
    metrics: Arc<Metrics>,
    /// The `node` of `"virtlink"` configs that have none: this agent's.
    vnet_node: Option<Arc<serde_json::Value>>,
}

impl std::fmt::Debug for KubeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCache")
            .field("pods", &self.pods.len())
            .field("nads", &self.nads.len())
            .finish_non_exhaustive()
    }
}

impl KubeCache {
    /// Starts the reflectors on the current runtime; they stop when `stop`
    /// turns true.
    pub fn start(
        client: Client,
        node_name: &str,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let (pods, pod_writer) = reflector::store::<PartialObjectMeta<Pod>>();
        let (nads, nad_writer) = reflector::store::<NetworkAttachmentDefinition>();
        // Metadata-only requests: the cache never holds pod specs.
        let pod_api: Api<PartialObjectMeta<Pod>> = Api::all(client.clone());
        let nad_api: Api<NetworkAttachmentDefinition> = Api::all(client.clone());
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let pod_stream = watcher(pod_api, on_node)
            .default_backoff()
            .modify(|p: &mut PartialObjectMeta<Pod>| p.managed_fields_mut().clear())
            .reflect(pod_writer)
            .applied_objects();
        let nad_stream = watcher(nad_api, watcher::Config::default())
            .default_backoff()
            .modify(|n: &mut NetworkAttachmentDefinition| n.managed_fields_mut().clear())
            .reflect(nad_writer)
            .applied_objects();
        spawn_drain("pods", pod_stream, stop.clone());
        spawn_drain("network-attachment-definitions", nad_stream, stop.clone());

        let me = Self {
            client,
            handle: Handle::current(),
            pods,
            nads,
            metrics,
            vnet_node: None,
        };
        let sizes = me.clone();
        let mut stop = stop;
        tokio::spawn(async move {
            loop {
                sizes.record_sizes();
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
        me
    }

    /// Fills the `node` of every `"virtlink"` (isolated network) config
    /// that has none with this node's settings: a NAD is cluster-wide, the
    /// underlay address is per node.
    pub fn with_vnet_node(mut self, node: &virtlink_vnet::node::NodeConfig) -> Self {
        self.vnet_node = Some(Arc::new(virtlink_vnet::cni::node_json(node)));
        self
    }

    /// Resolves once both caches have their first full list.
    pub async fn synced(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.nads.wait_until_ready().await;
        self.record_sizes();
    }

    fn record_sizes(&self) {
        self.metrics.set_cache("pods", self.pods.len());
        self.metrics
            .set_cache("network_attachment_definitions", self.nads.len());
    }

    fn api_error(step: String, e: kube::Error) -> source::Error {
        source::Error::Api {
            step,
            reason: e.to_string(),
        }
    }

    /// Runs one API request from a CNI call's blocking thread, bounded by
    /// [`API_TIMEOUT`].
    fn request<T>(
        &self,
        step: impl Fn() -> String,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> source::Result<T> {
        match self
            .handle
            .block_on(async { tokio::time::timeout(API_TIMEOUT, fut).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Self::api_error(step(), e)),
            Err(_) => Err(source::Error::Api {
                step: step(),
                reason: format!("no answer within {API_TIMEOUT:?}"),
            }),
        }
    }
}

/// Drives a reflector stream until `stop`; errors are retried with backoff
/// by the stream itself and only logged here.
fn spawn_drain<S, T, E>(what: &'static str, stream: S, mut stop: watch::Receiver<bool>)
where
    S: futures_util::Stream<Item = std::result::Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                item = stream.next() => match item {
                    None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(cache = what, error = %e, "watch error (retrying)"),
                },
            }
        }
    });
}

fn pod_info(namespace: &str, name: &str, meta: &kube::api::ObjectMeta) -> PodInfo {
    PodInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: meta.uid.clone(),
        annotations: meta.annotations.clone().unwrap_or_default(),
    }
}

impl Lookup for KubeCache {
    fn pod(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> source::Result<Option<PodInfo>> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(p) = self.pods.get(&key) {
            // A cached pod of another UID is an older pod of the same name.
            if uid.is_none() || p.metadata.uid.as_deref() == uid {
                return Ok(Some(pod_info(namespace, name, &p.metadata)));
            }
        }
        self.metrics.cache_misses.inc();
        tracing::debug!(namespace, name, "pod not in the cache: GET");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = self.request(
            || format!("get pod {namespace}/{name}"),
            api.get_metadata_opt(name),
        )?;
        Ok(pod.map(|p| pod_info(namespace, name, &p.metadata)))
    }

    fn nad(&self, namespace: &str, name: &str) -> source::Result<Option<NadInfo>> {
        let key = ObjectRef::new(name).within(namespace);
        let nad = match self.nads.get(&key) {
            Some(n) => Some((*n).clone()),
            None => {
                self.metrics.cache_misses.inc();
                let api: Api<NetworkAttachmentDefinition> =
                    Api::namespaced(self.client.clone(), namespace);
                self.request(
                    || format!("get network-attachment-definition {namespace}/{name}"),
                    api.get_opt(name),
                )?
            }
        };
        Ok(nad.map(|n| NadInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            config: match &self.vnet_node {
                Some(node) => n
                    .spec
                    .config
                    .map(|c| virtlink_vnet::cni::fill_node(&c, node)),
                None => n.spec.config,
            },
            annotations: n.metadata.annotations.unwrap_or_default(),
        }))
    }

    /// Merge-patches the network-status annotation through `pods/status`.
    fn publish_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> source::Result<()> {
        let text = serde_json::to_string_pretty(status).map_err(|e| source::Error::Api {
            step: "encode network-status".into(),
            reason: e.to_string(),
        })?;
        let patch = serde_json::json!({
            "metadata": { "annotations": { NETWORK_STATUS_ANNOTATION: text } }
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        self.request(
            || format!("patch network-status on pod {}/{}", pod.namespace, pod.name),
            api.patch_status(&pod.name, &params, &patch),
        )?;
        Ok(())
    }
}
