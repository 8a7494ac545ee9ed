//! End to end at the edges (real etcd, controller and minion processes):
//! - a rollup of FLOAT metrics summed in f32 commits and matches an
//!   independent computation, on a table whose name holds `__`;
//! - rows whose time value is NULL are counted and reported, not lost
//!   without a word;
//! - a window cut into hundreds of OFFLINE segments commits (etcd allows 128
//!   operations per transaction);
//! - segment names that object paths percent-encode survive the janitor,
//!   re-adding a registered name is refused before the store is touched, and
//!   two installs sharing one store never delete each other's files.

mod support;

use arrow::array::{AsArray, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float32Type, Int64Type};
use r2o_common::kv::{EtcdKv, KvBackend};
use r2o_common::meta::{ClusterRecord, Keys};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::{Cluster, H_MS, T0_MS};

fn float_schema() -> serde_json::Value {
    json!({"schemaName": "f", "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "f", "dataType": "FLOAT"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

fn table(name: &str, task: serde_json::Value) -> serde_json::Value {
    let mut t = json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h"});
    for (k, v) in task.as_object().cloned().unwrap_or_default() {
        t[k] = v;
    }
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": t}}})
}

/// (k, f, ts) rows as a batch; `None` ts is a NULL time.
fn batch(rows: &[(String, f32, Option<i64>)]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())) as _),
        ("f", Arc::new(Float32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())) as _),
    ])
    .unwrap()
}

/// (k, f, ts) of the committed OFFLINE rows.
async fn offline_rows(cluster: &Cluster, table: &str) -> Vec<(String, f32, i64)> {
    let mut out = vec![];
    for b in cluster.offline_batches(table).await {
        let k = b.column(0).as_string::<i32>().clone();
        let v = b.column(1).as_primitive::<Float32Type>().clone();
        let ts = b.column(2).as_primitive::<Int64Type>().clone();
        out.extend((0..b.num_rows()).map(|i| (k.value(i).to_string(), v.value(i), ts.value(i))));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_rollup_null_times_many_outputs_and_a_double_underscore_name() {
    let cluster = Cluster::start(1, 2);
    // 3 hours of rows, 0.1-ish FLOAT values, 5 keys; 7 rows with a NULL time
    let mut rows: Vec<(String, f32, Option<i64>)> = (0..3_000)
        .map(|i| (format!("k{}", i % 5), 0.1 + (i % 7) as f32 * 0.01, Some(T0_MS + i * 3 * H_MS / 3_000)))
        .collect();
    for i in 0..7 {
        rows.push((format!("k{i}"), 1.0, None));
    }
    let file = cluster.parquet_file("ev.parquet", &batch(&rows));
    cluster.add_table(
        "ev__f",
        &table("ev__f", json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h"})),
        &float_schema(),
    );
    let f = file.to_str().unwrap();
    cluster.cli(&["ingest", "--table", "ev__f", "--file", f, "--rows-per-segment", "500", "--seal-last"]);
    let w = cluster.wait_idle("ev__f", Duration::from_secs(120)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "every window committed: {}", w.next);
    assert_eq!(w.rows_null_time, 7, "NULL-time rows are counted once: {w:?}");
    assert_eq!(w.rows_in, 3_000);
    // the rollup, independently: per (k, hour), an f32 sum in input order
    let mut want: BTreeMap<(String, i64), f32> = BTreeMap::new();
    for (k, v, ts) in &rows {
        if let Some(ts) = ts {
            *want.entry((k.clone(), ts.div_euclid(H_MS) * H_MS)).or_insert(0.0) += *v;
        }
    }
    let got = offline_rows(&cluster, "ev__f").await;
    assert_eq!(got.len(), want.len(), "one row per group");
    for (k, v, ts) in &got {
        let expected = want[&(k.clone(), *ts)];
        assert!((v - expected).abs() <= expected.abs() * 1e-5, "group ({k}, {ts}): {v} vs {expected}");
    }
    // the tasks show where the NULL-time rows went
    let tasks = cluster.cli(&["tasks", "--table", "ev__f", "--output", "json"]);
    let tasks: serde_json::Value = serde_json::from_str(&tasks).unwrap();
    let nulls: u64 = tasks.as_array().unwrap().iter().map(|t| t["rowsNullTime"].as_u64().unwrap()).sum();
    assert_eq!(nulls, 7, "{tasks}");
    assert!(tasks.as_array().unwrap().iter().all(|t| t["id"].as_str().unwrap().starts_with("ev__f__")));
    let shown = cluster.cli(&["watermark", "--table", "ev__f"]);
    assert!(shown.contains("NULL time (not moved): 7"), "{shown}");

    // a concat window cut into 2-row segments: 300 outputs in one commit
    let rows: Vec<(String, f32, Option<i64>)> = (0..600)
        .map(|i| (format!("c{i}"), 1.0, Some(T0_MS + i)))
        .chain([("z".to_string(), 1.0, Some(T0_MS + H_MS))])
        .collect();
    let file = cluster.parquet_file("cc.parquet", &batch(&rows));
    cluster.add_table(
        "cc",
        &table("cc", json!({"mergeType": "concat", "maxNumRecordsPerSegment": "2"})),
        &float_schema(),
    );
    let f = file.to_str().unwrap();
    cluster.cli(&["ingest", "--table", "cc", "--file", f, "--rows-per-segment", "1000", "--seal-last"]);
    let w = cluster.wait_idle("cc", Duration::from_secs(120)).await;
    assert_eq!(w.watermark_ms, T0_MS + 2 * H_MS, "{}", w.next);
    let offline = cluster.offline_segments("cc").await;
    assert_eq!(offline.iter().filter(|s| s.start_time_ms < T0_MS + H_MS).count(), 300);
    assert_eq!(offline_rows(&cluster, "cc").await.len(), 601);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_files_are_never_overwritten_or_deleted_by_another_install() {
    let env = vec![
        ("R2O_JANITOR_INTERVAL_SECS".to_string(), "1".to_string()),
        ("R2O_JANITOR_GRACE_SECS".to_string(), "1".to_string()),
    ];
    let cluster = Cluster::start_with(1, 1, env);
    cluster.add_table("odd", &table("odd", json!({})), &float_schema());
    let rows: Vec<(String, f32, Option<i64>)> = (0..10).map(|i| ("a".into(), 1.0, Some(T0_MS + i))).collect();
    let file = cluster.parquet_file("seg[1]{x}.parquet", &batch(&rows));
    let f = file.to_str().unwrap();
    cluster.cli(&["segment", "add", "--table", "odd", "--file", f, "--name", "seg[1]{x}#1"]);
    let registered = cluster.segment_file("odd", "seg[1]{x}#1").await;
    let before = std::fs::read(&registered).unwrap();
    // the same name again: refused before anything is written
    let other = cluster.parquet_file("other.parquet", &batch(&[("b".into(), 2.0, Some(T0_MS))]));
    let out = cluster.cli_raw(&[
        "segment",
        "add",
        "--table",
        "odd",
        "--file",
        other.to_str().unwrap(),
        "--name",
        "seg[1]{x}#1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a second install (another prefix) on the same store, with an orphan of its own
    let _second = cluster.second_install("/r2o-other");
    let kv = cluster.etcd.kv(Duration::from_secs(5)).await.unwrap();
    let ns = loop {
        if let Some(e) = kv.get("/r2o-other/cluster").await.unwrap() {
            let c: ClusterRecord = serde_json::from_slice(&e.value).unwrap();
            break c.store_namespace(&Keys::new("/r2o-other"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mine = cluster.store_path(&format!(
        "{}{}",
        cluster_namespace(&kv, &cluster.prefix).await,
        "realtime/odd_REALTIME/unregistered.x.parquet"
    ));
    let theirs = cluster.store_path(&format!("{ns}realtime/odd_REALTIME/unregistered.x.parquet"));
    assert_ne!(mine, theirs, "two installs, two namespaces");
    for p in [&mine, &theirs] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"orphan").unwrap();
    }
    // both janitors sweep every second with a 1 s grace: each deletes its own orphan only
    let start = std::time::Instant::now();
    while mine.exists() || theirs.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "janitors did not delete their orphans");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read(&registered).unwrap(), before, "the registered file is intact after many sweeps");
}

async fn cluster_namespace(kv: &EtcdKv, prefix: &str) -> String {
    let e = kv.get(&format!("{prefix}/cluster")).await.unwrap().unwrap();
    let c: ClusterRecord = serde_json::from_slice(&e.value).unwrap();
    c.store_namespace(&Keys::new(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_registration_in_batched_transactions() {
    let cluster = Cluster::start(1, 2);
    cluster.add_table("bk", &table("bk", json!({"mergeType": "concat"})), &float_schema());
    // 250 hourly segments with LLC names: more than one transaction of 100, more than one batch of 100
    let dir = cluster.dir.path().join("bulk");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..250i64 {
        let rows: Vec<(String, f32, Option<i64>)> =
            (0..4).map(|j| (format!("k{j}"), 1.0, Some(T0_MS + i * H_MS + j * 1000))).collect();
        support::write_parquet(&dir.join(format!("bk__0__{i}__20200913T0000Z.parquet")), &batch(&rows));
    }
    let d = dir.to_str().unwrap();
    let out = cluster.cli(&["segment", "add", "--table", "bk", "--dir", d, "--batch", "100", "--end-of-stream"]);
    assert!(out.contains("250 segments (1000 rows) registered"), "{out}");
    let realtime: Vec<_> = cluster.segments("bk").await.into_iter().filter(|s| s.table == "bk_REALTIME").collect();
    assert_eq!(realtime.len(), 250);
    let ended: Vec<_> = realtime.iter().filter(|s| s.end_of_stream).map(|s| s.name.clone()).collect();
    assert_eq!(
        ended,
        vec!["bk__0__249__20200913T0000Z".to_string()],
        "only the partition's last segment ends its stream"
    );
    // the same files again: refused before anything is uploaded or registered
    let again = cluster.cli_raw(&["segment", "add", "--table", "bk", "--dir", d]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(cluster.segments("bk").await.iter().filter(|s| s.table == "bk_REALTIME").count(), 250);
    // every window moves, the last one too (its stream ended)
    let w = cluster.wait_idle("bk", Duration::from_secs(120)).await;
    assert_eq!((w.watermark_ms, w.rows_out), (T0_MS + 250 * H_MS, 1000), "{}", w.next);

    // a file that cannot be read in the second batch: the first batch (registered
    // while the second was read) stays, nothing of the later ones is uploaded or registered
    cluster.add_table("bk2", &table("bk2", json!({"mergeType": "concat"})), &float_schema());
    cluster.cli(&["pause", "--table", "bk2"]);
    let dir2 = cluster.dir.path().join("bulk2");
    std::fs::create_dir_all(&dir2).unwrap();
    for i in 0..250i64 {
        let path = dir2.join(format!("bk2__0__{i:03}__20200913T0000Z.parquet"));
        if i == 150 {
            std::fs::write(&path, b"not parquet").unwrap();
        } else {
            let rows: Vec<(String, f32, Option<i64>)> = vec![("k".into(), 1.0, Some(T0_MS + i * H_MS))];
            support::write_parquet(&path, &batch(&rows));
        }
    }
    let bad = cluster.cli_raw(&["segment", "add", "--table", "bk2", "--dir", dir2.to_str().unwrap(), "--batch", "100"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("bk2__0__150__20200913T0000Z"), "{err}");
    let names: Vec<String> =
        cluster.segments("bk2").await.into_iter().filter(|s| s.table == "bk2_REALTIME").map(|s| s.name).collect();
    assert_eq!(names.len(), 100, "the first batch stays registered");
    assert!(names.iter().all(|n| n.as_str() < "bk2__0__100"), "only the first batch: {names:?}");
    let uploaded = support::files_under(&cluster.dir.path().join("store"))
        .into_iter()
        .filter(|p| p.display().to_string().contains("bk2__0__"))
        .count();
    assert_eq!(uploaded, 100, "no upload without a registration");
}
