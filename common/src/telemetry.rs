//! The HTTP side of every long-running process: `/healthz` (the process
//! is up), `/readyz` (it can do its job: the controller reaches etcd, a
//! minion holds a live lease) and Prometheus `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs before each scrape (e.g. the controller refreshes per-table gauges from etcd).
pub type OnScrape = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What the HTTP endpoints serve.
#[derive(Clone)]
pub struct Telemetry {
    /// The process's metrics.
    pub registry: Registry,
    /// Readiness, set by the role.
    pub ready: Arc<AtomicBool>,
    /// Hook run before each `/metrics` scrape.
    pub on_scrape: Option<OnScrape>,
}

impl Telemetry {
    /// A fresh registry, not ready.
    pub fn new() -> Telemetry {
        Telemetry { registry: Registry::new(), ready: Arc::new(AtomicBool::new(false)), on_scrape: None }
    }

    /// Marks the process ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(t): State<Telemetry>) -> (StatusCode, &'static str) {
    if t.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(t): State<Telemetry>) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    if let Some(hook) = &t.on_scrape {
        hook().await;
    }
    let mut buf = Vec::new();
    let status = match TextEncoder::new().encode(&t.registry.gather(), &mut buf) {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, [("content-type", "text/plain; version=0.0.4")], buf)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listen` until `cancel`.
pub async fn serve(listen: SocketAddr, telemetry: Telemetry, cancel: CancellationToken) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(telemetry);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await
}
