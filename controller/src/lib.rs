//! The r2o controller: pure window planning ([`planner`]), leader election
//! ([`election`]), the commit authority ([`authority`]) and its gRPC service
//! ([`service`]). Any controller serves admin calls; only the elected leader
//! plans and commits.

pub mod access;
pub mod authority;
pub mod committed;
pub mod delta;
pub mod discovery;
pub mod election;
pub mod error;
pub mod janitor;
pub mod metrics;
pub mod planner;
pub mod pool;
pub mod projector;
pub mod protocol;
pub mod registry;
pub mod retention;
pub mod service;
pub mod status;
pub mod tables;
pub mod validate;
pub mod wakeups;

use r2o_common::kv::Kv;
use r2o_common::meta::Keys;
use r2o_common::store::{Layout, Store};
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
    /// How long a file removed from a table's Delta log stays in the store
    /// for time travel before the janitor deletes it.
    pub delta_file_retention: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (none: not served).
    pub http_listen: Option<SocketAddr>,
    /// How much finished-task history each table keeps.
    pub history: janitor::HistoryRetention,
    /// How much one task may take.
    pub budget: planner::Budget,
    /// Tasks of one table in flight at once (0: the live minions' slots plus one).
    pub max_tasks_per_table: usize,
    /// How often the leader lists the tables' `batchConfigMaps` sources
    /// (segment discovery; a file registers after two listings agree).
    pub discovery_interval: Duration,
    /// The store URI it was started with (`--store`), to keep discovery
    /// sources out of the install's namespace.
    pub store_uri: String,
    /// TLS files, or plain text with `--insecure`.
    pub transport: r2o_common::tls::Transport,
    /// Client certificate names and their roles (`--cert-roles`).
    pub cert_roles: Vec<(String, r2o_common::access::Role)>,
    /// Where discovery may read (`--source-allow`, canonical; empty: off).
    pub source_allow: Vec<String>,
}

/// Runs the janitor every `interval` while this controller leads; a new
/// term starts with a fresh janitor (orphans are timed from its own sweeps).
/// The janitor's settings.
#[derive(Debug, Clone, Copy)]
struct Sweeps {
    interval: Duration,
    grace: Duration,
    file_retention: Duration,
    history: janitor::HistoryRetention,
}

async fn janitor_loop(auth: Authority, sweeps: Sweeps, cancel: CancellationToken) {
    let Sweeps { interval, grace, file_retention, history } = sweeps;
    let mut jan: Option<janitor::Janitor> = None;
    // (revision the last sweep started at, its young orphans), sweeps skipped since
    let mut last: Option<(i64, usize)> = None;
    let mut skipped = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if auth.leadership.borrow().is_none() {
            jan = None;
            last = None;
            continue;
        }
        let revision = auth.kv.status().await.map(|s| s.revision).ok();
        let unchanged = matches!((last, revision), (Some((l, _)), Some(r)) if l == r);
        // retention is a matter of time: every interval, whatever changed
        if let Err(e) = enforce_retention(&auth).await {
            if let Some(m) = &auth.metrics {
                m.errors.with_label_values(&["retention"]).inc();
            }
            tracing::warn!(error = %e, "retention sweep failed");
        }
        if !janitor::sweep_due(unchanged, last.map_or(0, |(_, y)| y), skipped) {
            skipped += 1;
            continue;
        }
        skipped = 0;
        let j = jan.get_or_insert_with(|| janitor::Janitor::new(grace, history).with_file_retention(file_retention));
        let now = std::time::Instant::now();
        let swept = j.sweep(&auth.kv, &auth.keys, &auth.store, &auth.layout, now, r2o_common::meta::now_ms()).await;
        last = match (&swept, revision) {
            (Ok(r), Some(rev)) => Some((rev, r.young_orphans)),
            _ => None,
        };
        match swept {
            Ok(r)
                if !r.deleted.is_empty()
                    || !r.deleted_keys.is_empty()
                    || r.history_pruned > 0
                    || r.audit_pruned > 0 =>
            {
                info!(
                    deleted = r.deleted.len(),
                    deleted_keys = r.deleted_keys.len(),
                    history_pruned = r.history_pruned,
                    audit_pruned = r.audit_pruned,
                    scanned = r.scanned,
                    "janitor sweep"
                )
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(m) = &auth.metrics {
                    m.errors.with_label_values(&["janitor"]).inc();
                }
                tracing::warn!(error = %e, "janitor sweep failed")
            }
        }
    }
}

/// Applies every table's REALTIME retention (see [`retention::enforce`]).
async fn enforce_retention(auth: &Authority) -> Result<(), r2o_common::Error> {
    // the planner's table cache: configs parsed once per change, not per sweep
    let tables = auth.tables.all(&auth.kv, &auth.keys).await.map_err(error::ControllerError::into_common)?;
    for (_, view) in tables {
        let Ok(view) = view else { continue };
        let spec = view.spec.as_ref();
        if spec.flow.retention_ms.is_none() {
            continue;
        }
        let r = retention::enforce(&auth.kv, &auth.keys, &auth.store, spec, r2o_common::meta::now_ms()).await?;
        if !r.deleted.is_empty() {
            info!(table = %spec.name, deleted = r.deleted.len(), unmoved_past_retention = r.unmoved, "retention sweep");
        }
    }
    Ok(())
}

/// Reads (creating on first start) the install's record, retrying while
/// etcd is unreachable, and returns its store layout; `None` when cancelled.
pub async fn install_layout(kv: &Kv, keys: &Keys, cancel: &CancellationToken) -> Option<Layout> {
    let mut backoff = r2o_common::retry::reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match r2o_common::meta::ensure_cluster(kv, keys).await {
            Ok(c) => return Some(Layout::new(&c.store_namespace(keys))),
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in = ?delay, "cannot read the cluster record; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
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
    let Some(layout) = install_layout(&kv, &keys, &cancel).await else {
        return Ok(());
    };
    info!(namespace = layout.namespace(), "segment store namespace");
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
        layout,
        AuthorityConfig {
            max_attempts: cfg.max_attempts,
            default_timeout_ms: cfg.task_timeout.as_millis() as i64,
            attempt_grace_ms: (cfg.lease_ttl_secs.max(1) * 3_000).max(60_000),
            budget: cfg.budget,
            max_tasks_per_table: cfg.max_tasks_per_table,
            store_uri: cfg.store_uri.clone(),
            source_allow: cfg.source_allow.clone(),
            delta_file_retention_ms: i64::try_from(cfg.delta_file_retention.as_millis()).unwrap_or(i64::MAX),
        },
        rx.clone(),
    );
    let mut telemetry = r2o_common::telemetry::Telemetry::new();
    let metrics = metrics::ControllerMetrics::new(&telemetry.registry);
    auth.metrics = Some(metrics.clone());
    {
        let (kv, keys, metrics, rx, tables, segments) =
            (kv.clone(), keys.clone(), metrics.clone(), rx.clone(), auth.tables.clone(), auth.segments.clone());
        telemetry.on_scrape = Some(std::sync::Arc::new(move || {
            let (kv, keys, metrics, tables, segments) =
                (kv.clone(), keys.clone(), metrics.clone(), tables.clone(), segments.clone());
            let leading = rx.borrow().is_some();
            Box::pin(async move {
                metrics.is_leader.set(i64::from(leading));
                metrics.refresh(&kv, &keys, &tables, &segments).await;
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
    // ready while etcd answers and accepts writes (no NOSPACE alarm)
    let readiness = {
        let (kv, t, c, m) = (kv.clone(), telemetry.clone(), cancel.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let ready = match kv.status().await {
                    Ok(st) => {
                        m.observe_etcd(&st);
                        if !st.alarms.is_empty() {
                            tracing::error!(alarms = ?st.alarms, "etcd raised an alarm: writes are refused until an operator frees space and disarms it");
                        }
                        st.alarms.is_empty()
                    }
                    Err(_) => false,
                };
                t.set_ready(ready);
                tokio::select! {
                    _ = c.cancelled() => { t.set_ready(false); return; }
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        })
    };
    let planner = tokio::spawn(authority::planning_loop(auth.clone(), cfg.plan_interval, cancel.clone()));
    let sweeps = Sweeps {
        interval: cfg.janitor_interval,
        grace: cfg.janitor_grace,
        file_retention: cfg.delta_file_retention,
        history: cfg.history,
    };
    let janitor = tokio::spawn(janitor_loop(auth.clone(), sweeps, cancel.clone()));
    let projector = tokio::spawn(projector::projection_loop(auth.clone(), cancel.clone()));
    let discovery = tokio::spawn(discovery::discovery_loop(auth.clone(), cfg.discovery_interval, cancel.clone()));
    let policy = match &cfg.transport {
        r2o_common::tls::Transport::Insecure => {
            tracing::warn!(
                listen = %cfg.listen,
                "--insecure: gRPC is plain text and every caller may make every call; use only on a trusted network"
            );
            access::Policy::Open
        }
        r2o_common::tls::Transport::Tls(_) => access::Policy::Roles { cert_roles: cfg.cert_roles.clone() },
    };
    let gate = access::Gate::new(kv.clone(), keys.clone(), policy);
    info!(controller = %cfg.id, listen = %cfg.listen, tls = matches!(cfg.transport, r2o_common::tls::Transport::Tls(_)), "controller serving");
    // gRPC and the status page (issue 24: HTML for browsers, behind the
    // reader role) on one port, one TLS certificate
    let svc = service::ControllerSvc::new(auth, gate.clone());
    let status = status::routes(status::StatusState { svc: svc.clone(), gate, controller: cfg.id.clone() });
    let routes = tonic::service::Routes::new(ControllerServiceServer::new(svc)).into_axum_router().merge(status);
    let router =
        tonic::transport::Server::builder().accept_http1(true).add_routes(tonic::service::Routes::from(routes));
    let served = r2o_common::tls::serve(router, cfg.listen, &cfg.transport, cancel.clone()).await;
    if served.is_err() {
        // cannot serve (the port is taken, say): stop the rest too
        cancel.cancel();
    }
    let _ = planner.await;
    let _ = projector.await;
    let _ = janitor.await;
    let _ = discovery.await;
    let _ = readiness.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    election_cancel.cancel();
    let _ = election.await;
    info!(controller = %cfg.id, "controller stopped");
    served.map_err(|e| anyhow::anyhow!("controller gRPC server on {}: {e}", cfg.listen))
}
