//! The CNI verbs as virtlink-cni performs them: select networks, call the
//! delegates, keep state, report network-status, clean up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use netattach::selection::{self, NetworkSelection};
use netattach::status::NetworkStatus;
use netattach::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use serde_json::{Map, Value};

use crate::config::{ClusterNetwork, NetConf};
use crate::delegate::{self, Invocation, NetworkList, Resolved};
use crate::source::{PodInfo, Services, Source};
use crate::spec::{code, CniError, CniResult, Env, Version};
use crate::state::{Attachment, PodRecord, Store};

type Result<T> = std::result::Result<T, CniError>;

fn state_err(e: crate::state::Error) -> CniError {
    CniError::new(code::IO_FAILURE, crate::error_chain(&e))
}

/// A network chosen for the pod, resolved to a delegate, before ADD.
#[derive(Debug)]
struct Planned {
    network: String,
    ifname: String,
    is_default: bool,
    /// A network binding plugin entry: see [`Stage`].
    binding: bool,
    resolved: Resolved,
    runtime_config: Map<String, Value>,
    default_route: Vec<String>,
    device_info: Option<netattach::status::DeviceInfo>,
}

/// Pod identity from `CNI_ARGS`.
fn pod_ref(env: &Env) -> Option<(String, String)> {
    Some((
        env.arg("K8S_POD_NAMESPACE")?.to_string(),
        env.arg("K8S_POD_NAME")?.to_string(),
    ))
}

/// ADD: attach every selected network, or none.
pub fn add(env: &Env, conf: &NetConf) -> Result<CniResult> {
    add_with(env, conf, &Services::default())
}

/// ADD with the pod/NAD source of the host process (the agent's cache).
pub fn add_with(env: &Env, conf: &NetConf, services: &Services) -> Result<CniResult> {
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network namespace {:?} does not exist", env.netns),
        ));
    }
    let t0 = std::time::Instant::now();
    let phase = |what: &str| {
        tracing::debug!(
            phase = what,
            at_us = t0.elapsed().as_micros() as u64,
            "ADD phase"
        )
    };
    let store = Store::new(&conf.state_dir);
    let _lock = store.lock(false).map_err(state_err)?;

    // A repeated ADD (e.g. a runtime retry after a timeout) starts clean.
    if store
        .load(&env.container_id, &env.ifname)
        .map_err(state_err)?
        .is_some()
    {
        tracing::info!(container = %env.container_id, "ADD for a known attachment: deleting the old one first");
        del_record(
            env,
            &store,
            &env.container_id,
            &env.ifname,
            Some(env.netns.as_str()),
            conf.parallel,
        )?;
    }

    phase("locked");
    let source = Source::for_call(conf, services).map_err(|e| e.into_cni())?;
    let pod = lookup_pod(env, &source)?;
    phase("pod looked up");
    let plan = plan(env, conf, &source, pod.as_ref())?;
    phase("planned");

    let mut record = PodRecord {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        cni_args: env.args.clone(),
        cni_version: conf.cni_version.to_string(),
        network_name: conf.name.clone(),
        pod_namespace: pod.as_ref().map(|p| p.namespace.clone()),
        pod_name: pod.as_ref().map(|p| p.name.clone()),
        pod_uid: pod.as_ref().and_then(|p| p.uid.clone()),
        attachments: Vec::new(),
    };

    // Every planned attachment is recorded before any delegate runs, so a
    // crash mid-ADD leaves enough on disk for DEL to clean up.
    record.attachments = plan
        .iter()
        .map(|p| Attachment {
            network: p.network.clone(),
            ifname: p.ifname.clone(),
            is_default: p.is_default,
            binding: p.binding,
            delegate: p.resolved.list.clone(),
            runtime_config: p.runtime_config.clone(),
            result: None,
            device_info: p.device_info.clone(),
        })
        .collect();
    store.save(&record).map_err(state_err)?;
    phase("recorded");

    // The cluster network first; then the secondary networks, each on its
    // own interface, concurrently (or one by one with `"parallel": false`).
    let add_one = |p: &Planned| {
        let inv = Invocation {
            container_id: &env.container_id,
            netns: &env.netns,
            ifname: &p.ifname,
            args: &env.args,
            path: &env.path,
        };
        p.resolved
            .add(&inv, &p.runtime_config)
            .and_then(|raw| CniResult::from_json(raw.clone()).map(|r| (raw, r)))
            .map_err(|e| {
                e.context(format!(
                    "network {} (interface {}) ADD",
                    p.network, p.ifname
                ))
            })
    };
    let outcomes = run_staged(
        &plan,
        conf.parallel,
        |p| Stage::of(p.is_default, p.binding),
        add_one,
    );
    let tried = outcomes.len();
    let mut results = Vec::with_capacity(plan.len());
    let mut first_error = None;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok((raw, parsed)) => {
                record.attachments[i].result = Some(raw);
                results.push(parsed);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Only what was tried is undone: networks after a failure never started.
        record.attachments.truncate(tried);
        rollback(env, &store, &record, conf.parallel);
        return Err(e);
    }
    phase("delegates added");
    // Not fsynced: after a crash the durable record written above still
    // drives a complete DEL; only the results (prevResult) would be missing.
    if let Err(e) = store.save_results(&record) {
        rollback(env, &store, &record, conf.parallel);
        return Err(state_err(e));
    }
    phase("results recorded");

    let finish = || -> Result<()> {
        let route_owner = apply_default_routes(env, &plan)?;
        let statuses = network_statuses(&plan, &results, route_owner);
        if let Some(pod) = &pod {
            write_status_file(conf, pod, &statuses)?;
            source
                .publish_status(pod, &statuses)
                .map_err(|e| e.into_cni().context("publish network-status"))?;
        }
        Ok(())
    };
    if let Err(e) = finish() {
        rollback(env, &store, &record, conf.parallel);
        return Err(e);
    }
    phase("status written");

    let default_idx = plan.iter().position(|p| p.is_default).unwrap_or(0);
    results
        .get(default_idx)
        .cloned()
        .unwrap_or_default()
        .convert_to(conf.cni_version)
}

/// Undoes a partial ADD: DEL every attachment recorded so far, newest first.
fn rollback(env: &Env, store: &Store, record: &PodRecord, parallel: bool) {
    tracing::warn!(container = %env.container_id, "ADD failed: removing the attachments made so far");
    let mut rec = record.clone();
    let _ = store.save(&rec);
    match del_attachments(env, &mut rec, Some(env.netns.as_str()), parallel) {
        Ok(()) => {
            let _ = store.remove(&rec.container_id, &rec.ifname);
        }
        Err(e) => {
            // Left on disk so a later DEL or GC can finish the job.
            tracing::error!(error = %e, "rollback DEL failed; state kept for a later DEL/GC");
            let _ = store.save(&rec);
        }
    }
}

fn lookup_pod(env: &Env, source: &Source) -> Result<Option<PodInfo>> {
    let Some((ns, name)) = pod_ref(env) else {
        return Ok(None);
    };
    let pod = source
        .pod(&ns, &name, env.arg("K8S_POD_UID"))
        .map_err(|e| e.into_cni())?;
    if let (Some(pod), Some(want)) = (&pod, env.arg("K8S_POD_UID")) {
        if let Some(have) = &pod.uid {
            if have != want {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("pod {ns}/{name}: expected UID {want} but the source has {have}"),
                ));
            }
        }
    }
    if pod.is_none() && source.is_authoritative() {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("pod {ns}/{name} not found in the Kubernetes API"),
        ));
    }
    Ok(pod)
}

/// Chooses the networks: the cluster network as CNI_IFNAME, then the
/// annotation's networks as net1, net2, ... unless named; resolves each
/// delegate so that bad input fails before anything is created.
fn plan(env: &Env, conf: &NetConf, source: &Source, pod: Option<&PodInfo>) -> Result<Vec<Planned>> {
    let cache = Store::new(&conf.state_dir).plugin_cache_dir();
    let pod_ns = pod.map(|p| p.namespace.as_str()).unwrap_or("default");
    let mut planned = Vec::new();
    let mut devices = DeviceLookup {
        conf,
        pod_uid: env
            .arg("K8S_POD_UID")
            .map(str::to_string)
            .or_else(|| pod.and_then(|p| p.uid.clone())),
        loaded: None,
    };

    // The cluster network: the pod's override, else the plugin config's.
    let override_nad = pod.and_then(|p| p.annotations.get(DEFAULT_NETWORK_ANNOTATION));
    let (network, mut list, resource) = match (override_nad, &conf.cluster_network) {
        (Some(name), _) => {
            let sel = selection::parse_short(name.trim()).map_err(|e| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("annotation {DEFAULT_NETWORK_ANNOTATION}: {e}"),
                )
            })?;
            nad_network(
                source,
                sel.namespace_or(pod_ns),
                &sel.name,
                conf.cni_version,
            )?
        }
        (None, Some(ClusterNetwork::Inline(v))) => {
            let list = NetworkList::from_value(v, conf.cni_version)
                .map_err(|e| e.context("clusterNetwork"))?;
            (list.name.clone(), list, None)
        }
        (None, Some(ClusterNetwork::Nad(name))) => {
            let sel = selection::parse_short(name)
                .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("clusterNetwork: {e}")))?;
            nad_network(
                source,
                sel.namespace_or(&conf.system_namespace),
                &sel.name,
                conf.cni_version,
            )?
        }
        (None, None) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "no cluster network: set clusterNetwork in the plugin config",
            ))
        }
    };
    let device_info = devices.attach(&network, resource.as_deref(), &mut list)?;
    let resolved = delegate::resolve(list, &env.path, &cache)
        .map_err(|e| e.context(format!("network {network}")))?;
    planned.push(Planned {
        network,
        ifname: env.ifname.clone(),
        is_default: true,
        binding: false,
        resolved,
        runtime_config: conf.runtime_config.clone(),
        default_route: Vec::new(),
        device_info,
    });

    // Additional networks from the annotation.
    let selections = match pod.and_then(|p| p.annotations.get(NETWORKS_ANNOTATION)) {
        Some(text) => selection::parse(text).map_err(|e| {
            let c = match e {
                selection::Error::Json(_) => code::DECODE_FAILURE,
                selection::Error::Element { .. } => code::INVALID_CONFIG,
            };
            CniError::new(c, format!("annotation {NETWORKS_ANNOTATION}: {e}"))
        })?,
        None => Vec::new(),
    };
    let mut ifnames: HashSet<String> = HashSet::from([env.ifname.clone()]);
    for (i, sel) in selections.iter().enumerate() {
        let ifname = sel
            .interface
            .clone()
            .unwrap_or_else(|| format!("net{}", i + 1));
        if !ifnames.insert(ifname.clone()) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("annotation {NETWORKS_ANNOTATION}: interface {ifname} is requested twice"),
            ));
        }
        let (network, mut list, resource) = nad_network(
            source,
            sel.namespace_or(pod_ns),
            &sel.name,
            conf.cni_version,
        )?;
        let device_info = devices.attach(&network, resource.as_deref(), &mut list)?;
        if let Some(args) = &sel.cni_args {
            add_cni_args(&mut list, args);
        }
        let resolved = delegate::resolve(list, &env.path, &cache)
            .map_err(|e| e.context(format!("network {network}")))?;
        let binding = sel
            .cni_args
            .as_ref()
            .is_some_and(|a| a.contains_key(LOGIC_NETWORK_ARG));
        let mut runtime_config = selection_runtime_config(sel);
        // The pod's DNS (the runtime's `dns` capability) is for the guest
        // behind a binding plugin too.
        if let (true, Some(dns)) = (binding, conf.runtime_config.get("dns")) {
            runtime_config.insert("dns".into(), dns.clone());
        }
        planned.push(Planned {
            network,
            ifname,
            is_default: false,
            binding,
            resolved,
            runtime_config,
            default_route: sel.default_route.clone(),
            device_info,
        });
    }
    // Binding plugin entries run after every network they may bind.
    planned.sort_by_key(|p| Stage::of(p.is_default, p.binding));
    Ok(planned)
}

/// The `cni-args` key KubeVirt's virt-controller sets on the networks
/// annotation entry of a network binding plugin (the VM network it binds).
pub const LOGIC_NETWORK_ARG: &str = "logicNetworkName";

/// Gives every plugin of `list` the selection's `cni-args` as `args.cni`
/// (the CNI conventions' `args` field, where Multus puts them too).
fn add_cni_args(list: &mut NetworkList, cni_args: &Map<String, Value>) {
    for plugin in &mut list.plugins {
        let args = plugin
            .entry("args")
            .or_insert_with(|| Value::Object(Map::new()));
        if !args.is_object() {
            *args = Value::Object(Map::new());
        }
        if let Some(args) = args.as_object_mut() {
            let cni = args
                .entry("cni")
                .or_insert_with(|| Value::Object(Map::new()));
            if !cni.is_object() {
                *cni = Value::Object(Map::new());
            }
            if let Some(cni) = cni.as_object_mut() {
                for (k, v) in cni_args {
                    cni.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// The order networks are added in (and deleted in, reversed): the cluster
/// network alone, then the secondary networks (concurrently), then the
/// network binding plugins, which act on the interfaces the others made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Cluster,
    Secondary,
    Binding,
}

impl Stage {
    fn of(is_default: bool, binding: bool) -> Self {
        match (is_default, binding) {
            (true, _) => Stage::Cluster,
            (false, false) => Stage::Secondary,
            (false, true) => Stage::Binding,
        }
    }
}

/// Capability arguments a selection element asks for (libcni names).
fn selection_runtime_config(sel: &NetworkSelection) -> Map<String, Value> {
    let mut rc = Map::new();
    if let Some(mac) = &sel.mac {
        rc.insert("mac".into(), Value::String(mac.clone()));
    }
    if !sel.ips.is_empty() {
        rc.insert("ips".into(), serde_json::json!(sel.ips));
    }
    if let Some(pm) = &sel.port_mappings {
        rc.insert("portMappings".into(), pm.clone());
    }
    if let Some(bw) = &sel.bandwidth {
        rc.insert("bandwidth".into(), bw.clone());
    }
    rc
}

/// A NAD resolved to a delegate list, with the device plugin resource it
/// names (`k8s.v1.cni.cncf.io/resourceName`), if any.
fn nad_network(
    source: &Source,
    ns: &str,
    name: &str,
    default_version: Version,
) -> Result<(String, NetworkList, Option<String>)> {
    let id = format!("{ns}/{name}");
    let nad = source
        .nad(ns, name)
        .map_err(|e| e.into_cni().context(format!("network {id}")))?
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("network {id}: NetworkAttachmentDefinition not found"),
            )
        })?;
    let text = nad.config.filter(|c| !c.trim().is_empty()).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("network {id}: NetworkAttachmentDefinition has no spec.config"),
        )
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("network {id}: decode spec.config: {e}"),
        )
    })?;
    let mut list = NetworkList::from_value(&value, default_version)
        .map_err(|e| e.context(format!("network {id}")))?;
    if list.name.is_empty() {
        list.name = name.to_string();
    }
    let resource = nad
        .annotations
        .get(netattach::RESOURCE_NAME_ANNOTATION)
        .filter(|r| !r.is_empty())
        .cloned();
    Ok((id, list, resource))
}

/// Devices allocated to the pod, read once per ADD when a network needs one.
struct DeviceLookup<'a> {
    conf: &'a NetConf,
    pod_uid: Option<String>,
    loaded: Option<crate::devices::Allocations>,
}

impl DeviceLookup<'_> {
    /// Gives `list` the next device of `resource` (as `deviceID` in the
    /// delegate config, where SR-IOV style plugins read it) and returns the
    /// device plugin's device-info for it.
    fn attach(
        &mut self,
        network: &str,
        resource: Option<&str>,
        list: &mut NetworkList,
    ) -> Result<Option<netattach::status::DeviceInfo>> {
        let Some(resource) = resource else {
            return Ok(None);
        };
        let uid = self.pod_uid.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("network {network}: needs resource {resource} but the pod UID is unknown"),
            )
        })?;
        let allocations = match &mut self.loaded {
            Some(a) => a,
            None => self.loaded.insert(crate::devices::Allocations::load(
                &self.conf.kubelet_checkpoint,
                &uid,
            )?),
        };
        let device = allocations.take(resource, network)?;
        if let Some(first) = list.plugins.first_mut() {
            first.insert("deviceID".into(), Value::String(device.clone()));
        }
        crate::devices::read_device_info(&self.conf.device_info_dir, resource, &device)
    }
}

/// Applies `default-route` requests; returns the index of the attachment that
/// now owns the default route.
fn apply_default_routes(env: &Env, plan: &[Planned]) -> Result<usize> {
    let Some((idx, p)) = plan
        .iter()
        .enumerate()
        .find(|(_, p)| !p.default_route.is_empty())
    else {
        return Ok(0);
    };
    let gateways: Vec<std::net::IpAddr> = p
        .default_route
        .iter()
        .filter_map(|g| g.parse().ok())
        .collect();
    crate::routes::set_default_routes(Path::new(&env.netns), &p.ifname, &gateways).map_err(
        |e| {
            CniError::new(code::IO_FAILURE, crate::error_chain(&e))
                .context(format!("network {} default-route", p.network))
        },
    )?;
    Ok(idx)
}

fn network_statuses(
    plan: &[Planned],
    results: &[CniResult],
    route_owner: usize,
) -> Vec<NetworkStatus> {
    plan.iter()
        .zip(results)
        .enumerate()
        .map(|(i, (p, r))| {
            let ips: Vec<String> = r
                .ips_of(&p.ifname)
                .map(|ip| ip.address.split('/').next().unwrap_or_default().to_string())
                .collect();
            let default = i == route_owner;
            let gateway = if default {
                if p.default_route.is_empty() {
                    r.ips_of(&p.ifname)
                        .filter_map(|ip| ip.gateway.clone())
                        .collect()
                } else {
                    p.default_route.clone()
                }
            } else {
                Vec::new()
            };
            NetworkStatus {
                name: p.network.clone(),
                interface: Some(p.ifname.clone()),
                ips,
                mac: r
                    .sandbox_interface(&p.ifname)
                    .and_then(|i| r.interfaces.get(i))
                    .map(|i| i.mac.clone())
                    .filter(|m| !m.is_empty()),
                mtu: r
                    .sandbox_interface(&p.ifname)
                    .and_then(|i| r.interfaces.get(i))
                    .and_then(|i| i.mtu),
                default,
                dns: Some(r.dns.clone()).filter(|d| !d.is_empty()),
                gateway,
                device_info: p.device_info.clone(),
            }
        })
        .collect()
}

/// The standalone network-status file of a pod.
pub fn status_file(conf: &NetConf, namespace: &str, name: &str) -> PathBuf {
    conf.status_dir.join(namespace).join(format!("{name}.json"))
}

fn write_status_file(conf: &NetConf, pod: &PodInfo, statuses: &[NetworkStatus]) -> Result<()> {
    let path = status_file(conf, &pod.namespace, &pod.name);
    let bytes = serde_json::to_vec_pretty(statuses).unwrap_or_default();
    // Informational and rewritten on every ADD: atomic, but not fsynced.
    crate::state::write_replace(&path, &bytes).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("write network-status {}: {e}", path.display()),
        )
    })
}

/// DEL: delete every recorded attachment; unknown attachments and gone
/// namespaces are fine, real delegate errors are reported.
pub fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let store = Store::new(&conf.state_dir);
    let _lock = store.lock(false).map_err(state_err)?;
    del_record(
        env,
        &store,
        &env.container_id,
        &env.ifname,
        Some(env.netns.as_str()),
        conf.parallel,
    )?;
    if let Some((ns, name)) = pod_ref(env) {
        let _ = std::fs::remove_file(status_file(conf, &ns, &name));
    }
    Ok(())
}

fn del_record(
    env: &Env,
    store: &Store,
    container_id: &str,
    ifname: &str,
    netns: Option<&str>,
    parallel: bool,
) -> Result<()> {
    let Some(mut record) = store.load(container_id, ifname).map_err(state_err)? else {
        tracing::debug!(
            container = container_id,
            "DEL of an unknown attachment: nothing to do"
        );
        return Ok(());
    };
    let result = del_attachments(env, &mut record, netns, parallel);
    if record.attachments.is_empty() {
        store.remove(container_id, ifname).map_err(state_err)?;
    } else {
        store.save(&record).map_err(state_err)?;
    }
    result
}

/// Calls DEL for each attachment, the secondary networks first (concurrently
/// when `parallel`) and the cluster network last, dropping the ones that
/// succeed from `record`; returns the first error.
fn del_attachments(
    env: &Env,
    record: &mut PodRecord,
    netns: Option<&str>,
    parallel: bool,
) -> Result<()> {
    // A namespace that is gone is passed as empty: delegates then only
    // release what lives outside it (IPAM, host links).
    let netns = netns
        .filter(|p| !p.is_empty())
        .or(Some(record.netns.as_str()))
        .filter(|p| !p.is_empty() && Path::new(p).exists())
        .unwrap_or("")
        .to_string();
    // Newest first; the cluster network (added first) goes last.
    let mut order: Vec<Attachment> = std::mem::take(&mut record.attachments);
    order.reverse();
    let del_one = |att: &Attachment| {
        att.delegate
            .types()
            .map(|t| delegate::find(t, &env.path))
            .collect::<Result<Vec<_>>>()
            .and_then(|binaries| {
                let resolved = Resolved {
                    list: att.delegate.clone(),
                    binaries,
                };
                let inv = Invocation {
                    container_id: &record.container_id,
                    netns: &netns,
                    ifname: &att.ifname,
                    args: &record.cni_args,
                    path: &env.path,
                };
                resolved.del(&inv, &att.runtime_config, att.result.as_ref())
            })
    };
    let outcomes = run_all(
        &order,
        parallel,
        |a| Stage::of(a.is_default, a.binding),
        del_one,
    );
    let mut first_error = None;
    let mut kept = Vec::new();
    for (att, outcome) in order.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => {}
            // An ADD that never completed was the delegate's to clean up (the
            // spec asks plugins to undo a failed ADD); its DEL is best effort,
            // since some plugins cannot DEL a config that never worked.
            Err(e) if att.result.is_none() => {
                tracing::warn!(network = %att.network, ifname = %att.ifname, error = %e,
                    "DEL of an attachment whose ADD never completed failed; dropping it");
            }
            Err(e) => {
                first_error.get_or_insert(e.context(format!(
                    "network {} (interface {}) DEL",
                    att.network, att.ifname
                )));
                kept.push(att);
            }
        }
    }
    kept.reverse();
    record.attachments = kept;
    first_error.map_or(Ok(()), Err)
}

/// Runs `f` on the items stage by stage (items of a stage are adjacent),
/// keeping the items' order in the outcome: the cluster network alone, the
/// secondary networks (concurrently when `parallel`), the binding plugins. Stops after a
/// stage with a failure, and in sequential mode at the first failure.
/// Returns the outcomes of the items that were tried, a prefix.
fn run_staged<T: Sync, R: Send>(
    items: &[T],
    parallel: bool,
    stage: impl Fn(&T) -> Stage,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    let mut out = Vec::with_capacity(items.len());
    for group in stages(items, &stage) {
        // Binding plugins go one by one: two of them may fall back to the
        // same pod interface, and the second must find it taken.
        if parallel && group.len() > 1 && stage(&group[0]) == Stage::Secondary {
            out.extend(concurrently(group, &f));
            if out.iter().any(|r| r.is_err()) {
                break;
            }
        } else {
            for item in group {
                let r = f(item);
                let failed = r.is_err();
                out.push(r);
                if failed {
                    return out;
                }
            }
        }
    }
    out
}

/// Runs `f` on every item (DEL goes on after failures), stage by stage
/// (each stage's items concurrently when `parallel`).
fn run_all<T: Sync, R: Send>(
    items: &[T],
    parallel: bool,
    stage: impl Fn(&T) -> Stage,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    let mut out = Vec::with_capacity(items.len());
    for group in stages(items, &stage) {
        if parallel && group.len() > 1 {
            out.extend(concurrently(group, &f));
        } else {
            out.extend(group.iter().map(&f));
        }
    }
    out
}

/// The runs of adjacent items of the same stage.
fn stages<'a, T>(items: &'a [T], stage: &impl Fn(&T) -> Stage) -> Vec<&'a [T]> {
    items.chunk_by(|a, b| stage(a) == stage(b)).collect()
}

/// One scoped thread per item; outcomes in the items' order.
fn concurrently<T: Sync, R: Send>(
    items: &[T],
    f: &(impl Fn(&T) -> Result<R> + Sync),
) -> Vec<Result<R>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(CniError::new(
                        code::DELEGATE_FAILED,
                        "delegate thread panicked",
                    ))
                })
            })
            .collect()
    })
}

/// CHECK: every recorded attachment's delegates agree the network is as set up.
pub fn check(env: &Env, conf: &NetConf) -> Result<()> {
    if !conf.cni_version.supports_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for CNI version {}", conf.cni_version),
        ));
    }
    if !Path::new(&env.netns).exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network namespace {:?} does not exist", env.netns),
        ));
    }
    let store = Store::new(&conf.state_dir);
    let _lock = store.lock(false).map_err(state_err)?;
    let record = store
        .load(&env.container_id, &env.ifname)
        .map_err(state_err)?
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "no attachment for container {} interface {}",
                    env.container_id, env.ifname
                ),
            )
        })?;
    for att in &record.attachments {
        let ctx = || format!("network {} (interface {}) CHECK", att.network, att.ifname);
        let result = att.result.as_ref().ok_or_else(|| {
            CniError::new(code::INVALID_CONFIG, "ADD never completed").context(ctx())
        })?;
        let binaries = att
            .delegate
            .types()
            .map(|t| delegate::find(t, &env.path))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.context(ctx()))?;
        let resolved = Resolved {
            list: att.delegate.clone(),
            binaries,
        };
        let inv = Invocation {
            container_id: &env.container_id,
            netns: &env.netns,
            ifname: &att.ifname,
            args: &record.cni_args,
            path: &env.path,
        };
        resolved
            .check(&inv, &att.runtime_config, result)
            .map_err(|e| e.context(ctx()))?;
    }
    Ok(())
}

/// GC: delete every attachment of this network that the runtime no longer
/// lists in `cni.dev/valid-attachments`.
pub fn gc(env: &Env, conf: &NetConf) -> Result<()> {
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let store = Store::new(&conf.state_dir);
    let _lock = store.lock(true).map_err(state_err)?;
    let mut first_error = None;
    for (cid, ifname) in store.list().map_err(state_err)? {
        if valid.contains(&(cid.clone(), ifname.clone())) {
            continue;
        }
        let record = match store.load(&cid, &ifname) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                first_error.get_or_insert(state_err(e));
                continue;
            }
        };
        if record.network_name != conf.name {
            continue;
        }
        tracing::info!(container = %cid, ifname = %ifname, "GC: removing stale attachment");
        if let Err(e) = del_record(env, &store, &cid, &ifname, None, conf.parallel) {
            first_error.get_or_insert(e);
        }
        if let (Some(ns), Some(name)) = (&record.pod_namespace, &record.pod_name) {
            let _ = std::fs::remove_file(status_file(conf, ns, name));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// STATUS: can an ADD be served now?
pub fn status(env: &Env, conf: &NetConf) -> Result<()> {
    status_with(env, conf, &Services::default())
}

/// STATUS with the pod/NAD source of the host process.
pub fn status_with(env: &Env, conf: &NetConf, services: &Services) -> Result<()> {
    let unavailable = |what: String| CniError::new(code::PLUGIN_NOT_AVAILABLE, what);
    let store = Store::new(&conf.state_dir);
    store
        .lock(false)
        .map_err(|e| unavailable(format!("state directory: {}", crate::error_chain(&e))))?;
    let source = Source::for_call(conf, services)
        .map_err(|e| unavailable(format!("pod source: {}", crate::error_chain(&e))))?;
    let list = match &conf.cluster_network {
        Some(ClusterNetwork::Inline(v)) => NetworkList::from_value(v, conf.cni_version)?,
        Some(ClusterNetwork::Nad(name)) => {
            let sel = selection::parse_short(name)
                .map_err(|e| unavailable(format!("clusterNetwork: {e}")))?;
            nad_network(
                &source,
                sel.namespace_or(&conf.system_namespace),
                &sel.name,
                conf.cni_version,
            )
            .map_err(|e| unavailable(e.msg))?
            .1
        }
        None => return Err(unavailable("no cluster network configured".into())),
    };
    let resolved = delegate::resolve(list, &env.path, &store.plugin_cache_dir())
        .map_err(|e| unavailable(format!("cluster network: {}", e.msg)))?;
    // Delegates that know STATUS are asked too.
    if resolved.list.version().supports_gc() {
        for (i, bin) in resolved.binaries.iter().enumerate() {
            let mut stdin = resolved.list.plugins[i].clone();
            stdin.insert("name".into(), Value::String(resolved.list.name.clone()));
            stdin.insert(
                "cniVersion".into(),
                Value::String(resolved.list.cni_version.clone()),
            );
            let inv = Invocation {
                container_id: "",
                netns: "",
                ifname: "",
                args: "",
                path: &env.path,
            };
            delegate::exec(
                bin,
                crate::spec::Command::Status,
                &inv,
                &Value::Object(stdin),
            )
            .map_err(|e| e.context("cluster network delegate STATUS"))?;
        }
    }
    Ok(())
}
