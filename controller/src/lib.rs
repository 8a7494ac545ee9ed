//! The r2o controller: pure window planning ([`planner`]), leader election
//! ([`election`]), the commit authority ([`authority`]) and its gRPC service
//! ([`service`]). Any controller serves admin calls; only the elected leader
//! plans and commits.

pub mod authority;
pub mod election;
pub mod error;
pub mod janitor;
pub mod metrics;
pub mod planner;
pub mod service;

use r2o_common::kv::Kv;
use r2o_common::meta::Keys;
use r2o_common::store::Store;
use r2o_proto::controller::controller_service_server::ControllerServiceServer;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use authority::{Authority, AuthorityConfig};
pub use election::{ElectionConfig, Leadership};
pub use error::ControllerError;

/// Settings of one controller process. Timing derives from `lease_ttl_secs`
/// (election renewal every TTL/3, standby retry every TTL/4) and
/// `plan_interval`.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Controller id (unique in the cluster).
    pub id: String,
    /// Address to listen on for gRPC.
    pub listen: SocketAddr,
    /// Address others use to reach it (`http://host:port`).
    pub advertise: String,
    /// Leader lease TTL, seconds.
    pub lease_ttl_secs: i64,
    /// Planner tick.
    pub plan_interval: Duration,
    /// Attempts per task round unless the table sets Pinot's `maxAttemptsPerTask`.
    pub max_attempts: u32,
    /// Attempt timeout unless the table sets Pinot's `timeoutMs`.
    pub task_timeout: Duration,
    /// How often the leader's janitor sweeps the store.
    pub janitor_interval: Duration,
    /// Minimum age of an orphaned object before the janitor deletes it.
    pub janitor_grace: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (none: not served).
    pub http_listen: Option<SocketAddr>,
}

/// Runs the janitor every `interval` while this controller leads.
async fn janitor_loop(auth: Authority, interval: Duration, grace: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if auth.leadership.borrow().is_none() {
            continue;
        }
        match janitor::sweep(&auth.kv, &auth.keys, &auth.store, r2o_common::meta::now_ms(), grace.as_millis() as i64)
            .await
        {
            Ok(r) if !r.deleted.is_empty() => info!(deleted = r.deleted.len(), scanned = r.scanned, "janitor sweep"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "janitor sweep failed"),
        }
    }
}

/// Runs a controller until `cancel`: election, planning loop and gRPC
/// server. Shutdown order: stop planning, stop serving, then give up
/// leadership (revoking the lease so a standby takes over at once).
pub async fn run(
    kv: Kv,
    keys: Keys,
    store: Store,
    cfg: ControllerConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(None);
    let election_cancel = CancellationToken::new();
    let election = tokio::spawn(election::run(
        kv.clone(),
        keys.clone(),
        ElectionConfig {
            id: cfg.id.clone(),
            addr: cfg.advertise.clone(),
            ttl_secs: cfg.lease_ttl_secs,
            retry: Duration::from_millis((cfg.lease_ttl_secs.max(1) as u64) * 250),
        },
        tx,
        election_cancel.clone(),
    ));
    let mut auth = Authority::new(
        kv.clone(),
        keys.clone(),
        store,
        AuthorityConfig { max_attempts: cfg.max_attempts, default_timeout_ms: cfg.task_timeout.as_millis() as i64 },
        rx.clone(),
    );
    let mut telemetry = r2o_common::telemetry::Telemetry::new();
    let metrics = metrics::ControllerMetrics::new(&telemetry.registry);
    auth.metrics = Some(metrics.clone());
    {
        let (kv, keys, metrics, rx) = (kv.clone(), keys.clone(), metrics.clone(), rx.clone());
        telemetry.on_scrape = Some(std::sync::Arc::new(move || {
            let (kv, keys, metrics, leading) = (kv.clone(), keys.clone(), metrics.clone(), rx.borrow().is_some());
            Box::pin(async move {
                metrics.is_leader.set(i64::from(leading));
                metrics.refresh(&kv, &keys).await;
            })
        }));
    }
    let http = cfg.http_listen.map(|listen| {
        let t = telemetry.clone();
        let c = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = r2o_common::telemetry::serve(listen, t, c).await {
                tracing::error!(listen = %listen, error = %e, "cannot serve /metrics");
            }
        })
    });
    // ready while etcd answers
    let readiness = {
        let (kv, keys, t, c) = (kv.clone(), keys.clone(), telemetry.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                t.set_ready(kv.get(&keys.leader()).await.is_ok());
                tokio::select! {
                    _ = c.cancelled() => { t.set_ready(false); return; }
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        })
    };
    let planner = tokio::spawn(authority::planning_loop(auth.clone(), cfg.plan_interval, cancel.clone()));
    let janitor = tokio::spawn(janitor_loop(auth.clone(), cfg.janitor_interval, cfg.janitor_grace, cancel.clone()));
    info!(controller = %cfg.id, listen = %cfg.listen, "controller serving");
    let server = tonic::transport::Server::builder()
        .add_service(ControllerServiceServer::new(service::ControllerSvc::new(auth)))
        .serve_with_shutdown(cfg.listen, cancel.clone().cancelled_owned());
    let served = server.await;
    let _ = planner.await;
    let _ = janitor.await;
    let _ = readiness.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    election_cancel.cancel();
    let _ = election.await;
    info!(controller = %cfg.id, "controller stopped");
    served.map_err(|e| anyhow::anyhow!("controller gRPC server on {}: {e}", cfg.listen))
}
