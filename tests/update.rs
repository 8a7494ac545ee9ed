//! `r2o table update` against real processes: only a paused flow is
//! updated; a column added and a metric widened apply to windows committed
//! afterwards, a REALTIME segment registered under the old schema is read
//! with the added column as its `defaultNullValue`, and the OFFLINE segments
//! of both schema versions read as one table; a narrowing or a changed time
//! column is refused by name and nothing changes; so is a key that recuts
//! committed windows (`bucketTimePeriod`) once the table has lineage.

mod support;

use arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
use r2o_common::columnar::read_segment_any_version;
use r2o_common::schema::Schema;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::{Cluster, H_MS, T0_MS};

fn schema_v1() -> serde_json::Value {
    json!({"schemaName": "s",
        "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "INT"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]})
}

fn schema_v2() -> serde_json::Value {
    let mut s = schema_v1();
    s["dimensionFieldSpecs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "origin", "dataType": "STRING", "defaultNullValue": "none"}));
    s["metricFieldSpecs"][0]["dataType"] = json!("LONG");
    s
}

/// 10 rows per hour for `hours` hours from `start_ms`, `m = 1`; with
/// `origin`, the v2 columns (m LONG, origin).
fn rows(start_ms: i64, hours: i64, origin: Option<&str>) -> RecordBatch {
    let n = (hours * 10) as usize;
    let ts: Vec<i64> = (0..n as i64).map(|i| start_ms + i * H_MS / 10).collect();
    let mut cols: Vec<(&str, Arc<dyn Array>)> = vec![("k", Arc::new(StringArray::from(vec!["a"; n])))];
    match origin {
        None => cols.push(("m", Arc::new(Int32Array::from(vec![1; n])))),
        Some(o) => {
            cols.push(("origin", Arc::new(StringArray::from(vec![o; n]))));
            cols.push(("m", Arc::new(Int64Array::from(vec![1; n]))));
        }
    }
    cols.push(("ts", Arc::new(Int64Array::from(ts))));
    RecordBatch::try_from_iter(cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_flow_gains_a_column_and_reads_old_segments_with_its_default() {
    let cluster = Cluster::start(1, 1);
    let config = support::hourly_table("evo", json!({"mergeType": "concat"}));
    cluster.add_table("evo", &config, &schema_v1());
    let add = |name: &str, batch: RecordBatch| {
        let f = cluster.parquet_file(&format!("{name}.parquet"), &batch);
        cluster.cli(&["segment", "add", "--table", "evo", "--file", f.to_str().unwrap(), "--name", name]);
    };
    add("s1", rows(T0_MS, 2, None));
    // CONSUMING: windows from the end of s1's first hour wait for it, so
    // only the first window commits under version 1
    let c = cluster.parquet_file("c.parquet", &rows(T0_MS + 3 * H_MS, 1, None));
    cluster.cli(&[
        "segment",
        "add",
        "--table",
        "evo",
        "--file",
        c.to_str().unwrap(),
        "--name",
        "c",
        "--status",
        "CONSUMING",
    ]);
    let w = cluster.wait_idle("evo", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + H_MS, "{}", w.next);

    let write = |name: &str, v: &serde_json::Value| {
        let p = cluster.dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cfg, v2) = (write("evo.json", &config), write("v2.json", &schema_v2()));
    let update = |schema: &str| cluster.cli_raw(&["table", "update", "--config", &cfg, "--schema", schema]);

    // a running flow is not updated
    let out = update(&v2);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not paused"));
    cluster.cli(&["pause", "--table", "evo"]);
    // a segment registered under version 1 whose window moves after the update
    add("s2", rows(T0_MS + 2 * H_MS, 1, None));

    // refused: an upsert table (as Pinot refuses it), at add and at update
    let mut upsert = config.clone();
    upsert["upsertConfig"] = json!({"mode": "FULL"});
    let upsert_file = write("upsert.json", &upsert);
    let v1_file = write("v1.json", &schema_v1());
    for verb in ["update", "add"] {
        let mut upsert_as = upsert.clone();
        if verb == "add" {
            upsert_as["tableName"] = json!("evo_upsert");
        }
        let file = if verb == "add" { write("upsert-add.json", &upsert_as) } else { upsert_file.clone() };
        let out = cluster.cli_raw(&["table", verb, "--config", &file, "--schema", &v1_file]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("upsertConfig.mode") && err.contains("'FULL'"), "{verb}: {err}");
    }
    let listed = cluster.cli(&["table", "list"]);
    assert!(!listed.contains("evo_upsert"), "an upsert table is not added: {listed}");
    // refused at update: Pinot's fixedSegmentName (every window's segments would take one name)
    let mut fixed = config.clone();
    fixed["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]["fixedSegmentName"] = json!("evo_all");
    let out = cluster.cli_raw(&["table", "update", "--config", &write("fixed.json", &fixed), "--schema", &v1_file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fixedSegmentName") && err.contains("'evo_all'"), "{err}");

    // refused: a narrowing, a changed time column; nothing changes
    let mut narrow = schema_v1();
    narrow["metricFieldSpecs"][0]["dataType"] = json!("STRING");
    let out = update(&write("narrow.json", &narrow));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("metricFieldSpecs[m].dataType") && err.contains("INT -> STRING"),
        "{err}"
    );
    let mut moved = config.clone();
    moved["segmentsConfig"]["timeColumnName"] = json!("ts2");
    let mut with_ts2 = schema_v1();
    with_ts2["dateTimeFieldSpecs"].as_array_mut().unwrap().push(
        json!({"name": "ts2", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}),
    );
    let out = cluster.cli_raw(&[
        "table",
        "update",
        "--config",
        &write("moved.json", &moved),
        "--schema",
        &write("ts2.json", &with_ts2),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("segmentsConfig.timeColumnName") && err.contains("ts -> ts2"),
        "{err}"
    );
    // refused once a window is committed: a key that would recut it (late-data
    // runs would keep old and new results side by side), naming the ways out
    let mut daily = config.clone();
    daily["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]["bucketTimePeriod"] = json!("1d");
    let out = cluster.cli_raw(&[
        "table",
        "update",
        "--config",
        &write("daily.json", &daily),
        "--schema",
        &write("v1.json", &schema_v1()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("bucketTimePeriod")
            && err.contains("3600000 ms -> 86400000 ms")
            && err.contains("table copy")
            && err.contains("--mode flush"),
        "{err}"
    );
    let shown: serde_json::Value = serde_json::from_str(&cluster.cli(&["table", "show", "evo"])).unwrap();
    assert_eq!((shown["version"].clone(), shown["updatedMs"].clone()), (json!(1), json!(0)));

    // the update: a dry run says what would change; then it is made
    let dry = cluster.cli(&["table", "update", "--config", &cfg, "--schema", &v2, "--dry-run"]);
    assert!(
        dry.contains("would change") && dry.contains("added column origin") && dry.contains("column m: INT -> LONG"),
        "{dry}"
    );
    let out = update(&v2);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("updated to version 2"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_str(&cluster.cli(&["table", "show", "evo"])).unwrap();
    assert_eq!(shown["version"], json!(2));
    assert!(
        shown["updatedMs"].as_i64().unwrap() > 0 && shown["schema"]["metricFieldSpecs"][0]["dataType"] == json!("LONG")
    );

    // a segment of version 2, then seal c so that every window moves
    add("s3", rows(T0_MS + 4 * H_MS, 1, Some("x")));
    cluster.cli(&["segment", "seal", "--table", "evo", "--segment", "c"]);
    cluster.cli(&["resume", "--table", "evo"]);
    let w = cluster.wait_idle("evo", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 5 * H_MS, "{}", w.next);

    // OFFLINE: files of version 1 lack origin and hold m as INT; later ones have both
    let mut old_files = 0;
    let mut all = vec![];
    let v2_schema = Schema::from_json(&schema_v2()).unwrap();
    for s in cluster.offline_segments("evo").await {
        let path = cluster.store_path(&s.location);
        let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
        let file = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).unwrap();
        let has_origin = file.schema().field_with_name("origin").is_ok();
        if s.start_time_ms < T0_MS + H_MS {
            old_files += 1;
            assert!(!has_origin, "{} was written under version 1", s.name);
        } else {
            assert!(has_origin, "{} was written under version 2", s.name);
        }
        all.extend(read_segment_any_version(&s.name, bytes, &v2_schema, 1024).unwrap());
    }
    assert_eq!(old_files, 1);
    // ... and read as one table of the latest schema
    let origin: Vec<String> = all
        .iter()
        .flat_map(|b| {
            let o = b.column_by_name("origin").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..o.len()).map(move |i| o.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(origin.len(), 50, "s1 20 + s2 10 + c 10 + s3 10 rows");
    assert_eq!(origin.iter().filter(|o| *o == "none").count(), 40, "rows of version-1 segments read as the default");
    assert_eq!(origin.iter().filter(|o| *o == "x").count(), 10);
    let m: i64 = all
        .iter()
        .map(|b| {
            b.column_by_name("m").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().iter().flatten().sum::<i64>()
        })
        .sum();
    assert_eq!(m, 50);
}
