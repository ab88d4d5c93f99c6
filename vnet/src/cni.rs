//! The CNI type `"virtlink"`: a pod interface on an isolated network
//! (docs/vnet.md). Called in-process by virtlink-cni's delegate runner
//! ([`call`]); errors come back as the CNI error object's code and message.
//!
//! ADD validates everything first, records the endpoint in the node's slice
//! (so DEL can undo whatever happens next), creates the veth pair into the
//! pod, and applies the node's desired state; any failure undoes the steps
//! done. DEL removes the veth and the record and re-applies; what is already
//! gone is not an error.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use netattach::netlink::{Netlink, Route4};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ipam;
use crate::model::{
    self, check_collisions, endpoint_mac, format_mac, parse_mac, EndpointRecord, Network,
    NetworkEndpointSliceSpec, VirtualNetworkSpec,
};
use crate::node::{self, in_ns, Node, NodeConfig};
use crate::registry;
use crate::store::{self, ClusterDir, NodeDir};

/// The `type` of the network config.
pub const TYPE: &str = "virtlink";
/// The CNI versions this type speaks.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (spec) and this plugin's own (100 and up).
pub mod code {
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// The node's datapath (links, eBPF) could not be set up.
    pub const DATAPATH: u32 = 100;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error object's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct Failure {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl Failure {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// From an error with a source chain: the message and the whole chain.
    fn chain(code: u32, step: &str, e: &dyn std::error::Error) -> Self {
        let mut msg = format!("{step}: {e}");
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Self::new(code, msg)
    }
}

impl From<model::Error> for Failure {
    fn from(e: model::Error) -> Self {
        Self::new(code::INVALID_CONFIG, e.to_string())
    }
}

impl From<store::Error> for Failure {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Model(m) => m.into(),
            store::Error::Invalid { .. } => Self::chain(code::INVALID_CONFIG, "network", &e),
            store::Error::Decode { .. } => Self::chain(code::DECODE_FAILURE, "state", &e),
            store::Error::Unavailable { .. } => Self::chain(code::TRY_AGAIN, "state", &e),
            e => Self::chain(code::IO_FAILURE, "state", &e),
        }
    }
}

impl From<node::Error> for Failure {
    fn from(e: node::Error) -> Self {
        match e {
            node::Error::Model(m) => m.into(),
            node::Error::Store(s) => s.into(),
            e => Self::chain(code::DATAPATH, "node datapath", &e),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// One call, as the runtime made it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    /// The plugin's config (with `name`, `cniVersion`, `runtimeConfig`, ...).
    pub config: &'a Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    network: NetworkConf,
    node: NodeConf,
    #[serde(default)]
    runtime_config: RuntimeConfig,
}

/// The network: a name (its VirtualNetwork is in the cluster directory) or
/// a whole definition.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkConf {
    name: Option<String>,
    id: Option<u32>,
    cidrs: Option<Vec<Ipv4Net>>,
    gateway: Option<Ipv4Addr>,
    mtu: Option<u32>,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    egress: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NodeConf {
    name: Option<String>,
    underlay_ip: Ipv4Addr,
    cluster_dir: PathBuf,
    state_dir: Option<PathBuf>,
    bpffs_root: Option<PathBuf>,
    vxlan: Option<String>,
    vxlan_port: Option<u16>,
    /// The node's namespace when it is not the caller's (tests that run
    /// several nodes in one process).
    netns: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    mac: Option<String>,
}

/// A node's settings as the `node` object of a `"virtlink"` config.
pub fn node_json(node: &NodeConfig) -> Value {
    json!({
        "name": node.name,
        "underlayIp": node.underlay_ip,
        "clusterDir": node.cluster_dir,
        "stateDir": node.state_dir,
        "bpffsRoot": node.bpffs_root,
    })
}

/// `config` (a CNI config or conflist) with `node` set on each plugin of
/// type `"virtlink"` that has none; anything else is returned as it is.
/// A NAD is cluster-wide and the underlay address is per node: the node
/// agent (and standalone mode) fill in their own settings.
pub fn fill_node(config: &str, node: &Value) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(config) else {
        return config.to_string();
    };
    let mut changed = false;
    let mut fill = |p: &mut Value| {
        if let Some(o) = p.as_object_mut() {
            if o.get("type").and_then(|t| t.as_str()) == Some(TYPE) && !o.contains_key("node") {
                o.insert("node".into(), node.clone());
                changed = true;
            }
        }
    };
    match v.get_mut("plugins").and_then(|p| p.as_array_mut()) {
        Some(plugins) => plugins.iter_mut().for_each(&mut fill),
        None => fill(&mut v),
    }
    if changed {
        v.to_string()
    } else {
        config.to_string()
    }
}

/// The default state directory of a node.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/virtlink/vnet";

impl NetConf {
    fn parse(v: &Value) -> Result<Self> {
        serde_json::from_value(v.clone()).map_err(|e| {
            Failure::new(
                code::INVALID_CONFIG,
                format!("virtlink network config: {e}"),
            )
        })
    }

    fn network_name(&self) -> String {
        self.network
            .name
            .clone()
            .unwrap_or_else(|| self.name.clone())
    }

    /// The inline definition, when the config has one.
    fn inline(&self) -> Result<Option<Network>> {
        let n = &self.network;
        match (n.id, &n.cidrs) {
            (None, None) => Ok(None),
            (Some(id), Some(cidrs)) => Ok(Some(Network::from_spec(
                &self.network_name(),
                &VirtualNetworkSpec {
                    id,
                    cidrs: cidrs.clone(),
                    gateway: n.gateway,
                    mtu: n.mtu,
                    tenant: n.tenant.clone(),
                    egress: n.egress,
                },
            )?)),
            _ => Err(Failure::new(
                code::INVALID_CONFIG,
                format!(
                    "network {}: an inline definition needs both \"id\" and \"cidrs\"",
                    self.network_name()
                ),
            )),
        }
    }

    fn node(&self) -> Result<NodeConfig> {
        let n = &self.node;
        let name = match &n.name {
            Some(s) => s.clone(),
            None => match std::env::var("NODE_NAME") {
                Ok(s) if !s.is_empty() => s,
                _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| Failure::new(code::INVALID_CONFIG, "node name unknown"))?,
            },
        };
        let state = n
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut cfg = NodeConfig::new(&name, n.underlay_ip, &n.cluster_dir, &state);
        cfg.netns = n.netns.clone();
        if let Some(b) = &n.bpffs_root {
            cfg.bpffs_root = b.clone();
        }
        if let Some(v) = &n.vxlan {
            if v.is_empty() || v.len() > 15 || v.contains(['/', ' ']) {
                return Err(Failure::new(
                    code::INVALID_CONFIG,
                    format!("node.vxlan {v:?} is not an interface name"),
                ));
            }
            cfg.vxlan = v.clone();
        }
        if let Some(p) = n.vxlan_port {
            cfg.vxlan_port = p;
        }
        Ok(cfg)
    }

    fn requested_ip(&self) -> Result<Option<Ipv4Addr>> {
        let Some(s) = self.runtime_config.ips.first() else {
            return Ok(None);
        };
        let addr = s.split('/').next().unwrap_or_default();
        addr.parse().map(Some).map_err(|_| {
            Failure::new(
                code::INVALID_CONFIG,
                format!("requested address {s:?} is not an IPv4 address"),
            )
        })
    }

    fn requested_mac(&self) -> Result<Option<[u8; 6]>> {
        match &self.runtime_config.mac {
            None => Ok(None),
            Some(s) => match parse_mac(s) {
                Some(m) if m[0] & 1 == 0 => Ok(Some(m)),
                _ => Err(Failure::new(
                    code::INVALID_CONFIG,
                    format!("requested MAC {s:?} is not a unicast MAC address"),
                )),
            },
        }
    }
}

/// Runs one call; `Ok(None)` for verbs that print nothing.
pub fn call(req: &Request<'_>) -> Result<Option<Value>> {
    let conf = NetConf::parse(req.config)?;
    match req.command {
        "ADD" => add(req, &conf).map(Some),
        "DEL" => del(req, &conf).map(|()| None),
        "CHECK" => check(req, &conf).map(|()| None),
        // The meta-plugin's GC deletes stale attachments with DEL; STATUS has
        // nothing to report beyond the config parsing above.
        "GC" | "STATUS" => Ok(None),
        other => Err(Failure::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND {other:?} is not handled by the virtlink type"),
        )),
    }
}

/// The host end's name: `vn` + a stable hash of the container and interface.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across builds (the name must be the same for DEL).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("vn{:010x}", h & 0xff_ffff_ffff)
}

/// The network the config names, validated against every network the node
/// knows (a VNI collision or a conflicting definition is an error).
fn resolve_network(conf: &NetConf, cluster: &ClusterDir, nd: &NodeDir) -> Result<(Network, bool)> {
    let name = conf.network_name();
    let mut known = cluster.networks()?;
    let from_cluster = known.iter().find(|n| n.name == name).cloned();
    for n in nd.networks()? {
        if !known.iter().any(|k| k.name == n.name) {
            known.push(n);
        }
    }
    let (net, inline) = match (conf.inline()?, from_cluster) {
        (Some(i), Some(c)) => {
            c.check_same(&i)?;
            (c, false)
        }
        (Some(i), None) => (i, true),
        (None, Some(c)) => (c, false),
        (None, None) => {
            return Err(Failure::new(
                code::INVALID_CONFIG,
                format!(
                    "network {name}: no VirtualNetwork of that name in {} and no inline definition",
                    cluster.root().display()
                ),
            ))
        }
    };
    check_collisions(known.iter().chain(std::iter::once(&net)))?;
    Ok((net, inline))
}

fn own_slice(
    cluster: &ClusterDir,
    net: &str,
    cfg: &NodeConfig,
) -> Result<(Vec<NetworkEndpointSliceSpec>, NetworkEndpointSliceSpec)> {
    let slices = cluster.slices(net)?;
    let mine = slices
        .iter()
        .find(|s| s.node == cfg.name)
        .cloned()
        .unwrap_or_else(|| NetworkEndpointSliceSpec {
            network: net.to_string(),
            node: cfg.name.clone(),
            node_ip: cfg.underlay_ip,
            blocks: Vec::new(),
            endpoints: Vec::new(),
        });
    Ok((slices, mine))
}

/// How often a claim is retried after another node claimed the same block.
const CLAIM_ATTEMPTS: u32 = 5;
/// How long the node with the greater name waits, per attempt, after a tie,
/// so that the other one's next claim is visible when it reads again.
const CLAIM_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Allocates an address and records `record` with it in the node's slice.
///
/// Inside a block the node already owns, that is all. A new block (or a
/// requested address's block) is claimed through the network's registry
/// (docs/vnet.md, "Addresses"): the slice is published, every slice read
/// back, and the claim kept only when no other node claims the block too;
/// else it is withdrawn and another block tried (after a tie the node with
/// the greater name waits, so the two do not collide again).
fn claim(
    cluster: &ClusterDir,
    net: &Network,
    cfg: &NodeConfig,
    requested: Option<Ipv4Addr>,
    record: impl Fn(Ipv4Addr) -> EndpointRecord,
) -> Result<ipam::Allocation> {
    let registry = registry::for_cluster(&cfg.cluster_dir);
    let unreachable = |e: registry::Error| {
        Failure::new(
            code::TRY_AGAIN,
            format!(
                "network {}: claiming an address block needs the cluster's slices: {e}",
                net.name
            ),
        )
    };
    let mut avoid = BTreeSet::new();
    // Whether the registry's view is needed: always for a claim, and first
    // when this node has no block of the network yet (its mirror of the
    // other nodes' slices may be behind).
    let mut fresh = cluster
        .slices(&net.name)?
        .iter()
        .all(|s| s.node != cfg.name);
    for attempt in 1..=CLAIM_ATTEMPTS {
        let (mut slices, mut mine) = own_slice(cluster, &net.name, cfg)?;
        if fresh || requested.is_some() {
            slices = registry.slices(&net.name).map_err(unreachable)?;
            slices.retain(|s| s.node != cfg.name);
            slices.push(mine.clone());
        }
        let a = ipam::allocate(net, &cfg.name, &slices, requested, &avoid)?;
        mine.node_ip = cfg.underlay_ip;
        mine.endpoints.push(record(a.ip));
        let Some(block) = a.claimed else {
            cluster.put_slice(&mine)?;
            return Ok(a);
        };
        mine.blocks.push(block);
        cluster.put_slice(&mine)?;
        let seen = registry
            .publish(&mine)
            .and_then(|()| registry.slices(&net.name));
        let rival = match &seen {
            Ok(seen) => ipam::rival(&cfg.name, seen, &a).map(str::to_string),
            Err(_) => None,
        };
        if seen.is_ok() && rival.is_none() {
            tracing::info!(network = %net.name, %block, "IPAM block claimed");
            return Ok(a);
        }
        // Withdraw: locally, and where the others read.
        mine.blocks.retain(|b| *b != block);
        mine.endpoints.retain(|e| e.ip != a.ip);
        cluster.put_slice(&mine)?;
        let withdrawn = registry.publish(&mine);
        seen.map_err(unreachable)?;
        withdrawn.map_err(unreachable)?;
        let rival = rival.unwrap_or_default();
        if requested.is_some() {
            return Err(Failure::new(
                code::INVALID_CONFIG,
                format!(
                    "network {}: requested address {} was claimed at the same time by node {rival}",
                    net.name, a.ip
                ),
            ));
        }
        tracing::info!(network = %net.name, %block, %rival, attempt, "IPAM block claimed by another node at the same time; trying another");
        avoid.insert(block);
        fresh = true;
        if rival.as_str() < cfg.name.as_str() {
            std::thread::sleep(CLAIM_BACKOFF * attempt);
        }
    }
    Err(Failure::new(
        code::TRY_AGAIN,
        format!(
            "network {}: IPAM blocks contended; try again later",
            net.name
        ),
    ))
}

/// Removes the endpoint (`container_id`, `ifname`) from the node's slice of
/// `net`; returns it when it was there.
fn unrecord(
    cluster: &ClusterDir,
    net: &str,
    cfg: &NodeConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Option<EndpointRecord>> {
    let (_, mut mine) = own_slice(cluster, net, cfg)?;
    let Some(pos) = mine
        .endpoints
        .iter()
        .position(|e| e.container_id == container_id && e.ifname == ifname)
    else {
        return Ok(None);
    };
    let rec = mine.endpoints.remove(pos);
    cluster.put_slice(&mine)?;
    Ok(Some(rec))
}

/// Creates the veth pair: `host` in the node's namespace, `ifname` (with
/// the endpoint's MAC, address and routes) in the pod's.
fn create_veth(
    cfg: &NodeConfig,
    pod_netns: &Path,
    host: &str,
    ifname: &str,
    mac: [u8; 6],
    addr: (Ipv4Addr, u8),
    net: &Network,
) -> Result<[u8; 6]> {
    let addr = Ipv4Net::new(addr.0, addr.1).map_err(|e| {
        Failure::chain(
            code::DATAPATH,
            &format!("address {}/{}", addr.0, addr.1),
            &e,
        )
    })?;
    let tmp = format!("vp{}", &host[2..]);
    let (h, t, mtu, ns) = (
        host.to_string(),
        tmp.clone(),
        net.mtu,
        pod_netns.to_path_buf(),
    );
    let host_mac = in_ns(cfg.netns.as_deref(), move || {
        let nl = Netlink::new()?;
        nl.del_link(&h)?;
        nl.add_veth(&h, &t, mtu)?;
        if let Err(e) = node::disable_ipv6(&h) {
            tracing::debug!(error = %e, iface = %h, "disable IPv6");
        }
        let link = nl.link(&h)?.ok_or_else(|| node::Error::NoLink(h.clone()))?;
        nl.set_up(&link)?;
        nl.move_to_netns(&t, &ns)?;
        Ok(link.mac.unwrap_or_default())
    })
    .map_err(|e| Failure::chain(code::DATAPATH, &format!("create veth {host}"), &e))?;
    let (t, name, cidrs) = (tmp, ifname.to_string(), net.cidrs.clone());
    let egress_gateway = net.egress.then_some(net.gateway);
    let pod = netattach::netns::run_in(pod_netns, move || -> node::Result<()> {
        let nl = Netlink::new()?;
        let link = nl.link(&t)?.ok_or_else(|| node::Error::NoLink(t.clone()))?;
        nl.configure(&link, &name, Some(mac), mtu)?;
        if let Err(e) = node::disable_ipv6(&name) {
            tracing::debug!(error = %e, iface = %name, "disable IPv6");
        }
        let link = nl
            .link(&name)?
            .ok_or_else(|| node::Error::NoLink(name.clone()))?;
        nl.set_up(&link)?;
        nl.add_addr(&link, addr.into())?;
        for c in cidrs.iter().filter(|c| !c.contains(&addr.addr())) {
            let on_link = Route4 {
                dst: *c,
                gateway: None,
            };
            nl.add_route4(&link, on_link)?;
        }
        // Egress: everything else through the gateway (the node).
        if let Some(gw) = egress_gateway {
            nl.add_default_route(&link, gw.into())?;
        }
        Ok(())
    });
    let pod = match pod {
        Ok(r) => r.map_err(|e| {
            Failure::chain(code::DATAPATH, &format!("set up {ifname} in the pod"), &e)
        }),
        Err(e) => Err(Failure::chain(
            code::CONTAINER_UNKNOWN,
            "enter the pod's namespace",
            &e,
        )),
    };
    if let Err(e) = pod {
        let _ = delete_veth(cfg, host);
        return Err(e);
    }
    Ok(host_mac)
}

fn delete_veth(cfg: &NodeConfig, host: &str) -> Result<()> {
    let h = host.to_string();
    in_ns(cfg.netns.as_deref(), move || {
        Netlink::new()?.del_link(&h)?;
        Ok(())
    })
    .map_err(|e| Failure::chain(code::DATAPATH, &format!("delete veth {host}"), &e))
}

fn resync(cfg: &NodeConfig) -> Result<()> {
    Node::open(cfg.clone())?.resync()?;
    Ok(())
}

fn add(req: &Request<'_>, conf: &NetConf) -> Result<Value> {
    if req.netns.is_empty() {
        return Err(Failure::new(code::INVALID_ENV, "CNI_NETNS is empty"));
    }
    let pod_netns = PathBuf::from(req.netns);
    if !pod_netns.exists() {
        return Err(Failure::new(
            code::CONTAINER_UNKNOWN,
            format!("network namespace {} does not exist", req.netns),
        ));
    }
    let cfg = conf.node()?;
    let cluster = ClusterDir::new(&cfg.cluster_dir);
    let nd = NodeDir::new(&cfg.state_dir);
    let requested_ip = conf.requested_ip()?;
    let requested_mac = conf.requested_mac()?;
    let _lock = nd.lock()?;
    let (net, inline) = resolve_network(conf, &cluster, &nd)?;
    if let Some(ip) = requested_ip {
        net.check_address(ip)?;
    }
    // A repeated ADD replaces the attachment.
    if let Some(old) = unrecord(&cluster, &net.name, &cfg, req.container_id, req.ifname)? {
        tracing::info!(container = req.container_id, ifname = req.ifname, ip = %old.ip, "repeated ADD: old attachment removed");
        delete_veth(&cfg, &old.host_ifname)?;
    }
    let host = host_ifname(req.container_id, req.ifname);
    let registered = inline && !nd.networks()?.iter().any(|n| n.name == net.name);
    if registered {
        nd.put_network(&net)?;
    }
    let record = |ip: Ipv4Addr| EndpointRecord {
        ip,
        mac: format_mac(&requested_mac.unwrap_or_else(|| endpoint_mac(ip))),
        container_id: req.container_id.to_string(),
        ifname: req.ifname.to_string(),
        host_ifname: host.clone(),
    };
    let alloc = match claim(&cluster, &net, &cfg, requested_ip, record) {
        Ok(a) => a,
        Err(e) => {
            if registered {
                let _ = nd.remove_network(&net.name);
            }
            return Err(e);
        }
    };
    let mac = requested_mac.unwrap_or_else(|| endpoint_mac(alloc.ip));
    let prefix = alloc.cidr.prefix_len();
    let done = create_veth(
        &cfg,
        &pod_netns,
        &host,
        req.ifname,
        mac,
        (alloc.ip, prefix),
        &net,
    )
    .and_then(|host_mac| resync(&cfg).map(|()| host_mac));
    let host_mac = match done {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e.msg, container = req.container_id, "ADD failed; undoing");
            let _ = delete_veth(&cfg, &host);
            let _ = unrecord(&cluster, &net.name, &cfg, req.container_id, req.ifname);
            if registered {
                let _ = nd.remove_network(&net.name);
            }
            if cfg.pin_dir().exists() {
                if let Err(e2) = resync(&cfg) {
                    tracing::warn!(error = %e2.msg, "resync after a failed ADD");
                }
            }
            return Err(e);
        }
    };
    tracing::info!(network = %net.name, vni = net.id, ip = %alloc.ip, host = %host, "endpoint added");
    let mut ip = json!({
        "address": format!("{}/{}", alloc.ip, prefix),
        "gateway": net.gateway.to_string(),
        "interface": 1,
    });
    if conf.cni_version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    Ok(json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": host, "mac": format_mac(&host_mac)},
            {"name": req.ifname, "mac": format_mac(&mac), "sandbox": req.netns},
        ],
        "ips": [ip],
        "dns": {},
    }))
}

fn del(req: &Request<'_>, conf: &NetConf) -> Result<()> {
    let cfg = conf.node()?;
    let cluster = ClusterDir::new(&cfg.cluster_dir);
    let nd = NodeDir::new(&cfg.state_dir);
    let name = conf.network_name();
    let _lock = nd.lock()?;
    let rec = unrecord(&cluster, &name, &cfg, req.container_id, req.ifname)?;
    let host = rec
        .as_ref()
        .map(|r| r.host_ifname.clone())
        .unwrap_or_else(|| host_ifname(req.container_id, req.ifname));
    delete_veth(&cfg, &host)?;
    let (_, mine) = own_slice(&cluster, &name, &cfg)?;
    if mine.endpoints.is_empty() {
        nd.remove_network(&name)?;
    }
    if cfg.pin_dir().exists() {
        resync(&cfg)?;
    }
    tracing::info!(network = %name, container = req.container_id, ifname = req.ifname, found = rec.is_some(), "endpoint deleted");
    Ok(())
}

fn check(req: &Request<'_>, conf: &NetConf) -> Result<()> {
    let cfg = conf.node()?;
    let cluster = ClusterDir::new(&cfg.cluster_dir);
    let nd = NodeDir::new(&cfg.state_dir);
    let _lock = nd.lock()?;
    let (net, _) = resolve_network(conf, &cluster, &nd)?;
    let (_, mine) = own_slice(&cluster, &net.name, &cfg)?;
    let fail = |m: String| Failure::new(code::CHECK_FAILED, m);
    let Some(rec) = mine
        .endpoints
        .iter()
        .find(|e| e.container_id == req.container_id && e.ifname == req.ifname)
        .cloned()
    else {
        return Err(fail(format!(
            "network {}: no endpoint for container {} interface {}",
            net.name, req.container_id, req.ifname
        )));
    };
    let h = rec.host_ifname.clone();
    let index = in_ns(cfg.netns.as_deref(), move || {
        Ok(Netlink::new()?.link(&h)?.map(|l| l.index))
    })
    .map_err(Failure::from)?
    .ok_or_else(|| fail(format!("host interface {} is gone", rec.host_ifname)))?;
    let pins = virtlink_xdp::isolation::Pins::new(&cfg.pin_dir());
    let iface = pins
        .ifaces()
        .and_then(|t| t.get(&index))
        .map_err(|e| Failure::chain(code::CHECK_FAILED, "read the node's maps", &e))?;
    let raw = virtlink_xdp::isolation::raw(rec.ip);
    match iface {
        Some(i) if i.net == net.id && i.ip == raw => {}
        _ => {
            return Err(fail(format!(
                "{} is not in the node's interface map as {} of network {}",
                rec.host_ifname, rec.ip, net.name
            )))
        }
    }
    if !req.netns.is_empty() {
        let (name, want) = (req.ifname.to_string(), rec.mac_bytes());
        let got = netattach::netns::run_in(Path::new(req.netns), move || {
            Netlink::new().and_then(|nl| nl.link(&name))
        })
        .map_err(|e| Failure::chain(code::CONTAINER_UNKNOWN, "enter the pod's namespace", &e))?
        .map_err(|e| Failure::chain(code::CHECK_FAILED, "read the pod's interface", &e))?;
        match got {
            Some(l) if l.mac == want => {}
            _ => {
                return Err(fail(format!(
                    "interface {} in the pod is missing or has another MAC",
                    req.ifname
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_node_filled_only_where_missing() {
        let node = serde_json::json!({"name": "n1", "underlayIp": "192.168.0.1"});
        let plain = r#"{"name":"b","type":"virtlink","network":{"name":"b"}}"#;
        let v: serde_json::Value = serde_json::from_str(&fill_node(plain, &node)).unwrap();
        assert_eq!(v["node"], node);
        let list = r#"{"name":"b","plugins":[{"type":"virtlink"},{"type":"tuning"}]}"#;
        let v: serde_json::Value = serde_json::from_str(&fill_node(list, &node)).unwrap();
        assert_eq!(v["plugins"][0]["node"], node);
        assert!(v["plugins"][1].get("node").is_none());
        let own = r#"{"type":"virtlink","node":{"name":"x"}}"#;
        assert_eq!(fill_node(own, &node), own);
        let other = r#"{"type":"bridge"}"#;
        assert_eq!(fill_node(other, &node), other);
        assert_eq!(fill_node("not json", &node), "not json");
    }

    #[test]
    fn host_names_fit_and_are_stable() {
        let a = host_ifname("abc", "net1");
        assert_eq!(a.len(), 12);
        assert_eq!(a, host_ifname("abc", "net1"));
        assert_ne!(a, host_ifname("abc", "net2"));
    }

    #[test]
    fn config_errors_are_invalid_config() {
        let v = json!({"cniVersion":"1.0.0","name":"n","type":"virtlink",
            "network":{"id":5},"node":{"underlayIp":"192.168.0.1","clusterDir":"/nonexistent"}});
        let c = NetConf::parse(&v).unwrap();
        let e = c.inline().unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let v = json!({"name":"n","type":"virtlink","node":{}});
        assert_eq!(NetConf::parse(&v).unwrap_err().code, code::INVALID_CONFIG);
    }
}
