//! Where pods and NetworkAttachmentDefinitions come from: the Kubernetes API
//! ([`kube::KubeSource`]) or a directory of YAML manifests ([`dir::DirSource`],
//! standalone mode and tests). Both answer the same three questions.

pub mod dir;
pub mod kube;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use netattach::status::NetworkStatus;

use crate::config::NetConf;
use crate::spec::{code, CniError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read manifests {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse manifest {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("load kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("kubernetes API: {step}: {reason}")]
    Api { step: String, reason: String },
    #[error("write network-status {path}")]
    WriteStatus {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The CNI error code a runtime should see for this failure.
    pub fn cni_code(&self) -> u32 {
        match self {
            Error::Read { .. } | Error::WriteStatus { .. } => code::IO_FAILURE,
            Error::Parse { .. } => code::DECODE_FAILURE,
            Error::Kubeconfig { .. } => code::INVALID_CONFIG,
            Error::Api { .. } => code::TRY_AGAIN_LATER,
        }
    }

    pub fn into_cni(self) -> CniError {
        CniError::new(self.cni_code(), crate::error_chain(&self))
    }
}

/// What the plugin needs to know of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// What the plugin needs to know of a NetworkAttachmentDefinition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NadInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.config`: a CNI config or config list as JSON text.
    pub config: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

/// A long-lived source that a host process (the node agent) hands to each
/// call, e.g. a watch-based cache of the Kubernetes API. It is authoritative
/// like the API itself: a pod it does not know is an error to retry.
pub trait Lookup: Send + Sync + std::fmt::Debug {
    /// `uid` is the runtime's `K8S_POD_UID`: a cache holding an older pod of
    /// the same name asks the API instead.
    fn pod(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<Option<PodInfo>>;
    fn nad(&self, namespace: &str, name: &str) -> Result<Option<NadInfo>>;
    fn publish_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()>;
}

/// What the process running a call provides beyond the call itself.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Used instead of the config's `kubeconfig` when set.
    pub lookup: Option<Arc<dyn Lookup>>,
}

/// The source chosen by the plugin config.
#[derive(Debug)]
pub enum Source {
    /// Neither a kubeconfig nor a manifests directory: only the cluster network.
    None,
    Dir(dir::DirSource),
    Kube(kube::KubeSource),
    Shared(Arc<dyn Lookup>),
}

impl Source {
    /// The host's shared source when it has one, else the config's.
    pub fn for_call(conf: &NetConf, services: &Services) -> Result<Self> {
        match &services.lookup {
            Some(l) => Ok(Source::Shared(l.clone())),
            None => Self::from_conf(conf),
        }
    }

    /// Whether a pod missing from this source means it does not exist yet
    /// (the API or a cache of it), rather than "no annotations to follow".
    pub fn is_authoritative(&self) -> bool {
        matches!(self, Source::Kube(_) | Source::Shared(_))
    }

    pub fn from_conf(conf: &NetConf) -> Result<Self> {
        if let Some(path) = &conf.kubeconfig {
            return Ok(Source::Kube(kube::KubeSource::new(path)?));
        }
        if let Some(dir) = &conf.manifests_dir {
            return Ok(Source::Dir(dir::DirSource::load(dir)?));
        }
        Ok(Source::None)
    }

    pub fn pod(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<Option<PodInfo>> {
        match self {
            Source::None => Ok(None),
            Source::Dir(d) => Ok(d.pod(namespace, name)),
            Source::Kube(k) => k.pod(namespace, name),
            Source::Shared(l) => l.pod(namespace, name, uid),
        }
    }

    pub fn nad(&self, namespace: &str, name: &str) -> Result<Option<NadInfo>> {
        match self {
            Source::None => Ok(None),
            Source::Dir(d) => Ok(d.nad(namespace, name)),
            Source::Kube(k) => k.nad(namespace, name),
            Source::Shared(l) => l.nad(namespace, name),
        }
    }

    /// Publishes network-status on the pod (cluster mode); standalone mode
    /// relies on the status file alone.
    pub fn publish_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        match self {
            Source::Kube(k) => k.publish_status(pod, status),
            Source::Shared(l) => l.publish_status(pod, status),
            Source::None | Source::Dir(_) => Ok(()),
        }
    }
}
