//! The end-to-end flow on S3: a real S3-compatible server (moto) on
//! loopback, real etcd, a controller and two minions with `s3://` as the
//! segment store; every row moves exactly once, read back from S3.

mod support;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use r2o_proto::controller as pb;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use support::{Cluster, S3Server};

const H_MS: i64 = 3_600_000;
const T0_MS: i64 = 1_600_000_000_000 / H_MS * H_MS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_runs_on_s3() {
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(scratch.path(), "r2o-test");
    let cluster = Cluster::start_on_store(1, 2, s3.env(), Some("s3://r2o-test/cluster-a".into()));
    let d = cluster.dir.path();
    let schema = json!({"schemaName": "s", "dimensionFieldSpecs": [{"name": "id", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]});
    let config = json!({"tableName": "s3t", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "tableIndexConfig": {"sortedColumn": ["id"]},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {"bucketTimePeriod": "1h", "bufferTimePeriod": "1h", "maxNumRecordsPerSegment": "300"}}}});
    std::fs::write(d.join("s.json"), schema.to_string()).unwrap();
    std::fs::write(d.join("t.json"), config.to_string()).unwrap();
    cluster.cli(&[
        "table",
        "add",
        "--config",
        d.join("t.json").to_str().unwrap(),
        "--schema",
        d.join("s.json").to_str().unwrap(),
    ]);
    let rows = 6000i64;
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from((0..rows).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from((0..rows).map(|i| T0_MS + i * 6 * H_MS / rows).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    let f = d.join("s3t.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&f).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    cluster.cli(&[
        "ingest",
        "--table",
        "s3t",
        "--file",
        f.to_str().unwrap(),
        "--rows-per-segment",
        "700",
        "--seal-last",
    ]);
    let w = cluster.wait_idle("s3t", Duration::from_secs(120)).await;
    assert_eq!(w.watermark_ms, T0_MS + 6 * H_MS, "{}", w.next);

    // read the committed OFFLINE segments back from S3
    for (k, v) in s3.env() {
        // this test binary's only test: nothing else reads the environment
        std::env::set_var(k, v);
    }
    let store = r2o_common::store::open_store("s3://r2o-test/cluster-a").unwrap();
    let segs = cluster
        .client()
        .await
        .list_segments(pb::ListSegmentsRequest { table: "s3t".into() })
        .await
        .unwrap()
        .into_inner()
        .segments;
    let mut ids = vec![];
    for s in segs.iter().filter(|s| s.table == "s3t_OFFLINE") {
        let bytes = r2o_common::store::get_bytes(&store, &s.location).await.unwrap();
        assert_eq!(bytes.len() as u64, s.size_bytes);
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
        for b in reader {
            ids.extend(b.unwrap().column(0).as_primitive::<Int64Type>().values().iter().copied());
        }
    }
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (rows as usize, rows as usize), "every row once, from S3");
    assert!(!d.join("store").join("offline").exists(), "nothing was written to the local disk store");
}
