//! Retention of moved REALTIME data and the time boundary, against real
//! etcd, controller and minion processes: a REALTIME segment past the
//! table's retention is deleted (metadata and file) once all its rows are
//! in committed windows, never before; a CONSUMING one and a late one are
//! kept whatever their age and counted; `r2o time-boundary` prints the
//! watermark; a flush reset is refused once retention has deleted data;
//! bad retention keys are refused by name.

mod support;

use arrow::array::{Int64Array, RecordBatch};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{http_get, metric, metric_schema, Cluster, H_MS, T0_MS};

/// `hours * 10` rows of `m = 1` from `start_ms`.
fn rows_from(start_ms: i64, hours: i64) -> RecordBatch {
    let n = hours * 10;
    RecordBatch::try_from_iter(vec![
        ("m", Arc::new(Int64Array::from(vec![1; n as usize])) as _),
        ("ts", Arc::new(Int64Array::from((0..n).map(|i| start_ms + i * H_MS / 10).collect::<Vec<_>>())) as _),
    ])
    .unwrap()
}

fn table(name: &str, unit: &str, value: &str) -> serde_json::Value {
    let mut t = support::hourly_table(name, json!({}));
    t["segmentsConfig"]["retentionTimeUnit"] = json!(unit);
    t["segmentsConfig"]["retentionTimeValue"] = json!(value);
    t
}

async fn realtime_names(cluster: &Cluster, table: &str) -> Vec<String> {
    let mut v: Vec<String> =
        cluster.segments(table).await.into_iter().filter(|s| s.table.ends_with("_REALTIME")).map(|s| s.name).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_segments_past_retention_go_and_unmoved_ones_stay() {
    let env = vec![
        ("R2O_JANITOR_INTERVAL_SECS".to_string(), "1".to_string()),
        ("R2O_JANITOR_GRACE_SECS".to_string(), "1".to_string()),
    ];
    let mut cluster = Cluster::start_with(1, 0, env);
    // data from 2020 under a 1-day retention: every segment is past it
    cluster.add_table("ret", &table("ret", "DAYS", "1"), &metric_schema());
    let add = |cluster: &Cluster, name: &str, batch: RecordBatch, extra: &[&str]| {
        let f = cluster.parquet_file(&format!("{name}.parquet"), &batch);
        let mut args = vec!["segment", "add", "--table", "ret", "--file", f.to_str().unwrap(), "--name", name];
        args.extend_from_slice(extra);
        let out = cluster.cli_raw(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    };
    add(&cluster, "a", rows_from(T0_MS, 2), &[]);
    add(&cluster, "b", rows_from(T0_MS + 2 * H_MS, 1), &[]);
    // the latest DONE segment ends at T0+5h-6m, so the window from T0+4h
    // waits (Pinot's last-completed-segment rule): e is only half moved
    add(&cluster, "e", rows_from(T0_MS + 3 * H_MS, 2), &[]);
    add(&cluster, "c", rows_from(T0_MS + 6 * H_MS, 1), &["--status", "CONSUMING"]);
    let files = [cluster.segment_file("ret", "a").await, cluster.segment_file("ret", "b").await];
    assert!(files.iter().all(|f| f.exists()));
    cluster.add_minion();
    let w = cluster.wait_idle("ret", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 4 * H_MS, "{}", w.next);

    // a and b are wholly behind the watermark: retention deletes them
    let start = Instant::now();
    while realtime_names(&cluster, "ret").await != ["c", "e"] {
        assert!(start.elapsed() < Duration::from_secs(30), "left: {:?}", realtime_names(&cluster, "ret").await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for f in &files {
        assert!(!f.exists(), "retention deleted the file {}", f.display());
    }
    // their rows are in OFFLINE, untouched
    let offline: usize = cluster.offline_batches("ret").await.iter().map(|b| b.num_rows()).sum();
    assert_eq!(offline, 40);

    // a late segment (its rows start before the watermark) is never deleted
    let late = add(&cluster, "d", rows_from(T0_MS + H_MS, 1), &[]);
    assert!(late.contains("late"), "registration warns: {late}");
    tokio::time::sleep(Duration::from_secs(4)).await; // several sweeps
    assert_eq!(realtime_names(&cluster, "ret").await, ["c", "d", "e"], "CONSUMING, late and half-moved segments stay");

    let text = cluster.cli(&["watermark", "--table", "ret"]);
    assert!(text.contains("REALTIME segments deleted by it: 2; past it but kept (rows not moved): 3"), "{text}");
    let (_, body) = http_get(cluster.controllers[0].http_port, "/metrics");
    assert_eq!(metric(&body, "r2o_table_realtime_segments_unmoved_past_retention{table=\"ret\"}"), Some(3.0), "{body}");
    assert_eq!(metric(&body, "r2o_table_realtime_segments_retention_deleted_total{table=\"ret\"}"), Some(2.0));

    // the time boundary is the watermark
    let tb = cluster.cli(&["time-boundary", "--table", "ret"]);
    assert_eq!(tb.split_whitespace().next(), Some(w.watermark_ms.to_string().as_str()), "{tb}");
    assert!(tb.contains("2020-09-13T"), "{tb}");

    // a flush would rebuild OFFLINE from REALTIME, which lost a and b: refused
    let out = cluster.cli_raw(&["reset", "--table", "ret", "--mode", "flush", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("retention has deleted 2 REALTIME segment"), "{err}");
    let offline_after: usize = cluster.offline_batches("ret").await.iter().map(|b| b.num_rows()).sum();
    assert_eq!(offline_after, 40, "nothing was reset");

    // d's window cannot be rematerialized (retention deleted its inputs); that
    // must not hold a late segment of a window whose inputs are intact (finding
    // 14 of issue 19), and `r2o watermark` says why d stays (finding 15)
    add(&cluster, "f", rows_from(T0_MS + 3 * H_MS, 1), &[]);
    let start = Instant::now();
    loop {
        let offline: usize = cluster.offline_batches("ret").await.iter().map(|b| b.num_rows()).sum();
        if offline == 50 {
            break; // window 3 rematerialized from e and f: 10 + 10 rows
        }
        assert!(start.elapsed() < Duration::from_secs(60), "f's rows never moved: {offline} OFFLINE rows");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let text = cluster.cli(&["watermark", "--table", "ret"]);
    assert!(
        text.contains("late data: late rows for window") && text.contains("retention deleted REALTIME segments"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["watermark", "--table", "ret", "--output", "json"])).unwrap();
    assert_eq!(json["lateProblems"].as_array().map(Vec::len), Some(1), "{json}");

    // a table with nothing committed has no time boundary
    cluster.add_table("empty", &table("empty", "HOURS", "12"), &metric_schema());
    let out = cluster.cli_raw(&["time-boundary", "--table", "empty"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no committed window"));

    // bad retention keys are refused by name, and nothing is registered
    for (unit, value, named, shown) in [
        ("WEEKS", "1", "segmentsConfig.retentionTimeUnit", "'WEEKS'"),
        ("DAYS", "0", "segmentsConfig.retentionTimeValue", "'0'"),
        ("DAYS", "x", "segmentsConfig.retentionTimeValue", "'x'"),
    ] {
        let (c, s) = (cluster.dir.path().join("bad.json"), cluster.dir.path().join("bad.schema.json"));
        std::fs::write(&c, table("bad", unit, value).to_string()).unwrap();
        std::fs::write(&s, metric_schema().to_string()).unwrap();
        let out = cluster.cli_raw(&["table", "add", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(named) && err.contains(shown), "{unit} {value}: {err}");
    }
    let listed = cluster.cli(&["table", "list"]);
    assert!(!listed.contains("bad"), "{listed}");
}
