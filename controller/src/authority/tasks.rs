//! Task records built from a plan, as pure functions: a task, its sub-tasks
//! (and whether they fit one publish), a report's outputs and totals, and
//! the members of a split window.

use super::*;

/// Why a task of `windows` over `inputs` input segments, listed in `n`
/// chunks ([`chunks::encode_all`]), cannot be published, if it cannot: its
/// input list must fit in [`r2o_common::meta::MAX_CHUNKS`] chunks of task
/// metadata (256 MiB, about 700,000 segments). Pure; shared by planning and
/// `r2o watermark`.
pub fn inputs_problem(windows: &[r2o_common::window::Window], inputs: usize, n: usize) -> Option<String> {
    (n > r2o_common::meta::MAX_CHUNKS).then(|| {
        format!(
            "window {} cannot be planned: its {} input segments need {n} chunks of task metadata, more than the {} \
             one task may have; use a smaller bucketTimePeriod or fewer, larger segments",
            windows.first().map(|w| w.to_string()).unwrap_or_default(),
            inputs,
            r2o_common::meta::MAX_CHUNKS
        )
    })
}

/// What a freshly planned task is made of (see [`Authority::new_task`]).
pub(crate) struct NewTask<'a> {
    pub(crate) id: TaskId,
    pub(crate) from_ms: i64,
    pub(crate) windows: Vec<r2o_common::window::Window>,
    pub(crate) skipped_windows: u64,
    pub(crate) epoch_revision: i64,
    pub(crate) inputs: &'a [SegmentMeta],
    pub(crate) input_chunks: u32,
    pub(crate) segments_revision: i64,
    pub(crate) table_revision: i64,
    pub(crate) table_config: serde_json::Value,
    pub(crate) trigger: String,
    pub(crate) late: Option<r2o_common::meta::LateRun>,
}

/// The OFFLINE segments a completion report stages, as manifest entries.
pub(crate) fn offline_metas(spec: &TableSpec, req: &pb::CompleteTaskRequest, now: i64) -> Vec<SegmentMeta> {
    req.outputs
        .iter()
        .map(|o| SegmentMeta {
            segment_name: o.name.clone(),
            table_name: spec.offline_name(),
            status: SegmentStatus::Done,
            start_time_ms: o.start_time_ms,
            end_time_ms: o.end_time_ms,
            total_docs: o.num_rows,
            size_bytes: o.size_bytes,
            schema_fingerprint: req.schema_fingerprint.clone(),
            location: o.location.clone(),
            partition: o.partition,
            created_ms: now,
            end_of_stream: false,
            late: false,
            late_before_ms: None,
            window_start_ms: Some(o.window_start_ms),
            ..Default::default()
        })
        .collect()
}

/// A validated report's totals.
pub(crate) fn report_totals(
    req: &pb::CompleteTaskRequest,
    outputs: &[SegmentMeta],
    output_chunks: u32,
) -> ReportTotals {
    ReportTotals {
        attempt: req.attempt,
        rows_in: req.rows_in,
        rows_out: req.rows_out,
        bytes_in: req.bytes_in,
        bytes_out: outputs.iter().map(|o| o.size_bytes).sum(),
        rows_null_time: req.rows_null_time,
        rows_filtered: req.rows_filtered,
        outputs: outputs.len() as u64,
        output_chunks,
        windows: req.windows.iter().map(WindowStats::from).collect(),
    }
}

/// The task records a planned task is published as: itself, or the
/// sub-tasks of its one window (see [`split_window`]). Sub-task `k` has the
/// id of the task with `created_ms + k`, names the first sub-task as its
/// group and reads the first sub-task's input list (all of it when split by
/// hash, its own range when split by input). Pure.
pub fn sub_tasks(task: TaskRecord, inputs: &[SegmentMeta], split: Split) -> Vec<TaskRecord> {
    let n = match &split {
        Split::Whole => return vec![task],
        Split::ByHash(n) => *n as usize,
        Split::ByInput(ranges) => ranges.len(),
    };
    let lead = task.id.clone();
    (0..n)
        .map(|k| {
            let mut t = task.clone();
            t.id = TaskId { created_ms: lead.created_ms + k as i64, ..lead.clone() };
            t.sub_task = k as u32;
            t.sub_tasks = n as u32;
            t.group = lead.to_string();
            if k > 0 {
                t.inputs_of = lead.to_string();
            }
            if let Split::ByInput(ranges) = &split {
                let r = &ranges[k];
                t.input_from = r.start as u64;
                t.input_to = r.end as u64;
                let mine = &inputs[r.clone()];
                t.input_count = mine.len() as u64;
                t.input_rows = mine.iter().map(|s| s.total_docs).sum();
                t.input_bytes = mine.iter().map(|s| s.size_bytes).sum();
            }
            t
        })
        .collect()
}

/// The task records a planned task is published as ([`sub_tasks`]), in one
/// transaction within etcd's limits: each sub-task record carries the
/// table's config and schema, so a wide schema split many ways can pass the
/// 1.5 MiB request limit; the window then runs whole (one task; the minion's
/// bounded-memory path holds a window of any size) rather than never being
/// published (finding 9 of issue 19). Pure.
pub fn publishable(task: TaskRecord, inputs: &[SegmentMeta], split: Split) -> Vec<TaskRecord> {
    let tasks = sub_tasks(task.clone(), inputs, split);
    if tasks.len() <= 1 {
        return tasks;
    }
    // each put's record and key; 64 KiB left for the frontier, the
    // watermark and the compares
    let bytes: usize = tasks.iter().map(|t| encode(t).len() + 2 * t.id.to_string().len() + 64).sum();
    if bytes > r2o_common::kv::MAX_REQUEST_BYTES - 64 * 1024 {
        return vec![task];
    }
    tasks
}

/// The sub-tasks of `staged`'s window among the `open` tasks, in order with
/// their revisions, when every one of them is STAGED; `None` while any is
/// missing or not staged. Pure.
pub(crate) fn group_members(open: &[(TaskRecord, KeyValue)], staged: &TaskRecord) -> Option<Vec<(TaskRecord, i64)>> {
    let mut members: Vec<(TaskRecord, i64)> = open
        .iter()
        .filter(|(t, _)| t.group == staged.group && t.from_ms == staged.from_ms)
        .map(|(t, e)| (t.clone(), e.mod_revision))
        .collect();
    members.sort_by_key(|(t, _)| t.sub_task);
    let complete = members.len() == staged.sub_tasks as usize
        && members.iter().enumerate().all(|(k, (t, _))| t.sub_task as usize == k && t.state == TaskState::Staged);
    complete.then_some(members)
}
