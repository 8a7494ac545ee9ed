//! The admin CLI against a real cluster: bad input gets a clear error that
//! names the field, the value and what was expected, and nothing is stored.

mod support;

use serde_json::json;
use support::Cluster;

fn write(dir: &std::path::Path, name: &str, v: &serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_add_validates_and_stores_nothing_on_error() {
    let cluster = Cluster::start(1, 0);
    let d = cluster.dir.path();
    let schema = json!({
        "schemaName": "t",
        "dimensionFieldSpecs": [{"name": "d", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
    });
    let schema_path = write(d, "schema.json", &schema);
    let config = |task: serde_json::Value| {
        json!({"tableName": "t_REALTIME", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
               "tableIndexConfig": {"sortedColumn": ["d"]}, "someUnknownKey": {"kept": true},
               "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}})
    };
    let cases = [
        (json!({"bucketTimePeriod": "1x"}), vec!["bucketTimePeriod", "'1x'", "Pinot period"]),
        (json!({"bufferTimePeriod": "-1d"}), vec!["bufferTimePeriod", "'-1d'", "Pinot period such as 0d"]),
        (json!({"mergeType": "merge"}), vec!["mergeType", "'merge'", "concat, rollup or dedup"]),
        (json!({"d.aggregationType": "sum"}), vec!["d.aggregationType", "'d'", "metricFieldSpecs"]),
        (json!({"m.aggregationType": "median"}), vec!["m.aggregationType", "'median'", "sum, min, max, avg"]),
        (json!({"m.aggregationType": "distinctCountHLL"}), vec!["m.aggregationType", "BYTES", "'m' is LONG"]),
        (json!({"m.aggregationType": "distinctCountHLLPlus"}), vec!["'distinctCountHLLPlus'", "no value aggregator"]),
    ];
    for (i, (task, words)) in cases.into_iter().enumerate() {
        let p = write(d, &format!("bad{i}.json"), &config(task));
        let out = cluster.cli_raw(&["table", "add", "--config", &p, "--schema", &schema_path]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for w in words {
            assert!(err.contains(w), "error should name {w}: {err}");
        }
    }
    assert_eq!(cluster.cli(&["table", "list"]).trim(), "", "nothing stored after failed adds");

    // a valid config is stored unchanged, unknown keys kept
    let good = write(d, "good.json", &config(json!({"mergeType": "Rollup"})));
    cluster.cli(&["table", "add", "--config", &good, "--schema", &schema_path]);
    let shown: serde_json::Value = serde_json::from_str(&cluster.cli(&["table", "show", "t"])).unwrap();
    assert_eq!(shown["tableConfig"], config(json!({"mergeType": "Rollup"})));
    let again = cluster.cli_raw(&["table", "add", "--config", &good, "--schema", &schema_path]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // a segment whose schema does not match is refused, naming the column
    let bad_file = d.join("bad.parquet");
    {
        use arrow::array::{Int64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        let b = RecordBatch::try_from_iter(vec![
            ("d", Arc::new(StringArray::from(vec!["a"])) as _),
            ("m", Arc::new(StringArray::from(vec!["not a number"])) as _),
            ("ts", Arc::new(Int64Array::from(vec![1])) as _),
        ])
        .unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&bad_file).unwrap(), b.schema(), None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }
    let out = cluster.cli_raw(&["segment", "add", "--table", "t", "--file", bad_file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'m'") && err.contains("Utf8") && err.contains("LONG"), "{err}");
    let segs = cluster.cli(&["segment", "list", "--table", "t", "--output", "json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&segs).unwrap(), json!([]), "nothing registered");
}
