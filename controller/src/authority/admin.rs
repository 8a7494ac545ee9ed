//! Flow administration on the leader: reset (append, flush) and delete.

use super::*;

impl Authority {
    /// Resets a flow (leader only). Every open task is abandoned (the epoch
    /// moves, so none of them can commit) and planning continues from the
    /// watermark (`append`); `flush` also deletes the lineage, manifests and
    /// inputs of the committed windows and the watermark (the janitor removes
    /// the files) and restarts from the earliest data. `dry_run` reports what
    /// would go and changes nothing.
    pub async fn reset(&self, raw: &str, flush: bool, dry_run: bool) -> Result<pb::ResetTableResponse> {
        let leadership = self.leadership()?;
        if self.kv.get(&self.keys.table(raw)).await?.is_none() {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        }
        let offline = crate::registry::offline_segments(&self.kv, &self.keys, raw).await?;
        let windows: u64 = crate::registry::lineage(&self.kv, &self.keys, raw)
            .await?
            .iter()
            .map(|l| l.windows.len().max(1) as u64)
            .sum();
        let (wm, wm_rev) = self.watermark(raw).await?;
        let retained = get_record::<r2o_common::meta::RetentionRecord>(&self.kv, &self.keys.retention(raw)).await?;
        if let (true, Some((r, _))) = (flush, &retained) {
            return Err(ControllerError::Invalid(format!(
                "mode FLUSH of table '{raw}': retention has deleted {} REALTIME segment(s) ({} rows, up to {}) whose rows \
                 are only in OFFLINE now; a flush would delete those rows for good. Use --mode append",
                r.deleted_segments,
                r.deleted_rows,
                r2o_common::window::format_utc(r.deleted_until_ms)
            )));
        }
        let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
        let abandoned: Vec<String> = open.iter().map(|(t, _)| t.id.to_string()).collect();
        let mut resp = pb::ResetTableResponse {
            mode: if flush { "FLUSH" } else { "APPEND" }.into(),
            offline_segments: if flush { offline.len() as u64 } else { 0 },
            offline_rows: if flush { offline.iter().map(|s| s.total_docs).sum() } else { 0 },
            offline_bytes: if flush { offline.iter().map(|s| s.size_bytes).sum() } else { 0 },
            windows: if flush { windows } else { 0 },
            watermark_ms: wm.as_ref().map(|w| w.watermark_ms),
            abandoned_task: abandoned.join(", "),
            done: false,
        };
        if dry_run {
            return Ok(resp);
        }
        let revs = protocol::FlowRevs {
            watermark: wm_rev,
            epoch: epoch_rev,
            retention: retained.as_ref().map_or(0, |(_, e)| e.mod_revision),
            ..Default::default()
        };
        let next = wm.as_ref().map(|w| w.watermark_ms);
        if !protocol::reset(&self.keys, raw, flush, next, revs, leadership, now_ms()).apply(&self.kv).await? {
            return Err(ControllerError::Conflict(format!(
                "table '{raw}' changed while resetting; nothing was changed, try again"
            )));
        }
        // the abandoned tasks can no longer commit; remove them now (the planning pass would too)
        let reason = format!("the flow was reset ({})", resp.mode);
        for (t, entry) in &open {
            let _ = protocol::drop_abandoned(&self.keys, t, entry.mod_revision, leadership, &reason, now_ms())
                .apply(&self.kv)
                .await;
        }
        if flush {
            // every row moves again: no segment is late any more (if this
            // stops half-way, a segment stays marked late, which only keeps
            // retention from deleting it)
            if let Err(e) = crate::registry::clear_late(&self.kv, &self.keys, raw).await {
                warn!(table = %raw, error = %e, "late marks not cleared after a flush; retention keeps those segments");
            }
        }
        warn!(table = %raw, mode = %resp.mode, offline_segments = resp.offline_segments, abandoned = abandoned.len(), "flow reset");
        self.replan.notify_one();
        resp.done = true;
        Ok(resp)
    }

    /// Deletes a flow (leader only): the table must be paused with no task in
    /// flight (DataHub's rule: only an inactive flow is deleted). One
    /// transaction removes the table record, its task history, frontier and
    /// epoch; its data stays in place (REALTIME segments, OFFLINE lineage and
    /// manifests, watermark), so the janitor keeps every file and adding the
    /// table again continues from the watermark. With `purge` the same
    /// transaction also deletes the segment metadata, lineage, manifests,
    /// inputs, watermark and retention record, and then the files (a file
    /// left by a crash is an orphan the janitor removes). `dry_run` reports
    /// and changes nothing.
    ///
    /// # Errors
    /// [`ControllerError::NotFound`]; [`ControllerError::Invalid`] when the
    /// table is not paused or has tasks in flight (naming them and what to
    /// do); [`ControllerError::Conflict`] when it changed meanwhile.
    pub async fn delete_table(&self, raw: &str, purge: bool, dry_run: bool) -> Result<pb::DeleteTableResponse> {
        let leadership = self.leadership()?;
        let Some((rec, entry)) = get_record::<TableRecord>(&self.kv, &self.keys.table(raw)).await? else {
            return Err(ControllerError::NotFound(format!("table '{raw}'")));
        };
        if !rec.paused {
            return Err(ControllerError::Invalid(format!(
                "table '{raw}' is not paused: only a paused flow is deleted (r2o pause --table {raw}, then delete)"
            )));
        }
        let (open, epoch_rev) = open_tasks(&self.kv, &self.keys, raw).await?;
        if let Some((t, _)) = open.first() {
            return Err(ControllerError::Invalid(format!(
                "table '{raw}' has {} task(s) in flight (the first: {}, {}): wait for them (r2o wait --table {raw}) \
                 or abandon them (r2o reset --table {raw} --mode append), then delete",
                open.len(),
                t.id,
                t.state.name()
            )));
        }
        let (realtime, marker_rev) = read_segments(&self.kv, &self.keys, raw).await?;
        let offline = crate::registry::offline_segments(&self.kv, &self.keys, raw).await?;
        let frontier_rev = self.kv.get(&self.keys.frontier(raw)).await?.map_or(0, |e| e.mod_revision);
        let (_, wm_rev) = self.watermark(raw).await?;
        let mut resp = pb::DeleteTableResponse {
            table: raw.to_string(),
            purge,
            realtime_segments: realtime.len() as u64,
            realtime_bytes: realtime.iter().map(|s| s.size_bytes).sum(),
            offline_segments: offline.len() as u64,
            offline_rows: offline.iter().map(|s| s.total_docs).sum(),
            offline_bytes: offline.iter().map(|s| s.size_bytes).sum(),
            done: false,
        };
        if dry_run {
            return Ok(resp);
        }
        let revs = protocol::FlowRevs {
            table: entry.mod_revision,
            epoch: epoch_rev,
            frontier: frontier_rev,
            segments: marker_rev,
            watermark: wm_rev,
            ..Default::default()
        };
        if !protocol::delete_table(&self.keys, raw, purge, revs, leadership).apply(&self.kv).await? {
            return Err(ControllerError::Conflict(format!(
                "table '{raw}' changed while it was being deleted; nothing was deleted, try again"
            )));
        }
        if purge {
            use futures::StreamExt;
            // never a discovered file: it is the owner's
            let locations: Vec<String> = realtime
                .iter()
                .chain(offline.iter())
                .filter(|s| !r2o_common::store::is_external(&s.location))
                .map(|s| s.location.clone())
                .collect();
            let store = self.store.clone();
            let failed = futures::stream::iter(locations)
                .map(|l| {
                    let store = store.clone();
                    async move { r2o_common::store::delete_object(&store, &l).await.err().map(|e| (l, e)) }
                })
                .buffer_unordered(16)
                .filter_map(|r| async move { r })
                .collect::<Vec<_>>()
                .await;
            for (l, e) in &failed {
                warn!(table = %raw, location = %l, error = %e, "purge: file not deleted; the janitor deletes it as an orphan");
            }
        }
        warn!(table = %raw, purge, realtime_segments = resp.realtime_segments, offline_segments = resp.offline_segments, "table deleted");
        resp.done = true;
        Ok(resp)
    }
}
