//! Ordered commits of STAGED tasks whose turn has come, split windows
//! included.

use super::*;

impl Authority {
    /// Commits the table's STAGED tasks whose turn has come (their range
    /// starts at the watermark), one after the other.
    pub(super) async fn commit_ready(&self, raw: &str, leadership: Leadership) -> Result<usize> {
        let mut committed = 0;
        for _ in 0..1_000 {
            let (open, _) = open_tasks(&self.kv, &self.keys, raw).await?;
            let (wm, _) = self.watermark(raw).await?;
            let Some(w) = wm else { return Ok(committed) };
            let Some((task, entry)) =
                open.iter().find(|(t, _)| t.state == TaskState::Staged && t.from_ms == w.watermark_ms).cloned()
            else {
                return Ok(committed);
            };
            let members = match task.is_sub_task() {
                true => match group_members(&open, &task) {
                    Some(m) => Some(m),
                    None => return Ok(committed), // its window waits for the other sub-tasks
                },
                false => None,
            };
            let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
            let inputs = self.inputs.read(&self.kv, &self.keys.inputs(&task.inputs_id())).await?;
            let (w, table_revs) = match self.check_plan(&task, &spec, &inputs).await? {
                PlanCheck::Holds { wm: Some(w), revs } if w.watermark_ms == task.from_ms => (w, revs),
                PlanCheck::Holds { .. } => continue, // the watermark moved meanwhile: read again
                check => {
                    self.end_unplanned(&task, entry.mod_revision, check, leadership).await?;
                    return Ok(committed);
                }
            };
            if let Some(members) = members {
                if self.commit_group(members, &w, inputs.len() as u64, table_revs, leadership).await? {
                    self.observe_freshness(&task.table, &inputs);
                    self.footers.forget(crate::validate::consumed(&inputs, task.window_end_ms));
                    committed += 1;
                }
                continue; // committed, or raced: read again
            }
            // the staged manifest, proved whole by its first and last chunks
            // (comparing every chunk went past etcd's 128 operations at ~120)
            let mprefix = self.keys.manifest(&task.id, task.staged_attempt);
            let Some(manifest) = chunks::compares(&self.kv, &mprefix, task.staged_chunks as usize).await? else {
                return Err(ControllerError::Common(r2o_common::Error::Meta(format!(
                    "task {} has lost manifest chunks of its staged attempt {} (expected {})",
                    task.id, task.staged_attempt, task.staged_chunks
                ))));
            };
            let totals = protocol::staged_totals(&task);
            let now = now_ms();
            let done = protocol::committed(&task, &totals, Some(&w), now);
            let revs = AttemptRevs { task: entry.mod_revision, claim: 0 };
            if !protocol::commit(&self.keys, &task, &revs, table_revs, leadership, manifest, &done)
                .apply(&self.kv)
                .await?
            {
                continue;
            }
            self.log_commit(&task, &totals, task.input_slice(&inputs));
            self.footers.forget(crate::validate::consumed(task.input_slice(&inputs), task.window_end_ms));
            committed += 1;
        }
        Ok(committed)
    }

    /// Commits a split window whose sub-tasks are all STAGED (`members`,
    /// in order with the revisions they were read at, see [`group_members`]):
    /// their manifests combined into one under the first sub-task (a fresh
    /// [`protocol::group_manifest_attempt`] per try), then one transaction
    /// ([`protocol::commit_group`]) that checks those revisions, at the
    /// watermark `wm`; `window_inputs` counts the window's input segments.
    /// Returns `false` when something changed since the read (read again).
    pub(super) async fn commit_group(
        &self,
        members: Vec<(TaskRecord, i64)>,
        wm: &WatermarkRecord,
        window_inputs: u64,
        table_revs: TableRevs,
        leadership: Leadership,
    ) -> Result<bool> {
        let mut outputs: Vec<SegmentMeta> = vec![];
        for (t, _) in &members {
            outputs.extend(chunks::read::<SegmentMeta>(&self.kv, &self.keys.manifest(&t.id, t.staged_attempt)).await?);
        }
        let lead = members[0].0.clone();
        let attempt = protocol::group_manifest_attempt();
        let manifest = chunks::write(&self.kv, &self.keys.manifest(&lead.id, attempt), &outputs).await?;
        let stageds: Vec<TaskRecord> = members.iter().map(|(t, _)| t.clone()).collect();
        let totals = protocol::group_totals(&stageds, attempt, chunks::encode_all(&outputs).len() as u32);
        let mut done = protocol::committed(&lead, &totals, Some(wm), now_ms());
        done.lineage.input_count = window_inputs;
        done.history.attempt = lead.staged_attempt; // not the manifest's number: duplicate reports match it
        if !protocol::commit_group(&self.keys, &members, table_revs, leadership, manifest, &done)
            .apply(&self.kv)
            .await?
        {
            return Ok(false);
        }
        info!(table = %lead.table, task = %lead.id, sub_tasks = members.len(), window_start_ms = lead.window_start_ms, rows_in = totals.rows_in, rows_out = totals.rows_out, segments = totals.outputs, "split window committed");
        Ok(true)
    }
}
