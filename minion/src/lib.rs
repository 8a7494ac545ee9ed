//! The r2o minion: the segment processor ([`processor`]), Pinot's partition
//! functions ([`partition`]) and the worker loop ([`worker`]) that claims
//! tasks under its etcd lease, runs them and reports to the controller.

pub mod partition;
pub mod processor;
pub mod worker;

pub use worker::{run, MinionConfig};
