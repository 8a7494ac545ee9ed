//! The segment registry: REALTIME segments as admins and ingest register
//! them (names checked before anything is uploaded, objects never
//! overwritten, every change moving the table's segment marker so that an
//! in-flight task notices it at commit), and the OFFLINE segments a table
//! holds, derived from its committed lineage and their manifests.

use backon::Retryable;
use futures::{StreamExt, TryStreamExt};
use r2o_common::config::LateDataPolicy;
use r2o_common::kv::{Compare, Kv, Op};
use r2o_common::meta::{
    decode, encode, get_record, now_ms, range_records, Keys, LineageRecord, SegmentMeta, SegmentStatus, WatermarkRecord,
};
use r2o_common::store::{canonical_path, object_size, Layout, Store};
use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

use crate::authority::load_table;
use crate::error::{ControllerError, Result};

/// Checks a segment name: 1 to 255 bytes, no `/`, no control characters,
/// not `.` or `..` (it becomes part of an object path and an etcd key).
pub fn validate_segment_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.contains('/')
        || name.chars().any(char::is_control)
        || name == "."
        || name == ".."
    {
        return Err(ControllerError::Invalid(format!(
            "segment name '{}': expected 1 to 255 bytes without '/' or control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// The write that moves a table's segment marker; part of every transaction
/// that changes its REALTIME segments.
pub(crate) fn touch_marker(keys: &Keys, raw: &str) -> Op {
    Op::put(keys.segments_marker(raw), now_ms().to_string().into_bytes())
}

/// Segments registered in one transaction by [`add_segments`]: 100
/// compares and 101 operations, within etcd's 128.
pub const SEGMENTS_PER_TXN: usize = 100;

/// Names among `names` that `raw` already has (one paged, keys-only read).
async fn taken(kv: &Kv, keys: &Keys, raw: &str, names: &[&str]) -> Result<Vec<String>> {
    let prefix = keys.segments(&format!("{raw}_REALTIME"));
    let existing: HashSet<String> =
        kv.range_keys(&prefix).await?.into_iter().map(|k| k[prefix.len()..].to_string()).collect();
    Ok(names.iter().filter(|n| existing.contains(**n)).map(|n| n.to_string()).collect())
}

fn already_exist(raw: &str, names: &[String]) -> ControllerError {
    let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
    let more = if names.len() > 10 { format!(" and {} more", names.len() - 10) } else { String::new() };
    ControllerError::AlreadyExists(format!("segment(s) {}{more} of {raw}_REALTIME", shown.join(", ")))
}

/// Checks that `segments` are free in `raw` (and not repeated) and returns
/// a fresh object path for each, in order. Writes nothing.
pub async fn prepare_uploads(
    kv: &Kv,
    keys: &Keys,
    layout: &Layout,
    raw: &str,
    segments: &[String],
) -> Result<Vec<String>> {
    load_table(kv, keys, raw).await?.ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
    let mut seen = HashSet::new();
    for s in segments {
        validate_segment_name(s)?;
        if !seen.insert(s.as_str()) {
            return Err(ControllerError::Invalid(format!("segment name '{s}' is given twice")));
        }
    }
    let names: Vec<&str> = segments.iter().map(String::as_str).collect();
    let taken = taken(kv, keys, raw, &names).await?;
    if !taken.is_empty() {
        return Err(already_exist(raw, &taken));
    }
    Ok(segments.iter().map(|s| layout.realtime_upload(raw, s)).collect())
}

/// Checks that `segment` is free in `raw` and returns a fresh object path
/// to upload it to. Writes nothing.
pub async fn prepare_upload(kv: &Kv, keys: &Keys, layout: &Layout, raw: &str, segment: &str) -> Result<String> {
    Ok(prepare_uploads(kv, keys, layout, raw, &[segment.to_string()]).await?.remove(0))
}

/// Checks one segment of `raw` against the table and the layout (pure).
fn check_segment(spec: &r2o_common::config::TableSpec, layout: &Layout, raw: &str, meta: &SegmentMeta) -> Result<()> {
    validate_segment_name(&meta.segment_name)?;
    if meta.table_name != format!("{raw}_REALTIME") {
        return Err(ControllerError::Invalid(format!(
            "segment.table '{}' of segment {}: expected {raw}_REALTIME (one table per call)",
            meta.table_name, meta.segment_name
        )));
    }
    if meta.schema_fingerprint != spec.schema.fingerprint() {
        return Err(ControllerError::Invalid(format!(
            "segment.schemaFingerprint '{}' of segment {}: expected the table schema's '{}'",
            meta.schema_fingerprint,
            meta.segment_name,
            spec.schema.fingerprint()
        )));
    }
    if meta.start_time_ms > meta.end_time_ms {
        return Err(ControllerError::Invalid(format!(
            "segment.startTimeMs {} of segment {} is after endTimeMs {}",
            meta.start_time_ms, meta.segment_name, meta.end_time_ms
        )));
    }
    let own = canonical_path(&layout.realtime_prefix(raw));
    if !canonical_path(&meta.location).starts_with(&own) {
        return Err(ControllerError::Invalid(format!(
            "segment.location '{}': expected an object under {own} (ask PrepareSegmentUpload for one)",
            meta.location
        )));
    }
    Ok(())
}

/// Registers REALTIME segments of one table whose files are in the store,
/// in transactions of [`SEGMENTS_PER_TXN`]. Every segment is checked, and
/// every name and object verified, before anything is written. Returns a
/// warning per late segment (one starting before the watermark).
///
/// # Errors
/// [`ControllerError::Invalid`] naming the field and segment for a bad
/// table, schema fingerprint, time range, location outside the table's
/// REALTIME prefix or a missing / differently sized object;
/// [`ControllerError::AlreadyExists`] naming registered names (nothing is
/// written). A batch that races another registration of the same name
/// fails whole; batches before it stay registered.
pub async fn add_segments(
    kv: &Kv,
    keys: &Keys,
    store: &Store,
    layout: &Layout,
    metas: Vec<SegmentMeta>,
) -> Result<Vec<String>> {
    let Some(first) = metas.first() else { return Ok(vec![]) };
    let raw = first.table_name.strip_suffix("_REALTIME").ok_or_else(|| {
        ControllerError::Invalid(format!("segment.table '{}': expected <table>_REALTIME", first.table_name))
    })?;
    let spec = load_table(kv, keys, raw).await?.ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
    let mut seen = HashSet::new();
    for m in &metas {
        check_segment(&spec, layout, raw, m)?;
        if !seen.insert(m.segment_name.as_str()) {
            return Err(ControllerError::Invalid(format!("segment name '{}' is given twice", m.segment_name)));
        }
    }
    let names: Vec<&str> = metas.iter().map(|m| m.segment_name.as_str()).collect();
    let names_taken = taken(kv, keys, raw, &names).await?;
    if !names_taken.is_empty() {
        return Err(already_exist(raw, &names_taken));
    }
    // every object is there, at its size (32 heads at once)
    let locations: Vec<String> = metas.iter().map(|m| m.location.clone()).collect();
    let sizes: Vec<Option<u64>> = futures::stream::iter(locations)
        .map(|location: String| async move {
            let head = || object_size(store, &location);
            head.retry(r2o_common::retry::store_backoff()).when(r2o_common::Error::is_retryable).await
        })
        .buffered(32)
        .try_collect()
        .await?;
    for (m, size) in metas.iter().zip(sizes) {
        match size {
            Some(size) if size == m.size_bytes => {}
            Some(size) => {
                return Err(ControllerError::Invalid(format!(
                    "segment.sizeBytes {} of segment {}: the object at {} is {size} bytes",
                    m.size_bytes, m.segment_name, m.location
                )))
            }
            None => {
                return Err(ControllerError::Invalid(format!(
                    "segment.location '{}' of segment {}: no object there; upload the file first",
                    m.location, m.segment_name
                )))
            }
        }
    }
    write_segments(kv, keys, &spec, &metas).await
}

/// Writes checked REALTIME segments of `spec`'s table (names free, files in
/// place) in transactions of [`SEGMENTS_PER_TXN`], each against the
/// watermark it was read with: a segment starting before it is registered
/// `late`. Returns a warning per late segment.
///
/// # Errors
/// [`ControllerError::AlreadyExists`] when a name was taken meanwhile (that
/// batch writes nothing; batches before it stay); a watermark that kept
/// moving; etcd errors.
pub(crate) async fn write_segments(
    kv: &Kv,
    keys: &Keys,
    spec: &r2o_common::config::TableSpec,
    metas: &[SegmentMeta],
) -> Result<Vec<String>> {
    let Some(first) = metas.first() else { return Ok(vec![]) };
    let raw = spec.name.as_str();
    // each batch is written against the watermark it was checked with: a
    // segment starting before it is registered `late` (its rows there never move)
    let mut late: Vec<(String, i64, i64)> = Vec::new();
    for batch in metas.chunks(SEGMENTS_PER_TXN) {
        let mut tries = 0;
        loop {
            let (wm, wm_rev) = match get_record::<WatermarkRecord>(kv, &keys.watermark(raw)).await? {
                Some((w, e)) => (Some(w.watermark_ms), e.mod_revision),
                None => (None, 0),
            };
            let mut compares = Vec::with_capacity(batch.len() + 1);
            let mut ops = Vec::with_capacity(batch.len() + 1);
            let mut batch_late = Vec::new();
            for m in batch {
                let key = keys.segment(&m.table_name, &m.segment_name);
                compares.push(Compare::CreateRevision(key.clone(), 0));
                let mut m = m.clone();
                m.late = wm.is_some_and(|w| m.total_docs > 0 && m.start_time_ms < w);
                m.late_before_ms = if m.late { wm } else { None };
                if m.late {
                    batch_late.push((m.segment_name.clone(), m.start_time_ms, wm.unwrap_or_default()));
                }
                ops.push(Op::put(key, encode(&m)));
            }
            compares.push(Compare::ModRevision(keys.watermark(raw), wm_rev));
            ops.push(touch_marker(keys, raw));
            if kv.txn(compares, ops).await? {
                late.extend(batch_late);
                break;
            }
            let names: Vec<&str> = batch.iter().map(|m| m.segment_name.as_str()).collect();
            let names_taken = taken(kv, keys, raw, &names).await?;
            if !names_taken.is_empty() {
                return Err(already_exist(raw, &names_taken));
            }
            tries += 1;
            if tries >= 20 {
                return Err(ControllerError::Conflict(format!(
                    "the watermark of {raw} kept moving while {} segment(s) were registered; try again",
                    batch.len()
                )));
            }
            // the watermark moved under us: check again
        }
    }
    if metas.len() == 1 {
        info!(table = %raw, segment = %first.segment_name, status = first.status.name(), rows = first.total_docs, "segment added");
    } else {
        info!(table = %raw, segments = metas.len(), rows = metas.iter().map(|m| m.total_docs).sum::<u64>(), "segments added");
    }
    let mut warnings = Vec::new();
    let policy = spec.flow.late_data_policy;
    for (name, start_ms, w) in late {
        warn!(table = %raw, segment = %name, start_time_ms = start_ms, watermark_ms = w, policy = policy.name(), "late segment");
        let fate = match policy {
            LateDataPolicy::Ignore => "its rows before the watermark will not move to OFFLINE (lateDataPolicy ignore; \
                 r2o reset --mode flush rebuilds the table)"
                .to_string(),
            p => format!("late-data runs move its rows there into the committed windows (lateDataPolicy {})", p.name()),
        };
        warnings.push(format!(
            "segment {name} is late: it starts at {}, before the watermark {}; {fate}",
            r2o_common::window::format_utc(start_ms),
            r2o_common::window::format_utc(w)
        ));
    }
    Ok(warnings)
}

/// Registers one REALTIME segment (see [`add_segments`]); returns its
/// late-segment warning, if any.
pub async fn add_segment(kv: &Kv, keys: &Keys, store: &Store, layout: &Layout, meta: SegmentMeta) -> Result<String> {
    Ok(add_segments(kv, keys, store, layout, vec![meta]).await?.into_iter().next().unwrap_or_default())
}

/// Clears [`SegmentMeta::late`] on every REALTIME segment of `raw` (after a
/// flush reset, when every row moves again), in transactions of
/// [`SEGMENTS_PER_TXN`]; a segment changed in between keeps its mark.
pub async fn clear_late(kv: &Kv, keys: &Keys, raw: &str) -> Result<()> {
    let late: Vec<_> = range_records::<SegmentMeta>(kv, &keys.segments(&format!("{raw}_REALTIME")))
        .await?
        .into_iter()
        .filter(|(s, _)| s.late)
        .collect();
    for batch in late.chunks(SEGMENTS_PER_TXN) {
        let mut compares = Vec::with_capacity(batch.len());
        let mut ops = Vec::with_capacity(batch.len() + 1);
        for (s, entry) in batch {
            let key = keys.segment(&s.table_name, &s.segment_name);
            compares.push(Compare::ModRevision(key.clone(), entry.mod_revision));
            ops.push(Op::put(key, encode(&SegmentMeta { late: false, late_before_ms: None, ..s.clone() })));
        }
        ops.push(touch_marker(keys, raw));
        kv.txn(compares, ops).await?;
    }
    Ok(())
}

/// Marks a CONSUMING segment DONE (idempotent), and, with
/// `end_of_stream`, the last of its stream partition.
pub async fn seal_segment(kv: &Kv, keys: &Keys, table: &str, segment: &str, end_of_stream: bool) -> Result<()> {
    let raw = table.trim_end_matches("_REALTIME");
    let typed = format!("{raw}_REALTIME");
    let key = keys.segment(&typed, segment);
    let Some((mut meta, entry)) = get_record::<SegmentMeta>(kv, &key).await? else {
        return Err(ControllerError::NotFound(format!("segment '{segment}' of {typed}")));
    };
    if meta.status == SegmentStatus::Done && (meta.end_of_stream || !end_of_stream) {
        return Ok(());
    }
    meta.status = SegmentStatus::Done;
    meta.end_of_stream |= end_of_stream;
    let ok = kv
        .txn(
            vec![Compare::ModRevision(key.clone(), entry.mod_revision)],
            vec![Op::put(key, encode(&meta)), touch_marker(keys, raw)],
        )
        .await?;
    if !ok {
        return Err(ControllerError::Conflict(format!("segment '{segment}' changed while sealing; try again")));
    }
    info!(table = %raw, segment, end_of_stream, "segment sealed");
    Ok(())
}

/// Late segments moved into each committed window by the table's late-data
/// runs (from its lineage).
pub async fn late_moved(kv: &Kv, keys: &Keys, raw: &str) -> Result<crate::planner::MovedLate> {
    let mut moved = crate::planner::MovedLate::new();
    for l in lineage(kv, keys, raw).await? {
        if let Some(run) = l.late {
            moved.entry(l.window_start_ms).or_default().extend(run.segments);
        }
    }
    Ok(moved)
}

/// The load status of each of `realtime` (a table's REALTIME segments), in
/// order, with why ([`r2o_common::meta::load_status`]); `watermark_ms` is
/// the table's (`None`: nothing committed). Reads the lineage only when a
/// segment is late.
pub async fn load_statuses(
    kv: &Kv,
    keys: &Keys,
    spec: &r2o_common::config::TableSpec,
    realtime: &[SegmentMeta],
    watermark_ms: Option<i64>,
) -> Result<Vec<(r2o_common::meta::LoadStatus, String)>> {
    let ignored = spec.flow.late_data_policy == LateDataPolicy::Ignore;
    let moved = if !ignored && realtime.iter().any(|s| s.late) {
        late_moved(kv, keys, &spec.name).await?
    } else {
        crate::planner::MovedLate::new()
    };
    Ok(realtime
        .iter()
        .map(|s| {
            let owes = !ignored && crate::planner::owes_late_rows(&spec.flow, s, &moved);
            r2o_common::meta::load_status(s, watermark_ms, owes, ignored)
        })
        .collect())
}

/// The table's committed lineage, in window order.
pub async fn lineage(kv: &Kv, keys: &Keys, raw: &str) -> Result<Vec<LineageRecord>> {
    Ok(range_records::<LineageRecord>(kv, &keys.lineages(raw)).await?.into_iter().map(|(l, _)| l).collect())
}

/// The window a committed manifest entry belongs to: its own record of it,
/// else (entries written before it was recorded) the lineage's window that
/// holds its end time, else the lineage's first.
fn entry_window(entry: &SegmentMeta, lineage: &LineageRecord) -> i64 {
    entry.window_start_ms.unwrap_or_else(|| {
        lineage
            .windows
            .iter()
            .find(|w| w.start_ms <= entry.end_time_ms && entry.end_time_ms < w.end_ms)
            .map_or(lineage.window_start_ms, |w| w.start_ms)
    })
}

/// The OFFLINE segments a table holds: the manifests its committed lineage
/// names (manifests of attempts that never committed are not segments),
/// where, per window, the latest `rematerialize` late-data run replaces
/// every segment committed for that window before it (`append` runs add
/// theirs). Replaced segments stay in their lineage (their files are kept).
pub async fn offline_segments(kv: &Kv, keys: &Keys, raw: &str) -> Result<Vec<SegmentMeta>> {
    let lineages = lineage(kv, keys, raw).await?;
    let mut by_attempt: HashMap<(String, u32), &LineageRecord> = HashMap::new();
    // window start -> commit time of its latest rematerialize run
    let mut rematerialized: HashMap<i64, i64> = HashMap::new();
    for l in &lineages {
        by_attempt.insert((l.task_id.clone(), l.attempt), l);
        if l.late.as_ref().is_some_and(|r| r.policy == "rematerialize") {
            let t = rematerialized.entry(l.window_start_ms).or_insert(l.committed_ms);
            *t = (*t).max(l.committed_ms);
        }
    }
    let prefix = keys.manifests(raw);
    let mut out = Vec::new();
    for entry in kv.range(&prefix).await? {
        let mut parts = entry.key[prefix.len()..].split('/');
        let (Some(task), Some(attempt)) = (parts.next(), parts.next()) else { continue };
        let Some(attempt) = attempt.strip_prefix('a').and_then(|a| a.parse::<u32>().ok()) else { continue };
        let Some(l) = by_attempt.get(&(task.to_string(), attempt)) else { continue };
        for s in decode::<Vec<SegmentMeta>>(&entry)? {
            let replaced = rematerialized.get(&entry_window(&s, l)).is_some_and(|latest| l.committed_ms < *latest);
            if !replaced {
                out.push(s);
            }
        }
    }
    Ok(out)
}
