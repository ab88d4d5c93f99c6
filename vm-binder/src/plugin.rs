//! The binder as a KubeVirt network binding plugin with
//! `domainAttachmentType: tap` (docs/agent.md, "KubeVirt network binding
//! plugin").
//!
//! KubeVirt's virt-controller adds one entry per VM interface that names the
//! plugin to the launcher pod's networks annotation, after the entry of the
//! network itself, with `"cni-args": {"logicNetworkName": <VM network>}`. The
//! CNI meta-plugin then calls the plugin's NAD (`virtlink-cni` with a
//! `binding` section) inside the pod's namespace, and this module does the
//! work there:
//!
//! - the pod interface is `pod<hash(network)>` (KubeVirt's name for a
//!   secondary network) or, when that does not exist, `eth0`;
//! - the guest's tap is `tap<hash>` (or `tap0`): KubeVirt's virt-launcher
//!   points the domain's `<interface type='ethernet'>` at it with
//!   `managed='no'`, and copies the pod interface's MAC (unless the VM spec
//!   has a `macAddress`) and MTU to the domain;
//! - masquerade: the same NAT as the standalone binder (eBPF or nftables),
//!   the guest's MAC being the pod interface's; bridge: the pod interface
//!   keeps its MAC (the guest shares it, the bridge forwards it to the tap).
//!
//! The guest's DHCP (and IPv6 RA/DHCPv6) must be answered for as long as
//! the VM runs, longer than a CNI call: ADD writes a [`Record`] under the
//! state directory and the node agent runs the servers of every record
//! ([`Servers`]). DEL undoes the binding from the record, so it works after
//! restarts and when the namespace is already gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use netattach::netlink;
use serde::{Deserialize, Serialize};

use crate::spec::{BindingKind, PlannedInterface, Vm, VmiSpec};
use crate::{dhcp, dhcpv6, masquerade, BindOptions, Error, Mac, Result, Target};

/// The primary pod interface (KubeVirt's `PrimaryPodInterfaceName`).
pub const PRIMARY_POD_INTERFACE: &str = "eth0";

/// The tap KubeVirt's tap domain attachment looks for next to a pod
/// interface: `tap` and what follows the pod interface's first three
/// characters (`eth0` -> `tap0`, `pod1a2b...` -> `tap1a2b...`, `net1` -> `tap1`).
pub fn tap_for(pod_interface: &str) -> String {
    let rest = pod_interface.get(3..).unwrap_or_default();
    let mut name = format!("tap{rest}");
    name.truncate(15);
    name
}

/// One binding plugin call's inputs.
#[derive(Debug, Clone)]
pub struct Request {
    pub container_id: String,
    /// The pod's network namespace (CNI_NETNS).
    pub netns: PathBuf,
    /// The VM network the call binds (`cni-args.logicNetworkName`).
    pub logic_network: String,
    pub kind: BindingKind,
    /// Names the DHCP hostname: the launcher pod's name.
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// Where the records live (`<state dir>/bindings`).
    pub records_dir: PathBuf,
    /// The pod's DNS settings when the runtime passed them (CNI's `dns`
    /// capability); else `options.resolv_conf` is read.
    pub dns: Option<dhcp::Resolv>,
    pub options: BindOptions,
}

/// What ADD made: what the CNI result reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub pod_interface: String,
    pub tap: String,
    pub tap_mac: Option<Mac>,
    pub guest_mac: Mac,
    pub mtu: Option<u32>,
}

/// What one binding did, on disk: enough for DEL and for the agent's
/// DHCP servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub container_id: String,
    pub netns: PathBuf,
    pub logic_network: String,
    pub kind: BindingKind,
    pub pod_interface: String,
    pub tap: String,
    /// The eBPF datapath's pins (masquerade).
    pub pin_dir: PathBuf,
    /// The nftables table (masquerade).
    pub table: String,
    /// Filled once the binding is in place; the agent serves only then.
    #[serde(default)]
    pub dhcp: Option<DhcpRecord>,
}

/// The servers a bound interface needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpRecord {
    pub device: String,
    pub lease: dhcp::Lease,
    /// IPv6 (masquerade with an IPv6 pod address): the tap and the lease.
    #[serde(default)]
    pub ipv6: Option<(TapRecord, dhcpv6::Lease6)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TapRecord {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// The record file of one binding: `<dir>/<container>_<network>.json`
/// (the network name made safe for a file name).
pub fn record_path(dir: &Path, container_id: &str, logic_network: &str) -> PathBuf {
    let safe: String = logic_network
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{container_id}_{safe}.json"))
}

fn io_step(step: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    crate::step("binding record", step)
}

fn write_record(path: &Path, r: &Record) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_step("create the bindings directory"))?;
    }
    let bytes = serde_json::to_vec_pretty(r).map_err(|e| Error::Step {
        iface: r.logic_network.clone(),
        step: "encode binding record",
        source: Box::new(e),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_step("write binding record"))?;
    std::fs::rename(&tmp, path).map_err(io_step("write binding record"))
}

/// Reads a record; `None` when there is none.
pub fn read_record(path: &Path) -> Result<Option<Record>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Step {
                iface: path.display().to_string(),
                step: "decode binding record",
                source: Box::new(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_step("read binding record")(e)),
    }
}

/// The launcher pod's interface for `logic_network`: `pod<hash>` when it
/// exists in the namespace (a secondary network), else `eth0`.
fn find_pod_interface(netns: &Path, logic_network: &str) -> Result<(String, netlink::Link)> {
    let hashed = crate::launcher::pod_interface_name(logic_network);
    let network = logic_network.to_string();
    netattach::netns::run_in(netns, move || -> Result<(String, netlink::Link)> {
        let n = netlink::Netlink::new().map_err(crate::step(&network, "open netlink"))?;
        for name in [hashed.as_str(), PRIMARY_POD_INTERFACE] {
            if let Some(l) = n
                .link(name)
                .map_err(crate::step(&network, "find pod interface"))?
            {
                return Ok((name.to_string(), l));
            }
        }
        Err(Error::Step {
            iface: network.clone(),
            step: "find pod interface",
            source: format!("neither {hashed} nor {PRIMARY_POD_INTERFACE} exists in the pod")
                .into(),
        })
    })?
}

/// The VM name for the DHCP hostname: the launcher pod's name without
/// `virt-launcher-` and the ReplicaSet-style suffix.
fn vm_name(pod_name: Option<&str>) -> String {
    let Some(pod) = pod_name else {
        return "vm".into();
    };
    let name = pod.strip_prefix("virt-launcher-").unwrap_or(pod);
    match name.rsplit_once('-') {
        Some((vm, suffix)) if !vm.is_empty() && suffix.len() == 5 => vm.to_string(),
        _ => name.to_string(),
    }
}

/// ADD: binds the pod interface of `req.logic_network` to a new tap. The
/// record is written before any kernel object is made, so a DEL after a
/// crash finds everything; on error everything made is removed again.
pub fn add(req: &Request) -> Result<Added> {
    let path = record_path(&req.records_dir, &req.container_id, &req.logic_network);
    if let Some(old) = read_record(&path)? {
        tracing::info!(network = %req.logic_network, "ADD for a known binding: removing the old one first");
        undo(&old)?;
        let _ = std::fs::remove_file(&path);
    }
    let (pod_interface, pod_link) = find_pod_interface(&req.netns, &req.logic_network)?;
    let tap = tap_for(&pod_interface);
    // Another network's binding owns the tap already (e.g. two VM networks
    // without a pod interface of their own both falling back to eth0).
    let taken = {
        let (t, network) = (tap.clone(), req.logic_network.clone());
        netattach::netns::run_in(&req.netns, move || {
            netlink::Netlink::new()
                .and_then(|n| n.link(&t))
                .map_err(crate::step(&network, "find tap"))
        })??
        .is_some()
    };
    if taken {
        return Err(Error::Step {
            iface: req.logic_network.clone(),
            step: "find pod interface",
            source: format!(
                "{pod_interface} is bound already ({tap} exists): no pod interface \
                 {} for this network",
                crate::launcher::pod_interface_name(&req.logic_network)
            )
            .into(),
        });
    }
    let vm = Vm {
        name: vm_name(req.pod_name.as_deref()),
        namespace: req
            .pod_namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        spec: VmiSpec::default(),
        annotations: BTreeMap::new(),
    };
    let pin_dir = crate::pin_dir(&req.options.bpffs_root, &vm, &req.netns, &req.logic_network);
    let mut record = Record {
        container_id: req.container_id.clone(),
        netns: req.netns.clone(),
        logic_network: req.logic_network.clone(),
        kind: req.kind,
        pod_interface: pod_interface.clone(),
        tap: tap.clone(),
        pin_dir: pin_dir.clone(),
        table: masquerade::table_name(&req.logic_network),
        dhcp: None,
    };
    write_record(&path, &record)?;

    let result = (|| -> Result<Added> {
        // The guest's MAC is what KubeVirt copies to the domain: the pod
        // interface's (the connectivity plugin gave it the VM spec's
        // macAddress of a secondary network, when there is one).
        let pod_mac = pod_link.mac.map(Mac).ok_or_else(|| Error::Step {
            iface: req.logic_network.clone(),
            step: "read pod interface MAC",
            source: format!("{pod_interface} has no MAC").into(),
        })?;
        let planned = PlannedInterface {
            name: req.logic_network.clone(),
            index: bridge_index(&req.logic_network),
            binding: req.kind,
            network: if pod_interface == PRIMARY_POD_INTERFACE {
                "pod".into()
            } else {
                req.logic_network.clone()
            },
            pod_interface: pod_interface.clone(),
            mac: Some(pod_mac.to_string()),
            ports: Vec::new(),
            status: None,
        };
        let target = Target {
            tap: tap.clone(),
            pin_dir: pin_dir.clone(),
            keep_pod_mac: true,
        };
        let mut opts = req.options.clone();
        // The node agent serves DHCP from the record, not this process.
        opts.dhcp = false;
        let resolv = match &req.dns {
            Some(r) => r.clone(),
            None => dhcp::Resolv::read(&opts.resolv_conf).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no DNS settings for the guest");
                dhcp::Resolv::default()
            }),
        };
        let (bound, _servers) =
            crate::bind_one(&vm, &planned, &target, &req.netns, &opts, &resolv)?;
        let tap_link = {
            let t = tap.clone();
            let network = req.logic_network.clone();
            netattach::netns::run_in(&req.netns, move || {
                netlink::Netlink::new()
                    .and_then(|n| n.link(&t))
                    .map_err(crate::step(&network, "find tap"))
            })??
        };
        if let (Some(lease), Some(device)) = (bound.lease.clone(), bound.dhcp_device.clone()) {
            let ipv6 = match (&bound.lease6, &tap_link) {
                (Some(l6), Some(t)) => Some((
                    TapRecord {
                        name: t.name.clone(),
                        index: t.index,
                        mac: t.mac.map(Mac).unwrap_or(pod_mac),
                    },
                    l6.clone(),
                )),
                _ => None,
            };
            record.dhcp = Some(DhcpRecord {
                device,
                lease,
                ipv6,
            });
        }
        write_record(&path, &record)?;
        Ok(Added {
            pod_interface: pod_interface.clone(),
            tap: tap.clone(),
            tap_mac: tap_link.and_then(|t| t.mac).map(Mac),
            guest_mac: bound.mac,
            mtu: pod_link.mtu,
        })
    })();
    if let Err(e) = &result {
        tracing::warn!(network = %req.logic_network, error = %e, "binding ADD failed: undoing it");
        match undo(&record) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(undo_err) => {
                tracing::error!(error = %undo_err, "undo failed; the record is kept for DEL")
            }
        }
    }
    result
}

/// A per-network index in 0..200 for the bridge binding's DHCP server
/// address (169.254.75.x), so two bridges of one pod differ.
fn bridge_index(network: &str) -> usize {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(network.as_bytes());
    usize::from(d[0]) % 200
}

/// DEL: undoes the binding from its record and removes the record. Nothing
/// recorded, or already gone, is success.
pub fn del(records_dir: &Path, container_id: &str, logic_network: &str) -> Result<()> {
    let path = record_path(records_dir, container_id, logic_network);
    let Some(record) = read_record(&path)? else {
        tracing::debug!(network = logic_network, "DEL: no binding recorded");
        return Ok(());
    };
    undo(&record)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_step("remove binding record")(e))
        }
        _ => Ok(()),
    }
}

/// CHECK: the tap and (masquerade) the pod interface still exist.
pub fn check(records_dir: &Path, container_id: &str, logic_network: &str) -> Result<()> {
    let path = record_path(records_dir, container_id, logic_network);
    let record = read_record(&path)?.ok_or_else(|| Error::Step {
        iface: logic_network.to_string(),
        step: "find binding record",
        source: "no binding was added for this container and network".into(),
    })?;
    let (tap, pod_if, network) = (
        record.tap.clone(),
        record.pod_interface.clone(),
        logic_network.to_string(),
    );
    netattach::netns::run_in(&record.netns, move || -> Result<()> {
        let n = netlink::Netlink::new().map_err(crate::step(&network, "open netlink"))?;
        for name in [&tap, &pod_if] {
            if n.link(name)
                .map_err(crate::step(&network, "find link"))?
                .is_none()
            {
                return Err(Error::Step {
                    iface: network.clone(),
                    step: "check binding",
                    source: format!("{name} is missing").into(),
                });
            }
        }
        Ok(())
    })?
}

/// Removes what a record's binding made; what is gone already is fine.
fn undo(r: &Record) -> Result<()> {
    // Pins live in bpffs, outside the pod: removed even when the pod's
    // namespace is gone.
    if !r.netns.exists() {
        if r.pin_dir.exists() {
            std::fs::remove_dir_all(&r.pin_dir).map_err(io_step("remove eBPF pins"))?;
        }
        return Ok(());
    }
    let r2 = r.clone();
    match r.kind {
        BindingKind::Sriov => Ok(()),
        BindingKind::Bridge => netattach::netns::run_in(&r.netns, move || {
            crate::bridge::unbind(&r2.pod_interface, &r2.tap).map(|_| ())
        })?
        .map_err(crate::step(&r.logic_network, "undo bridge binding")),
        BindingKind::Masquerade => netattach::netns::run_in(&r.netns, move || -> Result<()> {
            virtlink_xdp::nat::detach(&r2.pin_dir)
                .map_err(crate::step(&r2.logic_network, "detach eBPF masquerade"))?;
            masquerade::unload(&r2.table)
                .map_err(crate::step(&r2.logic_network, "remove nftables table"))?;
            netlink::Netlink::new()
                .and_then(|n| n.del_link(&r2.tap))
                .map_err(crate::step(&r2.logic_network, "delete tap"))
        })?,
    }
}

/// The DHCP and IPv6 servers of every binding record in a directory, kept
/// by a long-lived process (the node agent): [`Servers::sync`] starts the
/// servers of new records and stops those whose record or namespace is
/// gone.
#[derive(Debug, Default)]
pub struct Servers {
    /// Per record file: the record, the file's mtime when it was read, the
    /// servers.
    running: BTreeMap<PathBuf, (Record, Option<SystemTime>, Vec<crate::Server>)>,
}

impl Servers {
    pub fn new() -> Self {
        Self::default()
    }

    /// The record files currently served.
    pub fn served(&self) -> Vec<PathBuf> {
        self.running.keys().cloned().collect()
    }

    /// Brings the running servers in line with `dir`. Errors starting one
    /// record's servers are logged and retried at the next sync.
    pub fn sync(&mut self, dir: &Path) {
        let mut wanted: BTreeMap<PathBuf, (Record, Option<SystemTime>)> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                // A served record whose file did not change is not read again.
                let modified = e.metadata().and_then(|m| m.modified()).ok();
                if let Some((r, read_at, _)) = self.running.get(&path) {
                    if modified.is_some() && *read_at == modified && r.netns.exists() {
                        wanted.insert(path, (r.clone(), modified));
                        continue;
                    }
                }
                match read_record(&path) {
                    Ok(Some(r)) if r.dhcp.is_some() && r.netns.exists() => {
                        wanted.insert(path, (r, modified));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping binding record"),
                }
            }
        }
        let stale: Vec<PathBuf> = self
            .running
            .iter()
            .filter(|(path, (r, _, _))| wanted.get(*path).map(|(w, _)| w) != Some(r))
            .map(|(path, _)| path.clone())
            .collect();
        for path in stale {
            if let Some((r, _, servers)) = self.running.remove(&path) {
                tracing::info!(network = %r.logic_network, container = %r.container_id, "stopping binding DHCP");
                for s in servers {
                    s.stop();
                }
            }
        }
        for (path, (r, modified)) in wanted {
            if let Some(running) = self.running.get_mut(&path) {
                // The same record rewritten: remember the new mtime.
                running.1 = modified;
                continue;
            }
            match start_servers(&r) {
                Ok(servers) => {
                    tracing::info!(network = %r.logic_network, container = %r.container_id, "serving binding DHCP");
                    self.running.insert(path, (r, modified, servers));
                }
                Err(e) => {
                    tracing::warn!(network = %r.logic_network, error = %e, "start binding DHCP")
                }
            }
        }
    }
}

fn start_servers(r: &Record) -> Result<Vec<crate::Server>> {
    let Some(d) = &r.dhcp else {
        return Ok(Vec::new());
    };
    let mut out = vec![crate::Server::Dhcp(
        dhcp::DhcpServer::start(&r.netns, &d.device, d.lease.clone())
            .map_err(crate::step(&r.logic_network, "start DHCP server"))?,
    )];
    if let Some((tap, lease6)) = &d.ipv6 {
        let tap = dhcpv6::Tap {
            name: tap.name.clone(),
            index: tap.index,
            mac: tap.mac,
        };
        out.push(crate::Server::Ipv6(
            dhcpv6::Ipv6Server::start(&r.netns, tap, lease6.clone()).map_err(crate::step(
                &r.logic_network,
                "start IPv6 server (RA, DHCPv6)",
            ))?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_follow_kubevirt() {
        assert_eq!(tap_for("eth0"), "tap0");
        assert_eq!(tap_for("net1"), "tap1");
        let pod = crate::launcher::pod_interface_name("blue");
        assert_eq!(pod.len(), 14);
        assert_eq!(tap_for(&pod), format!("tap{}", &pod[3..]));
    }

    #[test]
    fn vm_name_from_launcher_pod() {
        assert_eq!(vm_name(Some("virt-launcher-fedora-abcde")), "fedora");
        assert_eq!(vm_name(Some("virt-launcher-my-vm-x7k2q")), "my-vm");
        assert_eq!(vm_name(Some("plainpod")), "plainpod");
        assert_eq!(vm_name(None), "vm");
    }

    #[test]
    fn record_paths_are_safe_file_names() {
        let p = record_path(Path::new("/s"), "abc", "ns/net one");
        assert_eq!(p, Path::new("/s/abc_ns_net_one.json"));
    }
}
