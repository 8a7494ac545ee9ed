//! `bucketTimeZone` against real processes: `1d` windows and a `1d`
//! `roundBucketTimePeriod` follow local midnight in America/New_York across
//! the 2020 fall-back day (25 hours), `r2o watermark` shows the watermark in
//! the zone, and bad values are refused by key.

mod support;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::Cluster;

const H: i64 = 3_600_000;
/// 2020-10-31T00:00:00-04:00, 2020-11-01T00:00:00-04:00, 2020-11-02T00:00:00-05:00.
const OCT31: i64 = 1_604_116_800_000;
const NOV1: i64 = 1_604_203_200_000;
const NOV2: i64 = 1_604_293_200_000;

fn schema() -> serde_json::Value {
    json!({"schemaName": "s", "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

fn table(name: &str, task: serde_json::Value) -> serde_json::Value {
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_windows_follow_local_midnight_across_dst() {
    let cluster = Cluster::start(1, 1);
    let task = json!({"bucketTimePeriod": "1d", "bufferTimePeriod": "1d", "bucketTimeZone": "America/New_York",
                      "roundBucketTimePeriod": "1d", "mergeType": "rollup"});
    cluster.add_table("ny", &table("ny", task), &schema());
    // a row every 30 minutes from local midnight of Oct 31 to local midnight of Nov 2
    let n = ((NOV2 - OCT31) / (H / 2)) as usize;
    assert_eq!(n, 98, "24 + 25 hours");
    let batch = RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from(vec!["a"; n])) as Arc<dyn Array>),
        ("m", Arc::new(Int64Array::from(vec![1; n])) as _),
        ("ts", Arc::new(Int64Array::from((0..n as i64).map(|i| OCT31 + i * H / 2).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    let f = cluster.parquet_file("ny.parquet", &batch);
    cluster.cli(&["segment", "add", "--table", "ny", "--file", f.to_str().unwrap(), "--end-of-stream"]);
    let w = cluster.wait_idle("ny", Duration::from_secs(60)).await;
    assert_eq!((w.watermark_ms, w.windows_committed), (NOV2, 2), "{}", w.next);

    // one row per local day: its time is local midnight, its sum the day's rows
    let mut days: Vec<(i64, i64)> = vec![];
    for b in cluster.offline_batches("ny").await {
        let ts = b.column_by_name("ts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let m = b.column_by_name("m").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        days.extend((0..b.num_rows()).map(|i| (ts.value(i), m.value(i))));
    }
    days.sort();
    assert_eq!(days, vec![(OCT31, 48), (NOV1, 50)], "Nov 1 in New York is 25 hours long");
    let mut windows: Vec<(i64, i64)> = cluster
        .offline_segments("ny")
        .await
        .iter()
        .map(|s| {
            let parts: Vec<&str> = s.name.split('_').collect();
            (parts[1].parse().unwrap(), parts[2].parse().unwrap())
        })
        .collect();
    windows.sort();
    assert_eq!(windows, vec![(OCT31, NOV1), (NOV1, NOV2)], "segment names carry the local-day windows");

    let text = cluster.cli(&["watermark", "--table", "ny"]);
    assert!(
        text.contains("2020-11-02T05:00:00Z") && text.contains("2020-11-02T00:00:00-05:00[America/New_York]"),
        "{text}"
    );

    // bad values are refused by key
    for (task, key) in [
        (json!({"bucketTimeZone": "Mars/Olympus_Mons"}), "bucketTimeZone"),
        (json!({"bucketTimeZone": "Europe/Berlin", "bucketTimePeriod": "5h"}), "bucketTimePeriod"),
    ] {
        let (c, s) = (cluster.dir.path().join("bad.json"), cluster.dir.path().join("bad.schema.json"));
        std::fs::write(&c, table("bad", task).to_string()).unwrap();
        std::fs::write(&s, schema().to_string()).unwrap();
        let out = cluster.cli_raw(&["table", "add", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
    }
}
