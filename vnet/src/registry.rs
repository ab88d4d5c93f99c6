//! Where a node's IPAM claims become visible to the other nodes
//! (docs/vnet.md, "Addresses").
//!
//! A claim of a new block is: write this node's slice where every node
//! reads, then read every slice of the network again, and keep the block
//! only when no other node claims it ([`crate::ipam::rival`]). That read
//! must see every write that finished before it (a consistent read), so two
//! nodes racing for one block cannot both keep it: the later reader always
//! sees the earlier writer.
//!
//! - Standalone, the cluster directory is that place: every node of the
//!   machine shares it ([`Files`]).
//! - In a cluster the Kubernetes API is: the node agent installs its
//!   registry ([`install`]) for its cluster directory, which is then only
//!   the agent's mirror of the API (an API list without a resourceVersion
//!   is a consistent read from etcd).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::NetworkEndpointSliceSpec;
use crate::store::ClusterDir;

/// A registry's failure, as text for the CNI error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

/// Where slices are published and read back.
pub trait Registry: Send + Sync {
    /// Makes `slice` this node's slice of its network as others see it; a
    /// slice without endpoints is removed (its blocks released).
    fn publish(&self, slice: &NetworkEndpointSliceSpec) -> Result<()>;
    /// Every slice of `network` as of now: a consistent read.
    fn slices(&self, network: &str) -> Result<Vec<NetworkEndpointSliceSpec>>;
}

/// The cluster directory every node of this machine shares (standalone).
#[derive(Debug)]
pub struct Files(pub ClusterDir);

impl Registry for Files {
    fn publish(&self, slice: &NetworkEndpointSliceSpec) -> Result<()> {
        self.0
            .put_slice(slice)
            .map_err(|e| Error(format!("write slice: {e}")))
    }

    fn slices(&self, network: &str) -> Result<Vec<NetworkEndpointSliceSpec>> {
        self.0
            .slices(network)
            .map_err(|e| Error(format!("read slices: {e}")))
    }
}

type Installed = BTreeMap<PathBuf, Arc<dyn Registry>>;

fn installed() -> &'static Mutex<Installed> {
    static INSTALLED: std::sync::OnceLock<Mutex<Installed>> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(Default::default)
}

/// Makes `registry` the place of claims for the nodes whose cluster
/// directory is `cluster_dir` (in this process); `None` removes it.
pub fn install(cluster_dir: &Path, registry: Option<Arc<dyn Registry>>) {
    let mut map = installed().lock().unwrap_or_else(|p| p.into_inner());
    match registry {
        Some(r) => map.insert(cluster_dir.to_path_buf(), r),
        None => map.remove(cluster_dir),
    };
}

/// The registry for `cluster_dir`: the installed one, else the directory.
pub fn for_cluster(cluster_dir: &Path) -> Arc<dyn Registry> {
    let map = installed().lock().unwrap_or_else(|p| p.into_inner());
    match map.get(cluster_dir) {
        Some(r) => r.clone(),
        None => Arc::new(Files(ClusterDir::new(cluster_dir))),
    }
}
