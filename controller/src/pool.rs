//! The minion pool as an autoscaler and an SRE see it (issue 24): per
//! `minionInstanceTag` (Pinot's; a pool Deployment serves one), the tasks
//! waiting for a slot, the tasks running, the minions that claim and those
//! draining, their slots, and how long the oldest waiting task has waited.
//! Pure: [`crate::metrics`] exports it (`r2o_pool_*`, what KEDA's and the
//! HPA's formulas read) and the status page shows it.

use r2o_common::meta::{MinionRecord, TaskRecord, TaskState};
use std::collections::BTreeMap;

/// One tag's pool.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolFigures {
    /// Tasks a minion could claim now (PENDING, past their backoff, with
    /// attempts left in their round).
    pub waiting: u64,
    /// PENDING tasks still in their backoff between attempts.
    pub backing_off: u64,
    /// Tasks a minion runs (RUNNING).
    pub running: u64,
    /// Live minions that claim.
    pub minions: u64,
    /// Live minions draining (claiming nothing more).
    pub draining: u64,
    /// Task slots of the minions that claim.
    pub slots: u64,
    /// How long the longest-waiting claimable task has waited, ms (0: none
    /// waits): since it was published, or since its backoff ended.
    pub oldest_wait_ms: i64,
}

/// The pool per tag from the active task records, the live minion records,
/// each table's tag (`tag_of(table)`; `None`: the table is gone and its
/// tasks are not counted) and the tags of every table (each gets figures,
/// zeros included, so a scaler's query always finds its series), at
/// `now_ms` (UTC epoch ms). Pure.
pub fn pool_figures<'a>(
    tasks: impl IntoIterator<Item = &'a TaskRecord>,
    minions: impl IntoIterator<Item = &'a MinionRecord>,
    tag_of: impl Fn(&str) -> Option<&'a str>,
    table_tags: impl IntoIterator<Item = &'a str>,
    now_ms: i64,
) -> BTreeMap<String, PoolFigures> {
    let mut out: BTreeMap<String, PoolFigures> = BTreeMap::new();
    for tag in table_tags {
        out.entry(tag.to_string()).or_default();
    }
    for m in minions {
        let p = out.entry(m.tag_or_default().to_string()).or_default();
        if m.draining {
            p.draining += 1;
        } else {
            p.minions += 1;
            p.slots += u64::from(m.slots);
        }
    }
    for t in tasks {
        let Some(tag) = tag_of(&t.table) else { continue };
        let p = out.entry(tag.to_string()).or_default();
        match t.state {
            TaskState::Running => p.running += 1,
            TaskState::Pending if t.attempts_in_round() >= t.max_attempts => {}
            TaskState::Pending if t.not_before_ms > now_ms => p.backing_off += 1,
            TaskState::Pending => {
                p.waiting += 1;
                let since = t.created_ms.max(t.not_before_ms);
                p.oldest_wait_ms = p.oldest_wait_ms.max(now_ms.saturating_sub(since).max(0));
            }
            _ => {}
        }
    }
    out
}

/// [`pool_figures`] with each table's tag from the parsed tables (`tables`,
/// as [`crate::tables::TableCache::all`] gives them; a table whose config
/// does not parse counts as gone). Pure.
pub fn pool_of_tables<'a>(
    tables: &'a [(String, crate::error::Result<crate::tables::TableView>)],
    tasks: impl IntoIterator<Item = &'a TaskRecord>,
    minions: impl IntoIterator<Item = &'a MinionRecord>,
    now_ms: i64,
) -> BTreeMap<String, PoolFigures> {
    let tag_of: std::collections::HashMap<&str, &str> = tables
        .iter()
        .filter_map(|(raw, v)| v.as_ref().ok().map(|v| (raw.as_str(), v.spec.flow.minion_instance_tag.as_str())))
        .collect();
    pool_figures(tasks, minions, |t| tag_of.get(t).copied(), tag_of.values().copied(), now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(table: &str, state: &str, created_ms: i64, not_before_ms: i64, attempt: u32) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": format!("{table}__0__{created_ms}"), "table": table, "windowStartMs": 0, "windowEndMs": 1,
            "skippedWindows": 0, "inputCount": 0, "inputChunks": 1, "inputRows": 0, "inputBytes": 0,
            "segmentsRevision": 0, "tableConfig": {}, "schema": {}, "state": state, "attempt": attempt,
            "minion": "", "createdMs": created_ms, "startedMs": 0, "finishedMs": 0, "errors": [], "rowsIn": 0,
            "rowsOut": 0, "bytesIn": 0, "bytesOut": 0, "notBeforeMs": not_before_ms, "maxAttempts": 3
        }))
        .unwrap()
    }

    fn minion(id: &str, tag: &str, slots: u32, draining: bool) -> MinionRecord {
        MinionRecord {
            id: id.into(),
            addr: String::new(),
            slots,
            started_ms: 0,
            host: String::new(),
            tag: tag.into(),
            draining,
        }
    }

    #[test]
    fn waiting_running_and_slots_per_tag() {
        let tasks = [
            task("a", "PENDING", 1_000, 0, 0),     // waits since 1 s
            task("a", "PENDING", 4_000, 0, 0),     // waits since 4 s
            task("a", "PENDING", 1_000, 9_000, 1), // backing off until 9 s
            task("a", "PENDING", 1_000, 0, 3),     // round used up: nobody can claim it
            task("a", "RUNNING", 2_000, 0, 1),
            task("a", "STAGED", 2_000, 0, 1),
            task("a", "FAILED", 2_000, 0, 3),
            task("b", "PENDING", 5_000, 6_000, 1), // backoff ended at 6 s
            task("gone", "PENDING", 0, 0, 0),      // its table was deleted
        ];
        let minions = [minion("m1", "", 4, false), minion("m2", "", 4, true), minion("m3", "gpu", 2, false)];
        let tag_of = |t: &str| match t {
            "a" => Some("minion_untagged"),
            "b" => Some("heavy"),
            _ => None,
        };
        let got = pool_figures(&tasks, &minions, tag_of, ["minion_untagged", "heavy", "quiet"], 7_000);
        assert_eq!(
            got["minion_untagged"],
            PoolFigures {
                waiting: 2,
                backing_off: 1,
                running: 1,
                minions: 1,
                draining: 1,
                slots: 4,
                oldest_wait_ms: 6_000
            }
        );
        assert_eq!(got["heavy"], PoolFigures { waiting: 1, oldest_wait_ms: 1_000, ..Default::default() });
        assert_eq!(got["gpu"], PoolFigures { minions: 1, slots: 2, ..Default::default() });
        assert_eq!(got["quiet"], PoolFigures::default(), "a table's tag has figures even when idle");
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_pool_at_zero_still_shows_the_work_waiting() {
        let tasks = [task("a", "PENDING", 0, 0, 0)];
        let got = pool_figures(&tasks, &[], |_| Some("minion_untagged"), ["minion_untagged"], 60_000);
        let p = &got["minion_untagged"];
        assert_eq!((p.waiting, p.minions, p.slots, p.oldest_wait_ms), (1, 0, 0, 60_000));
    }
}
