//! The segment registry: REALTIME segments as admins and ingest register
//! them (names checked before anything is uploaded, objects never
//! overwritten, every change moving the table's segment marker so that an
//! in-flight task notices it at commit), and the OFFLINE segments a table
//! holds, derived from its committed lineage and their manifests.

use backon::Retryable;
use r2o_common::kv::{Compare, Kv, Op};
use r2o_common::meta::{
    decode, encode, get_record, now_ms, range_records, Keys, LineageRecord, SegmentMeta, SegmentStatus, WatermarkRecord,
};
use r2o_common::store::{canonical_path, object_size, Layout, Store};
use std::collections::HashSet;
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
fn touch_marker(keys: &Keys, raw: &str) -> Op {
    Op::put(keys.segments_marker(raw), now_ms().to_string().into_bytes())
}

/// Checks that `segment` is free in `raw` and returns a fresh object path
/// to upload it to. Writes nothing.
pub async fn prepare_upload(kv: &Kv, keys: &Keys, layout: &Layout, raw: &str, segment: &str) -> Result<String> {
    validate_segment_name(segment)?;
    load_table(kv, keys, raw).await?.ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
    if kv.get(&keys.segment(&format!("{raw}_REALTIME"), segment)).await?.is_some() {
        return Err(ControllerError::AlreadyExists(format!("segment '{segment}' of {raw}_REALTIME")));
    }
    Ok(layout.realtime_upload(raw, segment))
}

/// Registers a REALTIME segment whose file is in the store. Returns a
/// warning for a late segment (one starting before the watermark).
///
/// # Errors
/// [`ControllerError::Invalid`] naming the field for a bad table name,
/// schema fingerprint, time range, location outside the table's REALTIME
/// prefix or a missing / differently sized object;
/// [`ControllerError::AlreadyExists`] for a registered name.
pub async fn add_segment(kv: &Kv, keys: &Keys, store: &Store, layout: &Layout, meta: SegmentMeta) -> Result<String> {
    let raw = meta.table_name.strip_suffix("_REALTIME").ok_or_else(|| {
        ControllerError::Invalid(format!("segment.table '{}': expected <table>_REALTIME", meta.table_name))
    })?;
    validate_segment_name(&meta.segment_name)?;
    let spec = load_table(kv, keys, raw).await?.ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
    if meta.schema_fingerprint != spec.schema.fingerprint() {
        return Err(ControllerError::Invalid(format!(
            "segment.schemaFingerprint '{}': expected the table schema's '{}'",
            meta.schema_fingerprint,
            spec.schema.fingerprint()
        )));
    }
    if meta.start_time_ms > meta.end_time_ms {
        return Err(ControllerError::Invalid(format!(
            "segment.startTimeMs {} is after endTimeMs {}",
            meta.start_time_ms, meta.end_time_ms
        )));
    }
    let own = canonical_path(&layout.realtime_prefix(raw));
    if !canonical_path(&meta.location).starts_with(&own) {
        return Err(ControllerError::Invalid(format!(
            "segment.location '{}': expected an object under {own} (ask PrepareSegmentUpload for one)",
            meta.location
        )));
    }
    let size = (|| object_size(store, &meta.location))
        .retry(r2o_common::retry::store_backoff())
        .when(r2o_common::Error::is_retryable)
        .await?;
    match size {
        Some(size) if size == meta.size_bytes => {}
        Some(size) => {
            return Err(ControllerError::Invalid(format!(
                "segment.sizeBytes {}: the object at {} is {size} bytes",
                meta.size_bytes, meta.location
            )))
        }
        None => {
            return Err(ControllerError::Invalid(format!(
                "segment.location '{}': no object there; upload the file first",
                meta.location
            )))
        }
    }
    let key = keys.segment(&meta.table_name, &meta.segment_name);
    let ok = kv
        .txn(vec![Compare::CreateRevision(key.clone(), 0)], vec![Op::put(key, encode(&meta)), touch_marker(keys, raw)])
        .await?;
    if !ok {
        return Err(ControllerError::AlreadyExists(format!("segment '{}' of {}", meta.segment_name, meta.table_name)));
    }
    info!(table = %raw, segment = %meta.segment_name, status = meta.status.name(), rows = meta.total_docs, "segment added");
    let wm = get_record::<WatermarkRecord>(kv, &keys.watermark(raw)).await?.map(|(w, _)| w.watermark_ms);
    Ok(match wm {
        Some(w) if meta.total_docs > 0 && meta.start_time_ms < w => {
            warn!(table = %raw, segment = %meta.segment_name, start_time_ms = meta.start_time_ms, watermark_ms = w, "late segment");
            format!(
                "segment {} is late: it starts at {}, before the watermark {}; its rows before the watermark will not move \
                 to OFFLINE (committed windows are never redone; use r2o reset --mode flush to rebuild the table)",
                meta.segment_name,
                r2o_common::window::format_utc(meta.start_time_ms),
                r2o_common::window::format_utc(w)
            )
        }
        _ => String::new(),
    })
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

/// The table's committed lineage, in window order.
pub async fn lineage(kv: &Kv, keys: &Keys, raw: &str) -> Result<Vec<LineageRecord>> {
    Ok(range_records::<LineageRecord>(kv, &keys.lineages(raw)).await?.into_iter().map(|(l, _)| l).collect())
}

/// The OFFLINE segments a table holds: the manifests its committed lineage
/// names (manifests of attempts that never committed are not segments).
pub async fn offline_segments(kv: &Kv, keys: &Keys, raw: &str) -> Result<Vec<SegmentMeta>> {
    let committed: HashSet<(String, u32)> =
        lineage(kv, keys, raw).await?.into_iter().map(|l| (l.task_id, l.attempt)).collect();
    let prefix = keys.manifests(raw);
    let mut out = Vec::new();
    for entry in kv.range(&prefix).await? {
        let mut parts = entry.key[prefix.len()..].split('/');
        let (Some(task), Some(attempt)) = (parts.next(), parts.next()) else { continue };
        let Some(attempt) = attempt.strip_prefix('a').and_then(|a| a.parse::<u32>().ok()) else { continue };
        if committed.contains(&(task.to_string(), attempt)) {
            out.extend(decode::<Vec<SegmentMeta>>(&entry)?);
        }
    }
    Ok(out)
}
