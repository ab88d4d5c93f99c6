//! Types that several virtlink parts share.
//!
//! - `nad` (feature `nad`): the NPWG `NetworkAttachmentDefinition` custom
//!   resource, used as is; the only part that needs kube.
//! - [`selection`]: the pod annotation `k8s.v1.cni.cncf.io/networks` (short and JSON forms).
//! - [`status`]: the NPWG `network-status` list and `device-info`.
//! - [`netns`]: running code inside a network namespace on a dedicated thread.
//! - `netlink` (feature `netlink`): a small synchronous rtnetlink wrapper for
//!   the calling thread's namespace (links, addresses, routes).

#[cfg(feature = "nad")]
pub mod nad;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod netns;
pub mod selection;
pub mod status;

/// Pod annotation that lists the additional networks of a pod.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Pod annotation that reports every attachment of a pod.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// Pod annotation that overrides the cluster (default) network, as Multus users know it.
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";
/// NAD annotation that ties a network to a device plugin resource pool.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";
