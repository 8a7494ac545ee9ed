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

mod admin;
mod commit;
mod complete;
mod failure;
mod late;
mod publish;
mod schedule;
mod segments;
mod tasks;
#[cfg(test)]
mod tests;

use r2o_common::config::TableSpec;
use r2o_common::kv::{KeyValue, Kv};
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
use crate::planner::{
    inputs_unchanged, plan_late, plan_over, recheck, split_window, Budget, Decision, LatePlan, Split,
};
use crate::protocol::{self, AttemptRevs, ReportTotals, TableRevs};
use crate::validate::{self, FooterCache};

pub use segments::{apply_changes, SegmentCache, Segments};
use tasks::{group_members, offline_metas, report_totals, NewTask};
pub use tasks::{inputs_problem, publishable, sub_tasks};

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
    /// Where discovery may read (`--source-allow`, canonical forms; empty: off).
    pub source_allow: Vec<String>,
    /// How long a file removed from a table's Delta log stays for time
    /// travel, ms (`--delta-file-retention-secs`): the janitor's rule and the
    /// log's own `delta.deletedFileRetentionDuration`, so other engines'
    /// VACUUM keeps them as long.
    pub delta_file_retention_ms: i64,
}

/// Bytes of REALTIME footers the controller keeps for validation (issue
/// 21: caches with byte budgets; a footer takes ~1 KB, so ~32,000 of them,
/// more than the inputs of the tasks in flight).
pub const FOOTER_CACHE_BYTES: usize = 32 << 20;

/// Input-list entries the controller keeps (~600 bytes each: ~30 MB), read
/// by a task's reports and commit passes; lists past it are read again.
pub const INPUT_CACHE_ITEMS: usize = 50_000;

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
    /// Tables marked for the next planning pass and the timers that mark
    /// them (see [`crate::wakeups`]).
    pub(crate) wakeups: Arc<Mutex<Wakeups>>,
    /// Metrics observed while committing.
    pub(crate) metrics: Option<crate::metrics::ControllerMetrics>,
    /// Footers of REALTIME inputs, for validation.
    pub(crate) footers: FooterCache,
    /// Tables whose Delta log must be brought up to date (`projector`).
    pub(crate) delta_marks: Arc<crate::projector::DeltaMarks>,
    /// Footers of validated outputs, for the Delta log's statistics.
    pub(crate) delta_stats: crate::projector::OutputStats,
    /// Each table's Delta log as the projector's last commit left it.
    pub(crate) delta_memo: crate::delta::LogMemo,
    /// Each table's committed OFFLINE files, for the Delta passes (read by change).
    pub(crate) committed: crate::committed::CommittedCache,
    /// REALTIME segments per table, revision-checked.
    pub(crate) segments: SegmentCache,
    /// Tables, each parsed once per change of its record.
    pub(crate) tables: TableCache,
    /// Task input lists, revision-checked: a split window's list is read by
    /// each of its sub-tasks' reports and by every commit pass (at most
    /// [`INPUT_CACHE_ITEMS`] inputs kept).
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

use crate::tables::{TableCache, TableView};
use crate::wakeups::{Pass, Wakeups};

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
    let (segments, _) = r2o_common::meta::read_realtime(kv, keys, raw).await?;
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
            wakeups: Default::default(),
            metrics: None,
            footers: FooterCache::new(FOOTER_CACHE_BYTES),
            delta_marks: Arc::default(),
            delta_stats: Default::default(),
            delta_memo: Default::default(),
            committed: Default::default(),
            segments: SegmentCache::default(),
            tables: TableCache::default(),
            inputs: ListCache::new(INPUT_CACHE_ITEMS),
            plan_problems: Default::default(),
            last_created_ms: Default::default(),
            attempt_seen: Default::default(),
        }
    }

    pub(super) fn leadership(&self) -> Result<Leadership> {
        (*self.leadership.borrow()).ok_or_else(|| ControllerError::NotLeader { leader: "unknown".into() })
    }

    pub(super) async fn watermark(&self, raw: &str) -> Result<(Option<WatermarkRecord>, i64)> {
        Ok(match get_record::<WatermarkRecord>(&self.kv, &self.keys.watermark(raw)).await? {
            None => (None, 0),
            Some((w, entry)) => (Some(w), entry.mod_revision),
        })
    }

    /// The watermark with its key's mod and create revisions (0, 0: absent).
    pub(super) async fn watermark_entry(&self, raw: &str) -> Result<(Option<WatermarkRecord>, i64, i64)> {
        Ok(match get_record::<WatermarkRecord>(&self.kv, &self.keys.watermark(raw)).await? {
            None => (None, 0, 0),
            Some((w, entry)) => (Some(w), entry.mod_revision, entry.create_revision),
        })
    }

    pub(super) async fn epoch(&self, raw: &str) -> Result<i64> {
        Ok(self.kv.get(&self.keys.epoch(raw)).await?.map_or(0, |e| e.mod_revision))
    }

    /// Tasks of one table allowed in flight: the setting, or the slots of
    /// the live minions that run the table's `minionInstanceTag` plus one
    /// (so a minion finishing a task finds the next).
    pub(super) async fn task_limit(&self, tag: &str) -> Result<usize> {
        if self.cfg.max_tasks_per_table > 0 {
            return Ok(self.cfg.max_tasks_per_table);
        }
        let slots: u64 = range_records::<MinionRecord>(&self.kv, &self.keys.minions())
            .await?
            .iter()
            .filter(|(m, _)| m.tag_or_default() == tag)
            .map(|(m, _)| u64::from(m.slots))
            .sum();
        Ok((slots as usize + 1).max(2))
    }

    /// Distinct machines among the live minions that run `tag`
    /// (`MinionRecord::host`; a record without one counts as a machine of
    /// its own): hash sub-tasks of one window go to at most this many.
    pub(super) async fn minion_hosts(&self, tag: &str) -> Result<usize> {
        let minions = range_records::<MinionRecord>(&self.kv, &self.keys.minions()).await?;
        let hosts: std::collections::BTreeSet<&str> = minions
            .iter()
            .filter(|(m, _)| m.tag_or_default() == tag)
            .map(|(m, _)| if m.host.is_empty() { m.id.as_str() } else { m.host.as_str() })
            .collect();
        Ok(hosts.len())
    }

    /// Plans `raw` again at `at_ms` (UTC epoch ms) at the latest, though
    /// nothing in etcd changes: the instant a window passes its buffer, a
    /// schedule fires.
    pub(crate) fn wake_table_at(&self, raw: &str, at_ms: i64) {
        self.wakeups().table_at(raw, at_ms);
    }

    /// Looks at every table's tasks again at `at_ms` at the latest (an
    /// attempt deadline, a FAILED task's retry).
    pub(crate) fn wake_all_at(&self, at_ms: i64) {
        self.wakeups().all_at(at_ms);
    }

    /// The planner's marks and timers (a poisoned lock still holds valid ones).
    pub(crate) fn wakeups(&self) -> std::sync::MutexGuard<'_, Wakeups> {
        self.wakeups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the tables whose keys `events` changed ([`Keys::touched`]).
    fn note_events(&self, events: &[r2o_common::kv::WatchEvent]) {
        let mut w = self.wakeups();
        for e in events {
            w.touch(self.keys.touched(&e.key));
        }
        drop(w);
        self.delta_marks.note(&self.keys, events.iter().map(|e| e.key.as_str()), now_ms());
    }

    /// One planning pass over every table (leader only); see
    /// [`Authority::plan_pass`].
    pub async fn plan_all(&self) -> Result<usize> {
        self.plan_pass(&Pass::All).await
    }

    /// One planning pass over the tables of `pass` (leader only): commits
    /// what is staged and due, publishes what is ready up to the in-flight
    /// limit, and ends attempts that can no longer end by themselves (over
    /// the whole pool). Returns the tasks published.
    pub async fn plan_pass(&self, pass: &Pass) -> Result<usize> {
        let leadership = self.leadership()?;
        let mut published = 0;
        // each table read once (and parsed only when changed) for the whole pass
        let tables = match pass {
            Pass::All => self.tables.all(&self.kv, &self.keys).await?,
            Pass::Tables(names) => {
                let mut out = Vec::with_capacity(names.len());
                for raw in names {
                    match self.tables.one(&self.kv, &self.keys, raw).await {
                        Ok(None) => {} // deleted
                        Ok(Some(view)) => out.push((raw.clone(), Ok(view))),
                        Err(e @ ControllerError::Config(_)) => out.push((raw.clone(), Err(e))),
                        Err(e) => return Err(e),
                    }
                }
                out
            }
        };
        for (raw, table) in tables {
            if let Err(e) = self.commit_ready(&raw, leadership).await {
                warn!(table = %raw, error = %e, "committing staged tasks failed");
            }
            let table = match table {
                Ok(t) => t,
                Err(e) => {
                    warn!(table = %raw, error = %e, "planning failed: the stored table does not parse");
                    continue;
                }
            };
            match self.plan_on_schedule(&table, leadership).await {
                Ok(PlanOutcome::Published(ids, _)) => published += ids.len(),
                Ok(_) => {}
                Err(e) => warn!(table = %raw, error = %e, "planning failed"),
            }
            match self.plan_late_table(&table, leadership).await {
                Ok(true) => published += 1,
                Ok(false) => {}
                Err(e) => warn!(table = %raw, error = %e, "planning a late-data run failed"),
            }
        }
        self.expire_attempts(leadership).await?;
        Ok(published)
    }
}

/// Runs the planning loop while this controller leads: planning follows
/// change, not size (issue 21; [`crate::wakeups`]).
///
/// - A watch on the install's prefix marks the tables whose keys changed;
///   a pass plans those tables only, at once (no tick to wait for).
/// - Timers mark a table at the next instant a window of it can become
///   ready though nothing changes (buffer, schedule), and the pool at the
///   next attempt deadline or retry.
/// - Every `interval` (the safety net) one revision check (`status`): when
///   the store moved but the watch brought nothing since the last check
///   (events queued during a long pass count), the watch may be stalled,
///   so every table is planned. An unchanged store is not read at all.
/// - A new term, and a watch that ends or errs, plan every table.
pub async fn planning_loop(auth: Authority, interval: Duration, cancel: tokio_util::sync::CancellationToken) {
    let prefix = format!("{}/", auth.keys.prefix());
    let mut watch: Option<r2o_common::kv::WatchReceiver> = None;
    // revision at the last safety-net check, and whether events came since
    let (mut checked_rev, mut events_since_check) = (0i64, false);
    let mut next_check = tokio::time::Instant::now() + interval;
    loop {
        if auth.leadership.borrow().is_none() {
            watch = None;
        } else if watch.is_none() {
            // a new watch: events may have been missed since the last one
            auth.wakeups().mark_all();
            auth.delta_marks.mark_all(now_ms());
            match auth.kv.watch(&prefix).await {
                Ok(w) => watch = Some(w),
                Err(e) => {
                    warn!(error = %e, "watching the install's keys failed; planning every table on the tick");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            }
        }
        let now = now_ms();
        let pass = auth.wakeups().take(now);
        let leading = auth.leadership.borrow().is_some();
        if let (Some(pass), true) = (pass, leading) {
            match &pass {
                Pass::All => tracing::debug!("planning pass over every table"),
                Pass::Tables(t) => tracing::debug!(tables = t.len(), "planning pass over the tables that moved"),
            }
            if let Err(e) = auth.plan_pass(&pass).await {
                if let Some(m) = &auth.metrics {
                    m.errors.with_label_values(&["etcd"]).inc();
                }
                warn!(error = %e, "planning pass failed");
                // whatever the pass did not finish is planned again
                auth.wakeups().mark_all();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
            continue;
        }
        let due = auth.wakeups().next_due_ms();
        let timer = tokio::time::Instant::now()
            + due.map_or(interval, |d| Duration::from_millis(d.saturating_sub(now).clamp(0, 86_400_000) as u64));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = auth.replan.notified() => {}
            _ = tokio::time::sleep_until(timer.min(next_check)) => {}
            event = async {
                match watch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match event {
                    Some(Ok(events)) => {
                        events_since_check = true;
                        auth.note_events(&events);
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "the watch on the install's keys broke; planning every table");
                        watch = None;
                    }
                    None => watch = None,
                }
            }
        }
        if tokio::time::Instant::now() >= next_check {
            next_check = tokio::time::Instant::now() + interval;
            // events that queued while a pass ran count as seen: without this,
            // a pass longer than the interval (1,000 tables) looked like a
            // stalled watch and made every check plan every table again
            while let Some(Ok(events)) = watch.as_mut().and_then(|w| w.try_recv().ok()) {
                events_since_check = true;
                auth.note_events(&events);
            }
            let leading = auth.leadership.borrow().is_some();
            if leading {
                match auth.kv.status().await {
                    Ok(s) => {
                        if s.revision != checked_rev && !events_since_check && checked_rev != 0 {
                            // the store moved and the watch said nothing: it may
                            // be behind or stalled (or another install wrote)
                            tracing::debug!(
                                revision = s.revision,
                                checked_rev,
                                "the store moved without watch events; planning every table"
                            );
                            auth.wakeups().mark_all();
                        }
                        checked_rev = s.revision;
                        events_since_check = false;
                    }
                    Err(e) => warn!(error = %e, "the planner's revision check failed"),
                }
            }
        }
    }
}
