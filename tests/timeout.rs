//! `timeoutMs`: an attempt that runs past it is cancelled (the minion stops
//! working, it does not just skip the upload), the task fails with the
//! cause recorded, nothing is published, and the watermark does not move.

mod support;

use r2o_proto::controller as pb;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, metric_schema, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_past_timeout_is_cancelled_and_recorded() {
    // every store call takes 600 ms; the table allows 300 ms per attempt
    let env = vec![("R2O_FAULT_STORE".to_string(), "latency_ms=600".to_string())];
    let cluster = Cluster::start_with(1, 1, env);
    let config = hourly_table("slow", json!({"timeoutMs": "300", "maxAttemptsPerTask": "2"}));
    cluster.add_table("slow", &config, &metric_schema());
    let f = cluster.parquet_file("seg.parquet", &hourly_rows(1, 2));
    cluster.cli(&["segment", "add", "--table", "slow", "--file", f.to_str().unwrap()]);

    let start = Instant::now();
    let failed = loop {
        let tasks = cluster
            .client()
            .await
            .list_tasks(pb::ListTasksRequest { table: "slow".into() })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        if let Some(t) = tasks.into_iter().find(|t| t.state == "FAILED") {
            break t;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the task never failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed.attempt, 2, "both attempts ran and timed out");
    assert!(failed.error.contains("timed out after 300 ms"), "{}", failed.error);
    let w = cluster
        .client()
        .await
        .get_watermark(pb::GetWatermarkRequest { table: "slow".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.windows_committed, 0, "nothing committed");
    let mut staged = vec![];
    let mut dirs = vec![cluster.dir.path().join("store")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else if e.path().to_string_lossy().contains("/offline/")
                && !e.path().to_string_lossy().contains("/_delta_log/")
            {
                // (the table's Delta log, which the leader creates with the table, is no attempt's)
                staged.push(e.path());
            }
        }
    }
    assert!(staged.is_empty(), "a cancelled attempt stages nothing: {staged:?}");
}
