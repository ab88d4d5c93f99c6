//! Pods and NADs from the Kubernetes API (kube-rs), and network-status
//! written back on the pod.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use netattach::nad::NetworkAttachmentDefinition;
use netattach::status::NetworkStatus;
use netattach::NETWORK_STATUS_ANNOTATION;

use super::{Error, NadInfo, PodInfo, Result};

/// A client for one plugin invocation: a single-threaded runtime and a client
/// built from the kubeconfig named in the plugin config.
pub struct KubeSource {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

impl KubeSource {
    pub fn new(kubeconfig: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("start runtime: {e}")))?;
        let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
        let client = runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?;
            Client::try_from(config).map_err(|e| bad(e.to_string()))
        })?;
        Ok(Self { runtime, client })
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = self
            .runtime
            .block_on(api.get_opt(name))
            .map_err(|e| api_error(format!("get pod {namespace}/{name}"), e))?;
        Ok(pod.map(|p| PodInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: p.metadata.uid,
            annotations: p.metadata.annotations.unwrap_or_default(),
        }))
    }

    pub fn nad(&self, namespace: &str, name: &str) -> Result<Option<NadInfo>> {
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(self.client.clone(), namespace);
        let nad = self.runtime.block_on(api.get_opt(name)).map_err(|e| {
            api_error(
                format!("get network-attachment-definition {namespace}/{name}"),
                e,
            )
        })?;
        Ok(nad.map(|n| NadInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            config: n.spec.config,
            annotations: n.metadata.annotations.unwrap_or_default(),
        }))
    }

    /// Merge-patches the network-status annotation through the pod's status
    /// subresource, so RBAC can grant `pods/status` patch and nothing wider.
    pub fn publish_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        let text = serde_json::to_string_pretty(status).map_err(|e| Error::Api {
            step: "encode network-status".into(),
            reason: e.to_string(),
        })?;
        let patch = serde_json::json!({
            "metadata": { "annotations": { NETWORK_STATUS_ANNOTATION: text } }
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        self.runtime
            .block_on(api.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch)))
            .map_err(|e| {
                api_error(
                    format!("patch network-status on pod {}/{}", pod.namespace, pod.name),
                    e,
                )
            })?;
        Ok(())
    }
}

fn api_error(step: String, e: kube::Error) -> Error {
    Error::Api {
        step,
        reason: e.to_string(),
    }
}
