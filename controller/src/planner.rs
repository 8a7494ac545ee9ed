//! The planner: a pure function of (flow config, REALTIME segment metadata,
//! watermark, now) to the next window to run, or the reason to wait. It
//! follows Pinot's `RealtimeToOfflineSegmentsTaskGenerator`:
//!
//! 1. Cold start: with no watermark, start at
//!    `floor(min segment start / bucket) * bucket`.
//! 2. The window is `[watermark, watermark + bucket)`; it is eligible only
//!    when `windowEnd <= now - bufferTimePeriod`.
//! 3. A segment belongs to the window when
//!    `windowStart <= segEnd && segStart < windowEnd`.
//! 4. The window waits while a CONSUMING segment may still receive rows for
//!    it: a CONSUMING segment's earliest possible time is the smaller of its
//!    own start (when it has rows) and the end of the latest DONE segment of
//!    the same stream partition (Pinot's "window data overflows into
//!    CONSUMING segments" rule); with neither, anything may still arrive.
//! 5. The window waits while one of its DONE segments is the latest
//!    completed segment of its stream partition and ends before the window
//!    does: the rest of the window may still arrive in that partition's next
//!    segment, registered or not (Pinot's last-completed-segment rule; as in
//!    Pinot it applies to segments with LLC names
//!    `<table>__<partition>__<sequence>__<yyyyMMddTHHmmZ>`, the latest being
//!    the highest sequence number). A segment registered as the end of its
//!    stream (`end_of_stream`) does not hold its window.
//! 6. A window with no DONE segment is skipped (the skip is persisted by the
//!    next commit); when no DONE segment ends at or after the window, the
//!    table is caught up.

use r2o_common::config::FlowConfig;
use r2o_common::meta::{SegmentMeta, SegmentStatus};
use r2o_common::window::{cold_start_watermark_ms, floor_to_bucket, past_buffer, Window};
use std::collections::HashMap;

/// What the planner decided for one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run this window.
    Run {
        /// The window.
        window: Window,
        /// Empty windows skipped between the watermark and `window`.
        skipped_windows: u64,
        /// DONE segments overlapping the window (names sorted).
        inputs: Vec<SegmentMeta>,
    },
    /// Nothing to run now.
    Wait(WaitReason),
}

/// Why a table's next window is not being planned.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitReason {
    /// The table has no REALTIME segments with rows.
    NoSegments,
    /// Every DONE segment ends before the watermark: nothing left to move.
    CaughtUp {
        /// Watermark, ms.
        watermark_ms: i64,
    },
    /// The next window has not passed `bufferTimePeriod` yet.
    Buffer {
        /// The window.
        window: Window,
        /// When it becomes eligible (`windowEnd + buffer`), ms.
        eligible_at_ms: i64,
    },
    /// A CONSUMING segment may still receive rows for the next window.
    Consuming {
        /// The window.
        window: Window,
        /// The CONSUMING segment.
        segment: String,
    },
    /// The latest completed segment of a partition ends inside the window
    /// (rule 5): the rest may still come in that partition's next segment.
    LastCompleted {
        /// The window.
        window: Window,
        /// The partition's latest completed segment.
        segment: String,
    },
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use r2o_common::window::format_utc;
        match self {
            WaitReason::NoSegments => write!(f, "no REALTIME segments with rows yet"),
            WaitReason::CaughtUp { watermark_ms } => {
                write!(f, "caught up: no DONE segment ends at or after the watermark {}", format_utc(*watermark_ms))
            }
            WaitReason::Buffer { window, eligible_at_ms } => write!(
                f,
                "window {} .. {} is inside bufferTimePeriod until {}",
                format_utc(window.start_ms),
                format_utc(window.end_ms),
                format_utc(*eligible_at_ms)
            ),
            WaitReason::Consuming { window, segment } => write!(
                f,
                "window {} .. {} waits for CONSUMING segment {segment}",
                format_utc(window.start_ms),
                format_utc(window.end_ms)
            ),
            WaitReason::LastCompleted { window, segment } => write!(
                f,
                "window {} .. {} waits for the segment after {segment}, the latest completed segment of its \
                 partition, which ends inside the window (mark the stream ended with r2o segment seal \
                 --end-of-stream if no more data will come)",
                format_utc(window.start_ms),
                format_utc(window.end_ms)
            ),
        }
    }
}

/// Earliest time a CONSUMING segment may still hold, per rule 4.
fn consuming_floor_ms(seg: &SegmentMeta, latest_done_end: &HashMap<i32, i64>) -> i64 {
    let own = (seg.total_docs > 0).then_some(seg.start_time_ms);
    let prev = latest_done_end.get(&seg.partition).copied();
    match (own, prev) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => i64::MIN,
    }
}

/// A Pinot LLC segment name `<table>__<partition>__<sequence>__<yyyyMMddTHHmmZ>`
/// as (partition, sequence); `None` for any other name. Parsed from the
/// right, so table names may contain `__`.
pub fn llc_name(name: &str) -> Option<(i32, u64)> {
    let mut parts = name.rsplitn(4, "__");
    let time = parts.next()?;
    let seq = parts.next()?.parse::<u64>().ok()?;
    let partition = parts.next()?.parse::<i32>().ok()?;
    let table = parts.next()?;
    let time_ok = time.len() == 14
        && time.ends_with('Z')
        && time.as_bytes()[8] == b'T'
        && time.bytes().enumerate().all(|(i, b)| i == 8 || i == 13 || b.is_ascii_digit());
    (time_ok && !table.is_empty()).then_some((partition, seq))
}

/// Names of the DONE segments that are the latest completed LLC segment of
/// their partition and do not end their stream (rule 5).
fn latest_completed<'a>(done: &[&'a SegmentMeta]) -> HashMap<i32, (u64, &'a str, bool)> {
    let mut latest: HashMap<i32, (u64, &'a str, bool)> = HashMap::new();
    for s in done {
        if let Some((partition, seq)) = llc_name(&s.segment_name) {
            let e = latest.entry(partition).or_insert((seq, &s.segment_name, s.end_of_stream));
            if seq > e.0 {
                *e = (seq, &s.segment_name, s.end_of_stream);
            }
        }
    }
    latest
}

/// Plans the next window of one table. Pure: no I/O, no clock.
///
/// `segments` are the table's REALTIME segments (any status); `watermark_ms`
/// is `None` before the first commit.
pub fn plan(flow: &FlowConfig, segments: &[SegmentMeta], watermark_ms: Option<i64>, now_ms: i64) -> Decision {
    let bucket = flow.bucket_ms;
    let done: Vec<&SegmentMeta> =
        segments.iter().filter(|s| s.status == SegmentStatus::Done && s.total_docs > 0).collect();
    let consuming: Vec<&SegmentMeta> = segments.iter().filter(|s| s.status == SegmentStatus::Consuming).collect();
    let mut latest_done_end: HashMap<i32, i64> = HashMap::new();
    for s in &done {
        let e = latest_done_end.entry(s.partition).or_insert(i64::MIN);
        *e = (*e).max(s.end_time_ms);
    }
    let latest = latest_completed(&done);
    let with_rows_min = segments.iter().filter(|s| s.total_docs > 0).map(|s| s.start_time_ms).min();
    let mut wm = match (watermark_ms, with_rows_min) {
        (Some(w), _) => w,
        (None, Some(min)) => cold_start_watermark_ms(min, bucket),
        (None, None) => return Decision::Wait(WaitReason::NoSegments),
    };
    let mut skipped = 0u64;
    loop {
        let window = Window::starting_at(wm, bucket);
        if !past_buffer(&window, now_ms, flow.buffer_ms) {
            if done.iter().all(|s| s.end_time_ms < window.start_ms) && consuming.is_empty() {
                return Decision::Wait(WaitReason::CaughtUp { watermark_ms: wm });
            }
            return Decision::Wait(WaitReason::Buffer {
                window,
                eligible_at_ms: window.end_ms.saturating_add(flow.buffer_ms),
            });
        }
        if let Some(c) = consuming
            .iter()
            .filter(|c| consuming_floor_ms(c, &latest_done_end) < window.end_ms)
            .min_by(|a, b| a.segment_name.cmp(&b.segment_name))
        {
            return Decision::Wait(WaitReason::Consuming { window, segment: c.segment_name.clone() });
        }
        let mut inputs: Vec<SegmentMeta> = done
            .iter()
            .filter(|s| window.overlaps_segment(s.start_time_ms, s.end_time_ms))
            .map(|s| (*s).clone())
            .collect();
        if !inputs.is_empty() {
            inputs.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
            let holding = inputs.iter().find(|s| {
                s.end_time_ms < window.end_ms
                    && llc_name(&s.segment_name).is_some_and(|(p, _)| {
                        latest.get(&p).is_some_and(|(_, name, ended)| *name == s.segment_name && !ended)
                    })
            });
            if let Some(s) = holding {
                return Decision::Wait(WaitReason::LastCompleted { window, segment: s.segment_name.clone() });
            }
            return Decision::Run { window, skipped_windows: skipped, inputs };
        }
        // Empty window: jump to the window of the next DONE segment.
        let next =
            done.iter().filter(|s| s.end_time_ms >= window.end_ms).map(|s| s.start_time_ms.max(window.end_ms)).min();
        let Some(next_start) = next else {
            return Decision::Wait(WaitReason::CaughtUp { watermark_ms: wm });
        };
        if window.end_ms == i64::MAX {
            return Decision::Wait(WaitReason::CaughtUp { watermark_ms: wm });
        }
        let next_wm = floor_to_bucket(next_start, bucket).max(window.end_ms);
        skipped += ((next_wm as i128 - wm as i128) / bucket as i128) as u64;
        wm = next_wm;
    }
}

/// Whether a task planned from `from_watermark_ms` for `window` with
/// `input_names` (sorted) would be planned the same way now, from current
/// segment metadata: the same window, the same skipped windows, the same
/// inputs. Used at commit when the table's segments changed after planning.
///
/// # Errors
/// What changed, in words, when the plan differs.
pub fn recheck(
    flow: &FlowConfig,
    segments: &[SegmentMeta],
    from_watermark_ms: i64,
    window: Window,
    skipped_windows: u64,
    input_names: &[String],
    now_ms: i64,
) -> Result<(), String> {
    match plan(flow, segments, Some(from_watermark_ms), now_ms) {
        Decision::Run { window: w, skipped_windows: k, inputs } => {
            if w != window || k != skipped_windows {
                return Err(format!(
                    "window {w} is now the next one to run, not {window}: a segment with rows in a skipped window was registered"
                ));
            }
            let now: Vec<&str> = inputs.iter().map(|s| s.segment_name.as_str()).collect();
            if now != input_names.iter().map(String::as_str).collect::<Vec<_>>() {
                let added: Vec<&str> = now.iter().copied().filter(|n| !input_names.iter().any(|i| i == n)).collect();
                let gone: Vec<&str> = input_names.iter().map(String::as_str).filter(|n| !now.contains(n)).collect();
                return Err(format!(
                    "the inputs of window {window} changed since planning (added: {added:?}, gone: {gone:?})"
                ));
            }
            Ok(())
        }
        Decision::Wait(reason) => Err(format!("window {window} is no longer ready: {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use r2o_common::config::{FlowConfig, MergeType};
    use std::collections::BTreeMap;

    const H: i64 = 3_600_000;

    fn flow(bucket: i64, buffer: i64) -> FlowConfig {
        FlowConfig {
            time_column: "ts".into(),
            sorted_column: None,
            partitioning: None,
            bucket_ms: bucket,
            buffer_ms: buffer,
            round_ms: None,
            merge_type: MergeType::Concat,
            aggregations: BTreeMap::new(),
            max_records_per_segment: 100,
            max_attempts_per_task: None,
            timeout_ms: None,
        }
    }

    fn seg(name: &str, start: i64, end: i64, status: SegmentStatus, partition: i32) -> SegmentMeta {
        SegmentMeta {
            segment_name: name.into(),
            table_name: "t_REALTIME".into(),
            status,
            start_time_ms: start,
            end_time_ms: end,
            total_docs: 10,
            size_bytes: 100,
            schema_fingerprint: String::new(),
            location: String::new(),
            partition,
            created_ms: 0,
            end_of_stream: false,
        }
    }

    fn llc(p: i32, seq: u64) -> String {
        format!("t__{p}__{seq}__20200913T1200Z")
    }

    fn names(d: &Decision) -> Vec<String> {
        match d {
            Decision::Run { inputs, .. } => inputs.iter().map(|s| s.segment_name.clone()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn cold_start_floors_min_start() {
        let f = flow(24 * H, 0);
        let s = [seg("a", 30 * H, 50 * H, SegmentStatus::Done, 0)];
        let d = plan(&f, &s, None, 1000 * H);
        assert!(matches!(d, Decision::Run { window, .. } if window == Window { start_ms: 24 * H, end_ms: 48 * H }));
    }

    #[test]
    fn straddling_segment_belongs_to_both_windows() {
        let f = flow(24 * H, 0);
        let s = [seg("a", 0, 30 * H, SegmentStatus::Done, 0), seg("b", 30 * H, 47 * H, SegmentStatus::Done, 0)];
        assert_eq!(names(&plan(&f, &s, Some(0), 1000 * H)), vec!["a"]);
        assert_eq!(names(&plan(&f, &s, Some(24 * H), 1000 * H)), vec!["a", "b"]);
        assert_eq!(plan(&f, &s, Some(48 * H), 1000 * H), Decision::Wait(WaitReason::CaughtUp { watermark_ms: 48 * H }));
    }

    #[test]
    fn gap_is_skipped_and_counted() {
        let f = flow(H, 0);
        let s = [seg("a", 0, 10, SegmentStatus::Done, 0), seg("b", 5 * H + 1, 5 * H + 2, SegmentStatus::Done, 0)];
        let d = plan(&f, &s, Some(H), 1000 * H);
        assert_eq!(
            d,
            Decision::Run {
                window: Window { start_ms: 5 * H, end_ms: 6 * H },
                skipped_windows: 4,
                inputs: vec![s[1].clone()]
            }
        );
    }

    #[test]
    fn buffer_holds_the_window() {
        let f = flow(H, 2 * H);
        let s = [seg("a", 0, 10, SegmentStatus::Done, 0)];
        assert!(
            matches!(plan(&f, &s, None, 3 * H - 1), Decision::Wait(WaitReason::Buffer { eligible_at_ms, .. }) if eligible_at_ms == 3 * H)
        );
        assert!(matches!(plan(&f, &s, None, 3 * H), Decision::Run { .. }));
    }

    #[test]
    fn consuming_segment_holds_its_windows() {
        let f = flow(H, 0);
        let s = [seg("a", 0, H + 10, SegmentStatus::Done, 0), seg("c", H + 20, H + 30, SegmentStatus::Consuming, 0)];
        assert!(matches!(plan(&f, &s, Some(0), 100 * H), Decision::Run { .. }));
        assert!(
            matches!(plan(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::Consuming { ref segment, .. }) if segment == "c")
        );
        // an empty CONSUMING segment: Pinot's rule uses the partition's last DONE end
        let mut empty = seg("e", 0, 0, SegmentStatus::Consuming, 0);
        empty.total_docs = 0;
        let s = [seg("a", 0, H + 10, SegmentStatus::Done, 0), empty.clone()];
        assert!(matches!(plan(&f, &s, Some(0), 100 * H), Decision::Run { .. }));
        assert!(matches!(plan(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::Consuming { .. })));
        // an empty CONSUMING segment of a partition with no DONE segment holds everything
        empty.partition = 7;
        let s = [seg("a", 0, H + 10, SegmentStatus::Done, 0), empty];
        assert!(matches!(plan(&f, &s, Some(0), 100 * H), Decision::Wait(WaitReason::Consuming { .. })));
    }

    #[test]
    fn negative_and_huge_times() {
        let f = flow(H, 0);
        let s = [seg("a", -H - 5, -H + 5, SegmentStatus::Done, 0)];
        assert!(matches!(plan(&f, &s, None, 0), Decision::Run { window, .. } if window.start_ms == -2 * H));
        let s = [seg("z", i64::MAX - 5, i64::MAX, SegmentStatus::Done, 0)];
        assert!(matches!(plan(&f, &s, None, i64::MAX), Decision::Wait(_) | Decision::Run { .. }));
        assert!(matches!(plan(&f, &s, None, 0), Decision::Wait(WaitReason::Buffer { .. })));
    }

    #[test]
    fn llc_names_parse_from_the_right() {
        assert_eq!(llc_name("t__3__17__20200913T1200Z"), Some((3, 17)));
        assert_eq!(llc_name("a__b__0__5__20200913T1200Z"), Some((0, 5)), "table names may contain __");
        for other in ["t__3__17", "seg", "t__x__1__20200913T1200Z", "t__1__2__2020-09-13", "__1__2__20200913T1200Z"] {
            assert_eq!(llc_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_latest_completed_segment_holds_the_window_it_ends_in() {
        // Pinot's rule: partition 0's latest completed segment ends inside
        // [H, 2H), so that window waits for the next one even though no
        // CONSUMING segment is registered.
        let f = flow(H, 0);
        let s = [
            seg(&llc(0, 0), 10, H + 10, SegmentStatus::Done, 0),
            seg(&llc(0, 1), H + 20, H + 30, SegmentStatus::Done, 0),
        ];
        assert_eq!(names(&plan(&f, &s, Some(0), 100 * H)), vec![llc(0, 0)], "window [0, H) runs");
        assert!(
            matches!(plan(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::LastCompleted { ref segment, .. }) if *segment == llc(0, 1))
        );
        // the next segment arrives (and crosses the window end): the window runs
        let mut more = s.to_vec();
        more.push(seg(&llc(0, 2), H + 40, 2 * H + 5, SegmentStatus::Done, 0));
        assert_eq!(names(&plan(&f, &more, Some(H), 100 * H)), vec![llc(0, 0), llc(0, 1), llc(0, 2)]);
        // the stream ended with the last one: it does not hold the window
        let mut ended = s.to_vec();
        ended[1].end_of_stream = true;
        assert_eq!(names(&plan(&f, &ended, Some(H), 100 * H)), vec![llc(0, 0), llc(0, 1)]);
        // a segment without an LLC name (an upload) never holds
        let uploaded = [seg("upload-1", 10, H + 10, SegmentStatus::Done, 0)];
        assert_eq!(names(&plan(&f, &uploaded, Some(H), 100 * H)), vec!["upload-1"]);
        // another partition's latest segment holds too
        let s =
            [seg(&llc(0, 4), 10, 3 * H, SegmentStatus::Done, 0), seg(&llc(1, 9), 10, H + 1, SegmentStatus::Done, 1)];
        assert!(matches!(plan(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::LastCompleted { .. })));
    }

    #[test]
    fn recheck_finds_new_inputs_new_data_in_skipped_windows_and_new_consuming_segments() {
        let f = flow(H, 0);
        let a = seg("a", 5 * H + 1, 5 * H + 2, SegmentStatus::Done, 0);
        let segs = vec![seg("z", 0, 10, SegmentStatus::Done, 0), a.clone()];
        let Decision::Run { window, skipped_windows, inputs } = plan(&f, &segs, Some(H), 100 * H) else {
            panic!("runs")
        };
        let names: Vec<String> = inputs.iter().map(|s| s.segment_name.clone()).collect();
        assert_eq!(recheck(&f, &segs, H, window, skipped_windows, &names, 100 * H), Ok(()));
        // a segment registered later that does not touch the range changes nothing
        let mut later = segs.clone();
        later.push(seg("late", 9 * H, 9 * H + 1, SegmentStatus::Done, 0));
        assert_eq!(recheck(&f, &later, H, window, skipped_windows, &names, 100 * H), Ok(()));
        // a new input of the window
        let mut added = segs.clone();
        added.push(seg("b", 5 * H + 5, 5 * H + 6, SegmentStatus::Done, 0));
        let e = recheck(&f, &added, H, window, skipped_windows, &names, 100 * H).unwrap_err();
        assert!(e.contains("\"b\""), "{e}");
        // data in a skipped window
        let mut skipped = segs.clone();
        skipped.push(seg("c", 2 * H + 5, 2 * H + 6, SegmentStatus::Done, 0));
        assert!(recheck(&f, &skipped, H, window, skipped_windows, &names, 100 * H).is_err());
        // a CONSUMING segment that may still hold rows of the window
        let mut consuming = segs;
        consuming.push(seg("d", 5 * H + 9, 5 * H + 9, SegmentStatus::Consuming, 0));
        let e = recheck(&f, &consuming, H, window, skipped_windows, &names, 100 * H).unwrap_err();
        assert!(e.contains("CONSUMING"), "{e}");
    }

    fn arb_segments() -> impl Strategy<Value = Vec<(i64, i64, bool, i32)>> {
        prop::collection::vec((-50i64..200, 0i64..30, prop::bool::weighted(0.15), 0i32..3), 1..12)
    }

    fn arb_names() -> impl Strategy<Value = bool> {
        prop::bool::weighted(0.5)
    }

    proptest! {
        /// Plans, commits and plans again until the planner waits; then every
        /// DONE segment time point in a committed window was read by exactly
        /// that window, no window was read twice, every run obeyed the buffer
        /// and CONSUMING rules, and skipped windows held no DONE data.
        #[test]
        fn simulated_flow_moves_each_point_once(
            raw in arb_segments(),
            llc_names in arb_names(),
            bucket in 1i64..40,
            buffer in 0i64..30,
            now in 0i64..300,
        ) {
            let f = flow(bucket, buffer);
            let segs: Vec<SegmentMeta> = raw.iter().enumerate().map(|(i, (s, len, c, p))| {
                let name = if llc_names { llc(*p, i as u64) } else { format!("s{i:02}") };
                seg(&name, *s, s + len, if *c { SegmentStatus::Consuming } else { SegmentStatus::Done }, *p)
            }).collect();
            let mut wm = None;
            let mut committed: Vec<Window> = vec![];
            for _ in 0..1000 {
                match plan(&f, &segs, wm, now) {
                    Decision::Run { window, skipped_windows, inputs } => {
                        prop_assert!(window.end_ms <= now - buffer, "buffer rule");
                        prop_assert_eq!(window.start_ms.rem_euclid(bucket), 0);
                        if let Some(w) = wm {
                            prop_assert_eq!(window.start_ms, w + skipped_windows as i64 * bucket);
                            for k in 0..skipped_windows as i64 {
                                let sk = Window::starting_at(w + k * bucket, bucket);
                                prop_assert!(!segs.iter().any(|s| s.status == SegmentStatus::Done && sk.overlaps_segment(s.start_time_ms, s.end_time_ms)), "skipped a window with data");
                            }
                        }
                        for s in &segs {
                            let overlaps = window.overlaps_segment(s.start_time_ms, s.end_time_ms);
                            let is_input = inputs.iter().any(|i| i.segment_name == s.segment_name);
                            prop_assert_eq!(is_input, overlaps && s.status == SegmentStatus::Done);
                            if s.status == SegmentStatus::Consuming {
                                prop_assert!(s.start_time_ms >= window.end_ms, "window ran while CONSUMING data could land in it");
                            }
                        }
                        let latest = latest_completed(&segs.iter().filter(|s| s.status == SegmentStatus::Done && s.total_docs > 0).collect::<Vec<_>>());
                        for i in &inputs {
                            if let Some((p, _)) = llc_name(&i.segment_name) {
                                prop_assert!(
                                    !(latest[&p].1 == i.segment_name && i.end_time_ms < window.end_ms),
                                    "ran a window its partition's latest completed segment ends in"
                                );
                            }
                        }
                        prop_assert!(committed.iter().all(|c| c.end_ms <= window.start_ms), "windows move forward without overlap");
                        committed.push(window);
                        wm = Some(window.end_ms);
                    }
                    Decision::Wait(reason) => {
                        if let WaitReason::CaughtUp { watermark_ms } = reason {
                            prop_assert!(segs.iter().filter(|s| s.status == SegmentStatus::Done).all(|s| s.end_time_ms < watermark_ms));
                        }
                        break;
                    }
                }
            }
            // every DONE point inside a committed window was read by exactly one window
            for s in segs.iter().filter(|s| s.status == SegmentStatus::Done) {
                for t in s.start_time_ms..=s.end_time_ms {
                    let n = committed.iter().filter(|w| w.contains(t)).count();
                    let below = wm.is_some_and(|w| t < w) && t >= committed.first().map_or(i64::MAX, |w| w.start_ms);
                    prop_assert_eq!(n, usize::from(below));
                }
            }
        }
    }
}
