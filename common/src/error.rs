//! Errors of the shared layer. [`ConfigError`] is for table owners' input
//! (it always names the field, the value and what was expected); [`Error`] is
//! for the stores and data handling.

/// A value as an error shows it: whole up to 200 characters, else its
/// first 160 and its length (a refusal must stay readable, and fit a
/// gRPC header, whatever the caller sent).
fn shown(value: &str) -> String {
    let n = value.chars().count();
    if n <= 200 {
        value.to_string()
    } else {
        format!("{}... ({n} characters)", value.chars().take(160).collect::<String>())
    }
}

/// A table config, schema or setting that r2o cannot accept.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    /// A field is present but its value is wrong.
    #[error("invalid {field}: '{}', expected {expected}", shown(value))]
    Invalid {
        /// Config path of the field, e.g. `task.taskTypeConfigsMap.RealtimeToOfflineSegmentsTask.bucketTimePeriod`.
        field: String,
        /// The value as given.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A required field is absent.
    #[error("missing {field}: expected {expected}")]
    Missing {
        /// Config path of the field.
        field: String,
        /// What should be there.
        expected: String,
    },
    /// The document is not JSON of the expected shape.
    #[error("malformed {what}: {message}")]
    Malformed {
        /// Which document (`table config`, `schema`).
        what: String,
        /// The parser's message.
        message: String,
    },
}

/// Errors from the metadata store, the segment store and data handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metadata store (etcd) failed or could not be reached; retryable.
    #[error("metadata store: {0}")]
    Meta(String),
    /// A stored value does not decode; a bug or a foreign writer, not retryable.
    #[error("metadata at key '{key}' does not decode: {message}")]
    Codec {
        /// The etcd key.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// A request over one of etcd's limits (operations per transaction,
    /// bytes per request); a bug in how r2o shapes its writes, not retryable.
    #[error("metadata store limit: {0}")]
    Limit(String),
    /// A lease was lost or has expired; whatever it guarded must stop.
    #[error("lease {0} is lost")]
    LeaseLost(i64),
    /// The segment store failed; `retryable` says whether trying again may help.
    #[error("segment store at '{path}': {source}")]
    Store {
        /// Object path.
        path: String,
        /// The object_store error.
        #[source]
        source: object_store::Error,
    },
    /// A segment's data is unreadable or does not fit the table schema.
    #[error("segment '{segment}': {problem}")]
    Segment {
        /// Segment name (or file path).
        segment: String,
        /// What is wrong, naming the column where there is one.
        problem: String,
    },
    /// A rollup group's values of a bytes-backed metric (a sketch, an
    /// `AvgPair`) cannot be merged: two HLLs of different `log2m`, Theta
    /// sketches of different seeds. Not retryable: the same rows fail again.
    #[error("rollup of column '{column}': {problem}")]
    Rollup {
        /// The metric column.
        column: String,
        /// What could not be merged.
        problem: String,
    },
    /// Bad input from a user or a setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

impl Error {
    /// Whether trying the same call again may succeed (store and etcd hiccups).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Meta(_) => true,
            Error::Store { source, .. } => store_retryable(source),
            _ => false,
        }
    }
}

/// Whether an object-store call that failed with `e` may succeed if tried
/// again: anything but a missing object, an existing one, or a bad path.
pub fn store_retryable(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::InvalidPath { .. }
    )
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shown_by_their_start_and_length() {
        let e = ConfigError::Invalid { field: "f".into(), value: "(".repeat(100_000), expected: "at most 10".into() };
        let m = e.to_string();
        assert!(m.contains("(100000 characters)") && m.ends_with("expected at most 10") && m.len() < 300, "{m}");
        let e = ConfigError::Invalid { field: "f".into(), value: "1h".into(), expected: "a period".into() };
        assert_eq!(e.to_string(), "invalid f: '1h', expected a period");
    }
}
