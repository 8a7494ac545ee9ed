//! Getting REALTIME segments in: `segment add` uploads one Parquet file;
//! `ingest` cuts a CSV or Parquet file into segments the way a realtime
//! server flushes them (in time order, `rows_per_segment` rows each, named
//! like Pinot's LLC segments `<table>__<partition>__<seq>__<time>`).
//!
//! Every upload asks the controller first (`PrepareSegmentUpload`): a name
//! that is taken is refused before the store is touched, and the file goes
//! to a fresh object path, written create-only, so a registered object is
//! never overwritten. An upload whose registration is refused is deleted.

use anyhow::{bail, Context, Result};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use bytes::Bytes;
use r2o_common::columnar::{
    null_time_rows, read_csv, read_segment, segment_facts, time_ms, time_range_ms, write_parquet_with,
    REALTIME_ROW_GROUP_ROWS,
};
use r2o_common::config::TableSpec;
use r2o_common::meta::now_ms;
use r2o_common::store::{delete_object, open_store, put_new, Store};
use r2o_proto::controller as pb;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::connect::{client, Target};

async fn table_spec(controller: &Target, table: &str) -> Result<TableSpec> {
    let t = client(controller)
        .await?
        .get_table(pb::GetTableRequest { table: table.into() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok(TableSpec::from_json(serde_json::from_str(&t.table_config_json)?, serde_json::from_str(&t.schema_json)?)?)
}

/// Whether a registration call that failed with `code` surely registered
/// nothing, so its uploads may be deleted at once: the controller refused it
/// (bad input, a name taken, no permission). Any other failure (unavailable,
/// a deadline, a dropped connection, an internal error) may come after the
/// registration was applied, and deleting then would leave a registered
/// segment without its file. Pure.
pub(crate) fn surely_not_registered(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | AlreadyExists
            | FailedPrecondition
            | PermissionDenied
            | Unauthenticated
            | NotFound
            | OutOfRange
    )
}

/// Uploads `bytes` for segment `name` of `raw` to the path the controller
/// hands out, and registers `seg` (its location filled in). Returns the
/// registration's warning, if any.
async fn upload_and_register(
    c: &mut crate::connect::Client,
    store: &Store,
    raw: &str,
    mut seg: pb::Segment,
    bytes: Bytes,
) -> Result<(pb::Segment, String)> {
    let location = c
        .prepare_segment_upload(pb::PrepareSegmentUploadRequest { table: raw.into(), segment: seg.name.clone() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .location;
    put_new(store, &location, bytes).await.with_context(|| format!("uploading segment {} to {location}", seg.name))?;
    seg.location = location.clone();
    match c.add_segment(pb::AddSegmentRequest { segment: Some(seg.clone()) }).await {
        Ok(r) => Ok((seg, r.into_inner().warning)),
        Err(s) => {
            // the name was taken meanwhile, or the segment was refused: nothing refers to the
            // upload. An answer lost on the way may hide a registration: then the upload stays
            // (the janitor deletes it after its grace if nothing names it)
            if surely_not_registered(s.code()) {
                let _ = delete_object(store, &location).await;
            }
            bail!("{}", s.message())
        }
    }
}

/// Uploads a Parquet file as one REALTIME segment and registers it.
#[allow(clippy::too_many_arguments)]
pub async fn add_segment_file(
    controller: &Target,
    store_uri: &str,
    table: &str,
    file: &Path,
    status: &str,
    name: Option<String>,
    partition: i32,
    end_of_stream: bool,
) -> Result<pb::Segment> {
    let spec = table_spec(controller, table).await?;
    let status = r2o_common::meta::SegmentStatus::parse(status)
        .with_context(|| format!("invalid --status '{status}': expected CONSUMING or DONE"))?;
    let name = name.unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let bytes = Bytes::from(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    let facts = segment_facts(&name, bytes.clone(), &spec.schema, &spec.flow.time_column, spec.time_format())?;
    let rows = facts.rows;
    let (start, end) = match (facts.time_range_ms, status) {
        (Some(r), _) => r,
        (None, r2o_common::meta::SegmentStatus::Consuming) => (0, 0),
        (None, _) => bail!("segment '{name}': no row has a value in time column '{}'", spec.flow.time_column),
    };
    let store = open_store(store_uri)?;
    let size = bytes.len() as u64;
    let seg = pb::Segment {
        name,
        table: spec.realtime_name(),
        status: status.name().into(),
        start_time_ms: start,
        end_time_ms: end,
        num_rows: rows,
        size_bytes: size,
        schema_fingerprint: spec.schema.fingerprint(),
        location: String::new(),
        partition,
        created_ms: now_ms(),
        end_of_stream,
        late: false,
        null_time_rows: facts.null_time_rows,
        ..Default::default()
    };
    let mut c = client(controller).await?;
    let (seg, warning) = upload_and_register(&mut c, &store, &spec.name, seg, bytes).await?;
    if !warning.is_empty() {
        eprintln!("warning: {warning}");
    }
    Ok(seg)
}

/// One file to register in bulk.
#[derive(Debug, Clone)]
pub struct BulkFile {
    /// Segment name.
    pub name: String,
    /// Local file.
    pub path: std::path::PathBuf,
}

/// The files of `--dir` (every `*.parquet`, named after their stem) or of
/// `--manifest` (a JSON file `{"segments": [{"segmentName", "file"}, ...]}`,
/// as `gen_flights.py` writes; `file` relative to the manifest), in name order.
pub fn bulk_files(dir: Option<&Path>, manifest: Option<&Path>) -> Result<Vec<BulkFile>> {
    let mut out = Vec::new();
    if let Some(dir) = dir {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "parquet") {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(BulkFile { name, path });
            }
        }
    }
    if let Some(m) = manifest {
        let text = std::fs::read_to_string(m).with_context(|| format!("reading {}", m.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", m.display()))?;
        let base = m.parent().unwrap_or(Path::new("."));
        let Some(list) = doc["segments"].as_array() else {
            bail!(
                "invalid {}: field segments is missing, expected a list of {{\"segmentName\", \"file\"}}",
                m.display()
            );
        };
        for (i, s) in list.iter().enumerate() {
            let (Some(name), Some(file)) = (s["segmentName"].as_str(), s["file"].as_str()) else {
                bail!("invalid {}: segments[{i}] needs segmentName and file (strings), got {s}", m.display());
            };
            out.push(BulkFile { name: name.to_string(), path: base.join(file) });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Registers many Parquet files as REALTIME segments of `table`, in
/// batches of `batch` files: each batch is read (footer statistics, or the
/// time column when there are none), checked with the controller
/// (`PrepareSegmentUploads`: names free), uploaded create-only, 32 at a time,
/// and registered in one `AddSegments` call (transactions of 100). Batches
/// are pipelined: while batch N registers, batch N+1 is read and uploaded.
/// A batch whose registration is refused (and the one staged behind it)
/// deletes its uploads; batches registered before it stay. With
/// `end_of_stream`, the last segment of each stream partition (by LLC
/// sequence number, else by end time) ends its stream. Returns (segments, rows).
#[allow(clippy::too_many_arguments)]
pub async fn add_segment_files(
    controller: &Target,
    store_uri: &str,
    table: &str,
    files: Vec<BulkFile>,
    status: &str,
    partition: i32,
    end_of_stream: bool,
    batch: usize,
) -> Result<(u64, u64)> {
    let spec = table_spec(controller, table).await?;
    let status = r2o_common::meta::SegmentStatus::parse(status)
        .with_context(|| format!("invalid --status '{status}': expected CONSUMING or DONE"))?;
    let store = open_store(store_uri)?;
    let c = client(controller).await?;
    // the last segment of each partition, when the streams end with these files
    let mut last: std::collections::HashMap<i32, (u64, String)> = std::collections::HashMap::new();
    if end_of_stream {
        for (i, f) in files.iter().enumerate() {
            let key = r2o_controller::planner::llc_name(&f.name).map_or(i as u64, |(_, seq)| seq);
            let e = last.entry(stream_partition(&f.name, partition)).or_insert((key, f.name.clone()));
            if key >= e.0 {
                *e = (key, f.name.clone());
            }
        }
    }
    let bulk = Bulk { ends: last.into_values().map(|(_, n)| n).collect(), spec, status, partition, store, client: c };
    let total = files.len();
    let (mut done, mut rows) = (0u64, 0u64);
    let mut pending: Option<StagedBatch> = None;
    for chunk in files.chunks(batch.max(1)) {
        let register = async {
            match pending.take() {
                Some(p) => bulk.register(p).await.map(Some),
                None => Ok(None),
            }
        };
        let (staged, registered) = tokio::join!(bulk.stage(chunk), register);
        // a refused registration ends the run; what was staged behind it goes
        let registered = match registered {
            Ok(r) => r,
            Err(e) => {
                if let Ok(next) = staged {
                    bulk.discard(next.uploaded).await;
                }
                return Err(e);
            }
        };
        if let Some((n, r)) = registered {
            (done, rows) = (done + n, rows + r);
            eprint!("\rregistered {done}/{total} segments ({rows} rows)");
            std::io::stderr().flush().ok();
        }
        pending = Some(staged?);
    }
    if let Some(p) = pending {
        let (n, r) = bulk.register(p).await?;
        (done, rows) = (done + n, rows + r);
        eprint!("\rregistered {done}/{total} segments ({rows} rows)");
    }
    eprintln!();
    Ok((done, rows))
}

/// A segment's stream partition: from its LLC name
/// (`table__partition__seq__time`), else `default` (`--partition`).
fn stream_partition(name: &str, default: i32) -> i32 {
    r2o_controller::planner::llc_name(name).map_or(default, |(p, _)| p)
}

/// What every batch of a bulk registration shares.
struct Bulk {
    spec: TableSpec,
    status: r2o_common::meta::SegmentStatus,
    partition: i32,
    store: Store,
    client: crate::connect::Client,
    /// Names of the segments that end their stream partition.
    ends: std::collections::HashSet<String>,
}

/// A batch read, checked and uploaded, not yet registered.
struct StagedBatch {
    segments: Vec<pb::Segment>,
    /// Store locations of its uploads (deleted when the registration is refused).
    uploaded: Vec<String>,
    rows: u64,
}

impl Bulk {
    /// Reads the batch's files (8 at a time, off the async threads), checks
    /// their names with the controller and uploads them create-only.
    async fn stage(&self, chunk: &[BulkFile]) -> Result<StagedBatch> {
        use futures::{StreamExt, TryStreamExt};
        let spec = &self.spec;
        let format = spec.time_format();
        let read: Vec<(BulkFile, Bytes, r2o_common::columnar::SegmentFacts)> = futures::stream::iter(chunk.to_vec())
            .map(|f| {
                let schema = spec.schema.clone();
                let time = spec.flow.time_column.clone();
                tokio::task::spawn_blocking(move || -> Result<_> {
                    let bytes =
                        Bytes::from(std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display()))?);
                    let facts = segment_facts(&f.name, bytes.clone(), &schema, &time, format)?;
                    Ok((f, bytes, facts))
                })
            })
            .buffered(8)
            .map(|r| r.map_err(anyhow::Error::from).and_then(|x| x))
            .try_collect()
            .await?;
        let names: Vec<String> = read.iter().map(|(f, _, _)| f.name.clone()).collect();
        let locations = self
            .client
            .clone()
            .prepare_segment_uploads(pb::PrepareSegmentUploadsRequest { table: spec.name.clone(), segments: names })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner()
            .locations;
        let (mut segments, mut uploads, mut rows) = (Vec::with_capacity(read.len()), vec![], 0);
        for ((f, bytes, facts), location) in read.into_iter().zip(locations) {
            let (start, end) = match (facts.time_range_ms, self.status) {
                (Some(r), _) => r,
                (None, r2o_common::meta::SegmentStatus::Consuming) => (0, 0),
                (None, _) => {
                    bail!("segment '{}': no row has a value in time column '{}'", f.name, spec.flow.time_column)
                }
            };
            rows += facts.rows;
            segments.push(pb::Segment {
                name: f.name.clone(),
                table: spec.realtime_name(),
                status: self.status.name().into(),
                start_time_ms: start,
                end_time_ms: end,
                num_rows: facts.rows,
                size_bytes: bytes.len() as u64,
                schema_fingerprint: spec.schema.fingerprint(),
                location: location.clone(),
                partition: stream_partition(&f.name, self.partition),
                created_ms: now_ms(),
                end_of_stream: self.ends.contains(&f.name),
                late: false,
                null_time_rows: facts.null_time_rows,
                ..Default::default()
            });
            uploads.push((location, bytes));
        }
        let uploaded: Vec<String> = uploads.iter().map(|(l, _)| l.clone()).collect();
        let put =
            futures::stream::iter(uploads)
                .map(|(location, bytes)| {
                    let store = self.store.clone();
                    async move {
                        put_new(&store, &location, bytes).await.with_context(|| format!("uploading to {location}"))
                    }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<()>>()
                .await;
        if let Err(e) = put {
            self.discard(uploaded).await;
            return Err(e);
        }
        Ok(StagedBatch { segments, uploaded, rows })
    }

    /// Registers a staged batch in one `AddSegments` call; returns (segments, rows).
    async fn register(&self, batch: StagedBatch) -> Result<(u64, u64)> {
        let n = batch.segments.len() as u64;
        match self.client.clone().add_segments(pb::AddSegmentsRequest { segments: batch.segments }).await {
            Ok(r) => {
                for w in r.into_inner().warnings {
                    eprintln!("\nwarning: {w}");
                }
                Ok((n, batch.rows))
            }
            Err(s) => {
                // refused: nothing of this batch was registered, its uploads are nobody's
                // (an answer lost on the way may hide a registration: they stay for the janitor)
                if surely_not_registered(s.code()) {
                    self.discard(batch.uploaded).await;
                }
                bail!("{}", s.message())
            }
        }
    }

    /// Deletes uploads no registration refers to (best effort; the janitor
    /// deletes what is left after its grace period).
    async fn discard(&self, uploaded: Vec<String>) {
        for l in uploaded {
            let _ = delete_object(&self.store, &l).await;
        }
    }
}

/// Cuts a file into REALTIME segments and registers them; the last stays
/// CONSUMING unless `seal_last`.
pub async fn ingest(
    controller: &Target,
    store_uri: &str,
    table: &str,
    file: &Path,
    rows_per_segment: usize,
    seal_last: bool,
    partition: i32,
) -> Result<()> {
    if rows_per_segment == 0 {
        bail!("invalid --rows-per-segment 0: expected a whole number of rows greater than zero");
    }
    let spec = table_spec(controller, table).await?;
    let schema = spec.schema.arrow_schema();
    let is_csv = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let batches = if is_csv {
        read_csv(file, &spec.schema)?
    } else {
        let bytes = Bytes::from(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
        read_segment(&file.display().to_string(), bytes, &spec.schema, 64 * 1024)?
    };
    let all = concat_batches(&schema, &batches)?;
    drop(batches);
    // event-time order, as a stream would deliver it
    let t = time_ms(all.column(schema.index_of(&spec.flow.time_column)?), spec.time_format())?;
    let idx = lexsort_to_indices(&[SortColumn { values: Arc::new(t), options: None }], None)?;
    let all = take_record_batch(&all, &idx)?;
    let total = all.num_rows();
    let n = total.div_ceil(rows_per_segment);
    // continue the sequence after existing segments of this partition
    let existing = crate::connect::list_segments(&mut client(controller).await?, &spec.name)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let prefix = format!("{}__{partition}__", spec.name);
    let first_seq = existing
        .iter()
        .filter_map(|s| {
            s.name.strip_prefix(&prefix).and_then(|r| r.split("__").next()).and_then(|q| q.parse::<u64>().ok())
        })
        .max()
        .map_or(0, |m| m + 1);
    let store = open_store(store_uri)?;
    let mut c = client(controller).await?;
    let stamp = r2o_common::window::format_utc(now_ms()).replace(['-', ':'], "");
    let stamp = &stamp[..13];
    let mut previous: Option<String> = None;
    for i in 0..n {
        let piece = all.slice(i * rows_per_segment, rows_per_segment.min(total - i * rows_per_segment));
        let name = format!("{prefix}{}__{stamp}Z", first_seq + i as u64);
        let bytes = write_parquet_with(&schema, std::slice::from_ref(&piece), REALTIME_ROW_GROUP_ROWS)?;
        let (start, end) =
            time_range_ms(std::slice::from_ref(&piece), &spec.flow.time_column, spec.time_format())?.unwrap_or((0, 0));
        // As a realtime server does: the new segment is CONSUMING before the
        // previous one is sealed, so the planner never sees a partition's
        // latest DONE segment without a CONSUMING one behind it.
        let seg = pb::Segment {
            name: name.clone(),
            table: spec.realtime_name(),
            status: "CONSUMING".into(),
            start_time_ms: start,
            end_time_ms: end,
            num_rows: piece.num_rows() as u64,
            size_bytes: bytes.len() as u64,
            schema_fingerprint: spec.schema.fingerprint(),
            location: String::new(),
            partition,
            created_ms: now_ms(),
            end_of_stream: false,
            late: false,
            null_time_rows: null_time_rows(std::slice::from_ref(&piece), &spec.flow.time_column)?,
            ..Default::default()
        };
        let (_, warning) = upload_and_register(&mut c, &store, &spec.name, seg, bytes).await?;
        if !warning.is_empty() {
            eprintln!("\nwarning: {warning}");
        }
        if let Some(prev) = previous.replace(name.clone()) {
            c.seal_segment(pb::SealSegmentRequest { table: spec.name.clone(), segment: prev, end_of_stream: false })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        }
        eprint!("\ringested segment {}/{n} ({} rows so far)", i + 1, (i * rows_per_segment + piece.num_rows()));
        std::io::stderr().flush().ok();
    }
    eprintln!();
    if let (true, Some(last)) = (seal_last, previous) {
        // the file is finite: its stream ends with the last segment
        c.seal_segment(pb::SealSegmentRequest { table: spec.name.clone(), segment: last, end_of_stream: true })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    }
    println!(
        "ingested {total} rows into {n} REALTIME segments of {} ({})",
        spec.name,
        if seal_last { "all DONE, the last one ending its stream" } else { "last one CONSUMING" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::surely_not_registered;
    use tonic::Code;

    #[test]
    fn uploads_go_only_when_the_registration_was_refused() {
        for refused in [Code::InvalidArgument, Code::AlreadyExists, Code::FailedPrecondition, Code::PermissionDenied] {
            assert!(surely_not_registered(refused), "{refused:?}");
        }
        // the call may have been applied before its answer was lost
        for unknown in [Code::Unavailable, Code::DeadlineExceeded, Code::Cancelled, Code::Unknown, Code::Internal] {
            assert!(!surely_not_registered(unknown), "{unknown:?}");
        }
    }
}
