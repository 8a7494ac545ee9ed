//! Validation of a completion report before its commit (step 4 of the
//! commit protocol). The controller does not trust the minion's account of
//! itself alone: row counts come from the staged files' own Parquet footers,
//! `rows_in` is bounded by the inputs' registered row counts, and the values
//! of every copied column (dimensions, min/max metrics; every column for
//! concat and dedup) must lie in the range the inputs' footers give. The
//! minion's metric sums are checked exactly for INT and LONG (sums wrap in
//! the column's width, as Pinot's `SumValueAggregator` does with Java
//! `int`/`long` addition) and within a rounding bound that a correct merge
//! cannot exceed for FLOAT and DOUBLE.
//!
//! [`check`] is pure; [`gather`] reads the footers it needs.

use backon::Retryable;
use futures::{StreamExt, TryStreamExt};
use r2o_common::columnar::{object_footer, FooterFacts, ValueRange};
use r2o_common::config::{AggregationType, MergeType, TableSpec};
use r2o_common::meta::{SegmentMeta, TaskRecord};
use r2o_common::retry::store_backoff;
use r2o_common::schema::{DataType, FieldKind};
use r2o_common::store::{canonical_path, Layout, Store};
use r2o_common::Error;
use r2o_proto::controller as pb;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// What the controller read itself about one staged output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEvidence {
    /// Its size in the store, bytes; `None` when it is missing.
    pub size_bytes: Option<u64>,
    /// Its footer, when it exists and decodes.
    pub footer: Option<FooterFacts>,
}

/// Footers of REALTIME inputs, by location: read once (at registration, or
/// by the first window that needs it), used by every window the segment
/// overlaps. Bounded in bytes (issue 21: the controller's memory bounded
/// whatever the number of segments): past its budget the oldest footers go
/// first (a footer is needed by the few windows its segment overlaps,
/// planned close together). Entries are compact ([`CachedFooter`], ~450
/// bytes for 6 numeric columns), so the footers that registration read of
/// the x30 backfill's 43,800 segments (~20 MB) fit the default budget and
/// validation reads none again.
#[derive(Clone)]
pub struct FooterCache {
    inner: Arc<Mutex<FooterCacheInner>>,
    budget_bytes: usize,
}

#[derive(Default)]
struct FooterCacheInner {
    map: HashMap<Arc<str>, (Option<CachedFooter>, usize)>,
    /// Locations in insertion order (the eviction order); a location
    /// forgotten before its turn stays here until then, at no byte cost.
    order: std::collections::VecDeque<Arc<str>>,
    bytes: usize,
    /// Column names, interned: every footer of a table names the same ones.
    names: HashSet<Arc<str>>,
    /// Folded input ranges of tasks whose input lists are too long to cache
    /// footer by footer, by task id, oldest first (at most [`RANGE_TASKS`]).
    ranges: std::collections::VecDeque<(String, InputRanges)>,
}

/// One input footer as the cache holds it: its row count and the ranges of
/// its numeric columns, by interned column name.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedFooter {
    /// Rows in the file.
    num_rows: u64,
    ranges: Box<[(Arc<str>, ValueRange)]>,
}

/// What [`InputRanges::add`] needs of an input's footer: [`FooterFacts`] as
/// read, or [`CachedFooter`] as cached.
pub trait InputFooter {
    /// Rows in the file.
    fn num_rows(&self) -> u64;
    /// The exact range of `column`'s non-null values, when the footer gives it.
    fn range(&self, column: &str) -> Option<ValueRange>;
}

impl InputFooter for FooterFacts {
    fn num_rows(&self) -> u64 {
        self.num_rows
    }
    fn range(&self, column: &str) -> Option<ValueRange> {
        self.ranges.get(column).copied()
    }
}

impl InputFooter for CachedFooter {
    fn num_rows(&self) -> u64 {
        self.num_rows
    }
    fn range(&self, column: &str) -> Option<ValueRange> {
        self.ranges.iter().find(|(c, _)| &**c == column).map(|(_, r)| *r)
    }
}

/// Tasks whose folded [`InputRanges`] the cache keeps (each is a few
/// hundred bytes: one range per copied column).
const RANGE_TASKS: usize = 256;

/// Approximate bytes one cached footer takes: its location (shared by the
/// map and the order, with two pointers), its ranges (an interned name's
/// pointer and a range each), and the map's overhead.
fn entry_bytes(location: &str, columns: usize) -> usize {
    location.len() + 16 + 2 * 16 + columns * (16 + std::mem::size_of::<ValueRange>()) + 96
}

/// What [`prefetch`] counts a footer as taking in the cache: the
/// [`entry_bytes`] of a location of ~100 bytes with 16 numeric columns.
const PREFETCH_FOOTER_BYTES: usize = 1024;

impl FooterCache {
    /// An empty cache of footers taking at most about `budget_bytes`.
    pub fn new(budget_bytes: usize) -> FooterCache {
        FooterCache { inner: Arc::default(), budget_bytes: budget_bytes.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FooterCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn get(&self, location: &str) -> Option<Option<CachedFooter>> {
        self.lock().map.get(location).map(|(f, _)| f.clone())
    }

    /// Folds the cached footers of `locations` into `acc`, under one lock;
    /// returns the locations not cached.
    fn fold_cached(&self, locations: Vec<String>, acc: &mut InputRanges) -> Vec<String> {
        let c = self.lock();
        let mut missing = vec![];
        for l in locations {
            match c.map.get(l.as_str()) {
                Some((f, _)) => acc.add(f.as_ref()),
                None => missing.push(l),
            }
        }
        missing
    }

    /// Caches the footer read at `location` (`None`: it did not decode),
    /// evicting the oldest footers past the budget.
    pub fn put(&self, location: &str, facts: Option<&FooterFacts>) {
        self.insert(location, facts, true);
    }

    /// Caches the footer read at `location` only while the cache has room
    /// for it: registration's footers, which must not evict the footers of
    /// the windows running now.
    pub fn offer(&self, location: &str, facts: &FooterFacts) {
        self.insert(location, Some(facts), false);
    }

    fn insert(&self, location: &str, facts: Option<&FooterFacts>, evict: bool) {
        let columns = facts.map_or(0, |f| f.ranges.len());
        let bytes = entry_bytes(location, columns);
        let mut c = self.lock();
        if c.map.contains_key(location) || (!evict && c.bytes + bytes > self.budget_bytes) {
            return; // read twice at once: the first one stays
        }
        let cached = facts.map(|f| {
            let ranges = f.ranges.iter().map(|(name, r)| (c.intern(name), *r)).collect();
            CachedFooter { num_rows: f.num_rows, ranges }
        });
        let key: Arc<str> = Arc::from(location);
        c.map.insert(key.clone(), (cached, bytes));
        c.order.push_back(key);
        c.bytes += bytes;
        while c.bytes > self.budget_bytes && c.order.len() > 1 {
            let Some(oldest) = c.order.pop_front() else { break };
            if let Some((_, b)) = c.map.remove(&oldest) {
                c.bytes -= b;
            }
        }
        if c.order.len() > 2 * c.map.len() + 1024 {
            // forgotten locations pile up in the order: drop them
            let FooterCacheInner { order, map, .. } = &mut *c;
            order.retain(|l| map.contains_key(l));
        }
    }

    /// Drops the footers at `locations`: their segments lie before the
    /// watermark, and no window that is not a late-data run reads them again.
    pub fn forget<'a>(&self, locations: impl IntoIterator<Item = &'a str>) {
        let mut c = self.lock();
        for l in locations {
            if let Some((_, b)) = c.map.remove(l) {
                c.bytes -= b;
            }
        }
    }

    /// Footers held, and their approximate bytes.
    pub fn usage(&self) -> (usize, usize) {
        let c = self.lock();
        (c.map.len(), c.bytes)
    }

    /// How many footers of about `bytes_each` fit the budget.
    fn fits(&self, count: usize, bytes_each: usize) -> bool {
        count.saturating_mul(bytes_each) <= self.budget_bytes
    }

    /// Whether a task's `inputs` footers are cached one by one: when they
    /// take at most half the budget (more would evict themselves).
    fn keeps(&self, inputs: usize) -> bool {
        self.fits(inputs.saturating_mul(2), PREFETCH_FOOTER_BYTES)
    }

    /// The folded input ranges of task `task_id`, when [`prefetch`] made them.
    fn ranges_of(&self, task_id: &str) -> Option<InputRanges> {
        self.lock().ranges.iter().find(|(id, _)| id == task_id).map(|(_, r)| r.clone())
    }

    fn put_ranges(&self, task_id: &str, ranges: InputRanges) {
        let mut c = self.lock();
        if c.ranges.len() >= RANGE_TASKS {
            c.ranges.pop_front();
        }
        c.ranges.push_back((task_id.to_string(), ranges));
    }
}

/// The locations of `inputs` no window from `watermark_ms` on reads: every
/// row of theirs lies before it (`end_time_ms` is inclusive, windows are
/// `[start, end)`). Only a late-data run reads them again. Pure.
pub fn consumed(inputs: &[SegmentMeta], watermark_ms: i64) -> impl Iterator<Item = &str> {
    inputs.iter().filter(move |s| s.end_time_ms < watermark_ms).map(|s| s.location.as_str())
}

impl FooterCacheInner {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(n.clone());
        n
    }
}

/// One copied column's range over the footers folded so far.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Folded {
    /// No input had a value in it yet.
    Empty,
    Range(ValueRange),
    /// An input's footer did not give it (no statistics, unreadable footer,
    /// INT in one input and FLOAT in another): no range check.
    Unknown,
}

/// The range of every copied column over a task's inputs, which [`check`]
/// holds the outputs' values to: folded footer by footer, so that a task of
/// 40,000 inputs is checked without holding 40,000 footers. A column's range
/// is known only when every input's footer gives it; an input whose footer
/// says 0 rows adds nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRanges {
    /// Footers folded (readable or not).
    inputs: usize,
    columns: Vec<(String, Folded)>,
}

impl InputRanges {
    /// Nothing folded yet, for the copied columns of `spec`.
    pub fn new(spec: &TableSpec) -> InputRanges {
        let columns = copied_columns(spec).into_iter().map(|c| (c.to_string(), Folded::Empty)).collect();
        InputRanges { inputs: 0, columns }
    }

    /// The ranges of `spec`'s copied columns over `footers` (one per input;
    /// `None`: unreadable).
    pub fn of(spec: &TableSpec, footers: &[Option<FooterFacts>]) -> InputRanges {
        let mut r = InputRanges::new(spec);
        for f in footers {
            r.add(f.as_ref());
        }
        r
    }

    /// Folds one more input's footer (`None`: it could not be read).
    pub fn add<F: InputFooter>(&mut self, footer: Option<&F>) {
        self.inputs += 1;
        for (col, acc) in &mut self.columns {
            match footer.and_then(|f| f.range(col.as_str())) {
                Some(r) => {
                    *acc = match *acc {
                        Folded::Empty => Folded::Range(r),
                        Folded::Range(a) => a.merge(r).map_or(Folded::Unknown, Folded::Range),
                        Folded::Unknown => Folded::Unknown,
                    }
                }
                // all null in this input adds nothing; no statistics makes it unknown
                None if footer.is_some_and(|f| f.num_rows() == 0) => {}
                None => *acc = Folded::Unknown,
            }
        }
    }

    /// The inputs' range of `column`, when every input's footer gave it.
    fn outer(&self, column: &str) -> Option<ValueRange> {
        match self.columns.iter().find(|(c, _)| c == column)?.1 {
            Folded::Range(r) if self.inputs > 0 => Some(r),
            _ => None,
        }
    }
}

/// Reads what [`check`] needs: each output's size and footer, and the
/// inputs' ranges ([`InputRanges`]: folded by [`prefetch`] for task
/// `task_id`, else from each input's footer, cached; an input whose footer
/// cannot be read only makes the range check skip its columns — the minion
/// read it, or the attempt would have failed). At most 16 reads at once.
///
/// # Errors
/// Store errors other than a missing object (retryable: the report is
/// retried, nothing is decided).
pub async fn gather(
    store: &Store,
    cache: &FooterCache,
    task_id: &str,
    spec: &TableSpec,
    outputs: &[pb::StagedSegment],
    inputs: &[SegmentMeta],
) -> r2o_common::Result<(Vec<OutputEvidence>, InputRanges)> {
    let outs: Vec<OutputEvidence> = futures::stream::iter(outputs.iter().cloned())
        .map(|o| {
            let store = store.clone();
            async move {
                let read = || object_footer(&store, &o.location);
                let got = read.retry(store_backoff()).when(Error::is_retryable).await?;
                let Some((size, footer)) = got else {
                    return Ok::<_, r2o_common::Error>(OutputEvidence { size_bytes: None, footer: None });
                };
                let footer = match footer {
                    Ok(f) => Some(f),
                    Err(r2o_common::Error::Segment { .. }) => None,
                    Err(e) => return Err(e),
                };
                Ok(OutputEvidence { size_bytes: Some(size), footer })
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    if let Some(ranges) = cache.ranges_of(task_id) {
        return Ok((outs, ranges));
    }
    let locations: Vec<String> = inputs.iter().map(|s| s.location.clone()).collect();
    let ranges = fold_footers(store, cache, spec, locations, cache.keeps(inputs.len()), 16).await?;
    Ok((outs, ranges))
}

/// Folds the footers at `locations` into [`InputRanges`], `parallel` reads
/// at once: from the cache when there, else read, and then cached when
/// `keep`.
async fn fold_footers(
    store: &Store,
    cache: &FooterCache,
    spec: &TableSpec,
    locations: Vec<String>,
    keep: bool,
    parallel: usize,
) -> r2o_common::Result<InputRanges> {
    let mut acc = InputRanges::new(spec);
    let missing = cache.fold_cached(locations, &mut acc);
    futures::stream::iter(missing)
        .map(|l| {
            let (store, cache) = (store.clone(), cache.clone());
            async move {
                let f = read_input_footer(store, &l).await?;
                if keep {
                    cache.put(&l, f.as_ref());
                }
                Ok::<_, r2o_common::Error>(f)
            }
        })
        .buffer_unordered(parallel)
        .try_fold(acc, |mut acc, f| async move {
            acc.add(f.as_ref());
            Ok(acc)
        })
        .await
}

/// One input's footer, read (with the store's retries); `None` when it is
/// missing or does not decode.
pub(crate) async fn read_input_footer(store: Store, location: &str) -> r2o_common::Result<Option<FooterFacts>> {
    let (store, path) = r2o_common::store::resolve(&store, location)?;
    let read = || object_footer(&store, &path);
    Ok(match read.retry(store_backoff()).when(Error::is_retryable).await? {
        Some((_, Ok(f))) => Some(f),
        Some((_, Err(r2o_common::Error::Segment { .. }))) | None => None,
        Some((_, Err(e))) => return Err(e),
    })
}

/// The inputs one or more tasks read: a range of their input list.
struct Slice {
    /// `(input_from, input_to)` of the tasks reading it.
    key: (u64, u64),
    /// Their ids.
    tasks: Vec<String>,
    /// Its inputs' locations.
    locations: Vec<String>,
}

/// Reads the footers of just-published `tasks`' inputs (`inputs`: their
/// input list) in the background, 4 at a time, and folds them into each
/// task's [`InputRanges`], so that their reports' validation ([`gather`])
/// reads no input footer while the commit waits (issue 21: one window of
/// 14,600 inputs, too many for the footer cache, waited ~450 ms at its
/// commit). The footers are also cached one by one when the list fits
/// ([`FooterCache::keeps`]): a segment overlapping two tasks' windows is
/// then read once. A read that fails is left for [`gather`] to do again.
pub fn prefetch(store: Store, cache: FooterCache, spec: &TableSpec, tasks: &[TaskRecord], inputs: &[SegmentMeta]) {
    let keep = cache.keeps(inputs.len());
    // tasks reading the same slice (a window's hash sub-tasks read all of it) share one fold
    let mut slices: Vec<Slice> = vec![];
    for t in tasks {
        let key = (t.input_from, t.input_to);
        match slices.iter_mut().find(|s| s.key == key) {
            Some(s) => s.tasks.push(t.id.to_string()),
            None => {
                let locations = t.input_slice(inputs).iter().map(|s| s.location.clone()).collect();
                slices.push(Slice { key, tasks: vec![t.id.to_string()], locations });
            }
        }
    }
    let spec = spec.clone();
    tokio::spawn(async move {
        for Slice { tasks: ids, locations, .. } in slices {
            match fold_footers(&store, &cache, &spec, locations, keep, 4).await {
                Ok(ranges) => {
                    for id in ids {
                        cache.put_ranges(&id, ranges.clone());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "prefetching the input ranges failed"),
            }
        }
    });
}

/// Unit roundoff of a float column type.
fn unit_roundoff(t: DataType) -> f64 {
    if t == DataType::Float {
        f64::from(f32::EPSILON) / 2.0
    } else {
        f64::EPSILON / 2.0
    }
}

/// Bound on |sum_in - sum_out| for `rows` values of a float column whose
/// absolute values sum to `abs_sum`: a merge summing in the column's type
/// (error at most gamma_n = n*u / (1 - n*u) times the absolute sum, the
/// standard bound for recursive summation) plus both sides' f64 sums.
pub fn float_sum_bound(t: DataType, rows: u64, abs_sum: f64) -> f64 {
    let n = rows.max(1) as f64;
    let nu = n * unit_roundoff(t);
    let gamma = if nu < 0.5 { nu / (1.0 - nu) } else { 2.0 };
    (gamma + 4.0 * n * (f64::EPSILON / 2.0)) * abs_sum + f64::MIN_POSITIVE
}

fn check_sums(spec: &TableSpec, req: &pb::CompleteTaskRequest) -> Result<(), String> {
    if spec.flow.merge_type == MergeType::Dedup {
        return Ok(()); // dedup drops rows: sums are not preserved
    }
    for (metric, agg) in &spec.flow.aggregations {
        if *agg != AggregationType::Sum {
            continue;
        }
        let Some(field) = spec.schema.field(metric) else { continue };
        let Some(s) = req.metric_sums.get(metric) else {
            return Err(format!("no sums were reported for metric '{metric}' (every summed metric must be checked)"));
        };
        match field.data_type {
            DataType::Int if s.int_in as i32 != s.int_out as i32 => {
                return Err(format!(
                    "sum of INT metric '{metric}' changed: {} in, {} out (32-bit wrapping sums)",
                    s.int_in as i32, s.int_out as i32
                ));
            }
            DataType::Long if s.int_in != s.int_out => {
                return Err(format!("sum of LONG metric '{metric}' changed: {} in, {} out", s.int_in, s.int_out));
            }
            DataType::Float | DataType::Double => {
                let (a, b) = (s.float_in, s.float_out);
                if a.is_finite() && b.is_finite() {
                    let bound = float_sum_bound(field.data_type, req.rows_in, s.float_abs_in);
                    if (a - b).abs() > bound {
                        return Err(format!(
                            "sum of {} metric '{metric}' changed: {a} in, {b} out, more than rounding allows ({bound})",
                            field.data_type.name()
                        ));
                    }
                } else {
                    let same = (a.is_nan() && b.is_nan()) || a == b;
                    // a FLOAT group's sum may overflow f32 where the f64 input sum does not
                    let overflow = field.data_type == DataType::Float
                        && a.is_finite()
                        && b.is_infinite()
                        && s.float_abs_in > f64::from(f32::MAX);
                    if !same && !overflow {
                        return Err(format!("sum of metric '{metric}' changed: {a} in, {b} out"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Columns whose output values must lie in the inputs' range: every
/// numeric column but the (rounded) time column for concat and dedup; for
/// rollup, dimensions and min/max metrics (sums may leave the range).
fn copied_columns(spec: &TableSpec) -> Vec<&str> {
    spec.schema
        .fields
        .iter()
        .filter(|f| f.name != spec.flow.time_column && f.data_type.is_numeric())
        .filter(|f| match spec.flow.merge_type {
            MergeType::Concat | MergeType::Dedup => true,
            MergeType::Rollup => {
                f.kind != FieldKind::Metric
                    || spec.flow.aggregations.get(&f.name).is_some_and(|a| *a != AggregationType::Sum)
            }
        })
        .map(|f| f.name.as_str())
        .collect()
}

/// Checks a completion report against the task, its inputs and what the
/// controller read itself. Pure.
///
/// `outputs` is in the order of `req.outputs`; `input_ranges` are the
/// copied columns' ranges over `inputs`.
///
/// # Errors
/// Why the report is refused, naming the output, column or metric.
pub fn check(
    task: &TaskRecord,
    spec: &TableSpec,
    layout: &Layout,
    inputs: &[SegmentMeta],
    input_ranges: &InputRanges,
    req: &pb::CompleteTaskRequest,
    outputs: &[OutputEvidence],
) -> Result<(), String> {
    if req.schema_fingerprint != spec.schema.fingerprint() {
        return Err(format!(
            "schema fingerprint {} differs from the table's {}",
            req.schema_fingerprint,
            spec.schema.fingerprint()
        ));
    }
    let registered_rows: u64 = inputs.iter().map(|s| s.total_docs).sum();
    if req.rows_in.saturating_add(req.rows_filtered) > registered_rows {
        return Err(format!(
            "rows_in {} (+ {} dropped by offloadPredicate) is more than the {registered_rows} rows registered for the task's {} inputs",
            req.rows_in,
            req.rows_filtered,
            inputs.len()
        ));
    }
    if req.rows_filtered > 0 && spec.flow.offload_predicate.is_none() {
        return Err(format!("{} rows reported dropped, but the table has no offloadPredicate", req.rows_filtered));
    }
    if req.rows_null_time > registered_rows {
        return Err(format!("rows_null_time {} is more than the inputs' {registered_rows} rows", req.rows_null_time));
    }
    // and from below: every row of an input whose registered time range lies
    // inside the task's windows is in one of them, or has a NULL time (a hash
    // sub-task keeps only its share, so it is not bounded this way)
    let hash_share = task.is_sub_task() && spec.flow.merge_type != MergeType::Concat;
    if let (Some(first), Some(last), false) = (task.windows.first(), task.windows.last(), hash_share) {
        let inside: u64 = inputs
            .iter()
            .filter(|s| s.start_time_ms >= first.start_ms && s.end_time_ms < last.end_ms)
            .map(|s| s.total_docs)
            .sum();
        if req.rows_in + req.rows_null_time + req.rows_filtered < inside {
            return Err(format!(
                "rows_in {} (+ {} with a NULL time, + {} dropped by offloadPredicate) is less than the {inside} rows \
                 registered for inputs that lie wholly inside the task's windows",
                req.rows_in, req.rows_null_time, req.rows_filtered
            ));
        }
    }
    let prefix = canonical_path(&layout.staging_prefix(&task.id, req.attempt));
    let rounding = spec.flow.rounding();
    // the report's windows are the task's, in order
    let reported: Vec<(i64, i64)> = req.windows.iter().map(|w| (w.start_ms, w.end_ms)).collect();
    let planned: Vec<(i64, i64)> = task.windows.iter().map(|w| (w.start_ms, w.end_ms)).collect();
    if reported != planned {
        return Err(format!(
            "the report covers {} windows, not the task's {} windows from {}",
            reported.len(),
            planned.len(),
            task.window_start_ms
        ));
    }
    let window_rows_in: u64 = req.windows.iter().map(|w| w.rows_in).sum();
    if window_rows_in != req.rows_in {
        return Err(format!("the windows' rows_in add up to {window_rows_in}, reported rows_in {}", req.rows_in));
    }
    let mut per_window: HashMap<i64, (u64, u64)> = HashMap::new(); // start -> (rows, outputs)
    let mut names = HashSet::new();
    let mut locations = HashSet::new();
    let mut rows = 0u64;
    for (o, ev) in req.outputs.iter().zip(outputs) {
        let location = canonical_path(&o.location);
        if !location.starts_with(&prefix) {
            return Err(format!(
                "output {} is at {}, outside the attempt's staging prefix {prefix}",
                o.name, o.location
            ));
        }
        if !locations.insert(location) {
            return Err(format!("output location {} is reported twice", o.location));
        }
        if !names.insert(o.name.as_str()) {
            return Err(format!("output name {} is reported twice", o.name));
        }
        let Some(window) = task.windows.iter().find(|w| w.start_ms == o.window_start_ms) else {
            return Err(format!("output {} names window {}, not one of the task's", o.name, o.window_start_ms));
        };
        let lowest = rounding.as_ref().map_or(window.start_ms, |r| r.floor(window.start_ms));
        if o.start_time_ms < lowest || o.end_time_ms >= window.end_ms || o.start_time_ms > o.end_time_ms {
            return Err(format!(
                "output {} spans [{}, {}], outside its window {window}",
                o.name, o.start_time_ms, o.end_time_ms
            ));
        }
        let e = per_window.entry(window.start_ms).or_default();
        e.0 += o.num_rows;
        e.1 += 1;
        if o.num_rows == 0 || o.num_rows > spec.flow.max_records_per_segment {
            return Err(format!(
                "output {} has {} rows, expected 1..={} (maxNumRecordsPerSegment)",
                o.name, o.num_rows, spec.flow.max_records_per_segment
            ));
        }
        match ev.size_bytes {
            None => return Err(format!("output {} is missing from the store", o.location)),
            Some(size) if size != o.size_bytes => {
                return Err(format!("output {} is {size} bytes in the store, reported {}", o.location, o.size_bytes))
            }
            Some(_) => {}
        }
        let Some(footer) = &ev.footer else {
            return Err(format!("output {} is not a readable Parquet file", o.location));
        };
        if footer.num_rows != o.num_rows {
            return Err(format!(
                "output {} holds {} rows by its Parquet footer, reported {}",
                o.location, footer.num_rows, o.num_rows
            ));
        }
        rows += o.num_rows;
    }
    if outputs.len() != req.outputs.len() {
        return Err("internal: evidence does not match the outputs".into());
    }
    if rows != req.rows_out {
        return Err(format!("outputs hold {rows} rows, reported rows_out {}", req.rows_out));
    }
    for w in &req.windows {
        let (r, n) = per_window.get(&w.start_ms).copied().unwrap_or_default();
        if (r, n) != (w.rows_out, w.outputs) {
            return Err(format!(
                "window {} reports {} rows in {} outputs, its outputs hold {r} rows in {n}",
                w.start_ms, w.rows_out, w.outputs
            ));
        }
        match spec.flow.merge_type {
            MergeType::Concat if w.rows_out != w.rows_in => {
                return Err(format!(
                    "concat must keep every row of window {}: {} in, {} out",
                    w.start_ms, w.rows_in, w.rows_out
                ))
            }
            MergeType::Rollup | MergeType::Dedup if w.rows_out > w.rows_in => {
                return Err(format!("window {} cannot add rows: {} in, {} out", w.start_ms, w.rows_in, w.rows_out))
            }
            _ => {}
        }
    }
    match spec.flow.merge_type {
        MergeType::Concat if req.rows_out != req.rows_in => {
            return Err(format!("concat must keep every row: {} in, {} out", req.rows_in, req.rows_out))
        }
        MergeType::Rollup | MergeType::Dedup if req.rows_out > req.rows_in => {
            return Err(format!(
                "{} cannot add rows: {} in, {} out",
                spec.flow.merge_type.name(),
                req.rows_in,
                req.rows_out
            ))
        }
        _ => {}
    }
    check_sums(spec, req)?;
    for col in copied_columns(spec) {
        let Some(outer) = input_ranges.outer(col) else { continue };
        for (o, ev) in req.outputs.iter().zip(outputs) {
            let Some(r) = ev.footer.as_ref().and_then(|f| f.ranges.get(col)) else { continue };
            let comparable = matches!(
                (r, &outer),
                (ValueRange::Int { .. }, ValueRange::Int { .. }) | (ValueRange::Float { .. }, ValueRange::Float { .. })
            );
            if comparable && !r.within(&outer) {
                return Err(format!(
                    "column '{col}' of output {} holds values {r}, outside the inputs' range {outer}",
                    o.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_cache_keeps_to_its_byte_budget_and_evicts_the_oldest() {
        let facts = |n: u64| FooterFacts {
            num_rows: n,
            ranges: [("ts".to_string(), ValueRange::Int { min: 0, max: n as i64 })].into_iter().collect(),
        };
        let cached = |n: u64| {
            let f = facts(n);
            Some(Some(CachedFooter { num_rows: n, ranges: [(Arc::from("ts"), f.ranges["ts"])].into() }))
        };
        let one = entry_bytes("seg/000", 1);
        let cache = FooterCache::new(10 * one);
        for i in 0..25u64 {
            cache.put(&format!("seg/{i:03}"), Some(&facts(i)));
        }
        let (count, bytes) = cache.usage();
        assert!(bytes <= 10 * one, "{bytes} bytes over the budget of {}", 10 * one);
        assert_eq!(count, 10);
        assert_eq!(cache.get("seg/000"), None, "the oldest went first");
        assert_eq!(cache.get("seg/024"), cached(24));
        assert_eq!(cache.get("seg/015"), cached(15));
        // a footer that did not decode is remembered as such
        cache.put("seg/bad", None);
        assert_eq!(cache.get("seg/bad"), Some(None));
        assert!(cache.fits(5, one) && !cache.fits(11, one));
    }

    #[test]
    fn registration_offers_footers_only_while_there_is_room_and_commits_forget_them() {
        let f = |n: i64| FooterFacts {
            num_rows: 1,
            ranges: [("d".to_string(), ValueRange::Int { min: n, max: n })].into_iter().collect(),
        };
        let one = entry_bytes("seg/000", 1);
        let cache = FooterCache::new(4 * one);
        for i in 0..6 {
            cache.offer(&format!("seg/{i:03}"), &f(i));
        }
        // the first four stay: what registration read first is validated first
        assert_eq!(cache.usage().0, 4);
        assert!(cache.get("seg/000").is_some() && cache.get("seg/003").is_some());
        assert_eq!(cache.get("seg/004"), None);
        cache.forget(["seg/000", "seg/001"]);
        assert_eq!(cache.usage(), (2, 2 * one));
        assert_eq!(cache.get("seg/000"), None);
        // names are interned: every footer shares one "d"
        cache.offer("seg/010", &f(10));
        let c = cache.lock();
        let ptrs: HashSet<*const u8> =
            c.map.values().flat_map(|(f, _)| f.iter()).map(|f| f.ranges[0].0.as_ptr()).collect();
        assert_eq!(ptrs.len(), 1);
    }

    #[test]
    fn a_segment_is_consumed_once_the_watermark_passes_its_last_row() {
        let seg = |loc: &str, start, end| SegmentMeta {
            location: loc.into(),
            start_time_ms: start,
            end_time_ms: end,
            ..input(1)
        };
        let inputs = [seg("a", -50, -1), seg("b", 0, 99), seg("c", 50, 100), seg("d", 100, 200)];
        assert_eq!(consumed(&inputs, 100).collect::<Vec<_>>(), ["a", "b"], "c's row at 100 is in the next window");
        assert_eq!(consumed(&inputs, 0).collect::<Vec<_>>(), ["a"], "times before 1970 are ordinary");
        assert_eq!(consumed(&inputs, i64::MIN).count(), 0);
    }

    #[test]
    fn folding_reads_only_the_footers_not_cached() {
        let s = spec("rollup");
        let int = |min, max| ValueRange::Int { min, max };
        let cache = FooterCache::new(1 << 20);
        cache.offer("a", &facts(3, &[("d", int(0, 3)), ("lo", int(5, 9))]));
        cache.offer("b", &facts(3, &[("d", int(-1, 1)), ("lo", int(6, 6))]));
        let mut acc = InputRanges::new(&s);
        let missing = cache.fold_cached(vec!["a".into(), "x".into(), "b".into()], &mut acc);
        assert_eq!(missing, vec!["x".to_string()]);
        assert_eq!((acc.outer("d"), acc.outer("lo")), (Some(int(-1, 3)), Some(int(5, 9))));
        assert_eq!(acc.inputs, 2);
    }

    use r2o_common::meta::SegmentStatus;
    use serde_json::json;

    fn spec(merge: &str) -> TableSpec {
        TableSpec::from_json(
            json!({"tableName": "t", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                   "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
                       "bucketTimePeriod": "1h", "mergeType": merge, "lo.aggregationType": "min"}}}}),
            json!({"dimensionFieldSpecs": [{"name": "d", "dataType": "INT"}],
                   "metricFieldSpecs": [{"name": "f", "dataType": "FLOAT"}, {"name": "i", "dataType": "INT"},
                                        {"name": "lo", "dataType": "LONG"}],
                   "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH"}]}),
        )
        .unwrap()
    }

    fn task(s: &TableSpec) -> TaskRecord {
        serde_json::from_value(json!({
            "id": "t__0__1", "table": "t", "fromMs": 0, "windows": [{"startMs": 0, "endMs": 3_600_000}],
            "windowStartMs": 0, "windowEndMs": 3_600_000, "skippedWindows": 0,
            "inputCount": 1, "inputChunks": 1, "inputRows": 100, "inputBytes": 1, "segmentsRevision": 0,
            "tableConfig": s.config_json, "schema": s.schema_json, "state": "RUNNING", "attempt": 1,
            "minion": "m", "createdMs": 1, "startedMs": 1, "finishedMs": 0, "errors": [],
            "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0
        }))
        .unwrap()
    }

    fn input(rows: u64) -> SegmentMeta {
        SegmentMeta {
            segment_name: "s".into(),
            table_name: "t_REALTIME".into(),
            status: SegmentStatus::Done,
            start_time_ms: 0,
            // past the window: its rows need not all be in it
            end_time_ms: 7_200_000,
            total_docs: rows,
            size_bytes: 1,
            schema_fingerprint: String::new(),
            location: "ns/realtime/t_REALTIME/s.1.parquet".into(),
            partition: 0,
            ..Default::default()
        }
    }

    fn facts(rows: u64, ranges: &[(&str, ValueRange)]) -> FooterFacts {
        FooterFacts { num_rows: rows, ranges: ranges.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }

    fn sums(int_in: i64, int_out: i64, f_in: f64, f_out: f64, abs: f64) -> pb::MetricSums {
        pb::MetricSums { int_in, int_out, float_in: f_in, float_out: f_out, float_abs_in: abs }
    }

    /// A report of one output with `rows` rows, valid for `s`.
    fn report(s: &TableSpec, rows_in: u64, rows: u64) -> (pb::CompleteTaskRequest, Vec<OutputEvidence>) {
        let layout = Layout::new("ns");
        let loc = format!("{}o.parquet", layout.staging_prefix(&"t__0__1".parse().unwrap(), 1));
        let req = pb::CompleteTaskRequest {
            task_id: "t__0__1".into(),
            attempt: 1,
            minion_id: "m".into(),
            outputs: vec![pb::StagedSegment {
                name: "o".into(),
                location: loc,
                num_rows: rows,
                size_bytes: 50,
                start_time_ms: 0,
                end_time_ms: 10,
                partition: -1,
                window_start_ms: 0,
            }],
            rows_in,
            rows_out: rows,
            bytes_in: 1,
            metric_sums: [("f".to_string(), sums(0, 0, 1.5, 1.5, 1.5)), ("i".to_string(), sums(7, 7, 0.0, 0.0, 0.0))]
                .into_iter()
                .collect(),
            schema_fingerprint: s.schema.fingerprint(),
            rows_null_time: 0,
            rows_filtered: 0,
            windows: vec![pb::WindowStats { start_ms: 0, end_ms: 3_600_000, rows_in, rows_out: rows, outputs: 1 }],
        };
        let ev = vec![OutputEvidence {
            size_bytes: Some(50),
            footer: Some(facts(
                rows,
                &[("d", ValueRange::Int { min: 1, max: 2 }), ("lo", ValueRange::Int { min: 5, max: 5 })],
            )),
        }];
        (req, ev)
    }

    fn run(
        s: &TableSpec,
        req: &pb::CompleteTaskRequest,
        ev: &[OutputEvidence],
        input_footers: &[Option<FooterFacts>],
    ) -> Result<(), String> {
        check(&task(s), s, &Layout::new("ns"), &[input(100)], &InputRanges::of(s, input_footers), req, ev)
    }

    fn in_footer() -> Vec<Option<FooterFacts>> {
        vec![Some(facts(100, &[("d", ValueRange::Int { min: 0, max: 9 }), ("lo", ValueRange::Int { min: 1, max: 5 })]))]
    }

    #[test]
    fn a_correct_report_passes() {
        let s = spec("rollup");
        let (req, ev) = report(&s, 10, 4);
        assert_eq!(run(&s, &req, &ev, &in_footer()), Ok(()));
        assert_eq!(run(&s, &req, &ev, &[None]), Ok(()), "an unreadable input footer only skips the range check");
    }

    #[test]
    fn rows_of_inputs_wholly_inside_the_windows_must_all_be_read() {
        let s = spec("rollup");
        let (req, ev) = report(&s, 10, 4);
        let mut inside = input(100);
        inside.end_time_ms = 10; // every row of it lies in the window
        let e = check(&task(&s), &s, &Layout::new("ns"), &[inside], &InputRanges::of(&s, &in_footer()), &req, &ev)
            .unwrap_err();
        assert!(e.contains("rows_in 10") && e.contains("100 rows registered") && e.contains("wholly inside"), "{e}");
    }

    #[test]
    fn rows_dropped_by_the_predicate_count_only_when_the_table_has_one() {
        let mut inside = input(100);
        inside.end_time_ms = 10; // every row of it lies in the window
        let s = spec("rollup");
        let (mut req, ev) = report(&s, 10, 4);
        req.rows_filtered = 90;
        let e =
            check(&task(&s), &s, &Layout::new("ns"), &[inside.clone()], &InputRanges::of(&s, &in_footer()), &req, &ev)
                .unwrap_err();
        assert!(e.contains("no offloadPredicate"), "{e}");
        let mut p = spec("rollup");
        let mut cfg = p.config_json.clone();
        cfg["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]["offloadPredicate"] =
            json!("column(d) > numeric(0)");
        p = TableSpec::from_json(cfg, p.schema_json.clone()).unwrap();
        let (mut req, ev) = report(&p, 10, 4);
        req.rows_filtered = 90;
        assert_eq!(
            check(&task(&p), &p, &Layout::new("ns"), &[inside.clone()], &InputRanges::of(&p, &in_footer()), &req, &ev),
            Ok(())
        );
        req.rows_filtered = 89;
        let e =
            check(&task(&p), &p, &Layout::new("ns"), &[inside.clone()], &InputRanges::of(&p, &in_footer()), &req, &ev)
                .unwrap_err();
        assert!(e.contains("89 dropped by offloadPredicate") && e.contains("wholly inside"), "{e}");
        req.rows_filtered = 91;
        let e = check(&task(&p), &p, &Layout::new("ns"), &[inside], &InputRanges::of(&p, &in_footer()), &req, &ev)
            .unwrap_err();
        assert!(e.contains("more than the 100 rows registered"), "{e}");
    }

    #[test]
    fn float_sums_are_checked_in_the_columns_precision() {
        // f32 rollup of 1,000,000 values of 0.1: the f32 group sum drifts far
        // from the f64 sum of the inputs, and that is correct
        let s = spec("rollup");
        let (mut req, ev) = report(&s, 1_000_000, 4);
        let mut acc = 0f32;
        for _ in 0..1_000_000 {
            acc += 0.1f32;
        }
        let f64_in = 1_000_000.0 * f64::from(0.1f32);
        req.metric_sums.insert("f".into(), sums(0, 0, f64_in, f64::from(acc), f64_in));
        assert!((f64_in - f64::from(acc)).abs() > 1e-3 * f64_in, "the f32 sum really drifts: {acc} vs {f64_in}");
        let mut big_input = in_footer();
        big_input[0].as_mut().unwrap().num_rows = 1_000_000;
        let r =
            check(&task(&s), &s, &Layout::new("ns"), &[input(1_000_000)], &InputRanges::of(&s, &big_input), &req, &ev);
        assert_eq!(r, Ok(()), "rounding of a correct f32 rollup is not a refusal");
        // a lost row of 0.1 in a small window is found
        let (mut req, ev) = report(&s, 10, 4);
        req.metric_sums.insert("f".into(), sums(0, 0, 1.0, 0.9, 1.0));
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("'f'"));
    }

    #[test]
    fn int_sums_are_exact_and_wrap_like_java() {
        let s = spec("rollup");
        let (mut req, ev) = report(&s, 10, 4);
        // i32 overflow: in = MAX + 1 as a wrapped i32, out = the wrapped group sum
        req.metric_sums.insert("i".into(), sums(i64::from(i32::MIN), i64::from(i32::MAX) + 1, 0.0, 0.0, 0.0));
        assert_eq!(run(&s, &req, &ev, &in_footer()), Ok(()), "equal modulo 2^32");
        req.metric_sums.insert("i".into(), sums(7, 8, 0.0, 0.0, 0.0));
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("INT metric 'i'"));
    }

    #[test]
    fn a_missing_sum_is_not_a_pass() {
        let s = spec("concat");
        let (mut req, ev) = report(&s, 4, 4);
        req.metric_sums.clear();
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("no sums were reported"));
        let d = spec("dedup");
        let (mut req, ev) = report(&d, 4, 4);
        req.metric_sums.clear();
        assert_eq!(run(&d, &req, &ev, &in_footer()), Ok(()), "dedup does not keep sums");
    }

    #[test]
    fn row_counts_come_from_footers_and_registered_inputs() {
        let s = spec("rollup");
        let (req, mut ev) = report(&s, 10, 4);
        ev[0].footer.as_mut().unwrap().num_rows = 3;
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("by its Parquet footer"));
        let (req, _) = report(&s, 101, 4);
        let (_, ev) = report(&s, 10, 4);
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("registered"));
        // per-window figures must agree with the outputs and the task's windows
        let (mut req, ev) = report(&s, 10, 4);
        req.windows[0].rows_out = 3;
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("window 0 reports"));
        let (mut req, ev) = report(&s, 10, 4);
        req.windows[0].start_ms = 7;
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("not the task's"));
        let (mut req, ev) = report(&s, 10, 4);
        req.outputs[0].window_start_ms = 3_600_000;
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("not one of the task's"));
        let (mut req, ev) = report(&s, 10, 4);
        req.rows_null_time = 1_000;
        assert!(run(&s, &req, &ev, &in_footer()).is_err());
        let (req, mut ev) = report(&s, 10, 4);
        ev[0].size_bytes = None;
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("missing"));
    }

    #[test]
    fn duplicate_and_foreign_locations_are_refused() {
        let s = spec("rollup");
        let (mut req, mut ev) = report(&s, 10, 8);
        let mut second = req.outputs[0].clone();
        second.name = "o2".into();
        req.outputs.push(second);
        req.outputs[0].num_rows = 4;
        req.outputs[1].num_rows = 4;
        req.windows[0].outputs = 2;
        ev[0].footer.as_mut().unwrap().num_rows = 4;
        ev.push(ev[0].clone());
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("reported twice"));
        let (mut req, ev) = report(&s, 10, 4);
        req.outputs[0].location = "ns/realtime/t_REALTIME/s.1.parquet".into();
        assert!(run(&s, &req, &ev, &in_footer()).unwrap_err().contains("outside the attempt's staging prefix"));
    }

    #[test]
    fn copied_values_must_lie_in_the_inputs_range() {
        let s = spec("rollup");
        let (req, mut ev) = report(&s, 10, 4);
        // a min metric's output value below every input value
        ev[0].footer.as_mut().unwrap().ranges.insert("lo".into(), ValueRange::Int { min: 0, max: 5 });
        let e = run(&s, &req, &ev, &in_footer()).unwrap_err();
        assert!(e.contains("'lo'") && e.contains("[1, 5]"), "{e}");
        // a summed metric may leave the range
        let (req, mut ev) = report(&s, 10, 4);
        ev[0].footer.as_mut().unwrap().ranges.insert("i".into(), ValueRange::Int { min: 0, max: 1_000_000 });
        assert_eq!(run(&s, &req, &ev, &in_footer()), Ok(()));
    }

    #[test]
    fn input_ranges_are_known_only_when_every_input_gives_them() {
        let s = spec("rollup"); // copied: d (dimension), lo (a min metric)
        let int = |min, max| ValueRange::Int { min, max };
        let a = facts(10, &[("d", int(0, 3)), ("lo", int(5, 9))]);
        let b = facts(10, &[("d", int(-2, 1)), ("lo", int(7, 7))]);
        let r = InputRanges::of(&s, &[Some(a.clone()), Some(b.clone())]);
        assert_eq!((r.outer("d"), r.outer("lo")), (Some(int(-2, 3)), Some(int(5, 9))));
        assert_eq!(r.outer("f"), None, "a summed metric is not copied");
        // an input of 0 rows adds nothing; one without statistics makes the column unknown
        let empty = facts(0, &[]);
        let no_stats = facts(4, &[("d", int(0, 0))]);
        let r = InputRanges::of(&s, &[Some(a.clone()), Some(empty), Some(no_stats)]);
        assert_eq!((r.outer("d"), r.outer("lo")), (Some(int(0, 3)), None));
        // an unreadable footer, or INT against FLOAT: unknown, whatever comes after
        let r = InputRanges::of(&s, &[Some(a.clone()), None, Some(b.clone())]);
        assert_eq!((r.outer("d"), r.outer("lo")), (None, None));
        let float = facts(1, &[("d", ValueRange::Float { min: 0.0, max: 1.0 })]);
        assert_eq!(InputRanges::of(&s, &[Some(a.clone()), Some(float), Some(b)]).outer("d"), None);
        assert_eq!(InputRanges::of(&s, &[]).outer("d"), None, "no inputs: nothing to compare with");
        // folded in any order, the same ranges
        let c = facts(3, &[("d", int(8, 8)), ("lo", int(1, 1))]);
        let fwd = InputRanges::of(&s, &[Some(a.clone()), Some(c.clone())]);
        assert_eq!(fwd, InputRanges::of(&s, &[Some(c), Some(a)]));
    }

    #[test]
    fn the_cache_keeps_the_ranges_of_the_newest_tasks() {
        let s = spec("rollup");
        let cache = FooterCache::new(1 << 20);
        for i in 0..RANGE_TASKS + 3 {
            let f = facts(1, &[("d", ValueRange::Int { min: i as i64, max: i as i64 })]);
            cache.put_ranges(&format!("t__0__{i}"), InputRanges::of(&s, &[Some(f)]));
        }
        assert_eq!(cache.ranges_of("t__0__0"), None, "the oldest went first");
        let last = RANGE_TASKS + 2;
        let got = cache.ranges_of(&format!("t__0__{last}")).map(|r| r.outer("d"));
        assert_eq!(got, Some(Some(ValueRange::Int { min: last as i64, max: last as i64 })));
    }

    #[test]
    fn the_float_bound_is_tight_enough_to_matter() {
        // a million doubles of magnitude 1: the bound is ~1e-9 of the sum
        let b = float_sum_bound(DataType::Double, 1_000_000, 1_000_000.0);
        assert!(b < 1e-3, "{b}");
        let b = float_sum_bound(DataType::Float, 1_000, 1_000.0);
        assert!(b < 0.1, "{b}");
    }
}
