//! The segment processor: read -> filter -> round -> partition -> merge ->
//! sort -> cut -> write, on Arrow batches end to end. Each stage is a
//! function over batches, tested on its own; [`process`] chains them for
//! one task: its inputs are read once, their rows split by window, and the
//! windows processed in parallel, each into its own OFFLINE segments. It is
//! synchronous and CPU-bound: callers run it on a blocking thread, with the
//! input bytes already downloaded.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch,
};
use arrow::compute::{
    cast, concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn, SortOptions,
};
use arrow::datatypes::{DataType as ArrowType, Float32Type, Float64Type, Int32Type, Int64Type, Schema as ArrowSchema};
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use r2o_common::columnar::{check_rows, read_segment_in, time_ms, time_range_ms, write_parquet, TimeFilter};
use r2o_common::config::{AggregationType, MergeType, TableSpec};
use r2o_common::schema::{DataType, FieldKind, Schema, TimeFormat};
use r2o_common::window::{floor_to_bucket, Window};
use r2o_common::Error;

use crate::partition::partition_ids;

/// Rows per decoded batch.
pub const BATCH_ROWS: usize = 64 * 1024;

/// One output segment, encoded and ready to stage.
#[derive(Debug, Clone)]
pub struct OutputSegment {
    /// Start of its window, epoch ms.
    pub window_start_ms: i64,
    /// Segment name: `<raw>_<windowStartMs>_<windowEndMs>_<partition|all>_<seq>`.
    pub name: String,
    /// Data partition, -1 when the table is not partitioned.
    pub partition: i32,
    /// Rows.
    pub num_rows: u64,
    /// Smallest time value, epoch ms.
    pub start_time_ms: i64,
    /// Largest time value, epoch ms (inclusive).
    pub end_time_ms: i64,
    /// Zstd Parquet bytes (empty when `written`).
    pub bytes: Bytes,
    /// Where the bounded-memory path already wrote it, and its size in
    /// bytes (`None`: the caller uploads `bytes`).
    pub written: Option<(String, u64)>,
}

/// What one task produced.
#[derive(Debug, Clone, Default)]
pub struct Processed {
    /// Output segments.
    pub outputs: Vec<OutputSegment>,
    /// Rows inside the window read from the inputs (that `offloadPredicate`
    /// keeps, when the table has one).
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Input bytes read.
    pub bytes_in: u64,
    /// Input row groups skipped by their time statistics (no row in the window).
    pub row_groups_skipped: u64,
    /// Rows of the inputs marked `count_null_time` whose time value is NULL
    /// (they belong to no window; counted once, by the window holding the
    /// segment's start).
    pub rows_null_time: u64,
    /// Rows inside the windows that the table's `offloadPredicate` does not
    /// keep (not moved, not in `rows_in`); for a hash split, counted by its
    /// first sub-task alone.
    pub rows_filtered: u64,
    /// Per sum-aggregated metric: sums over the input rows in the windows and
    /// over the output rows, for the controller's check.
    pub metric_sums: BTreeMap<String, MetricSums>,
    /// Per window of the task, in order.
    pub windows: Vec<r2o_common::meta::WindowStats>,
}

/// Sums of one metric in and out (see the controller's validation).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricSums {
    /// INT / LONG: wrapping sum in the column's width (sign-extended) of the inputs.
    pub int_in: i64,
    /// INT / LONG: the same over the outputs.
    pub int_out: i64,
    /// FLOAT / DOUBLE: f64 sum of the inputs.
    pub float_in: f64,
    /// FLOAT / DOUBLE: f64 sum of the outputs.
    pub float_out: f64,
    /// FLOAT / DOUBLE: f64 sum of the inputs' absolute values.
    pub float_abs_in: f64,
}

/// One input of a task: a REALTIME segment's bytes.
#[derive(Debug, Clone)]
pub struct Input {
    /// Segment name.
    pub name: String,
    /// Parquet bytes.
    pub bytes: Bytes,
    /// Count this segment's NULL-time rows in [`Processed::rows_null_time`]
    /// (set for the one window that holds the segment's start).
    pub count_null_time: bool,
    /// The segment's registered start time, epoch ms: inputs are read in
    /// this order, and a window is processed (and its rows freed) as soon as
    /// no input still to be read can hold rows of it.
    pub start_ms: i64,
    /// The schema version it was registered under (older: columns added
    /// since read as their `defaultNullValue`).
    pub schema_version: r2o_common::columnar::SchemaVersion,
}

/// Why processing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The attempt was cancelled (lease lost, timeout, shutdown).
    #[error("cancelled")]
    Cancelled,
    /// Bad data or a kernel failure.
    #[error(transparent)]
    Data(#[from] Error),
}

impl From<arrow::error::ArrowError> for ProcessError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ProcessError::Data(Error::Arrow(e))
    }
}

/// Stage 2: keeps the rows whose time is in `[window.start_ms, window.end_ms)`.
pub fn filter_window(
    batch: &RecordBatch,
    time_column: &str,
    format: TimeFormat,
    window: Window,
) -> Result<RecordBatch, Error> {
    let col = batch.column_by_name(time_column).ok_or_else(|| Error::Segment {
        segment: String::new(),
        problem: format!("time column '{time_column}' is missing"),
    })?;
    let ms = time_ms(col, format)?;
    let mask: BooleanArray = ms.iter().map(|t| Some(t.is_some_and(|t| window.contains(t)))).collect();
    Ok(filter_record_batch(batch, &mask)?)
}

/// Stage 3: rounds the time column down to the start of its `rounding`
/// bucket (Pinot's `roundBucketTimePeriod`; local days or hours with
/// `bucketTimeZone`), in the column's own unit and type.
pub fn round_time(
    batch: &RecordBatch,
    time_column: &str,
    format: TimeFormat,
    rounding: &r2o_common::window::Bucketing,
) -> Result<RecordBatch, Error> {
    let idx = batch.schema().index_of(time_column)?;
    let col = batch.column(idx);
    let ms = time_ms(col, format)?;
    let rounded: Int64Array = match rounding.zone() {
        None => {
            let round_ms = rounding.period_ms();
            arrow::compute::kernels::arity::unary(&ms, |t: i64| floor_to_bucket(t, round_ms))
        }
        // a time-zone lookup per row is slow: remember the last bucket (rows
        // come clustered in time)
        Some(_) => {
            let mut last = Window { start_ms: 1, end_ms: 0 };
            ms.iter()
                .map(|t| {
                    t.map(|t| {
                        if !last.contains(t) {
                            last = rounding.containing(t);
                        }
                        last.start_ms
                    })
                })
                .collect()
        }
    };
    let back: ArrayRef = match col.data_type() {
        ArrowType::Timestamp(_, _) => cast(&(Arc::new(rounded) as ArrayRef), col.data_type())?,
        _ => {
            let values: Int64Array = arrow::compute::kernels::arity::unary(&rounded, |t: i64| format.from_ms(t));
            cast(&(Arc::new(values) as ArrayRef), col.data_type())?
        }
    };
    let mut cols = batch.columns().to_vec();
    cols[idx] = back;
    Ok(RecordBatch::try_new(batch.schema(), cols)?)
}

/// Stage 4: splits batches by the table's partition column; one group
/// (partition -1) when the table is not partitioned.
pub fn partition_batches(
    batches: Vec<RecordBatch>,
    spec: &TableSpec,
) -> Result<BTreeMap<i32, Vec<RecordBatch>>, Error> {
    let mut out: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
    let Some(p) = &spec.flow.partitioning else {
        out.insert(-1, batches);
        return Ok(out);
    };
    for b in batches {
        let col = b.column_by_name(&p.column).ok_or_else(|| Error::Segment {
            segment: String::new(),
            problem: format!("partition column '{}' is missing", p.column),
        })?;
        let ids = partition_ids(col, p)?;
        let mut per: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (row, id) in ids.iter().enumerate() {
            per.entry(*id).or_default().push(row as u32);
        }
        for (id, rows) in per {
            let idx = arrow::array::UInt32Array::from(rows);
            out.entry(id as i32).or_default().push(take_record_batch(&b, &idx)?);
        }
    }
    Ok(out)
}

/// Stage 5 (dedup): drops rows equal in every column to an earlier row.
pub fn dedup(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, Error> {
    let Some(first) = batches.first() else {
        return Ok(vec![]);
    };
    let converter =
        RowConverter::new(first.schema().fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let rows = converter.convert_columns(b.columns())?;
        let mask: BooleanArray = rows.iter().map(|r| Some(seen.insert(r.as_ref().into()))).collect();
        out.push(filter_record_batch(b, &mask)?);
    }
    Ok(out)
}

/// One sub-task of a window split in `count` (Pinot's
/// `maxNumRecordsPerTask`). Its outputs are named
/// `<raw>_<windowStartMs>_<windowEndMs>_<partition|all>_s<index>_<seq>`.
/// Split `by_hash` (rollup, dedup), it keeps the rows whose merge key
/// (rollup: every non-metric column, the rounded time included; dedup: the
/// whole row) hashes to `index` modulo `count`: equal keys hash alike on
/// every minion, so each rollup group and each duplicate falls in exactly
/// one sub-task. Otherwise (concat) its inputs are its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubTask {
    /// This sub-task, `0..count`.
    pub index: u32,
    /// Sub-tasks of the window.
    pub count: u32,
    /// Whether rows are shared out by a hash of the merge key.
    pub by_hash: bool,
}

impl SubTask {
    /// Whether the task of `split` counts the window rows `offloadPredicate`
    /// drops: every task but the sub-tasks of a hash split after the first
    /// (each of those reads every row of the window).
    pub fn counts_filtered(split: Option<SubTask>) -> bool {
        split.is_none_or(|s| !s.by_hash || s.index == 0)
    }

    /// The partition part of its output names: `<partition|all>_s<index>`.
    pub fn name_part(sub: Option<SubTask>, partition: i32) -> String {
        let part = if partition < 0 { "all".to_string() } else { partition.to_string() };
        match sub {
            Some(s) => format!("{part}_s{}", s.index),
            None => part,
        }
    }
}

/// An OFFLINE segment's name: `<raw>_<window start>_<window end>_<part>_<seq>`
/// (`<raw>` replaced by `segmentNamePrefix` when the config has one, as in
/// Pinot's `SimpleSegmentNameGenerator`), then `_<segmentNamePostfix>` when
/// the config has one (a late-data run's).
pub fn output_name(spec: &TableSpec, window: &Window, part: &str, seq: usize) -> String {
    let prefix = spec.flow.segment_name_prefix.as_deref().unwrap_or(&spec.name);
    let base = format!("{prefix}_{}_{}_{part}_{seq}", window.start_ms, window.end_ms);
    match &spec.flow.segment_name_postfix {
        Some(p) => format!("{base}_{p}"),
        None => base,
    }
}

/// FNV-1a, 64 bits: a stable hash (the same on every minion and release).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Keeps the rows of a rounded batch that belong to `split` (see
/// [`SubTask`]); all of them when it is not split by hash.
pub fn keep_sub_task(batch: &RecordBatch, spec: &TableSpec, split: SubTask) -> Result<RecordBatch, Error> {
    if !split.by_hash || split.count <= 1 || batch.num_rows() == 0 {
        return Ok(batch.clone());
    }
    let key: Vec<usize> = spec
        .schema
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| spec.flow.merge_type == MergeType::Dedup || f.kind != FieldKind::Metric)
        .map(|(i, _)| i)
        .collect();
    let converter =
        RowConverter::new(key.iter().map(|i| SortField::new(batch.schema().field(*i).data_type().clone())).collect())?;
    let cols: Vec<ArrayRef> = key.iter().map(|i| batch.column(*i).clone()).collect();
    let rows = converter.convert_columns(&cols)?;
    let count = u64::from(split.count);
    let mask: BooleanArray = rows.iter().map(|r| Some(fnv1a(r.as_ref()) % count == u64::from(split.index))).collect();
    Ok(filter_record_batch(batch, &mask)?)
}

/// Running aggregate of one metric over groups, null-aware (a group whose
/// values are all null aggregates to null), in the column's own type as
/// Pinot's value aggregators do: INT sums wrap in 32 bits, LONG in 64, FLOAT
/// sums in f32, DOUBLE in f64.
struct Agg<T> {
    agg: AggregationType,
    vals: Vec<T>,
    seen: Vec<bool>,
}

impl<T: Copy + PartialOrd + Default> Agg<T> {
    fn new(agg: AggregationType) -> Agg<T> {
        Agg { agg, vals: vec![], seen: vec![] }
    }

    fn grow(&mut self, groups: usize) {
        self.vals.resize(groups, T::default());
        self.seen.resize(groups, false);
    }

    fn update(&mut self, values: impl Iterator<Item = Option<T>>, group_ids: &[u32], add: fn(T, T) -> T) {
        for (v, g) in values.zip(group_ids) {
            let Some(v) = v else { continue };
            let g = *g as usize;
            if !self.seen[g] {
                self.vals[g] = v;
                self.seen[g] = true;
                continue;
            }
            let acc = self.vals[g];
            self.vals[g] = match self.agg {
                AggregationType::Sum => add(acc, v),
                AggregationType::Min if v < acc => v,
                AggregationType::Max if v > acc => v,
                _ => acc,
            };
        }
    }

    fn finish(self) -> impl Iterator<Item = Option<T>> {
        self.vals.into_iter().zip(self.seen).map(|(v, s)| s.then_some(v))
    }
}

/// The state of one group of a bytes-backed metric: no row yet; rows but
/// no value (the first row NULL, or empty bytes when `true`); one value
/// (kept as is, as Pinot keeps a single row's bytes); a merge.
enum BytesGroup {
    Unseen,
    NoValue(bool),
    One(Vec<u8>),
    Many(crate::sketch::State),
}

/// Running merge of a bytes-backed metric (an `AvgPair` or a sketch) over
/// groups, with Pinot's value aggregators (see [`crate::sketch`]).
struct BytesAgg {
    column: String,
    agg: AggregationType,
    groups: Vec<BytesGroup>,
}

impl BytesAgg {
    fn update(&mut self, col: &ArrayRef, group_ids: &[u32]) -> Result<(), Error> {
        let col = col.as_binary_opt::<i32>().ok_or_else(|| Error::Rollup {
            column: self.column.clone(),
            problem: format!("expected a BYTES column, found {}", col.data_type()),
        })?;
        let fail = |problem: String| Error::Rollup { column: self.column.clone(), problem };
        for (i, g) in group_ids.iter().enumerate() {
            let v = col.is_valid(i).then(|| col.value(i));
            let slot = &mut self.groups[*g as usize];
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                if matches!(slot, BytesGroup::Unseen) {
                    *slot = BytesGroup::NoValue(col.is_valid(i));
                }
                continue;
            };
            *slot = match std::mem::replace(slot, BytesGroup::Unseen) {
                BytesGroup::Unseen | BytesGroup::NoValue(_) => BytesGroup::One(v.to_vec()),
                BytesGroup::One(first) => {
                    let mut s = crate::sketch::State::new(self.agg, &first).map_err(fail)?;
                    s.add(v).map_err(fail)?;
                    BytesGroup::Many(s)
                }
                BytesGroup::Many(mut s) => {
                    s.add(v).map_err(fail)?;
                    BytesGroup::Many(s)
                }
            };
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        let values = self.groups.into_iter().map(|g| match g {
            BytesGroup::Unseen | BytesGroup::NoValue(false) => None,
            BytesGroup::NoValue(true) => Some(vec![]),
            BytesGroup::One(v) => Some(v),
            BytesGroup::Many(s) => Some(s.finish()),
        });
        Arc::new(arrow::array::BinaryArray::from_iter(values))
    }
}

/// `firstWithTime` / `lastWithTime`: per group, the row whose original
/// time (the hidden [`FIRST_MS_COLUMN`] / [`LAST_MS_COLUMN`]) is the
/// earliest (first: the earlier row of a tie) or the latest (last: the
/// later row of a tie, as Pinot's aggregator keeps `value2`), as (time,
/// batch, row); the values of any type are gathered at the end.
struct PickAgg {
    column: String,
    last: bool,
    columns: Vec<ArrayRef>,
    best: Vec<Option<(i64, usize, usize)>>,
}

impl PickAgg {
    fn update(&mut self, col: &ArrayRef, group_ids: &[u32], times: Option<&ArrayRef>) -> Result<(), Error> {
        let times = times.and_then(|t| t.as_primitive_opt::<Int64Type>()).ok_or_else(|| Error::Rollup {
            column: self.column.clone(),
            problem: "the rows' original times are missing (a bug: they are added before rounding)".into(),
        })?;
        let b = self.columns.len();
        self.columns.push(col.clone());
        for (i, g) in group_ids.iter().enumerate() {
            let t = if times.is_valid(i) { times.value(i) } else { continue };
            let slot = &mut self.best[*g as usize];
            let better = match slot {
                None => true,
                Some((bt, _, _)) => (self.last && t >= *bt) || (!self.last && t < *bt),
            };
            if better {
                *slot = Some((t, b, i));
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<ArrayRef, Error> {
        let picks: Vec<(usize, usize)> = self.best.iter().map(|p| p.map_or((0, 0), |(_, b, r)| (b, r))).collect();
        if self.columns.is_empty() {
            return Ok(arrow::array::new_empty_array(&ArrowType::Null));
        }
        let arrays: Vec<&dyn Array> = self.columns.iter().map(|c| c.as_ref()).collect();
        Ok(arrow::compute::interleave(&arrays, &picks)?)
    }
}

enum Acc {
    I32(Agg<i32>),
    I64(Agg<i64>),
    F32(Agg<f32>),
    F64(Agg<f64>),
    Bytes(BytesAgg),
    Pick(PickAgg),
}

impl Acc {
    fn new(column: &str, t: &ArrowType, agg: AggregationType) -> Acc {
        if agg.is_bytes_backed() {
            return Acc::Bytes(BytesAgg { column: column.to_string(), agg, groups: vec![] });
        }
        if agg.requires_time_ordering() {
            let last = agg == AggregationType::LastWithTime;
            return Acc::Pick(PickAgg { column: column.to_string(), last, columns: vec![], best: vec![] });
        }
        match t {
            ArrowType::Int32 => Acc::I32(Agg::new(agg)),
            ArrowType::Float32 => Acc::F32(Agg::new(agg)),
            ArrowType::Float64 => Acc::F64(Agg::new(agg)),
            _ => Acc::I64(Agg::new(agg)),
        }
    }

    fn grow(&mut self, groups: usize) {
        match self {
            Acc::I32(a) => a.grow(groups),
            Acc::I64(a) => a.grow(groups),
            Acc::F32(a) => a.grow(groups),
            Acc::F64(a) => a.grow(groups),
            Acc::Bytes(a) => a.groups.resize_with(groups, || BytesGroup::Unseen),
            Acc::Pick(a) => a.best.resize(groups, None),
        }
    }

    /// Aggregates `col` (a column of `batch`) into the groups `group_ids`.
    fn update_from(&mut self, col: &ArrayRef, group_ids: &[u32], batch: &RecordBatch) -> Result<(), Error> {
        if let Acc::Pick(a) = self {
            let times = batch.column_by_name(if a.last { LAST_MS_COLUMN } else { FIRST_MS_COLUMN });
            return a.update(col, group_ids, times);
        }
        self.update(col, group_ids)
    }

    fn update(&mut self, col: &ArrayRef, group_ids: &[u32]) -> Result<(), Error> {
        match self {
            Acc::I32(a) => a.update(col.as_primitive::<Int32Type>().iter(), group_ids, i32::wrapping_add),
            Acc::F32(a) => a.update(col.as_primitive::<Float32Type>().iter(), group_ids, |x, y| x + y),
            Acc::F64(a) => a.update(col.as_primitive::<Float64Type>().iter(), group_ids, |x, y| x + y),
            Acc::I64(a) => {
                let c = cast(col, &ArrowType::Int64)?;
                a.update(c.as_primitive::<Int64Type>().iter(), group_ids, i64::wrapping_add)
            }
            Acc::Bytes(a) => a.update(col, group_ids)?,
            Acc::Pick(a) => a.update(col, group_ids, None)?,
        }
        Ok(())
    }

    fn finish(self, t: &ArrowType) -> Result<ArrayRef, Error> {
        let arr: ArrayRef = match self {
            Acc::I32(a) => Arc::new(Int32Array::from_iter(a.finish())),
            Acc::I64(a) => Arc::new(Int64Array::from_iter(a.finish())),
            Acc::F32(a) => Arc::new(Float32Array::from_iter(a.finish())),
            Acc::F64(a) => Arc::new(Float64Array::from_iter(a.finish())),
            Acc::Bytes(a) => a.finish(),
            Acc::Pick(a) => a.finish()?,
        };
        if arr.data_type() == t {
            return Ok(arr);
        }
        Ok(cast(&arr, t)?)
    }
}

/// Hidden column of a rollup table with `firstWithTime` metrics: each
/// row's original (pre-rounding) time, ms; a merged row holds its group's
/// earliest. Added before rounding, dropped before writing.
pub const FIRST_MS_COLUMN: &str = "__r2o_first_ms";

/// Hidden column of a rollup table with `lastWithTime` metrics: each row's
/// original time, ms; a merged row holds its group's latest. Two columns,
/// not one, because partial rollups (the bounded-memory path merges runs
/// across batches) must keep both the earliest and the latest time.
pub const LAST_MS_COLUMN: &str = "__r2o_last_ms";

/// Whether the table's rollup picks values by original time (a
/// `firstWithTime` or `lastWithTime` metric).
pub fn needs_pick_times(spec: &TableSpec) -> bool {
    spec.flow.merge_type == MergeType::Rollup && spec.flow.aggregations.values().any(|a| a.requires_time_ordering())
}

/// The schema of a table's rows in the merge: the table's columns, then
/// [`FIRST_MS_COLUMN`] and [`LAST_MS_COLUMN`] when [`needs_pick_times`].
pub fn work_schema(spec: &TableSpec) -> Arc<ArrowSchema> {
    let table = spec.schema.arrow_schema();
    if !needs_pick_times(spec) {
        return table;
    }
    let mut fields: Vec<arrow::datatypes::Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(arrow::datatypes::Field::new(FIRST_MS_COLUMN, ArrowType::Int64, true));
    fields.push(arrow::datatypes::Field::new(LAST_MS_COLUMN, ArrowType::Int64, true));
    Arc::new(ArrowSchema::new(fields))
}

/// Appends the original-time columns to a batch of the table's rows (both
/// the row's time, ms) when [`needs_pick_times`]; before rounding.
///
/// # Errors
/// The time column is missing or not a time.
pub fn add_pick_times(batch: RecordBatch, spec: &TableSpec) -> Result<RecordBatch, Error> {
    if !needs_pick_times(spec) {
        return Ok(batch);
    }
    let ms: ArrayRef = Arc::new(times_ms(&batch, spec)?);
    let mut cols = batch.columns().to_vec();
    cols.push(ms.clone());
    cols.push(ms);
    Ok(RecordBatch::try_new(work_schema(spec), cols)?)
}

/// The first `schema`'s columns of `batch`: the table's, without the hidden ones.
pub fn strip_to(batch: RecordBatch, schema: &Arc<ArrowSchema>) -> Result<RecordBatch, Error> {
    let n = schema.fields().len();
    if batch.num_columns() == n {
        return Ok(batch);
    }
    Ok(RecordBatch::try_new(schema.clone(), batch.columns()[..n].to_vec())?)
}

/// The aggregation of a hidden original-time column: the earliest of
/// [`FIRST_MS_COLUMN`], the latest of [`LAST_MS_COLUMN`].
fn pick_time_acc(name: &str) -> Result<Acc, Error> {
    let agg = match name {
        FIRST_MS_COLUMN => AggregationType::Min,
        LAST_MS_COLUMN => AggregationType::Max,
        _ => {
            return Err(Error::Rollup {
                column: name.to_string(),
                problem: "a column past the table's that the rollup does not know".into(),
            })
        }
    };
    Ok(Acc::I64(Agg::new(agg)))
}

/// Stage 5 (rollup): groups by every non-metric column (the rounded time
/// included) and aggregates each metric with its `aggregationType`.
pub fn rollup(
    batches: &[RecordBatch],
    schema: &Schema,
    aggregations: &BTreeMap<String, AggregationType>,
) -> Result<Vec<RecordBatch>, Error> {
    let Some(first) = batches.first() else {
        return Ok(vec![]);
    };
    let arrow_schema = first.schema();
    let key_idx: Vec<usize> =
        schema.fields.iter().enumerate().filter(|(_, f)| f.kind != FieldKind::Metric).map(|(i, _)| i).collect();
    let metric_idx: Vec<usize> =
        schema.fields.iter().enumerate().filter(|(_, f)| f.kind == FieldKind::Metric).map(|(i, _)| i).collect();
    let converter = RowConverter::new(
        key_idx.iter().map(|i| SortField::new(arrow_schema.field(*i).data_type().clone())).collect(),
    )?;
    let mut groups: HashMap<Box<[u8]>, u32> = HashMap::new();
    let mut group_rows = converter.empty_rows(1024, 64 * 1024);
    let mut accs: Vec<Acc> = metric_idx
        .iter()
        .map(|i| {
            let f = &schema.fields[*i];
            Acc::new(
                &f.name,
                arrow_schema.field(*i).data_type(),
                aggregations.get(&f.name).copied().unwrap_or(AggregationType::Sum),
            )
        })
        .collect();
    // the hidden original-time columns (firstWithTime, lastWithTime) past the table's
    let mut metric_idx = metric_idx;
    for j in schema.fields.len()..arrow_schema.fields().len() {
        let name = arrow_schema.field(j).name().as_str();
        accs.push(pick_time_acc(name)?);
        metric_idx.push(j);
    }
    let mut ids: Vec<u32> = Vec::with_capacity(BATCH_ROWS);
    for b in batches {
        let keys: Vec<ArrayRef> = key_idx.iter().map(|i| b.column(*i).clone()).collect();
        let rows = converter.convert_columns(&keys)?;
        ids.clear();
        for r in rows.iter() {
            let next = groups.len() as u32;
            let id = *groups.entry(r.as_ref().into()).or_insert_with(|| {
                group_rows.push(r);
                next
            });
            ids.push(id);
        }
        for (acc, i) in accs.iter_mut().zip(&metric_idx) {
            acc.grow(groups.len());
            acc.update_from(b.column(*i), &ids, b)?;
        }
    }
    let key_cols = converter.convert_rows(&group_rows)?;
    let mut columns: Vec<Option<ArrayRef>> = vec![None; arrow_schema.fields().len()];
    for (col, i) in key_cols.into_iter().zip(&key_idx) {
        columns[*i] = Some(col);
    }
    for (mut acc, i) in accs.into_iter().zip(&metric_idx) {
        acc.grow(groups.len());
        columns[*i] = Some(acc.finish(arrow_schema.field(*i).data_type())?);
    }
    let columns: Vec<ArrayRef> = columns.into_iter().map(|c| c.expect("every column is a key or a metric")).collect();
    Ok(vec![RecordBatch::try_new(arrow_schema, columns)?])
}

/// Rollup whose output is already in the OFFLINE sort order: one batch,
/// sorted by `sort` (ascending, nulls last, as [`sort_by`]) and then by the
/// other dimensions. Groups are found by sorting the rows' key bytes
/// (`arrow_row`, the sort columns first) instead of hashing them and
/// sorting the groups after: one sort instead of a hash table and a sort.
/// The sort is stable, so each group's metrics are aggregated in input
/// order, as [`rollup`] does (float sums add in the same order).
///
/// Returns `None` when a sort column is not a dimension (a metric column
/// named as `sortedColumn`): the caller rolls up with [`rollup`] and sorts.
///
/// # Errors
/// Arrow errors.
pub fn rollup_in_order(
    batches: &[RecordBatch],
    schema: &Schema,
    aggregations: &BTreeMap<String, AggregationType>,
    sort: &[&str],
) -> Result<Option<RecordBatch>, Error> {
    let is_key = |name: &str| schema.fields.iter().any(|f| f.name == name && f.kind != FieldKind::Metric);
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    if sort.is_empty() || !sort.iter().all(|c| is_key(c)) {
        return Ok(None);
    }
    let arrow_schema = first.schema();
    let all = concat_batches(&arrow_schema, batches)?;
    let index = |name: &str| schema.fields.iter().position(|f| f.name == name).expect("a sort column is a field");
    let mut key_idx: Vec<usize> = sort.iter().map(|c| index(c)).collect();
    let rest: Vec<usize> = (0..schema.fields.len())
        .filter(|i| schema.fields[*i].kind != FieldKind::Metric && !key_idx.contains(i))
        .collect();
    key_idx.extend(rest);
    let last = SortOptions { descending: false, nulls_first: false };
    let converter = RowConverter::new(
        key_idx.iter().map(|i| SortField::new_with_options(arrow_schema.field(*i).data_type().clone(), last)).collect(),
    )?;
    let keys: Vec<ArrayRef> = key_idx.iter().map(|i| all.column(*i).clone()).collect();
    let rows = converter.convert_columns(&keys)?;
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
    // Group ids in sorted order; each group's first row in input order.
    let mut ids = vec![0u32; all.num_rows()];
    let mut starts: Vec<u32> = Vec::new();
    for (k, &r) in order.iter().enumerate() {
        if k == 0 || rows.row(order[k - 1] as usize) != rows.row(r as usize) {
            starts.push(r);
        }
        ids[r as usize] = starts.len() as u32 - 1;
    }
    let starts = arrow::array::UInt32Array::from(starts);
    let columns = grouped_columns(&all, schema, aggregations, &ids, &starts)?;
    Ok(Some(RecordBatch::try_new(arrow_schema, columns)?))
}

/// The columns of a rollup's output given each row's group (`ids`, one per
/// row of `batch`) and each group's first row (`starts`): a dimension takes
/// its value at the group's first row, a metric aggregates the group's rows
/// in row order. Columns past `schema`'s are carried like dimensions.
fn grouped_columns(
    batch: &RecordBatch,
    schema: &Schema,
    aggregations: &BTreeMap<String, AggregationType>,
    ids: &[u32],
    starts: &arrow::array::UInt32Array,
) -> Result<Vec<ArrayRef>, Error> {
    let arrow_schema = batch.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (i, f) in schema.fields.iter().enumerate() {
        let col = batch.column(i);
        if f.kind != FieldKind::Metric {
            columns.push(arrow::compute::take(col.as_ref(), starts, None)?);
            continue;
        }
        let t = arrow_schema.field(i).data_type();
        let mut acc = Acc::new(&f.name, t, aggregations.get(&f.name).copied().unwrap_or(AggregationType::Sum));
        acc.grow(starts.len());
        acc.update_from(col, ids, batch)?;
        columns.push(acc.finish(t)?);
    }
    for (j, col) in batch.columns().iter().enumerate().skip(schema.fields.len()) {
        let name = arrow_schema.field(j).name().as_str();
        if name == FIRST_MS_COLUMN || name == LAST_MS_COLUMN {
            let mut acc = pick_time_acc(name)?;
            acc.grow(starts.len());
            acc.update(col, ids)?;
            columns.push(acc.finish(arrow_schema.field(j).data_type())?);
            continue;
        }
        columns.push(arrow::compute::take(col.as_ref(), starts, None)?);
    }
    Ok(columns)
}

/// Rollup of one batch whose rows are sorted so that each group's rows are
/// adjacent (the bounded-memory path sorts by the whole key first): groups
/// are runs of equal keys (every non-metric column; NULL equals NULL), found
/// by comparing neighbours column by column, with no hashing or row
/// encoding. Same result as [`rollup`] on that batch, in the batch's order.
/// Columns past `schema`'s (the bounded-memory path's row hash) are carried
/// like keys: the value of each run's first row.
///
/// # Errors
/// Arrow errors (a metric of an unexpected type).
pub fn rollup_sorted(
    batch: &RecordBatch,
    schema: &Schema,
    aggregations: &BTreeMap<String, AggregationType>,
) -> Result<RecordBatch, Error> {
    let key_idx: Vec<usize> =
        schema.fields.iter().enumerate().filter(|(_, f)| f.kind != FieldKind::Metric).map(|(i, _)| i).collect();
    let (ids, starts) = runs(batch, &key_idx)?;
    let columns = grouped_columns(batch, schema, aggregations, &ids, &starts)?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Dedup of one batch sorted by the whole row: the first row of each run of
/// equal rows (NULL equals NULL). Same result as [`dedup`] on that batch.
///
/// # Errors
/// Arrow errors.
pub fn dedup_sorted(batch: &RecordBatch) -> Result<RecordBatch, Error> {
    let all: Vec<usize> = (0..batch.num_columns()).collect();
    let (_, starts) = runs(batch, &all)?;
    if starts.len() == batch.num_rows() {
        return Ok(batch.clone());
    }
    Ok(take_record_batch(batch, &starts)?)
}

/// Runs of adjacent rows equal on `columns`: each row's run number, and
/// each run's first row.
fn runs(batch: &RecordBatch, columns: &[usize]) -> Result<(Vec<u32>, arrow::array::UInt32Array), Error> {
    let n = batch.num_rows();
    if n == 0 {
        return Ok((vec![], arrow::array::UInt32Array::from(Vec::<u32>::new())));
    }
    let keys: Vec<ArrayRef> = columns.iter().map(|i| batch.column(*i).clone()).collect();
    let ranges: Vec<std::ops::Range<usize>> = if keys.is_empty() {
        std::iter::once(0..n).collect()
    } else {
        arrow::compute::kernels::partition::partition(&keys)?.ranges()
    };
    let mut ids = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(ranges.len());
    for (k, r) in ranges.iter().enumerate() {
        starts.push(r.start as u32);
        ids.extend(std::iter::repeat_n(k as u32, r.len()));
    }
    Ok((ids, arrow::array::UInt32Array::from(starts)))
}

/// Stage 6: one batch sorted by `columns` in order (nulls last), or
/// concatenated in order when there are none.
pub fn sort_by(schema: &Arc<ArrowSchema>, batches: &[RecordBatch], columns: &[&str]) -> Result<RecordBatch, Error> {
    let all = concat_batches(schema, batches)?;
    if columns.is_empty() {
        return Ok(all);
    }
    let keys = columns
        .iter()
        .map(|c| {
            Ok(SortColumn {
                values: all.column(all.schema().index_of(c)?).clone(),
                options: Some(SortOptions { descending: false, nulls_first: false }),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let idx = lexsort_to_indices(&keys, None)?;
    Ok(take_record_batch(&all, &idx)?)
}

/// The sort order of OFFLINE segments: the table's `sortedColumn`, then
/// the time column (so rows of one value are in time order too); nothing
/// when the table has no sorted column (rows keep their input order).
pub(crate) fn sort_columns(spec: &TableSpec) -> Vec<&str> {
    match spec.flow.sorted_column.as_deref() {
        None => vec![],
        Some(c) if c == spec.flow.time_column => vec![c],
        Some(c) => vec![c, spec.flow.time_column.as_str()],
    }
}

/// Stage 7: cuts a batch into pieces of at most `max_rows` rows.
pub fn cut(batch: &RecordBatch, max_rows: u64) -> Vec<RecordBatch> {
    let max = max_rows.max(1) as usize;
    (0..batch.num_rows()).step_by(max).map(|off| batch.slice(off, max.min(batch.num_rows() - off))).collect()
}

/// Pinot's `partitionBucketTimePeriod` (its `EpochTimeHandler` partitions
/// records by `time / partitionBucketMs`): the rows of `batch` split by the
/// time bucket of their (rounded) time, in bucket order and keeping their
/// order within each, with the part of `window` each bucket covers (the
/// output segments' names carry it). Without the key: the whole batch and
/// `window`. Buckets are floored (a time before 1970 is in the bucket
/// before it, where Java's division would round toward zero) and follow
/// `bucketTimeZone` as the windows do.
///
/// # Errors
/// The time column is missing or not a time.
pub fn time_buckets(
    batch: &RecordBatch,
    spec: &TableSpec,
    window: Window,
) -> Result<Vec<(Window, RecordBatch)>, Error> {
    let Some(buckets) = spec.flow.time_partitioning() else {
        return Ok(vec![(window, batch.clone())]);
    };
    let starts = bucket_starts(batch, spec, &buckets)?;
    let mut distinct: Vec<i64> = starts.iter().flatten().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() <= 1 {
        let b = distinct.first().map_or(window, |s| bucket_part(&buckets, *s, window));
        return Ok(vec![(b, batch.clone())]);
    }
    let mut out = Vec::with_capacity(distinct.len());
    for start in distinct {
        let mask: BooleanArray = starts.iter().map(|s| Some(s == Some(start))).collect();
        out.push((bucket_part(&buckets, start, window), filter_record_batch(batch, &mask)?));
    }
    Ok(out)
}

/// The time of every row of `batch` (a batch of the table's rows), epoch ms.
///
/// # Errors
/// The time column is missing or not a time.
pub(crate) fn times_ms(batch: &RecordBatch, spec: &TableSpec) -> Result<Int64Array, Error> {
    let time_col = spec.flow.time_column.as_str();
    let col = batch.column_by_name(time_col).ok_or_else(|| Error::Segment {
        segment: String::new(),
        problem: format!("time column '{time_col}' is missing"),
    })?;
    time_ms(col, spec.time_format())
}

/// The start of every row's `partitionBucketTimePeriod` bucket, epoch ms
/// (NULL for a NULL time, which lies in no window).
///
/// # Errors
/// As [`times_ms`].
pub(crate) fn bucket_starts(
    batch: &RecordBatch,
    spec: &TableSpec,
    buckets: &r2o_common::window::Bucketing,
) -> Result<Int64Array, Error> {
    Ok(times_ms(batch, spec)?.iter().map(|t| t.map(|t| buckets.floor(t))).collect())
}

/// The part of `window` in the time bucket starting at `start_ms`.
pub(crate) fn bucket_part(buckets: &r2o_common::window::Bucketing, start_ms: i64, window: Window) -> Window {
    let b = buckets.window_at(start_ms);
    Window { start_ms: b.start_ms.max(window.start_ms), end_ms: b.end_ms.min(window.end_ms) }
}

/// Stages 7 and 8: cuts `batch` into pieces of at most `max_rows` rows
/// ([`cut`]) and encodes each; a piece whose encoding is larger than
/// `max_bytes` (`maxSegmentSizeBytes`) is cut again, into pieces sized by
/// its own encoded bytes per row, until every piece fits or holds one row.
/// Empty pieces are dropped. Row order is kept.
///
/// # Errors
/// Parquet encoding errors.
pub fn encode_pieces(
    schema: &Arc<ArrowSchema>,
    batch: &RecordBatch,
    max_rows: u64,
    max_bytes: Option<u64>,
) -> Result<Vec<(RecordBatch, Bytes)>, Error> {
    let mut todo: std::collections::VecDeque<RecordBatch> = cut(batch, max_rows).into();
    let mut out = vec![];
    while let Some(piece) = todo.pop_front() {
        if piece.num_rows() == 0 {
            continue;
        }
        let bytes = write_parquet(schema, std::slice::from_ref(&piece))?;
        match max_bytes {
            Some(max) if bytes.len() as u64 > max && piece.num_rows() > 1 => {
                let rows = piece.num_rows() as u64;
                let fit = ((rows as f64 * max as f64 / bytes.len() as f64) * 0.9).floor() as u64;
                for p in cut(&piece, fit.clamp(1, rows - 1)).into_iter().rev() {
                    todo.push_front(p);
                }
            }
            _ => out.push((piece, bytes)),
        }
    }
    Ok(out)
}

/// Sums of each sum-aggregated metric over `batches`: `(int, float, abs)`
/// where `int` is the wrapping sum in the column's width (INT, LONG) and
/// `float`, `abs` the f64 sum and absolute sum (FLOAT, DOUBLE).
pub fn metric_sums(batches: &[RecordBatch], spec: &TableSpec) -> BTreeMap<String, (i64, f64, f64)> {
    let mut out = BTreeMap::new();
    for (name, agg) in &spec.flow.aggregations {
        let Some(field) = spec.schema.field(name) else { continue };
        if *agg != AggregationType::Sum || !field.data_type.is_numeric() {
            continue;
        }
        let (mut i32s, mut i64s, mut f, mut abs) = (0i32, 0i64, 0f64, 0f64);
        for b in batches {
            let Some(c) = b.column_by_name(name) else { continue };
            match field.data_type {
                DataType::Int => {
                    for v in c.as_primitive::<Int32Type>().iter().flatten() {
                        i32s = i32s.wrapping_add(v);
                    }
                }
                DataType::Long => {
                    for v in c.as_primitive::<Int64Type>().iter().flatten() {
                        i64s = i64s.wrapping_add(v);
                    }
                }
                DataType::Float => {
                    for v in c.as_primitive::<Float32Type>().iter().flatten() {
                        f += f64::from(v);
                        abs += f64::from(v).abs();
                    }
                }
                _ => {
                    for v in c.as_primitive::<Float64Type>().iter().flatten() {
                        f += v;
                        abs += v.abs();
                    }
                }
            }
        }
        let int = if field.data_type == DataType::Int { i64::from(i32s) } else { i64s };
        out.insert(name.clone(), (int, f, abs));
    }
    out
}

/// Running sums per sum-aggregated metric, as [`metric_sums`] gives them:
/// `(wrapping int sum, f64 sum, f64 absolute sum)`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sums(BTreeMap<String, (i64, f64, f64)>);

impl Sums {
    /// Adds one [`metric_sums`] result.
    pub(crate) fn add(&mut self, m: BTreeMap<String, (i64, f64, f64)>) {
        for (k, (i, f, a)) in m {
            let e = self.0.entry(k).or_insert((0, 0.0, 0.0));
            e.0 = e.0.wrapping_add(i);
            e.1 += f;
            e.2 += a;
        }
    }

    /// Adds another running sum.
    pub(crate) fn merge(&mut self, other: Sums) {
        self.add(other.0)
    }
}

/// The per-metric sums a report carries, in each column's width (INT sums
/// wrap in 32 bits).
pub(crate) fn finish_sums(spec: &TableSpec, sums_in: Sums, sums_out: Sums) -> BTreeMap<String, MetricSums> {
    let mut out = BTreeMap::new();
    for (m, (int, f, abs)) in sums_in.0 {
        let is_int = spec.schema.field(&m).is_some_and(|f| f.data_type == DataType::Int);
        let (oi, of, _) = sums_out.0.get(&m).copied().unwrap_or((0, 0.0, 0.0));
        let width = |v: i64| if is_int { i64::from(v as i32) } else { v };
        out.insert(
            m,
            MetricSums { int_in: width(int), int_out: width(oi), float_in: f, float_out: of, float_abs_in: abs },
        );
    }
    out
}

/// What one window produced.
struct WindowResult {
    outputs: Vec<OutputSegment>,
    stats: r2o_common::meta::WindowStats,
    sums_in: BTreeMap<String, (i64, f64, f64)>,
    sums_out: Sums,
}

/// Stages 3 to 8 for one window's rows: round, partition, merge, sort, cut, write.
fn process_window(
    spec: &TableSpec,
    window: Window,
    kept: Vec<RecordBatch>,
    split: Option<SubTask>,
    check: &dyn Fn() -> Result<(), ProcessError>,
) -> Result<WindowResult, ProcessError> {
    let format = spec.time_format();
    let time_col = spec.flow.time_column.as_str();
    let mut rows_in = 0u64;
    let mut rounded = Vec::with_capacity(kept.len());
    let rounding = spec.flow.rounding();
    for b in kept {
        let b = add_pick_times(b, spec)?;
        let b = match &rounding {
            Some(r) => round_time(&b, time_col, format, r)?,
            None => b,
        };
        let b = match split {
            Some(split) => keep_sub_task(&b, spec, split)?,
            None => b,
        };
        rows_in += b.num_rows() as u64;
        rounded.push(b);
    }
    let sums_in = metric_sums(&rounded, spec);
    let arrow_schema = spec.schema.arrow_schema();
    let sort = sort_columns(spec);
    let mut result = WindowResult {
        outputs: vec![],
        stats: r2o_common::meta::WindowStats {
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            rows_in,
            ..Default::default()
        },
        sums_in,
        sums_out: Sums::default(),
    };
    for (partition, batches) in partition_batches(rounded, spec)? {
        check()?;
        let (merged, sort) = match spec.flow.merge_type {
            MergeType::Concat => (batches, sort.as_slice()),
            MergeType::Dedup => (dedup(&batches)?, sort.as_slice()),
            MergeType::Rollup => match rollup_in_order(&batches, &spec.schema, &spec.flow.aggregations, &sort)? {
                Some(sorted) => (vec![strip_to(sorted, &arrow_schema)?], &[][..]),
                None => {
                    let merged = rollup(&batches, &spec.schema, &spec.flow.aggregations)?;
                    let merged = merged.into_iter().map(|b| strip_to(b, &arrow_schema)).collect::<Result<_, _>>()?;
                    (merged, sort.as_slice())
                }
            },
        };
        check()?;
        let sorted = sort_by(&arrow_schema, &merged, sort)?;
        result.sums_out.add(metric_sums(std::slice::from_ref(&sorted), spec));
        let part = SubTask::name_part(split, partition);
        for (bucket, rows) in time_buckets(&sorted, spec, window)? {
            let (max_rows, max_bytes) = (spec.flow.max_records_per_segment, spec.flow.max_segment_size_bytes);
            for (seq, (piece, bytes)) in
                encode_pieces(&arrow_schema, &rows, max_rows, max_bytes)?.into_iter().enumerate()
            {
                check()?;
                let (start, end) = time_range_ms(std::slice::from_ref(&piece), time_col, format)?
                    .unwrap_or((window.start_ms, window.start_ms));
                result.stats.rows_out += piece.num_rows() as u64;
                result.stats.outputs += 1;
                result.outputs.push(OutputSegment {
                    window_start_ms: window.start_ms,
                    name: output_name(spec, &bucket, &part, seq),
                    partition,
                    num_rows: piece.num_rows() as u64,
                    start_time_ms: start,
                    end_time_ms: end,
                    bytes,
                    written: None,
                });
            }
        }
    }
    Ok(result)
}

/// Splits a batch's rows by the task's window they fall in (`windows`
/// sorted, non-overlapping); rows outside every window are dropped, and
/// rows inside the task's range but in none of its windows are an error
/// (the segment's registered time range would be wrong).
fn split_by_window(
    segment: &str,
    batch: &RecordBatch,
    ms: &Int64Array,
    windows: &[Window],
    out: &mut [Vec<RecordBatch>],
    spec: &TableSpec,
) -> Result<u64, Error> {
    let mut filtered = 0u64;
    let range = Window { start_ms: windows[0].start_ms, end_ms: windows[windows.len() - 1].end_ms };
    let mut rows: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (row, t) in ms.iter().enumerate() {
        let Some(t) = t else { continue };
        if !range.contains(t) {
            continue;
        }
        let i = windows.partition_point(|w| w.start_ms <= t);
        match i.checked_sub(1).filter(|i| windows[*i].contains(t)) {
            Some(i) => rows.entry(i).or_default().push(row as u32),
            None => {
                return Err(Error::Segment {
                    segment: segment.to_string(),
                    problem: format!(
                        "a row at {t} ms lies in no window of the task, in a window planned as empty: the segment's registered time range does not hold its rows"
                    ),
                })
            }
        }
    }
    for (i, idx) in rows {
        let piece = if idx.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_record_batch(batch, &arrow::array::UInt32Array::from(idx))?
        };
        // only the rows offloadPredicate keeps move, and are checked
        let piece = match &spec.flow.offload_predicate {
            Some(p) => {
                let (kept, dropped) = p.filter(&piece, &spec.schema)?;
                filtered += dropped;
                kept
            }
            None => piece,
        };
        if piece.num_rows() == 0 {
            continue;
        }
        check_rows(segment, &piece, &spec.schema, &spec.flow.time_column, spec.flow.allow_nan)?;
        crate::sketch::check_batch(segment, &piece, spec)?;
        out[i].push(piece);
    }
    Ok(filtered)
}

/// Runs the whole pipeline for one task of `windows` (sorted, each with its
/// own OFFLINE segments), with up to `threads` windows at once. Checks
/// `cancel` between batches and stages.
///
/// # Errors
/// [`ProcessError::Data`] naming the segment and column for unreadable or
/// mismatched input; [`ProcessError::Cancelled`] when cancelled.
pub fn process(
    spec: &TableSpec,
    windows: &[Window],
    inputs: Vec<Input>,
    cancel: &CancellationToken,
    threads: usize,
) -> Result<Processed, ProcessError> {
    process_part(spec, windows, inputs, cancel, threads, None)
}

/// [`process`] for one sub-task of a window split by hash (`split`; `None`:
/// the whole window): only the rows of its share are merged and written,
/// and counted in its figures.
///
/// # Errors
/// As [`process`].
pub fn process_part(
    spec: &TableSpec,
    windows: &[Window],
    inputs: Vec<Input>,
    cancel: &CancellationToken,
    threads: usize,
    split: Option<SubTask>,
) -> Result<Processed, ProcessError> {
    let check = || if cancel.is_cancelled() { Err(ProcessError::Cancelled) } else { Ok(()) };
    let mut result = Processed::default();
    if windows.is_empty() {
        return Ok(result);
    }
    let format = spec.time_format();
    let time_col = spec.flow.time_column.as_str();
    let range = Window { start_ms: windows[0].start_ms, end_ms: windows[windows.len() - 1].end_ms };
    // Read every input once, in start order, its rows split by window; a
    // window goes to the workers as soon as no input left to read can hold
    // rows of it (later inputs start at or after its end), so only a few
    // windows' rows are in memory at once. The channel's bound is the backpressure.
    let mut inputs = inputs;
    inputs.sort_by_key(|i| i.start_ms);
    let starts: Vec<i64> = inputs.iter().map(|i| i.start_ms).collect();
    let results: Vec<std::sync::Mutex<Option<Result<WindowResult, ProcessError>>>> =
        windows.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let failed = std::sync::atomic::AtomicBool::new(false);
    let workers = threads.clamp(1, windows.len());
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<RecordBatch>)>(workers);
    let rx = std::sync::Mutex::new(rx);
    let read: Result<(), ProcessError> = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((i, kept)) = next else { return };
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    continue; // drain: a window failed, the task fails
                }
                let r = process_window(spec, windows[i], kept, split, &check);
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
        let mut per_window: Vec<Vec<RecordBatch>> = vec![Vec::new(); windows.len()];
        let filter = TimeFilter { column: time_col.to_string(), format, window: range };
        let mut unsent = 0usize;
        let mut send_until = |end: i64, per_window: &mut Vec<Vec<RecordBatch>>| {
            while unsent < windows.len() && windows[unsent].end_ms <= end {
                if tx.send((unsent, std::mem::take(&mut per_window[unsent]))).is_err() {
                    break;
                }
                unsent += 1;
            }
        };
        for (k, input) in inputs.into_iter().enumerate() {
            check()?;
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            result.bytes_in += input.bytes.len() as u64;
            let read = read_segment_in(
                &input.name,
                input.bytes,
                &spec.schema,
                input.schema_version,
                BATCH_ROWS,
                Some(&filter),
            )?;
            result.row_groups_skipped += read.skipped_row_groups as u64;
            if input.count_null_time {
                result.rows_null_time += read.skipped_null_time_rows;
            }
            for b in read.batches {
                check()?;
                let col = b.column_by_name(time_col).ok_or_else(|| Error::Segment {
                    segment: input.name.clone(),
                    problem: format!("time column '{time_col}' is missing"),
                })?;
                if input.count_null_time {
                    result.rows_null_time += col.null_count() as u64;
                }
                let ms = time_ms(col, format)?;
                let filtered = split_by_window(&input.name, &b, &ms, windows, &mut per_window, spec)?;
                if SubTask::counts_filtered(split) {
                    result.rows_filtered += filtered;
                }
            }
            send_until(starts.get(k + 1).copied().unwrap_or(i64::MAX), &mut per_window);
        }
        send_until(i64::MAX, &mut per_window);
        drop(tx);
        Ok(())
    });
    read?;
    let (mut sums_in, mut sums_out) = (Sums::default(), Sums::default());
    for r in results {
        let Some(r) = r.into_inner().unwrap_or_else(|p| p.into_inner()) else {
            continue; // not run: another window failed first
        };
        // (windows are taken in order, so a failure's error is the first one)
        let w = r?;
        result.rows_in += w.stats.rows_in;
        result.rows_out += w.stats.rows_out;
        result.outputs.extend(w.outputs);
        result.windows.push(w.stats);
        sums_in.add(w.sums_in);
        sums_out.merge(w.sums_out);
    }
    result.metric_sums = finish_sums(spec, sums_in, sums_out);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray, TimestampMillisecondArray};
    use arrow::util::pretty::pretty_format_batches;
    use r2o_common::columnar::SchemaVersion;
    use serde_json::json;

    const H: i64 = 3_600_000;

    fn spec(task: serde_json::Value, extra_index: serde_json::Value) -> TableSpec {
        let mut index = json!({"sortedColumn": ["carrier"]});
        if let Some(o) = extra_index.as_object() {
            for (k, v) in o {
                index[k] = v.clone();
            }
        }
        TableSpec::from_json(
            json!({"tableName": "f", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                   "tableIndexConfig": index,
                   "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}}),
            json!({"dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
                   "metricFieldSpecs": [{"name": "delay", "dataType": "DOUBLE"}, {"name": "n", "dataType": "LONG"}, {"name": "air", "dataType": "INT"}],
                   "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP"}]}),
        )
        .unwrap()
    }

    /// (carrier, delay, n, air, ts ms)
    type TestRow<'a> = (&'a str, Option<f64>, i64, Option<i32>, i64);

    fn batch(s: &TableSpec, rows: &[TestRow]) -> RecordBatch {
        RecordBatch::try_new(
            s.schema.arrow_schema(),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                Arc::new(Int32Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
                Arc::new(TimestampMillisecondArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn pretty(batches: &[RecordBatch]) -> String {
        pretty_format_batches(batches).unwrap().to_string()
    }

    #[test]
    fn filter_keeps_half_open_window() {
        let s = spec(json!({}), json!({}));
        let b = batch(
            &s,
            &[
                ("a", None, 1, None, H - 1),
                ("a", None, 1, None, H),
                ("a", None, 1, None, 2 * H - 1),
                ("a", None, 1, None, 2 * H),
            ],
        );
        let f = filter_window(&b, "ts", TimeFormat::MILLIS, Window { start_ms: H, end_ms: 2 * H }).unwrap();
        let ts = f.column(4).as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), vec![H, 2 * H - 1]);
    }

    #[test]
    fn round_works_in_the_columns_own_unit() {
        let s = spec(json!({}), json!({}));
        let b = batch(&s, &[("a", None, 1, None, H + 59 * 60_000), ("a", None, 1, None, -1)]);
        let r = round_time(&b, "ts", TimeFormat::MILLIS, &r2o_common::window::Bucketing::utc(H)).unwrap();
        let ts = r.column(4).as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        assert_eq!(ts.values().to_vec(), vec![H, -H]);
        // seconds-since-epoch LONG column, rounded to 1 minute
        let secs = TimeFormat::parse("f", "1:SECONDS:EPOCH").unwrap();
        let sch = Arc::new(ArrowSchema::new(vec![arrow::datatypes::Field::new("t", ArrowType::Int64, true)]));
        let b = RecordBatch::try_new(sch, vec![Arc::new(Int64Array::from(vec![119, 120, 61]))]).unwrap();
        let r = round_time(&b, "t", secs, &r2o_common::window::Bucketing::utc(60_000)).unwrap();
        assert_eq!(r.column(0).as_primitive::<Int64Type>().values().to_vec(), vec![60, 120, 60]);
    }

    #[test]
    fn rollup_groups_and_aggregates_null_aware() {
        let s = spec(json!({"mergeType": "rollup", "air.aggregationType": "max"}), json!({}));
        let b1 = batch(
            &s,
            &[("UA", Some(1.5), 1, Some(10), 0), ("AA", None, 1, None, 0), ("UA", Some(2.0), 1, Some(30), 0)],
        );
        let b2 = batch(&s, &[("UA", None, 1, Some(20), 0), ("UA", Some(1.0), 1, None, H), ("AA", None, 1, None, 0)]);
        let out = rollup(&[b1, b2], &s.schema, &s.flow.aggregations).unwrap();
        let sorted = sort_by(&s.schema.arrow_schema(), &out, &["carrier"]).unwrap();
        let sorted = sort_by(&s.schema.arrow_schema(), &[sorted], &["carrier"]).unwrap();
        let text = pretty(&[sorted]);
        let expected = [
            "+---------+-------+---+-----+---------------------+",
            "| carrier | delay | n | air | ts                  |",
            "+---------+-------+---+-----+---------------------+",
            "| AA      |       | 2 |     | 1970-01-01T00:00:00 |",
            "| UA      | 3.5   | 3 | 30  | 1970-01-01T00:00:00 |",
            "| UA      | 1.0   | 1 |     | 1970-01-01T01:00:00 |",
            "+---------+-------+---+-----+---------------------+",
        ]
        .join("\n");
        assert_eq!(text, expected, "\n{text}");
    }

    proptest::proptest! {
        /// The run-based merges of the bounded-memory path give what the
        /// hash-based ones give, on rows sorted by the merge key.
        #[test]
        fn sorted_merges_match_hash_merges(
            rows in proptest::collection::vec(
                (0usize..3, proptest::option::of(0i8..4), 0i64..3, proptest::option::of(0i32..3), 0i64..3),
                0..60,
            )
        ) {
            let carriers = ["AA", "DL", "UA"];
            let rows: Vec<TestRow> = rows
                .iter()
                .map(|(c, d, n, a, t)| (carriers[*c], d.map(|d| f64::from(d) * 0.5), *n, *a, t * H))
                .collect();
            let r = spec(json!({"mergeType": "rollup", "air.aggregationType": "max", "delay.aggregationType": "min"}), json!({}));
            let schema = r.schema.arrow_schema();
            let input = batch(&r, &rows);
            let by_key = sort_by(&schema, std::slice::from_ref(&input), &["carrier", "ts"]).unwrap();
            let want = rollup(std::slice::from_ref(&by_key), &r.schema, &r.flow.aggregations).unwrap();
            let got = rollup_sorted(&by_key, &r.schema, &r.flow.aggregations).unwrap();
            proptest::prop_assert_eq!(pretty(&[got]), pretty(&want));
            let whole = sort_by(&schema, &[input], &["carrier", "ts", "delay", "n", "air"]).unwrap();
            let want = dedup(std::slice::from_ref(&whole)).unwrap();
            let got = dedup_sorted(&whole).unwrap();
            proptest::prop_assert_eq!(pretty(&[got]), pretty(&want));
        }

        /// The rollup that sorts key bytes gives what the hash rollup and a
        /// sort give, in the same order, over several input batches, with
        /// the sorted column first or the time column first.
        #[test]
        fn rollup_in_order_matches_rollup_then_sort(
            rows in proptest::collection::vec(
                (0usize..3, proptest::option::of(-4i8..4), 0i64..3, proptest::option::of(0i32..3), -2i64..3),
                0..60,
            ),
            cut in 0usize..60,
        ) {
            let carriers = ["AA", "DL", "UA"];
            let rows: Vec<TestRow> = rows
                .iter()
                .map(|(c, d, n, a, t)| (carriers[*c], d.map(|d| f64::from(d) * 0.1), *n, *a, t * H))
                .collect();
            let r = spec(json!({"mergeType": "rollup", "air.aggregationType": "max"}), json!({}));
            let schema = r.schema.arrow_schema();
            let cut = cut.min(rows.len());
            let inputs = [batch(&r, &rows[..cut]), batch(&r, &rows[cut..])];
            for order in [vec!["carrier"], vec!["ts"], vec!["carrier", "ts"]] {
                let mut full = order.clone();
                full.extend(["carrier", "ts"].into_iter().filter(|c| !order.contains(c)));
                let want = rollup(&inputs, &r.schema, &r.flow.aggregations).unwrap();
                let want = sort_by(&schema, &want, &full).unwrap();
                let got = rollup_in_order(&inputs, &r.schema, &r.flow.aggregations, &order).unwrap();
                proptest::prop_assert_eq!(pretty(&[got.expect("sort columns are dimensions")]), pretty(&[want]));
            }
            let metric_first = rollup_in_order(&inputs, &r.schema, &r.flow.aggregations, &["n"]).unwrap();
            proptest::prop_assert!(metric_first.is_none(), "a metric sort column takes the hash rollup");
        }
    }

    #[test]
    fn output_names_take_pinots_prefix_and_r2os_postfix() {
        let w = Window { start_ms: 0, end_ms: H };
        let plain = spec(json!({}), json!({}));
        assert_eq!(output_name(&plain, &w, "all", 0), "f_0_3600000_all_0");
        let named = spec(json!({"segmentNamePrefix": "f_v2", "segmentNamePostfix": "late1"}), json!({}));
        assert_eq!(output_name(&named, &w, "3", 1), "f_v2_0_3600000_3_1_late1");
    }

    #[test]
    fn dedup_drops_exact_duplicates_only() {
        let s = spec(json!({"mergeType": "dedup"}), json!({}));
        let b1 =
            batch(&s, &[("UA", Some(1.0), 1, None, 0), ("UA", Some(1.0), 1, None, 0), ("UA", Some(1.0), 2, None, 0)]);
        let b2 = batch(&s, &[("UA", Some(1.0), 1, None, 0), ("UA", None, 1, None, 0), ("UA", None, 1, None, 0)]);
        let out = dedup(&[b1, b2]).unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 3, "{}", pretty(&out));
    }

    #[test]
    fn sort_and_cut() {
        let s = spec(json!({}), json!({}));
        let b = batch(&s, &[("UA", None, 1, None, 0), ("AA", None, 2, None, 0), ("DL", None, 3, None, 0)]);
        let sorted = sort_by(&s.schema.arrow_schema(), &[b], &["carrier"]).unwrap();
        assert_eq!(sorted.column(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), vec!["AA", "DL", "UA"]);
        let pieces = cut(&sorted, 2);
        assert_eq!(pieces.iter().map(|p| p.num_rows()).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn partitions_split_rows() {
        let s = spec(
            json!({}),
            json!({"segmentPartitionConfig": {"columnPartitionMap": {"carrier": {"functionName": "HashCode", "numPartitions": 2}}}}),
        );
        let b = batch(
            &s,
            &[("UA", None, 1, None, 0), ("AA", None, 2, None, 0), ("UA", None, 3, None, 0), ("B6", None, 3, None, 0)],
        );
        let parts = partition_batches(vec![b], &s).unwrap();
        let total: usize = parts.values().flatten().map(|b| b.num_rows()).sum();
        assert_eq!(total, 4);
        for (p, bs) in &parts {
            for b in bs {
                for c in b.column(0).as_string::<i32>().iter().flatten() {
                    assert_eq!(crate::partition::java_string_hash(c).wrapping_abs().rem_euclid(2), *p);
                }
            }
        }
    }

    #[test]
    fn process_runs_every_stage() {
        let s = spec(
            json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h", "maxNumRecordsPerSegment": "1"}),
            json!({}),
        );
        let b = batch(
            &s,
            &[
                ("UA", Some(1.0), 1, Some(5), 10),
                ("UA", Some(2.0), 1, Some(7), 20),
                ("AA", Some(3.0), 1, Some(1), H + 1),
                ("AA", Some(9.0), 1, Some(1), 2 * H),
            ],
        );
        let bytes = write_parquet(&s.schema.arrow_schema(), &[b]).unwrap();
        let out = process(
            &s,
            &[Window { start_ms: 0, end_ms: 2 * H }],
            vec![input("seg", bytes)],
            &CancellationToken::new(),
            2,
        )
        .unwrap();
        assert_eq!(out.rows_in, 3);
        assert_eq!(out.rows_out, 2);
        assert_eq!(out.outputs.len(), 2, "maxNumRecordsPerSegment=1 cuts one segment per row");
        assert_eq!((out.metric_sums["delay"].float_in, out.metric_sums["delay"].float_out), (6.0, 6.0));
        assert_eq!((out.metric_sums["n"].int_in, out.metric_sums["n"].int_out), (3, 3));
        assert_eq!(out.outputs[0].name, "f_0_7200000_all_0");
        assert_eq!((out.outputs[0].start_time_ms, out.outputs[1].start_time_ms), (H, 0));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let bytes = write_parquet(&s.schema.arrow_schema(), &[]).unwrap();
        assert!(matches!(
            process(&s, &[Window { start_ms: 0, end_ms: H }], vec![input("x", bytes)], &cancel, 1),
            Err(ProcessError::Cancelled)
        ));
    }

    #[test]
    fn a_task_of_many_windows_reads_once_and_writes_each_window_apart() {
        let s = spec(json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h"}), json!({}));
        // rows in hours 0, 1 and 3 (hour 2 is an empty window, skipped by the plan)
        let b = batch(
            &s,
            &[
                ("UA", Some(1.0), 1, Some(1), 10),
                ("UA", Some(2.0), 1, Some(1), 20),
                ("AA", Some(3.0), 1, Some(1), H + 1),
                ("AA", Some(4.0), 1, Some(1), 3 * H + 7),
            ],
        );
        let bytes = write_parquet(&s.schema.arrow_schema(), &[b]).unwrap();
        let windows: Vec<Window> = [0, 1, 3].iter().map(|h| Window { start_ms: h * H, end_ms: (h + 1) * H }).collect();
        for threads in [1, 3] {
            let out =
                process(&s, &windows, vec![input("seg", bytes.clone())], &CancellationToken::new(), threads).unwrap();
            assert_eq!(out.rows_in, 4);
            assert_eq!(
                out.windows.iter().map(|w| (w.start_ms / H, w.rows_in, w.rows_out, w.outputs)).collect::<Vec<_>>(),
                vec![(0, 2, 1, 1), (1, 1, 1, 1), (3, 1, 1, 1)]
            );
            assert_eq!(
                out.outputs.iter().map(|o| (o.window_start_ms / H, o.name.clone())).collect::<Vec<_>>(),
                vec![
                    (0, "f_0_3600000_all_0".to_string()),
                    (1, "f_3600000_7200000_all_0".into()),
                    (3, "f_10800000_14400000_all_0".into())
                ],
                "each window its own segment, in window order ({threads} threads)"
            );
            assert_eq!((out.metric_sums["delay"].float_in, out.metric_sums["delay"].float_out), (10.0, 10.0));
        }
        // a row in the task's range but in a window planned as empty is an error, not a silent drop
        let gap = [Window { start_ms: 0, end_ms: H }, Window { start_ms: 3 * H, end_ms: 4 * H }];
        let e = process(&s, &gap, vec![input("seg", bytes)], &CancellationToken::new(), 1).unwrap_err();
        assert!(e.to_string().contains("no window of the task"), "{e}");
    }

    fn input(name: &str, bytes: Bytes) -> Input {
        Input { name: name.into(), bytes, count_null_time: true, start_ms: 0, schema_version: SchemaVersion::Current }
    }

    /// Sub-tasks split by hash together give exactly the whole window: every
    /// rollup group and every duplicate in one sub-task, rows counted once.
    #[test]
    fn hash_sub_tasks_together_give_the_whole_window() {
        use r2o_common::columnar::read_segment;
        // the third: values picked by original time (times are distinct, so one answer)
        let pick = json!({"mergeType": "rollup", "roundBucketTimePeriod": "1m",
                          "delay.aggregationType": "lastWithTime", "air.aggregationType": "firstWithTime"});
        for (merge, task) in [
            ("rollup", json!({"mergeType": "rollup", "roundBucketTimePeriod": "1m"})),
            ("dedup", json!({"mergeType": "dedup", "roundBucketTimePeriod": "1m"})),
            ("rollup with lastWithTime", pick),
        ] {
            let s = spec(task, json!({}));
            let rows: Vec<TestRow> = (0..2_000)
                .map(|i| {
                    let c = ["AA", "UA", "DL", "WN"][i % 4];
                    (c, Some((i % 3) as f64), 1, Some((i % 5) as i32), (i as i64 % 7) * 60_000 + i as i64 % 1_000)
                })
                .collect();
            let bytes = write_parquet(&s.schema.arrow_schema(), &[batch(&s, &rows)]).unwrap();
            let w = [Window { start_ms: 0, end_ms: H }];
            let whole = process(&s, &w, vec![input("seg", bytes.clone())], &CancellationToken::new(), 1).unwrap();
            let mut parts: Vec<RecordBatch> = vec![];
            let (mut rows_in, mut names) = (0, vec![]);
            for index in 0..3 {
                let sub = SubTask { index, count: 3, by_hash: true };
                let inp = vec![input("seg", bytes.clone())];
                let p = process_part(&s, &w, inp, &CancellationToken::new(), 1, Some(sub)).unwrap();
                assert!(p.rows_out > 0, "{merge}: every sub-task gets a share");
                rows_in += p.rows_in;
                for o in &p.outputs {
                    names.push(o.name.clone());
                    parts.extend(read_segment(&o.name, o.bytes.clone(), &s.schema, 1 << 20).unwrap());
                }
            }
            assert_eq!(rows_in, whole.rows_in, "{merge}: each row read by one sub-task");
            let want: Vec<RecordBatch> = whole
                .outputs
                .iter()
                .flat_map(|o| read_segment(&o.name, o.bytes.clone(), &s.schema, 1 << 20).unwrap())
                .collect();
            let all = |b: &[RecordBatch]| {
                let cols: Vec<&str> = s.schema.fields.iter().map(|f| f.name.as_str()).collect();
                pretty(&[sort_by(&s.schema.arrow_schema(), b, &cols).unwrap()])
            };
            assert_eq!(all(&parts), all(&want), "{merge}");
            assert!(names.iter().any(|n| n.ends_with("_all_s2_0")), "{names:?}");
        }
    }

    /// maxSegmentSizeBytes: every encoded piece fits, rows keep their order,
    /// and none is lost; without it, rows alone cut.
    #[test]
    fn pieces_are_cut_until_each_fits_its_byte_size() {
        let s = spec(json!({}), json!({}));
        let rows: Vec<TestRow> = (0..20_000)
            .map(|i| (["AA", "UA", "DL"][i % 3], Some(i as f64 * 1.37), i as i64 * 7919, Some(i as i32), i as i64))
            .collect();
        let b = batch(&s, &rows);
        let schema = s.schema.arrow_schema();
        let whole = encode_pieces(&schema, &b, 1_000_000, None).unwrap();
        assert_eq!(whole.len(), 1);
        let max = whole[0].1.len() as u64 / 5;
        let pieces = encode_pieces(&schema, &b, 1_000_000, Some(max)).unwrap();
        assert!(pieces.len() >= 5, "{} pieces", pieces.len());
        assert!(pieces.iter().all(|(_, bytes)| bytes.len() as u64 <= max), "every piece within {max} bytes");
        let again = concat_batches(&schema, pieces.iter().map(|(p, _)| p)).unwrap();
        assert_eq!(again, b, "the same rows in the same order");
        // the row cap still applies
        assert!(encode_pieces(&schema, &b, 3_000, Some(u64::MAX)).unwrap().iter().all(|(p, _)| p.num_rows() <= 3_000));
    }

    /// A malformed sketch fails its window only if it moves: a bad value
    /// outside the task's windows is not read as a sketch at all.
    #[test]
    fn only_the_rows_that_move_are_checked_for_their_sketches() {
        let s = TableSpec::from_json(
            json!({"tableName": "f", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                   "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
                       "mergeType": "rollup", "users.aggregationType": "distinctCountHLL"}}}}),
            json!({"dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
                   "metricFieldSpecs": [{"name": "users", "dataType": "BYTES"}],
                   "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP"}]}),
        )
        .unwrap();
        // an empty HLL of log2m 4: header (4, 12), three zero words
        let hll: Vec<u8> = [vec![0, 0, 0, 4, 0, 0, 0, 12], vec![0; 12]].concat();
        let seg = |bad_at: i64| {
            let b = RecordBatch::try_new(
                s.schema.arrow_schema(),
                vec![
                    Arc::new(StringArray::from(vec!["a", "a"])),
                    Arc::new(arrow::array::BinaryArray::from_iter_values([hll.clone(), vec![1, 2, 3]])),
                    Arc::new(TimestampMillisecondArray::from(vec![600_000, bad_at])),
                ],
            )
            .unwrap();
            input("seg", write_parquet(&s.schema.arrow_schema(), &[b]).unwrap())
        };
        let w = [Window { start_ms: 0, end_ms: H }];
        let out = process(&s, &w, vec![seg(2 * H)], &CancellationToken::new(), 1).unwrap();
        assert_eq!((out.rows_in, out.rows_out), (1, 1), "the bad value lies in a later window");
        let e = process(&s, &w, vec![seg(H / 2)], &CancellationToken::new(), 1).unwrap_err().to_string();
        assert!(e.contains("'seg'") && e.contains("column 'users'") && e.contains("row 1 "), "{e}");
    }

    #[test]
    fn rollup_sums_in_the_columns_own_type_like_pinot() {
        // INT wraps in 32 bits (Java int addition), never turning into NULL;
        // FLOAT sums in f32; LONG wraps in 64 bits
        let s = spec(json!({"mergeType": "rollup"}), json!({}));
        let big = i32::MAX - 1;
        let b = batch(&s, &[("UA", Some(0.1), i64::MAX, Some(big), 0), ("UA", Some(0.2), 1, Some(big), 0)]);
        let out = rollup(std::slice::from_ref(&b), &s.schema, &s.flow.aggregations).unwrap();
        let air = out[0].column(3).as_primitive::<Int32Type>();
        assert_eq!(air.value(0), big.wrapping_add(big), "INT sums wrap in 32 bits");
        assert!(air.is_valid(0), "an overflow is not a NULL");
        assert_eq!(out[0].column(2).as_primitive::<Int64Type>().value(0), i64::MIN, "LONG wraps");
        // the sums the controller checks agree modulo the width
        let sums = metric_sums(&[b], &s);
        let after = metric_sums(&out, &s);
        assert_eq!(sums["air"].0 as i32, after["air"].0 as i32);
        assert_eq!(sums["n"].0, after["n"].0);
        // FLOAT: f32 accumulation
        let fs = TableSpec::from_json(
            json!({"tableName": "g", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                   "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {"mergeType": "rollup"}}}}),
            json!({"dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
                   "metricFieldSpecs": [{"name": "f", "dataType": "FLOAT"}],
                   "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH"}]}),
        )
        .unwrap();
        let n = 1000;
        let fb = RecordBatch::try_new(
            fs.schema.arrow_schema(),
            vec![
                Arc::new(StringArray::from(vec!["a"; n])),
                Arc::new(Float32Array::from(vec![0.1f32; n])),
                Arc::new(Int64Array::from(vec![0i64; n])),
            ],
        )
        .unwrap();
        let out = rollup(&[fb], &fs.schema, &fs.flow.aggregations).unwrap();
        let mut expected = 0f32;
        for _ in 0..n {
            expected += 0.1f32;
        }
        assert_eq!(out[0].column(1).as_primitive::<Float32Type>().value(0), expected);
    }

    #[test]
    fn null_time_rows_are_counted_by_the_window_holding_the_segment_start() {
        let s = spec(json!({}), json!({}));
        let mut b = batch(&s, &[("UA", None, 1, None, 10), ("UA", None, 1, None, 20), ("UA", None, 1, None, H + 5)]);
        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![Some(10), None, Some(H + 5)]));
        let mut cols = b.columns().to_vec();
        cols[4] = ts;
        b = RecordBatch::try_new(b.schema(), cols).unwrap();
        let bytes = write_parquet(&s.schema.arrow_schema(), &[b]).unwrap();
        let out = process(
            &s,
            &[Window { start_ms: 0, end_ms: H }],
            vec![input("seg", bytes.clone())],
            &CancellationToken::new(),
            1,
        )
        .unwrap();
        assert_eq!((out.rows_in, out.rows_null_time), (1, 1));
        let later = Input {
            name: "seg".into(),
            bytes,
            count_null_time: false,
            start_ms: 0,
            schema_version: SchemaVersion::Current,
        };
        let out =
            process(&s, &[Window { start_ms: H, end_ms: 2 * H }], vec![later], &CancellationToken::new(), 1).unwrap();
        assert_eq!((out.rows_in, out.rows_null_time), (1, 0), "counted once, not by every window");
    }
}
