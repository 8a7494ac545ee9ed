//! Claiming a task (step 2 of the commit protocol): one transaction moves
//! the task to RUNNING with the next attempt number and creates
//! `tasks/claims/<task>` on the minion's lease. A claim whose reply was lost
//! is read back, not abandoned; a claim is released by deleting it only at
//! the revision it was created with, so a release never touches a later
//! attempt's claim.

use r2o_common::kv::{Compare, KeyValue, Kv, Op};
use r2o_common::meta::{
    chunks, encode, get_record, now_ms, range_records, ClaimRecord, Keys, SegmentMeta, TaskId, TaskRecord, TaskState,
};
use r2o_common::Error;
use std::sync::Arc;

/// A task this minion holds: its record, the claim's revision and its inputs.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The task as claimed (RUNNING, this attempt).
    pub task: TaskRecord,
    /// `mod_revision` of the claim key this minion created.
    pub claim_rev: i64,
}

/// Whether a minion started with `minion_tag` may claim `task`: the tag of
/// the task's table (`minionInstanceTag` in its config snapshot, Pinot's
/// routing of a table's tasks to the minions of one tag) is the minion's.
pub fn tag_allows(task: &TaskRecord, minion_tag: &str) -> bool {
    r2o_common::config::minion_instance_tag(&task.table_config).is_ok_and(|t| t == minion_tag)
}

/// Tasks a minion with `minion_tag` may claim now (PENDING past their
/// backoff, or RUNNING whose claim vanished, of tables with its tag),
/// oldest first. Reads every claim in one paged range; a stale view is
/// harmless (the claim transaction checks again).
pub async fn claimable(kv: &Kv, keys: &Keys, minion_tag: &str) -> Result<Vec<(TaskRecord, KeyValue)>, Error> {
    let now = now_ms();
    let tasks = range_records::<TaskRecord>(kv, &keys.active_tasks()).await?;
    let prefix = keys.claims();
    let claims: std::collections::HashSet<String> =
        kv.range_keys(&prefix).await?.into_iter().map(|k| k[prefix.len()..].to_string()).collect();
    let mut out: Vec<(TaskRecord, KeyValue)> = tasks
        .into_iter()
        .filter(|(t, _)| {
            matches!(t.state, TaskState::Pending | TaskState::Running)
                && t.claimable(now, claims.contains(&t.id.to_string()))
                && tag_allows(t, minion_tag)
        })
        .collect();
    out.sort_by_key(|(t, _)| t.created_ms);
    Ok(out)
}

/// What a claim attempt came to.
#[derive(Debug)]
pub enum ClaimResult {
    /// This minion holds the task.
    Claimed(Box<Claimed>),
    /// Someone else got it, or it changed.
    Lost,
    /// The transaction's reply was lost and the claim could not be read
    /// back yet: call [`read_back`] later.
    Unknown(TaskId, u32),
}

/// Tries to claim `task` (read at `entry`) for `minion` on `lease`.
pub async fn try_claim(
    kv: &Kv,
    keys: &Keys,
    task: &TaskRecord,
    entry: &KeyValue,
    minion: &str,
    lease: i64,
) -> ClaimResult {
    let claim_key = keys.claim(&task.id);
    let mut t = task.clone();
    t.attempt += 1;
    t.state = TaskState::Running;
    t.minion = minion.to_string();
    t.started_ms = now_ms();
    let claim = ClaimRecord { minion_id: minion.to_string(), attempt: t.attempt, lease, claimed_ms: t.started_ms };
    let txn = kv
        .txn(
            vec![
                Compare::ModRevision(entry.key.clone(), entry.mod_revision),
                Compare::CreateRevision(claim_key.clone(), 0),
            ],
            vec![
                Op::put(entry.key.clone(), encode(&t)),
                Op::Put { key: claim_key, value: encode(&claim), lease: Some(lease) },
            ],
        )
        .await;
    match txn {
        Ok(false) => ClaimResult::Lost,
        Ok(true) | Err(_) => match read_back(kv, keys, &t.id, t.attempt, minion).await {
            Ok(Some(c)) => ClaimResult::Claimed(Box::new(c)),
            Ok(None) => ClaimResult::Lost,
            Err(_) => ClaimResult::Unknown(t.id.clone(), t.attempt),
        },
    }
}

/// Whether this minion holds attempt `attempt` of `id`: its claim key
/// names this minion and attempt. Returns the task as stored.
pub async fn read_back(
    kv: &Kv,
    keys: &Keys,
    id: &TaskId,
    attempt: u32,
    minion: &str,
) -> Result<Option<Claimed>, Error> {
    let Some((c, centry)) = get_record::<ClaimRecord>(kv, &keys.claim(id)).await? else {
        return Ok(None);
    };
    if c.minion_id != minion || c.attempt != attempt {
        return Ok(None);
    }
    match get_record::<TaskRecord>(kv, &keys.active_task(id)).await? {
        Some((task, _)) if task.attempt == attempt => Ok(Some(Claimed { task, claim_rev: centry.mod_revision })),
        _ => Ok(None),
    }
}

/// The task's inputs (read after claiming), through `cache`: the sub-tasks
/// of a split window share one list.
pub async fn inputs(
    kv: &Kv,
    keys: &Keys,
    cache: &chunks::ListCache<SegmentMeta>,
    id: &TaskId,
) -> Result<Arc<Vec<SegmentMeta>>, Error> {
    cache.read(kv, &keys.inputs(id)).await
}

/// Gives a claim back: deletes it if it is still the one this minion
/// created (a commit or the leader may have deleted it, or a later attempt
/// may hold a new one: then nothing changes). Returns whether it deleted.
pub async fn release(kv: &Kv, keys: &Keys, c: &Claimed) -> Result<bool, Error> {
    let key = keys.claim(&c.task.id);
    kv.txn(vec![Compare::ModRevision(key.clone(), c.claim_rev)], vec![Op::delete(key)]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::kv::MemKv;
    use std::sync::Arc;

    fn task() -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": "t__0__1", "table": "t", "windowStartMs": 0, "windowEndMs": 1, "skippedWindows": 0,
            "inputCount": 0, "inputChunks": 1, "inputRows": 0, "inputBytes": 0, "segmentsRevision": 0,
            "tableConfig": {}, "schema": {}, "state": "PENDING", "attempt": 0, "minion": "", "createdMs": 0,
            "startedMs": 0, "finishedMs": 0, "errors": [], "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_minion_lists_only_the_tasks_of_its_tag() {
        let mem = MemKv::new();
        let kv: Kv = Arc::new(mem.clone());
        let keys = Keys::new("/m");
        let untagged = task();
        let mut heavy = task();
        heavy.id = "t__0__2".parse().unwrap();
        heavy.table_config = serde_json::json!({"task": {"taskTypeConfigsMap":
            {"RealtimeToOfflineSegmentsTask": {"minionInstanceTag": "heavy"}}}});
        for t in [&untagged, &heavy] {
            kv.put(&keys.active_task(&t.id), encode(t), None).await.unwrap();
        }
        let ids = |c: Vec<(TaskRecord, KeyValue)>| c.into_iter().map(|(t, _)| t.id.to_string()).collect::<Vec<_>>();
        let default = r2o_common::config::DEFAULT_MINION_TAG;
        assert_eq!(ids(claimable(&kv, &keys, default).await.unwrap()), vec![untagged.id.to_string()]);
        assert_eq!(ids(claimable(&kv, &keys, "heavy").await.unwrap()), vec![heavy.id.to_string()]);
        assert!(claimable(&kv, &keys, "other").await.unwrap().is_empty());
        assert!(tag_allows(&heavy, "heavy") && !tag_allows(&heavy, default) && tag_allows(&untagged, default));
    }

    #[tokio::test]
    async fn a_claim_whose_reply_was_lost_is_read_back() {
        let mem = MemKv::new();
        let kv: Kv = Arc::new(mem.clone());
        let keys = Keys::new("/m");
        let t = task();
        kv.put(&keys.active_task(&t.id), encode(&t), None).await.unwrap();
        let entry = kv.get(&keys.active_task(&t.id)).await.unwrap().unwrap();
        let lease = kv.grant_lease(30).await.unwrap();
        // etcd is unreachable for the claim itself: nothing is applied, nothing is held
        mem.fail_txn_after(Some(0));
        assert!(matches!(try_claim(&kv, &keys, &t, &entry, "m1", lease).await, ClaimResult::Lost));
        mem.fail_txn_after(None);
        // applied, reply lost: simulate by claiming, then asking as if the reply never came
        let ClaimResult::Claimed(c) = try_claim(&kv, &keys, &t, &entry, "m1", lease).await else { panic!("claimed") };
        let c = *c;
        let again = read_back(&kv, &keys, &t.id, 1, "m1").await.unwrap().expect("the claim is recognised");
        assert_eq!((again.task.attempt, again.claim_rev), (1, c.claim_rev));
        assert!(read_back(&kv, &keys, &t.id, 1, "m2").await.unwrap().is_none(), "not someone else's");
        // a second claim by another minion is refused while the claim exists
        assert!(matches!(try_claim(&kv, &keys, &t, &entry, "m2", lease).await, ClaimResult::Lost));
        // releasing deletes only this claim
        assert!(release(&kv, &keys, &c).await.unwrap());
        assert!(!release(&kv, &keys, &c).await.unwrap(), "a second release changes nothing");
        let (stored, _) = get_record::<TaskRecord>(&kv, &keys.active_task(&t.id)).await.unwrap().unwrap();
        assert!(stored.claimable(now_ms(), false), "RUNNING without a claim is claimable again");
    }
}
