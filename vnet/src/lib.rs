//! Isolated tenant networks (issue 6; design in docs/vnet.md).
//!
//! - [`model`]: the `VirtualNetwork` and `NetworkEndpointSlice` custom
//!   resources, the validated [`model::Network`], and every input check;
//! - [`ipam`]: per-node address blocks carved from a network's CIDRs, so
//!   nodes never hand out the same address;
//! - [`store`]: the cluster directory (standalone stand-in for the API
//!   server: networks and endpoint slices as YAML files) and the node's lock;
//! - [`registry`]: where IPAM block claims become visible to other nodes
//!   (the cluster directory, or the API through the node agent);
//! - [`node`]: one node's datapath state ([`node::Node`]): the VXLAN device,
//!   the pinned eBPF maps and links, applied idempotently with pruning;
//! - [`cni`]: the CNI type `"virtlink"` (ADD, DEL, CHECK), called in-process
//!   by virtlink-cni.
//!
//! Links, addresses and routes go through [`netattach::netlink`].

pub mod cni;
pub mod egress;
pub mod ipam;
pub mod model;
pub mod node;
pub mod registry;
pub mod store;
