//! `virtlink vnet-stats NODE`: an isolated-network node's datapath (docs/vnet.md)
//! from its pins: packets forwarded, drops by reason, and what the maps hold.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct NodeStats {
    pub node: String,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    pub networks: usize,
    pub endpoints: usize,
    pub local_interfaces: usize,
    pub pod_links: usize,
}

pub fn collect(bpffs_root: &Path, node: &str) -> Result<NodeStats> {
    let dir = virtlink_xdp::bpffs::pod_dir(bpffs_root, &format!("vnet-{node}"));
    if !dir.exists() {
        bail!(
            "no isolated-network pins for node {node} under {}",
            bpffs_root.display()
        );
    }
    let pins = virtlink_xdp::isolation::Pins::new(&dir);
    let read = |what: &str| format!("read {what} in {}", dir.display());
    Ok(NodeStats {
        node: node.to_string(),
        counters: pins
            .counters()
            .with_context(|| read("counters"))?
            .into_iter()
            .map(|(c, v)| (c.name(), v))
            .collect(),
        networks: pins
            .networks()?
            .keys()
            .with_context(|| read("networks"))?
            .len(),
        endpoints: pins
            .endpoints()?
            .keys()
            .with_context(|| read("endpoints"))?
            .len(),
        local_interfaces: pins
            .ifaces()?
            .keys()
            .with_context(|| read("interfaces"))?
            .len(),
        pod_links: pins.pod_links().with_context(|| read("links"))?.len(),
    })
}

pub fn run(bpffs_root: &Path, node: &str, json: bool) -> Result<()> {
    let s = collect(bpffs_root, node)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "node {}: {} networks, {} endpoints, {} local interfaces ({} attached)",
        s.node, s.networks, s.endpoints, s.local_interfaces, s.pod_links
    );
    for (name, v) in &s.counters {
        println!("  {name:<20} {v}");
    }
    Ok(())
}
