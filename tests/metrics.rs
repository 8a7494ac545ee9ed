//! `/healthz`, `/readyz` and Prometheus `/metrics` of real processes,
//! scraped while a flow runs: the watermark lag falls and the counters rise
//! as windows commit, and they end at the figures the data implies.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, http_get, metric, metric_schema, Cluster, H_MS, T0_MS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_the_flow_runs() {
    // two windows per task and a slowed store, so the flow runs as 20 tasks whose progress can be watched
    let env = vec![("R2O_TASK_MAX_WINDOWS".into(), "2".into()), ("R2O_FAULT_STORE".into(), "latency_ms=100".into())];
    let cluster = Cluster::start_with(1, 2, env);
    let c = &cluster.controllers[0];
    assert_eq!(http_get(c.http_port, "/healthz").0, 200);
    let start = Instant::now();
    while http_get(c.http_port, "/readyz").0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "controller never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &cluster.minions {
        assert_eq!(http_get(m.http_port, "/healthz").0, 200);
        let start = Instant::now();
        while http_get(m.http_port, "/readyz").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(10), "minion never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    cluster.add_table("mt", &hourly_table("mt", json!({})), &metric_schema());
    let rows = 40_000i64;
    let f = cluster.parquet_file("mt.parquet", &hourly_rows(40, 1000));
    cluster.cli(&[
        "ingest",
        "--table",
        "mt",
        "--file",
        f.to_str().unwrap(),
        "--rows-per-segment",
        "2000",
        "--seal-last",
    ]);

    // scrape while it runs
    let mut committed = vec![];
    let mut lags = vec![];
    let start = Instant::now();
    loop {
        let (status, body) = http_get(c.http_port, "/metrics");
        assert_eq!(status, 200);
        let n = metric(&body, r#"r2o_table_windows_committed_total{table="mt"}"#).unwrap_or(0.0);
        if let Some(lag) = metric(&body, r#"r2o_table_watermark_lag_seconds{table="mt"}"#) {
            lags.push(lag);
        }
        committed.push(n);
        if n >= 40.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "flow did not finish: {committed:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(committed.windows(2).all(|w| w[0] <= w[1]), "windows committed never falls: {committed:?}");
    assert!(committed.iter().filter(|n| **n > 0.0 && **n < 40.0).count() >= 2, "seen mid-run: {committed:?}");
    assert!(lags.len() >= 2 && lags.last().unwrap() < lags.first().unwrap(), "lag falls as windows commit: {lags:?}");
    assert!(
        lags.windows(2).all(|w| w[1] <= w[0] + 60.0),
        "lag moves down, not up (beyond the clock between scrapes): {lags:?}"
    );

    let (_, body) = http_get(c.http_port, "/metrics");
    assert_eq!(metric(&body, r#"r2o_table_rows_out_total{table="mt"}"#), Some(rows as f64));
    assert_eq!(metric(&body, r#"r2o_table_rows_in_total{table="mt"}"#), Some(rows as f64));
    assert!(metric(&body, r#"r2o_table_bytes_out_total{table="mt"}"#).unwrap() > 0.0);
    assert!(metric(&body, r#"r2o_table_bytes_in_total{table="mt"}"#).unwrap() > 0.0);
    assert_eq!(metric(&body, "r2o_controller_is_leader"), Some(1.0));
    let tasks = cluster
        .client()
        .await
        .list_tasks(r2o_proto::controller::ListTasksRequest { table: "mt".into() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let done = tasks.iter().filter(|t| t.state == "SUCCEEDED").count() as f64;
    assert!(done >= 20.0, "at most two windows per task: {done} tasks");
    assert_eq!(metric(&body, r#"r2o_task_duration_seconds_count{table="mt"}"#), Some(done), "one per committed task");
    assert!(metric(&body, r#"r2o_task_queue_wait_seconds_count{table="mt"}"#).unwrap() > 0.0);
    // every flow commit read segments registered DONE: one freshness each,
    // measured from the latest input's registration to the commit
    assert_eq!(metric(&body, r#"r2o_window_freshness_seconds_count{table="mt"}"#), Some(done), "one per commit");
    let fresh_s = metric(&body, r#"r2o_window_freshness_seconds_sum{table="mt"}"#).unwrap();
    assert!(fresh_s > 0.0, "a commit comes after its inputs' registration: {fresh_s} s");
    let wm = metric(&body, r#"r2o_table_watermark_ms{table="mt"}"#).unwrap();
    assert_eq!(wm, (T0_MS + 40 * H_MS) as f64);
    let mut succeeded = 0.0;
    for m in &cluster.minions {
        let (_, body) = http_get(m.http_port, "/metrics");
        assert_eq!(metric(&body, "r2o_minion_slots"), Some(2.0));
        assert!(metric(&body, "r2o_minion_busy_slots").unwrap() <= 2.0);
        succeeded += metric(&body, r#"r2o_minion_attempts_total{outcome="succeeded"}"#).unwrap();
        assert!(metric(&body, r#"r2o_minion_attempts_total{outcome="started"}"#).is_some());
    }
    assert_eq!(succeeded, done, "every task committed by one succeeded attempt");

    // the shipped Grafana dashboard queries only metrics these processes serve
    let mut served = http_get(c.http_port, "/metrics").1;
    for m in &cluster.minions {
        served.push_str(&http_get(m.http_port, "/metrics").1);
    }
    let series: std::collections::BTreeSet<&str> = served
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/r2o-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut queried = 0;
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel '{}' queries nothing", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("r2o_"))
                .collect();
            assert!(!names.is_empty(), "panel '{}': {expr}", p["title"]);
            for n in names {
                assert!(series.contains(n), "panel '{}' queries {n}, which no process serves", p["title"]);
                queried += 1;
            }
        }
    }
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in
        ["Watermark lag", "Failed tasks", "Minion slots", "Attempt outcomes", "REALTIME segments by load status"]
    {
        assert!(titles.contains(&want), "{titles:?}");
    }
    assert!(queried >= 12, "{queried} metric references");
}

/// The pool's figures an autoscaler reads (issue 24), from a pool at zero:
/// the work waiting shows on the controller's `/metrics` with no minion
/// running (so KEDA can wake the pool), and falls to zero once a minion
/// joins and the table catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_seen_from_zero() {
    let mut cluster = Cluster::start_with(1, 0, vec![]);
    let port = cluster.controllers[0].http_port;
    cluster.add_table("pz", &hourly_table("pz", json!({})), &metric_schema());
    let f = cluster.parquet_file("pz.parquet", &hourly_rows(4, 50));
    cluster.cli(&["ingest", "--table", "pz", "--file", f.to_str().unwrap(), "--rows-per-segment", "50", "--seal-last"]);
    let series = |body: &str, name: &str| metric(body, name).unwrap_or(-1.0);
    let tag = "minion_untagged";
    let start = Instant::now();
    let body = loop {
        let body = http_get(port, "/metrics").1;
        if series(&body, &format!(r#"r2o_pool_tasks{{state="waiting",tag="{tag}"}}"#)) >= 1.0
            && series(&body, &format!(r#"r2o_pool_oldest_wait_seconds{{tag="{tag}"}}"#)) >= 1.0
        {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no waiting task shows with no minion: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(series(&body, &format!(r#"r2o_pool_minions{{state="claiming",tag="{tag}"}}"#)), 0.0);
    assert_eq!(series(&body, &format!(r#"r2o_pool_slots{{tag="{tag}"}}"#)), 0.0);
    assert_eq!(series(&body, &format!(r#"r2o_pool_tasks{{state="running",tag="{tag}"}}"#)), 0.0);
    assert_eq!(series(&body, r#"r2o_table_bucket_seconds{table="pz"}"#), 3600.0);
    assert_eq!(series(&body, r#"r2o_table_paused{table="pz"}"#), 0.0);

    // a minion joins: its slots count, and the table catches up
    cluster.add_minion();
    let w = cluster.wait_idle("pz", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 4 * H_MS, "{}", w.next);
    let body = http_get(port, "/metrics").1;
    assert_eq!(series(&body, &format!(r#"r2o_pool_minions{{state="claiming",tag="{tag}"}}"#)), 1.0);
    assert_eq!(series(&body, &format!(r#"r2o_pool_slots{{tag="{tag}"}}"#)), 2.0, "the test minions run 2 slots");
    assert_eq!(series(&body, &format!(r#"r2o_pool_tasks{{state="waiting",tag="{tag}"}}"#)), 0.0);
    assert_eq!(series(&body, &format!(r#"r2o_pool_oldest_wait_seconds{{tag="{tag}"}}"#)), 0.0);
    // pausing shows
    cluster.cli(&["pause", "--table", "pz"]);
    assert_eq!(series(&http_get(port, "/metrics").1, r#"r2o_table_paused{table="pz"}"#), 1.0);
}
