//! The minion's memory budget: how many bytes of decoded data its running
//! attempts may hold together. A task whose windows would not fit its share
//! (budget / slots) runs on the bounded-memory path ([`crate::stream`]):
//! inputs read by row group, the sort and merge spilling to local disk, the
//! outputs streamed to the object store in parts.

/// Fraction of a container's memory limit given to decoded data by default;
/// the rest covers the runtime, gRPC and etcd clients, readers' and writers'
/// buffers and allocator slack.
const DEFAULT_LIMIT_FRACTION: (u64, u64) = (3, 4);

pub use r2o_common::period::parse_size;
use r2o_common::window::Window;

/// The container's memory limit in bytes, when there is one: cgroup v2's
/// `memory.max`, else cgroup v1's `memory.limit_in_bytes` (values of 2^60
/// and above mean "no limit" there).
pub fn container_memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes").filter(|v| *v < 1 << 60))
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`).
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Default budget without a container limit: a minion on a shared machine
/// takes at most this much, bytes (512 MiB. With 1 GiB, x30 as one concat
/// window split by input ran each minion's two sub-tasks in memory at a
/// peak of 679-728 MB, past issue 21's 512 MB. A first try of 512 MiB sent
/// the backfill's many-window tasks to the slower bounded-memory path, for
/// the path was chosen by the whole task's decoded size; it is now chosen by
/// the rows in flight at once ([`peak_rows_held`]). Earlier, 1 GiB ran one
/// 3.4M-row window as fast as 2 GiB: the stream path's spills cost little).
pub const DEFAULT_MACHINE_CAP_BYTES: u64 = 512 << 20;

/// The default budget, bytes: 3/4 of the container's memory limit when
/// there is one (the operator sized the container for the minion), else
/// half of the machine's memory up to [`DEFAULT_MACHINE_CAP_BYTES`] (a
/// minion shares a machine with etcd, the controller and other minions;
/// issue 21 measured half of a 24 GiB machine as the default, which let one
/// big window take the in-memory path at 1.33 GB).
pub fn default_budget() -> u64 {
    let (num, den) = DEFAULT_LIMIT_FRACTION;
    match container_memory_limit() {
        Some(limit) => limit / den * num,
        None => machine_memory().map_or(DEFAULT_MACHINE_CAP_BYTES, |m| (m / 2).min(DEFAULT_MACHINE_CAP_BYTES)),
    }
}

/// Which processor runs an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// [`crate::processor`]: every input decoded in memory, up to `threads`
    /// windows at once, one thread per window.
    InMemory,
    /// [`crate::stream`]: inputs read by row group, each window's inputs
    /// spread over every thread, sorting under a memory pool that spills.
    Stream,
}

/// Estimated decoded bytes under which one window is done on one thread
/// faster than the stream path spreads it (its planning and merge cost a
/// few ms per window), bytes (64 MiB: ~300k rows of the flights schema).
pub const STREAM_MIN_ESTIMATE_BYTES: u64 = 64 << 20;

/// An attempt's share of the minion's memory budget, bytes: the budget over
/// the slots, at most the table's `segmentMapperFileSizeThresholdInBytes`
/// (Pinot's bound on the data its mapper holds before reducing). Pure.
pub fn attempt_share(budget_bytes: u64, slots: u32, mapper_threshold_bytes: Option<u64>) -> u64 {
    let share = budget_bytes / u64::from(slots.max(1));
    mapper_threshold_bytes.map_or(share, |t| share.min(t))
}

/// The path of an attempt estimated to hold `estimate_bytes` at its peak in
/// memory (its compressed inputs and the decoded rows of the windows in
/// flight, [`peak_rows_held`]), with an attempt's share of the budget of `share_bytes`, running
/// `windows` windows on `threads` threads. Pure.
///
/// - Past the share: the stream path, whose memory is bounded.
/// - Fewer windows than threads and more than [`STREAM_MIN_ESTIMATE_BYTES`]:
///   the stream path too, since the in-memory processor runs a window on
///   one thread and would leave cores idle (issue 21: one 3.4M-row window
///   ran at 0.41-0.51x Polars in memory, 0.90-0.94x on the stream path).
/// - Otherwise in memory: many windows keep every thread busy, and small
///   ones are not worth a sort plan each.
pub fn choose_path(estimate_bytes: u64, share_bytes: u64, windows: usize, threads: usize) -> Path {
    if estimate_bytes > share_bytes {
        return Path::Stream;
    }
    if threads > 1 && windows < threads && estimate_bytes > STREAM_MIN_ESTIMATE_BYTES {
        return Path::Stream;
    }
    Path::InMemory
}

/// Estimated peak of decoded rows the in-memory processor holds for a task
/// of `windows` (sorted, disjoint) over `inputs` (`(start_ms, end_ms,
/// rows)`: a segment's time range, both ends inclusive, and its rows) run
/// by `workers` threads, rows. Pure.
///
/// It mirrors [`crate::processor::process_part`]: inputs are read in start
/// order, each one's rows split by window; a window is handed over once no
/// input left can hold rows of it, and up to `workers` windows are merged
/// while `workers` more wait in the channel. So the peak is the largest sum,
/// after any input, of the windows still being filled and the last `2 ×
/// workers` handed over (as if the workers were slow). A segment's rows are spread over the windows
/// its range overlaps in proportion to the overlap (a uniform guess: the
/// registered metadata holds no histogram); rows outside every window are
/// filtered while read and not held.
///
/// A task of one window holds its in-window rows; a backfill task of many
/// small windows holds a few of them, not the task: sizing the path by the
/// whole task sent backfills to the slower bounded-memory path under a
/// 512 MiB budget (issue 21).
pub fn peak_rows_held(inputs: &[(i64, i64, u64)], windows: &[Window], workers: usize) -> u64 {
    if windows.is_empty() {
        return 0;
    }
    let mut order: Vec<&(i64, i64, u64)> = inputs.iter().collect();
    order.sort_by_key(|i| i.0);
    let mut rows = vec![0f64; windows.len()];
    let (mut held, mut peak, mut unsent) = (0f64, 0f64, 0usize);
    // the windows handed over last, assumed still in memory (slow workers)
    let (mut handed, mut handed_sum) = (std::collections::VecDeque::new(), 0f64);
    for (k, &&(start, end, n)) in order.iter().enumerate() {
        let (start, end) = (start.min(end), start.max(end));
        let span = (end as f64 - start as f64) + 1.0;
        let first = windows.partition_point(|w| w.end_ms <= start);
        for (w, slot) in windows[first..].iter().zip(&mut rows[first..]) {
            if w.start_ms > end {
                break;
            }
            let overlap = (end.min(w.end_ms - 1) as f64 - start.max(w.start_ms) as f64) + 1.0;
            let part = n as f64 * (overlap / span).clamp(0.0, 1.0);
            *slot += part;
            held += part;
        }
        peak = peak.max(held + handed_sum);
        let next = order.get(k + 1).map_or(i64::MAX, |i| i.0);
        while unsent < windows.len() && windows[unsent].end_ms <= next {
            held -= rows[unsent];
            handed.push_back(rows[unsent]);
            handed_sum += rows[unsent];
            if handed.len() > 2 * workers.max(1) {
                handed_sum -= handed.pop_front().unwrap_or(0.0);
            }
            unsent += 1;
        }
        peak = peak.max(held + handed_sum);
    }
    peak.ceil() as u64
}

/// Rows per OFFLINE segment under `maxSegmentSizeBytes` (`max_bytes`):
/// the inputs' compressed bytes per row (`input_bytes` over `input_rows`,
/// the REALTIME segments' registered sizes and row counts; OFFLINE
/// segments hold the same columns, compressed alike) sized to 9/10 of the
/// target, at most `max_rows` (`maxNumRecordsPerSegment`) and at least 1.
/// Without `max_bytes`, or with no rows to measure: `max_rows`. Pure.
pub fn rows_per_segment(max_rows: u64, max_bytes: Option<u64>, input_bytes: u64, input_rows: u64) -> u64 {
    let (Some(max_bytes), true) = (max_bytes, input_rows > 0 && input_bytes > 0) else {
        return max_rows.max(1);
    };
    let per_row = input_bytes as f64 / input_rows as f64;
    let fit = (max_bytes as f64 * 0.9 / per_row).floor() as u64;
    fit.clamp(1, max_rows.max(1))
}

/// Estimated bytes of one decoded row of `schema` in Arrow: fixed widths
/// plus 4 bytes of offset and 24 of data per string or bytes value, and a
/// validity bit rounded up to a byte per column. An estimate for choosing
/// the path, not an accounting.
pub fn decoded_row_bytes(schema: &r2o_common::schema::Schema) -> u64 {
    use r2o_common::schema::DataType::*;
    schema
        .fields
        .iter()
        .map(|f| match f.data_type {
            Int | Float | Boolean => 5,
            Long | Double | Timestamp => 9,
            _ => 29,
        })
        .sum::<u64>()
        .max(1)
}

/// [`decoded_row_bytes`] of a table's rows, with each bytes-backed metric
/// of a rollup table (a per-row sketch, as REALTIME rows hold them) at the
/// size of its format instead of 24 bytes: an HLL of Pinot's default log2m
/// 8 is 180 bytes, a ULL of the default p 12 is 4,097 (its registers do
/// not shrink for one value), an AvgPair 16; the variable sketches (Theta,
/// Tuple, CPC, KLL, t-digest) of one value about 64. Their compressed size
/// in the inputs says little: a ULL of one value is mostly zeros, so
/// without this a task of such rows would look tens of times smaller than
/// it decodes to and take the in-memory path past its share.
pub fn table_row_bytes(spec: &r2o_common::config::TableSpec) -> u64 {
    use r2o_common::config::{AggregationType, MergeType};
    let base = decoded_row_bytes(&spec.schema);
    if spec.flow.merge_type != MergeType::Rollup {
        return base;
    }
    let extra: u64 = spec
        .flow
        .aggregations
        .values()
        .map(|a| match a {
            AggregationType::Hll => 180 - 24,
            AggregationType::Ull => (1 << r2o_common::aggregation::DEFAULT_ULL_P) + 1 - 24,
            AggregationType::Theta { .. }
            | AggregationType::IntegerSumTuple { .. }
            | AggregationType::Cpc { .. }
            | AggregationType::Kll { .. }
            | AggregationType::TDigest { .. } => 64 - 24,
            _ => 0,
        })
        .sum();
    base + extra
}

#[cfg(test)]
mod tests {
    #[test]
    fn sketch_rows_are_estimated_at_their_formats_size() {
        let spec = |aggs: &str| {
            let mut task = serde_json::json!({"mergeType": "rollup"});
            for (i, a) in aggs.split(',').filter(|a| !a.is_empty()).enumerate() {
                task[format!("s{i}.aggregationType")] = serde_json::json!(a);
            }
            let metrics: Vec<serde_json::Value> =
                (0..3).map(|i| serde_json::json!({"name": format!("s{i}"), "dataType": "BYTES"})).collect();
            r2o_common::config::TableSpec::from_json(
                serde_json::json!({"tableName": "t", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                    "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}}}),
                serde_json::json!({"metricFieldSpecs": metrics,
                    "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH"}]}),
            )
            .unwrap()
        };
        let plain = table_row_bytes(&spec("avg,avg,avg"));
        assert_eq!(plain, 3 * 29 + 9, "AvgPairs fit the default estimate");
        assert!(table_row_bytes(&spec("distinctCountULL,avg,avg")) >= 4097 + 2 * 29 + 9);
        assert!(table_row_bytes(&spec("distinctCountHLL,avg,avg")) >= 180 + 2 * 29 + 9);
    }

    use super::*;

    #[test]
    fn segment_size_caps_rows_by_the_inputs_bytes_per_row() {
        // 100 bytes a row: 1 MB at 9/10 is 9,000 rows
        assert_eq!(rows_per_segment(5_000_000, Some(1_000_000), 100_000_000, 1_000_000), 9_000);
        // the row cap still holds, and a segment has at least one row
        assert_eq!(rows_per_segment(5_000, Some(1_000_000), 100_000_000, 1_000_000), 5_000);
        assert_eq!(rows_per_segment(5_000, Some(1_024), 10_000_000, 1_000), 1);
        // no size key, or nothing measured: rows only
        assert_eq!(rows_per_segment(5_000, None, 100, 10), 5_000);
        assert_eq!(rows_per_segment(5_000, Some(1_000_000), 0, 0), 5_000);
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("268435456"), Ok(268_435_456));
        assert_eq!(parse_size("256MB"), Ok(256_000_000));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256Mi"), Ok(256 << 20));
        assert_eq!(parse_size(" 4GiB "), Ok(4 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2k"), Ok(2_000));
        for bad in ["", "MB", "12XB", "-5MB", "0", "1e3", "abc"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")) && e.contains("256MiB"), "{e}");
        }
    }

    #[test]
    fn the_default_budget_is_a_positive_share_of_memory() {
        let b = default_budget();
        assert!(b > 0);
        match container_memory_limit() {
            Some(limit) => assert!(b < limit, "the budget leaves headroom under the container's limit"),
            None => assert!(b <= DEFAULT_MACHINE_CAP_BYTES, "a bounded share of a shared machine: {b}"),
        }
    }

    fn days(n: i64, from_day: i64) -> Vec<Window> {
        (0..n).map(|d| Window::containing((from_day + d) * DAY, DAY)).collect()
    }
    const DAY: i64 = 86_400_000;

    #[test]
    fn a_window_holds_its_rows_and_a_backfill_a_few_windows() {
        // one window: its rows, not twice (filling, then handed over)
        let one = days(1, 0);
        assert_eq!(peak_rows_held(&[(0, DAY - 1, 1000), (5, 10, 500)], &one, 2), 1500);
        // rows outside every window are not held: half of this segment is the day before
        assert_eq!(peak_rows_held(&[(-DAY, DAY - 1, 1000)], &one, 2), 500);
        // a backfill of 1,000 daily windows, one segment per day: the day being
        // filled and the 2 x workers handed over, not the task
        let backfill: Vec<(i64, i64, u64)> = (0..1000).map(|d| (d * DAY, d * DAY + DAY - 1, 100)).collect();
        assert_eq!(peak_rows_held(&backfill, &days(1000, 0), 2), 5 * 100);
        assert_eq!(peak_rows_held(&backfill, &days(1000, 0), 1), 3 * 100);
        // segments that each span the whole task keep every window open to the end
        let spanning: Vec<(i64, i64, u64)> = (0..4).map(|_| (0, 10 * DAY - 1, 1000)).collect();
        assert_eq!(peak_rows_held(&spanning, &days(10, 0), 2), 4000);
        // before 1970 is ordinary time
        let before: Vec<(i64, i64, u64)> = (0..100).map(|d| ((d - 200) * DAY, (d - 200) * DAY + 1, 10)).collect();
        assert_eq!(peak_rows_held(&before, &days(100, -200), 1), 30);
        // a one-instant segment puts every row in its window; no windows, nothing held
        assert_eq!(peak_rows_held(&[(DAY, DAY, 7)], &days(3, 0), 1), 7);
        assert_eq!(peak_rows_held(&[(0, 5, 7)], &[], 1), 0);
    }

    proptest::proptest! {
        /// The estimate lies between the fullest window and every row in the task's range.
        #[test]
        fn the_peak_is_bounded_by_a_window_and_the_task(
            segs in proptest::collection::vec((-50i64..50, 0i64..5, 0u64..10_000), 1..40),
            n in 1i64..20, from in -30i64..30, workers in 1usize..4,
        ) {
            let windows = days(n, from);
            let inputs: Vec<(i64, i64, u64)> =
                segs.iter().map(|&(d, len, rows)| (d * DAY + 7, (d + len) * DAY + 3, rows)).collect();
            let peak = peak_rows_held(&inputs, &windows, workers);
            let (lo, hi) = (windows[0].start_ms, windows[windows.len() - 1].end_ms);
            let in_range: u64 = inputs.iter().filter(|i| i.1 >= lo && i.0 < hi).map(|i| i.2).sum();
            proptest::prop_assert!(peak <= in_range + 1, "peak {} past the rows in range {}", peak, in_range);
            let fully_inside: u64 = windows.iter().map(|w| inputs.iter()
                .filter(|i| i.0 >= w.start_ms && i.1 < w.end_ms).map(|i| i.2).sum::<u64>()).max().unwrap_or(0);
            proptest::prop_assert!(peak >= fully_inside, "peak {} under a window's own rows {}", peak, fully_inside);
        }
    }

    #[test]
    fn one_big_window_takes_every_core_and_many_windows_stay_in_memory() {
        const MIB: u64 = 1 << 20;
        let share = 1024 * MIB;
        // past the share: bounded memory, whatever the shape
        assert_eq!(attempt_share(1024 * MIB, 2, None), 512 * MIB);
        assert_eq!(attempt_share(1024 * MIB, 0, None), 1024 * MIB, "no slots count as one");
        assert_eq!(attempt_share(1024 * MIB, 2, Some(100 * MIB)), 100 * MIB, "Pinot's mapper threshold caps it");
        assert_eq!(attempt_share(1024 * MIB, 2, Some(4096 * MIB)), 512 * MIB);
        assert_eq!(choose_path(share + 1, share, 500, 2), Path::Stream);
        assert_eq!(choose_path(share + 1, share, 1, 1), Path::Stream);
        // one big window on two threads: spread over both
        assert_eq!(choose_path(600 * MIB, share, 1, 2), Path::Stream);
        // many windows (the backfill): one per thread in memory
        assert_eq!(choose_path(600 * MIB, share, 40, 2), Path::InMemory);
        assert_eq!(choose_path(600 * MIB, share, 2, 2), Path::InMemory);
        // one small window, or one thread: in memory
        assert_eq!(choose_path(10 * MIB, share, 1, 2), Path::InMemory);
        assert_eq!(choose_path(600 * MIB, share, 1, 1), Path::InMemory);
    }
}
