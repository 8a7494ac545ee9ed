//! The Delta log follows the committed table (issue 23): the leader
//! projects every change of a table's committed OFFLINE segments (a commit,
//! a late-data run, a flush, a purge, a schema change) into its Delta log,
//! in commit order, without anyone running `export-delta`.
//!
//! - **What marks a table.** The planner's watch on the install's keys
//!   hands every event to [`DeltaMarks::note`]; a change under `lineage/`,
//!   `manifests/` or `tables/` ([`offline_touched`]) marks the table. A new
//!   term marks every table (the log may lag behind what the last leader
//!   committed).
//! - **One Delta commit per pass, of whole r2o commits.** A pass reads the
//!   etcd revision, then the committed segments (the same list as `r2o
//!   segment list`, read by what changed since the last pass:
//!   [`crate::committed`]), and makes the log hold exactly them
//!   ([`crate::delta::plan`]): one Delta commit with a `txn` whose version is
//!   that revision. While the log keeps up that is one Delta commit per r2o
//!   commit; when r2o commits faster than the log is written (a backfill
//!   commits hundreds of windows a second), one Delta commit covers every r2o
//!   commit since the last, never part of one (a commit is one etcd
//!   transaction, and the list is read at one revision).
//! - **Exactly once across failovers.** The projection is of state, not of
//!   events: a file already in the log is never added twice, a file no longer
//!   committed is removed once, and a leader that dies between an etcd commit
//!   and its Delta commit leaves the next leader a log to catch up from. A
//!   pass whose revision is older than the log's `txn` (a deposed leader
//!   still running) writes nothing ([`crate::delta::Planned::Stale`]); two
//!   writers cannot take one version (`PutMode::Create`).
//! - **What readers and SREs see.** After each pass the leader writes
//!   [`DeltaRecord`] (`deltalog/<raw>`: the log's version and the revision it
//!   holds), which `r2o watermark` compares with the watermark's revision;
//!   `r2o_delta_log_lag_seconds{table}` is how long the table's oldest change
//!   not yet in the log has waited, and `r2o_delta_log_version{table}` the
//!   log's version.

use crate::authority::Authority;
use crate::delta::{self, DeltaError, Planned};
use crate::error::{ControllerError, Result};
use r2o_common::meta::{encode, get_record, now_ms, Keys};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// What the leader last projected of a table into its Delta log
/// (`deltalog/<raw>` in etcd).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaRecord {
    /// The log's version after the pass.
    pub version: i64,
    /// The etcd revision whose committed segments that version holds: every
    /// r2o commit at or before it is in the log.
    pub revision: i64,
    /// When the pass ended, UTC epoch ms.
    pub projected_ms: i64,
}

/// The key of a table's [`DeltaRecord`]: `deltalog/<raw>`.
pub fn record_key(keys: &Keys, raw: &str) -> String {
    format!("{}/deltalog/{raw}", keys.prefix())
}

/// Which table's Delta log a change of `key` can move: the raw table of a
/// `lineage/<raw>/..`, `manifests/<raw>/..` or `tables/<raw>` key (commits,
/// late runs, flushes, purges, schema changes); `None` for any other key.
/// Pure.
pub fn offline_touched(keys: &Keys, key: &str) -> Option<String> {
    let rest = key.strip_prefix(keys.prefix())?.strip_prefix('/')?;
    let (kind, tail) = rest.split_once('/')?;
    let raw = tail.split('/').next().filter(|r| !r.is_empty())?;
    matches!(kind, "lineage" | "manifests" | "tables").then(|| raw.to_string())
}

/// Whether the log holds the commit that moved the watermark: the record's
/// revision is at or after the watermark record's `mod_revision`. Pure.
pub fn holds_watermark(record: &DeltaRecord, watermark_mod_revision: i64) -> bool {
    record.revision >= watermark_mod_revision
}

/// Tables whose Delta log must be brought up to date, each with when it was
/// first marked since its last pass (UTC epoch ms).
#[derive(Default)]
pub struct DeltaMarks {
    inner: Mutex<MarksInner>,
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct MarksInner {
    all: Option<i64>,
    tables: BTreeMap<String, i64>,
}

/// What one pass of the projector covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Marked {
    /// Every table, marked since the given UTC epoch ms.
    All(i64),
    /// These tables, each marked since the given UTC epoch ms.
    Tables(BTreeMap<String, i64>),
}

impl DeltaMarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, MarksInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `raw` (keeps an earlier mark's time).
    pub fn mark(&self, raw: &str, now_ms: i64) {
        self.lock().tables.entry(raw.to_string()).or_insert(now_ms);
        self.notify.notify_one();
    }

    /// Marks every table.
    pub fn mark_all(&self, now_ms: i64) {
        let mut m = self.lock();
        m.all = Some(m.all.map_or(now_ms, |a| a.min(now_ms)));
        drop(m);
        self.notify.notify_one();
    }

    /// Marks the tables whose committed segments or schema `keys_changed` can move.
    pub fn note<'a>(&self, keys: &Keys, keys_changed: impl IntoIterator<Item = &'a str>, now_ms: i64) {
        let mut any = false;
        let mut m = self.lock();
        for k in keys_changed {
            if let Some(raw) = offline_touched(keys, k) {
                m.tables.entry(raw).or_insert(now_ms);
                any = true;
            }
        }
        drop(m);
        if any {
            self.notify.notify_one();
        }
    }

    /// Takes what is marked (`None`: nothing).
    pub fn take(&self) -> Option<Marked> {
        let mut m = self.lock();
        if let Some(since) = m.all.take() {
            let tables = std::mem::take(&mut m.tables);
            let since = tables.values().copied().fold(since, i64::min);
            return Some(Marked::All(since));
        }
        if m.tables.is_empty() {
            return None;
        }
        Some(Marked::Tables(std::mem::take(&mut m.tables)))
    }

    /// The oldest mark not yet taken, UTC epoch ms.
    pub fn oldest(&self) -> Option<i64> {
        let m = self.lock();
        m.tables.values().copied().chain(m.all).min()
    }
}

/// Brings every marked table's Delta log up to date while this controller
/// leads; a new term marks every table. A table whose pass fails is marked
/// again and tried after [`retry_delay`] (its first mark's time kept, so
/// the lag metric keeps growing).
pub async fn projection_loop(auth: Authority, cancel: tokio_util::sync::CancellationToken) {
    let mut leadership = auth.leadership.clone();
    let mut term: Option<i64> = None;
    // per table: passes failed in a row, and when the next may run
    let mut backoff: HashMap<String, (u32, std::time::Instant)> = HashMap::new();
    loop {
        let lead = *leadership.borrow_and_update();
        match lead {
            None => {
                term = None;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = leadership.changed() => if r.is_err() { return },
                }
                continue;
            }
            Some(l) if term != Some(l.create_revision) => {
                term = Some(l.create_revision);
                backoff.clear();
                auth.delta_marks.mark_all(now_ms());
            }
            Some(_) => {}
        }
        let Some(marked) = auth.delta_marks.take() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = auth.delta_marks.notify.notified() => {}
                _ = leadership.changed() => {}
            }
            continue;
        };
        let tables: BTreeMap<String, i64> = match marked {
            Marked::Tables(t) => t,
            Marked::All(since) => match all_tables(&auth).await {
                Ok(names) => names.into_iter().map(|n| (n, since)).collect(),
                Err(e) => {
                    warn!(error = %e, "listing the tables for their delta logs failed");
                    auth.delta_marks.mark_all(since);
                    pause(&cancel).await;
                    continue;
                }
            },
        };
        if held() {
            for (raw, since) in tables {
                set_lag(&auth, &raw, since);
                auth.delta_marks.mark(&raw, since);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let mut failed = false;
        let round = std::time::Instant::now();
        for (raw, since) in tables {
            if auth.leadership.borrow().is_none() || cancel.is_cancelled() {
                auth.delta_marks.mark(&raw, since);
                continue;
            }
            set_lag(&auth, &raw, since);
            // a table whose passes keep failing waits longer each time
            if backoff.get(&raw).is_some_and(|(_, next)| *next > round) {
                auth.delta_marks.mark(&raw, since);
                failed = true;
                continue;
            }
            match project_table(&auth, &raw).await {
                Ok(p) => {
                    backoff.remove(&raw);
                    if let Some(m) = &auth.metrics {
                        m.delta_lag.with_label_values(&[&raw]).set(0.0);
                        m.delta_version.with_label_values(&[&raw]).set(p.record.version);
                    }
                }
                Err(e) => {
                    let failures = backoff.get(&raw).map_or(0, |(n, _)| *n) + 1;
                    let delay = retry_delay(failures);
                    warn!(table = %raw, error = %e, failures, retry_in_ms = delay.as_millis() as u64, "the delta log pass failed; trying again");
                    if let Some(m) = &auth.metrics {
                        m.errors.with_label_values(&["delta"]).inc();
                    }
                    backoff.insert(raw.clone(), (failures, std::time::Instant::now() + delay));
                    auth.delta_marks.mark(&raw, since);
                    failed = true;
                }
            }
        }
        if failed {
            pause(&cancel).await;
            continue;
        }
        // marks gather while the log rests: passes take at most a third of the
        // time (a backfill commits hundreds of windows a second), and a change
        // waits at most twice the last round for its pass
        let rest = cooldown(round.elapsed());
        if !rest.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }
}

/// How long the projector rests after a round of passes that took `round`:
/// twice as long, at most 1 s; nothing after a round under 10 ms. Pure.
pub fn cooldown(round: Duration) -> Duration {
    if round < Duration::from_millis(10) {
        return Duration::ZERO;
    }
    (round * 2).min(Duration::from_secs(1))
}

/// How long a table waits for its next pass after `failures` failed in a
/// row (at least 1): 1 s, doubling, at most 60 s, so a log that cannot be
/// written (a store that refuses it) costs a pass a minute, not a second,
/// while the other tables' passes go on. Pure.
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Fault injection for the tests: while the file `R2O_FAULT_DELTA_HOLD`
/// names exists, passes write nothing (a leader that dies between its etcd
/// commits and their Delta commits).
fn held() -> bool {
    std::env::var_os("R2O_FAULT_DELTA_HOLD").is_some_and(|p| std::path::Path::new(&p).exists())
}

async fn pause(cancel: &tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

fn set_lag(auth: &Authority, raw: &str, since_ms: i64) {
    if let Some(m) = &auth.metrics {
        m.delta_lag.with_label_values(&[raw]).set((now_ms() - since_ms).max(0) as f64 / 1000.0);
    }
}

/// Every table with a record, and every table with a [`DeltaRecord`] (a
/// purged table's log still has its files to remove).
async fn all_tables(auth: &Authority) -> Result<Vec<String>> {
    let mut names: Vec<String> = auth.kv.range_keys(&auth.keys.tables()).await?;
    let tprefix = auth.keys.tables();
    names.iter_mut().for_each(|k| *k = k[tprefix.len()..].to_string());
    let dprefix = format!("{}/deltalog/", auth.keys.prefix());
    for k in auth.kv.range_keys(&dprefix).await? {
        names.push(k[dprefix.len()..].to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projected {
    /// The table's record after it.
    pub record: DeltaRecord,
    /// Files its commit added.
    pub added: usize,
    /// Files its commit removed.
    pub removed: usize,
}

/// One pass over one table: reads the etcd revision, then the committed
/// OFFLINE segments, and makes the log hold them; writes the table's
/// [`DeltaRecord`]. A table with no record and no log is left alone.
///
/// # Errors
/// etcd and store errors, and the log's (all retryable: the next pass reads
/// everything again).
pub async fn project_table(auth: &Authority, raw: &str) -> Result<Projected> {
    let (kv, keys) = (&auth.kv, &auth.keys);
    let revision = kv.status().await?.revision;
    let spec = crate::tables::load_table(kv, keys, raw).await?;
    // a purged table: nothing is committed any more (its log keeps the history)
    let copy = match spec {
        Some(_) => Some(auth.committed.read(kv, keys, raw).await?),
        None => {
            auth.committed.forget(raw);
            None
        }
    };
    let committed = copy.as_ref().map(|c| c.files()).unwrap_or_default();
    let schema = spec.as_ref().map(|s| &s.schema);
    let retention_ms = auth.cfg.delta_file_retention_ms;
    let memo = Some(&auth.delta_memo);
    let planned = delta::plan(&auth.store, &auth.layout, raw, schema, &committed, revision, retention_ms, memo)
        .await
        .map_err(log_error)?;
    let (version, revision, added, removed) = match planned {
        Planned::NoLog => return Ok(Projected::default()),
        Planned::UpToDate { version } => (version, revision, 0, 0),
        Planned::Stale { version, log_revision } => {
            debug!(table = raw, version, log_revision, revision, "delta log already holds a newer state");
            let record = DeltaRecord { version, revision: log_revision, projected_ms: now_ms() };
            return Ok(Projected { record, added: 0, removed: 0 });
        }
        Planned::Commit(mut pending) => {
            for f in pending.adds_mut() {
                if let Some(stats) = auth.delta_stats.take(&f.location) {
                    f.stats = stats;
                    continue;
                }
                let footer = crate::validate::read_input_footer(auth.store.clone(), &f.location).await?;
                if let Some(schema) = schema {
                    f.stats = delta::stats_json(f.rows, footer.as_ref(), schema);
                }
            }
            let (added, removed) = (pending.adds().len(), pending.removes());
            let version = pending.commit().await.map_err(log_error)?;
            info!(table = raw, version, added, removed, revision, "delta log committed");
            (version, revision, added, removed)
        }
    };
    let record = DeltaRecord { version, revision, projected_ms: now_ms() };
    kv.put(&record_key(keys, raw), encode(&record), None).await?;
    Ok(Projected { record, added, removed })
}

fn log_error(e: DeltaError) -> ControllerError {
    ControllerError::Conflict(e.to_string())
}

/// The table's [`DeltaRecord`], when the leader has projected it.
///
/// # Errors
/// etcd errors.
pub async fn read_record(kv: &r2o_common::kv::Kv, keys: &Keys, raw: &str) -> Result<Option<DeltaRecord>> {
    Ok(get_record::<DeltaRecord>(kv, &record_key(keys, raw)).await?.map(|(r, _)| r))
}

/// The Delta statistics ([`delta::stats_json`]) of staged outputs, from the
/// footers validation read, by location, kept for the projector's `add`
/// actions (so the log's statistics cost no second read of the file).
/// Bounded: past [`STATS_ENTRIES`] the oldest go (the projector then reads
/// the footer).
#[derive(Clone, Default)]
pub struct OutputStats {
    inner: Arc<Mutex<StatsInner>>,
}

/// Statistics by location, and the locations in insertion order.
type StatsInner = (BTreeMap<String, String>, std::collections::VecDeque<String>);

/// Outputs whose statistics [`OutputStats`] keeps (~400 bytes each).
pub const STATS_ENTRIES: usize = 20_000;

impl OutputStats {
    /// Keeps the statistics of the output at `location`.
    pub fn put(&self, location: &str, stats: String) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        if map.insert(location.to_string(), stats).is_none() {
            order.push_back(location.to_string());
        }
        while map.len() > STATS_ENTRIES {
            let Some(old) = order.pop_front() else { break };
            map.remove(&old);
        }
    }

    /// Takes the statistics of the output at `location`, when kept.
    pub fn take(&self, location: &str) -> Option<String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.remove(location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_flushes_purges_and_schema_changes_mark_the_table() {
        let keys = Keys::new("/r2o/ns");
        for (key, want) in [
            ("/r2o/ns/lineage/flights/flights__1__2", Some("flights")),
            ("/r2o/ns/manifests/flights/flights__1__2/a1/0", Some("flights")),
            ("/r2o/ns/tables/flights", Some("flights")),
            ("/r2o/ns/watermarks/flights", None),
            ("/r2o/ns/segments/flights_REALTIME/s1", None),
            ("/r2o/ns/deltalog/flights", None),
            ("/r2o/ns/lineage/", None),
            ("/r2o/other/lineage/flights/x", None),
        ] {
            assert_eq!(offline_touched(&keys, key).as_deref(), want, "{key}");
        }
    }

    #[test]
    fn marks_keep_the_first_time_and_take_empties_them() {
        let m = DeltaMarks::default();
        assert_eq!(m.take(), None);
        m.mark("a", 10);
        m.mark("a", 20);
        m.mark("b", 15);
        assert_eq!(m.oldest(), Some(10));
        assert_eq!(m.take(), Some(Marked::Tables([("a".into(), 10), ("b".into(), 15)].into())));
        assert_eq!(m.take(), None);
        m.mark("a", 30);
        m.mark_all(40);
        assert_eq!(m.take(), Some(Marked::All(30)), "every table, since the oldest mark");
        assert_eq!(m.take(), None);
    }

    #[test]
    fn the_log_holds_the_watermark_once_its_revision_reaches_the_watermarks() {
        let r = DeltaRecord { version: 3, revision: 100, projected_ms: 0 };
        assert!(holds_watermark(&r, 100) && holds_watermark(&r, 99));
        assert!(!holds_watermark(&r, 101));
    }

    #[test]
    fn the_log_rests_twice_its_last_round_at_most_a_second() {
        assert_eq!(cooldown(Duration::from_millis(3)), Duration::ZERO);
        assert_eq!(cooldown(Duration::from_millis(150)), Duration::from_millis(300));
        assert_eq!(cooldown(Duration::from_secs(5)), Duration::from_secs(1));
    }

    #[test]
    fn a_failing_table_waits_twice_as_long_each_time_at_most_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn output_stats_are_bounded_and_taken_once() {
        let f = OutputStats::default();
        for i in 0..STATS_ENTRIES + 5 {
            f.put(&format!("o/{i}"), format!("{{\"numRecords\":{i}}}"));
        }
        assert_eq!(f.take("o/0"), None, "the oldest went");
        assert!(f.take(&format!("o/{}", STATS_ENTRIES + 4)).is_some());
        assert!(f.take(&format!("o/{}", STATS_ENTRIES + 4)).is_none(), "taken once");
    }
}
