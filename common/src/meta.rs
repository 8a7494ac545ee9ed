//! r2o's records in etcd and their keys. Every record is JSON. The keyspace
//! (under a configurable prefix, default `/r2o`):
//!
//! | key | record | writer |
//! | --- | --- | --- |
//! | `tables/<raw>` | [`TableRecord`] | admin |
//! | `segments/<raw>_REALTIME/<segment>` | [`SegmentMeta`] | admin / ingest |
//! | `segments/<raw>_OFFLINE/<segment>` | [`SegmentMeta`] | controller commit only |
//! | `watermarks/<raw>` | [`WatermarkRecord`] | controller commit only |
//! | `lineage/<raw>/<window start>` | [`LineageRecord`] | controller commit only |
//! | `tasks/active/<task>` | [`TaskRecord`] | controller (publish, fail), minion (claim) |
//! | `tasks/inflight/<raw>` | task id: one in-flight task per table | controller |
//! | `tasks/claims/<task>` | [`ClaimRecord`], on the minion's lease | minion |
//! | `history/<raw>/<task>` | [`TaskRecord`] of a finished task | controller |
//! | `minions/<id>` | [`MinionRecord`], on the minion's lease | minion |
//! | `election/leader` | [`LeaderRecord`], on the leader's lease | controller |

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::kv::{KeyValue, Kv};

/// Status of a REALTIME segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SegmentStatus {
    /// Still growing on a realtime server; its end time is not final.
    Consuming,
    /// Completed and immutable.
    Done,
}

impl SegmentStatus {
    /// `CONSUMING` or `DONE`.
    pub fn name(self) -> &'static str {
        match self {
            SegmentStatus::Consuming => "CONSUMING",
            SegmentStatus::Done => "DONE",
        }
    }

    /// Parses `CONSUMING` / `DONE` (any case).
    pub fn parse(text: &str) -> Option<SegmentStatus> {
        match text.to_ascii_uppercase().as_str() {
            "CONSUMING" => Some(SegmentStatus::Consuming),
            "DONE" => Some(SegmentStatus::Done),
            _ => None,
        }
    }
}

/// Metadata of one segment (one Parquet object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentMeta {
    /// Segment name, unique within its table part.
    pub segment_name: String,
    /// `<raw>_REALTIME` or `<raw>_OFFLINE`.
    pub table_name: String,
    /// `CONSUMING` or `DONE` (OFFLINE segments are always `DONE`).
    pub status: SegmentStatus,
    /// Smallest time value in the segment, UTC epoch ms.
    pub start_time_ms: i64,
    /// Largest time value in the segment, UTC epoch ms, inclusive.
    pub end_time_ms: i64,
    /// Rows.
    pub total_docs: u64,
    /// Object size, bytes.
    pub size_bytes: u64,
    /// [`crate::schema::Schema::fingerprint`] of the table schema it was written with.
    pub schema_fingerprint: String,
    /// Object-store path of the Parquet file.
    pub location: String,
    /// Stream partition (REALTIME) or data partition (OFFLINE); -1 when none.
    pub partition: i32,
    /// When the metadata was created, UTC epoch ms.
    pub created_ms: i64,
}

/// A registered table: Pinot's JSON exactly as given, and flow state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableRecord {
    /// Pinot table config JSON, unchanged.
    pub table_config: Value,
    /// Pinot schema JSON, unchanged.
    pub schema: Value,
    /// Registration time, UTC epoch ms.
    pub created_ms: i64,
    /// While paused, the planner creates no task for the table (running ones finish).
    #[serde(default)]
    pub paused: bool,
}

/// Per-table watermark: every window ending at or before it is committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkRecord {
    /// UTC epoch ms.
    pub watermark_ms: i64,
    /// Windows committed with data.
    pub windows_committed: u64,
    /// Windows skipped because they held no data.
    pub windows_skipped: u64,
    /// Rows committed in total.
    pub rows_out: u64,
    /// Rows read inside committed windows, in total.
    #[serde(default)]
    pub rows_in: u64,
    /// REALTIME bytes read by committed attempts, in total.
    #[serde(default)]
    pub bytes_in: u64,
    /// OFFLINE bytes committed, in total.
    #[serde(default)]
    pub bytes_out: u64,
    /// Last update, UTC epoch ms.
    pub updated_ms: i64,
}

/// Which OFFLINE segments hold one window's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageRecord {
    /// Window start, UTC epoch ms (inclusive).
    pub window_start_ms: i64,
    /// Window end, UTC epoch ms (exclusive).
    pub window_end_ms: i64,
    /// REALTIME segments read.
    pub input_segments: Vec<String>,
    /// OFFLINE segments written.
    pub output_segments: Vec<String>,
    /// The task and attempt that produced them.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
}

/// State of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Published, waiting for a minion.
    Pending,
    /// Claimed by a minion (see the claim key).
    Running,
    /// Committed.
    Succeeded,
    /// Gave up after the last attempt.
    Failed,
}

impl TaskState {
    /// Pinot-style upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Running => "RUNNING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::Failed => "FAILED",
        }
    }
}

/// The work for one window of one table, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// `<raw>__<windowStartMs>__<createdMs>`.
    pub id: String,
    /// Raw table name.
    pub table: String,
    /// Window start, UTC epoch ms (inclusive).
    pub window_start_ms: i64,
    /// Window end, UTC epoch ms (exclusive).
    pub window_end_ms: i64,
    /// Empty windows skipped between the watermark and this window; the
    /// commit persists the skip by moving the watermark past them.
    pub skipped_windows: u64,
    /// The REALTIME segments overlapping the window.
    pub inputs: Vec<SegmentMeta>,
    /// Snapshot of the table config at planning.
    pub table_config: Value,
    /// Snapshot of the schema at planning.
    pub schema: Value,
    /// Current state.
    pub state: TaskState,
    /// Current attempt (0 before the first claim).
    pub attempt: u32,
    /// Minion of the current attempt.
    pub minion: String,
    /// Created, UTC epoch ms.
    pub created_ms: i64,
    /// Current attempt claimed, UTC epoch ms.
    pub started_ms: i64,
    /// Finished (committed or failed for good), UTC epoch ms.
    pub finished_ms: i64,
    /// Errors of failed attempts, oldest first (`attempt N: message`).
    pub errors: Vec<String>,
    /// What planned it: `scheduled` (the planner's tick) or `manual` (run now).
    #[serde(default = "default_trigger")]
    pub trigger: String,
    /// Rows in the window read from the inputs.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Input bytes read.
    pub bytes_in: u64,
    /// Output bytes written.
    pub bytes_out: u64,
    /// OFFLINE segments committed.
    pub output_segments: Vec<String>,
    /// Attempts allowed per round (`maxAttemptsPerTask`, resolved at planning).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// An attempt running longer than this is cancelled (`timeoutMs`), ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: i64,
    /// A PENDING task is not claimed before this time (backoff between attempts), UTC epoch ms.
    #[serde(default)]
    pub not_before_ms: i64,
    /// Attempt number at the start of the current round; a round allows `max_attempts`.
    #[serde(default)]
    pub round_start_attempt: u32,
    /// Rounds that ended FAILED.
    #[serde(default)]
    pub failed_rounds: u32,
    /// A FAILED task is re-armed for a new round at this time (0: never), UTC epoch ms.
    #[serde(default)]
    pub retry_at_ms: i64,
}

fn default_trigger() -> String {
    "scheduled".into()
}

fn default_max_attempts() -> u32 {
    3
}

fn default_timeout_ms() -> i64 {
    3_600_000
}

impl TaskRecord {
    /// Attempts made in the current round.
    pub fn attempts_in_round(&self) -> u32 {
        self.attempt.saturating_sub(self.round_start_attempt)
    }

    /// Whether a minion may claim it at `now_ms` (given whether a claim key exists).
    pub fn claimable(&self, now_ms: i64, claimed: bool) -> bool {
        let open = match self.state {
            TaskState::Pending => self.not_before_ms <= now_ms,
            TaskState::Running => !claimed,
            _ => false,
        };
        open && !claimed && self.attempts_in_round() < self.max_attempts
    }
}

/// Backoff before attempt `n + 1` after `n` failed attempts in a round:
/// 1 s, 2 s, 4 s, ... capped at 30 s, ms.
pub fn attempt_backoff_ms(failed_attempts: u32) -> i64 {
    (1_000i64 << failed_attempts.saturating_sub(1).min(5)).min(30_000)
}

/// Backoff before a FAILED task's next round after `rounds` failed rounds:
/// 30 s, 60 s, ... capped at 10 min, ms.
pub fn round_backoff_ms(rounds: u32) -> i64 {
    (30_000i64 << rounds.saturating_sub(1).min(5)).min(600_000)
}

/// A minion's claim on a task, attached to the minion's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    /// Minion id.
    pub minion_id: String,
    /// Attempt number this claim started.
    pub attempt: u32,
    /// The minion's lease.
    pub lease: i64,
    /// Claim time, UTC epoch ms.
    pub claimed_ms: i64,
}

/// A live minion, attached to its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinionRecord {
    /// Minion id.
    pub id: String,
    /// gRPC address of its `MinionService`.
    pub addr: String,
    /// Task slots.
    pub slots: u32,
    /// Start time, UTC epoch ms.
    pub started_ms: i64,
}

/// The elected controller, attached to its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderRecord {
    /// Controller id.
    pub id: String,
    /// gRPC address (`http://host:port`).
    pub addr: String,
    /// Since, UTC epoch ms.
    pub since_ms: i64,
}

/// Builds r2o's keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Encodes a window start so that keys sort in time order (negative too).
fn sortable_ms(ms: i64) -> String {
    format!("{:020}", (ms as i128 - i64::MIN as i128) as u64)
}

impl Keys {
    /// Keys under `prefix` (e.g. `/r2o`; a trailing `/` is dropped).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_string() }
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `tables/<raw>`.
    pub fn table(&self, raw: &str) -> String {
        format!("{}/tables/{raw}", self.prefix)
    }
    /// `tables/`.
    pub fn tables(&self) -> String {
        format!("{}/tables/", self.prefix)
    }
    /// `segments/<table with type>/<segment>`.
    pub fn segment(&self, typed_table: &str, segment: &str) -> String {
        format!("{}/segments/{typed_table}/{segment}", self.prefix)
    }
    /// `segments/<table with type>/`.
    pub fn segments(&self, typed_table: &str) -> String {
        format!("{}/segments/{typed_table}/", self.prefix)
    }
    /// `watermarks/<raw>`.
    pub fn watermark(&self, raw: &str) -> String {
        format!("{}/watermarks/{raw}", self.prefix)
    }
    /// `lineage/<raw>/<sortable window start>`.
    pub fn lineage(&self, raw: &str, window_start_ms: i64) -> String {
        format!("{}/lineage/{raw}/{}", self.prefix, sortable_ms(window_start_ms))
    }
    /// `lineage/<raw>/`.
    pub fn lineages(&self, raw: &str) -> String {
        format!("{}/lineage/{raw}/", self.prefix)
    }
    /// `tasks/active/<task>`.
    pub fn active_task(&self, task: &str) -> String {
        format!("{}/tasks/active/{task}", self.prefix)
    }
    /// `tasks/active/`.
    pub fn active_tasks(&self) -> String {
        format!("{}/tasks/active/", self.prefix)
    }
    /// `tasks/inflight/<raw>`.
    pub fn inflight(&self, raw: &str) -> String {
        format!("{}/tasks/inflight/{raw}", self.prefix)
    }
    /// `tasks/claims/<task>`.
    pub fn claim(&self, task: &str) -> String {
        format!("{}/tasks/claims/{task}", self.prefix)
    }
    /// `tasks/claims/`.
    pub fn claims(&self) -> String {
        format!("{}/tasks/claims/", self.prefix)
    }
    /// `history/<raw>/<task>`.
    pub fn history(&self, raw: &str, task: &str) -> String {
        format!("{}/history/{raw}/{task}", self.prefix)
    }
    /// `history/<raw>/`.
    pub fn histories(&self, raw: &str) -> String {
        format!("{}/history/{raw}/", self.prefix)
    }
    /// `minions/<id>`.
    pub fn minion(&self, id: &str) -> String {
        format!("{}/minions/{id}", self.prefix)
    }
    /// `minions/`.
    pub fn minions(&self) -> String {
        format!("{}/minions/", self.prefix)
    }
    /// `election/leader`.
    pub fn leader(&self) -> String {
        format!("{}/election/leader", self.prefix)
    }
}

/// Encodes a record as JSON bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("r2o records always serialize")
}

/// Decodes a stored record, naming the key on failure.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| Error::Codec { key: kv.key.clone(), message: e.to_string() })
}

/// Reads and decodes one record with its key-value (for revisions).
pub async fn get_record<T: DeserializeOwned>(kv: &Kv, key: &str) -> Result<Option<(T, KeyValue)>> {
    match kv.get(key).await? {
        None => Ok(None),
        Some(entry) => Ok(Some((decode(&entry)?, entry))),
    }
}

/// Reads and decodes every record under a prefix.
pub async fn range_records<T: DeserializeOwned>(kv: &Kv, prefix: &str) -> Result<Vec<(T, KeyValue)>> {
    kv.range(prefix).await?.into_iter().map(|entry| Ok((decode(&entry)?, entry))).collect()
}

/// Current UTC time in epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_grow_and_cap() {
        assert_eq!(
            (1..=8).map(attempt_backoff_ms).collect::<Vec<_>>(),
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(round_backoff_ms(1), 30_000);
        assert_eq!(round_backoff_ms(2), 60_000);
        assert_eq!(round_backoff_ms(30), 600_000);
    }

    #[test]
    fn claimable_respects_state_backoff_claim_and_round() {
        let mut t: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "t__0__1", "table": "t", "windowStartMs": 0, "windowEndMs": 1, "skippedWindows": 0, "inputs": [],
            "tableConfig": {}, "schema": {}, "state": "PENDING", "attempt": 0, "minion": "", "createdMs": 0,
            "startedMs": 0, "finishedMs": 0, "errors": [], "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0,
            "outputSegments": []
        }))
        .unwrap();
        assert_eq!(
            (t.max_attempts, t.timeout_ms),
            (3, 3_600_000),
            "defaults for records written before the policy fields"
        );
        assert!(t.claimable(0, false));
        assert!(!t.claimable(0, true), "a claimed task is not claimable");
        t.not_before_ms = 10;
        assert!(!t.claimable(9, false) && t.claimable(10, false), "backoff between attempts");
        t.state = TaskState::Running;
        t.attempt = 2;
        assert!(t.claimable(0, false), "a RUNNING task whose claim vanished is claimable again");
        t.attempt = 3;
        assert!(!t.claimable(100, false), "the round's attempts are used up");
        t.round_start_attempt = 3;
        assert!(t.claimable(100, false), "a new round allows new attempts");
        t.state = TaskState::Failed;
        assert!(!t.claimable(100, false));
    }

    #[test]
    fn lineage_keys_sort_in_time_order() {
        let k = Keys::new("/r2o/");
        let mut v = [5i64, -3, 0, i64::MIN, i64::MAX, -86_400_000];
        let mut keys: Vec<String> = v.iter().map(|t| k.lineage("t", *t)).collect();
        keys.sort();
        v.sort();
        assert_eq!(keys, v.iter().map(|t| k.lineage("t", *t)).collect::<Vec<_>>());
        assert!(k.table("t").starts_with("/r2o/tables/"));
    }
}
