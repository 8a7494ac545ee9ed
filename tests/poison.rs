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

/// Registers `files` as the segments `<table>__0__<i>` of `table`, with
/// `extra` arguments (`--status CONSUMING`).
fn add_segments(cluster: &Cluster, table: &str, files: &[std::path::PathBuf], extra: &[&str]) {
    for (i, f) in files.iter().enumerate() {
        let name = format!("{table}__0__{i}");
        let mut args = vec!["segment", "add", "--table", table, "--file", f.to_str().unwrap(), "--name", &name];
        args.extend_from_slice(extra);
        cluster.cli(&args);
    }
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
        add_segments(&cluster, t, &files, &["--status", "CONSUMING"]);
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

/// stream-lib HLL bytes of log2m 8 (Pinot's default) with the given
/// registers set: big-endian log2m, register bytes, then 43 words of six
/// 5-bit registers (stream-lib's `HyperLogLog.getBytes`).
fn hll_of(registers: &[(usize, u32)]) -> Vec<u8> {
    let mut words = [0u32; 43];
    for &(pos, v) in registers {
        let (w, shift) = (pos / 6, 5 * (pos % 6));
        words[w] = (words[w] & !(0x1f << shift)) | (v << shift);
    }
    let mut out = [8u32.to_be_bytes(), (43u32 * 4).to_be_bytes()].concat();
    words.iter().for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
    out
}

fn hll_registers(bytes: &[u8]) -> Vec<u32> {
    assert_eq!(bytes.len(), 8 + 43 * 4, "an HLL of log2m 8");
    let word = |w: usize| u32::from_be_bytes(bytes[8 + 4 * w..12 + 4 * w].try_into().unwrap());
    (0..256).map(|pos| (word(pos / 6) >> (5 * (pos % 6))) & 0x1f).collect()
}

/// One row of the sketch table: (hour, carrier, user ids, HLL registers, avg sum, avg count).
type SketchRow = (i64, &'static str, Vec<u64>, Vec<(usize, u32)>, f64, i64);

fn sketch_rows() -> Vec<SketchRow> {
    let mut rows = vec![];
    for h in 0..2i64 {
        for i in 0..40u64 {
            let carrier = ["a", "b"][(i % 2) as usize];
            let ids = vec![(h as u64 * 1000 + i * 3) % 37, i % 5 + 500];
            let regs = vec![((i * 13) % 256) as usize, ((i * 29 + 7) % 256) as usize];
            rows.push((
                h,
                carrier,
                ids,
                regs.into_iter().map(|p| (p, (i % 7) as u32 + 1)).collect(),
                i as f64 * 0.5,
                1 + (i % 3) as i64,
            ));
        }
    }
    rows
}

fn sketch_batch(rows: &[(usize, &SketchRow)]) -> RecordBatch {
    use arrow::array::BinaryArray;
    use datasketches::theta::ThetaSketchBuilder;
    let theta = |ids: &[u64]| {
        let mut s = ThetaSketchBuilder::default().build().unwrap();
        ids.iter().for_each(|i| s.update(*i));
        s.compact(true).serialize()
    };
    let avg = |sum: f64, count: i64| [sum.to_be_bytes(), count.to_be_bytes()].concat();
    let users: Vec<Vec<u8>> = rows.iter().map(|(_, r)| theta(&r.2)).collect();
    let visits: Vec<Vec<u8>> = rows.iter().map(|(_, r)| hll_of(&r.3)).collect();
    let lat: Vec<Vec<u8>> = rows.iter().map(|(_, r)| avg(r.4, r.5)).collect();
    RecordBatch::try_from_iter(vec![
        ("carrier", Arc::new(StringArray::from(rows.iter().map(|(_, r)| r.1).collect::<Vec<_>>())) as _),
        ("users", Arc::new(BinaryArray::from_iter_values(users)) as _),
        ("visits", Arc::new(BinaryArray::from_iter_values(visits)) as _),
        ("lat", Arc::new(BinaryArray::from_iter_values(lat)) as _),
        ("n", Arc::new(Int64Array::from(vec![1; rows.len()])) as _),
        (
            "ts",
            Arc::new(Int64Array::from(
                rows.iter().map(|(i, r)| T0_MS + r.0 * H_MS + (*i as i64 % 40) * 60_000).collect::<Vec<_>>(),
            )) as _,
        ),
    ])
    .unwrap()
}

/// Rollup of BYTES metrics with Pinot's value aggregators, end to end on
/// both minion paths: Theta sketches (`distinctCountThetaSketch`), HLLs
/// (`distinctCountHLL`) and `AvgPair`s (`avg`) in REALTIME segments whose
/// hours overlap are merged per hour and carrier, and each merged value is
/// checked against the rows' own ids, registers and sums. A malformed HLL
/// fails its window, naming the segment, the column and the row, and
/// nothing of that table is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_rollups_merge_like_pinots_and_a_malformed_sketch_fails_its_window() {
    let cluster = Cluster::start(1, 1);
    let schema = json!({
        "schemaName": "sk",
        "dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "users", "dataType": "BYTES"}, {"name": "visits", "dataType": "BYTES"},
                             {"name": "lat", "dataType": "BYTES"}, {"name": "n", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
    });
    // skx: in memory; sky: the bounded-memory path (its mapper threshold is
    // below one task's size); skz: one malformed HLL
    for (t, extra) in
        [("skx", json!({})), ("sky", json!({"segmentMapperFileSizeThresholdInBytes": "16384"})), ("skz", json!({}))]
    {
        let mut task = json!({"bucketTimePeriod": "1h", "bufferTimePeriod": "1h", "roundBucketTimePeriod": "1h",
            "mergeType": "rollup", "maxAttemptsPerTask": "1",
            "users.aggregationType": "distinctCountThetaSketch", "visits.aggregationType": "distinctCountHLL",
            "lat.aggregationType": "avg"});
        for (k, v) in extra.as_object().unwrap() {
            task[k] = v.clone();
        }
        let cfg = json!({"tableName": t, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
            "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}});
        cluster.add_table(t, &cfg, &schema);
    }
    // three segments: hour 0's first half, hour 0's second half with hour 1's first, hour 1's second half
    let rows = sketch_rows();
    let indexed: Vec<(usize, &SketchRow)> = rows.iter().enumerate().collect();
    let parts = [&indexed[..20], &indexed[20..60], &indexed[60..]];
    let files: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(k, p)| cluster.parquet_file(&format!("sk{k}.parquet"), &sketch_batch(p)))
        .collect();
    for t in ["skx", "sky"] {
        add_segments(&cluster, t, &files, &[]);
    }
    // skz: row 5 of its only segment holds 3 bytes where an HLL belongs
    let mut bad = sketch_batch(&indexed[..40]);
    let visits: Vec<Vec<u8>> = (0..40).map(|i| if i == 5 { vec![1, 2, 3] } else { hll_of(&[(i, 1)]) }).collect();
    let mut cols = bad.columns().to_vec();
    cols[2] = Arc::new(arrow::array::BinaryArray::from_iter_values(visits));
    bad = RecordBatch::try_new(bad.schema(), cols).unwrap();
    let f = cluster.parquet_file("skz.parquet", &bad);
    cluster.cli(&["segment", "add", "--table", "skz", "--file", f.to_str().unwrap(), "--name", "skz__0__0"]);

    // the expected groups: (hour, carrier) -> (ids, registers, sum, count, rows)
    // (hour, carrier) -> (user ids, HLL registers, AvgPair sum, AvgPair count, rows)
    type Group = (std::collections::BTreeSet<u64>, Vec<u32>, f64, i64, i64);
    let mut want: std::collections::BTreeMap<(i64, &str), Group> = Default::default();
    for r in &rows {
        let g = want.entry((r.0, r.1)).or_insert_with(|| (Default::default(), vec![0; 256], 0.0, 0, 0));
        g.0.extend(&r.2);
        for &(p, v) in &r.3 {
            g.1[p] = g.1[p].max(v);
        }
        g.2 += r.4;
        g.3 += r.5;
        g.4 += 1;
    }
    for t in ["skx", "sky"] {
        let w = cluster.wait_idle(t, Duration::from_secs(90)).await;
        assert_eq!(w.watermark_ms, T0_MS + 2 * H_MS, "{t}: {}", w.next);
        let mut got = 0;
        for b in cluster.offline_batches(t).await {
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let (carrier, users, visits, lat, n, ts) =
                (col("carrier"), col("users"), col("visits"), col("lat"), col("n"), col("ts"));
            use arrow::array::AsArray;
            for i in 0..b.num_rows() {
                let hour = (ts.as_primitive::<arrow::datatypes::Int64Type>().value(i) - T0_MS) / H_MS;
                let c = carrier.as_string::<i32>().value(i);
                let g = &want[&(hour, if c == "a" { "a" } else { "b" })];
                let theta =
                    datasketches::theta::CompactThetaSketch::deserialize(users.as_binary::<i32>().value(i)).unwrap();
                assert_eq!(
                    theta.estimate(),
                    g.0.len() as f64,
                    "{t} hour {hour} {c}: distinct users (exact below nominal entries)"
                );
                assert_eq!(
                    hll_registers(visits.as_binary::<i32>().value(i)),
                    g.1,
                    "{t} hour {hour} {c}: HLL registers"
                );
                let pair = lat.as_binary::<i32>().value(i);
                let (sum, count) = (
                    f64::from_be_bytes(pair[..8].try_into().unwrap()),
                    i64::from_be_bytes(pair[8..].try_into().unwrap()),
                );
                assert_eq!((sum, count), (g.2, g.3), "{t} hour {hour} {c}: AvgPair");
                assert_eq!(n.as_primitive::<arrow::datatypes::Int64Type>().value(i), g.4, "{t} hour {hour} {c}: rows");
                got += 1;
            }
        }
        assert_eq!(got, want.len(), "{t}: one row per hour and carrier");
    }
    let log = std::fs::read_to_string(cluster.dir.path().join(format!("{}.log", cluster.minions[0].name))).unwrap();
    let bounded: Vec<&str> = log.lines().filter(|l| l.contains("bounded-memory run done")).collect();
    assert!(bounded.iter().any(|l| l.contains("sky")) && !bounded.iter().any(|l| l.contains("skx")), "{bounded:?}");

    let t = wait_failed(&cluster, "skz", 1).await;
    assert!(
        t.error.contains("skz__0__0")
            && t.error.contains("column 'visits'")
            && t.error.contains("row 5 ")
            && t.error.contains("HyperLogLog"),
        "{}",
        t.error
    );
    assert!(cluster.offline_segments("skz").await.is_empty(), "nothing of skz is committed");
}
