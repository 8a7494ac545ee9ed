//! The minion's worker loop. A minion registers under its own etcd lease,
//! watches `tasks/active/` (and polls it as a fallback) for claimable tasks
//! (PENDING, or RUNNING whose claim vanished with a dead minion's lease),
//! claims one per free slot
//! ([`claim`]), runs each attempt ([`attempt`]) and reports to the leader
//! over one long-lived channel ([`client`]).
//!
//! Timing derives from `lease_ttl_secs`: keep-alive every TTL/3; when a
//! keep-alive fails, every running attempt is cancelled at once (it can no
//! longer commit: its claim is gone) and the minion registers again. Each
//! attempt is bounded by its task's `timeoutMs`; each gRPC call by
//! `rpc_timeout`, each store call by the store deadline. Shutdown drains:
//! stop claiming, let running attempts finish within the grace period,
//! cancel the rest, revoke the lease (handing their tasks back).

mod attempt;
pub mod claim;
pub mod client;

use r2o_common::kv::Kv;
use r2o_common::meta::{chunks, encode, now_ms, Keys, MinionRecord, SegmentMeta, TaskId};
use r2o_common::retry::reconnect_backoff;
use r2o_common::store::{Layout, Store};
use r2o_common::Error;
use r2o_proto::minion as mpb;
use r2o_proto::minion::minion_service_server::{MinionService, MinionServiceServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use claim::{ClaimResult, Claimed};
use client::{ChannelTimeouts, LeaderClient};

/// Settings of one minion process.
#[derive(Debug, Clone)]
pub struct MinionConfig {
    /// Minion id (unique in the cluster).
    pub id: String,
    /// gRPC listen address of the `MinionService`.
    pub listen: SocketAddr,
    /// Concurrent tasks.
    pub slots: u32,
    /// The machine this minion runs on (see [`default_host`]): the
    /// controller splits a window by hash into at most one sub-task per
    /// distinct host.
    pub host: String,
    /// Lease TTL, seconds: a dead minion's tasks are freed within about this long.
    pub lease_ttl_secs: i64,
    /// How often to look for tasks.
    pub poll: Duration,
    /// How long a draining minion lets running attempts finish.
    pub drain_grace: Duration,
    /// Deadline of each call to the controller.
    pub rpc_timeout: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (none: not served).
    pub http_listen: Option<SocketAddr>,
    /// Bytes of decoded data the running attempts may hold together; each
    /// attempt's share is `memory_budget / slots`. A task estimated past its
    /// share runs on the bounded-memory path, spilling to `spill_dir`.
    pub memory_budget: u64,
    /// Local directory for spill files (one subdirectory per attempt,
    /// removed when it ends).
    pub spill_dir: std::path::PathBuf,
    /// `--tag`: this minion claims only the tasks of tables whose
    /// `minionInstanceTag` is this (Pinot's default: `minion_untagged`).
    pub tag: String,
    /// TLS files (the minion's certificate is its identity at the
    /// controller), or plain text with `--insecure`.
    pub transport: r2o_common::tls::Transport,
    /// The name the controller's certificate is verified against (`None`:
    /// the host of its advertised address). In Kubernetes the controller
    /// advertises its pod IP and its certificate names its Service.
    pub tls_server_name: Option<String>,
}

/// The machine this process runs on, for [`MinionConfig::host`]: the
/// kernel's boot id (`/proc/sys/kernel/random/boot_id`, the same for every
/// process and container of one boot of one machine), else the hostname,
/// else `"unknown"`. In Kubernetes the manifests set `R2O_HOST` to the node
/// name instead.
pub fn default_host() -> String {
    ["/proc/sys/kernel/random/boot_id", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The minion's Prometheus metrics.
#[derive(Clone)]
pub struct MinionMetrics {
    /// `r2o_minion_slots`: configured task slots.
    pub slots: prometheus::IntGauge,
    /// `r2o_minion_busy_slots`: slots running an attempt.
    pub busy: prometheus::IntGauge,
    /// `r2o_minion_free_slots`.
    pub free: prometheus::IntGauge,
    /// `r2o_minion_attempts_total{outcome}`: started, succeeded, failed, cancelled.
    pub attempts: prometheus::IntCounterVec,
    /// `r2o_errors_total{component}`: etcd and object-store errors seen.
    pub errors: prometheus::IntCounterVec,
    /// `r2o_minion_spilled_bytes_total`: bytes the bounded-memory path spilled to local disk.
    pub spilled_bytes: prometheus::IntCounter,
    /// `r2o_minion_memory_budget_bytes`: the configured memory budget.
    pub memory_budget: prometheus::IntGauge,
}

impl MinionMetrics {
    /// Registers every metric in `r`.
    pub fn new(r: &prometheus::Registry, slots: u32) -> MinionMetrics {
        use prometheus::{IntCounterVec, IntGauge, Opts};
        let g = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let c = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let m = MinionMetrics {
            slots: g("r2o_minion_slots", "Task slots of this minion"),
            busy: g("r2o_minion_busy_slots", "Slots running an attempt"),
            free: g("r2o_minion_free_slots", "Slots free for a new attempt"),
            attempts: c(
                "r2o_minion_attempts_total",
                "Attempts by outcome (started, succeeded, failed, cancelled)",
                "outcome",
            ),
            errors: c("r2o_errors_total", "etcd and object-store errors seen by this process", "component"),
            spilled_bytes: {
                let c = prometheus::IntCounter::new(
                    "r2o_minion_spilled_bytes_total",
                    "Bytes the bounded-memory path spilled to local disk",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("registered once");
                c
            },
            memory_budget: g("r2o_minion_memory_budget_bytes", "Bytes of decoded data the running attempts may hold"),
        };
        m.slots.set(i64::from(slots));
        m.free.set(i64::from(slots));
        // every series exists from the start, at 0 (dashboards and alerts see it)
        m.errors.with_label_values(&["store"]);
        for o in ["started", "succeeded", "failed", "cancelled"] {
            m.attempts.with_label_values(&[o]).inc_by(0);
        }
        m
    }
}

#[derive(Default)]
struct Stats {
    running: BTreeMap<String, u32>,
    succeeded: u64,
    failed: u64,
}

/// What every attempt of this minion shares.
#[derive(Clone)]
pub(crate) struct Worker {
    kv: Kv,
    keys: Keys,
    store: Store,
    layout: Layout,
    cfg: MinionConfig,
    stats: Arc<Mutex<Stats>>,
    metrics: MinionMetrics,
    leader: Arc<LeaderClient>,
    rpc_timeout: Duration,
    /// Task input lists read by recent claims (a split window's sub-tasks share one).
    inputs: chunks::ListCache<SegmentMeta>,
}

struct Registration {
    lease: i64,
    lost: CancellationToken,
    record: MinionRecord,
}

impl Worker {
    async fn register(&self) -> Result<Registration, Error> {
        let lease = self.kv.grant_lease(self.cfg.lease_ttl_secs).await?;
        let rec = MinionRecord {
            id: self.cfg.id.clone(),
            addr: format!("http://{}", self.cfg.listen),
            slots: self.cfg.slots,
            started_ms: now_ms(),
            host: self.cfg.host.clone(),
            tag: self.cfg.tag.clone(),
            draining: false,
        };
        self.kv.put(&self.keys.minion(&self.cfg.id), encode(&rec), Some(lease)).await?;
        info!(minion = %self.cfg.id, lease, slots = self.cfg.slots, host = %self.cfg.host, "minion registered");
        Ok(Registration { lease, lost: CancellationToken::new(), record: rec })
    }

    /// Tells the pool this minion drains: its record, under the same lease,
    /// says so (the status page and the pool's slots read it). Best effort:
    /// the lease's end removes the record anyway.
    async fn announce_draining(&self, reg: &Registration) {
        let rec = MinionRecord { draining: true, ..reg.record.clone() };
        if let Err(e) = self.kv.put(&self.keys.minion(&self.cfg.id), encode(&rec), Some(reg.lease)).await {
            warn!(minion = %self.cfg.id, error = %e, "cannot mark the registration draining");
        }
    }

    fn running(&self) -> usize {
        self.stats.lock().map(|s| s.running.len()).unwrap_or(0)
    }

    fn started(&self, c: &Claimed) {
        if let Ok(mut s) = self.stats.lock() {
            s.running.insert(c.task.id.to_string(), c.task.attempt);
            self.metrics.busy.set(s.running.len() as i64);
            self.metrics.free.set(i64::from(self.cfg.slots) - s.running.len() as i64);
        }
        self.metrics.attempts.with_label_values(&["started"]).inc();
    }

    fn ended(&self, id: &TaskId, outcome: attempt::Outcome) {
        if let Ok(mut s) = self.stats.lock() {
            s.running.remove(&id.to_string());
            if outcome == attempt::Outcome::Succeeded {
                s.succeeded += 1;
            } else {
                s.failed += 1;
            }
            self.metrics.busy.set(s.running.len() as i64);
            self.metrics.free.set(i64::from(self.cfg.slots) - s.running.len() as i64);
        }
        self.metrics.attempts.with_label_values(&[outcome.name()]).inc();
    }
}

struct StatusSvc {
    worker: Worker,
    transport: r2o_common::tls::Transport,
}

#[tonic::async_trait]
impl MinionService for StatusSvc {
    async fn status(
        &self,
        req: tonic::Request<mpb::StatusRequest>,
    ) -> Result<tonic::Response<mpb::StatusResponse>, tonic::Status> {
        // with TLS, only holders of a certificate from the cluster's CA
        // (verified in the handshake) may read a minion's status
        if self.transport != r2o_common::tls::Transport::Insecure && req.peer_certs().is_none() {
            return Err(tonic::Status::unauthenticated(
                "Status needs a client certificate from the cluster's CA (--tls-cert, --tls-key)",
            ));
        }
        let s = self.worker.stats.lock().map_err(|_| tonic::Status::internal("stats lock poisoned"))?;
        Ok(tonic::Response::new(mpb::StatusResponse {
            minion_id: self.worker.cfg.id.clone(),
            slots: self.worker.cfg.slots,
            busy: s.running.len() as u32,
            running_tasks: s.running.keys().cloned().collect(),
            attempts_succeeded: s.succeeded,
            attempts_failed: s.failed,
        }))
    }
}

/// The next change from a watch, or never when there is none.
async fn next_change(
    w: &mut Option<r2o_common::kv::WatchReceiver>,
) -> Option<r2o_common::Result<Vec<r2o_common::kv::WatchEvent>>> {
    match w {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads (creating on first start) the install's record, retrying while
/// etcd is unreachable; `None` when cancelled.
async fn install_layout(kv: &Kv, keys: &Keys, cancel: &CancellationToken) -> Option<Layout> {
    let mut backoff = reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match r2o_common::meta::ensure_cluster(kv, keys).await {
            Ok(c) => return Some(Layout::new(&c.store_namespace(keys))),
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                warn!(error = %e, retry_in = ?delay, "cannot read the cluster record; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Runs a minion until `cancel`, then drains (see the module doc).
pub async fn run(kv: Kv, keys: Keys, store: Store, cfg: MinionConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let telemetry = r2o_common::telemetry::Telemetry::new();
    let metrics = MinionMetrics::new(&telemetry.registry, cfg.slots);
    metrics.memory_budget.set(i64::try_from(cfg.memory_budget).unwrap_or(i64::MAX));
    let Some(layout) = install_layout(&kv, &keys, &cancel).await else {
        return Ok(());
    };
    let leader = Arc::new(LeaderClient::new(
        kv.clone(),
        keys.clone(),
        ChannelTimeouts::from_request(cfg.rpc_timeout),
        cfg.transport.clone(),
        cfg.tls_server_name.clone(),
    ));
    let worker = Worker {
        kv,
        keys,
        store,
        layout,
        cfg: cfg.clone(),
        stats: Arc::default(),
        metrics: metrics.clone(),
        leader,
        rpc_timeout: cfg.rpc_timeout,
        inputs: chunks::ListCache::new(100_000),
    };
    let http_cancel = CancellationToken::new();
    let http = cfg.http_listen.map(|listen| {
        let (t, c) = (telemetry.clone(), http_cancel.clone());
        tokio::spawn(async move {
            if let Err(e) = r2o_common::telemetry::serve(listen, t, c).await {
                tracing::error!(listen = %listen, error = %e, "cannot serve /metrics");
            }
        })
    });
    let server_cancel = CancellationToken::new();
    if cfg.transport == r2o_common::tls::Transport::Insecure {
        warn!(minion = %cfg.id, listen = %cfg.listen, "--insecure: gRPC is plain text; use only on a trusted network");
    }
    let server = {
        let router = tonic::transport::Server::builder().add_service(MinionServiceServer::new(StatusSvc {
            worker: worker.clone(),
            transport: cfg.transport.clone(),
        }));
        let (listen, transport, c) = (cfg.listen, cfg.transport.clone(), server_cancel.clone());
        tokio::spawn(async move { r2o_common::tls::serve(router, listen, &transport, c).await })
    };
    let max_backoff = Duration::from_secs(cfg.lease_ttl_secs.max(1) as u64);
    let mut backoff = reconnect_backoff(Duration::from_millis(100), max_backoff);
    let mut reg = loop {
        match worker.register().await {
            Ok(r) => {
                telemetry.set_ready(true);
                break r;
            }
            Err(e) => {
                metrics.errors.with_label_values(&["etcd"]).inc();
                let delay = backoff.next().unwrap_or(max_backoff);
                warn!(minion = %cfg.id, error = %e, retry_in = ?delay, "cannot register; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => { server_cancel.cancel(); let _ = server.await; return Ok(()); }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    let renew = Duration::from_millis((cfg.lease_ttl_secs.max(1) as u64) * 1000 / 3);
    let mut last_renew = tokio::time::Instant::now();
    let mut attempts: JoinSet<()> = JoinSet::new();
    let hard_stop = CancellationToken::new();
    let mut unknown: Vec<(TaskId, u32)> = Vec::new();
    let mut tasks_changed: Option<r2o_common::kv::WatchReceiver> = None;
    loop {
        if tasks_changed.is_none() {
            // tasks are noticed by watch; the poll is the fallback while it is down
            tasks_changed = worker.kv.watch(&worker.keys.tasks()).await.ok();
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(cfg.poll.min(renew)) => {}
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
            event = next_change(&mut tasks_changed) => {
                match event {
                    Some(Ok(_)) => {
                        // take every change already queued: one look at the tasks serves them all
                        while let Some(Ok(Ok(_))) = tasks_changed.as_mut().map(|w| w.try_recv()) {}
                    }
                    _ => tasks_changed = None,
                }
            }
        }
        if last_renew.elapsed() >= renew {
            match worker.kv.keep_alive(reg.lease).await {
                Ok(()) => {
                    last_renew = tokio::time::Instant::now();
                    backoff = reconnect_backoff(Duration::from_millis(100), max_backoff);
                }
                Err(Error::LeaseLost(_)) => {
                    warn!(minion = %cfg.id, lease = reg.lease, "lease lost; cancelling running attempts");
                    reg.lost.cancel();
                    telemetry.set_ready(false);
                    match worker.register().await {
                        Ok(r) => {
                            telemetry.set_ready(true);
                            reg = r;
                            last_renew = tokio::time::Instant::now();
                            backoff = reconnect_backoff(Duration::from_millis(100), max_backoff);
                        }
                        Err(e) => {
                            let delay = backoff.next().unwrap_or(max_backoff);
                            warn!(minion = %cfg.id, error = %e, retry_in = ?delay, "cannot register again");
                            tokio::time::sleep(delay).await;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    metrics.errors.with_label_values(&["etcd"]).inc();
                    let delay = backoff.next().unwrap_or(max_backoff);
                    warn!(minion = %cfg.id, error = %e, retry_in = ?delay, "keep-alive failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        // claims whose transaction's reply was lost: recognise them once etcd answers
        let mut found: Vec<Claimed> = Vec::new();
        let mut still_unknown = Vec::new();
        for (id, n) in unknown.drain(..) {
            match claim::read_back(&worker.kv, &worker.keys, &id, n, &cfg.id).await {
                Ok(Some(c)) => found.push(c),
                Ok(None) => {}
                Err(_) => still_unknown.push((id, n)),
            }
        }
        unknown = still_unknown;
        let free = (cfg.slots as usize).saturating_sub(worker.running() + found.len());
        let candidates = if free == 0 {
            vec![]
        } else {
            match claim::claimable(&worker.kv, &worker.keys, &cfg.tag).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(minion = %cfg.id, error = %e, "cannot list tasks");
                    vec![]
                }
            }
        };
        let mut claimed = 0;
        for (task, entry) in candidates {
            if claimed >= free {
                break;
            }
            match claim::try_claim(&worker.kv, &worker.keys, &task, &entry, &cfg.id, reg.lease).await {
                ClaimResult::Claimed(c) => {
                    claimed += 1;
                    found.push(*c);
                }
                ClaimResult::Lost => {}
                ClaimResult::Unknown(id, n) => {
                    warn!(minion = %cfg.id, task = %id, attempt = n, "claim reply lost; will read it back");
                    unknown.push((id, n));
                    break;
                }
            }
        }
        for c in found {
            info!(table = %c.task.table, task = %c.task.id, attempt = c.task.attempt, minion = %cfg.id, "task claimed");
            worker.started(&c);
            let attempt_cancel = reg.lost.child_token();
            let hard = hard_stop.clone();
            let w = worker.clone();
            attempts.spawn(async move {
                let id = c.task.id.clone();
                let c2 = attempt_cancel.clone();
                let outcome = tokio::select! {
                    o = w.run_attempt(c, attempt_cancel) => o,
                    _ = hard.cancelled_owned() => { c2.cancel(); attempt::Outcome::Cancelled }
                };
                w.ended(&id, outcome);
            });
        }
    }
    // drain
    telemetry.set_ready(false);
    info!(minion = %cfg.id, running = attempts.len(), "draining");
    worker.announce_draining(&reg).await;
    let drained = tokio::time::timeout(cfg.drain_grace, async { while attempts.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(minion = %cfg.id, "drain grace passed; handing back unfinished tasks");
        reg.lost.cancel();
        hard_stop.cancel();
        while attempts.join_next().await.is_some() {}
    }
    let _ = worker.kv.revoke_lease(reg.lease).await;
    server_cancel.cancel();
    let _ = server.await;
    http_cancel.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    info!(minion = %cfg.id, "minion stopped");
    Ok(())
}
