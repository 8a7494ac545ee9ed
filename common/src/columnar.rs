//! Arrow and Parquet helpers shared by the CLI (segment upload) and the
//! minion: reading a segment file against the table schema, the time column
//! as epoch ms, and writing zstd Parquet.

use arrow::array::{new_null_array, Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::compute::{cast, kernels::aggregate};
use arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::schema::{FieldKind, Schema, TimeFormat};

fn seg_err(segment: &str, problem: impl Into<String>) -> Error {
    Error::Segment { segment: segment.to_string(), problem: problem.into() }
}

/// Whether a file column of type `file` can be read as the table's `table` type.
fn compatible(file: &ArrowType, table: &ArrowType) -> bool {
    use ArrowType::*;
    if file == table {
        return true;
    }
    match (file, table) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8) => true,
        (Binary | LargeBinary | BinaryView, Binary) => true,
        (Timestamp(_, _), Timestamp(_, _)) => true,
        (Int8 | Int16 | Int32 | UInt8 | UInt16, Int32) => true,
        (Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32, Int64) => true,
        (Float16 | Float32, Float32) => true,
        (Float16 | Float32 | Float64, Float64) => true,
        (Dictionary(_, v), t) => compatible(v, t),
        _ => narrowing(file, table),
    }
}

/// A file type read as a narrower table type (streaming sinks write 64-bit
/// integers and doubles for every number): read when each value fits, and
/// a value that does not fit fails the read ([`conform_batch`]).
fn narrowing(file: &ArrowType, table: &ArrowType) -> bool {
    use ArrowType::*;
    matches!((file, table), (Int64 | UInt32 | UInt64, Int32) | (UInt64, Int64) | (Float64, Float32))
}

/// Checks that a file schema holds every table column with a compatible
/// type; extra file columns are ignored.
///
/// # Errors
/// [`Error::Segment`] naming the segment, the column and the problem.
pub fn check_file_schema(segment: &str, file: &ArrowSchema, schema: &Schema) -> Result<()> {
    check_file_schema_as(segment, file, schema, SchemaVersion::Current)
}

/// Which schema version a segment was registered under, relative to the
/// table's current schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// The current one: every table column must be in the file.
    Current,
    /// An older one (its `schemaFingerprint` differs): table columns added
    /// since may be missing from the file, and read as their
    /// `defaultNullValue` (or null); `r2o table update` allows no other change
    /// than adding columns and widening types.
    Older,
}

impl SchemaVersion {
    /// [`SchemaVersion::Older`] when `fingerprint` (a segment's) is not the
    /// table schema's.
    pub fn of(fingerprint: &str, schema: &Schema) -> SchemaVersion {
        if fingerprint.is_empty() || fingerprint == schema.fingerprint() {
            SchemaVersion::Current
        } else {
            SchemaVersion::Older
        }
    }
}

/// [`check_file_schema`] for a segment of schema version `version`.
///
/// # Errors
/// As [`check_file_schema`]; a missing column is allowed for an older version.
pub fn check_file_schema_as(segment: &str, file: &ArrowSchema, schema: &Schema, version: SchemaVersion) -> Result<()> {
    for f in &schema.fields {
        let want = f.data_type.arrow_type();
        match file.field_with_name(&f.name) {
            Err(_) if version == SchemaVersion::Older => {}
            Err(_) => {
                return Err(seg_err(
                    segment,
                    format!("column '{}' of the table schema is missing from the file", f.name),
                ))
            }
            Ok(ff) if !compatible(ff.data_type(), &want) => {
                return Err(seg_err(
                    segment,
                    format!(
                        "column '{}' has type {} in the file, expected {} ({})",
                        f.name,
                        ff.data_type(),
                        want,
                        f.data_type.name()
                    ),
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The staged-data check of a narrowing read: every value of `file` is
/// still there in `read` (an integer out of range casts to NULL, a finite
/// double out of FLOAT's range to an infinity).
///
/// # Errors
/// [`Error::Segment`] naming `segment`, the check, the column, how many
/// values do not fit `type_name` and the first (at most 3) of them.
fn check_fits(
    segment: &str,
    column: &str,
    type_name: &str,
    file: &ArrayRef,
    read: &ArrayRef,
    in_scope: Option<&arrow::array::BooleanArray>,
) -> Result<()> {
    let as_f64 = cast(file, &ArrowType::Float64).map_err(|e| seg_err(segment, e.to_string()))?;
    let as_f64 = as_f64.as_any().downcast_ref::<arrow::array::Float64Array>().expect("cast to Float64");
    let read_f64 = cast(read, &ArrowType::Float64).map_err(|e| seg_err(segment, e.to_string()))?;
    let read_f64 = read_f64.as_any().downcast_ref::<arrow::array::Float64Array>().expect("cast to Float64");
    let bad: Vec<usize> = (0..file.len())
        .filter(|&i| {
            in_scope.is_none_or(|m| m.value(i))
                && file.is_valid(i)
                && (read.is_null(i) || (as_f64.value(i).is_finite() && !read_f64.value(i).is_finite()))
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let shown = arrow::util::display::ArrayFormatter::try_new(file.as_ref(), &Default::default())
        .map_err(|e| seg_err(segment, e.to_string()))?;
    let first: Vec<String> = bad.iter().take(3).map(|&i| shown.value(i).to_string()).collect();
    Err(seg_err(
        segment,
        format!(
            "check 'fits the column type' failed: column '{column}' has {} value(s) that do not fit {type_name} (first: {})",
            bad.len(),
            first.join(", ")
        ),
    ))
}

/// Projects and casts a batch to the table's Arrow schema; a table column
/// missing from the batch (a segment of an older schema version, checked by
/// [`check_file_schema_as`]) is filled with its `defaultNullValue` (or null).
pub fn conform_batch(
    segment: &str,
    batch: &RecordBatch,
    schema: &Schema,
    target: &Arc<ArrowSchema>,
) -> Result<RecordBatch> {
    conform_batch_in(segment, batch, schema, target, None)
}

/// Which rows of `batch` a reader needs by `scope` (its time column inside
/// the window; NULL times never), or `None` for all of them.
fn scope_mask(batch: &RecordBatch, scope: Option<&TimeFilter>) -> Result<Option<arrow::array::BooleanArray>> {
    let Some(f) = scope else { return Ok(None) };
    let Some(col) = batch.column_by_name(&f.column) else { return Ok(None) };
    let ms = time_ms(col, f.format)?;
    Ok(Some(ms.iter().map(|v| Some(v.is_some_and(|v| f.window.start_ms <= v && v < f.window.end_ms))).collect()))
}

/// [`conform_batch`] for a reader that needs only the rows `scope` keeps:
/// the "fits the column type" check of a narrowing read looks at those rows
/// only, so a value that does not fit fails the windows it is in and no
/// other (finding 16 of issue 19). Rows outside `scope` may come back NULL
/// where their value does not fit; the caller filters them out.
///
/// # Errors
/// As [`conform_batch`].
pub fn conform_batch_in(
    segment: &str,
    batch: &RecordBatch,
    schema: &Schema,
    target: &Arc<ArrowSchema>,
    scope: Option<&TimeFilter>,
) -> Result<RecordBatch> {
    let mut mask: Option<Option<arrow::array::BooleanArray>> = None; // on the first narrowing only
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields.len());
    for f in &schema.fields {
        let Some(col) = batch.column_by_name(&f.name) else {
            columns.push(default_column(f, batch.num_rows())?);
            continue;
        };
        let want = f.data_type.arrow_type();
        if col.data_type() == &want {
            columns.push(col.clone());
        } else {
            let c = cast(col, &want).map_err(|e| {
                seg_err(segment, format!("column '{}' cannot be read as {}: {e}", f.name, f.data_type.name()))
            })?;
            if narrowing(col.data_type(), &want) {
                if mask.is_none() {
                    mask = Some(scope_mask(batch, scope)?);
                }
                let in_scope = mask.as_ref().and_then(Option::as_ref);
                check_fits(segment, &f.name, f.data_type.name(), col, &c, in_scope)?;
            }
            columns.push(c);
        }
    }
    RecordBatch::try_new(target.clone(), columns).map_err(|e| seg_err(segment, e.to_string()))
}

/// The staged-data checks on rows about to be moved (GOE checks staged data
/// before it is published): no NULL in a column whose field spec says
/// `notNull`, and no NaN in a FLOAT or DOUBLE metric unless `allow_nan`.
/// `time_column` (epoch values as stored) locates the first offenders.
///
/// # Errors
/// [`Error::Segment`] naming `segment`, the check, the column, how many rows
/// fail it and the time values of the first (at most 3) of them.
pub fn check_rows(
    segment: &str,
    batch: &RecordBatch,
    schema: &Schema,
    time_column: &str,
    allow_nan: bool,
) -> Result<()> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float32Type, Float64Type};
    let times = batch.column_by_name(time_column).and_then(|c| cast(c, &ArrowType::Int64).ok());
    let first = |rows: &[usize]| -> String {
        let shown: Vec<String> = rows
            .iter()
            .take(3)
            .map(|&i| match times.as_ref().map(|t| t.as_primitive::<arrow::datatypes::Int64Type>()) {
                Some(t) if t.is_valid(i) => format!("{time_column}={}", t.value(i)),
                _ => format!("row {i}"),
            })
            .collect();
        shown.join(", ")
    };
    for f in &schema.fields {
        let Some(col) = batch.column_by_name(&f.name) else { continue };
        if f.not_null && col.null_count() > 0 {
            let rows: Vec<usize> = (0..col.len()).filter(|&i| col.is_null(i)).collect();
            return Err(seg_err(
                segment,
                format!(
                    "staged-data check notNull failed: column '{}' is NULL in {} row(s) (first: {})",
                    f.name,
                    rows.len(),
                    first(&rows)
                ),
            ));
        }
        if !allow_nan && f.kind == FieldKind::Metric {
            let rows: Vec<usize> = match col.data_type() {
                ArrowType::Float32 => {
                    let a = col.as_primitive::<Float32Type>();
                    (0..a.len()).filter(|&i| a.is_valid(i) && a.value(i).is_nan()).collect()
                }
                ArrowType::Float64 => {
                    let a = col.as_primitive::<Float64Type>();
                    (0..a.len()).filter(|&i| a.is_valid(i) && a.value(i).is_nan()).collect()
                }
                _ => vec![],
            };
            if !rows.is_empty() {
                return Err(seg_err(
                    segment,
                    format!(
                        "staged-data check NaN failed: metric '{}' is NaN in {} row(s) (first: {}); set allowNaN to move them",
                        f.name,
                        rows.len(),
                        first(&rows)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Reads a Parquet segment into batches of the table's Arrow schema.
///
/// # Errors
/// [`Error::Segment`] naming the segment for a corrupt file or a schema
/// mismatch (naming the column).
pub fn read_segment(segment: &str, bytes: Bytes, schema: &Schema, batch_rows: usize) -> Result<Vec<RecordBatch>> {
    Ok(read_segment_in(segment, bytes, schema, SchemaVersion::Current, batch_rows, None)?.batches)
}

/// [`read_segment`] of a segment written under any version of the table's
/// schema (columns added since read as their `defaultNullValue`, narrower
/// types widened): how OFFLINE segments of several schema versions read as
/// one table.
pub fn read_segment_any_version(
    segment: &str,
    bytes: Bytes,
    schema: &Schema,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    Ok(read_segment_in(segment, bytes, schema, SchemaVersion::Older, batch_rows, None)?.batches)
}

/// What [`read_segment_in`] read.
#[derive(Debug, Default)]
pub struct SegmentRead {
    /// Batches of the kept row groups, in the table's Arrow schema.
    pub batches: Vec<RecordBatch>,
    /// Row groups skipped by their time statistics.
    pub skipped_row_groups: usize,
    /// Rows with a NULL time value in the skipped row groups (from their
    /// statistics' null counts; the kept ones are in `batches`).
    pub skipped_null_time_rows: u64,
}

/// Which rows a reader needs: those whose time column (in `format`) falls
/// in `[window.start_ms, window.end_ms)`.
#[derive(Debug, Clone)]
pub struct TimeFilter {
    /// Time column.
    pub column: String,
    /// Its format.
    pub format: TimeFormat,
    /// The window, ms.
    pub window: crate::window::Window,
}

/// Epoch-ms bounds of a row group's time column from its statistics, when
/// they exist (min and max may be inexact bounds; both stay conservative).
fn row_group_time_range(
    rg: &parquet::file::metadata::RowGroupMetaData,
    leaf: usize,
    arrow_type: &ArrowType,
    format: TimeFormat,
) -> Option<(i64, i64)> {
    use parquet::file::statistics::Statistics;
    let (lo, hi) = match rg.column(leaf).statistics()? {
        Statistics::Int64(s) => (*s.min_opt()?, *s.max_opt()?),
        Statistics::Int32(s) => (i64::from(*s.min_opt()?), i64::from(*s.max_opt()?)),
        _ => return None,
    };
    let to_ms = |v: i64| match arrow_type {
        ArrowType::Timestamp(TimeUnit::Second, _) => v.saturating_mul(1000),
        ArrowType::Timestamp(TimeUnit::Millisecond, _) => v,
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => v.div_euclid(1_000),
        ArrowType::Timestamp(TimeUnit::Nanosecond, _) => v.div_euclid(1_000_000),
        _ => format.to_ms(v),
    };
    Some((to_ms(lo), to_ms(hi)))
}

/// Which row groups of a file a [`TimeFilter`] keeps (see [`prune_row_groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroupPruning {
    /// Row groups to read, in file order.
    pub keep: Vec<usize>,
    /// Row groups skipped: their time statistics show no row in the window.
    pub skipped: usize,
    /// Rows with a NULL time value in the skipped row groups (statistics' null counts).
    pub skipped_null_time_rows: u64,
}

/// The row groups of a file (its footer `meta` and Arrow schema `file`)
/// whose time-column statistics may hold rows in `f`'s window; `None` when
/// the file has no such column or statistics to prune by.
pub fn prune_row_groups(
    meta: &parquet::file::metadata::ParquetMetaData,
    file: &ArrowSchema,
    f: &TimeFilter,
) -> Option<RowGroupPruning> {
    let leaf =
        meta.file_metadata().schema_descr().columns().iter().position(|c| c.path().parts() == [f.column.clone()])?;
    let t = file.field_with_name(&f.column).ok()?.data_type().clone();
    let keep: Vec<usize> = (0..meta.num_row_groups())
        .filter(|i| match row_group_time_range(meta.row_group(*i), leaf, &t, f.format) {
            Some((lo, hi)) => hi >= f.window.start_ms && lo < f.window.end_ms,
            None => true,
        })
        .collect();
    let skipped = meta.num_row_groups() - keep.len();
    let skipped_null_time_rows = (0..meta.num_row_groups())
        .filter(|i| !keep.contains(i))
        .filter_map(|i| meta.row_group(i).column(leaf).statistics().and_then(|s| s.null_count_opt()))
        .sum();
    Some(RowGroupPruning { keep, skipped, skipped_null_time_rows })
}

/// What registering a REALTIME segment needs to know about its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFacts {
    /// Rows.
    pub rows: u64,
    /// Smallest and largest time value, epoch ms; `None` when no row has one.
    pub time_range_ms: Option<(i64, i64)>,
    /// Rows whose time is NULL.
    pub null_time_rows: u64,
}

/// Reads a segment file's row count, time range and NULL-time rows, from its
/// footer's statistics when every row group has exact ones (no data is
/// decoded), else by reading the time column. Checks the file against the table schema.
///
/// # Errors
/// [`Error::Segment`] naming the segment for an unreadable file or a schema
/// mismatch (naming the column).
pub fn segment_facts(
    segment: &str,
    bytes: Bytes,
    schema: &Schema,
    time_column: &str,
    format: TimeFormat,
) -> Result<SegmentFacts> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .map_err(|e| seg_err(segment, format!("not a readable Parquet file: {e}")))?;
    check_file_schema(segment, builder.schema(), schema)?;
    if let Some(facts) = facts_from_statistics(builder.metadata(), builder.schema(), time_column, format) {
        return Ok(facts);
    }
    let batches = read_segment(segment, bytes, schema, 64 * 1024)?;
    Ok(SegmentFacts {
        rows: num_rows(&batches),
        time_range_ms: time_range_ms(&batches, time_column, format)?,
        null_time_rows: null_time_rows(&batches, time_column)?,
    })
}

/// [`segment_facts`] of an object in a store, without holding the file:
/// the footer (ranged reads), and, when its statistics are not exact, the
/// time column alone, streamed a batch at a time (segment discovery reads
/// files of any size inside the leader: reading them whole, eight at a
/// time, outgrew the controller's memory; finding 8 of issue 19).
/// `path` is a path of `store` (from [`crate::store::resolve`]), `size_bytes`
/// the object's listed size.
///
/// Also returns the footer's [`FooterFacts`] (decoded anyway), which the
/// controller keeps for validating the windows that read the segment.
///
/// # Errors
/// As [`segment_facts`]; store errors as [`Error::Segment`] too.
pub async fn segment_facts_in_store(
    segment: &str,
    store: &crate::store::Store,
    path: &str,
    size_bytes: u64,
    schema: &Schema,
    time_column: &str,
    format: TimeFormat,
) -> Result<(SegmentFacts, FooterFacts)> {
    use futures::TryStreamExt;
    use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
    let reader = reader::StoreReader::new(store.clone(), path, size_bytes);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| seg_err(segment, format!("not a readable Parquet file: {e}")))?;
    check_file_schema(segment, builder.schema(), schema)?;
    let footer = footer_facts(builder.metadata());
    if let Some(facts) = facts_from_statistics(builder.metadata(), builder.schema(), time_column, format) {
        return Ok((facts, footer));
    }
    let leaf = builder
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [time_column.to_string()])
        .ok_or_else(|| seg_err(segment, format!("time column '{time_column}' is missing")))?;
    let mask = parquet::arrow::ProjectionMask::leaves(builder.metadata().file_metadata().schema_descr(), [leaf]);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| seg_err(segment, format!("not a readable Parquet file: {e}")))?;
    let mut facts = SegmentFacts { rows: 0, time_range_ms: None, null_time_rows: 0 };
    while let Some(b) = stream.try_next().await.map_err(|e| seg_err(segment, format!("corrupt data: {e}")))? {
        facts.rows += b.num_rows() as u64;
        facts.null_time_rows += null_time_rows(std::slice::from_ref(&b), time_column)?;
        if let Some((lo, hi)) = time_range_ms(std::slice::from_ref(&b), time_column, format)? {
            facts.time_range_ms = Some(facts.time_range_ms.map_or((lo, hi), |(a, c)| (a.min(lo), c.max(hi))));
        }
    }
    Ok((facts, footer))
}

/// A file's facts from its footer alone, when every row group has exact
/// statistics (and null counts) for the time column; `None` otherwise.
fn facts_from_statistics(
    meta: &parquet::file::metadata::ParquetMetaData,
    file_schema: &ArrowSchema,
    time_column: &str,
    format: TimeFormat,
) -> Option<SegmentFacts> {
    use parquet::file::statistics::Statistics;
    let rows = meta.file_metadata().num_rows().max(0) as u64;
    let leaf = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [time_column.to_string()]);
    let leaf = leaf?;
    let t = file_schema.field_with_name(time_column).map(|f| f.data_type().clone()).ok()?;
    let mut range: Option<(i64, i64)> = None;
    let mut null_time_rows = 0u64;
    for rg in meta.row_groups() {
        let stats = rg.column(leaf).statistics()?;
        let nulls = stats.null_count_opt()?;
        null_time_rows += nulls;
        if nulls == rg.num_rows() as u64 {
            continue; // every value of the group is null
        }
        let exact_here = match stats {
            Statistics::Int64(s) => s.min_is_exact() && s.max_is_exact(),
            Statistics::Int32(s) => s.min_is_exact() && s.max_is_exact(),
            _ => false,
        };
        match (exact_here, row_group_time_range(rg, leaf, &t, format)) {
            (true, Some((lo, hi))) => range = Some(range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi)))),
            _ => return None,
        }
    }
    Some(SegmentFacts { rows, time_range_ms: range, null_time_rows })
}

/// Rows of `batches` whose `time_column` is NULL.
///
/// # Errors
/// [`Error::Segment`] when the column is missing.
pub fn null_time_rows(batches: &[RecordBatch], time_column: &str) -> Result<u64> {
    let mut n = 0u64;
    for b in batches {
        let col = b.column_by_name(time_column).ok_or_else(|| Error::Segment {
            segment: String::new(),
            problem: format!("time column '{time_column}' is missing"),
        })?;
        n += col.null_count() as u64;
    }
    Ok(n)
}

/// Like [`read_segment`], skipping row groups whose time-column statistics
/// show no row in `filter`'s window. Rows of the kept row groups still need
/// filtering.
pub fn read_segment_in(
    segment: &str,
    bytes: Bytes,
    schema: &Schema,
    version: SchemaVersion,
    batch_rows: usize,
    filter: Option<&TimeFilter>,
) -> Result<SegmentRead> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| seg_err(segment, format!("not a readable Parquet file: {e}")))?;
    check_file_schema_as(segment, builder.schema(), schema, version)?;
    let mut skipped = 0;
    let mut skipped_nulls = 0u64;
    let builder = match filter.and_then(|f| prune_row_groups(builder.metadata(), builder.schema(), f)) {
        None => builder,
        Some(p) => {
            skipped = p.skipped;
            skipped_nulls = p.skipped_null_time_rows;
            builder.with_row_groups(p.keep)
        }
    };
    let reader = builder
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| seg_err(segment, format!("not a readable Parquet file: {e}")))?;
    let target = schema.arrow_schema();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| seg_err(segment, format!("corrupt data: {e}")))?;
        out.push(conform_batch_in(segment, &batch, schema, &target, filter)?);
    }
    Ok(SegmentRead { batches: out, skipped_row_groups: skipped, skipped_null_time_rows: skipped_nulls })
}

/// The exact range of a column's non-null values, from a footer's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRange {
    /// INT, LONG and TIMESTAMP columns (physical INT32 / INT64, signed).
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// FLOAT and DOUBLE columns (NaN is not part of Parquet statistics).
    Float {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
}

impl ValueRange {
    /// The smallest range holding both; `None` when one is INT and the
    /// other FLOAT (not comparable).
    pub fn merge(self, other: ValueRange) -> Option<ValueRange> {
        match (self, other) {
            (ValueRange::Int { min: a, max: b }, ValueRange::Int { min: c, max: d }) => {
                Some(ValueRange::Int { min: a.min(c), max: b.max(d) })
            }
            (ValueRange::Float { min: a, max: b }, ValueRange::Float { min: c, max: d }) => {
                Some(ValueRange::Float { min: a.min(c), max: b.max(d) })
            }
            _ => None,
        }
    }

    /// Whether every value of `self` lies within `outer`.
    pub fn within(&self, outer: &ValueRange) -> bool {
        match (self, outer) {
            (ValueRange::Int { min, max }, ValueRange::Int { min: lo, max: hi }) => lo <= min && max <= hi,
            (ValueRange::Float { min, max }, ValueRange::Float { min: lo, max: hi }) => lo <= min && max <= hi,
            _ => false,
        }
    }
}

impl std::fmt::Display for ValueRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueRange::Int { min, max } => write!(f, "[{min}, {max}]"),
            ValueRange::Float { min, max } => write!(f, "[{min}, {max}]"),
        }
    }
}

/// What a Parquet file's footer says, without reading its data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FooterFacts {
    /// Rows in the file.
    pub num_rows: u64,
    /// Per top-level numeric column: the exact range of its non-null values,
    /// when every row group with values has exact statistics for it.
    pub ranges: std::collections::BTreeMap<String, ValueRange>,
}

/// Reads [`FooterFacts`] out of decoded Parquet metadata.
pub fn footer_facts(meta: &parquet::file::metadata::ParquetMetaData) -> FooterFacts {
    use parquet::basic::ConvertedType;
    use parquet::file::statistics::Statistics;
    let descr = meta.file_metadata().schema_descr();
    let mut ranges = std::collections::BTreeMap::new();
    for (leaf, col) in descr.columns().iter().enumerate() {
        let parts = col.path().parts();
        if parts.len() != 1
            || matches!(
                col.converted_type(),
                ConvertedType::UINT_8 | ConvertedType::UINT_16 | ConvertedType::UINT_32 | ConvertedType::UINT_64
            )
        {
            continue;
        }
        let mut range: Option<ValueRange> = None;
        let mut usable = true;
        for rg in meta.row_groups() {
            let c = rg.column(leaf);
            let Some(stats) = c.statistics() else {
                usable = false;
                break;
            };
            let values = rg.num_rows() as u64 - stats.null_count_opt().unwrap_or(0);
            if values == 0 {
                continue;
            }
            let r = match stats {
                Statistics::Int32(s) if s.min_is_exact() && s.max_is_exact() => s
                    .min_opt()
                    .zip(s.max_opt())
                    .map(|(a, b)| ValueRange::Int { min: i64::from(*a), max: i64::from(*b) }),
                Statistics::Int64(s) if s.min_is_exact() && s.max_is_exact() => {
                    s.min_opt().zip(s.max_opt()).map(|(a, b)| ValueRange::Int { min: *a, max: *b })
                }
                Statistics::Float(s) => s
                    .min_opt()
                    .zip(s.max_opt())
                    .map(|(a, b)| ValueRange::Float { min: f64::from(*a), max: f64::from(*b) }),
                Statistics::Double(s) => {
                    s.min_opt().zip(s.max_opt()).map(|(a, b)| ValueRange::Float { min: *a, max: *b })
                }
                _ => None,
            };
            match (r, range) {
                // a row group with values but no usable statistics (all NaN
                // floats, inexact bounds): the column's range is unknown
                (None, _) => {
                    usable = false;
                    break;
                }
                (Some(r), None) => range = Some(r),
                (Some(r), Some(acc)) => range = acc.merge(r),
            }
        }
        if let (true, Some(r)) = (usable, range) {
            ranges.insert(parts[0].clone(), r);
        }
    }
    FooterFacts { num_rows: meta.file_metadata().num_rows().max(0) as u64, ranges }
}

/// Largest Parquet footer r2o reads, bytes: a footer of thousands of row
/// groups and hundreds of columns is a few MiB; a length past this is a
/// broken or hostile file, refused before anything is allocated for it.
pub const MAX_FOOTER_BYTES: u64 = 64 * 1024 * 1024;

/// The footer length a Parquet file's last 8 bytes (`end8`) declare, checked
/// against the file's `size_bytes` and [`MAX_FOOTER_BYTES`]. Pure.
///
/// # Errors
/// A message naming what is wrong: too short, no `PAR1`, a length larger
/// than the file or the limit.
pub fn footer_length(end8: &[u8], size_bytes: u64) -> std::result::Result<u64, String> {
    if size_bytes < 12 || end8.len() < 8 {
        return Err(format!("{size_bytes} bytes is too short for a Parquet file"));
    }
    let end = &end8[end8.len() - 8..];
    if &end[4..8] != b"PAR1" {
        return Err("no Parquet footer (the file does not end with PAR1)".into());
    }
    let len = u64::from(u32::from_le_bytes([end[0], end[1], end[2], end[3]]));
    if len + 8 > size_bytes {
        return Err(format!("footer length {len} is larger than the file ({size_bytes} bytes)"));
    }
    if len > MAX_FOOTER_BYTES {
        return Err(format!("footer length {len} bytes: expected at most {MAX_FOOTER_BYTES} (r2o's footer limit)"));
    }
    Ok(len)
}

/// What [`FooterFacts`] needs of a footer: row counts and column
/// statistics, not the page encoding or size statistics (skipped while
/// decoding: the controller decodes every REALTIME input's footer once).
fn facts_options() -> &'static parquet::file::metadata::ParquetMetaDataOptions {
    use parquet::file::metadata::{ParquetMetaDataOptions, ParquetStatisticsPolicy};
    static OPTIONS: std::sync::OnceLock<ParquetMetaDataOptions> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        ParquetMetaDataOptions::new()
            .with_encoding_stats_policy(ParquetStatisticsPolicy::SkipAll)
            .with_size_stats_policy(ParquetStatisticsPolicy::SkipAll)
    })
}

/// Decodes [`FooterFacts`] from the last bytes of a Parquet file of
/// `size_bytes` bytes; `Ok(None)` when `tail` does not hold the whole footer.
fn facts_from_tail(location: &str, size_bytes: u64, tail: &[u8]) -> Result<Option<FooterFacts>> {
    let len = footer_length(tail, size_bytes).map_err(|m| seg_err(location, m))? as usize;
    if len + 8 > tail.len() {
        return Ok(None);
    }
    let raw = &tail[tail.len() - 8 - len..tail.len() - 8];
    let meta = parquet::file::metadata::ParquetMetaDataReader::decode_metadata_with_options(raw, Some(facts_options()))
        .map_err(|e| seg_err(location, format!("the Parquet footer does not decode: {e}")))?;
    Ok(Some(footer_facts(&meta)))
}

/// Bytes read from the end of a file to find its footer in one request.
const TAIL_BYTES: u64 = 16 * 1024;

/// Size and [`FooterFacts`] of a Parquet object, usually in one read of
/// its last 16 KiB; `Ok(None)` when the object does not exist. The inner
/// result is the file's own problem (not Parquet, bad footer), the outer one
/// the store's.
pub async fn object_footer(store: &crate::store::Store, location: &str) -> Result<Option<(u64, Result<FooterFacts>)>> {
    let Some((size, tail)) = crate::store::get_tail(store, location, TAIL_BYTES).await? else {
        return Ok(None);
    };
    match facts_from_tail(location, size, &tail) {
        Ok(Some(f)) => Ok(Some((size, Ok(f)))),
        Ok(None) => Ok(Some((size, read_footer_facts(store, location, size).await))),
        Err(e) => Ok(Some((size, Err(e)))),
    }
}

/// Reads a Parquet file's footer from the store (two ranged reads: the
/// 8-byte tail, then the metadata) and returns its [`FooterFacts`].
/// `size_bytes` is the object's size.
///
/// # Errors
/// [`Error::Segment`] naming `location` when the file is too short or its
/// footer does not decode; store errors.
pub async fn read_footer_facts(store: &crate::store::Store, location: &str, size_bytes: u64) -> Result<FooterFacts> {
    use crate::store::get_range;
    if size_bytes < 12 {
        return Err(seg_err(location, format!("{size_bytes} bytes is too short for a Parquet file")));
    }
    let tail = get_range(store, location, size_bytes - 8..size_bytes).await?;
    let len = footer_length(&tail, size_bytes).map_err(|m| seg_err(location, m))?;
    let raw = get_range(store, location, size_bytes - 8 - len..size_bytes - 8).await?;
    let meta =
        parquet::file::metadata::ParquetMetaDataReader::decode_metadata_with_options(&raw, Some(facts_options()))
            .map_err(|e| seg_err(location, format!("the Parquet footer does not decode: {e}")))?;
    Ok(footer_facts(&meta))
}

/// The time column as epoch ms (nulls stay null).
///
/// Accepts Int32/Int64 in `format`, or any Arrow timestamp.
pub fn time_ms(column: &ArrayRef, format: TimeFormat) -> Result<Int64Array> {
    let as_i64 = |c: &ArrayRef| -> Result<Int64Array> {
        let c = cast(c, &ArrowType::Int64)?;
        Ok(c.as_any().downcast_ref::<Int64Array>().cloned().expect("cast to Int64"))
    };
    match column.data_type() {
        ArrowType::Timestamp(unit, _) => {
            let raw = as_i64(&cast(column, &ArrowType::Timestamp(*unit, None))?)?;
            let per_ms: i64 = match unit {
                TimeUnit::Second => {
                    return Ok(arrow::compute::kernels::arity::unary(&raw, |v: i64| v.saturating_mul(1000)))
                }
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            Ok(arrow::compute::kernels::arity::unary(&raw, |v: i64| v.div_euclid(per_ms)))
        }
        _ => {
            let raw = as_i64(column)?;
            if format.ms_per_value == 1 {
                return Ok(raw);
            }
            Ok(arrow::compute::kernels::arity::unary(&raw, |v: i64| format.to_ms(v)))
        }
    }
}

/// Min and max of the time column in ms over batches; `None` when every
/// value is null or there are no rows.
pub fn time_range_ms(batches: &[RecordBatch], time_column: &str, format: TimeFormat) -> Result<Option<(i64, i64)>> {
    let mut range: Option<(i64, i64)> = None;
    for b in batches {
        let col = b.column_by_name(time_column).ok_or_else(|| Error::Segment {
            segment: String::new(),
            problem: format!("time column '{time_column}' is missing"),
        })?;
        let ms = time_ms(col, format)?;
        if let (Some(lo), Some(hi)) = (aggregate::min(&ms), aggregate::max(&ms)) {
            range = Some(match range {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
    }
    Ok(range)
}

/// Rows per row group of REALTIME segments written by r2o: small enough that
/// a window read skips most of a segment it only touches.
pub const REALTIME_ROW_GROUP_ROWS: usize = 8 * 1024;

/// Encodes batches as one zstd Parquet file (row groups of up to 1 Mi rows).
pub fn write_parquet(schema: &Arc<ArrowSchema>, batches: &[RecordBatch]) -> Result<Bytes> {
    write_parquet_with(schema, batches, 1 << 20)
}

/// Encodes batches as one zstd Parquet file with row groups of at most
/// `row_group_rows` rows (each row group carries min/max statistics).
pub fn write_parquet_with(schema: &Arc<ArrowSchema>, batches: &[RecordBatch], row_group_rows: usize) -> Result<Bytes> {
    let props = writer_properties(row_group_rows)?;
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(Bytes::from(buf))
}

/// The properties every Parquet segment r2o writes has: zstd level 3, row
/// groups of at most `row_group_rows` rows, min/max statistics.
pub fn writer_properties(row_group_rows: usize) -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build())
}

/// Rows in a set of batches.
pub fn num_rows(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

/// A constant column holding a field's `defaultNullValue` (or nulls).
fn default_column(field: &crate::schema::FieldSpec, rows: usize) -> Result<ArrayRef> {
    let t = field.data_type.arrow_type();
    let Some(v) = &field.default_null_value else {
        return Ok(new_null_array(&t, rows));
    };
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let col: ArrayRef = Arc::new(StringArray::from(vec![text.as_str(); rows]));
    cast(&col, &t).map_err(|e| {
        Error::Config(crate::ConfigError::Invalid {
            field: format!("{}.defaultNullValue", field.name),
            value: text.clone(),
            expected: format!("a {} value ({e})", field.data_type.name()),
        })
    })
}

/// Reads a CSV file into batches of the table schema. Table columns missing
/// from the file get their `defaultNullValue` (Pinot's rule); `NA`, `null`
/// and empty cells are nulls.
pub fn read_csv(path: &std::path::Path, schema: &Schema) -> Result<Vec<RecordBatch>> {
    let io = |e: std::io::Error| seg_err(&path.display().to_string(), format!("cannot read the file: {e}"));
    let file = std::fs::File::open(path).map_err(io)?;
    let mut header = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&file), &mut header).map_err(io)?;
    let names: Vec<String> = header.trim_end().split(',').map(|s| s.trim_matches('"').to_string()).collect();
    let csv_schema = Arc::new(ArrowSchema::new(
        names
            .iter()
            .map(|n| Field::new(n, schema.field(n).map_or(ArrowType::Utf8, |f| f.data_type.arrow_type()), true))
            .collect::<Vec<_>>(),
    ));
    let file = std::fs::File::open(path).map_err(io)?;
    let reader = arrow::csv::ReaderBuilder::new(csv_schema)
        .with_header(true)
        .with_batch_size(64 * 1024)
        .with_null_regex(regex::Regex::new("^(NA|null|NULL|)$").expect("valid regex"))
        .build(file)?;
    let target = schema.arrow_schema();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| seg_err(&path.display().to_string(), format!("cannot parse CSV: {e}")))?;
        let mut cols = Vec::with_capacity(schema.fields.len());
        for f in &schema.fields {
            cols.push(match batch.column_by_name(&f.name) {
                Some(c) => c.clone(),
                None => default_column(f, batch.num_rows())?,
            });
        }
        out.push(RecordBatch::try_new(target.clone(), cols)?);
    }
    Ok(out)
}

/// Reading Parquet objects in place, for the minion's bounded-memory path
/// and for discovery's footers (no file is held whole past
/// [`WHOLE_FILE_BYTES`]).
pub mod reader {
    use crate::error::store_retryable;
    use crate::retry::store_backoff;
    use crate::store::Store;
    use backon::Retryable;
    use bytes::Bytes;
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use object_store::path::Path;
    use object_store::ObjectStoreExt;
    use parquet::arrow::arrow_reader::ArrowReaderOptions;
    use parquet::arrow::async_reader::AsyncFileReader;
    use parquet::errors::ParquetError;
    use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
    use std::ops::Range;
    use std::sync::Arc;

    /// Inputs up to this size are fetched whole in one request (a footer read
    /// and a ranged read per column chunk would cost more requests than bytes);
    /// larger ones are read by row group with ranged reads, bytes.
    pub const WHOLE_FILE_BYTES: u64 = 1 << 20;

    /// Parquet's async reader over one object of the store: a small object is
    /// fetched whole on the first request and served from memory; a large one
    /// by ranged reads (the footer, then the kept row groups' column chunks).
    pub struct StoreReader {
        store: Store,
        path: Path,
        size: u64,
        whole: Option<Bytes>,
    }

    impl StoreReader {
        /// A reader of the object at `location` (a path of this install's store,
        /// or one [`crate::store::resolve`]d from an external location), `size`
        /// bytes long.
        pub fn new(store: Store, location: &str, size: u64) -> StoreReader {
            StoreReader { store, path: crate::store::object_path(location), size, whole: None }
        }

        /// Fetches a small object ([`WHOLE_FILE_BYTES`]) whole now, so that
        /// reading it later waits on no request (a source fetches the inputs
        /// after the one it decodes while it decodes); a large one is left to
        /// its ranged reads.
        ///
        /// # Errors
        /// Store errors left after the retries.
        pub async fn fetched(mut self) -> parquet::errors::Result<StoreReader> {
            if self.size <= WHOLE_FILE_BYTES {
                self.whole().await?;
            }
            Ok(self)
        }

        /// The whole object, fetched on the first call (retried like
        /// [`Self::fetch`]).
        async fn whole(&mut self) -> parquet::errors::Result<&Bytes> {
            if self.whole.is_none() {
                let (store, path) = (&self.store, &self.path);
                let get = || async { store.get(path).await?.bytes().await };
                let got = get.retry(store_backoff()).when(store_retryable).await;
                self.whole = Some(got.map_err(|e| ParquetError::External(Box::new(e)))?);
            }
            Ok(self.whole.as_ref().expect("fetched above"))
        }

        /// The bytes of `ranges`; each store call is retried ([`store_backoff`])
        /// on errors that may pass, so a transient failure in the middle of a
        /// window does not fail the attempt.
        async fn fetch(&mut self, ranges: Vec<Range<u64>>) -> parquet::errors::Result<Vec<Bytes>> {
            if self.size <= WHOLE_FILE_BYTES {
                let whole = self.whole().await?;
                return ranges
                    .into_iter()
                    .map(|r| {
                        whole
                            .get(r.start as usize..r.end as usize)
                            .map(|_| whole.slice(r.start as usize..r.end as usize))
                            .ok_or_else(|| {
                                ParquetError::EOF(format!("range {r:?} past the object's {} bytes", whole.len()))
                            })
                    })
                    .collect();
            }
            let external = |e: object_store::Error| ParquetError::External(Box::new(e));
            let (store, path) = (self.store.clone(), self.path.clone());
            let ranged = || store.get_ranges(&path, &ranges);
            ranged.retry(store_backoff()).when(store_retryable).await.map_err(external)
        }
    }

    impl AsyncFileReader for StoreReader {
        fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
            async move { Ok(self.fetch(vec![range]).await?.remove(0)) }.boxed()
        }

        fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
            self.fetch(ranges).boxed()
        }

        fn get_metadata<'a>(
            &'a mut self,
            _options: Option<&'a ArrowReaderOptions>,
        ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
            // the footer's declared length is checked (super::footer_length)
            // before it is read: a lying length cannot make us allocate it
            async move {
                let size = self.size;
                if size < 12 {
                    return Err(ParquetError::General(format!("{size} bytes is too short for a Parquet file")));
                }
                let tail_len = size.min(64 * 1024);
                let range = size - tail_len..size;
                let tail = self.fetch(vec![range]).await?.remove(0);
                let len = super::footer_length(&tail, size).map_err(ParquetError::General)?;
                let raw = if len + 8 <= tail_len {
                    tail.slice((tail_len - 8 - len) as usize..(tail_len - 8) as usize)
                } else {
                    let range = size - 8 - len..size - 8;
                    self.fetch(vec![range]).await?.remove(0)
                };
                Ok(Arc::new(ParquetMetaDataReader::decode_metadata(&raw)?))
            }
            .boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, TimestampMillisecondArray};
    use arrow::datatypes::Field;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_json(&json!({
            "dimensionFieldSpecs": [{"name": "d", "dataType": "STRING"}],
            "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP"}]
        }))
        .unwrap()
    }

    #[test]
    fn round_trips_and_widens_types() {
        let file_schema = Arc::new(ArrowSchema::new(vec![
            Field::new("d", ArrowType::Utf8, true),
            Field::new("m", ArrowType::Int32, true),
            Field::new("ts", ArrowType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("extra", ArrowType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            file_schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(TimestampMillisecondArray::from(vec![10, -5])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let bytes = write_parquet(&file_schema, &[batch]).unwrap();
        let s = schema();
        let got = read_segment("seg", bytes, &s, 1024).unwrap();
        assert_eq!(got[0].schema(), s.arrow_schema());
        assert_eq!(time_range_ms(&got, "ts", TimeFormat::MILLIS).unwrap(), Some((-5, 10)));
    }

    #[test]
    fn prunes_row_groups_outside_the_window_only() {
        let s = schema();
        let rows = 1000i64;
        let batch = RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                Arc::new(StringArray::from(vec!["a"; rows as usize])),
                Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())),
                Arc::new(TimestampMillisecondArray::from((0..rows).map(|i| i * 10).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let bytes = write_parquet_with(&s.arrow_schema(), &[batch], 100).unwrap();
        // rows 250..=349 have ts in [2500, 3500): row groups 2 and 3 only
        let filter = TimeFilter {
            column: "ts".into(),
            format: TimeFormat::MILLIS,
            window: crate::window::Window { start_ms: 2500, end_ms: 3500 },
        };
        let read = read_segment_in("seg", bytes.clone(), &s, SchemaVersion::Current, 64, Some(&filter)).unwrap();
        let (got, skipped) = (read.batches, read.skipped_row_groups);
        assert_eq!(skipped, 8);
        let ts: Vec<i64> =
            got.iter().flat_map(|b| time_ms(b.column(2), TimeFormat::MILLIS).unwrap().values().to_vec()).collect();
        assert_eq!(ts.len(), 200);
        assert_eq!(
            (ts[0], *ts.last().unwrap()),
            (2000, 3990),
            "whole row groups are kept, the filter stage trims them"
        );
        // every row of the window is among them
        assert!((250..350).all(|i| ts.contains(&(i * 10))));
        // no filter: everything
        assert_eq!(read_segment_in("seg", bytes, &s, SchemaVersion::Current, 64, None).unwrap().skipped_row_groups, 0);
    }

    #[test]
    fn names_missing_and_mismatched_columns() {
        let s = schema();
        let f = ArrowSchema::new(vec![Field::new("d", ArrowType::Utf8, true), Field::new("m", ArrowType::Utf8, true)]);
        let e = check_file_schema("seg1", &f, &s).unwrap_err().to_string();
        assert!(e.contains("seg1") && e.contains("'m'") && e.contains("Utf8"), "{e}");
        let f = ArrowSchema::new(vec![Field::new("d", ArrowType::Utf8, true), Field::new("m", ArrowType::Int64, true)]);
        let e = check_file_schema("seg1", &f, &s).unwrap_err().to_string();
        assert!(e.contains("'ts'") && e.contains("missing"), "{e}");
        let e = read_segment("seg2", Bytes::from_static(b"PAR1garbage"), &s, 10).unwrap_err().to_string();
        assert!(e.contains("seg2") && e.contains("Parquet"), "{e}");
    }

    fn codec_file(compression: Compression) -> Bytes {
        let s = schema();
        let batch = RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a"])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(-7)])),
                Arc::new(TimestampMillisecondArray::from(vec![5, 6, 7])),
            ],
        )
        .unwrap();
        file_with(&batch, WriterProperties::builder().set_compression(compression).build())
    }

    /// `batch` as a Parquet file written with `props`.
    fn file_with(batch: &RecordBatch, props: WriterProperties) -> Bytes {
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        Bytes::from(buf)
    }

    #[test]
    fn reads_every_codec_parquet_allows() {
        use parquet::basic::{BrotliLevel, GzipLevel};
        for c in [
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::GZIP(GzipLevel::default()),
            Compression::LZ4,
            Compression::LZ4_RAW,
            Compression::BROTLI(BrotliLevel::default()),
            Compression::ZSTD(ZstdLevel::default()),
        ] {
            let got = read_segment("seg", codec_file(c), &schema(), 1024).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(num_rows(&got), 3, "{c:?}");
        }
    }

    /// The vendored zstd creates its contexts on first use and reuses them
    /// (vendor/zstd/R2O-PATCH.md): the level given to the codec must still
    /// reach the context, and files written at any level read back.
    #[test]
    fn zstd_levels_reach_the_lazily_created_context() {
        let s = schema();
        let n = 20_000;
        let batch = RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                Arc::new(StringArray::from((0..n).map(|i| format!("k{}", (i * 7919) % 1013)).collect::<Vec<_>>())),
                Arc::new(Int64Array::from((0..n).map(|i| Some((i * 104_729) % 65_537)).collect::<Vec<_>>())),
                Arc::new(TimestampMillisecondArray::from((0..n).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let write = |level: i32| {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).unwrap()))
                .set_dictionary_enabled(false)
                .build();
            file_with(&batch, props)
        };
        // were the level lost, every file would be zstd's default level's bytes
        let files = [write(1), write(3), write(19)];
        assert!(files[0] != files[1] && files[1] != files[2] && files[0] != files[2], "each level gives other bytes");
        // contexts are given back to a per-thread pool, reset, and taken by
        // the next compressor: it writes its own level's bytes, whatever the
        // context compressed before
        assert_eq!(write(1), files[0], "a pooled context takes the next compressor's level");
        assert_eq!(write(19), files[2]);
        assert_eq!(write(3), files[1]);
        for file in files {
            assert_eq!(num_rows(&read_segment("seg", file, &s, 1024).unwrap()), n as u64);
        }
    }

    #[test]
    fn narrowing_reads_values_that_fit_and_refuses_the_rest() {
        let s = Schema::from_json(&json!({
            "metricFieldSpecs": [{"name": "i", "dataType": "INT"}, {"name": "f", "dataType": "FLOAT"}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH"}]
        }))
        .unwrap();
        let target = s.arrow_schema();
        let batch = |i: Vec<Option<i64>>, f: Vec<f64>| {
            let n = i.len();
            RecordBatch::try_from_iter(vec![
                ("i", Arc::new(Int64Array::from(i)) as ArrayRef),
                ("f", Arc::new(arrow::array::Float64Array::from(f)) as ArrayRef),
                ("ts", Arc::new(Int64Array::from(vec![1i64; n])) as ArrayRef),
            ])
            .unwrap()
        };
        check_file_schema("seg", &batch(vec![], vec![]).schema(), &s).unwrap();
        let ok = conform_batch(
            "seg",
            &batch(vec![Some(-5), None, Some(i32::MAX as i64)], vec![1.5, 0.0, -2.0]),
            &s,
            &target,
        )
        .unwrap();
        assert_eq!(ok.column(0).as_any().downcast_ref::<arrow::array::Int32Array>().unwrap().value(2), i32::MAX);
        assert_eq!(ok.column(0).null_count(), 1, "a NULL stays NULL");
        let e = conform_batch("seg", &batch(vec![Some(1), Some(1 << 40), Some(-(1 << 33))], vec![0.0; 3]), &s, &target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'i'") && e.contains("2 value(s)") && e.contains("1099511627776"), "{e}");
        let e = conform_batch("seg", &batch(vec![Some(1)], vec![1e300]), &s, &target).unwrap_err().to_string();
        assert!(e.contains("'f'") && e.contains("FLOAT") && e.contains("1e300"), "{e}");
        // finding 16 of issue 19: a reader of one window checks the rows of that window only
        let spread = RecordBatch::try_from_iter(vec![
            ("i", Arc::new(Int64Array::from(vec![1, 3_000_000_000, 2])) as ArrayRef),
            ("f", Arc::new(arrow::array::Float64Array::from(vec![0.0; 3])) as ArrayRef),
            ("ts", Arc::new(Int64Array::from(vec![10, 3_600_010, 7_200_010])) as ArrayRef),
        ])
        .unwrap();
        let window = |start_ms: i64| TimeFilter {
            column: "ts".into(),
            format: TimeFormat::MILLIS,
            window: crate::window::Window { start_ms, end_ms: start_ms + 3_600_000 },
        };
        for start in [0, 7_200_000] {
            conform_batch_in("seg", &spread, &s, &target, Some(&window(start))).expect("the bad value is in hour 1");
        }
        let e = conform_batch_in("seg", &spread, &s, &target, Some(&window(3_600_000))).unwrap_err().to_string();
        assert!(e.contains("1 value(s)") && e.contains("3000000000"), "{e}");
    }

    #[test]
    fn segment_facts_come_from_statistics_or_the_data() {
        let s = schema();
        let facts = segment_facts("seg", codec_file(Compression::SNAPPY), &s, "ts", TimeFormat::MILLIS).unwrap();
        assert_eq!(facts, SegmentFacts { rows: 3, time_range_ms: Some((5, 7)), null_time_rows: 0 });
        // no statistics: the time column is read
        let batch = RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(9), None])),
            ],
        )
        .unwrap();
        let file = |stats| file_with(&batch, WriterProperties::builder().set_statistics_enabled(stats).build());
        let want = SegmentFacts { rows: 2, time_range_ms: Some((9, 9)), null_time_rows: 1 };
        let none = file(parquet::file::properties::EnabledStatistics::None);
        assert_eq!(segment_facts("seg", none, &s, "ts", TimeFormat::MILLIS).unwrap(), want);
        // with statistics: the NULL count comes from the footer
        let page = file(parquet::file::properties::EnabledStatistics::Page);
        assert_eq!(segment_facts("seg", page, &s, "ts", TimeFormat::MILLIS).unwrap(), want);
    }

    #[tokio::test]
    async fn footer_facts_give_rows_and_exact_ranges() {
        let store = crate::store::open_store("memory://").unwrap();
        let bytes = codec_file(Compression::SNAPPY);
        let size = bytes.len() as u64;
        crate::store::put_bytes(&store, "x/seg.parquet", bytes).await.unwrap();
        let f = read_footer_facts(&store, "x/seg.parquet", size).await.unwrap();
        assert_eq!(f.num_rows, 3);
        assert_eq!(f.ranges.get("m"), Some(&ValueRange::Int { min: -7, max: 1 }), "nulls are not part of the range");
        assert_eq!(f.ranges.get("ts"), Some(&ValueRange::Int { min: 5, max: 7 }));
        assert!(!f.ranges.contains_key("d"), "only numeric columns");
        let (size_seen, f2) = object_footer(&store, "x/seg.parquet").await.unwrap().unwrap();
        assert_eq!((size_seen, f2.unwrap()), (size, f.clone()), "one tail read gives the same");
        assert!(object_footer(&store, "x/none.parquet").await.unwrap().is_none());
        crate::store::put_bytes(&store, "x/bad.parquet", Bytes::from_static(b"not parquet at all")).await.unwrap();
        assert!(object_footer(&store, "x/bad.parquet").await.unwrap().unwrap().1.is_err());
        let e = read_footer_facts(&store, "x/bad.parquet", 18).await.unwrap_err().to_string();
        assert!(e.contains("x/bad.parquet") && e.contains("PAR1"), "{e}");
    }

    #[test]
    fn converts_epoch_units_to_ms() {
        let col: ArrayRef = Arc::new(Int32Array::from(vec![Some(2), None, Some(-1)]));
        let ms = time_ms(&col, TimeFormat::parse("f", "1:HOURS:EPOCH").unwrap()).unwrap();
        assert_eq!(ms.iter().collect::<Vec<_>>(), vec![Some(7_200_000), None, Some(-3_600_000)]);
    }

    #[test]
    fn footer_lengths_are_checked_against_the_file_and_the_limit() {
        let end = |len: u32| [len.to_le_bytes().as_slice(), b"PAR1"].concat();
        assert_eq!(footer_length(&end(100), 1_000), Ok(100));
        assert!(footer_length(&end(100), 10).unwrap_err().contains("too short"));
        assert!(footer_length(b"xxxxxxxx", 1_000).unwrap_err().contains("PAR1"));
        assert!(footer_length(&end(995), 1_000).unwrap_err().contains("larger than the file"));
        let lie = u32::MAX - 16;
        let e = footer_length(&end(lie), 5 << 30).unwrap_err();
        assert!(e.contains("expected at most 67108864"), "{e}");
        assert_eq!(footer_length(&end(64 << 20), 1 << 30), Ok(64 << 20), "the limit itself is allowed");
    }
}
