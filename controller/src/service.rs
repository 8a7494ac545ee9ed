//! The `ControllerService` gRPC handlers: admin calls (any controller) and
//! minion-facing reports (leader only, via [`Authority`]).

use r2o_common::config::TableSpec;
use r2o_common::kv::{Compare, Op};
use r2o_common::meta::{
    decode, encode, get_record, now_ms, range_records, LeaderRecord, SegmentMeta, SegmentStatus, TableRecord,
    TaskRecord, WatermarkRecord,
};
use r2o_common::wire::segment_from_wire;
use r2o_proto::controller as pb;
use r2o_proto::controller::controller_service_server::ControllerService;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::authority::{load_table, Authority, PlanOutcome};
use crate::error::{ControllerError, Result};
use crate::planner::{plan, Decision};

/// gRPC front of the controller.
#[derive(Clone)]
pub struct ControllerSvc {
    auth: Authority,
}

impl ControllerSvc {
    /// Wraps an authority.
    pub fn new(auth: Authority) -> ControllerSvc {
        ControllerSvc { auth }
    }

    async fn not_leader(&self) -> ControllerError {
        let leader = match get_record::<LeaderRecord>(&self.auth.kv, &self.auth.keys.leader()).await {
            Ok(Some((l, _))) => l.addr,
            _ => "unknown".into(),
        };
        ControllerError::NotLeader { leader }
    }

    async fn require_table(&self, raw: &str) -> Result<TableSpec> {
        load_table(&self.auth.kv, &self.auth.keys, raw)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))
    }

    async fn add_table(&self, req: pb::AddTableRequest) -> Result<pb::AddTableResponse> {
        let parse = |what: &str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                ControllerError::Config(r2o_common::ConfigError::Malformed {
                    what: what.into(),
                    message: e.to_string(),
                })
            })
        };
        let config = parse("table config", &req.table_config_json)?;
        let schema = parse("schema", &req.schema_json)?;
        let spec = TableSpec::from_json(config.clone(), schema.clone())?;
        let key = self.auth.keys.table(&spec.name);
        let rec = TableRecord { table_config: config, schema, created_ms: now_ms(), paused: req.paused };
        let ok =
            self.auth.kv.txn(vec![Compare::CreateRevision(key.clone(), 0)], vec![Op::put(key, encode(&rec))]).await?;
        if !ok {
            return Err(ControllerError::AlreadyExists(format!("table '{}'", spec.name)));
        }
        info!(table = %spec.name, merge_type = spec.flow.merge_type.name(), bucket_ms = spec.flow.bucket_ms, "table added");
        Ok(pb::AddTableResponse { table: spec.name })
    }

    async fn set_paused(&self, raw: &str, paused: bool) -> Result<pb::TableStateResponse> {
        let key = self.auth.keys.table(raw);
        let Some((mut rec, entry)) = get_record::<TableRecord>(&self.auth.kv, &key).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        if rec.paused != paused {
            rec.paused = paused;
            let ok = self
                .auth
                .kv
                .txn(vec![Compare::ModRevision(key.clone(), entry.mod_revision)], vec![Op::put(key, encode(&rec))])
                .await?;
            if !ok {
                return Err(ControllerError::Stale(format!("table '{raw}' changed meanwhile; try again")));
            }
            info!(table = %raw, paused, "flow {}", if paused { "paused" } else { "resumed" });
            self.auth.replan.notify_one();
        }
        Ok(pb::TableStateResponse { table: raw.to_string(), paused })
    }

    async fn add_segment(&self, req: pb::AddSegmentRequest) -> Result<pb::AddSegmentResponse> {
        let seg = req.segment.ok_or_else(|| ControllerError::Invalid("segment is required".into()))?;
        let meta = segment_from_wire(&seg).ok_or_else(|| {
            ControllerError::Invalid(format!("segment.status '{}': expected CONSUMING or DONE", seg.status))
        })?;
        let raw = meta.table_name.strip_suffix("_REALTIME").ok_or_else(|| {
            ControllerError::Invalid(format!("segment.table '{}': expected <table>_REALTIME", meta.table_name))
        })?;
        let spec = self.require_table(raw).await?;
        if meta.schema_fingerprint != spec.schema.fingerprint() {
            return Err(ControllerError::Invalid(format!(
                "segment.schemaFingerprint '{}': expected the table schema's '{}'",
                meta.schema_fingerprint,
                spec.schema.fingerprint()
            )));
        }
        if meta.start_time_ms > meta.end_time_ms {
            return Err(ControllerError::Invalid(format!(
                "segment.startTimeMs {} is after endTimeMs {}",
                meta.start_time_ms, meta.end_time_ms
            )));
        }
        let key = self.auth.keys.segment(&meta.table_name, &meta.segment_name);
        if let Some(existing) = self.auth.kv.get(&key).await? {
            let old: SegmentMeta = decode(&existing)?;
            let same = SegmentMeta { created_ms: old.created_ms, ..meta.clone() };
            if old == same {
                return Ok(pb::AddSegmentResponse { warning: String::new() });
            }
            return Err(ControllerError::AlreadyExists(format!(
                "segment '{}' of {}",
                meta.segment_name, meta.table_name
            )));
        }
        let ok =
            self.auth.kv.txn(vec![Compare::CreateRevision(key.clone(), 0)], vec![Op::put(key, encode(&meta))]).await?;
        if !ok {
            return Err(ControllerError::AlreadyExists(format!("segment '{}'", meta.segment_name)));
        }
        info!(table = %raw, segment = %meta.segment_name, status = meta.status.name(), rows = meta.total_docs, "segment added");
        let wm = get_record::<WatermarkRecord>(&self.auth.kv, &self.auth.keys.watermark(raw))
            .await?
            .map(|(w, _)| w.watermark_ms);
        let warning = match wm {
            Some(w) if meta.total_docs > 0 && meta.start_time_ms < w => {
                warn!(table = %raw, segment = %meta.segment_name, start_time_ms = meta.start_time_ms, watermark_ms = w, "late segment");
                format!(
                    "segment {} is late: it starts at {}, before the watermark {}; its rows before the watermark will not move \
                     to OFFLINE (committed windows are never redone; use r2o reset --mode flush to rebuild the table)",
                    meta.segment_name,
                    r2o_common::window::format_utc(meta.start_time_ms),
                    r2o_common::window::format_utc(w)
                )
            }
            _ => String::new(),
        };
        Ok(pb::AddSegmentResponse { warning })
    }

    async fn seal_segment(&self, req: pb::SealSegmentRequest) -> Result<pb::SealSegmentResponse> {
        let typed = format!("{}_REALTIME", req.table.trim_end_matches("_REALTIME"));
        let key = self.auth.keys.segment(&typed, &req.segment);
        let Some((mut meta, entry)) = get_record::<SegmentMeta>(&self.auth.kv, &key).await? else {
            return Err(ControllerError::NotFound(format!("segment '{}' of {typed}", req.segment)));
        };
        if meta.status == SegmentStatus::Done {
            return Ok(pb::SealSegmentResponse {});
        }
        meta.status = SegmentStatus::Done;
        let ok = self
            .auth
            .kv
            .txn(vec![Compare::ModRevision(key.clone(), entry.mod_revision)], vec![Op::put(key, encode(&meta))])
            .await?;
        if !ok {
            return Err(ControllerError::Stale(format!("segment '{}' changed while sealing; try again", req.segment)));
        }
        info!(table = %req.table, segment = %req.segment, "segment sealed");
        Ok(pb::SealSegmentResponse {})
    }

    async fn list_segments(&self, raw: &str) -> Result<pb::ListSegmentsResponse> {
        self.require_table(raw).await?;
        let mut segments = Vec::new();
        for part in ["REALTIME", "OFFLINE"] {
            let prefix = self.auth.keys.segments(&format!("{raw}_{part}"));
            for (s, _) in range_records::<SegmentMeta>(&self.auth.kv, &prefix).await? {
                segments.push(pb::Segment::from(&s));
            }
        }
        Ok(pb::ListSegmentsResponse { segments })
    }

    async fn list_tasks(&self, raw: &str) -> Result<pb::ListTasksResponse> {
        self.require_table(raw).await?;
        let mut tasks: Vec<TaskRecord> = range_records::<TaskRecord>(&self.auth.kv, &self.auth.keys.histories(raw))
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        for (t, _) in range_records::<TaskRecord>(&self.auth.kv, &self.auth.keys.active_tasks()).await? {
            if t.table == raw {
                tasks.push(t);
            }
        }
        tasks.sort_by_key(|t| (t.window_start_ms, t.created_ms));
        Ok(pb::ListTasksResponse { tasks: tasks.iter().map(pb::Task::from).collect() })
    }

    async fn get_watermark(&self, raw: &str) -> Result<pb::GetWatermarkResponse> {
        let spec = self.require_table(raw).await?;
        let wm = get_record::<WatermarkRecord>(&self.auth.kv, &self.auth.keys.watermark(raw)).await?.map(|(w, _)| w);
        let inflight = self.auth.kv.get(&self.auth.keys.inflight(raw)).await?;
        let paused =
            get_record::<TableRecord>(&self.auth.kv, &self.auth.keys.table(raw)).await?.is_some_and(|(r, _)| r.paused);
        let mut idle = false;
        let next = if let Some(entry) = inflight {
            let id = String::from_utf8_lossy(&entry.value).into_owned();
            match get_record::<TaskRecord>(&self.auth.kv, &self.auth.keys.active_task(&id)).await? {
                Some((t, _)) => format!(
                    "task {id} is {} (attempt {}){}",
                    t.state.name(),
                    t.attempt,
                    t.errors.last().map(|e| format!("; last error: {e}")).unwrap_or_default()
                ),
                None => format!("task {id} is finishing"),
            }
        } else if paused {
            idle = true;
            "paused: no window is planned until the flow is resumed (r2o resume)".to_string()
        } else {
            let segments = self.auth.realtime_segments(raw).await?;
            match plan(&spec.flow, &segments, wm.as_ref().map(|w| w.watermark_ms), now_ms()) {
                Decision::Run { window, .. } => {
                    format!("window {window} is ready and will be planned on the next tick")
                }
                Decision::Wait(reason) => {
                    idle = true;
                    reason.to_string()
                }
            }
        };
        let w = wm.clone().unwrap_or_default();
        Ok(pb::GetWatermarkResponse {
            exists: wm.is_some(),
            watermark_ms: w.watermark_ms,
            windows_committed: w.windows_committed,
            windows_skipped: w.windows_skipped,
            rows_out: w.rows_out,
            next,
            idle,
        })
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(r: Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl ControllerService for ControllerSvc {
    async fn add_table(&self, req: Request<pb::AddTableRequest>) -> Reply<pb::AddTableResponse> {
        reply(self.add_table(req.into_inner()).await)
    }

    async fn get_table(&self, req: Request<pb::GetTableRequest>) -> Reply<pb::GetTableResponse> {
        let raw = req.into_inner().table;
        let r = async {
            let (rec, _) = get_record::<TableRecord>(&self.auth.kv, &self.auth.keys.table(&raw))
                .await?
                .ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
            Ok(pb::GetTableResponse {
                paused: rec.paused,
                table_config_json: rec.table_config.to_string(),
                schema_json: rec.schema.to_string(),
            })
        };
        reply(r.await)
    }

    async fn list_tables(&self, _req: Request<pb::ListTablesRequest>) -> Reply<pb::ListTablesResponse> {
        let r = async {
            let prefix = self.auth.keys.tables();
            let tables =
                self.auth.kv.range(&prefix).await?.into_iter().map(|kv| kv.key[prefix.len()..].to_string()).collect();
            Ok(pb::ListTablesResponse { tables })
        };
        reply(r.await)
    }

    async fn add_segment(&self, req: Request<pb::AddSegmentRequest>) -> Reply<pb::AddSegmentResponse> {
        reply(self.add_segment(req.into_inner()).await)
    }

    async fn seal_segment(&self, req: Request<pb::SealSegmentRequest>) -> Reply<pb::SealSegmentResponse> {
        reply(self.seal_segment(req.into_inner()).await)
    }

    async fn list_segments(&self, req: Request<pb::ListSegmentsRequest>) -> Reply<pb::ListSegmentsResponse> {
        reply(self.list_segments(&req.into_inner().table).await)
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Reply<pb::ListTasksResponse> {
        reply(self.list_tasks(&req.into_inner().table).await)
    }

    async fn get_watermark(&self, req: Request<pb::GetWatermarkRequest>) -> Reply<pb::GetWatermarkResponse> {
        reply(self.get_watermark(&req.into_inner().table).await)
    }

    async fn retry_task(&self, req: Request<pb::RetryTaskRequest>) -> Reply<pb::RetryTaskResponse> {
        let table = req.into_inner().table;
        let r = match self.auth.retry(&table).await {
            Err(ControllerError::NotLeader { .. }) => Err(self.not_leader().await),
            other => other.map(|task_id| pb::RetryTaskResponse { task_id }),
        };
        reply(r)
    }

    async fn pause_table(&self, req: Request<pb::TableRequest>) -> Reply<pb::TableStateResponse> {
        reply(self.set_paused(&req.into_inner().table, true).await)
    }

    async fn resume_table(&self, req: Request<pb::TableRequest>) -> Reply<pb::TableStateResponse> {
        reply(self.set_paused(&req.into_inner().table, false).await)
    }

    async fn run_now(&self, req: Request<pb::TableRequest>) -> Reply<pb::RunNowResponse> {
        let table = req.into_inner().table;
        let r = match self.auth.run_now(&table).await {
            Err(ControllerError::NotLeader { .. }) => Err(self.not_leader().await),
            Ok(PlanOutcome::Paused) => Err(ControllerError::Stale(format!(
                "table '{table}' is paused; resume it first (r2o resume --table {table})"
            ))),
            other => other.map(|o| pb::RunNowResponse {
                task_id: match &o {
                    PlanOutcome::Published(id, _) => id.clone(),
                    _ => String::new(),
                },
                outcome: o.to_string(),
            }),
        };
        reply(r)
    }

    async fn reset_table(&self, req: Request<pb::ResetTableRequest>) -> Reply<pb::ResetTableResponse> {
        let req = req.into_inner();
        let flush = match req.mode.to_ascii_uppercase().as_str() {
            "APPEND" => false,
            "FLUSH" => true,
            _ => {
                return reply(Err(ControllerError::Invalid(format!("mode '{}': expected APPEND or FLUSH", req.mode))));
            }
        };
        let r = match self.auth.reset(&req.table, flush, req.dry_run).await {
            Err(ControllerError::NotLeader { .. }) => Err(self.not_leader().await),
            other => other,
        };
        reply(r)
    }

    async fn complete_task(&self, req: Request<pb::CompleteTaskRequest>) -> Reply<pb::CompleteTaskResponse> {
        let req = req.into_inner();
        let r = match self.auth.complete(&req).await {
            Err(ControllerError::NotLeader { .. }) => Err(self.not_leader().await),
            other => other,
        };
        reply(r)
    }

    async fn fail_task(&self, req: Request<pb::FailTaskRequest>) -> Reply<pb::FailTaskResponse> {
        let req = req.into_inner();
        let r = match self.auth.fail(&req).await {
            Err(ControllerError::NotLeader { .. }) => Err(self.not_leader().await),
            other => other.map(|_| pb::FailTaskResponse {}),
        };
        reply(r)
    }
}
