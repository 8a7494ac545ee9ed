//! The bounded-memory path, for tasks whose windows do not fit the
//! attempt's share of the minion's memory budget ([`crate::budget`]).
//!
//! Per window: the inputs are read by row group with ranged reads straight
//! from the object store (row groups pruned by their time statistics),
//! filtered to the window and rounded by r2o's own stages
//! ([`crate::processor`]), tagged with Pinot's partition and a hash of the
//! merge key, and handed to Apache DataFusion as streams, one per core.
//! DataFusion sorts each by `(partition, sortedColumn, time, merge key
//! hash)` under a memory pool of its share of the attempt's, spilling
//! sorted runs to local disk and merging them back, and merges the sorted
//! streams into one. In that order every rollup group and every duplicate
//! is adjacent (keys sharing a hash are caught and merged exactly), so the
//! merge (r2o's own rollup and dedup, with Pinot's value aggregators) needs
//! one carried row, and the rows come out in the OFFLINE segments' sort
//! order. The outputs are cut at
//! `maxNumRecordsPerSegment` and written as they come, each streamed to the
//! object store in parts (multipart upload).
//!
//! Why not DataFusion's own aggregation: its SUM widens INT to BIGINT and
//! FLOAT to DOUBLE, where Pinot's rollup sums INT in 32 bits (wrapping) and
//! FLOAT in f32; and the sort the outputs need anyway already makes the
//! groups adjacent, so one spilling operator does both.
//!
//! Everything runs on one runtime per process (a worker per core), apart
//! from the minion's gRPC and lease keep-alive; cancellation drops the plan
//! and its spawned tasks at once, and the source checks the token at every
//! batch.

use arrow::array::{Array, AsArray, Int32Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType as ArrowType, Field, Int32Type, Int64Type, Schema as ArrowSchema, SchemaRef};
use datafusion_common::DataFusionError;
use datafusion_execution::config::SessionConfig;
use datafusion_execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion_execution::memory_pool::FairSpillPool;
use datafusion_execution::runtime_env::RuntimeEnvBuilder;
use datafusion_execution::{SendableRecordBatchStream, TaskContext};
use datafusion_physical_expr::expressions::col;
use datafusion_physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion_physical_plan::sorts::sort::SortExec;
use datafusion_physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion_physical_plan::stream::RecordBatchStreamAdapter;
use datafusion_physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion_physical_plan::{execute_stream, ExecutionPlan};
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use backon::Retryable;
use r2o_common::columnar::{
    check_file_schema_as, conform_batch_in, prune_row_groups, time_range_ms, writer_properties, SchemaVersion,
    TimeFilter,
};
use r2o_common::config::{MergeType, TableSpec};
use r2o_common::meta::{SegmentMeta, WindowStats};
use r2o_common::retry::store_backoff;
use r2o_common::schema::FieldKind;
use r2o_common::store::Store;
use r2o_common::window::Window;
use r2o_common::Error;

use crate::encode::ParallelWriter;
use crate::partition::partition_ids;
use crate::processor::{
    dedup_sorted, filter_window, keep_sub_task, metric_sums, rollup_sorted, round_time, sort_columns, OutputSegment,
    ProcessError, Processed, SubTask, Sums,
};

/// Rows per batch on this path at most (smaller than the in-memory path's,
/// so the reader, the sort's merge and the writer hold little each); a
/// small sort pool gets smaller batches (see [`batch_rows`]).
pub const STREAM_BATCH_ROWS: usize = 8 * 1024;

/// Rows per batch for a sort pool of `memory_bytes`: at most 1/128 of the
/// pool per batch (the sort's merge holds a batch of every spilled run at
/// once), between 128 and [`STREAM_BATCH_ROWS`] rows.
pub fn batch_rows(memory_bytes: usize, spec: &TableSpec) -> usize {
    let row = crate::budget::table_row_bytes(spec) as usize;
    (memory_bytes / 128 / row).clamp(128, STREAM_BATCH_ROWS)
}

/// Rows per row group of outputs written on this path (the writer holds one
/// encoded row group per output in progress).
const OUTPUT_ROW_GROUP_ROWS: usize = 256 * 1024;

/// Bytes of the multipart upload buffer per output being written (each part
/// is uploaded as it fills), bytes.
const UPLOAD_PART_BYTES: usize = 8 << 20;

/// Parts of one output uploading at once (object_store's default is 8: up
/// to 64 MiB in flight per output).
const UPLOAD_PARTS_IN_FLIGHT: usize = 2;

/// Column holding a row's Pinot partition while it crosses the sort.
const PARTITION_COLUMN: &str = "__r2o_partition";

/// Column holding the start of a row's `partitionBucketTimePeriod` bucket,
/// epoch ms, while it crosses the sort (tables with the key only).
const TIME_BUCKET_COLUMN: &str = "__r2o_time_bucket";

/// Where a run of merged rows goes: its Pinot partition (-1: the table is
/// not partitioned) and the start of its `partitionBucketTimePeriod` bucket,
/// epoch ms (`None`: the table has no such key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct OutKey {
    partition: i32,
    bucket: Option<i64>,
}

/// Column holding a hash of a row's merge key while it crosses the sort and
/// the merge (rollup: every non-metric column, the rounded time included;
/// dedup: the whole row): the sort key ends with it instead of every key
/// column, so each group or duplicate is still one run but the sort compares
/// and encodes a few fixed-width keys. Keys of other content with one hash
/// are caught by the merge ([`Merger`]), which then falls back to an exact
/// rollup or dedup.
const ROW_HASH_COLUMN: &str = "__r2o_row_hash";

/// The row hash's seed (any fixed one: hashes are compared within one attempt).
const ROW_HASH_STATE: datafusion_common::hash_utils::RandomState =
    datafusion_common::hash_utils::RandomState::with_seed(0x7232_6f5f_6465_6475);

/// How one attempt on this path may use the machine.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Bytes the sorters together may hold before they spill (the attempt's
    /// share of the minion's budget, less what readers and writers hold),
    /// split evenly among them, bytes.
    pub memory_bytes: usize,
    /// Local directory for spill files (created when missing).
    pub spill_dir: PathBuf,
    /// Source partitions (inputs decoded at once), each with its sorter.
    pub threads: usize,
    /// This sub-task of a split window (`None`: the whole window).
    pub split: Option<SubTask>,
}

/// One input of a task on this path: a REALTIME segment read in place.
#[derive(Debug, Clone)]
pub struct StreamInput {
    /// The segment as registered (location, size, time range).
    pub meta: SegmentMeta,
    /// Count its NULL-time rows (set for the window holding its start).
    pub count_null_time: bool,
}

/// What the attempt saw on this path besides its outputs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpillStats {
    /// Sorted runs spilled to disk.
    pub spill_count: usize,
    /// Bytes spilled to disk.
    pub spilled_bytes: usize,
}

/// Counters the sources add to while they read.
#[derive(Default)]
struct SourceStats {
    rows_in: u64,
    bytes_in: u64,
    row_groups_skipped: u64,
    rows_null_time: u64,
    rows_filtered: u64,
    sums_in: Sums,
}

fn df_err(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Our error back out of DataFusion's (a source's error travels inside it).
fn from_df(e: DataFusionError) -> ProcessError {
    match e {
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(e) => ProcessError::Data(*e),
            Err(other) => {
                ProcessError::Data(Error::Segment { segment: String::new(), problem: format!("sort failed: {other}") })
            }
        },
        DataFusionError::Context(_, inner) => from_df(*inner),
        DataFusionError::Shared(inner) => match Arc::try_unwrap(inner) {
            Ok(e) => from_df(e),
            Err(shared) => {
                ProcessError::Data(Error::Segment { segment: String::new(), problem: format!("sort failed: {shared}") })
            }
        },
        other => {
            ProcessError::Data(Error::Segment { segment: String::new(), problem: format!("sort failed: {other}") })
        }
    }
}

/// A [`PartitionStream`] over a stream made before the plan runs (taken once).
struct OneShot {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OneShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneShot")
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(s) => s,
            None => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async {
                    Err(DataFusionError::Internal("an r2o source stream was executed twice".into()))
                }),
            )),
        }
    }
}

/// Inputs a source fetches ahead of the one it decodes (each small input
/// is fetched whole: [`r2o_common::columnar::reader::WHOLE_FILE_BYTES`]), so
/// that decoding does not wait on the store once per input (issue 21: one
/// window of 14,600 small segments).
const READ_AHEAD: usize = 4;

/// An input's reader, its bytes fetched when it is small; a discovered file
/// is read where it lies, after checking it is still the file registered.
async fn open_input(
    store: Store,
    input: StreamInput,
) -> Result<(StreamInput, r2o_common::columnar::reader::StoreReader), Error> {
    let name = input.meta.segment_name.as_str();
    let (store, path) = r2o_common::store::resolve(&store, &input.meta.location)?;
    if r2o_common::store::is_external(&input.meta.location) {
        // still the file that was registered? (it is read in ranges, in place)
        let m = &input.meta;
        let check = || r2o_common::store::check_registered(&store, &path, name, m.size_bytes, &m.source_version);
        check.retry(store_backoff()).when(Error::is_retryable).await?;
    }
    let reader = r2o_common::columnar::reader::StoreReader::new(store, &path, input.meta.size_bytes)
        .fetched()
        .await
        .map_err(|e| Error::Segment {
            segment: name.to_string(),
            problem: format!("cannot read {}: {e}", input.meta.location),
        })?;
    Ok((input, reader))
}

/// Everything one window's run needs.
struct Ctx {
    spec: TableSpec,
    store: Store,
    cancel: CancellationToken,
    /// Schema of the rows crossing the sort: the table's (and the hidden
    /// original times), plus the partition column when partitioned, plus
    /// the row hash (rollup, dedup).
    sort_schema: SchemaRef,
    /// Schema of the rows the merge sees: the work schema, plus the row hash.
    merge_schema: SchemaRef,
    /// The table's columns the row hash covers ([`ROW_HASH_COLUMN`]); `None`
    /// when the sort key is the columns themselves (concat).
    hash_key: Option<Vec<usize>>,
    table_schema: SchemaRef,
    /// The table's columns plus the hidden original times of
    /// `firstWithTime` / `lastWithTime` ([`crate::processor::work_schema`]).
    work_schema: SchemaRef,
    split: Option<SubTask>,
    /// Rows per batch ([`batch_rows`]).
    batch_rows: usize,
    /// `roundBucketTimePeriod` (in `bucketTimeZone`), if any.
    rounding: Option<r2o_common::window::Bucketing>,
}

impl Ctx {
    fn check(&self) -> Result<(), Error> {
        if self.cancel.is_cancelled() {
            Err(Error::Segment { segment: String::new(), problem: "cancelled".into() })
        } else {
            Ok(())
        }
    }

    /// Reads `inputs` in order, sending the window's rows (filtered, rounded,
    /// partition-tagged) to `tx`; adds what it saw to `stats`.
    async fn read_inputs(
        &self,
        window: Window,
        inputs: Vec<StreamInput>,
        stats: &Mutex<SourceStats>,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch, DataFusionError>>,
    ) -> Result<(), Error> {
        let format = self.spec.time_format();
        let time_col = self.spec.flow.time_column.as_str();
        let filter = TimeFilter { column: time_col.to_string(), format, window };
        let mut pending: Vec<RecordBatch> = vec![];
        let mut pending_rows = 0usize;
        // the next inputs are fetched on tasks of their own while this one decodes
        let opened = futures::stream::iter(inputs)
            .map(|input| {
                let store = self.store.clone();
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(open_input(store, input)))
            })
            .buffered(READ_AHEAD);
        futures::pin_mut!(opened);
        while let Some(open) = opened.next().await {
            self.check()?;
            let (input, reader) = open.map_err(|e| Error::Segment {
                segment: String::new(),
                problem: format!("reading an input stopped: {e}"),
            })??;
            let name = input.meta.segment_name.as_str();
            let seg_err = |problem: String| Error::Segment { segment: name.to_string(), problem };
            let builder = ParquetRecordBatchStreamBuilder::new(reader)
                .await
                .map_err(|e| seg_err(format!("cannot read {}: {e}", input.meta.location)))?;
            let version = SchemaVersion::of(&input.meta.schema_fingerprint, &self.spec.schema);
            check_file_schema_as(name, builder.schema(), &self.spec.schema, version)?;
            let builder = match prune_row_groups(builder.metadata(), builder.schema(), &filter) {
                None => builder,
                Some(p) => {
                    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    s.row_groups_skipped += p.skipped as u64;
                    if input.count_null_time {
                        s.rows_null_time += p.skipped_null_time_rows;
                    }
                    builder.with_row_groups(p.keep)
                }
            };
            stats.lock().unwrap_or_else(|p| p.into_inner()).bytes_in += input.meta.size_bytes;
            let mut batches = builder
                .with_batch_size(self.batch_rows)
                .build()
                .map_err(|e| seg_err(format!("not a readable Parquet file: {e}")))?;
            while let Some(b) = batches.next().await {
                self.check()?;
                let b = b.map_err(|e| seg_err(format!("corrupt data: {e}")))?;
                let b = conform_batch_in(name, &b, &self.spec.schema, &self.table_schema, Some(&filter))?;
                if input.count_null_time {
                    let nulls = b.column_by_name(time_col).map_or(0, |c| c.null_count() as u64);
                    stats.lock().unwrap_or_else(|p| p.into_inner()).rows_null_time += nulls;
                }
                let kept = filter_window(&b, time_col, format, window)?;
                // only the rows offloadPredicate keeps move, and are checked
                let kept = match &self.spec.flow.offload_predicate {
                    Some(p) if kept.num_rows() > 0 => {
                        let (kept, dropped) = p.filter(&kept, &self.spec.schema)?;
                        if SubTask::counts_filtered(self.split) {
                            stats.lock().unwrap_or_else(|p| p.into_inner()).rows_filtered += dropped;
                        }
                        kept
                    }
                    _ => kept,
                };
                if kept.num_rows() == 0 {
                    continue;
                }
                r2o_common::columnar::check_rows(name, &kept, &self.spec.schema, time_col, self.spec.flow.allow_nan)?;
                crate::sketch::check_batch(name, &kept, &self.spec)?;
                // small segments give small batches: gather a full batch before
                // the per-batch stages and the sort see it
                pending_rows += kept.num_rows();
                pending.push(kept);
                if pending_rows >= self.batch_rows {
                    pending_rows = 0;
                    if !self.send(std::mem::take(&mut pending), stats, tx).await? {
                        return Ok(()); // the plan is gone (cancelled or failed)
                    }
                }
            }
        }
        self.send(pending, stats, tx).await?;
        Ok(())
    }

    /// Rounds, splits (sub-tasks), counts and tags a gathered batch of the
    /// window's rows and sends it to the sort; `false` when the plan is gone.
    async fn send(
        &self,
        batches: Vec<RecordBatch>,
        stats: &Mutex<SourceStats>,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch, DataFusionError>>,
    ) -> Result<bool, Error> {
        if batches.is_empty() {
            return Ok(true);
        }
        let format = self.spec.time_format();
        let time_col = self.spec.flow.time_column.as_str();
        let kept = concat_batches(&self.table_schema, &batches)?;
        drop(batches);
        let kept = crate::processor::add_pick_times(kept, &self.spec)?;
        let kept = match &self.rounding {
            Some(r) => round_time(&kept, time_col, format, r)?,
            None => kept,
        };
        let kept = match self.split {
            Some(split) => keep_sub_task(&kept, &self.spec, split)?,
            None => kept,
        };
        if kept.num_rows() == 0 {
            return Ok(true);
        }
        {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.rows_in += kept.num_rows() as u64;
            s.sums_in.add(metric_sums(std::slice::from_ref(&kept), &self.spec));
        }
        let tagged = self.tag(kept)?;
        Ok(tx.send(Ok(tagged)).await.is_ok())
    }

    /// Adds the partition column when the table is partitioned, and the row
    /// hash when the sort key ends with it (rollup, dedup).
    fn tag(&self, batch: RecordBatch) -> Result<RecordBatch, Error> {
        let mut cols = batch.columns().to_vec();
        if let Some(p) = &self.spec.flow.partitioning {
            cols.push(Arc::new(self.partition_ids(&batch, p)?));
        }
        if let Some(buckets) = self.spec.flow.time_partitioning() {
            cols.push(Arc::new(crate::processor::bucket_starts(&batch, &self.spec, &buckets)?));
        }
        if let Some(key) = &self.hash_key {
            cols.push(Arc::new(row_hashes(&batch, key)?));
        }
        if cols.len() == batch.num_columns() {
            return Ok(batch);
        }
        Ok(RecordBatch::try_new(self.sort_schema.clone(), cols)?)
    }

    /// Pinot's partition of every row of `batch`.
    fn partition_ids(&self, batch: &RecordBatch, p: &r2o_common::config::Partitioning) -> Result<Int32Array, Error> {
        let c = batch.column_by_name(&p.column).ok_or_else(|| Error::Segment {
            segment: String::new(),
            problem: format!("partition column '{}' is missing", p.column),
        })?;
        Ok(partition_ids(c, p)?.into_iter().map(|i| i as i32).collect())
    }

    /// The sort key: partition, the outputs' order, then (rollup, dedup) the
    /// rest of the merge key, so groups and duplicates are adjacent.
    fn sort_key(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut key: Vec<String> = vec![];
        if spec.flow.partitioning.is_some() {
            key.push(PARTITION_COLUMN.to_string());
        }
        if spec.flow.partition_bucket_ms.is_some() {
            key.push(TIME_BUCKET_COLUMN.to_string());
        }
        key.extend(sort_columns(spec).into_iter().map(String::from));
        if self.hash_key.is_some() {
            key.push(ROW_HASH_COLUMN.to_string());
            return key;
        }
        let rest = spec.schema.fields.iter().filter(|f| match spec.flow.merge_type {
            MergeType::Concat => false,
            MergeType::Dedup => true,
            MergeType::Rollup => f.kind != FieldKind::Metric,
        });
        for f in rest {
            if !key.contains(&f.name) {
                key.push(f.name.clone());
            }
        }
        key
    }
}

/// Collapses adjacent rows of one partition: rollup groups, dedup
/// duplicates. Holds back the last merged rows, which the next batch may
/// continue.
///
/// Rows arrive sorted by the merge key's hash after the outputs' order
/// ([`ROW_HASH_COLUMN`]): each group or duplicate is one run unless a key of
/// other content with the same hash sits inside it. Two merged rows left
/// side by side with one hash show that case; the batch then gets the exact
/// (hash-table) merge, and the carried rows are the whole last run of one
/// hash.
struct Merger<'a> {
    spec: &'a TableSpec,
    /// The rows' schema: the table's, plus the row hash.
    schema: SchemaRef,
    table_schema: SchemaRef,
    /// The table's columns and the hidden original times.
    work_schema: SchemaRef,
    /// The table's columns the row hash covers (`None`: no row hash).
    hash_key: Option<Vec<usize>>,
    partition: Option<OutKey>,
    carry: Option<RecordBatch>,
}

impl Merger<'_> {
    fn push(
        &mut self,
        partition: OutKey,
        batch: RecordBatch,
        out: &mut Vec<(OutKey, RecordBatch)>,
    ) -> Result<(), Error> {
        if Some(partition) != self.partition {
            self.flush(out)?;
            self.partition = Some(partition);
        }
        if self.spec.flow.merge_type == MergeType::Concat {
            out.push((partition, batch));
            return Ok(());
        }
        let input = match self.carry.take() {
            Some(c) => concat_batches(&self.schema, [&c, &batch])?,
            None => batch,
        };
        // sorted by the merge key's hash: groups and duplicates are runs
        let (flow, schema) = (&self.spec.flow, &self.spec.schema);
        let mut merged = match flow.merge_type {
            // no two neighbours share a hash: every key is alone (equal keys
            // would sit side by side, or with rows of their hash between them),
            // and a group of one row rolls up to itself (Pinot's reducer copies
            // a group's first row), so the batch passes as it is
            _ if self.hashes(&input).is_some_and(|h| h.windows(2).all(|w| w[0] != w[1])) => input,
            MergeType::Dedup => dedup_sorted(&input)?,
            _ => rollup_sorted(&input, schema, &flow.aggregations)?,
        };
        if let (Some(key), Some(h)) = (&self.hash_key, self.hashes(&merged)) {
            if h.windows(2).any(|w| w[0] == w[1]) {
                // two keys of one hash: the exact, hash-table merge
                let rows = [crate::processor::strip_to(merged, &self.work_schema)?];
                let exact = match flow.merge_type {
                    MergeType::Dedup => crate::processor::dedup(&rows)?,
                    _ => crate::processor::rollup(&rows, schema, &flow.aggregations)?,
                };
                let exact = concat_batches(&self.work_schema, &exact)?;
                let mut cols = exact.columns().to_vec();
                cols.push(Arc::new(row_hashes(&exact, key)?));
                merged = RecordBatch::try_new(self.schema.clone(), cols)?;
            }
        }
        let n = merged.num_rows();
        if n > 0 {
            // the last run of one hash: the next batch may continue any of its keys
            let held = self.hashes(&merged).map_or(1, |h| h.iter().rev().take_while(|x| **x == h[n - 1]).count());
            if n > held {
                out.push((partition, self.strip(merged.slice(0, n - held))?));
            }
            self.carry = Some(merged.slice(n - held, held));
        }
        Ok(())
    }

    /// The row hashes of `merged`, `None` without them.
    fn hashes<'b>(&self, merged: &'b RecordBatch) -> Option<&'b [u64]> {
        let idx = merged.schema().index_of(ROW_HASH_COLUMN).ok()?;
        Some(merged.column(idx).as_primitive::<arrow::datatypes::UInt64Type>().values())
    }

    /// The table's columns of `batch` (the hidden times and the row hash dropped).
    fn strip(&self, batch: RecordBatch) -> Result<RecordBatch, Error> {
        let n = self.table_schema.fields().len();
        if batch.num_columns() == n {
            return Ok(batch);
        }
        Ok(RecordBatch::try_new(self.table_schema.clone(), batch.columns()[..n].to_vec())?)
    }

    fn flush(&mut self, out: &mut Vec<(OutKey, RecordBatch)>) -> Result<(), Error> {
        if let (Some(c), Some(key)) = (self.carry.take(), self.partition) {
            out.push((key, self.strip(c)?));
        }
        Ok(())
    }
}

/// A hash of each row of `batch` over the columns `key` (a fixed seed:
/// hashes are compared within one attempt only).
fn row_hashes(batch: &RecordBatch, key: &[usize]) -> Result<arrow::array::UInt64Array, Error> {
    let mut hashes = vec![0u64; batch.num_rows()];
    let cols: Vec<&arrow::array::ArrayRef> = key.iter().map(|i| batch.column(*i)).collect();
    datafusion_common::hash_utils::create_hashes(cols, &ROW_HASH_STATE, &mut hashes)
        .map_err(|e| Error::Segment { segment: String::new(), problem: format!("cannot hash rows: {e}") })?;
    Ok(arrow::array::UInt64Array::from(hashes))
}

/// One output segment being written.
struct Open {
    key: OutKey,
    name: String,
    location: String,
    writer: ParallelWriter<BufWriter>,
    rows: u64,
    time: Option<(i64, i64)>,
}

/// Cuts a window's merged, sorted rows into OFFLINE segments of at most
/// `maxNumRecordsPerSegment` rows per partition, streaming each to the store.
struct Sink<'a> {
    spec: &'a TableSpec,
    store: Store,
    prefix: String,
    window: Window,
    schema: SchemaRef,
    open: Option<Open>,
    seq: BTreeMap<OutKey, usize>,
    split: Option<SubTask>,
    outputs: Vec<OutputSegment>,
    sums_out: Sums,
    rows_out: u64,
    /// Threads each output's columns are encoded on.
    threads: usize,
}

impl Sink<'_> {
    async fn write(&mut self, key: OutKey, batch: RecordBatch) -> Result<(), Error> {
        if self.open.as_ref().is_some_and(|o| o.key != key) {
            self.close().await?;
        }
        let max = self.spec.flow.max_records_per_segment.max(1);
        let format = self.spec.time_format();
        let mut off = 0usize;
        while off < batch.num_rows() {
            if self.open.is_none() {
                self.start(key)?;
            }
            let o = self.open.as_mut().expect("opened above");
            let take = ((max - o.rows) as usize).min(batch.num_rows() - off);
            let piece = batch.slice(off, take);
            off += take;
            if let Some((lo, hi)) = time_range_ms(std::slice::from_ref(&piece), &self.spec.flow.time_column, format)? {
                o.time = Some(o.time.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
            }
            self.sums_out.add(metric_sums(std::slice::from_ref(&piece), self.spec));
            o.writer.write(&piece).await?;
            o.rows += take as u64;
            self.rows_out += take as u64;
            if o.rows >= max {
                self.close().await?;
            }
        }
        Ok(())
    }

    fn start(&mut self, key: OutKey) -> Result<(), Error> {
        let seq = self.seq.entry(key).or_default();
        let part = SubTask::name_part(self.split, key.partition);
        // a time bucket's segments are named by the part of the window it covers
        let named = match (key.bucket, self.spec.flow.time_partitioning()) {
            (Some(start), Some(buckets)) => crate::processor::bucket_part(&buckets, start, self.window),
            _ => self.window,
        };
        let name = crate::processor::output_name(self.spec, &named, &part, *seq);
        *seq += 1;
        let location = format!("{}{name}.parquet", self.prefix);
        let writer = ParallelWriter::try_new(
            BufWriter::with_capacity(self.store.clone(), Path::from(location.as_str()), UPLOAD_PART_BYTES)
                .with_max_concurrency(UPLOAD_PARTS_IN_FLIGHT),
            self.schema.clone(),
            writer_properties(OUTPUT_ROW_GROUP_ROWS)?,
            OUTPUT_ROW_GROUP_ROWS,
            self.threads,
        )?;
        self.open = Some(Open { key, name, location, writer, rows: 0, time: None });
        Ok(())
    }

    async fn close(&mut self) -> Result<(), Error> {
        let Some(o) = self.open.take() else { return Ok(()) };
        o.writer.close().await?;
        let size = (|| r2o_common::store::object_size(&self.store, &o.location))
            .retry(store_backoff())
            .when(Error::is_retryable)
            .await?
            .unwrap_or(0);
        let (start, end) = o.time.unwrap_or((self.window.start_ms, self.window.start_ms));
        self.outputs.push(OutputSegment {
            window_start_ms: self.window.start_ms,
            name: o.name,
            partition: o.key.partition,
            num_rows: o.rows,
            start_time_ms: start,
            end_time_ms: end,
            bytes: bytes::Bytes::new(),
            written: Some((o.location, size)),
        });
        Ok(())
    }
}

/// Splits a sorted batch into runs of one partition and time bucket (the
/// partition and bucket columns dropped: `merge_schema` is the rest); one
/// run of partition -1 and no bucket when the table has neither.
fn partition_runs(batch: &RecordBatch, merge_schema: &SchemaRef) -> Result<Vec<(OutKey, RecordBatch)>, Error> {
    let schema = batch.schema();
    let (p_idx, b_idx) = (schema.index_of(PARTITION_COLUMN).ok(), schema.index_of(TIME_BUCKET_COLUMN).ok());
    if p_idx.is_none() && b_idx.is_none() {
        return Ok(vec![(OutKey { partition: -1, bucket: None }, batch.clone())]);
    }
    let parts = p_idx.map(|i| batch.column(i).as_primitive::<Int32Type>().clone());
    let buckets = b_idx.map(|i| batch.column(i).as_primitive::<Int64Type>().clone());
    let key = |i: usize| OutKey {
        partition: parts.as_ref().map_or(-1, |p| p.value(i)),
        bucket: buckets.as_ref().and_then(|b| b.is_valid(i).then(|| b.value(i))),
    };
    let mut cols = batch.columns().to_vec();
    for i in [b_idx, p_idx].into_iter().flatten() {
        cols.remove(i); // the bucket column comes after the partition column
    }
    let data = RecordBatch::try_new(merge_schema.clone(), cols)?;
    let mut runs = vec![];
    let mut start = 0usize;
    for i in 1..=batch.num_rows() {
        if i == batch.num_rows() || key(i) != key(start) {
            runs.push((key(start), data.slice(start, i - start)));
            start = i;
        }
    }
    Ok(runs)
}

/// Runs one task's windows on the bounded-memory path, writing its outputs
/// under `prefix` (the attempt's staging prefix) in `store`. Blocks the
/// calling thread (call it from a blocking thread); the work runs on the
/// process's stream runtime.
///
/// # Errors
/// [`ProcessError::Data`] naming the segment and column for unreadable or
/// mismatched input, or the store or spill failure; [`ProcessError::Cancelled`].
pub fn process_streaming(
    spec: &TableSpec,
    windows: &[Window],
    inputs: Vec<StreamInput>,
    store: Store,
    prefix: &str,
    settings: &StreamSettings,
    cancel: &CancellationToken,
) -> Result<(Processed, SpillStats), ProcessError> {
    let result = runtime()?.block_on(async {
        tokio::select! {
            r = run_task(spec, windows, inputs, store, prefix, settings, cancel) => r,
            _ = cancel.cancelled() => Err(ProcessError::Cancelled),
        }
    });
    if cancel.is_cancelled() {
        return Err(ProcessError::Cancelled);
    }
    result
}

/// The runtime every attempt on this path runs on: one per process, a
/// worker per core, apart from the minion's own runtime (gRPC, lease
/// keep-alive), so CPU-bound sorting never delays them. One long-lived pool
/// of threads also keeps the allocator's per-thread arenas from growing
/// with every attempt.
fn runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("r2o-stream")
        .enable_all()
        .build()
        .map_err(|e| Error::Segment {
            segment: String::new(),
            problem: format!("cannot start the stream runtime: {e}"),
        })?;
    Ok(RUNTIME.get_or_init(|| rt))
}

async fn run_task(
    spec: &TableSpec,
    windows: &[Window],
    inputs: Vec<StreamInput>,
    store: Store,
    prefix: &str,
    settings: &StreamSettings,
    cancel: &CancellationToken,
) -> Result<(Processed, SpillStats), ProcessError> {
    std::fs::create_dir_all(&settings.spill_dir).map_err(|e| Error::Segment {
        segment: String::new(),
        problem: format!("cannot create the spill directory {}: {e}", settings.spill_dir.display()),
    })?;
    let table_schema = spec.schema.arrow_schema();
    let hash_field = Field::new(ROW_HASH_COLUMN, ArrowType::UInt64, false);
    let hash_key: Option<Vec<usize>> = match spec.flow.merge_type {
        MergeType::Concat => None,
        MergeType::Dedup => Some((0..spec.schema.fields.len()).collect()),
        MergeType::Rollup => Some(
            spec.schema
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.kind != FieldKind::Metric)
                .map(|(i, _)| i)
                .collect(),
        ),
    };
    let row_hash = hash_key.is_some();
    // the table's columns, and the original times of firstWithTime / lastWithTime
    let work_schema = crate::processor::work_schema(spec);
    let mut fields: Vec<Field> = work_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if spec.flow.partitioning.is_some() {
        fields.push(Field::new(PARTITION_COLUMN, ArrowType::Int32, false));
    }
    if spec.flow.partition_bucket_ms.is_some() {
        fields.push(Field::new(TIME_BUCKET_COLUMN, ArrowType::Int64, true));
    }
    if row_hash {
        fields.push(hash_field.clone());
    }
    let sort_schema = Arc::new(ArrowSchema::new(fields));
    let merge_schema = if row_hash {
        let mut fields: Vec<Field> = work_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(hash_field);
        Arc::new(ArrowSchema::new(fields))
    } else {
        work_schema.clone()
    };
    let ctx = Arc::new(Ctx {
        spec: spec.clone(),
        store: store.clone(),
        cancel: cancel.clone(),
        sort_schema,
        merge_schema,
        hash_key,
        table_schema,
        work_schema,
        split: settings.split,
        batch_rows: batch_rows(settings.memory_bytes, spec),
        rounding: spec.flow.rounding(),
    });
    let mut processed = Processed::default();
    let mut spill = SpillStats::default();
    let (mut sums_in, mut sums_out) = (Sums::default(), Sums::default());
    for window in windows {
        let mine: Vec<StreamInput> = inputs
            .iter()
            .filter(|i| i.meta.start_time_ms < window.end_ms && i.meta.end_time_ms >= window.start_ms)
            .cloned()
            .map(|mut i| {
                i.count_null_time = i.count_null_time && window.contains(i.meta.start_time_ms);
                i
            })
            .collect();
        let w = run_window(&ctx, *window, mine, prefix, settings).await?;
        processed.rows_in += w.stats.rows_in;
        processed.rows_out += w.stats.rows_out;
        processed.bytes_in += w.bytes_in;
        processed.row_groups_skipped += w.row_groups_skipped;
        processed.rows_null_time += w.rows_null_time;
        processed.rows_filtered += w.rows_filtered;
        processed.outputs.extend(w.outputs);
        processed.windows.push(w.stats);
        sums_in.merge(w.sums_in);
        sums_out.merge(w.sums_out);
        spill.spill_count += w.spill.spill_count;
        spill.spilled_bytes += w.spill.spilled_bytes;
    }
    processed.metric_sums = crate::processor::finish_sums(spec, sums_in, sums_out);
    Ok((processed, spill))
}

/// The smallest sort pool, bytes (2 MiB): room for the sort to hold and
/// merge a few batches of wide rows (a batch has at least 128 rows, and a
/// row of sketches can take kilobytes). A smaller share, from a tiny
/// budget or `segmentMapperFileSizeThresholdInBytes`, is raised to it:
/// below it every sort failed with DataFusion's "Resources exhausted".
pub const MIN_SORT_POOL_BYTES: usize = 2 << 20;

/// A DataFusion context for one sorter: a spilling pool of `memory_bytes`
/// (at least [`MIN_SORT_POOL_BYTES`]) and spill files under `spill_dir`.
fn sort_context(
    memory_bytes: usize,
    spill_dir: &std::path::Path,
    batch_rows: usize,
) -> Result<Arc<TaskContext>, ProcessError> {
    let memory_bytes = memory_bytes.max(MIN_SORT_POOL_BYTES);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_bytes)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![spill_dir.to_path_buf()])),
        )
        .build_arc()
        .map_err(from_df)?;
    let mut config = SessionConfig::new().with_batch_size(batch_rows).with_target_partitions(1);
    // the sort's reservation for merging its spilled runs back (the merge
    // reads a batch of every run at once): half of a small pool, up to 16 MiB,
    // and at least a quarter of a large one
    config.options_mut().execution.sort_spill_reservation_bytes =
        (memory_bytes / 2).min(16 << 20).max(memory_bytes / 4);
    Ok(Arc::new(TaskContext::default().with_runtime(runtime).with_session_config(config)))
}

struct WindowRun {
    outputs: Vec<OutputSegment>,
    stats: WindowStats,
    bytes_in: u64,
    row_groups_skipped: u64,
    rows_null_time: u64,
    rows_filtered: u64,
    sums_in: Sums,
    sums_out: Sums,
    spill: SpillStats,
}

async fn run_window(
    ctx: &Arc<Ctx>,
    window: Window,
    inputs: Vec<StreamInput>,
    prefix: &str,
    settings: &StreamSettings,
) -> Result<WindowRun, ProcessError> {
    let spec = &ctx.spec;
    let stats = Arc::new(Mutex::new(SourceStats::default()));
    let parts = settings.threads.clamp(1, inputs.len().max(1));
    let mut groups: Vec<Vec<StreamInput>> = vec![vec![]; parts];
    for (k, i) in inputs.into_iter().enumerate() {
        groups[k % parts].push(i);
    }
    // one producer task per source partition; a bounded channel each is the backpressure
    let mut streams: Vec<Arc<dyn PartitionStream>> = vec![];
    let mut producers = vec![];
    for group in groups {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, DataFusionError>>(2);
        let (c, s) = (ctx.clone(), stats.clone());
        producers.push(tokio::spawn(async move {
            if let Err(e) = c.read_inputs(window, group, &s, &tx).await {
                let _ = tx.send(Err(df_err(e))).await;
            }
        }));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        streams.push(Arc::new(OneShot {
            schema: ctx.sort_schema.clone(),
            stream: Mutex::new(Some(Box::pin(RecordBatchStreamAdapter::new(ctx.sort_schema.clone(), stream)))),
        }));
    }
    // a sorter per source partition, each alone in a pool of its share of
    // the memory (two sorters in one pool race for the memory each frees to
    // merge its batches)
    let sort_ctxs = (0..parts)
        .map(|_| sort_context(settings.memory_bytes / parts, &settings.spill_dir, ctx.batch_rows))
        .collect::<Result<Vec<_>, ProcessError>>()?;
    let key = ctx.sort_key();
    let started = std::time::Instant::now();
    let mut sorts: Vec<Arc<SortExec>> = vec![];
    let mut sorted = if key.is_empty() {
        let source = StreamingTableExec::try_new(ctx.sort_schema.clone(), streams, None, vec![], false, None)
            .map_err(from_df)?;
        execute_stream(Arc::new(source), sort_ctxs[0].clone()).map_err(from_df)?
    } else {
        let exprs = key
            .iter()
            .map(|k| {
                Ok(PhysicalSortExpr::new(
                    col(k, &ctx.sort_schema)?,
                    arrow::compute::SortOptions { descending: false, nulls_first: false },
                ))
            })
            .collect::<Result<Vec<_>, DataFusionError>>()
            .map_err(from_df)?;
        let ordering = LexOrdering::new(exprs).expect("a non-empty sort key");
        // a sorter per source partition, each in its own context: decoding,
        // sorting and spilling run on every core at once
        let mut runs: Vec<Arc<dyn PartitionStream>> = vec![];
        for (stream, task_ctx) in streams.into_iter().zip(&sort_ctxs) {
            let source = StreamingTableExec::try_new(ctx.sort_schema.clone(), vec![stream], None, vec![], false, None)
                .map_err(from_df)?;
            let sort = Arc::new(SortExec::new(ordering.clone(), Arc::new(source)));
            sorts.push(sort.clone());
            let run = execute_stream(sort, task_ctx.clone()).map_err(from_df)?;
            runs.push(Arc::new(OneShot { schema: ctx.sort_schema.clone(), stream: Mutex::new(Some(run)) }));
        }
        if runs.len() == 1 {
            runs[0].execute(sort_ctxs[0].clone())
        } else {
            // their sorted streams merged into one; the merge holds a batch or
            // two of each stream, outside the sorters' pools
            let source =
                StreamingTableExec::try_new(ctx.sort_schema.clone(), runs, None, vec![ordering.clone()], false, None)
                    .map_err(from_df)?;
            let merge = SortPreservingMergeExec::new(ordering, Arc::new(source));
            let config = SessionConfig::new().with_batch_size(ctx.batch_rows);
            execute_stream(Arc::new(merge), Arc::new(TaskContext::default().with_session_config(config)))
                .map_err(from_df)?
        }
    };
    // the sort's merge runs on a task of its own, the merge and the encoding
    // of the outputs here: the tail after the last input is read uses two cores
    let (merge_tx, mut rows) = tokio::sync::mpsc::channel::<Result<RecordBatch, DataFusionError>>(2);
    // aborted on every way out of this function, the early ones included
    let merging = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(b) = sorted.next().await {
            if merge_tx.send(b).await.is_err() {
                break;
            }
        }
    }));
    let mut first_sorted: Option<std::time::Duration> = None;
    let mut merger = Merger {
        spec,
        schema: ctx.merge_schema.clone(),
        table_schema: ctx.table_schema.clone(),
        work_schema: ctx.work_schema.clone(),
        hash_key: ctx.hash_key.clone(),
        partition: None,
        carry: None,
    };
    let mut sink = Sink {
        spec,
        store: ctx.store.clone(),
        prefix: prefix.to_string(),
        window,
        schema: ctx.table_schema.clone(),
        open: None,
        seq: BTreeMap::new(),
        split: ctx.split,
        outputs: vec![],
        sums_out: Sums::default(),
        rows_out: 0,
        threads: settings.threads,
    };
    let mut merged = vec![];
    while let Some(batch) = rows.recv().await {
        if ctx.cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        let batch = batch.map_err(from_df)?;
        first_sorted.get_or_insert_with(|| started.elapsed());
        for (partition, run) in partition_runs(&batch, &ctx.merge_schema)? {
            merger.push(partition, run, &mut merged)?;
        }
        for (partition, b) in merged.drain(..) {
            sink.write(partition, b).await?;
        }
    }
    merger.flush(&mut merged)?;
    for (partition, b) in merged.drain(..) {
        sink.write(partition, b).await?;
    }
    sink.close().await?;
    let _ = merging.await;
    for p in producers {
        let _ = p.await;
    }
    tracing::debug!(
        window_start_ms = window.start_ms,
        read_and_sort_ms = first_sorted.unwrap_or_default().as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "window streamed"
    );
    let mut spill = SpillStats::default();
    for m in sorts.iter().filter_map(|s| s.metrics()) {
        spill.spill_count += m.spill_count().unwrap_or(0);
        spill.spilled_bytes += m.spilled_bytes().unwrap_or(0);
    }
    let src = std::mem::take(&mut *stats.lock().unwrap_or_else(|p| p.into_inner()));
    let stats = WindowStats {
        start_ms: window.start_ms,
        end_ms: window.end_ms,
        rows_in: src.rows_in,
        rows_out: sink.rows_out,
        outputs: sink.outputs.len() as u64,
    };
    Ok(WindowRun {
        outputs: sink.outputs,
        stats,
        bytes_in: src.bytes_in,
        row_groups_skipped: src.row_groups_skipped,
        rows_null_time: src.rows_null_time,
        rows_filtered: src.rows_filtered,
        sums_in: src.sums_in,
        sums_out: sink.sums_out,
        spill,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{process, Input};
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::util::pretty::pretty_format_batches;
    use r2o_common::columnar::{read_segment, write_parquet_with, REALTIME_ROW_GROUP_ROWS};
    use r2o_common::meta::SegmentStatus;
    use serde_json::json;

    const H: i64 = 3_600_000;

    fn spec(merge: &str, partitioned: bool) -> TableSpec {
        spec_with(merge, partitioned, json!({}))
    }

    /// [`spec`] with `extra` keys in the task block.
    fn spec_with(merge: &str, partitioned: bool, extra: serde_json::Value) -> TableSpec {
        let mut index = json!({"sortedColumn": ["carrier"]});
        if partitioned {
            index["segmentPartitionConfig"] =
                json!({"columnPartitionMap": {"carrier": {"functionName": "Murmur", "numPartitions": 3}}});
        }
        let mut task = json!({"bucketTimePeriod": "1d", "bufferTimePeriod": "1h", "roundBucketTimePeriod": "1m",
                              "mergeType": merge, "maxNumRecordsPerSegment": "7000", "delay.aggregationType": "max"});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            task[k] = v;
        }
        TableSpec::from_json(
            json!({"tableName": "f", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                   "tableIndexConfig": index,
                   "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}}),
            json!({"dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}, {"name": "origin", "dataType": "STRING"}],
                   "metricFieldSpecs": [{"name": "delay", "dataType": "DOUBLE"}, {"name": "n", "dataType": "LONG"}],
                   "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP"}]}),
        )
        .unwrap()
    }

    /// `segments` segments of `rows` rows each inside day 0 (and a few rows of
    /// day 1, outside the window), many of them equal or in one rollup group.
    async fn inputs(spec: &TableSpec, store: &Store, segments: usize, rows: usize) -> Vec<(SegmentMeta, bytes::Bytes)> {
        let mut out = vec![];
        let mut x: u64 = 7;
        for s in 0..segments {
            let mut carrier = vec![];
            let mut origin = vec![];
            let mut delay = vec![];
            let mut n = vec![];
            let mut ts = vec![];
            for r in 0..rows {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = (x >> 33) as i64;
                carrier.push(["AA", "DL", "UA", "WN", "B6"][(v % 5) as usize].to_string());
                origin.push(format!("o{}", (v / 5) % 10));
                delay.push(((v / 200) % 7) as f64);
                n.push(1i64);
                // day 0, in 96 distinct minutes after rounding; 1 row in 50 on day 1
                let t = if r % 50 == 49 { 24 * H + 5 } else { (v / 1400) % 96 * 900_000 + (v % 60_000) };
                ts.push(t);
            }
            let batch = RecordBatch::try_new(
                spec.schema.arrow_schema(),
                vec![
                    Arc::new(StringArray::from(carrier)),
                    Arc::new(StringArray::from(origin)),
                    Arc::new(Float64Array::from(delay)),
                    Arc::new(Int64Array::from(n)),
                    Arc::new(TimestampMillisecondArray::from(ts)),
                ],
            )
            .unwrap();
            out.push(put_segment(spec, store, s, batch).await);
        }
        out
    }

    /// Writes `batch` to `store` as the DONE REALTIME segment `s<s>`; its
    /// metadata (time range from the `ts` column) and bytes.
    async fn put_segment(spec: &TableSpec, store: &Store, s: usize, batch: RecordBatch) -> (SegmentMeta, bytes::Bytes) {
        let ts = batch.column_by_name("ts").unwrap().as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let (lo, hi) = (ts.values().iter().min().copied(), ts.values().iter().max().copied());
        let bytes =
            write_parquet_with(&spec.schema.arrow_schema(), std::slice::from_ref(&batch), REALTIME_ROW_GROUP_ROWS)
                .unwrap();
        let location = format!("realtime/s{s}.parquet");
        r2o_common::store::put_bytes(store, &location, bytes.clone()).await.unwrap();
        let meta = SegmentMeta {
            segment_name: format!("s{s}"),
            table_name: "f_REALTIME".into(),
            status: SegmentStatus::Done,
            start_time_ms: lo.unwrap(),
            end_time_ms: hi.unwrap(),
            total_docs: batch.num_rows() as u64,
            size_bytes: bytes.len() as u64,
            schema_fingerprint: spec.schema.fingerprint(),
            location,
            partition: 0,
            ..Default::default()
        };
        (meta, bytes)
    }

    /// The tests' settings: a 2 MiB sort budget, two threads, spilling under `spill_dir`.
    fn small_budget(spill_dir: std::path::PathBuf) -> StreamSettings {
        StreamSettings { memory_bytes: 2 << 20, spill_dir, threads: 2, split: None }
    }

    fn stream_inputs(segs: &[(SegmentMeta, bytes::Bytes)]) -> Vec<StreamInput> {
        segs.iter().map(|(m, _)| StreamInput { meta: m.clone(), count_null_time: true }).collect()
    }

    /// One window on both paths: bounded under `settings` (its outputs
    /// written to `store` under `out/`), and in memory on two threads.
    async fn both_paths(
        spec: &TableSpec,
        store: &Store,
        segs: &[(SegmentMeta, bytes::Bytes)],
        window: Window,
        settings: StreamSettings,
    ) -> ((Processed, SpillStats), Processed) {
        let (s2, st2, si) = (spec.clone(), store.clone(), stream_inputs(segs));
        let streamed = tokio::task::spawn_blocking(move || {
            process_streaming(&s2, &[window], si, st2, "out/", &settings, &CancellationToken::new())
        })
        .await
        .unwrap()
        .unwrap();
        let mem_inputs: Vec<Input> = segs
            .iter()
            .map(|(m, b)| Input {
                name: m.segment_name.clone(),
                bytes: b.clone(),
                count_null_time: true,
                start_ms: m.start_time_ms,
                schema_version: SchemaVersion::Current,
            })
            .collect();
        (streamed, process(spec, &[window], mem_inputs, &CancellationToken::new(), 2).unwrap())
    }

    /// The rows of the in-memory path's outputs (encoded, not written).
    fn read_in_memory(outputs: &[OutputSegment], spec: &TableSpec) -> Vec<RecordBatch> {
        outputs.iter().flat_map(|o| read_segment(&o.name, o.bytes.clone(), &spec.schema, 1 << 20).unwrap()).collect()
    }

    fn files_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
        })
    }

    fn canonical(batches: &[RecordBatch], spec: &TableSpec) -> String {
        let schema = spec.schema.arrow_schema();
        let all = concat_batches(&schema, batches).unwrap();
        let cols: Vec<&str> = spec.schema.fields.iter().map(|f| f.name.as_str()).collect();
        let sorted = crate::processor::sort_by(&schema, &[all], &cols).unwrap();
        pretty_format_batches(&[sorted]).unwrap().to_string()
    }

    async fn read_outputs(store: &Store, outputs: &[OutputSegment], spec: &TableSpec) -> Vec<RecordBatch> {
        let mut out = vec![];
        for o in outputs {
            let (location, size) = o.written.clone().expect("written by the streaming path");
            let bytes = r2o_common::store::get_bytes(store, &location).await.unwrap();
            assert_eq!(bytes.len() as u64, size);
            let batches = read_segment(&o.name, bytes, &spec.schema, 1 << 20).unwrap();
            assert_eq!(batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(), o.num_rows);
            assert!(o.num_rows <= 7_000, "cut at maxNumRecordsPerSegment");
            // each output sorted by (carrier, ts)
            let sorted = crate::processor::sort_by(&spec.schema.arrow_schema(), &batches, &["carrier", "ts"]).unwrap();
            let again = concat_batches(&spec.schema.arrow_schema(), &batches).unwrap();
            assert_eq!(sorted.column(0), again.column(0), "{} is sorted by carrier", o.name);
            out.extend(batches);
        }
        out
    }

    /// The bounded-memory path under a sort budget far below the window's
    /// rows spills, and gives exactly what the in-memory path gives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_past_its_budget_spills_and_stays_exact() {
        for (merge, partitioned) in [("rollup", false), ("dedup", true), ("concat", true), ("rollup", true)] {
            let spec = spec(merge, partitioned);
            let store: Store = Arc::new(object_store::memory::InMemory::new());
            let segs = inputs(&spec, &store, 12, 20_000).await;
            let window = Window { start_ms: 0, end_ms: 24 * H };
            let spill_dir = tempfile::tempdir().unwrap();
            let settings = small_budget(spill_dir.path().join("attempt"));
            let ((streamed, spill), in_memory) = both_paths(&spec, &store, &segs, window, settings).await;
            assert!(spill.spill_count > 0 && spill.spilled_bytes > 0, "{merge}: the sort spilled: {spill:?}");
            assert_eq!(streamed.rows_in, in_memory.rows_in, "{merge}");
            assert_eq!(streamed.rows_in, 12 * 20_000 - 12 * 400, "{merge}: the day-1 rows are outside");
            assert_eq!(streamed.rows_out, in_memory.rows_out, "{merge}");
            if merge != "concat" {
                assert!(streamed.rows_out < streamed.rows_in / 2, "{merge}: the data has groups and duplicates");
            }
            assert_eq!(streamed.metric_sums, in_memory.metric_sums, "{merge}");
            assert_eq!(streamed.windows, in_memory.windows, "{merge}");
            let mut names: Vec<&str> = streamed.outputs.iter().map(|o| o.name.as_str()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), streamed.outputs.len(), "{merge}: output names are unique");
            let got = read_outputs(&store, &streamed.outputs, &spec).await;
            let want = read_in_memory(&in_memory.outputs, &spec);
            assert_eq!(canonical(&got, &spec), canonical(&want, &spec), "{merge}: the same rows");
            // the same partitions: every output's rows belong to its partition
            let parts = |outs: &[OutputSegment]| {
                let mut p: BTreeMap<i32, u64> = BTreeMap::new();
                for o in outs {
                    *p.entry(o.partition).or_default() += o.num_rows;
                }
                p
            };
            assert_eq!(parts(&streamed.outputs), parts(&in_memory.outputs), "{merge}: rows per partition");
            assert_eq!(files_under(&spill_dir.path().join("attempt")), 0, "{merge}: spill files are removed");
        }
    }

    /// `partitionBucketTimePeriod` (6 h in a 1 d window): both paths cut
    /// each Pinot partition's outputs by time bucket, name each by the
    /// bucket's part of the window, and hold the same rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_buckets_cut_outputs_by_time_on_both_paths() {
        let spec = spec_with("rollup", true, json!({"partitionBucketTimePeriod": "6h"}));
        let store: Store = Arc::new(object_store::memory::InMemory::new());
        let segs = inputs(&spec, &store, 4, 10_000).await;
        let window = Window { start_ms: 0, end_ms: 24 * H };
        let spill_dir = tempfile::tempdir().unwrap();
        let settings = small_budget(spill_dir.path().join("attempt"));
        let ((streamed, _), in_memory) = both_paths(&spec, &store, &segs, window, settings).await;
        for (path, outs) in [("bounded", &streamed.outputs), ("in memory", &in_memory.outputs)] {
            let mut buckets: BTreeMap<(i32, i64), u64> = BTreeMap::new();
            for o in outs {
                // f_<bucketStart>_<bucketEnd>_<partition>_<seq>: every row inside its bucket
                let parts: Vec<&str> = o.name.split('_').collect();
                let (start, end): (i64, i64) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
                assert_eq!(end - start, 6 * H, "{path}: {}", o.name);
                assert!(
                    o.start_time_ms >= start && o.end_time_ms < end,
                    "{path}: {} holds {:?}",
                    o.name,
                    (o.start_time_ms, o.end_time_ms)
                );
                *buckets.entry((o.partition, start)).or_default() += o.num_rows;
            }
            assert_eq!(buckets.len(), 3 * 4, "{path}: 3 partitions x 4 buckets of 6 h: {buckets:?}");
        }
        let rows = |outs: &[OutputSegment]| {
            let mut v: Vec<(i32, String, u64)> =
                outs.iter().map(|o| (o.partition, o.name.clone(), o.num_rows)).collect();
            v.sort();
            v
        };
        assert_eq!(rows(&streamed.outputs), rows(&in_memory.outputs), "the same outputs on both paths");
        let got = read_outputs(&store, &streamed.outputs, &spec).await;
        let want = read_in_memory(&in_memory.outputs, &spec);
        assert_eq!(canonical(&got, &spec), canonical(&want, &spec), "the same rows");
    }

    /// `firstWithTime` and `lastWithTime` pick each group's value at its
    /// earliest and latest original (pre-rounding) time on both paths, the
    /// bounded one spilling and merging partial groups across batches; each
    /// output value is checked against the rows themselves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_and_last_with_time_pick_by_original_time_on_both_paths() {
        let spec = TableSpec::from_json(
            json!({"tableName": "f", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                   "tableIndexConfig": {"sortedColumn": ["carrier"]},
                   "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
                       "bucketTimePeriod": "1d", "bufferTimePeriod": "1h", "roundBucketTimePeriod": "1h",
                       "mergeType": "rollup", "delay.aggregationType": "lastWithTime",
                       "origin.aggregationType": "firstWithTime"}}}}),
            json!({"dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
                   "metricFieldSpecs": [{"name": "delay", "dataType": "DOUBLE"}, {"name": "origin", "dataType": "BYTES"},
                                        {"name": "n", "dataType": "LONG"}],
                   "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP"}]}),
        )
        .unwrap();
        let store: Store = Arc::new(object_store::memory::InMemory::new());
        // 6 segments of 20,000 rows; every time distinct and shuffled over the day
        let mut segs = vec![];
        // (carrier, hour) -> ((latest time, its delay), (earliest time, its origin), rows)
        type Picks = ((i64, f64), (i64, Vec<u8>), i64);
        let mut want: BTreeMap<(String, i64), Picks> = BTreeMap::new();
        for s in 0..6i64 {
            let (mut carrier, mut delay, mut origin, mut ts) = (vec![], vec![], vec![], vec![]);
            for r in 0..20_000i64 {
                let g = s * 20_000 + r;
                let t = g * 7_919_993 % (24 * H);
                let c = ["AA", "DL", "UA"][(g % 3) as usize].to_string();
                let d = (g % 101) as f64;
                let o = format!("o{}", g % 13).into_bytes();
                let e = want.entry((c.clone(), t / H * H)).or_insert(((i64::MIN, 0.0), (i64::MAX, vec![]), 0));
                if t > e.0 .0 {
                    e.0 = (t, d);
                }
                if t < e.1 .0 {
                    e.1 = (t, o.clone());
                }
                e.2 += 1;
                carrier.push(c);
                delay.push(d);
                origin.push(o);
                ts.push(t);
            }
            let batch = RecordBatch::try_new(
                spec.schema.arrow_schema(),
                vec![
                    Arc::new(StringArray::from(carrier)),
                    Arc::new(Float64Array::from(delay)),
                    Arc::new(arrow::array::BinaryArray::from_iter_values(origin)),
                    Arc::new(Int64Array::from(vec![1i64; 20_000])),
                    Arc::new(TimestampMillisecondArray::from(ts)),
                ],
            )
            .unwrap();
            segs.push(put_segment(&spec, &store, s as usize, batch).await);
        }
        let window = Window { start_ms: 0, end_ms: 24 * H };
        let spill_dir = tempfile::tempdir().unwrap();
        let settings =
            StreamSettings { memory_bytes: 2 << 20, spill_dir: spill_dir.path().join("a"), threads: 2, split: None };
        let ((streamed, spill), in_memory) = both_paths(&spec, &store, &segs, window, settings).await;
        assert!(spill.spill_count > 0, "the sort spilled: {spill:?}");
        let mut streamed_rows = vec![];
        for o in &streamed.outputs {
            let (location, _) = o.written.clone().unwrap();
            let bytes = r2o_common::store::get_bytes(&store, &location).await.unwrap();
            streamed_rows.extend(read_segment(&o.name, bytes, &spec.schema, 1 << 20).unwrap());
        }
        let memory_rows = read_in_memory(&in_memory.outputs, &spec);
        for (path, batches) in [("bounded", streamed_rows), ("in memory", memory_rows)] {
            let mut seen = 0;
            for b in &batches {
                assert_eq!(b.num_columns(), 5, "{path}: the hidden time columns are not written");
                let (c, d, o, n, t) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_primitive::<arrow::datatypes::Float64Type>(),
                    b.column(2).as_binary::<i32>(),
                    b.column(3).as_primitive::<arrow::datatypes::Int64Type>(),
                    b.column(4).as_primitive::<arrow::datatypes::TimestampMillisecondType>(),
                );
                for i in 0..b.num_rows() {
                    let w = &want[&(c.value(i).to_string(), t.value(i))];
                    assert_eq!(d.value(i), w.0 .1, "{path}: lastWithTime of {} at {}", c.value(i), t.value(i));
                    assert_eq!(o.value(i), &w.1 .1[..], "{path}: firstWithTime of {} at {}", c.value(i), t.value(i));
                    assert_eq!(n.value(i), w.2, "{path}: rows of the group");
                    seen += 1;
                }
            }
            assert_eq!(seen, want.len(), "{path}: one row per carrier and hour");
        }
    }

    /// A transient read failure in the middle of a window (every input's
    /// first read fails) is retried, not the end of the attempt: the run
    /// succeeds with the rows a clean store gives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_read_failures_mid_window_are_retried() {
        let spec = spec("dedup", true);
        let clean: Store = Arc::new(object_store::memory::InMemory::new());
        let segs = inputs(&spec, &clean, 6, 5_000).await;
        let spec_faults = r2o_common::store::FaultSpec::parse("first_read_fails=true").unwrap();
        let flaky = Arc::new(r2o_common::store::FaultyStore::new(clean.clone(), spec_faults));
        let mut outputs = vec![];
        for (store, prefix) in [(clean.clone(), "clean/"), (flaky.clone() as Store, "flaky/")] {
            let spill_dir = tempfile::tempdir().unwrap();
            let settings = small_budget(spill_dir.path().join("attempt"));
            let stream_inputs = stream_inputs(&segs);
            let s2 = spec.clone();
            let (processed, _) = tokio::task::spawn_blocking(move || {
                let window = Window { start_ms: 0, end_ms: 24 * H };
                process_streaming(&s2, &[window], stream_inputs, store, prefix, &settings, &CancellationToken::new())
            })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{prefix}: {e}"));
            outputs.push(read_outputs(&clean, &processed.outputs, &spec).await);
        }
        let injected = flaky.injected();
        assert!(injected >= 6, "every input's first read failed: {injected}");
        assert_eq!(canonical(&outputs[1], &spec), canonical(&outputs[0], &spec), "the same rows");
    }

    /// The staged-data checks hold on this path too: a NaN metric fails the
    /// window, naming the segment, the check and the column.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nan_metric_fails_the_window_on_this_path_too() {
        let spec = spec("concat", false);
        let store: Store = Arc::new(object_store::memory::InMemory::new());
        let mut segs = inputs(&spec, &store, 3, 2_000).await;
        let batches = read_segment("s1", segs[1].1.clone(), &spec.schema, 1 << 20).unwrap();
        let b = concat_batches(&spec.schema.arrow_schema(), &batches).unwrap();
        let mut delay: Vec<f64> = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec();
        delay[0] = f64::NAN; // row 0 lies in day 0, the window
        let mut cols = b.columns().to_vec();
        cols[2] = Arc::new(Float64Array::from(delay));
        let b = RecordBatch::try_new(b.schema(), cols).unwrap();
        let bytes = write_parquet_with(&spec.schema.arrow_schema(), &[b], REALTIME_ROW_GROUP_ROWS).unwrap();
        r2o_common::store::put_bytes(&store, &segs[1].0.location, bytes.clone()).await.unwrap();
        segs[1].0.size_bytes = bytes.len() as u64;
        let spill_dir = tempfile::tempdir().unwrap();
        let settings = small_budget(spill_dir.path().join("attempt"));
        let stream_inputs = stream_inputs(&segs);
        let s2 = spec.clone();
        let run = tokio::task::spawn_blocking(move || {
            let window = Window { start_ms: 0, end_ms: 24 * H };
            process_streaming(&s2, &[window], stream_inputs, store, "out/", &settings, &CancellationToken::new())
        })
        .await
        .unwrap();
        let e = match run {
            Ok(_) => panic!("a NaN metric was moved"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("NaN") && e.contains("'delay'") && e.contains("s1"), "{e}");
    }

    /// Cancelling stops the run promptly and reports it as cancelled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_stops_the_work() {
        let spec = spec("rollup", false);
        let store: Store = Arc::new(object_store::memory::InMemory::new());
        let segs = inputs(&spec, &store, 40, 20_000).await;
        let spill_dir = tempfile::tempdir().unwrap();
        let settings = small_budget(spill_dir.path().to_path_buf());
        let cancel = CancellationToken::new();
        let stream_inputs = stream_inputs(&segs);
        let (c2, st2) = (cancel.clone(), store.clone());
        let run = tokio::task::spawn_blocking(move || {
            let window = Window { start_ms: 0, end_ms: 24 * H };
            process_streaming(&spec, &[window], stream_inputs, st2, "out/", &settings, &c2)
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        cancel.cancel();
        let r = run.await.unwrap();
        assert!(matches!(r, Err(ProcessError::Cancelled)), "{:?}", r.map(|(p, s)| (p.rows_out, s)));
    }

    /// Rows sorted by (carrier, ts) only, with a row hash over the carrier
    /// alone (as if every key of one carrier collided), in batches of 3 rows:
    /// the merge falls back to the exact one and still gives the hash-table
    /// rollup and dedup.
    #[test]
    fn keys_sharing_a_hash_still_merge_exactly() {
        for merge in ["rollup", "dedup"] {
            let spec = spec(merge, false);
            let table = spec.schema.arrow_schema();
            let carriers = ["AA", "AA", "AA", "AA", "AA", "AA", "UA", "UA", "UA", "UA"];
            let origins = ["JFK", "SFO", "JFK", "SFO", "JFK", "JFK", "SFO", "SFO", "LAX", "SFO"];
            let delays = [1.0, 2.0, 1.0, 2.0, 5.0, 1.0, 3.0, 3.0, 4.0, 3.0];
            let rows = RecordBatch::try_new(
                table.clone(),
                vec![
                    Arc::new(StringArray::from(carriers.to_vec())),
                    Arc::new(StringArray::from(origins.to_vec())),
                    Arc::new(Float64Array::from(delays.to_vec())),
                    Arc::new(Int64Array::from(vec![1i64; 10])),
                    Arc::new(TimestampMillisecondArray::from(vec![H; 10])),
                ],
            )
            .unwrap();
            let want = match merge {
                "dedup" => crate::processor::dedup(std::slice::from_ref(&rows)).unwrap(),
                _ => crate::processor::rollup(std::slice::from_ref(&rows), &spec.schema, &spec.flow.aggregations)
                    .unwrap(),
            };
            let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(ROW_HASH_COLUMN, ArrowType::UInt64, false));
            let schema = Arc::new(ArrowSchema::new(fields));
            let mut cols = rows.columns().to_vec();
            cols.push(Arc::new(row_hashes(&rows, &[0]).unwrap()));
            let hashed = RecordBatch::try_new(schema.clone(), cols).unwrap();
            let mut merger = Merger {
                spec: &spec,
                schema,
                table_schema: table.clone(),
                work_schema: table.clone(),
                hash_key: Some(vec![0]),
                partition: None,
                carry: None,
            };
            let mut out = vec![];
            for start in (0..10).step_by(3) {
                merger
                    .push(OutKey { partition: -1, bucket: None }, hashed.slice(start, 3.min(10 - start)), &mut out)
                    .unwrap();
            }
            merger.flush(&mut out).unwrap();
            let got: Vec<RecordBatch> = out.into_iter().map(|(_, b)| b).collect();
            let n: usize = got.iter().map(|b| b.num_rows()).sum();
            assert_eq!(n, if merge == "dedup" { 5 } else { 4 }, "{merge}");
            assert_eq!(canonical(&got, &spec), canonical(&want, &spec), "{merge}");
        }
    }
}
