//! Rollup aggregations (`<metric>.aggregationType`) and their parameters
//! (`aggregationFunctionParameters.<metric>.<param>`), parsed and validated
//! as Pinot's `RealtimeToOfflineSegmentsTaskGenerator.validateTaskConfigs`
//! does (apache/pinot master: `MinionConstants.MergeRollupTask.
//! AVAILABLE_CORE_VALUE_AGGREGATORS`, `ValueAggregatorFactory.isBytesBacked`,
//! `MergeTaskUtils.validateAggregationColumnType`). Pure: no I/O.
//!
//! Numeric aggregations (`sum`, `min`, `max`) keep the column's type;
//! `firstWithTime` / `lastWithTime` pick a value of any type by its row's
//! original time. The others are *bytes-backed*: the column is BYTES and
//! each value a serialized object (an `AvgPair`, a sketch or a t-digest)
//! that the minion merges per rollup group (`r2o_minion::sketch`).

use std::collections::BTreeMap;

use crate::error::ConfigError;
use crate::schema::{DataType, FieldKind, Schema};

/// Pinot's default `log2m` of `distinctCountHLL` (`CommonConstants.Helix.DEFAULT_HYPERLOGLOG_LOG2M`).
pub const DEFAULT_HLL_LOG2M: u8 = 8;
/// Pinot's default `nominalEntries` of Theta unions (`DEFAULT_THETA_SKETCH_NOMINAL_ENTRIES`).
pub const DEFAULT_THETA_NOMINAL_ENTRIES: u32 = 16_384;
/// Pinot's default Tuple sketch size: `2^DEFAULT_TUPLE_SKETCH_LGK` = 2^14 nominal entries.
pub const DEFAULT_TUPLE_NOMINAL_ENTRIES: u32 = 1 << 14;
/// Pinot's default `lgK` of CPC unions (`DEFAULT_CPC_SKETCH_LGK`).
pub const DEFAULT_CPC_LG_K: u8 = 12;
/// Pinot's default `p` of UltraLogLog (`DEFAULT_ULTRALOGLOG_P`).
pub const DEFAULT_ULL_P: u8 = 12;
/// Pinot's default `K` of KLL unions (`DEFAULT_KLL_SKETCH_K`).
pub const DEFAULT_KLL_K: u16 = 200;
/// Pinot's default t-digest compression (`PercentileTDigestAggregationFunction.DEFAULT_TDIGEST_COMPRESSION`).
pub const DEFAULT_TDIGEST_COMPRESSION: u32 = 100;

/// A metric's aggregation in rollup (`<metric>.aggregationType`), with the
/// parameters its merge uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggregationType {
    /// Sum of non-null values (Pinot's default).
    Sum,
    /// Minimum of non-null values.
    Min,
    /// Maximum of non-null values.
    Max,
    /// `avg`: Pinot's `AvgPair` (16 bytes: big-endian f64 sum, then
    /// big-endian i64 count); merged by adding sums and counts.
    Avg,
    /// `distinctCountHLL` / `distinctCountRawHLL`: stream-lib `HyperLogLog`
    /// bytes; merged register by register (max), so exact and
    /// order-independent. Both sides must have the same `log2m`.
    Hll,
    /// `distinctCountThetaSketch` / `distinctCountRawThetaSketch`: compact
    /// DataSketches Theta bytes; merged by a Theta union of
    /// `nominal_entries` (a power of two) and `sampling_probability`.
    Theta {
        /// `nominalEntries` (power of two, 16..=2^26; default 16,384).
        nominal_entries: u32,
        /// `samplingProbability` in (0, 1] (default 1).
        sampling_probability: f32,
    },
    /// `distinctCountTupleSketch`, `distinctCountRawIntegerSumTupleSketch`,
    /// `sumValuesIntegerSumTupleSketch`, `avgValueIntegerSumTupleSketch`:
    /// compact Tuple sketches with an integer summary; merged by a union
    /// that sums the summaries (Pinot's `IntegerSummary.Mode.Sum`).
    IntegerSumTuple {
        /// `nominalEntries` (power of two; default 2^14).
        nominal_entries: u32,
    },
    /// `distinctCountCPCSketch` / `distinctCountRawCPCSketch`: DataSketches
    /// CPC bytes; merged by a CPC union of `lg_k`.
    Cpc {
        /// `lgK`, 4..=26 (default 12).
        lg_k: u8,
    },
    /// `distinctCountULL` / `distinctCountRawULL`: hash4j `UltraLogLog`
    /// bytes (one byte `p`, then 2^p registers); merged register by
    /// register at the smaller `p`.
    Ull,
    /// `percentileKLL` / `percentileRawKLL`: DataSketches
    /// `KllDoublesSketch` bytes; merged into a KLL sketch of `k`.
    Kll {
        /// `K`, 8..=65535 (default 200).
        k: u16,
    },
    /// `percentileTDigest` / `percentileRawTDigest`: t-digest
    /// `MergingDigest` bytes (Pinot's `TDigestUtils`); merged by
    /// recompressing every centroid with the K_1 scale function at
    /// `compression`.
    TDigest {
        /// `compressionFactor`, 10..=10000 (default 100).
        compression: u32,
    },
    /// `firstWithTime`: the value of the group's row with the earliest
    /// original (pre-rounding) time, of a metric of any type (Pinot's
    /// `FirstWithTimeValueAggregator`).
    FirstWithTime,
    /// `lastWithTime`: the value of the group's row with the latest
    /// original time (Pinot's `LastWithTimeValueAggregator`).
    LastWithTime,
}

impl AggregationType {
    /// Whether the column holds serialized objects (BYTES), as Pinot's
    /// `ValueAggregatorFactory.isBytesBacked`.
    pub fn is_bytes_backed(self) -> bool {
        !matches!(
            self,
            AggregationType::Sum
                | AggregationType::Min
                | AggregationType::Max
                | AggregationType::FirstWithTime
                | AggregationType::LastWithTime
        )
    }

    /// Whether the value is picked by the rows' original time, as Pinot's
    /// `ValueAggregatorFactory.requiresTimeOrdering`.
    pub fn requires_time_ordering(self) -> bool {
        matches!(self, AggregationType::FirstWithTime | AggregationType::LastWithTime)
    }
}

/// The aggregation names Pinot's rollup accepts, as the error messages list them.
const ACCEPTED: &str = "sum, min, max, avg, distinctCountHLL, distinctCountRawHLL, distinctCountThetaSketch, \
     distinctCountRawThetaSketch, distinctCountTupleSketch, distinctCountRawIntegerSumTupleSketch, \
     sumValuesIntegerSumTupleSketch, avgValueIntegerSumTupleSketch, distinctCountCPCSketch, \
     distinctCountRawCPCSketch, distinctCountULL, distinctCountRawULL, percentileKLL, percentileRawKLL, \
     percentileTDigest, percentileRawTDigest, firstWithTime, lastWithTime";

/// Parses one `<metric>.aggregationType` with its parameters and checks it
/// against the schema, as Pinot's task validation does: the column must be
/// a metric of the schema; `sum`/`min`/`max` need a numeric column (INT,
/// LONG, FLOAT, DOUBLE); every other type needs a BYTES column. Names are
/// matched as Pinot's `AggregationFunctionType.getAggregationFunctionType`
/// (case and `_` ignored; `percentileKLL99` is `percentileKLL`).
///
/// `field` is the config path of the key (for errors), `text` its value,
/// `params` the column's `aggregationFunctionParameters.<metric>.*`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key, the value and what was
/// expected: an unknown or unsupported type (with why for the types Pinot
/// lists but r2o does not run), a column that is not a metric or has the
/// wrong type, a parameter the type does not take or out of range.
pub fn parse(
    field: &str,
    schema: &Schema,
    metric: &str,
    text: &str,
    params: &BTreeMap<String, String>,
    params_field: &str,
) -> Result<AggregationType, ConfigError> {
    let invalid =
        |expected: String| ConfigError::Invalid { field: field.to_string(), value: text.to_string(), expected };
    let name: String = text.chars().filter(|c| *c != '_' && *c != '$').collect::<String>().to_ascii_uppercase();
    let percentile = |kind: &str| {
        name.strip_prefix("PERCENTILE")
            .and_then(|r| r.strip_prefix(kind))
            .is_some_and(|digits| digits.chars().all(|c| c.is_ascii_digit()))
    };
    let param = |key: &str| params.get(key).map(String::as_str);
    let kind = match name.as_str() {
        "SUM" => AggregationType::Sum,
        "MIN" => AggregationType::Min,
        "MAX" => AggregationType::Max,
        "AVG" => AggregationType::Avg,
        "DISTINCTCOUNTHLL" | "DISTINCTCOUNTRAWHLL" => AggregationType::Hll,
        "DISTINCTCOUNTTHETASKETCH" | "DISTINCTCOUNTRAWTHETASKETCH" => {
            AggregationType::Theta { nominal_entries: DEFAULT_THETA_NOMINAL_ENTRIES, sampling_probability: 1.0 }
        }
        "DISTINCTCOUNTTUPLESKETCH"
        | "DISTINCTCOUNTRAWINTEGERSUMTUPLESKETCH"
        | "SUMVALUESINTEGERSUMTUPLESKETCH"
        | "AVGVALUEINTEGERSUMTUPLESKETCH" => {
            AggregationType::IntegerSumTuple { nominal_entries: DEFAULT_TUPLE_NOMINAL_ENTRIES }
        }
        "DISTINCTCOUNTCPCSKETCH" | "DISTINCTCOUNTRAWCPCSKETCH" => AggregationType::Cpc { lg_k: DEFAULT_CPC_LG_K },
        "DISTINCTCOUNTULL" | "DISTINCTCOUNTRAWULL" => AggregationType::Ull,
        _ if percentile("KLL") || percentile("RAWKLL") => AggregationType::Kll { k: DEFAULT_KLL_K },
        "DISTINCTCOUNTHLLPLUS" | "DISTINCTCOUNTRAWHLLPLUS" => {
            return Err(invalid(format!(
                "an aggregation with a rollup merge; Pinot accepts '{text}' in the task config but has no value \
                 aggregator for it (its rollup fails at run time), so r2o refuses it here: use distinctCountHLL, \
                 distinctCountULL or distinctCountCPCSketch"
            )))
        }
        _ if percentile("TDIGEST") || percentile("RAWTDIGEST") => {
            AggregationType::TDigest { compression: DEFAULT_TDIGEST_COMPRESSION }
        }
        "FIRSTWITHTIME" => AggregationType::FirstWithTime,
        "LASTWITHTIME" => AggregationType::LastWithTime,
        _ => return Err(invalid(format!("one of {ACCEPTED} (Pinot's rollup value aggregators)"))),
    };
    let Some(col) = schema.field(metric) else {
        return Err(invalid(format!("an aggregation of a column of the schema, but '{metric}' is not in it")));
    };
    if col.kind != FieldKind::Metric {
        return Err(invalid(format!(
            "an aggregation of a metric column, but '{metric}' is not one of the schema's metricFieldSpecs"
        )));
    }
    if kind.is_bytes_backed() && col.data_type != DataType::Bytes {
        return Err(invalid(format!(
            "'{text}' to aggregate a BYTES column (it merges serialized objects, as Pinot's \
             MergeTaskUtils.validateAggregationColumnType requires), but '{metric}' is {}",
            col.data_type.name()
        )));
    }
    if !kind.is_bytes_backed() && !kind.requires_time_ordering() && !col.data_type.is_numeric() {
        return Err(invalid(format!(
            "an aggregation for a numeric metric column, but '{metric}' is {} (a BYTES metric takes avg or a \
             sketch aggregation)",
            col.data_type.name()
        )));
    }
    // the parameters the type takes; a name it does not take is refused
    let takes: &[&str] = match kind {
        AggregationType::Hll => &["log2m"],
        AggregationType::Theta { .. } => &["nominalEntries", "samplingProbability"],
        AggregationType::IntegerSumTuple { .. } => &["nominalEntries"],
        AggregationType::Cpc { .. } => &["lgK"],
        AggregationType::Ull => &["p"],
        AggregationType::Kll { .. } => &["K"],
        AggregationType::TDigest { .. } => &["compressionFactor"],
        _ => &[],
    };
    for (k, v) in params {
        if !takes.contains(&k.as_str()) {
            let expected = if takes.is_empty() {
                format!("no parameter: '{text}' takes none")
            } else {
                format!("a parameter of '{text}': {}", takes.join(", "))
            };
            return Err(ConfigError::Invalid { field: format!("{params_field}.{k}"), value: v.clone(), expected });
        }
    }
    let number = |key: &str, lo: u64, hi: u64| -> Result<Option<u64>, ConfigError> {
        let Some(v) = param(key) else { return Ok(None) };
        match v.trim().parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(ConfigError::Invalid {
                field: format!("{params_field}.{key}"),
                value: v.to_string(),
                expected: format!("a whole number from {lo} to {hi}"),
            }),
        }
    };
    let power_of_two = |key: &str, lo: u64, hi: u64| -> Result<Option<u64>, ConfigError> {
        let n = number(key, lo, hi)?;
        match n {
            Some(n) if !n.is_power_of_two() => Err(ConfigError::Invalid {
                field: format!("{params_field}.{key}"),
                value: n.to_string(),
                expected: format!("a power of two from {lo} to {hi} (DataSketches' nominal entries)"),
            }),
            _ => Ok(n),
        }
    };
    Ok(match kind {
        AggregationType::Hll => {
            // the merge keeps each side's log2m; the value is only checked
            number("log2m", 1, 30)?;
            kind
        }
        AggregationType::Ull => {
            number("p", 3, 26)?;
            kind
        }
        AggregationType::Theta { nominal_entries, sampling_probability } => {
            let p = match param("samplingProbability") {
                None => sampling_probability,
                Some(v) => match v.trim().parse::<f32>() {
                    Ok(p) if p > 0.0 && p <= 1.0 => p,
                    _ => {
                        return Err(ConfigError::Invalid {
                            field: format!("{params_field}.samplingProbability"),
                            value: v.to_string(),
                            expected: "a probability greater than 0 and at most 1".into(),
                        })
                    }
                },
            };
            AggregationType::Theta {
                nominal_entries: power_of_two("nominalEntries", 16, 1 << 26)?.map_or(nominal_entries, |n| n as u32),
                sampling_probability: p,
            }
        }
        AggregationType::IntegerSumTuple { nominal_entries } => AggregationType::IntegerSumTuple {
            nominal_entries: power_of_two("nominalEntries", 16, 1 << 26)?.map_or(nominal_entries, |n| n as u32),
        },
        AggregationType::Cpc { lg_k } => AggregationType::Cpc { lg_k: number("lgK", 4, 26)?.map_or(lg_k, |n| n as u8) },
        AggregationType::Kll { k } => AggregationType::Kll { k: number("K", 8, 65_535)?.map_or(k, |n| n as u16) },
        AggregationType::TDigest { compression } => AggregationType::TDigest {
            compression: number("compressionFactor", 10, 10_000)?.map_or(compression, |n| n as u32),
        },
        other => other,
    })
}

/// Groups `aggregationFunctionParameters.<column>.<param>` keys of a task
/// config by column: `column -> param -> value`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming a key with no `<column>.<param>` after
/// the prefix.
pub fn parameters<'a>(
    task: impl Iterator<Item = (&'a String, String)>,
    task_path: &str,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, ConfigError> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (key, value) in task {
        let Some(rest) = key.strip_prefix("aggregationFunctionParameters.") else { continue };
        match rest.rsplit_once('.') {
            Some((column, param)) if !column.is_empty() && !param.is_empty() => {
                out.entry(column.to_string()).or_default().insert(param.to_string(), value);
            }
            _ => {
                return Err(ConfigError::Invalid {
                    field: format!("{task_path}.{key}"),
                    value,
                    expected: "a key of the form aggregationFunctionParameters.<column>.<parameter>".into(),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::from_json(&json!({
            "dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
            "metricFieldSpecs": [{"name": "n", "dataType": "LONG"}, {"name": "users", "dataType": "BYTES"}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "TIMESTAMP", "format": "TIMESTAMP"}]}))
        .unwrap()
    }

    fn p(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ok(metric: &str, text: &str, params: &[(&str, &str)]) -> AggregationType {
        parse("k", &schema(), metric, text, &p(params), "pp").unwrap()
    }

    fn err(metric: &str, text: &str, params: &[(&str, &str)]) -> String {
        parse("k", &schema(), metric, text, &p(params), "pp").unwrap_err().to_string()
    }

    #[test]
    fn names_match_as_pinots_and_take_pinots_defaults() {
        assert_eq!(ok("n", "SUM", &[]), AggregationType::Sum);
        assert_eq!(ok("n", "max", &[]), AggregationType::Max);
        assert_eq!(ok("users", "distinct_count_hll", &[]), AggregationType::Hll);
        assert_eq!(ok("users", "distinctCountRawHLL", &[]), AggregationType::Hll);
        assert_eq!(ok("users", "avg", &[]), AggregationType::Avg);
        assert_eq!(
            ok("users", "distinctCountThetaSketch", &[]),
            AggregationType::Theta { nominal_entries: 16_384, sampling_probability: 1.0 }
        );
        assert_eq!(
            ok("users", "sumValuesIntegerSumTupleSketch", &[]),
            AggregationType::IntegerSumTuple { nominal_entries: 16_384 }
        );
        assert_eq!(ok("users", "distinctCountCPCSketch", &[]), AggregationType::Cpc { lg_k: 12 });
        assert_eq!(ok("users", "distinctCountULL", &[]), AggregationType::Ull);
        assert_eq!(ok("users", "percentileKLL", &[]), AggregationType::Kll { k: 200 });
        assert_eq!(ok("users", "percentileRawKLL99", &[]), AggregationType::Kll { k: 200 });
    }

    #[test]
    fn parameters_set_the_merge_and_are_checked_by_key() {
        assert_eq!(
            ok("users", "distinctCountThetaSketch", &[("nominalEntries", "4096"), ("samplingProbability", "0.5")]),
            AggregationType::Theta { nominal_entries: 4096, sampling_probability: 0.5 }
        );
        assert_eq!(ok("users", "distinctCountCPCSketch", &[("lgK", "10")]), AggregationType::Cpc { lg_k: 10 });
        assert_eq!(ok("users", "percentileKLL", &[("K", "400")]), AggregationType::Kll { k: 400 });
        assert_eq!(ok("users", "distinctCountHLL", &[("log2m", "12")]), AggregationType::Hll);
        let e = err("users", "distinctCountThetaSketch", &[("nominalEntries", "1000")]);
        assert!(e.contains("pp.nominalEntries") && e.contains("'1000'") && e.contains("power of two"), "{e}");
        let e = err("users", "distinctCountCPCSketch", &[("lgK", "40")]);
        assert!(e.contains("pp.lgK") && e.contains("'40'") && e.contains("4 to 26"), "{e}");
        let e = err("users", "distinctCountThetaSketch", &[("samplingProbability", "0")]);
        assert!(e.contains("pp.samplingProbability") && e.contains("'0'"), "{e}");
        let e = err("users", "distinctCountCPCSketch", &[("nominalEntries", "4096")]);
        assert!(e.contains("pp.nominalEntries") && e.contains("lgK"), "{e}");
        let e = err("users", "avg", &[("K", "3")]);
        assert!(e.contains("pp.K") && e.contains("takes none"), "{e}");
    }

    #[test]
    fn column_types_are_checked_as_pinots() {
        // bytes-backed types only on BYTES metrics
        let e = err("n", "distinctCountHLL", &[]);
        assert!(e.contains("'distinctCountHLL'") && e.contains("BYTES") && e.contains("'n' is LONG"), "{e}");
        let e = err("n", "avg", &[]);
        assert!(e.contains("BYTES") && e.contains("'n' is LONG"), "{e}");
        // numeric types only on numeric metrics
        let e = err("users", "sum", &[]);
        assert!(e.contains("numeric") && e.contains("'users' is BYTES"), "{e}");
        // dimensions and unknown columns
        let e = err("carrier", "distinctCountHLL", &[]);
        assert!(e.contains("'carrier'") && e.contains("metricFieldSpecs"), "{e}");
        let e = err("nope", "sum", &[]);
        assert!(e.contains("'nope' is not in it"), "{e}");
    }

    #[test]
    fn types_pinot_cannot_merge_are_refused_with_why() {
        let e = err("users", "distinctCountHLLPlus", &[]);
        assert!(e.contains("'distinctCountHLLPlus'") && e.contains("no value aggregator"), "{e}");
        assert_eq!(ok("users", "percentileTDigest", &[]), AggregationType::TDigest { compression: 100 });
        assert_eq!(
            ok("users", "percentileRawTDigest99", &[("compressionFactor", "200")]),
            AggregationType::TDigest { compression: 200 }
        );
        // firstWithTime and lastWithTime: any metric (the table always has a time column)
        assert_eq!(ok("n", "firstWithTime", &[]), AggregationType::FirstWithTime);
        assert_eq!(ok("users", "last_with_time", &[]), AggregationType::LastWithTime);
        let e = err("carrier", "lastWithTime", &[]);
        assert!(e.contains("metricFieldSpecs"), "{e}");
        let e = err("users", "median", &[]);
        assert!(e.contains("'median'") && e.contains("distinctCountHLL"), "{e}");
    }

    #[test]
    fn parameters_are_grouped_by_column() {
        let keys = [
            ("aggregationFunctionParameters.users.nominalEntries".to_string(), "4096".to_string()),
            ("aggregationFunctionParameters.users.samplingProbability".to_string(), "0.5".to_string()),
            ("aggregationFunctionParameters.a.b.lgK".to_string(), "10".to_string()),
            ("mergeType".to_string(), "rollup".to_string()),
        ];
        let got = parameters(keys.iter().map(|(k, v)| (k, v.clone())), "t").unwrap();
        assert_eq!(got["users"], p(&[("nominalEntries", "4096"), ("samplingProbability", "0.5")]));
        assert_eq!(got["a.b"], p(&[("lgK", "10")]));
        let bad = [("aggregationFunctionParameters.users".to_string(), "1".to_string())];
        let e = parameters(bad.iter().map(|(k, v)| (k, v.clone())), "t").unwrap_err().to_string();
        assert!(e.contains("t.aggregationFunctionParameters.users") && e.contains("<column>.<parameter>"), "{e}");
    }
}
