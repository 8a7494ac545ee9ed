//! Retention of moved REALTIME data (the REALTIME table's
//! `segmentsConfig.retentionTimeUnit` / `retentionTimeValue`).
//!
//! Pinot's rule decides when a segment is old enough: its end time is more
//! than the retention before now (`TimeRetentionStrategy`; end times outside
//! 1971..2071 are never purged). r2o adds the rule Pinot leaves to a manual
//! flag (apache/pinot#15257): a segment is deleted only once every row of
//! it has moved to OFFLINE — it is DONE, was not registered late, and ends
//! before the watermark. A segment past retention with rows not yet moved
//! is kept, whatever its age, and counted
//! (`r2o_table_realtime_segments_unmoved_past_retention`, `r2o watermark`).
//!
//! [`plan_retention`] is pure; [`enforce`] (run by the leader's janitor
//! loop) deletes the metadata first, in transactions that also check the
//! watermark and each segment's revision, then the objects (an object left
//! behind by a crash is an orphan the janitor removes).

use r2o_common::config::TableSpec;
use r2o_common::kv::Kv;
use r2o_common::meta::{get_record, range_records, Keys, RetentionRecord, SegmentMeta, SegmentStatus, WatermarkRecord};
use r2o_common::store::{delete_object, Store};
use r2o_common::Error;
use tracing::{info, warn};

/// 1971-01-01T00:00:00Z and 2071-01-01T00:00:00Z, ms: Pinot's valid range
/// for a segment end time (`TimeUtils.timeValueInValidRange`).
const VALID_END_MS: std::ops::Range<i64> = 31_536_000_000..3_187_296_000_000;

/// Segments deleted per transaction (one compare and one delete each).
const SEGMENTS_PER_TXN: usize = 50;

/// What retention would do to one table's REALTIME segments now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionPlan {
    /// Past retention and wholly moved: to delete.
    pub delete: Vec<SegmentMeta>,
    /// Past retention with rows not moved (CONSUMING, late, or not yet
    /// behind the watermark): kept; their names.
    pub unmoved: Vec<String>,
}

/// Whether every row of `s` is in OFFLINE: an empty DONE segment, or a DONE
/// segment whose end time is before the watermark `watermark_ms` (ms,
/// exclusive) and that, if it was registered late, late-data runs have
/// moved into every committed window it overlapped (`late_settled`).
pub fn moved(s: &SegmentMeta, watermark_ms: Option<i64>, late_settled: &dyn Fn(&SegmentMeta) -> bool) -> bool {
    s.status == SegmentStatus::Done
        && (s.total_docs == 0 || ((!s.late || late_settled(s)) && watermark_ms.is_some_and(|w| s.end_time_ms < w)))
}

/// Splits the segments past `retention_ms` at `now_ms` (Pinot's rule:
/// `now - end > retention`, end times outside 1971..2071 never expire) into
/// those to delete (wholly [`moved`]) and those kept with rows not moved.
/// Discovered files (registered in place) are left alone. Pure.
pub fn plan_retention(
    segments: &[SegmentMeta],
    watermark_ms: Option<i64>,
    retention_ms: i64,
    now_ms: i64,
    late_settled: &dyn Fn(&SegmentMeta) -> bool,
) -> RetentionPlan {
    let mut plan = RetentionPlan::default();
    for s in segments {
        if r2o_common::store::is_external(&s.location) {
            // a discovered file is the owner's (r2o never deletes it); its
            // record stays so that discovery never registers it again
            continue;
        }
        let expired = VALID_END_MS.contains(&s.end_time_ms) && now_ms.saturating_sub(s.end_time_ms) > retention_ms;
        if !expired {
            continue;
        }
        if moved(s, watermark_ms, late_settled) {
            plan.delete.push(s.clone());
        } else {
            plan.unmoved.push(s.segment_name.clone());
        }
    }
    plan
}

/// What [`enforce`] did to one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionReport {
    /// Segments whose metadata and object were deleted.
    pub deleted: Vec<String>,
    /// Segments past retention kept because rows of them have not moved.
    pub unmoved: usize,
}

/// Applies the table's retention (none configured: nothing). Each batch of
/// deletions is one transaction that checks the watermark (a flush reset
/// in between stops it) and each segment's revision (a segment changed
/// since it was read is left for the next sweep), deletes the metadata,
/// updates the table's [`RetentionRecord`] and touches the segments marker;
/// then the objects are deleted.
///
/// # Errors
/// etcd errors; an object that cannot be deleted is logged and left to the
/// janitor (nothing names it any more).
pub async fn enforce(
    kv: &Kv,
    keys: &Keys,
    store: &Store,
    spec: &TableSpec,
    now_ms: i64,
) -> Result<RetentionReport, Error> {
    let Some(retention_ms) = spec.flow.retention_ms else { return Ok(RetentionReport::default()) };
    let raw = spec.name.as_str();
    let (wm, wm_rev) = match get_record::<WatermarkRecord>(kv, &keys.watermark(raw)).await? {
        Some((w, e)) => (Some(w.watermark_ms), e.mod_revision),
        None => (None, 0),
    };
    let entries = range_records::<SegmentMeta>(kv, &keys.segments(&spec.realtime_name())).await?;
    let segments: Vec<SegmentMeta> =
        entries.iter().map(|(s, e)| SegmentMeta { registered_revision: e.create_revision, ..s.clone() }).collect();
    let settled = late_settled(kv, keys, spec).await?;
    let plan = plan_retention(&segments, wm, retention_ms, now_ms, &*settled);
    let mut report = RetentionReport { unmoved: plan.unmoved.len(), ..Default::default() };
    let revision: std::collections::HashMap<&str, i64> =
        entries.iter().map(|(s, e)| (s.segment_name.as_str(), e.mod_revision)).collect();
    for batch in plan.delete.chunks(SEGMENTS_PER_TXN) {
        let (rec, rec_rev) = match get_record::<RetentionRecord>(kv, &keys.retention(raw)).await? {
            Some((r, e)) => (r, e.mod_revision),
            None => (RetentionRecord::default(), 0),
        };
        let doomed: Vec<(String, i64)> = batch
            .iter()
            .map(|s| {
                let rev = revision.get(s.segment_name.as_str()).copied().unwrap_or(0);
                (keys.segment(&s.table_name, &s.segment_name), rev)
            })
            .collect();
        let rec = RetentionRecord {
            deleted_segments: rec.deleted_segments + batch.len() as u64,
            deleted_rows: rec.deleted_rows + batch.iter().map(|s| s.total_docs).sum::<u64>(),
            deleted_bytes: rec.deleted_bytes + batch.iter().map(|s| s.size_bytes).sum::<u64>(),
            deleted_until_ms: batch.iter().map(|s| s.end_time_ms).fold(rec.deleted_until_ms, i64::max),
            updated_ms: now_ms,
        };
        let txn = crate::protocol::retention_delete(keys, raw, &doomed, wm_rev, &rec, rec_rev, now_ms);
        if !txn.apply(kv).await? {
            info!(table = %raw, "retention: the watermark or a segment changed; trying on the next sweep");
            break;
        }
        for s in batch {
            if let Err(e) = delete_object(store, &s.location).await {
                warn!(table = %raw, segment = %s.segment_name, location = %s.location, error = %e,
                    "retention: object not deleted; the janitor deletes it as an orphan");
            }
            info!(table = %raw, segment = %s.segment_name, end_time_ms = s.end_time_ms, rows = s.total_docs,
                "retention deleted a moved REALTIME segment");
            report.deleted.push(s.segment_name.clone());
        }
    }
    Ok(report)
}

/// Which late segments of the table late-data runs have fully moved (none
/// under `lateDataPolicy` ignore: their rows stay in REALTIME).
///
/// # Errors
/// etcd errors.
pub async fn late_settled(
    kv: &Kv,
    keys: &Keys,
    spec: &TableSpec,
) -> Result<Box<dyn Fn(&SegmentMeta) -> bool + Send + Sync>, Error> {
    if spec.flow.late_data_policy == r2o_common::config::LateDataPolicy::Ignore {
        return Ok(Box::new(|_| false));
    }
    let ledger = crate::registry::late_ledger(kv, keys, &spec.name).await.map_err(|e| match e {
        crate::error::ControllerError::Common(e) => e,
        other => Error::Meta(other.to_string()),
    })?;
    let flow = spec.flow.clone();
    Ok(Box::new(move |s| !crate::planner::owes_late_rows(&flow, s, &ledger)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 20_000 * DAY;

    fn seg(name: &str, start: i64, end: i64, status: SegmentStatus, late: bool) -> SegmentMeta {
        SegmentMeta {
            segment_name: name.into(),
            table_name: "t_REALTIME".into(),
            status,
            start_time_ms: start,
            end_time_ms: end,
            total_docs: 10,
            size_bytes: 100,
            schema_fingerprint: String::new(),
            location: format!("t/{name}"),
            partition: -1,
            late,
            ..Default::default()
        }
    }

    #[test]
    fn only_moved_segments_past_retention_are_deleted() {
        let done = SegmentStatus::Done;
        let segs = vec![
            seg("old_moved", NOW - 10 * DAY, NOW - 9 * DAY, done, false),
            seg("old_straddles_watermark", NOW - 9 * DAY, NOW - 5 * DAY, done, false),
            seg("old_late", NOW - 10 * DAY, NOW - 9 * DAY, done, true),
            seg("old_consuming", NOW - 10 * DAY, NOW - 9 * DAY, SegmentStatus::Consuming, false),
            seg("young_moved", NOW - 2 * DAY, NOW - DAY, done, false),
            seg("bad_end_time", 0, 1_000, done, false),
        ];
        let wm = Some(NOW - 6 * DAY);
        let plan = plan_retention(&segs, wm, 3 * DAY, NOW, &|_| false);
        let deleted: Vec<&str> = plan.delete.iter().map(|s| s.segment_name.as_str()).collect();
        assert_eq!(deleted, vec!["old_moved"]);
        assert_eq!(plan.unmoved, vec!["old_straddles_watermark", "old_late", "old_consuming"]);
        // no watermark yet: nothing has moved, nothing is deleted
        let plan = plan_retention(&segs, None, 3 * DAY, NOW, &|_| false);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.unmoved.len(), 4);
        // a late segment goes once late-data runs have moved it everywhere it owed rows
        let late = [seg("old_late", NOW - 10 * DAY, NOW - 9 * DAY, done, true)];
        assert_eq!(plan_retention(&late, wm, 3 * DAY, NOW, &|_| true).delete.len(), 1);
        assert_eq!(plan_retention(&late, wm, 3 * DAY, NOW, &|_| false).unmoved.len(), 1);
        // an empty DONE segment has nothing to move
        let mut empty = seg("empty", NOW - 10 * DAY, NOW - 9 * DAY, done, true);
        empty.total_docs = 0;
        assert_eq!(plan_retention(&[empty], None, DAY, NOW, &|_| false).delete.len(), 1);
    }

    proptest! {
        /// Whatever the segments, watermark and retention: a deleted segment
        /// is past retention, DONE, on time and wholly behind the watermark.
        #[test]
        fn never_deletes_rows_that_have_not_moved(
            segs in prop::collection::vec((0i64..100, 0i64..10, any::<bool>(), any::<bool>()), 0..40),
            wm_day in prop::option::of(0i64..120),
            retention_days in 1i64..50,
        ) {
            let segs: Vec<SegmentMeta> = segs
                .iter()
                .enumerate()
                .map(|(i, (start, len, done, late))| {
                    let status = if *done { SegmentStatus::Done } else { SegmentStatus::Consuming };
                    seg(&format!("s{i}"), NOW - 120 * DAY + start * DAY, NOW - 120 * DAY + (start + len) * DAY, status, *late)
                })
                .collect();
            let wm = wm_day.map(|d| NOW - 120 * DAY + d * DAY);
            let plan = plan_retention(&segs, wm, retention_days * DAY, NOW, &|_| false);
            for s in &plan.delete {
                prop_assert!(NOW - s.end_time_ms > retention_days * DAY);
                prop_assert!(s.status == SegmentStatus::Done && !s.late);
                prop_assert!(s.end_time_ms < wm.unwrap());
            }
            let expired = segs.iter().filter(|s| NOW - s.end_time_ms > retention_days * DAY).count();
            prop_assert_eq!(plan.delete.len() + plan.unmoved.len(), expired);
        }
    }
}
