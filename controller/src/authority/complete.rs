//! Step 4: a minion's report, validated against a plan that still holds,
//! then committed or staged.

use super::*;

impl Authority {
    /// Whether `task`'s plan still holds, read now (see [`PlanCheck`]):
    /// same epoch; for a late-data run, still what its window needs and the
    /// window still committed; else its range not yet passed by the
    /// watermark and the same windows and inputs planned from the table's
    /// segments. `window_inputs` is the window's input list (a sub-task's is
    /// its group's).
    pub(super) async fn check_plan(
        &self,
        task: &TaskRecord,
        spec: &TableSpec,
        window_inputs: &[SegmentMeta],
    ) -> Result<PlanCheck> {
        let epoch_rev = self.epoch(&task.table).await?;
        if task.epoch_revision != epoch_rev {
            return Ok(PlanCheck::Abandoned("a task planned before it was superseded, or the flow was reset".into()));
        }
        let (wm, wm_rev, wm_created) = self.watermark_entry(&task.table).await?;
        let revs =
            |segments: i64| TableRevs { watermark: wm_rev, watermark_created: wm_created, segments, epoch: epoch_rev };
        if let Some(why) = task.inputs_lost(window_inputs) {
            return Ok(match task.late {
                Some(_) => PlanCheck::Abandoned(why),
                None => PlanCheck::Supersede(why),
            });
        }
        if task.late.is_some() {
            // a late-data run: still what its window needs?
            let (segments, rev) = self.segments.get(&self.kv, &self.keys, &task.table).await?;
            let ledger = self.late_ledger(&task.table).await?;
            let retained = self.retained_until(&task.table).await?;
            let still = plan_late(&spec.flow, &segments, &ledger, task.windows.first().copied(), retained).plan;
            let same = still.as_ref().is_some_and(|p| {
                Some(&p.run) == task.late.as_ref()
                    && p.inputs.iter().map(|s| &s.segment_name).eq(window_inputs.iter().map(|s| &s.segment_name))
            });
            if !same {
                return Ok(PlanCheck::Abandoned(
                    "the window's late data changed while the run was in flight; it is planned again".into(),
                ));
            }
            return Ok(PlanCheck::Holds { wm, revs: revs(rev) });
        }
        let position = wm.as_ref().map_or(task.from_ms, |w| w.watermark_ms);
        if task.from_ms < position {
            return Ok(PlanCheck::Supersede(format!(
                "its range starts at {} but the watermark is already {position}",
                task.from_ms
            )));
        }
        let (segments_rev, changed) = self.plan_changed(task, spec, window_inputs).await?;
        Ok(match changed {
            Some(reason) => PlanCheck::Supersede(reason),
            None => PlanCheck::Holds { wm, revs: revs(segments_rev) },
        })
    }

    /// Whether the task's plan still holds: when the table's segments
    /// changed since planning, the planner must plan the same windows with
    /// the same inputs. Returns the segment marker's revision checked and the
    /// reason when it does not hold.
    pub(super) async fn plan_changed(
        &self,
        task: &TaskRecord,
        spec: &TableSpec,
        inputs: &[SegmentMeta],
    ) -> Result<(i64, Option<String>)> {
        let (segments, rev) = self.segments.get(&self.kv, &self.keys, &task.table).await?;
        if rev == task.segments_revision {
            return Ok((rev, None));
        }
        let names: Vec<String> = inputs.iter().map(|s| s.segment_name.clone()).collect();
        let result = recheck(&spec.flow, &segments, segments.facts(), task.from_ms, &task.windows, &names, now_ms());
        let same_data = result.is_ok() && inputs_unchanged(inputs, &segments);
        match result {
            Err(why) => Ok((rev, Some(why))),
            Ok(()) if !same_data => Ok((rev, Some("an input segment's file or row count changed".into()))),
            Ok(()) => Ok((rev, None)),
        }
    }

    /// Reads the active task and the claim of `attempt` by `minion`.
    ///
    /// # Errors
    /// [`ControllerError::Stale`] saying why the attempt is not current.
    pub(super) async fn current_attempt(&self, id: &TaskId, attempt: u32, minion: &str) -> Result<Attempt> {
        let Some((task, entry)) = get_record::<TaskRecord>(&self.kv, &self.keys.active_task(id)).await? else {
            return Ok(Attempt::Gone);
        };
        if task.attempt != attempt || task.state != TaskState::Running {
            if task.state == TaskState::Staged && task.staged_attempt == attempt {
                return Ok(Attempt::Gone); // staged already: answered below as not committed yet
            }
            return Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {id} is not current: the task is {} at attempt {}",
                task.state.name(),
                task.attempt
            )));
        }
        match get_record::<ClaimRecord>(&self.kv, &self.keys.claim(id)).await? {
            Some((c, centry)) if c.attempt == attempt && c.minion_id == minion => Ok(Attempt::Current {
                task: Box::new(task),
                revs: AttemptRevs { task: entry.mod_revision, claim: centry.mod_revision },
            }),
            _ => Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {id} no longer holds its claim (minion {minion}'s lease expired, it gave the task back, or the task was re-claimed)"
            ))),
        }
    }

    pub(super) fn parse_id(text: &str) -> Result<TaskId> {
        text.parse().map_err(ControllerError::Invalid)
    }

    /// Commits a completed attempt (step 4 of the commit protocol), or
    /// stages it when tasks before it have not committed yet. Returns
    /// `committed = false` when the same attempt was already committed or staged.
    ///
    /// # Errors
    /// - [`ControllerError::Validation`]: the report was refused; the
    ///   attempt has been recorded as failed (retry with backoff, or FAILED).
    /// - [`ControllerError::Stale`]: the attempt is not current, or its plan
    ///   no longer holds (the task was superseded and will be planned again).
    /// - [`ControllerError::Conflict`] and etcd/store errors: retryable.
    pub async fn complete(&self, req: &pb::CompleteTaskRequest) -> Result<pb::CompleteTaskResponse> {
        let leadership = self.leadership()?;
        let id = Self::parse_id(&req.task_id)?;
        for _ in 0..3 {
            let (task, revs) = match self.current_attempt(&id, req.attempt, &req.minion_id).await? {
                Attempt::Current { task, revs } => (*task, revs),
                Attempt::Gone => return self.already_committed(&id, req.attempt).await,
            };
            let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
            // the window's inputs (a sub-task's list is its group's), and those this task read
            let window_inputs = self.inputs.read(&self.kv, &self.keys.inputs(&task.inputs_id())).await?;
            let inputs = task.input_slice(&window_inputs).to_vec();

            // the plan still holds: same epoch, a range not yet committed, same inputs
            let (wm, table_revs) = match self.check_plan(&task, &spec, &window_inputs).await? {
                PlanCheck::Holds { wm, revs } => (wm, revs),
                check => match self.end_unplanned(&task, revs.task, check, leadership).await? {
                    Some(e) => return Err(e),
                    None => continue,
                },
            };
            let position = wm.as_ref().map_or(task.from_ms, |w| w.watermark_ms);

            // validate against the inputs and the staged files themselves
            let (evidence, input_ranges) =
                validate::gather(&self.store, &self.footers, &req.task_id, &spec, &req.outputs, &inputs).await?;
            if let Err(why) = validate::check(&task, &spec, &self.layout, &inputs, &input_ranges, req, &evidence) {
                let msg = format!("validation failed: {why}");
                if !self.attempt_failed(task, &revs, leadership, req.attempt, &msg).await? {
                    continue;
                }
                return Err(ControllerError::Validation(format!("task {id} attempt {}: {why}", req.attempt)));
            }

            // the outputs' footers give the Delta log's statistics once they commit
            for (o, ev) in req.outputs.iter().zip(&evidence) {
                if let Some(f) = &ev.footer {
                    self.delta_stats.put(
                        &r2o_common::store::canonical_path(&o.location),
                        crate::delta::stats_json(f.num_rows, Some(f), &spec.schema),
                    );
                }
            }
            // outputs to a manifest, then the commit (or staging)
            let now = now_ms();
            let outputs = offline_metas(&spec, req, now);
            let manifest = match chunks::write(&self.kv, &self.keys.manifest(&id, req.attempt), &outputs).await {
                Ok(m) => m,
                Err(r2o_common::Error::Limit(why)) => {
                    let msg = format!("validation failed: {why} (raise maxNumRecordsPerSegment)");
                    self.attempt_failed(task, &revs, leadership, req.attempt, &msg).await?;
                    return Err(ControllerError::Validation(format!("task {id} attempt {}: {why}", req.attempt)));
                }
                Err(e) => return Err(e.into()),
            };
            let totals = report_totals(req, &outputs, manifest.len() as u32);
            if let Some(run) = &task.late {
                // a late-data run commits now: its window is behind the watermark
                let done = protocol::committed(&task, &totals, None, now);
                let txn = protocol::commit_late(&self.keys, &task, &revs, table_revs, leadership, manifest, &done);
                if !txn.apply(&self.kv).await? {
                    continue;
                }
                self.observe(&task, req, now);
                info!(table = %task.table, task = %id, policy = %run.policy, window_start_ms = task.window_start_ms, window_end_ms = task.window_end_ms, rows_in = totals.rows_in, rows_out = totals.rows_out, segments = totals.outputs, "late-data run committed");
                self.replan.notify_one();
                return Ok(pb::CompleteTaskResponse { committed: true, watermark_ms: position, staged: false });
            }
            if task.from_ms > position || task.is_sub_task() {
                // tasks before it have not committed, or it is one sub-task of its
                // window (the window commits when all are staged): keep its outputs staged
                let next = protocol::staged(task.clone(), &totals);
                let txn = protocol::stage(&self.keys, &next, &revs, table_revs.epoch, leadership, manifest);
                if !txn.apply(&self.kv).await? {
                    continue;
                }
                info!(table = %task.table, task = %id, attempt = req.attempt, from_ms = task.from_ms, watermark_ms = position, sub_task = task.sub_task, sub_tasks = task.sub_tasks, "task staged; it commits after the tasks before it");
                self.observe(&task, req, now);
                if task.is_sub_task() && task.from_ms == position {
                    // perhaps the last of its window's sub-tasks
                    match self.commit_ready(&task.table, leadership).await {
                        Ok(n) if n > 0 => {
                            self.replan.notify_one();
                            return Ok(pb::CompleteTaskResponse {
                                committed: true,
                                watermark_ms: task.window_end_ms,
                                staged: false,
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(table = %task.table, error = %e, "committing staged tasks failed; the planning pass tries again")
                        }
                    }
                }
                return Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: position, staged: true });
            }
            let done = protocol::committed(&task, &totals, wm.as_ref(), now);
            let txn = protocol::commit(&self.keys, &task, &revs, table_revs, leadership, manifest, &done);
            if !txn.apply(&self.kv).await? {
                continue; // something moved: decide again from a fresh read
            }
            self.observe(&task, req, now);
            self.log_commit(&task, &totals, &inputs);
            self.footers.forget(validate::consumed(&inputs, task.window_end_ms));
            if let Err(e) = self.commit_ready(&task.table, leadership).await {
                warn!(table = %task.table, error = %e, "committing staged tasks failed; the planning pass tries again");
            }
            self.replan.notify_one();
            return Ok(pb::CompleteTaskResponse { committed: true, watermark_ms: task.window_end_ms, staged: false });
        }
        Err(ControllerError::Conflict(format!(
            "the commit of task {id} attempt {} kept racing other writes; nothing was committed, report again",
            req.attempt
        )))
    }

    pub(super) fn observe(&self, task: &TaskRecord, req: &pb::CompleteTaskRequest, now: i64) {
        if let Some(m) = &self.metrics {
            m.task_duration.with_label_values(&[&task.table]).observe((now - task.started_ms).max(0) as f64 / 1000.0);
            if req.attempt == 1 {
                m.queue_wait
                    .with_label_values(&[&task.table])
                    .observe((task.started_ms - task.created_ms).max(0) as f64 / 1000.0);
            }
        }
    }

    /// Logs a flow commit of `task` (read from `inputs`) and observes its
    /// window freshness.
    pub(super) fn log_commit(&self, task: &TaskRecord, totals: &ReportTotals, inputs: &[SegmentMeta]) {
        if totals.rows_null_time > 0 {
            warn!(table = %task.table, task = %task.id, rows_null_time = totals.rows_null_time, "rows with a NULL time value belong to no window and were not moved");
        }
        let freshness_ms = self.observe_freshness(&task.table, inputs);
        info!(table = %task.table, task = %task.id, attempt = totals.attempt, window_start_ms = task.window_start_ms, window_end_ms = task.window_end_ms, windows = totals.windows.len(), rows_in = totals.rows_in, rows_out = totals.rows_out, segments = totals.outputs, freshness_ms, "windows committed");
    }

    /// Observes `r2o_window_freshness_seconds` of a flow commit that read
    /// `inputs`, now; returns it in ms ([`crate::metrics::window_freshness_ms`]).
    pub(super) fn observe_freshness(&self, raw: &str, inputs: &[SegmentMeta]) -> Option<i64> {
        let freshness_ms = crate::metrics::window_freshness_ms(inputs, now_ms());
        if let (Some(m), Some(ms)) = (&self.metrics, freshness_ms) {
            m.window_freshness.with_label_values(&[raw]).observe(ms as f64 / 1000.0);
        }
        freshness_ms
    }

    pub(super) async fn already_committed(&self, id: &TaskId, attempt: u32) -> Result<pb::CompleteTaskResponse> {
        if let Some((t, _)) = get_record::<TaskRecord>(&self.kv, &self.keys.active_task(id)).await? {
            if t.state == TaskState::Staged && t.staged_attempt == attempt {
                return Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: 0, staged: true });
            }
        }
        match get_record::<TaskRecord>(&self.kv, &self.keys.history(id)).await? {
            Some((t, _)) if t.state == TaskState::Succeeded && t.attempt == attempt => {
                Ok(pb::CompleteTaskResponse { committed: false, watermark_ms: t.window_end_ms, staged: false })
            }
            Some((t, _)) => Err(ControllerError::Stale(format!(
                "attempt {attempt} of task {id} is not current: the task finished as {} at attempt {}",
                t.state.name(),
                t.attempt
            ))),
            None => Err(ControllerError::NotFound(format!("task {id}"))),
        }
    }
}
