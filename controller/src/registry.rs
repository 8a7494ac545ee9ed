//! The segment registry: REALTIME segments as admins and ingest register
//! them (names checked before anything is uploaded, objects never
//! overwritten, every change moving the table's segment marker so that an
//! in-flight task notices it at commit), and the OFFLINE segments a table
//! holds, derived from its committed lineage and their manifests.

use backon::Retryable;
use futures::{StreamExt, TryStreamExt};
use r2o_common::config::LateDataPolicy;
use r2o_common::kv::Kv;
use r2o_common::meta::{
    get_record, now_ms, range_records, Keys, LineageRecord, SegmentMeta, SegmentStatus, WatermarkRecord,
};
use r2o_common::store::{canonical_path, object_size, Layout, Store};
use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

use crate::error::{ControllerError, Result};
use crate::tables::load_table;

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

/// Segments registered in one transaction by [`add_segments`]: 100
/// compares and 101 operations, within etcd's 128.
pub const SEGMENTS_PER_TXN: usize = 100;

/// Names among `names` that `raw` already has (one paged, keys-only read).
///
/// Reads only the keys between the smallest and the largest of `names` (a
/// batch of consecutive segments is one short range), not the whole table:
/// issue 21 measured registration falling from 6.5k to 2.2k segments/s as
/// the table grew, each batch reading every registered name.
async fn taken(kv: &Kv, keys: &Keys, raw: &str, names: &[&str]) -> Result<Vec<String>> {
    let prefix = keys.segments(&format!("{raw}_REALTIME"));
    let (Some(lo), Some(hi)) = (names.iter().min(), names.iter().max()) else { return Ok(vec![]) };
    let (first, last) = (format!("{prefix}{lo}"), format!("{prefix}{hi}"));
    let existing: HashSet<String> = r2o_common::meta::entries_between(kv, &prefix, &first, &last)
        .await?
        .into_iter()
        .map(|e| e.key[prefix.len()..].to_string())
        .collect();
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
    if !is_fresh_upload(&layout.realtime_prefix(raw), &meta.segment_name, &meta.location) {
        return Err(ControllerError::Invalid(format!(
            "segment.location '{}' of segment {}: expected the fresh path PrepareSegmentUpload gave for this \
             name ({}{}.<16 hex>.parquet): a registration may not name another segment's object",
            meta.location,
            meta.segment_name,
            layout.realtime_prefix(raw),
            meta.segment_name
        )));
    }
    Ok(())
}

/// Whether `location` is an upload path [`Layout::realtime_upload`] makes
/// for `segment` under `prefix`: `<prefix><segment>.<16 hex>.parquet`. As
/// segment names are unique in a table, two segments never share an
/// object (a registration naming another segment's file would count its
/// rows twice). Pure.
pub fn is_fresh_upload(prefix: &str, segment: &str, location: &str) -> bool {
    let Some(rest) = location.strip_prefix(prefix).and_then(|r| r.strip_prefix(segment)) else { return false };
    let Some(hex) = rest.strip_prefix('.').and_then(|r| r.strip_suffix(".parquet")) else { return false };
    hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks what a registration says about its file against what the file
/// says (its footer, or its time column when the footer's statistics are
/// not exact): the row count, and the time range (a CONSUMING segment with
/// no timed row registers `[0, 0]`). Pure.
///
/// # Errors
/// [`ControllerError::Invalid`] naming the field, the claimed value and the file's.
pub fn check_claims(meta: &SegmentMeta, facts: &r2o_common::columnar::SegmentFacts) -> Result<()> {
    if meta.total_docs != facts.rows {
        return Err(ControllerError::Invalid(format!(
            "segment.numRows {} of segment {}: the file holds {} rows",
            meta.total_docs, meta.segment_name, facts.rows
        )));
    }
    let claimed = (meta.start_time_ms, meta.end_time_ms);
    let ok = match facts.time_range_ms {
        Some(range) => claimed == range,
        None => claimed == (0, 0) && meta.status == SegmentStatus::Consuming,
    };
    if !ok {
        let file = match facts.time_range_ms {
            Some((a, b)) => format!("[{a}, {b}]"),
            None => "no timed row (registered CONSUMING with [0, 0])".into(),
        };
        return Err(ControllerError::Invalid(format!(
            "segment.startTimeMs/endTimeMs [{}, {}] of segment {}: the file's time column spans {file}",
            claimed.0, claimed.1, meta.segment_name
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
    footers: &crate::validate::FooterCache,
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
    // trust nothing the client says about the data: rows and time range
    // come from each file (its footer; its time column when the footer's
    // statistics are not exact), 32 at a time
    let jobs: Vec<_> = metas
        .iter()
        .map(|m| {
            let (store, schema) = (store.clone(), spec.schema.clone());
            let (time_column, format) = (spec.flow.time_column.clone(), spec.time_format());
            let (name, location, size) = (m.segment_name.clone(), m.location.clone(), m.size_bytes);
            async move {
                let read = || {
                    r2o_common::columnar::segment_facts_in_store(
                        &name,
                        &store,
                        &location,
                        size,
                        &schema,
                        &time_column,
                        format,
                    )
                };
                read.retry(r2o_common::retry::store_backoff()).when(r2o_common::Error::is_retryable).await
            }
        })
        .collect();
    let facts: Vec<_> = futures::stream::iter(jobs).buffered(32).try_collect().await?;
    let mut metas = metas;
    for (m, (f, _)) in metas.iter_mut().zip(&facts) {
        check_claims(m, f)?;
        m.null_time_rows = f.null_time_rows;
    }
    let warnings = write_segments(kv, keys, &spec, &metas).await?;
    // validation of the windows that read them needs these footers again
    for (m, (_, footer)) in metas.iter().zip(&facts) {
        footers.offer(&m.location, footer);
    }
    Ok(warnings)
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
            let now = now_ms();
            let registered: Vec<SegmentMeta> =
                batch.iter().map(|m| crate::protocol::as_registered(m.clone(), wm, now)).collect();
            let batch_late: Vec<(String, i64, i64)> = registered
                .iter()
                .filter(|m| m.late)
                .map(|m| (m.segment_name.clone(), m.start_time_ms, wm.unwrap_or_default()))
                .collect();
            let txn = crate::protocol::register_segments(keys, raw, &registered, wm_rev, now);
            if txn.apply(kv).await? {
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
pub async fn add_segment(
    kv: &Kv,
    keys: &Keys,
    store: &Store,
    layout: &Layout,
    footers: &crate::validate::FooterCache,
    meta: SegmentMeta,
) -> Result<String> {
    Ok(add_segments(kv, keys, store, layout, footers, vec![meta]).await?.into_iter().next().unwrap_or_default())
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
        let cleared: Vec<(SegmentMeta, i64)> = batch
            .iter()
            .map(|(s, e)| (SegmentMeta { late: false, late_before_ms: None, ..s.clone() }, e.mod_revision))
            .collect();
        crate::protocol::rewrite_segments(keys, raw, &cleared, vec![], now_ms()).apply(kv).await?;
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
    let now = now_ms();
    if meta.status != SegmentStatus::Done {
        meta.done_ms = Some(now);
    }
    meta.status = SegmentStatus::Done;
    meta.end_of_stream |= end_of_stream;
    if !crate::protocol::rewrite_segments(keys, raw, &[(meta, entry.mod_revision)], vec![], now).apply(kv).await? {
        return Err(ControllerError::Conflict(format!("segment '{segment}' changed while sealing; try again")));
    }
    info!(table = %raw, segment, end_of_stream, "segment sealed");
    Ok(())
}

/// What the table's lineage and watermark say about late data (see
/// [`crate::planner::LateLedger`]): the flow's commits with their lineage
/// keys' create revisions, the late segments moved into each window by
/// late-data runs, and the watermark now.
pub async fn late_ledger(kv: &Kv, keys: &Keys, raw: &str) -> Result<crate::planner::LateLedger> {
    let mut ledger = crate::planner::LateLedger {
        watermark_ms: get_record::<WatermarkRecord>(kv, &keys.watermark(raw)).await?.map(|(w, _)| w.watermark_ms),
        ..Default::default()
    };
    for (l, entry) in range_records::<LineageRecord>(kv, &keys.lineages(raw)).await? {
        match l.late {
            Some(run) => ledger.moved.entry(l.window_start_ms).or_default().extend(run.segments),
            None => {
                ledger.committed.push((l.range_start_ms(), l.window_end_ms, entry.create_revision));
            }
        }
    }
    Ok(ledger)
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
    let ledger = if !ignored && realtime.iter().any(|s| s.late) {
        late_ledger(kv, keys, &spec.name).await?
    } else {
        crate::planner::LateLedger::default()
    };
    Ok(realtime
        .iter()
        .map(|s| {
            let owes = !ignored && crate::planner::owes_late_rows(&spec.flow, s, &ledger);
            r2o_common::meta::load_status(s, watermark_ms, owes, ignored)
        })
        .collect())
}

/// The table's committed lineage, in window order.
pub async fn lineage(kv: &Kv, keys: &Keys, raw: &str) -> Result<Vec<LineageRecord>> {
    Ok(range_records::<LineageRecord>(kv, &keys.lineages(raw)).await?.into_iter().map(|(l, _)| l).collect())
}

/// What the visible rule ([`visible_by`]) reads of a lineage record: which
/// attempt it commits, its window, whether it is a `rematerialize` late run,
/// and its windows' bounds (for entries that do not record theirs). A
/// fraction of the record (`windows` holds every window's statistics).
#[derive(Debug, Clone, PartialEq)]
pub struct LineageFacts {
    /// The committed task.
    pub task_id: String,
    /// Its committed attempt.
    pub attempt: u32,
    /// Start of its first window, UTC epoch ms.
    pub window_start_ms: i64,
    /// A late-data run with policy `rematerialize`: it replaces its window.
    pub rematerialize: bool,
    /// Each window with data, `[start, end)` UTC epoch ms, in order.
    pub windows: Box<[(i64, i64)]>,
}

impl LineageFacts {
    /// The facts of `l`.
    pub fn of(l: &LineageRecord) -> Self {
        LineageFacts {
            task_id: l.task_id.clone(),
            attempt: l.attempt,
            window_start_ms: l.window_start_ms,
            rematerialize: l.late.as_ref().is_some_and(|r| r.policy == "rematerialize"),
            windows: l.windows.iter().map(|w| (w.start_ms, w.end_ms)).collect(),
        }
    }
}

/// The window a committed manifest entry belongs to: its own record of it
/// (`recorded`), else (entries written before it was recorded) the lineage's
/// window that holds its end time (`end_time_ms`), else the lineage's first.
fn entry_window(recorded: Option<i64>, end_time_ms: i64, lineage: &LineageFacts) -> i64 {
    recorded.unwrap_or_else(|| {
        lineage
            .windows
            .iter()
            .find(|(start, end)| *start <= end_time_ms && end_time_ms < *end)
            .map_or(lineage.window_start_ms, |(start, _)| *start)
    })
}

/// The OFFLINE segments a table holds: the manifests its committed lineage
/// names (manifests of attempts that never committed are not segments),
/// where, per window, the latest `rematerialize` late-data run replaces
/// every segment committed for that window before it (`append` runs add
/// theirs); see [`visible_segments`]. Replaced segments stay in their
/// lineage (their files are kept).
///
/// # Errors
/// etcd errors; a record that does not decode.
pub async fn offline_segments(kv: &Kv, keys: &Keys, raw: &str) -> Result<Vec<SegmentMeta>> {
    let lineages: Vec<(LineageRecord, i64)> = range_records::<LineageRecord>(kv, &keys.lineages(raw))
        .await?
        .into_iter()
        .map(|(l, e)| (l, e.create_revision))
        .collect();
    let prefix = keys.manifests(raw);
    let mut manifests = Vec::new();
    for entry in kv.range(&prefix).await? {
        let Some((task, attempt)) = manifest_attempt(&entry.key[prefix.len()..]) else { continue };
        manifests.push((task.to_string(), attempt, r2o_common::meta::chunks::decode_chunk::<SegmentMeta>(&entry)?));
    }
    Ok(visible_segments(&lineages, manifests))
}

/// The task and attempt of a manifest chunk key, given its part after
/// `manifests/<raw>/` (`<task>/a<attempt>/<chunk>`). Pure.
pub fn manifest_attempt(rest: &str) -> Option<(&str, u32)> {
    let mut parts = rest.split('/');
    let (task, attempt) = (parts.next()?, parts.next()?);
    Some((task, attempt.strip_prefix('a')?.parse::<u32>().ok()?))
}

/// The OFFLINE segments readers see, from the table's lineage (each with the
/// etcd create revision of its key) and its manifest chunks (task, attempt,
/// entries): [`visible_by`] over the records. Pure.
pub fn visible_segments(
    lineages: &[(LineageRecord, i64)],
    manifests: Vec<(String, u32, Vec<SegmentMeta>)>,
) -> Vec<SegmentMeta> {
    let facts: Vec<(LineageFacts, i64)> = lineages.iter().map(|(l, rev)| (LineageFacts::of(l), *rev)).collect();
    let mut keep: Vec<Vec<bool>> = manifests.iter().map(|(_, _, e)| vec![false; e.len()]).collect();
    let chunks = manifests.iter().map(|(task, attempt, entries)| (task.as_str(), *attempt, entries.as_slice()));
    for (chunk, i) in visible_by(facts.iter().map(|(l, rev)| (l, *rev)), chunks, |s| (s.window_start_ms, s.end_time_ms))
    {
        keep[chunk][i] = true;
    }
    let mut out = Vec::new();
    for ((_, _, entries), keep) in manifests.into_iter().zip(keep) {
        out.extend(entries.into_iter().zip(keep).filter_map(|(s, k)| k.then_some(s)));
    }
    out
}

/// The committed OFFLINE entries readers see, as (chunk, entry) positions in
/// chunk order then entry order: the entries of manifest chunks (task,
/// attempt, entries) that a lineage (its [`LineageFacts`] and the etcd
/// create revision of its key) commits, less those of a window that a later
/// `rematerialize` run replaced. "Later" is by etcd revision, never by the
/// committing leader's clock (finding 4 of issue 19: after a failover to a
/// controller whose clock is behind, a run ordered by `committed_ms` failed
/// to replace the original, or an older run won). `window` gives an entry's
/// recorded window start and its end time, UTC epoch ms. Pure.
pub fn visible_by<'a, E: 'a>(
    lineages: impl IntoIterator<Item = (&'a LineageFacts, i64)>,
    manifests: impl IntoIterator<Item = (&'a str, u32, &'a [E])>,
    window: impl Fn(&E) -> (Option<i64>, i64),
) -> Vec<(usize, usize)> {
    let mut by_attempt: HashMap<(&str, u32), (&LineageFacts, i64)> = HashMap::new();
    // window start -> revision of its latest rematerialize run
    let mut rematerialized: HashMap<i64, i64> = HashMap::new();
    for (l, rev) in lineages {
        by_attempt.insert((l.task_id.as_str(), l.attempt), (l, rev));
        if l.rematerialize {
            let t = rematerialized.entry(l.window_start_ms).or_insert(rev);
            *t = (*t).max(rev);
        }
    }
    let mut out = Vec::new();
    for (c, (task, attempt, entries)) in manifests.into_iter().enumerate() {
        let Some((l, rev)) = by_attempt.get(&(task, attempt)) else { continue };
        for (i, s) in entries.iter().enumerate() {
            let (recorded, end) = window(s);
            let replaced = rematerialized.get(&entry_window(recorded, end, l)).is_some_and(|latest| rev < latest);
            if !replaced {
                out.push((c, i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::meta::LateRun;

    #[tokio::test]
    async fn taken_names_are_found_by_a_range_over_the_batch_alone() {
        let kv: Kv = std::sync::Arc::new(r2o_common::kv::MemKv::new());
        let keys = Keys::new("/r");
        // more than a page of registered names, and a neighbouring table
        for i in 0..600 {
            kv.put(&keys.segment("t_REALTIME", &format!("s{i:04}")), b"{}".to_vec(), None).await.unwrap();
        }
        kv.put(&keys.segment("t2_REALTIME", "s0700"), b"{}".to_vec(), None).await.unwrap();
        let t = |names: &[&str]| {
            let (kv, keys) = (kv.clone(), keys.clone());
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            async move {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                taken(&kv, &keys, "t", &refs).await.unwrap()
            }
        };
        assert_eq!(t(&["s0600", "s0601"]).await, Vec::<String>::new(), "free names after the last");
        assert_eq!(t(&["s0000"]).await, vec!["s0000"], "the smallest name itself");
        assert_eq!(t(&["s0599", "s0700"]).await, vec!["s0599"], "another table's name is not this one's");
        // names spread over more than one page: every taken one, in the given order
        assert_eq!(t(&["s0550", "zz", "s0001", "s0300"]).await, vec!["s0550", "s0001", "s0300"]);
        assert_eq!(t(&[]).await, Vec::<String>::new());
    }

    fn lineage(task: &str, window: i64, committed_ms: i64, late: Option<&str>) -> LineageRecord {
        LineageRecord {
            window_start_ms: window,
            window_end_ms: window + 10,
            task_id: task.into(),
            attempt: 1,
            committed_ms,
            late: late.map(|p| LateRun { policy: p.into(), segments: vec!["l".into()] }),
            ..Default::default()
        }
    }

    fn entry(name: &str, window: i64) -> SegmentMeta {
        SegmentMeta { segment_name: name.into(), window_start_ms: Some(window), ..Default::default() }
    }

    fn names(v: Vec<SegmentMeta>) -> Vec<String> {
        let mut n: Vec<String> = v.into_iter().map(|s| s.segment_name).collect();
        n.sort();
        n
    }

    #[test]
    fn the_latest_rematerialize_run_by_revision_wins_whatever_the_clocks_said() {
        let manifests = || {
            vec![
                ("flow".to_string(), 1, vec![entry("a", 0), entry("b", 10)]),
                ("late1".to_string(), 1, vec![entry("a1", 0)]),
                ("late2".to_string(), 1, vec![entry("a2", 0)]),
            ]
        };
        // the second run was committed by a leader whose clock was an hour behind
        let lineages = vec![
            (lineage("flow", 0, 5_000_000, None), 10),
            (lineage("late1", 0, 6_000_000, Some("rematerialize")), 20),
            (lineage("late2", 0, 2_000_000, Some("rematerialize")), 30),
        ];
        assert_eq!(names(visible_segments(&lineages, manifests())), vec!["a2", "b"]);
        // a run that replaced the original though its clock said it was older
        let lineages =
            vec![(lineage("flow", 0, 5_000_000, None), 10), (lineage("late1", 0, 1_000, Some("rematerialize")), 20)];
        assert_eq!(names(visible_segments(&lineages, manifests())), vec!["a1", "b"]);
        // append adds; an uncommitted manifest is no segment
        let lineages = vec![(lineage("flow", 0, 5, None), 10), (lineage("late1", 0, 1, Some("append")), 20)];
        assert_eq!(names(visible_segments(&lineages, manifests())), vec!["a", "a1", "b"]);
    }

    #[test]
    fn a_registration_names_its_own_fresh_upload() {
        let prefix = "ns/realtime/t_REALTIME/";
        assert!(is_fresh_upload(prefix, "s1", "ns/realtime/t_REALTIME/s1.0123456789abcdef.parquet"));
        for bad in [
            "ns/realtime/t_REALTIME/s2.0123456789abcdef.parquet",
            "ns/realtime/t_REALTIME/s1.0123456789abcdeX.parquet",
            "ns/realtime/t_REALTIME/s1.0123.parquet",
            "ns/realtime/t_REALTIME/s1.0123456789abcdef.csv",
            "ns/realtime/u_REALTIME/s1.0123456789abcdef.parquet",
            "ns/realtime/t_REALTIME/s1",
        ] {
            assert!(!is_fresh_upload(prefix, "s1", bad), "{bad}");
        }
    }

    #[test]
    fn claims_must_match_the_file() {
        use r2o_common::columnar::SegmentFacts;
        let meta = |rows: u64, start: i64, end: i64, status: SegmentStatus| SegmentMeta {
            segment_name: "s".into(),
            total_docs: rows,
            start_time_ms: start,
            end_time_ms: end,
            status,
            ..Default::default()
        };
        let facts = SegmentFacts { rows: 7, time_range_ms: Some((10, 20)), null_time_rows: 0 };
        assert!(check_claims(&meta(7, 10, 20, SegmentStatus::Done), &facts).is_ok());
        let e = check_claims(&meta(70, 10, 20, SegmentStatus::Done), &facts).unwrap_err().to_string();
        assert!(e.contains("segment.numRows 70") && e.contains("holds 7 rows"), "{e}");
        let e = check_claims(&meta(7, 10, 99, SegmentStatus::Done), &facts).unwrap_err().to_string();
        assert!(e.contains("[10, 99]") && e.contains("spans [10, 20]"), "{e}");
        // no timed row: only a CONSUMING segment at [0, 0]
        let untimed = SegmentFacts { rows: 0, time_range_ms: None, null_time_rows: 0 };
        assert!(check_claims(&meta(0, 0, 0, SegmentStatus::Consuming), &untimed).is_ok());
        assert!(check_claims(&meta(0, 0, 0, SegmentStatus::Done), &untimed).is_err());
        assert!(check_claims(&meta(0, 5, 5, SegmentStatus::Consuming), &untimed).is_err());
    }
}
