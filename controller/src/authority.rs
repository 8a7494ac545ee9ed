//! The commit authority: publishes planned tasks, commits completed
//! attempts in window order, stages attempts that finish ahead of their
//! predecessors, records failures and supersedes tasks whose plan no longer
//! holds. Each step reads what it needs, decides with a pure function of
//! [`crate::protocol`] (or [`crate::planner`], [`crate::validate`]) and
//! writes one etcd transaction comparing the revisions it read (DESIGN.md,
//! the commit protocol).
//!
//! Many tasks of a table may be in flight at once (up to a limit); each
//! covers a run of consecutive windows starting where the previous one ends
//! (the table's frontier). A task commits only when the watermark has
//! reached its start; one that finishes earlier is validated and STAGED,
//! and commits as soon as its predecessors have. A failed task holds the
//! ones after it. When a task's plan no longer holds, it is superseded and
//! the table's epoch moves: every task planned after it is abandoned (it can
//! no longer commit) and the range is planned again.
//!
//! Every way an attempt can end ends it here, decided by the leader: a
//! commit or staging, a refused report (validation: the failure path, with
//! backoff and then FAILED), a superseded plan, a failure report, an attempt
//! whose claim vanished or that outlived its `timeoutMs`.

use r2o_common::config::TableSpec;
use r2o_common::kv::{Compare, KeyValue, Kv, Op};
use r2o_common::meta::chunks::ListCache;
use r2o_common::meta::{
    chunks, encode, get_record, now_ms, range_records, ClaimRecord, FrontierRecord, Keys, MinionRecord, SegmentMeta,
    SegmentStatus, TableRecord, TaskId, TaskRecord, TaskState, WatermarkRecord, WindowStats,
};
use r2o_common::store::{Layout, Store};
use r2o_proto::controller as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::election::Leadership;
use crate::error::{ControllerError, Result};
use crate::planner::{plan, plan_late, recheck, split_window, Budget, Decision, LatePlan, Split};
use crate::protocol::{self, AttemptRevs, ReportTotals, TableRevs};
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
    /// How much one task may take (input rows unless the table sets
    /// `maxNumRecordsPerTask`, input bytes, windows).
    pub budget: Budget,
    /// Tasks of one table in flight at once (0: the live minions' slots plus one).
    pub max_tasks_per_table: usize,
    /// The install's store URI (`--store`); a discovery source may not
    /// overlap its namespace (empty: not checked).
    pub store_uri: String,
}

/// A table's REALTIME segments as last read, with the revision of the
/// table's segment marker they reflect: re-read only when the marker moved.
#[derive(Clone, Default)]
pub struct SegmentCache {
    inner: Arc<Mutex<HashMap<String, CachedSegments>>>,
}

/// (marker revision, the table's REALTIME segments at it).
type CachedSegments = (i64, Arc<Vec<SegmentMeta>>);

impl SegmentCache {
    /// The table's segments and the marker revision they reflect: one etcd
    /// read when nothing changed, a paged re-read when something did.
    pub async fn get(&self, kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<(Arc<Vec<SegmentMeta>>, i64)> {
        let rev = kv.get(&keys.segments_marker(raw)).await?.map_or(0, |e| e.mod_revision);
        if let Some((r, segs)) = self.inner.lock().ok().and_then(|m| m.get(raw).cloned()) {
            if r == rev {
                return Ok((segs, rev));
            }
        }
        let (segs, rev) = read_segments(kv, keys, raw).await?;
        let segs = Arc::new(segs);
        if let Ok(mut m) = self.inner.lock() {
            m.insert(raw.to_string(), (rev, segs.clone()));
        }
        Ok((segs, rev))
    }
}

/// The commit authority's state-changing logic over etcd and the segment store.
#[derive(Clone)]
pub struct Authority {
    pub(crate) kv: Kv,
    pub(crate) keys: Keys,
    pub(crate) store: Store,
    pub(crate) layout: Layout,
    pub(crate) cfg: AuthorityConfig,
    pub(crate) leadership: watch::Receiver<Option<Leadership>>,
    /// Wakes the planning loop after a commit, so the table's next tasks are
    /// planned at once instead of on the next tick.
    pub(crate) replan: Arc<tokio::sync::Notify>,
    /// Metrics observed while committing.
    pub(crate) metrics: Option<crate::metrics::ControllerMetrics>,
    /// Footers of REALTIME inputs, for validation.
    pub(crate) footers: FooterCache,
    /// REALTIME segments per table, revision-checked.
    pub(crate) segments: SegmentCache,
    /// Task input lists, revision-checked: a split window's list is read by
    /// each of its sub-tasks' reports and by every commit pass (at most
    /// 200,000 inputs kept, ~100 MB).
    pub(crate) inputs: ListCache<SegmentMeta>,
    /// The last reason per table why a ready window could not be published
    /// (logged once per change, not every tick).
    plan_problems: Arc<Mutex<HashMap<String, String>>>,
    /// The last `created_ms` a task id got from this authority (see
    /// [`Authority::fresh_created_ms`]).
    last_created_ms: Arc<std::sync::atomic::AtomicI64>,
    /// When this leader first saw each RUNNING attempt, on its own clock
    /// ((task id, attempt) -> ms): attempt timeouts count from it, never
    /// from a minion's clock. A new leader starts counting afresh.
    attempt_seen: Arc<Mutex<HashMap<(String, u32), i64>>>,
}

/// Why a task of `windows` over `inputs` input segments, listed in `n`
/// chunks ([`chunks::encode_all`]), cannot be published, if it cannot: its
/// input list must fit in [`r2o_common::meta::MAX_CHUNKS`] chunks of task
/// metadata (256 MiB, about 700,000 segments). Pure; shared by planning and
/// `r2o watermark`.
pub fn inputs_problem(windows: &[r2o_common::window::Window], inputs: usize, n: usize) -> Option<String> {
    (n > r2o_common::meta::MAX_CHUNKS).then(|| {
        format!(
            "window {} cannot be planned: its {} input segments need {n} chunks of task metadata, more than the {} \
             one task may have; use a smaller bucketTimePeriod or fewer, larger segments",
            windows.first().map(|w| w.to_string()).unwrap_or_default(),
            inputs,
            r2o_common::meta::MAX_CHUNKS
        )
    })
}

/// What a freshly planned task is made of (see [`Authority::new_task`]).
struct NewTask<'a> {
    id: TaskId,
    from_ms: i64,
    windows: Vec<r2o_common::window::Window>,
    skipped_windows: u64,
    epoch_revision: i64,
    inputs: &'a [SegmentMeta],
    input_chunks: u32,
    segments_revision: i64,
    table_config: serde_json::Value,
    trigger: String,
    late: Option<r2o_common::meta::LateRun>,
}

/// The OFFLINE segments a completion report stages, as manifest entries.
fn offline_metas(spec: &TableSpec, req: &pb::CompleteTaskRequest, now: i64) -> Vec<SegmentMeta> {
    req.outputs
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
            late: false,
            late_before_ms: None,
            window_start_ms: Some(o.window_start_ms),
            ..Default::default()
        })
        .collect()
}

/// A validated report's totals.
fn report_totals(req: &pb::CompleteTaskRequest, outputs: &[SegmentMeta], output_chunks: u32) -> ReportTotals {
    ReportTotals {
        attempt: req.attempt,
        rows_in: req.rows_in,
        rows_out: req.rows_out,
        bytes_in: req.bytes_in,
        bytes_out: outputs.iter().map(|o| o.size_bytes).sum(),
        rows_null_time: req.rows_null_time,
        rows_filtered: req.rows_filtered,
        outputs: outputs.len() as u64,
        output_chunks,
        windows: req.windows.iter().map(WindowStats::from).collect(),
    }
}

/// The task records a planned task is published as: itself, or the
/// sub-tasks of its one window (see [`split_window`]). Sub-task `k` has the
/// id of the task with `created_ms + k`, names the first sub-task as its
/// group and reads the first sub-task's input list (all of it when split by
/// hash, its own range when split by input). Pure.
pub fn sub_tasks(task: TaskRecord, inputs: &[SegmentMeta], split: Split) -> Vec<TaskRecord> {
    let n = match &split {
        Split::Whole => return vec![task],
        Split::ByHash(n) => *n as usize,
        Split::ByInput(ranges) => ranges.len(),
    };
    let lead = task.id.clone();
    (0..n)
        .map(|k| {
            let mut t = task.clone();
            t.id = TaskId { created_ms: lead.created_ms + k as i64, ..lead.clone() };
            t.sub_task = k as u32;
            t.sub_tasks = n as u32;
            t.group = lead.to_string();
            if k > 0 {
                t.inputs_of = lead.to_string();
            }
            if let Split::ByInput(ranges) = &split {
                let r = &ranges[k];
                t.input_from = r.start as u64;
                t.input_to = r.end as u64;
                let mine = &inputs[r.clone()];
                t.input_count = mine.len() as u64;
                t.input_rows = mine.iter().map(|s| s.total_docs).sum();
                t.input_bytes = mine.iter().map(|s| s.size_bytes).sum();
            }
            t
        })
        .collect()
}

/// The task records a planned task is published as ([`sub_tasks`]), in one
/// transaction within etcd's limits: each sub-task record carries the
/// table's config and schema, so a wide schema split many ways can pass the
/// 1.5 MiB request limit; the window then runs whole (one task; the minion's
/// bounded-memory path holds a window of any size) rather than never being
/// published (finding 9 of issue 19). Pure.
pub fn publishable(task: TaskRecord, inputs: &[SegmentMeta], split: Split) -> Vec<TaskRecord> {
    let tasks = sub_tasks(task.clone(), inputs, split);
    if tasks.len() <= 1 {
        return tasks;
    }
    // each put's record and key; 64 KiB left for the frontier, the
    // watermark and the compares
    let bytes: usize = tasks.iter().map(|t| encode(t).len() + 2 * t.id.to_string().len() + 64).sum();
    if bytes > r2o_common::kv::MAX_REQUEST_BYTES - 64 * 1024 {
        return vec![task];
    }
    tasks
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
    /// Tasks were published (their ids), the last one ending at the window end given.
    Published(Vec<TaskId>, i64),
    /// As many tasks as allowed are in flight.
    InFlight(String),
    /// The table is paused.
    Paused,
    /// Nothing is eligible, and why.
    Wait(String),
}

impl std::fmt::Display for PlanOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use r2o_common::window::format_utc;
        match self {
            PlanOutcome::Published(ids, end) => write!(
                f,
                "{} task(s) published up to {}: {}",
                ids.len(),
                format_utc(*end),
                ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            PlanOutcome::InFlight(why) => write!(f, "{why}"),
            PlanOutcome::Paused => write!(f, "the table is paused"),
            PlanOutcome::Wait(why) => write!(f, "nothing to run: {why}"),
        }
    }
}

/// Whether a task's plan still holds (see [`Authority::check_plan`]).
enum PlanCheck {
    /// It holds: the watermark and the revisions a commit checks.
    Holds { wm: Option<WatermarkRecord>, revs: TableRevs },
    /// The table's epoch moved (or a late run's window no longer needs it):
    /// the task can never commit and is dropped.
    Abandoned(String),
    /// Its range or inputs changed: it is superseded and planned again.
    Supersede(String),
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
pub(crate) async fn read_segments(kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<(Vec<SegmentMeta>, i64)> {
    let rev = kv.get(&keys.segments_marker(raw)).await?.map_or(0, |e| e.mod_revision);
    let segments = r2o_common::meta::read_realtime(kv, keys, raw).await?;
    Ok((segments, rev))
}

/// A table's open tasks of its current epoch, in window order, with their
/// records' revisions; and the epoch's revision.
pub(crate) async fn open_tasks(kv: &Kv, keys: &Keys, raw: &str) -> Result<(Vec<(TaskRecord, KeyValue)>, i64)> {
    let epoch = kv.get(&keys.epoch(raw)).await?.map_or(0, |e| e.mod_revision);
    let mut tasks: Vec<(TaskRecord, KeyValue)> = range_records::<TaskRecord>(kv, &keys.active_tasks())
        .await?
        .into_iter()
        .filter(|(t, _)| t.table == raw && t.epoch_revision == epoch && t.is_open())
        .collect();
    tasks.sort_by_key(|(t, _)| (t.from_ms, t.created_ms));
    Ok((tasks, epoch))
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
            footers: FooterCache::new(200_000),
            segments: SegmentCache::default(),
            inputs: ListCache::new(200_000),
            plan_problems: Default::default(),
            last_created_ms: Default::default(),
            attempt_seen: Default::default(),
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

    /// The watermark with its key's mod and create revisions (0, 0: absent).
    async fn watermark_entry(&self, raw: &str) -> Result<(Option<WatermarkRecord>, i64, i64)> {
        Ok(match get_record::<WatermarkRecord>(&self.kv, &self.keys.watermark(raw)).await? {
            None => (None, 0, 0),
            Some((w, entry)) => (Some(w), entry.mod_revision, entry.create_revision),
        })
    }

    async fn epoch(&self, raw: &str) -> Result<i64> {
        Ok(self.kv.get(&self.keys.epoch(raw)).await?.map_or(0, |e| e.mod_revision))
    }

    /// Tasks of one table allowed in flight: the setting, or the live
    /// minions' slots plus one (so a minion finishing a task finds the next).
    async fn task_limit(&self) -> Result<usize> {
        if self.cfg.max_tasks_per_table > 0 {
            return Ok(self.cfg.max_tasks_per_table);
        }
        let slots: u64 = range_records::<MinionRecord>(&self.kv, &self.keys.minions())
            .await?
            .iter()
            .map(|(m, _)| u64::from(m.slots))
            .sum();
        Ok((slots as usize + 1).max(2))
    }

    /// Distinct machines among the live minions (`MinionRecord::host`; a
    /// record without one counts as a machine of its own).
    async fn minion_hosts(&self) -> Result<usize> {
        let minions = range_records::<MinionRecord>(&self.kv, &self.keys.minions()).await?;
        let hosts: std::collections::BTreeSet<&str> =
            minions.iter().map(|(m, _)| if m.host.is_empty() { m.id.as_str() } else { m.host.as_str() }).collect();
        Ok(hosts.len())
    }

    /// One planning pass over every table (leader only): commits what is
    /// staged and due, publishes what is ready up to the in-flight limit, and
    /// ends attempts that can no longer end by themselves. Returns the tasks
    /// published.
    pub async fn plan_all(&self) -> Result<usize> {
        let leadership = self.leadership()?;
        let tables = self.kv.range_keys(&self.keys.tables()).await?;
        let prefix = self.keys.tables();
        let mut published = 0;
        for key in tables {
            let raw = key[prefix.len()..].to_string();
            if let Err(e) = self.commit_ready(&raw, leadership).await {
                warn!(table = %raw, error = %e, "committing staged tasks failed");
            }
            match self.plan_on_schedule(&raw, leadership).await {
                Ok(PlanOutcome::Published(ids, _)) => published += ids.len(),
                Ok(_) => {}
                Err(e) => warn!(table = %raw, error = %e, "planning failed"),
            }
            match self.plan_late_table(&raw, leadership).await {
                Ok(true) => published += 1,
                Ok(false) => {}
                Err(e) => warn!(table = %raw, error = %e, "planning a late-data run failed"),
            }
        }
        self.expire_attempts(leadership).await?;
        Ok(published)
    }

    /// Plans one table: publishes its next tasks, one after the other from
    /// its frontier, until the in-flight limit or a wait. `trigger` is
    /// recorded on the tasks.
    async fn plan_table(&self, raw: &str, leadership: Leadership, trigger: &str) -> Result<PlanOutcome> {
        let Some((rec, _)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        if rec.paused {
            return Ok(PlanOutcome::Paused);
        }
        let spec = TableSpec::from_json(rec.table_config, rec.schema)?;
        let limit = self.task_limit().await?;
        let mut published: Vec<TaskId> = Vec::new();
        let mut last_end = 0;
        loop {
            let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
            if open.len() >= limit {
                if published.is_empty() {
                    return Ok(PlanOutcome::InFlight(format!(
                        "{} task(s) in flight, the most a table may have at once ({limit})",
                        open.len()
                    )));
                }
                break;
            }
            match self.publish_next(raw, &spec, epoch_rev, leadership, trigger).await? {
                Ok((ids, end)) => {
                    published.extend(ids);
                    last_end = end;
                }
                Err(why) => {
                    if published.is_empty() {
                        return Ok(PlanOutcome::Wait(why));
                    }
                    break;
                }
            }
        }
        Ok(PlanOutcome::Published(published, last_end))
    }

    /// Plans and publishes the table's next task from its frontier; `Err`
    /// (inner) says why nothing was published.
    async fn publish_next(
        &self,
        raw: &str,
        spec: &TableSpec,
        epoch_rev: i64,
        leadership: Leadership,
        trigger: &str,
    ) -> Result<std::result::Result<(Vec<TaskId>, i64), String>> {
        let (frontier, frontier_rev) = match get_record::<FrontierRecord>(&self.kv, &self.keys.frontier(raw)).await? {
            None => (None, 0),
            Some((f, e)) => (Some(f), e.mod_revision),
        };
        let (wm, _) = self.watermark(raw).await?;
        let (segments, segments_rev) = self.segments.get(&self.kv, &self.keys, raw).await?;
        let from = match (&frontier, &wm) {
            (Some(f), Some(w)) => Some(f.next_ms.max(w.watermark_ms)),
            (Some(f), None) => Some(f.next_ms),
            (None, Some(w)) => Some(w.watermark_ms),
            (None, None) => None,
        };
        let now = now_ms();
        let mut budget = self.cfg.budget;
        if let Some(n) = spec.flow.max_records_per_task {
            budget.max_input_rows = n;
        }
        let narrow_until_ms = frontier.as_ref().map_or(0, |f| f.narrow_until_ms);
        if narrow_until_ms != 0 && from.is_some_and(|f| f < narrow_until_ms) {
            budget = Budget::ONE_WINDOW; // isolating a failing window
        }
        let (from_ms, windows, skipped_windows, inputs) = match plan(&spec.flow, &segments, from, now, &budget) {
            Decision::Run { from_ms, windows, skipped_windows, inputs } => (from_ms, windows, skipped_windows, inputs),
            Decision::Wait(reason) => return Ok(Err(reason.to_string())),
        };
        let encoded_inputs = chunks::encode_all(&inputs);
        if let Some(problem) = inputs_problem(&windows, inputs.len(), encoded_inputs.len()) {
            self.plan_problem(raw, &problem);
            return Ok(Err(problem));
        }
        self.plan_problems.lock().map(|mut m| m.remove(raw)).ok();
        let first = windows[0];
        let last = *windows.last().expect("a run has windows");
        let now = self.fresh_created_ms();
        let id = TaskId::new(raw, first.start_ms, now);
        let input_chunks = encoded_inputs.len() as u32;
        let task = self.new_task(
            spec,
            NewTask {
                id: id.clone(),
                from_ms,
                windows: windows.clone(),
                skipped_windows,
                epoch_revision: epoch_rev,
                inputs: &inputs,
                input_chunks,
                segments_revision: segments_rev,
                table_config: spec.config_json.clone(),
                trigger: trigger.to_string(),
                late: None,
            },
        );
        // one window past the per-task budget: its sub-tasks, published together
        let hosts = self.minion_hosts().await?;
        let split = split_window(spec.flow.merge_type, &windows, &inputs, &budget, hosts);
        let tasks = publishable(task, &inputs, split);
        let input_revs =
            match chunks::write_encoded(&self.kv, &self.keys.inputs(&id), inputs.len(), encoded_inputs).await {
                Ok(r) => r,
                Err(r2o_common::Error::Limit(why)) => {
                    return Ok(Err(format!("the task from {} cannot be planned: {why}", first)));
                }
                Err(e) => return Err(e.into()),
            };
        let cleanup = input_revs.clone();
        let cold =
            wm.is_none().then(|| WatermarkRecord { watermark_ms: from_ms, updated_ms: now, ..Default::default() });
        let txn =
            protocol::publish(&self.keys, &tasks, frontier_rev, narrow_until_ms, cold.as_ref(), leadership, input_revs);
        let applied = txn.apply(&self.kv).await;
        if !matches!(applied, Ok(true)) {
            // not published, however it failed: the input list goes (only if
            // it is still the one written here), or every pass would leave one
            let _ = self.kv.txn(cleanup, vec![Op::delete_prefix(self.keys.inputs(&id))]).await;
            applied?;
            return Ok(Err("the table changed while planning; planning again on the next tick".into()));
        }
        // the report's validation reads every input's footer: read them while the minions work
        let locations: Vec<String> = inputs.iter().map(|s| s.location.clone()).collect();
        crate::validate::prefetch(self.store.clone(), self.footers.clone(), locations);
        let t = &tasks[0];
        info!(table = %raw, task = %id, trigger, from_ms, window_start_ms = first.start_ms, window_end_ms = last.end_ms, windows = windows.len(), inputs = inputs.len(), input_rows = inputs.iter().map(|s| s.total_docs).sum::<u64>(), skipped_windows, sub_tasks = t.sub_tasks, "task published");
        Ok(Ok((tasks.into_iter().map(|t| t.id).collect(), last.end_ms)))
    }

    /// Plans a table on its `schedule` (Pinot's key): without one,
    /// continuously ([`Authority::plan_table`]); with one, only inside runs.
    /// A run starts at a fire time ([`r2o_common::schedule::Schedule::due`];
    /// the record `schedules/<raw>` says which fire time was last run, so a
    /// new leader neither repeats nor skips one) and lasts, over planning
    /// passes, until nothing more is ready and nothing is in flight.
    async fn plan_on_schedule(&self, raw: &str, leadership: Leadership) -> Result<PlanOutcome> {
        use r2o_common::schedule::ScheduleRecord;
        let Some((rec, _)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        let spec = TableSpec::from_json(rec.table_config.clone(), rec.schema.clone())?;
        let Some(schedule) = spec.flow.schedule.clone() else {
            return self.plan_table(raw, leadership, "scheduled").await;
        };
        if rec.paused {
            return Ok(PlanOutcome::Paused);
        }
        let key = self.keys.schedule(raw);
        let (mut s, mut rev) = match get_record::<ScheduleRecord>(&self.kv, &key).await? {
            Some((s, e)) => (s, e.mod_revision),
            None => (ScheduleRecord { last_fire_ms: rec.created_ms, ..Default::default() }, 0),
        };
        let now = now_ms();
        if !s.active {
            let Some(fire) = schedule.due(s.last_fire_ms, now) else {
                let next =
                    schedule.next_after(s.last_fire_ms.max(now)).map_or("never".into(), r2o_common::window::format_utc);
                return Ok(PlanOutcome::Wait(format!("on schedule '{}': the next run is at {next}", schedule.text())));
            };
            s = ScheduleRecord { last_fire_ms: fire, last_run_ms: now, last_trigger: "scheduled".into(), active: true };
            rev = match self.put_schedule(raw, &s, rev, leadership).await? {
                Some(r) => r,
                None => return Ok(PlanOutcome::Wait("the schedule record changed; planning again".into())),
            };
            info!(table = %raw, schedule = schedule.text(), fire_ms = fire, "scheduled run started");
        }
        let trigger = if s.last_trigger == "manual" { "manual" } else { "scheduled" };
        let outcome = self.plan_table(raw, leadership, trigger).await?;
        if matches!(outcome, PlanOutcome::Wait(_)) && open_tasks(&self.kv, &self.keys, raw).await?.0.is_empty() {
            s.active = false;
            if self.put_schedule(raw, &s, rev, leadership).await?.is_some() {
                info!(table = %raw, schedule = schedule.text(), "scheduled run ended: nothing more is ready");
            }
        }
        Ok(outcome)
    }

    /// Writes a table's schedule record if it is still at `rev` and this
    /// controller leads; its new revision, or `None` when it changed.
    async fn put_schedule(
        &self,
        raw: &str,
        s: &r2o_common::schedule::ScheduleRecord,
        rev: i64,
        leadership: Leadership,
    ) -> Result<Option<i64>> {
        let key = self.keys.schedule(raw);
        let ok = self
            .kv
            .txn(
                vec![
                    Compare::ModRevision(key.clone(), rev),
                    Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
                ],
                vec![Op::put(key.clone(), encode(s))],
            )
            .await?;
        if !ok {
            return Ok(None);
        }
        Ok(self.kv.get(&key).await?.map(|e| e.mod_revision))
    }

    /// A `created_ms` for a new task id, never one this authority gave
    /// before (ids of a split window's sub-tasks take `created_ms + k`, so
    /// the next is past those): a planning pass and a run-now planning the
    /// same window in the same millisecond must not share an id, for their
    /// input lists would share a key prefix, and the loser's cleanup would
    /// delete the winner's inputs (its task then reads no rows).
    fn fresh_created_ms(&self) -> i64 {
        use std::sync::atomic::Ordering;
        let step = crate::planner::MAX_SUB_TASKS as i64;
        let mut last = self.last_created_ms.load(Ordering::Relaxed);
        loop {
            let next = now_ms().max(last.saturating_add(step));
            match self.last_created_ms.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// What the table's lineage and watermark say about late data.
    async fn late_ledger(&self, raw: &str) -> Result<crate::planner::LateLedger> {
        crate::registry::late_ledger(&self.kv, &self.keys, raw).await
    }

    /// Up to where retention deleted the table's REALTIME segments (end
    /// time, ms), if it deleted any.
    async fn retained_until(&self, raw: &str) -> Result<Option<i64>> {
        Ok(get_record::<r2o_common::meta::RetentionRecord>(&self.kv, &self.keys.retention(raw))
            .await?
            .map(|(r, _)| r.deleted_until_ms))
    }

    /// Publishes the table's next late-data run (`lateDataPolicy`), one at a
    /// time per table, when late segments owe rows to committed windows (see
    /// [`plan_late`]). A window that cannot be redone (a `rematerialize`
    /// window whose inputs retention may have deleted, or that would drop a
    /// refused file's moved rows) is reported as a planning problem and
    /// passed over: it never holds the table's later late windows. Returns
    /// whether a run was published.
    async fn plan_late_table(&self, raw: &str, leadership: Leadership) -> Result<bool> {
        let Some((rec, _)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? else {
            return Ok(false);
        };
        if rec.paused {
            return Ok(false);
        }
        let spec = TableSpec::from_json(rec.table_config, rec.schema)?;
        if spec.flow.late_data_policy == r2o_common::config::LateDataPolicy::Ignore {
            return Ok(false);
        }
        let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
        if open.iter().any(|(t, _)| t.late.is_some()) {
            return Ok(false);
        }
        // the leader's segment cache: one small read while nothing changed
        let (segments, segments_rev) = self.segments.get(&self.kv, &self.keys, raw).await?;
        if !segments.iter().any(|s| s.late_before_ms.is_some()) {
            return Ok(false);
        }
        let ledger = self.late_ledger(raw).await?;
        let outcome = plan_late(&spec.flow, &segments, &ledger, None, self.retained_until(raw).await?);
        let problem_key = format!("{raw} late");
        match outcome.blocked.first() {
            Some((_, why)) => self.plan_problem_as(&problem_key, raw, why),
            None => {
                self.plan_problems.lock().map(|mut m| m.remove(&problem_key)).ok();
            }
        }
        let Some(LatePlan { window, inputs, run }) = outcome.plan else {
            return Ok(false);
        };
        let now = self.fresh_created_ms();
        let id = TaskId::new(raw, window.start_ms, now);
        // the run's config snapshot names its segments apart from the window's others
        let mut config = spec.config_json.clone();
        if let Some(block) = config.pointer_mut(&format!("/task/taskTypeConfigsMap/{}", r2o_common::config::TASK_TYPE))
        {
            block["segmentNamePostfix"] = serde_json::Value::String(format!("late{now}"));
        }
        let encoded = chunks::encode_all(&inputs);
        let task = self.new_task(
            &spec,
            NewTask {
                id: id.clone(),
                from_ms: window.start_ms,
                windows: vec![window],
                skipped_windows: 0,
                epoch_revision: epoch_rev,
                inputs: &inputs,
                input_chunks: encoded.len() as u32,
                segments_revision: segments_rev,
                table_config: config,
                trigger: format!("late-{}", run.policy),
                late: Some(run.clone()),
            },
        );
        let input_revs = chunks::write_encoded(&self.kv, &self.keys.inputs(&id), inputs.len(), encoded).await?;
        let cleanup = input_revs.clone();
        if !protocol::publish_late(&self.keys, &task, leadership, input_revs).apply(&self.kv).await? {
            let _ = self.kv.txn(cleanup, vec![Op::delete_prefix(self.keys.inputs(&id))]).await;
            return Ok(false);
        }
        info!(table = %raw, task = %id, policy = %run.policy, window_start_ms = window.start_ms, window_end_ms = window.end_ms, late_segments = run.segments.len(), inputs = inputs.len(), "late-data run published");
        Ok(true)
    }

    /// A PENDING task record with no attempt yet; attempts and timeout from
    /// the table (`maxAttemptsPerTask`, `timeoutMs`) or the cluster.
    fn new_task(&self, spec: &TableSpec, n: NewTask<'_>) -> TaskRecord {
        let first =
            n.windows.first().copied().unwrap_or(r2o_common::window::Window { start_ms: n.from_ms, end_ms: n.from_ms });
        let last = n.windows.last().copied().unwrap_or(first);
        let created_ms = n.id.created_ms;
        TaskRecord {
            table: n.id.table.clone(),
            id: n.id,
            from_ms: n.from_ms,
            window_start_ms: first.start_ms,
            window_end_ms: last.end_ms,
            windows: n.windows,
            skipped_windows: n.skipped_windows,
            epoch_revision: n.epoch_revision,
            input_count: n.inputs.len() as u64,
            input_chunks: n.input_chunks,
            input_rows: n.inputs.iter().map(|s| s.total_docs).sum(),
            input_bytes: n.inputs.iter().map(|s| s.size_bytes).sum(),
            segments_revision: n.segments_revision,
            table_config: n.table_config,
            schema: spec.schema_json.clone(),
            state: TaskState::Pending,
            attempt: 0,
            minion: String::new(),
            created_ms,
            started_ms: 0,
            finished_ms: 0,
            errors: vec![],
            trigger: n.trigger,
            rows_in: 0,
            rows_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            rows_null_time: 0,
            rows_filtered: 0,
            output_count: 0,
            staged_attempt: 0,
            staged_chunks: 0,
            window_stats: vec![],
            max_attempts: spec.flow.max_attempts_per_task.unwrap_or(self.cfg.max_attempts).max(1),
            timeout_ms: spec.flow.timeout_ms.unwrap_or(self.cfg.default_timeout_ms),
            not_before_ms: 0,
            round_start_attempt: 0,
            failed_rounds: 0,
            retry_at_ms: 0,
            sub_task: 0,
            sub_tasks: 0,
            group: String::new(),
            inputs_of: String::new(),
            input_from: 0,
            input_to: 0,
            late: n.late,
        }
    }

    /// Records why `raw`'s ready window cannot be published: a warning when
    /// the reason is new, and `r2o_errors_total{component="planner"}` on every
    /// planning pass it holds.
    fn plan_problem(&self, raw: &str, problem: &str) {
        self.plan_problem_as(raw, raw, problem)
    }

    /// [`Authority::plan_problem`] kept under `key` (a table's flow and its
    /// late-data runs each have one).
    fn plan_problem_as(&self, key: &str, raw: &str, problem: &str) {
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&["planner"]).inc();
        }
        let new = self
            .plan_problems
            .lock()
            .map(|mut m| m.insert(key.to_string(), problem.to_string()).as_deref() != Some(problem))
            .unwrap_or(true);
        if new {
            warn!(table = %raw, problem, "a ready window cannot be planned");
        }
    }

    /// Run now: plans `raw` at once (leader only; the planner's rules hold).
    pub async fn run_now(&self, raw: &str) -> Result<PlanOutcome> {
        let leadership = self.leadership()?;
        // a scheduled table gets a manual run: planned over the next passes
        // until nothing more is ready, like a scheduled one
        if let Some((rec, _)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? {
            if !rec.paused
                && TableSpec::from_json(rec.table_config, rec.schema).is_ok_and(|s| s.flow.schedule.is_some())
            {
                let key = self.keys.schedule(raw);
                let (s, rev) = match get_record::<r2o_common::schedule::ScheduleRecord>(&self.kv, &key).await? {
                    Some((s, e)) => (s, e.mod_revision),
                    None => {
                        (r2o_common::schedule::ScheduleRecord { last_fire_ms: rec.created_ms, ..Default::default() }, 0)
                    }
                };
                let s = r2o_common::schedule::ScheduleRecord {
                    last_run_ms: now_ms(),
                    last_trigger: "manual".into(),
                    active: true,
                    ..s
                };
                if self.put_schedule(raw, &s, rev, leadership).await?.is_none() {
                    return Err(ControllerError::Conflict(format!(
                        "the schedule of table '{raw}' changed meanwhile; run it again"
                    )));
                }
            }
        }
        self.plan_table(raw, leadership, "manual").await
    }

    /// Resets a flow (leader only). Every open task is abandoned (the epoch
    /// moves, so none of them can commit) and planning continues from the
    /// watermark (`append`); `flush` also deletes the lineage, manifests and
    /// inputs of the committed windows and the watermark (the janitor removes
    /// the files) and restarts from the earliest data. `dry_run` reports what
    /// would go and changes nothing.
    pub async fn reset(&self, raw: &str, flush: bool, dry_run: bool) -> Result<pb::ResetTableResponse> {
        let leadership = self.leadership()?;
        if self.kv.get(&self.keys.table(raw)).await?.is_none() {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        }
        let offline = crate::registry::offline_segments(&self.kv, &self.keys, raw).await?;
        let windows: u64 = crate::registry::lineage(&self.kv, &self.keys, raw)
            .await?
            .iter()
            .map(|l| l.windows.len().max(1) as u64)
            .sum();
        let (wm, wm_rev) = self.watermark(raw).await?;
        let retained = get_record::<r2o_common::meta::RetentionRecord>(&self.kv, &self.keys.retention(raw)).await?;
        if let (true, Some((r, _))) = (flush, &retained) {
            return Err(ControllerError::Invalid(format!(
                "mode FLUSH of table '{raw}': retention has deleted {} REALTIME segment(s) ({} rows, up to {}) whose rows \
                 are only in OFFLINE now; a flush would delete those rows for good. Use --mode append",
                r.deleted_segments,
                r.deleted_rows,
                r2o_common::window::format_utc(r.deleted_until_ms)
            )));
        }
        let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
        let abandoned: Vec<String> = open.iter().map(|(t, _)| t.id.to_string()).collect();
        let mut resp = pb::ResetTableResponse {
            mode: if flush { "FLUSH" } else { "APPEND" }.into(),
            offline_segments: if flush { offline.len() as u64 } else { 0 },
            offline_rows: if flush { offline.iter().map(|s| s.total_docs).sum() } else { 0 },
            offline_bytes: if flush { offline.iter().map(|s| s.size_bytes).sum() } else { 0 },
            windows: if flush { windows } else { 0 },
            watermark_ms: wm.as_ref().map_or(0, |w| w.watermark_ms),
            abandoned_task: abandoned.join(", "),
            done: false,
        };
        if dry_run {
            return Ok(resp);
        }
        let compares = vec![
            Compare::ModRevision(self.keys.watermark(raw), wm_rev),
            Compare::ModRevision(self.keys.epoch(raw), epoch_rev),
            Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
            Compare::ModRevision(self.keys.retention(raw), retained.as_ref().map_or(0, |(_, e)| e.mod_revision)),
        ];
        let mut ops = vec![Op::put(self.keys.epoch(raw), now_ms().to_string().into_bytes())];
        if flush {
            ops.push(Op::delete_prefix(self.keys.lineages(raw)));
            ops.push(Op::delete_prefix(self.keys.manifests(raw)));
            ops.push(Op::delete_prefix(self.keys.inputs_of_table(raw)));
            ops.push(Op::delete(self.keys.watermark(raw)));
            ops.push(Op::delete(self.keys.frontier(raw)));
        } else {
            let next = wm.as_ref().map(|w| w.watermark_ms);
            match next {
                Some(n) => ops
                    .push(Op::put(self.keys.frontier(raw), encode(&FrontierRecord { next_ms: n, narrow_until_ms: 0 }))),
                None => ops.push(Op::delete(self.keys.frontier(raw))),
            }
        }
        if !self.kv.txn(compares, ops).await? {
            return Err(ControllerError::Conflict(format!(
                "table '{raw}' changed while resetting; nothing was changed, try again"
            )));
        }
        // the abandoned tasks can no longer commit; remove them now (the planning pass would too)
        let reason = format!("the flow was reset ({})", resp.mode);
        for (t, entry) in &open {
            let _ = protocol::drop_abandoned(&self.keys, t, entry.mod_revision, leadership, &reason, now_ms())
                .apply(&self.kv)
                .await;
        }
        if flush {
            // every row moves again: no segment is late any more (if this
            // stops half-way, a segment stays marked late, which only keeps
            // retention from deleting it)
            if let Err(e) = crate::registry::clear_late(&self.kv, &self.keys, raw).await {
                warn!(table = %raw, error = %e, "late marks not cleared after a flush; retention keeps those segments");
            }
        }
        warn!(table = %raw, mode = %resp.mode, offline_segments = resp.offline_segments, abandoned = abandoned.len(), "flow reset");
        self.replan.notify_one();
        resp.done = true;
        Ok(resp)
    }

    /// Deletes a flow (leader only): the table must be paused with no task in
    /// flight (DataHub's rule: only an inactive flow is deleted). One
    /// transaction removes the table record, its task history, frontier and
    /// epoch; its data stays in place (REALTIME segments, OFFLINE lineage and
    /// manifests, watermark), so the janitor keeps every file and adding the
    /// table again continues from the watermark. With `purge` the same
    /// transaction also deletes the segment metadata, lineage, manifests,
    /// inputs, watermark and retention record, and then the files (a file
    /// left by a crash is an orphan the janitor removes). `dry_run` reports
    /// and changes nothing.
    ///
    /// # Errors
    /// [`ControllerError::NotFound`]; [`ControllerError::Invalid`] when the
    /// table is not paused or has tasks in flight (naming them and what to
    /// do); [`ControllerError::Conflict`] when it changed meanwhile.
    pub async fn delete_table(&self, raw: &str, purge: bool, dry_run: bool) -> Result<pb::DeleteTableResponse> {
        let leadership = self.leadership()?;
        let Some((rec, entry)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        if !rec.paused {
            return Err(ControllerError::Invalid(format!(
                "table '{raw}' is not paused: only a paused flow is deleted (r2o pause --table {raw}, then delete)"
            )));
        }
        let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
        if let Some((t, _)) = open.first() {
            return Err(ControllerError::Invalid(format!(
                "table '{raw}' has {} task(s) in flight (the first: {}, {}): wait for them (r2o wait --table {raw}) \
                 or abandon them (r2o reset --table {raw} --mode append), then delete",
                open.len(),
                t.id,
                t.state.name()
            )));
        }
        let (realtime, marker_rev) = read_segments(&self.kv, &self.keys, raw).await?;
        let offline = crate::registry::offline_segments(&self.kv, &self.keys, raw).await?;
        let frontier_rev = self.kv.get(&self.keys.frontier(raw)).await?.map_or(0, |e| e.mod_revision);
        let (_, wm_rev) = self.watermark(raw).await?;
        let mut resp = pb::DeleteTableResponse {
            table: raw.to_string(),
            purge,
            realtime_segments: realtime.len() as u64,
            realtime_bytes: realtime.iter().map(|s| s.size_bytes).sum(),
            offline_segments: offline.len() as u64,
            offline_rows: offline.iter().map(|s| s.total_docs).sum(),
            offline_bytes: offline.iter().map(|s| s.size_bytes).sum(),
            done: false,
        };
        if dry_run {
            return Ok(resp);
        }
        let compares = vec![
            Compare::ModRevision(self.keys.table(raw), entry.mod_revision),
            Compare::ModRevision(self.keys.epoch(raw), epoch_rev),
            Compare::ModRevision(self.keys.frontier(raw), frontier_rev),
            Compare::ModRevision(self.keys.segments_marker(raw), marker_rev),
            Compare::ModRevision(self.keys.watermark(raw), wm_rev),
            Compare::CreateRevision(self.keys.leader(), leadership.create_revision),
        ];
        let mut ops = vec![
            Op::delete(self.keys.table(raw)),
            Op::delete(self.keys.frontier(raw)),
            Op::delete(self.keys.epoch(raw)),
            Op::delete_prefix(self.keys.histories(raw)),
        ];
        if purge {
            ops.extend([
                Op::delete_prefix(self.keys.segments(&format!("{raw}_REALTIME"))),
                Op::delete(self.keys.segments_marker(raw)),
                Op::delete(self.keys.watermark(raw)),
                Op::delete(self.keys.retention(raw)),
                Op::delete_prefix(self.keys.lineages(raw)),
                Op::delete_prefix(self.keys.manifests(raw)),
                Op::delete_prefix(self.keys.inputs_of_table(raw)),
            ]);
        }
        if !self.kv.txn(compares, ops).await? {
            return Err(ControllerError::Conflict(format!(
                "table '{raw}' changed while it was being deleted; nothing was deleted, try again"
            )));
        }
        if purge {
            use futures::StreamExt;
            // never a discovered file: it is the owner's
            let locations: Vec<String> = realtime
                .iter()
                .chain(offline.iter())
                .filter(|s| !r2o_common::store::is_external(&s.location))
                .map(|s| s.location.clone())
                .collect();
            let store = self.store.clone();
            let failed = futures::stream::iter(locations)
                .map(|l| {
                    let store = store.clone();
                    async move { r2o_common::store::delete_object(&store, &l).await.err().map(|e| (l, e)) }
                })
                .buffer_unordered(16)
                .filter_map(|r| async move { r })
                .collect::<Vec<_>>()
                .await;
            for (l, e) in &failed {
                warn!(table = %raw, location = %l, error = %e, "purge: file not deleted; the janitor deletes it as an orphan");
            }
        }
        warn!(table = %raw, purge, realtime_segments = resp.realtime_segments, offline_segments = resp.offline_segments, "table deleted");
        resp.done = true;
        Ok(resp)
    }

    /// Ends attempts that cannot end by themselves, removes tasks of an
    /// abandoned epoch, and re-arms FAILED tasks whose round backoff has
    /// passed:
    /// - a RUNNING task whose claim is gone (its minion's lease expired)
    ///   with no attempts left in its round becomes FAILED;
    /// - a RUNNING task past `timeoutMs` plus the grace since this leader
    ///   first saw the attempt running is ended as a failed attempt (its claim
    ///   released), whatever its minion is doing. The start is the leader's
    ///   own clock ([`protocol::attempt_overdue`]): a minion's clock is never
    ///   compared with the leader's.
    async fn expire_attempts(&self, leadership: Leadership) -> Result<()> {
        let now = now_ms();
        let prefix = self.keys.claims();
        let claims: HashMap<String, i64> = self
            .kv
            .range(&prefix)
            .await?
            .into_iter()
            .map(|kv| (kv.key[prefix.len()..].to_string(), kv.mod_revision))
            .collect();
        let mut epochs: HashMap<String, i64> = HashMap::new();
        let tasks = range_records::<TaskRecord>(&self.kv, &self.keys.active_tasks()).await?;
        let seen = self.note_running(&tasks, now);
        for (task, entry) in tasks {
            let epoch = match epochs.get(&task.table) {
                Some(e) => *e,
                None => {
                    let e = self.epoch(&task.table).await?;
                    epochs.insert(task.table.clone(), e);
                    e
                }
            };
            if task.epoch_revision != epoch {
                let txn = protocol::drop_abandoned(
                    &self.keys,
                    &task,
                    entry.mod_revision,
                    leadership,
                    "a task planned before it was superseded, or the flow was reset",
                    now,
                );
                if txn.apply(&self.kv).await? {
                    info!(table = %task.table, task = %task.id, "abandoned task removed");
                }
                continue;
            }
            let claim_rev = claims.get(&task.id.to_string()).copied().unwrap_or(0);
            let revs = AttemptRevs { task: entry.mod_revision, claim: claim_rev };
            let first_seen = seen.get(&(task.id.to_string(), task.attempt)).copied().unwrap_or(now);
            match task.state {
                TaskState::Running if claim_rev == 0 && task.attempts_in_round() >= task.max_attempts => {
                    // (a task of many windows that no minion could finish is split)
                    let attempt = task.attempt;
                    let error =
                        "the attempt ended without a report (its minion died, lost its lease or gave the task back)";
                    self.attempt_failed(task, &revs, leadership, attempt, error).await?;
                }
                TaskState::Running
                    if claim_rev != 0
                        && protocol::attempt_overdue(first_seen, now, task.timeout_ms, self.cfg.attempt_grace_ms) =>
                {
                    let attempt = task.attempt;
                    let error = format!(
                        "the attempt ran past timeoutMs ({} ms) and its claim was released by the leader",
                        task.timeout_ms
                    );
                    self.attempt_failed(task, &revs, leadership, attempt, &error).await?;
                }
                TaskState::Failed if task.retry_at_ms > 0 && task.retry_at_ms <= now => {
                    self.rearm(task, &entry, leadership, "round backoff passed").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records when this leader first saw each RUNNING attempt among `tasks`
    /// (on its own clock, at `now`) and forgets attempts no longer running;
    /// returns (task id, attempt) -> first seen, ms.
    fn note_running(&self, tasks: &[(TaskRecord, KeyValue)], now: i64) -> HashMap<(String, u32), i64> {
        let mut seen = self.attempt_seen.lock().unwrap_or_else(|p| p.into_inner());
        let running: std::collections::HashSet<(String, u32)> = tasks
            .iter()
            .filter(|(t, _)| t.state == TaskState::Running)
            .map(|(t, _)| (t.id.to_string(), t.attempt))
            .collect();
        seen.retain(|k, _| running.contains(k));
        for k in running {
            seen.entry(k).or_insert(now);
        }
        seen.clone()
    }

    /// Whether `task`'s plan still holds, read now (see [`PlanCheck`]):
    /// same epoch; for a late-data run, still what its window needs and the
    /// window still committed; else its range not yet passed by the
    /// watermark and the same windows and inputs planned from the table's
    /// segments. `window_inputs` is the window's input list (a sub-task's is
    /// its group's).
    async fn check_plan(
        &self,
        task: &TaskRecord,
        spec: &TableSpec,
        window_inputs: &[SegmentMeta],
    ) -> Result<PlanCheck> {
        let epoch_rev = self.epoch(&task.table).await?;
        if task.epoch_revision != epoch_rev {
            return Ok(PlanCheck::Abandoned("a task planned before it was superseded, or the flow was reset".into()));
        }
        let (wm, wm_rev, wm_created) = self.watermark_entry(&task.table).await?;
        let revs =
            |segments: i64| TableRevs { watermark: wm_rev, watermark_created: wm_created, segments, epoch: epoch_rev };
        if task.late.is_some() {
            // a late-data run: still what its window needs?
            let (segments, rev) = self.segments.get(&self.kv, &self.keys, &task.table).await?;
            let ledger = self.late_ledger(&task.table).await?;
            let retained = self.retained_until(&task.table).await?;
            let still = plan_late(&spec.flow, &segments, &ledger, task.windows.first().copied(), retained).plan;
            let same = still.as_ref().is_some_and(|p| {
                Some(&p.run) == task.late.as_ref()
                    && p.inputs.iter().map(|s| &s.segment_name).eq(window_inputs.iter().map(|s| &s.segment_name))
            });
            if !same {
                return Ok(PlanCheck::Abandoned(
                    "the window's late data changed while the run was in flight; it is planned again".into(),
                ));
            }
            return Ok(PlanCheck::Holds { wm, revs: revs(rev) });
        }
        let position = wm.as_ref().map_or(task.from_ms, |w| w.watermark_ms);
        if task.from_ms < position {
            return Ok(PlanCheck::Supersede(format!(
                "its range starts at {} but the watermark is already {position}",
                task.from_ms
            )));
        }
        let (segments_rev, changed) = self.plan_changed(task, spec, window_inputs).await?;
        Ok(match changed {
            Some(reason) => PlanCheck::Supersede(reason),
            None => PlanCheck::Holds { wm, revs: revs(segments_rev) },
        })
    }

    /// Ends a task whose plan no longer holds (`check` is not
    /// [`PlanCheck::Holds`]): dropped when abandoned, else superseded. Returns
    /// the error to answer its attempt with, or `None` when it raced (read
    /// again).
    async fn end_unplanned(
        &self,
        task: &TaskRecord,
        task_rev: i64,
        check: PlanCheck,
        leadership: Leadership,
    ) -> Result<Option<ControllerError>> {
        match check {
            PlanCheck::Holds { .. } => Ok(None),
            PlanCheck::Abandoned(reason) => {
                let txn = protocol::drop_abandoned(&self.keys, task, task_rev, leadership, &reason, now_ms());
                if !txn.apply(&self.kv).await? {
                    return Ok(None);
                }
                info!(table = %task.table, task = %task.id, reason = %reason, "task dropped: its plan no longer holds");
                self.replan.notify_one();
                Ok(Some(ControllerError::Stale(format!("task {} was abandoned: {reason}", task.id))))
            }
            PlanCheck::Supersede(reason) => {
                let epoch_rev = self.epoch(&task.table).await?;
                self.supersede(task, task_rev, epoch_rev, leadership, &reason, 0).await
            }
        }
    }

    /// Records a failed attempt, after checking that the task's plan still
    /// holds: a task whose inputs changed or vanished (a discovered file
    /// refused, a late run's input deleted by retention) is superseded or
    /// dropped instead of failing every attempt forever (finding 7 of issue
    /// 19). Otherwise [`protocol::on_failure`] decides: another attempt, the
    /// round's end (FAILED), or, for a task of several windows whose round
    /// is spent, a split (superseded, its range planned one window per task).
    /// Returns whether the attempt was ended (`false`: something moved).
    async fn attempt_failed(
        &self,
        task: TaskRecord,
        revs: &AttemptRevs,
        leadership: Leadership,
        attempt: u32,
        error: &str,
    ) -> Result<bool> {
        let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
        let window_inputs = self.inputs.read(&self.kv, &self.keys.inputs(&task.inputs_id())).await?;
        let check = self.check_plan(&task, &spec, &window_inputs).await?;
        if !matches!(check, PlanCheck::Holds { .. }) {
            info!(table = %task.table, task = %task.id, attempt, error = %error, "attempt failed, but its plan no longer holds; planning again");
            return Ok(self.end_unplanned(&task, revs.task, check, leadership).await?.is_some());
        }
        match protocol::on_failure(task.clone(), attempt, error, now_ms()) {
            protocol::FailureOutcome::Split => {
                let epoch_rev = self.epoch(&task.table).await?;
                let reason = format!(
                    "attempt {attempt} failed: {error}; its {} windows are planned again one at a time to isolate the failing one",
                    task.windows.len()
                );
                let ended = self
                    .supersede(&task, revs.task, epoch_rev, leadership, &reason, task.window_end_ms)
                    .await?
                    .is_some();
                if ended {
                    warn!(table = %task.table, task = %task.id, attempt, error = %error, windows = task.windows.len(), "last attempt of a multi-window task failed; planning its windows one at a time");
                }
                Ok(ended)
            }
            protocol::FailureOutcome::Record(next) => self.apply_failure(&next, revs, leadership).await,
        }
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

    /// Starts a new round of attempts for a FAILED task, if its plan still
    /// holds (else it is superseded or dropped and planned again).
    async fn rearm(&self, t: TaskRecord, entry: &KeyValue, leadership: Leadership, why: &str) -> Result<bool> {
        let spec = TableSpec::from_json(t.table_config.clone(), t.schema.clone())?;
        let window_inputs = self.inputs.read(&self.kv, &self.keys.inputs(&t.inputs_id())).await?;
        let check = self.check_plan(&t, &spec, &window_inputs).await?;
        if !matches!(check, PlanCheck::Holds { .. }) {
            return Ok(self.end_unplanned(&t, entry.mod_revision, check, leadership).await?.is_some());
        }
        let next = protocol::rearmed(t);
        let ok = protocol::update_task(&self.keys, &next, entry.mod_revision, leadership).apply(&self.kv).await?;
        if ok {
            info!(table = %next.table, task = %next.id, attempt = next.attempt, failed_rounds = next.failed_rounds, why, "failed task re-armed");
            self.replan.notify_one();
        }
        Ok(ok)
    }

    /// Operator retry: re-arms the table's earliest FAILED task now.
    /// Errors when it has none.
    pub async fn retry(&self, table: &str) -> Result<String> {
        let leadership = self.leadership()?;
        let (open, _) = open_tasks(&self.kv, &self.keys, table).await?;
        let Some((t, entry)) = open.into_iter().find(|(t, _)| t.state == TaskState::Failed) else {
            return Err(ControllerError::NotFound(format!("a FAILED task of table '{table}'")));
        };
        let id = t.id.to_string();
        if !self.rearm(t, &entry, leadership, "operator retry").await? {
            return Err(ControllerError::Conflict(format!("task {id} changed while retrying; try again")));
        }
        Ok(id)
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
            if task.state == TaskState::Staged && task.staged_attempt == attempt {
                return Ok(Attempt::Gone); // staged already: answered below as not committed yet
            }
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

    /// Drops a task whose plan no longer holds, moving the epoch (every
    /// open task of the table is abandoned) and the frontier back to the
    /// watermark ([`protocol::rewound_frontier`]; one window per task until
    /// `narrow_until_ms`, 0: no narrowing); returns the error to answer
    /// with, or `None` when the supersede lost a race.
    async fn supersede(
        &self,
        task: &TaskRecord,
        task_rev: i64,
        epoch_rev: i64,
        leadership: Leadership,
        reason: &str,
        narrow_until_ms: i64,
    ) -> Result<Option<ControllerError>> {
        let (wm, _) = self.watermark(&task.table).await?;
        let current = get_record::<FrontierRecord>(&self.kv, &self.keys.frontier(&task.table)).await?.map(|(f, _)| f);
        let frontier = protocol::rewound_frontier(task, wm.map(|w| w.watermark_ms), current.as_ref(), narrow_until_ms);
        let txn = protocol::supersede(&self.keys, task, task_rev, epoch_rev, leadership, reason, now_ms(), &frontier);
        if !txn.apply(&self.kv).await? {
            return Ok(None);
        }
        warn!(table = %task.table, task = %task.id, reason = %reason, next_ms = frontier.next_ms, "task superseded; the table's open tasks are planned again from the watermark");
        self.replan.notify_one();
        Ok(Some(ControllerError::Stale(format!(
            "task {} was superseded: {reason}; its range is planned again",
            task.id
        ))))
    }

    /// Commits a completed attempt (step 4 of the commit protocol), or
    /// stages it when tasks before it have not committed yet. Returns
    /// `committed = false` when the same attempt was already committed or staged.
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
            // the window's inputs (a sub-task's list is its group's), and those this task read
            let window_inputs = self.inputs.read(&self.kv, &self.keys.inputs(&task.inputs_id())).await?;
            let inputs = task.input_slice(&window_inputs).to_vec();

            // the plan still holds: same epoch, a range not yet committed, same inputs
            let (wm, table_revs) = match self.check_plan(&task, &spec, &window_inputs).await? {
                PlanCheck::Holds { wm, revs } => (wm, revs),
                check => match self.end_unplanned(&task, revs.task, check, leadership).await? {
                    Some(e) => return Err(e),
                    None => continue,
                },
            };
            let position = wm.as_ref().map_or(task.from_ms, |w| w.watermark_ms);

            // validate against the inputs and the staged files themselves
            let (evidence, input_footers) = validate::gather(&self.store, &self.footers, &req.outputs, &inputs).await?;
            if let Err(why) = validate::check(&task, &spec, &self.layout, &inputs, &input_footers, req, &evidence) {
                let msg = format!("validation failed: {why}");
                if !self.attempt_failed(task, &revs, leadership, req.attempt, &msg).await? {
                    continue;
                }
                return Err(ControllerError::Validation(format!("task {id} attempt {}: {why}", req.attempt)));
            }

            // outputs to a manifest, then the commit (or staging)
            let now = now_ms();
            let outputs = offline_metas(&spec, req, now);
            let manifest = match chunks::write(&self.kv, &self.keys.manifest(&id, req.attempt), &outputs).await {
                Ok(m) => m,
                Err(r2o_common::Error::Limit(why)) => {
                    let msg = format!("validation failed: {why} (raise maxNumRecordsPerSegment)");
                    self.attempt_failed(task, &revs, leadership, req.attempt, &msg).await?;
                    return Err(ControllerError::Validation(format!("task {id} attempt {}: {why}", req.attempt)));
                }
                Err(e) => return Err(e.into()),
            };
            let totals = report_totals(req, &outputs, manifest.len() as u32);
            if let Some(run) = &task.late {
                // a late-data run commits now: its window is behind the watermark
                let done = protocol::committed(&task, &totals, None, now);
                let txn = protocol::commit_late(&self.keys, &task, &revs, table_revs, leadership, manifest, &done);
                if !txn.apply(&self.kv).await? {
                    continue;
                }
                self.observe(&task, req, now);
                info!(table = %task.table, task = %id, policy = %run.policy, window_start_ms = task.window_start_ms, window_end_ms = task.window_end_ms, rows_in = totals.rows_in, rows_out = totals.rows_out, segments = totals.outputs, "late-data run committed");
                self.replan.notify_one();
                return Ok(pb::CompleteTaskResponse { committed: true, watermark_ms: position, staged: false });
            }
            if task.from_ms > position || task.is_sub_task() {
                // tasks before it have not committed, or it is one sub-task of its
                // window (the window commits when all are staged): keep its outputs staged
                let next = protocol::staged(task.clone(), &totals);
                let txn = protocol::stage(&self.keys, &next, &revs, table_revs.epoch, leadership, manifest);
                if !txn.apply(&self.kv).await? {
                    continue;
                }
                info!(table = %task.table, task = %id, attempt = req.attempt, from_ms = task.from_ms, watermark_ms = position, sub_task = task.sub_task, sub_tasks = task.sub_tasks, "task staged; it commits after the tasks before it");
                self.observe(&task, req, now);
                if task.is_sub_task() && task.from_ms == position {
                    // perhaps the last of its window's sub-tasks
                    match self.commit_ready(&task.table, leadership).await {
                        Ok(n) if n > 0 => {
                            self.replan.notify_one();
                            return Ok(pb::CompleteTaskResponse {
                                committed: true,
                                watermark_ms: task.window_end_ms,
                                staged: false,
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(table = %task.table, error = %e, "committing staged tasks failed; the planning pass tries again")
                        }
                    }
                }
                return Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: position, staged: true });
            }
            let done = protocol::committed(&task, &totals, wm.as_ref(), now);
            let txn = protocol::commit(&self.keys, &task, &revs, table_revs, leadership, manifest, &done);
            if !txn.apply(&self.kv).await? {
                continue; // something moved: decide again from a fresh read
            }
            self.observe(&task, req, now);
            self.log_commit(&task, &totals);
            if let Err(e) = self.commit_ready(&task.table, leadership).await {
                warn!(table = %task.table, error = %e, "committing staged tasks failed; the planning pass tries again");
            }
            self.replan.notify_one();
            return Ok(pb::CompleteTaskResponse { committed: true, watermark_ms: task.window_end_ms, staged: false });
        }
        Err(ControllerError::Conflict(format!(
            "the commit of task {id} attempt {} kept racing other writes; nothing was committed, report again",
            req.attempt
        )))
    }

    fn observe(&self, task: &TaskRecord, req: &pb::CompleteTaskRequest, now: i64) {
        if let Some(m) = &self.metrics {
            m.task_duration.with_label_values(&[&task.table]).observe((now - task.started_ms).max(0) as f64 / 1000.0);
            if req.attempt == 1 {
                m.queue_wait
                    .with_label_values(&[&task.table])
                    .observe((task.started_ms - task.created_ms).max(0) as f64 / 1000.0);
            }
        }
    }

    fn log_commit(&self, task: &TaskRecord, totals: &ReportTotals) {
        if totals.rows_null_time > 0 {
            warn!(table = %task.table, task = %task.id, rows_null_time = totals.rows_null_time, "rows with a NULL time value belong to no window and were not moved");
        }
        info!(table = %task.table, task = %task.id, attempt = totals.attempt, window_start_ms = task.window_start_ms, window_end_ms = task.window_end_ms, windows = totals.windows.len(), rows_in = totals.rows_in, rows_out = totals.rows_out, segments = totals.outputs, "windows committed");
    }

    /// Commits the table's STAGED tasks whose turn has come (their range
    /// starts at the watermark), one after the other.
    pub(crate) async fn commit_ready(&self, raw: &str, leadership: Leadership) -> Result<usize> {
        let mut committed = 0;
        for _ in 0..1_000 {
            let (open, _) = open_tasks(&self.kv, &self.keys, raw).await?;
            let (wm, _) = self.watermark(raw).await?;
            let Some(w) = wm else { return Ok(committed) };
            let Some((task, entry)) =
                open.iter().find(|(t, _)| t.state == TaskState::Staged && t.from_ms == w.watermark_ms).cloned()
            else {
                return Ok(committed);
            };
            let members = match task.is_sub_task() {
                true => match group_members(&open, &task) {
                    Some(m) => Some(m),
                    None => return Ok(committed), // its window waits for the other sub-tasks
                },
                false => None,
            };
            let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
            let inputs = self.inputs.read(&self.kv, &self.keys.inputs(&task.inputs_id())).await?;
            let (w, table_revs) = match self.check_plan(&task, &spec, &inputs).await? {
                PlanCheck::Holds { wm: Some(w), revs } if w.watermark_ms == task.from_ms => (w, revs),
                PlanCheck::Holds { .. } => continue, // the watermark moved meanwhile: read again
                check => {
                    self.end_unplanned(&task, entry.mod_revision, check, leadership).await?;
                    return Ok(committed);
                }
            };
            if let Some(members) = members {
                if self.commit_group(members, &w, inputs.len() as u64, table_revs, leadership).await? {
                    committed += 1;
                }
                continue; // committed, or raced: read again
            }
            // the staged manifest, proved whole by its first and last chunks
            // (comparing every chunk went past etcd's 128 operations at ~120)
            let mprefix = self.keys.manifest(&task.id, task.staged_attempt);
            let Some(manifest) = chunks::compares(&self.kv, &mprefix, task.staged_chunks as usize).await? else {
                return Err(ControllerError::Common(r2o_common::Error::Meta(format!(
                    "task {} has lost manifest chunks of its staged attempt {} (expected {})",
                    task.id, task.staged_attempt, task.staged_chunks
                ))));
            };
            let totals = protocol::staged_totals(&task);
            let now = now_ms();
            let done = protocol::committed(&task, &totals, Some(&w), now);
            let revs = AttemptRevs { task: entry.mod_revision, claim: 0 };
            if !protocol::commit(&self.keys, &task, &revs, table_revs, leadership, manifest, &done)
                .apply(&self.kv)
                .await?
            {
                continue;
            }
            self.log_commit(&task, &totals);
            committed += 1;
        }
        Ok(committed)
    }

    /// Commits a split window whose sub-tasks are all STAGED (`members`,
    /// in order with the revisions they were read at, see [`group_members`]):
    /// their manifests combined into one under the first sub-task (a fresh
    /// [`protocol::group_manifest_attempt`] per try), then one transaction
    /// ([`protocol::commit_group`]) that checks those revisions, at the
    /// watermark `wm`; `window_inputs` counts the window's input segments.
    /// Returns `false` when something changed since the read (read again).
    async fn commit_group(
        &self,
        members: Vec<(TaskRecord, i64)>,
        wm: &WatermarkRecord,
        window_inputs: u64,
        table_revs: TableRevs,
        leadership: Leadership,
    ) -> Result<bool> {
        let mut outputs: Vec<SegmentMeta> = vec![];
        for (t, _) in &members {
            outputs.extend(chunks::read::<SegmentMeta>(&self.kv, &self.keys.manifest(&t.id, t.staged_attempt)).await?);
        }
        let lead = members[0].0.clone();
        let attempt = protocol::group_manifest_attempt();
        let manifest = chunks::write(&self.kv, &self.keys.manifest(&lead.id, attempt), &outputs).await?;
        let stageds: Vec<TaskRecord> = members.iter().map(|(t, _)| t.clone()).collect();
        let totals = protocol::group_totals(&stageds, attempt, chunks::encode_all(&outputs).len() as u32);
        let mut done = protocol::committed(&lead, &totals, Some(wm), now_ms());
        done.lineage.input_count = window_inputs;
        done.history.attempt = lead.staged_attempt; // not the manifest's number: duplicate reports match it
        if !protocol::commit_group(&self.keys, &members, table_revs, leadership, manifest, &done)
            .apply(&self.kv)
            .await?
        {
            return Ok(false);
        }
        info!(table = %lead.table, task = %lead.id, sub_tasks = members.len(), window_start_ms = lead.window_start_ms, rows_in = totals.rows_in, rows_out = totals.rows_out, segments = totals.outputs, "split window committed");
        Ok(true)
    }

    /// Whether the task's plan still holds: when the table's segments
    /// changed since planning, the planner must plan the same windows with
    /// the same inputs. Returns the segment marker's revision checked and the
    /// reason when it does not hold.
    async fn plan_changed(
        &self,
        task: &TaskRecord,
        spec: &TableSpec,
        inputs: &[SegmentMeta],
    ) -> Result<(i64, Option<String>)> {
        let (segments, rev) = self.segments.get(&self.kv, &self.keys, &task.table).await?;
        if rev == task.segments_revision {
            return Ok((rev, None));
        }
        let names: Vec<String> = inputs.iter().map(|s| s.segment_name.clone()).collect();
        let result = recheck(&spec.flow, &segments, task.from_ms, &task.windows, &names, now_ms());
        // an input with another file or row count than the one read is not the same input
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
        if let Some((t, _)) = get_record::<TaskRecord>(&self.kv, &self.keys.active_task(id)).await? {
            if t.state == TaskState::Staged && t.staged_attempt == attempt {
                return Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: 0, staged: true });
            }
        }
        match get_record::<TaskRecord>(&self.kv, &self.keys.history(id)).await? {
            Some((t, _)) if t.state == TaskState::Succeeded && t.attempt == attempt => {
                Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: t.window_end_ms, staged: false })
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
        if !self.attempt_failed(task, &revs, leadership, req.attempt, &req.error).await? {
            return Err(ControllerError::Conflict(format!(
                "task {id} changed while recording the failure; report again"
            )));
        }
        Ok(())
    }
}

/// The sub-tasks of `staged`'s window among the `open` tasks, in order with
/// their revisions, when every one of them is STAGED; `None` while any is
/// missing or not staged. Pure.
fn group_members(open: &[(TaskRecord, KeyValue)], staged: &TaskRecord) -> Option<Vec<(TaskRecord, i64)>> {
    let mut members: Vec<(TaskRecord, i64)> = open
        .iter()
        .filter(|(t, _)| t.group == staged.group && t.from_ms == staged.from_ms)
        .map(|(t, e)| (t.clone(), e.mod_revision))
        .collect();
    members.sort_by_key(|(t, _)| t.sub_task);
    let complete = members.len() == staged.sub_tasks as usize
        && members.iter().enumerate().all(|(k, (t, _))| t.sub_task as usize == k && t.state == TaskState::Staged);
    complete.then_some(members)
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
        let rec = TableRecord { table_config: config, schema, created_ms: 0, paused: false, version: 1, updated_ms: 0 };
        kv.put(&keys.table("t__x"), encode(&rec), None).await.unwrap();
        let cfg = AuthorityConfig {
            max_attempts: 3,
            default_timeout_ms: 60_000,
            attempt_grace_ms: 60_000,
            budget: Budget::ONE_WINDOW,
            max_tasks_per_table: 1,
            store_uri: String::new(),
        };
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
            ..Default::default()
        };
        crate::registry::add_segment(&a.kv, &a.keys, &a.store, &a.layout, meta).await.unwrap();
    }

    /// Claims the table's first claimable task as minion `m`; returns it.
    async fn claim(w: &World) -> TaskRecord {
        let a = &w.auth;
        let (t, entry) = range_records::<TaskRecord>(&a.kv, &a.keys.active_tasks())
            .await
            .unwrap()
            .into_iter()
            .filter(|(t, _)| t.state == TaskState::Pending)
            .min_by_key(|(t, _)| t.from_ms)
            .expect("a PENDING task");
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
                window_start_ms: t.window_start_ms,
            });
        }
        pb::CompleteTaskRequest {
            task_id: t.id.to_string(),
            attempt: t.attempt,
            minion_id: "m".into(),
            rows_out: outputs.iter().map(|b| b.num_rows() as u64).sum(),
            outputs: staged,
            rows_in,
            rows_filtered: 0,
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
            windows: vec![pb::WindowStats {
                start_ms: t.window_start_ms,
                end_ms: t.window_end_ms,
                rows_in,
                rows_out: outputs.iter().map(|b| b.num_rows() as u64).sum(),
                outputs: outputs.len() as u64,
            }],
        }
    }

    #[tokio::test]
    async fn a_rollup_window_past_the_budget_runs_whole_when_the_minions_share_one_host() {
        let w = world(json!({"maxNumRecordsPerTask": "2"})).await;
        let a = &w.auth;
        let t0 = 400_000 * H;
        for i in 0..3 {
            register(&w, &format!("s{i}"), &rows(&w.spec, &["a", "b"], 1.0, t0 + i), t0 + i, t0 + i).await;
        }
        for id in ["m0", "m1"] {
            let m = MinionRecord { id: id.into(), addr: String::new(), slots: 2, started_ms: 0, host: "h".into() };
            a.kv.put(&a.keys.minion(id), encode(&m), None).await.unwrap();
        }
        assert_eq!(a.plan_all().await.unwrap(), 1, "one host: the window is one task");
        let (open, _) = open_tasks(&a.kv, &a.keys, "t__x").await.unwrap();
        assert_eq!(open.iter().map(|(t, _)| (t.sub_task, t.sub_tasks)).collect::<Vec<_>>(), vec![(0, 0)]);
    }

    #[tokio::test]
    async fn a_window_past_the_budget_runs_as_sub_tasks_and_commits_once() {
        let w = world(json!({"maxNumRecordsPerTask": "2"})).await;
        let a = &w.auth;
        let t0 = 400_000 * H;
        for i in 0..3 {
            register(&w, &format!("s{i}"), &rows(&w.spec, &["a", "b"], 1.0, t0 + i), t0 + i, t0 + i).await;
        }
        for (id, host) in [("m0", "a"), ("m1", "b"), ("m2", "b")] {
            let m = MinionRecord { id: id.into(), addr: String::new(), slots: 1, started_ms: 0, host: host.into() };
            a.kv.put(&a.keys.minion(id), encode(&m), None).await.unwrap();
        }
        assert_eq!(a.plan_all().await.unwrap(), 2, "6 rows over a budget of 2: two sub-tasks (at most the hosts)");
        let (open, _) = open_tasks(&a.kv, &a.keys, "t__x").await.unwrap();
        let subs: Vec<&TaskRecord> = open.iter().map(|(t, _)| t).collect();
        assert_eq!(subs.iter().map(|t| (t.sub_task, t.sub_tasks)).collect::<Vec<_>>(), vec![(0, 2), (1, 2)]);
        assert_eq!(subs[1].inputs_of, subs[0].id.to_string(), "the window's input list is stored once");
        assert!(a.kv.range(&a.keys.inputs(&subs[1].id)).await.unwrap().is_empty());
        let first = claim(&w).await;
        let second = claim(&w).await;
        let (k0, k1) = if first.sub_task == 0 { (first, second) } else { (second, first) };
        // the second sub-task finishes first: staged, nothing committed
        let mut r1 = staged_report(&w, &k1, &[rows(&w.spec, &["b"], 3.0, t0)], 3, 3.0, 3.0).await;
        r1.outputs[0].name = format!("t__x_{t0}_{}_all_s1_0", t0 + H);
        let resp = a.complete(&r1).await.unwrap();
        assert!(resp.staged && !resp.committed);
        let (wm, _) = a.watermark("t__x").await.unwrap();
        assert_eq!(wm.map(|w| w.watermark_ms), Some(t0), "the window waits for all its sub-tasks");
        // the last one commits the window, once
        let mut r0 = staged_report(&w, &k0, &[rows(&w.spec, &["a"], 3.0, t0)], 3, 3.0, 3.0).await;
        r0.outputs[0].name = format!("t__x_{t0}_{}_all_s0_0", t0 + H);
        let resp = a.complete(&r0).await.unwrap();
        assert!(resp.committed && !resp.staged, "{resp:?}");
        let (wm, _) = a.watermark("t__x").await.unwrap();
        let wm = wm.unwrap();
        assert_eq!((wm.watermark_ms, wm.windows_committed, wm.rows_in, wm.rows_out), (t0 + H, 1, 6, 2));
        let (lineage, _) = get_record::<r2o_common::meta::LineageRecord>(&a.kv, &a.keys.lineage("t__x", t0))
            .await
            .unwrap()
            .expect("one lineage record");
        assert_eq!(lineage.task_id, k0.id.to_string());
        assert!(lineage.attempt >= protocol::GROUP_MANIFEST_ATTEMPT);
        assert_eq!((lineage.output_count, lineage.input_count, lineage.rows_in), (2, 3, 6));
        let manifest: Vec<SegmentMeta> = chunks::read(&a.kv, &a.keys.manifest(&k0.id, lineage.attempt)).await.unwrap();
        let mut names: Vec<String> = manifest.iter().map(|s| s.segment_name.clone()).collect();
        names.sort();
        assert_eq!(names, vec![format!("t__x_{t0}_{}_all_s0_0", t0 + H), format!("t__x_{t0}_{}_all_s1_0", t0 + H)]);
        assert!(a.kv.range(&a.keys.manifest(&k1.id, k1.attempt)).await.unwrap().is_empty(), "staged manifests go");
        for t in [&k0, &k1] {
            let (h, _) = get_record::<TaskRecord>(&a.kv, &a.keys.history(&t.id)).await.unwrap().unwrap();
            assert_eq!(h.state, TaskState::Succeeded);
        }
        assert!(range_records::<TaskRecord>(&a.kv, &a.keys.active_tasks()).await.unwrap().is_empty());
        // a repeated report is answered from history
        assert!(!a.complete(&r1).await.unwrap().committed);
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
    async fn tasks_finishing_out_of_order_commit_in_window_order() {
        let mut w = world(json!({})).await;
        w.auth.cfg.max_tasks_per_table = 3;
        let t0 = 400_000 * H;
        for h in 0..4 {
            register(&w, &format!("s{h}"), &rows(&w.spec, &["a"], 1.0, t0 + h * H), t0 + h * H, t0 + h * H).await;
        }
        assert_eq!(w.auth.plan_all().await.unwrap(), 3, "three one-window tasks in flight at once");
        let first = claim(&w).await;
        let second = claim(&w).await;
        let third = claim(&w).await;
        // the third and second finish first: staged, nothing committed
        for t in [&third, &second] {
            let r = w
                .auth
                .complete(&staged_report(&w, t, &[rows(&w.spec, &["a"], 1.0, t.window_start_ms)], 1, 1.0, 1.0).await)
                .await
                .unwrap();
            assert!(r.staged && !r.committed, "{r:?}");
        }
        let (wm, _) = w.auth.watermark("t__x").await.unwrap();
        assert_eq!(wm.unwrap().watermark_ms, t0, "the watermark waits for the first task");
        // the first commits, and the staged ones follow in order
        let r = w
            .auth
            .complete(&staged_report(&w, &first, &[rows(&w.spec, &["a"], 1.0, t0)], 1, 1.0, 1.0).await)
            .await
            .unwrap();
        assert!(r.committed);
        let (wm, _) = w.auth.watermark("t__x").await.unwrap();
        assert_eq!(wm.as_ref().unwrap().watermark_ms, t0 + 3 * H, "contiguous: all three committed");
        assert_eq!(wm.unwrap().windows_committed, 3);
        let lineage = crate::registry::lineage(&w.auth.kv, &w.auth.keys, "t__x").await.unwrap();
        assert_eq!(lineage.iter().map(|l| (l.from_ms - t0) / H).collect::<Vec<_>>(), vec![0, 1, 2]);
        // the fourth window is planned next
        assert_eq!(w.auth.plan_all().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_failure_whose_plan_no_longer_holds_supersedes_instead_of_retrying() {
        // finding 7 of issue 19: an input refused (a discovered file changed or
        // deleted) after publish made every attempt fail and re-arm forever
        let w = world(json!({})).await;
        let a = &w.auth;
        let t0 = 400_000 * H;
        register(&w, "s0", &rows(&w.spec, &["a"], 1.0, t0 + 5), t0 + 5, t0 + 5).await;
        register(&w, "tail", &rows(&w.spec, &["a"], 1.0, t0 + 9 * H), t0 + 9 * H, t0 + 9 * H).await;
        assert_eq!(a.plan_all().await.unwrap(), 1);
        let t = claim(&w).await;
        let key = a.keys.segment("t__x_REALTIME", "s0");
        let (mut s0, entry) = get_record::<SegmentMeta>(&a.kv, &key).await.unwrap().unwrap();
        s0.error = "the file changed after registration".into();
        assert!(a
            .kv
            .txn(
                vec![Compare::ModRevision(key.clone(), entry.mod_revision)],
                vec![Op::put(key, encode(&s0)), crate::registry::touch_marker(&a.keys, "t__x")],
            )
            .await
            .unwrap());
        let fail = pb::FailTaskRequest {
            task_id: t.id.to_string(),
            attempt: 1,
            minion_id: "m".into(),
            error: "cannot read s0".into(),
        };
        a.fail(&fail).await.unwrap();
        assert!(a.kv.get(&a.keys.active_task(&t.id)).await.unwrap().is_none(), "not retried");
        let (h, _) = get_record::<TaskRecord>(&a.kv, &a.keys.history(&t.id)).await.unwrap().unwrap();
        assert_eq!(h.state, TaskState::Superseded, "{:?}", h.errors);
        assert!(h.errors.last().unwrap().starts_with("superseded:"), "{:?}", h.errors);
    }

    #[tokio::test]
    async fn sub_tasks_that_would_pass_etcds_request_limit_are_published_whole() {
        // finding 9 of issue 19: 32 sub-tasks each carrying a 60 KB schema
        // made a publish of ~2 MB, refused every pass
        let w = world(json!({"mergeType": "concat"})).await;
        let inputs: Vec<SegmentMeta> = (0..64)
            .map(|i| SegmentMeta {
                segment_name: format!("s{i}"),
                total_docs: 10,
                size_bytes: 10,
                ..Default::default()
            })
            .collect();
        let window = r2o_common::window::Window { start_ms: 0, end_ms: H };
        let mut t = w.auth.new_task(
            &w.spec,
            NewTask {
                id: TaskId::new("t__x", 0, 1),
                from_ms: 0,
                windows: vec![window],
                skipped_windows: 0,
                epoch_revision: 0,
                inputs: &inputs,
                input_chunks: 1,
                segments_revision: 0,
                table_config: w.spec.config_json.clone(),
                trigger: "scheduled".into(),
                late: None,
            },
        );
        let ranges: Vec<std::ops::Range<usize>> = (0..32).map(|k| 2 * k..2 * k + 2).collect();
        assert_eq!(publishable(t.clone(), &inputs, Split::ByInput(ranges.clone())).len(), 32, "small records split");
        t.schema = json!({"doc": "x".repeat(60_000)});
        let tasks = publishable(t, &inputs, Split::ByInput(ranges));
        assert_eq!(tasks.len(), 1, "too large to publish together: the window runs whole");
        assert_eq!(tasks[0].sub_tasks, 0);
    }

    #[tokio::test]
    async fn a_staged_task_with_a_manifest_of_hundreds_of_chunks_commits() {
        // finding 10 of issue 19: the commit compared every manifest chunk
        // (130 chunks: 137 compares, over etcd's 128) and never committed
        let mut w = world(json!({"mergeType": "concat"})).await;
        w.auth.cfg.max_tasks_per_table = 2;
        let t0 = 400_000 * H;
        for h in 0..2 {
            register(&w, &format!("s{h}"), &rows(&w.spec, &["a"], 1.0, t0 + h * H), t0 + h * H, t0 + h * H).await;
        }
        register(&w, "tail", &rows(&w.spec, &["a"], 1.0, t0 + 9 * H), t0 + 9 * H, t0 + 9 * H).await;
        assert_eq!(w.auth.plan_all().await.unwrap(), 2);
        let first = claim(&w).await;
        let second = claim(&w).await;
        // the second is STAGED with 130 manifest chunks (one oversized entry each)
        let a = &w.auth;
        let big: Vec<SegmentMeta> = (0..130)
            .map(|i| SegmentMeta {
                segment_name: format!("o{i}"),
                location: "x".repeat(200_000),
                window_start_ms: Some(second.window_start_ms),
                ..Default::default()
            })
            .collect();
        let m = chunks::write(&a.kv, &a.keys.manifest(&second.id, 1), &big).await.unwrap();
        assert_eq!(chunks::encode_all(&big).len(), 130);
        assert_eq!(m.len(), 2);
        let totals = ReportTotals { attempt: 1, outputs: 130, output_chunks: 130, ..Default::default() };
        let staged = protocol::staged(second.clone(), &totals);
        a.kv.put(&a.keys.active_task(&second.id), encode(&staged), None).await.unwrap();
        a.kv.delete(&a.keys.claim(&second.id)).await.unwrap();
        // the first commits, and the staged second follows
        let r =
            a.complete(&staged_report(&w, &first, &[rows(&w.spec, &["a"], 1.0, t0)], 1, 1.0, 1.0).await).await.unwrap();
        assert!(r.committed);
        let (wm, _) = a.watermark("t__x").await.unwrap();
        assert_eq!(wm.unwrap().watermark_ms, t0 + 2 * H, "the staged task with 130 chunks committed");
        assert_eq!(crate::registry::offline_segments(&a.kv, &a.keys, "t__x").await.unwrap().len(), 131);
    }

    #[tokio::test]
    async fn a_failed_task_holds_the_ones_after_it_and_a_supersede_replans_them() {
        let mut w = world(json!({"maxAttemptsPerTask": "1"})).await;
        w.auth.cfg.max_tasks_per_table = 3;
        let t0 = 400_000 * H;
        for h in 0..3 {
            register(&w, &format!("s{h}"), &rows(&w.spec, &["a"], 1.0, t0 + h * H), t0 + h * H, t0 + h * H).await;
        }
        register(&w, "tail", &rows(&w.spec, &["a"], 1.0, t0 + 9 * H), t0 + 9 * H, t0 + 9 * H).await;
        w.auth.plan_all().await.unwrap();
        let first = claim(&w).await;
        let second = claim(&w).await;
        w.auth
            .fail(&pb::FailTaskRequest {
                task_id: first.id.to_string(),
                attempt: 1,
                minion_id: "m".into(),
                error: "boom".into(),
            })
            .await
            .unwrap();
        let r = w
            .auth
            .complete(
                &staged_report(&w, &second, &[rows(&w.spec, &["a"], 1.0, second.window_start_ms)], 1, 1.0, 1.0).await,
            )
            .await
            .unwrap();
        assert!(r.staged, "the second waits behind the failed first");
        let (wm, _) = w.auth.watermark("t__x").await.unwrap();
        assert_eq!(wm.unwrap().watermark_ms, t0, "a failed task holds the watermark");
        // a segment registered in the first task's window: the retry finds the
        // plan changed and supersedes it with everything after it (it would
        // only fail again on the old inputs)
        register(&w, "late", &rows(&w.spec, &["b"], 1.0, t0 + 5), t0 + 5, t0 + 5).await;
        w.auth.retry("t__x").await.unwrap();
        assert!(w.auth.kv.get(&w.auth.keys.active_task(&first.id)).await.unwrap().is_none());
        let (h, _) = get_record::<TaskRecord>(&w.auth.kv, &w.auth.keys.history(&first.id)).await.unwrap().unwrap();
        assert_eq!(h.state, TaskState::Superseded);
        w.auth.plan_all().await.unwrap();
        let (open, _) = open_tasks(&w.auth.kv, &w.auth.keys, "t__x").await.unwrap();
        assert!(open.iter().all(|(t, _)| t.id != second.id), "the staged task after it was abandoned");
        assert_eq!(open[0].0.from_ms, t0, "planned again from the superseded task's start");
        assert_eq!(open[0].0.input_count, 2, "with the new segment");
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
        let (wm, _) = w.auth.watermark("t__x").await.unwrap();
        assert_eq!(wm.map(|w| (w.watermark_ms, w.windows_committed)), Some((t0, 0)), "nothing was committed");
        // the window is planned again, with the new segment among its inputs
        w.auth.plan_all().await.unwrap();
        let (open, _) = open_tasks(&w.auth.kv, &w.auth.keys, "t__x").await.unwrap();
        let again = &open[0].0;
        assert_eq!((again.window_start_ms, again.input_count), (t0, 2));
        // a segment registered after this window (the planner's recheck covers
        // skipped windows) does not disturb it: it commits
        let t = claim(&w).await;
        register(&w, "later", &rows(&w.spec, &["c"], 1.0, t0 + 3 * H), t0 + 3 * H, t0 + 3 * H).await;
        let req = staged_report(&w, &t, &[rows(&w.spec, &["a"], 3.0, t0)], 2, 3.0, 3.0).await;
        assert!(w.auth.complete(&req).await.unwrap().committed);
    }

    #[tokio::test]
    async fn a_window_with_tens_of_thousands_of_inputs_is_planned_as_one_task() {
        let w = world(json!({})).await;
        let a = &w.auth;
        let t0 = 400_000 * H;
        // 24,000 segments in one window, each listing a long location: over 16 MiB of inputs,
        // more chunks than one etcd transaction could compare one by one
        let pad = "p".repeat(600);
        for i in 0..24_000 {
            let meta = SegmentMeta {
                segment_name: format!("s{i}"),
                table_name: "t__x_REALTIME".into(),
                status: SegmentStatus::Done,
                start_time_ms: t0 + i,
                end_time_ms: t0 + i,
                total_docs: 1,
                size_bytes: 1,
                schema_fingerprint: w.spec.schema.fingerprint(),
                location: format!("ns/realtime/{pad}/s{i}.parquet"),
                partition: 0,
                ..Default::default()
            };
            a.kv.put(&a.keys.segment("t__x_REALTIME", &format!("s{i}")), encode(&meta), None).await.unwrap();
        }
        a.kv.put(&a.keys.segments_marker("t__x"), b"1".to_vec(), None).await.unwrap();
        let leadership = a.leadership().unwrap();
        match a.plan_table("t__x", leadership, "scheduled").await.unwrap() {
            PlanOutcome::Published(ids, _) => assert_eq!(ids.len(), 1),
            other => panic!("expected the window to be published, got {other}"),
        }
        let (open, _) = open_tasks(&a.kv, &a.keys, "t__x").await.unwrap();
        let t = &open[0].0;
        assert_eq!(t.input_count, 24_000);
        assert!(t.input_chunks as usize > 64, "{} chunks", t.input_chunks);
        let inputs: Vec<SegmentMeta> = r2o_common::meta::chunks::read(&a.kv, &a.keys.inputs(&t.id)).await.unwrap();
        assert_eq!(inputs.len(), 24_000, "a minion reads the whole list back");
        assert!(a.plan_problems.lock().unwrap().get("t__x").is_none());
        // past the limit (256 MiB of input metadata) the reason names it
        let w0 = r2o_common::window::Window { start_ms: t0, end_ms: t0 + H };
        let why = inputs_problem(&[w0], 800_000, r2o_common::meta::MAX_CHUNKS + 1).unwrap();
        assert!(why.contains("cannot be planned") && why.contains("800000 input segments"), "{why}");
        assert!(inputs_problem(&[w0], 24_000, 80).is_none());
    }
}
