//! Staged-data checks against real processes: a window whose rows hold a
//! NULL in a `notNull` column, or a NaN in a float metric (unless the table
//! sets `allowNaN`), is not committed: its task is FAILED with the check, the
//! column and the first offending rows in `r2o tasks`, while the windows
//! before it commit; a bad `allowNaN` is refused by key.

mod support;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Cluster, H_MS, T0_MS};

fn schema() -> Value {
    json!({"schemaName": "s", "dimensionFieldSpecs": [{"name": "d", "dataType": "STRING", "notNull": true}],
        "metricFieldSpecs": [{"name": "f", "dataType": "DOUBLE"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

/// 3 hours of 10 rows each; `bad_d` / `bad_f`: hour 1's first row gets a NULL `d` / a NaN `f`.
fn rows(bad_d: bool, bad_f: bool) -> RecordBatch {
    let n = 30;
    let ts: Vec<i64> = (0..n).map(|i| T0_MS + i * H_MS / 10).collect();
    let d: Vec<Option<&str>> = (0..n).map(|i| if bad_d && i == 10 { None } else { Some("x") }).collect();
    let f: Vec<f64> = (0..n).map(|i| if bad_f && i == 10 { f64::NAN } else { 1.0 }).collect();
    RecordBatch::try_from_iter(vec![
        ("d", Arc::new(StringArray::from(d)) as Arc<dyn Array>),
        ("f", Arc::new(Float64Array::from(f)) as _),
        ("ts", Arc::new(Int64Array::from(ts)) as _),
    ])
    .unwrap()
}

fn table(name: &str, extra: Value) -> Value {
    let mut task = json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h", "maxAttemptsPerTask": "1"});
    for (k, v) in extra.as_object().unwrap() {
        task[k] = v.clone();
    }
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}})
}

/// The error of the table's FAILED task.
async fn failed_error(cluster: &Cluster, t: &str) -> String {
    let start = Instant::now();
    loop {
        let out = cluster.cli(&["tasks", "--table", t, "--output", "json"]);
        let tasks: Vec<Value> = serde_json::from_str(&out).unwrap();
        if let Some(f) = tasks.iter().find(|x| x["state"] == json!("FAILED")) {
            assert_eq!(f["windowStartMs"], json!(T0_MS + H_MS), "{f}");
            return f["error"].as_str().unwrap_or_default().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{t}: no FAILED task: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_failing_a_staged_data_check_is_held() {
    let cluster = Cluster::start(1, 1);
    for (t, extra, batch) in [
        ("nn", json!({}), rows(true, false)),
        ("nan", json!({}), rows(false, true)),
        ("nanok", json!({"allowNaN": "true"}), rows(false, true)),
    ] {
        cluster.add_table(t, &table(t, extra), &schema());
        let f = cluster.parquet_file(&format!("{t}.parquet"), &batch);
        cluster.cli(&["segment", "add", "--table", t, "--file", f.to_str().unwrap(), "--end-of-stream"]);
    }
    let e = failed_error(&cluster, "nn").await;
    assert!(e.contains("notNull") && e.contains("'d'") && e.contains(&format!("ts={}", T0_MS + H_MS)), "{e}");
    let e = failed_error(&cluster, "nan").await;
    assert!(e.contains("NaN") && e.contains("'f'") && e.contains("allowNaN"), "{e}");
    for t in ["nn", "nan"] {
        // held, not idle: the FAILED task stays until it is retried
        let start = Instant::now();
        loop {
            let w: Value =
                serde_json::from_str(&cluster.cli(&["watermark", "--table", t, "--output", "json"])).unwrap();
            if w["watermarkMs"] == json!(T0_MS + H_MS) {
                assert!(w["next"].as_str().unwrap().contains("FAILED"), "{w}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{t}: the window before the bad one commits: {w}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let ok = cluster.wait_idle("nanok", Duration::from_secs(60)).await;
    assert_eq!(ok.watermark_ms, T0_MS + 3 * H_MS, "allowNaN moves every window: {}", ok.next);

    let (c, s) = (cluster.dir.path().join("bad.json"), cluster.dir.path().join("bad.schema.json"));
    std::fs::write(&c, table("bad", json!({"allowNaN": "maybe"})).to_string()).unwrap();
    std::fs::write(&s, schema().to_string()).unwrap();
    let out = cluster.cli_raw(&["table", "add", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("allowNaN") && err.contains("'maybe'"), "{err}");
}

/// A file column wider than the table's (LONG in the file, INT in the
/// table, as streaming sinks write) is read while every value fits; the
/// window holding a value that does not fit is FAILED with the check, the
/// column, the count and the value, and the windows before it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_fit_its_column_type_holds_its_window() {
    let cluster = Cluster::start(1, 1);
    let schema = json!({"schemaName": "s", "metricFieldSpecs": [{"name": "n", "dataType": "INT"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]});
    for t in ["fit", "wide"] {
        cluster.add_table(t, &table(t, json!({})), &schema);
        for hour in 0..3i64 {
            let ts: Vec<i64> = (0..10).map(|i| T0_MS + hour * H_MS + i * H_MS / 10).collect();
            let n: Vec<i64> =
                (0..10).map(|i| if t == "wide" && hour == 1 && i == 3 { 3_000_000_000 } else { i }).collect();
            let batch = RecordBatch::try_from_iter(vec![
                ("n", Arc::new(Int64Array::from(n)) as Arc<dyn Array>),
                ("ts", Arc::new(Int64Array::from(ts)) as _),
            ])
            .unwrap();
            let f = cluster.parquet_file(&format!("{t}-{hour}.parquet"), &batch);
            let mut args = vec!["segment", "add", "--table", t, "--file", f.to_str().unwrap()];
            if hour == 2 {
                args.push("--end-of-stream");
            }
            cluster.cli(&args);
        }
    }
    let e = failed_error(&cluster, "wide").await;
    assert!(
        e.contains("fits the column type") && e.contains("'n'") && e.contains("1 value(s)") && e.contains("3000000000"),
        "{e}"
    );
    let ok = cluster.wait_idle("fit", Duration::from_secs(60)).await;
    assert_eq!((ok.watermark_ms, ok.rows_in), (T0_MS + 3 * H_MS, 30), "every value fits INT: {}", ok.next);
    let sum: i64 = cluster
        .offline_batches("fit")
        .await
        .iter()
        .map(|b| {
            b.column_by_name("n")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int32Array>()
                .unwrap()
                .iter()
                .flatten()
                .map(i64::from)
                .sum::<i64>()
        })
        .sum();
    assert_eq!(sum, 3 * 45, "read as INT");
}
