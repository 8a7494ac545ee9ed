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

use r2o_common::config::{FlowConfig, MergeType};
use r2o_common::meta::{SegmentMeta, SegmentStatus};
use r2o_common::window::{past_buffer, Window};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::HashMap;

/// How much one task may take: consecutive ready windows are batched into
/// one task until one of these would be exceeded (a single window is always
/// a task of its own, whatever its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Windows with data per task.
    pub max_windows: usize,
    /// Registered rows of the task's input segments (Pinot's
    /// `maxNumRecordsPerTask`), rows.
    pub max_input_rows: u64,
    /// Bytes of the task's input segments, bytes.
    pub max_input_bytes: u64,
}

impl Budget {
    /// One window per task (Pinot's own behaviour).
    pub const ONE_WINDOW: Budget = Budget { max_windows: 1, max_input_rows: u64::MAX, max_input_bytes: u64::MAX };
}

/// Most sub-tasks one window is split into (a group commit writes three
/// operations per sub-task, and etcd allows 128 per transaction).
pub const MAX_SUB_TASKS: usize = 32;

/// How one window is run (Pinot's `maxNumRecordsPerTask`, which Pinot
/// itself does not honour for one window: apache/pinot#9177).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// One task reads and merges the whole window.
    Whole,
    /// This many sub-tasks each read every input and keep the rows whose
    /// merge key hashes to their index (rollup, dedup: each group and each
    /// duplicate falls in exactly one); at most one per host.
    ByHash(u32),
    /// Sub-tasks each read these inputs (indexes into the window's input
    /// list, contiguous, covering it): concat needs no key.
    ByInput(Vec<std::ops::Range<usize>>),
}

/// How a task of `windows` over `inputs` is run: whole unless it is one
/// window whose inputs exceed the budget's rows or bytes. Then concat is
/// split by input into contiguous parts of at most the budget (an input is
/// never split), and rollup and dedup by hash into `ceil(rows / budget)` parts,
/// at most `hosts` (distinct machines among the live minions). Every hash
/// part reads and decodes every input, so two parts on one machine decode
/// the window twice on the same cores: on the 2-core benchmark machine that
/// was 1.14-1.17x slower than one task (README, "One huge window"). With
/// fewer than 2 hosts a rollup or dedup window runs whole; the minion's
/// bounded-memory path holds a window of any size. At most
/// [`MAX_SUB_TASKS`] parts either way. Pure.
pub fn split_window(
    merge: MergeType,
    windows: &[Window],
    inputs: &[SegmentMeta],
    budget: &Budget,
    hosts: usize,
) -> Split {
    let rows: u64 = inputs.iter().map(|s| s.total_docs).sum();
    let bytes: u64 = inputs.iter().map(|s| s.size_bytes).sum();
    if windows.len() != 1 || inputs.len() < 2 || (rows <= budget.max_input_rows && bytes <= budget.max_input_bytes) {
        return Split::Whole;
    }
    let by_rows = rows.div_ceil(budget.max_input_rows.max(1));
    let by_bytes = bytes.div_ceil(budget.max_input_bytes.max(1));
    let wanted = by_rows.max(by_bytes).max(2) as usize;
    if merge != MergeType::Concat {
        let n = wanted.min(hosts).min(MAX_SUB_TASKS);
        return if n < 2 { Split::Whole } else { Split::ByHash(n as u32) };
    }
    // concat: contiguous runs of inputs, each within the budget (or within
    // 1/32 of the window, when 32 parts of the budget would not hold it)
    let mut cap = (
        budget.max_input_rows.max(rows.div_ceil(MAX_SUB_TASKS as u64)),
        budget.max_input_bytes.max(bytes.div_ceil(MAX_SUB_TASKS as u64)),
    );
    loop {
        let mut ranges = vec![];
        let (mut start, mut r, mut b) = (0usize, 0u64, 0u64);
        for (i, s) in inputs.iter().enumerate() {
            if i > start && (r + s.total_docs > cap.0 || b + s.size_bytes > cap.1) {
                ranges.push(start..i);
                (start, r, b) = (i, 0, 0);
            }
            r += s.total_docs;
            b += s.size_bytes;
        }
        ranges.push(start..inputs.len());
        if ranges.len() < 2 {
            return Split::Whole;
        }
        if ranges.len() <= MAX_SUB_TASKS {
            return Split::ByInput(ranges);
        }
        cap = (cap.0.saturating_mul(2), cap.1.saturating_mul(2));
    }
}

/// A late-data run to publish: one committed window and what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct LatePlan {
    /// The window (below the watermark).
    pub window: Window,
    /// `rematerialize`: every DONE segment with rows overlapping the window;
    /// `append`: the window's late segments not yet moved. Names sorted.
    pub inputs: Vec<SegmentMeta>,
    /// The policy and the late segments the run moves.
    pub run: r2o_common::meta::LateRun,
}

/// What [`plan_late`] decided: the run to publish (the oldest window late
/// segments owe rows to that can be redone), and every owed window that
/// cannot be, with why (shown by `r2o watermark`; their late rows stay in
/// REALTIME).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LateOutcome {
    /// The next run, if any window can be redone.
    pub plan: Option<LatePlan>,
    /// Owed windows that cannot be redone, in window order, with the reason.
    pub blocked: Vec<(Window, String)>,
}

/// What a table's committed lineage and watermark say about late data
/// (read by `registry::late_ledger`), for [`owed_windows`] and [`plan_late`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LateLedger {
    /// The flow's commits (not late-data runs): the range `[from_ms,
    /// end_ms)` each covers (skipped windows included) and the etcd create
    /// revision of its lineage key.
    pub committed: Vec<(i64, i64, i64)>,
    /// Late segments moved into each committed window by late-data runs.
    pub moved: MovedLate,
    /// The table's watermark now, UTC epoch ms (`None`: nothing committed,
    /// e.g. after `reset --mode flush`).
    pub watermark_ms: Option<i64>,
}

impl LateLedger {
    /// Whether the flow committed window `w` after a segment registered at
    /// etcd revision `registered_revision` (0: unknown): its commit then read
    /// that segment, so the segment owes the window nothing. Decided by etcd
    /// revisions, never by clocks.
    pub fn committed_after(&self, w: Window, registered_revision: i64) -> bool {
        registered_revision > 0
            && self
                .committed
                .iter()
                .any(|(from, end, rev)| *from <= w.start_ms && w.start_ms < *end && *rev > registered_revision)
    }
}

/// Why window `w` cannot be rematerialized, if it cannot: a rematerialize
/// run replaces every earlier result of the window with what it computes
/// from the window's REALTIME segments, so it must be able to read every
/// row those results hold. Not when retention deleted REALTIME segments up
/// to `retained_until_ms` at or after the window's start (its own inputs may
/// be gone), nor when a segment whose rows in the window had moved was
/// refused since (a discovered file changed or deleted: the planner never
/// reads it again, and the run would drop its rows from OFFLINE). Pure.
pub fn rematerialize_problem(
    w: Window,
    segments: &[SegmentMeta],
    ledger: &LateLedger,
    retained_until_ms: Option<i64>,
) -> Option<String> {
    if let Some(r) = retained_until_ms.filter(|r| *r >= w.start_ms) {
        return Some(format!(
            "late rows for window {w} cannot be rematerialized: retention deleted REALTIME segments up to {} (the \
             window's own inputs may be gone); they stay in REALTIME",
            r2o_common::window::format_utc(r)
        ));
    }
    let refused = segments.iter().find(|s| {
        let moved_there = s.error_watermark_ms.is_some_and(|ew| ew >= w.end_ms)
            && (s.late_before_ms.is_none_or(|b| w.end_ms > b)
                || ledger.moved.get(&w.start_ms).is_some_and(|m| m.contains(&s.segment_name)));
        !s.error.is_empty()
            && s.status == SegmentStatus::Done
            && s.total_docs > 0
            && w.overlaps_segment(s.start_time_ms, s.end_time_ms)
            && moved_there
    })?;
    Some(format!(
        "late rows for window {w} cannot be rematerialized: segment {}, whose rows there had moved, was refused since \
         ({}), and a run would drop its rows from OFFLINE; they stay in REALTIME",
        refused.segment_name, refused.error
    ))
}

/// The next late-data run (`lateDataPolicy`; none for `ignore`): the
/// oldest committed window that late segments still owe rows to (see
/// [`owed_windows`]) and that can be redone (a `rematerialize` window with
/// a [`rematerialize_problem`] is reported in [`LateOutcome::blocked`] and
/// passed over, so it never holds later windows). With `only`, that
/// window's run alone (the check at commit that the run still is what the
/// window needs). Pure.
pub fn plan_late(
    flow: &FlowConfig,
    segments: &[SegmentMeta],
    ledger: &LateLedger,
    only: Option<Window>,
    retained_until_ms: Option<i64>,
) -> LateOutcome {
    use r2o_common::config::LateDataPolicy;
    let mut out = LateOutcome::default();
    if flow.late_data_policy == LateDataPolicy::Ignore {
        return out;
    }
    let mut owed: std::collections::BTreeMap<Window, Vec<&SegmentMeta>> = std::collections::BTreeMap::new();
    for s in segments.iter().filter(|s| s.status == SegmentStatus::Done && s.total_docs > 0 && s.error.is_empty()) {
        for w in owed_windows(flow, s, ledger).into_iter().filter(|w| only.is_none_or(|o| o == *w)) {
            owed.entry(w).or_default().push(s);
        }
    }
    for (window, late) in owed {
        if flow.late_data_policy == LateDataPolicy::Rematerialize {
            if let Some(why) = rematerialize_problem(window, segments, ledger, retained_until_ms) {
                out.blocked.push((window, why));
                continue;
            }
        }
        if out.plan.is_some() {
            continue;
        }
        let mut names: Vec<String> = late.iter().map(|s| s.segment_name.clone()).collect();
        names.sort();
        let mut inputs: Vec<SegmentMeta> = match flow.late_data_policy {
            LateDataPolicy::Append => late.into_iter().cloned().collect(),
            _ => segments
                .iter()
                .filter(|s| {
                    s.status == SegmentStatus::Done
                        && s.total_docs > 0
                        && s.error.is_empty()
                        && window.overlaps_segment(s.start_time_ms, s.end_time_ms)
                })
                .cloned()
                .collect(),
        };
        inputs.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
        out.plan = Some(LatePlan {
            window,
            inputs,
            run: r2o_common::meta::LateRun { policy: flow.late_data_policy.name().to_string(), segments: names },
        });
    }
    out
}

/// Whether late segment `s` still owes rows to a committed window (see
/// [`owed_windows`]). Pure.
pub fn owes_late_rows(flow: &FlowConfig, s: &SegmentMeta, ledger: &LateLedger) -> bool {
    !owed_windows(flow, s, ledger).is_empty()
}

/// The committed windows late segment `s` still owes rows to: those it
/// overlaps that ended at or before both the watermark when it was
/// registered (`late_before_ms`) and the watermark now, that no late-data
/// run has moved it into, and that the flow did not commit after it was
/// registered (by etcd revision: a `reset --mode flush` recommits windows
/// that then read it; finding 3 of issue 19). None for a segment registered
/// on time. Pure.
pub fn owed_windows(flow: &FlowConfig, s: &SegmentMeta, ledger: &LateLedger) -> Vec<Window> {
    let (Some(before), Some(now)) = (s.late_before_ms, ledger.watermark_ms) else { return vec![] };
    let until = before.min(now);
    let buckets = flow.windows();
    let mut owed = vec![];
    let mut w = buckets.containing(s.start_time_ms);
    while w.start_ms <= s.end_time_ms && w.end_ms <= until && w.end_ms > w.start_ms {
        let moved = ledger.moved.get(&w.start_ms).is_some_and(|m| m.contains(&s.segment_name));
        if !moved && !ledger.committed_after(w, s.registered_revision) {
            owed.push(w);
        }
        w = buckets.window_at(w.end_ms);
    }
    owed
}

/// Late segments moved into each committed window by late-data runs:
/// window start -> segment names (see `registry::late_ledger`).
pub type MovedLate = HashMap<i64, std::collections::HashSet<String>>;

/// What the planner decided for one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run these windows as one task.
    Run {
        /// Where the task starts: the watermark (or the cold start), ms.
        from_ms: i64,
        /// The windows with data, in order; the task covers
        /// `[from_ms, windows.last().end_ms)`.
        windows: Vec<Window>,
        /// Empty windows inside that range, skipped.
        skipped_windows: u64,
        /// DONE segments overlapping any of the windows (names sorted).
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
fn consuming_floor_ms(seg: &SegmentFacts, latest_done_end: &FxHashMap<i32, i64>) -> i64 {
    let own = seg.has_rows.then_some(seg.start_ms);
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
///
/// Every plan parses every segment's name, so this scans bytes (the same
/// split as `rsplitn(4, "__")`, property-tested against it) and gives up at
/// the first byte that cannot end an LLC name.
pub fn llc_name(name: &str) -> Option<(i32, u64)> {
    let b = name.as_bytes();
    if b.last() != Some(&b'Z') {
        return None;
    }
    // the last three `__` separators, from the right, not overlapping
    let mut cuts = [0usize; 3];
    let (mut found, mut i) = (0, b.len());
    while found < 3 && i >= 2 {
        if b[i - 1] == b'_' && b[i - 2] == b'_' {
            cuts[found] = i - 2;
            found += 1;
            i -= 2;
        } else {
            i -= 1;
        }
    }
    if found < 3 {
        return None;
    }
    let (time, seq) = (&name[cuts[0] + 2..], &name[cuts[1] + 2..cuts[0]]);
    let (partition, table) = (&name[cuts[2] + 2..cuts[1]], &name[..cuts[2]]);
    let time_ok = time.len() == 14
        && time.as_bytes()[8] == b'T'
        && time.bytes().enumerate().all(|(i, b)| i == 8 || i == 13 || b.is_ascii_digit());
    if !time_ok || table.is_empty() {
        return None;
    }
    Some((partition.parse::<i32>().ok()?, seq.parse::<u64>().ok()?))
}

/// What [`plan`] reads of one segment: its times, stream partition, LLC
/// name parsed ([`llc_name`]), and whether it is planned at all. The
/// controller's segment cache keeps one beside each record
/// (`authority::SegmentCache`), so a plan walks a dense array of 40 bytes a
/// segment rather than every record and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFacts {
    /// `start_time_ms`, UTC epoch ms.
    start_ms: i64,
    /// `end_time_ms`, UTC epoch ms, inclusive.
    end_ms: i64,
    /// Sequence and stream partition of an LLC name (when `is_llc`; two
    /// fields, not an `Option` of a pair, which would take 24 bytes).
    llc_seq: u64,
    llc_partition: i32,
    is_llc: bool,
    /// `partition`.
    partition: i32,
    role: Role,
    /// `total_docs > 0`.
    has_rows: bool,
    /// `end_of_stream`.
    ended: bool,
    /// `late_before_ms` is set: registered late, its rows may be owed to
    /// committed windows ([`plan_late`]).
    late: bool,
}

/// How the planner treats a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// CONSUMING: holds back the windows it may still receive rows for.
    Consuming,
    /// DONE with rows and no error: an input of the windows it overlaps.
    Input,
    /// DONE without rows, or with an error: never planned.
    Ignored,
}

impl SegmentFacts {
    /// The facts of `s`.
    pub fn of(s: &SegmentMeta) -> Self {
        let role = match s.status {
            SegmentStatus::Consuming => Role::Consuming,
            SegmentStatus::Done if s.total_docs > 0 && s.error.is_empty() => Role::Input,
            SegmentStatus::Done => Role::Ignored,
        };
        let llc = if role == Role::Input { llc_name(&s.segment_name) } else { None };
        SegmentFacts {
            start_ms: s.start_time_ms,
            end_ms: s.end_time_ms,
            llc_seq: llc.map_or(0, |l| l.1),
            llc_partition: llc.map_or(0, |l| l.0),
            is_llc: llc.is_some(),
            partition: s.partition,
            role,
            has_rows: s.total_docs > 0,
            ended: s.end_of_stream,
            late: s.late_before_ms.is_some(),
        }
    }

    /// Whether the segment was registered late (`late_before_ms` is set).
    pub fn late(&self) -> bool {
        self.late
    }

    /// (stream partition, sequence) of a DONE segment's LLC name.
    fn llc(&self) -> Option<(i32, u64)> {
        self.is_llc.then_some((self.llc_partition, self.llc_seq))
    }

    /// The facts of each of `segments`, in their order.
    pub fn of_all(segments: &[SegmentMeta]) -> FactIndex {
        segments.iter().map(SegmentFacts::of).collect()
    }
}

/// The [`SegmentFacts`] of a table's segments, in the list's order, with
/// their [`Summary`], made by the first plan that needs it and kept until
/// the facts change: the plans of one list (the planner's after an event,
/// the commit's recheck, each `r2o watermark` call) make it once. Derefs to
/// the facts; a mutable borrow forgets the summary.
#[derive(Debug, Clone, Default)]
pub struct FactIndex {
    list: Vec<SegmentFacts>,
    summary: std::sync::OnceLock<Summary>,
}

impl FactIndex {
    /// The summary of the facts (O(S) the first time after a change).
    pub fn summary(&self) -> &Summary {
        self.summary.get_or_init(|| Summary::of(&self.list))
    }

    /// The facts, given back.
    pub fn into_vec(self) -> Vec<SegmentFacts> {
        self.list
    }
}

impl std::ops::Deref for FactIndex {
    type Target = Vec<SegmentFacts>;
    fn deref(&self) -> &Vec<SegmentFacts> {
        &self.list
    }
}

impl std::ops::DerefMut for FactIndex {
    fn deref_mut(&mut self) -> &mut Vec<SegmentFacts> {
        self.summary = std::sync::OnceLock::new();
        &mut self.list
    }
}

impl FromIterator<SegmentFacts> for FactIndex {
    fn from_iter<I: IntoIterator<Item = SegmentFacts>>(iter: I) -> Self {
        FactIndex { list: iter.into_iter().collect(), summary: Default::default() }
    }
}

/// What a plan reads of every segment of a table, whatever the watermark:
/// the CONSUMING segments, the end of each partition's latest DONE segment,
/// the latest completed LLC segment of each partition, the earliest start
/// with rows and the latest DONE end (UTC epoch ms), and whether any
/// segment was registered late. One pass over the facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Positions of the CONSUMING segments, in the list's order.
    consuming: Vec<usize>,
    latest_done_end: FxHashMap<i32, i64>,
    latest: FxHashMap<i32, Latest>,
    with_rows_min: Option<i64>,
    max_done_end: Option<i64>,
    late: bool,
}

impl Summary {
    /// The summary of `facts`: O(S).
    pub fn of(facts: &[SegmentFacts]) -> Summary {
        let mut s = Summary::default();
        for (i, f) in facts.iter().enumerate() {
            s.late |= f.late();
            if f.has_rows {
                s.with_rows_min = Some(s.with_rows_min.map_or(f.start_ms, |m| m.min(f.start_ms)));
            }
            match f.role {
                Role::Consuming => s.consuming.push(i),
                Role::Input => {
                    let e = s.latest_done_end.entry(f.partition).or_insert(i64::MIN);
                    *e = (*e).max(f.end_ms);
                    s.max_done_end = Some(s.max_done_end.map_or(f.end_ms, |m| m.max(f.end_ms)));
                    note_latest_completed(&mut s.latest, f, i);
                }
                Role::Ignored => {}
            }
        }
        s
    }

    /// Whether any segment was registered late (`late_before_ms` set):
    /// without one, no late-data run is owed.
    pub fn any_late(&self) -> bool {
        self.late
    }
}

/// The latest completed LLC segment of a stream partition (rule 5).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latest {
    seq: u64,
    start_ms: i64,
    /// Its position in the table's segments.
    at: usize,
    /// It ends its stream: it holds no window back.
    ended: bool,
}

/// Takes the DONE segment at `at` into `latest`: per LLC partition the
/// segment of the highest sequence (of two with one sequence, the earlier
/// start, then the first seen: the order a start-order sweep meets them).
fn note_latest_completed(latest: &mut FxHashMap<i32, Latest>, f: &SegmentFacts, at: usize) {
    if let Some((partition, seq)) = f.llc() {
        let this = Latest { seq, start_ms: f.start_ms, at, ended: f.ended };
        let e = latest.entry(partition).or_insert(this);
        if seq > e.seq || (seq == e.seq && f.start_ms < e.start_ms) {
            *e = this;
        }
    }
}

/// Plans the next task of one table from `watermark_ms` (`None` before
/// the first commit: Pinot's cold start): the ready windows with data that
/// follow it, batched up to `budget`. Pure: no I/O, no clock.
///
/// [`plan_over`] with the facts read from `segments` (O(S) more).
pub fn plan(
    flow: &FlowConfig,
    segments: &[SegmentMeta],
    watermark_ms: Option<i64>,
    now_ms: i64,
    budget: &Budget,
) -> Decision {
    plan_over(flow, segments, &SegmentFacts::of_all(segments), watermark_ms, now_ms, budget)
}

/// [`plan`] over segments whose [`SegmentFacts`] are kept beside them
/// (`facts[i]` is the facts of `segments[i]`).
///
/// What the plan needs of every segment (the end of each partition's latest
/// DONE segment, the latest completed segment of each partition, the
/// CONSUMING ones) is the facts' [`Summary`], made once per change of the
/// list; a pass over the facts picks the DONE segments that end at or after
/// the watermark, and only those are swept, in start order. A table of S
/// segments, R of them after the watermark, costs O(S + R log R) per plan
/// (the O(S) a filter of 40-byte facts), however many windows it covers or
/// skips, and reads no record or name of the S - R settled segments.
pub fn plan_over(
    flow: &FlowConfig,
    segments: &[SegmentMeta],
    facts: &FactIndex,
    watermark_ms: Option<i64>,
    now_ms: i64,
    budget: &Budget,
) -> Decision {
    debug_assert_eq!(segments.len(), facts.len(), "one SegmentFacts a segment");
    let buckets = flow.windows();
    let Summary { consuming, latest_done_end, latest, with_rows_min, max_done_end, .. } = facts.summary();
    let (with_rows_min, max_done_end) = (*with_rows_min, *max_done_end);
    // The sweep's windows start at the watermark, so a segment that ends
    // before it never overlaps one: it only counts in the summary.
    let mut done: Vec<usize> = facts
        .iter()
        .enumerate()
        .filter(|(_, f)| f.role == Role::Input && watermark_ms.is_none_or(|w| f.end_ms >= w))
        .map(|(i, _)| i)
        .collect();
    // stable: segments of one start stay in the table's order
    done.sort_by_key(|&i| facts[i].start_ms);
    let consuming_floor = consuming
        .iter()
        .map(|&c| (consuming_floor_ms(&facts[c], latest_done_end), segments[c].segment_name.as_str()))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    let from = match (watermark_ms, with_rows_min) {
        (Some(w), _) => w,
        (None, Some(min)) => buckets.floor(min),
        (None, None) => return Decision::Wait(WaitReason::NoSegments),
    };

    let mut windows: Vec<Window> = Vec::new();
    let mut inputs: Vec<usize> = Vec::new();
    let mut taken: FxHashSet<usize> = FxHashSet::default();
    let (mut rows, mut bytes) = (0u64, 0u64);
    let (mut skipped, mut pending_skips) = (0u64, 0u64);
    let mut active: Vec<usize> = Vec::new();
    let mut next = 0usize; // first segment of `done` not yet active
    let mut window = buckets.window_at(from);
    let stop =
        |windows: &Vec<Window>, reason: WaitReason| -> Option<WaitReason> { windows.is_empty().then_some(reason) };
    let wait: Option<WaitReason> = loop {
        if !past_buffer(&window, now_ms, flow.buffer_ms) {
            let caught_up = max_done_end.is_none_or(|e| e < window.start_ms) && consuming.is_empty();
            let reason = if caught_up {
                WaitReason::CaughtUp { watermark_ms: window.start_ms }
            } else {
                WaitReason::Buffer { window, eligible_at_ms: window.end_ms.saturating_add(flow.buffer_ms) }
            };
            break stop(&windows, reason);
        }
        if let Some((floor, name)) = consuming_floor {
            if floor < window.end_ms {
                break stop(&windows, WaitReason::Consuming { window, segment: name.to_string() });
            }
        }
        while next < done.len() && facts[done[next]].start_ms < window.end_ms {
            active.push(done[next]);
            next += 1;
        }
        active.retain(|&i| facts[i].end_ms >= window.start_ms);
        if active.is_empty() {
            // an empty window: jump to the window of the next segment
            if next == done.len() || window.end_ms == i64::MAX {
                let reason = WaitReason::CaughtUp { watermark_ms: window.start_ms };
                break stop(&windows, reason);
            }
            let next_start = buckets.floor(facts[done[next]].start_ms).max(window.end_ms);
            pending_skips += buckets.count_between(window.start_ms, next_start);
            window = buckets.window_at(next_start);
            continue;
        }
        let holding = active.iter().find(|&&i| {
            facts[i].end_ms < window.end_ms
                && facts[i].llc().is_some_and(|(p, _)| latest.get(&p).is_some_and(|l| l.at == i && !l.ended))
        });
        if let Some(&i) = holding {
            break stop(&windows, WaitReason::LastCompleted { window, segment: segments[i].segment_name.clone() });
        }
        let fresh: Vec<usize> = active.iter().copied().filter(|i| !taken.contains(i)).collect();
        let add_rows: u64 = fresh.iter().map(|&i| segments[i].total_docs).sum();
        let add_bytes: u64 = fresh.iter().map(|&i| segments[i].size_bytes).sum();
        if !windows.is_empty()
            && (windows.len() >= budget.max_windows
                || rows.saturating_add(add_rows) > budget.max_input_rows
                || bytes.saturating_add(add_bytes) > budget.max_input_bytes)
        {
            break None;
        }
        for i in fresh {
            taken.insert(i);
            inputs.push(i);
        }
        rows = rows.saturating_add(add_rows);
        bytes = bytes.saturating_add(add_bytes);
        skipped += pending_skips;
        pending_skips = 0;
        windows.push(window);
        if window.end_ms == i64::MAX {
            break None;
        }
        window = buckets.window_at(window.end_ms);
    };
    if let Some(reason) = wait {
        return Decision::Wait(reason);
    }
    let mut inputs: Vec<SegmentMeta> = inputs.into_iter().map(|i| segments[i].clone()).collect();
    inputs.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
    Decision::Run { from_ms: from, windows, skipped_windows: skipped, inputs }
}

/// Whether a task planned from `from_ms` for `windows` with `input_names`
/// (sorted) would be planned the same way now, from current segment
/// metadata: the same windows (none added in the range, none held back), the
/// same inputs. Used at commit when the table's segments changed after
/// planning.
///
/// # Errors
/// What changed, in words, when the plan differs.
pub fn recheck(
    flow: &FlowConfig,
    segments: &[SegmentMeta],
    facts: &FactIndex,
    from_ms: i64,
    windows: &[Window],
    input_names: &[String],
    now_ms: i64,
) -> Result<(), String> {
    let budget = Budget { max_windows: windows.len().max(1), max_input_rows: u64::MAX, max_input_bytes: u64::MAX };
    let range = match (windows.first(), windows.last()) {
        (Some(a), Some(b)) => format!("windows [{}, {})", a.start_ms, b.end_ms),
        _ => "no windows".into(),
    };
    match plan_over(flow, segments, facts, Some(from_ms), now_ms, &budget) {
        Decision::Run { windows: now, inputs, .. } => {
            if now.len() < windows.len() && windows.starts_with(&now) {
                // the plan stops early now: say why the next window waits
                let after = now.last().map_or(from_ms, |w| w.end_ms);
                if let Decision::Wait(reason) =
                    plan_over(flow, segments, facts, Some(after), now_ms, &Budget::ONE_WINDOW)
                {
                    return Err(format!("{range}: {reason}"));
                }
            }
            if now != windows {
                return Err(format!(
                    "the windows with data in {range} changed since planning (a segment with rows in a skipped window was registered, or a window is no longer ready)"
                ));
            }
            let names: Vec<&str> = inputs.iter().map(|s| s.segment_name.as_str()).collect();
            if names != input_names.iter().map(String::as_str).collect::<Vec<_>>() {
                let added: Vec<&str> = names.iter().copied().filter(|n| !input_names.iter().any(|i| i == n)).collect();
                let gone: Vec<&str> = input_names.iter().map(String::as_str).filter(|n| !names.contains(n)).collect();
                return Err(format!("the inputs of {range} changed since planning (added: {added:?}, gone: {gone:?})"));
            }
            Ok(())
        }
        Decision::Wait(reason) => Err(format!("{range} is no longer ready: {reason}")),
    }
}

/// Whether every input a task read is still registered with the same file
/// and row count (an input with another file or row count than the one read
/// is not the same input, and the task's plan no longer holds).
/// `segments` are in name order, as the segment cache holds them: each
/// input is found by binary search, O(I log S) for I inputs and S segments,
/// so a commit check on a table of 100,000s of segments reads only its
/// inputs' records.
pub fn inputs_unchanged(inputs: &[SegmentMeta], segments: &[SegmentMeta]) -> bool {
    debug_assert!(segments.windows(2).all(|p| p[0].segment_name <= p[1].segment_name), "segments in name order");
    inputs.iter().all(|i| {
        segments
            .binary_search_by(|s| s.segment_name.as_str().cmp(&i.segment_name))
            .is_ok_and(|at| segments[at].location == i.location && segments[at].total_docs == i.total_docs)
    })
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
            retention_ms: None,
            bucket_time_zone: None,
            late_data_policy: r2o_common::config::LateDataPolicy::Rematerialize,
            segment_name_postfix: None,
            segment_name_prefix: None,
            minion_instance_tag: r2o_common::config::DEFAULT_MINION_TAG.into(),
            schedule: None,
            allow_nan: false,
            offload_predicate: None,
            time_column: "ts".into(),
            sorted_column: None,
            partitioning: None,
            bucket_ms: bucket,
            buffer_ms: buffer,
            round_ms: None,
            partition_bucket_ms: None,
            merge_type: MergeType::Concat,
            aggregations: BTreeMap::new(),
            max_records_per_segment: 100,
            max_attempts_per_task: None,
            timeout_ms: None,
            max_records_per_task: None,
            mapper_threshold_bytes: None,
            max_segment_size_bytes: None,
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
            ..Default::default()
        }
    }

    fn llc(p: i32, seq: u64) -> String {
        format!("t__{p}__{seq}__20200913T1200Z")
    }

    /// The planner as it was before the one-pass planning (c.f. git
    /// 39df636): every DONE segment sorted and swept, every name parsed.
    /// [`plan`] must decide exactly as it did.
    fn plan_reference(
        flow: &FlowConfig,
        segments: &[SegmentMeta],
        watermark_ms: Option<i64>,
        now_ms: i64,
        budget: &Budget,
    ) -> Decision {
        let buckets = flow.windows();
        let mut done: Vec<&SegmentMeta> = segments
            .iter()
            .filter(|s| s.status == SegmentStatus::Done && s.total_docs > 0 && s.error.is_empty())
            .collect();
        done.sort_by_key(|s| s.start_time_ms);
        let consuming: Vec<&SegmentMeta> = segments.iter().filter(|s| s.status == SegmentStatus::Consuming).collect();
        let mut latest_done_end: HashMap<i32, i64> = HashMap::new();
        for s in &done {
            let e = latest_done_end.entry(s.partition).or_insert(i64::MIN);
            *e = (*e).max(s.end_time_ms);
        }
        let consuming_floor = consuming
            .iter()
            .map(|c| (consuming_floor_reference(c, &latest_done_end), c.segment_name.as_str()))
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
        let latest = latest_completed_reference(&done);
        let with_rows_min = segments.iter().filter(|s| s.total_docs > 0).map(|s| s.start_time_ms).min();
        let from = match (watermark_ms, with_rows_min) {
            (Some(w), _) => w,
            (None, Some(min)) => buckets.floor(min),
            (None, None) => return Decision::Wait(WaitReason::NoSegments),
        };
        let max_done_end = done.iter().map(|s| s.end_time_ms).max();

        let mut windows: Vec<Window> = Vec::new();
        let mut inputs: Vec<&SegmentMeta> = Vec::new();
        let mut taken: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let (mut rows, mut bytes) = (0u64, 0u64);
        let (mut skipped, mut pending_skips) = (0u64, 0u64);
        let mut active: Vec<&SegmentMeta> = Vec::new();
        let mut next = 0usize; // first segment of `done` not yet active
        let mut window = buckets.window_at(from);
        let stop =
            |windows: &Vec<Window>, reason: WaitReason| -> Option<WaitReason> { windows.is_empty().then_some(reason) };
        let wait: Option<WaitReason> = loop {
            if !past_buffer(&window, now_ms, flow.buffer_ms) {
                let caught_up = max_done_end.is_none_or(|e| e < window.start_ms) && consuming.is_empty();
                let reason = if caught_up {
                    WaitReason::CaughtUp { watermark_ms: window.start_ms }
                } else {
                    WaitReason::Buffer { window, eligible_at_ms: window.end_ms.saturating_add(flow.buffer_ms) }
                };
                break stop(&windows, reason);
            }
            if let Some((floor, name)) = consuming_floor {
                if floor < window.end_ms {
                    break stop(&windows, WaitReason::Consuming { window, segment: name.to_string() });
                }
            }
            while next < done.len() && done[next].start_time_ms < window.end_ms {
                active.push(done[next]);
                next += 1;
            }
            active.retain(|s| s.end_time_ms >= window.start_ms);
            if active.is_empty() {
                // an empty window: jump to the window of the next segment
                if next == done.len() || window.end_ms == i64::MAX {
                    let reason = WaitReason::CaughtUp { watermark_ms: window.start_ms };
                    break stop(&windows, reason);
                }
                let next_start = buckets.floor(done[next].start_time_ms).max(window.end_ms);
                pending_skips += buckets.count_between(window.start_ms, next_start);
                window = buckets.window_at(next_start);
                continue;
            }
            let holding = active.iter().find(|s| {
                s.end_time_ms < window.end_ms
                    && llc_name(&s.segment_name).is_some_and(|(p, _)| {
                        latest.get(&p).is_some_and(|(_, name, ended)| *name == s.segment_name && !ended)
                    })
            });
            if let Some(s) = holding {
                break stop(&windows, WaitReason::LastCompleted { window, segment: s.segment_name.clone() });
            }
            let fresh: Vec<&SegmentMeta> =
                active.iter().copied().filter(|s| !taken.contains(s.segment_name.as_str())).collect();
            let add_rows: u64 = fresh.iter().map(|s| s.total_docs).sum();
            let add_bytes: u64 = fresh.iter().map(|s| s.size_bytes).sum();
            if !windows.is_empty()
                && (windows.len() >= budget.max_windows
                    || rows.saturating_add(add_rows) > budget.max_input_rows
                    || bytes.saturating_add(add_bytes) > budget.max_input_bytes)
            {
                break None;
            }
            for s in fresh {
                taken.insert(&s.segment_name);
                inputs.push(s);
            }
            rows = rows.saturating_add(add_rows);
            bytes = bytes.saturating_add(add_bytes);
            skipped += pending_skips;
            pending_skips = 0;
            windows.push(window);
            if window.end_ms == i64::MAX {
                break None;
            }
            window = buckets.window_at(window.end_ms);
        };
        if let Some(reason) = wait {
            return Decision::Wait(reason);
        }
        let mut inputs: Vec<SegmentMeta> = inputs.into_iter().cloned().collect();
        inputs.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
        Decision::Run { from_ms: from, windows, skipped_windows: skipped, inputs }
    }

    fn consuming_floor_reference(seg: &SegmentMeta, latest_done_end: &HashMap<i32, i64>) -> i64 {
        let own = (seg.total_docs > 0).then_some(seg.start_time_ms);
        let prev = latest_done_end.get(&seg.partition).copied();
        match (own, prev) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => i64::MIN,
        }
    }

    fn latest_completed_reference<'a>(done: &[&'a SegmentMeta]) -> HashMap<i32, (u64, &'a str, bool)> {
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// The one-pass plan, over name-ordered tables with CONSUMING,
        /// empty, failed and end-of-stream segments, LLC names of one
        /// partition and sequence twice, times before 1970, from the cold
        /// start or any watermark, equals the plan of the sweep over every
        /// segment.
        #[test]
        fn the_one_pass_plan_decides_as_the_sweep_over_every_segment(
            raw in proptest::collection::vec(
                (-200i64..200, 0i64..60, 0u8..8, 0i32..3, 0u64..6, any::<bool>()), 0..40),
            watermark in proptest::option::of(-240i64..240),
            at_a_segment_end in proptest::option::of(0usize..40),
            bucket in 1i64..40,
            buffer in 0i64..30,
            now in -100i64..300,
            max_windows in 1usize..6,
            max_input_rows in 5u64..80,
        ) {
            let f = flow(bucket, buffer);
            let mut segs: Vec<SegmentMeta> = raw.iter().enumerate().map(|(i, (s, len, kind, p, seq, eos))| {
                // LLC names, some of another table's prefix (one partition and sequence twice)
                let name = match (*kind % 2, i % 3) {
                    (0, 0) => format!("u{i:02}__{p}__{seq}__20200913T1200Z"),
                    (0, _) => llc(*p, *seq),
                    _ => format!("s{i:02}"),
                };
                let status = if *kind == 7 { SegmentStatus::Consuming } else { SegmentStatus::Done };
                let mut m = seg(&name, *s, s + len, status, *p);
                m.total_docs = if *kind == 5 { 0 } else { 10 + *seq };
                m.end_of_stream = *eos && *kind != 7;
                if *kind == 3 {
                    m.error = "unreadable".into();
                }
                m
            }).collect();
            segs.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
            segs.dedup_by(|a, b| a.segment_name == b.segment_name);
            // where a segment ends: the boundary the sweep must not lose
            let watermark = match at_a_segment_end.and_then(|k| segs.get(k % segs.len().max(1))) {
                Some(s) => Some(s.end_time_ms),
                None => watermark,
            };
            let watermark = watermark.map(|w| w.div_euclid(bucket) * bucket);
            let budget = Budget { max_windows, max_input_rows, max_input_bytes: u64::MAX };
            prop_assert_eq!(
                plan(&f, &segs, watermark, now, &budget),
                plan_reference(&f, &segs, watermark, now, &budget)
            );
        }
    }

    /// One window per task, as Pinot plans.
    fn plan1(f: &FlowConfig, s: &[SegmentMeta], wm: Option<i64>, now: i64) -> Decision {
        plan(f, s, wm, now, &Budget::ONE_WINDOW)
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
        let d = plan1(&f, &s, None, 1000 * H);
        assert!(
            matches!(d, Decision::Run { windows, .. } if windows == vec![Window { start_ms: 24 * H, end_ms: 48 * H }])
        );
    }

    #[test]
    fn straddling_segment_belongs_to_both_windows() {
        let f = flow(24 * H, 0);
        let s = [seg("a", 0, 30 * H, SegmentStatus::Done, 0), seg("b", 30 * H, 47 * H, SegmentStatus::Done, 0)];
        assert_eq!(names(&plan1(&f, &s, Some(0), 1000 * H)), vec!["a"]);
        assert_eq!(names(&plan1(&f, &s, Some(24 * H), 1000 * H)), vec!["a", "b"]);
        assert_eq!(
            plan1(&f, &s, Some(48 * H), 1000 * H),
            Decision::Wait(WaitReason::CaughtUp { watermark_ms: 48 * H })
        );
    }

    #[test]
    fn gap_is_skipped_and_counted() {
        let f = flow(H, 0);
        let s = [seg("a", 0, 10, SegmentStatus::Done, 0), seg("b", 5 * H + 1, 5 * H + 2, SegmentStatus::Done, 0)];
        let d = plan1(&f, &s, Some(H), 1000 * H);
        assert_eq!(
            d,
            Decision::Run {
                from_ms: H,
                windows: vec![Window { start_ms: 5 * H, end_ms: 6 * H }],
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
            matches!(plan1(&f, &s, None, 3 * H - 1), Decision::Wait(WaitReason::Buffer { eligible_at_ms, .. }) if eligible_at_ms == 3 * H)
        );
        assert!(matches!(plan1(&f, &s, None, 3 * H), Decision::Run { .. }));
    }

    #[test]
    fn consuming_segment_holds_its_windows() {
        let f = flow(H, 0);
        let s = [seg("a", 0, H + 10, SegmentStatus::Done, 0), seg("c", H + 20, H + 30, SegmentStatus::Consuming, 0)];
        assert!(matches!(plan1(&f, &s, Some(0), 100 * H), Decision::Run { .. }));
        assert!(
            matches!(plan1(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::Consuming { ref segment, .. }) if segment == "c")
        );
        // an empty CONSUMING segment: Pinot's rule uses the partition's last DONE end
        let mut empty = seg("e", 0, 0, SegmentStatus::Consuming, 0);
        empty.total_docs = 0;
        let s = [seg("a", 0, H + 10, SegmentStatus::Done, 0), empty.clone()];
        assert!(matches!(plan1(&f, &s, Some(0), 100 * H), Decision::Run { .. }));
        assert!(matches!(plan1(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::Consuming { .. })));
        // an empty CONSUMING segment of a partition with no DONE segment holds everything
        empty.partition = 7;
        let s = [seg("a", 0, H + 10, SegmentStatus::Done, 0), empty];
        assert!(matches!(plan1(&f, &s, Some(0), 100 * H), Decision::Wait(WaitReason::Consuming { .. })));
    }

    #[test]
    fn negative_and_huge_times() {
        let f = flow(H, 0);
        let s = [seg("a", -H - 5, -H + 5, SegmentStatus::Done, 0)];
        assert!(matches!(plan1(&f, &s, None, 0), Decision::Run { windows, .. } if windows[0].start_ms == -2 * H));
        let s = [seg("z", i64::MAX - 5, i64::MAX, SegmentStatus::Done, 0)];
        assert!(matches!(plan1(&f, &s, None, i64::MAX), Decision::Wait(_) | Decision::Run { .. }));
        assert!(matches!(plan1(&f, &s, None, 0), Decision::Wait(WaitReason::Buffer { .. })));
    }

    #[test]
    fn inputs_are_unchanged_only_when_each_is_registered_with_its_file_and_rows() {
        let located = |name: &str, location: &str, docs: u64| SegmentMeta {
            location: location.into(),
            total_docs: docs,
            ..seg(name, 0, 1, SegmentStatus::Done, 0)
        };
        let segments = [located("a", "f/a", 5), located("b", "f/b", 7), located("c", "f/c", 1)];
        assert!(inputs_unchanged(&[located("c", "f/c", 1), located("a", "f/a", 5)], &segments));
        assert!(inputs_unchanged(&[], &segments));
        assert!(!inputs_unchanged(&[located("a", "f/a2", 5)], &segments), "another file");
        assert!(!inputs_unchanged(&[located("b", "f/b", 8)], &segments), "another row count");
        assert!(!inputs_unchanged(&[located("a", "f/a", 5), located("d", "f/d", 1)], &segments), "deleted");
    }

    /// The facts kept beside each cached segment stay small: 146,000
    /// segments (x100) hold under 6 MB of them.
    #[test]
    fn a_segments_facts_take_40_bytes() {
        assert!(std::mem::size_of::<SegmentFacts>() <= 40, "{} bytes", std::mem::size_of::<SegmentFacts>());
    }

    /// The split `llc_name` scans for, written the short way.
    fn llc_name_by_rsplitn(name: &str) -> Option<(i32, u64)> {
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

    proptest! {
        #[test]
        fn llc_name_splits_as_rsplitn_does(
            table in "[a_]{0,6}",
            partition in "[0-9_-]{0,4}",
            seq in "[0-9_]{0,4}",
            time in "[0-9TZ_]{12,16}",
            junk in "[a_Z]{0,3}",
        ) {
            for name in [format!("{table}__{partition}__{seq}__{time}"), format!("{table}__{partition}__{seq}__20200913T1200Z"),
                         format!("{table}{junk}__{partition}__{seq}__{time}{junk}"), format!("{junk}{time}")] {
                prop_assert_eq!(llc_name(&name), llc_name_by_rsplitn(&name), "{}", name);
            }
        }
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
        assert_eq!(names(&plan1(&f, &s, Some(0), 100 * H)), vec![llc(0, 0)], "window [0, H) runs");
        assert!(
            matches!(plan1(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::LastCompleted { ref segment, .. }) if *segment == llc(0, 1))
        );
        // the next segment arrives (and crosses the window end): the window runs
        let mut more = s.to_vec();
        more.push(seg(&llc(0, 2), H + 40, 2 * H + 5, SegmentStatus::Done, 0));
        assert_eq!(names(&plan1(&f, &more, Some(H), 100 * H)), vec![llc(0, 0), llc(0, 1), llc(0, 2)]);
        // the stream ended with the last one: it does not hold the window
        let mut ended = s.to_vec();
        ended[1].end_of_stream = true;
        assert_eq!(names(&plan1(&f, &ended, Some(H), 100 * H)), vec![llc(0, 0), llc(0, 1)]);
        // a segment without an LLC name (an upload) never holds
        let uploaded = [seg("upload-1", 10, H + 10, SegmentStatus::Done, 0)];
        assert_eq!(names(&plan1(&f, &uploaded, Some(H), 100 * H)), vec!["upload-1"]);
        // another partition's latest segment holds too
        let s =
            [seg(&llc(0, 4), 10, 3 * H, SegmentStatus::Done, 0), seg(&llc(1, 9), 10, H + 1, SegmentStatus::Done, 1)];
        assert!(matches!(plan1(&f, &s, Some(H), 100 * H), Decision::Wait(WaitReason::LastCompleted { .. })));
    }

    #[test]
    fn recheck_finds_new_inputs_new_data_in_skipped_windows_and_new_consuming_segments() {
        let f = flow(H, 0);
        let a = seg("a", 5 * H + 1, 5 * H + 2, SegmentStatus::Done, 0);
        let b = seg("b", 7 * H + 1, 7 * H + 2, SegmentStatus::Done, 0);
        let segs = vec![seg("z", 0, 10, SegmentStatus::Done, 0), a.clone(), b.clone()];
        let budget = Budget { max_windows: 2, max_input_rows: u64::MAX, max_input_bytes: u64::MAX };
        let Decision::Run { from_ms, windows, skipped_windows, inputs } = plan(&f, &segs, Some(H), 100 * H, &budget)
        else {
            panic!("runs")
        };
        assert_eq!((from_ms, windows.len(), skipped_windows), (H, 2, 5), "two windows, five empty ones skipped");
        let names: Vec<String> = inputs.iter().map(|s| s.segment_name.clone()).collect();
        assert_eq!(recheck(&f, &segs, &SegmentFacts::of_all(&segs), H, &windows, &names, 100 * H), Ok(()));
        // a segment registered after the task's range changes nothing
        let mut later = segs.clone();
        later.push(seg("late", 9 * H, 9 * H + 1, SegmentStatus::Done, 0));
        assert_eq!(recheck(&f, &later, &SegmentFacts::of_all(&later), H, &windows, &names, 100 * H), Ok(()));
        // a new input of a window
        let mut added = segs.clone();
        added.push(seg("c", 5 * H + 5, 5 * H + 6, SegmentStatus::Done, 0));
        let e = recheck(&f, &added, &SegmentFacts::of_all(&added), H, &windows, &names, 100 * H).unwrap_err();
        assert!(e.contains("\"c\""), "{e}");
        // data in a skipped window, before or between the task's windows
        for at in [2 * H + 5, 6 * H + 5] {
            let mut skipped = segs.clone();
            skipped.push(seg("d", at, at + 1, SegmentStatus::Done, 0));
            assert!(
                recheck(&f, &skipped, &SegmentFacts::of_all(&skipped), H, &windows, &names, 100 * H).is_err(),
                "data at {at}"
            );
        }
        // a CONSUMING segment that may still hold rows of the last window
        let mut consuming = segs;
        consuming.push(seg("e", 7 * H + 9, 7 * H + 9, SegmentStatus::Consuming, 0));
        let e = recheck(&f, &consuming, &SegmentFacts::of_all(&consuming), H, &windows, &names, 100 * H).unwrap_err();
        assert!(e.contains("CONSUMING"), "{e}");
    }

    #[test]
    fn batches_windows_up_to_the_budget() {
        let f = flow(H, 0);
        // ten hourly segments of 10 rows, a gap of two hours after the fifth
        let segs: Vec<SegmentMeta> = (0..10)
            .map(|i| {
                let h = if i < 5 { i } else { i + 2 };
                seg(&format!("s{i}"), h * H + 1, h * H + 2, SegmentStatus::Done, 0)
            })
            .collect();
        let rows = |n: u64| Budget { max_windows: 100, max_input_rows: n, max_input_bytes: u64::MAX };
        let Decision::Run { windows, skipped_windows, inputs, .. } = plan(&f, &segs, Some(0), 100 * H, &rows(70))
        else {
            panic!()
        };
        assert_eq!((windows.len(), skipped_windows, inputs.len()), (7, 2, 7), "70 rows: 7 windows, the gap inside");
        assert_eq!(windows.last().unwrap().end_ms, 9 * H);
        // a single window over the budget is still a task
        let Decision::Run { windows, .. } = plan(&f, &segs, Some(0), 100 * H, &rows(1)) else { panic!() };
        assert_eq!(windows.len(), 1);
        // the batch stops at the first window that is not ready
        let Decision::Run { windows, .. } = plan(&f, &segs, Some(0), 4 * H, &rows(1_000)) else { panic!() };
        assert_eq!(windows.len(), 4, "windows ending after now wait");
        // a straddling segment counts once
        let straddle = vec![seg("x", 0, 3 * H, SegmentStatus::Done, 0)];
        let Decision::Run { windows, inputs, .. } = plan(&f, &straddle, Some(0), 100 * H, &rows(10)) else { panic!() };
        assert_eq!((windows.len(), inputs.len()), (4, 1));
    }

    #[test]
    fn late_segments_owe_the_committed_windows_they_overlap() {
        use r2o_common::config::LateDataPolicy;
        let mut f = flow(H, H);
        let mut segs: Vec<SegmentMeta> =
            (0..4).map(|i| seg(&format!("s{i}"), i * H, i * H + 10, SegmentStatus::Done, 0)).collect();
        // registered when the watermark was 3h: it owes windows 1 and 2, not 3
        let mut late = seg("late", H + 5, 3 * H + 5, SegmentStatus::Done, 0);
        late.late = true;
        late.late_before_ms = Some(3 * H);
        late.registered_revision = 50;
        segs.push(late);
        let mut ledger =
            LateLedger { committed: vec![(0, 3 * H, 10)], watermark_ms: Some(3 * H), ..Default::default() };
        let plan = |f: &FlowConfig, l: &LateLedger| plan_late(f, &segs, l, None, None).plan;
        let p = plan(&f, &ledger).unwrap();
        assert_eq!(p.window, Window { start_ms: H, end_ms: 2 * H });
        let names: Vec<&str> = p.inputs.iter().map(|s| s.segment_name.as_str()).collect();
        assert_eq!(names, vec!["late", "s1"], "rematerialize reads every input of the window");
        assert_eq!((p.run.policy.as_str(), p.run.segments.clone()), ("rematerialize", vec!["late".to_string()]));
        ledger.moved.entry(H).or_default().insert("late".into());
        let p = plan(&f, &ledger).unwrap();
        assert_eq!(p.window.start_ms, 2 * H);
        ledger.moved.entry(2 * H).or_default().insert("late".into());
        assert_eq!(plan(&f, &ledger), None, "window 3 was not committed when it arrived");
        f.late_data_policy = LateDataPolicy::Append;
        ledger.moved.clear();
        let p = plan(&f, &ledger).unwrap();
        assert_eq!(p.inputs.len(), 1, "append reads the late segment only");
        f.late_data_policy = LateDataPolicy::Ignore;
        assert_eq!(plan(&f, &ledger), None);
    }

    #[test]
    fn after_a_flush_a_late_mark_owes_nothing_to_windows_committed_again() {
        // finding 3 of issue 19: `reset --mode flush` and clearing the late
        // marks are two steps; a crash between them left marks that made
        // late runs commit windows the restarted flow committed too
        let f = flow(H, H);
        let mut late = seg("late", H + 5, H + 9, SegmentStatus::Done, 0);
        late.late = true;
        late.late_before_ms = Some(3 * H);
        late.registered_revision = 50;
        let segs = vec![seg("s1", H, H + 10, SegmentStatus::Done, 0), late];
        // just flushed: no watermark, no lineage
        let flushed = LateLedger::default();
        assert_eq!(plan_late(&f, &segs, &flushed, None, None), LateOutcome::default());
        // the flow committed the window again after the mark (revision 60 > 50): it read the segment
        let again = LateLedger { committed: vec![(0, 3 * H, 60)], watermark_ms: Some(3 * H), ..Default::default() };
        assert!(owed_windows(&f, &segs[1], &again).is_empty());
        // before it was registered (revision 40 < 50): owed
        let before = LateLedger { committed: vec![(0, 3 * H, 40)], watermark_ms: Some(3 * H), ..Default::default() };
        assert_eq!(owed_windows(&f, &segs[1], &before), vec![Window { start_ms: H, end_ms: 2 * H }]);
        // the watermark now behind the window (flushed and recommitting): not owed yet
        let behind = LateLedger { watermark_ms: Some(H), ..before };
        assert!(owed_windows(&f, &segs[1], &behind).is_empty());
    }

    #[test]
    fn a_window_that_cannot_be_rematerialized_never_holds_later_ones() {
        // findings 1 and 14 of issue 19
        let f = flow(H, H);
        let late = |name: &str, at: i64| {
            let mut s = seg(name, at, at + 5, SegmentStatus::Done, 0);
            s.late = true;
            s.late_before_ms = Some(10 * H);
            s.registered_revision = 90;
            s
        };
        let mut segs: Vec<SegmentMeta> =
            (0..10).map(|i| seg(&format!("s{i}"), i * H, i * H + 10, SegmentStatus::Done, 0)).collect();
        segs.extend([late("l1", H + 1), late("l5", 5 * H + 1), late("l7", 7 * H + 1)]);
        let ledger = LateLedger { committed: vec![(0, 10 * H, 10)], watermark_ms: Some(10 * H), ..Default::default() };
        // retention deleted REALTIME segments up to 2h: window 1 is passed over, window 5 runs
        let out = plan_late(&f, &segs, &ledger, None, Some(2 * H));
        assert_eq!(out.plan.unwrap().window.start_ms, 5 * H);
        assert_eq!(out.blocked.len(), 1);
        assert_eq!(out.blocked[0].0.start_ms, H);
        assert!(out.blocked[0].1.contains("retention"), "{}", out.blocked[0].1);
        // a discovered file of window 5 whose rows moved was refused since: a
        // rematerialize run would drop them; window 1 runs, 5 is passed over
        segs[5].error = "the file changed after registration".into();
        segs[5].error_watermark_ms = Some(10 * H);
        let out = plan_late(&f, &segs, &ledger, None, None);
        assert_eq!(out.plan.as_ref().unwrap().window.start_ms, H);
        assert_eq!(out.blocked.iter().map(|(w, _)| w.start_ms).collect::<Vec<_>>(), vec![5 * H]);
        assert!(out.blocked[0].1.contains("s5") && out.blocked[0].1.contains("changed"), "{}", out.blocked[0].1);
        // refused before its window was committed: its rows never moved, nothing is lost
        segs[5].error_watermark_ms = Some(5 * H);
        assert!(plan_late(&f, &segs, &ledger, None, None).blocked.is_empty());
        // ... and a late segment refused before a run moved it held no rows there either
        let mut l5 = late("lx", 5 * H + 2);
        l5.error = "deleted".into();
        l5.error_watermark_ms = Some(10 * H);
        segs.push(l5);
        assert!(plan_late(&f, &segs, &ledger, Some(Window { start_ms: 5 * H, end_ms: 6 * H }), None)
            .blocked
            .is_empty());
        // append never rereads a window, so nothing blocks it
        let mut append = flow(H, H);
        append.late_data_policy = r2o_common::config::LateDataPolicy::Append;
        let out = plan_late(&append, &segs, &ledger, None, Some(20 * H));
        assert!(out.blocked.is_empty() && out.plan.unwrap().window.start_ms == H);
    }

    #[test]
    fn a_window_past_the_budget_is_split_into_sub_tasks() {
        let w = [Window { start_ms: 0, end_ms: H }];
        let segs: Vec<SegmentMeta> = (0..10).map(|i| seg(&format!("s{i}"), i, i, SegmentStatus::Done, 0)).collect(); // 10 rows each
        let rows = |n: u64| Budget { max_windows: 100, max_input_rows: n, max_input_bytes: u64::MAX };
        assert_eq!(split_window(MergeType::Rollup, &w, &segs, &rows(100), 8), Split::Whole, "within the budget");
        assert_eq!(split_window(MergeType::Rollup, &w, &segs, &rows(30), 8), Split::ByHash(4));
        assert_eq!(split_window(MergeType::Dedup, &w, &segs, &rows(30), 2), Split::ByHash(2), "at most the hosts");
        assert_eq!(split_window(MergeType::Rollup, &w, &segs, &rows(30), 1), Split::Whole, "one host: whole");
        assert_eq!(split_window(MergeType::Dedup, &w, &segs, &rows(30), 0), Split::Whole, "no minion yet: whole");
        assert_eq!(split_window(MergeType::Dedup, &w, &segs, &rows(1), 100), Split::ByHash(32), "at most 32");
        let Split::ByInput(r) = split_window(MergeType::Concat, &w, &segs, &rows(30), 2) else { panic!() };
        assert_eq!(r, vec![0..3, 3..6, 6..9, 9..10], "concat: by input, each part within the budget");
        let Split::ByInput(r) = split_window(MergeType::Concat, &w, &segs, &rows(1), 2) else { panic!() };
        assert_eq!(r.len(), 10, "one input per part at most");
        let two = [w[0], Window { start_ms: H, end_ms: 2 * H }];
        assert_eq!(split_window(MergeType::Rollup, &two, &segs, &rows(1), 8), Split::Whole, "many windows: no split");
        assert_eq!(split_window(MergeType::Rollup, &w, &segs[..1], &rows(1), 8), Split::Whole, "one input");
    }

    proptest! {
        /// Concat parts are contiguous, cover every input once, and each
        /// holds at most its share of rows unless it is a single input.
        #[test]
        fn concat_parts_cover_the_inputs_once(rows in prop::collection::vec(1u64..50, 2..60), max in 1u64..200) {
            let w = [Window { start_ms: 0, end_ms: H }];
            let segs: Vec<SegmentMeta> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut s = seg(&format!("s{i}"), i as i64, i as i64, SegmentStatus::Done, 0);
                    s.total_docs = *r;
                    s
                })
                .collect();
            let budget = Budget { max_windows: 1, max_input_rows: max, max_input_bytes: u64::MAX };
            match split_window(MergeType::Concat, &w, &segs, &budget, 2) {
                Split::Whole => prop_assert!(rows.iter().sum::<u64>() <= max),
                Split::ByInput(ranges) => {
                    prop_assert!(ranges.len() >= 2 && ranges.len() <= MAX_SUB_TASKS);
                    prop_assert_eq!(ranges[0].start, 0);
                    prop_assert_eq!(ranges.last().unwrap().end, segs.len());
                    for pair in ranges.windows(2) {
                        prop_assert_eq!(pair[0].end, pair[1].start);
                    }
                    prop_assert!(ranges.iter().all(|r| !r.is_empty()));
                }
                Split::ByHash(_) => prop_assert!(false, "concat is never split by hash"),
            }
        }
    }

    /// `d` with every time moved by `by` ms.
    fn shifted(d: Decision, by: i64) -> Decision {
        let w = |w: Window| Window { start_ms: w.start_ms + by, end_ms: w.end_ms + by };
        match d {
            Decision::Run { from_ms, windows, skipped_windows, mut inputs } => {
                for i in &mut inputs {
                    i.start_time_ms += by;
                    i.end_time_ms += by;
                }
                Decision::Run {
                    from_ms: from_ms + by,
                    windows: windows.into_iter().map(w).collect(),
                    skipped_windows,
                    inputs,
                }
            }
            Decision::Wait(r) => Decision::Wait(match r {
                WaitReason::NoSegments => WaitReason::NoSegments,
                WaitReason::CaughtUp { watermark_ms } => WaitReason::CaughtUp { watermark_ms: watermark_ms + by },
                WaitReason::Buffer { window, eligible_at_ms } => {
                    WaitReason::Buffer { window: w(window), eligible_at_ms: eligible_at_ms + by }
                }
                WaitReason::Consuming { window, segment } => WaitReason::Consuming { window: w(window), segment },
                WaitReason::LastCompleted { window, segment } => {
                    WaitReason::LastCompleted { window: w(window), segment }
                }
            }),
        }
    }

    proptest! {
        /// Times before 1970 are ordinary times (issue 21): moving every
        /// segment, the watermark and the clock by whole days, back as far as
        /// 1806 or forward to 2134, moves the plan by the same amount and
        /// changes nothing else, whichever side of 0 the times land on.
        #[test]
        fn a_plan_moved_across_1970_is_the_same_plan(
            raw in arb_segments(),
            llc_names in arb_names(),
            max_windows in 1usize..5,
            buffer_h in 0i64..72,
            wm_day in prop::option::of(-3i64..10),
            now_h in 0i64..300,
            days in -60_000i64..60_000,
        ) {
            const DAY: i64 = 24 * H;
            let f = flow(DAY, buffer_h * H);
            let segs: Vec<SegmentMeta> = raw.iter().enumerate().map(|(i, (s, len, c, p))| {
                let name = if llc_names { llc(*p, i as u64) } else { format!("s{i:02}") };
                seg(&name, s * H, (s + len) * H, if *c { SegmentStatus::Consuming } else { SegmentStatus::Done }, *p)
            }).collect();
            let by = days * DAY;
            let moved: Vec<SegmentMeta> = segs.iter().cloned().map(|mut s| {
                s.start_time_ms += by;
                s.end_time_ms += by;
                s
            }).collect();
            let budget = Budget { max_windows, max_input_rows: u64::MAX, max_input_bytes: u64::MAX };
            let here = plan(&f, &segs, wm_day.map(|d| d * DAY), now_h * H, &budget);
            let there = plan(&f, &moved, wm_day.map(|d| d * DAY + by), now_h * H + by, &budget);
            prop_assert_eq!(shifted(here, by), there);
        }
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
            max_windows in 1usize..5,
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
                let budget = Budget { max_windows, max_input_rows: u64::MAX, max_input_bytes: u64::MAX };
                match plan(&f, &segs, wm, now, &budget) {
                    Decision::Run { from_ms, windows, skipped_windows, inputs } => {
                        if let Some(w) = wm {
                            prop_assert_eq!(from_ms, w);
                        }
                        prop_assert!(windows.len() <= max_windows);
                        prop_assert!(windows.windows(2).all(|p| p[0].end_ms <= p[1].start_ms), "windows in order");
                        let span = (windows.last().unwrap().end_ms - from_ms) / bucket;
                        prop_assert_eq!(span as u64, windows.len() as u64 + skipped_windows, "every window of the range is run or skipped");
                        for k in 0..span {
                            let w = Window::starting_at(from_ms + k * bucket, bucket);
                            let has_data = segs.iter().any(|s| s.status == SegmentStatus::Done && w.overlaps_segment(s.start_time_ms, s.end_time_ms));
                            prop_assert_eq!(windows.contains(&w), has_data, "a window is run exactly when it has data");
                        }
                        for s in segs.iter().filter(|s| s.status == SegmentStatus::Done) {
                            let overlaps = windows.iter().any(|w| w.overlaps_segment(s.start_time_ms, s.end_time_ms));
                            let is_input = inputs.iter().any(|i| i.segment_name == s.segment_name);
                            prop_assert_eq!(is_input, overlaps, "an input exactly when it overlaps a window of the task");
                        }
                        let mut latest = FxHashMap::default();
                        for (i, f) in SegmentFacts::of_all(&segs).iter().enumerate().filter(|(_, f)| f.role == Role::Input) {
                            note_latest_completed(&mut latest, f, i);
                        }
                        for window in &windows {
                            prop_assert!(window.end_ms <= now - buffer, "buffer rule");
                            prop_assert_eq!(window.start_ms.rem_euclid(bucket), 0);
                            for s in &segs {
                                if s.status == SegmentStatus::Consuming {
                                    prop_assert!(s.start_time_ms >= window.end_ms, "window ran while CONSUMING data could land in it");
                                }
                                if s.status == SegmentStatus::Done && window.overlaps_segment(s.start_time_ms, s.end_time_ms) {
                                    if let Some((p, _)) = llc_name(&s.segment_name) {
                                        prop_assert!(
                                            !(segs[latest[&p].at].segment_name == s.segment_name && s.end_time_ms < window.end_ms),
                                            "ran a window its partition's latest completed segment ends in"
                                        );
                                    }
                                }
                            }
                            prop_assert!(committed.iter().all(|c| c.end_ms <= window.start_ms), "windows move forward without overlap");
                            committed.push(*window);
                        }
                        wm = windows.last().map(|w| w.end_ms);
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
