//! The OFFLINE table as a Delta Lake table (issue 23), against real
//! processes. The leader keeps each table's log up to date by itself; Python's
//! `deltalake` (delta-rs, a reader independent of r2o) reads exactly the
//! committed windows; a late-data `rematerialize` run and a schema change each
//! show up as a new version, the version before still reads the table as it
//! was, and the file the late run replaced stays in the store for time travel
//! until the file retention has passed. Every version carries r2o's `txn`
//! with a growing revision, and no file is ever added twice; a leader killed
//! between its etcd commits and their Delta commits leaves the next leader a
//! log to catch up, once. Each file's statistics in the log (row count,
//! min/max of LONG and TIMESTAMP columns, before 1970 as after) are its rows'.

mod support;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Cluster, H_MS, T0_MS};

/// Every committed OFFLINE row as `[k, m, ts]`, read by r2o's own reader
/// (the files `segment list` names), sorted.
async fn committed_rows(cluster: &Cluster, table: &str) -> Vec<Value> {
    let mut out = vec![];
    for b in cluster.offline_batches(table).await {
        let k = b.column_by_name("k").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let m = b.column_by_name("m").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let ts = b.column_by_name("ts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        for i in 0..b.num_rows() {
            out.push(json!([k.value(i), m.value(i), ts.value(i)]));
        }
    }
    sorted(out)
}

fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|r| r.to_string());
    rows
}

/// What Python's deltalake reads at `version` (the latest when `None`).
fn read_delta(url: &str, version: Option<i64>) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(root.join(".venv/bin/python"));
    cmd.arg(root.join("scripts/delta_read.py")).arg(url);
    if let Some(v) = version {
        cmd.arg(v.to_string());
    }
    let out = cmd.output().expect("run scripts/setup.sh first: it installs deltalake into .venv");
    assert!(out.status.success(), "delta_read.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The local files of the committed OFFLINE segments (deltalake gives a
/// local table's files as paths).
async fn committed_files(cluster: &Cluster, table: &str) -> Vec<String> {
    let mut files: Vec<String> = cluster
        .offline_segments(table)
        .await
        .iter()
        .map(|s| cluster.store_path(&s.location).display().to_string())
        .collect();
    files.sort();
    files
}

fn check_history(dir: &Path, table: &str) -> BTreeSet<String> {
    support::delta_history(dir, table).unwrap_or_else(|e| panic!("{e}"))
}

fn log_versions(dir: &Path) -> BTreeMap<i64, support::DeltaVersion> {
    support::delta_versions(dir)
}

/// The relative paths of the committed OFFLINE files of `table`.
async fn committed_paths(cluster: &Cluster, table: &str, dir: &Path) -> BTreeSet<String> {
    committed_files(cluster, table)
        .await
        .iter()
        .map(|f| f.strip_prefix(&format!("{}/", dir.display())).unwrap().to_string())
        .collect()
}

/// Waits until the log's files are the committed ones and `r2o watermark`
/// says the log holds the watermark; returns the log's last version.
async fn wait_in_step(cluster: &Cluster, table: &str, dir: &Path) -> i64 {
    let start = Instant::now();
    loop {
        let committed = committed_paths(cluster, table, dir).await;
        let w: Value =
            serde_json::from_str(&cluster.cli(&["watermark", "--table", table, "--output", "json"])).unwrap();
        let live = if dir.join("_delta_log").exists() { check_history(dir, table) } else { BTreeSet::new() };
        if live == committed && w["deltaHoldsWatermark"] == json!(true) {
            let last = *log_versions(dir).keys().last().unwrap();
            assert_eq!(w["deltaVersion"], json!(last), "{w}");
            return last;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the log never caught up: {live:?} vs {committed:?}; {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The table's OFFLINE directory in the store (from a committed file's path).
async fn table_dir(cluster: &Cluster, table: &str) -> PathBuf {
    let files = committed_files(cluster, table).await;
    let first = files.first().expect("a committed file");
    let end = first.find(&format!("/{table}_OFFLINE/")).unwrap() + table.len() + "_OFFLINE/".len();
    PathBuf::from(&first[..end])
}

fn add_segment(cluster: &Cluster, table: &str, name: &str, batch: &RecordBatch) {
    let f = cluster.parquet_file(&format!("{table}-{name}.parquet"), batch);
    let out = cluster.cli_raw(&["segment", "add", "--table", table, "--file", f.to_str().unwrap(), "--name", name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn wait_late_run(cluster: &Cluster, table: &str) {
    let start = Instant::now();
    loop {
        let t: Value = serde_json::from_str(&cluster.cli(&["tasks", "--table", table, "--output", "json"])).unwrap();
        let done = t
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["trigger"] == json!("late-rematerialize") && t["state"] == json!("SUCCEEDED"));
        if done {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no late run committed: {t}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A TIMESTAMP time column gets min/max statistics in the log, as the Delta
/// kernel writes a `timestamp_ntz` one, and Python's deltalake parses them to
/// each file's own range, for windows before 1970 as after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_statistics_are_each_files_range_to_another_reader() {
    use arrow::array::TimestampMillisecondArray;
    let cluster = Cluster::start(1, 1);
    let schema = json!({"schemaName": "s", "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "1:MILLISECONDS:TIMESTAMP",
            "granularity": "1:MILLISECONDS"}]});
    let table = support::hourly_table("tst", json!({"mergeType": "concat"}));
    cluster.add_table("tst", &table, &schema);
    // 2 h before 1970 to 2 h after it, 10 rows an hour at odd milliseconds
    let times: Vec<i64> = (0..40).map(|i| -2 * H_MS + i * H_MS / 10 + 7).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("k", std::sync::Arc::new(StringArray::from(vec!["a"; times.len()])) as std::sync::Arc<dyn Array>),
        ("m", std::sync::Arc::new(Int64Array::from(vec![1; times.len()])) as _),
        ("ts", std::sync::Arc::new(TimestampMillisecondArray::from(times.clone())) as _),
    ])
    .unwrap();
    add_segment(&cluster, "tst", "s1", &batch);
    let w = cluster.wait_idle("tst", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, 2 * H_MS, "{}", w.next);
    let dir = table_dir(&cluster, "tst").await;
    wait_in_step(&cluster, "tst", &dir).await;
    let now = read_delta(&format!("file://{}/", dir.display()), None);
    assert_eq!(now["files"].as_array().unwrap().len(), 4, "one file per hour window: {}", now["files"]);
    assert_eq!(now["rows"].as_array().unwrap().len(), times.len());
    assert_eq!(now["stats_columns"], json!(["m", "ts"]), "every file has a range of m and ts");
    assert_eq!(now["stats_problems"], json!([]), "each file's statistics are its rows'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delta_log_follows_every_commit_with_time_travel() {
    // the janitor sweeps every second with a grace of 1 s: only the file
    // retention keeps a replaced file
    let env = vec![
        ("R2O_JANITOR_INTERVAL_SECS".to_string(), "1".to_string()),
        ("R2O_JANITOR_GRACE_SECS".to_string(), "1".to_string()),
    ];
    let cluster = Cluster::start_with(1, 1, env);
    let mut table = support::hourly_table("dl", json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h"}));
    table["tableName"] = json!("dl");
    cluster.add_table("dl", &table, &support::keyed_schema());
    let on_time: Vec<(&str, i64)> =
        (0..30).map(|i| (if i % 2 == 0 { "a" } else { "b" }, T0_MS + i * H_MS / 10)).collect();
    add_segment(&cluster, "dl", "s1", &support::keyed_rows(&on_time));
    let w = cluster.wait_idle("dl", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "{}", w.next);
    let dir = table_dir(&cluster, "dl").await;

    // nobody exported: the leader wrote the log, one file per committed window
    let v_before = wait_in_step(&cluster, "dl", &dir).await;
    let url = format!("file://{}/", dir.display());
    let now = read_delta(&url, None);
    let before = committed_rows(&cluster, "dl").await;
    assert_eq!(before.len(), 6, "3 windows x 2 keys");
    assert_eq!(now["version"], json!(v_before));
    assert_eq!(now["columns"], json!(["k", "m", "ts"]));
    assert_eq!(sorted(now["rows"].as_array().unwrap().clone()), before, "the Delta table is the committed rows");
    assert_eq!(now["files"], json!(committed_files(&cluster, "dl").await));
    // each file's statistics, as deltalake parses them, are its rows' count and ranges
    assert_eq!(now["stats_columns"], json!(["m", "ts"]), "every file has a range of m and ts");
    assert_eq!(now["stats_problems"], json!([]), "each file's statistics are its rows'");
    // the log tells other engines' VACUUM r2o's file retention (default 7 days)
    assert_eq!(now["configuration"]["delta.deletedFileRetentionDuration"], json!("interval 604800 seconds"));
    // export-delta on an up-to-date log writes nothing
    let again: Value =
        serde_json::from_str(&cluster.cli(&["table", "export-delta", "--table", "dl", "--output", "json"])).unwrap();
    assert_eq!((again["version"].as_i64(), again["added"].as_u64()), (Some(v_before), Some(0)), "{again}");

    // late rows for the window from T0+1h: the rematerialize run replaces its file
    let replaced: BTreeSet<String> = committed_paths(&cluster, "dl", &dir).await;
    let late: Vec<(&str, i64)> = (0..4).map(|i| ("c", T0_MS + H_MS + 60_000 * (i + 1))).collect();
    add_segment(&cluster, "dl", "late", &support::keyed_rows(&late));
    wait_late_run(&cluster, "dl").await;
    let after = committed_rows(&cluster, "dl").await;
    assert_eq!(after.len(), 7, "window 1 gained key c");
    let v_after = wait_in_step(&cluster, "dl", &dir).await;
    assert!(v_after > v_before);
    let now = read_delta(&url, None);
    assert_eq!(sorted(now["rows"].as_array().unwrap().clone()), after, "the new version is the committed rows");
    assert_eq!(now["files"], json!(committed_files(&cluster, "dl").await), "the replaced file is gone from the table");
    // time travel: the version before the late run reads the table as it was,
    // its replaced file still in the store though the janitor has swept since
    let gone: Vec<String> = replaced.difference(&committed_paths(&cluster, "dl", &dir).await).cloned().collect();
    assert_eq!(gone.len(), 1, "one window's file replaced");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(dir.join(&gone[0]).exists(), "the replaced file is kept for time travel");
    let old = read_delta(&url, Some(v_before));
    assert_eq!(sorted(old["rows"].as_array().unwrap().clone()), before, "version {v_before} reads the table as it was");

    // a schema change (a column added) is one more version with metaData
    let out = cluster.cli_raw(&["pause", "--table", "dl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut schema = support::keyed_schema();
    schema["dimensionFieldSpecs"].as_array_mut().unwrap().push(json!({"name": "region", "dataType": "STRING"}));
    let tmp = tempfile::tempdir().unwrap();
    let (tf, sf) = (tmp.path().join("dl-table.json"), tmp.path().join("dl-schema2.json"));
    std::fs::write(&tf, table.to_string()).unwrap();
    std::fs::write(&sf, schema.to_string()).unwrap();
    let args = ["table", "update", "--config", tf.to_str().unwrap(), "--schema", sf.to_str().unwrap()];
    let out = cluster.cli_raw(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    let v_schema = loop {
        let versions = log_versions(&dir);
        if let Some((n, _)) = versions.iter().find(|(n, v)| **n > v_after && v.metadata) {
            break *n;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no metaData version after the schema change");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let now = read_delta(&url, None);
    assert_eq!(now["version"], json!(v_schema));
    assert_eq!(now["columns"], json!(["k", "region", "m", "ts"]), "{now}");
    check_history(&dir, "dl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_before_its_delta_commits_leaves_the_next_one_to_catch_up_once() {
    // while this file exists, the projector writes nothing: the leader dies
    // between its etcd commits and their Delta commits
    let hold = tempfile::NamedTempFile::new().unwrap();
    let env = vec![("R2O_FAULT_DELTA_HOLD".to_string(), hold.path().display().to_string())];
    let mut cluster = Cluster::start_with(1, 1, env);
    let mut table = support::hourly_table("fo", json!({"mergeType": "concat"}));
    table["tableName"] = json!("fo");
    cluster.add_table("fo", &table, &support::keyed_schema());
    let rows: Vec<(&str, i64)> = (0..40).map(|i| ("a", T0_MS + i * H_MS / 10)).collect();
    add_segment(&cluster, "fo", "s1", &support::keyed_rows(&rows));
    let w = cluster.wait_idle("fo", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 4 * H_MS, "{}", w.next);
    let dir = table_dir(&cluster, "fo").await;
    let wj: Value = serde_json::from_str(&cluster.cli(&["watermark", "--table", "fo", "--output", "json"])).unwrap();
    assert_eq!(wj["deltaHoldsWatermark"], json!(false), "nothing projected while held: {wj}");
    assert!(log_versions(&dir).is_empty(), "held: no log yet");
    // the leader's lag metric says how long the oldest change has waited
    let lag =
        |port: u16| support::metric(&support::http_get(port, "/metrics").1, "r2o_delta_log_lag_seconds{table=\"fo\"}");
    let start = Instant::now();
    while lag(cluster.controllers[0].http_port).is_none_or(|l| l < 1.0) {
        assert!(start.elapsed() < Duration::from_secs(20), "no lag shown while the log is held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the leader dies; the next one (nothing held) catches the log up
    std::fs::remove_file(hold.path()).unwrap();
    cluster.kill_and_replace_controller(0);
    let last = wait_in_step(&cluster, "fo", &dir).await;
    let body = support::http_get(cluster.controllers[0].http_port, "/metrics").1;
    assert_eq!(support::metric(&body, "r2o_delta_log_version{table=\"fo\"}"), Some(last as f64));
    // back under the second it showed while held (a pass another change
    // started may be under way: its lag counts from that change)
    let lag_now = support::metric(&body, "r2o_delta_log_lag_seconds{table=\"fo\"}");
    assert!(lag_now.is_some_and(|l| l < 1.0), "the lag falls once the log caught up: {lag_now:?}");
    let live = check_history(&dir, "fo");
    assert_eq!(live.len(), 4, "four windows, one file each, added once");
    // and stays put: no further version while nothing commits
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(*log_versions(&dir).keys().last().unwrap(), last);
    let url = format!("file://{}/", dir.display());
    let now = read_delta(&url, None);
    assert_eq!(now["rows"].as_array().unwrap().len(), 40, "every row, once");
}
