//! r2o's records in etcd and their keys. Every record is JSON. The keyspace
//! (under a configurable prefix, default `/r2o`):
//!
//! | key | record | writer |
//! | --- | --- | --- |
//! | `cluster` | [`ClusterRecord`]: the install's id and store namespace | first process to start |
//! | `tables/<raw>` | [`TableRecord`] | admin |
//! | `segments/<raw>_REALTIME/<segment>` | [`SegmentMeta`] | admin / ingest |
//! | `segmarks/<raw>` | revision marker, rewritten with every REALTIME change | admin / ingest |
//! | `watermarks/<raw>` | [`WatermarkRecord`] | controller commit only |
//! | `lineage/<raw>/<window start>` | [`LineageRecord`] of a committed task | controller commit only |
//! | `manifests/<raw>/<task>/a<attempt>/<n>` | [`chunks`] of OFFLINE [`SegmentMeta`] | controller, before a commit |
//! | `inputs/<raw>/<task>/<n>` | [`chunks`] of a task's REALTIME inputs | controller, before a publish |
//! | `tasks/active/<task>` | [`TaskRecord`] | controller (publish, fail), minion (claim) |
//! | `tasks/frontier/<raw>` | [`FrontierRecord`]: where the next task of the table starts | controller (publish, supersede, reset) |
//! | `tasks/epoch/<raw>` | revision marker, rewritten when planned tasks are abandoned | controller (supersede, reset) |
//! | `tasks/claims/<task>` | [`ClaimRecord`], on the minion's lease | minion |
//! | `history/<raw>/<created>/<task>` | [`TaskRecord`] of a finished task | controller (pruned by age and count) |
//! | `minions/<id>` | [`MinionRecord`], on the minion's lease | minion |
//! | `election/leader` | [`LeaderRecord`], on the leader's lease | controller |
//!
//! Everything that can grow with a table's size (a task's inputs, a
//! commit's outputs) lives in [`chunks`] of at most [`CHUNK_BYTES`], written
//! before the transaction that makes them visible, so every transaction
//! stays within etcd's limits whatever the table's size.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::kv::{Compare, KeyValue, Kv, Op};

/// Status of a REALTIME segment (`Done` by default, as every OFFLINE one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SegmentStatus {
    /// Still growing on a realtime server; its end time is not final.
    Consuming,
    /// Completed and immutable.
    #[default]
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

/// Metadata of one segment (one Parquet object). `Default` is an empty
/// DONE segment with no name, for building records field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// REALTIME only: the last segment of its stream partition; the stream
    /// has ended, so this segment does not hold its last window back
    /// (Pinot's last-completed-segment rule, see the planner).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end_of_stream: bool,
    /// REALTIME only: registered when the watermark had already passed its
    /// start, so its rows before that watermark never moved to OFFLINE (set
    /// by the registration, in the transaction that checks the watermark).
    /// Retention never deletes a late segment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// REALTIME, late only: the watermark when it was registered, UTC epoch
    /// ms; its rows before it belong to committed windows, which a late-data
    /// run (`lateDataPolicy`) redoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_before_ms: Option<i64>,
    /// OFFLINE only: the start of the window the segment was written for,
    /// UTC epoch ms (a late-data run replaces a window's segments by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start_ms: Option<i64>,
    /// REALTIME only: rows whose time is NULL (never moved; counted by the
    /// window holding the segment's start), rows; read at registration.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub null_time_rows: u64,
    /// REALTIME, discovered files only (registered in place from a
    /// `batchConfigMaps` source): the file's version when it was registered
    /// (its ETag, else its modification time in ms), compared with every
    /// later listing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_version: String,
    /// Why the segment's rows are not moved: a discovered file that cannot
    /// be read, or one that changed after registration. Empty for a healthy
    /// segment; a segment with an error is never planned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The table's watermark when [`SegmentMeta::error`] was set after
    /// registration (UTC epoch ms): rows before it had moved already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_watermark_ms: Option<i64>,
    /// REALTIME: when the controller registered the segment as DONE, or
    /// sealed it, UTC epoch ms by the controller's clock (`None`: CONSUMING,
    /// or written before the field existed). A commit's window freshness
    /// (`r2o_window_freshness_seconds`) is measured from its inputs' latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ms: Option<i64>,
    /// REALTIME, as read: the etcd create revision of the segment's record
    /// (0: not read from etcd). Not stored; set by [`read_realtime`]. Late
    /// data is decided by it: a window the flow committed at a later
    /// revision read the segment.
    #[serde(skip)]
    pub registered_revision: i64,
}

/// A table's REALTIME segments in name order, each with its
/// [`SegmentMeta::registered_revision`] (one paged read), and the store
/// revision of the first page: every change after it is in a later read's
/// [`crate::kv::KvBackend::range_changed`] from the next revision on (the
/// pages after the first may already hold some of them).
///
/// # Errors
/// etcd errors; a record that does not decode.
pub async fn read_realtime(kv: &Kv, keys: &Keys, raw: &str) -> Result<(Vec<SegmentMeta>, i64)> {
    // decoded page by page: the raw values of a table of 100,000s of
    // segments are never all held at once beside the decoded list
    let mut out = Vec::new();
    let revision = for_each_entry(kv, &keys.segments(&format!("{raw}_REALTIME")), |entry| {
        out.push(decode_realtime(entry)?);
        Ok(())
    })
    .await?;
    out.shrink_to_fit();
    Ok((out, revision))
}

/// A REALTIME segment's record with its [`SegmentMeta::registered_revision`].
///
/// # Errors
/// [`Error::Meta`] when the record does not decode.
pub fn decode_realtime(entry: &KeyValue) -> Result<SegmentMeta> {
    let mut s: SegmentMeta = decode(entry)?;
    s.registered_revision = entry.create_revision;
    Ok(s)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The value of a table's segment marker (`segmarks/<raw>`), which every
/// transaction that changes the table's REALTIME segments rewrites: the
/// names it put and deleted. A reader whose copy is one marker version
/// behind applies exactly these (issue 21: cost that follows change); one
/// further behind, or a marker written before this record existed (a bare
/// timestamp), reads what changed by revision instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentMarker {
    /// When the change was made, UTC epoch ms.
    pub changed_ms: i64,
    /// Segments written (registered or rewritten), by name.
    #[serde(default)]
    pub put: Vec<String>,
    /// Segments deleted, by name.
    #[serde(default)]
    pub deleted: Vec<String>,
}

/// What became of a REALTIME segment's rows (Ocient's per-file load status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoadStatus {
    /// Some rows are not yet in committed windows (or still owed to one by a
    /// late-data run).
    Pending,
    /// Every row is in a committed window.
    Loaded,
    /// Every row that could move is in a committed window; some could not
    /// (NULL time, or late under `lateDataPolicy: ignore`).
    LoadedWithErrors,
    /// No row moves: the segment is empty, every time is NULL, or it is late
    /// under `lateDataPolicy: ignore` with all its rows below the watermark.
    Skipped,
}

impl LoadStatus {
    /// Every status, in display order.
    pub const ALL: [LoadStatus; 4] =
        [LoadStatus::Pending, LoadStatus::Loaded, LoadStatus::LoadedWithErrors, LoadStatus::Skipped];

    /// `PENDING`, `LOADED`, `LOADED_WITH_ERRORS` or `SKIPPED`.
    pub fn name(self) -> &'static str {
        match self {
            LoadStatus::Pending => "PENDING",
            LoadStatus::Loaded => "LOADED",
            LoadStatus::LoadedWithErrors => "LOADED_WITH_ERRORS",
            LoadStatus::Skipped => "SKIPPED",
        }
    }

    /// Parses a [`LoadStatus::name`] (any case).
    pub fn parse(text: &str) -> Option<LoadStatus> {
        LoadStatus::ALL.into_iter().find(|s| s.name().eq_ignore_ascii_case(text.trim()))
    }
}

/// The load status of REALTIME segment `s` and why, given the table's
/// watermark (`None`: no window committed yet, UTC epoch ms), whether a
/// late-data run still owes windows some of its rows (`owes_late`), and
/// whether late rows are ignored (`lateDataPolicy: ignore`). Pure.
///
/// A segment's timed rows are all in committed windows once its end time
/// is below the watermark (windows commit in order); its NULL-time rows
/// never move.
pub fn load_status(
    s: &SegmentMeta,
    watermark_ms: Option<i64>,
    owes_late: bool,
    late_ignored: bool,
) -> (LoadStatus, String) {
    if !s.error.is_empty() {
        // a file refused after (some of) its rows moved keeps them in OFFLINE
        let at = s.error_watermark_ms.filter(|_| s.total_docs > 0);
        return match at {
            Some(w) if s.end_time_ms < w => {
                (LoadStatus::LoadedWithErrors, format!("{} (its registered rows had moved)", s.error))
            }
            Some(w) if s.start_time_ms < w => (
                LoadStatus::LoadedWithErrors,
                format!("{} (its rows before {} had moved)", s.error, crate::window::format_utc(w)),
            ),
            _ => (LoadStatus::Skipped, s.error.clone()),
        };
    }
    if s.total_docs == 0 {
        return (LoadStatus::Skipped, "no rows".into());
    }
    if s.null_time_rows >= s.total_docs {
        return (LoadStatus::Skipped, format!("every row ({}) has a NULL time", s.total_docs));
    }
    let ignored_before = s.late_before_ms.filter(|_| s.late && late_ignored);
    if let Some(before) = ignored_before {
        if s.status == SegmentStatus::Done && s.end_time_ms < before {
            return (LoadStatus::Skipped, "late (lateDataPolicy ignore): every row is below the watermark".into());
        }
    }
    let moved = s.status == SegmentStatus::Done && watermark_ms.is_some_and(|w| s.end_time_ms < w) && !owes_late;
    if !moved {
        return (LoadStatus::Pending, String::new());
    }
    let mut errors = vec![];
    if s.null_time_rows > 0 {
        errors.push(format!("{} rows with a NULL time", s.null_time_rows));
    }
    if ignored_before.is_some() {
        errors.push("late rows below the watermark ignored (lateDataPolicy ignore)".to_string());
    }
    if errors.is_empty() {
        (LoadStatus::Loaded, String::new())
    } else {
        (LoadStatus::LoadedWithErrors, errors.join("; "))
    }
}

/// A late-data run: one window below the watermark recomputed from all its
/// inputs (`rematerialize`) or given extra segments (`append`) because late
/// REALTIME segments arrived for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LateRun {
    /// `rematerialize` or `append`.
    pub policy: String,
    /// The late segments whose rows in the window this run moves.
    pub segments: Vec<String>,
}

/// What retention has deleted of one table's REALTIME segments (their rows
/// had all moved to OFFLINE). Its presence makes `reset --mode flush`
/// refuse: a rebuild from REALTIME would miss those rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRecord {
    /// REALTIME segments deleted.
    pub deleted_segments: u64,
    /// Their rows.
    pub deleted_rows: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// The latest end time among them, UTC epoch ms (inclusive).
    pub deleted_until_ms: i64,
    /// When retention last deleted, UTC epoch ms.
    pub updated_ms: i64,
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
    /// Config version: 1 when added, one more with each `r2o table update`
    /// (0 in records written before versions existed: read as 1).
    #[serde(default)]
    pub version: u32,
    /// Last `r2o table update`, UTC epoch ms (0: never updated).
    #[serde(default)]
    pub updated_ms: i64,
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
    /// Rows of committed inputs whose time value is NULL: they belong to no
    /// window and are not moved, in total.
    #[serde(default)]
    pub rows_null_time: u64,
    /// Last update, UTC epoch ms.
    pub updated_ms: i64,
}

/// What one window of a task read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowStats {
    /// Window start, UTC epoch ms (inclusive).
    pub start_ms: i64,
    /// Window end, UTC epoch ms (exclusive).
    pub end_ms: i64,
    /// Rows of the inputs inside the window.
    pub rows_in: u64,
    /// Rows written for the window.
    pub rows_out: u64,
    /// OFFLINE segments written for the window.
    pub outputs: u64,
}

/// What one committed task moved: its windows (each with its own OFFLINE
/// segments, named after the window), where its inputs and outputs are
/// listed, and totals. The OFFLINE segments a window holds are the manifest
/// this record names; nothing else is published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineageRecord {
    /// Start of the first window, UTC epoch ms (inclusive).
    pub window_start_ms: i64,
    /// End of the last window, UTC epoch ms (exclusive): the watermark after the commit.
    pub window_end_ms: i64,
    /// Where the task's range starts (the previous watermark), UTC epoch ms;
    /// `None` only in records written before the field existed, which cover
    /// their windows only (see [`LineageRecord::range_start_ms`]).
    #[serde(default)]
    pub from_ms: Option<i64>,
    /// Empty windows skipped in `[from_ms, window_end_ms)` (persisted by this commit).
    #[serde(default)]
    pub skipped_windows: u64,
    /// The windows with data, in order, with what each read and wrote.
    #[serde(default)]
    pub windows: Vec<WindowStats>,
    /// The task and attempt that produced it; its inputs are the chunks under
    /// `inputs/<raw>/<task>/`, its outputs those under
    /// `manifests/<raw>/<task>/a<attempt>/`.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// REALTIME segments read.
    pub input_count: u64,
    /// OFFLINE segments written.
    pub output_count: u64,
    /// Manifest chunks holding the OFFLINE segments.
    pub output_chunks: u32,
    /// Rows read inside the window.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Commit time, UTC epoch ms.
    pub committed_ms: i64,
    /// A late-data run's commit: its one window's segments replace
    /// (`rematerialize`) or join (`append`) those committed before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<LateRun>,
}

/// An optional wall-clock time, UTC epoch ms, where legacy records wrote 0
/// (or nothing) for "none". Only for times the controller takes from its
/// clock, which are never 1970-01-01T00:00Z; never for data times.
pub(crate) fn wall_clock_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.filter(|&t| t != 0))
}

impl LineageRecord {
    /// Where the committed range starts, UTC epoch ms: `from_ms`, or the
    /// first window's start for records written before `from_ms` existed.
    pub fn range_start_ms(&self) -> i64 {
        self.from_ms.unwrap_or(self.window_start_ms)
    }
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
    /// Its outputs are validated and listed in a manifest; it commits as
    /// soon as every task before it has (commits go in window order).
    Staged,
    /// Dropped before commit because what it was planned from changed (a
    /// segment registered or sealed in its range, the watermark moved, a
    /// reset); the window is planned again from current metadata.
    Superseded,
}

impl TaskState {
    /// Pinot-style upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Running => "RUNNING",
            TaskState::Succeeded => "SUCCEEDED",
            TaskState::Failed => "FAILED",
            TaskState::Staged => "STAGED",
            TaskState::Superseded => "SUPERSEDED",
        }
    }
}

/// A task's id: `<raw>__<windowStartMs>__<createdMs>`. Parsed from the
/// right, so raw table names may themselves contain `__`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Raw table name.
    pub table: String,
    /// Start of its (first) window, UTC epoch ms.
    pub window_start_ms: i64,
    /// When it was planned, UTC epoch ms (makes ids unique per window).
    pub created_ms: i64,
}

impl TaskId {
    /// A new id.
    pub fn new(table: &str, window_start_ms: i64, created_ms: i64) -> TaskId {
        TaskId { table: table.to_string(), window_start_ms, created_ms }
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}__{}__{}", self.table, self.window_start_ms, self.created_ms)
    }
}

impl std::str::FromStr for TaskId {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<TaskId, String> {
        let bad = || format!("task id '{s}': expected <table>__<windowStartMs>__<createdMs>");
        let mut parts = s.rsplitn(3, "__");
        let created = parts.next().and_then(|p| p.parse::<i64>().ok()).ok_or_else(bad)?;
        let start = parts.next().and_then(|p| p.parse::<i64>().ok()).ok_or_else(bad)?;
        let table = parts.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
        Ok(TaskId::new(table, start, created))
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<TaskId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The work for a run of consecutive windows of one table, and what became
/// of it. Its input segments are stored beside it in [`chunks`]
/// (`inputs/<raw>/<task>/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// Raw table name.
    pub table: String,
    /// Where the task's range starts: the end of the task before it (or
    /// the cold start), UTC epoch ms. It commits when the watermark is here.
    #[serde(default)]
    pub from_ms: i64,
    /// Start of its first window, UTC epoch ms (inclusive).
    pub window_start_ms: i64,
    /// End of its last window, UTC epoch ms (exclusive).
    pub window_end_ms: i64,
    /// The windows with data it runs, in order (each `bucketTimePeriod` long).
    #[serde(default)]
    pub windows: Vec<crate::window::Window>,
    /// Empty windows inside `[from_ms, window_end_ms)`, skipped; the commit
    /// persists the skip by moving the watermark past them.
    pub skipped_windows: u64,
    /// `mod_revision` of the table's epoch key when the task was planned: a
    /// task of an older epoch (abandoned by a supersede or reset) never commits.
    #[serde(default)]
    pub epoch_revision: i64,
    /// REALTIME segments overlapping the window (listed in its input chunks).
    pub input_count: u64,
    /// Input chunks under `inputs/<raw>/<task>/`.
    pub input_chunks: u32,
    /// Rows registered for the input segments (an upper bound of the rows
    /// an attempt can read).
    pub input_rows: u64,
    /// Bytes of the input segments.
    pub input_bytes: u64,
    /// `mod_revision` of the table's segment marker when the task was
    /// planned: a commit that finds it changed re-checks the inputs.
    pub segments_revision: i64,
    /// `mod_revision` of the table's record its config snapshot was taken
    /// at (0: not recorded): publishing checks it, so a planning pass that
    /// read the table before a `table update` publishes nothing with the old
    /// config.
    #[serde(default)]
    pub table_revision: i64,
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
    /// Finished (committed, failed for good or superseded), UTC epoch ms.
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
    /// Rows of inputs first seen by this window whose time value is NULL.
    #[serde(default)]
    pub rows_null_time: u64,
    /// Rows of its windows the table's `offloadPredicate` did not keep (not moved).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows_filtered: u64,
    /// OFFLINE segments committed.
    #[serde(default)]
    pub output_count: u64,
    /// STAGED: the attempt whose outputs are staged and will be committed.
    #[serde(default)]
    pub staged_attempt: u32,
    /// STAGED: manifest chunks of the staged outputs.
    #[serde(default)]
    pub staged_chunks: u32,
    /// STAGED or committed: per window, what was read and written.
    #[serde(default)]
    pub window_stats: Vec<WindowStats>,
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
    /// A FAILED task is re-armed for a new round at this time, UTC epoch ms
    /// (`None`: not re-armed by itself). Records written before issue 21
    /// stored 0 for `None`; a wall-clock time is never 0, so 0 reads as `None`.
    #[serde(default, deserialize_with = "wall_clock_or_none")]
    pub retry_at_ms: Option<i64>,
    /// This task's index among its window's sub-tasks, `0..sub_tasks`.
    #[serde(default)]
    pub sub_task: u32,
    /// Sub-tasks its one window was split into (0 or 1: not split; Pinot's
    /// `maxNumRecordsPerTask`): rollup and dedup windows by a hash of the
    /// merge key (each sub-task reads every input and keeps its share),
    /// concat windows by input. The window commits once, when every
    /// sub-task is STAGED, in one transaction.
    #[serde(default)]
    pub sub_tasks: u32,
    /// Sub-tasks: the id of the window's first sub-task, which names the group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The task whose input list this one reads (a split window's list is
    /// stored once, under its first sub-task); empty: its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inputs_of: String,
    /// A late-data run of one committed window (not in the watermark's
    /// order: it commits when it is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<LateRun>,
    /// A sub-task split by input reads the inputs `input_from..input_to`
    /// (indexes into that list); `0..0`: all of them.
    #[serde(default)]
    pub input_from: u64,
    /// See `input_from`.
    #[serde(default)]
    pub input_to: u64,
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
    /// The id whose `inputs/` list this task reads.
    pub fn inputs_id(&self) -> TaskId {
        self.inputs_of.parse().unwrap_or_else(|_| self.id.clone())
    }

    /// The inputs this task reads out of its input list (see `input_from`).
    pub fn input_slice<'a>(&self, all: &'a [SegmentMeta]) -> &'a [SegmentMeta] {
        if self.input_to == 0 {
            return all;
        }
        let end = (self.input_to as usize).min(all.len());
        &all[(self.input_from as usize).min(end)..end]
    }

    /// Why `all` (the task's input list as read now; a sub-task's is its
    /// group's) is not the list it was published with, or `None` when it
    /// is: the slice it reads ([`TaskRecord::input_slice`]) must hold the
    /// `input_count` inputs recorded at publish. A list that lost chunks can
    /// never be read whole again: the leader plans the task's windows again
    /// and a minion refuses to run it, rather than commit the windows with
    /// the rows still found (a published task's list deleted by a cleanup
    /// once committed a window with no rows). Pure.
    pub fn inputs_lost(&self, all: &[SegmentMeta]) -> Option<String> {
        let held = self.input_slice(all).len();
        (held as u64 != self.input_count).then(|| {
            format!(
                "its input list holds {held} of the {} inputs it was published with (chunks lost); the windows are planned again",
                self.input_count
            )
        })
    }

    /// Whether it is one sub-task of a split window.
    pub fn is_sub_task(&self) -> bool {
        self.sub_tasks > 1
    }

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

    /// Whether the task still has work or a commit ahead of it.
    pub fn is_open(&self) -> bool {
        matches!(self.state, TaskState::Pending | TaskState::Running | TaskState::Staged | TaskState::Failed)
    }
}

/// Where a table's next task starts: the end of the last published one.
///
/// Stored as `{"nextMs": .., "narrowingUntilMs": ..}`; records written
/// before issue 21 carry `narrowUntilMs` with 0 for "not narrowing" (a
/// sentinel that made every task before 1970 a one-window task) and are
/// read with 0 as `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "FrontierWire")]
pub struct FrontierRecord {
    /// Start of the next task's range, UTC epoch ms.
    pub next_ms: i64,
    /// Until the frontier passes this time, tasks are planned one window at
    /// a time (set when a task of many windows failed, to isolate the
    /// failing window), UTC epoch ms; `None`: not narrowing. Any `i64` is a
    /// time, negative ones (before 1970) included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowing_until_ms: Option<i64>,
}

/// [`FrontierRecord`] as stored, current and legacy keys.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FrontierWire {
    next_ms: i64,
    #[serde(default)]
    narrowing_until_ms: Option<i64>,
    /// Legacy: 0 meant "not narrowing".
    #[serde(default)]
    narrow_until_ms: i64,
}

impl From<FrontierWire> for FrontierRecord {
    fn from(w: FrontierWire) -> FrontierRecord {
        let legacy = (w.narrow_until_ms != 0).then_some(w.narrow_until_ms);
        FrontierRecord { next_ms: w.next_ms, narrowing_until_ms: w.narrowing_until_ms.or(legacy) }
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
    /// The machine it runs on (minions with the same host share its cores
    /// and disk); empty in records of older minions, which count as a host
    /// each.
    #[serde(default)]
    pub host: String,
    /// Its `minionInstanceTag` (`--tag`): it claims only the tasks of tables
    /// with this tag; empty in records of older minions (untagged).
    #[serde(default)]
    pub tag: String,
    /// It is draining (SIGTERM): it claims nothing more and finishes or
    /// hands back what it runs, then its record goes with its lease; its
    /// slots no longer count in the pool (false in older records).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

impl MinionRecord {
    /// Its tag, Pinot's `minion_untagged` for a record without one.
    pub fn tag_or_default(&self) -> &str {
        if self.tag.is_empty() {
            crate::config::DEFAULT_MINION_TAG
        } else {
            &self.tag
        }
    }
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

/// A bearer token for people and scripts (`r2o token create`). Only the
/// SHA-256 of the token is stored; revoking deletes the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The id in the token (`r2o_<id>_<secret>`), 12 hex digits.
    pub id: String,
    /// Whose it is (free text: a person, a script).
    pub name: String,
    /// What it may do.
    pub role: crate::access::Role,
    /// [`crate::access::token_hash`] of the token.
    pub sha256: String,
    /// Created, UTC epoch ms.
    pub created_ms: i64,
    /// Who created it (an audit name).
    pub created_by: String,
}

/// One admin or operator action, as recorded (who, what, when, which table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When, UTC epoch ms (the controller's clock).
    pub at_ms: i64,
    /// Who (`cert:<name>`, `token:<name> (<id>)`, `insecure`).
    pub who: String,
    /// Their role.
    pub role: crate::access::Role,
    /// The call (`DeleteTable`).
    pub call: String,
    /// The table, when the call names one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table: String,
    /// What was asked beyond the table (`purge`, `mode FLUSH`, `dry run`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// `ok`, or the error the call answered.
    pub outcome: String,
}

/// The install: created once by the first process to start against an
/// empty prefix. Its id names the install's own namespace in the segment
/// store, so two installs (two prefixes, or two etcd clusters) sharing one
/// bucket never see, and never delete, each other's objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    /// Random id, 16 hex digits.
    pub id: String,
    /// Creation time, UTC epoch ms.
    pub created_ms: i64,
}

impl ClusterRecord {
    /// The install's root in the segment store: `<prefix without slashes>-<id>/`,
    /// e.g. `r2o-3f2a9c0d11b7e845/`. Everything r2o writes is under it.
    pub fn store_namespace(&self, keys: &Keys) -> String {
        let name: String = keys
            .prefix()
            .trim_matches('/')
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .collect();
        let name = if name.is_empty() { "r2o".to_string() } else { name };
        format!("{name}-{}/", self.id)
    }
}

/// Reads the install's record, creating it when absent (any process may;
/// the first create wins and everyone reads the same record back).
pub async fn ensure_cluster(kv: &Kv, keys: &Keys) -> Result<ClusterRecord> {
    if let Some((c, _)) = get_record::<ClusterRecord>(kv, &keys.cluster()).await? {
        return Ok(c);
    }
    let fresh = ClusterRecord { id: format!("{:016x}", rand::random::<u64>()), created_ms: now_ms() };
    kv.txn(vec![Compare::CreateRevision(keys.cluster(), 0)], vec![Op::put(keys.cluster(), encode(&fresh))]).await?;
    get_record::<ClusterRecord>(kv, &keys.cluster())
        .await?
        .map(|(c, _)| c)
        .ok_or_else(|| Error::Meta("the cluster record vanished after it was written".into()))
}

/// Builds r2o's keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// Encodes epoch ms so that keys sort in time order (negative too).
pub fn sortable_ms(ms: i64) -> String {
    format!("{:020}", (ms as i128 - i64::MIN as i128) as u64)
}

/// Decodes [`sortable_ms`].
pub fn unsortable_ms(text: &str) -> Option<i64> {
    text.parse::<u64>().ok().map(|v| (v as i128 + i64::MIN as i128) as i64)
}

/// Whose planning a change of one etcd key can affect (see
/// [`Keys::touched`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// One table's state moved (its raw name).
    Table(String),
    /// Something every table's planning reads moved (the minion pool, the
    /// leader, a key this build does not know).
    All,
    /// Nothing planning reads (access tokens and audit, the cluster record).
    Nothing,
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
    /// Which table's planning a change of `key` can affect, from the key
    /// alone: the table named in it (`tables/<raw>`, `segments/<raw>_REALTIME/..`,
    /// `watermarks/<raw>`, `tasks/active/<task id>`, ...); [`Touched::All`]
    /// for `minions/`, the leader and anything unknown (the safe answer);
    /// [`Touched::Nothing`] for `access/`, `cluster` and `deltalog/`. Pure.
    pub fn touched(&self, key: &str) -> Touched {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix('/')) else {
            return Touched::Nothing; // another install's key
        };
        let (kind, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let first = tail.split('/').next().unwrap_or("");
        let table = |raw: &str| if raw.is_empty() { Touched::All } else { Touched::Table(raw.to_string()) };
        match kind {
            "tables" | "segmarks" | "schedules" | "retention" | "watermarks" | "lineage" | "inputs" | "manifests"
            | "history" => table(first),
            "segments" => table(first.strip_suffix("_REALTIME").or(first.strip_suffix("_OFFLINE")).unwrap_or(first)),
            "tasks" => {
                let (sub, name) = tail.split_once('/').unwrap_or((tail, ""));
                match sub {
                    "frontier" | "epoch" => table(name),
                    "active" | "claims" => name.parse::<TaskId>().map_or(Touched::All, |id| Touched::Table(id.table)),
                    _ => Touched::All,
                }
            }
            // (`deltalog/`: what the leader projected into a table's Delta log)
            "access" | "cluster" | "deltalog" => Touched::Nothing,
            _ => Touched::All,
        }
    }
    /// `cluster`.
    pub fn cluster(&self) -> String {
        format!("{}/cluster", self.prefix)
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
    /// `segments/`: every table's REALTIME segments.
    pub fn all_segments(&self) -> String {
        format!("{}/segments/", self.prefix)
    }
    /// `segmarks/<raw>`: rewritten in every transaction that changes the
    /// table's REALTIME segments, so one revision compare covers them all.
    pub fn segments_marker(&self, raw: &str) -> String {
        format!("{}/segmarks/{raw}", self.prefix)
    }
    /// `schedules/<raw>`: a scheduled table's runs
    /// ([`crate::schedule::ScheduleRecord`]).
    pub fn schedule(&self, raw: &str) -> String {
        format!("{}/schedules/{raw}", self.prefix)
    }
    /// `retention/<raw>`: what retention has deleted of the table's
    /// REALTIME segments ([`RetentionRecord`]).
    pub fn retention(&self, raw: &str) -> String {
        format!("{}/retention/{raw}", self.prefix)
    }
    /// `watermarks/<raw>`.
    pub fn watermark(&self, raw: &str) -> String {
        format!("{}/watermarks/{raw}", self.prefix)
    }
    /// `lineage/<raw>/<sortable window start>`.
    pub fn lineage(&self, raw: &str, window_start_ms: i64) -> String {
        format!("{}/lineage/{raw}/{}", self.prefix, sortable_ms(window_start_ms))
    }
    /// `lineage/<raw>/<sortable window start>-late-<sortable created>`: a
    /// late-data run's lineage, sorted after the window's first.
    pub fn late_lineage(&self, raw: &str, window_start_ms: i64, created_ms: i64) -> String {
        format!("{}/lineage/{raw}/{}-late-{}", self.prefix, sortable_ms(window_start_ms), sortable_ms(created_ms))
    }
    /// `lineage/<raw>/`.
    pub fn lineages(&self, raw: &str) -> String {
        format!("{}/lineage/{raw}/", self.prefix)
    }
    /// `lineage/`.
    pub fn all_lineage(&self) -> String {
        format!("{}/lineage/", self.prefix)
    }
    /// `inputs/<raw>/<task>/`: the task's input chunks.
    pub fn inputs(&self, task: &TaskId) -> String {
        format!("{}/inputs/{}/{task}/", self.prefix, task.table)
    }
    /// `inputs/<raw>/`.
    pub fn inputs_of_table(&self, raw: &str) -> String {
        format!("{}/inputs/{raw}/", self.prefix)
    }
    /// `inputs/`.
    pub fn all_inputs(&self) -> String {
        format!("{}/inputs/", self.prefix)
    }
    /// `manifests/<raw>/<task>/a<attempt>/`: an attempt's output chunks.
    pub fn manifest(&self, task: &TaskId, attempt: u32) -> String {
        format!("{}/manifests/{}/{task}/a{attempt}/", self.prefix, task.table)
    }
    /// `manifests/<raw>/`.
    pub fn manifests(&self, raw: &str) -> String {
        format!("{}/manifests/{raw}/", self.prefix)
    }
    /// `manifests/`.
    pub fn all_manifests(&self) -> String {
        format!("{}/manifests/", self.prefix)
    }
    /// `tasks/active/<task>`.
    pub fn active_task(&self, task: &TaskId) -> String {
        format!("{}/tasks/active/{task}", self.prefix)
    }
    /// `tasks/`: tasks, claims, frontiers and epochs (what a minion watches).
    pub fn tasks(&self) -> String {
        format!("{}/tasks/", self.prefix)
    }
    /// `tasks/active/`.
    pub fn active_tasks(&self) -> String {
        format!("{}/tasks/active/", self.prefix)
    }
    /// `tasks/frontier/<raw>`.
    pub fn frontier(&self, raw: &str) -> String {
        format!("{}/tasks/frontier/{raw}", self.prefix)
    }
    /// `tasks/epoch/<raw>`.
    pub fn epoch(&self, raw: &str) -> String {
        format!("{}/tasks/epoch/{raw}", self.prefix)
    }
    /// `tasks/claims/<task>`.
    pub fn claim(&self, task: &TaskId) -> String {
        format!("{}/tasks/claims/{task}", self.prefix)
    }
    /// `tasks/claims/`.
    pub fn claims(&self) -> String {
        format!("{}/tasks/claims/", self.prefix)
    }
    /// `history/<raw>/<sortable created>/<task>`: oldest first.
    pub fn history(&self, task: &TaskId) -> String {
        format!("{}/history/{}/{}/{task}", self.prefix, task.table, sortable_ms(task.created_ms))
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
    /// `access/tokens/<id>`.
    pub fn token(&self, id: &str) -> String {
        format!("{}/access/tokens/{id}", self.prefix)
    }
    /// `access/tokens/`.
    pub fn tokens(&self) -> String {
        format!("{}/access/tokens/", self.prefix)
    }
    /// `access/audit/<sortable at>/<nonce>`: oldest first.
    pub fn audit(&self, at_ms: i64, nonce: &str) -> String {
        format!("{}/access/audit/{}/{nonce}", self.prefix, sortable_ms(at_ms))
    }
    /// `access/audit/`.
    pub fn audits(&self) -> String {
        format!("{}/access/audit/", self.prefix)
    }
}

/// Largest chunk of a chunked list, bytes: small enough that a page of
/// chunks and any transaction that compares them stay within etcd's limits.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Most chunks one list may have: 1,024 chunks of [`CHUNK_BYTES`], i.e.
/// 256 MiB of metadata, about 700,000 segments in one task's input list.
/// A transaction compares only a list's first and last chunks (see
/// [`chunks::write_encoded`]), so this bounds etcd's storage, not a
/// transaction's size.
pub const MAX_CHUNKS: usize = 1024;

/// Lists too large for one etcd value, stored as numbered chunks
/// `<prefix>000000`, `<prefix>000001`, ... of at most [`CHUNK_BYTES`] each
/// (a JSON array per chunk).
pub mod chunks {
    use super::*;
    use futures::{StreamExt, TryStreamExt};

    /// The first bytes of a zstd frame: a chunk that starts with them is
    /// compressed JSON (a JSON chunk starts with `[`).
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

    /// Chunks of JSON shorter than this are stored as they are.
    const COMPRESS_FROM_BYTES: usize = 1024;

    /// zstd level for chunks: input lists and manifests are repetitive JSON
    /// (~10x smaller), written once and read a few times.
    const ZSTD_LEVEL: i32 = 3;

    /// Encodes `items` as JSON-array chunks of at most [`CHUNK_BYTES`] of
    /// JSON (an item larger than that gets a chunk of its own), each
    /// compressed with zstd when it is 1 KiB or more (issue 21: etcd's
    /// memory and write volume; a task's input list of 146,000 segments
    /// was 56 MB of JSON, ~6 MB compressed). An empty list is one empty
    /// chunk, so every list has at least one key. Read with [`decode_chunk`].
    pub fn encode_all<T: Serialize>(items: &[T]) -> Vec<Vec<u8>> {
        encode_json(items).into_iter().map(compress).collect()
    }

    fn compress(json: Vec<u8>) -> Vec<u8> {
        if json.len() < COMPRESS_FROM_BYTES {
            return json;
        }
        // (compression of bytes in memory fails only when out of memory)
        zstd::bulk::compress(&json, ZSTD_LEVEL).unwrap_or(json)
    }

    /// The items of one chunk, compressed ([`encode_all`]) or plain JSON
    /// (as written before chunks were compressed).
    ///
    /// # Errors
    /// [`Error::Codec`] naming the key for a chunk that does not decompress
    /// or decode.
    pub fn decode_chunk<T: DeserializeOwned>(entry: &KeyValue) -> Result<Vec<T>> {
        if !entry.value.starts_with(&ZSTD_MAGIC) {
            return decode(entry);
        }
        let json = zstd::stream::decode_all(entry.value.as_slice())
            .map_err(|e| Error::Codec { key: entry.key.clone(), message: format!("a compressed chunk: {e}") })?;
        serde_json::from_slice(&json).map_err(|e| Error::Codec { key: entry.key.clone(), message: e.to_string() })
    }

    fn encode_json<T: Serialize>(items: &[T]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut current: Vec<u8> = vec![b'['];
        for item in items {
            let bytes = encode(item);
            if current.len() > 1 && current.len() + bytes.len() + 2 > CHUNK_BYTES {
                current.push(b']');
                out.push(std::mem::replace(&mut current, vec![b'[']));
            }
            if current.len() > 1 {
                current.push(b',');
            }
            current.extend_from_slice(&bytes);
        }
        current.push(b']');
        out.push(current);
        out
    }

    /// Key of chunk `n` under `prefix`.
    pub fn key(prefix: &str, n: usize) -> String {
        format!("{prefix}{n:06}")
    }

    /// Writes `items` under `prefix`, one put per chunk, and returns the
    /// compares a transaction needs to be sure they are still there.
    ///
    /// # Errors
    /// [`Error::Limit`] for more than [`MAX_CHUNKS`] chunks; etcd errors.
    pub async fn write<T: Serialize>(kv: &Kv, prefix: &str, items: &[T]) -> Result<Vec<Compare>> {
        write_encoded(kv, prefix, items.len(), encode_all(items)).await
    }

    /// [`write`] for a list already encoded with [`encode_all`] (`items`
    /// counts its items, for the error), so a caller that needed the chunk
    /// count first does not encode twice.
    ///
    /// The compares cover the first and the last chunk only, whatever the
    /// list's length: every deletion of a chunked list is one
    /// `delete_prefix` (etcd applies it atomically), and chunks are written
    /// once (8 at a time), the compares returned only when every put has
    /// succeeded, so a list whose first and last chunks still have the
    /// revisions they were written with is whole.
    ///
    /// # Errors
    /// [`Error::Limit`] for more than [`MAX_CHUNKS`] chunks; etcd errors.
    pub async fn write_encoded(kv: &Kv, prefix: &str, items: usize, encoded: Vec<Vec<u8>>) -> Result<Vec<Compare>> {
        if encoded.len() > MAX_CHUNKS {
            return Err(Error::Limit(format!(
                "{items} items need {} chunks of metadata under {prefix}, more than the {MAX_CHUNKS} one list may have",
                encoded.len()
            )));
        }
        let last = encoded.len().saturating_sub(1);
        // 8 puts at once; the list counts only once every put has succeeded
        let puts: Vec<_> = encoded
            .into_iter()
            .enumerate()
            .map(|(n, bytes)| {
                let kv = kv.clone();
                let key = key(prefix, n);
                async move { kv.put(&key, bytes, None).await }
            })
            .collect();
        futures::stream::iter(puts).buffer_unordered(8).try_collect::<Vec<()>>().await?;
        let mut compares = Vec::with_capacity(2);
        for n in if last == 0 { vec![0] } else { vec![0, last] } {
            let key = key(prefix, n);
            let rev = kv.mod_revision(&key).await?.unwrap_or(0);
            compares.push(Compare::ModRevision(key, rev));
        }
        Ok(compares)
    }

    /// The compares that prove a list of `n` chunks written under `prefix`
    /// (by [`write_encoded`]) is still whole: its first and last chunks at
    /// their current revisions (the argument of [`write_encoded`]), so a
    /// transaction that checks a list of any length stays at two compares
    /// (a STAGED task's manifest of 120 chunks used to add 120).
    /// `None` when either chunk is missing.
    ///
    /// # Errors
    /// etcd errors.
    pub async fn compares(kv: &Kv, prefix: &str, n: usize) -> Result<Option<Vec<Compare>>> {
        let ends = if n <= 1 { vec![0] } else { vec![0, n - 1] };
        let mut compares = Vec::with_capacity(2);
        for i in ends {
            let key = key(prefix, i);
            match kv.mod_revision(&key).await? {
                Some(rev) => compares.push(Compare::ModRevision(key, rev)),
                None => return Ok(None),
            }
        }
        Ok(Some(compares))
    }

    /// Reads and concatenates every chunk under `prefix`, in order.
    pub async fn read<T: DeserializeOwned>(kv: &Kv, prefix: &str) -> Result<Vec<T>> {
        Ok(read_with_revision(kv, prefix).await?.0)
    }

    /// [`read`], with the first chunk's `mod_revision` (0 for no chunk).
    async fn read_with_revision<T: DeserializeOwned>(kv: &Kv, prefix: &str) -> Result<(Vec<T>, i64)> {
        let entries = kv.range(prefix).await?;
        let rev = entries.first().map_or(0, |e| e.mod_revision);
        let mut out = Vec::new();
        for entry in entries {
            out.extend(decode_chunk::<T>(&entry)?);
        }
        Ok((out, rev))
    }

    /// Decoded chunked lists (task input lists), kept by prefix and served
    /// again while the list's first chunk has the revision it was read at.
    ///
    /// Lists are written once, in order, and deleted whole (see
    /// [`write_encoded`]), so an unchanged first chunk means an unchanged
    /// list: a hit costs one keys-only read instead of the whole list (a
    /// window of 43,800 inputs is ~13 MB of JSON, read by every sub-task's
    /// claim, report and commit). Holds lists of at most `max_items` items
    /// together (the newest list always), dropping the oldest first.
    pub struct ListCache<T> {
        inner: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<CachedList<T>>>>,
        max_items: usize,
    }

    /// (prefix, first chunk's revision, the list).
    type CachedList<T> = (String, i64, std::sync::Arc<Vec<T>>);

    impl<T> Clone for ListCache<T> {
        fn clone(&self) -> Self {
            ListCache { inner: self.inner.clone(), max_items: self.max_items }
        }
    }

    impl<T: DeserializeOwned> ListCache<T> {
        /// An empty cache of lists of at most `max_items` items together
        /// (a single longer list is still kept, alone).
        pub fn new(max_items: usize) -> ListCache<T> {
            ListCache { inner: Default::default(), max_items }
        }

        /// The list under `prefix` ([`read`]), from the cache when its first
        /// chunk is unchanged. A missing list reads as empty and is not kept.
        ///
        /// # Errors
        /// etcd errors; [`Error::Codec`] for a chunk that does not decode.
        pub async fn read(&self, kv: &Kv, prefix: &str) -> Result<std::sync::Arc<Vec<T>>> {
            let Some(rev) = kv.mod_revision(&key(prefix, 0)).await? else {
                return Ok(std::sync::Arc::new(Vec::new()));
            };
            if let Some(hit) = self.lock().iter().find(|(p, r, _)| p == prefix && *r == rev).map(|(_, _, l)| l.clone())
            {
                return Ok(hit);
            }
            let (list, rev) = read_with_revision::<T>(kv, prefix).await?;
            let list = std::sync::Arc::new(list);
            if rev != 0 {
                let mut m = self.lock();
                m.retain(|(p, _, _)| p != prefix);
                m.push_back((prefix.to_string(), rev, list.clone()));
                let mut items: usize = m.iter().map(|(_, _, l)| l.len()).sum();
                while items > self.max_items && m.len() > 1 {
                    items -= m.pop_front().map_or(0, |(_, _, l)| l.len());
                }
            }
            Ok(list)
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<CachedList<T>>> {
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }
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

/// Keys per page of [`for_each_entry`]: bigger than
/// [`crate::kv::RANGE_PAGE_KEYS`] (etcd counts the keys left after every
/// page, and each page is a round trip: a table of 43,800 segments took
/// 930 ms to read in pages of 256), still a bounded reply (~1 MB of segment
/// records; the etcd backend halves a page whose reply is too large).
pub const LIST_PAGE_KEYS: usize = 2048;

/// Calls `f` on every key-value under `prefix`, in key order, one page
/// ([`LIST_PAGE_KEYS`] keys) at a time, the next page read while `f` takes
/// this one: at most two pages of raw values are held at once, for readers
/// that keep a little of each record (a table's 100,000s of segments).
/// Stops at the first error of `f`. Returns the store revision the first
/// page was read at (each page is read at the latest revision).
///
/// # Errors
/// etcd errors; whatever `f` returns.
pub async fn for_each_entry(kv: &Kv, prefix: &str, mut f: impl FnMut(&KeyValue) -> Result<()>) -> Result<i64> {
    let mut page = kv.range_page(prefix, None, LIST_PAGE_KEYS).await?;
    let first_revision = page.revision;
    loop {
        // the next page is asked for before this one is handed to `f`
        let after = page.kvs.last().map(|e| e.key.clone());
        let next = async {
            match (&after, page.more) {
                (Some(a), true) => Some(kv.range_page(prefix, Some(a), LIST_PAGE_KEYS).await),
                _ => None,
            }
        };
        let apply = async { page.kvs.iter().try_for_each(&mut f) };
        let (next, applied) = futures::join!(next, apply);
        applied?;
        match next {
            Some(p) => page = p?,
            None => return Ok(first_revision),
        }
    }
}

/// The entries under `prefix` with keys from `first` to `last` (both
/// inclusive, both under `prefix`), in key order: a `get` of `first`, then
/// pages after it until `last`, so a short run of keys in a long prefix
/// (a batch of consecutive segment names) costs a short read.
///
/// # Errors
/// etcd errors.
pub async fn entries_between(kv: &Kv, prefix: &str, first: &str, last: &str) -> Result<Vec<KeyValue>> {
    let mut out: Vec<KeyValue> = kv.get(first).await?.into_iter().collect();
    let mut after = first.to_string();
    loop {
        let page = kv.range_page(prefix, Some(&after), crate::kv::RANGE_PAGE_KEYS).await?;
        let more = page.more && page.kvs.last().is_some_and(|e| e.key.as_str() < last);
        if let Some(e) = page.kvs.last() {
            after = e.key.clone();
        }
        out.extend(page.kvs.into_iter().take_while(|e| e.key.as_str() <= last));
        if !more {
            return Ok(out);
        }
    }
}

/// Reads and decodes every record under a prefix (paged).
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
    use crate::kv::MemKv;
    use std::sync::Arc;

    #[test]
    fn a_task_whose_input_list_lost_entries_is_planned_again() {
        let mut t: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": "t__0__7", "table": "t", "fromMs": 0, "windowStartMs": 0, "windowEndMs": 1,
            "skippedWindows": 0, "inputCount": 3, "inputChunks": 1, "inputRows": 0, "inputBytes": 0,
            "segmentsRevision": 0, "tableConfig": {}, "schema": {}, "state": "PENDING",
            "attempt": 0, "minion": "", "createdMs": 7, "startedMs": 0, "finishedMs": 0, "errors": [],
            "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0, "maxAttempts": 2
        }))
        .unwrap();
        let list = |n: usize| vec![SegmentMeta::default(); n];
        assert_eq!(t.inputs_lost(&list(3)), None);
        assert!(t.inputs_lost(&list(0)).unwrap().contains("holds 0 of the 3 inputs"));
        assert!(t.inputs_lost(&list(2)).is_some());
        // a sub-task split by input reads its own range of its group's list
        t.input_from = 4;
        t.input_to = 7;
        assert_eq!(t.inputs_lost(&list(9)), None);
        assert!(t.inputs_lost(&list(5)).unwrap().contains("holds 1 of the 3"));
        assert!(t.inputs_lost(&list(0)).is_some());
    }

    #[test]
    fn a_key_names_the_table_whose_planning_it_touches() {
        let k = Keys::new("/r2o");
        let t = |raw: &str| Touched::Table(raw.into());
        let id = TaskId::new("a__b", -86_400_000, 7);
        for (key, want) in [
            (k.table("t"), t("t")),
            (k.segment("t_REALTIME", "s1"), t("t")),
            (k.segments_marker("t"), t("t")),
            (k.watermark("t"), t("t")),
            (k.lineage("t", -5), t("t")),
            (k.schedule("t"), t("t")),
            (k.frontier("t"), t("t")),
            (k.epoch("t"), t("t")),
            (k.active_task(&id), t("a__b")),
            (k.claim(&id), t("a__b")),
            (k.history(&id), t("a__b")),
            (format!("{}x", k.inputs(&id)), t("a__b")),
            (format!("{}x", k.manifest(&id, 2)), t("a__b")),
            (k.minion("m1"), Touched::All),
            (k.leader(), Touched::All),
            (format!("{}/new-kind/x", k.prefix()), Touched::All),
            (k.token("x"), Touched::Nothing),
            (k.cluster(), Touched::Nothing),
            (format!("{}/deltalog/t", k.prefix()), Touched::Nothing),
            ("/other/tables/t".to_string(), Touched::Nothing),
            ("/r2o2/tables/t".to_string(), Touched::Nothing),
        ] {
            assert_eq!(k.touched(&key), want, "{key}");
        }
    }

    #[test]
    fn load_status_follows_the_watermark_nulls_and_late_rows() {
        let seg = SegmentMeta {
            segment_name: "s".into(),
            table_name: "t_REALTIME".into(),
            status: SegmentStatus::Done,
            start_time_ms: 100,
            end_time_ms: 199,
            total_docs: 10,
            size_bytes: 1,
            schema_fingerprint: String::new(),
            location: String::new(),
            partition: -1,
            ..Default::default()
        };
        let status = |s: &SegmentMeta, wm: Option<i64>, owes: bool, ignored: bool| load_status(s, wm, owes, ignored).0;
        assert_eq!(status(&seg, None, false, false), LoadStatus::Pending);
        assert_eq!(
            status(&seg, Some(199), false, false),
            LoadStatus::Pending,
            "its last ms is not below the watermark"
        );
        assert_eq!(status(&seg, Some(200), false, false), LoadStatus::Loaded);
        assert_eq!(status(&seg, Some(200), true, false), LoadStatus::Pending, "a late run still owes a window");
        let consuming = SegmentMeta { status: SegmentStatus::Consuming, ..seg.clone() };
        assert_eq!(status(&consuming, Some(500), false, false), LoadStatus::Pending);
        let nulls = SegmentMeta { null_time_rows: 3, ..seg.clone() };
        let (st, why) = load_status(&nulls, Some(200), false, false);
        assert_eq!((st, why.as_str()), (LoadStatus::LoadedWithErrors, "3 rows with a NULL time"));
        let all_null = SegmentMeta { null_time_rows: 10, ..seg.clone() };
        assert_eq!(status(&all_null, None, false, false), LoadStatus::Skipped);
        let empty = SegmentMeta { total_docs: 0, ..seg.clone() };
        assert_eq!(status(&empty, None, false, false), LoadStatus::Skipped);
        let late = SegmentMeta { late: true, late_before_ms: Some(300), ..seg.clone() };
        assert_eq!(status(&late, Some(300), false, true), LoadStatus::Skipped, "every row below, ignored");
        assert_eq!(status(&late, Some(300), false, false), LoadStatus::Loaded, "moved by its late run");
        let partly = SegmentMeta { late: true, late_before_ms: Some(150), ..seg.clone() };
        assert_eq!(status(&partly, Some(150), false, true), LoadStatus::Pending);
        assert_eq!(status(&partly, Some(200), false, true), LoadStatus::LoadedWithErrors);
        // a refused discovered file: what had moved before the refusal stays moved
        let refused = |at: Option<i64>| SegmentMeta { error: "changed".into(), error_watermark_ms: at, ..seg.clone() };
        assert_eq!(status(&refused(None), Some(500), false, false), LoadStatus::Skipped, "unreadable: nothing moves");
        assert_eq!(
            status(&refused(Some(100)), Some(500), false, false),
            LoadStatus::Skipped,
            "refused before its window"
        );
        assert_eq!(status(&refused(Some(150)), Some(500), false, false), LoadStatus::LoadedWithErrors, "partly moved");
        let (st, why) = load_status(&refused(Some(200)), Some(500), false, false);
        assert_eq!((st, why.as_str()), (LoadStatus::LoadedWithErrors, "changed (its registered rows had moved)"));
        for s in LoadStatus::ALL {
            assert_eq!(LoadStatus::parse(&s.name().to_lowercase()), Some(s));
        }
        assert_eq!(LoadStatus::parse("DONE"), None);
    }

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
            "id": "t__0__1", "table": "t", "windowStartMs": 0, "windowEndMs": 1, "skippedWindows": 0,
            "inputCount": 0, "inputChunks": 1, "inputRows": 0, "inputBytes": 0, "segmentsRevision": 0,
            "tableConfig": {}, "schema": {}, "state": "PENDING", "attempt": 0, "minion": "", "createdMs": 0,
            "startedMs": 0, "finishedMs": 0, "errors": [], "rowsIn": 0, "rowsOut": 0, "bytesIn": 0, "bytesOut": 0
        }))
        .unwrap();
        assert_eq!((t.max_attempts, t.timeout_ms), (3, 3_600_000), "defaults for the policy fields");
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
    fn task_ids_round_trip_with_double_underscores_and_negative_times() {
        for id in [TaskId::new("t", 0, 1), TaskId::new("a__b__c", -3_600_000, 42), TaskId::new("x_", 5, -1)] {
            let text = id.to_string();
            assert_eq!(text.parse::<TaskId>().unwrap(), id, "{text}");
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
        }
        for bad in ["t", "t__1", "__1__2", "t__x__2", "t__1__"] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sortable_keys_sort_in_time_order() {
        let k = Keys::new("/r2o/");
        let mut v = [5i64, -3, 0, i64::MIN, i64::MAX, -86_400_000];
        let mut keys: Vec<String> = v.iter().map(|t| k.lineage("t", *t)).collect();
        keys.sort();
        v.sort();
        assert_eq!(keys, v.iter().map(|t| k.lineage("t", *t)).collect::<Vec<_>>());
        assert!(v.iter().all(|t| unsortable_ms(&sortable_ms(*t)) == Some(*t)));
        assert!(k.table("t").starts_with("/r2o/tables/"));
        let (old, new) = (TaskId::new("t", 9, 100), TaskId::new("t", 1, 2_000));
        assert!(k.history(&old) < k.history(&new), "history keys sort by creation");
    }

    #[tokio::test]
    async fn chunks_round_trip_and_stay_small() {
        let kv: Kv = Arc::new(MemKv::new());
        let items: Vec<String> = (0..5_000).map(|i| format!("segment-{i:05}-{}", "x".repeat(100))).collect();
        let encoded = chunks::encode_all(&items);
        assert!(encoded.len() > 1, "5,000 items of 120 bytes need several chunks");
        assert!(encoded.iter().all(|c| c.len() <= CHUNK_BYTES));
        let json: usize = items.iter().map(|i| i.len() + 3).sum();
        let stored: usize = encoded.iter().map(Vec::len).sum();
        assert!(stored * 5 < json, "repetitive JSON is stored compressed: {stored} bytes for {json}");
        let compares = chunks::write(&kv, "/c/", &items).await.unwrap();
        assert_eq!(compares.len(), 2, "the first and the last chunk are compared, however many there are");
        assert_eq!(chunks::read::<String>(&kv, "/c/").await.unwrap(), items);
        let empty: Vec<String> = vec![];
        chunks::write(&kv, "/e/", &empty).await.unwrap();
        assert!(chunks::read::<String>(&kv, "/e/").await.unwrap().is_empty());
        // chunks written before compression (plain JSON) read as they were
        kv.put(&chunks::key("/l/", 0), br#"["a","b"]"#.to_vec(), None).await.unwrap();
        kv.put(&chunks::key("/l/", 1), br#"["c"]"#.to_vec(), None).await.unwrap();
        assert_eq!(chunks::read::<String>(&kv, "/l/").await.unwrap(), ["a", "b", "c"]);
        // a chunk that does not decompress names its key
        kv.put(&chunks::key("/x/", 0), vec![0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3], None).await.unwrap();
        let err = chunks::read::<String>(&kv, "/x/").await.unwrap_err().to_string();
        assert!(err.contains("/x/000000"), "{err}");
        let too_many = vec![b"[]".to_vec(); MAX_CHUNKS + 1];
        assert!(matches!(chunks::write_encoded(&kv, "/h/", 1, too_many).await, Err(Error::Limit(_))));
        assert!(kv.range("/h/").await.unwrap().is_empty(), "nothing written past the limit");
    }

    #[tokio::test]
    async fn a_cached_list_is_served_while_its_first_chunk_is_unchanged() {
        let kv: Kv = Arc::new(MemKv::new());
        let cache = chunks::ListCache::<String>::new(11);
        assert!(cache.read(&kv, "/l/").await.unwrap().is_empty(), "a missing list reads as empty");
        let items: Vec<String> = (0..3_000).map(|i| format!("segment-{i:05}-{}", "x".repeat(100))).collect();
        chunks::write(&kv, "/l/", &items).await.unwrap();
        let first = cache.read(&kv, "/l/").await.unwrap();
        assert_eq!(*first, items);
        let again = cache.read(&kv, "/l/").await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "an unchanged list is not read again");
        // deleted and written again under the same prefix: read afresh
        kv.txn(vec![], vec![Op::delete_prefix("/l/")]).await.unwrap();
        assert!(cache.read(&kv, "/l/").await.unwrap().is_empty(), "a deleted list is not served from the cache");
        chunks::write(&kv, "/l/", &items[..10]).await.unwrap();
        let l1 = cache.read(&kv, "/l/").await.unwrap();
        assert_eq!(*l1, items[..10].to_vec());
        // at most 11 items are kept together, the oldest lists dropped first
        let mut kept = vec![];
        for p in ["/a/", "/b/"] {
            chunks::write(&kv, p, &items[..1]).await.unwrap();
            kept.push(cache.read(&kv, p).await.unwrap());
        }
        assert!(Arc::ptr_eq(&kept[1], &cache.read(&kv, "/b/").await.unwrap()));
        assert!(!Arc::ptr_eq(&l1, &cache.read(&kv, "/l/").await.unwrap()), "the oldest list was dropped");
    }

    #[tokio::test]
    async fn the_cluster_record_is_created_once_and_names_a_namespace() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/r2o/a");
        let a = ensure_cluster(&kv, &keys).await.unwrap();
        let b = ensure_cluster(&kv, &keys).await.unwrap();
        assert_eq!(a, b);
        let ns = a.store_namespace(&keys);
        assert!(ns.starts_with("r2o-a-") && ns.ends_with('/'), "{ns}");
        let other = ensure_cluster(&kv, &Keys::new("/r2o/b")).await.unwrap();
        assert_ne!(other.store_namespace(&Keys::new("/r2o/b")), ns, "two prefixes, two namespaces");
    }

    #[tokio::test]
    async fn every_entry_is_visited_once_in_key_order_across_pages() {
        let kv: Kv = Arc::new(MemKv::new());
        let n = 2 * LIST_PAGE_KEYS + 7;
        for i in 0..n {
            kv.put(&format!("/p/{i:06}"), vec![1], None).await.unwrap();
        }
        kv.put("/q/outside", vec![2], None).await.unwrap();
        let mut seen = vec![];
        for_each_entry(&kv, "/p/", |e| {
            seen.push(e.key.clone());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(seen, (0..n).map(|i| format!("/p/{i:06}")).collect::<Vec<_>>());
        // an error of `f` stops the walk and comes back
        let mut calls = 0;
        let r = for_each_entry(&kv, "/p/", |_| {
            calls += 1;
            match calls {
                10 => Err(Error::Limit("stop".into())),
                _ => Ok(()),
            }
        })
        .await;
        assert!(r.is_err() && calls == 10, "{r:?} after {calls} calls");
    }
}
