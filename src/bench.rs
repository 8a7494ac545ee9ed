//! `r2o-bench`: the minion's processor on the real 2013 NYC flights, with
//! the quickstart's table (rollup, 1d buckets, 1h rounding). It cuts the
//! flights into REALTIME segments as `r2o ingest` does, then measures
//!
//! 1. one window: the busiest day, processed alone;
//! 2. a backfill: every window from cold start to the last, planned with
//!    the real planner and processed one after another;
//!
//! and prints rows/s, windows/s and peak memory (VmHWM). Usage:
//! `cargo run --release --bin r2o-bench -- [flights.csv] [repeats]`
//! (default `.r2o/quickstart/flights.csv`, written by the quickstart).
//!
//! `r2o-bench --planner [N,N,..]` measures the planner alone on synthetic
//! tables of N REALTIME segments (default 1,000, 40,000 and 146,000, x100's
//! count): what one plan costs, in µs, with the segments' facts kept as
//! the controller keeps them, when the table is caught up (the freshness
//! case: one segment registered, its window planned) and when a backfill
//! plans its next task; and the caught-up plan reading the facts from the
//! records.

use anyhow::{Context, Result};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use bytes::Bytes;
use r2o_common::columnar::{read_csv, time_ms, time_range_ms, write_parquet_with, REALTIME_ROW_GROUP_ROWS};
use r2o_common::config::{MergeType, TableSpec};
use r2o_common::meta::{SegmentMeta, SegmentStatus};
use r2o_controller::planner::{plan, plan_over, Budget, Decision, SegmentFacts};
use r2o_minion::processor::{process, Input};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

struct Segment {
    meta: SegmentMeta,
    bytes: Bytes,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--planner") {
        let counts: Vec<usize> = match args.get(2) {
            Some(list) => list
                .split(',')
                .map(|n| n.parse().context("--planner takes segment counts, e.g. 40000,146000"))
                .collect::<Result<_>>()?,
            None => vec![1_000, 40_000, 146_000],
        };
        if let Some(n) = counts.iter().find(|n| **n < 2) {
            anyhow::bail!(
                "--planner: a table of {n} segments; each count must be at least 2 (one per stream partition)"
            );
        }
        return planner_bench(&counts);
    }
    let csv = args.get(1).cloned().unwrap_or_else(|| ".r2o/quickstart/flights.csv".into());
    let repeats: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let config = serde_json::from_str(&std::fs::read_to_string("examples/flights/table.json")?)?;
    let schema = serde_json::from_str(&std::fs::read_to_string("examples/flights/schema.json")?)?;
    let spec = TableSpec::from_json(config, schema)?;
    let format = spec.schema.field(&spec.flow.time_column).and_then(|f| f.time_format).context("time format")?;

    // REALTIME segments as `r2o ingest` cuts them: time order, 20,000 rows each.
    let arrow_schema = spec.schema.arrow_schema();
    let batches = read_csv(std::path::Path::new(&csv), &spec.schema)
        .with_context(|| format!("reading {csv} (run scripts/quickstart.sh first, or pass the flights CSV)"))?;
    let all = concat_batches(&arrow_schema, &batches)?;
    let t = time_ms(all.column(arrow_schema.index_of(&spec.flow.time_column)?), format)?;
    let idx = lexsort_to_indices(&[SortColumn { values: Arc::new(t), options: None }], None)?;
    let all = take_record_batch(&all, &idx)?;
    let total_rows = all.num_rows();
    let mut segments = Vec::new();
    for (i, off) in (0..total_rows).step_by(20_000).enumerate() {
        let piece = all.slice(off, 20_000.min(total_rows - off));
        let (start, end) =
            time_range_ms(std::slice::from_ref(&piece), &spec.flow.time_column, format)?.context("time range")?;
        let bytes = write_parquet_with(&arrow_schema, std::slice::from_ref(&piece), REALTIME_ROW_GROUP_ROWS)?;
        segments.push(Segment {
            meta: SegmentMeta {
                segment_name: format!("flights__0__{i}"),
                table_name: "flights_REALTIME".into(),
                status: SegmentStatus::Done,
                start_time_ms: start,
                end_time_ms: end,
                total_docs: piece.num_rows() as u64,
                size_bytes: bytes.len() as u64,
                schema_fingerprint: spec.schema.fingerprint(),
                ..Default::default()
            },
            bytes,
        });
    }
    drop(all);
    drop(batches);
    let metas: Vec<SegmentMeta> = segments.iter().map(|s| s.meta.clone()).collect();
    let inputs_of = |names: &[SegmentMeta]| -> Vec<Input> {
        names
            .iter()
            .map(|m| Input {
                name: m.segment_name.clone(),
                bytes: segments
                    .iter()
                    .find(|s| s.meta.segment_name == m.segment_name)
                    .map(|s| s.bytes.clone())
                    .unwrap_or_default(),
                count_null_time: false,
                start_ms: m.start_time_ms,
                schema_version: r2o_common::columnar::SchemaVersion::Current,
            })
            .collect()
    };
    println!(
        "r2o-bench: {total_rows} flights in {} REALTIME segments; merge {}, bucket {} ms, round {:?} ms",
        segments.len(),
        spec.flow.merge_type.name(),
        spec.flow.bucket_ms,
        spec.flow.round_ms
    );

    for merge in [MergeType::Rollup, MergeType::Concat, MergeType::Dedup] {
        let mut spec = spec.clone();
        spec.flow.merge_type = merge;
        // every window, planned by the real planner
        let mut windows = Vec::new();
        let mut wm = None;
        while let Decision::Run { windows: w, inputs, .. } =
            plan(&spec.flow, &metas, wm, i64::MAX / 2, &Budget::ONE_WINDOW)
        {
            windows.push((w[0], inputs));
            wm = Some(w[0].end_ms);
        }
        // one window: the one with the most input bytes
        let (busiest, busiest_inputs) = windows
            .iter()
            .max_by_key(|(_, ins)| ins.iter().map(|s| s.size_bytes).sum::<u64>())
            .cloned()
            .context("no window")?;
        let mut best = f64::MAX;
        let mut rows = 0;
        for _ in 0..repeats {
            let inputs = inputs_of(&busiest_inputs);
            let start = Instant::now();
            let out = process(&spec, &[busiest], inputs, &CancellationToken::new(), 1)?;
            best = best.min(start.elapsed().as_secs_f64());
            rows = out.rows_in;
        }
        let seg_rows: u64 = busiest_inputs.iter().map(|s| s.total_docs).sum();
        println!(
            "{:<7} one window   {busiest}: {rows} rows in window (input: {} segments of {seg_rows} rows) in {:.1} ms: {:.0} window rows/s, {:.0} input rows/s",
            merge.name(),
            busiest_inputs.len(),
            best * 1e3,
            rows as f64 / best,
            seg_rows as f64 / best
        );
        // the whole backfill, window after window, on one thread
        let start = Instant::now();
        let (mut rows_in, mut rows_out, mut bytes_out, mut skipped) = (0u64, 0u64, 0u64, 0u64);
        for (window, inputs) in &windows {
            let out = process(&spec, &[*window], inputs_of(inputs), &CancellationToken::new(), 1)?;
            rows_in += out.rows_in;
            rows_out += out.rows_out;
            skipped += out.row_groups_skipped;
            bytes_out += out.outputs.iter().map(|o| o.bytes.len() as u64).sum::<u64>();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<7} backfill     {} windows, {rows_in} rows in, {rows_out} rows out, {bytes_out} bytes out, {skipped} input row groups skipped, in {:.2} s: {:.1} windows/s, {:.0} rows/s",
            merge.name(),
            windows.len(),
            secs,
            windows.len() as f64 / secs,
            rows_in as f64 / secs
        );
        // the whole backfill as the cluster plans it: tasks of many windows, windows in parallel
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let budget = Budget { max_windows: 1_000, max_input_rows: 500_000, max_input_bytes: 256 << 20 };
        let start = Instant::now();
        let (mut tasks, mut rows_in, mut wm) = (0, 0u64, None);
        while let Decision::Run { windows: w, inputs, .. } = plan(&spec.flow, &metas, wm, i64::MAX / 2, &budget) {
            let out = process(&spec, &w, inputs_of(&inputs), &CancellationToken::new(), threads)?;
            rows_in += out.rows_in;
            tasks += 1;
            wm = Some(w.last().expect("windows").end_ms);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<7} batched      {tasks} tasks of up to 500,000 input rows, {threads} threads: {rows_in} rows in {:.2} s: {:.0} rows/s",
            merge.name(),
            secs,
            rows_in as f64 / secs
        );
    }
    println!("peak memory (VmHWM): {:.1} MiB", peak_rss_bytes() as f64 / (1024.0 * 1024.0));
    Ok(())
}

/// A synthetic table of `n` REALTIME segments as x100 holds them: two
/// stream partitions, LLC names, each partition's segments back to back over
/// 1914-2013 (1d buckets: ~36,500 windows), then one CONSUMING segment per
/// partition.
fn synthetic_segments(n: usize) -> Vec<SegmentMeta> {
    const PARTITIONS: usize = 2;
    let (from, until) = (-1_767_225_600_000i64, 1_388_534_400_000i64); // 1914-01-01 .. 2014-01-01
    let per = n / PARTITIONS;
    let step = (until - from) / per as i64;
    let mut out = Vec::with_capacity(n + PARTITIONS);
    for p in 0..PARTITIONS {
        for i in 0..=per {
            let start = from + i as i64 * step + p as i64;
            let done = i < per;
            out.push(SegmentMeta {
                segment_name: format!("flights__{p}__{i}__20131231T0000Z"),
                table_name: "flights_REALTIME".into(),
                status: if done { SegmentStatus::Done } else { SegmentStatus::Consuming },
                start_time_ms: start,
                end_time_ms: start + step - 1,
                total_docs: if done { 230 } else { 0 },
                size_bytes: if done { 9_000 } else { 0 },
                schema_fingerprint: "0123456789abcdef".into(),
                location: format!("realtime/flights_REALTIME/flights__{p}__{i}__20131231T0000Z.parquet"),
                partition: p as i32,
                ..Default::default()
            });
        }
    }
    out.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
    out
}

/// The median of `runs` timings of `f`, µs.
fn median_us(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn planner_bench(counts: &[usize]) -> Result<()> {
    let config = serde_json::from_str(&std::fs::read_to_string("examples/flights/table.json")?)?;
    let schema = serde_json::from_str(&std::fs::read_to_string("examples/flights/schema.json")?)?;
    let mut spec = TableSpec::from_json(config, schema)?;
    spec.flow.buffer_ms = 0;
    let backfill = Budget { max_windows: 1_000, max_input_rows: 500_000, max_input_bytes: 256 << 20 };
    for &n in counts {
        let segments = synthetic_segments(n);
        let buckets = spec.flow.windows();
        let last_done_end = segments.iter().filter(|s| s.status == SegmentStatus::Done).map(|s| s.end_time_ms).max();
        let last_done_end = last_done_end.context("no DONE segment")?;
        // caught up: the window before the CONSUMING segments' is the last to plan
        let fresh_from = buckets.window_at(buckets.floor(last_done_end)).start_ms - spec.flow.bucket_ms;
        // as the controller plans: the facts kept beside the cached list
        let facts = SegmentFacts::of_all(&segments);
        let time = |from: Option<i64>, budget: &Budget, runs: usize| {
            median_us(runs, || {
                std::hint::black_box(plan_over(&spec.flow, &segments, &facts, from, i64::MAX / 2, budget));
            })
        };
        let fresh = time(Some(fresh_from), &Budget::ONE_WINDOW, 51);
        let cold = time(None, &backfill, 11);
        let middle_from = buckets.floor(segments[segments.len() / 4].start_time_ms);
        let middle = time(Some(middle_from), &backfill, 11);
        // the facts read from the records at every plan
        let unkept = median_us(11, || {
            std::hint::black_box(plan(&spec.flow, &segments, Some(fresh_from), i64::MAX / 2, &Budget::ONE_WINDOW));
        });
        let decided = plan_over(&spec.flow, &segments, &facts, Some(fresh_from), i64::MAX / 2, &Budget::ONE_WINDOW);
        let what = match &decided {
            Decision::Run { windows, inputs, .. } => {
                format!("runs {} window(s) of {} inputs", windows.len(), inputs.len())
            }
            Decision::Wait(why) => format!("waits: {why}"),
        };
        println!(
            "planner {n:>7} segments: caught up {fresh:>7.0} µs/plan ({what}); backfill's next task: from cold start {cold:>7.0} µs, from a quarter in {middle:>7.0} µs; caught up, facts read from the records {unkept:>7.0} µs"
        );
    }
    Ok(())
}
