//! Segments that arrive on their own (Pinot's
//! `ingestionConfig.batchIngestionConfig.batchConfigMaps`) against real
//! processes: the leader lists the source, registers each stable file in
//! place as a DONE REALTIME segment (no copy), records an unreadable file as
//! SKIPPED without holding the flow, refuses a file that changes after
//! registration (never re-read), and never deletes the owner's files. On
//! the local store and on the S3 server the tests use; bad values of the
//! keys are refused by name.

mod support;

use arrow::array::{Array, Int64Array};
use r2o_proto::controller as pb;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{metric_schema, write_parquet, Cluster, S3Server, H_MS, T0_MS};

/// `n` rows of `m = 1` inside hour `h` after [`T0_MS`].
fn hour_rows(h: i64, n: i64) -> arrow::array::RecordBatch {
    arrow::array::RecordBatch::try_from_iter(vec![
        ("m", std::sync::Arc::new(Int64Array::from(vec![1; n as usize])) as _),
        (
            "ts",
            std::sync::Arc::new(Int64Array::from((0..n).map(|i| T0_MS + h * H_MS + i * 1000).collect::<Vec<_>>())) as _,
        ),
    ])
    .unwrap()
}

fn table(name: &str, sources: Value) -> Value {
    let mut t = support::hourly_table(name, json!({}));
    t["ingestionConfig"] =
        json!({"batchIngestionConfig": {"segmentIngestionType": "APPEND", "batchConfigMaps": sources}});
    t
}

/// Writes a Parquet file into the landing directory the way a sink does: to
/// a hidden name first, then renamed in.
fn land(dir: &Path, relative: &str, batch: &arrow::array::RecordBatch) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.parent().unwrap().join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    write_parquet(&tmp, batch);
    std::fs::rename(&tmp, &path).unwrap();
}

async fn realtime(c: &Cluster, t: &str) -> Vec<pb::Segment> {
    c.segments(t).await.into_iter().filter(|s| s.table.ends_with("_REALTIME")).collect()
}

async fn wait_for<F: Fn(&[pb::Segment]) -> bool>(c: &Cluster, t: &str, what: &str, ok: F) -> Vec<pb::Segment> {
    let start = Instant::now();
    loop {
        let segs = realtime(c, t).await;
        if ok(&segs) {
            return segs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s; segments {:?}\nlogs in {}",
            segs.iter().map(|s| (&s.name, &s.load_status, &s.load_detail)).collect::<Vec<_>>(),
            c.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn offline_rows(c: &Cluster, t: &str) -> i64 {
    c.offline_segments(t).await.iter().map(|s| s.num_rows as i64).sum()
}

fn find<'a>(segs: &'a [pb::Segment], name: &str) -> &'a pb::Segment {
    segs.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("segment {name} in {:?}", segs.iter().map(|s| &s.name).collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_landing_in_a_directory_are_registered_in_place_and_moved() {
    let c = Cluster::start_with(1, 1, vec![("R2O_DISCOVERY_INTERVAL_MS".into(), "100".into())]);
    let landing = c.dir.path().join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    c.add_table(
        "disc",
        &table(
            "disc",
            json!([{"inputDirURI": format!("file://{}", landing.display()), "inputFormat": "parquet",
                "includeFileNamePattern": "glob:**/*.parquet", "excludeFileNamePattern": "glob:**/skip-*"}]),
        ),
        &metric_schema(),
    );
    land(&landing, "2020/09/h0.parquet", &hour_rows(0, 10));
    land(&landing, "2020/09/h1.parquet", &hour_rows(1, 20));
    land(&landing, "skip-me.parquet", &hour_rows(1, 1000)); // excluded
    land(&landing, "_partial.parquet", &hour_rows(1, 1000)); // a sink's temporary name
    std::fs::write(landing.join("notes.txt"), "not a segment").unwrap(); // not included
    std::fs::write(landing.join("bad.parquet"), "this is not Parquet").unwrap();

    let segs = wait_for(&c, "disc", "h0, h1 and bad registered", |s| s.len() >= 3).await;
    assert_eq!(
        segs.iter().map(|s| s.name.as_str()).collect::<std::collections::BTreeSet<_>>(),
        ["2020%2F09%2Fh0.parquet", "2020%2F09%2Fh1.parquet", "bad.parquet"].into(),
        "only included, visible files are registered"
    );
    let h0 = find(&segs, "2020%2F09%2Fh0.parquet");
    assert_eq!(h0.location, format!("file://{}/2020/09/h0.parquet", landing.display()), "registered in place");
    assert_eq!((h0.num_rows, h0.start_time_ms, h0.status.as_str()), (10, T0_MS, "DONE"));
    let bad = find(&segs, "bad.parquet");
    assert_eq!(bad.load_status, "SKIPPED");
    assert!(bad.load_detail.contains("cannot be read"), "{}", bad.load_detail);

    // more files arrive while windows move; the unreadable one holds nothing
    land(&landing, "2020/09/h2.parquet", &hour_rows(2, 30));
    land(&landing, "2020/09/h3.parquet", &hour_rows(3, 40));
    wait_for(&c, "disc", "h2 and h3 registered", |s| s.len() >= 5).await;
    let start = Instant::now();
    while offline_rows(&c, "disc").await < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rows of h0-h3 not moved; logs in {}",
            c.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(offline_rows(&c, "disc").await, 100, "every row of h0-h3 once");
    assert!(
        !c.dir.path().join("store").join("realtime").exists()
            || support::files_under(&c.dir.path().join("store").join("realtime")).is_empty(),
        "nothing was copied into the store"
    );

    // a moved file that changes: refused loudly, its rows stay as moved
    let segs = wait_for(&c, "disc", "h0 loaded", |s| find(s, "2020%2F09%2Fh0.parquet").load_status == "LOADED").await;
    assert_eq!(find(&segs, "2020%2F09%2Fh1.parquet").load_status, "LOADED");
    land(&landing, "2020/09/h0.parquet", &hour_rows(0, 11));
    let segs =
        wait_for(&c, "disc", "changed h0 refused", |s| !find(s, "2020%2F09%2Fh0.parquet").load_detail.is_empty()).await;
    let h0 = find(&segs, "2020%2F09%2Fh0.parquet");
    assert_eq!(h0.load_status, "LOADED_WITH_ERRORS");
    assert!(h0.load_detail.contains("changed after registration"), "{}", h0.load_detail);

    // a file that changes before its window moves is never read again
    c.cli(&["pause", "--table", "disc"]);
    land(&landing, "2020/09/h5.parquet", &hour_rows(5, 50));
    wait_for(&c, "disc", "h5 registered", |s| s.iter().any(|x| x.name == "2020%2F09%2Fh5.parquet")).await;
    land(&landing, "2020/09/h5.parquet", &hour_rows(5, 7));
    let segs =
        wait_for(&c, "disc", "changed h5 refused", |s| !find(s, "2020%2F09%2Fh5.parquet").load_detail.is_empty()).await;
    assert_eq!(find(&segs, "2020%2F09%2Fh5.parquet").load_status, "SKIPPED");
    land(&landing, "2020/09/h6.parquet", &hour_rows(6, 60));
    wait_for(&c, "disc", "h6 registered", |s| s.iter().any(|x| x.name == "2020%2F09%2Fh6.parquet")).await;
    c.cli(&["resume", "--table", "disc"]);
    let start = Instant::now();
    while offline_rows(&c, "disc").await < 160 {
        assert!(start.elapsed() < Duration::from_secs(60), "rows of h6 not moved; logs in {}", c.dir.path().display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.wait_idle("disc", Duration::from_secs(60)).await;
    assert_eq!(offline_rows(&c, "disc").await, 160, "h5 (refused) moved neither its 50 nor its 7 rows");
    let listed = c.cli(&["segment", "list", "--table", "disc", "--status", "skipped"]);
    assert!(
        listed.contains("bad.parquet") && listed.contains("h5.parquet") && !listed.contains("h6.parquet"),
        "{listed}"
    );

    // the owner's files are all still there
    for f in ["2020/09/h0.parquet", "2020/09/h1.parquet", "2020/09/h5.parquet", "bad.parquet", "skip-me.parquet"] {
        assert!(landing.join(f).exists(), "{f} was deleted");
    }
    let metrics = support::http_get(c.controllers[0].http_port, "/metrics").1;
    assert!(
        support::metric(&metrics, "r2o_discovered_files_total{outcome=\"registered\",table=\"disc\"}").unwrap_or(0.0)
            >= 6.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_landing_in_an_s3_bucket_are_registered_and_moved() {
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(scratch.path(), "landing");
    let mut env = s3.env();
    env.push(("R2O_DISCOVERY_INTERVAL_MS".into(), "100".into()));
    env.push(("R2O_SOURCE_ALLOW".into(), "s3://landing/sink/".into()));
    let c = Cluster::start_with(1, 1, env);
    c.add_table(
        "sdisc",
        &table(
            "sdisc",
            json!([{"inputDirURI": "s3://landing/sink/topic", "includeFileNamePattern": "glob:**/*.parquet"}]),
        ),
        &metric_schema(),
    );
    let bucket = s3.bucket("landing");
    let put = |key: &str, batch: arrow::array::RecordBatch| {
        let bucket = bucket.clone();
        let key = key.to_string();
        async move {
            let bytes = r2o_common::columnar::write_parquet(&batch.schema(), &[batch]).unwrap();
            r2o_common::store::put_bytes(&bucket, &key, bytes).await.unwrap();
        }
    };
    put("sink/topic/partition=0/t+0+0000.parquet", hour_rows(0, 10)).await;
    put("sink/topic/partition=1/t+1+0000.parquet", hour_rows(1, 20)).await;
    put("sink/other/t+0+0000.parquet", hour_rows(1, 999)).await; // another source's
    let segs = wait_for(&c, "sdisc", "both partitions registered", |s| s.len() >= 2).await;
    assert_eq!(segs.len(), 2);
    assert!(segs.iter().all(|s| s.location.starts_with("s3://landing/sink/topic/")), "{segs:?}");
    // sorts before the cursor (partition=1's file): found by the next full listing
    put("sink/topic/partition=0/t+0+0010.parquet", hour_rows(2, 30)).await;
    wait_for(&c, "sdisc", "the third file registered", |s| s.len() >= 3).await;
    let start = Instant::now();
    while offline_rows(&c, "sdisc").await < 60 {
        assert!(start.elapsed() < Duration::from_secs(60), "rows not moved; logs in {}", c.dir.path().display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.wait_idle("sdisc", Duration::from_secs(60)).await;
    assert_eq!(offline_rows(&c, "sdisc").await, 60);
    let batches = c.offline_batches("sdisc").await;
    let m: i64 = batches
        .iter()
        .map(|b| {
            b.column_by_name("m").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().iter().flatten().sum::<i64>()
        })
        .sum();
    assert_eq!(m, 60, "every row once");
}

#[test]
fn bad_discovery_keys_are_refused_by_name() {
    let c = Cluster::start(1, 0);
    let dir = c.dir.path().to_path_buf();
    let cases = [
        (json!({"inputDirURI": "relative/dir"}), "batchConfigMaps[0].inputDirURI"),
        (json!({"inputDirURI": "hdfs://nn/dir"}), "batchConfigMaps[0].inputDirURI"),
        (json!({}), "batchConfigMaps[0].inputDirURI"),
        (json!({"inputDirURI": "file:///tmp/x", "inputFormat": "json"}), "batchConfigMaps[0].inputFormat"),
        (
            json!({"inputDirURI": "file:///tmp/x", "includeFileNamePattern": "regex:.*"}),
            "batchConfigMaps[0].includeFileNamePattern",
        ),
        (
            json!({"inputDirURI": "file:///tmp/x", "excludeFileNamePattern": "glob:[a"}),
            "batchConfigMaps[0].excludeFileNamePattern",
        ),
        // the install's own store holds its namespace: the janitor would delete the owner's files
        (json!({"inputDirURI": c.store_uri.clone()}), "batchConfigMaps[0].inputDirURI"),
    ];
    for (i, (source, key)) in cases.into_iter().enumerate() {
        let name = format!("bad{i}");
        let (cfg, schema) = (dir.join(format!("{name}.json")), dir.join(format!("{name}.schema.json")));
        std::fs::write(&cfg, table(&name, json!([source])).to_string()).unwrap();
        std::fs::write(&schema, metric_schema().to_string()).unwrap();
        let out = c.cli_raw(&["table", "add", "--config", cfg.to_str().unwrap(), "--schema", schema.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{source}: expected a refusal naming {key}, got {err}");
    }
}
