//! The commit authority: publishes planned tasks, commits completed
//! attempts, and records failures — each in one etcd transaction that
//! checks the revisions it read (DESIGN.md, the commit protocol).

use r2o_common::config::{MergeType, TableSpec};
use r2o_common::kv::{Compare, KeyValue, Kv, Op};
use r2o_common::meta::{
    attempt_backoff_ms, encode, get_record, now_ms, range_records, round_backoff_ms, ClaimRecord, Keys, LineageRecord,
    SegmentMeta, SegmentStatus, TableRecord, TaskRecord, TaskState, WatermarkRecord,
};
use r2o_common::store::{object_size, staging_prefix, Store};
use r2o_common::window::floor_to_bucket;
use r2o_proto::controller as pb;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::election::Leadership;
use crate::error::{ControllerError, Result};
use crate::planner::{plan, Decision};

/// Settings of the commit authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// Attempts per task round before it is FAILED, unless the table sets
    /// Pinot's `maxAttemptsPerTask`.
    pub max_attempts: u32,
    /// Attempt timeout unless the table sets Pinot's `timeoutMs`, ms.
    pub default_timeout_ms: i64,
}

/// The controller's state-changing logic over etcd and the segment store.
#[derive(Clone)]
pub struct Authority {
    pub(crate) kv: Kv,
    pub(crate) keys: Keys,
    pub(crate) store: Store,
    pub(crate) cfg: AuthorityConfig,
    pub(crate) leadership: watch::Receiver<Option<Leadership>>,
    /// Wakes the planning loop after a commit, so the next window of the
    /// table is planned at once instead of on the next tick.
    pub(crate) replan: std::sync::Arc<tokio::sync::Notify>,
    /// Metrics observed while committing.
    pub(crate) metrics: Option<crate::metrics::ControllerMetrics>,
}

/// A table as stored plus its parsed view.
pub(crate) async fn load_table(kv: &Kv, keys: &Keys, raw: &str) -> Result<Option<TableSpec>> {
    match get_record::<TableRecord>(kv, &keys.table(raw)).await? {
        None => Ok(None),
        Some((rec, _)) => Ok(Some(TableSpec::from_json(rec.table_config, rec.schema)?)),
    }
}

/// What planning one table did.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanOutcome {
    /// A task was published for the window.
    Published(String, r2o_common::window::Window),
    /// A task is already in flight.
    InFlight(String),
    /// The table is paused.
    Paused,
    /// Nothing is eligible, and why.
    Wait(String),
}

impl std::fmt::Display for PlanOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanOutcome::Published(id, w) => write!(f, "task {id} published for window {w}"),
            PlanOutcome::InFlight(id) => write!(f, "task {id} is already in flight"),
            PlanOutcome::Paused => write!(f, "the table is paused"),
            PlanOutcome::Wait(why) => write!(f, "nothing to run: {why}"),
        }
    }
}

/// `<raw>__<windowStartMs>__<createdMs>`.
pub fn task_id(raw: &str, window_start_ms: i64, created_ms: i64) -> String {
    format!("{raw}__{window_start_ms}__{created_ms}")
}

impl Authority {
    /// A new authority.
    pub fn new(
        kv: Kv,
        keys: Keys,
        store: Store,
        cfg: AuthorityConfig,
        leadership: watch::Receiver<Option<Leadership>>,
    ) -> Authority {
        Authority { kv, keys, store, cfg, leadership, replan: Default::default(), metrics: None }
    }

    fn leadership(&self) -> Result<Leadership> {
        (*self.leadership.borrow()).ok_or_else(|| ControllerError::NotLeader { leader: "unknown".into() })
    }

    async fn watermark(&self, raw: &str) -> Result<(Option<WatermarkRecord>, i64)> {
        Ok(match get_record::<WatermarkRecord>(&self.kv, &self.keys.watermark(raw)).await? {
            None => (None, 0),
            Some((w, entry)) => (Some(w), entry.mod_revision),
        })
    }

    /// REALTIME segment metadata of a table.
    pub async fn realtime_segments(&self, raw: &str) -> Result<Vec<SegmentMeta>> {
        let typed = format!("{raw}_REALTIME");
        Ok(range_records::<SegmentMeta>(&self.kv, &self.keys.segments(&typed))
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// One planning pass over every table (leader only). Returns tasks published.
    pub async fn plan_all(&self) -> Result<usize> {
        let leadership = self.leadership()?;
        let tables = self.kv.range(&self.keys.tables()).await?;
        let mut published = 0;
        for entry in tables {
            let raw = entry.key.rsplit('/').next().unwrap_or_default().to_string();
            match self.plan_table(&raw, leadership, "scheduled").await {
                Ok(PlanOutcome::Published(..)) => published += 1,
                Ok(_) => {}
                Err(e) => warn!(table = %raw, error = %e, "planning failed"),
            }
        }
        self.fail_exhausted(leadership).await?;
        Ok(published)
    }

    /// Plans one table: publishes its next task unless one is in flight or
    /// the table is paused. `trigger` is recorded on the task.
    async fn plan_table(&self, raw: &str, leadership: Leadership, trigger: &str) -> Result<PlanOutcome> {
        let inflight_key = self.keys.inflight(raw);
        if let Some(entry) = self.kv.get(&inflight_key).await? {
            return Ok(PlanOutcome::InFlight(String::from_utf8_lossy(&entry.value).into_owned()));
        }
        let Some((rec, _)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        if rec.paused {
            return Ok(PlanOutcome::Paused);
        }
        let spec = TableSpec::from_json(rec.table_config, rec.schema)?;
        let (wm, wm_rev) = self.watermark(raw).await?;
        let segments = self.realtime_segments(raw).await?;
        let now = now_ms();
        let (window, skipped_windows, inputs) =
            match plan(&spec.flow, &segments, wm.as_ref().map(|w| w.watermark_ms), now) {
                Decision::Run { window, skipped_windows, inputs } => (window, skipped_windows, inputs),
                Decision::Wait(reason) => return Ok(PlanOutcome::Wait(reason.to_string())),
            };
        let id = task_id(raw, window.start_ms, now);
        let task = TaskRecord {
            id: id.clone(),
            table: raw.to_string(),
            window_start_ms: window.start_ms,
            window_end_ms: window.end_ms,
            skipped_windows,
            inputs,
            table_config: spec.config_json.clone(),
            schema: spec.schema_json.clone(),
            state: TaskState::Pending,
            attempt: 0,
            minion: String::new(),
            created_ms: now,
            started_ms: 0,
            finished_ms: 0,
            errors: vec![],
            trigger: trigger.to_string(),
            rows_in: 0,
            rows_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            output_segments: vec![],
            max_attempts: spec.flow.max_attempts_per_task.unwrap_or(self.cfg.max_attempts).max(1),
            timeout_ms: spec.flow.timeout_ms.unwrap_or(self.cfg.default_timeout_ms),
            not_before_ms: 0,
            round_start_attempt: 0,
            failed_rounds: 0,
            retry_at_ms: 0,
        };
        let ok = self
            .kv
            .txn(
                vec![
                    Compare::CreateRevision(inflight_key.clone(), 0),
                    Compare::ModRevision(self.keys.watermark(raw), wm_rev),
                    Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
                ],
                vec![
                    Op::put(self.keys.active_task(&id), encode(&task)),
                    Op::put(inflight_key, id.clone().into_bytes()),
                ],
            )
            .await?;
        if !ok {
            return Ok(PlanOutcome::Wait("the table changed while planning; planning again on the next tick".into()));
        }
        info!(table = %raw, task = %id, trigger, window_start_ms = window.start_ms, window_end_ms = window.end_ms, inputs = task.inputs.len(), skipped_windows, "task published");
        Ok(PlanOutcome::Published(id, window))
    }

    /// Run now: plans `raw` at once (leader only; the planner's rules hold).
    pub async fn run_now(&self, raw: &str) -> Result<PlanOutcome> {
        let leadership = self.leadership()?;
        self.plan_table(raw, leadership, "manual").await
    }

    /// Resets a flow (leader only). `flush`: delete the OFFLINE segment
    /// metadata, lineage and watermark (the janitor removes the files) and
    /// restart from the earliest data; otherwise (append) only abandon the
    /// in-flight task and continue from the watermark. `dry_run` reports
    /// what would go and changes nothing.
    pub async fn reset(&self, raw: &str, flush: bool, dry_run: bool) -> Result<pb::ResetTableResponse> {
        let leadership = self.leadership()?;
        if self.kv.get(&self.keys.table(raw)).await?.is_none() {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        }
        let offline = format!("{raw}_OFFLINE");
        let segments: Vec<SegmentMeta> = range_records::<SegmentMeta>(&self.kv, &self.keys.segments(&offline))
            .await?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let windows = self.kv.range(&self.keys.lineages(raw)).await?.len() as u64;
        let (wm, wm_rev) = self.watermark(raw).await?;
        let inflight = self.kv.get(&self.keys.inflight(raw)).await?;
        let abandoned = inflight.as_ref().map(|e| String::from_utf8_lossy(&e.value).into_owned()).unwrap_or_default();
        let mut resp = pb::ResetTableResponse {
            mode: if flush { "FLUSH" } else { "APPEND" }.into(),
            offline_segments: if flush { segments.len() as u64 } else { 0 },
            offline_rows: if flush { segments.iter().map(|s| s.total_docs).sum() } else { 0 },
            offline_bytes: if flush { segments.iter().map(|s| s.size_bytes).sum() } else { 0 },
            windows: if flush { windows } else { 0 },
            watermark_ms: wm.as_ref().map_or(0, |w| w.watermark_ms),
            abandoned_task: abandoned.clone(),
            done: false,
        };
        if dry_run {
            return Ok(resp);
        }
        let mut compares = vec![
            Compare::ModRevision(self.keys.watermark(raw), wm_rev),
            Compare::ModRevision(self.keys.inflight(raw), inflight.as_ref().map_or(0, |e| e.mod_revision)),
            Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
        ];
        let mut ops = vec![Op::delete(self.keys.inflight(raw))];
        if !abandoned.is_empty() {
            let task_key = self.keys.active_task(&abandoned);
            let task_rev = self.kv.get(&task_key).await?.map_or(0, |e| e.mod_revision);
            compares.push(Compare::ModRevision(task_key.clone(), task_rev));
            ops.push(Op::delete(task_key));
            ops.push(Op::delete(self.keys.claim(&abandoned)));
        }
        if flush {
            ops.push(Op::DeletePrefix { prefix: self.keys.segments(&offline) });
            ops.push(Op::DeletePrefix { prefix: self.keys.lineages(raw) });
            ops.push(Op::delete(self.keys.watermark(raw)));
        }
        if !self.kv.txn(compares, ops).await? {
            return Err(ControllerError::Stale(format!(
                "table '{raw}' changed while resetting; nothing was changed, try again"
            )));
        }
        warn!(table = %raw, mode = %resp.mode, offline_segments = resp.offline_segments, abandoned_task = %abandoned, "flow reset");
        self.replan.notify_one();
        resp.done = true;
        Ok(resp)
    }

    /// Marks RUNNING tasks whose claim is gone and whose round is used up
    /// as FAILED, and re-arms FAILED tasks whose round backoff has passed.
    async fn fail_exhausted(&self, leadership: Leadership) -> Result<()> {
        let now = now_ms();
        for (task, entry) in range_records::<TaskRecord>(&self.kv, &self.keys.active_tasks()).await? {
            match task.state {
                TaskState::Running if task.attempts_in_round() >= task.max_attempts => {
                    if self.kv.get(&self.keys.claim(&task.id)).await?.is_some() {
                        continue;
                    }
                    let mut t = task.clone();
                    t.errors.push(format!("attempt {}: the minion's lease expired", t.attempt));
                    self.finish_failed(t, &entry, None, leadership).await?;
                }
                TaskState::Failed if task.retry_at_ms > 0 && task.retry_at_ms <= now => {
                    self.rearm(task, &entry, leadership, "round backoff passed").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts a new round of attempts for a FAILED task.
    async fn rearm(&self, mut t: TaskRecord, entry: &KeyValue, leadership: Leadership, why: &str) -> Result<bool> {
        t.state = TaskState::Pending;
        t.round_start_attempt = t.attempt;
        t.retry_at_ms = 0;
        t.not_before_ms = 0;
        t.finished_ms = 0;
        let ok = self
            .kv
            .txn(
                vec![
                    Compare::ModRevision(entry.key.clone(), entry.mod_revision),
                    Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
                ],
                vec![Op::put(entry.key.clone(), encode(&t))],
            )
            .await?;
        if ok {
            info!(table = %t.table, task = %t.id, attempt = t.attempt, failed_rounds = t.failed_rounds, why, "failed task re-armed");
            self.replan.notify_one();
        }
        Ok(ok)
    }

    /// Operator retry: re-arms a FAILED task now. Errors when the task is
    /// not active or not FAILED.
    pub async fn retry(&self, table: &str) -> Result<String> {
        let leadership = self.leadership()?;
        let Some(entry) = self.kv.get(&self.keys.inflight(table)).await? else {
            return Err(ControllerError::NotFound(format!("a task in flight for table '{table}'")));
        };
        let id = String::from_utf8_lossy(&entry.value).into_owned();
        let Some((t, entry)) = get_record::<TaskRecord>(&self.kv, &self.keys.active_task(&id)).await? else {
            return Err(ControllerError::NotFound(format!("active task {id}")));
        };
        if t.state != TaskState::Failed {
            return Err(ControllerError::Stale(format!(
                "task {id} is {}, not FAILED; nothing to retry",
                t.state.name()
            )));
        }
        if !self.rearm(t, &entry, leadership, "operator retry").await? {
            return Err(ControllerError::Stale(format!("task {id} changed while retrying; try again")));
        }
        Ok(id)
    }

    async fn finish_failed(
        &self,
        mut t: TaskRecord,
        entry: &KeyValue,
        claim: Option<&KeyValue>,
        leadership: Leadership,
    ) -> Result<bool> {
        t.state = TaskState::Failed;
        t.finished_ms = now_ms();
        t.failed_rounds += 1;
        t.retry_at_ms = t.finished_ms + round_backoff_ms(t.failed_rounds);
        let mut compares = vec![
            Compare::ModRevision(entry.key.clone(), entry.mod_revision),
            Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
        ];
        if let Some(c) = claim {
            compares.push(Compare::ModRevision(c.key.clone(), c.mod_revision));
        }
        let ok = self
            .kv
            .txn(compares, vec![Op::put(entry.key.clone(), encode(&t)), Op::delete(self.keys.claim(&t.id))])
            .await?;
        if ok {
            warn!(table = %t.table, task = %t.id, attempt = t.attempt, error = %t.errors.last().cloned().unwrap_or_default(), "task failed after its last attempt");
        }
        Ok(ok)
    }

    /// Reads the active task and the claim of `attempt` by `minion`, or says why it is stale.
    async fn current_attempt(
        &self,
        task_id: &str,
        attempt: u32,
        minion: &str,
    ) -> Result<Option<(TaskRecord, KeyValue, KeyValue)>> {
        let Some((task, entry)) = get_record::<TaskRecord>(&self.kv, &self.keys.active_task(task_id)).await? else {
            return Ok(None);
        };
        if task.attempt != attempt || task.state != TaskState::Running {
            return Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {task_id} is not current: the task is {} at attempt {}",
                task.state.name(),
                task.attempt
            )));
        }
        let claim = get_record::<ClaimRecord>(&self.kv, &self.keys.claim(task_id)).await?;
        match claim {
            Some((c, centry)) if c.attempt == attempt && c.minion_id == minion => Ok(Some((task, entry, centry))),
            _ => Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {task_id} no longer holds its claim (minion {minion}'s lease expired or the task was re-claimed)"
            ))),
        }
    }

    /// Commits a completed attempt (step 4 of the commit protocol). Returns
    /// `committed = false` when the same attempt was already committed.
    pub async fn complete(&self, req: &pb::CompleteTaskRequest) -> Result<pb::CompleteTaskResponse> {
        let leadership = self.leadership()?;
        let Some((task, entry, claim)) = self.current_attempt(&req.task_id, req.attempt, &req.minion_id).await? else {
            return self.already_committed(&req.task_id, req.attempt).await;
        };
        let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
        self.validate(&task, &spec, req).await?;

        let raw = task.table.clone();
        let (wm, wm_rev) = self.watermark(&raw).await?;
        let expected_start = wm.as_ref().map(|w| w.watermark_ms);
        if let Some(w) = expected_start {
            let from = task.window_start_ms - task.skipped_windows as i64 * spec.flow.bucket_ms;
            if w != from {
                return Err(ControllerError::Stale(format!(
                    "task {} was planned from watermark {from} but the watermark is {w}",
                    task.id
                )));
            }
        }
        let now = now_ms();
        let offline = spec.offline_name();
        let mut ops = Vec::new();
        let mut names = Vec::new();
        let mut bytes_out = 0;
        for o in &req.outputs {
            let meta = SegmentMeta {
                segment_name: o.name.clone(),
                table_name: offline.clone(),
                status: SegmentStatus::Done,
                start_time_ms: o.start_time_ms,
                end_time_ms: o.end_time_ms,
                total_docs: o.num_rows,
                size_bytes: o.size_bytes,
                schema_fingerprint: req.schema_fingerprint.clone(),
                location: o.location.clone(),
                partition: o.partition,
                created_ms: now,
            };
            bytes_out += o.size_bytes;
            names.push(o.name.clone());
            ops.push(Op::put(self.keys.segment(&offline, &o.name), encode(&meta)));
        }
        let lineage = LineageRecord {
            window_start_ms: task.window_start_ms,
            window_end_ms: task.window_end_ms,
            input_segments: task.inputs.iter().map(|s| s.segment_name.clone()).collect(),
            output_segments: names.clone(),
            task_id: task.id.clone(),
            attempt: req.attempt,
        };
        ops.push(Op::put(self.keys.lineage(&raw, task.window_start_ms), encode(&lineage)));
        let old = wm.unwrap_or_default();
        let new_wm = WatermarkRecord {
            watermark_ms: task.window_end_ms,
            windows_committed: old.windows_committed + 1,
            windows_skipped: old.windows_skipped + task.skipped_windows,
            rows_out: old.rows_out + req.rows_out,
            rows_in: old.rows_in + req.rows_in,
            bytes_in: old.bytes_in + req.bytes_in,
            bytes_out: old.bytes_out + bytes_out,
            updated_ms: now,
        };
        ops.push(Op::put(self.keys.watermark(&raw), encode(&new_wm)));
        let mut done = task.clone();
        done.state = TaskState::Succeeded;
        done.finished_ms = now;
        done.rows_in = req.rows_in;
        done.rows_out = req.rows_out;
        done.bytes_in = req.bytes_in;
        done.bytes_out = bytes_out;
        done.output_segments = names;
        ops.push(Op::delete(entry.key.clone()));
        ops.push(Op::put(self.keys.history(&raw, &task.id), encode(&done)));
        ops.push(Op::delete(claim.key.clone()));
        ops.push(Op::delete(self.keys.inflight(&raw)));
        let ok = self
            .kv
            .txn(
                vec![
                    Compare::ModRevision(entry.key.clone(), entry.mod_revision),
                    Compare::ModRevision(claim.key.clone(), claim.mod_revision),
                    Compare::ModRevision(self.keys.watermark(&raw), wm_rev),
                    Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
                ],
                ops,
            )
            .await?;
        if !ok {
            // Something moved under us: answer as a fresh call would.
            return match self.current_attempt(&req.task_id, req.attempt, &req.minion_id).await? {
                None => self.already_committed(&req.task_id, req.attempt).await,
                Some(_) => Err(ControllerError::Stale(format!(
                    "commit of task {} attempt {} lost a race (watermark or leadership changed); nothing was committed",
                    req.task_id, req.attempt
                ))),
            };
        }
        self.replan.notify_one();
        if let Some(m) = &self.metrics {
            m.task_duration.with_label_values(&[&raw]).observe((now - task.started_ms).max(0) as f64 / 1000.0);
            if req.attempt == 1 {
                m.queue_wait
                    .with_label_values(&[&raw])
                    .observe((task.started_ms - task.created_ms).max(0) as f64 / 1000.0);
            }
        }
        info!(table = %raw, task = %task.id, attempt = req.attempt, window_start_ms = task.window_start_ms, window_end_ms = task.window_end_ms, rows_in = req.rows_in, rows_out = req.rows_out, segments = req.outputs.len(), "window committed");
        Ok(pb::CompleteTaskResponse { committed: true, watermark_ms: task.window_end_ms })
    }

    async fn already_committed(&self, task_id: &str, attempt: u32) -> Result<pb::CompleteTaskResponse> {
        let raw = task_id.split("__").next().unwrap_or_default();
        match get_record::<TaskRecord>(&self.kv, &self.keys.history(raw, task_id)).await? {
            Some((t, _)) if t.state == TaskState::Succeeded && t.attempt == attempt => {
                Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: t.window_end_ms })
            }
            Some((t, _)) => Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {task_id} is not current: the task finished as {} at attempt {}",
                t.state.name(),
                t.attempt
            ))),
            None => Err(ControllerError::NotFound(format!("task {task_id}"))),
        }
    }

    /// Checks a completion report against the task and the staged objects.
    async fn validate(&self, task: &TaskRecord, spec: &TableSpec, req: &pb::CompleteTaskRequest) -> Result<()> {
        let bad =
            |m: String| Err(ControllerError::Validation(format!("task {} attempt {}: {m}", task.id, req.attempt)));
        if req.schema_fingerprint != spec.schema.fingerprint() {
            return bad(format!(
                "schema fingerprint {} differs from the table's {}",
                req.schema_fingerprint,
                spec.schema.fingerprint()
            ));
        }
        let prefix = staging_prefix(&task.table, &task.id, req.attempt);
        let mut rows = 0u64;
        let round = spec.flow.round_ms.unwrap_or(1);
        let lowest = floor_to_bucket(task.window_start_ms, round);
        for o in &req.outputs {
            if !o.location.starts_with(&prefix) {
                return bad(format!(
                    "output {} is at {}, outside the attempt's staging prefix {prefix}",
                    o.name, o.location
                ));
            }
            if o.start_time_ms < lowest || o.end_time_ms >= task.window_end_ms || o.start_time_ms > o.end_time_ms {
                return bad(format!(
                    "output {} spans [{}, {}], outside the window [{}, {})",
                    o.name, o.start_time_ms, o.end_time_ms, task.window_start_ms, task.window_end_ms
                ));
            }
            if o.num_rows == 0 || o.num_rows > spec.flow.max_records_per_segment {
                return bad(format!(
                    "output {} has {} rows, expected 1..={}",
                    o.name, o.num_rows, spec.flow.max_records_per_segment
                ));
            }
            match object_size(&self.store, &o.location).await? {
                Some(size) if size == o.size_bytes => {}
                Some(size) => {
                    return bad(format!(
                        "output {} is {size} bytes in the store, reported {}",
                        o.location, o.size_bytes
                    ))
                }
                None => return bad(format!("output {} is missing from the store", o.location)),
            }
            rows += o.num_rows;
        }
        if rows != req.rows_out {
            return bad(format!("outputs hold {rows} rows, reported rows_out {}", req.rows_out));
        }
        match spec.flow.merge_type {
            MergeType::Concat if req.rows_out != req.rows_in => {
                return bad(format!("concat must keep every row: {} in, {} out", req.rows_in, req.rows_out))
            }
            MergeType::Rollup | MergeType::Dedup if req.rows_out > req.rows_in => {
                return bad(format!(
                    "{} cannot add rows: {} in, {} out",
                    spec.flow.merge_type.name(),
                    req.rows_in,
                    req.rows_out
                ))
            }
            _ => {}
        }
        if spec.flow.merge_type != MergeType::Dedup {
            for (metric, sum_in) in &req.metric_sums_in {
                let sum_out = req.metric_sums_out.get(metric).copied().unwrap_or(f64::NAN);
                let tol = 1e-9 * sum_in.abs().max(1.0) * (req.rows_in.max(1) as f64).sqrt();
                if (sum_in - sum_out).abs() > tol {
                    return bad(format!("sum of metric '{metric}' changed: {sum_in} in, {sum_out} out"));
                }
            }
        }
        Ok(())
    }

    /// Records a failed attempt: back to PENDING for another attempt, or
    /// FAILED after the last one (the table's later windows then wait).
    pub async fn fail(&self, req: &pb::FailTaskRequest) -> Result<()> {
        let leadership = self.leadership()?;
        let Some((mut task, entry, claim)) = self.current_attempt(&req.task_id, req.attempt, &req.minion_id).await?
        else {
            return Err(ControllerError::NotFound(format!("active task {}", req.task_id)));
        };
        task.errors.push(format!("attempt {}: {}", req.attempt, req.error));
        if task.attempts_in_round() >= task.max_attempts {
            self.finish_failed(task, &entry, Some(&claim), leadership).await?;
            return Ok(());
        }
        task.state = TaskState::Pending;
        task.not_before_ms = now_ms() + attempt_backoff_ms(task.attempts_in_round());
        let ok = self
            .kv
            .txn(
                vec![
                    Compare::ModRevision(entry.key.clone(), entry.mod_revision),
                    Compare::ModRevision(claim.key.clone(), claim.mod_revision),
                    Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
                ],
                vec![Op::put(entry.key.clone(), encode(&task)), Op::delete(claim.key.clone())],
            )
            .await?;
        if !ok {
            return Err(ControllerError::Stale(format!("task {} changed while recording the failure", req.task_id)));
        }
        warn!(table = %task.table, task = %task.id, attempt = req.attempt, error = %req.error, "attempt failed; will retry");
        Ok(())
    }
}

/// Runs the planning loop while this controller leads.
pub async fn planning_loop(auth: Authority, interval: Duration, cancel: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = auth.replan.notified() => {}
        }
        if auth.leadership.borrow().is_none() {
            continue;
        }
        if let Err(e) = auth.plan_all().await {
            if let Some(m) = &auth.metrics {
                m.errors.with_label_values(&["etcd"]).inc();
            }
            warn!(error = %e, "planning pass failed");
        }
    }
}
