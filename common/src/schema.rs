//! Pinot's schema JSON (`dimensionFieldSpecs`, `metricFieldSpecs`,
//! `dateTimeFieldSpecs`) as typed fields, and the time-column formats r2o
//! understands. Unknown keys are ignored here and kept in the stored JSON.

use arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, TimeUnit};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use crate::error::ConfigError;

/// Pinot column data types r2o supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// 32-bit signed integer (Arrow Int32).
    Int,
    /// 64-bit signed integer (Arrow Int64).
    Long,
    /// 32-bit float (Arrow Float32).
    Float,
    /// 64-bit float (Arrow Float64).
    Double,
    /// Boolean (Arrow Boolean).
    Boolean,
    /// Epoch milliseconds (Arrow Timestamp(ms)).
    Timestamp,
    /// UTF-8 string (Arrow Utf8).
    String,
    /// Bytes (Arrow Binary).
    Bytes,
}

impl DataType {
    fn parse(field: &str, text: &str) -> Result<DataType, ConfigError> {
        Ok(match text.to_ascii_uppercase().as_str() {
            "INT" => DataType::Int,
            "LONG" => DataType::Long,
            "FLOAT" => DataType::Float,
            "DOUBLE" => DataType::Double,
            "BOOLEAN" => DataType::Boolean,
            "TIMESTAMP" => DataType::Timestamp,
            "STRING" => DataType::String,
            "BYTES" => DataType::Bytes,
            _ => {
                return Err(ConfigError::Invalid {
                    field: field.to_string(),
                    value: text.to_string(),
                    expected: "one of INT, LONG, FLOAT, DOUBLE, BOOLEAN, TIMESTAMP, STRING, BYTES".into(),
                })
            }
        })
    }

    /// The Arrow type r2o uses for this Pinot type.
    pub fn arrow_type(self) -> ArrowType {
        match self {
            DataType::Int => ArrowType::Int32,
            DataType::Long => ArrowType::Int64,
            DataType::Float => ArrowType::Float32,
            DataType::Double => ArrowType::Float64,
            DataType::Boolean => ArrowType::Boolean,
            DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Millisecond, None),
            DataType::String => ArrowType::Utf8,
            DataType::Bytes => ArrowType::Binary,
        }
    }

    /// Whether the type can be summed, minimised and maximised.
    pub fn is_numeric(self) -> bool {
        matches!(self, DataType::Int | DataType::Long | DataType::Float | DataType::Double)
    }

    /// Pinot's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Int => "INT",
            DataType::Long => "LONG",
            DataType::Float => "FLOAT",
            DataType::Double => "DOUBLE",
            DataType::Boolean => "BOOLEAN",
            DataType::Timestamp => "TIMESTAMP",
            DataType::String => "STRING",
            DataType::Bytes => "BYTES",
        }
    }
}

/// Which of Pinot's field-spec lists a column came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `dimensionFieldSpecs`.
    Dimension,
    /// `metricFieldSpecs`.
    Metric,
    /// `dateTimeFieldSpecs`.
    DateTime,
}

/// The format of a time value: `value * size * unit_ms` is epoch ms.
///
/// From Pinot's `format`: `1:MILLISECONDS:EPOCH`, `1:SECONDS:EPOCH`,
/// `N:MINUTES|HOURS|DAYS:EPOCH`, the pipe form `EPOCH|MILLISECONDS|1`, and
/// `TIMESTAMP` (or `1:MILLISECONDS:TIMESTAMP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeFormat {
    /// Milliseconds in one unit of the stored value (`size * unit`), > 0.
    pub ms_per_value: i64,
}

impl TimeFormat {
    /// Epoch milliseconds, the identity format.
    pub const MILLIS: TimeFormat = TimeFormat { ms_per_value: 1 };

    /// Parses Pinot's `format` string; `field` names it for errors.
    pub fn parse(field: &str, text: &str) -> Result<TimeFormat, ConfigError> {
        let bad = || ConfigError::Invalid {
            field: field.to_string(),
            value: text.to_string(),
            expected: "an epoch or timestamp format: 1:MILLISECONDS:EPOCH, 1:SECONDS:EPOCH, \
                       N:MINUTES|HOURS|DAYS:EPOCH, EPOCH|MILLISECONDS|1 or TIMESTAMP"
                .into(),
        };
        let upper = text.trim().to_ascii_uppercase();
        if upper == "TIMESTAMP" || upper == "1:MILLISECONDS:TIMESTAMP" {
            return Ok(TimeFormat::MILLIS);
        }
        let (size, unit, kind) = if upper.contains('|') {
            let parts: Vec<&str> = upper.split('|').collect();
            match parts.as_slice() {
                [kind, unit] => ("1", *unit, *kind),
                [kind, unit, size] => (*size, *unit, *kind),
                _ => return Err(bad()),
            }
        } else {
            let parts: Vec<&str> = upper.split(':').collect();
            match parts.as_slice() {
                [size, unit, kind] => (*size, *unit, *kind),
                _ => return Err(bad()),
            }
        };
        if kind != "EPOCH" && kind != "TIMESTAMP" {
            return Err(bad());
        }
        let size: i64 = size.trim().parse().map_err(|_| bad())?;
        let unit_ms = match unit.trim() {
            "MILLISECONDS" => 1,
            "SECONDS" => 1_000,
            "MINUTES" => 60_000,
            "HOURS" => 3_600_000,
            "DAYS" => 86_400_000,
            _ => return Err(bad()),
        };
        if size <= 0 {
            return Err(bad());
        }
        Ok(TimeFormat { ms_per_value: size * unit_ms })
    }

    /// Epoch ms of a stored value (saturating).
    pub fn to_ms(&self, value: i64) -> i64 {
        value.saturating_mul(self.ms_per_value)
    }

    /// The stored value for epoch ms, rounded down (toward -inf).
    pub fn from_ms(&self, ms: i64) -> i64 {
        ms.div_euclid(self.ms_per_value)
    }
}

/// One column of the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// Column name.
    pub name: String,
    /// Data type.
    pub data_type: DataType,
    /// Dimension, metric or date-time.
    pub kind: FieldKind,
    /// For date-time fields: the value format.
    pub time_format: Option<TimeFormat>,
    /// Pinot's `defaultNullValue`, as given (used to fill a column missing from ingested files).
    pub default_null_value: Option<Value>,
    /// Pinot's `notNull`: a window holding a NULL in this column is not
    /// committed (the staged-data check fails its attempt).
    pub not_null: bool,
}

/// A Pinot schema as r2o uses it. Column order: dimensions, metrics, date-times.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// `schemaName`.
    pub name: String,
    /// All columns.
    pub fields: Vec<FieldSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSchema {
    schema_name: Option<String>,
    #[serde(default)]
    dimension_field_specs: Vec<RawField>,
    #[serde(default)]
    metric_field_specs: Vec<RawField>,
    #[serde(default)]
    date_time_field_specs: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawField {
    name: Option<String>,
    data_type: Option<String>,
    format: Option<String>,
    single_value_field: Option<bool>,
    default_null_value: Option<Value>,
    not_null: Option<bool>,
}

impl Schema {
    /// Parses Pinot's schema JSON.
    ///
    /// # Errors
    /// Names the field when a column lacks a name or type, a type is
    /// unsupported, a column is multi-valued, a name repeats, or a date-time
    /// format is not an epoch/timestamp format.
    pub fn from_json(value: &Value) -> Result<Schema, ConfigError> {
        let raw: RawSchema = serde_json::from_value(value.clone())
            .map_err(|e| ConfigError::Malformed { what: "schema".into(), message: e.to_string() })?;
        let mut fields = Vec::new();
        let lists = [
            ("dimensionFieldSpecs", FieldKind::Dimension, raw.dimension_field_specs),
            ("metricFieldSpecs", FieldKind::Metric, raw.metric_field_specs),
            ("dateTimeFieldSpecs", FieldKind::DateTime, raw.date_time_field_specs),
        ];
        for (list, kind, specs) in lists {
            for (i, f) in specs.into_iter().enumerate() {
                let at = format!("{list}[{i}]");
                let name = f
                    .name
                    .filter(|n| !n.is_empty())
                    .ok_or(ConfigError::Missing { field: format!("{at}.name"), expected: "a column name".into() })?;
                let at = format!("{list}[{name}]");
                let type_text = f.data_type.ok_or(ConfigError::Missing {
                    field: format!("{at}.dataType"),
                    expected: "a Pinot data type".into(),
                })?;
                let data_type = DataType::parse(&format!("{at}.dataType"), &type_text)?;
                if f.single_value_field == Some(false) {
                    return Err(ConfigError::Invalid {
                        field: format!("{at}.singleValueField"),
                        value: "false".into(),
                        expected: "single-value columns (multi-value columns are not supported)".into(),
                    });
                }
                let time_format = match (kind, f.format) {
                    (FieldKind::DateTime, Some(fmt)) => Some(TimeFormat::parse(&format!("{at}.format"), &fmt)?),
                    (FieldKind::DateTime, None) if data_type == DataType::Timestamp => Some(TimeFormat::MILLIS),
                    (FieldKind::DateTime, None) => {
                        return Err(ConfigError::Missing {
                            field: format!("{at}.format"),
                            expected: "a date-time format such as 1:MILLISECONDS:EPOCH".into(),
                        })
                    }
                    _ => None,
                };
                if fields.iter().any(|x: &FieldSpec| x.name == name) {
                    return Err(ConfigError::Invalid {
                        field: format!("{at}.name"),
                        value: name,
                        expected: "a column name not used twice".into(),
                    });
                }
                fields.push(FieldSpec {
                    name,
                    data_type,
                    kind,
                    time_format,
                    default_null_value: f.default_null_value,
                    not_null: f.not_null.unwrap_or(false),
                });
            }
        }
        if fields.is_empty() {
            return Err(ConfigError::Missing {
                field: "dimensionFieldSpecs/metricFieldSpecs/dateTimeFieldSpecs".into(),
                expected: "at least one column".into(),
            });
        }
        Ok(Schema { name: raw.schema_name.unwrap_or_default(), fields })
    }

    /// The column called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The Arrow schema of r2o's segment files (every column nullable).
    pub fn arrow_schema(&self) -> Arc<ArrowSchema> {
        Arc::new(ArrowSchema::new(
            self.fields.iter().map(|f| Field::new(&f.name, f.data_type.arrow_type(), true)).collect::<Vec<_>>(),
        ))
    }

    /// A stable fingerprint of the column names and types (FNV-1a 64, hex).
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in &self.fields {
            for b in f.name.bytes().chain([b':']).chain(f.data_type.name().bytes()).chain([b';']) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_time_formats() {
        assert_eq!(TimeFormat::parse("f", "1:MILLISECONDS:EPOCH").unwrap().ms_per_value, 1);
        assert_eq!(TimeFormat::parse("f", "1:SECONDS:EPOCH").unwrap().ms_per_value, 1000);
        assert_eq!(TimeFormat::parse("f", "5:MINUTES:EPOCH").unwrap().ms_per_value, 300_000);
        assert_eq!(TimeFormat::parse("f", "1:HOURS:EPOCH").unwrap().ms_per_value, 3_600_000);
        assert_eq!(TimeFormat::parse("f", "1:DAYS:EPOCH").unwrap().ms_per_value, 86_400_000);
        assert_eq!(TimeFormat::parse("f", "EPOCH|MILLISECONDS|1").unwrap().ms_per_value, 1);
        assert_eq!(TimeFormat::parse("f", "EPOCH|SECONDS").unwrap().ms_per_value, 1000);
        assert_eq!(TimeFormat::parse("f", "TIMESTAMP").unwrap().ms_per_value, 1);
        let err = TimeFormat::parse("dateTimeFieldSpecs[t].format", "1:DAYS:SIMPLE_DATE_FORMAT:yyyyMMdd")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dateTimeFieldSpecs[t].format") && err.contains("SIMPLE_DATE_FORMAT"), "{err}");
    }

    #[test]
    fn time_values_floor_to_ms() {
        let secs = TimeFormat::parse("f", "1:SECONDS:EPOCH").unwrap();
        assert_eq!(secs.to_ms(5), 5000);
        assert_eq!(secs.from_ms(5999), 5);
        assert_eq!(secs.from_ms(-1), -1);
    }

    #[test]
    fn parses_schema_and_rejects_bad_columns() {
        let s = Schema::from_json(&json!({
            "schemaName": "t",
            "dimensionFieldSpecs": [{"name": "a", "dataType": "STRING"}],
            "metricFieldSpecs": [{"name": "m", "dataType": "LONG", "defaultNullValue": 1}],
            "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}],
            "someFutureKey": true
        }))
        .unwrap();
        assert_eq!(s.fields.len(), 3);
        assert_eq!(s.field("m").unwrap().kind, FieldKind::Metric);
        let err = Schema::from_json(&json!({"dimensionFieldSpecs": [{"name": "a", "dataType": "MAP"}]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dimensionFieldSpecs[a].dataType") && err.contains("'MAP'"), "{err}");
    }
}
