//! The janitor (step 5 of the commit protocol), run by the leader: deletes
//! what nothing names, and keeps etcd from growing without bound.
//!
//! - **Objects** under the install's namespace (never outside it) that no
//!   REALTIME segment, no committed manifest and no active task's current
//!   (or next) attempt names: staged outputs of attempts that never
//!   committed, REALTIME uploads that were never registered.
//! - **etcd chunks** nothing refers to: manifests of attempts that never
//!   committed, input lists of tasks no longer active (committed windows
//!   keep their input count in the lineage).
//! - **Replaced OFFLINE files**: a window's segments that a later
//!   `rematerialize` late-data run replaced (`registry::visible_segments`)
//!   are no longer named, so their files go after the grace.
//! - **History** past its retention (count per table and age).
//! - **Revisions**: compacts etcd to the revision seen one sweep earlier.
//!
//! An orphan is deleted only once it has been seen orphaned, continuously,
//! for the grace period, measured on this process's monotonic clock from the
//! sweep that first saw it: the store's timestamps and other machines'
//! clocks play no part, so clock skew cannot shorten the grace. A new
//! leader starts counting afresh (deletion is only ever delayed).
//!
//! Order matters: active tasks are read before lineage, manifests and
//! segment metadata, so an attempt that commits between the reads is
//! protected by one or the other.

use futures::TryStreamExt;
use object_store::path::Path;
use r2o_common::kv::{Kv, Op};
use r2o_common::meta::{
    decode, for_each_entry, range_records, unsortable_ms, Keys, LineageRecord, SegmentMeta, TaskRecord, TaskState,
};
use r2o_common::store::{canonical_path, delete_object, Layout, Store};
use r2o_common::Error;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tracing::info;

/// How much task history each table keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention {
    /// Most finished tasks kept per table (the newest).
    pub max_per_table: usize,
    /// Finished tasks created longer ago than this are deleted, ms (0: no limit).
    pub max_age_ms: i64,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects looked at.
    pub scanned: usize,
    /// Objects deleted (paths).
    pub deleted: Vec<String>,
    /// etcd prefixes deleted (orphaned manifests and inputs).
    pub deleted_keys: Vec<String>,
    /// Orphans kept because they have not been orphaned for the grace period yet.
    pub young_orphans: usize,
    /// History records pruned.
    pub history_pruned: usize,
    /// Objects no metadata names that a table's Delta log still needs (named
    /// by its current version, or removed within the file retention).
    pub kept_for_readers: usize,
    /// Audit records deleted (older than the history's age limit, or past
    /// the newest [`AUDIT_MAX`]).
    pub audit_pruned: usize,
    /// Revision etcd was compacted to.
    pub compacted_to: Option<i64>,
}

/// Sweeps in a row the janitor may skip while nothing changed: a full sweep
/// runs at least this often anyway (history's age limit, the etcd
/// compaction), in janitor intervals (60: an hour at the default 60 s).
pub const MAX_SKIPPED_SWEEPS: u32 = 60;

/// Whether the janitor sweeps now (issue 21: cost that follows change): it
/// skips while etcd's revision is the one its last sweep started at
/// (`unchanged`; r2o writes to etcd before and after every store write, so
/// the store is unchanged too) and that sweep left no orphan waiting for its
/// grace (`young_orphans`), up to [`MAX_SKIPPED_SWEEPS`] in a row (`skipped`).
/// Pure.
pub fn sweep_due(unchanged: bool, young_orphans: usize, skipped: u32) -> bool {
    !unchanged || young_orphans > 0 || skipped >= MAX_SKIPPED_SWEEPS
}

/// The janitor's memory between sweeps.
#[derive(Debug)]
pub struct Janitor {
    grace: Duration,
    /// How long a file removed from a table's Delta log stays for time
    /// travel, ms ([`crate::delta::kept_for_readers`]).
    file_retention_ms: i64,
    retention: HistoryRetention,
    first_seen: HashMap<String, Instant>,
    last_revision: Option<i64>,
}

/// How long a file removed from a table's Delta log stays for time travel
/// by default: 7 days, Delta's `deletedFileRetentionDuration`.
pub const DEFAULT_FILE_RETENTION_MS: i64 = 7 * 86_400_000;

/// `<raw>/<task>/a<attempt>/<n>` under `manifests/` as (raw, task, attempt).
fn parse_manifest_key(rest: &str) -> Option<(&str, &str, u32)> {
    let (raw, rest) = rest.split_once('/')?;
    let (task, attempt) = crate::registry::manifest_attempt(rest)?;
    Some((raw, task, attempt))
}

impl Janitor {
    /// A janitor deleting orphans after `grace`, keeping history per `retention`.
    pub fn new(grace: Duration, retention: HistoryRetention) -> Janitor {
        Janitor {
            grace,
            file_retention_ms: DEFAULT_FILE_RETENTION_MS,
            retention,
            first_seen: HashMap::new(),
            last_revision: None,
        }
    }

    /// Keeps files removed from a table's Delta log for `retention` (default
    /// [`DEFAULT_FILE_RETENTION_MS`]).
    pub fn with_file_retention(mut self, retention: Duration) -> Janitor {
        self.file_retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Whether an orphan named `id` may go at `now`; remembers when it was first seen.
    fn ripe(&mut self, id: &str, now: Instant) -> bool {
        let first = *self.first_seen.entry(id.to_string()).or_insert(now);
        now.duration_since(first) >= self.grace
    }

    /// One sweep. `now` is this process's monotonic clock, `now_ms` the
    /// wall clock (only for history ages, which r2o itself recorded).
    pub async fn sweep(
        &mut self,
        kv: &Kv,
        keys: &Keys,
        store: &Store,
        layout: &Layout,
        now: Instant,
        now_ms: i64,
    ) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        // 1. active tasks: their current and next attempts may be staging or committing
        let mut live_prefixes = Vec::new();
        let mut active: HashMap<String, u32> = HashMap::new();
        for (t, _) in range_records::<TaskRecord>(kv, &keys.active_tasks()).await? {
            if t.is_open() {
                // its current attempt (a STAGED task's outputs wait there for their commit)
                // and the next one a minion may be claiming
                live_prefixes.push(canonical_path(&layout.staging_prefix(&t.id, t.attempt)));
                live_prefixes.push(canonical_path(&layout.staging_prefix(&t.id, t.attempt + 1)));
                if t.state == TaskState::Staged {
                    live_prefixes.push(canonical_path(&layout.staging_prefix(&t.id, t.staged_attempt)));
                }
            }
            active.insert(t.id.to_string(), t.attempt);
        }
        // 2. lineage: what is committed, per table (with its keys' revisions)
        let mut committed: HashSet<(String, u32)> = HashSet::new();
        let mut lineages: HashMap<String, Vec<(LineageRecord, i64)>> = HashMap::new();
        let lprefix = keys.all_lineage();
        for (l, entry) in range_records::<LineageRecord>(kv, &lprefix).await? {
            let raw = entry.key[lprefix.len()..].split('/').next().unwrap_or_default().to_string();
            committed.insert((l.task_id.clone(), l.attempt));
            lineages.entry(raw).or_default().push((l, entry.create_revision));
        }
        // 3. manifests: committed ones name the objects readers see (a window's
        //    segments replaced by a later rematerialize run no longer count;
        //    their files go after the grace); the rest are orphans unless an
        //    active task may be committing that attempt right now
        let mut named: HashSet<String> = HashSet::new();
        let mut orphan_keys: Vec<String> = Vec::new();
        let mut manifests: HashMap<String, Vec<(String, u32, Vec<SegmentMeta>)>> = HashMap::new();
        let mprefix = keys.all_manifests();
        for entry in kv.range(&mprefix).await? {
            let Some((raw, task, attempt)) = parse_manifest_key(&entry.key[mprefix.len()..]) else { continue };
            if committed.contains(&(task.to_string(), attempt)) {
                let entries = r2o_common::meta::chunks::decode_chunk::<SegmentMeta>(&entry)?;
                manifests.entry(raw.to_string()).or_default().push((task.to_string(), attempt, entries));
            } else if active.get(task).is_none_or(|current| attempt < *current) {
                let p = format!("{mprefix}{raw}/{task}/a{attempt}/");
                if orphan_keys.last() != Some(&p) {
                    orphan_keys.push(p);
                }
            }
        }
        for (raw, m) in manifests {
            let l = lineages.get(&raw).map(Vec::as_slice).unwrap_or_default();
            for s in crate::registry::visible_segments(l, m) {
                named.insert(canonical_path(&s.location));
            }
        }
        // 4. inputs of tasks not active: committed windows no longer need their
        //    input lists (the lineage keeps their count), abandoned ones never will
        let iprefix = keys.all_inputs();
        for key in kv.range_keys(&iprefix).await? {
            let mut parts = key[iprefix.len()..].split('/');
            let (Some(raw), Some(task)) = (parts.next(), parts.next()) else { continue };
            if !active.contains_key(task) {
                let p = format!("{iprefix}{raw}/{task}/");
                if orphan_keys.last() != Some(&p) {
                    orphan_keys.push(p);
                }
            }
        }
        // 5. REALTIME segments name their objects (page by page, keeping only
        //    the locations: a table may hold 100,000s of segments)
        for_each_entry(kv, &keys.all_segments(), |entry| {
            named.insert(canonical_path(&decode::<SegmentMeta>(entry)?.location));
            Ok(())
        })
        .await?;
        // 6. objects under the namespace, and only there (the orphans alone kept)
        let ns = layout.namespace();
        let mut listing = store.list(Some(&Path::from(ns)));
        let mut orphans: Vec<String> = Vec::new();
        while let Some(o) = listing.try_next().await.map_err(|source| Error::Store { path: ns.into(), source })? {
            report.scanned += 1;
            let path = o.location.to_string();
            // (a table's Delta log is named by no metadata: never an orphan)
            let kept = named.contains(&path)
                || live_prefixes.iter().any(|p| path.starts_with(p.as_str()))
                || crate::delta::is_log_object(layout, &path);
            if !kept {
                orphans.push(path);
            }
        }
        drop(listing);
        drop(named);
        // a table's files its Delta log still names (it lags behind etcd), or
        // removed less than the file retention ago (time travel), stay
        // (`None`: the log cannot be read; its table's orphans wait for a sweep that can)
        let mut logs: HashMap<String, Option<crate::delta::LogFiles>> = HashMap::new();
        let mut kept_for_readers = 0;
        let mut unreadable = vec![];
        let mut unlogged = Vec::with_capacity(orphans.len());
        for path in orphans {
            let Some(raw) = crate::delta::table_of(layout, &path) else {
                unlogged.push(path);
                continue;
            };
            if !logs.contains_key(raw) {
                let files = match crate::delta::log_files(store, layout, raw).await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(table = raw, error = %e, "the janitor cannot read the table's delta log; its orphans stay");
                        None
                    }
                };
                logs.insert(raw.to_string(), files);
            }
            let keep = match &logs[raw] {
                Some(f) => {
                    let removed = f.removed.get(&path).copied();
                    crate::delta::kept_for_readers(f.current.contains(&path), removed, now_ms, self.file_retention_ms)
                }
                None => {
                    // kept this sweep, but its grace keeps counting
                    unreadable.push(path);
                    continue;
                }
            };
            if keep {
                kept_for_readers += 1;
                continue;
            }
            unlogged.push(path);
        }
        drop(logs);
        report.kept_for_readers = kept_for_readers;
        let orphans = unlogged;
        let mut still_orphaned: HashSet<String> = HashSet::new();
        for path in unreadable {
            let id = format!("store:{path}");
            self.ripe(&id, now);
            still_orphaned.insert(id);
            report.young_orphans += 1;
        }
        for path in orphans {
            let id = format!("store:{path}");
            still_orphaned.insert(id.clone());
            if !self.ripe(&id, now) {
                report.young_orphans += 1;
                continue;
            }
            delete_object(store, &path).await?;
            info!(path = %path, "janitor deleted an orphaned object");
            report.deleted.push(path);
        }
        for p in orphan_keys {
            let id = format!("etcd:{p}");
            still_orphaned.insert(id.clone());
            if !self.ripe(&id, now) {
                report.young_orphans += 1;
                continue;
            }
            kv.txn(vec![], vec![Op::delete_prefix(p.clone())]).await?;
            info!(prefix = %p, "janitor deleted orphaned metadata");
            report.deleted_keys.push(p);
        }
        // forget what is no longer orphaned (or is gone)
        self.first_seen.retain(|id, _| still_orphaned.contains(id));
        for id in report
            .deleted
            .iter()
            .map(|p| format!("store:{p}"))
            .chain(report.deleted_keys.iter().map(|p| format!("etcd:{p}")))
        {
            self.first_seen.remove(&id);
        }
        report.history_pruned = self.prune_history(kv, keys, now_ms).await?;
        report.audit_pruned = self.prune_audit(kv, keys, now_ms).await?;
        // compact to the revision seen one sweep ago
        let status = kv.status().await?;
        if let Some(rev) = self.last_revision {
            kv.compact(rev).await?;
            report.compacted_to = Some(rev);
        }
        self.last_revision = Some(status.revision);
        Ok(report)
    }

    /// Deletes audit records (`access/audit/<at>/..`, oldest first) older than
    /// the history's `max_age_ms`, and the oldest past [`AUDIT_MAX`].
    async fn prune_audit(&self, kv: &Kv, keys: &Keys, now_ms: i64) -> Result<usize, Error> {
        let prefix = keys.audits();
        let all = kv.range_keys(&prefix).await?;
        let doomed = expired_keys(&all, prefix.len(), AUDIT_MAX, self.retention.max_age_ms, now_ms);
        for batch in doomed.chunks(100) {
            kv.txn(vec![], batch.iter().map(|k| Op::delete((*k).clone())).collect()).await?;
        }
        if !doomed.is_empty() {
            info!(pruned = doomed.len(), "janitor pruned the audit log");
        }
        Ok(doomed.len())
    }

    /// Deletes history beyond the retention: the oldest past
    /// `max_per_table`, and any created before `now_ms - max_age_ms`.
    async fn prune_history(&self, kv: &Kv, keys: &Keys, now_ms: i64) -> Result<usize, Error> {
        let tprefix = keys.tables();
        let mut pruned = 0;
        for table in kv.range_keys(&tprefix).await? {
            let raw = &table[tprefix.len()..];
            let hprefix = keys.histories(raw);
            let all = kv.range_keys(&hprefix).await?; // oldest first
            let doomed =
                expired_keys(&all, hprefix.len(), self.retention.max_per_table, self.retention.max_age_ms, now_ms);
            for batch in doomed.chunks(100) {
                kv.txn(vec![], batch.iter().map(|k| Op::delete((*k).clone())).collect()).await?;
                pruned += batch.len();
            }
        }
        if pruned > 0 {
            info!(pruned, "janitor pruned task history");
        }
        Ok(pruned)
    }
}

/// Most audit records kept (the newest).
pub const AUDIT_MAX: usize = 100_000;

/// Of `keys` (oldest first, each `<prefix of prefix_len><sortable ms>/..`),
/// those to delete: the oldest past `max_count`, and those whose time is
/// before `now_ms - max_age_ms` (`max_age_ms` 0: no age limit). Pure.
fn expired_keys(keys: &[String], prefix_len: usize, max_count: usize, max_age_ms: i64, now_ms: i64) -> Vec<&String> {
    let excess = keys.len().saturating_sub(max_count);
    keys.iter()
        .enumerate()
        .filter(|(i, k)| {
            *i < excess
                || (max_age_ms > 0
                    && k[prefix_len..]
                        .split('/')
                        .next()
                        .and_then(unsortable_ms)
                        .is_some_and(|at| at < now_ms - max_age_ms))
        })
        .map(|(_, k)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::kv::MemKv;
    use r2o_common::meta::{chunks, encode, SegmentStatus, TaskId};
    use r2o_common::store::{object_size, open_store, put_bytes};
    use std::sync::Arc;

    #[test]
    fn an_unchanged_cluster_is_not_swept_until_the_hour() {
        assert!(sweep_due(false, 0, 0), "etcd moved");
        assert!(sweep_due(true, 3, 0), "orphans wait for their grace");
        assert!(!sweep_due(true, 0, 0));
        assert!(!sweep_due(true, 0, MAX_SKIPPED_SWEEPS - 1));
        assert!(sweep_due(true, 0, MAX_SKIPPED_SWEEPS), "a full sweep at least every MAX_SKIPPED_SWEEPS");
    }

    fn seg(table: &str, name: &str, location: &str) -> SegmentMeta {
        SegmentMeta {
            segment_name: name.into(),
            table_name: table.into(),
            status: SegmentStatus::Done,
            start_time_ms: 0,
            end_time_ms: 0,
            total_docs: 1,
            size_bytes: 1,
            schema_fingerprint: String::new(),
            location: location.into(),
            partition: -1,
            ..Default::default()
        }
    }

    fn lineage(task: &str, attempt: u32) -> LineageRecord {
        LineageRecord {
            window_start_ms: 0,
            window_end_ms: 1,
            from_ms: Some(0),
            windows: vec![],
            skipped_windows: 0,
            task_id: task.into(),
            attempt,
            input_count: 0,
            output_count: 1,
            output_chunks: 1,
            rows_in: 1,
            rows_out: 1,
            committed_ms: 0,
            late: None,
        }
    }

    const NO_LIMIT: HistoryRetention = HistoryRetention { max_per_table: usize::MAX, max_age_ms: 0 };

    #[tokio::test]
    async fn deletes_old_orphans_only_and_never_outside_its_namespace() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/j");
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&format!("file://{}", dir.path().display())).unwrap();
        let layout = Layout::new("j-1");
        let done = TaskId::new("t", 0, 1);
        let running = TaskId::new("t", 9, 1);
        let committed = format!("{}a.parquet", layout.staging_prefix(&done, 1));
        let orphan = format!("{}a.parquet", layout.staging_prefix(&done, 2));
        let staged = format!("{}b.parquet", layout.staging_prefix(&running, 3));
        // a REALTIME segment whose name needs percent-encoding in object paths
        let realtime = format!("{}seg[1]{{x}}#%.abc.parquet", layout.realtime_prefix("t"));
        let unregistered = format!("{}lost.abc.parquet", layout.realtime_prefix("t"));
        // another install's committed file on the same bucket
        let foreign = "j-2/offline/t_OFFLINE/t__0__1/attempt-1/a.parquet".to_string();
        // a table's Delta log: named by no metadata, never an orphan (another
        // table's: this one is not a log a reader could open)
        let delta_log = format!("{}_delta_log/00000000000000000000.json", layout.offline_prefix("u"));
        for p in [&committed, &orphan, &staged, &realtime, &unregistered, &foreign, &delta_log] {
            put_bytes(&store, p, bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        kv.put(&keys.segment("t_REALTIME", "seg[1]"), encode(&seg("t_REALTIME", "seg[1]", &realtime)), None)
            .await
            .unwrap();
        chunks::write(&kv, &keys.manifest(&done, 1), &[seg("t_OFFLINE", "a", &committed)]).await.unwrap();
        chunks::write(&kv, &keys.manifest(&done, 2), &[seg("t_OFFLINE", "a", &orphan)]).await.unwrap();
        chunks::write(&kv, &keys.inputs(&done), &[seg("t_REALTIME", "seg[1]", &realtime)]).await.unwrap();
        let abandoned = TaskId::new("t", 5, 1);
        chunks::write(&kv, &keys.inputs(&abandoned), &[seg("t_REALTIME", "seg[1]", &realtime)]).await.unwrap();
        kv.put(&keys.lineage("t", 0), encode(&lineage(&done.to_string(), 1)), None).await.unwrap();
        let task = serde_json::json!({
            "id": running.to_string(), "table": "t", "windowStartMs": 9, "windowEndMs": 10, "skippedWindows": 0,
            "inputCount": 0, "inputChunks": 1, "inputRows": 0, "inputBytes": 0, "segmentsRevision": 0,
            "tableConfig": {}, "schema": {}, "state": "RUNNING", "attempt": 3, "minion": "m", "createdMs": 0,
            "startedMs": 0, "finishedMs": 0, "errors": [], "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0
        });
        kv.put(&keys.active_task(&running), serde_json::to_vec(&task).unwrap(), None).await.unwrap();
        // a STAGED task: validated outputs and manifest waiting for the tasks before it to commit
        let staged_id = TaskId::new("t", 20, 1);
        let staged_file = format!("{}c.parquet", layout.staging_prefix(&staged_id, 2));
        put_bytes(&store, &staged_file, bytes::Bytes::from_static(b"x")).await.unwrap();
        chunks::write(&kv, &keys.manifest(&staged_id, 2), &[seg("t_OFFLINE", "c", &staged_file)]).await.unwrap();
        let mut staged_task: serde_json::Value = task.clone();
        staged_task["id"] = serde_json::json!(staged_id.to_string());
        staged_task["state"] = serde_json::json!("STAGED");
        staged_task["attempt"] = serde_json::json!(2);
        staged_task["stagedAttempt"] = serde_json::json!(2);
        kv.put(&keys.active_task(&staged_id), serde_json::to_vec(&staged_task).unwrap(), None).await.unwrap();

        let mut j = Janitor::new(Duration::from_secs(60), NO_LIMIT);
        let t0 = Instant::now();
        // first sight: nothing goes, whatever the objects' timestamps say
        let r = j.sweep(&kv, &keys, &store, &layout, t0, 0).await.unwrap();
        assert_eq!((r.scanned, r.deleted.len(), r.deleted_keys.len()), (7, 0, 0), "{r:?}");
        assert_eq!(r.young_orphans, 5, "two objects, one manifest, two inputs lists: {r:?}");
        // still within the grace on this process's clock
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(59), 0).await.unwrap();
        assert!(r.deleted.is_empty() && r.deleted_keys.is_empty());
        // past it: exactly the orphans go
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(61), 0).await.unwrap();
        let mut deleted = r.deleted.clone();
        deleted.sort();
        assert_eq!(deleted, vec![canonical_path(&orphan), canonical_path(&unregistered)]);
        let mut gone = r.deleted_keys.clone();
        gone.sort();
        assert_eq!(gone, vec![keys.inputs(&done), keys.inputs(&abandoned), keys.manifest(&done, 2)]);
        for p in [&committed, &staged, &realtime, &foreign, &staged_file, &delta_log] {
            assert!(object_size(&store, p).await.unwrap().is_some(), "{p} must survive");
        }
        for p in [&orphan, &unregistered] {
            assert!(object_size(&store, p).await.unwrap().is_none(), "{p} must be gone");
        }
        assert!(!kv.range(&keys.manifest(&done, 1)).await.unwrap().is_empty(), "the committed manifest stays");
        assert!(kv.range(&keys.inputs(&done)).await.unwrap().is_empty(), "a committed window's input list goes");
        assert!(!kv.range(&keys.manifest(&staged_id, 2)).await.unwrap().is_empty(), "a STAGED manifest stays");
    }

    /// An empty etcd and memory store with a flow's task and a late run's
    /// task over window 0 of table `t`: `old` (the flow's attempt 1) and
    /// `new` (the late run's) are in the store, nothing in etcd yet.
    struct Replaced {
        kv: Kv,
        keys: Keys,
        store: r2o_common::store::Store,
        layout: Layout,
        flow: TaskId,
        late: TaskId,
        old: String,
        new: String,
    }

    async fn replaced() -> Replaced {
        let store = open_store("memory://").unwrap();
        let layout = Layout::new("ns");
        let (flow, late) = (TaskId::new("t", 0, 1), TaskId::new("t", 0, 2));
        let old = format!("{}a.parquet", layout.staging_prefix(&flow, 1));
        let new = format!("{}b.parquet", layout.staging_prefix(&late, 1));
        for p in [&old, &new] {
            put_bytes(&store, p, bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        Replaced { kv: Arc::new(MemKv::new()), keys: Keys::new("/j"), store, layout, flow, late, old, new }
    }

    #[tokio::test]
    async fn files_a_rematerialize_run_replaced_go_after_the_grace() {
        // finding 13 of issue 19: replaced files were kept forever
        let Replaced { kv, keys, store, layout, flow, late, old, new } = replaced().await;
        let other = format!("{}c.parquet", layout.staging_prefix(&flow, 1));
        put_bytes(&store, &other, bytes::Bytes::from_static(b"x")).await.unwrap();
        let in_window = |name: &str, location: &str, w: i64| SegmentMeta {
            window_start_ms: Some(w),
            ..seg("t_OFFLINE", name, location)
        };
        // the flow committed windows 0 and 1; a late run then rematerialized window 0
        chunks::write(&kv, &keys.manifest(&flow, 1), &[in_window("a", &old, 0), in_window("c", &other, 1)])
            .await
            .unwrap();
        kv.put(&keys.lineage("t", 0), encode(&lineage(&flow.to_string(), 1)), None).await.unwrap();
        chunks::write(&kv, &keys.manifest(&late, 1), &[in_window("b", &new, 0)]).await.unwrap();
        let run = LineageRecord {
            late: Some(r2o_common::meta::LateRun { policy: "rematerialize".into(), segments: vec!["l".into()] }),
            ..lineage(&late.to_string(), 1)
        };
        kv.put(&keys.late_lineage("t", 0, 2), encode(&run), None).await.unwrap();
        let mut j = Janitor::new(Duration::from_secs(10), NO_LIMIT);
        let t0 = Instant::now();
        assert_eq!(j.sweep(&kv, &keys, &store, &layout, t0, 0).await.unwrap().young_orphans, 1);
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(11), 0).await.unwrap();
        assert_eq!(r.deleted, vec![canonical_path(&old)]);
        for p in [&new, &other] {
            assert!(object_size(&store, p).await.unwrap().is_some(), "{p} is still read");
        }
    }

    #[tokio::test]
    async fn files_the_delta_log_names_or_removed_lately_stay_for_its_readers() {
        use crate::delta::{plan, Planned};
        let Replaced { kv, keys, store, layout, flow, late, old, new } = replaced().await;
        let lagging = format!("{}d.parquet", layout.staging_prefix(&flow, 1));
        let failed = format!("{}e.parquet", layout.staging_prefix(&TaskId::new("t", 0, 3), 1));
        for p in [&lagging, &failed] {
            put_bytes(&store, p, bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        let schema = r2o_common::schema::Schema {
            name: "t".into(),
            fields: vec![r2o_common::schema::FieldSpec {
                name: "n".into(),
                data_type: r2o_common::schema::DataType::Long,
                kind: r2o_common::schema::FieldKind::Metric,
                time_format: None,
                default_null_value: None,
                not_null: false,
            }],
        };
        let commit = |files: Vec<SegmentMeta>, rev: i64| {
            let (store, layout, schema) = (store.clone(), layout.clone(), schema.clone());
            async move {
                let files: Vec<_> = files.iter().map(crate::delta::CommittedFile::of).collect();
                match plan(&store, &layout, "t", Some(&schema), &files, rev, DEFAULT_FILE_RETENTION_MS, None)
                    .await
                    .unwrap()
                {
                    Planned::Commit(p) => p.commit().await.unwrap(),
                    _ => panic!("a commit was due"),
                }
            }
        };
        // the log: version 0 named `old` and `lagging`; version 1 replaced
        // `old` by `new`; etcd names `new` alone (`lagging` left etcd, the log
        // not yet: the projector lags)
        commit(vec![seg("t_OFFLINE", "a", &old), seg("t_OFFLINE", "d", &lagging)], 1).await;
        commit(vec![seg("t_OFFLINE", "b", &new), seg("t_OFFLINE", "d", &lagging)], 2).await;
        chunks::write(&kv, &keys.manifest(&late, 1), &[seg("t_OFFLINE", "b", &new)]).await.unwrap();
        kv.put(&keys.lineage("t", 0), encode(&lineage(&late.to_string(), 1)), None).await.unwrap();
        let day = 86_400_000;
        let mut j = Janitor::new(Duration::from_secs(10), NO_LIMIT).with_file_retention(Duration::from_secs(86_400));
        let t0 = Instant::now();
        let now = r2o_common::meta::now_ms();
        j.sweep(&kv, &keys, &store, &layout, t0, now).await.unwrap();
        // past the grace, within the retention: only the file the log never named goes
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(11), now).await.unwrap();
        assert_eq!(r.deleted, vec![canonical_path(&failed)]);
        assert_eq!(r.kept_for_readers, 2, "{r:?}");
        // a day after the removal the replaced file is an orphan like any
        // other: it goes after the grace; the one the log still names stays
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(12), now + day + 1000).await.unwrap();
        assert_eq!((r.deleted.len(), r.young_orphans, r.kept_for_readers), (0, 1, 1), "{r:?}");
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(23), now + day + 2000).await.unwrap();
        assert_eq!(r.deleted, vec![canonical_path(&old)]);
        for p in [&new, &lagging] {
            assert!(object_size(&store, p).await.unwrap().is_some(), "{p} stays");
        }
    }

    #[tokio::test]
    async fn an_orphan_that_gets_named_is_forgotten() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/j");
        let store = open_store("memory://").unwrap();
        let layout = Layout::new("ns");
        let upload = format!("{}s.abc.parquet", layout.realtime_prefix("t"));
        put_bytes(&store, &upload, bytes::Bytes::from_static(b"x")).await.unwrap();
        let mut j = Janitor::new(Duration::from_secs(10), NO_LIMIT);
        let t0 = Instant::now();
        assert_eq!(j.sweep(&kv, &keys, &store, &layout, t0, 0).await.unwrap().young_orphans, 1);
        // registered before the grace passed
        kv.put(&keys.segment("t_REALTIME", "s"), encode(&seg("t_REALTIME", "s", &upload)), None).await.unwrap();
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(5), 0).await.unwrap();
        assert_eq!(r.young_orphans, 0);
        // unregistered again (e.g. a reset): the grace starts over
        kv.delete(&keys.segment("t_REALTIME", "s")).await.unwrap();
        let r = j.sweep(&kv, &keys, &store, &layout, t0 + Duration::from_secs(20), 0).await.unwrap();
        assert_eq!((r.deleted.len(), r.young_orphans), (0, 1), "the clock restarts: {r:?}");
    }

    #[tokio::test]
    async fn history_is_pruned_by_count_and_age_and_etcd_is_compacted() {
        let mem = MemKv::new();
        let kv: Kv = Arc::new(mem.clone());
        let keys = Keys::new("/j");
        let store = open_store("memory://").unwrap();
        kv.put(&keys.table("t"), b"{}".to_vec(), None).await.unwrap();
        for created in 0..10i64 {
            kv.put(&keys.history(&TaskId::new("t", created, created * 1_000)), b"{}".to_vec(), None).await.unwrap();
        }
        let mut j = Janitor::new(Duration::from_secs(1), HistoryRetention { max_per_table: 6, max_age_ms: 3_500 });
        let r = j.sweep(&kv, &keys, &store, &Layout::new("ns"), Instant::now(), 10_000).await.unwrap();
        // count keeps the newest 6 (created 4..=9 s); age keeps those created after 6.5 s
        assert_eq!(r.history_pruned, 7);
        let left = kv.range_keys(&keys.histories("t")).await.unwrap();
        assert_eq!(left, (7..10).map(|c| keys.history(&TaskId::new("t", c, c * 1_000))).collect::<Vec<_>>());
        assert_eq!(r.compacted_to, None, "the first sweep only notes the revision");
        let rev = kv.status().await.unwrap().revision;
        let r = j.sweep(&kv, &keys, &store, &Layout::new("ns"), Instant::now(), 10_000).await.unwrap();
        assert_eq!(r.compacted_to, Some(rev));
        assert_eq!(mem.compacted_revision(), rev);
    }

    #[tokio::test]
    async fn the_audit_log_is_pruned_by_age() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/j");
        let store = open_store("memory://").unwrap();
        for at in 0..10i64 {
            kv.put(&keys.audit(at * 1_000, "n"), b"{}".to_vec(), None).await.unwrap();
        }
        let mut j = Janitor::new(Duration::from_secs(1), HistoryRetention { max_per_table: 6, max_age_ms: 3_500 });
        let r = j.sweep(&kv, &keys, &store, &Layout::new("ns"), Instant::now(), 10_000).await.unwrap();
        assert_eq!(r.audit_pruned, 7, "older than 6.5 s");
        let left = kv.range_keys(&keys.audits()).await.unwrap();
        assert_eq!(left, (7..10).map(|at| keys.audit(at * 1_000, "n")).collect::<Vec<_>>());
    }
}
