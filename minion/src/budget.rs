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
/// takes at most this much, bytes (1 GiB: one 3.4M-row window ran as fast
/// with 1 GiB as with 2 GiB, at a peak of 320 MB instead of 500-600 MB; the
/// stream path's spills to local disk cost little).
pub const DEFAULT_MACHINE_CAP_BYTES: u64 = 1 << 30;

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

/// The path of an attempt whose inputs are estimated at `estimate_bytes`
/// decoded, with an attempt's share of the budget of `share_bytes`, running
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
