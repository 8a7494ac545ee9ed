//! The minion's worker loop. A minion registers under its own etcd lease,
//! polls `tasks/active/` for claimable tasks (PENDING, or RUNNING whose
//! claim vanished with a dead minion's lease), claims one per free slot in
//! a transaction that creates `tasks/claims/<task>` on its lease, runs the
//! processor, stages outputs under the attempt's prefix and reports to the
//! leader over gRPC.
//!
//! Timing derives from `lease_ttl_secs`: keep-alive every TTL/3; when a
//! keep-alive fails, every running attempt is cancelled at once (it can no
//! longer commit: its claim is gone) and the minion registers again.
//! Shutdown drains: stop claiming, let running attempts finish within the
//! grace period, cancel the rest, revoke the lease (handing their tasks back).

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use r2o_common::config::TableSpec;
use r2o_common::kv::{Compare, KeyValue, Kv, Op};
use r2o_common::meta::{
    encode, get_record, now_ms, range_records, ClaimRecord, Keys, LeaderRecord, MinionRecord, TaskRecord, TaskState,
};
use r2o_common::retry::{reconnect_backoff, store_backoff};
use r2o_common::store::{get_bytes, put_bytes, staging_prefix, Store};
use r2o_common::window::Window;
use r2o_common::Error;
use r2o_proto::controller as pb;
use r2o_proto::controller::controller_service_client::ControllerServiceClient;
use r2o_proto::minion as mpb;
use r2o_proto::minion::minion_service_server::{MinionService, MinionServiceServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::processor::{process, ProcessError, Processed};

/// Settings of one minion process.
#[derive(Debug, Clone)]
pub struct MinionConfig {
    /// Minion id (unique in the cluster).
    pub id: String,
    /// gRPC listen address of the `MinionService`.
    pub listen: SocketAddr,
    /// Concurrent tasks.
    pub slots: u32,
    /// Lease TTL, seconds: a dead minion's tasks are freed within about this long.
    pub lease_ttl_secs: i64,
    /// How often to look for tasks.
    pub poll: Duration,
    /// How long a draining minion lets running attempts finish.
    pub drain_grace: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (none: not served).
    pub http_listen: Option<SocketAddr>,
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
        };
        m.slots.set(i64::from(slots));
        m.free.set(i64::from(slots));
        for o in ["started", "succeeded", "failed", "cancelled"] {
            m.attempts.with_label_values(&[o]).inc_by(0);
        }
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Default)]
struct Stats {
    running: BTreeMap<String, u32>,
    succeeded: u64,
    failed: u64,
}

#[derive(Clone)]
struct Worker {
    kv: Kv,
    keys: Keys,
    store: Store,
    cfg: MinionConfig,
    stats: Arc<Mutex<Stats>>,
    metrics: MinionMetrics,
}

struct Registration {
    lease: i64,
    lost: CancellationToken,
}

impl Worker {
    async fn register(&self) -> Result<Registration, Error> {
        let lease = self.kv.grant_lease(self.cfg.lease_ttl_secs).await?;
        let rec = MinionRecord {
            id: self.cfg.id.clone(),
            addr: format!("http://{}", self.cfg.listen),
            slots: self.cfg.slots,
            started_ms: now_ms(),
        };
        self.kv.put(&self.keys.minion(&self.cfg.id), encode(&rec), Some(lease)).await?;
        info!(minion = %self.cfg.id, lease, slots = self.cfg.slots, "minion registered");
        Ok(Registration { lease, lost: CancellationToken::new() })
    }

    fn running(&self) -> usize {
        self.stats.lock().map(|s| s.running.len()).unwrap_or(0)
    }

    /// Tries to claim one task; returns the claimed record and its attempt.
    async fn try_claim(&self, task: &TaskRecord, entry: &KeyValue, lease: i64) -> Result<Option<TaskRecord>, Error> {
        let claim_key = self.keys.claim(&task.id);
        let mut t = task.clone();
        t.attempt += 1;
        t.state = TaskState::Running;
        t.minion = self.cfg.id.clone();
        t.started_ms = now_ms();
        let claim = ClaimRecord { minion_id: self.cfg.id.clone(), attempt: t.attempt, lease, claimed_ms: t.started_ms };
        let ok = self
            .kv
            .txn(
                vec![
                    Compare::ModRevision(entry.key.clone(), entry.mod_revision),
                    Compare::CreateRevision(claim_key.clone(), 0),
                ],
                vec![
                    Op::put(entry.key.clone(), encode(&t)),
                    Op::Put { key: claim_key, value: encode(&claim), lease: Some(lease) },
                ],
            )
            .await?;
        Ok(ok.then_some(t))
    }

    async fn claimable(&self) -> Result<Vec<(TaskRecord, KeyValue)>, Error> {
        let mut out = Vec::new();
        let now = now_ms();
        let tasks = range_records::<TaskRecord>(&self.kv, &self.keys.active_tasks()).await?;
        // one range read for every claim, not one get per task (this runs every poll);
        // a stale view is harmless: the claim transaction checks again
        let prefix = self.keys.claims();
        let claims: std::collections::HashSet<String> =
            self.kv.range(&prefix).await?.into_iter().map(|kv| kv.key[prefix.len()..].to_string()).collect();
        for (t, entry) in tasks {
            if !matches!(t.state, TaskState::Pending | TaskState::Running) {
                continue;
            }
            let claimed = claims.contains(&t.id);
            if t.claimable(now, claimed) {
                out.push((t, entry));
            }
        }
        out.sort_by_key(|(t, _)| t.created_ms);
        Ok(out)
    }

    async fn controller(&self) -> Result<ControllerServiceClient<tonic::transport::Channel>, String> {
        let leader = get_record::<LeaderRecord>(&self.kv, &self.keys.leader())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no controller leads right now")?
            .0;
        ControllerServiceClient::connect(leader.addr.clone())
            .await
            .map_err(|e| format!("cannot reach leader {}: {e}", leader.addr))
    }

    /// Sends a report to the leader, retrying transport errors and
    /// `UNAVAILABLE` (no leader, leader changing) with backoff until `lost`.
    async fn report<T, F, Fut>(&self, what: &str, lost: &CancellationToken, call: F) -> Result<T, String>
    where
        F: Fn(ControllerServiceClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        #[derive(Debug)]
        enum E {
            Retry(String),
            Final(String),
        }
        let attempt = || async {
            if lost.is_cancelled() {
                return Err(E::Final("the minion's lease was lost".into()));
            }
            let client = self.controller().await.map_err(E::Retry)?;
            call(client).await.map_err(|s| match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded => E::Retry(s.message().to_string()),
                _ => E::Final(format!("{:?}: {}", s.code(), s.message())),
            })
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(60)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|e| matches!(e, E::Retry(_)))
            .notify(|e, d| warn!(minion = %self.cfg.id, report = what, error = ?e, retry_in = ?d, "report failed; retrying"))
            .await
            .map_err(|e| match e {
                E::Retry(m) | E::Final(m) => m,
            })
    }

    async fn run_attempt(&self, task: TaskRecord, cancel: CancellationToken) {
        let attempt = task.attempt;
        // the attempt's own token: cancelled on timeout, and with the lease
        let work = cancel.child_token();
        let timeout = Duration::from_millis(task.timeout_ms.max(1) as u64);
        let result = match tokio::time::timeout(timeout, self.execute(&task, &work)).await {
            Ok(r) => r,
            Err(_) => {
                work.cancel();
                Err(ProcessError::Data(Error::Segment {
                    segment: task.id.clone(),
                    problem: format!(
                        "attempt {attempt} timed out after {} ms (timeoutMs) and was cancelled",
                        task.timeout_ms
                    ),
                }))
            }
        };
        let outcome = match result {
            Ok((processed, staged)) => {
                let req = pb::CompleteTaskRequest {
                    task_id: task.id.clone(),
                    attempt,
                    minion_id: self.cfg.id.clone(),
                    outputs: staged,
                    rows_in: processed.rows_in,
                    rows_out: processed.rows_out,
                    bytes_in: processed.bytes_in,
                    metric_sums_in: processed.metric_sums_in.into_iter().collect(),
                    metric_sums_out: processed.metric_sums_out.into_iter().collect(),
                    schema_fingerprint: TableSpec::from_json(task.table_config.clone(), task.schema.clone())
                        .map(|s| s.schema.fingerprint())
                        .unwrap_or_default(),
                };
                match self
                    .report("complete", &cancel, |mut c| {
                        let r = req.clone();
                        async move { c.complete_task(r).await }
                    })
                    .await
                {
                    Ok(resp) => {
                        info!(table = %task.table, task = %task.id, attempt, committed = resp.get_ref().committed, rows_in = processed.rows_in, rows_out = processed.rows_out, "attempt committed");
                        Outcome::Succeeded
                    }
                    Err(e) => {
                        warn!(table = %task.table, task = %task.id, attempt, error = %e, "commit refused");
                        Outcome::Failed
                    }
                }
            }
            Err(ProcessError::Cancelled) => {
                warn!(table = %task.table, task = %task.id, attempt, "attempt cancelled");
                Outcome::Cancelled
            }
            Err(ProcessError::Data(e)) => {
                warn!(table = %task.table, task = %task.id, attempt, error = %e, "attempt failed");
                let req = pb::FailTaskRequest {
                    task_id: task.id.clone(),
                    attempt,
                    minion_id: self.cfg.id.clone(),
                    error: e.to_string(),
                };
                if let Err(e) = self
                    .report("fail", &cancel, |mut c| {
                        let r = req.clone();
                        async move { c.fail_task(r).await }
                    })
                    .await
                {
                    warn!(table = %task.table, task = %task.id, attempt, error = %e, "failure report refused");
                }
                Outcome::Failed
            }
        };
        if let Ok(mut s) = self.stats.lock() {
            s.running.remove(&task.id);
            if outcome == Outcome::Succeeded {
                s.succeeded += 1;
            } else {
                s.failed += 1;
            }
            self.metrics.busy.set(s.running.len() as i64);
            self.metrics.free.set(i64::from(self.cfg.slots) - s.running.len() as i64);
        }
        self.metrics.attempts.with_label_values(&[outcome.name()]).inc();
    }

    /// Downloads, processes and stages one attempt.
    async fn execute(
        &self,
        task: &TaskRecord,
        cancel: &CancellationToken,
    ) -> Result<(Processed, Vec<pb::StagedSegment>), ProcessError> {
        let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone()).map_err(Error::from)?;
        let retry = store_backoff();
        let inputs: Vec<(String, Bytes)> = futures::stream::iter(task.inputs.clone())
            .map(|seg| {
                let store = self.store.clone();
                async move {
                    let bytes = (|| get_bytes(&store, &seg.location))
                        .retry(retry)
                        .when(Error::is_retryable)
                        .notify(|_, _| self.metrics.errors.with_label_values(&["store"]).inc())
                        .await;
                    bytes.map(|b| (seg.segment_name.clone(), b)).map_err(|e| match e {
                        Error::Store { source, .. } => Error::Segment {
                            segment: seg.segment_name.clone(),
                            problem: format!("cannot read {}: {source}", seg.location),
                        },
                        other => other,
                    })
                }
            })
            .buffered(4)
            .try_collect()
            .await?;
        if cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        let window = Window { start_ms: task.window_start_ms, end_ms: task.window_end_ms };
        let spec2 = spec.clone();
        let cancel2 = cancel.clone();
        let processed =
            tokio::task::spawn_blocking(move || process(&spec2, window, inputs, &cancel2)).await.map_err(|e| {
                ProcessError::Data(Error::Segment {
                    segment: task.id.clone(),
                    problem: format!("processor panicked: {e}"),
                })
            })??;
        let prefix = staging_prefix(&task.table, &task.id, task.attempt);
        let mut staged = Vec::with_capacity(processed.outputs.len());
        for o in &processed.outputs {
            if cancel.is_cancelled() {
                return Err(ProcessError::Cancelled);
            }
            let location = format!("{prefix}{}.parquet", o.name);
            let bytes = o.bytes.clone();
            (|| put_bytes(&self.store, &location, bytes.clone()))
                .retry(retry)
                .when(Error::is_retryable)
                .notify(|_, _| self.metrics.errors.with_label_values(&["store"]).inc())
                .await?;
            staged.push(pb::StagedSegment {
                name: o.name.clone(),
                location,
                num_rows: o.num_rows,
                size_bytes: o.bytes.len() as u64,
                start_time_ms: o.start_time_ms,
                end_time_ms: o.end_time_ms,
                partition: o.partition,
            });
        }
        let mut p = processed;
        for o in &mut p.outputs {
            o.bytes = Bytes::new();
        }
        Ok((p, staged))
    }
}

struct StatusSvc {
    worker: Worker,
}

#[tonic::async_trait]
impl MinionService for StatusSvc {
    async fn status(
        &self,
        _req: tonic::Request<mpb::StatusRequest>,
    ) -> Result<tonic::Response<mpb::StatusResponse>, tonic::Status> {
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

/// Runs a minion until `cancel`, then drains (see the module doc).
pub async fn run(kv: Kv, keys: Keys, store: Store, cfg: MinionConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let telemetry = r2o_common::telemetry::Telemetry::new();
    let metrics = MinionMetrics::new(&telemetry.registry, cfg.slots);
    let worker = Worker { kv, keys, store, cfg: cfg.clone(), stats: Arc::default(), metrics: metrics.clone() };
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
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MinionServiceServer::new(StatusSvc { worker: worker.clone() }))
            .serve_with_shutdown(cfg.listen, server_cancel.clone().cancelled_owned()),
    );
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
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(cfg.poll.min(renew)) => {}
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
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
        let free = (cfg.slots as usize).saturating_sub(worker.running());
        if free == 0 {
            continue;
        }
        let candidates = match worker.claimable().await {
            Ok(c) => c,
            Err(e) => {
                warn!(minion = %cfg.id, error = %e, "cannot list tasks");
                continue;
            }
        };
        let mut claimed = 0;
        for (task, entry) in candidates {
            if claimed >= free {
                break;
            }
            match worker.try_claim(&task, &entry, reg.lease).await {
                Ok(Some(t)) => {
                    claimed += 1;
                    info!(table = %t.table, task = %t.id, attempt = t.attempt, minion = %cfg.id, "task claimed");
                    if let Ok(mut s) = worker.stats.lock() {
                        s.running.insert(t.id.clone(), t.attempt);
                        metrics.busy.set(s.running.len() as i64);
                        metrics.free.set(i64::from(cfg.slots) - s.running.len() as i64);
                    }
                    metrics.attempts.with_label_values(&["started"]).inc();
                    let attempt_cancel = reg.lost.child_token();
                    let hard = hard_stop.clone();
                    let w = worker.clone();
                    attempts.spawn(async move {
                        let guard = hard.cancelled_owned();
                        let c2 = attempt_cancel.clone();
                        tokio::select! {
                            _ = w.run_attempt(t, attempt_cancel) => {}
                            _ = guard => { c2.cancel(); }
                        }
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(minion = %cfg.id, task = %task.id, error = %e, "claim failed");
                    break;
                }
            }
        }
    }
    // drain
    telemetry.set_ready(false);
    info!(minion = %cfg.id, running = attempts.len(), "draining");
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
