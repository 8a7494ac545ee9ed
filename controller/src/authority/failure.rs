//! Every way an attempt ends without a commit: failure reports, vanished
//! claims, timeouts on the leader's clock, re-arming and supersede, each
//! after the plan is checked again (`check_plan`).

use super::*;

impl Authority {
    /// Ends attempts that cannot end by themselves, removes tasks of an
    /// abandoned epoch, and re-arms FAILED tasks whose round backoff has
    /// passed:
    /// - a RUNNING task whose claim is gone (its minion's lease expired)
    ///   with no attempts left in its round becomes FAILED;
    /// - a RUNNING task past `timeoutMs` plus the grace since this leader
    ///   first saw the attempt running is ended as a failed attempt (its claim
    ///   released), whatever its minion is doing. The start is the leader's
    ///   own clock ([`protocol::attempt_overdue`]): a minion's clock is never
    ///   compared with the leader's.
    pub(super) async fn expire_attempts(&self, leadership: Leadership) -> Result<()> {
        let now = now_ms();
        let prefix = self.keys.claims();
        let claims: HashMap<String, i64> = self
            .kv
            .range(&prefix)
            .await?
            .into_iter()
            .map(|kv| (kv.key[prefix.len()..].to_string(), kv.mod_revision))
            .collect();
        let mut epochs: HashMap<String, i64> = HashMap::new();
        let tasks = range_records::<TaskRecord>(&self.kv, &self.keys.active_tasks()).await?;
        let seen = self.note_running(&tasks, now);
        for (task, entry) in tasks {
            let epoch = match epochs.get(&task.table) {
                Some(e) => *e,
                None => {
                    let e = self.epoch(&task.table).await?;
                    epochs.insert(task.table.clone(), e);
                    e
                }
            };
            if task.epoch_revision != epoch {
                let txn = protocol::drop_abandoned(
                    &self.keys,
                    &task,
                    entry.mod_revision,
                    leadership,
                    "a task planned before it was superseded, or the flow was reset",
                    now,
                );
                if txn.apply(&self.kv).await? {
                    info!(table = %task.table, task = %task.id, "abandoned task removed");
                }
                continue;
            }
            let claim_rev = claims.get(&task.id.to_string()).copied().unwrap_or(0);
            let revs = AttemptRevs { task: entry.mod_revision, claim: claim_rev };
            let first_seen = seen.get(&(task.id.to_string(), task.attempt)).copied().unwrap_or(now);
            match task.state {
                TaskState::Running if claim_rev == 0 && task.attempts_in_round() >= task.max_attempts => {
                    // (a task of many windows that no minion could finish is split)
                    let attempt = task.attempt;
                    let error =
                        "the attempt ended without a report (its minion died, lost its lease or gave the task back)";
                    self.attempt_failed(task, &revs, leadership, attempt, error).await?;
                }
                TaskState::Running
                    if claim_rev != 0
                        && protocol::attempt_overdue(first_seen, now, task.timeout_ms, self.cfg.attempt_grace_ms) =>
                {
                    let attempt = task.attempt;
                    let error = format!(
                        "the attempt ran past timeoutMs ({} ms) and its claim was released by the leader",
                        task.timeout_ms
                    );
                    self.attempt_failed(task, &revs, leadership, attempt, &error).await?;
                }
                TaskState::Failed if task.retry_at_ms.is_some_and(|at| at <= now) => {
                    self.rearm(task, &entry, leadership, "round backoff passed").await?;
                }
                TaskState::Failed => {
                    if let Some(at) = task.retry_at_ms {
                        self.wake_all_at(at);
                    }
                }
                TaskState::Running if claim_rev != 0 => {
                    // the instant `attempt_overdue` turns true
                    let deadline = first_seen.saturating_add(task.timeout_ms).saturating_add(self.cfg.attempt_grace_ms);
                    self.wake_all_at(deadline.saturating_add(1));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Records when this leader first saw each RUNNING attempt among `tasks`
    /// (on its own clock, at `now`) and forgets attempts no longer running;
    /// returns (task id, attempt) -> first seen, ms.
    pub(super) fn note_running(&self, tasks: &[(TaskRecord, KeyValue)], now: i64) -> HashMap<(String, u32), i64> {
        let mut seen = self.attempt_seen.lock().unwrap_or_else(|p| p.into_inner());
        let running: std::collections::HashSet<(String, u32)> = tasks
            .iter()
            .filter(|(t, _)| t.state == TaskState::Running)
            .map(|(t, _)| (t.id.to_string(), t.attempt))
            .collect();
        seen.retain(|k, _| running.contains(k));
        for k in running {
            seen.entry(k).or_insert(now);
        }
        seen.clone()
    }

    /// Ends a task whose plan no longer holds (`check` is not
    /// [`PlanCheck::Holds`]): dropped when abandoned, else superseded. Returns
    /// the error to answer its attempt with, or `None` when it raced (read
    /// again).
    pub(super) async fn end_unplanned(
        &self,
        task: &TaskRecord,
        task_rev: i64,
        check: PlanCheck,
        leadership: Leadership,
    ) -> Result<Option<ControllerError>> {
        match check {
            PlanCheck::Holds { .. } => Ok(None),
            PlanCheck::Abandoned(reason) => {
                let txn = protocol::drop_abandoned(&self.keys, task, task_rev, leadership, &reason, now_ms());
                if !txn.apply(&self.kv).await? {
                    return Ok(None);
                }
                info!(table = %task.table, task = %task.id, reason = %reason, "task dropped: its plan no longer holds");
                self.replan.notify_one();
                Ok(Some(ControllerError::Stale(format!("task {} was abandoned: {reason}", task.id))))
            }
            PlanCheck::Supersede(reason) => {
                let epoch_rev = self.epoch(&task.table).await?;
                self.supersede(task, task_rev, epoch_rev, leadership, &reason, None).await
            }
        }
    }

    /// Checks `task`'s plan (read at `task_rev`) and, when it no longer
    /// holds, ends the task ([`Authority::end_unplanned`]): `Some(whether it
    /// was ended)`, or `None` while the plan holds.
    async fn end_if_unplanned(&self, task: &TaskRecord, task_rev: i64, leadership: Leadership) -> Result<Option<bool>> {
        let spec = TableSpec::from_json(task.table_config.clone(), task.schema.clone())?;
        let window_inputs = self.inputs.read(&self.kv, &self.keys.inputs(&task.inputs_id())).await?;
        let check = self.check_plan(task, &spec, &window_inputs).await?;
        if matches!(check, PlanCheck::Holds { .. }) {
            return Ok(None);
        }
        Ok(Some(self.end_unplanned(task, task_rev, check, leadership).await?.is_some()))
    }

    /// Records a failed attempt, after checking that the task's plan still
    /// holds: a task whose inputs changed or vanished (a discovered file
    /// refused, a late run's input deleted by retention) is superseded or
    /// dropped instead of failing every attempt forever (finding 7 of issue
    /// 19). Otherwise [`protocol::on_failure`] decides: another attempt, the
    /// round's end (FAILED), or, for a task of several windows whose round
    /// is spent, a split (superseded, its range planned one window per task).
    /// Returns whether the attempt was ended (`false`: something moved).
    pub(super) async fn attempt_failed(
        &self,
        task: TaskRecord,
        revs: &AttemptRevs,
        leadership: Leadership,
        attempt: u32,
        error: &str,
    ) -> Result<bool> {
        if let Some(ended) = self.end_if_unplanned(&task, revs.task, leadership).await? {
            info!(table = %task.table, task = %task.id, attempt, error = %error, "attempt failed, but its plan no longer holds; planning again");
            return Ok(ended);
        }
        match protocol::on_failure(task.clone(), attempt, error, now_ms()) {
            protocol::FailureOutcome::Split => {
                let epoch_rev = self.epoch(&task.table).await?;
                let reason = format!(
                    "attempt {attempt} failed: {error}; its {} windows are planned again one at a time to isolate the failing one",
                    task.windows.len()
                );
                let ended = self
                    .supersede(&task, revs.task, epoch_rev, leadership, &reason, Some(task.window_end_ms))
                    .await?
                    .is_some();
                if ended {
                    warn!(table = %task.table, task = %task.id, attempt, error = %error, windows = task.windows.len(), "last attempt of a multi-window task failed; planning its windows one at a time");
                }
                Ok(ended)
            }
            protocol::FailureOutcome::Record(next) => self.apply_failure(&next, revs, leadership).await,
        }
    }

    /// Writes a failed attempt's outcome; logs it.
    pub(super) async fn apply_failure(
        &self,
        next: &TaskRecord,
        revs: &AttemptRevs,
        leadership: Leadership,
    ) -> Result<bool> {
        let ok = protocol::record_failure(&self.keys, next, revs, leadership).apply(&self.kv).await?;
        if ok {
            let error = next.errors.last().cloned().unwrap_or_default();
            if next.state == TaskState::Failed {
                warn!(table = %next.table, task = %next.id, attempt = next.attempt, error = %error, "task failed after its last attempt");
            } else {
                warn!(table = %next.table, task = %next.id, attempt = next.attempt, error = %error, not_before_ms = next.not_before_ms, "attempt failed; will retry");
            }
        }
        Ok(ok)
    }

    /// Starts a new round of attempts for a FAILED task, if its plan still
    /// holds (else it is superseded or dropped and planned again).
    pub(super) async fn rearm(
        &self,
        t: TaskRecord,
        entry: &KeyValue,
        leadership: Leadership,
        why: &str,
    ) -> Result<bool> {
        if let Some(ended) = self.end_if_unplanned(&t, entry.mod_revision, leadership).await? {
            return Ok(ended);
        }
        let next = protocol::rearmed(t);
        let ok = protocol::update_task(&self.keys, &next, entry.mod_revision, leadership).apply(&self.kv).await?;
        if ok {
            info!(table = %next.table, task = %next.id, attempt = next.attempt, failed_rounds = next.failed_rounds, why, "failed task re-armed");
            self.replan.notify_one();
        }
        Ok(ok)
    }

    /// Operator retry: re-arms the table's earliest FAILED task now.
    /// Errors when it has none.
    pub async fn retry(&self, table: &str) -> Result<String> {
        let leadership = self.leadership()?;
        let (open, _) = open_tasks(&self.kv, &self.keys, table).await?;
        let Some((t, entry)) = open.into_iter().find(|(t, _)| t.state == TaskState::Failed) else {
            return Err(ControllerError::NotFound(format!("a FAILED task of table '{table}'")));
        };
        let id = t.id.to_string();
        if !self.rearm(t, &entry, leadership, "operator retry").await? {
            return Err(ControllerError::Conflict(format!("task {id} changed while retrying; try again")));
        }
        Ok(id)
    }

    /// Records a failed attempt: back to PENDING for another attempt, or
    /// FAILED after the last one (the table's later windows then wait).
    pub async fn fail(&self, req: &pb::FailTaskRequest) -> Result<()> {
        let leadership = self.leadership()?;
        let id = Self::parse_id(&req.task_id)?;
        let (task, revs) = match self.current_attempt(&id, req.attempt, &req.minion_id).await? {
            Attempt::Current { task, revs } => (*task, revs),
            Attempt::Gone => return Err(ControllerError::NotFound(format!("active task {id}"))),
        };
        if !self.attempt_failed(task, &revs, leadership, req.attempt, &req.error).await? {
            return Err(ControllerError::Conflict(format!(
                "task {id} changed while recording the failure; report again"
            )));
        }
        Ok(())
    }

    /// Drops a task whose plan no longer holds, moving the epoch (every
    /// open task of the table is abandoned) and the frontier back to the
    /// watermark ([`protocol::rewound_frontier`]; one window per task until
    /// `narrow_until_ms`, `None`: no new narrowing); returns the error to answer
    /// with, or `None` when the supersede lost a race.
    pub(super) async fn supersede(
        &self,
        task: &TaskRecord,
        task_rev: i64,
        epoch_rev: i64,
        leadership: Leadership,
        reason: &str,
        narrow_until_ms: Option<i64>,
    ) -> Result<Option<ControllerError>> {
        let (wm, _) = self.watermark(&task.table).await?;
        let current = get_record::<FrontierRecord>(&self.kv, &self.keys.frontier(&task.table)).await?.map(|(f, _)| f);
        let frontier = protocol::rewound_frontier(task, wm.map(|w| w.watermark_ms), current.as_ref(), narrow_until_ms);
        let txn = protocol::supersede(&self.keys, task, task_rev, epoch_rev, leadership, reason, now_ms(), &frontier);
        if !txn.apply(&self.kv).await? {
            return Ok(None);
        }
        warn!(table = %task.table, task = %task.id, reason = %reason, next_ms = frontier.next_ms, "task superseded; the table's open tasks are planned again from the watermark");
        self.replan.notify_one();
        Ok(Some(ControllerError::Stale(format!(
            "task {} was superseded: {reason}; its range is planned again",
            task.id
        ))))
    }
}
