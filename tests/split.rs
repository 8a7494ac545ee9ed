//! Huge windows against real processes: one window past the per-task
//! budget (`maxNumRecordsPerTask`) runs as sub-tasks on several minions and
//! commits once, with exactly the rows the unsplit window gives, for
//! rollup, dedup and concat; minions under a tiny memory budget run it on
//! the bounded-memory path and spill.

mod support;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::util::pretty::pretty_format_batches;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::{http_get, metric, Cluster, H_MS, T0_MS};

const FILES: usize = 6;
const ROWS_PER_FILE: usize = 20_000;

fn schema() -> serde_json::Value {
    json!({"schemaName": "s",
        "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}, {"name": "d", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

fn table(name: &str, merge: &str, split: bool) -> serde_json::Value {
    let mut task = json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h", "roundBucketTimePeriod": "1m",
                          "mergeType": merge, "maxNumRecordsPerSegment": "25000"});
    if split {
        task["maxNumRecordsPerTask"] = json!("30000");
    }
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
           "tableIndexConfig": {"sortedColumn": ["k"]},
           "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}})
}

/// One file's rows: all in the hour from T0, many equal after rounding to
/// the minute (rollup groups, dedup duplicates).
fn rows(file: usize) -> RecordBatch {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ file as u64;
    let (mut k, mut d, mut m, mut ts) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROWS_PER_FILE {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let v = x >> 24;
        k.push(format!("k{}", v % 8));
        d.push(format!("d{}", (v / 8) % 20));
        m.push(((v / 160) % 3) as i64);
        ts.push(T0_MS + ((v / 480) % 60) as i64 * 60_000 + (v % 60_000) as i64);
    }
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from(k)) as _),
        ("d", Arc::new(StringArray::from(d)) as _),
        ("m", Arc::new(Int64Array::from(m)) as _),
        ("ts", Arc::new(Int64Array::from(ts)) as _),
    ])
    .unwrap()
}

/// Every row, sorted by every column, as text.
fn canonical(batches: &[RecordBatch]) -> (usize, String) {
    let all = concat_batches(&batches[0].schema(), batches).unwrap();
    let cols: Vec<SortColumn> = all.columns().iter().map(|c| SortColumn { values: c.clone(), options: None }).collect();
    let sorted = take_record_batch(&all, &lexsort_to_indices(&cols, None).unwrap()).unwrap();
    (sorted.num_rows(), pretty_format_batches(&[sorted]).unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_split_into_sub_tasks_gives_what_the_whole_window_gives() {
    let mut cluster = Cluster::start_with(1, 0, vec![("R2O_PLAN_INTERVAL_MS".into(), "300".into())]);
    // two minions of two slots, each with an 8 MiB budget (2.5 MiB of sort
    // memory per attempt): every task here runs on the bounded-memory path;
    // they say they are on two machines (hash sub-tasks: at most one per host)
    for host in ["host-a", "host-b"] {
        cluster.add_minion_env(&[("R2O_MEMORY_BUDGET", "8MiB"), ("R2O_HOST", host)]);
    }
    let dir = cluster.dir.path().join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    for f in 0..FILES {
        support::write_parquet(&dir.join(format!("seg{f}.parquet")), &rows(f));
    }
    let d = dir.to_str().unwrap();
    for merge in ["rollup", "dedup", "concat"] {
        for split in [false, true] {
            let name = format!("{merge}_{}", if split { "split" } else { "whole" });
            cluster.add_table(&name, &table(&name, merge, split), &schema());
            cluster.cli(&["segment", "add", "--table", &name, "--dir", d, "--end-of-stream"]);
        }
    }
    for merge in ["rollup", "dedup", "concat"] {
        let (whole, split) = (format!("{merge}_whole"), format!("{merge}_split"));
        for t in [&whole, &split] {
            let w = cluster.wait_idle(t, Duration::from_secs(240)).await;
            assert_eq!((w.watermark_ms, w.windows_committed), (T0_MS + H_MS, 1), "{t}: one window, committed once");
        }
        let names: Vec<String> = cluster.offline_segments(&split).await.into_iter().map(|s| s.name).collect();
        let subs: std::collections::BTreeSet<&str> =
            names.iter().filter_map(|n| n.rsplit('_').nth(1).filter(|p| p.starts_with('s'))).collect();
        assert!(subs.len() >= 2, "{split}: outputs of several sub-tasks: {names:?}");
        let (rows_whole, want) = canonical(&cluster.offline_batches(&whole).await);
        let (rows_split, got) = canonical(&cluster.offline_batches(&split).await);
        assert_eq!(rows_split, rows_whole, "{merge}: rows; split outputs {names:?}");
        assert!(got == want, "{merge}: the split window's rows differ from the whole window's");
        let input = FILES * ROWS_PER_FILE;
        match merge {
            "concat" => assert_eq!(rows_whole, input),
            _ => assert!(rows_whole < input / 4, "{merge}: {rows_whole} rows out of {input}: groups merged"),
        }
    }
    // the bounded-memory path ran and spilled
    let spilled: f64 = cluster
        .minions
        .iter()
        .map(|m| metric(&http_get(m.http_port, "/metrics").1, "r2o_minion_spilled_bytes_total").unwrap_or(0.0))
        .sum();
    assert!(spilled > 0.0, "the minions spilled under an 8 MiB budget");
}
