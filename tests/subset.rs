//! Moving a subset (`offloadPredicate`, GOE's predicate grammar) against
//! real processes: only the rows the predicate is true for reach OFFLINE,
//! on both minion paths (in memory, and bounded memory with spilling), the
//! dropped rows are counted in `r2o tasks`, rows the predicate drops are not
//! held to the staged-data checks, and a predicate with a syntax or type
//! error is refused at `table add` with its position.

mod support;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::{Cluster, H_MS, T0_MS};

fn schema() -> Value {
    json!({"schemaName": "s", "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING", "notNull": true}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

fn table(name: &str, predicate: &str, merge: &str) -> Value {
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {"bucketTimePeriod": "1h",
            "bufferTimePeriod": "1h", "mergeType": merge, "offloadPredicate": predicate}}}})
}

/// 4 hours of 60 rows: `k` cycles a, b, c, NULL (the NULLs would fail the
/// `notNull` check if they moved), `m` = row index % 5.
fn rows() -> RecordBatch {
    let n = 240;
    let keys = [Some("a"), Some("b"), Some("c"), None];
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from((0..n).map(|i| keys[i % 4]).collect::<Vec<_>>())) as Arc<dyn Array>),
        ("m", Arc::new(Int64Array::from((0..n).map(|i| (i % 5) as i64).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from((0..n).map(|i| T0_MS + i as i64 * H_MS / 60).collect::<Vec<_>>())) as _),
    ])
    .unwrap()
}

const PREDICATE: &str = r#"column(k) in (string("a"), string("b")) and not (column(m) <= numeric(1))"#;

/// The rows PREDICATE keeps, as (k, m, ts).
fn expected() -> Vec<(String, i64, i64)> {
    let b = rows();
    let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let m = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    let ts = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    let mut out: Vec<_> = (0..b.num_rows())
        .filter(|&i| k.is_valid(i) && ["a", "b"].contains(&k.value(i)) && m.value(i) > 1)
        .map(|i| (k.value(i).to_string(), m.value(i), ts.value(i)))
        .collect();
    out.sort();
    out
}

async fn moved(c: &Cluster, t: &str) -> Vec<(String, i64, i64)> {
    let mut out = vec![];
    for b in c.offline_batches(t).await {
        let k = b.column_by_name("k").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let m = b.column_by_name("m").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let ts = b.column_by_name("ts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        out.extend((0..b.num_rows()).map(|i| (k.value(i).to_string(), m.value(i), ts.value(i))));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rows_the_predicate_keeps_move_on_both_minion_paths() {
    // a 16 KiB budget sends every task down the bounded-memory (spilling)
    // path; so does the table's own segmentMapperFileSizeThresholdInBytes
    // (Pinot's bound on the data a task maps before reducing)
    let budget = || vec![("R2O_MEMORY_BUDGET".to_string(), "16KiB".to_string())];
    for (env, mapper_threshold) in [(vec![], None), (budget(), None), (vec![], Some("16384"))] {
        let bounded = !env.is_empty() || mapper_threshold.is_some();
        let c = Cluster::start_with(1, 1, env);
        for (t, merge) in [("sub_concat", "concat"), ("sub_dedup", "dedup")] {
            let mut config = table(t, PREDICATE, merge);
            if let Some(bytes) = mapper_threshold {
                config["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]
                    ["segmentMapperFileSizeThresholdInBytes"] = json!(bytes);
            }
            c.add_table(t, &config, &schema());
            let f = c.parquet_file(&format!("{t}.parquet"), &rows());
            c.cli(&["segment", "add", "--table", t, "--file", f.to_str().unwrap(), "--end-of-stream"]);
        }
        for t in ["sub_concat", "sub_dedup"] {
            c.wait_idle(t, Duration::from_secs(60)).await;
            let w: Value = serde_json::from_str(&c.cli(&["watermark", "--table", t, "--output", "json"])).unwrap();
            assert_eq!(w["watermarkMs"], json!(T0_MS + 4 * H_MS), "{t} (bounded {bounded}): {w}");
            assert_eq!(moved(&c, t).await, expected(), "{t} (bounded {bounded}): only the kept rows, once");
            let tasks: Vec<Value> = serde_json::from_str(&c.cli(&["tasks", "--table", t, "--output", "json"])).unwrap();
            let filtered: u64 = tasks.iter().map(|x| x["rowsFiltered"].as_u64().unwrap_or(0)).sum();
            let rows_in: u64 = tasks.iter().map(|x| x["rowsIn"].as_u64().unwrap_or(0)).sum();
            assert_eq!(
                filtered,
                240 - expected().len() as u64,
                "{t} (bounded {bounded}): dropped rows counted: {tasks:?}"
            );
            assert_eq!(rows_in, expected().len() as u64, "{t} (bounded {bounded})");
        }
        let log = std::fs::read_to_string(c.dir.path().join(format!("{}.log", c.minions[0].name))).unwrap();
        assert_eq!(log.contains("bounded-memory run done"), bounded, "the path taken; minion log:\n{log}");
    }
}

#[test]
fn a_bad_predicate_is_refused_with_its_position() {
    let c = Cluster::start(1, 0);
    for (predicate, position, what) in [
        (r#"column(k) = string("a") and"#, "28", "the text ends"),
        (r#"column(m) = string("a")"#, "13", "not comparable with a string"),
        (r#"column(nope) is null"#, "8", "not in the schema"),
        (r#"column(k) == string("a")"#, "12", "unexpected '='"),
    ] {
        let name = "bad";
        let (cfg, s) = (c.dir.path().join("bad.json"), c.dir.path().join("bad.schema.json"));
        std::fs::write(&cfg, table(name, predicate, "concat").to_string()).unwrap();
        std::fs::write(&s, schema().to_string()).unwrap();
        let out = c.cli_raw(&["table", "add", "--config", cfg.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{predicate}: accepted");
        assert!(
            err.contains("offloadPredicate") && err.contains(&format!("at position {position}")) && err.contains(what),
            "{predicate}: {err}"
        );
    }
}
