//! `/healthz`, `/readyz` and `/metrics` over HTTP (plain, for the kubelet's
//! probes and Prometheus on the node's network).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serve HTTP")]
    Serve(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the CNI socket listens and the caches (if any) have synced.
    pub ready: Arc<AtomicBool>,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    match h.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds `addr` (port 0 picks one); returns the bound address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await
        .map_err(Error::Serve)
}
