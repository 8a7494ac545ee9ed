//! The OFFLINE table as a Delta Lake table (issue 23), so that any engine
//! (Spark, Trino, DuckDB's `delta_scan`, Python's `deltalake`, Polars'
//! `read_delta`) reads exactly the committed windows, and the table as it
//! was at an earlier version.
//!
//! The log lives next to the table's files, at
//! `<namespace>/offline/<raw>_OFFLINE/_delta_log/`, and names them by their
//! path under `<namespace>/offline/<raw>_OFFLINE/`. etcd stays the source of
//! truth: [`plan`] compares the log with the table's committed OFFLINE
//! segments (`registry::offline_segments`, the same list as `r2o segment
//! list`) and [`Pending::commit`] writes one Delta commit: an `add` for each
//! committed file the log lacks, with its row count and min/max statistics
//! from its Parquet footer, a `remove` for each file the log has that is no
//! longer committed (a window a late-data `rematerialize` run replaced, a
//! flush, a purge), a `metaData` when the table's schema changed, and a
//! `txn` action (application id `r2o-<raw>`, version: the etcd revision the
//! committed list was read after), so a reader can tell which r2o state a
//! Delta version holds. The leader runs this after every change
//! (`projector`). The decisions are the pure functions here ([`decide`],
//! [`reconcile`], [`stats_json`], [`relative_path`], [`kept_for_readers`]);
//! the async code only reads and writes.
//!
//! Written with `deltalake-core` and its Delta kernel over r2o's own object
//! store (a prefix of it), so it works on every store r2o does. A pass
//! reads the log's lazy snapshot (its file actions streamed once for their
//! paths, never held: a loaded table holds every one with its statistics)
//! and writes its commit as one JSON object per action. Commits are atomic
//! (`PutMode::Create` of the next version): two writers racing for one
//! version cannot both win.

use deltalake_core::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake_core::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake_core::DeltaTable;
use r2o_common::columnar::{FooterFacts, ValueRange};
use r2o_common::schema::{DataType, Schema};
use r2o_common::store::{canonical_path, Layout, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Errors of the Delta log: the log could not be read or written, or a
/// committed file lies outside the table's directory.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// deltalake's error, with what was being done.
    #[error("the Delta log of '{table}' could not be {doing}: {source}")]
    Log {
        /// Raw table name.
        table: String,
        /// What failed, e.g. "read", "created".
        doing: &'static str,
        /// deltalake's error (boxed: it is large).
        #[source]
        source: Box<deltalake_core::DeltaTableError>,
    },
    /// A committed OFFLINE file that is not under the table's directory
    /// (a Delta log names files relative to its table).
    #[error("an OFFLINE segment of '{table}' is at '{location}', outside the table's directory '{root}'")]
    Outside {
        /// Raw table name.
        table: String,
        /// Its object path.
        location: String,
        /// The table's directory.
        root: String,
    },
}

/// A committed OFFLINE file as the log needs it (from its manifest entry,
/// `registry::offline_segments`): a view of its object path, made canonical
/// once where it is kept (the log names files by their path under the
/// table's directory, in object_store's encoding, and encoding a path costs
/// more than comparing it), and its size, rows and commit time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommittedFile<'a> {
    /// Canonical object path ([`canonical_path`]).
    location: &'a str,
    /// Size, bytes.
    pub size_bytes: u64,
    /// When it was committed (staged), UTC epoch ms.
    pub created_ms: i64,
    /// Rows.
    pub total_docs: u64,
}

impl<'a> CommittedFile<'a> {
    /// The file at `canonical` (an object path as [`canonical_path`] gave
    /// it; not checked: encoding is not idempotent, `%` becomes `%25` again).
    pub fn new(canonical: &'a str, size_bytes: u64, created_ms: i64, total_docs: u64) -> Self {
        CommittedFile { location: canonical, size_bytes, created_ms, total_docs }
    }

    /// The file of a manifest entry whose location is already canonical.
    #[cfg(test)]
    pub(crate) fn of(s: &'a r2o_common::meta::SegmentMeta) -> Self {
        CommittedFile::new(&s.location, s.size_bytes, s.created_ms, s.total_docs)
    }

    /// Its canonical object path.
    pub fn location(&self) -> &'a str {
        self.location
    }

    /// Its path under the table's directory `root` (canonical, no trailing
    /// `/`), as the log names it; `None` when it is not under it. Pure.
    pub fn path_under(&self, root: &str) -> Option<&'a str> {
        self.location.strip_prefix(root)?.strip_prefix('/').filter(|p| !p.is_empty())
    }
}

/// One committed OFFLINE file as the log names it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaFile {
    /// Path relative to the table's directory (object_store's encoding).
    pub path: String,
    /// Its object path in r2o's store (canonical), to read its footer.
    pub location: String,
    /// Rows.
    pub rows: u64,
    /// Size, bytes.
    pub size_bytes: i64,
    /// When it was committed, UTC epoch ms (the `add`'s modification time).
    pub modification_ms: i64,
    /// Delta statistics JSON ([`stats_json`]): `numRecords` alone until
    /// the projector fills them from the file's footer.
    pub stats: String,
}

impl DeltaFile {
    /// The `add` of the committed file `f`, named `path` in the log.
    fn of(path: &str, f: &CommittedFile<'_>) -> Self {
        DeltaFile {
            path: path.to_string(),
            location: f.location().to_string(),
            rows: f.total_docs,
            size_bytes: f.size_bytes as i64,
            modification_ms: f.created_ms,
            stats: serde_json::json!({ "numRecords": f.total_docs }).to_string(),
        }
    }
}

/// What one Delta commit does to make the log's files the committed ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconcile {
    /// Committed files the log lacks, in path order.
    pub add: Vec<DeltaFile>,
    /// Files in the log no longer committed, in path order.
    pub remove: Vec<String>,
}

impl Reconcile {
    /// Whether the log already holds exactly the committed files.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// The `add`s and `remove`s that turn the log's files (`in_log`, by path)
/// into `committed` (each file with its path in the log). A committed file
/// already in the log is left alone (r2o never rewrites a file in place: a
/// replaced window gets new files). Only the `add`s are made into
/// [`DeltaFile`]s. Pure.
pub fn reconcile<'a>(
    committed: impl IntoIterator<Item = (&'a str, CommittedFile<'a>)>,
    in_log: &BTreeSet<String>,
) -> Reconcile {
    let wanted: BTreeMap<&str, CommittedFile> = committed.into_iter().collect();
    Reconcile {
        add: wanted.iter().filter(|(p, _)| !in_log.contains(**p)).map(|(p, f)| DeltaFile::of(p, f)).collect(),
        remove: in_log.iter().filter(|p| !wanted.contains_key(p.as_str())).cloned().collect(),
    }
}

/// `location` relative to the table's directory `root` (both object paths;
/// `root` ends with `/`), `None` when it is not under it. Pure.
pub fn relative_path(root: &str, location: &str) -> Option<String> {
    let location = canonical_path(location);
    let root = canonical_path(root.trim_end_matches('/'));
    location.strip_prefix(&root)?.strip_prefix('/').filter(|p| !p.is_empty()).map(str::to_string)
}

/// Delta's per-file statistics JSON: `numRecords`, and `minValues` /
/// `maxValues` of the INT, LONG, FLOAT, DOUBLE and TIMESTAMP columns whose
/// exact range the file's footer gives (a range Delta readers may skip the
/// file by, so only exact ones: non-finite floats, and TIMESTAMPs outside
/// the years 0001-9999, are left out; no statistic means "unknown").
/// TIMESTAMP (a `timestamp_ntz` column in the log) is written as text, in
/// [`stats_timestamp`]'s form. Pure.
pub fn stats_json(rows: u64, footer: Option<&FooterFacts>, schema: &Schema) -> String {
    use serde_json::Value;
    let (mut min, mut max) = (serde_json::Map::new(), serde_json::Map::new());
    for (column, range) in footer.map(|f| &f.ranges).into_iter().flatten() {
        let Some(field) = schema.field(column) else { continue };
        let bounds = match (field.data_type, range) {
            (DataType::Int | DataType::Long, ValueRange::Int { min, max }) => {
                Some((Value::from(*min), Value::from(*max)))
            }
            (DataType::Timestamp, ValueRange::Int { min, max }) => {
                stats_timestamp(*min).zip(stats_timestamp(*max)).map(|(lo, hi)| (Value::from(lo), Value::from(hi)))
            }
            (DataType::Float | DataType::Double, ValueRange::Float { min, max })
                if min.is_finite() && max.is_finite() =>
            {
                serde_json::Number::from_f64(*min)
                    .zip(serde_json::Number::from_f64(*max))
                    .map(|(lo, hi)| (Value::Number(lo), Value::Number(hi)))
            }
            _ => None,
        };
        if let Some((lo, hi)) = bounds {
            min.insert(column.clone(), lo);
            max.insert(column.clone(), hi);
        }
    }
    let mut stats = serde_json::Map::new();
    stats.insert("numRecords".into(), serde_json::Value::from(rows));
    if !min.is_empty() {
        stats.insert("minValues".into(), serde_json::Value::Object(min));
        stats.insert("maxValues".into(), serde_json::Value::Object(max));
    }
    serde_json::Value::Object(stats).to_string()
}

/// A TIMESTAMP statistic (`ms`: UTC epoch milliseconds) as the Delta
/// kernel writes a `timestamp_ntz` one: `1969-12-31T23:59:59.999`
/// (`%Y-%m-%dT%H:%M:%S%.3f`, its `STATS_TIMESTAMP_NTZ_FORMAT`). Exact,
/// since Pinot's TIMESTAMP holds milliseconds; floored below 1970 as
/// above it. `None` outside the years 0001-9999, which the form cannot
/// spell. Pure.
pub fn stats_timestamp(ms: i64) -> Option<String> {
    /// 0001-01-01T00:00:00.000 and 9999-12-31T23:59:59.999, epoch ms.
    const SPELLED: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;
    if !SPELLED.contains(&ms) {
        return None;
    }
    let seconds = r2o_common::window::format_utc(ms); // `...T23:59:59Z`, floored to the second
    Some(format!("{}.{:03}", seconds.trim_end_matches('Z'), ms.rem_euclid(1000)))
}

/// Whether the object at `path` (canonical, in the install's namespace of
/// `layout`) belongs to a table's Delta log
/// (`<ns>/offline/<raw>_OFFLINE/_delta_log/...`): no metadata in etcd names
/// those objects, and the janitor must never take them for orphans. Pure.
pub fn is_log_object(layout: &Layout, path: &str) -> bool {
    let offline = canonical_path(&format!("{}offline", layout.namespace()));
    let Some(rest) = path.strip_prefix(&offline).and_then(|r| r.strip_prefix('/')) else { return false };
    match rest.split_once('/') {
        Some((table_dir, inner)) => table_dir.ends_with("_OFFLINE") && inner.starts_with("_delta_log/"),
        None => false,
    }
}

/// The application id of r2o's `txn` actions in a table's log.
pub fn app_id(raw: &str) -> String {
    format!("r2o-{raw}")
}

/// A log store over the table's directory `root` of `store`. deltalake
/// resolves the log's objects in `store` by the path of the URL it is given,
/// so that URL is `memory:///<root>` (the object path in r2o's store,
/// whatever the store; a `file://` URL would be checked against the local
/// filesystem), not the one readers open.
fn log_store(store: &Store, root: &str) -> Result<LogStoreRef, url::ParseError> {
    let url = url::Url::parse(&format!("memory:///{}/", root.trim_matches('/')))?;
    let sorted: Store = Arc::new(SortedListing(store.clone()));
    let prefixed: Store = Arc::new(object_store::prefix::PrefixStore::new(sorted.clone(), root.trim_end_matches('/')));
    Ok(default_logstore(prefixed, sorted, &url, &StorageConfig::default()))
}

/// [`log_store`] of `raw`'s directory `root`, its error named.
///
/// # Errors
/// [`DeltaError::Log`] when `root` makes no URL.
fn table_log_store(store: &Store, raw: &str, root: &str) -> Result<LogStoreRef, DeltaError> {
    log_store(store, root).map_err(|e| DeltaError::Log {
        table: raw.into(),
        doing: "opened",
        source: Box::new(deltalake_core::DeltaTableError::Generic(format!("table directory '{root}': {e}"))),
    })
}

/// Opens the Delta log of `raw` in its table's directory `root`: the log
/// store, and the table loaded at its latest version (`None`: no log yet).
///
/// # Errors
/// [`DeltaError::Log`] when the log cannot be read.
async fn open_log(store: &Store, raw: &str, root: &str) -> Result<(LogStoreRef, Option<DeltaTable>), DeltaError> {
    let logs = table_log_store(store, raw, root)?;
    let err = |source| DeltaError::Log { table: raw.into(), doing: "read", source: Box::new(source) };
    let mut table = DeltaTable::new(logs.clone());
    if !table.verify_deltatable_existence().await.map_err(err)? {
        return Ok((logs, None));
    }
    table.load().await.map_err(err)?;
    Ok((logs, Some(table)))
}

/// What a pass needs of a table's log, read without keeping its file
/// actions: deltalake's lazy snapshot streams them once for their paths
/// (a loaded `DeltaTable` holds every file action with its statistics,
/// ~125 MB at 36,526 files: issue 23's x100 sitting).
#[derive(Clone)]
struct LogState {
    /// The log's latest version.
    version: i64,
    /// The files it names, by path relative to the table's directory.
    paths: BTreeSet<String>,
    /// Its `txn` version for r2o's application id.
    txn: Option<i64>,
    /// Its `metaData` (schema, configuration).
    metadata: deltalake_core::kernel::Metadata,
    /// Its schema.
    schema: StructType,
}

/// Reads [`LogState`] of the log of `raw` in `logs` (`None`: no log yet).
///
/// # Errors
/// [`DeltaError::Log`] when the log cannot be read.
async fn read_log(logs: &LogStoreRef, raw: &str) -> Result<Option<LogState>, DeltaError> {
    use futures::TryStreamExt;
    let err = |source| DeltaError::Log { table: raw.into(), doing: "read", source: Box::new(source) };
    if !DeltaTable::new(logs.clone()).verify_deltatable_existence().await.map_err(err)? {
        return Ok(None);
    }
    let snapshot = deltalake_core::kernel::Snapshot::try_new(logs.as_ref(), None).await.map_err(err)?;
    let version = snapshot.version();
    let paths: BTreeSet<String> = snapshot
        .file_views(logs.as_ref(), None)
        .map_ok(|f| canonical_path(&f.path()))
        .try_collect()
        .await
        .map_err(err)?;
    let app = app_id(raw);
    let txn =
        kernel_snapshot(logs, version, raw, move |snapshot, engine| snapshot.get_app_id_version(&app, engine)).await?;
    Ok(Some(LogState {
        version: version as i64,
        paths,
        txn,
        metadata: snapshot.metadata().clone(),
        schema: snapshot.schema().as_ref().clone(),
    }))
}

/// Runs `f` over the Delta kernel's snapshot of the log in `logs` at
/// `version`, on a blocking thread (the kernel's reads block).
///
/// # Errors
/// [`DeltaError::Log`] when the snapshot cannot be built or `f` fails.
async fn kernel_snapshot<T: Send + 'static>(
    logs: &LogStoreRef,
    version: u64,
    raw: &str,
    f: impl FnOnce(&delta_kernel::snapshot::SnapshotRef, &dyn delta_kernel::Engine) -> delta_kernel::DeltaResult<T>
        + Send
        + 'static,
) -> Result<T, DeltaError> {
    let kernel_err = |e: String| DeltaError::Log {
        table: raw.into(),
        doing: "read",
        source: Box::new(deltalake_core::DeltaTableError::Generic(e)),
    };
    let root = logs.transaction_url(None).map_err(|e| kernel_err(e.to_string()))?;
    let engine = logs.engine(None);
    tokio::task::spawn_blocking(move || {
        let snapshot = delta_kernel::Snapshot::builder_for(root).at_version(version).build(engine.as_ref())?;
        f(&snapshot, engine.as_ref())
    })
    .await
    .map_err(|e| kernel_err(e.to_string()))?
    .map_err(|e| kernel_err(e.to_string()))
}

/// The state each table's log was left in by r2o's own last commit (its
/// paths, `txn`, `metaData`), kept by the leader's projector so the next
/// pass does not replay the log while no one else has written to it
/// (checked by two HEADs: r2o's version is there, the next is not). Held:
/// the paths, ~100 bytes a file (36,526 files: ~4 MB). Cheap to clone.
#[derive(Clone, Default)]
pub struct LogMemo(Arc<std::sync::Mutex<HashMap<String, LogState>>>);

impl LogMemo {
    fn take(&self, raw: &str) -> Option<LogState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(raw)
    }

    fn put(&self, raw: &str, state: LogState) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(raw.to_string(), state);
    }
}

/// Whether the log under `root` still ends at `version`: its commit file is
/// there and the next one is not (a store error counts as "no": read the
/// log again).
async fn still_latest(store: &Store, root: &str, version: i64) -> bool {
    let file = |v: i64| object_store::path::Path::from(format!("{root}_delta_log/{}", commit_file(v)));
    use object_store::ObjectStoreExt;
    let (ours, next) = (file(version), file(version + 1));
    let (ours, next) = futures::join!(store.head(&ours), store.head(&next));
    ours.is_ok() && matches!(next, Err(object_store::Error::NotFound { .. }))
}

/// r2o's store as deltalake reads it: every listing in path order. Delta
/// readers take a listing of `_delta_log/` to be in version order, as S3
/// lists keys; a local directory lists in no order, and a log listed
/// `1.json, 0.json` reads as a gap ("expected contiguous commit files").
#[derive(Debug)]
struct SortedListing(Store);

impl std::fmt::Display for SortedListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SortedListing({})", self.0)
    }
}

/// `listing`, collected and sorted by path.
fn sorted(
    listing: futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::once(async move {
        let mut all: Vec<object_store::ObjectMeta> = listing.try_collect().await?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok::<_, object_store::Error>(futures::stream::iter(all.into_iter().map(Ok)))
    })
    .try_flatten()
    .boxed()
}

#[async_trait::async_trait]
impl object_store::ObjectStore for SortedListing {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        sorted(self.0.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&object_store::path::Path>,
        offset: &object_store::path::Path,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        sorted(self.0.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// The table's directory as a URL: `store_uri` (`file:///var/lib/r2o/store`,
/// `s3://bucket/prefix`) joined with the table's prefix.
pub fn table_url(store_uri: &str, root: &str) -> Result<url::Url, url::ParseError> {
    url::Url::parse(&format!("{}/{}/", store_uri.trim_end_matches('/'), root.trim_matches('/')))
}

/// What [`plan`] decided, from the log's state and the committed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No log, and no table to create one for (a purged table never logged).
    NoLog,
    /// The log holds exactly the committed files, with the table's schema.
    UpToDate,
    /// The log's `txn` is past `revision`: a newer state is already in it (a
    /// deposed leader's pass, or a slower `export-delta`); write nothing.
    Stale,
    /// Write one commit (the first one creates the log).
    Commit,
}

/// The rule of [`plan`]: whether the log exists, whether its files differ
/// from the committed ones, whether the table's metadata (its schema, r2o's
/// file retention) differs from the log's (`None`: no table, nothing to
/// compare), the log's `txn` version for
/// r2o and the etcd revision the committed files were read after. Pure.
pub fn decide(
    exists: bool,
    files_differ: bool,
    schema_differs: Option<bool>,
    log_txn: Option<i64>,
    revision: i64,
) -> Decision {
    if !exists {
        return match schema_differs {
            Some(_) => Decision::Commit,
            None => Decision::NoLog,
        };
    }
    if log_txn.is_some_and(|t| t > revision) {
        return Decision::Stale;
    }
    if files_differ || schema_differs == Some(true) || log_txn.is_none() {
        Decision::Commit
    } else {
        Decision::UpToDate
    }
}

/// What [`plan`] found.
pub enum Planned {
    /// No log and no table: nothing to write.
    NoLog,
    /// The log holds exactly the committed files.
    UpToDate {
        /// The log's version.
        version: i64,
    },
    /// The log already holds a newer state.
    Stale {
        /// The log's version.
        version: i64,
        /// The etcd revision its `txn` names.
        log_revision: i64,
    },
    /// One commit to write ([`Pending::commit`]).
    Commit(Box<Pending>),
}

/// One Delta commit, planned: the `add`s (whose statistics the caller may
/// fill from footers, [`Pending::adds_mut`]) and `remove`s that make the log
/// hold the committed files, the `txn`, and a `metaData` when the table's
/// schema changed.
pub struct Pending {
    raw: String,
    root: String,
    store: Store,
    logs: LogStoreRef,
    /// The log as read (or as r2o's last commit left it); `None`: the
    /// commit creates it.
    log: Option<LogState>,
    /// Where the log's state after the commit is kept ([`plan`]).
    memo: Option<LogMemo>,
    change: Reconcile,
    txn: Transaction,
    /// The table's schema when the log is created or the schema changed.
    schema: Option<StructType>,
    /// The log's `delta.deletedFileRetentionDuration` when it is created or
    /// differs from r2o's file retention ([`retention_interval`]).
    retention: Option<String>,
}

impl Pending {
    /// The table's directory (object path, ends with `/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The files the commit adds.
    pub fn adds(&self) -> &[DeltaFile] {
        &self.change.add
    }

    /// The files the commit adds, to fill their statistics.
    pub fn adds_mut(&mut self) -> &mut [DeltaFile] {
        &mut self.change.add
    }

    /// How many files the commit removes.
    pub fn removes(&self) -> usize {
        self.change.remove.len()
    }

    /// Writes the commit; returns the log's new version. The first commit
    /// creates the log through deltalake; later ones are written as
    /// deltalake writes them (a `commitInfo` and one JSON action per line,
    /// put if absent at the next version), without holding the table's file
    /// actions. A checkpoint, written by the Delta kernel from the log by
    /// batches, follows every `delta.checkpointInterval` versions (r2o
    /// creates logs with [`CHECKPOINT_INTERVAL`]; [`checkpoint_due`]), and
    /// the log's expired commits are then cleaned up as the table's
    /// properties say ([`log_upkeep`]: another engine may have set them).
    ///
    /// # Errors
    /// [`DeltaError::Log`]: the write failed, or another writer took the
    /// version (nothing written: plan again).
    pub async fn commit(self) -> Result<i64, DeltaError> {
        let raw = self.raw.as_str();
        let err = |doing| move |source| DeltaError::Log { table: raw.into(), doing, source: Box::new(source) };
        let now = r2o_common::meta::now_ms();
        let mut actions: Vec<Action> = self
            .change
            .add
            .iter()
            .map(|f| {
                Action::Add(Add {
                    path: f.path.clone(),
                    size: f.size_bytes,
                    modification_time: f.modification_ms,
                    data_change: true,
                    stats: Some(f.stats.clone()),
                    ..Default::default()
                })
            })
            .collect();
        actions.extend(self.change.remove.iter().map(|p| {
            Action::Remove(Remove {
                path: p.clone(),
                data_change: true,
                deletion_timestamp: Some(now),
                extended_file_metadata: Some(false),
                ..Default::default()
            })
        }));
        let Some(log) = self.log else {
            let columns = self.schema.ok_or_else(|| DeltaError::Log {
                table: raw.into(),
                doing: "created",
                source: Box::new(deltalake_core::DeltaTableError::Generic("the table has no schema".into())),
            })?;
            let created = deltalake_core::operations::create::CreateBuilder::new()
                .with_log_store(self.logs.clone())
                .with_table_name(format!("{raw}_OFFLINE"))
                .with_columns(columns.fields().cloned())
                .with_configuration_property(
                    deltalake_core::TableProperty::CheckpointInterval,
                    Some(CHECKPOINT_INTERVAL.to_string()),
                )
                .with_configuration_property(
                    deltalake_core::TableProperty::DeletedFileRetentionDuration,
                    self.retention.clone(),
                )
                .with_actions(actions.into_iter().chain([Action::Txn(self.txn)]))
                .await
                .map_err(err("created"))?;
            // (no state is kept for a log just created: the next pass reads it)
            return Ok(created.version().unwrap_or(0) as i64);
        };
        let read_version = log.version;
        let mut metadata = log.metadata.clone();
        if self.schema.is_some() || self.retention.is_some() {
            use deltalake_core::kernel::MetadataExt;
            let meta_err = |e: String| DeltaError::Log {
                table: raw.into(),
                doing: "given its new metadata",
                source: Box::new(deltalake_core::DeltaTableError::Generic(e)),
            };
            if let Some(schema) = &self.schema {
                metadata = metadata.with_schema(schema).map_err(|e| meta_err(e.to_string()))?;
            }
            if let Some(retention) = &self.retention {
                metadata = metadata
                    .add_config_key(RETENTION_KEY.to_string(), retention.clone())
                    .map_err(|e| meta_err(e.to_string()))?;
            }
            actions.push(Action::Metadata(metadata.clone()));
        }
        let txn_version = self.txn.version;
        actions.push(Action::Txn(self.txn));
        let info = Action::CommitInfo(deltalake_core::kernel::CommitInfo {
            timestamp: Some(now),
            operation: Some("WRITE".into()),
            operation_parameters: Some([("mode".to_string(), serde_json::json!("Append"))].into_iter().collect()),
            read_version: Some(read_version as u64),
            is_blind_append: Some(self.change.remove.is_empty()),
            engine_info: Some(format!("r2o/{}", env!("CARGO_PKG_VERSION"))),
            ..Default::default()
        });
        // Written as deltalake writes a commit (one JSON action per line, put
        // if absent), without its CommitBuilder, which needs the loaded table.
        let version = read_version + 1;
        let lines = std::iter::once(&info)
            .chain(&actions)
            .map(serde_json::to_string)
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| DeltaError::Log {
                table: raw.into(),
                doing: "committed",
                source: Box::new(deltalake_core::DeltaTableError::Generic(e.to_string())),
            })?;
        let path = object_store::path::Path::from(format!("{}_delta_log/{}", self.root, commit_file(version)));
        let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        if let Err(e) = self.store.put_opts(&path, lines.join("\n").into(), opts).await {
            let problem = match e {
                object_store::Error::AlreadyExists { .. } => format!("version {version} was written by another writer"),
                e => e.to_string(),
            };
            return Err(DeltaError::Log {
                table: raw.into(),
                doing: "committed",
                source: Box::new(deltalake_core::DeltaTableError::Generic(problem)),
            });
        }
        let upkeep = log_upkeep(metadata.configuration());
        if let Some(memo) = &self.memo {
            let mut paths = log.paths;
            for p in &self.change.remove {
                paths.remove(p);
            }
            paths.extend(self.change.add.iter().map(|f| f.path.clone()));
            let schema = self.schema.unwrap_or(log.schema);
            memo.put(raw, LogState { version, paths, txn: Some(txn_version), metadata, schema });
        }
        if checkpoint_due(version, upkeep.checkpoint_interval) {
            // the kernel's checkpoint writer replays the log by batches; a
            // failed checkpoint leaves the commit done (readers replay the JSON)
            let written = kernel_snapshot(&self.logs, version as u64, raw, |snapshot, engine| {
                snapshot.checkpoint(engine, None).map(|_| ())
            })
            .await;
            match written {
                Err(e) => {
                    tracing::warn!(table = raw, version, error = %e, "the delta checkpoint was not written; readers replay the commits")
                }
                Ok(()) if !upkeep.expired_log_cleanup => {}
                Ok(()) => {
                    // as deltalake's writer does after a checkpoint: commits
                    // older than the log's retention and behind a checkpoint go
                    let cutoff = now.saturating_sub(upkeep.log_retention_ms);
                    let cleaned = deltalake_core::checkpoints::cleanup_expired_logs_for(
                        version as u64,
                        self.logs.as_ref(),
                        cutoff,
                        None,
                    )
                    .await;
                    if let Err(e) = cleaned {
                        tracing::warn!(table = raw, version, error = %e, "expired delta log entries were not cleaned up");
                    }
                }
            }
        }
        Ok(version)
    }
}

/// The name of the commit file of `version` in `_delta_log/`: the version
/// in 20 digits, `.json` (Delta's protocol). Pure.
pub fn commit_file(version: i64) -> String {
    format!("{version:020}.json")
}

/// Whether a checkpoint follows the commit of `version`: every `interval`
/// versions (at least 1), at versions `interval - 1`, `2 * interval - 1`,
/// ... (9, 19, ... for 10; deltalake's own writer's rule), so a reader
/// replays at most that many JSON commits. Pure.
pub fn checkpoint_due(version: i64, interval: u64) -> bool {
    version >= 0 && (version as u64 + 1).is_multiple_of(interval.max(1))
}

/// How r2o keeps a Delta log's own files, from the table's properties: a
/// log r2o created carries its own values, but another engine may change
/// them (Spark's `ALTER TABLE .. SET TBLPROPERTIES`), and a writer must
/// honour them as deltalake's and Spark's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogUpkeep {
    /// `delta.checkpointInterval`: versions between checkpoints (default
    /// [`CHECKPOINT_INTERVAL`], Delta's usual 10).
    pub checkpoint_interval: u64,
    /// `delta.logRetentionDuration`: how long a commit file stays once a
    /// later checkpoint covers it, ms (default [`LOG_RETENTION_MS`], 30 days).
    pub log_retention_ms: i64,
    /// `delta.enableExpiredLogCleanup` (default true): false keeps every
    /// commit file.
    pub expired_log_cleanup: bool,
}

/// The [`LogUpkeep`] a log's `metaData.configuration` asks for, parsed as
/// the Delta kernel parses table properties (intervals as `interval <n>
/// <unit>`); a property absent or not valid takes Delta's default. Pure.
pub fn log_upkeep(configuration: &HashMap<String, String>) -> LogUpkeep {
    let props = delta_kernel::table_properties::TableProperties::from(configuration.iter());
    LogUpkeep {
        checkpoint_interval: props.checkpoint_interval.map_or(CHECKPOINT_INTERVAL, |n| n.get()),
        log_retention_ms: props
            .log_retention_duration
            .map_or(LOG_RETENTION_MS, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        expired_log_cleanup: props.enable_expired_log_cleanup.unwrap_or(true),
    }
}

/// The table property that tells Delta readers (and other engines' VACUUM)
/// how long a removed file stays for time travel.
pub const RETENTION_KEY: &str = "delta.deletedFileRetentionDuration";

/// r2o's file retention (`--delta-file-retention-secs`, ms) as the value of
/// [`RETENTION_KEY`]: `interval <seconds> seconds` (Delta's interval syntax;
/// whole seconds, rounded up so a reader never keeps less than r2o does).
/// Pure.
pub fn retention_interval(retention_ms: i64) -> String {
    let secs = retention_ms.max(0).saturating_add(999) / 1000;
    format!("interval {secs} seconds")
}

/// How long the log's own commit files stay once a later checkpoint covers
/// them, ms (Delta's default `delta.logRetentionDuration`, 30 days: time
/// travel to a version needs its commits).
pub const LOG_RETENTION_MS: i64 = 30 * 86_400_000;

/// Versions between checkpoints of the logs r2o creates (Delta's usual
/// `delta.checkpointInterval`).
pub const CHECKPOINT_INTERVAL: u64 = 10;

/// Plans the Delta commit that makes the log of `raw` hold exactly
/// `committed` (its committed OFFLINE segments, read after etcd revision
/// `revision`) with `schema` (`None`: the table is gone, e.g. purged), by
/// [`decide`]. The `add`s' statistics hold the row count only; the caller
/// fills them from the footers ([`stats_json`]). The log's
/// `delta.deletedFileRetentionDuration` follows `file_retention_ms` (a
/// differing value is a metadata change like a schema's). With `memo`, the
/// log's state as r2o's last commit left it is taken from there when the
/// log has not moved since, instead of replaying the log, and the state
/// after this plan's commit (or the one read, when nothing is written) is
/// put back.
///
/// # Errors
/// [`DeltaError::Outside`] for a file outside the table's directory;
/// [`DeltaError::Log`] when the log cannot be read.
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    store: &Store,
    layout: &Layout,
    raw: &str,
    schema: Option<&Schema>,
    committed: &[CommittedFile<'_>],
    revision: i64,
    file_retention_ms: i64,
    memo: Option<&LogMemo>,
) -> Result<Planned, DeltaError> {
    let root = layout.offline_prefix(raw);
    let canonical_root = canonical_path(root.trim_end_matches('/'));
    let files = committed
        .iter()
        .map(|f| match f.path_under(&canonical_root) {
            Some(path) => Ok((path, *f)),
            None => {
                Err(DeltaError::Outside { table: raw.into(), location: f.location.to_string(), root: root.clone() })
            }
        })
        .collect::<Result<Vec<_>, DeltaError>>()?;
    let wanted = schema.map(|s| delta_schema(raw, s)).transpose()?;
    let logs = table_log_store(store, raw, &root)?;
    let known = match memo.and_then(|m| m.take(raw)) {
        Some(k) if still_latest(store, &root, k.version).await => Some(k),
        _ => None,
    };
    let log = match known {
        Some(k) => Some(k),
        None => read_log(&logs, raw).await?,
    };
    let exists = log.is_some();
    let version = log.as_ref().map_or(0, |l| l.version);
    let txn = log.as_ref().and_then(|l| l.txn);
    let log_retention = log.as_ref().and_then(|l| l.metadata.configuration().get(RETENTION_KEY).cloned());
    let no_files = BTreeSet::new();
    let change = reconcile(files.iter().copied(), log.as_ref().map_or(&no_files, |l| &l.paths));
    let retention = retention_interval(file_retention_ms);
    let retention_differs = log_retention.as_deref() != Some(retention.as_str());
    let schema_differs = wanted.as_ref().map(|w| log.as_ref().map(|l| &l.schema) != Some(w));
    // (a changed retention is a metadata change, decided like a schema's)
    let metadata_differs = schema_differs.map(|d| d || retention_differs);
    let decision = decide(exists, !change.is_empty(), metadata_differs, txn, revision);
    // nothing written: the log stays as read
    let keep = |log: Option<LogState>| {
        if let (Some(m), Some(l)) = (memo, log) {
            m.put(raw, l);
        }
    };
    Ok(match decision {
        Decision::NoLog => Planned::NoLog,
        Decision::UpToDate => {
            keep(log);
            Planned::UpToDate { version }
        }
        Decision::Stale => {
            keep(log);
            Planned::Stale { version, log_revision: txn.unwrap_or_default() }
        }
        Decision::Commit => {
            let now = r2o_common::meta::now_ms();
            Planned::Commit(Box::new(Pending {
                raw: raw.to_string(),
                root,
                store: store.clone(),
                logs,
                log,
                memo: memo.cloned(),
                change,
                txn: Transaction { app_id: app_id(raw), version: revision, last_updated: Some(now) },
                schema: if schema_differs == Some(true) { wanted } else { None },
                retention: retention_differs.then_some(retention),
            }))
        }
    })
}

/// Whether an object of a table's directory that etcd no longer names must
/// stay for the readers of the table's Delta log: the log's current version
/// still names it (the log lags behind etcd), or it was removed from the log
/// less than `retention_ms` ago (a reader may travel to a version that names
/// it: Delta's `deletedFileRetentionDuration`, r2o's
/// `--delta-file-retention-secs`). A file the log never named (a failed
/// attempt's output) is not kept. Pure.
pub fn kept_for_readers(in_current: bool, removed_ms: Option<i64>, now_ms: i64, retention_ms: i64) -> bool {
    in_current || removed_ms.is_some_and(|at| now_ms.saturating_sub(at) < retention_ms)
}

/// What a table's Delta log says about its files, by object path (canonical,
/// in r2o's store): the files its current version names, and when each file
/// it removed was removed (UTC epoch ms; the latest removal of a path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFiles {
    /// Files of the current version.
    pub current: BTreeSet<String>,
    /// Removed files, with their `deletionTimestamp`.
    pub removed: BTreeMap<String, i64>,
}

/// Reads [`LogFiles`] of `raw`'s log (empty when it has none).
///
/// # Errors
/// [`DeltaError::Log`] when the log cannot be read.
pub async fn log_files(store: &Store, layout: &Layout, raw: &str) -> Result<LogFiles, DeltaError> {
    use futures::TryStreamExt;
    let root = layout.offline_prefix(raw);
    let err = |doing| move |source| DeltaError::Log { table: raw.into(), doing, source: Box::new(source) };
    let (logs, Some(table)) = open_log(store, raw, &root).await? else { return Ok(LogFiles::default()) };
    let state = table.snapshot().map_err(err("read"))?;
    let full = |p: &str| canonical_path(&format!("{root}{p}"));
    let current = state.log_data().iter().map(|f| full(&f.path())).collect();
    let mut removed = BTreeMap::new();
    let mut tombstones = state.all_tombstones(logs.as_ref());
    while let Some(t) = tombstones.try_next().await.map_err(err("read"))? {
        let at = t.deletion_timestamp().unwrap_or(0);
        let e = removed.entry(full(&t.path())).or_insert(at);
        *e = (*e).max(at);
    }
    Ok(LogFiles { current, removed })
}

/// The raw table whose directory holds the object at `path` (canonical, in
/// the install's namespace of `layout`): `<ns>/offline/<raw>_OFFLINE/...`,
/// not its Delta log. Pure.
pub fn table_of<'a>(layout: &Layout, path: &'a str) -> Option<&'a str> {
    let offline = canonical_path(&format!("{}offline", layout.namespace()));
    let rest = path.strip_prefix(offline.as_str())?.strip_prefix('/')?;
    let (dir, inner) = rest.split_once('/')?;
    if inner.starts_with("_delta_log/") || inner.is_empty() {
        return None;
    }
    dir.strip_suffix("_OFFLINE").filter(|r| !r.is_empty())
}

/// The table's Delta schema: its columns as r2o writes them.
fn delta_schema(raw: &str, schema: &Schema) -> Result<StructType, DeltaError> {
    use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
    let arrow = schema.arrow_schema();
    arrow.as_ref().try_into_kernel().map_err(|e: arrow::error::ArrowError| DeltaError::Log {
        table: raw.into(),
        doing: "given the table's schema",
        source: Box::new(deltalake_core::DeltaTableError::Generic(e.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::meta::SegmentMeta;
    use r2o_common::schema::FieldSpec;

    const DAY: i64 = 86_400_000;

    /// [`plan`] of table `t` holding the files of `committed`.
    async fn plan_segments(
        store: &Store,
        layout: &Layout,
        schema: &Schema,
        committed: &[SegmentMeta],
        revision: i64,
        retention_ms: i64,
    ) -> Planned {
        let files: Vec<CommittedFile> = committed.iter().map(CommittedFile::of).collect();
        plan(store, layout, "t", Some(schema), &files, revision, retention_ms, None).await.unwrap()
    }

    fn file(location: &str) -> (&str, CommittedFile<'_>) {
        (location.strip_prefix("root/").unwrap(), CommittedFile::new(location, 10, 1, 0))
    }

    #[test]
    fn reconcile_adds_what_the_log_lacks_and_removes_what_is_no_longer_committed() {
        let committed = [file("root/t/a/2.parquet"), file("root/t/a/1.parquet"), file("root/u/a/1.parquet")];
        let pairs = || committed.iter().copied();
        let in_log: BTreeSet<String> = ["t/a/1.parquet", "old/a/1.parquet"].into_iter().map(String::from).collect();
        let r = reconcile(pairs(), &in_log);
        assert_eq!(r.add.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["t/a/2.parquet", "u/a/1.parquet"]);
        assert_eq!((r.add[0].size_bytes, r.add[0].location.as_str()), (10, "root/t/a/2.parquet"));
        assert_eq!(r.remove, ["old/a/1.parquet"]);
        let all: BTreeSet<String> = committed.iter().map(|(p, _)| p.to_string()).collect();
        assert!(reconcile(pairs(), &all).is_empty());
        assert_eq!(reconcile([], &all).remove.len(), 3, "a flush removes every file");
    }

    #[test]
    fn the_log_is_written_when_it_differs_and_never_behind_a_newer_state() {
        use Decision::*;
        // no log: created for a table, never for a purged one
        assert_eq!(decide(false, false, Some(true), None, 5), Commit);
        assert_eq!(decide(false, true, None, None, 5), NoLog);
        // up to date, or behind in files, schema or txn
        assert_eq!(decide(true, false, Some(false), Some(5), 7), UpToDate);
        assert_eq!(decide(true, true, Some(false), Some(5), 7), Commit);
        assert_eq!(decide(true, false, Some(true), Some(5), 7), Commit, "a schema change");
        assert_eq!(decide(true, false, None, Some(5), 7), UpToDate, "a purged table already emptied");
        assert_eq!(decide(true, false, Some(false), None, 7), Commit, "a log without r2o's txn gets one");
        // a pass that read etcd before the log's txn: a newer state is in the log
        assert_eq!(decide(true, true, Some(false), Some(9), 7), Stale);
        assert_eq!(decide(true, true, Some(true), Some(8), 7), Stale);
        assert_eq!(decide(true, true, Some(false), Some(7), 7), Commit, "the same revision may finish");
    }

    #[test]
    fn removed_files_stay_for_the_retention_and_logged_ones_while_named() {
        let day = DAY;
        assert!(kept_for_readers(true, None, 10 * day, day), "the log still names it");
        assert!(kept_for_readers(false, Some(9 * day + 1), 10 * day, day), "removed within the retention");
        assert!(!kept_for_readers(false, Some(9 * day), 10 * day, day), "removed a retention ago");
        assert!(!kept_for_readers(false, None, 10 * day, day), "never in the log: a failed attempt's");
        assert!(!kept_for_readers(false, Some(i64::MIN), i64::MAX, i64::MAX - 1), "no overflow");
    }

    #[test]
    fn objects_are_told_by_their_table() {
        let layout = Layout::new("ns");
        assert_eq!(table_of(&layout, "ns/offline/t_OFFLINE/t__1__2/attempt-1/a.parquet"), Some("t"));
        assert_eq!(table_of(&layout, "ns/offline/a_b_OFFLINE/x.parquet"), Some("a_b"));
        for other in [
            "ns/offline/t_OFFLINE/_delta_log/00000000000000000000.json",
            "ns/realtime/t_REALTIME/a.parquet",
            "ns/offline/t/a.parquet",
            "ns/offline/_OFFLINE/a.parquet",
            "other/offline/t_OFFLINE/a.parquet",
        ] {
            assert_eq!(table_of(&layout, other), None, "{other}");
        }
    }

    /// OFFLINE segment `i` of table `t`: one row, in window directory `w<i>`.
    fn offline_seg(i: usize) -> SegmentMeta {
        SegmentMeta {
            segment_name: format!("s{i}"),
            table_name: "t_OFFLINE".into(),
            location: format!("ns/offline/t_OFFLINE/w{i}/a.parquet"),
            total_docs: 1,
            size_bytes: 1,
            ..Default::default()
        }
    }

    /// A table of one LONG metric `n`.
    fn long_schema() -> Schema {
        Schema {
            name: "t".into(),
            fields: vec![FieldSpec {
                name: "n".into(),
                data_type: DataType::Long,
                kind: r2o_common::schema::FieldKind::Metric,
                time_format: None,
                default_null_value: None,
                not_null: false,
            }],
        }
    }

    /// A store in a temporary directory (kept while the directory lives),
    /// the install's layout (`ns`) and a one-column schema: a log's setting.
    fn local_log() -> (tempfile::TempDir, Store, Layout, Schema) {
        let dir = tempfile::tempdir().unwrap();
        let store = r2o_common::store::open_store(&format!("file://{}", dir.path().display())).unwrap();
        (dir, store, Layout::new("ns"), long_schema())
    }

    /// Another engine sets `delta.checkpointInterval` to 3 on a log r2o
    /// created: r2o's next commits put their checkpoints after versions 2
    /// and 5, not 9.
    #[tokio::test]
    async fn a_checkpoint_interval_another_engine_set_is_followed() {
        let (dir, store, layout, schema) = local_log();
        let mut committed = vec![offline_seg(0)];
        let commit = |committed: Vec<SegmentMeta>, revision: i64| {
            let (store, layout, schema) = (store.clone(), layout.clone(), schema.clone());
            async move {
                match plan_segments(&store, &layout, &schema, &committed, revision, DAY).await {
                    Planned::Commit(p) => p.commit().await.unwrap(),
                    _ => panic!("a commit was due at revision {revision}"),
                }
            }
        };
        assert_eq!(commit(committed.clone(), 1).await, 0);
        let (_, table) = open_log(&store, "t", &layout.offline_prefix("t")).await.unwrap();
        let set = [("delta.checkpointInterval".to_string(), "3".to_string())].into_iter().collect();
        let table = table.unwrap().set_tbl_properties().with_properties(set).await.unwrap();
        assert_eq!(table.version(), Some(1));
        for v in 2..=6 {
            committed.push(offline_seg(v as usize));
            assert_eq!(commit(committed.clone(), v + 1).await, v);
        }
        let checkpoints: Vec<i64> = (0..=6)
            .filter(|v| dir.path().join(format!("ns/offline/t_OFFLINE/_delta_log/{v:020}.checkpoint.parquet")).exists())
            .collect();
        assert_eq!(checkpoints, vec![2, 5], "every 3 versions, as the table now says");
    }

    #[tokio::test]
    async fn a_log_in_a_local_directory_reads_in_version_order_past_a_checkpoint() {
        // a local directory lists in no order; Delta readers need version order
        let (dir, store, layout, schema) = local_log();
        let seg = offline_seg;
        let mut committed = vec![];
        for i in 0..(CHECKPOINT_INTERVAL as usize + 3) {
            committed.push(seg(i));
            match plan_segments(&store, &layout, &schema, &committed, i as i64 + 1, DAY).await {
                Planned::Commit(p) => assert_eq!(p.commit().await.unwrap(), i as i64),
                _ => panic!("version {i} was due"),
            }
        }
        let last = CHECKPOINT_INTERVAL as i64 + 2;
        let checkpoint = dir
            .path()
            .join(format!("ns/offline/t_OFFLINE/_delta_log/{:020}.checkpoint.parquet", CHECKPOINT_INTERVAL - 1));
        assert!(checkpoint.exists(), "a checkpoint every {CHECKPOINT_INTERVAL} versions");
        match plan_segments(&store, &layout, &schema, &committed, last + 1, DAY).await {
            Planned::UpToDate { version } => assert_eq!(version, last),
            _ => panic!("the log holds every file"),
        }
        let files = log_files(&store, &layout, "t").await.unwrap();
        assert_eq!(files.current.len(), committed.len());
        // a pass that read etcd before the log's txn writes nothing
        committed.pop();
        assert!(matches!(
            plan_segments(&store, &layout, &schema, &committed, 3, DAY).await,
            Planned::Stale { log_revision, .. } if log_revision == last + 1
        ));
        committed.push(seg(last as usize));
        // the log carries r2o's file retention for other engines' VACUUM, and
        // a changed retention is one metaData version with the files as they are
        async fn retention(store: &Store, version: Option<i64>) -> Option<String> {
            let mut t = open_log(store, "t", "ns/offline/t_OFFLINE/").await.unwrap().1.unwrap();
            if let Some(v) = version {
                t.load_version(v as u64).await.unwrap();
            }
            t.snapshot().unwrap().metadata().configuration().get(RETENTION_KEY).cloned()
        }
        assert_eq!(retention(&store, None).await.as_deref(), Some("interval 86400 seconds"));
        match plan_segments(&store, &layout, &schema, &committed, last + 2, 2 * DAY).await {
            Planned::Commit(p) => {
                assert_eq!(p.removes(), 0);
                assert!(p.adds().is_empty(), "the metadata alone changes");
                assert_eq!(p.commit().await.unwrap(), last + 1);
            }
            _ => panic!("a changed retention is a new version"),
        }
        assert_eq!(retention(&store, None).await.as_deref(), Some("interval 172800 seconds"));
        assert_eq!(retention(&store, Some(last)).await.as_deref(), Some("interval 86400 seconds"));
        assert!(matches!(
            plan_segments(&store, &layout, &schema, &committed, last + 3, 2 * DAY).await,
            Planned::UpToDate { version } if version == last + 1
        ));
    }

    #[tokio::test]
    async fn a_pass_after_its_own_commit_uses_the_memo_until_another_writer_writes() {
        let (dir, store, layout, schema) = local_log();
        let memo = LogMemo::default();
        let seg = offline_seg;
        let pass = |committed: Vec<SegmentMeta>, rev: i64, memo: Option<LogMemo>| {
            let (store, layout, schema) = (store.clone(), layout.clone(), schema.clone());
            async move {
                let files: Vec<CommittedFile> = committed.iter().map(CommittedFile::of).collect();
                let planned = plan(&store, &layout, "t", Some(&schema), &files, rev, DAY, memo.as_ref()).await?;
                Ok::<_, DeltaError>(match planned {
                    Planned::Commit(p) => format!("commit {}", p.commit().await?),
                    Planned::UpToDate { version } => format!("up to date {version}"),
                    Planned::Stale { version, .. } => format!("stale {version}"),
                    Planned::NoLog => "no log".into(),
                })
            }
        };
        // the first commit creates the log (no state kept), the second is read, written and kept
        assert_eq!(pass(vec![seg(0)], 1, Some(memo.clone())).await.unwrap(), "commit 0");
        assert_eq!(pass(vec![seg(0), seg(1)], 2, Some(memo.clone())).await.unwrap(), "commit 1");
        // version 0 gone: a log that cannot be replayed; the memo alone can answer
        let first = dir.path().join("ns/offline/t_OFFLINE/_delta_log").join(commit_file(0));
        let kept = std::fs::read(&first).unwrap();
        std::fs::remove_file(&first).unwrap();
        assert!(pass(vec![seg(0), seg(1)], 3, None).await.is_err(), "the log cannot be read without version 0");
        assert_eq!(pass(vec![seg(0), seg(1)], 3, Some(memo.clone())).await.unwrap(), "up to date 1");
        assert_eq!(pass(vec![seg(1), seg(2)], 4, Some(memo.clone())).await.unwrap(), "commit 2");
        assert_eq!(pass(vec![seg(1), seg(2)], 5, Some(memo.clone())).await.unwrap(), "up to date 2");
        std::fs::write(&first, kept).unwrap();
        // the memo's state is the log's: a full read agrees
        let files = log_files(&store, &layout, "t").await.unwrap();
        let names: Vec<&str> = files.current.iter().map(|p| p.rsplit('/').nth(1).unwrap()).collect();
        assert_eq!(names, vec!["w1", "w2"]);
        // another writer's version: the memo is not used, the log is read
        assert_eq!(pass(vec![seg(2)], 6, None).await.unwrap(), "commit 3");
        assert_eq!(pass(vec![seg(1), seg(2)], 5, Some(memo.clone())).await.unwrap(), "stale 3");
        assert_eq!(pass(vec![seg(2), seg(3)], 7, Some(memo.clone())).await.unwrap(), "commit 4");
        let files = log_files(&store, &layout, "t").await.unwrap();
        let names: Vec<&str> = files.current.iter().map(|p| p.rsplit('/').nth(1).unwrap()).collect();
        assert_eq!(names, vec!["w2", "w3"]);
    }

    #[test]
    fn commits_are_named_by_version_and_checkpointed_every_interval() {
        assert_eq!(commit_file(0), "00000000000000000000.json");
        assert_eq!(commit_file(123), "00000000000000000123.json");
        let due: Vec<i64> = (0..40).filter(|v| checkpoint_due(*v, CHECKPOINT_INTERVAL)).collect();
        assert_eq!(due, vec![9, 19, 29, 39], "after every {CHECKPOINT_INTERVAL} versions, as deltalake does");
        assert!(!checkpoint_due(-1, CHECKPOINT_INTERVAL));
        let due: Vec<i64> = (0..12).filter(|v| checkpoint_due(*v, 3)).collect();
        assert_eq!(due, vec![2, 5, 8, 11]);
        assert!((0..5).all(|v| checkpoint_due(v, 1)) && checkpoint_due(0, 0), "an interval of 0 counts as 1");
    }

    /// The log's own upkeep follows the table's properties as another
    /// engine set them, and Delta's defaults when they are absent or bad.
    #[test]
    fn the_logs_upkeep_follows_the_tables_properties() {
        let conf = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let defaults = LogUpkeep { checkpoint_interval: 10, log_retention_ms: 30 * DAY, expired_log_cleanup: true };
        assert_eq!(log_upkeep(&conf(&[])), defaults);
        assert_eq!(
            log_upkeep(&conf(&[(RETENTION_KEY, "interval 1 days")])),
            defaults,
            "file retention is not log retention"
        );
        let set = conf(&[
            ("delta.checkpointInterval", "25"),
            ("delta.logRetentionDuration", "interval 2 weeks"),
            ("delta.enableExpiredLogCleanup", "false"),
        ]);
        assert_eq!(
            log_upkeep(&set),
            LogUpkeep { checkpoint_interval: 25, log_retention_ms: 14 * DAY, expired_log_cleanup: false }
        );
        let seconds = conf(&[("delta.logRetentionDuration", "interval 3600 seconds")]);
        assert_eq!(log_upkeep(&seconds).log_retention_ms, 3_600_000);
        let bad = conf(&[("delta.checkpointInterval", "0"), ("delta.logRetentionDuration", "30 days")]);
        assert_eq!(log_upkeep(&bad), defaults, "not valid: Delta's defaults");
    }

    #[test]
    fn the_retention_is_delta_interval_in_whole_seconds_rounded_up() {
        assert_eq!(retention_interval(7 * DAY), "interval 604800 seconds");
        assert_eq!(retention_interval(1), "interval 1 seconds");
        assert_eq!(retention_interval(1_001), "interval 2 seconds");
        assert_eq!(retention_interval(0), "interval 0 seconds");
        assert_eq!(retention_interval(-5), "interval 0 seconds");
    }

    #[test]
    fn log_objects_are_told_from_the_tables_files() {
        let layout = Layout::new("ns-1");
        assert!(is_log_object(&layout, "ns-1/offline/t_OFFLINE/_delta_log/00000000000000000000.json"));
        assert!(is_log_object(&layout, "ns-1/offline/t_OFFLINE/_delta_log/_last_checkpoint"));
        for other in [
            "ns-1/offline/t_OFFLINE/t__1__2/attempt-1/a.parquet",
            "ns-1/offline/t_OFFLINE/x/_delta_log/a.json",
            "ns-1/realtime/t_REALTIME/_delta_log/a.json",
            "ns-2/offline/t_OFFLINE/_delta_log/a.json",
            "ns-1/offline/_delta_log/a.json",
        ] {
            assert!(!is_log_object(&layout, other), "{other}");
        }
    }

    #[test]
    fn paths_are_relative_to_the_tables_directory() {
        let root = "ns/offline/t_OFFLINE/";
        assert_eq!(
            relative_path(root, "ns/offline/t_OFFLINE/t__1__2/attempt-1/a.parquet").unwrap(),
            "t__1__2/attempt-1/a.parquet"
        );
        assert_eq!(relative_path(root, "ns/offline/t_OFFLINE2/x/a.parquet"), None, "a neighbour's prefix");
        assert_eq!(relative_path(root, "ns/realtime/t_REALTIME/a.parquet"), None);
        assert_eq!(relative_path(root, "ns/offline/t_OFFLINE/"), None);
    }

    #[test]
    fn stats_hold_the_row_count_and_the_exact_numeric_ranges() {
        let field = |name: &str, t: DataType| FieldSpec {
            name: name.into(),
            data_type: t,
            kind: r2o_common::schema::FieldKind::Metric,
            time_format: None,
            default_null_value: None,
            not_null: false,
        };
        let schema = Schema {
            name: "t".into(),
            fields: vec![
                field("n", DataType::Long),
                field("x", DataType::Double),
                field("ts", DataType::Timestamp),
                field("inf", DataType::Double),
            ],
        };
        let facts = FooterFacts {
            num_rows: 3,
            ranges: [
                ("n".to_string(), ValueRange::Int { min: -5, max: 7 }),
                ("x".to_string(), ValueRange::Float { min: 0.5, max: 2.25 }),
                ("ts".to_string(), ValueRange::Int { min: -1, max: 1_357_016_400_123 }),
                ("inf".to_string(), ValueRange::Float { min: f64::NEG_INFINITY, max: 1.0 }),
                ("gone".to_string(), ValueRange::Int { min: 1, max: 2 }),
            ]
            .into_iter()
            .collect(),
        };
        let v: serde_json::Value = serde_json::from_str(&stats_json(3, Some(&facts), &schema)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"numRecords": 3,
                "minValues": {"n": -5, "x": 0.5, "ts": "1969-12-31T23:59:59.999"},
                "maxValues": {"n": 7, "x": 2.25, "ts": "2013-01-01T05:00:00.123"}})
        );
        let v: serde_json::Value = serde_json::from_str(&stats_json(9, None, &schema)).unwrap();
        assert_eq!(v, serde_json::json!({"numRecords": 9}), "no footer: the row count alone");
    }

    #[test]
    fn timestamp_stats_are_the_kernels_text_within_years_1_to_9999() {
        assert_eq!(stats_timestamp(0).as_deref(), Some("1970-01-01T00:00:00.000"));
        assert_eq!(stats_timestamp(-1).as_deref(), Some("1969-12-31T23:59:59.999"), "floored below 1970");
        assert_eq!(stats_timestamp(-1_000).as_deref(), Some("1969-12-31T23:59:59.000"));
        assert_eq!(stats_timestamp(951_782_400_042).as_deref(), Some("2000-02-29T00:00:00.042"));
        assert_eq!(stats_timestamp(-62_135_596_800_000).as_deref(), Some("0001-01-01T00:00:00.000"));
        assert_eq!(stats_timestamp(253_402_300_799_999).as_deref(), Some("9999-12-31T23:59:59.999"));
        assert_eq!(stats_timestamp(-62_135_596_800_001), None, "year 0 has no spelling");
        assert_eq!(stats_timestamp(253_402_300_800_000), None, "year 10000 has none either");
        assert_eq!(stats_timestamp(i64::MIN), None);
        // a footer range with one bound past the years leaves the column out
        let schema = Schema {
            name: "t".into(),
            fields: vec![FieldSpec {
                name: "ts".into(),
                data_type: DataType::Timestamp,
                kind: r2o_common::schema::FieldKind::DateTime,
                time_format: None,
                default_null_value: None,
                not_null: false,
            }],
        };
        let facts = FooterFacts {
            num_rows: 2,
            ranges: [("ts".to_string(), ValueRange::Int { min: 0, max: i64::MAX })].into_iter().collect(),
        };
        let v: serde_json::Value = serde_json::from_str(&stats_json(2, Some(&facts), &schema)).unwrap();
        assert_eq!(v, serde_json::json!({"numRecords": 2}));
    }
}
