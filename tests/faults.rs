//! The fault-injection suite: real etcd, two controllers and three minions
//! move three tables over 120 hourly windows each (concat: 300,000 rows;
//! rollup: 60,000 rows in 5 keys; dedup: 30,000 rows each sent twice)
//! while, in a seeded random order, minions and the leader are SIGKILLed, a
//! minion is frozen past its lease (a partition), the leader is frozen past
//! its lease while another takes over and then resumed (a stale leader:
//! its writes must all be refused), etcd is killed and restarted, committed
//! completions are reported again, the object store fails and slows reads
//! and writes, and a fourth table holds a corrupt segment. At the end it
//! checks from the OFFLINE files and metadata alone: zero lost and zero
//! duplicated rows in committed windows (rollup sums per group and dedup's
//! distinct rows computed independently), a contiguous watermark, no orphan
//! files after the janitor, every injected fault accounted for, and every
//! kind of fault landed while windows were still moving.
//!
//! `R2O_TEST_SEED` replays a run; `R2O_SOAK_SECS` injects for longer.

mod support;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use r2o_common::kv::{EtcdKv, KvBackend};
use r2o_common::meta::{LeaderRecord, LineageRecord};
use r2o_proto::controller as pb;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Cluster;

const H_MS: i64 = 3_600_000;
const T0_MS: i64 = 1_600_000_000_000 / H_MS * H_MS;
const ROWS: i64 = 300_000;
const HOURS: i64 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillMinion,
    KillLeader,
    PauseMinion,
    RestartEtcd,
    DuplicateReport,
    FreezeLeader,
}

const KINDS: [Fault; 6] = [
    Fault::KillMinion,
    Fault::KillLeader,
    Fault::PauseMinion,
    Fault::RestartEtcd,
    Fault::DuplicateReport,
    Fault::FreezeLeader,
];

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn schema() -> serde_json::Value {
    json!({
        "schemaName": "f",
        "dimensionFieldSpecs": [{"name": "id", "dataType": "LONG"}, {"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "v", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
    })
}

fn table(name: &str, merge: &str) -> serde_json::Value {
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "tableIndexConfig": {"sortedColumn": ["k"]},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
            "bucketTimePeriod": "1h", "bufferTimePeriod": "1d", "roundBucketTimePeriod": "1h",
            "mergeType": merge, "maxAttemptsPerTask": "3"}}}})
}

/// Schema of the rollup table: no id, so rows of one key and hour roll up.
fn rollup_schema() -> serde_json::Value {
    json!({
        "schemaName": "r",
        "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
        "metricFieldSpecs": [{"name": "v", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
    })
}

/// (k, v, ts) of every committed OFFLINE row of a table.
async fn offline_kv(cluster: &Cluster, table: &str) -> Vec<(String, i64, i64)> {
    let mut out = vec![];
    for b in cluster.offline_batches(table).await {
        let k = b.column_by_name("k").unwrap().as_string::<i32>().clone();
        let v = b.column_by_name("v").unwrap().as_primitive::<Int64Type>().clone();
        let ts = b.column_by_name("ts").unwrap().as_primitive::<Int64Type>().clone();
        out.extend((0..b.num_rows()).map(|i| (k.value(i).to_string(), v.value(i), ts.value(i))));
    }
    out
}

async fn offline_locations(cluster: &Cluster, table: &str) -> HashSet<String> {
    cluster.offline_segments(table).await.into_iter().map(|s| s.location).collect()
}

async fn client(
    cluster: &Cluster,
) -> Option<r2o_proto::controller::controller_service_client::ControllerServiceClient<tonic::transport::Channel>> {
    for c in &cluster.controllers {
        if let Ok(cl) = cluster.client_at(c.port).await {
            return Some(cl);
        }
    }
    None
}

/// Index in `cluster.controllers` of the current leader, from its etcd key.
async fn leader_index(cluster: &Cluster, endpoints: &[String]) -> Option<usize> {
    let kv = EtcdKv::connect(endpoints, Duration::from_secs(2), &cluster.etcd.security()).await.ok()?;
    let entry = kv.get(&format!("{}/election/leader", cluster.prefix)).await.ok().flatten()?;
    let leader: LeaderRecord = serde_json::from_slice(&entry.value).ok()?;
    cluster.controllers.iter().position(|c| leader.addr.ends_with(&format!(":{}", c.port)))
}

async fn watermark(cluster: &Cluster, table: &str) -> Option<pb::GetWatermarkResponse> {
    client(cluster)
        .await?
        .get_watermark(pb::GetWatermarkRequest { table: table.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// ids in the committed OFFLINE files of a table (from metadata and files alone).
async fn offline_ids(cluster: &Cluster, table: &str) -> (Vec<i64>, HashSet<String>) {
    let mut ids = vec![];
    for b in cluster.offline_batches(table).await {
        let col = b.column_by_name("id").unwrap().as_primitive::<Int64Type>().clone();
        ids.extend((0..col.len()).map(|i| col.value(i)));
    }
    (ids, offline_locations(cluster, table).await)
}

/// Explains a rollup mismatch hour by hour: the groups that differ, the rows
/// the hour holds, and what fr's lineage says its task read and wrote there.
async fn rollup_diff(
    cluster: &Cluster,
    endpoints: &[String],
    rows: &[(String, i64, i64)],
    want: &BTreeMap<(String, i64), i64>,
    have: &BTreeMap<(String, i64), i64>,
) -> String {
    let mut rows_per_hour: BTreeMap<i64, u64> = BTreeMap::new();
    for (_, _, ts) in rows {
        *rows_per_hour.entry(ts.div_euclid(H_MS) * H_MS).or_default() += 1;
    }
    let mut hours: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for key in want.keys().chain(have.keys()) {
        let (w, h) = (want.get(key), have.get(key));
        if w != h {
            hours.entry(key.1).or_default().push(format!("{} want {w:?} have {h:?}", key.0));
        }
    }
    let lineage: Vec<LineageRecord> =
        match EtcdKv::connect(endpoints, Duration::from_secs(5), &cluster.etcd.security()).await {
            Ok(kv) => kv
                .range(&format!("{}/lineage/fr/", cluster.prefix))
                .await
                .map(|v| v.iter().filter_map(|e| serde_json::from_slice(&e.value).ok()).collect())
                .unwrap_or_default(),
            Err(_) => vec![],
        };
    let mut out = format!(
        "{} of {} groups differ, in {} hours\n",
        hours.values().map(Vec::len).sum::<usize>(),
        want.len(),
        hours.len()
    );
    for (hour, groups) in hours.iter().take(10) {
        let hour_index = (hour - T0_MS) / H_MS;
        let rec = lineage.iter().find(|l| l.windows.iter().any(|w| w.start_ms == *hour));
        let stats = rec.and_then(|l| l.windows.iter().find(|w| w.start_ms == *hour));
        out += &format!(
            "hour {hour_index}: {} rows expected; lineage {:?}; task {:?} attempt {:?} inputs {:?}; {}\n",
            rows_per_hour.get(hour).copied().unwrap_or(0),
            stats.map(|w| (w.rows_in, w.rows_out, w.outputs)),
            rec.map(|l| &l.task_id),
            rec.map(|l| l.attempt),
            rec.map(|l| l.input_count),
            groups.join(", ")
        );
    }
    out
}

fn files_under(dir: &std::path::Path, out: &mut Vec<String>, root: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files_under(&p, out, root);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_faults() {
    let seed: u64 = std::env::var("R2O_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("faults seed {seed} (replay with R2O_TEST_SEED={seed})");
    let soak = Duration::from_secs(std::env::var("R2O_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0));
    let mut rng = StdRng::seed_from_u64(seed);
    let env = vec![
        (
            "R2O_FAULT_STORE".to_string(),
            format!("read_error_rate=0.05,write_error_rate=0.05,latency_ms=30,seed={seed}"),
        ),
        // one window per task: many tasks in flight, stagings and ordered commits for the
        // faults to hit, and a flow that lasts while they land
        ("R2O_TASK_MAX_WINDOWS".to_string(), "1".to_string()),
        ("R2O_JANITOR_INTERVAL_SECS".to_string(), "1".to_string()),
        ("R2O_JANITOR_GRACE_SECS".to_string(), "3".to_string()),
    ];
    let mut cluster = Cluster::start_with(2, 3, env);
    let d = cluster.dir.path().to_path_buf();
    std::fs::write(d.join("schema.json"), schema().to_string()).unwrap();
    std::fs::write(d.join("rollup-schema.json"), rollup_schema().to_string()).unwrap();
    for (t, merge, schema_file) in [
        ("fa", "concat", "schema.json"),
        ("fb", "concat", "schema.json"),
        ("fr", "rollup", "rollup-schema.json"),
        ("fd", "dedup", "schema.json"),
    ] {
        std::fs::write(d.join(format!("{t}.json")), table(t, merge).to_string()).unwrap();
        cluster.cli(&[
            "table",
            "add",
            "--config",
            d.join(format!("{t}.json")).to_str().unwrap(),
            "--schema",
            d.join(schema_file).to_str().unwrap(),
        ]);
    }
    // table fa: 300,000 rows with unique ids over 120 hours
    let mut ts: Vec<i64> = (0..ROWS).map(|_| T0_MS + rng.random_range(0..HOURS * H_MS)).collect();
    ts.sort();
    let keys = ["AA", "UA", "DL", "B6", "WN"];
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from((0..ROWS).collect::<Vec<_>>())) as _),
        ("k", Arc::new(StringArray::from((0..ROWS).map(|i| keys[(i % 5) as usize]).collect::<Vec<_>>())) as _),
        ("v", Arc::new(Int64Array::from((0..ROWS).map(|i| i % 97).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from(ts.clone())) as _),
    ])
    .unwrap();
    let fa_file = d.join("fa.parquet");
    write_parquet(&fa_file, &batch);
    cluster.cli(&["ingest", "--table", "fa", "--file", fa_file.to_str().unwrap(), "--rows-per-segment", "10000"]);
    // fa's last segment stays CONSUMING (its last window waits) until every
    // kind of fault has landed: on a fast machine the flow would otherwise
    // finish before the last kind's turn
    // table fr: 60,000 rows of 5 keys (rolled up per key and hour); fd: 30,000 rows, each twice
    let fr_rows: Vec<(String, i64, i64)> = (0..60_000i64)
        .map(|i| (keys[(i % 5) as usize].to_string(), i % 13 - 3, T0_MS + rng.random_range(0..HOURS * H_MS)))
        .collect();
    let fr_batch = RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from(fr_rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())) as _),
        ("v", Arc::new(Int64Array::from(fr_rows.iter().map(|r| r.1).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from(fr_rows.iter().map(|r| r.2).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    let fd_ids: Vec<i64> = (0..60_000i64).map(|i| i % 30_000).collect();
    let fd_ts: Vec<i64> = (0..30_000).map(|_| T0_MS + rng.random_range(0..HOURS * H_MS)).collect();
    let fd_batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(fd_ids.clone())) as _),
        ("k", Arc::new(StringArray::from(fd_ids.iter().map(|i| keys[(*i % 5) as usize]).collect::<Vec<_>>())) as _),
        ("v", Arc::new(Int64Array::from(fd_ids.iter().map(|i| i % 7).collect::<Vec<_>>())) as _),
        ("ts", Arc::new(Int64Array::from(fd_ids.iter().map(|i| fd_ts[*i as usize]).collect::<Vec<_>>())) as _),
    ])
    .unwrap();
    for (t, b) in [("fr", &fr_batch), ("fd", &fd_batch)] {
        let f = d.join(format!("{t}.parquet"));
        write_parquet(&f, b);
        cluster.cli(&[
            "ingest",
            "--table",
            t,
            "--file",
            f.to_str().unwrap(),
            "--rows-per-segment",
            "5000",
            "--seal-last",
        ]);
    }
    // table fb: three hourly segments, the middle one corrupt
    for h in 0..3i64 {
        let b = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![h])) as _),
            ("k", Arc::new(StringArray::from(vec!["AA"])) as _),
            ("v", Arc::new(Int64Array::from(vec![1])) as _),
            ("ts", Arc::new(Int64Array::from(vec![T0_MS + h * H_MS + 1])) as _),
        ])
        .unwrap();
        let f = d.join(format!("fb{h}.parquet"));
        write_parquet(&f, &b);
        cluster.cli(&[
            "segment",
            "add",
            "--table",
            "fb",
            "--file",
            f.to_str().unwrap(),
            "--status",
            "CONSUMING",
            "--name",
            &format!("fb__0__{h}"),
        ]);
    }
    std::fs::write(cluster.segment_file("fb", "fb__0__1").await, b"PAR1 corrupt PAR1").unwrap();
    for h in 0..3 {
        cluster.cli(&["segment", "seal", "--table", "fb", "--segment", &format!("fb__0__{h}")]);
    }

    // inject faults while fa moves
    let final_wm = T0_MS + HOURS * H_MS;
    let kv_endpoint = vec![cluster.etcd.endpoint.clone()];
    let mut injected: BTreeMap<Fault, u32> = BTreeMap::new();
    // faults injected while some table still had windows to move
    let mut while_moving: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut plan: Vec<Fault> = KINDS.to_vec();
    plan.shuffle(&mut rng);
    let start = Instant::now();
    let mut n = 0usize;
    let mut fa_sealed = false;
    loop {
        if !fa_sealed && KINDS.iter().all(|k| while_moving.contains_key(k)) {
            // (through the CLI: a controller may be between leaders; then try again)
            let listed = cluster.cli_raw(&["segment", "list", "--table", "fa", "--output", "json"]);
            let segs: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap_or_default();
            let tail = segs.iter().find(|s| s["status"] == "CONSUMING").and_then(|s| s["segmentName"].as_str());
            if let Some(name) = tail {
                let out = cluster.cli_raw(&["segment", "seal", "--table", "fa", "--segment", name, "--end-of-stream"]);
                fa_sealed = out.status.success();
            }
        }
        let mut wm = i64::MAX;
        for t in ["fa", "fr", "fd"] {
            wm = wm.min(watermark(&cluster, t).await.map(|w| w.watermark_ms).unwrap_or(0));
        }
        let all_kinds = KINDS.iter().all(|k| injected.contains_key(k));
        if (wm >= final_wm && all_kinds && start.elapsed() >= soak) || start.elapsed() > Duration::from_secs(300) + soak
        {
            break;
        }
        let fault = plan.get(n).copied().unwrap_or_else(|| KINDS[rng.random_range(0..KINDS.len())]);
        n += 1;
        let done = match fault {
            Fault::KillMinion => {
                let i = rng.random_range(0..cluster.minions.len());
                cluster.kill_and_replace_minion(i);
                true
            }
            Fault::KillLeader => match leader_index(&cluster, &kv_endpoint).await {
                Some(i) => {
                    cluster.kill_and_replace_controller(i);
                    true
                }
                None => false,
            },
            Fault::PauseMinion => {
                let i = rng.random_range(0..cluster.minions.len());
                let pid = cluster.minions[i].child.id();
                Cluster::signal(pid, "STOP");
                tokio::time::sleep(Duration::from_millis(4500)).await; // past the 3 s lease
                Cluster::signal(pid, "CONT");
                true
            }
            Fault::FreezeLeader => match leader_index(&cluster, &kv_endpoint).await {
                // a stale leader: frozen past its lease, a standby takes over and commits,
                // then the old one resumes believing it leads until its renewal fails
                Some(i) => {
                    let pid = cluster.controllers[i].child.id();
                    Cluster::signal(pid, "STOP");
                    tokio::time::sleep(Duration::from_millis(5500)).await;
                    Cluster::signal(pid, "CONT");
                    true
                }
                None => false,
            },
            Fault::RestartEtcd => {
                cluster.restart_etcd(Duration::from_millis(rng.random_range(200..1500)));
                true
            }
            Fault::DuplicateReport => {
                let mut ok = false;
                // to the leader (a standby answers UNAVAILABLE, which proves nothing)
                let leader = match leader_index(&cluster, &kv_endpoint).await {
                    Some(i) => {
                        let port = cluster.controllers[i].port;
                        // reads as the admin, reports as a minion (the role CompleteTask needs)
                        match (cluster.client_at(port).await, cluster.client_as(port, "minion").await) {
                            (Ok(a), Ok(m)) => Some((a, m)),
                            _ => None,
                        }
                    }
                    None => None,
                };
                if let Some((mut c, mut minion)) = leader {
                    if let Ok(tasks) = c.list_tasks(pb::ListTasksRequest { table: "fa".into() }).await {
                        let done: Vec<pb::Task> =
                            tasks.into_inner().tasks.into_iter().filter(|t| t.state == "SUCCEEDED").collect();
                        if let Some(t) = done.get(rng.random_range(0..done.len().max(1))) {
                            let req = pb::CompleteTaskRequest {
                                task_id: t.id.clone(),
                                attempt: t.attempt,
                                minion_id: t.minion.clone(),
                                ..Default::default()
                            };
                            // any controller: the leader answers "already committed"; a standby, UNAVAILABLE
                            match minion.complete_task(req).await {
                                Ok(r) => {
                                    assert!(!r.into_inner().committed, "a duplicate report committed twice");
                                    ok = true;
                                }
                                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "duplicate report: {s:?}"),
                            }
                        }
                    }
                }
                ok
            }
        };
        if done {
            *injected.entry(fault).or_default() += 1;
            if wm < final_wm {
                *while_moving.entry(fault).or_default() += 1;
            }
            eprintln!("fault {n}: {fault:?} at {:.1}s", start.elapsed().as_secs_f64());
        } else if !while_moving.contains_key(&fault) {
            // could not land yet (no leader, nothing committed to report again): try again soon
            plan.insert(n.min(plan.len()), fault);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
    }

    // let it settle, then let the janitor sweep
    let start_wait = Instant::now();
    let mut settled = BTreeMap::new();
    for t in ["fa", "fr", "fd"] {
        let w = loop {
            if let Some(w) = watermark(&cluster, t).await {
                if w.idle {
                    break w;
                }
            }
            assert!(
                start_wait.elapsed() < Duration::from_secs(240),
                "{t} did not settle; logs in {}",
                cluster.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(w.watermark_ms, final_wm, "{t} caught up: {}", w.next);
        settled.insert(t, w);
    }

    // rows: zero lost, zero duplicated
    let (ids, locations) = offline_ids(&cluster, "fa").await;
    let unique: HashSet<i64> = ids.iter().copied().collect();
    let duplicated = ids.len() - unique.len();
    let lost = (0..ROWS).filter(|i| !unique.contains(i)).count();
    assert_eq!((lost, duplicated), (0, 0), "lost and duplicated rows");
    assert_eq!(ids.len() as i64, ROWS);
    // readers that are not r2o see the same tables through their Delta logs
    for t in ["fa", "fr", "fd"] {
        if let Err(e) = cluster.check_delta(t).await {
            panic!("{e}; logs in {}", cluster.dir.path().display());
        }
    }

    // rollup: per key and hour, the sum computed directly; each group once
    let mut want: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (k, v, ts) in &fr_rows {
        *want.entry((k.clone(), ts.div_euclid(H_MS) * H_MS)).or_default() += v;
    }
    let got = offline_kv(&cluster, "fr").await;
    let mut have: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (k, v, ts) in &got {
        assert!(have.insert((k.clone(), *ts), *v).is_none(), "rollup group ({k}, {ts}) appears twice");
    }
    if have != want {
        panic!("rollup groups and sums differ:\n{}", rollup_diff(&cluster, &kv_endpoint, &fr_rows, &want, &have).await);
    }
    // dedup: every distinct row exactly once
    let (fd_out, fd_locations) = offline_ids(&cluster, "fd").await;
    let fd_unique: HashSet<i64> = fd_out.iter().copied().collect();
    assert_eq!((fd_out.len(), fd_unique.len()), (30_000, 30_000), "dedup keeps each distinct row once");
    let fr_locations = offline_locations(&cluster, "fr").await;

    // the watermark is contiguous: lineage windows follow each other
    let kv = EtcdKv::connect(&kv_endpoint, Duration::from_secs(5), &cluster.etcd.security()).await.unwrap();
    let lineage: Vec<LineageRecord> = kv
        .range(&format!("{}/lineage/fa/", cluster.prefix))
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice(&e.value).unwrap())
        .collect();
    // one record per committed task, each starting where the previous ended; every hour in one window
    let windows: Vec<i64> = lineage.iter().flat_map(|l| l.windows.iter().map(|w| w.start_ms)).collect();
    assert_eq!(windows, (0..HOURS).map(|h| T0_MS + h * H_MS).collect::<Vec<_>>(), "every window once, in order");
    for pair in lineage.windows(2) {
        assert_eq!(pair[1].from_ms, Some(pair[0].window_end_ms), "tasks follow each other with no gap");
    }
    for l in &lineage {
        assert!(l.windows.iter().all(|w| w.end_ms == w.start_ms + H_MS));
        assert_eq!(l.windows.iter().map(|w| w.rows_out).sum::<u64>(), l.rows_out);
    }

    // the poisoned table failed visibly and holds its watermark
    let wb = watermark(&cluster, "fb").await.unwrap();
    assert_eq!(wb.watermark_ms, T0_MS + H_MS, "fb stops before the corrupt window: {}", wb.next);
    let tb = client(&cluster)
        .await
        .unwrap()
        .list_tasks(pb::ListTasksRequest { table: "fb".into() })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    // FAILED after its attempts; or, when the suite ran past the round backoff,
    // re-armed for a new round after failing all three
    let failed = tb
        .iter()
        .find(|t| {
            t.window_start_ms == T0_MS + H_MS
                && (t.state == "FAILED" || (t.state != "SUCCEEDED" && t.errors.len() >= 3))
        })
        .unwrap_or_else(|| panic!("fb's corrupt window has a FAILED (or failed and re-armed) task: {tb:?}"));
    // (a later attempt may have ended with its minion killed by the suite)
    assert!(
        failed.errors.iter().any(|e| e.contains("fb__0__1")),
        "an error names the corrupt segment: {:?}",
        failed.errors
    );

    // no orphans once the janitor has run: every staged file is committed
    let (_, fb_locations) = offline_ids(&cluster, "fb").await;
    // (the install's files live under `store/<namespace>/offline/`; a file a
    // table's Delta log ever added stays for its readers' time travel)
    let root = cluster.dir.path().join("store");
    let offline_dirs: Vec<std::path::PathBuf> =
        std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path().join("offline")).filter(|d| d.is_dir()).collect();
    assert!(!offline_dirs.is_empty(), "no offline directory under {}", root.display());
    let committed: HashSet<String> = [&locations, &fb_locations, &fd_locations, &fr_locations]
        .iter()
        .flat_map(|set| set.iter().map(|l| r2o_common::store::canonical_path(l)))
        .collect();
    // a task STAGED behind fb's failed window keeps its outputs for its commit
    let mut staged = vec![];
    for t in ["fa", "fb", "fd", "fr"] {
        let tasks = client(&cluster)
            .await
            .unwrap()
            .list_tasks(pb::ListTasksRequest { table: t.into() })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        staged
            .extend(tasks.iter().filter(|t| t.state == "STAGED").map(|t| format!("/{}/attempt-{}/", t.id, t.attempt)));
    }
    let mut orphans = vec![];
    for _ in 0..40 {
        let mut files = vec![];
        let mut logged: HashSet<String> = HashSet::new();
        for d in &offline_dirs {
            files_under(d, &mut files, &root);
            for t in std::fs::read_dir(d).unwrap().flatten() {
                for v in support::delta_versions(&t.path()).into_values() {
                    for a in v.adds {
                        logged.insert(t.path().join(a).strip_prefix(&root).unwrap().to_string_lossy().into_owned());
                    }
                }
            }
        }
        assert!(files.iter().any(|f| committed.contains(f)), "the listing holds the committed files: {files:?}");
        let live = |f: &String| {
            committed.contains(f)
                || logged.contains(f)
                || f.contains("/_delta_log/")
                || staged.iter().any(|p| f.contains(p.as_str()))
        };
        orphans = files.into_iter().filter(|f| !live(f)).collect();
        if orphans.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(orphans.is_empty(), "orphans left after the janitor: {orphans:?}");

    // every injected fault accounted for: store faults from the processes' logs
    let mut store_faults = 0;
    let mut janitor_deleted = 0;
    for e in std::fs::read_dir(cluster.dir.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") && !name.starts_with("etcd") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            store_faults += text.matches("injected store fault").count();
            janitor_deleted += text.matches("janitor deleted an orphaned object").count();
        }
    }
    for k in KINDS {
        assert!(injected.get(&k).copied().unwrap_or(0) > 0, "no {k:?} fault was injected");
        assert!(
            while_moving.get(&k).copied().unwrap_or(0) > 0,
            "no {k:?} fault landed while windows were moving: {while_moving:?}"
        );
    }
    assert!(store_faults > 0, "no store fault was injected");
    let line = format!(
        "faults: seed {seed}; injected {} CorruptSegment=1 ({} while windows moved); store faults {store_faults}; windows committed {} (concat, rollup, dedup); rows checked {}; lost {lost}; duplicated {duplicated}; orphans deleted by the janitor {janitor_deleted}",
        injected.iter().map(|(k, v)| format!("{k:?}={v}")).collect::<Vec<_>>().join(" "),
        while_moving.values().sum::<u32>(),
        settled.values().map(|w| w.windows_committed).sum::<u64>(),
        ids.len() + got.len() + fd_out.len()
    );
    println!("{line}");
    // cargo test hides a passing test's output: leave the figures where the test script prints them
    let summary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/faults-summary.txt");
    let _ = std::fs::write(summary, format!("{line}\n"));
}
