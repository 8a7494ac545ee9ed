//! Tables with a `schedule`: runs that start at fire times, and run now.

use super::*;

impl Authority {
    /// Plans a table on its `schedule` (Pinot's key): without one,
    /// continuously ([`Authority::plan_table`]); with one, only inside runs.
    /// A run starts at a fire time ([`r2o_common::schedule::Schedule::due`];
    /// the record `schedules/<raw>` says which fire time was last run, so a
    /// new leader neither repeats nor skips one) and lasts, over planning
    /// passes, until nothing more is ready and nothing is in flight.
    pub(super) async fn plan_on_schedule(&self, table: &TableView, leadership: Leadership) -> Result<PlanOutcome> {
        use r2o_common::schedule::ScheduleRecord;
        let (raw, rec) = (table.raw.as_str(), &table.record);
        let Some(schedule) = table.spec.flow.schedule.clone() else {
            return self.plan_table(table, leadership, "scheduled").await;
        };
        if rec.paused {
            return Ok(PlanOutcome::Paused);
        }
        let key = self.keys.schedule(raw);
        let (mut s, mut rev) = match get_record::<ScheduleRecord>(&self.kv, &key).await? {
            Some((s, e)) => (s, e.mod_revision),
            None => (ScheduleRecord { last_fire_ms: rec.created_ms, ..Default::default() }, 0),
        };
        let now = now_ms();
        if !s.active {
            let Some(fire) = schedule.due(s.last_fire_ms, now) else {
                let next_ms = schedule.next_after(s.last_fire_ms.max(now));
                if let Some(at) = next_ms {
                    self.wake_table_at(raw, at);
                }
                let next = next_ms.map_or("never".into(), r2o_common::window::format_utc);
                return Ok(PlanOutcome::Wait(format!("on schedule '{}': the next run is at {next}", schedule.text())));
            };
            s = ScheduleRecord {
                last_fire_ms: fire,
                last_run_ms: Some(now),
                last_trigger: "scheduled".into(),
                active: true,
            };
            rev = match self.put_schedule(raw, &s, rev, leadership).await? {
                Some(r) => r,
                None => return Ok(PlanOutcome::Wait("the schedule record changed; planning again".into())),
            };
            info!(table = %raw, schedule = schedule.text(), fire_ms = fire, "scheduled run started");
        }
        let trigger = if s.last_trigger == "manual" { "manual" } else { "scheduled" };
        let outcome = self.plan_table(table, leadership, trigger).await?;
        if matches!(outcome, PlanOutcome::Wait(_)) && open_tasks(&self.kv, &self.keys, raw).await?.0.is_empty() {
            s.active = false;
            if self.put_schedule(raw, &s, rev, leadership).await?.is_some() {
                info!(table = %raw, schedule = schedule.text(), "scheduled run ended: nothing more is ready");
            }
        }
        Ok(outcome)
    }

    /// Writes a table's schedule record if it is still at `rev` and this
    /// controller leads; its new revision, or `None` when it changed.
    pub(super) async fn put_schedule(
        &self,
        raw: &str,
        s: &r2o_common::schedule::ScheduleRecord,
        rev: i64,
        leadership: Leadership,
    ) -> Result<Option<i64>> {
        if !protocol::put_schedule(&self.keys, raw, s, rev, leadership).apply(&self.kv).await? {
            return Ok(None);
        }
        Ok(self.kv.get(&self.keys.schedule(raw)).await?.map(|e| e.mod_revision))
    }

    /// Run now: plans `raw` at once (leader only; the planner's rules hold).
    pub async fn run_now(&self, raw: &str) -> Result<PlanOutcome> {
        let leadership = self.leadership()?;
        let Some(table) = self.tables.one(&self.kv, &self.keys, raw).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        // a scheduled table gets a manual run: planned over the next passes
        // until nothing more is ready, like a scheduled one
        {
            let rec = &table.record;
            if !rec.paused && table.spec.flow.schedule.is_some() {
                let key = self.keys.schedule(raw);
                let (s, rev) = match get_record::<r2o_common::schedule::ScheduleRecord>(&self.kv, &key).await? {
                    Some((s, e)) => (s, e.mod_revision),
                    None => {
                        (r2o_common::schedule::ScheduleRecord { last_fire_ms: rec.created_ms, ..Default::default() }, 0)
                    }
                };
                let s = r2o_common::schedule::ScheduleRecord {
                    last_run_ms: Some(now_ms()),
                    last_trigger: "manual".into(),
                    active: true,
                    ..s
                };
                if self.put_schedule(raw, &s, rev, leadership).await?.is_none() {
                    return Err(ControllerError::Conflict(format!(
                        "the schedule of table '{raw}' changed meanwhile; run it again"
                    )));
                }
            }
        }
        self.plan_table(&table, leadership, "manual").await
    }
}
