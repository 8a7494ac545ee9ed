//! Late-data runs (`lateDataPolicy`): `planner::plan_late` over the
//! table's late ledger, `protocol::publish_late`.

use super::*;

impl Authority {
    /// What the table's lineage and watermark say about late data.
    pub(super) async fn late_ledger(&self, raw: &str) -> Result<crate::planner::LateLedger> {
        crate::registry::late_ledger(&self.kv, &self.keys, raw).await
    }

    /// Up to where retention deleted the table's REALTIME segments (end
    /// time, ms), if it deleted any.
    pub(super) async fn retained_until(&self, raw: &str) -> Result<Option<i64>> {
        Ok(get_record::<r2o_common::meta::RetentionRecord>(&self.kv, &self.keys.retention(raw))
            .await?
            .map(|(r, _)| r.deleted_until_ms))
    }

    /// Publishes the table's next late-data run (`lateDataPolicy`), one at a
    /// time per table, when late segments owe rows to committed windows (see
    /// [`plan_late`]). A window that cannot be redone (a `rematerialize`
    /// window whose inputs retention may have deleted, or that would drop a
    /// refused file's moved rows) is reported as a planning problem and
    /// passed over: it never holds the table's later late windows. Returns
    /// whether a run was published.
    pub(super) async fn plan_late_table(&self, table: &TableView, leadership: Leadership) -> Result<bool> {
        if table.record.paused {
            return Ok(false);
        }
        let (raw, spec) = (table.raw.as_str(), table.spec.as_ref());
        if spec.flow.late_data_policy == r2o_common::config::LateDataPolicy::Ignore {
            return Ok(false);
        }
        let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
        if open.iter().any(|(t, _)| t.late.is_some()) {
            return Ok(false);
        }
        // the leader's segment cache: one small read while nothing changed
        let (segments, segments_rev) = self.segments.get(&self.kv, &self.keys, raw).await?;
        if !segments.any_late() {
            return Ok(false);
        }
        let ledger = self.late_ledger(raw).await?;
        let outcome = plan_late(&spec.flow, &segments, &ledger, None, self.retained_until(raw).await?);
        let problem_key = format!("{raw} late");
        match outcome.blocked.first() {
            Some((_, why)) => self.plan_problem_as(&problem_key, raw, why),
            None => {
                self.plan_problems.lock().map(|mut m| m.remove(&problem_key)).ok();
            }
        }
        let Some(LatePlan { window, inputs, run }) = outcome.plan else {
            return Ok(false);
        };
        let now = self.fresh_created_ms();
        let id = TaskId::new(raw, window.start_ms, now);
        // the run's config snapshot names its segments apart from the window's others
        let mut config = spec.config_json.clone();
        if let Some(block) = config.pointer_mut(&format!("/task/taskTypeConfigsMap/{}", r2o_common::config::TASK_TYPE))
        {
            block["segmentNamePostfix"] = serde_json::Value::String(format!("late{now}"));
        }
        let encoded = chunks::encode_all(&inputs);
        let task = self.new_task(
            spec,
            NewTask {
                id: id.clone(),
                from_ms: window.start_ms,
                windows: vec![window],
                skipped_windows: 0,
                epoch_revision: epoch_rev,
                inputs: &inputs,
                input_chunks: encoded.len() as u32,
                segments_revision: segments_rev,
                table_revision: table.revision,
                table_config: config,
                trigger: format!("late-{}", run.policy),
                late: Some(run.clone()),
            },
        );
        let input_revs = chunks::write_encoded(&self.kv, &self.keys.inputs(&id), inputs.len(), encoded).await?;
        let cleanup = input_revs.clone();
        if !protocol::publish_late(&self.keys, &task, leadership, input_revs).apply(&self.kv).await? {
            let _ = protocol::drop_inputs(&self.keys, &id, cleanup).apply(&self.kv).await;
            return Ok(false);
        }
        info!(table = %raw, task = %id, policy = %run.policy, window_start_ms = window.start_ms, window_end_ms = window.end_ms, late_segments = run.segments.len(), inputs = inputs.len(), "late-data run published");
        Ok(true)
    }
}
