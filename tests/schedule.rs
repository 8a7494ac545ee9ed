//! Pinot's task `schedule` (Quartz cron) against real processes: a table
//! with a schedule is planned only in runs at its fire times (`run-now`
//! plans between them), `r2o watermark` and `r2o report` show the last run,
//! whether it was scheduled or manual, and the next one; a bad expression
//! is refused by key.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{hourly_rows, hourly_table, metric_schema, Cluster, H_MS, T0_MS};

fn watermark(cluster: &Cluster, table: &str) -> Value {
    serde_json::from_str(&cluster.cli(&["watermark", "--table", table, "--output", "json"])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_tables_move_in_runs_at_their_fire_times() {
    let cluster = Cluster::start(1, 1);
    // fires on 2099-01-01 only: nothing moves until run-now
    cluster.add_table("far", &hourly_table("far", json!({"schedule": "0 0 0 1 1 ? 2099"})), &metric_schema());
    let f = cluster.parquet_file("far.parquet", &hourly_rows(3, 10));
    cluster.cli(&["segment", "add", "--table", "far", "--file", f.to_str().unwrap(), "--end-of-stream"]);
    tokio::time::sleep(Duration::from_secs(3)).await; // many planning passes
    let w = watermark(&cluster, "far");
    assert_eq!(w["exists"], json!(false), "nothing planned before the schedule fires: {w}");
    assert!(w["next"].as_str().unwrap().contains("2099-01-01T00:00:00Z"), "{w}");
    assert_eq!(w["idle"], json!(true));

    cluster.cli(&["run-now", "--table", "far"]);
    let idle = cluster.wait_idle("far", Duration::from_secs(60)).await;
    assert_eq!(idle.watermark_ms, T0_MS + 3 * H_MS, "run-now moved every ready window: {}", idle.next);
    let w = watermark(&cluster, "far");
    assert_eq!(w["lastRunTrigger"], json!("manual"), "{w}");
    assert_eq!(w["nextRunMs"], json!(4_070_908_800_000i64), "2099-01-01T00:00:00Z: {w}");
    let report = cluster.cli(&["report", "--table", "far"]);
    assert!(report.contains("schedule             0 0 0 1 1 ? 2099") && report.contains("manual"), "{report}");

    // every 2 seconds: windows move without run-now, in scheduled runs
    cluster.add_table("often", &hourly_table("often", json!({"schedule": "*/2 * * * * ?"})), &metric_schema());
    let f = cluster.parquet_file("often.parquet", &hourly_rows(3, 10));
    cluster.cli(&["segment", "add", "--table", "often", "--file", f.to_str().unwrap(), "--end-of-stream"]);
    let start = Instant::now();
    loop {
        let w = watermark(&cluster, "often");
        // nextRunMs is null while a run is still marked active (its
        // end is recorded by the planning pass after the last commit)
        let next_run = w["nextRunMs"].as_i64().unwrap_or(0);
        if w["watermarkMs"] == json!(T0_MS + 3 * H_MS) && w["idle"] == json!(true) && next_run != 0 {
            assert_eq!(w["lastRunTrigger"], json!("scheduled"), "{w}");
            assert!(
                w["lastRunMs"].as_i64().unwrap() > 0
                    && w["nextRunMs"].as_i64().unwrap() > w["lastRunMs"].as_i64().unwrap()
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no scheduled run moved the windows: {w}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // a bad expression is refused by key
    let (c, s) = (cluster.dir.path().join("bad.json"), cluster.dir.path().join("bad.schema.json"));
    std::fs::write(&c, hourly_table("bad", json!({"schedule": "0 */10 * * *"})).to_string()).unwrap();
    std::fs::write(&s, metric_schema().to_string()).unwrap();
    let out = cluster.cli_raw(&["table", "add", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("RealtimeToOfflineSegmentsTask.schedule") && err.contains("5 fields"),
        "{err}"
    );
}
