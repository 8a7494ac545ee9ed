//! Tables as the controller reads them: each record read once per planning
//! pass (one paged range over `tables/`), and its Pinot config and schema
//! parsed only when the record changed (by etcd revision), so a pass over
//! unchanged tables parses nothing.

use r2o_common::config::TableSpec;
use r2o_common::kv::Kv;
use r2o_common::meta::{get_record, range_records, Keys, TableRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{ControllerError, Result};

/// One table as read: its record, its parsed view and the record's revision.
#[derive(Debug, Clone)]
pub struct TableView {
    /// Raw table name.
    pub raw: String,
    /// The stored record (config, schema, paused, version).
    pub record: TableRecord,
    /// The parsed config and schema.
    pub spec: Arc<TableSpec>,
    /// `mod_revision` of `tables/<raw>`.
    pub revision: i64,
}

/// (record revision, the table parsed at it).
type Parsed = (i64, Arc<TableSpec>);

/// Parsed tables by name, each with the record revision it was parsed at.
#[derive(Clone, Default)]
pub struct TableCache {
    inner: Arc<Mutex<HashMap<String, Parsed>>>,
}

impl TableCache {
    /// Every table, in name order (one paged read), each parsed only when
    /// its record changed since the last read; a table whose config no
    /// longer parses comes with its error.
    ///
    /// # Errors
    /// etcd errors.
    pub async fn all(&self, kv: &Kv, keys: &Keys) -> Result<Vec<(String, Result<TableView>)>> {
        let prefix = keys.tables();
        let records = range_records::<TableRecord>(kv, &prefix).await?;
        let mut seen = std::collections::HashSet::new();
        let out: Vec<(String, Result<TableView>)> = records
            .into_iter()
            .map(|(record, entry)| {
                let raw = entry.key[prefix.len()..].to_string();
                seen.insert(raw.clone());
                let view = self.view(&raw, record, entry.mod_revision);
                (raw, view)
            })
            .collect();
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|raw, _| seen.contains(raw));
        }
        Ok(out)
    }

    /// One table, `None` when it does not exist.
    ///
    /// # Errors
    /// etcd errors; a config that does not parse.
    pub async fn one(&self, kv: &Kv, keys: &Keys, raw: &str) -> Result<Option<TableView>> {
        match get_record::<TableRecord>(kv, &keys.table(raw)).await? {
            None => Ok(None),
            Some((record, entry)) => Ok(Some(self.view(raw, record, entry.mod_revision)?)),
        }
    }

    fn view(&self, raw: &str, record: TableRecord, revision: i64) -> Result<TableView> {
        let cached = self.inner.lock().ok().and_then(|m| m.get(raw).filter(|(r, _)| *r == revision).cloned());
        let spec = match cached {
            Some((_, spec)) => spec,
            None => {
                let spec = Arc::new(TableSpec::from_json(record.table_config.clone(), record.schema.clone())?);
                if let Ok(mut m) = self.inner.lock() {
                    m.insert(raw.to_string(), (revision, spec.clone()));
                }
                spec
            }
        };
        Ok(TableView { raw: raw.to_string(), record, spec, revision })
    }
}

/// A table's parsed config and schema, `None` when it does not exist.
///
/// # Errors
/// etcd errors; a config that does not parse.
pub async fn load_table(kv: &Kv, keys: &Keys, raw: &str) -> Result<Option<TableSpec>> {
    match get_record::<TableRecord>(kv, &keys.table(raw)).await? {
        None => Ok(None),
        Some((rec, _)) => Ok(Some(TableSpec::from_json(rec.table_config, rec.schema)?)),
    }
}

/// [`load_table`] for a table that must exist.
///
/// # Errors
/// [`ControllerError::NotFound`] naming the table; as [`load_table`].
pub async fn require_table(kv: &Kv, keys: &Keys, raw: &str) -> Result<TableSpec> {
    load_table(kv, keys, raw).await?.ok_or_else(|| ControllerError::NotFound(format!("table '{raw}'")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::kv::MemKv;
    use r2o_common::meta::encode;
    use serde_json::json;

    fn record(bucket: &str) -> TableRecord {
        TableRecord {
            table_config: json!({"tableName": "t", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {"bucketTimePeriod": bucket}}}}),
            schema: json!({"dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH"}]}),
            created_ms: 0,
            paused: false,
            version: 1,
            updated_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_table_is_parsed_again_only_when_its_record_changed() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/t");
        kv.put(&keys.table("t"), encode(&record("1h")), None).await.unwrap();
        let cache = TableCache::default();
        let first = cache.all(&kv, &keys).await.unwrap().remove(0).1.unwrap();
        let again = cache.one(&kv, &keys, "t").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first.spec, &again.spec), "an unchanged record is not parsed again");
        kv.put(&keys.table("t"), encode(&record("2h")), None).await.unwrap();
        let changed = cache.all(&kv, &keys).await.unwrap().remove(0).1.unwrap();
        assert_eq!(changed.spec.flow.bucket_ms, 2 * 3_600_000);
        assert!(changed.revision > first.revision);
        // a record that no longer parses comes with its error, the others still come
        kv.put(&keys.table("u"), encode(&record("0h")), None).await.unwrap();
        let all = cache.all(&kv, &keys).await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[1].1.as_ref().is_err_and(|e| e.to_string().contains("bucketTimePeriod")));
        assert!(cache.one(&kv, &keys, "nope").await.unwrap().is_none());
    }
}
