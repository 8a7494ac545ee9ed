//! `r2o table delete` against real processes: only a paused flow is
//! deleted; without `--purge` its data stays in place (the janitor keeps
//! every file, and adding the table again continues from the watermark
//! without moving anything twice); `--purge` says what it would delete,
//! and with `--yes` deletes the segments, lineage and files.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{hourly_rows, hourly_table, http_get, metric, metric_schema, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_flow_keeps_its_data_unless_purged() {
    let env = vec![
        ("R2O_JANITOR_INTERVAL_SECS".to_string(), "1".to_string()),
        ("R2O_JANITOR_GRACE_SECS".to_string(), "1".to_string()),
    ];
    let cluster = Cluster::start_with(1, 1, env);
    let config = hourly_table("keep", json!({}));
    cluster.add_table("keep", &config, &metric_schema());
    let f = cluster.parquet_file("keep.parquet", &hourly_rows(3, 10));
    cluster.cli(&["segment", "add", "--table", "keep", "--file", f.to_str().unwrap(), "--end-of-stream"]);
    let before = cluster.wait_idle("keep", Duration::from_secs(60)).await;
    assert_eq!(before.windows_committed, 3);
    let offline_rows = |b: &[arrow::array::RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
    assert_eq!(offline_rows(&cluster.offline_batches("keep").await), 30);
    let mut files = vec![];
    for s in cluster.segments("keep").await {
        files.push(cluster.store_path(&s.location));
    }
    assert_eq!(files.len(), 4, "one REALTIME and three OFFLINE segments");

    // a running flow is not deleted
    let out = cluster.cli_raw(&["table", "delete", "--table", "keep"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not paused") && err.contains("r2o pause"), "{err}");

    let series = "r2o_table_watermark_ms{table=\"keep\"}";
    let scrape = || http_get(cluster.controllers[0].http_port, "/metrics").1;
    assert!(metric(&scrape(), series).is_some(), "the table has metrics while it exists");
    cluster.cli(&["pause", "--table", "keep"]);
    let out = cluster.cli(&["table", "delete", "--table", "keep"]);
    assert!(out.contains("stays in place") && out.contains("3 OFFLINE segment(s) (30 rows"), "{out}");
    assert!(!cluster.cli(&["table", "list"]).contains("keep"));
    assert_eq!(metric(&scrape(), series), None, "a deleted table's series go with it");
    tokio::time::sleep(Duration::from_secs(4)).await; // janitor sweeps
    for f in &files {
        assert!(f.exists(), "{} kept", f.display());
    }

    // added again, it continues from its watermark: nothing moves twice
    cluster.add_table("keep", &config, &metric_schema());
    let after = cluster.wait_idle("keep", Duration::from_secs(60)).await;
    assert_eq!((after.exists, after.watermark_ms), (true, before.watermark_ms));
    assert_eq!(offline_rows(&cluster.offline_batches("keep").await), 30);
    let shown: serde_json::Value = serde_json::from_str(&cluster.cli(&["table", "show", "keep"])).unwrap();
    assert_eq!(shown["paused"], json!(false));
    assert!(shown["createdMs"].as_i64().unwrap() > 0 && shown["tableConfig"]["tableName"] == json!("keep"));

    // --purge without --yes only says what it would delete
    cluster.cli(&["pause", "--table", "keep"]);
    let out = cluster.cli(&["table", "delete", "--table", "keep", "--purge"]);
    assert!(out.contains("would delete") && out.contains("1 REALTIME segment(s)"), "{out}");
    assert!(cluster.cli(&["table", "list"]).contains("keep"));
    assert!(files.iter().all(|f| f.exists()));

    let out = cluster.cli(&["table", "delete", "--table", "keep", "--purge", "--yes"]);
    assert!(out.contains("deleted table keep and its data"), "{out}");
    for f in &files {
        assert!(!f.exists(), "{} purged", f.display());
    }
    cluster.add_table("keep", &config, &metric_schema());
    let fresh = cluster.wait_idle("keep", Duration::from_secs(60)).await;
    assert!(!fresh.exists, "a purged table starts afresh: {}", fresh.next);
    assert!(cluster.segments("keep").await.is_empty());
}
