//! The DevicePlugin gRPC service of one pool, served on its own unix socket.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::DeviceType;
use crate::deviceinfo::DevInfoDir;
use crate::pool::{DeviceKind, PoolDevice, PoolSnapshot};
use crate::proto::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::proto::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, DeviceSpec, Empty,
    ListAndWatchResponse, NumaNode, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, TopologyInfo,
};
use crate::state::StateStore;

pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind device plugin socket {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serve device plugin socket")]
    Serve(#[source] tonic::transport::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The options every pool registers with.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// `PCIDEVICE_<RESOURCE>` style suffix: upper case, anything else than
/// letters and digits becomes `_` (`virtlink.io/sriov-a` -> `VIRTLINK_IO_SRIOV_A`).
pub fn env_suffix(resource: &str) -> String {
    resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The full device list as kubelet receives it.
pub fn list_response(snap: &PoolSnapshot) -> ListAndWatchResponse {
    ListAndWatchResponse {
        devices: snap
            .devices
            .iter()
            .map(|d| Device {
                id: d.id.clone(),
                health: if d.healthy { HEALTHY } else { UNHEALTHY }.to_string(),
                topology: match d.numa_node {
                    Some(n) if !snap.config.exclude_topology => Some(TopologyInfo {
                        nodes: vec![NumaNode { id: n }],
                    }),
                    _ => None,
                },
            })
            .collect(),
    }
}

/// One pool's DevicePlugin service.
#[derive(Debug, Clone)]
pub struct PoolService {
    snapshot: watch::Receiver<Arc<PoolSnapshot>>,
    devinfo: DevInfoDir,
    state: Arc<StateStore>,
    cancel: CancellationToken,
}

impl PoolService {
    pub fn new(
        snapshot: watch::Receiver<Arc<PoolSnapshot>>,
        devinfo: DevInfoDir,
        state: Arc<StateStore>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            snapshot,
            devinfo,
            state,
            cancel,
        }
    }

    fn current(&self) -> Arc<PoolSnapshot> {
        self.snapshot.borrow().clone()
    }

    fn allocate_container(
        &self,
        snap: &PoolSnapshot,
        ids: &[String],
    ) -> std::result::Result<ContainerAllocateResponse, Status> {
        let resource = snap.config.full_name();
        let devs = resolve(snap, ids)?;
        let mut resp = ContainerAllocateResponse::default();
        let suffix = env_suffix(&resource);
        let joined = |f: &dyn Fn(&PoolDevice) -> Option<String>| {
            let mut parts: Vec<String> = Vec::new();
            for d in &devs {
                if let Some(p) = f(d) {
                    if !parts.contains(&p) {
                        parts.push(p);
                    }
                }
            }
            parts.join(",")
        };
        match snap.config.device_type {
            DeviceType::Vlan => {
                resp.envs.insert(
                    format!("VLAN_{suffix}"),
                    joined(&|d| match &d.kind {
                        DeviceKind::Vlan { id, .. } => Some(id.to_string()),
                        DeviceKind::Pci(_) => None,
                    }),
                );
                resp.envs.insert(
                    format!("VLAN_MASTER_{suffix}"),
                    joined(&|d| match &d.kind {
                        DeviceKind::Vlan { master, .. } => Some(master.clone()),
                        DeviceKind::Pci(_) => None,
                    }),
                );
                resp.envs
                    .insert(format!("VIRTLINK_DEVICE_{suffix}"), ids.join(","));
            }
            DeviceType::NetDevice | DeviceType::Vfio => {
                resp.envs
                    .insert(format!("PCIDEVICE_{suffix}"), ids.join(","));
            }
        }
        let mut groups = BTreeSet::new();
        for d in &devs {
            if let DeviceKind::Pci(p) = &d.kind {
                if p.is_vfio() {
                    if let Some(g) = p.iommu_group {
                        groups.insert(g);
                    }
                }
            }
        }
        if !groups.is_empty() {
            resp.devices.push(dev_spec("/dev/vfio/vfio"));
            for g in groups {
                resp.devices.push(dev_spec(&format!("/dev/vfio/{g}")));
            }
        }
        if snap.config.need_vhost_net {
            resp.devices.push(dev_spec("/dev/vhost-net"));
            resp.devices.push(dev_spec("/dev/net/tun"));
        }
        for d in &devs {
            self.devinfo.write(&resource, d).map_err(|e| {
                tracing::error!(%resource, device = %d.id, error = %crate::chain(&e), "allocate");
                Status::internal(crate::chain(&e))
            })?;
        }
        Ok(resp)
    }
}

/// The pool's devices named by one container request: every id known, none twice.
fn resolve<'a>(
    snap: &'a PoolSnapshot,
    ids: &[String],
) -> std::result::Result<Vec<&'a PoolDevice>, Status> {
    let resource = snap.config.full_name();
    if ids.is_empty() {
        return Err(Status::invalid_argument(
            "container request names no devices",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut devs = Vec::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(Status::invalid_argument(format!(
                "device {id} requested twice"
            )));
        }
        let dev = snap
            .device(id)
            .ok_or_else(|| Status::not_found(format!("device {id} is not in pool {resource}")))?;
        if !dev.healthy {
            tracing::warn!(%resource, device = %id, "allocating an unhealthy device");
        }
        devs.push(dev);
    }
    Ok(devs)
}

fn dev_spec(path: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: path.to_string(),
        host_path: path.to_string(),
        permissions: "rw".to_string(),
    }
}

/// Picks `size` devices from `available`: `must` first, then devices on the
/// same PF and NUMA node as the allocation's anchor, then the same NUMA node,
/// then the rest; devices that pods hold come last. Without `must`, the anchor
/// is the smallest (PF, NUMA) group of free devices that fits the whole
/// request, or the largest group when none fits.
pub fn preferred(
    snap: &PoolSnapshot,
    available: &[String],
    must: &[String],
    size: usize,
    held: &BTreeSet<String>,
) -> Vec<String> {
    type Key = (Option<i64>, Option<String>);
    let key_of = |id: &str| -> Key {
        snap.device(id)
            .map_or((None, None), |d| (d.numa_node, d.pf_key()))
    };
    let mut out: Vec<String> = Vec::new();
    for id in must {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    let candidates: Vec<&String> = available.iter().filter(|id| !out.contains(id)).collect();
    let needed = size.saturating_sub(out.len());
    let anchor: Option<Key> = match out.first() {
        Some(first) => Some(key_of(first)),
        None => {
            let mut groups: BTreeMap<Key, usize> = BTreeMap::new();
            for id in &candidates {
                if !held.contains(id.as_str()) && snap.device(id).is_some_and(|d| d.healthy) {
                    *groups.entry(key_of(id)).or_default() += 1;
                }
            }
            let fitting = groups
                .iter()
                .filter(|(_, n)| **n >= needed)
                .min_by_key(|(_, n)| **n);
            fitting
                .or_else(|| groups.iter().max_by_key(|(_, n)| **n))
                .map(|(k, _)| k.clone())
        }
    };
    let mut ranked: Vec<((bool, bool, bool), &String)> = candidates
        .into_iter()
        .map(|id| {
            let (numa, pf) = key_of(id);
            let (same_numa, same_pf) = match &anchor {
                Some((an, ap)) => (numa == *an, pf == *ap),
                None => (true, true),
            };
            let busy = held.contains(id.as_str()) || !snap.device(id).is_some_and(|d| d.healthy);
            ((busy, !(same_pf && same_numa), !same_numa), id)
        })
        .collect();
    ranked.sort();
    out.extend(ranked.into_iter().take(needed).map(|(_, id)| id.clone()));
    out
}

type ListStream =
    Pin<Box<dyn Stream<Item = std::result::Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PoolService {
    async fn get_device_plugin_options(
        &self,
        _req: Request<Empty>,
    ) -> std::result::Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(
        &self,
        _req: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListAndWatchStream>, Status> {
        let mut rx = self.snapshot.clone();
        let cancel = self.cancel.clone();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let resp = {
                    let snap = rx.borrow_and_update();
                    list_response(&snap)
                };
                tracing::debug!(devices = resp.devices.len(), "ListAndWatch send");
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tx.closed() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<PreferredAllocationRequest>,
    ) -> std::result::Result<Response<PreferredAllocationResponse>, Status> {
        let snap = self.current();
        let held = self.state.held(&snap.config.full_name());
        let mut resp = PreferredAllocationResponse::default();
        for c in req.into_inner().container_requests {
            let size = usize::try_from(c.allocation_size)
                .map_err(|_| Status::invalid_argument("negative allocation_size"))?;
            resp.container_responses
                .push(ContainerPreferredAllocationResponse {
                    device_i_ds: preferred(
                        &snap,
                        &c.available_device_i_ds,
                        &c.must_include_device_i_ds,
                        size,
                        &held,
                    ),
                });
        }
        Ok(Response::new(resp))
    }

    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> std::result::Result<Response<AllocateResponse>, Status> {
        let snap = self.current();
        let resource = snap.config.full_name();
        let req = req.into_inner();
        if req.container_requests.is_empty() {
            return Err(Status::invalid_argument("no container requests"));
        }
        // Check every container's ids before writing anything.
        for c in &req.container_requests {
            resolve(&snap, &c.devices_ids)?;
        }
        let mut resp = AllocateResponse::default();
        let mut all = Vec::new();
        for c in &req.container_requests {
            resp.container_responses
                .push(self.allocate_container(&snap, &c.devices_ids)?);
            all.extend(c.devices_ids.iter().cloned());
        }
        if let Err(e) = self.state.record(&resource, &all) {
            // The allocation itself is done; a lost record only weakens the
            // preference after a restart, so the pod is not failed for it.
            tracing::error!(%resource, error = %crate::chain(&e), "record allocation");
        }
        tracing::info!(%resource, devices = ?all, "allocated");
        Ok(Response::new(resp))
    }

    async fn pre_start_container(
        &self,
        _req: Request<PreStartContainerRequest>,
    ) -> std::result::Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// Binds a pool's socket, replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let berr = |source| Error::Bind {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(berr(e)),
    }
    UnixListener::bind(path).map_err(berr)
}

/// Serves `svc` on `listener` until `cancel` fires.
pub async fn serve(
    listener: UnixListener,
    svc: PoolService,
    cancel: CancellationToken,
) -> Result<()> {
    tonic::transport::Server::builder()
        .add_service(DevicePluginServer::new(svc))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), cancel.cancelled_owned())
        .await
        .map_err(Error::Serve)
}
