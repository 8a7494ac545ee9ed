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
    let tasks = every_window_once(&cluster, "dr", hours, rows, Duration::from_secs(120)).await;
    cluster.minions.remove(busy);
    (tasks, log)
}

/// Waits until `table` has caught up with its `hours` hourly windows and
/// checks that every row and window committed exactly once, each task by a
/// succeeded attempt; returns its tasks.
async fn every_window_once(cluster: &Cluster, table: &str, hours: i64, rows: i64, timeout: Duration) -> Vec<pb::Task> {
    let w = cluster.wait_idle(table, timeout).await;
    assert_eq!(w.watermark_ms, T0_MS + hours * H_MS, "{}", w.next);
    assert_eq!(w.rows_out, rows as u64, "every row committed once");
    let tasks = cluster
        .client()
        .await
        .list_tasks(pb::ListTasksRequest { table: table.into() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.iter().all(|t| t.state == "SUCCEEDED"), "{tasks:?}");
    assert_eq!(tasks.iter().map(|t| i64::from(t.windows)).sum::<i64>(), hours, "every window in exactly one task");
    tasks
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

/// Scale-down under load (issue 24): three of four minions get SIGTERM in
/// the middle of their attempts, as a Deployment scaled from 4 to 1 does.
/// While they drain the pool's metrics show them draining; each exits
/// cleanly, and on its way out its lease is revoked, so its registration
/// and every claim it held are gone at once (nothing waits for a lease to
/// expire); every task finishes or is handed back and runs again, and
/// every window commits exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_under_load_loses_nothing() {
    let env = vec![
        ("R2O_DRAIN_GRACE_SECS".to_string(), "1".to_string()),
        // one window per task, so there are tasks for every minion
        ("R2O_TASK_MAX_WINDOWS".to_string(), "1".to_string()),
    ];
    let mut cluster = Cluster::start_with(1, 0, env);
    // the minions' store is slow, so attempts last seconds; the ingest's is not
    for _ in 0..4 {
        cluster.add_minion_env(&[("R2O_FAULT_STORE", "latency_ms=800")]);
    }
    let hours = 16i64;
    cluster.add_table("sd", &hourly_table("sd", json!({})), &metric_schema());
    let f = cluster.parquet_file("sd.parquet", &hourly_rows(hours, 100));
    cluster.cli(&[
        "ingest",
        "--table",
        "sd",
        "--file",
        f.to_str().unwrap(),
        "--rows-per-segment",
        "100",
        "--seal-last",
    ]);

    // wait until the three to go are all busy
    let busy = |i: usize, cluster: &Cluster| {
        metric(&http_get(cluster.minions[i].http_port, "/metrics").1, "r2o_minion_busy_slots") >= Some(1.0)
    };
    let start = Instant::now();
    while !(1..4).all(|i| busy(i, &cluster)) {
        assert!(start.elapsed() < Duration::from_secs(60), "the minions never ran at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = (1..4).map(|i| cluster.minions[i].name.clone()).collect();
    for i in 1..4 {
        let pid = cluster.minions[i].child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    }
    // the controller sees them drain (they claim nothing more)
    let port = cluster.controllers[0].http_port;
    let start = Instant::now();
    loop {
        let draining =
            metric(&http_get(port, "/metrics").1, r#"r2o_pool_minions{state="draining",tag="minion_untagged"}"#);
        if draining >= Some(1.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10)
                && (1..4).any(|i| cluster.minions[i].child.try_wait().unwrap().is_none()),
            "no minion was ever seen draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kv = cluster.etcd.kv(Duration::from_secs(5)).await.unwrap();
    for i in 1..4 {
        let status = cluster.minions[i].child.wait().unwrap();
        assert!(status.success(), "{} exits cleanly: {status:?}", ids[i - 1]);
    }
    // their leases were revoked on the way out: registrations and claims gone at once
    for id in &ids {
        assert!(kv.get(&format!("{}/minions/{id}", cluster.prefix)).await.unwrap().is_none(), "{id}: lease revoked");
    }
    for e in kv.range(&format!("{}/tasks/claims/", cluster.prefix)).await.unwrap() {
        let v = String::from_utf8_lossy(&e.value);
        assert!(!ids.iter().any(|id| v.contains(id.as_str())), "a drained minion still holds a claim: {v}");
    }
    let mut handed_back = 0;
    for id in &ids {
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("{id}.log"))).unwrap();
        assert!(log.contains("draining") && log.contains("minion stopped"), "{log}");
        handed_back += usize::from(log.contains("handing back"));
    }

    // the one left finishes; nothing lost, nothing twice
    let tasks = every_window_once(&cluster, "sd", hours, hours * 100, Duration::from_secs(180)).await;
    // a handed-back attempt is ended by its minion, not by a timeout
    for t in &tasks {
        assert!(!t.errors.iter().any(|e| e.contains("ran past timeoutMs")), "{}: {:?}", t.id, t.errors);
    }
    let repeated = tasks.iter().filter(|t| t.attempt > 1).count();
    println!("scale-down: 3 of 4 minions drained, {handed_back} handed work back, {repeated} tasks ran again");
}
