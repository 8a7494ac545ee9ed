//! The commit authority: publishes planned tasks, commits completed
//! attempts, records failures and supersedes tasks whose plan no longer
//! holds. Each step reads what it needs, decides with a pure function of
//! [`crate::protocol`] (or [`crate::planner`], [`crate::validate`]) and
//! writes one etcd transaction comparing the revisions it read (DESIGN.md,
//! the commit protocol).
//!
//! Every way an attempt can end ends it here, decided by the leader: a
//! commit, a refused report (validation: the failure path, with backoff and
//! then FAILED), a superseded plan, a failure report, an attempt whose
//! claim vanished or that outlived its `timeoutMs`.

use r2o_common::config::TableSpec;
use r2o_common::kv::{KeyValue, Kv, Op};
use r2o_common::meta::{
    chunks, get_record, now_ms, range_records, ClaimRecord, Keys, SegmentMeta, SegmentStatus, TableRecord, TaskId,
    TaskRecord, TaskState, WatermarkRecord,
};
use r2o_common::store::{Layout, Store};
use r2o_proto::controller as pb;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::election::Leadership;
use crate::error::{ControllerError, Result};
use crate::planner::{plan, recheck, Decision};
use crate::protocol::{self, AttemptRevs, ReportTotals};
use crate::validate::{self, FooterCache};

/// Settings of the commit authority.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// Attempts per task round before it is FAILED, unless the table sets
    /// Pinot's `maxAttemptsPerTask`.
    pub max_attempts: u32,
    /// Attempt timeout unless the table sets Pinot's `timeoutMs`, ms.
    pub default_timeout_ms: i64,
    /// Grace past an attempt's `timeoutMs` before the leader ends it itself
    /// (the minion's own deadline should have ended it first), ms.
    pub attempt_grace_ms: i64,
}

/// The controller's state-changing logic over etcd and the segment store.
#[derive(Clone)]
pub struct Authority {
    pub(crate) kv: Kv,
    pub(crate) keys: Keys,
    pub(crate) store: Store,
    pub(crate) layout: Layout,
    pub(crate) cfg: AuthorityConfig,
    pub(crate) leadership: watch::Receiver<Option<Leadership>>,
    /// Wakes the planning loop after a commit, so the next window of the
    /// table is planned at once instead of on the next tick.
    pub(crate) replan: std::sync::Arc<tokio::sync::Notify>,
    /// Metrics observed while committing.
    pub(crate) metrics: Option<crate::metrics::ControllerMetrics>,
    /// Footers of REALTIME inputs, for validation.
    pub(crate) footers: FooterCache,
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
    Published(TaskId, r2o_common::window::Window),
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

/// Where an attempt stands, as read from etcd.
enum Attempt {
    /// It is the task's current attempt and holds its claim.
    Current { task: Box<TaskRecord>, revs: AttemptRevs },
    /// The task is no longer active (committed, superseded or reset).
    Gone,
}

/// The table's REALTIME segments and the revision of its segment marker,
/// read marker first: a change after the marker read moves the marker.
pub(crate) async fn segments_with_revision(kv: &Kv, keys: &Keys, raw: &str) -> Result<(Vec<SegmentMeta>, i64)> {
    let rev = kv.get(&keys.segments_marker(raw)).await?.map_or(0, |e| e.mod_revision);
    let segments = range_records::<SegmentMeta>(kv, &keys.segments(&format!("{raw}_REALTIME")))
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    Ok((segments, rev))
}

impl Authority {
    /// A new authority writing under `layout` in `store`.
    pub fn new(
        kv: Kv,
        keys: Keys,
        store: Store,
        layout: Layout,
        cfg: AuthorityConfig,
        leadership: watch::Receiver<Option<Leadership>>,
    ) -> Authority {
        Authority {
            kv,
            keys,
            store,
            layout,
            cfg,
            leadership,
            replan: Default::default(),
            metrics: None,
            footers: FooterCache::new(100_000),
        }
    }

    pub(crate) fn leadership(&self) -> Result<Leadership> {
        (*self.leadership.borrow()).ok_or_else(|| ControllerError::NotLeader { leader: "unknown".into() })
    }

    async fn watermark(&self, raw: &str) -> Result<(Option<WatermarkRecord>, i64)> {
        Ok(match get_record::<WatermarkRecord>(&self.kv, &self.keys.watermark(raw)).await? {
            None => (None, 0),
            Some((w, entry)) => (Some(w), entry.mod_revision),
        })
    }

    /// One planning pass over every table (leader only): publishes what is
    /// ready and ends attempts that can no longer end by themselves.
    /// Returns the tasks published.
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
        self.expire_attempts(leadership).await?;
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
        let (segments, segments_rev) = segments_with_revision(&self.kv, &self.keys, raw).await?;
        let now = now_ms();
        let (window, skipped_windows, inputs) =
            match plan(&spec.flow, &segments, wm.as_ref().map(|w| w.watermark_ms), now) {
                Decision::Run { window, skipped_windows, inputs } => (window, skipped_windows, inputs),
                Decision::Wait(reason) => return Ok(PlanOutcome::Wait(reason.to_string())),
            };
        let id = TaskId::new(raw, window.start_ms, now);
        let input_chunks = chunks::encode_all(&inputs).len() as u32;
        let task = TaskRecord {
            id: id.clone(),
            table: raw.to_string(),
            window_start_ms: window.start_ms,
            window_end_ms: window.end_ms,
            skipped_windows,
            input_count: inputs.len() as u64,
            input_chunks,
            input_rows: inputs.iter().map(|s| s.total_docs).sum(),
            input_bytes: inputs.iter().map(|s| s.size_bytes).sum(),
            segments_revision: segments_rev,
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
            rows_null_time: 0,
            output_count: 0,
            max_attempts: spec.flow.max_attempts_per_task.unwrap_or(self.cfg.max_attempts).max(1),
            timeout_ms: spec.flow.timeout_ms.unwrap_or(self.cfg.default_timeout_ms),
            not_before_ms: 0,
            round_start_attempt: 0,
            failed_rounds: 0,
            retry_at_ms: 0,
        };
        let input_revs = match chunks::write(&self.kv, &self.keys.inputs(&id), &inputs).await {
            Ok(r) => r,
            Err(r2o_common::Error::Limit(why)) => {
                return Ok(PlanOutcome::Wait(format!("window {window} cannot be planned: {why}")));
            }
            Err(e) => return Err(e.into()),
        };
        if !protocol::publish(&self.keys, &task, wm_rev, leadership, input_revs).apply(&self.kv).await? {
            let _ = self.kv.txn(vec![], vec![Op::delete_prefix(self.keys.inputs(&id))]).await;
            return Ok(PlanOutcome::Wait("the table changed while planning; planning again on the next tick".into()));
        }
        info!(table = %raw, task = %id, trigger, window_start_ms = window.start_ms, window_end_ms = window.end_ms, inputs = task.input_count, skipped_windows, "task published");
        Ok(PlanOutcome::Published(id, window))
    }

    /// Run now: plans `raw` at once (leader only; the planner's rules hold).
    pub async fn run_now(&self, raw: &str) -> Result<PlanOutcome> {
        let leadership = self.leadership()?;
        self.plan_table(raw, leadership, "manual").await
    }

    /// Resets a flow (leader only). `flush`: delete the lineage, manifests
    /// and inputs of the committed windows and the watermark (the janitor
    /// removes the files) and restart from the earliest data; otherwise
    /// (append) only abandon the in-flight task and continue from the
    /// watermark. `dry_run` reports what would go and changes nothing.
    pub async fn reset(&self, raw: &str, flush: bool, dry_run: bool) -> Result<pb::ResetTableResponse> {
        let leadership = self.leadership()?;
        if self.kv.get(&self.keys.table(raw)).await?.is_none() {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        }
        let offline = crate::registry::offline_segments(&self.kv, &self.keys, raw).await?;
        let windows = self.kv.range_keys(&self.keys.lineages(raw)).await?.len() as u64;
        let (wm, wm_rev) = self.watermark(raw).await?;
        let inflight = self.kv.get(&self.keys.inflight(raw)).await?;
        let abandoned = inflight.as_ref().map(|e| String::from_utf8_lossy(&e.value).into_owned()).unwrap_or_default();
        let mut resp = pb::ResetTableResponse {
            mode: if flush { "FLUSH" } else { "APPEND" }.into(),
            offline_segments: if flush { offline.len() as u64 } else { 0 },
            offline_rows: if flush { offline.iter().map(|s| s.total_docs).sum() } else { 0 },
            offline_bytes: if flush { offline.iter().map(|s| s.size_bytes).sum() } else { 0 },
            windows: if flush { windows } else { 0 },
            watermark_ms: wm.as_ref().map_or(0, |w| w.watermark_ms),
            abandoned_task: abandoned.clone(),
            done: false,
        };
        if dry_run {
            return Ok(resp);
        }
        use r2o_common::kv::Compare;
        let mut compares = vec![
            Compare::ModRevision(self.keys.watermark(raw), wm_rev),
            Compare::ModRevision(self.keys.inflight(raw), inflight.as_ref().map_or(0, |e| e.mod_revision)),
            Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
        ];
        let mut ops = vec![Op::delete(self.keys.inflight(raw))];
        if let Ok(id) = abandoned.parse::<TaskId>() {
            let task_key = self.keys.active_task(&id);
            let task = get_record::<TaskRecord>(&self.kv, &task_key).await?;
            compares.push(Compare::ModRevision(task_key.clone(), task.as_ref().map_or(0, |(_, e)| e.mod_revision)));
            if let Some((t, _)) = task {
                let mut gone = protocol::for_history(&t);
                gone.state = TaskState::Superseded;
                gone.finished_ms = now_ms();
                gone.errors.push(format!("superseded: the flow was reset ({})", resp.mode));
                ops.push(Op::put(self.keys.history(&id), r2o_common::meta::encode(&gone)));
            }
            ops.push(Op::delete(task_key));
            ops.push(Op::delete(self.keys.claim(&id)));
            ops.push(Op::delete_prefix(self.keys.inputs(&id)));
        }
        if flush {
            ops.push(Op::delete_prefix(self.keys.lineages(raw)));
            ops.push(Op::delete_prefix(self.keys.manifests(raw)));
            ops.push(Op::delete_prefix(self.keys.inputs_of_table(raw)));
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

    /// Ends attempts that cannot end by themselves and re-arms FAILED
    /// tasks whose round backoff has passed:
    /// - a RUNNING task whose claim is gone (its minion's lease expired)
    ///   with no attempts left in its round becomes FAILED;
    /// - a RUNNING task past `timeoutMs` plus the grace is ended as a failed
    ///   attempt (its claim released), whatever its minion is doing.
    async fn expire_attempts(&self, leadership: Leadership) -> Result<()> {
        let now = now_ms();
        let prefix = self.keys.claims();
        let claims: std::collections::HashMap<String, i64> = self
            .kv
            .range(&prefix)
            .await?
            .into_iter()
            .map(|kv| (kv.key[prefix.len()..].to_string(), kv.mod_revision))
            .collect();
        for (task, entry) in range_records::<TaskRecord>(&self.kv, &self.keys.active_tasks()).await? {
            let claim_rev = claims.get(&task.id.to_string()).copied().unwrap_or(0);
            let revs = AttemptRevs { task: entry.mod_revision, claim: claim_rev };
            match task.state {
                TaskState::Running if claim_rev == 0 && task.attempts_in_round() >= task.max_attempts => {
                    let attempt = task.attempt;
                    let next = protocol::attempt_failed(
                        task,
                        attempt,
                        "the attempt ended without a report (its minion died, lost its lease or gave the task back)",
                        now,
                    );
                    self.apply_failure(&next, &revs, leadership).await?;
                }
                TaskState::Running
                    if claim_rev != 0
                        && task.started_ms > 0
                        && now > task.started_ms + task.timeout_ms + self.cfg.attempt_grace_ms =>
                {
                    let attempt = task.attempt;
                    let error = format!(
                        "the attempt ran past timeoutMs ({} ms) and its claim was released by the leader",
                        task.timeout_ms
                    );
                    let next = protocol::attempt_failed(task, attempt, &error, now);
                    self.apply_failure(&next, &revs, leadership).await?;
                }
                TaskState::Failed if task.retry_at_ms > 0 && task.retry_at_ms <= now => {
                    self.rearm(task, &entry, leadership, "round backoff passed").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes a failed attempt's outcome; logs it.
    async fn apply_failure(&self, next: &TaskRecord, revs: &AttemptRevs, leadership: Leadership) -> Result<bool> {
        let ok = protocol::record_failure(&self.keys, next, revs, leadership).apply(&self.kv).await?;
        if ok {
            let error = next.errors.last().cloned().unwrap_or_default();
            if next.state == TaskState::Failed {
                warn!(table = %next.table, task = %next.id, attempt = next.attempt, error = %error, "task failed after its last attempt");
            } else {
                warn!(table = %next.table, task = %next.id, attempt = next.attempt, error = %error, not_before_ms = next.not_before_ms, "attempt failed; will retry");
            }
        }
        Ok(ok)
    }

    /// Starts a new round of attempts for a FAILED task.
    async fn rearm(&self, t: TaskRecord, entry: &KeyValue, leadership: Leadership, why: &str) -> Result<bool> {
        let next = protocol::rearmed(t);
        let ok = protocol::update_task(&self.keys, &next, entry.mod_revision, leadership).apply(&self.kv).await?;
        if ok {
            info!(table = %next.table, task = %next.id, attempt = next.attempt, failed_rounds = next.failed_rounds, why, "failed task re-armed");
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
        let id: TaskId = String::from_utf8_lossy(&entry.value)
            .parse()
            .map_err(|e| ControllerError::Common(r2o_common::Error::Meta(e)))?;
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
        Ok(id.to_string())
    }

    /// Reads the active task and the claim of `attempt` by `minion`.
    ///
    /// # Errors
    /// [`ControllerError::Stale`] saying why the attempt is not current.
    async fn current_attempt(&self, id: &TaskId, attempt: u32, minion: &str) -> Result<Attempt> {
        let Some((task, entry)) = get_record::<TaskRecord>(&self.kv, &self.keys.active_task(id)).await? else {
            return Ok(Attempt::Gone);
        };
        if task.attempt != attempt || task.state != TaskState::Running {
            return Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {id} is not current: the task is {} at attempt {}",
                task.state.name(),
                task.attempt
            )));
        }
        match get_record::<ClaimRecord>(&self.kv, &self.keys.claim(id)).await? {
            Some((c, centry)) if c.attempt == attempt && c.minion_id == minion => Ok(Attempt::Current {
                task: Box::new(task),
                revs: AttemptRevs { task: entry.mod_revision, claim: centry.mod_revision },
            }),
            _ => Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {id} no longer holds its claim (minion {minion}'s lease expired, it gave the task back, or the task was re-claimed)"
            ))),
        }
    }

    fn parse_id(text: &str) -> Result<TaskId> {
        text.parse().map_err(ControllerError::Invalid)
    }

    /// Commits a completed attempt (step 4 of the commit protocol). Returns
    /// `committed = false` when the same attempt was already committed.
    ///
    /// # Errors
    /// - [`ControllerError::Validation`]: the report was refused; the
    ///   attempt has been recorded as failed (retry with backoff, or FAILED).
    /// - [`ControllerError::Stale`]: the attempt is not current, or its plan
    ///   no longer holds (the task was superseded and will be planned again).
    /// - [`ControllerError::Conflict`] and etcd/store errors: retryable.
    pub async fn complete(&self, req: &pb::CompleteTaskRequest) -> Result<pb::CompleteTaskResponse> {
        let leadership = self.leadership()?;
        let id = Self::parse_id(&req.task_id)?;
        for _ in 0..3 {
            let (task, revs) = match self.current_attempt(&id, req.attempt, &req.minion_id).await? {
                Attempt::Current { task, revs } => (*task, revs),
                Attempt::Gone => return self.already_committed(&id, req.attempt).await,
            };
            let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
            let inputs: Vec<SegmentMeta> = chunks::read(&self.kv, &self.keys.inputs(&id)).await?;

            // the plan still holds: same watermark, same inputs
            let (wm, wm_rev) = self.watermark(&task.table).await?;
            let (segments_rev, changed) = self.plan_changed(&task, &spec, &inputs, wm.as_ref()).await?;
            if let Some(reason) = changed {
                let txn = protocol::supersede(&self.keys, &task, revs.task, leadership, &reason, now_ms());
                if txn.apply(&self.kv).await? {
                    warn!(table = %task.table, task = %id, attempt = req.attempt, reason = %reason, "task superseded at commit; planning the window again");
                    self.replan.notify_one();
                    return Err(ControllerError::Stale(format!(
                        "task {id} was superseded: {reason}; the window is planned again"
                    )));
                }
                continue;
            }

            // validate against the inputs and the staged files themselves
            let (evidence, input_footers) = validate::gather(&self.store, &self.footers, &req.outputs, &inputs).await?;
            if let Err(why) = validate::check(&task, &spec, &self.layout, &inputs, &input_footers, req, &evidence) {
                let msg = format!("validation failed: {why}");
                let next = protocol::attempt_failed(task, req.attempt, &msg, now_ms());
                if !self.apply_failure(&next, &revs, leadership).await? {
                    continue;
                }
                return Err(ControllerError::Validation(format!("task {id} attempt {}: {why}", req.attempt)));
            }

            // outputs to a manifest, then the commit
            let now = now_ms();
            let outputs: Vec<SegmentMeta> = req
                .outputs
                .iter()
                .map(|o| SegmentMeta {
                    segment_name: o.name.clone(),
                    table_name: spec.offline_name(),
                    status: SegmentStatus::Done,
                    start_time_ms: o.start_time_ms,
                    end_time_ms: o.end_time_ms,
                    total_docs: o.num_rows,
                    size_bytes: o.size_bytes,
                    schema_fingerprint: req.schema_fingerprint.clone(),
                    location: o.location.clone(),
                    partition: o.partition,
                    created_ms: now,
                    end_of_stream: false,
                })
                .collect();
            let manifest = match chunks::write(&self.kv, &self.keys.manifest(&id, req.attempt), &outputs).await {
                Ok(m) => m,
                Err(r2o_common::Error::Limit(why)) => {
                    let msg = format!("validation failed: {why} (raise maxNumRecordsPerSegment)");
                    let next = protocol::attempt_failed(task, req.attempt, &msg, now);
                    self.apply_failure(&next, &revs, leadership).await?;
                    return Err(ControllerError::Validation(format!("task {id} attempt {}: {why}", req.attempt)));
                }
                Err(e) => return Err(e.into()),
            };
            let totals = ReportTotals {
                attempt: req.attempt,
                rows_in: req.rows_in,
                rows_out: req.rows_out,
                bytes_in: req.bytes_in,
                bytes_out: outputs.iter().map(|o| o.size_bytes).sum(),
                rows_null_time: req.rows_null_time,
                outputs: outputs.len() as u64,
                output_chunks: manifest.len() as u32,
            };
            let done = protocol::committed(&task, &totals, wm.as_ref(), now);
            let table_revs = protocol::TableRevs { watermark: wm_rev, segments: segments_rev };
            let txn = protocol::commit(&self.keys, &task, &revs, table_revs, leadership, manifest, &done);
            if !txn.apply(&self.kv).await? {
                continue; // something moved: decide again from a fresh read
            }
            self.replan.notify_one();
            if let Some(m) = &self.metrics {
                m.task_duration
                    .with_label_values(&[&task.table])
                    .observe((now - task.started_ms).max(0) as f64 / 1000.0);
                if req.attempt == 1 {
                    m.queue_wait
                        .with_label_values(&[&task.table])
                        .observe((task.started_ms - task.created_ms).max(0) as f64 / 1000.0);
                }
            }
            if req.rows_null_time > 0 {
                warn!(table = %task.table, task = %id, rows_null_time = req.rows_null_time, "rows with a NULL time value belong to no window and were not moved");
            }
            info!(table = %task.table, task = %id, attempt = req.attempt, window_start_ms = task.window_start_ms, window_end_ms = task.window_end_ms, rows_in = req.rows_in, rows_out = req.rows_out, segments = req.outputs.len(), "window committed");
            return Ok(pb::CompleteTaskResponse { committed: true, watermark_ms: task.window_end_ms });
        }
        Err(ControllerError::Conflict(format!(
            "the commit of task {id} attempt {} kept racing other writes; nothing was committed, report again",
            req.attempt
        )))
    }

    /// Whether the task's plan still holds at commit: the watermark is the
    /// one it was planned from, and, when the table's segments changed since
    /// planning, the planner would plan the same window with the same
    /// inputs. Returns the segment marker's revision checked and the reason
    /// when it does not hold.
    async fn plan_changed(
        &self,
        task: &TaskRecord,
        spec: &TableSpec,
        inputs: &[SegmentMeta],
        wm: Option<&WatermarkRecord>,
    ) -> Result<(i64, Option<String>)> {
        let from = task.from_watermark_ms(spec.flow.bucket_ms);
        if let Some(w) = wm {
            if w.watermark_ms != from {
                return Ok((
                    0,
                    Some(format!("it was planned from watermark {from} but the watermark is {}", w.watermark_ms)),
                ));
            }
        }
        let marker = self.kv.get(&self.keys.segments_marker(&task.table)).await?.map_or(0, |e| e.mod_revision);
        if marker == task.segments_revision {
            return Ok((marker, None));
        }
        let (segments, rev) = segments_with_revision(&self.kv, &self.keys, &task.table).await?;
        let names: Vec<String> = inputs.iter().map(|s| s.segment_name.clone()).collect();
        let window = r2o_common::window::Window { start_ms: task.window_start_ms, end_ms: task.window_end_ms };
        // a cold-start plan is checked as a cold start: an earlier segment moves the first window
        let position = wm.map(|w| w.watermark_ms);
        let result = match position {
            Some(_) => recheck(&spec.flow, &segments, from, window, task.skipped_windows, &names, now_ms()),
            None => match plan(&spec.flow, &segments, None, now_ms()) {
                Decision::Run { window: w, skipped_windows: k, .. } if w == window && k == task.skipped_windows => {
                    recheck(&spec.flow, &segments, from, window, task.skipped_windows, &names, now_ms())
                }
                Decision::Run { window: w, .. } => Err(format!("the first window is now {w}, not {window}")),
                Decision::Wait(reason) => Err(format!("window {window} is no longer ready: {reason}")),
            },
        };
        // inputs registered again under the same name with other data would be refused at
        // registration; a changed location or row count means the input is not the one read
        let same_data = result.is_ok()
            && inputs.iter().all(|i| {
                segments.iter().any(|s| {
                    s.segment_name == i.segment_name && s.location == i.location && s.total_docs == i.total_docs
                })
            });
        match result {
            Err(why) => Ok((rev, Some(why))),
            Ok(()) if !same_data => Ok((rev, Some("an input segment's file or row count changed".into()))),
            Ok(()) => Ok((rev, None)),
        }
    }

    async fn already_committed(&self, id: &TaskId, attempt: u32) -> Result<pb::CompleteTaskResponse> {
        match get_record::<TaskRecord>(&self.kv, &self.keys.history(id)).await? {
            Some((t, _)) if t.state == TaskState::Succeeded && t.attempt == attempt => {
                Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: t.window_end_ms })
            }
            Some((t, _)) => Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {id} is not current: the task finished as {} at attempt {}",
                t.state.name(),
                t.attempt
            ))),
            None => Err(ControllerError::NotFound(format!("task {id}"))),
        }
    }

    /// Records a failed attempt: back to PENDING for another attempt, or
    /// FAILED after the last one (the table's later windows then wait).
    pub async fn fail(&self, req: &pb::FailTaskRequest) -> Result<()> {
        let leadership = self.leadership()?;
        let id = Self::parse_id(&req.task_id)?;
        let (task, revs) = match self.current_attempt(&id, req.attempt, &req.minion_id).await? {
            Attempt::Current { task, revs } => (*task, revs),
            Attempt::Gone => return Err(ControllerError::NotFound(format!("active task {id}"))),
        };
        let next = protocol::attempt_failed(task, req.attempt, &req.error, now_ms());
        if !self.apply_failure(&next, &revs, leadership).await? {
            return Err(ControllerError::Conflict(format!(
                "task {id} changed while recording the failure; report again"
            )));
        }
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

#[cfg(test)]
mod tests {
    //! The commit authority on the in-memory store and an in-memory segment
    //! store: staged files are real Parquet, written as a minion would.
    use super::*;
    use arrow::array::{Float32Array, Int64Array, RecordBatch, StringArray};
    use r2o_common::columnar::write_parquet;
    use r2o_common::kv::{Compare, MemKv};
    use r2o_common::meta::{encode, ClaimRecord};
    use r2o_common::store::{open_store, put_bytes};
    use serde_json::json;
    use std::sync::Arc;

    const H: i64 = 3_600_000;

    struct World {
        auth: Authority,
        spec: TableSpec,
        _tx: watch::Sender<Option<Leadership>>,
    }

    async fn world(extra: serde_json::Value) -> World {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/a");
        let store = open_store("memory://").unwrap();
        kv.put(&keys.leader(), b"me".to_vec(), None).await.unwrap();
        let create_revision = kv.get(&keys.leader()).await.unwrap().unwrap().create_revision;
        let (tx, rx) = watch::channel(Some(Leadership { lease: 1, create_revision }));
        let mut task = json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h", "mergeType": "rollup", "maxAttemptsPerTask": "2"});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            task[k] = v;
        }
        let config = json!({"tableName": "t__x", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
            "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}});
        let schema = json!({"dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
            "metricFieldSpecs": [{"name": "f", "dataType": "FLOAT"}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH"}]});
        let spec = TableSpec::from_json(config.clone(), schema.clone()).unwrap();
        let rec = TableRecord { table_config: config, schema, created_ms: 0, paused: false };
        kv.put(&keys.table("t__x"), encode(&rec), None).await.unwrap();
        let cfg = AuthorityConfig { max_attempts: 3, default_timeout_ms: 60_000, attempt_grace_ms: 60_000 };
        let auth = Authority::new(kv, keys, store, Layout::new("ns"), cfg, rx);
        World { auth, spec, _tx: tx }
    }

    fn rows(spec: &TableSpec, keys: &[&str], f: f32, ts: i64) -> RecordBatch {
        RecordBatch::try_new(
            spec.schema.arrow_schema(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Float32Array::from(vec![f; keys.len()])),
                Arc::new(Int64Array::from(vec![ts; keys.len()])),
            ],
        )
        .unwrap()
    }

    /// Registers a DONE REALTIME segment holding `batch`.
    async fn register(w: &World, name: &str, batch: &RecordBatch, start: i64, end: i64) {
        let a = &w.auth;
        let bytes = write_parquet(&w.spec.schema.arrow_schema(), std::slice::from_ref(batch)).unwrap();
        let location = crate::registry::prepare_upload(&a.kv, &a.keys, &a.layout, "t__x", name).await.unwrap();
        put_bytes(&a.store, &location, bytes.clone()).await.unwrap();
        let meta = SegmentMeta {
            segment_name: name.into(),
            table_name: "t__x_REALTIME".into(),
            status: SegmentStatus::Done,
            start_time_ms: start,
            end_time_ms: end,
            total_docs: batch.num_rows() as u64,
            size_bytes: bytes.len() as u64,
            schema_fingerprint: w.spec.schema.fingerprint(),
            location,
            partition: 0,
            created_ms: 0,
            end_of_stream: false,
        };
        crate::registry::add_segment(&a.kv, &a.keys, &a.store, &a.layout, meta).await.unwrap();
    }

    /// Claims the table's active task as minion `m`; returns it.
    async fn claim(w: &World) -> TaskRecord {
        let a = &w.auth;
        let (t, entry) = range_records::<TaskRecord>(&a.kv, &a.keys.active_tasks()).await.unwrap().remove(0);
        let mut running = t.clone();
        running.attempt += 1;
        running.state = TaskState::Running;
        running.started_ms = now_ms();
        let claim = ClaimRecord { minion_id: "m".into(), attempt: running.attempt, lease: 0, claimed_ms: 0 };
        assert!(a
            .kv
            .txn(
                vec![Compare::ModRevision(entry.key.clone(), entry.mod_revision)],
                vec![Op::put(entry.key.clone(), encode(&running)), Op::put(a.keys.claim(&t.id), encode(&claim))],
            )
            .await
            .unwrap());
        running
    }

    /// Stages `outputs` (batches) as the attempt's files and builds its report.
    async fn staged_report(
        w: &World,
        t: &TaskRecord,
        outputs: &[RecordBatch],
        rows_in: u64,
        sum_in: f64,
        sum_out: f64,
    ) -> pb::CompleteTaskRequest {
        let a = &w.auth;
        let prefix = a.layout.staging_prefix(&t.id, t.attempt);
        let mut staged = vec![];
        for (i, b) in outputs.iter().enumerate() {
            let bytes = write_parquet(&w.spec.schema.arrow_schema(), std::slice::from_ref(b)).unwrap();
            let location = format!("{prefix}o{i}.parquet");
            put_bytes(&a.store, &location, bytes.clone()).await.unwrap();
            staged.push(pb::StagedSegment {
                name: format!("t__x_{}_{}_all_{i}", t.window_start_ms, t.window_end_ms),
                location,
                num_rows: b.num_rows() as u64,
                size_bytes: bytes.len() as u64,
                start_time_ms: t.window_start_ms,
                end_time_ms: t.window_start_ms,
                partition: -1,
            });
        }
        pb::CompleteTaskRequest {
            task_id: t.id.to_string(),
            attempt: t.attempt,
            minion_id: "m".into(),
            rows_out: outputs.iter().map(|b| b.num_rows() as u64).sum(),
            outputs: staged,
            rows_in,
            bytes_in: 1,
            metric_sums: [(
                "f".to_string(),
                pb::MetricSums {
                    float_in: sum_in,
                    float_out: sum_out,
                    float_abs_in: sum_in.abs(),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            schema_fingerprint: w.spec.schema.fingerprint(),
            rows_null_time: 0,
        }
    }

    #[tokio::test]
    async fn a_float_rollup_commits_and_a_refused_report_ends_its_attempt() {
        let w = world(json!({})).await;
        let t0 = 400_000 * H;
        let input = rows(&w.spec, &["a"; 10], 0.1, t0 + 5);
        register(&w, "s0", &input, t0 + 5, t0 + 5).await;
        register(&w, "s1", &rows(&w.spec, &["b"], 1.0, t0 + H + 1), t0 + H + 1, t0 + H + 1).await;
        assert_eq!(w.auth.plan_all().await.unwrap(), 1);
        let t = claim(&w).await;
        // the f32 group sum of ten 0.1s differs from their f64 sum: still a correct rollup
        let mut acc = 0f32;
        for _ in 0..10 {
            acc += 0.1;
        }
        let out = rows(&w.spec, &["a"], acc, t0);
        let sum_in = 10.0 * f64::from(0.1f32);
        // a report that lost a row's worth of the metric is refused ...
        let bad = staged_report(&w, &t, std::slice::from_ref(&out), 10, sum_in, f64::from(acc) - 0.1).await;
        let e = w.auth.complete(&bad).await.unwrap_err();
        assert!(matches!(e, ControllerError::Validation(_)), "{e}");
        // ... and ends the attempt: claim released, back to PENDING with the error kept
        let (stored, _) = get_record::<TaskRecord>(&w.auth.kv, &w.auth.keys.active_task(&t.id)).await.unwrap().unwrap();
        assert_eq!(stored.state, TaskState::Pending);
        assert!(
            stored.errors[0].contains("validation failed") && stored.errors[0].contains("'f'"),
            "{:?}",
            stored.errors
        );
        assert!(w.auth.kv.get(&w.auth.keys.claim(&t.id)).await.unwrap().is_none(), "the claim is released");
        // the next attempt reports correctly and commits
        let mut t2 = claim(&w).await;
        t2.attempt = 2;
        let good = staged_report(&w, &t2, &[out], 10, sum_in, f64::from(acc)).await;
        let r = w.auth.complete(&good).await.unwrap();
        assert!(r.committed);
        assert_eq!(r.watermark_ms, t0 + H);
        // a duplicate of the committed report commits nothing
        assert!(!w.auth.complete(&good).await.unwrap().committed);
        let offline = crate::registry::offline_segments(&w.auth.kv, &w.auth.keys, "t__x").await.unwrap();
        assert_eq!(offline.len(), 1);
    }

    #[tokio::test]
    async fn a_window_with_hundreds_of_outputs_commits() {
        let w = world(json!({"mergeType": "concat", "maxNumRecordsPerSegment": "2"})).await;
        let t0 = 400_000 * H;
        let keys: Vec<String> = (0..600).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        register(&w, "s0", &rows(&w.spec, &refs, 1.0, t0), t0, t0).await;
        register(&w, "s1", &rows(&w.spec, &["z"], 1.0, t0 + H), t0 + H, t0 + H).await;
        w.auth.plan_all().await.unwrap();
        let t = claim(&w).await;
        let outs: Vec<RecordBatch> = (0..300).map(|i| rows(&w.spec, &refs[2 * i..2 * i + 2], 1.0, t0)).collect();
        let req = staged_report(&w, &t, &outs, 600, 600.0, 600.0).await;
        assert!(w.auth.complete(&req).await.unwrap().committed, "300 outputs fit etcd's limits");
        let offline = crate::registry::offline_segments(&w.auth.kv, &w.auth.keys, "t__x").await.unwrap();
        assert_eq!(offline.len(), 300);
    }

    #[tokio::test]
    async fn a_segment_registered_while_its_window_is_in_flight_is_not_lost() {
        let w = world(json!({})).await;
        let t0 = 400_000 * H;
        register(&w, "s0", &rows(&w.spec, &["a"], 1.0, t0 + 5), t0 + 5, t0 + 5).await;
        register(&w, "s9", &rows(&w.spec, &["z"], 1.0, t0 + 9 * H), t0 + 9 * H, t0 + 9 * H).await;
        w.auth.plan_all().await.unwrap();
        let t = claim(&w).await;
        // while the attempt runs, a DONE segment with rows in its window is registered,
        // and one in a window the task would skip
        register(&w, "late", &rows(&w.spec, &["b"], 2.0, t0 + 7), t0 + 7, t0 + 7).await;
        let req = staged_report(&w, &t, &[rows(&w.spec, &["a"], 1.0, t0)], 1, 1.0, 1.0).await;
        let e = w.auth.complete(&req).await.unwrap_err();
        assert!(matches!(&e, ControllerError::Stale(m) if m.contains("superseded") && m.contains("late")), "{e}");
        let (h, _) = get_record::<TaskRecord>(&w.auth.kv, &w.auth.keys.history(&t.id)).await.unwrap().unwrap();
        assert_eq!(h.state, TaskState::Superseded);
        assert!(w.auth.kv.get(&w.auth.keys.watermark("t__x")).await.unwrap().is_none(), "nothing was committed");
        // the window is planned again, with the new segment among its inputs
        w.auth.plan_all().await.unwrap();
        let (again, _) = range_records::<TaskRecord>(&w.auth.kv, &w.auth.keys.active_tasks()).await.unwrap().remove(0);
        assert_eq!((again.window_start_ms, again.input_count), (t0, 2));
        // a segment registered after this window (the planner's recheck covers
        // skipped windows) does not disturb it: it commits
        let t = claim(&w).await;
        register(&w, "later", &rows(&w.spec, &["c"], 1.0, t0 + 3 * H), t0 + 3 * H, t0 + 3 * H).await;
        let req = staged_report(&w, &t, &[rows(&w.spec, &["a"], 3.0, t0)], 2, 3.0, 3.0).await;
        assert!(w.auth.complete(&req).await.unwrap().committed);
    }
}
