//! A Pinot REALTIME table config, loaded unchanged, and the typed flow
//! settings r2o reads out of it (`RealtimeToOfflineSegmentsTask` block).
//!
//! The original JSON is stored as given (unknown keys kept); [`TableSpec`]
//! holds it beside the parsed, validated view.

use serde_json::Value;
use std::collections::BTreeMap;

use crate::error::ConfigError;
use crate::period::parse_period_ms;
use crate::schema::{DataType, FieldKind, Schema};
use crate::window::Bucketing;

/// Pinot's task type key in `task.taskTypeConfigsMap`.
pub const TASK_TYPE: &str = "RealtimeToOfflineSegmentsTask";
const TASK_PATH: &str = "task.taskTypeConfigsMap.RealtimeToOfflineSegmentsTask";

/// How rows of one window are merged (`mergeType`, Pinot's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeType {
    /// Keep every row.
    Concat,
    /// Group by every non-metric column, aggregate metrics.
    Rollup,
    /// Drop exact duplicate rows.
    Dedup,
}

impl MergeType {
    /// Pinot's lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            MergeType::Concat => "concat",
            MergeType::Rollup => "rollup",
            MergeType::Dedup => "dedup",
        }
    }
}

/// What happens to rows that arrive for windows already committed
/// (`lateDataPolicy`, r2o's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateDataPolicy {
    /// Recompute each affected window from all of its inputs and replace its
    /// OFFLINE segments in one transaction (the default; exact for rollup
    /// and dedup).
    Rematerialize,
    /// Add the late rows as extra OFFLINE segments of the window (concat only).
    Append,
    /// Keep them in REALTIME only, with a warning (Pinot's behaviour).
    Ignore,
}

impl LateDataPolicy {
    /// The key's value.
    pub fn name(self) -> &'static str {
        match self {
            LateDataPolicy::Rematerialize => "rematerialize",
            LateDataPolicy::Append => "append",
            LateDataPolicy::Ignore => "ignore",
        }
    }
}

pub use crate::aggregation::AggregationType;

/// Partitioning function of `columnPartitionMap` (Pinot's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionFunction {
    /// Kafka's murmur2 of the value's UTF-8 string, `& 0x7fffffff`, mod N.
    Murmur,
    /// The integer value mod N (Euclidean, so never negative).
    Modulo,
    /// `abs(String.hashCode())` of the value's string, mod N.
    HashCode,
}

/// One partitioned column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    /// Column name.
    pub column: String,
    /// Function.
    pub function: PartitionFunction,
    /// `numPartitions`, > 0.
    pub num_partitions: u32,
}

/// The typed flow settings of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowConfig {
    /// `segmentsConfig.timeColumnName`.
    pub time_column: String,
    /// `tableIndexConfig.sortedColumn[0]`.
    pub sorted_column: Option<String>,
    /// `tableIndexConfig.segmentPartitionConfig.columnPartitionMap` (first entry).
    pub partitioning: Option<Partitioning>,
    /// `bucketTimePeriod` in ms (default 1d).
    pub bucket_ms: i64,
    /// `bufferTimePeriod` in ms (default 2d).
    pub buffer_ms: i64,
    /// `roundBucketTimePeriod` in ms (none: no rounding).
    pub round_ms: Option<i64>,
    /// `partitionBucketTimePeriod` in ms (Pinot's task key; none: one time
    /// partition per window): each window's OFFLINE segments are cut by
    /// this time bucket of their rows' (rounded) time, as Pinot's
    /// `EpochTimeHandler` partitions records.
    pub partition_bucket_ms: Option<i64>,
    /// `mergeType` (or the deprecated `collectorType`); default concat.
    pub merge_type: MergeType,
    /// Aggregation of every metric column: sum unless configured for a
    /// numeric metric; a BYTES metric has one only when configured.
    pub aggregations: BTreeMap<String, AggregationType>,
    /// `maxNumRecordsPerSegment` in rows (default 5,000,000).
    pub max_records_per_segment: u64,
    /// `maxAttemptsPerTask` (Pinot's task key); `None`: the cluster's default.
    pub max_attempts_per_task: Option<u32>,
    /// `timeoutMs` (Pinot's task key): an attempt running longer is
    /// cancelled, ms; `None`: the cluster's default.
    pub timeout_ms: Option<i64>,
    /// `maxNumRecordsPerTask` (Pinot's task key): the registered input rows
    /// one task may read, rows; consecutive windows are batched into a task
    /// up to it (a single window larger than it is still one task);
    /// `None`: the cluster's default.
    pub max_records_per_task: Option<u64>,
    /// `maxSegmentSizeBytes` (r2o's own key): OFFLINE segments are cut so
    /// that each is at most about this many bytes, as well as at most
    /// `maxNumRecordsPerSegment` rows; bytes; `None`: rows only.
    pub max_segment_size_bytes: Option<u64>,
    /// `segmentMapperFileSizeThresholdInBytes` (Pinot's task key: the size
    /// of the mapper's intermediate files past which Pinot's framework
    /// reduces what it has mapped before mapping more, bounding the data a
    /// task holds at once), bytes: an attempt estimated past it runs on the
    /// bounded-memory (spilling) path even when the minion's budget would
    /// hold it in memory. `None`: only the minion's budget decides.
    pub mapper_threshold_bytes: Option<u64>,
    /// The REALTIME table's retention (Pinot's `segmentsConfig.retentionTimeUnit`
    /// and `retentionTimeValue`), ms: a REALTIME segment whose rows have all
    /// moved is deleted once its end time is older than this (Pinot's
    /// `TimeRetentionStrategy`: `now - endTime > retention`); `None`: kept.
    pub retention_ms: Option<i64>,
    /// `bucketTimeZone` (IANA name): windows, and the rounding of
    /// `roundBucketTimePeriod`, follow local days and hours there (see
    /// [`Bucketing`]); `None`: UTC, Pinot's rule.
    pub bucket_time_zone: Option<jiff::tz::TimeZone>,
    /// `lateDataPolicy`: what happens to rows of committed windows.
    pub late_data_policy: LateDataPolicy,
    /// `segmentNamePostfix`: appended (after `_`) to every OFFLINE segment
    /// name; the controller sets it on a late-data run's config snapshot so
    /// the new segments' names differ from those they replace or join.
    pub segment_name_postfix: Option<String>,
    /// `segmentNamePrefix` (Pinot's task key): replaces the raw table name at
    /// the start of every OFFLINE segment name, as in Pinot's
    /// `SimpleSegmentNameGenerator` (`<prefix>_<start>_<end>_...`); names
    /// stay unique because the window, part and sequence follow it.
    pub segment_name_prefix: Option<String>,
    /// `minionInstanceTag` (Pinot's task key, default [`DEFAULT_MINION_TAG`]):
    /// only minions started with this tag (`r2o minion --tag`) claim the
    /// table's tasks.
    pub minion_instance_tag: String,
    /// `schedule` (Pinot's task key, Quartz cron): windows are planned in
    /// runs that start at its fire times (UTC); `None`: continuously.
    pub schedule: Option<crate::schedule::Schedule>,
    /// `allowNaN` (r2o's task key): NaN values in FLOAT and DOUBLE metrics
    /// may be moved; `false` (default): a window holding one is not committed.
    pub allow_nan: bool,
    /// `offloadPredicate` (r2o's task key, GOE's predicate grammar): only
    /// the rows it is true for move; `None`: every row.
    pub offload_predicate: Option<crate::predicate::Predicate>,
}

impl FlowConfig {
    /// How windows are cut: `bucketTimePeriod`, in `bucketTimeZone` if set.
    pub fn windows(&self) -> Bucketing {
        match &self.bucket_time_zone {
            None => Bucketing::utc(self.bucket_ms),
            Some(tz) => Bucketing::zoned(self.bucket_ms, tz.clone()),
        }
    }

    /// How the time column is rounded (`roundBucketTimePeriod`, in
    /// `bucketTimeZone` when it is whole days or hours), if at all.
    pub fn rounding(&self) -> Option<Bucketing> {
        self.round_ms.map(|r| self.zoned(r))
    }

    /// The buckets of `partitionBucketTimePeriod`, in `bucketTimeZone` as
    /// the windows and the rounding are; `None` without the key.
    pub fn time_partitioning(&self) -> Option<Bucketing> {
        self.partition_bucket_ms.map(|p| self.zoned(p))
    }

    fn zoned(&self, period_ms: i64) -> Bucketing {
        match &self.bucket_time_zone {
            Some(tz) if Bucketing::zoned_period_ok(period_ms) => Bucketing::zoned(period_ms, tz.clone()),
            _ => Bucketing::utc(period_ms),
        }
    }
}

/// A registered table: Pinot's JSON as given, plus the validated view.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Raw table name (no `_REALTIME` suffix).
    pub name: String,
    /// The table config JSON exactly as the owner gave it.
    pub config_json: Value,
    /// The schema JSON exactly as the owner gave it.
    pub schema_json: Value,
    /// Parsed schema.
    pub schema: Schema,
    /// Parsed flow settings.
    pub flow: FlowConfig,
    /// Where REALTIME files arrive on their own (Pinot's
    /// `ingestionConfig.batchIngestionConfig.batchConfigMaps`); empty: only
    /// segments registered by command.
    pub file_sources: Vec<FileSource>,
}

/// One entry of Pinot's `ingestionConfig.batchIngestionConfig.batchConfigMaps`:
/// a location whose Parquet files the leader registers in place, as DONE
/// REALTIME segments, once they stop changing.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSource {
    /// `inputDirURI`: `file:///<absolute dir>/` or `s3://<bucket>/<prefix>/`
    /// (always ending with `/`; an empty S3 prefix is the whole bucket).
    pub input_dir_uri: String,
    /// `includeFileNamePattern` (after `glob:`): only files whose path under
    /// `inputDirURI` matches are registered; `None`: every file.
    pub include: Option<glob::Pattern>,
    /// `excludeFileNamePattern` (after `glob:`): files whose path under
    /// `inputDirURI` matches are never registered.
    pub exclude: Option<glob::Pattern>,
}

impl FileSource {
    /// Whether the file at `relative` (its path under `inputDirURI`, `/`
    /// between directories) is one to register: it matches the include
    /// pattern (Java's glob rules: `*` stays within a directory, `**` crosses
    /// them), not the exclude pattern, and no part of it starts with `.` or
    /// `_` (hidden files, and a sink's temporary and marker files such as
    /// `_SUCCESS`).
    pub fn wants(&self, relative: &str) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        !relative.is_empty()
            && !relative.split('/').any(|p| p.starts_with('.') || p.starts_with('_'))
            && self.include.as_ref().is_none_or(|p| p.matches_with(relative, opts))
            && !self.exclude.as_ref().is_some_and(|p| p.matches_with(relative, opts))
    }
}

/// Reads `ingestionConfig.batchIngestionConfig.batchConfigMaps`.
fn parse_file_sources(config: &Value) -> Result<Vec<FileSource>, ConfigError> {
    const PATH: &str = "ingestionConfig.batchIngestionConfig.batchConfigMaps";
    let maps = match config.pointer("/ingestionConfig/batchIngestionConfig/batchConfigMaps") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: PATH.into(),
                value: other.to_string(),
                expected: "a list of objects with inputDirURI".into(),
            })
        }
    };
    let mut out = Vec::with_capacity(maps.len());
    for (i, m) in maps.iter().enumerate() {
        let at = |key: &str| format!("{PATH}[{i}].{key}");
        let Some(m) = m.as_object() else {
            return Err(ConfigError::Invalid {
                field: format!("{PATH}[{i}]"),
                value: m.to_string(),
                expected: "an object with inputDirURI".into(),
            });
        };
        let text = |key: &str| -> Result<Option<String>, ConfigError> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(other) => {
                    Err(ConfigError::Invalid { field: at(key), value: other.to_string(), expected: "a string".into() })
                }
            }
        };
        let uri = text("inputDirURI")?.ok_or_else(|| ConfigError::Missing {
            field: at("inputDirURI"),
            expected: "file:///<absolute dir> or s3://<bucket>[/<prefix>]".into(),
        })?;
        let input_dir_uri = normalize_source_uri(&uri).map_err(|expected| ConfigError::Invalid {
            field: at("inputDirURI"),
            value: uri.clone(),
            expected,
        })?;
        if let Some(f) = text("inputFormat")? {
            if !f.eq_ignore_ascii_case("parquet") {
                return Err(ConfigError::Invalid {
                    field: at("inputFormat"),
                    value: f,
                    expected: "parquet (r2o registers Parquet files)".into(),
                });
            }
        }
        let pattern = |key: &str| -> Result<Option<glob::Pattern>, ConfigError> {
            let Some(p) = text(key)? else { return Ok(None) };
            let bad = |why: String| ConfigError::Invalid {
                field: at(key),
                value: p.clone(),
                expected: format!("glob:<pattern>, e.g. glob:**/*.parquet ({why})"),
            };
            let Some(g) = p.strip_prefix("glob:") else {
                return Err(bad("only the glob: syntax is supported".into()));
            };
            glob::Pattern::new(g).map(Some).map_err(|e| bad(format!("at position {}: {}", e.pos + 5, e.msg)))
        };
        out.push(FileSource {
            input_dir_uri,
            include: pattern("includeFileNamePattern")?,
            exclude: pattern("excludeFileNamePattern")?,
        });
    }
    Ok(out)
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Checks a raw table name: non-empty, letters, digits, `_`, `-`, `.`.
pub fn validate_table_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        return Err(ConfigError::Invalid {
            field: "tableName".into(),
            value: name.into(),
            expected: "a non-empty name of letters, digits, '_', '-' or '.'".into(),
        });
    }
    Ok(())
}

impl TableSpec {
    /// Loads and validates a Pinot REALTIME table config and schema.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field, value and what was expected when:
    /// the table is not REALTIME; a period does not parse or is not > 0;
    /// `mergeType` is unknown; an `*.aggregationType` names no numeric metric
    /// or an unsupported aggregation; the time column is missing or has no
    /// epoch/timestamp format; the sorted or partition column is missing.
    pub fn from_json(config_json: Value, schema_json: Value) -> Result<TableSpec, ConfigError> {
        let schema = Schema::from_json(&schema_json)?;
        let obj = config_json
            .as_object()
            .ok_or(ConfigError::Malformed { what: "table config".into(), message: "expected a JSON object".into() })?;
        let table_name = obj
            .get("tableName")
            .and_then(Value::as_str)
            .ok_or(ConfigError::Missing { field: "tableName".into(), expected: "the table's name".into() })?;
        let name = table_name.strip_suffix("_REALTIME").unwrap_or(table_name).to_string();
        validate_table_name(&name)?;
        let table_type = obj.get("tableType").and_then(Value::as_str).unwrap_or("");
        if !table_type.eq_ignore_ascii_case("REALTIME") {
            return Err(ConfigError::Invalid {
                field: "tableType".into(),
                value: table_type.into(),
                expected: "REALTIME (r2o moves a REALTIME table's data to its OFFLINE part)".into(),
            });
        }

        refuse_upsert(obj.get("upsertConfig"))?;

        let time_column = config_json
            .pointer("/segmentsConfig/timeColumnName")
            .and_then(Value::as_str)
            .ok_or(ConfigError::Missing {
                field: "segmentsConfig.timeColumnName".into(),
                expected: "the name of the table's time column".into(),
            })?
            .to_string();
        match schema.field(&time_column) {
            None => {
                return Err(ConfigError::Invalid {
                    field: "segmentsConfig.timeColumnName".into(),
                    value: time_column,
                    expected: "a column of the schema's dateTimeFieldSpecs".into(),
                })
            }
            Some(f)
                if f.time_format.is_none()
                    || !matches!(f.data_type, DataType::Int | DataType::Long | DataType::Timestamp) =>
            {
                return Err(ConfigError::Invalid {
                    field: "segmentsConfig.timeColumnName".into(),
                    value: time_column,
                    expected:
                        "a dateTimeFieldSpecs column of type INT, LONG or TIMESTAMP with an epoch or timestamp format"
                            .into(),
                })
            }
            Some(_) => {}
        }

        let sorted_column = match config_json.pointer("/tableIndexConfig/sortedColumn") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Some(a[0].as_str().unwrap_or_default().to_string())
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: "tableIndexConfig.sortedColumn".into(),
                    value: other.to_string(),
                    expected: "a list of at most one column name".into(),
                })
            }
        };
        if let Some(col) = &sorted_column {
            if schema.field(col).is_none() {
                return Err(ConfigError::Invalid {
                    field: "tableIndexConfig.sortedColumn".into(),
                    value: col.clone(),
                    expected: "a column of the schema".into(),
                });
            }
        }

        let partitioning = parse_partitioning(&config_json, &schema)?;

        let task = config_json
            .pointer(&format!("/task/taskTypeConfigsMap/{TASK_TYPE}"))
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let task = task.as_object().ok_or(ConfigError::Invalid {
            field: TASK_PATH.into(),
            value: task.to_string(),
            expected: "an object of string settings".into(),
        })?;
        let text = |key: &str| -> Result<Option<String>, ConfigError> {
            match task.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => as_text(v).map(Some).ok_or(ConfigError::Invalid {
                    field: format!("{TASK_PATH}.{key}"),
                    value: v.to_string(),
                    expected: "a string".into(),
                }),
            }
        };
        let period = |key: &str, default: Option<&str>| -> Result<Option<i64>, ConfigError> {
            match text(key)?.or(default.map(str::to_string)) {
                None => Ok(None),
                Some(t) => parse_period_ms(&format!("{TASK_PATH}.{key}"), &t).map(Some),
            }
        };
        let bucket_ms = period("bucketTimePeriod", Some("1d"))?.unwrap_or(86_400_000);
        let buffer_ms = match text("bufferTimePeriod")? {
            None => 172_800_000,
            Some(t) => crate::period::parse_period_ms_zero_ok(&format!("{TASK_PATH}.bufferTimePeriod"), &t)?,
        };
        let round_ms = period("roundBucketTimePeriod", None)?;
        let partition_bucket_ms = period("partitionBucketTimePeriod", None)?;

        let (merge_key, merge_text) = match (text("mergeType")?, text("collectorType")?) {
            (Some(m), _) => ("mergeType", Some(m)),
            (None, Some(c)) => ("collectorType", Some(c)),
            (None, None) => ("mergeType", None),
        };
        let merge_type = match merge_text.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("concat") => MergeType::Concat,
            Some("rollup") => MergeType::Rollup,
            Some("dedup") => MergeType::Dedup,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    field: format!("{TASK_PATH}.{merge_key}"),
                    value: merge_text.unwrap_or_default(),
                    expected: "concat, rollup or dedup".into(),
                })
            }
        };

        let mut aggregations = BTreeMap::new();
        for f in schema.fields.iter().filter(|f| f.kind == FieldKind::Metric && f.data_type.is_numeric()) {
            aggregations.insert(f.name.clone(), AggregationType::Sum);
        }
        let texts = task.iter().map(|(k, v)| (k, as_text(v).unwrap_or_else(|| v.to_string())));
        let mut params = crate::aggregation::parameters(texts, TASK_PATH)?;
        for (key, value) in task {
            let Some(metric) = key.strip_suffix(".aggregationType") else {
                continue;
            };
            let field = format!("{TASK_PATH}.{key}");
            let agg_text = as_text(value).unwrap_or_else(|| value.to_string());
            let column_params = params.remove(metric).unwrap_or_default();
            let params_field = format!("{TASK_PATH}.aggregationFunctionParameters.{metric}");
            let agg = crate::aggregation::parse(&field, &schema, metric, &agg_text, &column_params, &params_field)?;
            aggregations.insert(metric.to_string(), agg);
        }
        if let Some((column, p)) = params.into_iter().next() {
            let (param, value) = p.into_iter().next().unwrap_or_default();
            return Err(ConfigError::Invalid {
                field: format!("{TASK_PATH}.aggregationFunctionParameters.{column}.{param}"),
                value,
                expected: format!("parameters of a column with an aggregationType, but '{column}' has none"),
            });
        }
        if merge_type == MergeType::Rollup {
            let unmerged =
                schema.fields.iter().find(|f| f.kind == FieldKind::Metric && !aggregations.contains_key(&f.name));
            if let Some(f) = unmerged {
                return Err(ConfigError::Invalid {
                    field: format!("metricFieldSpecs[{}].dataType", f.name),
                    value: f.data_type.name().into(),
                    expected: format!(
                        "a numeric type (INT, LONG, FLOAT, DOUBLE) for a rollup metric, or a BYTES metric with a \
                         {TASK_PATH}.{}.aggregationType (avg or a sketch aggregation such as distinctCountHLL)",
                        f.name
                    ),
                });
            }
        }

        let max_records_per_segment = match text("maxNumRecordsPerSegment")? {
            None => 5_000_000,
            Some(t) => match t.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::Invalid {
                        field: format!("{TASK_PATH}.maxNumRecordsPerSegment"),
                        value: t,
                        expected: "a whole number of rows greater than zero".into(),
                    })
                }
            },
        };

        let positive = |key: &str| -> Result<Option<i64>, ConfigError> {
            match text(key)? {
                None => Ok(None),
                Some(t) => match t.trim().parse::<i64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(ConfigError::Invalid {
                        field: format!("{TASK_PATH}.{key}"),
                        value: t,
                        expected: "a whole number greater than zero".into(),
                    }),
                },
            }
        };
        let max_attempts_per_task = positive("maxAttemptsPerTask")?.map(|n| n.min(i64::from(u32::MAX)) as u32);
        let timeout_ms = positive("timeoutMs")?;
        let max_records_per_task = positive("maxNumRecordsPerTask")?.map(|n| n as u64);
        let mapper_threshold_bytes = positive("segmentMapperFileSizeThresholdInBytes")?.map(|n| n as u64);
        let max_segment_size_bytes = match text("maxSegmentSizeBytes")? {
            None => None,
            Some(t) => match crate::period::parse_size(&t) {
                Ok(n) if n >= 1024 => Some(n),
                _ => {
                    return Err(ConfigError::Invalid {
                        field: format!("{TASK_PATH}.maxSegmentSizeBytes"),
                        value: t,
                        expected: "a size of at least 1 KiB, in bytes or with a unit (e.g. 268435456, 256MB, 1GiB)"
                            .into(),
                    })
                }
            },
        };
        let retention_ms = parse_retention(&config_json)?;
        let late_data_policy = match text("lateDataPolicy")?.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
            None | Some("rematerialize") => LateDataPolicy::Rematerialize,
            Some("append") if merge_type == MergeType::Concat => LateDataPolicy::Append,
            Some("ignore") => LateDataPolicy::Ignore,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: format!("{TASK_PATH}.lateDataPolicy"),
                    value: text("lateDataPolicy")?.unwrap_or_default(),
                    expected: if other == "append" {
                        format!(
                            "rematerialize or ignore: append adds rows beside the window's, which only \
                             mergeType concat allows (this table's is {})",
                            merge_type.name()
                        )
                    } else {
                        "rematerialize (default), append (concat only) or ignore".into()
                    },
                })
            }
        };
        let allow_nan = match text("allowNaN")?.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    field: format!("{TASK_PATH}.allowNaN"),
                    value: text("allowNaN")?.unwrap_or_default(),
                    expected: "true or false".into(),
                })
            }
        };
        let offload_predicate = match text("offloadPredicate")? {
            None => None,
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(crate::predicate::Predicate::parse(&t, &schema).map_err(|e| ConfigError::Invalid {
                field: format!("{TASK_PATH}.offloadPredicate"),
                value: t.clone(),
                expected: format!(
                    "a predicate in GOE's grammar, e.g. column(country) in (string(\"FR\"), string(\"DE\")) and column(amount) > numeric(0); {e}"
                ),
            })?),
        };
        let schedule = match text("schedule")? {
            None => None,
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(crate::schedule::Schedule::parse(&t).map_err(|why| ConfigError::Invalid {
                field: format!("{TASK_PATH}.schedule"),
                value: t.clone(),
                expected: format!("a Quartz cron expression such as '0 */10 * * * ?' ({why})"),
            })?),
        };
        // a part of every OFFLINE segment name (a path in the store): letters,
        // digits, '-' and the characters in `extra`
        let name_part = |key: &str, extra: &[char], expected: &str| -> Result<Option<String>, ConfigError> {
            match text(key)? {
                None => Ok(None),
                Some(p)
                    if !p.is_empty()
                        && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c)) =>
                {
                    Ok(Some(p))
                }
                Some(p) => Err(ConfigError::Invalid {
                    field: format!("{TASK_PATH}.{key}"),
                    value: p,
                    expected: expected.into(),
                }),
            }
        };
        let segment_name_postfix = name_part("segmentNamePostfix", &[], "letters, digits and '-'")?;
        let segment_name_prefix = name_part(
            "segmentNamePrefix",
            &['_'],
            "letters, digits, '-' and '_' (it starts every OFFLINE segment name, a path in the store)",
        )?;
        let minion_instance_tag = minion_instance_tag(&config_json)?;
        let bucket_time_zone = match text("bucketTimeZone")? {
            None => None,
            Some(name) => {
                let field = format!("{TASK_PATH}.bucketTimeZone");
                let tz = jiff::tz::TimeZone::get(name.trim()).map_err(|_| ConfigError::Invalid {
                    field: field.clone(),
                    value: name.clone(),
                    expected: "an IANA time zone name such as America/New_York or Europe/Berlin".into(),
                })?;
                if !Bucketing::zoned_period_ok(bucket_ms) {
                    return Err(ConfigError::Invalid {
                        field: format!("{TASK_PATH}.bucketTimePeriod"),
                        value: text("bucketTimePeriod")?.unwrap_or_else(|| "1d".into()),
                        expected: format!(
                            "whole days, or whole hours dividing a day (1h, 2h, 3h, 4h, 6h, 8h, 12h), with {field}"
                        ),
                    });
                }
                Some(tz)
            }
        };

        let file_sources = parse_file_sources(&config_json)?;

        Ok(TableSpec {
            name,
            schema,
            file_sources,
            flow: FlowConfig {
                time_column,
                sorted_column,
                partitioning,
                bucket_ms,
                buffer_ms,
                round_ms,
                partition_bucket_ms,
                merge_type,
                aggregations,
                max_records_per_segment,
                max_attempts_per_task,
                timeout_ms,
                max_records_per_task,
                mapper_threshold_bytes,
                max_segment_size_bytes,
                retention_ms,
                bucket_time_zone,
                late_data_policy,
                segment_name_postfix,
                segment_name_prefix,
                minion_instance_tag,
                schedule,
                allow_nan,
                offload_predicate,
            },
            config_json,
            schema_json,
        })
    }

    /// The time column's format (epoch ms when the schema gives none).
    pub fn time_format(&self) -> crate::schema::TimeFormat {
        self.schema
            .field(&self.flow.time_column)
            .and_then(|f| f.time_format)
            .unwrap_or(crate::schema::TimeFormat::MILLIS)
    }

    /// `<raw>_REALTIME`.
    pub fn realtime_name(&self) -> String {
        format!("{}_REALTIME", self.name)
    }

    /// `<raw>_OFFLINE`.
    pub fn offline_name(&self) -> String {
        format!("{}_OFFLINE", self.name)
    }
}

fn kind_name(k: FieldKind) -> &'static str {
    match k {
        FieldKind::Dimension => "dimensionFieldSpecs",
        FieldKind::Metric => "metricFieldSpecs",
        FieldKind::DateTime => "dateTimeFieldSpecs",
    }
}

/// Leaves of a JSON document as `(dotted path, value)`, arrays as one leaf.
fn leaves(v: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                leaves(x, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        other => {
            out.insert(path.to_string(), as_text(other).unwrap_or_else(|| other.to_string()));
        }
    }
}

/// What `r2o table update` changes from `old` to `new` (both valid), one
/// line per change; DataHub's rule for a flow that lives on: columns may be
/// added (segments written before read them as their `defaultNullValue`, or
/// null) and widened (INT -> LONG, FLOAT -> DOUBLE); config keys may change.
/// Pure.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the column (or key), the old and the new
/// value, for: another table name, another time column or a changed time
/// column, a removed column, a column moved between dimensions, metrics and
/// date-times, any other type change.
pub fn table_changes(old: &TableSpec, new: &TableSpec) -> Result<Vec<String>, ConfigError> {
    if old.name != new.name {
        return Err(ConfigError::Invalid {
            field: "tableName".into(),
            value: format!("{} -> {}", old.name, new.name),
            expected: format!("the table's own name, {}", old.name),
        });
    }
    if old.flow.time_column != new.flow.time_column {
        return Err(ConfigError::Invalid {
            field: "segmentsConfig.timeColumnName".into(),
            value: format!("{} -> {}", old.flow.time_column, new.flow.time_column),
            expected: format!(
                "the same time column, {}: the time column of a flow cannot change",
                old.flow.time_column
            ),
        });
    }
    let mut changes = vec![];
    for f in &old.schema.fields {
        let field = format!("{}[{}]", kind_name(f.kind), f.name);
        let Some(n) = new.schema.field(&f.name) else {
            return Err(ConfigError::Invalid {
                field,
                value: format!("{} {} removed", f.name, f.data_type.name()),
                expected: "every column kept: a column cannot be removed (OFFLINE segments already hold it)".into(),
            });
        };
        if n.kind != f.kind {
            return Err(ConfigError::Invalid {
                field,
                value: format!("{} -> {}", kind_name(f.kind), kind_name(n.kind)),
                expected: format!("column {} to stay in {}", f.name, kind_name(f.kind)),
            });
        }
        if f.name == old.flow.time_column && (n.data_type != f.data_type || n.time_format != f.time_format) {
            return Err(ConfigError::Invalid {
                field: format!("{field}.dataType/format"),
                value: format!(
                    "{} {:?} -> {} {:?}",
                    f.data_type.name(),
                    f.time_format,
                    n.data_type.name(),
                    n.time_format
                ),
                expected: format!("the time column {} unchanged", f.name),
            });
        }
        let widened =
            matches!((f.data_type, n.data_type), (DataType::Int, DataType::Long) | (DataType::Float, DataType::Double));
        if n.data_type != f.data_type && !widened {
            return Err(ConfigError::Invalid {
                field: format!("{field}.dataType"),
                value: format!("{} -> {}", f.data_type.name(), n.data_type.name()),
                expected: "the same type or a widening (INT -> LONG, FLOAT -> DOUBLE)".into(),
            });
        }
        if widened {
            changes.push(format!("column {}: {} -> {}", f.name, f.data_type.name(), n.data_type.name()));
        }
    }
    for n in new.schema.fields.iter().filter(|n| old.schema.field(&n.name).is_none()) {
        let fill =
            n.default_null_value.as_ref().map_or("null".to_string(), |v| as_text(v).unwrap_or_else(|| v.to_string()));
        changes.push(format!(
            "added column {} ({} {}; earlier segments read it as {fill})",
            n.name,
            kind_name(n.kind),
            n.data_type.name()
        ));
    }
    // every other key of a kept column's spec (notNull, defaultNullValue,
    // format, ...): applied and listed, never dropped silently
    let (old_fields, new_fields) = (field_specs(&old.schema_json), field_specs(&new.schema_json));
    for (name, o) in &old_fields {
        let Some(n) = new_fields.get(name) else { continue };
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        leaves(o, "", &mut a);
        leaves(n, "", &mut b);
        a.retain(|k, _| k != "name" && k != "dataType");
        b.retain(|k, _| k != "name" && k != "dataType");
        diff_leaves(&a, &b, &format!("column {name}: "), &mut changes);
    }
    // the schema's other keys (schemaName, primaryKeyColumns, ...)
    let top = |s: &Value| {
        let mut m = BTreeMap::new();
        if let Value::Object(o) = s {
            for (k, v) in o.iter().filter(|(k, _)| !FIELD_ARRAYS.contains(&k.as_str())) {
                leaves(v, &format!("schema.{k}"), &mut m);
            }
        }
        m
    };
    diff_leaves(&top(&old.schema_json), &top(&new.schema_json), "", &mut changes);
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves(&old.config_json, "", &mut a);
    leaves(&new.config_json, "", &mut b);
    diff_leaves(&a, &b, "", &mut changes);
    Ok(changes)
}

/// The schema's arrays of column specs.
const FIELD_ARRAYS: [&str; 3] = ["dimensionFieldSpecs", "metricFieldSpecs", "dateTimeFieldSpecs"];

/// A schema's column specs by name (`dimensionFieldSpecs`,
/// `metricFieldSpecs`, `dateTimeFieldSpecs`).
fn field_specs(schema: &Value) -> BTreeMap<String, &Value> {
    let mut out = BTreeMap::new();
    for list in FIELD_ARRAYS {
        for f in schema.get(list).and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                out.insert(name.to_string(), f);
            }
        }
    }
    out
}

/// One line per leaf added, changed or removed from `a` to `b`, each
/// prefixed with `prefix`.
fn diff_leaves(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in b {
        match a.get(k) {
            None => out.push(format!("{prefix}{k}: added '{v}'")),
            Some(o) if o != v => out.push(format!("{prefix}{k}: '{o}' -> '{v}'")),
            _ => {}
        }
    }
    for (k, v) in a.iter().filter(|(k, _)| !b.contains_key(*k)) {
        out.push(format!("{prefix}{k}: removed (was '{v}')"));
    }
}

/// Keys whose change would make a table's committed windows disagree with
/// the windows cut from then on, with their old and new values: `(key, old,
/// new)`. Late-data runs recut committed windows with the current
/// bucketing, merge and filter, so once a table has lineage a change of
/// `bucketTimePeriod`, `bucketTimeZone`, `roundBucketTimePeriod`,
/// `mergeType`, any `<metric>.aggregationType`, the partitioning
/// (`tableIndexConfig.segmentPartitionConfig`) or `offloadPredicate` would
/// keep old and new results of the same rows side by side (or apply a new
/// filter to old windows). Every other key is safe to change. Pure.
pub fn lineage_bound_changes(old: &TableSpec, new: &TableSpec) -> Vec<(String, String, String)> {
    let (o, n) = (&old.flow, &new.flow);
    let mut out = vec![];
    let mut check = |key: &str, a: String, b: String| {
        if a != b {
            out.push((key.to_string(), a, b));
        }
    };
    let period = |ms: Option<i64>| ms.map_or("none".to_string(), |ms| format!("{ms} ms"));
    check(&format!("{TASK_PATH}.bucketTimePeriod"), period(Some(o.bucket_ms)), period(Some(n.bucket_ms)));
    let zone = |z: &Option<jiff::tz::TimeZone>| {
        z.as_ref().map_or("UTC (none)".to_string(), |z| z.iana_name().unwrap_or("a fixed offset").to_string())
    };
    check(&format!("{TASK_PATH}.bucketTimeZone"), zone(&o.bucket_time_zone), zone(&n.bucket_time_zone));
    check(&format!("{TASK_PATH}.roundBucketTimePeriod"), period(o.round_ms), period(n.round_ms));
    check(&format!("{TASK_PATH}.mergeType"), o.merge_type.name().into(), n.merge_type.name().into());
    let columns: std::collections::BTreeSet<&String> = o.aggregations.keys().chain(n.aggregations.keys()).collect();
    for c in columns {
        let agg = |m: &BTreeMap<String, AggregationType>| m.get(c).map_or("none".to_string(), |a| format!("{a:?}"));
        check(&format!("{TASK_PATH}.{c}.aggregationType"), agg(&o.aggregations), agg(&n.aggregations));
    }
    let parts = |p: &Option<Partitioning>| {
        p.as_ref().map_or("none".to_string(), |p| {
            format!("{} by {:?} into {} partitions", p.column, p.function, p.num_partitions)
        })
    };
    check("tableIndexConfig.segmentPartitionConfig", parts(&o.partitioning), parts(&n.partitioning));
    if o.offload_predicate != n.offload_predicate {
        let text = |s: &TableSpec| {
            s.config_json
                .pointer("/task/taskTypeConfigsMap/RealtimeToOfflineSegmentsTask/offloadPredicate")
                .and_then(as_text)
                .unwrap_or_else(|| format!("{:?}", s.flow.offload_predicate))
        };
        out.push((format!("{TASK_PATH}.offloadPredicate"), text(old), text(new)));
    }
    out
}

/// `segmentsConfig.retentionTimeUnit` + `retentionTimeValue` as ms: both or
/// neither; the unit one of Java's `TimeUnit` names (Pinot's), any case; the
/// value a whole number > 0.
fn parse_retention(config: &Value) -> Result<Option<i64>, ConfigError> {
    let get = |key: &str| match config.pointer(&format!("/segmentsConfig/{key}")) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_text(v).map(|t| Some(t.trim().to_string())).ok_or_else(|| ConfigError::Invalid {
            field: format!("segmentsConfig.{key}"),
            value: v.to_string(),
            expected: "a string".into(),
        }),
    };
    let (unit, value) = match (get("retentionTimeUnit")?, get("retentionTimeValue")?) {
        (None, None) => return Ok(None),
        (Some(u), Some(v)) => (u, v),
        (unit, _) => {
            let (missing, given) = if unit.is_some() {
                ("retentionTimeValue", "retentionTimeUnit")
            } else {
                ("retentionTimeUnit", "retentionTimeValue")
            };
            return Err(ConfigError::Missing {
                field: format!("segmentsConfig.{missing}"),
                expected: format!("it together with segmentsConfig.{given} (Pinot's retention is both or neither)"),
            });
        }
    };
    let unit_ms: f64 = match unit.to_ascii_uppercase().as_str() {
        "DAYS" => 86_400_000.0,
        "HOURS" => 3_600_000.0,
        "MINUTES" => 60_000.0,
        "SECONDS" => 1_000.0,
        "MILLISECONDS" => 1.0,
        "MICROSECONDS" => 1e-3,
        "NANOSECONDS" => 1e-6,
        _ => {
            return Err(ConfigError::Invalid {
                field: "segmentsConfig.retentionTimeUnit".into(),
                value: unit,
                expected: "DAYS, HOURS, MINUTES, SECONDS, MILLISECONDS, MICROSECONDS or NANOSECONDS".into(),
            })
        }
    };
    match value.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Some(((n as f64) * unit_ms).clamp(1.0, i64::MAX as f64) as i64)),
        _ => Err(ConfigError::Invalid {
            field: "segmentsConfig.retentionTimeValue".into(),
            value,
            expected: "a whole number greater than zero".into(),
        }),
    }
}

fn parse_partitioning(config: &Value, schema: &Schema) -> Result<Option<Partitioning>, ConfigError> {
    let Some(map) = config.pointer("/tableIndexConfig/segmentPartitionConfig/columnPartitionMap") else {
        return Ok(None);
    };
    let base = "tableIndexConfig.segmentPartitionConfig.columnPartitionMap";
    let map = map.as_object().ok_or(ConfigError::Invalid {
        field: base.into(),
        value: map.to_string(),
        expected: "an object of column -> {functionName, numPartitions}".into(),
    })?;
    let Some((column, spec)) = map.iter().next() else {
        return Ok(None);
    };
    if map.len() > 1 {
        return Err(ConfigError::Invalid {
            field: base.into(),
            value: map.keys().cloned().collect::<Vec<_>>().join(","),
            expected: "exactly one partition column".into(),
        });
    }
    if schema.field(column).is_none() {
        return Err(ConfigError::Invalid {
            field: base.into(),
            value: column.clone(),
            expected: "a column of the schema".into(),
        });
    }
    let fname = spec.get("functionName").and_then(as_text_ref).unwrap_or_default();
    let function = match fname.to_ascii_lowercase().as_str() {
        "murmur" => PartitionFunction::Murmur,
        "modulo" => PartitionFunction::Modulo,
        "hashcode" => PartitionFunction::HashCode,
        _ => {
            return Err(ConfigError::Invalid {
                field: format!("{base}.{column}.functionName"),
                value: fname,
                expected: "Murmur, Modulo or HashCode".into(),
            })
        }
    };
    if function == PartitionFunction::Modulo
        && !matches!(schema.field(column).map(|f| f.data_type), Some(DataType::Int | DataType::Long))
    {
        return Err(ConfigError::Invalid {
            field: format!("{base}.{column}.functionName"),
            value: fname,
            expected: "Murmur or HashCode for a non-integer column (Modulo needs INT or LONG)".into(),
        });
    }
    let n_text = spec.get("numPartitions").and_then(as_text_ref).unwrap_or_default();
    let num_partitions = match n_text.parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(ConfigError::Invalid {
                field: format!("{base}.{column}.numPartitions"),
                value: n_text,
                expected: "a whole number greater than zero".into(),
            })
        }
    };
    Ok(Some(Partitioning { column: column.clone(), function, num_partitions }))
}

fn as_text_ref(v: &Value) -> Option<String> {
    as_text(v)
}

/// The canonical form of a source location (`inputDirURI`, an entry of
/// the controller's `--source-allow`): `file:///<abs dir>/` or
/// `s3://<bucket>/[<prefix>/]`, with runs of `/` collapsed and a trailing
/// `/`, so that a prefix test on canonical forms is a containment test.
/// Pure.
///
/// # Errors
/// What was expected: another scheme, a relative path, `.` or `..`
/// segments, percent-encoded `.` or `/` (`%2e`, `%2f`), `%00` or control
/// characters (ways to step outside a prefix that a string compare misses).
pub fn normalize_source_uri(uri: &str) -> Result<String, String> {
    let uri = uri.trim();
    let lower = uri.to_ascii_lowercase();
    if uri.chars().any(char::is_control) || ["%2e", "%2f", "%5c", "%00"].iter().any(|e| lower.contains(e)) {
        return Err("a location without control characters or percent-encoded '.', '/', '\\' or NUL".into());
    }
    let canonical = |scheme: &str, path: &str| -> Result<String, String> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == ".." || p.contains('\\')) {
            return Err(format!("{scheme}... without '.', '..' or '\\' segments"));
        }
        Ok(if parts.is_empty() { format!("{scheme}/") } else { format!("{scheme}/{}/", parts.join("/")) })
    };
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err("file:///<absolute dir> (an absolute path, without '..')".into());
        }
        canonical("file://", path).map_err(|_| "file:///<absolute dir> (an absolute path, without '..')".into())
    } else if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = |b: &str| {
            !b.is_empty() && !b.contains("..") && b.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c))
        };
        if !bucket_ok(bucket) {
            return Err("s3://<bucket>[/<prefix>]".into());
        }
        canonical(&format!("s3://{bucket}"), prefix).map_err(|_| "s3://<bucket>[/<prefix>] (without '..')".into())
    } else {
        Err("file:///<absolute dir> or s3://<bucket>[/<prefix>]".into())
    }
}

/// Parses the controller's `--source-allow`: comma-separated locations
/// where discovery may read, each normalized by [`normalize_source_uri`].
/// Empty: discovery is off.
///
/// # Errors
/// Names the entry and what was expected.
pub fn parse_source_allow(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| normalize_source_uri(e).map_err(|x| format!("source '{e}': expected {x}")))
        .collect()
}

/// Whether the canonical source `uri` lies inside one of the canonical
/// `allow` prefixes (both from [`normalize_source_uri`]). Pure.
pub fn source_allowed(uri: &str, allow: &[String]) -> bool {
    allow.iter().any(|a| uri.starts_with(a.as_str()))
}

/// Checks a table config must pass when it is added or updated, beyond what
/// [`TableSpec::from_json`] checks on every load: keys r2o refuses from now
/// on but ignored before, so a table stored with one keeps running.
///
/// Pinot's `fixedSegmentName` names every output segment alike; Pinot
/// uploads over a segment of the same name, so each window's segments
/// would replace the last window's.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key.
pub fn check_admission(config_json: &Value) -> Result<(), ConfigError> {
    let fixed = config_json
        .pointer(&format!("/task/taskTypeConfigsMap/{TASK_TYPE}/fixedSegmentName"))
        .and_then(as_text)
        .filter(|n| !n.trim().is_empty());
    if let Some(name) = fixed {
        return Err(ConfigError::Invalid {
            field: format!("{TASK_PATH}.fixedSegmentName"),
            value: name,
            expected: "no fixedSegmentName: it gives every OFFLINE segment one name, so each window's segments \
                       would replace the last window's; name them with segmentNamePrefix and segmentNamePostfix \
                       instead"
                .into(),
        });
    }
    Ok(())
}

/// Pinot's default `minionInstanceTag` (`CommonConstants.Helix.UNTAGGED_MINION_INSTANCE`):
/// the tag of a minion started without `--tag`, and of a table without the key.
pub const DEFAULT_MINION_TAG: &str = "minion_untagged";

/// Whether `tag` can be a minion tag: not empty; letters, digits, `_`, `-`, `.`.
pub fn valid_minion_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A table config's `minionInstanceTag` (the task block's key, Pinot's
/// meaning: which minions run the table's tasks), [`DEFAULT_MINION_TAG`]
/// when absent or empty. Read by the controller at `table add` and by
/// minions from a task's config snapshot.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key when the value is not a string
/// of letters, digits, `_`, `-` and `.`.
pub fn minion_instance_tag(config_json: &Value) -> Result<String, ConfigError> {
    let field = || format!("{TASK_PATH}.minionInstanceTag");
    let tag = match config_json.pointer(&format!("/task/taskTypeConfigsMap/{TASK_TYPE}/minionInstanceTag")) {
        None | Some(Value::Null) => return Ok(DEFAULT_MINION_TAG.into()),
        Some(Value::String(t)) => t.trim().to_string(),
        Some(other) => {
            return Err(ConfigError::Invalid { field: field(), value: other.to_string(), expected: "a string".into() })
        }
    };
    if tag.is_empty() {
        return Ok(DEFAULT_MINION_TAG.into());
    }
    if !valid_minion_tag(&tag) {
        return Err(ConfigError::Invalid {
            field: field(),
            value: tag,
            expected: "a minion tag of letters, digits, '_', '-' and '.' (the value minions are started with: \
                       r2o minion --tag)"
                .into(),
        });
    }
    Ok(tag)
}

/// Pinot's rule (`RealtimeToOfflineSegmentsTaskGenerator.validateTaskConfigs`:
/// "RealtimeToOfflineTask doesn't support upsert table!"): a table whose
/// `upsertConfig` has a mode other than `NONE` (a missing mode counts as
/// upsert, as Pinot's `getUpsertMode()` is then not `NONE`) cannot be moved.
/// Its REALTIME segments hold every version of a key, and only the upsert
/// metadata of Pinot's servers says which one is valid: moving the rows
/// would turn old versions back into live rows. `dedupConfig` tables are
/// moved (their segments hold each key once).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `upsertConfig.mode`.
fn refuse_upsert(upsert: Option<&Value>) -> Result<(), ConfigError> {
    let Some(upsert) = upsert.filter(|u| !u.is_null()) else {
        return Ok(());
    };
    let mode = upsert.get("mode").and_then(Value::as_str).unwrap_or("");
    if mode.eq_ignore_ascii_case("NONE") {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field: "upsertConfig.mode".into(),
        value: if mode.is_empty() { "(not set)".into() } else { mode.into() },
        expected: "NONE or no upsertConfig: RealtimeToOfflineSegmentsTask doesn't support upsert tables (as in \
                   Pinot), because their segments keep every version of a key and only the servers' upsert \
                   metadata says which one is current; dedupConfig tables are supported"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upsert_tables_are_refused_like_pinot_and_dedup_tables_are_not() {
        for upsert in [json!({"mode": "FULL"}), json!({"mode": "partial"}), json!({"comparisonColumns": ["ts"]})] {
            let mut c = config(json!({}));
            c["upsertConfig"] = upsert.clone();
            let e = TableSpec::from_json(c, schema()).unwrap_err().to_string();
            assert!(e.contains("upsertConfig.mode") && e.contains("upsert"), "{upsert}: {e}");
        }
        let e = {
            let mut c = config(json!({}));
            c["upsertConfig"] = json!({"mode": "FULL"});
            TableSpec::from_json(c, schema()).unwrap_err().to_string()
        };
        assert!(e.contains("'FULL'"), "the value is named: {e}");
        for ok in [json!({"mode": "NONE"}), Value::Null] {
            let mut c = config(json!({}));
            c["upsertConfig"] = ok;
            TableSpec::from_json(c, schema()).unwrap();
        }
        let mut c = config(json!({}));
        c["dedupConfig"] = json!({"dedupEnabled": true, "hashFunction": "NONE"});
        TableSpec::from_json(c, schema()).unwrap();
    }

    fn schema() -> Value {
        json!({
            "schemaName": "t",
            "dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
            "metricFieldSpecs": [{"name": "delay", "dataType": "DOUBLE"}, {"name": "n", "dataType": "LONG"}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]
        })
    }

    fn config(task: Value) -> Value {
        json!({
            "tableName": "t_REALTIME",
            "tableType": "REALTIME",
            "segmentsConfig": {"timeColumnName": "ts", "replication": "1"},
            "tableIndexConfig": {"sortedColumn": ["carrier"], "loadMode": "MMAP"},
            "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}},
            "metadata": {"customConfigs": {}}
        })
    }

    #[test]
    fn defaults_are_pinots() {
        let t = TableSpec::from_json(config(json!({})), schema()).unwrap();
        assert_eq!(t.name, "t");
        assert_eq!(t.flow.bucket_ms, 86_400_000);
        assert_eq!(t.flow.buffer_ms, 2 * 86_400_000);
        assert_eq!(t.flow.round_ms, None);
        assert_eq!(t.flow.merge_type, MergeType::Concat);
        assert_eq!(t.flow.max_records_per_segment, 5_000_000);
        assert_eq!(t.flow.aggregations["delay"], AggregationType::Sum);
        assert_eq!(t.flow.sorted_column.as_deref(), Some("carrier"));
        // unknown keys are kept as given
        assert_eq!(t.config_json["tableIndexConfig"]["loadMode"], "MMAP");
    }

    #[test]
    fn reads_task_block_any_case_and_alias() {
        let t = TableSpec::from_json(
            config(json!({"bucketTimePeriod": "6h", "bufferTimePeriod": "4h30m",
                "roundBucketTimePeriod": "1h", "collectorType": "ROLLUP",
                "n.aggregationType": "MAX", "maxNumRecordsPerSegment": "1000",
                "maxAttemptsPerTask": "5", "timeoutMs": "60000"})),
            schema(),
        )
        .unwrap();
        assert_eq!(t.flow.bucket_ms, 6 * 3_600_000);
        assert_eq!(t.flow.buffer_ms, 16_200_000);
        assert_eq!(t.flow.round_ms, Some(3_600_000));
        assert_eq!(t.flow.partition_bucket_ms, None);
        let p = TableSpec::from_json(config(json!({"partitionBucketTimePeriod": "6h"})), schema()).unwrap();
        assert_eq!(p.flow.partition_bucket_ms, Some(6 * 3_600_000));
        let e = err_of(json!({"partitionBucketTimePeriod": "soon"}));
        assert!(e.contains("partitionBucketTimePeriod") && e.contains("'soon'"), "{e}");
        assert_eq!(t.flow.merge_type, MergeType::Rollup);
        assert_eq!(t.flow.aggregations["n"], AggregationType::Max);
        assert_eq!(t.flow.max_records_per_segment, 1000);
        assert_eq!((t.flow.max_attempts_per_task, t.flow.timeout_ms), (Some(5), Some(60_000)));
    }

    #[test]
    fn updates_add_and_widen_columns_and_refuse_the_rest() {
        let old = TableSpec::from_json(config(json!({"mergeType": "rollup"})), schema()).unwrap();
        let with = |f: &dyn Fn(&mut Value), task: Value| {
            let mut s = schema();
            f(&mut s);
            TableSpec::from_json(config(task), s)
                .map_err(|e| e.to_string())
                .and_then(|new| table_changes(&old, &new).map_err(|e| e.to_string()))
        };
        let rollup = json!({"mergeType": "rollup"});
        let added = with(
            &|s| {
                s["dimensionFieldSpecs"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "origin", "dataType": "STRING", "defaultNullValue": "?"}))
            },
            json!({"mergeType": "rollup", "maxNumRecordsPerSegment": "10"}),
        )
        .unwrap();
        assert_eq!(
            added,
            vec![
                "added column origin (dimensionFieldSpecs STRING; earlier segments read it as ?)".to_string(),
                "task.taskTypeConfigsMap.RealtimeToOfflineSegmentsTask.maxNumRecordsPerSegment: added '10'".to_string()
            ]
        );
        let widened = with(&|s| s["metricFieldSpecs"][1]["dataType"] = json!("LONG"), rollup.clone()).unwrap();
        assert!(widened.is_empty(), "LONG -> LONG: {widened:?}");
        let e = with(&|s| s["metricFieldSpecs"][1]["dataType"] = json!("INT"), rollup.clone()).unwrap_err();
        assert!(e.contains("metricFieldSpecs[n].dataType") && e.contains("LONG -> INT"), "{e}");
        let e = with(&|s| s["metricFieldSpecs"][0]["dataType"] = json!("STRING"), rollup.clone()).unwrap_err();
        assert!(e.contains("metricFieldSpecs[delay]"), "{e}");
        let e =
            with(&|s| s["metricFieldSpecs"] = json!([{"name": "delay", "dataType": "DOUBLE"}]), json!({})).unwrap_err();
        assert!(e.contains("metricFieldSpecs[n]") && e.contains("removed"), "{e}");
        let e = with(&|s| s["dateTimeFieldSpecs"][0]["format"] = json!("1:SECONDS:EPOCH"), rollup.clone()).unwrap_err();
        assert!(e.contains("dateTimeFieldSpecs[ts]") && e.contains("unchanged"), "{e}");
        // FLOAT -> DOUBLE is a widening too
        let mut s = schema();
        s["metricFieldSpecs"][0]["dataType"] = json!("FLOAT");
        let f = TableSpec::from_json(config(json!({})), s).unwrap();
        let d = TableSpec::from_json(config(json!({})), schema()).unwrap();
        assert_eq!(table_changes(&f, &d).unwrap(), vec!["column delay: FLOAT -> DOUBLE".to_string()]);
        assert!(table_changes(&d, &f).unwrap_err().to_string().contains("DOUBLE -> FLOAT"));
    }

    #[test]
    fn every_schema_change_is_applied_or_refused_by_name() {
        let mut strict = schema();
        strict["metricFieldSpecs"][1]["notNull"] = json!(true);
        let old = TableSpec::from_json(config(json!({})), strict.clone()).unwrap();
        let changes = |f: &dyn Fn(&mut Value)| {
            let mut s = strict.clone();
            f(&mut s);
            table_changes(&old, &TableSpec::from_json(config(json!({})), s).unwrap()).map_err(|e| e.to_string())
        };
        assert_eq!(
            changes(&|s| s["metricFieldSpecs"][1]["notNull"] = json!(false)).unwrap(),
            vec!["column n: notNull: 'true' -> 'false'".to_string()],
            "relaxing notNull is a change, not 'nothing to change'"
        );
        assert_eq!(
            changes(&|s| {
                s["metricFieldSpecs"][1].as_object_mut().unwrap().remove("notNull");
            })
            .unwrap(),
            vec!["column n: notNull: removed (was 'true')".to_string()]
        );
        assert_eq!(
            changes(&|s| s["dimensionFieldSpecs"][0]["defaultNullValue"] = json!("?")).unwrap(),
            vec!["column carrier: defaultNullValue: added '?'".to_string()]
        );
        assert_eq!(
            changes(&|s| s["primaryKeyColumns"] = json!(["carrier"])).unwrap(),
            vec!["schema.primaryKeyColumns: added '[\"carrier\"]'".to_string()]
        );
        assert!(changes(&|_| {}).unwrap().is_empty(), "no change, no line");
    }

    #[test]
    fn keys_that_recut_committed_windows_are_named() {
        let old = TableSpec::from_json(config(json!({"mergeType": "rollup"})), schema()).unwrap();
        let bound = |task: Value| {
            let new = TableSpec::from_json(config(task), schema()).unwrap();
            lineage_bound_changes(&old, &new).into_iter().map(|(k, _, _)| k).collect::<Vec<_>>()
        };
        let key = |k: &str| format!("{TASK_PATH}.{k}");
        assert!(bound(json!({"mergeType": "rollup", "maxNumRecordsPerSegment": "10", "timeoutMs": "5"})).is_empty());
        assert_eq!(bound(json!({"mergeType": "rollup", "bucketTimePeriod": "1h"})), vec![key("bucketTimePeriod")]);
        assert_eq!(
            bound(json!({"mergeType": "rollup", "roundBucketTimePeriod": "1h"})),
            vec![key("roundBucketTimePeriod")]
        );
        assert_eq!(
            bound(json!({"mergeType": "rollup", "bucketTimeZone": "Europe/Paris"})),
            vec![key("bucketTimeZone")]
        );
        assert_eq!(bound(json!({"mergeType": "dedup"})), vec![key("mergeType")]);
        assert_eq!(bound(json!({"mergeType": "rollup", "n.aggregationType": "max"})), vec![key("n.aggregationType")]);
        let changed = bound(json!({"mergeType": "rollup", "offloadPredicate": "column(n) > numeric(0)"}));
        assert_eq!(changed, vec![key("offloadPredicate")]);
        let mut c = config(json!({"mergeType": "rollup"}));
        c["tableIndexConfig"]["segmentPartitionConfig"] =
            json!({"columnPartitionMap": {"carrier": {"functionName": "Murmur", "numPartitions": 4}}});
        let new = TableSpec::from_json(c, schema()).unwrap();
        let (k, o, n) = lineage_bound_changes(&old, &new).remove(0);
        assert_eq!((k.as_str(), o.as_str()), ("tableIndexConfig.segmentPartitionConfig", "none"));
        assert!(n.contains("carrier") && n.contains('4'), "{n}");
    }

    #[test]
    fn late_data_policy_and_name_postfix_are_checked() {
        let policy = |task: Value| TableSpec::from_json(config(task), schema()).map(|t| t.flow.late_data_policy);
        assert_eq!(policy(json!({})).unwrap(), LateDataPolicy::Rematerialize);
        assert_eq!(policy(json!({"lateDataPolicy": "Append"})).unwrap(), LateDataPolicy::Append);
        assert_eq!(policy(json!({"lateDataPolicy": "ignore", "mergeType": "dedup"})).unwrap(), LateDataPolicy::Ignore);
        let e = policy(json!({"lateDataPolicy": "append", "mergeType": "rollup"})).unwrap_err().to_string();
        assert!(e.contains("lateDataPolicy") && e.contains("concat"), "{e}");
        let e = err_of(json!({"segmentNamePostfix": "a b"}));
        assert!(e.contains("segmentNamePostfix") && e.contains("'a b'"), "{e}");
        let t = TableSpec::from_json(config(json!({"segmentNamePostfix": "v2"})), schema()).unwrap();
        assert_eq!(t.flow.segment_name_postfix.as_deref(), Some("v2"));
        let fixed = config(json!({"fixedSegmentName": "flights_all"}));
        TableSpec::from_json(fixed.clone(), schema()).expect("a stored table with the key still loads");
        let e = check_admission(&fixed).unwrap_err().to_string();
        assert!(
            e.contains("fixedSegmentName") && e.contains("'flights_all'") && e.contains("segmentNamePrefix"),
            "{e}"
        );
        check_admission(&config(json!({"fixedSegmentName": ""}))).unwrap();
        let e = err_of(json!({"segmentNamePrefix": "a/b"}));
        assert!(e.contains("segmentNamePrefix") && e.contains("'a/b'"), "{e}");
        let t = TableSpec::from_json(config(json!({"segmentNamePrefix": "flights_v2"})), schema()).unwrap();
        assert_eq!(t.flow.segment_name_prefix.as_deref(), Some("flights_v2"));
    }

    #[test]
    fn segment_mapper_threshold_is_a_positive_byte_count() {
        let t = TableSpec::from_json(config(json!({"segmentMapperFileSizeThresholdInBytes": "1000000"})), schema());
        assert_eq!(t.unwrap().flow.mapper_threshold_bytes, Some(1_000_000));
        assert_eq!(TableSpec::from_json(config(json!({})), schema()).unwrap().flow.mapper_threshold_bytes, None);
        let t = TableSpec::from_json(config(json!({"maxSegmentSizeBytes": "256MiB"})), schema());
        assert_eq!(t.unwrap().flow.max_segment_size_bytes, Some(256 << 20));
        let t = TableSpec::from_json(config(json!({"maxSegmentSizeBytes": 1_000_000})), schema());
        assert_eq!(t.unwrap().flow.max_segment_size_bytes, Some(1_000_000));
        for bad in ["0", "12", "lots", "-5MB"] {
            let e =
                TableSpec::from_json(config(json!({"maxSegmentSizeBytes": bad})), schema()).unwrap_err().to_string();
            assert!(e.contains("maxSegmentSizeBytes") && e.contains(&format!("'{bad}'")) && e.contains("1 KiB"), "{e}");
        }
        let e = err_of(json!({"segmentMapperFileSizeThresholdInBytes": "0"}));
        assert!(e.contains("segmentMapperFileSizeThresholdInBytes") && e.contains("'0'"), "{e}");
    }

    #[test]
    fn minion_instance_tag_defaults_to_pinots_untagged() {
        let tag = |task: Value| TableSpec::from_json(config(task), schema()).map(|t| t.flow.minion_instance_tag);
        assert_eq!(tag(json!({})).unwrap(), DEFAULT_MINION_TAG);
        assert_eq!(tag(json!({"minionInstanceTag": " "})).unwrap(), DEFAULT_MINION_TAG);
        assert_eq!(tag(json!({"minionInstanceTag": "heavy_minion.v2"})).unwrap(), "heavy_minion.v2");
        let e = tag(json!({"minionInstanceTag": "a b"})).unwrap_err().to_string();
        assert!(e.contains("minionInstanceTag") && e.contains("'a b'") && e.contains("--tag"), "{e}");
        assert_eq!(minion_instance_tag(&config(json!({"minionInstanceTag": "x"}))).unwrap(), "x");
    }

    #[test]
    fn retention_is_pinots_unit_and_value() {
        let with = |seg: Value| {
            let mut c = config(json!({}));
            for (k, v) in seg.as_object().unwrap() {
                c["segmentsConfig"][k] = v.clone();
            }
            TableSpec::from_json(c, schema()).map(|t| t.flow.retention_ms).map_err(|e| e.to_string())
        };
        assert_eq!(with(json!({})), Ok(None));
        assert_eq!(with(json!({"retentionTimeUnit": "DAYS", "retentionTimeValue": "5"})), Ok(Some(5 * 86_400_000)));
        assert_eq!(with(json!({"retentionTimeUnit": "hours", "retentionTimeValue": 36})), Ok(Some(36 * 3_600_000)));
        let e = with(json!({"retentionTimeUnit": "WEEKS", "retentionTimeValue": "1"})).unwrap_err();
        assert!(e.contains("segmentsConfig.retentionTimeUnit") && e.contains("WEEKS") && e.contains("DAYS"), "{e}");
        let e = with(json!({"retentionTimeUnit": "DAYS", "retentionTimeValue": "-3"})).unwrap_err();
        assert!(e.contains("segmentsConfig.retentionTimeValue") && e.contains("-3"), "{e}");
        let e = with(json!({"retentionTimeUnit": "DAYS"})).unwrap_err();
        assert!(e.contains("segmentsConfig.retentionTimeValue"), "{e}");
    }

    fn err_of(task: Value) -> String {
        TableSpec::from_json(config(task), schema()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_field_value_and_expectation() {
        let e = err_of(json!({"bucketTimePeriod": "0d"}));
        assert!(e.contains("RealtimeToOfflineSegmentsTask.bucketTimePeriod") && e.contains("'0d'"), "{e}");
        let e = err_of(json!({"mergeType": "squash"}));
        assert!(e.contains("mergeType") && e.contains("'squash'") && e.contains("concat, rollup or dedup"), "{e}");
        let e = err_of(json!({"carrier.aggregationType": "sum"}));
        assert!(e.contains("carrier.aggregationType") && e.contains("'carrier'"), "{e}");
        let e = err_of(json!({"nope.aggregationType": "sum"}));
        assert!(e.contains("nope.aggregationType"), "{e}");
        let e = err_of(json!({"delay.aggregationType": "avg"}));
        assert!(e.contains("'avg'") && e.contains("BYTES") && e.contains("'delay' is DOUBLE"), "{e}");
        let e = err_of(json!({"delay.aggregationType": "median"}));
        assert!(e.contains("'median'") && e.contains("sum, min, max, avg"), "{e}");
        let e = err_of(json!({"aggregationFunctionParameters.delay.lgK": "10"}));
        assert!(e.contains("aggregationFunctionParameters.delay.lgK") && e.contains("'delay' has none"), "{e}");
        let e = err_of(json!({"maxAttemptsPerTask": "0"}));
        assert!(e.contains("maxAttemptsPerTask") && e.contains("'0'"), "{e}");
        let e = err_of(json!({"timeoutMs": "soon"}));
        assert!(e.contains("timeoutMs") && e.contains("'soon'"), "{e}");
        let e = err_of(json!({"maxNumRecordsPerSegment": "-5"}));
        assert!(e.contains("maxNumRecordsPerSegment") && e.contains("'-5'"), "{e}");
    }

    #[test]
    fn checks_columns_and_table_type() {
        let mut c = config(json!({}));
        c["segmentsConfig"]["timeColumnName"] = json!("nope");
        let e = TableSpec::from_json(c, schema()).unwrap_err().to_string();
        assert!(e.contains("segmentsConfig.timeColumnName") && e.contains("'nope'"), "{e}");
        let mut c = config(json!({}));
        c["tableIndexConfig"]["sortedColumn"] = json!(["missing"]);
        let e = TableSpec::from_json(c, schema()).unwrap_err().to_string();
        assert!(e.contains("tableIndexConfig.sortedColumn") && e.contains("'missing'"), "{e}");
        let mut c = config(json!({}));
        c["tableType"] = json!("OFFLINE");
        let e = TableSpec::from_json(c, schema()).unwrap_err().to_string();
        assert!(e.contains("tableType") && e.contains("'OFFLINE'"), "{e}");
    }

    #[test]
    fn reads_partitioning() {
        let mut c = config(json!({}));
        c["tableIndexConfig"]["segmentPartitionConfig"] =
            json!({"columnPartitionMap": {"carrier": {"functionName": "Murmur", "numPartitions": 4}}});
        let t = TableSpec::from_json(c.clone(), schema()).unwrap();
        let p = t.flow.partitioning.unwrap();
        assert_eq!((p.column.as_str(), p.function, p.num_partitions), ("carrier", PartitionFunction::Murmur, 4));
        c["tableIndexConfig"]["segmentPartitionConfig"]["columnPartitionMap"]["carrier"]["functionName"] =
            json!("Modulo");
        let e = TableSpec::from_json(c, schema()).unwrap_err().to_string();
        assert!(e.contains("functionName") && e.contains("Modulo"), "{e}");
    }

    #[test]
    fn source_locations_are_normalized_before_any_prefix_test() {
        let n = |u: &str| normalize_source_uri(u);
        assert_eq!(n("file:///data/landing").unwrap(), "file:///data/landing/");
        assert_eq!(n("file:///data//landing///x/").unwrap(), "file:///data/landing/x/");
        assert_eq!(n("s3://b").unwrap(), "s3://b/");
        assert_eq!(n("s3://b//p//q").unwrap(), "s3://b/p/q/");
        for bad in [
            "file://data/landing",
            "file:///data/landing/../secret",
            "file:///data/landing/./x",
            "file:///data/landing/%2e%2e/secret",
            "file:///data/landing/%2E%2E%2Fsecret",
            "file:///data/landing\\..\\x",
            "file:///data/landing/%00",
            "s3://",
            "s3://b..c/x",
            "s3://b/../c",
            "hdfs://nn/x",
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
        let allow = parse_source_allow("file:///data/landing/, s3://landing").unwrap();
        assert!(source_allowed(&n("file:///data/landing/a").unwrap(), &allow));
        assert!(source_allowed(&n("file:///data//landing").unwrap(), &allow), "'//' is one '/'");
        assert!(!source_allowed(&n("file:///data/landing2").unwrap(), &allow), "a longer name is another directory");
        assert!(!source_allowed(&n("file:///data").unwrap(), &allow), "holds the allowed one, is not in it");
        assert!(source_allowed(&n("s3://landing/x").unwrap(), &allow));
        assert!(!source_allowed(&n("s3://landing-other/x").unwrap(), &allow));
        assert!(parse_source_allow("").unwrap().is_empty());
        assert!(parse_source_allow("file://rel").unwrap_err().contains("source 'file://rel'"));
    }
}
