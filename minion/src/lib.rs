//! The r2o minion: the segment processor ([`processor`]), Pinot's partition
//! functions ([`partition`]) and the worker loop ([`worker`]) that claims
//! tasks under its etcd lease, runs them and reports to the controller.
//! Tasks that fit the attempt's share of the memory budget ([`budget`]) run
//! in memory; larger ones on the bounded-memory path ([`stream`]), which
//! spills to local disk.

pub mod budget;
pub mod encode;
pub mod partition;
pub mod processor;
pub mod sketch;
pub mod stream;
pub mod worker;

pub use worker::{default_host, run, MinionConfig};
