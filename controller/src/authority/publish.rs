//! Step 1: planning a table from its frontier and publishing its next
//! tasks (`planner::plan_over`, `protocol::publish`).

use super::*;

impl Authority {
    /// Plans one table: publishes its next tasks, one after the other from
    /// its frontier, until the in-flight limit or a wait. `trigger` is
    /// recorded on the tasks.
    pub(super) async fn plan_table(
        &self,
        table: &TableView,
        leadership: Leadership,
        trigger: &str,
    ) -> Result<PlanOutcome> {
        if table.record.paused {
            return Ok(PlanOutcome::Paused);
        }
        let (raw, spec) = (table.raw.as_str(), table.spec.as_ref());
        let limit = self.task_limit(&spec.flow.minion_instance_tag).await?;
        let mut published: Vec<TaskId> = Vec::new();
        let mut last_end = 0;
        loop {
            let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
            if open.len() >= limit {
                if published.is_empty() {
                    return Ok(PlanOutcome::InFlight(format!(
                        "{} task(s) in flight, the most a table may have at once ({limit})",
                        open.len()
                    )));
                }
                break;
            }
            match self.publish_next(raw, spec, table.revision, epoch_rev, leadership, trigger).await? {
                Ok((ids, end)) => {
                    published.extend(ids);
                    last_end = end;
                }
                Err(why) => {
                    if published.is_empty() {
                        return Ok(PlanOutcome::Wait(why));
                    }
                    break;
                }
            }
        }
        Ok(PlanOutcome::Published(published, last_end))
    }

    /// Plans and publishes the table's next task from its frontier; `Err`
    /// (inner) says why nothing was published.
    pub(super) async fn publish_next(
        &self,
        raw: &str,
        spec: &TableSpec,
        table_revision: i64,
        epoch_rev: i64,
        leadership: Leadership,
        trigger: &str,
    ) -> Result<std::result::Result<(Vec<TaskId>, i64), String>> {
        let (frontier, frontier_rev) = match get_record::<FrontierRecord>(&self.kv, &self.keys.frontier(raw)).await? {
            None => (None, 0),
            Some((f, e)) => (Some(f), e.mod_revision),
        };
        let (wm, _) = self.watermark(raw).await?;
        let started = std::time::Instant::now();
        let (segments, segments_rev) = self.segments.get(&self.kv, &self.keys, raw).await?;
        let segments_ms = started.elapsed().as_millis() as u64;
        let from = match (&frontier, &wm) {
            (Some(f), Some(w)) => Some(f.next_ms.max(w.watermark_ms)),
            (Some(f), None) => Some(f.next_ms),
            (None, Some(w)) => Some(w.watermark_ms),
            (None, None) => None,
        };
        let now = now_ms();
        let mut budget = self.cfg.budget;
        if let Some(n) = spec.flow.max_records_per_task {
            budget.max_input_rows = n;
        }
        let narrowing_until_ms = frontier.as_ref().and_then(|f| f.narrowing_until_ms);
        if protocol::narrowing(frontier.as_ref(), from) {
            budget = Budget::ONE_WINDOW; // isolating a failing window
        }
        let (from_ms, windows, skipped_windows, inputs) =
            match plan_over(&spec.flow, &segments, segments.facts(), from, now, &budget) {
                Decision::Run { from_ms, windows, skipped_windows, inputs } => {
                    (from_ms, windows, skipped_windows, inputs)
                }
                Decision::Wait(reason) => {
                    if let crate::planner::WaitReason::Buffer { eligible_at_ms, .. } = reason {
                        // nothing in etcd changes when the window passes its buffer
                        self.wake_table_at(raw, eligible_at_ms);
                    }
                    return Ok(Err(reason.to_string()));
                }
            };
        let plan_ms = started.elapsed().as_millis() as u64 - segments_ms;
        let encoded_inputs = chunks::encode_all(&inputs);
        if let Some(problem) = inputs_problem(&windows, inputs.len(), encoded_inputs.len()) {
            self.plan_problem(raw, &problem);
            return Ok(Err(problem));
        }
        self.plan_problems.lock().map(|mut m| m.remove(raw)).ok();
        let first = windows[0];
        let last = *windows.last().expect("a run has windows");
        let now = self.fresh_created_ms();
        let id = TaskId::new(raw, first.start_ms, now);
        let input_chunks = encoded_inputs.len() as u32;
        let task = self.new_task(
            spec,
            NewTask {
                id: id.clone(),
                from_ms,
                windows: windows.clone(),
                skipped_windows,
                epoch_revision: epoch_rev,
                inputs: &inputs,
                input_chunks,
                segments_revision: segments_rev,
                table_revision,
                table_config: spec.config_json.clone(),
                trigger: trigger.to_string(),
                late: None,
            },
        );
        // one window past the per-task budget: its sub-tasks, published together
        let hosts = self.minion_hosts(&spec.flow.minion_instance_tag).await?;
        let split = split_window(spec.flow.merge_type, &windows, &inputs, &budget, hosts);
        let tasks = publishable(task, &inputs, split);
        let input_revs =
            match chunks::write_encoded(&self.kv, &self.keys.inputs(&id), inputs.len(), encoded_inputs).await {
                Ok(r) => r,
                Err(r2o_common::Error::Limit(why)) => {
                    return Ok(Err(format!("the task from {} cannot be planned: {why}", first)));
                }
                Err(e) => return Err(e.into()),
            };
        let cleanup = input_revs.clone();
        let cold =
            wm.is_none().then(|| WatermarkRecord { watermark_ms: from_ms, updated_ms: now, ..Default::default() });
        let txn = protocol::publish(
            &self.keys,
            &tasks,
            frontier_rev,
            narrowing_until_ms,
            cold.as_ref(),
            leadership,
            input_revs,
        );
        let applied = txn.apply(&self.kv).await;
        if !matches!(applied, Ok(true)) {
            // not published, however it failed: the input list goes (only if
            // it is still the one written here), or every pass would leave one
            let _ = protocol::drop_inputs(&self.keys, &id, cleanup).apply(&self.kv).await;
            applied?;
            return Ok(Err("the table changed while planning; planning again on the next tick".into()));
        }
        // the report's validation reads every input's footer: read them while the minions work
        crate::validate::prefetch(self.store.clone(), self.footers.clone(), spec, &tasks, &inputs);
        let t = &tasks[0];
        info!(table = %raw, task = %id, trigger, from_ms, window_start_ms = first.start_ms, window_end_ms = last.end_ms, windows = windows.len(), inputs = inputs.len(), input_rows = inputs.iter().map(|s| s.total_docs).sum::<u64>(), skipped_windows, sub_tasks = t.sub_tasks, segments_ms, plan_ms, publish_ms = started.elapsed().as_millis() as u64, "task published");
        Ok(Ok((tasks.into_iter().map(|t| t.id).collect(), last.end_ms)))
    }

    /// A `created_ms` for a new task id, never one this authority gave
    /// before (ids of a split window's sub-tasks take `created_ms + k`, so
    /// the next is past those): a planning pass and a run-now planning the
    /// same window in the same millisecond must not share an id, for their
    /// input lists would share a key prefix, and the loser's cleanup would
    /// delete the winner's inputs (its task then reads no rows).
    pub(super) fn fresh_created_ms(&self) -> i64 {
        use std::sync::atomic::Ordering;
        let step = crate::planner::MAX_SUB_TASKS as i64;
        let mut last = self.last_created_ms.load(Ordering::Relaxed);
        loop {
            let next = now_ms().max(last.saturating_add(step));
            match self.last_created_ms.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A PENDING task record with no attempt yet; attempts and timeout from
    /// the table (`maxAttemptsPerTask`, `timeoutMs`) or the cluster.
    pub(super) fn new_task(&self, spec: &TableSpec, n: NewTask<'_>) -> TaskRecord {
        let first =
            n.windows.first().copied().unwrap_or(r2o_common::window::Window { start_ms: n.from_ms, end_ms: n.from_ms });
        let last = n.windows.last().copied().unwrap_or(first);
        let created_ms = n.id.created_ms;
        TaskRecord {
            table: n.id.table.clone(),
            id: n.id,
            from_ms: n.from_ms,
            window_start_ms: first.start_ms,
            window_end_ms: last.end_ms,
            windows: n.windows,
            skipped_windows: n.skipped_windows,
            epoch_revision: n.epoch_revision,
            input_count: n.inputs.len() as u64,
            input_chunks: n.input_chunks,
            input_rows: n.inputs.iter().map(|s| s.total_docs).sum(),
            input_bytes: n.inputs.iter().map(|s| s.size_bytes).sum(),
            segments_revision: n.segments_revision,
            table_revision: n.table_revision,
            table_config: n.table_config,
            schema: spec.schema_json.clone(),
            state: TaskState::Pending,
            attempt: 0,
            minion: String::new(),
            created_ms,
            started_ms: 0,
            finished_ms: 0,
            errors: vec![],
            trigger: n.trigger,
            rows_in: 0,
            rows_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            rows_null_time: 0,
            rows_filtered: 0,
            output_count: 0,
            staged_attempt: 0,
            staged_chunks: 0,
            window_stats: vec![],
            max_attempts: spec.flow.max_attempts_per_task.unwrap_or(self.cfg.max_attempts).max(1),
            timeout_ms: spec.flow.timeout_ms.unwrap_or(self.cfg.default_timeout_ms),
            not_before_ms: 0,
            round_start_attempt: 0,
            failed_rounds: 0,
            retry_at_ms: None,
            sub_task: 0,
            sub_tasks: 0,
            group: String::new(),
            inputs_of: String::new(),
            input_from: 0,
            input_to: 0,
            late: n.late,
        }
    }

    /// Records why `raw`'s ready window cannot be published: a warning when
    /// the reason is new, and `r2o_errors_total{component="planner"}` on every
    /// planning pass it holds.
    pub(super) fn plan_problem(&self, raw: &str, problem: &str) {
        self.plan_problem_as(raw, raw, problem)
    }

    /// [`Authority::plan_problem`] kept under `key` (a table's flow and its
    /// late-data runs each have one).
    pub(super) fn plan_problem_as(&self, key: &str, raw: &str, problem: &str) {
        if let Some(m) = &self.metrics {
            m.errors.with_label_values(&["planner"]).inc();
        }
        let new = self
            .plan_problems
            .lock()
            .map(|mut m| m.insert(key.to_string(), problem.to_string()).as_deref() != Some(problem))
            .unwrap_or(true);
        if new {
            warn!(table = %raw, problem, "a ready window cannot be planned");
        }
    }
}
