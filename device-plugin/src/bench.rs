//! The benchmark behind `virtlink-device-plugin bench`: the real plugin
//! (in-process, same code as the binary) against a fake sysfs tree and an
//! in-process kubelet stand-in, measuring Allocate latency over the unix
//! socket and the delay from a VF appearing in sysfs to the ListAndWatch
//! update that carries it.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::fakesys::{FakeSysfs, VfSpec};
use crate::plugin::{self, Settings};
use crate::proto::device_plugin_client::DevicePluginClient;
use crate::proto::registration_server::{Registration, RegistrationServer};
use crate::proto::{AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest};
use crate::registration::{unix_channel, KUBELET_SOCKET};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("set up bench dir")]
    Setup(#[source] std::io::Error),
    #[error("bench step {0} timed out")]
    Timeout(&'static str),
    #[error("bench step {0}")]
    Grpc(&'static str, #[source] Box<Status>),
    #[error("bench: connect to plugin")]
    Connect(#[from] crate::registration::Error),
    #[error("bench: plugin exited")]
    Plugin(#[from] plugin::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A kubelet `Registration` server on `<dir>/kubelet.sock` that reports
/// every RegisterRequest on a channel.
#[derive(Debug)]
pub struct FakeKubelet {
    pub registrations: mpsc::UnboundedReceiver<RegisterRequest>,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct RegistrationSvc(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for RegistrationSvc {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> std::result::Result<Response<Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(Empty {}))
    }
}

impl FakeKubelet {
    pub fn start(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(KUBELET_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(RegistrationSvc(tx)))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    c.cancelled_owned(),
                )
                .await;
        });
        Ok(Self {
            registrations: rx,
            cancel,
        })
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchParams {
    pub vfs_per_pf: u32,
    pub allocations: usize,
    pub rounds: usize,
    pub rescan_interval: Duration,
}

/// Summary of a set of samples.
#[derive(Debug, Clone)]
pub struct Stats {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Stats {
    pub fn of(mut v: Vec<Duration>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort();
        let at = |q: f64| {
            // Nearest-rank percentile.
            let rank = (q * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        let total: Duration = v.iter().sum();
        Some(Self {
            n: v.len(),
            min: v[0],
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: v[v.len() - 1],
            mean: total / u32::try_from(v.len()).unwrap_or(u32::MAX),
        })
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "n={} min={:.0}us p50={:.0}us p90={:.0}us p99={:.0}us max={:.0}us mean={:.0}us",
            self.n,
            us(self.min),
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.max),
            us(self.mean)
        )
    }
}

/// Results of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub allocate: Stats,
    pub vf_appear: Stats,
    pub vf_disappear: Stats,
}

fn vf_addr(bus: u8, index: u32) -> String {
    format!("0000:{bus:02x}:{:02x}.{}", 2 + index / 8, index % 8)
}

/// Runs the benchmark in a temp dir.
pub async fn run(p: &BenchParams) -> Result<BenchReport> {
    let dir = tempfile::tempdir().map_err(Error::Setup)?;
    let root = dir.path();
    let fake = FakeSysfs::new(&root.join("sys")).map_err(Error::Setup)?;
    let kubelet_dir = root.join("kubelet");
    std::fs::create_dir_all(&kubelet_dir).map_err(Error::Setup)?;
    for (pf, ifname, bus, numa) in [
        ("0000:03:00.0", "ens1f0", 0x03, 0),
        ("0000:81:00.0", "ens2f0", 0x81, 1),
    ] {
        fake.add_pf(pf, ifname, numa).map_err(Error::Setup)?;
        for i in 0..p.vfs_per_pf {
            fake.add_vf(
                pf,
                i,
                &VfSpec::netdev(&vf_addr(bus, i), &format!("{ifname}v{i}")),
            )
            .map_err(Error::Setup)?;
        }
    }
    let config = root.join("config.json");
    std::fs::write(
        &config,
        r#"{"resourceList": [{"resourceName": "bench", "selectors": {"pfNames": ["ens1f0", "ens2f0"]}}]}"#,
    )
    .map_err(Error::Setup)?;
    let mut kubelet = FakeKubelet::start(&kubelet_dir).map_err(Error::Setup)?;
    let settings = Settings {
        config_path: config,
        sysfs_root: fake.root().to_path_buf(),
        kubelet_dir: kubelet_dir.clone(),
        devinfo_dir: root.join("devinfo"),
        state_dir: root.join("state"),
        rescan_interval: p.rescan_interval,
    };
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let plugin = tokio::spawn(plugin::run(settings, cancel.clone()));

    let reg = tokio::time::timeout(Duration::from_secs(10), kubelet.registrations.recv())
        .await
        .ok()
        .flatten()
        .ok_or(Error::Timeout("register"))?;
    let channel = unix_channel(&kubelet_dir.join(&reg.endpoint)).await?;
    let mut client = DevicePluginClient::new(channel);
    let mut stream = client
        .list_and_watch(Empty {})
        .await
        .map_err(|s| Error::Grpc("ListAndWatch", Box::new(s)))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| Error::Grpc("ListAndWatch", Box::new(s)))?
        .ok_or(Error::Timeout("first list"))?;
    let ids: Vec<String> = first.devices.iter().map(|d| d.id.clone()).collect();
    if ids.is_empty() {
        return Err(Error::Timeout("devices in first list"));
    }

    let mut alloc = Vec::with_capacity(p.allocations);
    for i in 0..p.allocations {
        let id = ids[i % ids.len()].clone();
        let t0 = Instant::now();
        client
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: vec![id],
                }],
            })
            .await
            .map_err(|s| Error::Grpc("Allocate", Box::new(s)))?;
        alloc.push(t0.elapsed());
    }

    let mut appear = Vec::new();
    let mut disappear = Vec::new();
    let interval_ms = u64::try_from(p.rescan_interval.as_millis())
        .unwrap_or(1000)
        .max(1);
    for r in 0..p.rounds {
        // Spread the moments of change over the poll period.
        let offset = (u64::try_from(r).unwrap_or(0) * 37) % interval_ms;
        tokio::time::sleep(Duration::from_millis(offset)).await;
        let index = 1000 + u32::try_from(r).unwrap_or(0);
        let addr = vf_addr(0x05, u32::try_from(r).unwrap_or(0) % 200);
        let t0 = Instant::now();
        fake.add_vf(
            "0000:03:00.0",
            index,
            &VfSpec::netdev(&addr, &format!("bench{r}")),
        )
        .map_err(Error::Setup)?;
        wait_for(&mut stream, |l| l.iter().any(|d| d == &addr)).await?;
        appear.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(offset)).await;
        let t0 = Instant::now();
        fake.remove_vf("0000:03:00.0", index)
            .map_err(Error::Setup)?;
        wait_for(&mut stream, |l| l.iter().all(|d| d != &addr)).await?;
        disappear.push(t0.elapsed());
    }
    cancel.cancel();
    match plugin.await {
        Ok(r) => r?,
        Err(_) => return Err(Error::Timeout("plugin task")),
    }
    match (Stats::of(alloc), Stats::of(appear), Stats::of(disappear)) {
        (Some(allocate), Some(vf_appear), Some(vf_disappear)) => Ok(BenchReport {
            allocate,
            vf_appear,
            vf_disappear,
        }),
        _ => Err(Error::Timeout("no samples (zero allocations or rounds?)")),
    }
}

async fn wait_for(
    stream: &mut tonic::Streaming<crate::proto::ListAndWatchResponse>,
    done: impl Fn(&[String]) -> bool,
) -> Result<()> {
    let fut = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    let ids: Vec<String> = m.devices.into_iter().map(|d| d.id).collect();
                    if done(&ids) {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(Error::Timeout("ListAndWatch ended")),
                Err(s) => return Err(Error::Grpc("ListAndWatch", Box::new(s))),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| Error::Timeout("ListAndWatch update"))?
}
