//! Nodes and pods as network namespaces for the isolated-network tests:
//! a `Cluster` (the cluster directory), `TestNode`s (a namespace, a state
//! directory and a pin directory each, optionally on an underlay bridge) and
//! `Pod`s attached through the CNI type. Everything is removed on drop, also
//! when a test fails.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use virtlink_vnet::cni::{self, Failure, Request};
use virtlink_vnet::model::{Network, VirtualNetworkSpec};
use virtlink_vnet::node::{Node, NodeConfig};
use virtlink_vnet::store::ClusterDir;
use virtlink_xdp::common::vnet::VnCounter;

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        eprintln!("SKIPPED: needs root (CAP_NET_ADMIN, CAP_BPF) for namespaces and eBPF");
        false
    }
}

/// A unique short name: `<prefix><pid><n>`, at most 15 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut s = format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    s.truncate(15);
    s
}

/// A named network namespace deleted on drop.
pub struct Ns {
    pub name: String,
    pub path: PathBuf,
}

impl Ns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        let path = netattach::netns::create(&name).with_context(|| format!("create {name}"))?;
        let ns = Ns { name, path };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn output(&self, program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .output(program, args)
            .with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {}: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.exec("ip", args)
    }

    /// `ping -c N -W 1` to `dst`: did every packet come back?
    pub fn ping(&self, dst: &str, count: u32) -> bool {
        self.output(
            "ping",
            &["-c", &count.to_string(), "-i", "0.2", "-W", "1", "-q", dst],
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    pub fn ping_from(&self, src: &str, dst: &str) -> bool {
        self.output(
            "ping",
            &["-c", "2", "-i", "0.2", "-W", "1", "-q", "-I", src, dst],
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    /// Received packets of `iface` (as the kernel counts them).
    pub fn rx_packets(&self, iface: &str) -> Result<u64> {
        let s = self.exec(
            "cat",
            &[&format!("/sys/class/net/{iface}/statistics/rx_packets")],
        )?;
        s.trim().parse().context("rx_packets")
    }

    /// Link names in this namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netattach::netns::delete(&self.name);
    }
}

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
        let n = Network::from_spec(
            name,
            &VirtualNetworkSpec {
                id,
                cidrs: vec![cidr.parse()?],
                gateway: None,
                mtu: None,
                tenant: format!("tenant-{name}"),
                egress: false,
            },
        )?;
        self.store().put_network(&n)?;
        Ok(n)
    }
}

/// One node: a namespace, its own state and pin directories.
pub struct TestNode {
    pub ns: Ns,
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub state: tempfile::TempDir,
    pub cluster_dir: PathBuf,
}

impl TestNode {
    pub fn new(cluster: &Cluster, underlay_ip: Ipv4Addr) -> Result<Self> {
        let ns = Ns::new("vnn")?;
        Ok(Self {
            name: ns.name.clone(),
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
        c.netns = Some(self.ns.path.clone());
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
                "netns": self.ns.path,
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
        let ns = Ns::new("vnp")?;
        let config = self.cni_config(network);
        let result = self
            .call("ADD", &ns.name, &ns.path, &config)
            .map_err(|e| anyhow::anyhow!("ADD {}: code {} {}", ns.name, e.code, e.msg))?
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
    pub ns: Ns,
    pub ip: String,
    /// The host end of its veth, in the node's namespace.
    pub host: String,
    pub config: Value,
}

impl Pod {
    pub fn ping(&self, dst: &Pod) -> bool {
        self.ns.ping(&dst.ip, 2)
    }

    pub fn rx(&self) -> u64 {
        self.ns.rx_packets("net1").unwrap_or(u64::MAX)
    }
}

/// An underlay: a bridge in its own namespace; each node gets a veth on it.
pub struct Underlay {
    pub ns: Ns,
}

impl Underlay {
    pub fn new() -> Result<Self> {
        let ns = Ns::new("vnu")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { ns })
    }

    /// Connects namespace `node` with address `ip`/24 on its `ul0`.
    pub fn connect(&self, node: &Ns, ip: Ipv4Addr) -> Result<()> {
        let port = unique("ulp");
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &node.name,
        ])?;
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"])?;
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])?;
        node.ip(&["link", "set", "ul0", "up"])?;
        Ok(())
    }
}
