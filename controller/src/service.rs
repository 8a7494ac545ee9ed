//! The `ControllerService` gRPC handlers: a thin adapter over the
//! [`Authority`] (leader-only steps) and the [`registry`](crate::registry)
//! (admin writes any controller serves). Errors become gRPC statuses in one
//! place, [`ControllerSvc::answer`], which also names the leader when this
//! controller is not it.

use r2o_common::config::TableSpec;
use r2o_common::meta::{
    decode, get_record, now_ms, LeaderRecord, RetentionRecord, TableRecord, TaskRecord, WatermarkRecord,
};
use r2o_common::schedule::ScheduleRecord;
use r2o_common::wire::segment_from_wire;
use r2o_proto::controller as pb;
use r2o_proto::controller::controller_service_server::ControllerService;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::access::Gate;
use r2o_common::access::{Role, Via};

use crate::authority::{open_tasks, Authority, PlanOutcome};
use crate::error::{ControllerError, Result};
use crate::planner::{plan_over, Decision};
use crate::protocol;
use crate::registry;
use crate::tables::load_table;

/// Largest table config or schema JSON a request may carry, bytes: both go
/// into one etcd record (etcd's value limit is 1.5 MiB); Pinot's own are a
/// few KiB.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// Parses a JSON document of a request (`what`: "table config", "schema").
fn parse_json(what: &str, text: &str) -> Result<serde_json::Value> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ControllerError::Invalid(format!(
            "the {what} is {} bytes: expected at most {MAX_CONFIG_BYTES}",
            text.len()
        )));
    }
    serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
        ControllerError::Config(r2o_common::ConfigError::Malformed { what: what.into(), message: e.to_string() })
    })
}

/// What a ListSegments status says when the listing's etcd revision was
/// compacted between two pages (FAILED_PRECONDITION): clients start the
/// listing again.
pub const LIST_AGAIN: &str = "list again from the first page";

/// Where a ListSegments listing is: the `page_token` its answers carry
/// (JSON; opaque to clients). REALTIME pages are read at one etcd revision,
/// as Kubernetes' list continuation does, so a listing of a table that
/// changes between pages neither misses nor repeats a REALTIME segment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ListPage {
    /// etcd revision the REALTIME pages are read at (0: not read yet).
    revision: i64,
    /// The table's watermark when the first page was read, UTC epoch ms:
    /// every page's load statuses are given against it.
    watermark_ms: Option<i64>,
    /// Whether the next page starts in the OFFLINE part.
    offline: bool,
    /// The last segment name given in that part ("": none yet).
    after: String,
}

impl ListPage {
    /// Most segments one answer holds, and the default.
    const MAX: usize = 10_000;

    /// The page size a request asks for: 0 and anything above
    /// [`ListPage::MAX`] are [`ListPage::MAX`].
    fn limit(page_size: u32) -> usize {
        match page_size as usize {
            0 => Self::MAX,
            n => n.min(Self::MAX),
        }
    }

    fn token(&self) -> String {
        serde_json::to_string(self).expect("a listing position encodes")
    }

    /// # Errors
    /// [`ControllerError::Invalid`] for a token no answer gave.
    fn parse(token: &str) -> Result<ListPage> {
        serde_json::from_str(token).map_err(|e| {
            ControllerError::Invalid(format!(
                "page_token '{token}': expected the next_page_token of an earlier ListSegments answer ({e})"
            ))
        })
    }

    /// A page read at a revision etcd has compacted since the first page
    /// is [`ControllerError::Stale`]: the listing starts again.
    fn compacted(&self, e: r2o_common::Error) -> ControllerError {
        match &e {
            r2o_common::Error::Meta(m) if self.revision > 0 && m.contains("compacted") => ControllerError::Stale(
                format!("the listing's etcd revision {} was compacted: {LIST_AGAIN}", self.revision),
            ),
            _ => e.into(),
        }
    }
}

/// gRPC front of the controller.
#[derive(Clone)]
pub struct ControllerSvc {
    auth: Authority,
    gate: Gate,
}

type Reply<T> = std::result::Result<Response<T>, Status>;

impl ControllerSvc {
    /// Wraps an authority; every call passes `gate` first.
    pub fn new(auth: Authority, gate: Gate) -> ControllerSvc {
        ControllerSvc { auth, gate }
    }

    /// The one mapping from results to gRPC replies; `NotLeader` carries the
    /// current leader's address so callers can go there.
    async fn answer<T>(&self, r: Result<T>) -> Reply<T> {
        match r {
            Ok(v) => Ok(Response::new(v)),
            Err(ControllerError::NotLeader { .. }) => {
                let leader = match get_record::<LeaderRecord>(&self.auth.kv, &self.auth.keys.leader()).await {
                    Ok(Some((l, _))) => l.addr,
                    _ => "unknown".into(),
                };
                Err(ControllerError::NotLeader { leader }.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The table's record and parsed config, from the parsed-table cache
    /// (parsed once per change of its record).
    async fn table_view(&self, raw: &str) -> Result<crate::tables::TableView> {
        self.auth
            .tables
            .one(&self.auth.kv, &self.auth.keys, raw)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))
    }

    async fn require_table(&self, raw: &str) -> Result<TableSpec> {
        load_table(&self.auth.kv, &self.auth.keys, raw)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))
    }

    async fn add_table(&self, req: pb::AddTableRequest) -> Result<pb::AddTableResponse> {
        let config = parse_json("table config", &req.table_config_json)?;
        let schema = parse_json("schema", &req.schema_json)?;
        let spec = TableSpec::from_json(config.clone(), schema.clone())?;
        r2o_common::config::check_admission(&config)?;
        crate::discovery::check_sources(
            &spec,
            &self.auth.cfg.store_uri,
            self.auth.layout.namespace(),
            &self.auth.cfg.source_allow,
        )?;
        let rec = TableRecord {
            table_config: config,
            schema,
            created_ms: now_ms(),
            paused: req.paused,
            version: 1,
            updated_ms: 0,
        };
        if !protocol::add_table(&self.auth.keys, &spec.name, &rec).apply(&self.auth.kv).await? {
            return Err(ControllerError::AlreadyExists(format!("table '{}'", spec.name)));
        }
        info!(table = %spec.name, merge_type = spec.flow.merge_type.name(), bucket_ms = spec.flow.bucket_ms, "table added");
        Ok(pb::AddTableResponse { table: spec.name })
    }

    /// `r2o table update`: see [`r2o_common::config::table_changes`] for
    /// what may change. Only a paused table with nothing in flight (a task
    /// in flight runs on the config it was published with, and would commit
    /// under the old one); the record is replaced in one transaction that
    /// checks it and the table's epoch did not change.
    async fn update_table(&self, req: pb::UpdateTableRequest) -> Result<pb::UpdateTableResponse> {
        let config = parse_json("table config", &req.table_config_json)?;
        let schema = parse_json("schema", &req.schema_json)?;
        let new = TableSpec::from_json(config.clone(), schema.clone())?;
        r2o_common::config::check_admission(&config)?;
        crate::discovery::check_sources(
            &new,
            &self.auth.cfg.store_uri,
            self.auth.layout.namespace(),
            &self.auth.cfg.source_allow,
        )?;
        let raw = new.name.clone();
        let (kv, keys) = (&self.auth.kv, &self.auth.keys);
        let (rec, entry) = get_record::<TableRecord>(kv, &keys.table(&raw))
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
        if !rec.paused {
            return Err(ControllerError::Invalid(format!(
                "table '{raw}' is not paused: a flow is updated only while paused (r2o pause --table {raw}, then update, then r2o resume)"
            )));
        }
        let (open, epoch_rev) = open_tasks(kv, keys, &raw).await?;
        if let Some((t, _)) = open.first() {
            return Err(ControllerError::Invalid(format!(
                "table '{raw}' has {} task(s) in flight (the first: {}, {}): wait for them (r2o wait --table {raw}) before updating",
                open.len(),
                t.id,
                t.state.name()
            )));
        }
        let old = TableSpec::from_json(rec.table_config.clone(), rec.schema.clone())?;
        let changes = r2o_common::config::table_changes(&old, &new)?;
        let bound = r2o_common::config::lineage_bound_changes(&old, &new);
        if let Some((key, from, to)) = bound.first() {
            if !kv.range_page(&keys.lineages(&raw), None, 1).await?.kvs.is_empty() {
                return Err(ControllerError::Config(r2o_common::ConfigError::Invalid {
                    field: key.clone(),
                    value: format!("{from} -> {to}"),
                    expected: format!(
                        "unchanged: table '{raw}' has committed windows, and late-data runs would cut, merge or \
                         filter them the new way beside the old results{}. Ways out: add the new config as a new \
                         table (r2o table copy, then update the copy while it is paused), or rebuild every \
                         window with it (r2o reset --table {raw} --mode flush, then update)",
                        if bound.len() > 1 {
                            format!(
                                " (also changed: {})",
                                bound[1..].iter().map(|b| b.0.as_str()).collect::<Vec<_>>().join(", ")
                            )
                        } else {
                            String::new()
                        }
                    ),
                }));
            }
        }
        let version = rec.version.max(1);
        if req.dry_run || changes.is_empty() {
            return Ok(pb::UpdateTableResponse { table: raw, version, changes, done: false });
        }
        let updated = TableRecord { table_config: config, schema, version: version + 1, updated_ms: now_ms(), ..rec };
        let txn = protocol::put_table(keys, &raw, &updated, entry.mod_revision, Some(epoch_rev));
        if !txn.apply(kv).await? {
            return Err(ControllerError::Conflict(format!(
                "table '{raw}' changed while it was being updated; nothing was changed, try again"
            )));
        }
        info!(table = %raw, version = version + 1, changes = changes.len(), "table updated");
        Ok(pb::UpdateTableResponse { table: raw, version: version + 1, changes, done: true })
    }

    async fn get_table(&self, raw: &str) -> Result<pb::GetTableResponse> {
        let (rec, _) = get_record::<TableRecord>(&self.auth.kv, &self.auth.keys.table(raw))
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))?;
        Ok(pb::GetTableResponse {
            version: rec.version.max(1),
            updated_ms: rec.updated_ms,
            created_ms: rec.created_ms,
            paused: rec.paused,
            table_config_json: rec.table_config.to_string(),
            schema_json: rec.schema.to_string(),
        })
    }

    async fn list_tables(&self) -> Result<pb::ListTablesResponse> {
        let prefix = self.auth.keys.tables();
        let tables =
            self.auth.kv.range_keys(&prefix).await?.into_iter().map(|k| k[prefix.len()..].to_string()).collect();
        Ok(pb::ListTablesResponse { tables })
    }

    async fn set_paused(&self, raw: &str, paused: bool) -> Result<pb::TableStateResponse> {
        let key = self.auth.keys.table(raw);
        let Some((mut rec, entry)) = get_record::<TableRecord>(&self.auth.kv, &key).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        if rec.paused != paused {
            rec.paused = paused;
            let txn = protocol::put_table(&self.auth.keys, raw, &rec, entry.mod_revision, None);
            if !txn.apply(&self.auth.kv).await? {
                return Err(ControllerError::Conflict(format!("table '{raw}' changed meanwhile; try again")));
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
        let a = &self.auth;
        let warning = registry::add_segment(&a.kv, &a.keys, &a.store, &a.layout, &a.footers, meta).await?;
        Ok(pb::AddSegmentResponse { warning })
    }

    /// One page of the table's segments ([`ListPage`]): REALTIME in name
    /// order, read page by page from etcd at the first page's revision, then
    /// OFFLINE in name order. Neither the controller nor the answer holds
    /// more than a page of REALTIME records, whatever the table's size.
    async fn list_segments(&self, req: pb::ListSegmentsRequest) -> Result<pb::ListSegmentsResponse> {
        let raw = req.table.as_str();
        let spec = self.require_table(raw).await?;
        let (kv, keys) = (&self.auth.kv, &self.auth.keys);
        let limit = ListPage::limit(req.page_size);
        let mut page = match req.page_token.as_str() {
            "" => ListPage {
                revision: 0,
                watermark_ms: get_record::<WatermarkRecord>(kv, &keys.watermark(raw))
                    .await?
                    .map(|(w, _)| w.watermark_ms),
                offline: false,
                after: String::new(),
            },
            token => ListPage::parse(token)?,
        };
        let mut segments = Vec::new();
        if !page.offline {
            let typed = format!("{raw}_REALTIME");
            let after = (!page.after.is_empty()).then(|| keys.segment(&typed, &page.after));
            let read = kv
                .range_page_at(&keys.segments(&typed), after.as_deref(), limit, page.revision)
                .await
                .map_err(|e| page.compacted(e))?;
            page.revision = read.revision;
            let realtime =
                read.kvs.iter().map(r2o_common::meta::decode_realtime).collect::<r2o_common::Result<Vec<_>>>()?;
            let statuses = registry::load_statuses(kv, keys, &spec, &realtime, page.watermark_ms).await?;
            segments.extend(realtime.iter().zip(statuses).map(|(s, (status, detail))| pb::Segment {
                load_status: status.name().into(),
                load_detail: detail,
                ..pb::Segment::from(s)
            }));
            match realtime.last() {
                Some(last) if read.more => {
                    page.after = last.segment_name.clone();
                    return Ok(pb::ListSegmentsResponse { segments, next_page_token: page.token() });
                }
                _ => (page.offline, page.after) = (true, String::new()),
            }
        }
        if segments.len() == limit {
            return Ok(pb::ListSegmentsResponse { segments, next_page_token: page.token() });
        }
        let mut offline = registry::offline_segments(kv, keys, raw).await?;
        offline.sort_unstable_by(|a, b| a.segment_name.cmp(&b.segment_name));
        let from = offline.partition_point(|s| s.segment_name.as_str() <= page.after.as_str());
        let rest = &offline[from..];
        let take = rest.len().min(limit - segments.len());
        segments.extend(rest[..take].iter().map(pb::Segment::from));
        let next_page_token = match rest.get(take) {
            Some(_) => {
                page.after = rest[take - 1].segment_name.clone();
                page.token()
            }
            None => String::new(),
        };
        Ok(pb::ListSegmentsResponse { segments, next_page_token })
    }

    async fn list_tasks(&self, raw: &str) -> Result<pb::ListTasksResponse> {
        self.require_table(raw).await?;
        // history and active tasks at one etcd revision: a task committing
        // between two reads would be in neither (finding 18 of issue 19)
        let keys = &self.auth.keys;
        let ranges = self.auth.kv.range_consistent(&[keys.histories(raw), keys.active_tasks()]).await?;
        let mut tasks: Vec<TaskRecord> = Vec::new();
        for entry in ranges.iter().flatten() {
            let t: TaskRecord = decode(entry)?;
            if t.table == raw {
                tasks.push(t);
            }
        }
        tasks.sort_by_key(|t| (t.window_start_ms, t.created_ms));
        Ok(pb::ListTasksResponse { tasks: tasks.iter().map(pb::Task::from).collect() })
    }

    async fn get_watermark(&self, raw: &str) -> Result<pb::GetWatermarkResponse> {
        let view = self.table_view(raw).await?;
        self.watermark_of(view).await
    }

    /// [`Self::get_watermark`] of a table already read (`view`).
    async fn watermark_of(&self, view: crate::tables::TableView) -> Result<pb::GetWatermarkResponse> {
        let raw = view.raw.as_str();
        let spec = view.spec.clone();
        let (kv, keys) = (&self.auth.kv, &self.auth.keys);
        // the table's small records in one read (`r2o wait` polls this)
        let mut wanted = vec![keys.watermark(raw), crate::projector::record_key(keys, raw), keys.retention(raw)];
        if spec.flow.schedule.is_some() {
            wanted.push(keys.schedule(raw));
        }
        let got = kv.get_many(&wanted).await?;
        let record = |i: usize| got.get(i).and_then(Option::as_ref);
        let wm_revision = record(0).map_or(0, |e| e.mod_revision);
        let wm: Option<WatermarkRecord> = record(0).map(decode).transpose()?;
        let delta: Option<crate::projector::DeltaRecord> = record(1).map(decode).transpose()?;
        let retained: Option<RetentionRecord> = record(2).map(decode).transpose()?;
        let schedule_rec: Option<ScheduleRecord> = record(3).map(decode).transpose()?;
        // the revision-checked segment cache, read once per call (one marker
        // read when nothing changed)
        let (segments, _) = self.auth.segments.get(kv, keys, raw).await?;
        let delta_url = crate::delta::table_url(&self.auth.cfg.store_uri, &self.auth.layout.offline_prefix(raw))
            .map(|u| u.to_string())
            .unwrap_or_default();
        let (open, _) = open_tasks(kv, keys, raw).await?;
        let table_rec = Some(view.record);
        let paused = table_rec.as_ref().is_some_and(|r| r.paused);
        // (last run ms, trigger, a run is going on or due now, next run ms)
        let sched = match &spec.flow.schedule {
            None => None,
            Some(s) => {
                let rec = schedule_rec.unwrap_or(ScheduleRecord {
                    last_fire_ms: table_rec.as_ref().map_or(0, |r| r.created_ms),
                    ..Default::default()
                });
                let now = now_ms();
                let running = rec.active || s.due(rec.last_fire_ms, now).is_some();
                let next = if rec.active { None } else { s.next_after(rec.last_fire_ms.max(now)) };
                Some((rec.last_run_ms, rec.last_trigger, running, next))
            }
        };
        let mut idle = false;
        let next = if let Some((t, _)) = open.first() {
            let counts = |state: r2o_common::meta::TaskState| open.iter().filter(|(t, _)| t.state == state).count();
            use r2o_common::meta::TaskState as S;
            let tag = &spec.flow.minion_instance_tag;
            let no_minion = if counts(S::Pending) > 0 && self.auth.minion_hosts(tag).await? == 0 {
                format!("; no live minion runs minionInstanceTag '{tag}' (start one with r2o minion --tag {tag})")
            } else {
                String::new()
            };
            format!(
                "{} task(s) in flight ({} pending, {} running, {} staged, {} failed); the next to commit, {}, is {} (attempt {}){}{no_minion}",
                open.len(),
                counts(S::Pending),
                counts(S::Running),
                counts(S::Staged),
                counts(S::Failed),
                t.id,
                t.state.name(),
                t.attempt,
                t.errors.last().map(|e| format!("; last error: {e}")).unwrap_or_default()
            )
        } else if paused {
            idle = true;
            "paused: no window is planned until the flow is resumed (r2o resume)".to_string()
        } else if let Some(at) = sched.as_ref().filter(|s| !s.2).map(|s| s.3) {
            idle = true;
            format!(
                "on schedule '{}': the next run is at {} (r2o run-now plans before it)",
                spec.flow.schedule.as_ref().map(|s| s.text()).unwrap_or_default(),
                at.map_or_else(|| "never".into(), r2o_common::window::format_utc)
            )
        } else {
            let from = wm.as_ref().map(|w| w.watermark_ms);
            match plan_over(
                &spec.flow,
                &segments,
                segments.facts(),
                from,
                now_ms(),
                &crate::planner::Budget::ONE_WINDOW,
            ) {
                Decision::Run { windows, inputs, .. } => {
                    let n = r2o_common::meta::chunks::encode_all(&inputs).len();
                    crate::authority::inputs_problem(&windows, inputs.len(), n).unwrap_or_else(|| {
                        format!("window {} is ready and will be planned on the next tick", windows[0])
                    })
                }
                Decision::Wait(reason) => {
                    idle = true;
                    reason.to_string()
                }
            }
        };
        let w = wm.clone().unwrap_or_default();
        let unmoved = match spec.flow.retention_ms {
            Some(r) => {
                let from = wm.as_ref().map(|w| w.watermark_ms);
                let settled = crate::retention::late_settled(kv, keys, &spec).await?;
                crate::retention::plan_retention(&segments, from, r, now_ms(), &*settled).unmoved.len() as u64
            }
            None => 0,
        };
        let deleted = retained.as_ref().map_or(0, |r| r.deleted_segments);
        // late windows that cannot be redone: the planner passes them over, this says why
        let late_problems = if segments.any_late() {
            let ledger = crate::registry::late_ledger(kv, keys, raw).await?;
            let until = retained.as_ref().map(|r| r.deleted_until_ms);
            crate::planner::plan_late(&spec.flow, &segments, &ledger, None, until)
                .blocked
                .into_iter()
                .map(|(_, why)| why)
                .collect()
        } else {
            vec![]
        };
        Ok(pb::GetWatermarkResponse {
            delta_version: delta.as_ref().map(|d| d.version),
            delta_revision: delta.as_ref().map_or(0, |d| d.revision),
            delta_holds_watermark: delta.as_ref().is_some_and(|d| crate::projector::holds_watermark(d, wm_revision)),
            delta_table_url: delta_url,
            retention_ms: spec.flow.retention_ms.unwrap_or(0),
            schedule: spec.flow.schedule.as_ref().map(|s| s.text().to_string()).unwrap_or_default(),
            last_run_ms: sched.as_ref().and_then(|s| s.0),
            last_run_trigger: sched.as_ref().map(|s| s.1.clone()).unwrap_or_default(),
            next_run_ms: sched.as_ref().and_then(|s| s.3),
            time_zone: spec.flow.bucket_time_zone.as_ref().and_then(|z| z.iana_name()).unwrap_or_default().to_string(),
            segments_unmoved_past_retention: unmoved,
            segments_deleted_by_retention: deleted,
            exists: wm.is_some(),
            watermark_ms: w.watermark_ms,
            windows_committed: w.windows_committed,
            windows_skipped: w.windows_skipped,
            rows_out: w.rows_out,
            next,
            idle,
            rows_null_time: w.rows_null_time,
            rows_in: w.rows_in,
            late_problems,
        })
    }

    /// A table's row of the status page from its watermark answer (the one
    /// `r2o watermark` prints) and the active tasks of every table.
    async fn status_row(
        &self,
        view: &crate::tables::TableView,
        active: &[TaskRecord],
    ) -> Result<crate::status::TableRow> {
        use r2o_common::meta::TaskState as S;
        let (raw, spec, paused) = (view.raw.as_str(), &view.spec, view.record.paused);
        let w = self.watermark_of(view.clone()).await?;
        let count = |s: S| active.iter().filter(|t| t.table == raw && t.state == s).count();
        let watermark_ms = w.exists.then_some(w.watermark_ms);
        let lag_ms =
            watermark_ms.map_or(0, |wm| now_ms().saturating_sub(spec.flow.buffer_ms).saturating_sub(wm).max(0));
        Ok(crate::status::TableRow {
            name: raw.to_string(),
            paused,
            watermark_ms,
            lag_ms,
            schedule: w.schedule,
            next_run_ms: w.next_run_ms,
            pending: count(S::Pending),
            running: count(S::Running),
            staged: count(S::Staged),
            failed: count(S::Failed),
            idle: w.idle,
            next: w.next,
            windows_committed: w.windows_committed,
            rows_out: w.rows_out,
        })
    }

    /// Everything the status page's overview shows, read as `r2o
    /// watermark` and `r2o tasks` read it: every table's row, the pool per
    /// tag and per minion, and the last failures. `controller` is this
    /// controller's id.
    ///
    /// # Errors
    /// etcd errors (a table whose config cannot be parsed is listed with
    /// the error as its `next`).
    pub async fn status_view(&self, controller: &str) -> Result<crate::status::StatusView> {
        use r2o_common::meta::{range_records, MinionRecord, TaskState as S};
        let (kv, keys) = (&self.auth.kv, &self.auth.keys);
        let now = now_ms();
        let leader = get_record::<LeaderRecord>(kv, &keys.leader()).await?.map(|(l, _)| l.id).unwrap_or_default();
        let tables = self.auth.tables.all(kv, keys).await?;
        let active: Vec<TaskRecord> =
            range_records::<TaskRecord>(kv, &keys.active_tasks()).await?.into_iter().map(|(t, _)| t).collect();
        let minions: Vec<MinionRecord> =
            range_records::<MinionRecord>(kv, &keys.minions()).await?.into_iter().map(|(m, _)| m).collect();
        let mut rows = Vec::with_capacity(tables.len());
        for (raw, view) in &tables {
            match view {
                Ok(v) => rows.push(self.status_row(v, &active).await?),
                Err(e) => rows.push(crate::status::TableRow {
                    name: raw.clone(),
                    next: format!("its config cannot be read: {e}"),
                    ..Default::default()
                }),
            }
        }
        let pool = crate::pool::pool_of_tables(&tables, &active, &minions, now);
        let minion_rows = minions
            .iter()
            .map(|m| crate::status::MinionRow {
                id: m.id.clone(),
                tag: m.tag_or_default().to_string(),
                slots: m.slots,
                running: active.iter().filter(|t| t.state == S::Running && t.minion == m.id).count(),
                draining: m.draining,
            })
            .collect();
        let mut failures: Vec<crate::status::FailureRow> = active
            .iter()
            .filter(|t| !t.errors.is_empty())
            .map(|t| crate::status::FailureRow {
                table: t.table.clone(),
                task: t.id.to_string(),
                window_start_ms: t.window_start_ms,
                state: t.state.name().to_string(),
                attempt: t.attempt,
                error: t.errors.last().cloned().unwrap_or_default(),
                created_ms: t.created_ms,
            })
            .collect();
        failures.sort_by_key(|f| std::cmp::Reverse(f.created_ms));
        failures.truncate(crate::status::FAILURE_ROWS);
        Ok(crate::status::StatusView {
            controller: controller.to_string(),
            leader,
            now_ms: now,
            tables: rows,
            pool,
            minions: minion_rows,
            failures,
        })
    }

    /// One table's status page: its row and its newest tasks (active and
    /// history, as `r2o tasks` lists them).
    ///
    /// # Errors
    /// `NotFound` for an unknown table; etcd errors.
    pub async fn table_detail(&self, raw: &str) -> Result<crate::status::TableDetail> {
        use r2o_common::meta::range_records;
        let (kv, keys) = (&self.auth.kv, &self.auth.keys);
        let view = self.table_view(raw).await?;
        let active: Vec<TaskRecord> =
            range_records::<TaskRecord>(kv, &keys.active_tasks()).await?.into_iter().map(|(t, _)| t).collect();
        let row = self.status_row(&view, &active).await?;
        let mut tasks = self.list_tasks(raw).await?.tasks;
        let total_tasks = tasks.len();
        tasks.sort_by_key(|t| std::cmp::Reverse((t.window_start_ms, t.created_ms)));
        tasks.truncate(crate::status::HISTORY_ROWS);
        Ok(crate::status::TableDetail { row, tasks, total_tasks })
    }

    /// `ExportDelta`: one pass of the Delta log projector over the table at
    /// once ([`crate::projector::project_table`]): the log then holds the
    /// committed OFFLINE segments as of the revision it reports.
    async fn export_delta(&self, raw: &str) -> Result<pb::ExportDeltaResponse> {
        self.require_table(raw).await?;
        let p = crate::projector::project_table(&self.auth, raw).await?;
        let root = self.auth.layout.offline_prefix(raw);
        let url = crate::delta::table_url(&self.auth.cfg.store_uri, &root)
            .map_err(|e| ControllerError::Invalid(format!("store URI '{}': {e}", self.auth.cfg.store_uri)))?;
        let revision = p.record.revision;
        tracing::info!(
            table = raw,
            version = p.record.version,
            added = p.added,
            removed = p.removed,
            revision,
            "delta log exported"
        );
        Ok(pb::ExportDeltaResponse {
            table: raw.to_string(),
            version: p.record.version,
            added: p.added as u64,
            removed: p.removed as u64,
            table_url: url.to_string(),
            revision,
        })
    }

    async fn run_now(&self, table: &str) -> Result<pb::RunNowResponse> {
        match self.auth.run_now(table).await? {
            PlanOutcome::Paused => Err(ControllerError::Stale(format!(
                "table '{table}' is paused; resume it first (r2o resume --table {table})"
            ))),
            o => Ok(pb::RunNowResponse {
                task_id: match &o {
                    PlanOutcome::Published(ids, _) => ids.first().map(ToString::to_string).unwrap_or_default(),
                    _ => String::new(),
                },
                outcome: o.to_string(),
            }),
        }
    }

    async fn reset(&self, req: pb::ResetTableRequest) -> Result<pb::ResetTableResponse> {
        let flush = match req.mode.to_ascii_uppercase().as_str() {
            "APPEND" => false,
            "FLUSH" => true,
            _ => return Err(ControllerError::Invalid(format!("mode '{}': expected APPEND or FLUSH", req.mode))),
        };
        self.auth.reset(&req.table, flush, req.dry_run).await
    }
}

/// Shorthand for the audit outcome of a result.
fn outcome<T>(r: &Result<T>) -> std::result::Result<(), String> {
    r.as_ref().map(|_| ()).map_err(ToString::to_string)
}

fn token_info(r: &r2o_common::meta::TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        role: r.role.to_string(),
        created_ms: r.created_ms,
        created_by: r.created_by.clone(),
    }
}

#[tonic::async_trait]
impl ControllerService for ControllerSvc {
    async fn add_table(&self, req: Request<pb::AddTableRequest>) -> Reply<pb::AddTableResponse> {
        let who = self.gate.check(&req, "AddTable", Role::Admin).await?;
        let r = self.add_table(req.into_inner()).await;
        let table = r.as_ref().map(|t| t.table.clone()).unwrap_or_default();
        self.gate.record(&who, "AddTable", &table, "", outcome(&r)).await;
        self.answer(r).await
    }

    async fn update_table(&self, req: Request<pb::UpdateTableRequest>) -> Reply<pb::UpdateTableResponse> {
        let who = self.gate.check(&req, "UpdateTable", Role::Admin).await?;
        let req = req.into_inner();
        let table = serde_json::from_str::<serde_json::Value>(&req.table_config_json)
            .ok()
            .and_then(|v| {
                v.get("tableName")
                    .and_then(|n| n.as_str())
                    .map(|n| n.strip_suffix("_REALTIME").unwrap_or(n).to_string())
            })
            .unwrap_or_default();
        let detail = if req.dry_run { "dry run" } else { "" };
        let r = self.update_table(req).await;
        self.gate.record(&who, "UpdateTable", &table, detail, outcome(&r)).await;
        self.answer(r).await
    }

    async fn delete_table(&self, req: Request<pb::DeleteTableRequest>) -> Reply<pb::DeleteTableResponse> {
        let who = self.gate.check(&req, "DeleteTable", Role::Admin).await?;
        let req = req.into_inner();
        let r = self.auth.delete_table(&req.table, req.purge, req.dry_run).await;
        let detail = [(req.purge, "purge"), (req.dry_run, "dry run")]
            .iter()
            .filter_map(|(on, w)| on.then_some(*w))
            .collect::<Vec<_>>()
            .join(", ");
        self.gate.record(&who, "DeleteTable", &req.table, &detail, outcome(&r)).await;
        self.answer(r).await
    }

    async fn get_table(&self, req: Request<pb::GetTableRequest>) -> Reply<pb::GetTableResponse> {
        self.gate.check(&req, "GetTable", Role::Reader).await?;
        self.answer(self.get_table(&req.into_inner().table).await).await
    }

    async fn list_tables(&self, req: Request<pb::ListTablesRequest>) -> Reply<pb::ListTablesResponse> {
        self.gate.check(&req, "ListTables", Role::Reader).await?;
        self.answer(self.list_tables().await).await
    }

    async fn prepare_segment_upload(
        &self,
        req: Request<pb::PrepareSegmentUploadRequest>,
    ) -> Reply<pb::PrepareSegmentUploadResponse> {
        self.gate.check(&req, "PrepareSegmentUpload", Role::Admin).await?;
        let req = req.into_inner();
        let (kv, keys, layout) = (&self.auth.kv, &self.auth.keys, &self.auth.layout);
        let r = registry::prepare_upload(kv, keys, layout, &req.table, &req.segment).await;
        self.answer(r.map(|location| pb::PrepareSegmentUploadResponse { location })).await
    }

    async fn prepare_segment_uploads(
        &self,
        req: Request<pb::PrepareSegmentUploadsRequest>,
    ) -> Reply<pb::PrepareSegmentUploadsResponse> {
        self.gate.check(&req, "PrepareSegmentUploads", Role::Admin).await?;
        let req = req.into_inner();
        let (kv, keys, layout) = (&self.auth.kv, &self.auth.keys, &self.auth.layout);
        let r = registry::prepare_uploads(kv, keys, layout, &req.table, &req.segments).await;
        self.answer(r.map(|locations| pb::PrepareSegmentUploadsResponse { locations })).await
    }

    async fn add_segments(&self, req: Request<pb::AddSegmentsRequest>) -> Reply<pb::AddSegmentsResponse> {
        let who = self.gate.check(&req, "AddSegments", Role::Admin).await?;
        let segments = req.into_inner().segments;
        let table = segments.first().map(|s| s.table.clone()).unwrap_or_default();
        let r = async {
            let metas = segments
                .iter()
                .map(|seg| {
                    segment_from_wire(seg).ok_or_else(|| {
                        ControllerError::Invalid(format!(
                            "segment.status '{}' of segment {}: expected CONSUMING or DONE",
                            seg.status, seg.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let added = metas.len() as u64;
            let a = &self.auth;
            let warnings = registry::add_segments(&a.kv, &a.keys, &a.store, &a.layout, &a.footers, metas).await?;
            Ok(pb::AddSegmentsResponse { added, warnings })
        }
        .await;
        let detail = format!("{} segments", segments.len());
        self.gate.record(&who, "AddSegments", &table, &detail, outcome(&r)).await;
        self.answer(r).await
    }

    async fn add_segment(&self, req: Request<pb::AddSegmentRequest>) -> Reply<pb::AddSegmentResponse> {
        let who = self.gate.check(&req, "AddSegment", Role::Admin).await?;
        let req = req.into_inner();
        let (table, detail) =
            req.segment.as_ref().map(|s| (s.table.clone(), format!("segment {}", s.name))).unwrap_or_default();
        let r = self.add_segment(req).await;
        self.gate.record(&who, "AddSegment", &table, &detail, outcome(&r)).await;
        self.answer(r).await
    }

    async fn seal_segment(&self, req: Request<pb::SealSegmentRequest>) -> Reply<pb::SealSegmentResponse> {
        let who = self.gate.check(&req, "SealSegment", Role::Admin).await?;
        let req = req.into_inner();
        let r =
            registry::seal_segment(&self.auth.kv, &self.auth.keys, &req.table, &req.segment, req.end_of_stream).await;
        let r = r.map(|_| pb::SealSegmentResponse {});
        self.gate.record(&who, "SealSegment", &req.table, &format!("segment {}", req.segment), outcome(&r)).await;
        self.answer(r).await
    }

    async fn list_segments(&self, req: Request<pb::ListSegmentsRequest>) -> Reply<pb::ListSegmentsResponse> {
        self.gate.check(&req, "ListSegments", Role::Reader).await?;
        self.answer(self.list_segments(req.into_inner()).await).await
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Reply<pb::ListTasksResponse> {
        self.gate.check(&req, "ListTasks", Role::Reader).await?;
        self.answer(self.list_tasks(&req.into_inner().table).await).await
    }

    async fn get_watermark(&self, req: Request<pb::GetWatermarkRequest>) -> Reply<pb::GetWatermarkResponse> {
        self.gate.check(&req, "GetWatermark", Role::Reader).await?;
        self.answer(self.get_watermark(&req.into_inner().table).await).await
    }

    async fn retry_task(&self, req: Request<pb::RetryTaskRequest>) -> Reply<pb::RetryTaskResponse> {
        let who = self.gate.check(&req, "RetryTask", Role::Operator).await?;
        let table = req.into_inner().table;
        let r = self.auth.retry(&table).await.map(|task_id| pb::RetryTaskResponse { task_id });
        self.gate.record(&who, "RetryTask", &table, "", outcome(&r)).await;
        self.answer(r).await
    }

    async fn pause_table(&self, req: Request<pb::TableRequest>) -> Reply<pb::TableStateResponse> {
        let who = self.gate.check(&req, "PauseTable", Role::Operator).await?;
        let table = req.into_inner().table;
        let r = self.set_paused(&table, true).await;
        self.gate.record(&who, "PauseTable", &table, "", outcome(&r)).await;
        self.answer(r).await
    }

    async fn resume_table(&self, req: Request<pb::TableRequest>) -> Reply<pb::TableStateResponse> {
        let who = self.gate.check(&req, "ResumeTable", Role::Operator).await?;
        let table = req.into_inner().table;
        let r = self.set_paused(&table, false).await;
        self.gate.record(&who, "ResumeTable", &table, "", outcome(&r)).await;
        self.answer(r).await
    }

    async fn run_now(&self, req: Request<pb::TableRequest>) -> Reply<pb::RunNowResponse> {
        let who = self.gate.check(&req, "RunNow", Role::Operator).await?;
        let table = req.into_inner().table;
        let r = self.run_now(&table).await;
        self.gate.record(&who, "RunNow", &table, "", outcome(&r)).await;
        self.answer(r).await
    }

    async fn export_delta(&self, req: Request<pb::TableRequest>) -> Reply<pb::ExportDeltaResponse> {
        let who = self.gate.check(&req, "ExportDelta", Role::Admin).await?;
        let table = req.into_inner().table;
        let r = self.export_delta(&table).await;
        self.gate.record(&who, "ExportDelta", &table, "", outcome(&r)).await;
        self.answer(r).await
    }

    async fn reset_table(&self, req: Request<pb::ResetTableRequest>) -> Reply<pb::ResetTableResponse> {
        // append continues from the watermark (an operator's fix); flush
        // deletes the OFFLINE table (an admin's decision)
        let need = if req.get_ref().mode.eq_ignore_ascii_case("append") { Role::Operator } else { Role::Admin };
        let who = self.gate.check(&req, "ResetTable", need).await?;
        let req = req.into_inner();
        let detail = format!("mode {}{}", req.mode.to_ascii_uppercase(), if req.dry_run { ", dry run" } else { "" });
        let table = req.table.clone();
        let r = self.reset(req).await;
        self.gate.record(&who, "ResetTable", &table, &detail, outcome(&r)).await;
        self.answer(r).await
    }

    async fn complete_task(&self, req: Request<pb::CompleteTaskRequest>) -> Reply<pb::CompleteTaskResponse> {
        self.gate.check(&req, "CompleteTask", Role::Minion).await?;
        self.answer(self.auth.complete(&req.into_inner()).await).await
    }

    async fn fail_task(&self, req: Request<pb::FailTaskRequest>) -> Reply<pb::FailTaskResponse> {
        self.gate.check(&req, "FailTask", Role::Minion).await?;
        let r = self.auth.fail(&req.into_inner()).await;
        self.answer(r.map(|_| pb::FailTaskResponse {})).await
    }

    async fn create_token(&self, req: Request<pb::CreateTokenRequest>) -> Reply<pb::CreateTokenResponse> {
        let who = self.gate.check(&req, "CreateToken", Role::Admin).await?;
        let req = req.into_inner();
        let r = async {
            let role = Role::parse(&req.role).map_err(ControllerError::Invalid)?;
            self.gate.create_token(&req.name, role, &who).await
        }
        .await;
        let detail = match &r {
            Ok((rec, _)) => format!("token {} for '{}' with role {}", rec.id, rec.name, rec.role),
            Err(_) => format!("for '{}' with role {}", req.name, req.role),
        };
        self.gate.record(&who, "CreateToken", "", &detail, outcome(&r)).await;
        self.answer(r.map(|(rec, token)| pb::CreateTokenResponse { info: Some(token_info(&rec)), token })).await
    }

    async fn revoke_token(&self, req: Request<pb::RevokeTokenRequest>) -> Reply<pb::RevokeTokenResponse> {
        let who = self.gate.check(&req, "RevokeToken", Role::Admin).await?;
        let id = req.into_inner().id;
        let r = self.gate.revoke_token(&id).await;
        self.gate.record(&who, "RevokeToken", "", &format!("token {id}"), outcome(&r)).await;
        self.answer(r.map(|rec| pb::RevokeTokenResponse { info: Some(token_info(&rec)) })).await
    }

    async fn list_tokens(&self, req: Request<pb::ListTokensRequest>) -> Reply<pb::ListTokensResponse> {
        self.gate.check(&req, "ListTokens", Role::Admin).await?;
        let r = self.gate.tokens().await;
        self.answer(r.map(|t| pb::ListTokensResponse { tokens: t.iter().map(token_info).collect() })).await
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Reply<pb::ListAuditResponse> {
        self.gate.check(&req, "ListAudit", Role::Operator).await?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let r = self.gate.audit_log(limit).await.map(|entries| pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at_ms: e.at_ms,
                    who: e.who,
                    role: e.role.to_string(),
                    call: e.call,
                    table: e.table,
                    detail: e.detail,
                    outcome: e.outcome,
                })
                .collect(),
        });
        self.answer(r).await
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Reply<pb::WhoAmIResponse> {
        let who = self.gate.identify(&req).await?.ok_or_else(|| {
            Status::unauthenticated(
                "no credentials: present a client certificate whose name is mapped to a role, \
                 or a bearer token (R2O_TOKEN or --token-file)",
            )
        })?;
        let via = match who.via {
            Via::Certificate => "certificate",
            Via::Token => "token",
            Via::Insecure => "insecure",
        };
        Ok(Response::new(pb::WhoAmIResponse { name: who.name, role: who.role.to_string(), via: via.into() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_holds_at_most_ten_thousand_segments() {
        assert_eq!(ListPage::limit(0), ListPage::MAX);
        assert_eq!(ListPage::limit(1), 1);
        assert_eq!(ListPage::limit(9_999), 9_999);
        assert_eq!(ListPage::limit(10_000), 10_000);
        assert_eq!(ListPage::limit(u32::MAX), ListPage::MAX);
    }

    #[test]
    fn a_token_gives_back_the_listing_position_and_a_foreign_one_is_refused() {
        let page = ListPage {
            revision: 1843,
            watermark_ms: Some(-86_400_000),
            offline: true,
            after: "flights__0__12__20240101T0000Z".into(),
        };
        assert_eq!(ListPage::parse(&page.token()).unwrap(), page);
        let err = ListPage::parse("page-2").unwrap_err().to_string();
        assert!(err.contains("page_token 'page-2'") && err.contains("next_page_token"), "{err}");
    }

    #[test]
    fn a_compacted_revision_asks_for_a_fresh_listing_and_other_errors_pass() {
        let page = ListPage { revision: 7, watermark_ms: None, offline: false, after: "s1".into() };
        let compacted = r2o_common::Error::Meta("etcdserver: mvcc: required revision has been compacted".into());
        let e = page.compacted(compacted);
        assert!(matches!(&e, ControllerError::Stale(m) if m.contains("revision 7") && m.contains(LIST_AGAIN)), "{e}");
        let other = page.compacted(r2o_common::Error::Meta("connection refused".into()));
        assert!(matches!(other, ControllerError::Common(_)), "{other}");
    }
}
