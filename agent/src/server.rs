//! The CNI socket: one call per connection (see [`virtlink_cni::daemon`]),
//! run in-process on a blocking thread with the same library code as the
//! direct-mode binary. Calls past `max_in_flight` wait in a queue of
//! `max_queued`; past that the caller gets CNI error 11 at once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use virtlink_cni::daemon::{Request, Response, MAX_MESSAGE};
use virtlink_cni::source::Services;
use virtlink_cni::spec::{code, CniError};

use crate::metrics::Metrics;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create socket directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("set mode 0600 on {path}")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Bounds on concurrent work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CNI calls running at once.
    pub max_in_flight: usize,
    /// CNI calls waiting for a free slot; more get "try again later".
    pub max_queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 16,
            max_queued: 256,
        }
    }
}

/// Binds the socket: the directory is created 0700, a stale socket from a
/// previous run is replaced, and the socket is 0600 (root only).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        Error::Mode {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// What every connection shares.
#[derive(Debug)]
pub struct Server {
    services: Services,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Admission: calls in flight plus queued.
    admitted: Arc<Semaphore>,
    /// Workers: calls in flight.
    workers: Arc<Semaphore>,
    /// Open connections, including ones still sending their request: past
    /// it, new connections wait in the socket's backlog.
    connections: Arc<Semaphore>,
}

impl Server {
    pub fn new(services: Services, metrics: Arc<Metrics>, limits: Limits) -> Arc<Self> {
        let in_flight = limits.max_in_flight.max(1);
        Arc::new(Self {
            services,
            metrics,
            limits,
            admitted: Arc::new(Semaphore::new(in_flight + limits.max_queued)),
            workers: Arc::new(Semaphore::new(in_flight)),
            connections: Arc::new(Semaphore::new(2 * (in_flight + limits.max_queued) + 16)),
        })
    }

    /// Accepts calls until `stop` turns true.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, mut stop: watch::Receiver<bool>) {
        let me = nix::unistd::geteuid().as_raw();
        loop {
            let permit = tokio::select! {
                _ = stop.changed() => break,
                p = self.connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the CNI socket");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // The socket mode already keeps others out; the peer's uid is
            // checked too, in case the mode was changed behind our back.
            match stream.peer_cred() {
                Ok(c) if c.uid() == me => {}
                other => {
                    tracing::warn!(peer = ?other.map(|c| c.uid()), "refused a CNI caller that is not our user");
                    continue;
                }
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.connection(stream).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, mut stream: UnixStream) {
        let started = Instant::now();
        let req = match read_request(&mut stream).await {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(error = %why, "bad request on the CNI socket");
                let (stdout, status) = virtlink_cni::plugin::error_answer(
                    b"",
                    CniError::new(code::DECODE_FAILURE, format!("agent request: {why}")),
                );
                self.metrics.call("unknown", "error");
                write_response(&mut stream, &Response { stdout, status }).await;
                return;
            }
        };
        let verb = req
            .env
            .get("CNI_COMMAND")
            .and_then(|c| virtlink_cni::spec::Command::parse(c))
            .map(|c| c.as_str())
            .unwrap_or("unknown");
        let (resp, admitted) = match self.admitted.clone().try_acquire_owned() {
            Err(_) => {
                let (stdout, status) = virtlink_cni::plugin::error_answer(
                    req.stdin.as_bytes(),
                    CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "virtlink agent busy: {} calls in flight and {} queued; try again later",
                            self.limits.max_in_flight, self.limits.max_queued
                        ),
                    ),
                );
                self.metrics.call(verb, "rejected");
                (Response { stdout, status }, None)
            }
            Ok(admitted) => {
                self.metrics.queued.inc();
                let worker = self.workers.clone().acquire_owned().await;
                self.metrics.queued.dec();
                self.metrics.in_flight.inc();
                let services = self.services.clone();
                let ran = tokio::task::spawn_blocking(move || {
                    let env = req.env;
                    virtlink_cni::plugin::run_with(
                        &services,
                        |k| env.get(k).cloned(),
                        req.stdin.as_bytes(),
                    )
                })
                .await;
                self.metrics.in_flight.dec();
                drop(worker);
                let (stdout, status) = match ran {
                    Ok(answer) => answer,
                    Err(e) => virtlink_cni::plugin::error_answer(
                        b"",
                        CniError::new(code::TRY_AGAIN_LATER, format!("agent worker failed: {e}")),
                    ),
                };
                self.metrics
                    .call(verb, if status == 0 { "ok" } else { "error" });
                (Response { stdout, status }, Some(admitted))
            }
        };
        self.metrics.observe(verb, started.elapsed().as_secs_f64());
        tracing::info!(
            verb,
            status = resp.status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "served CNI call"
        );
        write_response(&mut stream, &resp).await;
        // Admission is held until the answer is written, so a draining agent
        // waits for it (see `drain`).
        drop(admitted);
    }

    /// Waits until every admitted call has been answered, at most `timeout`:
    /// a stopping agent must not leave a shim without its answer while the
    /// work goes on (the shim would undo an ADD that is still running).
    pub async fn drain(&self, timeout: Duration) -> bool {
        let total = self.limits.max_in_flight.max(1) + self.limits.max_queued;
        let deadline = Instant::now() + timeout;
        while self.admitted.available_permits() < total {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

async fn read_request(stream: &mut UnixStream) -> std::result::Result<Request, String> {
    let mut buf = Vec::new();
    let mut limited = (&mut *stream).take(MAX_MESSAGE);
    match tokio::time::timeout(READ_TIMEOUT, limited.read_to_end(&mut buf)).await {
        Err(_) => return Err(format!("no complete request within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("read: {e}")),
        Ok(Ok(_)) => {}
    }
    serde_json::from_slice(&buf).map_err(|e| format!("decode: {e}"))
}

async fn write_response(stream: &mut UnixStream, resp: &Response) {
    let body = serde_json::to_vec(resp).unwrap_or_default();
    if let Err(e) = stream.write_all(&body).await {
        tracing::warn!(error = %e, "write CNI answer (the shim is gone)");
    }
    let _ = stream.shutdown().await;
}
