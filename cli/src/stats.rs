//! `virtlink stats`: a VM's eBPF datapath counters, read from the maps the
//! binder pinned per interface (no namespace switch needed: pins are global).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use virtlink_xdp::common::Counter;

/// One interface's counters.
#[derive(Debug, Serialize)]
pub struct InterfaceStats {
    /// The pin directory's name (`<namespace>_<vm>_<iface>_<netns inode>`).
    pub pins: String,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// Conntrack entries in the map now (two per connection; expired ones
    /// count until garbage-collected or evicted).
    pub conntrack_entries: usize,
}

/// Reads the counters of every interface of `namespace/vm`.
pub fn collect(bpffs_root: &Path, namespace: &str, vm: &str) -> Result<Vec<InterfaceStats>> {
    let dirs = vm_binder::pin_dirs(bpffs_root, namespace, vm);
    if dirs.is_empty() {
        bail!(
            "no eBPF datapath pins for {namespace}/{vm} under {}",
            bpffs_root.display()
        );
    }
    let mut out = Vec::new();
    for (name, dir) in dirs {
        let pinned = virtlink_xdp::nat::Pinned::open(&dir)
            .with_context(|| format!("open pins in {}", dir.display()))?;
        let counters = pinned
            .counters()
            .with_context(|| format!("read counters in {}", dir.display()))?
            .into_iter()
            .map(|(c, v): (Counter, u64)| (c.name(), v))
            .collect();
        let conntrack_entries = pinned
            .conntrack()
            .with_context(|| format!("read conntrack in {}", dir.display()))?
            .len();
        out.push(InterfaceStats {
            pins: name,
            counters,
            conntrack_entries,
        });
    }
    Ok(out)
}

/// Prints the stats as text or JSON.
pub fn run(bpffs_root: &Path, namespace: &str, vm: &str, json: bool) -> Result<()> {
    let stats = collect(bpffs_root, namespace, vm)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    for s in &stats {
        println!("{}", s.pins);
        for (name, value) in &s.counters {
            println!("  {name:<20} {value}");
        }
        println!("  {:<20} {}", "conntrack_entries", s.conntrack_entries);
    }
    Ok(())
}
