//! One node's datapath state: the collect-metadata VXLAN device, the pinned
//! isolation maps and links (docs/vnet.md), and the desired state computed
//! from the cluster directory.
//!
//! A [`Node`] holds no kernel object: everything lives in its pin directory
//! (`<bpffs>/virtlink/vnet-<node>`) and its namespace, so dropping it and
//! calling [`Node::open`] again is an agent restart, and three `Node`s with
//! three namespaces are three nodes in one process.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use netattach::netlink::{self, Netlink};
use virtlink_xdp::common::vnet::{
    VnConfig, VnCounter, VnEndpoint, VnEndpointKey, VnIface, VnNetwork, VN_FLAG_EGRESS,
};
use virtlink_xdp::isolation::{pod_link_name, raw, Isolation, Pins, TUNNEL_LINK};

use crate::egress;
use crate::model::{self, check_collisions, Network};
use crate::store::{self, ClusterDir, NodeDir};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node namespace")]
    Netns(#[from] netattach::netns::Error),
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error("eBPF datapath")]
    Xdp(#[from] virtlink_xdp::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Model(#[from] model::Error),
    #[error("VXLAN device {0} did not appear")]
    NoVxlan(String),
    #[error("link {0} did not appear")]
    NoLink(String),
    #[error("egress")]
    Egress(#[from] crate::egress::Error),
    #[error("{name} exists and is not a collect-metadata VXLAN device (kind {kind})")]
    NotVxlan { name: String, kind: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The default name of the node's VXLAN device.
pub const DEFAULT_VXLAN: &str = "vnet-vxlan";
/// IANA's VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// How to find one node's parts.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The node's network namespace; `None`: the calling thread's.
    pub netns: Option<PathBuf>,
    /// The node's underlay address (VXLAN source; other nodes' remote).
    pub underlay_ip: Ipv4Addr,
    pub bpffs_root: PathBuf,
    pub vxlan: String,
    pub vxlan_port: u16,
    /// Networks and every node's endpoint slices (the API server's part).
    pub cluster_dir: PathBuf,
    /// This node's own state (inline network definitions, lock).
    pub state_dir: PathBuf,
}

impl NodeConfig {
    pub fn new(name: &str, underlay_ip: Ipv4Addr, cluster_dir: &Path, state_dir: &Path) -> Self {
        Self {
            name: name.to_string(),
            netns: None,
            underlay_ip,
            bpffs_root: PathBuf::from(virtlink_xdp::bpffs::DEFAULT_ROOT),
            vxlan: DEFAULT_VXLAN.to_string(),
            vxlan_port: DEFAULT_VXLAN_PORT,
            cluster_dir: cluster_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// `<bpffs>/virtlink/vnet-<node>`.
    pub fn pin_dir(&self) -> PathBuf {
        virtlink_xdp::bpffs::pod_dir(&self.bpffs_root, &format!("vnet-{}", self.name))
    }
}

/// Runs `f` in the namespace `netns` (on a dedicated thread), or here.
pub fn in_ns<T, F>(netns: Option<&Path>, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match netns {
        None => f(),
        Some(p) => netattach::netns::run_in(p, f)?,
    }
}

/// An endpoint on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub net: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub host_ifname: String,
}

/// An endpoint on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub net: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub node_ip: Ipv4Addr,
}

/// What the node's maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub networks: Vec<Network>,
    pub local: Vec<LocalEndpoint>,
    pub remote: Vec<RemoteEndpoint>,
}

/// What an [`Node::apply`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub attached: usize,
    pub detached: usize,
    pub endpoints_removed: usize,
    pub ifaces_removed: usize,
    pub networks_removed: usize,
    /// Local endpoints whose host interface does not exist (skipped).
    pub missing_ifaces: usize,
}

/// One node's datapath.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    pins: Pins,
}

impl Node {
    /// Makes sure the node's bpffs, VXLAN device, pinned maps and tunnel
    /// program exist (reusing what is there) and returns its handle.
    pub fn open(cfg: NodeConfig) -> Result<Self> {
        let pin_dir = cfg.pin_dir();
        let (c, dir) = (cfg.clone(), pin_dir.clone());
        in_ns(cfg.netns.as_deref(), move || {
            virtlink_xdp::bpffs::ensure_mounted(&c.bpffs_root)?;
            let nl = Netlink::new()?;
            nl.add_vxlan_external(&c.vxlan, c.vxlan_port, c.underlay_ip)?;
            let link = nl
                .link(&c.vxlan)?
                .ok_or_else(|| Error::NoVxlan(c.vxlan.clone()))?;
            if link.kind.as_deref() != Some("vxlan") || !link.collect_metadata {
                return Err(Error::NotVxlan {
                    name: c.vxlan.clone(),
                    kind: link.kind.clone().unwrap_or_else(|| "unknown".into()),
                });
            }
            if let Err(e) = disable_ipv6(&c.vxlan) {
                tracing::debug!(error = %e, "disable IPv6 on the VXLAN device");
            }
            nl.set_up(&link)?;
            // The tunnel program stays as it is when it is pinned for this
            // very device and address (every CNI call opens the node); a
            // recreated device or a new address gets a new link.
            let want = VnConfig {
                vxlan_ifindex: link.index,
                node_ip: u32::from(c.underlay_ip),
            };
            let pins = Pins::new(&dir);
            let pinned = dir.join(TUNNEL_LINK).exists();
            if pinned && pins.config().ok() == Some(want) {
                return Ok(());
            }
            if pinned {
                tracing::info!(vxlan = %c.vxlan, "VXLAN device or address changed: new tunnel link");
                pins.remove_link(TUNNEL_LINK)?;
            }
            let mut iso = Isolation::open(&dir)?;
            iso.attach_tunnel(&c.vxlan)?;
            pins.set_config(want)?;
            Ok(())
        })?;
        tracing::info!(node = %cfg.name, pins = %pin_dir.display(), "vnet node open");
        Ok(Self {
            pins: Pins::new(&pin_dir),
            cfg,
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    pub fn cluster(&self) -> ClusterDir {
        ClusterDir::new(&self.cfg.cluster_dir)
    }

    pub fn state(&self) -> NodeDir {
        NodeDir::new(&self.cfg.state_dir)
    }

    /// Every network this node knows: the cluster's and those defined
    /// inline in its pods' NADs, checked against each other.
    pub fn known_networks(&self) -> Result<Vec<Network>> {
        let mut all = self.cluster().networks()?;
        for n in self.state().networks()? {
            if !all.iter().any(|c| c.name == n.name) {
                all.push(n);
            }
        }
        check_collisions(&all)?;
        Ok(all)
    }

    /// The desired state from the cluster directory: the networks with local
    /// members, this node's endpoints, and the other nodes' endpoints of
    /// those networks.
    pub fn desired(&self) -> Result<Desired> {
        let known = self.known_networks()?;
        let cluster = self.cluster();
        let mut d = Desired::default();
        for slice in cluster.node_slices(&self.cfg.name)? {
            let Some(net) = known.iter().find(|n| n.name == slice.network) else {
                tracing::warn!(network = %slice.network, "endpoints of an unknown network skipped");
                continue;
            };
            for e in &slice.endpoints {
                let Some(mac) = e.mac_bytes() else {
                    tracing::warn!(ip = %e.ip, mac = %e.mac, "endpoint with a bad MAC skipped");
                    continue;
                };
                d.local.push(LocalEndpoint {
                    net: net.id,
                    ip: e.ip,
                    mac,
                    host_ifname: e.host_ifname.clone(),
                });
            }
            d.networks.push(net.clone());
        }
        for net in &d.networks {
            for slice in cluster.slices(&net.name)? {
                if slice.node == self.cfg.name {
                    continue;
                }
                for e in &slice.endpoints {
                    if let Some(mac) = e.mac_bytes() {
                        d.remote.push(RemoteEndpoint {
                            net: net.id,
                            ip: e.ip,
                            mac,
                            node_ip: slice.node_ip,
                        });
                    }
                }
            }
        }
        Ok(d)
    }

    /// Recomputes the desired state and applies it.
    pub fn resync(&self) -> Result<Applied> {
        let d = self.desired()?;
        self.apply(&d)
    }

    /// Makes the maps and links hold exactly `d`: writes what differs,
    /// attaches the program to new local interfaces, and removes every entry
    /// and link that `d` does not have. Idempotent.
    pub fn apply(&self, d: &Desired) -> Result<Applied> {
        let d = d.clone();
        let dir = self.pins.dir().to_path_buf();
        let applied = in_ns(self.cfg.netns.as_deref(), move || apply_here(&dir, &d))?;
        tracing::info!(node = %self.cfg.name, ?applied, "vnet state applied");
        Ok(applied)
    }

    /// Counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(VnCounter, u64)>> {
        Ok(self.pins.counters()?)
    }

    pub fn counter(&self, c: VnCounter) -> Result<u64> {
        Ok(self.pins.counter(c)?)
    }

    /// Removes the node's datapath: every link and pin, and the VXLAN device.
    pub fn remove(self) -> Result<()> {
        self.pins.remove_all()?;
        let vxlan = self.cfg.vxlan.clone();
        in_ns(self.cfg.netns.as_deref(), move || {
            Netlink::new()?.del_link(&vxlan)?;
            Ok(())
        })
    }
}

/// Detaches and removes every pin of the node `cfg` (its maps go with their
/// last reference); a node that has none is fine.
pub fn remove_pins(cfg: &NodeConfig) -> Result<()> {
    Ok(virtlink_xdp::bpffs::remove_dir(&cfg.pin_dir())?)
}

fn apply_here(dir: &Path, d: &Desired) -> Result<Applied> {
    let pins = Pins::new(dir);
    let mut out = Applied::default();

    let mut networks = pins.networks()?;
    // Egress state is touched only on nodes that have (or just had) an
    // egress network: no nftables or rule work for the others.
    let mut had_egress = false;
    for k in networks.keys()? {
        had_egress |= networks
            .get(&k)?
            .is_some_and(|n| n.flags & VN_FLAG_EGRESS != 0);
    }
    let want_nets: BTreeSet<u32> = d.networks.iter().map(|n| n.id).collect();
    for n in &d.networks {
        networks.put(
            n.id,
            VnNetwork {
                gateway: raw(n.gateway),
                flags: if n.egress { VN_FLAG_EGRESS } else { 0 },
                gateway_mac: n.gateway_mac(),
                _pad: [0; 2],
            },
        )?;
    }

    let mut ifaces = pins.ifaces()?;
    let mut endpoints = pins.endpoints()?;
    let mut want_ifaces = BTreeSet::new();
    let mut want_eps = BTreeSet::new();
    let mut want_links = BTreeSet::new();
    let mut iso: Option<Isolation> = None;
    let existing_links: BTreeSet<String> = pins.pod_links()?.into_iter().collect();
    let egress_nets: BTreeSet<u32> = d
        .networks
        .iter()
        .filter(|n| n.egress)
        .map(|n| n.id)
        .collect();
    let mut egress_eps = Vec::new();
    for e in &d.local {
        let Ok(index) = nix::net::if_::if_nametoindex(e.host_ifname.as_str()) else {
            tracing::warn!(iface = %e.host_ifname, ip = %e.ip, "local endpoint without its interface; skipped");
            out.missing_ifaces += 1;
            continue;
        };
        let key = VnEndpointKey {
            net: e.net,
            ip: raw(e.ip),
        };
        ifaces.put(
            index,
            VnIface {
                net: e.net,
                ip: raw(e.ip),
                mac: e.mac,
                _pad: [0; 2],
            },
        )?;
        endpoints.put(
            key,
            VnEndpoint {
                ifindex: index,
                node_ip: 0,
                mac: e.mac,
                _pad: [0; 2],
            },
        )?;
        want_ifaces.insert(index);
        want_eps.insert((key.net, key.ip));
        if egress_nets.contains(&e.net) {
            egress_eps.push(egress::EgressEndpoint {
                host_ifname: e.host_ifname.clone(),
                host_ifindex: index,
                ip: e.ip,
                mac: e.mac,
            });
        }
        let link = pod_link_name(&e.host_ifname, index);
        if !existing_links.contains(&link) {
            let iso = match &mut iso {
                Some(i) => i,
                None => iso.insert(Isolation::open(dir)?),
            };
            iso.attach_pod(&e.host_ifname)?;
            out.attached += 1;
        }
        want_links.insert(link);
    }
    for e in &d.remote {
        let key = VnEndpointKey {
            net: e.net,
            ip: raw(e.ip),
        };
        if want_eps.contains(&(key.net, key.ip)) {
            tracing::warn!(net = e.net, ip = %e.ip, "address both local and remote; the local one wins");
            continue;
        }
        endpoints.put(
            key,
            VnEndpoint {
                ifindex: 0,
                node_ip: u32::from(e.node_ip),
                mac: e.mac,
                _pad: [0; 2],
            },
        )?;
        want_eps.insert((key.net, key.ip));
    }

    // Prune: whatever the desired state does not name.
    for link in existing_links.difference(&want_links) {
        pins.remove_link(link)?;
        out.detached += 1;
    }
    for k in endpoints.keys()? {
        if !want_eps.contains(&(k.net, k.ip)) {
            endpoints.remove(&k)?;
            out.endpoints_removed += 1;
        }
    }
    for k in ifaces.keys()? {
        if !want_ifaces.contains(&k) {
            ifaces.remove(&k)?;
            out.ifaces_removed += 1;
        }
    }
    for k in networks.keys()? {
        if !want_nets.contains(&k) {
            networks.remove(&k)?;
            out.networks_removed += 1;
        }
    }
    if had_egress || !egress_nets.is_empty() {
        egress::apply(&egress_eps)?;
    }
    Ok(out)
}

/// Turns off IPv6 on `ifname` in the calling thread's namespace: the
/// isolated networks are IPv4 and the programs drop (and count) anything
/// else, so the interface should not send router solicitations.
pub(crate) fn disable_ipv6(ifname: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
