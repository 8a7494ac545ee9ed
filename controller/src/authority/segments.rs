//! The controller's copy of each table's REALTIME segments, kept current by
//! what changed rather than by reading the table again (issue 21: cost that
//! follows change, not size).
//!
//! Every transaction that changes a table's REALTIME segments also moves
//! the table's segment marker (`segmarks/<raw>`, [`crate::protocol::touch_marker`]).
//! While the marker stays, the copy is current. When it moved, one etcd
//! read ([`r2o_common::kv::KvBackend::range_changed`]) returns the records
//! put since the copy's revision and the number of records in all, and
//! [`apply_changes`] merges them in. A deletion (retention, a purge, a
//! `segment delete`) is not among the changes: it shows as a count lower
//! than the merged copy's, and the table is read again whole. A table of
//! 146,000 segments that gains one no longer costs a 66 MB read and decode.

use r2o_common::kv::Kv;
use r2o_common::meta::{decode_realtime, read_realtime, Keys, SegmentMeta};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A table's REALTIME segments as last read, with the revision of the
/// table's segment marker they reflect and the store revision they were
/// read at.
#[derive(Clone, Default)]
pub struct SegmentCache {
    tables: Arc<Mutex<HashMap<String, Slot>>>,
}

/// One table's copy, behind a lock its readers wait on (`None`: not read).
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// One table's copy.
struct Cached {
    /// `mod_revision` of the table's segment marker when read (0: none).
    marker: i64,
    /// Store revision from which every change is still to be read: the
    /// copy holds every change up to it (and maybe some after).
    revision: i64,
    /// The segments, in name (key) order.
    segments: Arc<Vec<SegmentMeta>>,
}

impl SegmentCache {
    /// The table's REALTIME segments in name order, and the revision of its
    /// segment marker read before them (a change made after that read moves
    /// the marker, so a transaction comparing it notices): one etcd read of
    /// the marker when nothing changed; one read of what changed when
    /// something did; the whole table when a segment was deleted. Callers of
    /// one table wait for one another's reads rather than repeat them.
    ///
    /// # Errors
    /// etcd errors; a record that does not decode.
    pub async fn get(&self, kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<(Arc<Vec<SegmentMeta>>, i64)> {
        let table = {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            tables.entry(raw.to_string()).or_default().clone()
        };
        let mut slot = table.lock().await;
        let marker = kv.mod_revision(&keys.segments_marker(raw)).await?.unwrap_or(0);
        if let Some(c) = slot.as_ref().filter(|c| c.marker == marker) {
            return Ok((c.segments.clone(), marker));
        }
        let fresh = match slot.take() {
            Some(c) if marker != 0 => {
                let changes = kv.range_changed(&keys.segments(&format!("{raw}_REALTIME")), c.revision + 1).await?;
                let changed = changes.kvs.iter().map(decode_realtime).collect::<r2o_common::Result<Vec<_>>>()?;
                // the copy is taken over when no caller still holds it
                let segments = Arc::try_unwrap(c.segments).unwrap_or_else(|shared| (*shared).clone());
                match apply_changes(segments, changed, changes.count) {
                    Some(segments) => Cached { marker, revision: changes.revision, segments: Arc::new(segments) },
                    None => {
                        tracing::debug!(table = raw, "segments deleted: reading the table's segments again");
                        read_all(kv, keys, raw, marker).await?
                    }
                }
            }
            _ => read_all(kv, keys, raw, marker).await?,
        };
        let segments = fresh.segments.clone();
        *slot = Some(fresh);
        Ok((segments, marker))
    }
}

async fn read_all(kv: &Kv, keys: &Keys, raw: &str, marker: i64) -> r2o_common::Result<Cached> {
    let (segments, revision) = read_realtime(kv, keys, raw).await?;
    Ok(Cached { marker, revision, segments: Arc::new(segments) })
}

/// `segments` (name order) with `changed` (the records put since they were
/// read, name order) merged in: a changed record replaces the one of its
/// name, a new one goes in its place. `None` when the result does not hold
/// `count` segments (the number etcd has now): some were deleted, which the
/// changes cannot show, and the table must be read again.
pub fn apply_changes(
    mut segments: Vec<SegmentMeta>,
    changed: Vec<SegmentMeta>,
    count: usize,
) -> Option<Vec<SegmentMeta>> {
    let mut added = vec![];
    for s in changed {
        match segments.binary_search_by(|x| x.segment_name.as_str().cmp(&s.segment_name)) {
            Ok(i) => segments[i] = s,
            Err(_) => added.push(s),
        }
    }
    if segments.len() + added.len() != count {
        return None;
    }
    match (segments.last(), added.first()) {
        // the usual case: new segments sort after every known one
        (Some(last), Some(first)) if last.segment_name < first.segment_name => segments.extend(added),
        (_, None) => {}
        _ => {
            let old = std::mem::take(&mut segments);
            segments.reserve(old.len() + added.len());
            let (mut a, mut b) = (old.into_iter().peekable(), added.into_iter().peekable());
            loop {
                let take_a = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => x.segment_name < y.segment_name,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                segments.extend(if take_a { a.next() } else { b.next() });
            }
        }
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use r2o_common::kv::{MemKv, Op};
    use r2o_common::meta::{encode, SegmentStatus};
    use std::collections::BTreeMap;

    fn seg(name: &str, docs: u64) -> SegmentMeta {
        SegmentMeta {
            segment_name: name.into(),
            table_name: "t_REALTIME".into(),
            status: SegmentStatus::Done,
            total_docs: docs,
            ..Default::default()
        }
    }

    fn names_and_docs(segments: &[SegmentMeta]) -> Vec<(String, u64)> {
        segments.iter().map(|s| (s.segment_name.clone(), s.total_docs)).collect()
    }

    proptest! {
        /// Whatever puts and deletes happened since a copy was read, the
        /// copy with the changes merged in is the table now, or `None` and
        /// then only when a segment it knew was deleted.
        #[test]
        fn merged_changes_are_the_table_now_or_none_after_a_deletion(
            before in proptest::collection::btree_map(0u16..300, 0u64..5, 0..60),
            ops in proptest::collection::vec((0u16..300, proptest::option::of(5u64..10)), 0..40),
        ) {
            let mut now: BTreeMap<u16, u64> = before.clone();
            let mut touched: BTreeMap<u16, ()> = BTreeMap::new();
            let mut deleted_known = false;
            for (k, v) in &ops {
                match v {
                    Some(v) => {
                        now.insert(*k, *v);
                        touched.insert(*k, ());
                    }
                    None => {
                        now.remove(k);
                        touched.remove(k);
                        deleted_known |= before.contains_key(k);
                    }
                }
            }
            let name = |k: &u16| format!("s{k:04}");
            let copy: Vec<SegmentMeta> = before.iter().map(|(k, v)| seg(&name(k), *v)).collect();
            // what etcd returns: the keys put since, with their values now
            let changed: Vec<SegmentMeta> = touched.keys().map(|k| seg(&name(k), now[k])).collect();
            let want: Vec<(String, u64)> = now.iter().map(|(k, v)| (name(k), *v)).collect();
            match apply_changes(copy, changed, now.len()) {
                Some(merged) => prop_assert_eq!(names_and_docs(&merged), want),
                None => prop_assert!(deleted_known, "read again without a deletion"),
            }
        }
    }

    #[test]
    fn new_segments_in_the_middle_are_merged_in_order() {
        let copy = vec![seg("a", 1), seg("c", 1), seg("e", 1)];
        let merged = apply_changes(copy, vec![seg("b", 2), seg("c", 3), seg("f", 2)], 5).unwrap();
        assert_eq!(
            names_and_docs(&merged),
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3), ("e".into(), 1), ("f".into(), 2)]
        );
        // one deleted ("e") and one added ("d"): the count tells
        assert!(apply_changes(merged, vec![seg("d", 1)], 5).is_none());
    }

    /// Against the in-memory store: registrations, a rewrite, a deletion and
    /// a purge, each followed by a read through the cache that must equal a
    /// read of the whole table.
    #[tokio::test]
    async fn the_cache_follows_puts_and_deletions_of_the_store() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/r2o");
        let cache = SegmentCache::default();
        let put = |names: Vec<(&'static str, u64)>| {
            let (kv, keys) = (kv.clone(), keys.clone());
            async move {
                let mut ops: Vec<Op> =
                    names.iter().map(|(n, d)| Op::put(keys.segment("t_REALTIME", n), encode(&seg(n, *d)))).collect();
                ops.push(crate::protocol::touch_marker(&keys, "t", 1));
                assert!(kv.txn(vec![], ops).await.unwrap());
            }
        };
        let check = |step: &'static str| {
            let (kv, keys, cache) = (kv.clone(), keys.clone(), cache.clone());
            async move {
                let (cached, marker) = cache.get(&kv, &keys, "t").await.unwrap();
                let (whole, _) = read_realtime(&kv, &keys, "t").await.unwrap();
                assert_eq!(names_and_docs(&cached), names_and_docs(&whole), "{step}");
                let created: Vec<i64> = cached.iter().map(|s| s.registered_revision).collect();
                assert_eq!(created, whole.iter().map(|s| s.registered_revision).collect::<Vec<_>>(), "{step}");
                assert_eq!(marker, kv.mod_revision(&keys.segments_marker("t")).await.unwrap().unwrap_or(0), "{step}");
            }
        };
        check("no table yet").await;
        put(vec![("s01", 1), ("s03", 1)]).await;
        check("first registrations").await;
        put(vec![("s04", 1)]).await;
        check("one more at the end").await;
        put(vec![("s02", 1), ("s03", 7)]).await;
        check("one in the middle and one rewritten").await;
        let held = cache.get(&kv, &keys, "t").await.unwrap().0;
        let ops = vec![Op::delete(keys.segment("t_REALTIME", "s01")), crate::protocol::touch_marker(&keys, "t", 2)];
        assert!(kv.txn(vec![], ops).await.unwrap());
        check("one deleted").await;
        assert_eq!(held.len(), 4, "a copy a caller holds is not changed under it");
        put(vec![("s05", 1)]).await;
        check("after the deletion").await;
        let ops = vec![Op::delete_prefix(keys.segments("t_REALTIME")), Op::delete(keys.segments_marker("t"))];
        assert!(kv.txn(vec![], ops).await.unwrap());
        check("purged").await;
        put(vec![("s09", 1)]).await;
        check("registered again").await;
    }
}
