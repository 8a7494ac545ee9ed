//! The randomized history test (issue 19): real etcd, two controllers and
//! three minions on default task budgets (multi-window tasks, windows split
//! into sub-tasks by input and by hash). Each seed draws a sequence of
//! operations on two tables of its own (concat, and dedup whose every row
//! arrives twice): segments in order, out of order and late (behind the
//! watermark), a CONSUMING segment sealed later, windows past the task
//! budget, discovered files appearing in a watched directory, pause and
//! resume, `reset --mode append` and `--mode flush`, an allowed `table
//! update`, leader kill, a leader frozen past its lease, minion kill and an
//! etcd restart.
//!
//! The checker is a model in this file, not r2o's code: every row has an id,
//! and the expected OFFLINE table is every registered row exactly once. At
//! checkpoints it reads what `segment list` names (and the files) and
//! checks that no id is there twice, that no id is there that was never
//! registered, that every OFFLINE segment lies in one window, and that the
//! watermark never moves back (but for a flush, which rebuilds the table).
//! At the end, with faults stopped, every row must arrive within a bound
//! ("wedged" otherwise), and each table's Delta log must hold exactly its
//! committed files, each added once (`Cluster::check_delta`). It prints one
//! line: `history: seeds N, operations N, lost 0, duplicated 0, wedged 0,
//! delta logs differing 0`, and on a failure the seed and the operation
//! sequence.
//!
//! `R2O_HISTORY_SEEDS=N` runs N seeds from 1 (default 3), or from
//! `R2O_HISTORY_FROM`; `R2O_HISTORY_SEED=S` runs seed S alone.

mod support;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use r2o_common::kv::KvBackend;
use r2o_common::meta::LeaderRecord;
use r2o_proto::controller as pb;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Cluster;

const H_MS: i64 = 3_600_000;
const T0_MS: i64 = 1_600_000_000_000 / H_MS * H_MS;
/// Operations per seed.
const OPS: usize = 28;
/// How long every row has, once faults stop, to reach OFFLINE.
const SETTLE: Duration = Duration::from_secs(120);

/// The tables' schema; `k` is `notNull` until an operator relaxes it to
/// release a poisoned window (a NULL `k` fails its window's staged-data check).
fn schema(k_not_null: bool) -> serde_json::Value {
    json!({
        "schemaName": "h",
        "dimensionFieldSpecs": [{"name": "id", "dataType": "LONG"}, {"name": "k", "dataType": "STRING", "notNull": k_not_null}],
        "metricFieldSpecs": [{"name": "v", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
    })
}

/// A table of the test: hourly windows, a task budget of 400 rows (so
/// bigger windows split and small ones batch), discovery from `landing`.
fn table(name: &str, merge: &str, landing: &std::path::Path, records_per_segment: u64) -> serde_json::Value {
    json!({"tableName": name, "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
        "tableIndexConfig": {"sortedColumn": ["k"]},
        "ingestionConfig": {"batchIngestionConfig": {"batchConfigMaps": [{
            "inputDirURI": format!("file://{}", landing.display()),
            "includeFileNamePattern": "glob:**/*.parquet", "inputFormat": "parquet"}]}},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
            "bucketTimePeriod": "1h", "bufferTimePeriod": "1h", "mergeType": merge,
            "maxNumRecordsPerTask": "400", "maxAttemptsPerTask": "3",
            "maxNumRecordsPerSegment": records_per_segment.to_string()}}}})
}

/// Rows `(id, ts)`; `k` is NULL in the first row when `poison`.
fn batch(rows: &[(i64, i64)], poison: bool) -> RecordBatch {
    let k: Vec<Option<String>> =
        rows.iter().enumerate().map(|(i, r)| (!(poison && i == 0)).then(|| format!("k{}", r.0 % 5))).collect();
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())) as _),
        ("k", Arc::new(StringArray::from(k)) as _),
        ("v", Arc::new(Int64Array::from(vec![1i64; rows.len()])) as _),
        ("ts", Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())) as _),
    ])
    .unwrap()
}

/// One drawn operation, as printed on a failure.
#[derive(Debug, Clone)]
enum Op {
    /// `n` rows in hour `hour` (in order, out of order or late), as a
    /// segment (CONSUMING when `consuming`) or a discovered file.
    Add {
        hour: i64,
        n: i64,
        consuming: bool,
        discovered: bool,
    },
    /// Several segments in one hour: the window passes the task budget.
    Big {
        hour: i64,
    },
    /// A segment with a NULL in `notNull` column `k`: its window fails (and,
    /// batched with others, is isolated) until the operator relaxes the
    /// schema at the end (pause, `reset --mode append`, update, resume).
    Poison {
        hour: i64,
    },
    /// Eight new windows made ready at once (several tasks in flight), then a
    /// segment landing in the last of them while its task runs: a task that
    /// is not the first in flight is superseded.
    Burst {
        hour: i64,
    },
    Seal,
    /// Pause the flows, or resume them when paused.
    Pause,
    ResetAppend,
    ResetFlush,
    Update,
    KillLeader,
    FreezeLeader,
    KillMinion(usize),
    RestartEtcd,
}

fn draw(rng: &mut StdRng, front: i64) -> Op {
    match rng.random_range(0..100) {
        0..=29 => Op::Add { hour: front, n: rng.random_range(20..120), consuming: false, discovered: false },
        30..=37 => Op::Add {
            hour: front + rng.random_range(1..4),
            n: rng.random_range(10..60),
            consuming: false,
            discovered: false,
        },
        38..=49 => Op::Add {
            hour: rng.random_range(0..front.max(1)),
            n: rng.random_range(5..40),
            consuming: false,
            discovered: false,
        },
        50..=55 => Op::Add { hour: front, n: rng.random_range(10..50), consuming: true, discovered: false },
        56..=61 => Op::Add {
            hour: rng.random_range(0..front + 2),
            n: rng.random_range(10..60),
            consuming: false,
            discovered: true,
        },
        62..=63 => Op::Big { hour: front },
        64..=66 => Op::Burst { hour: front },
        67..=68 => Op::Poison { hour: rng.random_range(0..front + 2) },
        69..=71 => Op::Seal,
        72..=75 => Op::Pause,
        76..=78 => Op::ResetAppend,
        79..=80 => Op::ResetFlush,
        81..=82 => Op::Update,
        83..=87 => Op::KillLeader,
        88..=90 => Op::FreezeLeader,
        91..=96 => Op::KillMinion(rng.random_range(0..3)),
        _ => Op::RestartEtcd,
    }
}

/// What one table of a seed should hold: every registered row's id, with
/// how many copies were registered (dedup: 2 per id).
struct Model {
    table: String,
    /// id -> hour of its row (every id registered, in REALTIME or a file).
    ids: BTreeMap<i64, i64>,
    /// CONSUMING segments not sealed yet.
    consuming: Vec<String>,
    last_watermark: i64,
    dedup: bool,
    /// A poison segment was registered: the end releases it.
    poisoned: bool,
}

#[derive(Default)]
struct Tally {
    /// Rows the final check expected (each seed's tables).
    rows_checked: usize,
    lost: usize,
    duplicated: usize,
    wedged: usize,
    phantom: usize,
    outside_window: usize,
    watermark_back: usize,
    /// Tables whose Delta log did not hold exactly the committed files.
    delta: usize,
}

struct Run {
    cluster: Cluster,
    landing: std::path::PathBuf,
    next_id: i64,
    file_no: usize,
    log: Vec<String>,
}

impl Run {
    /// The CLI, retried while the cluster is busy failing over (etcd down, a
    /// leader changing): `Ok(stdout)`, or `Err(stderr)` of the last try.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..40 {
            let out = self.cluster.cli_raw(args);
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if last.contains("already exists") || last.contains("ALREADY_EXISTS") {
                return Ok(String::new()); // an earlier try went through
            }
            if last.contains("in flight") {
                return Err(last); // the caller waits for them
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last)
    }

    fn rows(&mut self, hour: i64, n: i64) -> Vec<(i64, i64)> {
        (0..n)
            .map(|i| {
                self.next_id += 1;
                (self.next_id, T0_MS + hour * H_MS + (i * 997 % (H_MS / 1000)) * 1000)
            })
            .collect()
    }

    /// Registers `rows` as segment `name` of `model`'s table (twice, in two
    /// segments, for dedup); `consuming` registers it CONSUMING.
    fn add(&mut self, model: &mut Model, name: &str, rows: &[(i64, i64)], consuming: bool, poison: bool) {
        let copies = if model.dedup { 2 } else { 1 };
        for c in 0..copies {
            let seg = format!("{name}-{c}");
            let f = self.cluster.parquet_file(&format!("{}-{seg}.parquet", model.table), &batch(rows, poison));
            let mut args =
                vec!["segment", "add", "--table", &model.table, "--file", f.to_str().unwrap(), "--name", &seg];
            if consuming {
                args.extend(["--status", "CONSUMING"]);
            }
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.cli(&args).unwrap_or_else(|e| panic!("segment add {seg}: {e}"));
            if consuming {
                model.consuming.push(seg);
            }
        }
        for r in rows {
            model.ids.insert(r.0, (r.1 - T0_MS).div_euclid(H_MS));
        }
    }

    /// Writes `rows` as a file in the table's landing directory (twice for
    /// dedup), written aside and renamed in, as a sink would.
    fn discover(&mut self, model: &mut Model, rows: &[(i64, i64)]) {
        let copies = if model.dedup { 2 } else { 1 };
        for _ in 0..copies {
            self.file_no += 1;
            let dir = self.landing.join(&model.table).join(format!("p{}", self.file_no % 3));
            std::fs::create_dir_all(&dir).unwrap();
            let tmp = dir.join(format!(".f{}.tmp", self.file_no));
            support::write_parquet(&tmp, &batch(rows, false));
            std::fs::rename(&tmp, dir.join(format!("f{}.parquet", self.file_no))).unwrap();
        }
        for r in rows {
            model.ids.insert(r.0, (r.1 - T0_MS).div_euclid(H_MS));
        }
    }

    async fn leader(&self) -> Option<usize> {
        let kv = self.cluster.etcd.kv(Duration::from_secs(2)).await.ok()?;
        let entry = kv.get(&format!("{}/election/leader", self.cluster.prefix)).await.ok().flatten()?;
        let leader: LeaderRecord = serde_json::from_slice(&entry.value).ok()?;
        self.cluster.controllers.iter().position(|c| leader.addr.ends_with(&format!(":{}", c.port)))
    }

    /// A client to a controller that answers.
    async fn client(
        &self,
    ) -> Option<r2o_proto::controller::controller_service_client::ControllerServiceClient<tonic::transport::Channel>>
    {
        for c in &self.cluster.controllers {
            if let Ok(Ok(cl)) = tokio::time::timeout(Duration::from_secs(2), self.cluster.client_at(c.port)).await {
                return Some(cl);
            }
        }
        None
    }

    /// What `segment list` names as the table's OFFLINE segments, and their
    /// rows (id, ts) read from the files; `None` while the cluster cannot
    /// answer or a listed file went meanwhile (read again).
    async fn offline(&self, table: &str) -> Option<(Vec<pb::Segment>, Vec<(i64, i64)>)> {
        let mut c = self.client().await?;
        let req = pb::ListSegmentsRequest { table: table.into(), ..Default::default() };
        let segs = tokio::time::timeout(Duration::from_secs(10), c.list_segments(req)).await.ok()?.ok()?.into_inner();
        let offline: Vec<pb::Segment> = segs.segments.into_iter().filter(|s| s.table.ends_with("_OFFLINE")).collect();
        let mut rows = vec![];
        for s in &offline {
            let f = std::fs::File::open(self.cluster.store_path(&s.location)).ok()?;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).ok()?.build().ok()?;
            for b in reader {
                let b = b.ok()?;
                let id = b.column_by_name("id")?.as_primitive::<Int64Type>().clone();
                let ts = b.column_by_name("ts")?.as_primitive::<Int64Type>().clone();
                rows.extend((0..b.num_rows()).map(|i| (id.value(i), ts.value(i))));
            }
        }
        Some((offline, rows))
    }

    async fn watermark(&self, table: &str) -> Option<pb::GetWatermarkResponse> {
        let mut c = self.client().await?;
        let req = pb::GetWatermarkRequest { table: table.into() };
        tokio::time::timeout(Duration::from_secs(10), c.get_watermark(req)).await.ok()?.ok().map(|r| r.into_inner())
    }

    /// Checks what must hold at any time; adds to `tally`. Returns the ids
    /// that OFFLINE holds (with their counts).
    async fn checkpoint(&self, m: &mut Model, tally: &mut Tally) -> Option<HashMap<i64, usize>> {
        let (segments, rows) = self.offline(&m.table).await?;
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for (id, ts) in &rows {
            *counts.entry(*id).or_default() += 1;
            if m.ids.get(id) != Some(&(ts - T0_MS).div_euclid(H_MS)) {
                tally.phantom += 1;
            }
        }
        let dup = counts.values().filter(|c| **c > 1).count();
        if dup > 0 {
            tally.duplicated += dup;
        }
        for s in &segments {
            if (s.start_time_ms - T0_MS).div_euclid(H_MS) != (s.end_time_ms - T0_MS).div_euclid(H_MS) {
                tally.outside_window += 1;
            }
        }
        if let Some(w) = self.watermark(&m.table).await {
            if w.exists {
                if w.watermark_ms < m.last_watermark {
                    tally.watermark_back += 1;
                }
                m.last_watermark = w.watermark_ms;
            }
        }
        Some(counts)
    }
}

/// Runs one seed on `run`'s cluster; returns the operations it did.
async fn seed(run: &mut Run, seed: u64, tally: &mut Tally) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut models: Vec<Model> = ["c", "d"]
        .iter()
        .map(|kind| Model {
            table: format!("h{seed}{kind}"),
            ids: BTreeMap::new(),
            consuming: vec![],
            last_watermark: i64::MIN,
            dedup: *kind == "d",
            poisoned: false,
        })
        .collect();
    for m in &models {
        let landing = run.landing.join(&m.table);
        std::fs::create_dir_all(&landing).unwrap();
        let config = table(&m.table, if m.dedup { "dedup" } else { "concat" }, &landing, 5_000_000);
        run.cluster.add_table(&m.table, &config, &schema(true));
    }
    let mut front = 0i64;
    let mut paused = false;
    let mut ops = 0;
    for step in 0..OPS {
        let op = draw(&mut rng, front);
        run.log.push(format!("seed {seed} op {step}: {op:?}"));
        ops += 1;
        let k = rng.random_range(0..models.len());
        match op.clone() {
            Op::Add { hour, n, consuming, discovered } => {
                let rows = run.rows(hour, n);
                let name = format!("s{step}");
                if discovered {
                    run.discover(&mut models[k], &rows);
                } else {
                    run.add(&mut models[k], &name, &rows, consuming, false);
                }
                front = front.max(hour + 1);
            }
            Op::Big { hour } => {
                for part in 0..5 {
                    let rows = run.rows(hour, 100);
                    run.add(&mut models[k], &format!("b{step}-{part}"), &rows, false, false);
                }
                front = front.max(hour + 1);
            }
            Op::Burst { hour } => {
                if !paused {
                    run.cli(&["pause", "--table", &models[k].table]).unwrap();
                }
                for h in 0..8 {
                    let rows = run.rows(hour + h, 100);
                    run.add(&mut models[k], &format!("u{step}-{h}"), &rows, false, false);
                }
                if !paused {
                    run.cli(&["resume", "--table", &models[k].table]).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
                let rows = run.rows(hour + 7, 10);
                run.add(&mut models[k], &format!("u{step}-x"), &rows, false, false);
                front = front.max(hour + 8);
            }
            Op::Poison { hour } => {
                let rows = run.rows(hour, 5);
                run.add(&mut models[k], &format!("p{step}"), &rows, false, true);
                models[k].poisoned = true;
                front = front.max(hour + 1);
            }
            Op::Seal => {
                for m in models.iter_mut() {
                    for seg in std::mem::take(&mut m.consuming) {
                        run.cli(&["segment", "seal", "--table", &m.table, "--segment", &seg]).unwrap();
                    }
                }
            }
            Op::Pause => {
                let verb = if paused { "resume" } else { "pause" };
                for m in &models {
                    run.cli(&[verb, "--table", &m.table]).unwrap();
                }
                paused = !paused;
            }
            Op::ResetAppend => {
                run.cli(&["reset", "--table", &models[k].table, "--mode", "append"]).unwrap();
            }
            Op::ResetFlush => {
                run.cli(&["reset", "--table", &models[k].table, "--mode", "flush", "--yes"]).unwrap();
                models[k].last_watermark = i64::MIN; // a flush rebuilds the table from the start
            }
            Op::Update => {
                // an allowed change (a paused flow, nothing in flight): smaller OFFLINE segments
                let m = &models[k];
                if !paused {
                    run.cli(&["pause", "--table", &m.table]).unwrap();
                }
                let landing = run.landing.join(&m.table);
                let config = table(&m.table, if m.dedup { "dedup" } else { "concat" }, &landing, 50);
                let (c, s) = (run.cluster.dir.path().join("u.json"), run.cluster.dir.path().join("us.json"));
                std::fs::write(&c, config.to_string()).unwrap();
                std::fs::write(&s, schema(!m.poisoned).to_string()).unwrap();
                let args = ["table", "update", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()];
                let start = Instant::now();
                while let Err(e) = run.cli(&args) {
                    // refused while tasks are in flight: they drain while paused
                    // (a poisoned window's FAILED task does not: the operator
                    // abandons it, and the update relaxes notNull)
                    assert!(e.contains("in flight") && start.elapsed() < Duration::from_secs(60), "update: {e}");
                    if m.poisoned && start.elapsed() > Duration::from_secs(5) {
                        run.cli(&["reset", "--table", &m.table, "--mode", "append"]).unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                if !paused {
                    run.cli(&["resume", "--table", &m.table]).unwrap();
                }
            }
            Op::KillLeader => {
                let i = run.leader().await.unwrap_or(0);
                run.cluster.kill_and_replace_controller(i);
            }
            Op::FreezeLeader => {
                if let Some(i) = run.leader().await {
                    let pid = run.cluster.controllers[i].child.id();
                    Cluster::signal(pid, "STOP");
                    tokio::time::sleep(Duration::from_secs(5)).await; // past its 3 s lease
                    Cluster::signal(pid, "CONT");
                }
            }
            Op::KillMinion(i) => run.cluster.kill_and_replace_minion(i),
            Op::RestartEtcd => run.cluster.restart_etcd(Duration::from_millis(500)),
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        if step % 7 == 6 {
            for m in models.iter_mut() {
                run.checkpoint(m, tally).await;
            }
        }
    }
    // faults stop: everything sealed, flows resumed; every row must arrive
    for m in models.iter_mut() {
        for seg in std::mem::take(&mut m.consuming) {
            run.cli(&["segment", "seal", "--table", &m.table, "--segment", &seg]).unwrap();
        }
        if m.poisoned {
            // the operator releases the poisoned window: abandon what is in
            // flight, relax the schema (`notNull` of k), go on
            if !paused {
                run.cli(&["pause", "--table", &m.table]).unwrap();
            }
            run.cli(&["reset", "--table", &m.table, "--mode", "append"]).unwrap();
            let landing = run.landing.join(&m.table);
            let config = table(&m.table, if m.dedup { "dedup" } else { "concat" }, &landing, 5_000_000);
            let (c, s) = (run.cluster.dir.path().join("r.json"), run.cluster.dir.path().join("rs.json"));
            std::fs::write(&c, config.to_string()).unwrap();
            std::fs::write(&s, schema(false).to_string()).unwrap();
            let args = ["table", "update", "--config", c.to_str().unwrap(), "--schema", s.to_str().unwrap()];
            let start = Instant::now();
            while let Err(e) = run.cli(&args) {
                assert!(e.contains("in flight") && start.elapsed() < Duration::from_secs(60), "update: {e}");
                run.cli(&["reset", "--table", &m.table, "--mode", "append"]).unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            run.cli(&["resume", "--table", &m.table]).unwrap();
        } else if paused {
            run.cli(&["resume", "--table", &m.table]).unwrap();
        }
    }
    for m in models.iter_mut() {
        let start = Instant::now();
        let expected: HashSet<i64> = m.ids.keys().copied().collect();
        tally.rows_checked += expected.len();
        loop {
            let counts = run.checkpoint(m, &mut Tally::default()).await;
            let done = counts.as_ref().is_some_and(|c| expected.iter().all(|id| c.contains_key(id)));
            if done || start.elapsed() > SETTLE {
                let counts = match counts {
                    Some(c) => c,
                    None => run.checkpoint(m, &mut Tally::default()).await.unwrap_or_default(),
                };
                run.checkpoint(m, tally).await;
                let lost = expected.iter().filter(|id| !counts.contains_key(id)).count();
                if lost > 0 {
                    tally.lost += lost;
                    tally.wedged += 1;
                    let w = run.watermark(&m.table).await.map(|w| w.next).unwrap_or_default();
                    run.log.push(format!("seed {seed}: table {} lost {lost} rows; next: {w}", m.table));
                }
                // readers that are not r2o see the same table through its Delta log
                if let Err(e) = run.cluster.check_delta(&m.table).await {
                    tally.delta += 1;
                    run.log.push(format!("seed {seed}: table {}: {e}", m.table));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_histories_lose_nothing_and_move_nothing_twice() {
    let seeds: Vec<u64> = match (std::env::var("R2O_HISTORY_SEED"), std::env::var("R2O_HISTORY_SEEDS")) {
        (Ok(s), _) => vec![s.parse().expect("R2O_HISTORY_SEED: a number")],
        (_, Ok(n)) => {
            let from: u64 =
                std::env::var("R2O_HISTORY_FROM").map_or(1, |f| f.parse().expect("R2O_HISTORY_FROM: a number"));
            (from..from + n.parse::<u64>().expect("R2O_HISTORY_SEEDS: a number")).collect()
        }
        _ => (1..=3).collect(),
    };
    let env = vec![
        ("R2O_JANITOR_INTERVAL_SECS".to_string(), "2".to_string()),
        ("R2O_JANITOR_GRACE_SECS".to_string(), "10".to_string()),
        ("R2O_DISCOVERY_INTERVAL_MS".to_string(), "500".to_string()),
    ];
    let mut cluster = Cluster::start_with(2, 0, env);
    // distinct hosts (hash sub-tasks), and a slowed store so that tasks
    // stay in flight while segments land in their windows
    for h in 0..3 {
        cluster.add_minion_env(&[("R2O_HOST", &format!("host{h}")), ("R2O_FAULT_STORE", "latency_ms=60")]);
    }
    let landing = cluster.dir.path().join("landing");
    let mut run = Run { cluster, landing, next_id: 0, file_no: 0, log: vec![] };
    let mut tally = Tally::default();
    let mut ops = 0;
    for s in &seeds {
        ops += seed(&mut run, *s, &mut tally).await;
    }
    let kinds: BTreeMap<&str, usize> = run.log.iter().fold(BTreeMap::new(), |mut m, l| {
        if let Some(kind) = l.split(": ").nth(1).and_then(|op| op.split([' ', '(']).next()) {
            *m.entry(kind).or_default() += 1;
        }
        m
    });
    println!("history: rows checked {}, operations by kind {kinds:?}", tally.rows_checked);
    println!(
        "history: seeds {}, operations {ops}, lost {}, duplicated {}, wedged {}, delta logs differing {}",
        seeds.len(),
        tally.lost,
        tally.duplicated,
        tally.wedged,
        tally.delta
    );
    let bad = tally.lost
        + tally.duplicated
        + tally.wedged
        + tally.phantom
        + tally.outside_window
        + tally.watermark_back
        + tally.delta;
    if bad > 0 {
        let dir = run.cluster.keep();
        panic!(
            "history broke: lost {}, duplicated {}, wedged {}, rows never registered {}, segments over two windows {}, \
             watermark moved back {}, delta logs differing {}; logs in {}\n{}",
            tally.lost,
            tally.duplicated,
            tally.wedged,
            tally.phantom,
            tally.outside_window,
            tally.watermark_back,
            tally.delta,
            dir.display(),
            run.log.join("\n")
        );
    }
}
