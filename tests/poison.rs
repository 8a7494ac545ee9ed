//! Poisoned input: a corrupt segment, then a removed one, then one whose
//! schema conflicts with the table. The window fails with an error naming the segment (and the
//! column), attempts stop at `maxAttemptsPerTask`, the task is FAILED and
//! visible, the table's later windows wait (no gap), another table keeps
//! moving, and an operator retry after the fix commits the window.

mod support;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use r2o_proto::controller as pb;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Cluster;

const H_MS: i64 = 3_600_000;
const T0_MS: i64 = 1_600_000_000_000 / H_MS * H_MS;

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn hour_batch(hour: i64) -> RecordBatch {
    let ts: Vec<i64> = (0..100).map(|i| T0_MS + hour * H_MS + i * 1000).collect();
    RecordBatch::try_from_iter(vec![
        ("d", Arc::new(StringArray::from(vec!["a"; 100])) as _),
        ("m", Arc::new(Int64Array::from(vec![1; 100])) as _),
        ("ts", Arc::new(Int64Array::from(ts)) as _),
    ])
    .unwrap()
}

async fn tasks(cluster: &Cluster, table: &str) -> Vec<pb::Task> {
    cluster.client().await.list_tasks(pb::ListTasksRequest { table: table.into() }).await.unwrap().into_inner().tasks
}

/// Waits until the table has a FAILED task at `attempt` and returns it.
async fn wait_failed(cluster: &Cluster, table: &str, attempt: u32) -> pb::Task {
    let start = Instant::now();
    loop {
        if let Some(t) = tasks(cluster, table).await.into_iter().find(|t| t.state == "FAILED" && t.attempt == attempt) {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no FAILED task at attempt {attempt}: {:?}",
            tasks(cluster, table).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_segment_fails_its_window_and_holds_only_its_table() {
    let cluster = Cluster::start(1, 1);
    let d = cluster.dir.path();
    let schema = json!({
        "schemaName": "p",
        "dimensionFieldSpecs": [{"name": "d", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
    });
    std::fs::write(d.join("schema.json"), schema.to_string()).unwrap();
    for t in ["good", "bad"] {
        let cfg = json!({"tableName": t, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
            "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
                "bucketTimePeriod": "1h", "bufferTimePeriod": "1d", "maxAttemptsPerTask": "2"}}}});
        std::fs::write(d.join(format!("{t}.json")), cfg.to_string()).unwrap();
        let c = d.join(format!("{t}.json"));
        cluster.cli(&[
            "table",
            "add",
            "--config",
            c.to_str().unwrap(),
            "--schema",
            d.join("schema.json").to_str().unwrap(),
        ]);
    }
    let files: Vec<_> = (0..3)
        .map(|h| {
            let f = d.join(format!("h{h}.parquet"));
            write_parquet(&f, &hour_batch(h));
            f
        })
        .collect();
    for t in ["good", "bad"] {
        for (h, f) in files.iter().enumerate() {
            cluster.cli(&[
                "segment",
                "add",
                "--table",
                t,
                "--file",
                f.to_str().unwrap(),
                "--status",
                "CONSUMING",
                "--name",
                &format!("{t}__0__{h}"),
            ]);
        }
    }
    // poison bad's middle segment in the store, then let the segments complete
    let poisoned = cluster.segment_file("bad", "bad__0__1").await;
    std::fs::write(&poisoned, b"PAR1 this is not parquet PAR1").unwrap();
    // sealed while paused, so that the first task covers all three windows
    // (a planning pass between two seals would plan the first window alone)
    for t in ["good", "bad"] {
        cluster.cli(&["pause", "--table", t]);
        for h in 0..3 {
            cluster.cli(&["segment", "seal", "--table", t, "--segment", &format!("{t}__0__{h}")]);
        }
        cluster.cli(&["resume", "--table", t]);
    }

    // the other table keeps moving to the end
    let w = cluster.wait_idle("good", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "{}", w.next);

    // round 1: corrupt file; two attempts, then FAILED, naming the segment
    let t = wait_failed(&cluster, "bad", 2).await;
    assert_eq!(t.window_start_ms, T0_MS + H_MS);
    assert!(t.error.contains("bad__0__1") && t.error.contains("Parquet"), "{}", t.error);
    let w = cluster
        .client()
        .await
        .get_watermark(pb::GetWatermarkRequest { table: "bad".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.watermark_ms, T0_MS + H_MS, "the failed window holds the watermark: no gap");
    assert!(w.next.contains("FAILED") && w.next.contains("bad__0__1"), "watermark explains the failure: {}", w.next);
    // later windows may run ahead, but nothing after the failed window commits
    assert!(
        tasks(&cluster, "bad").await.iter().all(|t| t.window_start_ms <= T0_MS + H_MS || t.state != "SUCCEEDED"),
        "no later window committed"
    );
    let shown = cluster.cli(&["tasks", "--table", "bad"]);
    assert!(shown.contains("FAILED") && shown.contains("bad__0__1"), "{shown}");

    // round 2: the file removed under r2o's feet
    std::fs::remove_file(&poisoned).unwrap();
    cluster.cli(&["retry", "--table", "bad"]);
    let t = wait_failed(&cluster, "bad", 4).await;
    assert!(t.error.contains("bad__0__1") && t.error.contains("not found"), "{}", t.error);

    // round 3: a schema conflict; the error names the column
    let conflicting = RecordBatch::try_from_iter(vec![
        ("d", Arc::new(StringArray::from(vec!["a"])) as _),
        ("m", Arc::new(StringArray::from(vec!["x"])) as _),
        ("ts", Arc::new(Int64Array::from(vec![T0_MS + H_MS])) as _),
    ])
    .unwrap();
    write_parquet(&poisoned, &conflicting);
    cluster.cli(&["retry", "--table", "bad"]);
    let t = wait_failed(&cluster, "bad", 6).await;
    assert!(t.error.contains("bad__0__1") && t.error.contains("'m'"), "{}", t.error);

    // fixed: an operator retry commits the window, and the rest follows
    std::fs::copy(&files[1], &poisoned).unwrap();
    cluster.cli(&["retry", "--table", "bad"]);
    let w = cluster.wait_idle("bad", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "{}", w.next);
    let all = tasks(&cluster, "bad").await;
    // the first try covered all three windows; its failure split them to isolate the bad one
    assert!(all.iter().all(|t| t.state == "SUCCEEDED" || t.state == "SUPERSEDED"), "{all:?}");
    assert!(
        all.iter().any(|t| t.state == "SUPERSEDED" && t.windows == 3 && t.error.contains("one at a time")),
        "{all:?}"
    );
    let healed = all.iter().find(|t| t.window_start_ms == T0_MS + H_MS && t.state == "SUCCEEDED").unwrap();
    assert_eq!((healed.attempt, healed.rows_out), (7, 100), "{healed:?}");
}
