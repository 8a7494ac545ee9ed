//! r2o's shared layer: Pinot's table config and schema as typed values,
//! Pinot periods and window math, segment and task records, the metadata
//! store (etcd) and segment store (object_store) behind narrow traits, and
//! Arrow/Parquet helpers. Layering: `proto` <- `common` <- `controller`,
//! `minion`; nothing here knows either role.

pub mod access;
pub mod aggregation;
pub mod columnar;
pub mod config;
pub mod error;
pub mod kv;
pub mod meta;
pub mod period;
pub mod predicate;
pub mod retry;
pub mod schedule;
pub mod schema;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod window;
pub mod wire;

pub use error::{ConfigError, Error, Result};
