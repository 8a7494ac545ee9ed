//! Tasks that finish out of window order (real etcd, controller and minion
//! processes): one minion's store is slowed by the fault store, so the tasks
//! it holds finish after later tasks run by a fast minion. The later tasks
//! stay STAGED until the earlier ones commit; at every moment the committed
//! OFFLINE windows are a contiguous prefix under the watermark, the watermark
//! never moves back, and in the end every row is in OFFLINE exactly once.

mod support;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use r2o_proto::controller as pb;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, metric_schema, Cluster, H_MS, T0_MS};

const HOURS: i64 = 24;
const PER_HOUR: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_finishing_out_of_order_commit_in_window_order() {
    // two windows per task: 12 tasks for 24 hourly windows
    let mut cluster = Cluster::start_with(1, 0, vec![("R2O_TASK_MAX_WINDOWS".into(), "2".into())]);
    cluster.add_minion_env(&[("R2O_FAULT_STORE", "latency_ms=700")]);
    cluster.add_table("ord", &hourly_table("ord", json!({})), &metric_schema());
    cluster.cli(&["pause", "--table", "ord"]);
    let file = cluster.parquet_file("ord.parquet", &hourly_rows(HOURS, PER_HOUR));
    let f = file.to_str().unwrap();
    cluster.cli(&["ingest", "--table", "ord", "--file", f, "--rows-per-segment", "100", "--seal-last"]);
    cluster.cli(&["resume", "--table", "ord"]);

    // the slow minion claims the first tasks (claims go oldest first) ...
    let mut client = cluster.client().await;
    let start = Instant::now();
    loop {
        let tasks = client.list_tasks(pb::ListTasksRequest { table: "ord".into() }).await.unwrap();
        if tasks.into_inner().tasks.iter().filter(|t| t.state == "RUNNING").count() >= 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the slow minion never claimed two tasks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and a fast one runs the later tasks, which finish first
    cluster.add_minion();

    // watch the committed state until everything is in
    let mut last_watermark = i64::MIN;
    let mut samples = 0;
    loop {
        // segments first, then the watermark: what was visible is under it
        let hours: Vec<i64> = {
            let mut h: Vec<i64> = cluster
                .offline_segments("ord")
                .await
                .iter()
                .map(|s| (s.start_time_ms - T0_MS).div_euclid(H_MS))
                .collect();
            h.sort_unstable();
            h.dedup();
            h
        };
        let w = client.get_watermark(pb::GetWatermarkRequest { table: "ord".into() }).await.unwrap().into_inner();
        samples += 1;
        assert_eq!(
            hours,
            (0..hours.len() as i64).collect::<Vec<_>>(),
            "committed windows are contiguous from the start"
        );
        if w.exists {
            assert!(
                w.watermark_ms >= last_watermark,
                "the watermark moved back: {last_watermark} -> {}",
                w.watermark_ms
            );
            assert!(
                T0_MS + hours.len() as i64 * H_MS <= w.watermark_ms,
                "a committed window lies past the watermark {}: {hours:?}",
                w.watermark_ms
            );
            last_watermark = w.watermark_ms;
        }
        if w.idle && w.watermark_ms == T0_MS + HOURS * H_MS {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "not done after 180 s: {}", w.next);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 5, "the run was observed while it moved ({samples} samples)");

    // some tasks did finish out of order and waited, staged
    let log = std::fs::read_to_string(cluster.dir.path().join(format!("{}.log", cluster.controllers[0].name))).unwrap();
    let staged = log.lines().filter(|l| l.contains("task staged")).count();
    assert!(staged >= 1, "no task finished before the one ahead of it; the test proved nothing");
    let tasks = client.list_tasks(pb::ListTasksRequest { table: "ord".into() }).await.unwrap();
    let tasks = tasks.into_inner().tasks;
    let by_minion: BTreeMap<&str, usize> = tasks.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t.minion.as_str()).or_default() += 1;
        m
    });
    assert!(by_minion.len() >= 2, "both minions ran tasks: {by_minion:?}");

    // nothing lost, nothing twice
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    for b in cluster.offline_batches("ord").await {
        let ts = b.column_by_name("ts").unwrap().as_primitive::<Int64Type>();
        for t in ts.values() {
            *seen.entry(*t).or_default() += 1;
        }
    }
    assert_eq!(seen.len() as i64, HOURS * PER_HOUR, "every row reached OFFLINE");
    assert!(seen.values().all(|n| *n == 1), "no row is in OFFLINE twice");
    println!("order: {samples} samples, {staged} tasks staged, tasks per minion {by_minion:?}");
}
