//! Graceful drain: SIGTERM to a busy minion. It stops claiming, finishes
//! its attempt within the grace period (or, past it, cancels and hands the
//! task back by revoking its lease), exits cleanly, and no work is lost:
//! every window commits exactly once.

mod support;

use r2o_common::kv::KvBackend;
use r2o_proto::controller as pb;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, http_get, metric, metric_schema, Cluster, H_MS, T0_MS};

async fn drain_run(hours: i64, store_latency_ms: u64, grace_secs: u64) -> (Vec<pb::Task>, String) {
    let env = vec![
        ("R2O_FAULT_STORE".to_string(), format!("latency_ms={store_latency_ms}")),
        ("R2O_DRAIN_GRACE_SECS".to_string(), grace_secs.to_string()),
    ];
    let mut cluster = Cluster::start_with(1, 2, env);
    cluster.add_table("dr", &hourly_table("dr", json!({})), &metric_schema());
    let rows = hours * 100;
    let f = cluster.parquet_file("dr.parquet", &hourly_rows(hours, 100));
    cluster.cli(&[
        "ingest",
        "--table",
        "dr",
        "--file",
        f.to_str().unwrap(),
        "--rows-per-segment",
        "100",
        "--seal-last",
    ]);

    // wait until minion 0 is busy, then SIGTERM it
    let start = Instant::now();
    let busy = loop {
        if let Some(i) = (0..2).find(|i| {
            metric(&http_get(cluster.minions[*i].http_port, "/metrics").1, "r2o_minion_busy_slots") >= Some(1.0)
        }) {
            break i;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no minion ever busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id = cluster.minions[busy].name.clone();
    let status = cluster.minions[busy].terminate();
    assert!(status.success(), "a drained minion exits cleanly: {status:?}");
    // its lease was revoked on the way out: its registration is gone at once
    let kv = cluster.etcd.kv(Duration::from_secs(5)).await.unwrap();
    assert!(kv.get(&format!("{}/minions/{id}", cluster.prefix)).await.unwrap().is_none(), "lease revoked");
    let log = std::fs::read_to_string(cluster.dir.path().join(format!("{id}.log"))).unwrap();
    assert!(log.contains("draining") && log.contains("minion stopped"), "{log}");

    // the rest of the pool finishes; nothing lost, nothing twice
    let w = cluster.wait_idle("dr", Duration::from_secs(120)).await;
    assert_eq!(w.watermark_ms, T0_MS + hours * H_MS, "{}", w.next);
    assert_eq!(w.rows_out, rows as u64, "every row committed once");
    let tasks = cluster
        .client()
        .await
        .list_tasks(pb::ListTasksRequest { table: "dr".into() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.iter().all(|t| t.state == "SUCCEEDED"), "{tasks:?}");
    assert_eq!(tasks.iter().map(|t| i64::from(t.windows)).sum::<i64>(), hours, "every window in exactly one task");
    cluster.minions.remove(busy);
    (tasks, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_minion_finishes_its_attempt() {
    let (tasks, log) = drain_run(12, 150, 30).await;
    assert!(!log.contains("handing back"), "finished within the grace period");
    assert!(
        log.contains("attempt committed") || log.contains("attempt staged"),
        "the drained minion delivered what it held: {log}"
    );
    assert!(tasks.iter().all(|t| t.attempt == 1), "no attempt was lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_past_grace_hands_the_task_back() {
    let (tasks, log) = drain_run(3, 1200, 1).await;
    assert!(log.contains("handing back"), "{log}");
    assert!(tasks.iter().any(|t| t.attempt == 2), "the handed-back task ran again on the other minion: {tasks:?}");
}
