//! Managing flows over the admin CLI against real processes: pause and
//! resume, run now, execution history, the watermark explained, export and
//! import into another cluster, copy, and reset (append and flush).

mod support;

use arrow::array::{Int64Array, RecordBatch};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Cluster;

const H_MS: i64 = 3_600_000;
const T0_MS: i64 = 1_600_000_000_000 / H_MS * H_MS;

fn setup_table(cluster: &Cluster, name: &str, hours: i64, extra: Value) -> std::path::PathBuf {
    let d = cluster.dir.path();
    let schema = json!({"schemaName": "s", "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]});
    let mut task = json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h"});
    for (k, v) in extra.as_object().unwrap() {
        task[k] = v.clone();
    }
    let config = json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}});
    std::fs::write(d.join("s.json"), schema.to_string()).unwrap();
    std::fs::write(d.join(format!("{name}.json")), config.to_string()).unwrap();
    cluster.cli(&[
        "table",
        "add",
        "--config",
        d.join(format!("{name}.json")).to_str().unwrap(),
        "--schema",
        d.join("s.json").to_str().unwrap(),
    ]);
    let rows = hours * 100;
    let batch = RecordBatch::try_from_iter(vec![
        ("m", Arc::new(Int64Array::from(vec![1; rows as usize])) as _),
        ("ts", Arc::new(Int64Array::from((0..rows).map(|i| T0_MS + i * H_MS / 100).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    let f = d.join(format!("{name}.parquet"));
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&f).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    f
}

fn json_of(cluster: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let out = cluster.cli(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("r2o {a:?}: {e}: {out}"))
}

async fn wait_idle(cluster: &Cluster, table: &str) -> Value {
    let start = Instant::now();
    loop {
        let w = json_of(cluster, &["watermark", "--table", table]);
        if w["idle"] == json!(true) {
            return w;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{table} not idle: {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manage_flows() {
    // a long planner tick: only run-now, commits and resumes plan quickly
    let cluster = Cluster::start_with(1, 1, vec![("R2O_PLAN_INTERVAL_MS".into(), "60000".into())]);

    // run now: nothing is planned before the tick until asked
    let f = setup_table(&cluster, "rn", 3, json!({}));
    cluster.cli(&[
        "ingest",
        "--table",
        "rn",
        "--file",
        f.to_str().unwrap(),
        "--rows-per-segment",
        "100",
        "--seal-last",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(json_of(&cluster, &["tasks", "--table", "rn"]), json!([]), "nothing planned before the tick");
    let r = json_of(&cluster, &["run-now", "--table", "rn"]);
    assert!(r["outcome"].as_str().unwrap().contains("published"), "{r}");
    let w = wait_idle(&cluster, "rn").await;
    assert_eq!(w["watermarkMs"], json!(T0_MS + 3 * H_MS));
    // history: every task with window, trigger, attempt, rows, duration
    let tasks = json_of(&cluster, &["tasks", "--table", "rn"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 1, "the three ready windows are batched into one task: {tasks:?}");
    assert_eq!(tasks[0]["trigger"], "manual", "planned by run-now");
    assert_eq!((tasks[0]["windows"].as_u64(), tasks[0]["rowsOut"].as_u64()), (Some(3), Some(300)));
    assert!(tasks.iter().all(|t| t["state"] == "SUCCEEDED" && t["attempt"] == 1));
    assert!(tasks.iter().all(|t| t["finishedMs"].as_i64().unwrap() >= t["startedMs"].as_i64().unwrap()));
    let r = json_of(&cluster, &["run-now", "--table", "rn"]);
    assert!(r["outcome"].as_str().unwrap().contains("caught up"), "run-now never bypasses the rules: {r}");

    // pause and resume
    let f = setup_table(&cluster, "pz", 4, json!({"segmentNamePrefix": "pz_v2"}));
    cluster.cli(&["pause", "--table", "pz"]);
    cluster.cli(&[
        "ingest",
        "--table",
        "pz",
        "--file",
        f.to_str().unwrap(),
        "--rows-per-segment",
        "100",
        "--seal-last",
    ]);
    let w = json_of(&cluster, &["watermark", "--table", "pz"]);
    assert!(w["next"].as_str().unwrap().contains("paused") && w["idle"] == json!(true), "{w}");
    let out = cluster.cli_raw(&["run-now", "--table", "pz"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused"), "run-now refuses a paused flow");
    assert_eq!(json_of(&cluster, &["tasks", "--table", "pz"]), json!([]));
    cluster.cli(&["resume", "--table", "pz"]);
    let w = wait_idle(&cluster, "pz").await;
    assert_eq!(w["watermarkMs"], json!(T0_MS + 4 * H_MS), "{w}");
    // Pinot's segmentNamePrefix starts every OFFLINE segment name
    let mut offline: Vec<String> = json_of(&cluster, &["segment", "list", "--table", "pz"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tableName"].as_str().is_some_and(|t| t.ends_with("_OFFLINE")))
        .map(|s| s["segmentName"].as_str().unwrap().to_string())
        .collect();
    offline.sort();
    let expected: Vec<String> =
        (0..4).map(|k| format!("pz_v2_{}_{}_all_0", T0_MS + k * H_MS, T0_MS + (k + 1) * H_MS)).collect();
    assert_eq!(offline, expected);

    // reset append: a FAILED task is abandoned, the flow continues from the watermark
    let f = setup_table(&cluster, "ra", 3, json!({"maxAttemptsPerTask": "1"}));
    cluster.cli(&["ingest", "--table", "ra", "--file", f.to_str().unwrap(), "--rows-per-segment", "100"]);
    // the last (CONSUMING) segment: corrupt it, then seal it
    let segs = json_of(&cluster, &["segment", "list", "--table", "ra"]);
    let last = segs.as_array().unwrap().iter().find(|s| s["status"] == "CONSUMING").unwrap().clone();
    let good = std::fs::read(cluster.store_path(last["location"].as_str().unwrap())).unwrap();
    std::fs::write(cluster.store_path(last["location"].as_str().unwrap()), b"PAR1 bad PAR1").unwrap();
    // the stream ends with it, or Pinot's last-completed-segment rule would hold its window
    cluster.cli(&[
        "segment",
        "seal",
        "--table",
        "ra",
        "--segment",
        last["segmentName"].as_str().unwrap(),
        "--end-of-stream",
    ]);
    cluster.cli(&["run-now", "--table", "ra"]);
    let start = Instant::now();
    // a FAILED task of an epoch a supersede has just moved past (a segment
    // registered into a planned window) is dropped and planned again, so wait
    // for the watermark to say a FAILED task holds the table
    let before = loop {
        let w = json_of(&cluster, &["watermark", "--table", "ra"]);
        if w["next"].as_str().unwrap().contains("FAILED") {
            break w;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no FAILED task holds the table: {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        json_of(&cluster, &["tasks", "--table", "ra"]).as_array().unwrap().iter().any(|t| t["state"] == "FAILED"),
        "{before}"
    );
    std::fs::write(cluster.store_path(last["location"].as_str().unwrap()), &good).unwrap();
    let r = json_of(&cluster, &["reset", "--table", "ra", "--mode", "append"]);
    assert!(r["abandonedTask"].as_str().unwrap().starts_with("ra__"), "{r}");
    cluster.cli(&["run-now", "--table", "ra"]);
    let w = wait_idle(&cluster, "ra").await;
    assert_eq!(w["watermarkMs"], json!(T0_MS + 3 * H_MS), "append keeps the OFFLINE data and continues: {w}");
    assert_eq!(w["rowsOut"], json!(300));

    // reset flush: asks for confirmation and says what it deletes
    let out = cluster.cli_raw(&["reset", "--table", "rn", "--mode", "flush"]);
    assert!(!out.status.success(), "flush without --yes must not run");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("deletes 3 OFFLINE segments (300 rows"), "{said}");
    assert_eq!(
        json_of(&cluster, &["watermark", "--table", "rn"])["watermarkMs"],
        json!(T0_MS + 3 * H_MS),
        "nothing changed"
    );
    let r = json_of(&cluster, &["reset", "--table", "rn", "--mode", "flush", "--yes"]);
    assert_eq!((r["offlineSegments"].as_u64(), r["done"].as_bool()), (Some(3), Some(true)), "{r}");
    let segs = json_of(&cluster, &["segment", "list", "--table", "rn"]);
    assert!(segs.as_array().unwrap().iter().all(|s| s["tableName"] == "rn_REALTIME"), "OFFLINE segments gone");
    cluster.cli(&["run-now", "--table", "rn"]);
    let w = wait_idle(&cluster, "rn").await;
    assert_eq!(
        (w["watermarkMs"].clone(), w["rowsOut"].clone()),
        (json!(T0_MS + 3 * H_MS), json!(300)),
        "restarted from the earliest data"
    );

    // late data is not silently lost: adding a segment before the watermark warns
    let late = cluster.dir.path().join("late.parquet");
    let batch = RecordBatch::try_from_iter(vec![
        ("m", Arc::new(Int64Array::from(vec![1])) as _),
        ("ts", Arc::new(Int64Array::from(vec![T0_MS + 5])) as _),
    ])
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&late).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out =
        cluster.cli_raw(&["segment", "add", "--table", "rn", "--file", late.to_str().unwrap(), "--name", "late0"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("late0 is late") && err.contains("before the watermark"), "{err}");

    // copy under a new name: same flow config, starts paused
    cluster.cli(&["table", "copy", "--from", "rn", "--to", "rn2"]);
    let shown: Value = serde_json::from_str(&cluster.cli(&["table", "show", "rn2"])).unwrap();
    let orig: Value = serde_json::from_str(&cluster.cli(&["table", "show", "rn"])).unwrap();
    assert_eq!(shown["tableConfig"]["tableName"], "rn2_REALTIME");
    assert_eq!(shown["tableConfig"]["task"], orig["tableConfig"]["task"]);
    assert!(json_of(&cluster, &["watermark", "--table", "rn2"])["next"].as_str().unwrap().contains("paused"));

    // export and import into another cluster
    let export = cluster.dir.path().join("export.json");
    cluster.cli(&["export", "--file", export.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    let names: Vec<&str> = doc["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["pz", "ra", "rn", "rn2"]);
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(!text.contains("watermark") && !text.contains("\"segmentName\""), "no runtime state exported");
    let other = Cluster::start(1, 0);
    // one table exists there already: it is reported and skipped
    setup_table(&other, "rn", 1, json!({"bucketTimePeriod": "2h"}));
    let out = other.cli(&["import", "--file", export.to_str().unwrap()]);
    assert!(out.contains("skipped rn: it already exists") && out.contains("imported 3 tables, skipped 1"), "{out}");
    let shown: Value = serde_json::from_str(&other.cli(&["table", "show", "pz"])).unwrap();
    let orig: Value = serde_json::from_str(&cluster.cli(&["table", "show", "pz"])).unwrap();
    assert_eq!(shown["tableConfig"], orig["tableConfig"]);
    assert!(
        json_of(&other, &["watermark", "--table", "pz"])["next"].as_str().unwrap().contains("paused"),
        "imported flows start paused"
    );
    let kept: Value = serde_json::from_str(&other.cli(&["table", "show", "rn"])).unwrap();
    assert_eq!(
        kept["tableConfig"]["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]["bucketTimePeriod"], "2h",
        "existing table untouched"
    );
}

/// Pinot's `minionInstanceTag`: a table's tasks run only on minions started
/// with its tag (`r2o minion --tag`); untagged minions run untagged tables;
/// a table whose tag no minion has waits, its tasks never claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_table_runs_only_on_its_tagged_minions() {
    let mut cluster = Cluster::start(1, 1);
    cluster.add_minion_env(&[("R2O_MINION_TAG", "heavy")]);
    let (untagged, heavy) = (cluster.minions[0].name.clone(), cluster.minions[1].name.clone());
    for (table, task) in [
        ("hv", json!({"minionInstanceTag": "heavy", "maxNumRecordsPerTask": "100"})),
        ("lt", json!({"maxNumRecordsPerTask": "100"})),
        ("nb", json!({"minionInstanceTag": "nobody"})),
    ] {
        let f = setup_table(&cluster, table, 4, task);
        let f = f.to_str().unwrap();
        cluster.cli(&["ingest", "--table", table, "--file", f, "--rows-per-segment", "100", "--seal-last"]);
    }
    for (table, minion) in [("hv", &heavy), ("lt", &untagged)] {
        let w = wait_idle(&cluster, table).await;
        assert_eq!(w["watermarkMs"], json!(T0_MS + 4 * H_MS), "{table}: {w}");
        let tasks = json_of(&cluster, &["tasks", "--table", table]);
        let ran: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["minion"].as_str().unwrap()).collect();
        assert!(ran.len() >= 2 && ran.iter().all(|m| m == minion), "{table} ran on {ran:?}, expected {minion}");
    }
    // the untagged and the heavy minion were both free all along: nb's
    // tasks are published but never claimed
    let tasks = json_of(&cluster, &["tasks", "--table", "nb"]);
    let tasks = tasks.as_array().unwrap();
    assert!(!tasks.is_empty(), "nb's windows are planned");
    assert!(tasks.iter().all(|t| t["state"] == "PENDING" && t["attempt"] == json!(0)), "{tasks:?}");
    let w = json_of(&cluster, &["watermark", "--table", "nb"]);
    assert_ne!(w["watermarkMs"], json!(T0_MS + 4 * H_MS), "{w}");
    let next = w["next"].as_str().unwrap();
    assert!(next.contains("no live minion runs minionInstanceTag 'nobody'") && next.contains("--tag nobody"), "{w}");
}
