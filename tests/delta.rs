//! The OFFLINE table as a Delta Lake table (issue 23), against real
//! processes: `r2o table export-delta` writes the log, and Python's
//! `deltalake` (delta-rs, a reader independent of r2o) reads exactly the
//! committed windows; a late-data `rematerialize` run shows up as one new
//! version that replaces the window's file, the version before still reads
//! the table as it was, every version carries r2o's `txn` action, and an
//! export with nothing new writes nothing.

mod support;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Cluster, H_MS, T0_MS};

/// Every committed OFFLINE row as `[k, m, ts]`, read by r2o's own reader
/// (the files `segment list` names), sorted.
async fn committed_rows(cluster: &Cluster) -> Vec<Value> {
    let mut out = vec![];
    for b in cluster.offline_batches("dl").await {
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

fn export(cluster: &Cluster) -> Value {
    serde_json::from_str(&cluster.cli(&["table", "export-delta", "--table", "dl", "--output", "json"])).unwrap()
}

/// What Python's deltalake reads at `version` (the latest when `None`).
fn read_delta(url: &str, version: Option<i64>) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
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
async fn committed_files(cluster: &Cluster) -> Vec<String> {
    let mut files: Vec<String> = cluster
        .offline_segments("dl")
        .await
        .iter()
        .map(|s| cluster.store_path(&s.location).display().to_string())
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delta_log_holds_exactly_the_committed_windows_with_time_travel() {
    let cluster = Cluster::start(1, 1);
    let mut table = support::hourly_table("dl", json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h"}));
    table["tableName"] = json!("dl");
    cluster.add_table("dl", &table, &support::keyed_schema());
    let add = |name: &str, batch: &RecordBatch| {
        let f = cluster.parquet_file(&format!("dl-{name}.parquet"), batch);
        let out = cluster.cli_raw(&["segment", "add", "--table", "dl", "--file", f.to_str().unwrap(), "--name", name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let on_time: Vec<(&str, i64)> =
        (0..30).map(|i| (if i % 2 == 0 { "a" } else { "b" }, T0_MS + i * H_MS / 10)).collect();
    add("s1", &support::keyed_rows(&on_time));
    let w = cluster.wait_idle("dl", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "{}", w.next);

    // the first export creates the log: one file per committed window
    let first = export(&cluster);
    assert_eq!(
        (first["version"].as_i64(), first["added"].as_u64(), first["removed"].as_u64()),
        (Some(0), Some(3), Some(0))
    );
    let url = first["tableUrl"].as_str().unwrap().to_string();
    assert!(url.ends_with("/offline/dl_OFFLINE/"), "{url}");
    let v0 = read_delta(&url, None);
    let before = committed_rows(&cluster).await;
    assert_eq!(before.len(), 6, "3 windows x 2 keys");
    assert_eq!(v0["columns"], json!(["k", "m", "ts"]));
    assert_eq!(sorted(v0["rows"].as_array().unwrap().clone()), before, "the Delta table is the committed rows");
    assert_eq!(v0["files"], json!(committed_files(&cluster).await));
    assert_eq!(v0["txns"]["0"], json!(["r2o-dl", first["revision"]]));

    // nothing new: no commit
    let again = export(&cluster);
    assert_eq!(
        (again["version"].as_i64(), again["added"].as_u64(), again["removed"].as_u64()),
        (Some(0), Some(0), Some(0))
    );

    // late rows for the window from T0+1h: the rematerialize run replaces its file
    let late: Vec<(&str, i64)> = (0..4).map(|i| ("c", T0_MS + H_MS + 60_000 * (i + 1))).collect();
    add("late", &support::keyed_rows(&late));
    let start = Instant::now();
    loop {
        let t: Value = serde_json::from_str(&cluster.cli(&["tasks", "--table", "dl", "--output", "json"])).unwrap();
        let done = t
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["trigger"] == json!("late-rematerialize") && t["state"] == json!("SUCCEEDED"));
        if done {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no late run committed: {t}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = committed_rows(&cluster).await;
    assert_eq!(after.len(), 7, "window 1 gained key c");
    let second = export(&cluster);
    assert_eq!(
        (second["version"].as_i64(), second["added"].as_u64(), second["removed"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    assert!(second["revision"].as_i64() > first["revision"].as_i64());
    let v1 = read_delta(&url, None);
    assert_eq!(sorted(v1["rows"].as_array().unwrap().clone()), after, "the new version is the committed rows");
    assert_eq!(v1["files"], json!(committed_files(&cluster).await), "the replaced file is gone from the table");
    assert_eq!(v1["txns"]["1"], json!(["r2o-dl", second["revision"]]));
    // time travel: version 0 is the table before the late run
    let old = read_delta(&url, Some(0));
    assert_eq!(sorted(old["rows"].as_array().unwrap().clone()), before, "version 0 reads the table as it was");
}
