//! Late data against real processes (`lateDataPolicy`): a segment
//! registered after the watermark passed its rows is moved, not only
//! reported. `rematerialize` recomputes the window from all its inputs and
//! replaces its OFFLINE segments (rollup stays exact: one row per group);
//! `append` (concat) adds the late rows as extra segments; `ignore` keeps
//! Pinot's behaviour. The watermark never moves back, and bad values are
//! refused by key.

mod support;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Cluster, H_MS, T0_MS};

/// 10 rows an hour for `hours` hours from T0, keys a and b alternating.
fn on_time(hours: i64) -> RecordBatch {
    let v: Vec<(&str, i64)> =
        (0..hours * 10).map(|i| (if i % 2 == 0 { "a" } else { "b" }, T0_MS + i * H_MS / 10)).collect();
    support::keyed_rows(&v)
}

/// Every OFFLINE row as (window hour, key) -> sum of m, and the row count.
async fn offline(cluster: &Cluster, table: &str) -> (BTreeMap<(i64, String), i64>, usize) {
    let mut out = BTreeMap::new();
    let mut n = 0;
    for b in cluster.offline_batches(table).await {
        let k = b.column_by_name("k").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let m = b.column_by_name("m").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let ts = b.column_by_name("ts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        for i in 0..b.num_rows() {
            *out.entry(((ts.value(i) - T0_MS).div_euclid(H_MS), k.value(i).to_string())).or_insert(0) += m.value(i);
            n += 1;
        }
    }
    (out, n)
}

fn tasks(cluster: &Cluster, table: &str) -> Vec<Value> {
    let out = cluster.cli(&["tasks", "--table", table, "--output", "json"]);
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

async fn wait_late_run(cluster: &Cluster, table: &str, trigger: &str) {
    let start = Instant::now();
    loop {
        let t = tasks(cluster, table);
        if t.iter().any(|t| t["trigger"] == json!(trigger) && t["state"] == json!("SUCCEEDED")) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no {trigger} run committed: {t:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_moved_by_policy() {
    let cluster = Cluster::start(1, 1);
    let table = |name: &str, task: Value| {
        let mut t = support::hourly_table(name, task);
        t["tableName"] = json!(name);
        t
    };
    cluster.add_table(
        "lr",
        &table("lr", json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h"})),
        &support::keyed_schema(),
    );
    cluster.add_table(
        "ca",
        &table("ca", json!({"mergeType": "concat", "lateDataPolicy": "APPEND"})),
        &support::keyed_schema(),
    );
    cluster.add_table(
        "ig",
        &table("ig", json!({"mergeType": "concat", "lateDataPolicy": "ignore"})),
        &support::keyed_schema(),
    );
    let add = |t: &str, name: &str, batch: &RecordBatch| {
        let f = cluster.parquet_file(&format!("{t}-{name}.parquet"), batch);
        let out = cluster.cli_raw(&["segment", "add", "--table", t, "--file", f.to_str().unwrap(), "--name", name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for t in ["lr", "ca", "ig"] {
        add(t, "s1", &on_time(3));
        let w = cluster.wait_idle(t, Duration::from_secs(60)).await;
        assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "{t}: {}", w.next);
    }
    let (before, n) = offline(&cluster, "lr").await;
    assert_eq!((n, before.values().sum::<i64>()), (6, 30), "3 windows x 2 keys: {before:?}");

    // late rows for the window from T0+1h: 4 more of a, 2 of a new key c
    let late: Vec<(&str, i64)> =
        (0..6).map(|i| (if i < 4 { "a" } else { "c" }, T0_MS + H_MS + 60_000 * (i + 1))).collect();
    let said = add("lr", "late", &support::keyed_rows(&late));
    assert!(said.contains("is late") && said.contains("rematerialize"), "{said}");
    wait_late_run(&cluster, "lr", "late-rematerialize").await;
    let (after, n) = offline(&cluster, "lr").await;
    let mut want = before.clone();
    *want.get_mut(&(1, "a".into())).unwrap() += 4;
    want.insert((1, "c".into()), 2);
    assert_eq!(after, want, "window 1 recomputed from all its inputs");
    assert_eq!(n, 7, "one row per group: no group split between old and new segments");
    let names: Vec<String> = cluster.offline_segments("lr").await.into_iter().map(|s| s.name).collect();
    let window1: Vec<&String> = names.iter().filter(|n| n.starts_with(&format!("lr_{}_", T0_MS + H_MS))).collect();
    assert!(
        !window1.is_empty() && window1.iter().all(|n| n.contains("_late")),
        "window 1's segments are the run's: {names:?}"
    );
    let w = cluster.wait_idle("lr", Duration::from_secs(30)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "the watermark does not move back");

    // append (concat): the late rows join window 1 as extra segments
    let said = add("ca", "late", &support::keyed_rows(&late));
    assert!(said.contains("append"), "{said}");
    wait_late_run(&cluster, "ca", "late-append").await;
    let (ca, n) = offline(&cluster, "ca").await;
    assert_eq!(n, 36);
    assert_eq!((ca[&(1, "a".to_string())], ca[&(1, "c".to_string())]), (9, 2));
    let names: Vec<String> = cluster.offline_segments("ca").await.into_iter().map(|s| s.name).collect();
    assert_eq!(names.iter().filter(|n| n.contains("_late")).count(), 1, "{names:?}");
    assert_eq!(names.len(), 4, "the window's first segment stays: {names:?}");

    // ignore: a warning, and the late rows stay in REALTIME
    let said = add("ig", "late", &support::keyed_rows(&late));
    assert!(said.contains("will not move"), "{said}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!tasks(&cluster, "ig").iter().any(|t| t["trigger"].as_str().unwrap_or("").starts_with("late")));
    assert_eq!(offline(&cluster, "ig").await.1, 30);

    // load status: what became of each REALTIME segment's rows
    let with_nulls = {
        let b = on_time(3);
        let mut ts: Vec<Option<i64>> = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap().iter().collect();
        ts.extend([None, None]);
        let n = ts.len();
        RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec!["n"; n])) as Arc<dyn Array>),
            ("m", Arc::new(Int64Array::from(vec![1; n])) as _),
            ("ts", Arc::new(Int64Array::from(ts)) as _),
        ])
        .unwrap()
    };
    cluster.add_table("ls", &table("ls", json!({"mergeType": "concat"})), &support::keyed_schema());
    add("ls", "s1", &with_nulls);
    let w = cluster.wait_idle("ls", Duration::from_secs(60)).await;
    assert_eq!(w.watermark_ms, T0_MS + 3 * H_MS, "{}", w.next);
    // paused: the next segment's rows wait
    cluster.cli(&["pause", "--table", "ls"]);
    add("ls", "s2", &support::keyed_rows(&[("n", T0_MS + 3 * H_MS + 1), ("n", T0_MS + 3 * H_MS + 2)]));
    let status = |t: &str| -> BTreeMap<String, (String, String)> {
        let out = cluster.cli(&["segment", "list", "--table", t, "--output", "json"]);
        let segs: Vec<Value> = serde_json::from_str(&out).unwrap();
        segs.iter()
            .filter(|s| s["tableName"].as_str().unwrap().ends_with("_REALTIME"))
            .map(|s| {
                let text = |k: &str| s[k].as_str().unwrap().to_string();
                (text("segmentName"), (text("loadStatus"), text("loadDetail")))
            })
            .collect()
    };
    let ls = status("ls");
    assert_eq!(ls["s1"].0, "LOADED_WITH_ERRORS", "{ls:?}");
    assert!(ls["s1"].1.contains("2 rows with a NULL time"), "{ls:?}");
    assert_eq!(ls["s2"].0, "PENDING", "{ls:?}");
    let ig = status("ig");
    assert_eq!(ig["s1"].0, "LOADED", "{ig:?}");
    assert_eq!(ig["late"].0, "SKIPPED", "late, every row below the watermark, ignored: {ig:?}");
    assert!(ig["late"].1.contains("lateDataPolicy ignore"), "{ig:?}");
    let lr = status("lr");
    assert_eq!((lr["s1"].0.as_str(), lr["late"].0.as_str()), ("LOADED", "LOADED"), "moved by its late run: {lr:?}");
    let only = cluster.cli(&["segment", "list", "--table", "ls", "--status", "pending", "--output", "json"]);
    let only: Vec<Value> = serde_json::from_str(&only).unwrap();
    assert_eq!(only.iter().map(|s| s["segmentName"].as_str().unwrap()).collect::<Vec<_>>(), ["s2"]);
    let shown = cluster.cli(&["segment", "list", "--table", "ls"]);
    assert!(shown.contains("LOADED_WITH_ERRORS") && shown.contains("NULL TIME"), "{shown}");
    let bad = cluster.cli_raw(&["segment", "list", "--table", "ls", "--status", "DONE"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("--status 'DONE'") && err.contains("LOADED_WITH_ERRORS"), "{err}");
    let want =
        [("ls", "LOADED_WITH_ERRORS", 1.0), ("ls", "PENDING", 1.0), ("ig", "SKIPPED", 1.0), ("lr", "LOADED", 2.0)];
    let start = Instant::now();
    loop {
        // the leader refreshes its per-table figures every few seconds
        let (_, body) = support::http_get(cluster.controllers[0].http_port, "/metrics");
        let got: Vec<Option<f64>> = want
            .iter()
            .map(|(t, status, _)| {
                support::metric(&body, &format!(r#"r2o_table_realtime_segments{{load_status="{status}",table="{t}"}}"#))
            })
            .collect();
        if got.iter().zip(&want).all(|(g, w)| *g == Some(w.2)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{want:?}: {got:?}\n{}",
            body.lines().filter(|l| l.contains("realtime_segments")).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // bad values are refused by key
    for (task, shown) in [
        (json!({"mergeType": "rollup", "lateDataPolicy": "append"}), "concat"),
        (json!({"lateDataPolicy": "later"}), "'later'"),
    ] {
        let (c, s) = (cluster.dir.path().join("bad.json"), cluster.dir.path().join("bad.schema.json"));
        std::fs::write(&c, table("bad", task).to_string()).unwrap();
        std::fs::write(&s, support::keyed_schema().to_string()).unwrap();
        let out = cluster.cli_raw(&["table", "add", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("lateDataPolicy") && err.contains(shown), "{err}");
    }
}
