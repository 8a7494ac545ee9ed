//! The OFFLINE table as a Delta Lake table (issue 23), so that any engine
//! (Spark, Trino, DuckDB's `delta_scan`, Python's `deltalake`, Polars'
//! `read_delta`) reads exactly the committed windows, and the table as it
//! was at an earlier version.
//!
//! The log lives next to the table's files, at
//! `<namespace>/offline/<raw>_OFFLINE/_delta_log/`, and names them by their
//! path under `<namespace>/offline/<raw>_OFFLINE/`. etcd stays the source of
//! truth: [`export`] makes the log's files the table's committed OFFLINE
//! segments (`registry::offline_segments`, the same list as `r2o segment
//! list`) in one Delta commit: an `add` for each committed file the log
//! lacks, with its row count and min/max statistics from its Parquet footer,
//! a `remove` for each file the log has that is no longer committed (a
//! window a late-data `rematerialize` run replaced, a retention deletion, a
//! flush), and a `txn` action (application id `r2o-<raw>`, version: the
//! etcd revision the committed list was read after), so a reader can tell
//! which r2o state a Delta version holds. The decisions are the pure
//! functions here ([`reconcile`], [`stats_json`], [`relative_path`]); the
//! async code only reads and writes.
//!
//! Written with `deltalake-core` over r2o's own object store (a prefix of
//! it), so it works on every store r2o does. Commits are atomic
//! (`PutMode::Create` of the next version): two writers racing for one
//! version cannot both win.

use deltalake_core::kernel::transaction::CommitBuilder;
use deltalake_core::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake_core::logstore::{default_logstore, LogStoreRef, StorageConfig};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::DeltaTable;
use r2o_common::columnar::{FooterFacts, ValueRange};
use r2o_common::meta::SegmentMeta;
use r2o_common::schema::{DataType, Schema};
use r2o_common::store::{canonical_path, Layout, Store};
use std::collections::{BTreeMap, BTreeSet};
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
    #[error("OFFLINE segment '{segment}' of '{table}' is at '{location}', outside the table's directory '{root}'")]
    Outside {
        /// Raw table name.
        table: String,
        /// The segment.
        segment: String,
        /// Its object path.
        location: String,
        /// The table's directory.
        root: String,
    },
}

/// One committed OFFLINE file as the log names it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaFile {
    /// Path relative to the table's directory (object_store's encoding).
    pub path: String,
    /// Size, bytes.
    pub size_bytes: i64,
    /// When it was committed, UTC epoch ms (the `add`'s modification time).
    pub modification_ms: i64,
    /// Delta statistics JSON ([`stats_json`]).
    pub stats: String,
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
/// into `committed`. A committed file already in the log is left alone (r2o
/// never rewrites a file in place: a replaced window gets new files). Pure.
pub fn reconcile(committed: &[DeltaFile], in_log: &BTreeSet<String>) -> Reconcile {
    let wanted: BTreeMap<&str, &DeltaFile> = committed.iter().map(|f| (f.path.as_str(), f)).collect();
    Reconcile {
        add: wanted.iter().filter(|(p, _)| !in_log.contains(**p)).map(|(_, f)| (*f).clone()).collect(),
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
/// `maxValues` of the INT, LONG, FLOAT and DOUBLE columns whose exact range
/// the file's footer gives (a range Delta readers may skip the file by, so
/// only exact ones; TIMESTAMP, whose statistics Delta writes as text, and
/// non-finite floats are left out: no statistic means "unknown"). Pure.
pub fn stats_json(rows: u64, footer: Option<&FooterFacts>, schema: &Schema) -> String {
    let (mut min, mut max) = (serde_json::Map::new(), serde_json::Map::new());
    for (column, range) in footer.map(|f| &f.ranges).into_iter().flatten() {
        let Some(field) = schema.field(column) else { continue };
        let bounds = match (field.data_type, range) {
            (DataType::Int | DataType::Long, ValueRange::Int { min, max }) => Some((json_int(*min), json_int(*max))),
            (DataType::Float | DataType::Double, ValueRange::Float { min, max })
                if min.is_finite() && max.is_finite() =>
            {
                serde_json::Number::from_f64(*min).zip(serde_json::Number::from_f64(*max))
            }
            _ => None,
        };
        if let Some((lo, hi)) = bounds {
            min.insert(column.clone(), serde_json::Value::Number(lo));
            max.insert(column.clone(), serde_json::Value::Number(hi));
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

fn json_int(v: i64) -> serde_json::Number {
    serde_json::Number::from(v)
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

/// What [`export`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// The log's version after the export.
    pub version: i64,
    /// Files added and removed by its commit (both 0: nothing to do, no commit).
    pub added: usize,
    /// Files removed.
    pub removed: usize,
    /// The table's directory, as a URL readers open (the store's URI joined
    /// with the table's prefix).
    pub table_url: String,
}

/// A log store over the table's directory `root` of `store`. deltalake
/// resolves the log's objects in `store` by the path of the URL it is given,
/// so that URL is `memory:///<root>` (the object path in r2o's store,
/// whatever the store; a `file://` URL would be checked against the local
/// filesystem), not the one readers open.
fn log_store(store: &Store, root: &str) -> Result<LogStoreRef, url::ParseError> {
    let url = url::Url::parse(&format!("memory:///{}/", root.trim_matches('/')))?;
    let prefixed: Store = Arc::new(object_store::prefix::PrefixStore::new(store.clone(), root.trim_end_matches('/')));
    Ok(default_logstore(prefixed, store.clone(), &url, &StorageConfig::default()))
}

/// The table's directory as a URL: `store_uri` (`file:///var/lib/r2o/store`,
/// `s3://bucket/prefix`) joined with the table's prefix.
pub fn table_url(store_uri: &str, root: &str) -> Result<url::Url, url::ParseError> {
    url::Url::parse(&format!("{}/{}/", store_uri.trim_end_matches('/'), root.trim_matches('/')))
}

/// Makes the Delta log of `raw` hold exactly `committed` (the table's
/// committed OFFLINE segments, each with its footer when it could be read)
/// in one commit carrying `txn(app_id(raw), revision)`; creates the log
/// (`metaData` with the table's schema) when there is none. Writes nothing
/// when the log already holds exactly them (its `txn` then stays that of
/// the export that wrote them).
///
/// # Errors
/// [`DeltaError::Outside`] for a file outside the table's directory (nothing
/// written); [`DeltaError::Log`] when the log cannot be read or the commit
/// fails (another writer took the version: run again).
pub async fn export(
    store: &Store,
    store_uri: &str,
    layout: &Layout,
    raw: &str,
    schema: &Schema,
    committed: &[(SegmentMeta, Option<FooterFacts>)],
    revision: i64,
) -> Result<ExportReport, DeltaError> {
    let root = layout.offline_prefix(raw);
    let url = table_url(store_uri, &root).map_err(|e| DeltaError::Log {
        table: raw.into(),
        doing: "opened",
        source: Box::new(deltalake_core::DeltaTableError::Generic(format!("store URI '{store_uri}': {e}"))),
    })?;
    let files = committed
        .iter()
        .map(|(s, footer)| {
            let path = relative_path(&root, &s.location).ok_or_else(|| DeltaError::Outside {
                table: raw.into(),
                segment: s.segment_name.clone(),
                location: s.location.clone(),
                root: root.clone(),
            })?;
            Ok(DeltaFile {
                path,
                size_bytes: s.size_bytes as i64,
                modification_ms: s.created_ms,
                stats: stats_json(s.total_docs, footer.as_ref(), schema),
            })
        })
        .collect::<Result<Vec<_>, DeltaError>>()?;
    let logs = log_store(store, &root).map_err(|e| DeltaError::Log {
        table: raw.into(),
        doing: "opened",
        source: Box::new(deltalake_core::DeltaTableError::Generic(format!("table directory '{root}': {e}"))),
    })?;
    let err = |doing| move |source| DeltaError::Log { table: raw.into(), doing, source: Box::new(source) };
    let mut table = DeltaTable::new(logs.clone());
    let exists = table.verify_deltatable_existence().await.map_err(err("read"))?;
    let (in_log, txn_version) = if exists {
        table.load().await.map_err(err("read"))?;
        let state = table.snapshot().map_err(err("read"))?;
        let paths: BTreeSet<String> = state.log_data().iter().map(|f| canonical_path(&f.path())).collect();
        let txn = state.transaction_version(logs.as_ref(), app_id(raw)).await.map_err(err("read"))?;
        (paths, txn)
    } else {
        (BTreeSet::new(), None)
    };
    let change = reconcile(&files, &in_log);
    // (etcd's revision moves with every lease and heartbeat: the files decide)
    if exists && change.is_empty() && txn_version.is_some() {
        return Ok(ExportReport {
            version: table.version().unwrap_or(0) as i64,
            added: 0,
            removed: 0,
            table_url: url.to_string(),
        });
    }
    let now = r2o_common::meta::now_ms();
    let mut actions: Vec<Action> = change
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
    actions.extend(change.remove.iter().map(|p| {
        Action::Remove(Remove {
            path: p.clone(),
            data_change: true,
            deletion_timestamp: Some(now),
            extended_file_metadata: Some(false),
            ..Default::default()
        })
    }));
    let txn = Transaction { app_id: app_id(raw), version: revision, last_updated: Some(now) };
    let version = if exists {
        let state = table.snapshot().map_err(err("read"))?;
        let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        actions.push(Action::Txn(txn));
        CommitBuilder::default()
            .with_actions(actions)
            .build(Some(state), logs.clone(), op)
            .await
            .map_err(err("committed"))?
            .version() as i64
    } else {
        let columns: StructType = delta_schema(raw, schema)?;
        let created = deltalake_core::operations::create::CreateBuilder::new()
            .with_log_store(logs.clone())
            .with_table_name(format!("{raw}_OFFLINE"))
            .with_columns(columns.fields().cloned())
            .with_actions(actions.into_iter().chain([Action::Txn(txn)]))
            .await
            .map_err(err("created"))?;
        created.version().unwrap_or(0) as i64
    };
    Ok(ExportReport { version, added: change.add.len(), removed: change.remove.len(), table_url: url.to_string() })
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
    use r2o_common::schema::FieldSpec;

    fn file(path: &str) -> DeltaFile {
        DeltaFile { path: path.into(), size_bytes: 10, modification_ms: 1, stats: "{}".into() }
    }

    #[test]
    fn reconcile_adds_what_the_log_lacks_and_removes_what_is_no_longer_committed() {
        let committed = [file("t/a/2.parquet"), file("t/a/1.parquet"), file("u/a/1.parquet")];
        let in_log: BTreeSet<String> = ["t/a/1.parquet", "old/a/1.parquet"].into_iter().map(String::from).collect();
        let r = reconcile(&committed, &in_log);
        assert_eq!(r.add.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["t/a/2.parquet", "u/a/1.parquet"]);
        assert_eq!(r.remove, ["old/a/1.parquet"]);
        let all: BTreeSet<String> = committed.iter().map(|f| f.path.clone()).collect();
        assert!(reconcile(&committed, &all).is_empty());
        assert_eq!(reconcile(&[], &all).remove.len(), 3, "a flush removes every file");
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
                ("ts".to_string(), ValueRange::Int { min: 1, max: 2 }),
                ("inf".to_string(), ValueRange::Float { min: f64::NEG_INFINITY, max: 1.0 }),
                ("gone".to_string(), ValueRange::Int { min: 1, max: 2 }),
            ]
            .into_iter()
            .collect(),
        };
        let v: serde_json::Value = serde_json::from_str(&stats_json(3, Some(&facts), &schema)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"numRecords": 3, "minValues": {"n": -5, "x": 0.5}, "maxValues": {"n": 7, "x": 2.25}})
        );
        let v: serde_json::Value = serde_json::from_str(&stats_json(9, None, &schema)).unwrap();
        assert_eq!(v, serde_json::json!({"numRecords": 9}), "no footer: the row count alone");
    }
}
