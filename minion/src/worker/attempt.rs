//! One attempt, start to end: read the task's inputs, download them, run
//! the processor on a blocking thread, stage the outputs under the
//! attempt's own prefix, report to the leader. `timeoutMs` bounds all of it,
//! the report included; every store call and every gRPC call has its own
//! deadline. Reports are retried without a fixed count while the attempt
//! may still commit (the lease holds and the deadline has not passed), so a
//! leaderless spell only delays them. However the attempt ends, its claim
//! is given back unless a commit or the leader already ended it.

use backon::Retryable;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use r2o_common::config::{MergeType, TableSpec};
use r2o_common::meta::TaskRecord;
use r2o_common::retry::{reconnect_backoff, store_backoff};
use r2o_common::store::{get_bytes, put_bytes};
use r2o_common::window::Window;
use r2o_common::Error;
use r2o_proto::controller as pb;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::claim::{self, Claimed};
use super::Worker;
use crate::budget::{attempt_share, choose_path, peak_rows_held, table_row_bytes, Path};
use crate::processor::{process_part, Input, OutputSegment, ProcessError, Processed, SubTask};
use crate::stream::{process_streaming, StreamInput, StreamSettings};

/// What a report says of one staged output.
fn staged_segment(o: &OutputSegment, location: String, size_bytes: u64) -> pb::StagedSegment {
    pb::StagedSegment {
        name: o.name.clone(),
        location,
        num_rows: o.num_rows,
        size_bytes,
        start_time_ms: o.start_time_ms,
        end_time_ms: o.end_time_ms,
        partition: o.partition,
        window_start_ms: o.window_start_ms,
    }
}

/// How an attempt ended, as counted in `r2o_minion_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or found already committed).
    Succeeded,
    /// Failed, refused, or its report could not be delivered.
    Failed,
    /// Cancelled (lease lost, shutdown past the drain grace).
    Cancelled,
}

impl Outcome {
    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Why a report ended.
#[derive(Debug)]
enum ReportError {
    /// The leader refused it (validation, stale attempt): final.
    Refused(String),
    /// It could not be delivered before the attempt lost its lease or was cancelled.
    Undelivered(String),
}

fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Unknown | Cancelled | DeadlineExceeded | Aborted | ResourceExhausted)
}

impl Worker {
    /// Runs one attempt to its end; returns how it ended.
    pub(super) async fn run_attempt(&self, claimed: Claimed, cancel: CancellationToken) -> Outcome {
        let task = &claimed.task;
        let attempt = task.attempt;
        let work = cancel.child_token();
        let timeout = Duration::from_millis(task.timeout_ms.max(1) as u64);
        let outcome = match tokio::time::timeout(timeout, self.execute_and_report(task, &work)).await {
            Ok(o) => o,
            Err(_) => {
                work.cancel();
                let error =
                    format!("attempt {attempt} timed out after {} ms (timeoutMs) and was cancelled", task.timeout_ms);
                warn!(table = %task.table, task = %task.id, attempt, error = %error, "attempt timed out");
                // one quick try to tell the leader; the claim is given back either way
                let req = self.fail_request(task, &error);
                let quick = tokio::time::timeout(self.rpc_timeout, async {
                    let mut c = self.leader.get().await?;
                    c.fail_task(req).await.map_err(|s| s.to_string())
                })
                .await;
                if !matches!(quick, Ok(Ok(_))) {
                    warn!(table = %task.table, task = %task.id, attempt, "could not report the timeout; giving the claim back");
                }
                Outcome::Failed
            }
        };
        if outcome != Outcome::Succeeded {
            match claim::release(&self.kv, &self.keys, &claimed).await {
                Ok(true) => info!(table = %task.table, task = %task.id, attempt, "claim given back"),
                Ok(false) => {}
                Err(e) => {
                    warn!(table = %task.table, task = %task.id, attempt, error = %e, "cannot give the claim back; it ends with the lease")
                }
            }
        }
        outcome
    }

    fn fail_request(&self, task: &TaskRecord, error: &str) -> pb::FailTaskRequest {
        pb::FailTaskRequest {
            task_id: task.id.to_string(),
            attempt: task.attempt,
            minion_id: self.cfg.id.clone(),
            error: error.to_string(),
        }
    }

    async fn execute_and_report(&self, task: &TaskRecord, work: &CancellationToken) -> Outcome {
        let attempt = task.attempt;
        match self.execute(task, work).await {
            Ok((processed, staged, schema_fingerprint)) => {
                let req = pb::CompleteTaskRequest {
                    task_id: task.id.to_string(),
                    attempt,
                    minion_id: self.cfg.id.clone(),
                    outputs: staged,
                    rows_in: processed.rows_in,
                    rows_out: processed.rows_out,
                    bytes_in: processed.bytes_in,
                    metric_sums: processed
                        .metric_sums
                        .iter()
                        .map(|(m, s)| {
                            (
                                m.clone(),
                                pb::MetricSums {
                                    int_in: s.int_in,
                                    int_out: s.int_out,
                                    float_in: s.float_in,
                                    float_out: s.float_out,
                                    float_abs_in: s.float_abs_in,
                                },
                            )
                        })
                        .collect(),
                    schema_fingerprint,
                    rows_null_time: processed.rows_null_time,
                    windows: processed.windows.iter().map(pb::WindowStats::from).collect(),
                    rows_filtered: processed.rows_filtered,
                };
                match self
                    .report("complete", work, |mut c| {
                        let r = req.clone();
                        async move { c.complete_task(r).await }
                    })
                    .await
                {
                    Ok(resp) => {
                        let r = resp.get_ref();
                        let what = if r.staged {
                            "attempt staged; it commits after the tasks before it"
                        } else {
                            "attempt committed"
                        };
                        info!(table = %task.table, task = %task.id, attempt, committed = r.committed, staged = r.staged, windows = processed.windows.len(), rows_in = processed.rows_in, rows_out = processed.rows_out, "{what}");
                        Outcome::Succeeded
                    }
                    Err(ReportError::Refused(e)) => {
                        warn!(table = %task.table, task = %task.id, attempt, error = %e, "commit refused; the leader ended the attempt");
                        Outcome::Failed
                    }
                    Err(ReportError::Undelivered(e)) => {
                        warn!(table = %task.table, task = %task.id, attempt, error = %e, "completion not delivered");
                        if work.is_cancelled() {
                            Outcome::Cancelled
                        } else {
                            Outcome::Failed
                        }
                    }
                }
            }
            Err(ProcessError::Cancelled) => {
                warn!(table = %task.table, task = %task.id, attempt, "attempt cancelled");
                Outcome::Cancelled
            }
            Err(ProcessError::Data(e)) => {
                warn!(table = %task.table, task = %task.id, attempt, error = %e, "attempt failed");
                let req = self.fail_request(task, &e.to_string());
                if let Err(e) = self
                    .report("fail", work, |mut c| {
                        let r = req.clone();
                        async move { c.fail_task(r).await }
                    })
                    .await
                {
                    warn!(table = %task.table, task = %task.id, attempt, error = ?e, "failure report not accepted");
                }
                Outcome::Failed
            }
        }
    }

    /// Sends a report to the leader. Transport errors and retryable codes
    /// (no leader, leader changing, a lost race) are retried with a jittered
    /// backoff, with no fixed count, until `lost` (lease lost, timeout,
    /// shutdown); any other answer is final.
    async fn report<T, F, Fut>(&self, what: &str, lost: &CancellationToken, call: F) -> Result<T, ReportError>
    where
        F: Fn(
            r2o_proto::controller::controller_service_client::ControllerServiceClient<tonic::transport::Channel>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let max = Duration::from_secs(self.cfg.lease_ttl_secs.clamp(1, 5) as u64);
        let mut backoff = reconnect_backoff(Duration::from_millis(100), max);
        loop {
            if lost.is_cancelled() {
                return Err(ReportError::Undelivered(
                    "the attempt was cancelled before the report was delivered".into(),
                ));
            }
            let error = match self.leader.get().await {
                Err(e) => e,
                Ok(client) => match call(client).await {
                    Ok(v) => return Ok(v),
                    Err(s) if retryable(s.code()) => {
                        if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
                        {
                            self.leader.reset().await;
                        }
                        format!("{:?}: {}", s.code(), s.message())
                    }
                    Err(s) => return Err(ReportError::Refused(format!("{:?}: {}", s.code(), s.message()))),
                },
            };
            let delay = backoff.next().unwrap_or(max);
            warn!(minion = %self.cfg.id, report = what, error = %error, retry_in = ?delay, "report not delivered; retrying");
            tokio::select! {
                _ = lost.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Reads the inputs, downloads them, processes and stages one attempt;
    /// returns what was processed, the staged outputs and the schema's
    /// fingerprint (the table config is parsed once per attempt).
    async fn execute(
        &self,
        task: &TaskRecord,
        cancel: &CancellationToken,
    ) -> Result<(Processed, Vec<pb::StagedSegment>, String), ProcessError> {
        let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone()).map_err(Error::from)?;
        let inputs_id = task.inputs_id();
        let listed = (|| claim::inputs(&self.kv, &self.keys, &self.inputs, &inputs_id))
            .retry(store_backoff())
            .when(Error::is_retryable)
            .await?;
        // a sub-task split by input reads its range of the window's list
        if let Some(why) = task.inputs_lost(&listed) {
            // never process a partial list: the rows not found would be lost
            // (the leader plans the windows again when it sees the failure)
            return Err(ProcessError::Data(Error::Meta(format!("task {}: {why}", task.id))));
        }
        let segments = task.input_slice(&listed).to_vec();
        // maxSegmentSizeBytes: rows per OFFLINE segment from the inputs' bytes per row
        let mut spec = spec;
        let (in_bytes, in_rows) = segments.iter().fold((0u64, 0u64), |(b, r), s| (b + s.size_bytes, r + s.total_docs));
        spec.flow.max_records_per_segment = crate::budget::rows_per_segment(
            spec.flow.max_records_per_segment,
            spec.flow.max_segment_size_bytes,
            in_bytes,
            in_rows,
        );
        let windows = task.windows.clone();
        let range = Window { start_ms: task.from_ms, end_ms: task.window_end_ms };
        let retry = store_backoff();
        let prefix = self.layout.staging_prefix(&task.id, task.attempt);
        // a sub-task of a rollup or dedup window keeps its hash share of every
        // input; NULL-time rows are counted by the first sub-task alone
        let split = task.is_sub_task().then_some(SubTask {
            index: task.sub_task,
            count: task.sub_tasks,
            by_hash: spec.flow.merge_type != MergeType::Concat,
        });
        let counts_nulls = split.is_none_or(|s| !s.by_hash || s.index == 0);
        // the cores, shared by the attempts running now: a lone task uses them all,
        // a busy minion does not oversubscribe them
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (cores / self.running().max(1)).max(1);
        let share = attempt_share(self.cfg.memory_budget, self.cfg.slots, spec.flow.mapper_threshold_bytes);
        // the compressed inputs (held until read) and the decoded rows of the
        // windows in flight at once, not of the whole task
        let spans: Vec<(i64, i64, u64)> =
            segments.iter().map(|s| (s.start_time_ms, s.end_time_ms, s.total_docs)).collect();
        let held = peak_rows_held(&spans, &task.windows, threads.clamp(1, task.windows.len().max(1)));
        let estimate = task.input_bytes + 3 * held * table_row_bytes(&spec);
        let path = choose_path(estimate, share, task.windows.len(), threads);
        if path == Path::Stream {
            // past the attempt's share, or one big window for many threads:
            // read in place, spread over the threads, spill, stream the outputs
            let settings = StreamSettings {
                memory_bytes: (share / 8 * 5) as usize,
                spill_dir: self.cfg.spill_dir.join(format!("{}-{}", task.id, task.attempt)),
                threads,
                split,
            };
            info!(table = %task.table, task = %task.id, attempt = task.attempt, estimate_bytes = estimate, share_bytes = share, windows = task.windows.len(), threads, sort_memory_bytes = settings.memory_bytes, "running the task on the bounded-memory path");
            let inputs: Vec<StreamInput> = segments
                .into_iter()
                .map(|meta| StreamInput { count_null_time: counts_nulls && range.contains(meta.start_time_ms), meta })
                .collect();
            let (spec2, cancel2, store, prefix2) = (spec.clone(), cancel.clone(), self.store.clone(), prefix.clone());
            let spill_dir = settings.spill_dir.clone();
            let run = tokio::task::spawn_blocking(move || {
                process_streaming(&spec2, &windows, inputs, store, &prefix2, &settings, &cancel2)
            })
            .await;
            let _ = std::fs::remove_dir_all(&spill_dir);
            let (processed, spill) = run.map_err(|e| {
                ProcessError::Data(Error::Segment {
                    segment: task.id.to_string(),
                    problem: format!("processor panicked: {e}"),
                })
            })??;
            self.metrics.spilled_bytes.inc_by(spill.spilled_bytes as u64);
            info!(table = %task.table, task = %task.id, attempt = task.attempt, spill_count = spill.spill_count, spilled_bytes = spill.spilled_bytes, "bounded-memory run done");
            let staged = processed
                .outputs
                .iter()
                .map(|o| {
                    let (location, size) = o.written.clone().unwrap_or_default();
                    staged_segment(o, location, size)
                })
                .collect();
            return Ok((processed, staged, spec.schema.fingerprint()));
        }
        let fingerprint = spec.schema.fingerprint();
        let inputs: Vec<Input> = futures::stream::iter(segments)
            .map(|seg| {
                let home = self.store.clone();
                let older = !seg.schema_fingerprint.is_empty() && seg.schema_fingerprint != fingerprint;
                async move {
                    // a discovered file is read where it lies
                    let (store, path) = r2o_common::store::resolve(&home, &seg.location)?;
                    let external = r2o_common::store::is_external(&seg.location);
                    let read = || async {
                        if external {
                            // still the file that was registered?
                            let (name, size, version) = (&seg.segment_name, seg.size_bytes, &seg.source_version);
                            r2o_common::store::check_registered(&store, &path, name, size, version).await?;
                        }
                        let bytes = get_bytes(&store, &path).await?;
                        if external && bytes.len() as u64 != seg.size_bytes {
                            return Err(Error::Segment {
                                segment: seg.segment_name.clone(),
                                problem: format!(
                                    "the discovered file {} changed after registration ({} bytes read, {} registered)",
                                    seg.location,
                                    bytes.len(),
                                    seg.size_bytes
                                ),
                            });
                        }
                        Ok(bytes)
                    };
                    let bytes: Result<Bytes, Error> = read
                        .retry(retry)
                        .when(Error::is_retryable)
                        .notify(|_, _| self.metrics.errors.with_label_values(&["store"]).inc())
                        .await;
                    let bytes = bytes.map_err(|e| match e {
                        Error::Store { source, .. } => Error::Segment {
                            segment: seg.segment_name.clone(),
                            problem: format!("cannot read {}: {source}", seg.location),
                        },
                        other => other,
                    })?;
                    Ok::<_, Error>(Input {
                        name: seg.segment_name.clone(),
                        bytes,
                        // counted once: by the task whose range holds the segment's start
                        count_null_time: counts_nulls && range.contains(seg.start_time_ms),
                        start_ms: seg.start_time_ms,
                        schema_version: if older {
                            r2o_common::columnar::SchemaVersion::Older
                        } else {
                            r2o_common::columnar::SchemaVersion::Current
                        },
                    })
                }
            })
            .buffered(8)
            .try_collect()
            .await?;
        if cancel.is_cancelled() {
            return Err(ProcessError::Cancelled);
        }
        let (spec2, cancel2) = (spec.clone(), cancel.clone());
        let processed =
            tokio::task::spawn_blocking(move || process_part(&spec2, &windows, inputs, &cancel2, threads, split))
                .await
                .map_err(|e| {
                    ProcessError::Data(Error::Segment {
                        segment: task.id.to_string(),
                        problem: format!("processor panicked: {e}"),
                    })
                })??;
        let uploads: Vec<(pb::StagedSegment, Bytes)> = processed
            .outputs
            .iter()
            .map(|o| (staged_segment(o, format!("{prefix}{}.parquet", o.name), o.bytes.len() as u64), o.bytes.clone()))
            .collect();
        let store = self.store.clone();
        let errors = self.metrics.errors.clone();
        let staged: Vec<pb::StagedSegment> = futures::stream::iter(uploads)
            .map(move |(seg, bytes)| {
                let (store, errors, cancel) = (store.clone(), errors.clone(), cancel.clone());
                async move {
                    if cancel.is_cancelled() {
                        return Err(ProcessError::Cancelled);
                    }
                    (|| put_bytes(&store, &seg.location, bytes.clone()))
                        .retry(retry)
                        .when(Error::is_retryable)
                        .notify(|_, _| errors.with_label_values(&["store"]).inc())
                        .await?;
                    Ok(seg)
                }
            })
            .buffered(4)
            .try_collect()
            .await?;
        let mut p = processed;
        for o in &mut p.outputs {
            o.bytes = Bytes::new();
        }
        Ok((p, staged, spec.schema.fingerprint()))
    }
}
