//! The janitor (step 5 of the commit protocol): deletes objects that no
//! metadata names — staged outputs of attempts that never committed and
//! REALTIME uploads that were never registered — once they are older than
//! a grace period. It never deletes an object named by segment metadata,
//! nor anything under the staging prefix of a task's current attempt.
//!
//! Order matters: active tasks are read before segment metadata, so an
//! attempt that commits between the two reads is protected by one or the
//! other.

use futures::TryStreamExt;
use object_store::{path::Path, ObjectStoreExt};
use r2o_common::kv::Kv;
use r2o_common::meta::{range_records, Keys, SegmentMeta, TaskRecord, TaskState};
use r2o_common::store::{staging_prefix, Store};
use r2o_common::Error;
use std::collections::HashSet;
use tracing::info;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects looked at.
    pub scanned: usize,
    /// Objects deleted (paths).
    pub deleted: Vec<String>,
    /// Orphans kept because they are younger than the grace period.
    pub young_orphans: usize,
}

/// One sweep over the store. `grace_ms`: minimum age of an orphan, ms.
pub async fn sweep(kv: &Kv, keys: &Keys, store: &Store, now_ms: i64, grace_ms: i64) -> Result<SweepReport, Error> {
    let mut live_prefixes = Vec::new();
    for (t, _) in range_records::<TaskRecord>(kv, &keys.active_tasks()).await? {
        if matches!(t.state, TaskState::Pending | TaskState::Running) {
            // the current attempt and the next one a minion may be claiming
            live_prefixes.push(staging_prefix(&t.table, &t.id, t.attempt));
            live_prefixes.push(staging_prefix(&t.table, &t.id, t.attempt + 1));
        }
    }
    let named: HashSet<String> = range_records::<SegmentMeta>(kv, &format!("{}/segments/", keys.prefix()))
        .await?
        .into_iter()
        .map(|(s, _)| s.location)
        .collect();
    let mut report = SweepReport::default();
    for prefix in ["offline/", "realtime/"] {
        let objects: Vec<object_store::ObjectMeta> = store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .map_err(|source| Error::Store { path: prefix.into(), source })?;
        for o in objects {
            report.scanned += 1;
            let path = o.location.to_string();
            if named.contains(&path) || live_prefixes.iter().any(|p| path.starts_with(p)) {
                continue;
            }
            if now_ms - o.last_modified.timestamp_millis() < grace_ms {
                report.young_orphans += 1;
                continue;
            }
            store.delete(&o.location).await.map_err(|source| Error::Store { path: path.clone(), source })?;
            info!(path = %path, "janitor deleted an orphaned object");
            report.deleted.push(path);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::kv::MemKv;
    use r2o_common::meta::{encode, SegmentStatus};
    use r2o_common::store::{object_size, open_store, put_bytes};
    use std::sync::Arc;

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
            created_ms: 0,
        }
    }

    #[tokio::test]
    async fn deletes_old_orphans_only() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/j");
        let store = open_store("memory://").unwrap();
        let committed = "offline/t_OFFLINE/t__0__1/attempt-1/a.parquet";
        let orphan = "offline/t_OFFLINE/t__0__1/attempt-2/a.parquet";
        let running = "offline/t_OFFLINE/t__9__1/attempt-3/b.parquet";
        let realtime = "realtime/t_REALTIME/s0.parquet";
        let unregistered = "realtime/t_REALTIME/lost.parquet";
        for p in [committed, orphan, running, realtime, unregistered] {
            put_bytes(&store, p, bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        kv.put(&keys.segment("t_OFFLINE", "a"), encode(&seg("t_OFFLINE", "a", committed)), None).await.unwrap();
        kv.put(&keys.segment("t_REALTIME", "s0"), encode(&seg("t_REALTIME", "s0", realtime)), None).await.unwrap();
        let task = serde_json::json!({
            "id": "t__9__1", "table": "t", "windowStartMs": 9, "windowEndMs": 10, "skippedWindows": 0, "inputs": [],
            "tableConfig": {}, "schema": {}, "state": "RUNNING", "attempt": 3, "minion": "m", "createdMs": 0,
            "startedMs": 0, "finishedMs": 0, "errors": [], "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0,
            "outputSegments": []
        });
        kv.put(&keys.active_task("t__9__1"), serde_json::to_vec(&task).unwrap(), None).await.unwrap();

        let now = r2o_common::meta::now_ms();
        // within the grace period nothing goes
        let r = sweep(&kv, &keys, &store, now, 60_000).await.unwrap();
        assert_eq!((r.scanned, r.deleted.len(), r.young_orphans), (5, 0, 2));
        // past it, exactly the two orphans go
        let r = sweep(&kv, &keys, &store, now + 120_000, 60_000).await.unwrap();
        let mut deleted = r.deleted.clone();
        deleted.sort();
        assert_eq!(deleted, vec![orphan.to_string(), unregistered.to_string()]);
        for p in [committed, running, realtime] {
            assert!(object_size(&store, p).await.unwrap().is_some(), "{p} must survive");
        }
        for p in [orphan, unregistered] {
            assert!(object_size(&store, p).await.unwrap().is_none(), "{p} must be gone");
        }
    }
}
