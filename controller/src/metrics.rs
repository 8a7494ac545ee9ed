//! The controller's Prometheus metrics. Per-table figures are read from
//! etcd at scrape time (so every controller, leader or not, reports the
//! same, and nothing is lost with a leader change); task durations are
//! observed by the leader as it commits.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use r2o_common::kv::Kv;
use r2o_common::meta::{
    get_record, now_ms, range_records, Keys, LoadStatus, MinionRecord, RetentionRecord, SegmentMeta, TaskRecord,
    WatermarkRecord,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How often, at most, a table's segments are read to count their load
/// statuses for `/metrics`, ms (scrapes in between show the last counts).
pub const LOAD_STATUS_EVERY_MS: i64 = 10_000;

/// When a table's load statuses were counted (UTC epoch ms) and the counts,
/// in [`LoadStatus::ALL`]'s order.
type Counted = (i64, [i64; 4]);

/// A commit's window freshness at `now_ms`: how long since the latest of
/// its `inputs` was registered as DONE (`SegmentMeta::done_ms`, the
/// controller's clock), ms, at least 0. With `bufferTimePeriod` 0 and a
/// table kept up, that is the time from the segment that completed the
/// window to the window's commit (issue 21's freshness); in a backfill, how
/// long its newest data waited. `None` when no input records it (CONSUMING
/// at registration and sealed by an older r2o, or registered before the
/// field existed). Pure.
pub fn window_freshness_ms(inputs: &[SegmentMeta], now_ms: i64) -> Option<i64> {
    inputs.iter().filter_map(|s| s.done_ms).max().map(|d| (now_ms - d).max(0))
}

/// Every metric the controller exports.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// `r2o_controller_is_leader`: 1 while this controller leads.
    pub is_leader: IntGauge,
    /// `r2o_table_watermark_ms{table}`.
    pub watermark_ms: IntGaugeVec,
    /// `r2o_table_watermark_lag_seconds{table}`: `now - bufferTimePeriod - watermark`, s (0 when ahead).
    pub lag_seconds: prometheus::GaugeVec,
    /// `r2o_table_windows_committed_total{table}`.
    pub windows_committed: IntCounterVec,
    /// `r2o_table_windows_skipped_total{table}`: windows without data.
    pub windows_skipped: IntCounterVec,
    /// `r2o_table_rows_in_total{table}`, rows read inside committed windows.
    pub rows_in: IntCounterVec,
    /// `r2o_table_rows_out_total{table}`.
    pub rows_out: IntCounterVec,
    /// `r2o_table_bytes_in_total{table}`.
    pub bytes_in: IntCounterVec,
    /// `r2o_table_bytes_out_total{table}`.
    pub bytes_out: IntCounterVec,
    /// `r2o_tasks{table,state}`: active tasks by state.
    pub tasks: IntGaugeVec,
    /// `r2o_task_duration_seconds{table}`: claim to commit of the committing attempt.
    pub task_duration: HistogramVec,
    /// `r2o_task_queue_wait_seconds{table}`: publish to first claim.
    pub queue_wait: HistogramVec,
    /// `r2o_window_freshness_seconds{table}`: from the registration as DONE
    /// of a committed task's latest input to the commit, s
    /// ([`window_freshness_ms`]); flow commits only.
    pub window_freshness: HistogramVec,
    /// `r2o_errors_total{component}`: etcd and object-store errors seen.
    pub errors: IntCounterVec,
    /// `r2o_table_rows_null_time_total{table}`: input rows whose time value
    /// is NULL (they belong to no window and are not moved).
    pub rows_null_time: IntCounterVec,
    /// `r2o_etcd_alarm{alarm}`: 1 while etcd has raised the alarm (`NOSPACE`:
    /// its space quota is exhausted and it refuses every write).
    pub etcd_alarm: IntGaugeVec,
    /// `r2o_etcd_db_size_bytes`: size of etcd's database, bytes.
    pub etcd_db_size: IntGauge,
    /// `r2o_table_realtime_segments_unmoved_past_retention{table}`: REALTIME
    /// segments older than the retention that hold rows not yet moved
    /// (kept; tables with a retention only).
    pub unmoved_past_retention: IntGaugeVec,
    /// `r2o_table_realtime_segments{table,load_status}`: REALTIME segments
    /// by load status (PENDING, LOADED, LOADED_WITH_ERRORS, SKIPPED),
    /// counted at most every [`LOAD_STATUS_EVERY_MS`] per table.
    pub realtime_segments: IntGaugeVec,
    /// Per table: when its load statuses were last counted (UTC epoch ms)
    /// and the counts, in [`LoadStatus::ALL`]'s order.
    load_status_counts: Arc<Mutex<HashMap<String, Counted>>>,
    /// `r2o_table_realtime_segments_retention_deleted_total{table}`: REALTIME
    /// segments retention deleted (all their rows had moved).
    pub retention_deleted: IntCounterVec,
    /// `r2o_discovered_files_total{table,outcome}`: files of a table's
    /// `batchConfigMaps` sources the leader handled: `registered`,
    /// `unreadable` (registered SKIPPED with the error), `changed` (refused:
    /// changed or deleted after registration).
    pub discovered_files: IntCounterVec,
    /// `r2o_delta_log_lag_seconds{table}`: how long the table's oldest change
    /// not yet in its Delta log has waited, s (0: the log is up to date;
    /// the leader's own figure).
    pub delta_lag: prometheus::GaugeVec,
    /// `r2o_delta_log_version{table}`: the version of the table's Delta log
    /// after the leader's last pass.
    pub delta_version: IntGaugeVec,
    /// `r2o_table_bucket_seconds{table}`: `bucketTimePeriod`, s.
    pub bucket_seconds: prometheus::GaugeVec,
    /// `r2o_table_buffer_seconds{table}`: `bufferTimePeriod`, s.
    pub buffer_seconds: prometheus::GaugeVec,
    /// `r2o_table_paused{table}`: 1 while the table is paused.
    pub paused: IntGaugeVec,
    /// `r2o_pool_tasks{tag,state}`: per `minionInstanceTag`, tasks
    /// `waiting` for a slot (claimable now), in `backoff` between attempts,
    /// and `running` ([`crate::pool`]); what the autoscalers read.
    pub pool_tasks: IntGaugeVec,
    /// `r2o_pool_minions{tag,state}`: live minions `claiming` and `draining`.
    pub pool_minions: IntGaugeVec,
    /// `r2o_pool_slots{tag}`: task slots of the minions that claim.
    pub pool_slots: IntGaugeVec,
    /// `r2o_pool_oldest_wait_seconds{tag}`: how long the longest-waiting
    /// claimable task has waited, s (0: none waits).
    pub pool_oldest_wait: prometheus::GaugeVec,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn set_counter(c: &IntCounterVec, label: &str, value: u64) {
    let m = c.with_label_values(&[label]);
    m.reset();
    m.inc_by(value);
}

impl ControllerMetrics {
    /// Registers every metric in `r`.
    pub fn new(r: &Registry) -> ControllerMetrics {
        let is_leader =
            IntGauge::new("r2o_controller_is_leader", "1 while this controller is the elected leader").unwrap();
        r.register(Box::new(is_leader.clone())).unwrap();
        let watermark_ms =
            IntGaugeVec::new(Opts::new("r2o_table_watermark_ms", "Watermark, UTC epoch ms"), &["table"]).unwrap();
        r.register(Box::new(watermark_ms.clone())).unwrap();
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "r2o_table_watermark_lag_seconds",
                "How far the watermark is behind now - bufferTimePeriod, seconds",
            ),
            &["table"],
        )
        .unwrap();
        r.register(Box::new(lag_seconds.clone())).unwrap();
        let tasks = IntGaugeVec::new(Opts::new("r2o_tasks", "Active tasks by state"), &["table", "state"]).unwrap();
        r.register(Box::new(tasks.clone())).unwrap();
        let buckets = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
        let task_duration = HistogramVec::new(
            HistogramOpts::new("r2o_task_duration_seconds", "Claim to commit of committed attempts, seconds")
                .buckets(buckets.clone()),
            &["table"],
        )
        .unwrap();
        r.register(Box::new(task_duration.clone())).unwrap();
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("r2o_task_queue_wait_seconds", "Publish to claim of committed tasks, seconds")
                .buckets(buckets.clone()),
            &["table"],
        )
        .unwrap();
        r.register(Box::new(queue_wait.clone())).unwrap();
        let mut fresh_buckets = vec![0.1, 0.2, 0.3];
        fresh_buckets.extend(buckets.into_iter().filter(|b| *b >= 0.5));
        let window_freshness = HistogramVec::new(
            HistogramOpts::new(
                "r2o_window_freshness_seconds",
                "Registration as DONE of a committed task's latest input to the commit, seconds",
            )
            .buckets(fresh_buckets),
            &["table"],
        )
        .unwrap();
        r.register(Box::new(window_freshness.clone())).unwrap();
        let etcd_alarm =
            IntGaugeVec::new(Opts::new("r2o_etcd_alarm", "1 while etcd has raised this alarm"), &["alarm"]).unwrap();
        r.register(Box::new(etcd_alarm.clone())).unwrap();
        for a in ["NOSPACE", "CORRUPT"] {
            etcd_alarm.with_label_values(&[a]).set(0);
        }
        let etcd_db_size = IntGauge::new("r2o_etcd_db_size_bytes", "Size of etcd's database, bytes").unwrap();
        r.register(Box::new(etcd_db_size.clone())).unwrap();
        let unmoved_past_retention = IntGaugeVec::new(
            Opts::new(
                "r2o_table_realtime_segments_unmoved_past_retention",
                "REALTIME segments past the retention kept because rows of them have not moved",
            ),
            &["table"],
        )
        .unwrap();
        r.register(Box::new(unmoved_past_retention.clone())).unwrap();
        let realtime_segments = IntGaugeVec::new(
            Opts::new("r2o_table_realtime_segments", "REALTIME segments by load status"),
            &["table", "load_status"],
        )
        .unwrap();
        r.register(Box::new(realtime_segments.clone())).unwrap();
        let delta_lag = prometheus::GaugeVec::new(
            Opts::new(
                "r2o_delta_log_lag_seconds",
                "How long the oldest change of the table not yet in its Delta log has waited, seconds",
            ),
            &["table"],
        )
        .unwrap();
        r.register(Box::new(delta_lag.clone())).unwrap();
        let delta_version =
            IntGaugeVec::new(Opts::new("r2o_delta_log_version", "Version of the table's Delta log"), &["table"])
                .unwrap();
        r.register(Box::new(delta_version.clone())).unwrap();
        let m = ControllerMetrics {
            bucket_seconds: float_gauge(r, "r2o_table_bucket_seconds", "bucketTimePeriod, seconds", &["table"]),
            buffer_seconds: float_gauge(r, "r2o_table_buffer_seconds", "bufferTimePeriod, seconds", &["table"]),
            paused: gauge(r, "r2o_table_paused", "1 while the table is paused", &["table"]),
            pool_tasks: gauge(
                r,
                "r2o_pool_tasks",
                "Tasks per minionInstanceTag: waiting for a slot (claimable now), in backoff, running",
                &["tag", "state"],
            ),
            pool_minions: gauge(r, "r2o_pool_minions", "Live minions per tag: claiming, draining", &["tag", "state"]),
            pool_slots: gauge(r, "r2o_pool_slots", "Task slots of the minions that claim, per tag", &["tag"]),
            pool_oldest_wait: float_gauge(
                r,
                "r2o_pool_oldest_wait_seconds",
                "How long the longest-waiting claimable task has waited, seconds (0: none waits)",
                &["tag"],
            ),
            delta_lag,
            delta_version,
            unmoved_past_retention,
            realtime_segments,
            load_status_counts: Arc::default(),
            discovered_files: counter(
                r,
                "r2o_discovered_files_total",
                "files of batchConfigMaps sources handled by the leader, by outcome",
                &["table", "outcome"],
            ),
            retention_deleted: counter(
                r,
                "r2o_table_realtime_segments_retention_deleted_total",
                "REALTIME segments deleted by retention after all their rows moved",
                &["table"],
            ),
            is_leader,
            watermark_ms,
            lag_seconds,
            windows_committed: counter(
                r,
                "r2o_table_windows_committed_total",
                "Windows committed with data",
                &["table"],
            ),
            windows_skipped: counter(
                r,
                "r2o_table_windows_skipped_total",
                "Windows skipped for having no data",
                &["table"],
            ),
            rows_in: counter(r, "r2o_table_rows_in_total", "Rows read inside committed windows", &["table"]),
            rows_out: counter(r, "r2o_table_rows_out_total", "Rows written to OFFLINE segments", &["table"]),
            bytes_in: counter(r, "r2o_table_bytes_in_total", "REALTIME bytes read by committed attempts", &["table"]),
            bytes_out: counter(r, "r2o_table_bytes_out_total", "OFFLINE bytes committed", &["table"]),
            tasks,
            task_duration,
            queue_wait,
            window_freshness,
            errors: counter(r, "r2o_errors_total", "etcd and object-store errors seen by this process", &["component"]),
            rows_null_time: counter(
                r,
                "r2o_table_rows_null_time_total",
                "Input rows whose time value is NULL (in no window, not moved)",
                &["table"],
            ),
            etcd_alarm,
            etcd_db_size,
        };
        // every series exists from the start, at 0 (dashboards and alerts see it)
        for c in ["etcd", "planner", "janitor", "retention"] {
            m.errors.with_label_values(&[c]);
        }
        m
    }

    /// Records etcd's status: its alarms and database size.
    pub fn observe_etcd(&self, st: &r2o_common::kv::KvStatus) {
        for a in ["NOSPACE", "CORRUPT"] {
            self.etcd_alarm.with_label_values(&[a]).set(i64::from(st.alarms.iter().any(|x| x == a)));
        }
        self.etcd_db_size.set(st.db_size_bytes);
    }

    /// Refreshes the per-table figures from etcd; table configs come from
    /// `tables` (the planner's cache: parsed once per change, not per scrape)
    /// and segment lists from `segments` (read again only when a table's
    /// segments changed).
    pub async fn refresh(
        &self,
        kv: &Kv,
        keys: &Keys,
        tables: &crate::tables::TableCache,
        segments: &crate::authority::SegmentCache,
    ) {
        let Ok(tables) = tables.all(kv, keys).await else {
            self.errors.with_label_values(&["etcd"]).inc();
            return;
        };
        let active = range_records::<TaskRecord>(kv, &keys.active_tasks()).await.unwrap_or_default();
        let now = now_ms();
        self.refresh_pool(kv, keys, &tables, &active, now).await;
        // every per-table series is set again below from etcd: a deleted
        // table's series disappear with it
        self.tasks.reset();
        self.bucket_seconds.reset();
        self.buffer_seconds.reset();
        self.paused.reset();
        self.watermark_ms.reset();
        self.lag_seconds.reset();
        self.unmoved_past_retention.reset();
        self.realtime_segments.reset();
        for c in [
            &self.windows_committed,
            &self.windows_skipped,
            &self.rows_in,
            &self.rows_out,
            &self.bytes_in,
            &self.bytes_out,
            &self.rows_null_time,
            &self.retention_deleted,
        ] {
            c.reset();
        }
        let names: std::collections::HashSet<String> = tables.iter().map(|(raw, _)| raw.clone()).collect();
        self.load_status_counts.lock().unwrap_or_else(|p| p.into_inner()).retain(|t, _| names.contains(t));
        for (raw, view) in tables {
            let Ok(view) = view else { continue };
            let spec = view.spec.as_ref();
            self.bucket_seconds.with_label_values(&[&raw]).set(spec.flow.bucket_ms as f64 / 1000.0);
            self.buffer_seconds.with_label_values(&[&raw]).set(spec.flow.buffer_ms as f64 / 1000.0);
            self.paused.with_label_values(&[&raw]).set(i64::from(view.record.paused));
            let wm = get_record::<WatermarkRecord>(kv, &keys.watermark(&raw)).await.ok().flatten().map(|(w, _)| w);
            let counted = self.load_status_counts.lock().unwrap_or_else(|p| p.into_inner()).get(&raw).copied();
            let count_now = counted.is_none_or(|(at, _)| now - at >= LOAD_STATUS_EVERY_MS);
            // the segment list only when something here needs it (a table may hold ~15k)
            let realtime: std::sync::Arc<crate::authority::Segments> =
                if count_now || wm.is_none() || spec.flow.retention_ms.is_some() {
                    segments.get(kv, keys, &raw).await.map(|(s, _)| s).unwrap_or_default()
                } else {
                    Default::default()
                };
            let position = match &wm {
                Some(w) => Some(w.watermark_ms),
                None => realtime
                    .iter()
                    .filter(|s| s.total_docs > 0)
                    .map(|s| s.start_time_ms)
                    .min()
                    .map(|m| spec.flow.windows().floor(m)),
            };
            let wm_ms = wm.as_ref().map(|w| w.watermark_ms);
            let counts = match counted {
                Some((_, counts)) if !count_now => Some(counts),
                _ => match crate::registry::load_statuses(kv, keys, spec, &realtime, wm_ms).await {
                    Ok(statuses) => {
                        let counts = LoadStatus::ALL.map(|st| statuses.iter().filter(|(s, _)| *s == st).count() as i64);
                        self.load_status_counts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(raw.clone(), (now, counts));
                        Some(counts)
                    }
                    Err(_) => {
                        self.errors.with_label_values(&["etcd"]).inc();
                        None
                    }
                },
            };
            for (status, n) in counts.iter().flat_map(|c| LoadStatus::ALL.iter().zip(c)) {
                self.realtime_segments.with_label_values(&[&raw, status.name()]).set(*n);
            }
            if let Some(r) = spec.flow.retention_ms {
                let settled = match crate::retention::late_settled(kv, keys, spec).await {
                    Ok(f) => f,
                    Err(_) => Box::new(|_: &SegmentMeta| false),
                };
                let unmoved = crate::retention::plan_retention(&realtime, wm_ms, r, now, &*settled).unmoved.len();
                self.unmoved_past_retention.with_label_values(&[&raw]).set(unmoved as i64);
                let deleted = get_record::<RetentionRecord>(kv, &keys.retention(&raw))
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |(r, _)| r.deleted_segments);
                set_counter(&self.retention_deleted, &raw, deleted);
            }
            if let Some(p) = position {
                self.watermark_ms.with_label_values(&[&raw]).set(p);
                let lag_ms = now.saturating_sub(spec.flow.buffer_ms).saturating_sub(p).max(0);
                self.lag_seconds.with_label_values(&[&raw]).set(lag_ms as f64 / 1000.0);
            }
            let w = wm.unwrap_or_default();
            set_counter(&self.windows_committed, &raw, w.windows_committed);
            set_counter(&self.windows_skipped, &raw, w.windows_skipped);
            set_counter(&self.rows_in, &raw, w.rows_in);
            set_counter(&self.rows_out, &raw, w.rows_out);
            set_counter(&self.bytes_in, &raw, w.bytes_in);
            set_counter(&self.bytes_out, &raw, w.bytes_out);
            set_counter(&self.rows_null_time, &raw, w.rows_null_time);
            for state in ["PENDING", "RUNNING", "STAGED", "FAILED"] {
                let n = active.iter().filter(|(t, _)| t.table == raw && t.state.name() == state).count();
                self.tasks.with_label_values(&[&raw, state]).set(n as i64);
            }
        }
    }

    /// Sets the `r2o_pool_*` series from the active tasks and the live
    /// minion records ([`crate::pool::pool_figures`]); every tag a table or
    /// a minion names has its series, zeros included.
    async fn refresh_pool(
        &self,
        kv: &Kv,
        keys: &Keys,
        tables: &[(String, crate::error::Result<crate::tables::TableView>)],
        active: &[(TaskRecord, r2o_common::kv::KeyValue)],
        now: i64,
    ) {
        let Ok(minions) = range_records::<MinionRecord>(kv, &keys.minions()).await else {
            self.errors.with_label_values(&["etcd"]).inc();
            return;
        };
        let figures =
            crate::pool::pool_of_tables(tables, active.iter().map(|(t, _)| t), minions.iter().map(|(m, _)| m), now);
        for g in [&self.pool_tasks, &self.pool_minions, &self.pool_slots] {
            g.reset();
        }
        self.pool_oldest_wait.reset();
        for (tag, p) in figures {
            let tag = tag.as_str();
            for (state, n) in [("waiting", p.waiting), ("backoff", p.backing_off), ("running", p.running)] {
                self.pool_tasks.with_label_values(&[tag, state]).set(n as i64);
            }
            self.pool_minions.with_label_values(&[tag, "claiming"]).set(p.minions as i64);
            self.pool_minions.with_label_values(&[tag, "draining"]).set(p.draining as i64);
            self.pool_slots.with_label_values(&[tag]).set(p.slots as i64);
            self.pool_oldest_wait.with_label_values(&[tag]).set(p.oldest_wait_ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_measured_from_the_latest_input_registered_as_done() {
        let seg = |done: Option<i64>| SegmentMeta { done_ms: done, ..Default::default() };
        assert_eq!(window_freshness_ms(&[seg(Some(100)), seg(Some(250)), seg(None)], 400), Some(150));
        assert_eq!(window_freshness_ms(&[seg(None)], 400), None, "nothing recorded: nothing observed");
        assert_eq!(window_freshness_ms(&[], 400), None);
        assert_eq!(window_freshness_ms(&[seg(Some(500))], 400), Some(0), "never negative");
    }
}
