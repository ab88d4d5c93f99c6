//! Nodes and pods as network namespaces for the isolated-network tests:
//! a `Cluster` (the cluster directory), `TestNode`s (a namespace, a state
//! directory and a pin directory each, optionally on an underlay bridge) and
//! `Pod`s attached through the CNI type, on vm-tests' namespace fixtures.
//! Everything is removed on drop, also when a test fails.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use virtlink_vnet::cni::{self, Failure, Request};
use virtlink_vnet::model::{Network, VirtualNetworkSpec};
use virtlink_vnet::node::{Node, NodeConfig};
use virtlink_vnet::store::ClusterDir;
use virtlink_xdp::common::vnet::VnCounter;
pub use vm_tests::netns::{require_root, unique_name, veth, Netns};

/// How long a ping waits for its last reply (`ping -W`).
pub const PING_WAIT: Duration = Duration::from_secs(1);

/// The cluster directory (the API server's stand-in).
pub struct Cluster {
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    pub fn store(&self) -> ClusterDir {
        ClusterDir::new(self.dir.path())
    }

    /// A VirtualNetwork, as a user applies it.
    pub fn network(&self, name: &str, id: u32, cidr: &str) -> Result<Network> {
        self.network_with_egress(name, id, cidr, false)
    }

    /// [`Cluster::network`], with egress to outside the cluster or not.
    pub fn network_with_egress(
        &self,
        name: &str,
        id: u32,
        cidr: &str,
        egress: bool,
    ) -> Result<Network> {
        let n = Network::from_spec(
            name,
            &VirtualNetworkSpec {
                id,
                cidrs: vec![cidr.parse()?],
                gateway: None,
                mtu: None,
                tenant: format!("tenant-{name}"),
                egress,
            },
        )?;
        self.store().put_network(&n)?;
        Ok(n)
    }
}

/// One node: a namespace, its own state and pin directories.
pub struct TestNode {
    pub ns: Netns,
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub state: tempfile::TempDir,
    pub cluster_dir: PathBuf,
}

impl TestNode {
    pub fn new(cluster: &Cluster, underlay_ip: Ipv4Addr) -> Result<Self> {
        let ns = Netns::with_prefix("vnn")?;
        Ok(Self {
            name: ns.name().to_owned(),
            ns,
            underlay_ip,
            state: tempfile::tempdir()?,
            cluster_dir: cluster.dir.path().to_path_buf(),
        })
    }

    pub fn config(&self) -> NodeConfig {
        let mut c = NodeConfig::new(
            &self.name,
            self.underlay_ip,
            &self.cluster_dir,
            self.state.path(),
        );
        c.netns = Some(self.ns.path().to_path_buf());
        c
    }

    /// The agent's view of the node (what a restarted agent re-opens).
    pub fn open(&self) -> Result<Node> {
        Ok(Node::open(self.config())?)
    }

    pub fn counter(&self, c: VnCounter) -> Result<u64> {
        Ok(virtlink_xdp::isolation::Pins::new(&self.config().pin_dir()).counter(c)?)
    }

    pub fn cni_config(&self, network: Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": network.get("name").cloned().unwrap_or(json!("net")),
            "type": "virtlink",
            "network": network,
            "node": {
                "name": self.name,
                "underlayIp": self.underlay_ip.to_string(),
                "clusterDir": self.cluster_dir,
                "stateDir": self.state.path(),
                "netns": self.ns.path(),
            },
        })
    }

    pub fn call(
        &self,
        command: &str,
        container: &str,
        netns: &Path,
        config: &Value,
    ) -> std::result::Result<Option<Value>, Failure> {
        let netns = netns.to_string_lossy();
        cni::call(&Request {
            command,
            container_id: container,
            netns: &netns,
            ifname: "net1",
            config,
        })
    }

    /// A pod namespace attached to `network` (`{"name": ...}` or inline).
    pub fn pod(&self, network: Value) -> Result<Pod> {
        let ns = Netns::with_prefix("vnp")?;
        let config = self.cni_config(network);
        let result = self
            .call("ADD", ns.name(), ns.path(), &config)
            .map_err(|e| anyhow::anyhow!("ADD {}: code {} {}", ns.name(), e.code, e.msg))?
            .context("ADD printed nothing")?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("result has no address")?
            .to_string();
        let host = result["interfaces"][0]["name"]
            .as_str()
            .context("no host interface")?
            .to_string();
        Ok(Pod {
            ns,
            ip,
            host,
            config,
        })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = virtlink_xdp::bpffs::remove_dir(&self.config().pin_dir());
    }
}

pub struct Pod {
    pub ns: Netns,
    pub ip: String,
    /// The host end of its veth, in the node's namespace.
    pub host: String,
    pub config: Value,
}

impl Pod {
    pub fn ping(&self, dst: &Pod) -> bool {
        self.ns.ping(&dst.ip, 2, PING_WAIT, &[])
    }

    pub fn rx(&self) -> u64 {
        self.ns.rx_packets("net1").unwrap_or(u64::MAX)
    }
}

/// An underlay: a bridge in its own namespace; each node gets a veth on it.
pub struct Underlay {
    pub ns: Netns,
}

impl Underlay {
    pub fn new() -> Result<Self> {
        let ns = Netns::with_prefix("vnu")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { ns })
    }

    /// Connects namespace `node` with address `ip`/24 on its `ul0`.
    pub fn connect(&self, node: &Netns, ip: Ipv4Addr) -> Result<()> {
        let port = unique_name("ulp");
        veth(&self.ns, &port, node, "ul0")?;
        self.ns.ip(&["link", "set", &port, "master", "br0"])?;
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])?;
        Ok(())
    }
}
