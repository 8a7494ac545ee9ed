//! Conversions between r2o's records and their gRPC messages.

use r2o_proto::controller as pb;

use crate::meta::{SegmentMeta, SegmentStatus, TaskRecord, WindowStats};

impl From<&SegmentMeta> for pb::Segment {
    fn from(s: &SegmentMeta) -> pb::Segment {
        pb::Segment {
            name: s.segment_name.clone(),
            table: s.table_name.clone(),
            status: s.status.name().into(),
            start_time_ms: s.start_time_ms,
            end_time_ms: s.end_time_ms,
            num_rows: s.total_docs,
            size_bytes: s.size_bytes,
            schema_fingerprint: s.schema_fingerprint.clone(),
            location: s.location.clone(),
            partition: s.partition,
            created_ms: s.created_ms,
            end_of_stream: s.end_of_stream,
            late: s.late,
            null_time_rows: s.null_time_rows,
            load_status: String::new(),
            load_detail: String::new(),
        }
    }
}

/// Reads a wire segment; `None` when its status is not CONSUMING or DONE.
pub fn segment_from_wire(s: &pb::Segment) -> Option<SegmentMeta> {
    Some(SegmentMeta {
        segment_name: s.name.clone(),
        table_name: s.table.clone(),
        status: SegmentStatus::parse(&s.status)?,
        start_time_ms: s.start_time_ms,
        end_time_ms: s.end_time_ms,
        total_docs: s.num_rows,
        size_bytes: s.size_bytes,
        schema_fingerprint: s.schema_fingerprint.clone(),
        location: s.location.clone(),
        partition: s.partition,
        created_ms: s.created_ms,
        end_of_stream: s.end_of_stream,
        late: false,
        late_before_ms: None,
        window_start_ms: None,
        null_time_rows: s.null_time_rows,
        ..Default::default()
    })
}

impl From<&TaskRecord> for pb::Task {
    fn from(t: &TaskRecord) -> pb::Task {
        pb::Task {
            id: t.id.to_string(),
            table: t.table.clone(),
            window_start_ms: t.window_start_ms,
            window_end_ms: t.window_end_ms,
            state: t.state.name().into(),
            attempt: t.attempt,
            input_segments: vec![],
            rows_in: t.rows_in,
            rows_out: t.rows_out,
            output_segments: vec![],
            error: t.errors.last().cloned().unwrap_or_default(),
            created_ms: t.created_ms,
            finished_ms: t.finished_ms,
            minion: t.minion.clone(),
            trigger: t.trigger.clone(),
            started_ms: t.started_ms,
            rows_null_time: t.rows_null_time,
            rows_filtered: t.rows_filtered,
            input_count: t.input_count,
            output_count: t.output_count,
            errors: t.errors.clone(),
            from_ms: t.from_ms,
            windows: t.windows.len() as u32,
        }
    }
}

impl From<&WindowStats> for pb::WindowStats {
    fn from(w: &WindowStats) -> Self {
        pb::WindowStats {
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            rows_in: w.rows_in,
            rows_out: w.rows_out,
            outputs: w.outputs,
        }
    }
}

impl From<&pb::WindowStats> for WindowStats {
    fn from(w: &pb::WindowStats) -> Self {
        WindowStats {
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            rows_in: w.rows_in,
            rows_out: w.rows_out,
            outputs: w.outputs,
        }
    }
}
