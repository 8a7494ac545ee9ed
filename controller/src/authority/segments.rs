//! The controller's copy of each table's REALTIME segments, kept current by
//! what changed rather than by reading the table again (issue 21: cost that
//! follows change, not size).
//!
//! Every transaction that changes a table's REALTIME segments also rewrites
//! the table's segment marker (`segmarks/<raw>`,
//! [`crate::protocol::touch_marker`]), whose value names the segments it put
//! and deleted. While the marker stays, the copy is current. When it moved:
//!
//! - by exactly one write (its `version` is the copy's plus one, same
//!   creation), the named segments are read by name and applied
//!   ([`apply_named`]): etcd's work follows the change too;
//! - by more, one etcd read ([`r2o_common::kv::KvBackend::range_changed`])
//!   returns the records put since the copy's revision and the number of
//!   records in all, and [`apply_changes`] merges them in. A deletion is
//!   not among those records: it shows as a count lower than the merged
//!   copy's, and the table is read again whole.
//!
//! A table of 146,000 segments that gains one no longer costs a 66 MB read
//! and decode.

use crate::planner::{FactIndex, SegmentFacts};
use r2o_common::kv::Kv;
use r2o_common::meta::{decode_realtime, entries_between, read_realtime, Keys, SegmentMarker, SegmentMeta};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A table's REALTIME segments in name (key) order, each with its
/// [`SegmentFacts`]: what a plan reads of it, kept as the list changes so
/// that a plan walks 40 bytes a segment instead of every record and name
/// (`planner::plan_over`). Derefs to the records.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    list: Vec<SegmentMeta>,
    /// `facts[i]` is `SegmentFacts::of(&list[i])`.
    facts: FactIndex,
}

impl Segments {
    /// `list` (name order) with its facts: O(S).
    pub fn new(list: Vec<SegmentMeta>) -> Self {
        let facts = SegmentFacts::of_all(&list);
        Segments { list, facts }
    }

    /// The facts of each segment, in the list's order, and their summary.
    pub fn facts(&self) -> &FactIndex {
        &self.facts
    }

    /// Whether any segment was registered late (`late_before_ms` set):
    /// without one, no late-data run is owed. Read from the facts' summary,
    /// made once per change of the list.
    pub fn any_late(&self) -> bool {
        self.facts.summary().any_late()
    }

    /// Drops the segments named in `gone`.
    fn remove_named(&mut self, gone: &std::collections::HashSet<&str>) {
        let keep: Vec<bool> = self.list.iter().map(|s| !gone.contains(s.segment_name.as_str())).collect();
        let (mut a, mut b) = (keep.iter(), keep.iter());
        self.list.retain(|_| *a.next().expect("one flag a segment"));
        self.facts.retain(|_| *b.next().expect("one flag a segment"));
    }

    /// Appends `s` (sorting after every segment held).
    fn push(&mut self, s: SegmentMeta) {
        self.facts.push(SegmentFacts::of(&s));
        self.list.push(s);
    }
}

impl std::ops::Deref for Segments {
    type Target = [SegmentMeta];
    fn deref(&self) -> &[SegmentMeta] {
        &self.list
    }
}

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
    /// The marker's `version` and `create_revision` then (0: none): one
    /// write later is the same creation and the next version.
    version: i64,
    created: i64,
    /// Store revision from which every change is still to be read: the
    /// copy holds every change up to it (and maybe some after).
    revision: i64,
    /// The segments, in name (key) order.
    segments: Arc<Segments>,
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
    pub async fn get(&self, kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<(Arc<Segments>, i64)> {
        let table = {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            tables.entry(raw.to_string()).or_default().clone()
        };
        let mut slot = table.lock().await;
        let entry = kv.get(&keys.segments_marker(raw)).await?;
        let (marker, version, created) =
            entry.as_ref().map_or((0, 0, 0), |e| (e.mod_revision, e.version, e.create_revision));
        if let Some(c) = slot.as_ref().filter(|c| c.marker == marker) {
            return Ok((c.segments.clone(), marker));
        }
        let fresh = match (slot.take(), entry) {
            (Some(c), Some(entry)) => {
                // one marker write since the copy: its value names every change
                let named = (c.version > 0 && version == c.version + 1 && created == c.created)
                    .then(|| serde_json::from_slice::<SegmentMarker>(&entry.value).ok())
                    .flatten();
                // the copy is taken over when no caller still holds it
                let segments = Arc::try_unwrap(c.segments).unwrap_or_else(|shared| (*shared).clone());
                match named {
                    Some(named) => {
                        let put = read_named(kv, keys, raw, &named.put).await?;
                        let segments = apply_named(segments, put, &named.deleted);
                        // every change up to the marker's revision is in
                        Cached { marker, version, created, revision: marker, segments: Arc::new(segments) }
                    }
                    None => {
                        let prefix = keys.segments(&format!("{raw}_REALTIME"));
                        let changes = kv.range_changed(&prefix, c.revision + 1).await?;
                        let changed =
                            changes.kvs.iter().map(decode_realtime).collect::<r2o_common::Result<Vec<_>>>()?;
                        match apply_changes(segments, changed, changes.count) {
                            Some(segments) => Cached {
                                marker,
                                version,
                                created,
                                revision: changes.revision,
                                segments: Arc::new(segments),
                            },
                            None => {
                                tracing::debug!(table = raw, "segments deleted: reading the table's segments again");
                                read_all(kv, keys, raw, (marker, version, created)).await?
                            }
                        }
                    }
                }
            }
            _ => read_all(kv, keys, raw, (marker, version, created)).await?,
        };
        let segments = fresh.segments.clone();
        *slot = Some(fresh);
        Ok((segments, marker))
    }
}

async fn read_all(
    kv: &Kv,
    keys: &Keys,
    raw: &str,
    (marker, version, created): (i64, i64, i64),
) -> r2o_common::Result<Cached> {
    let (segments, revision) = read_realtime(kv, keys, raw).await?;
    Ok(Cached { marker, version, created, revision, segments: Arc::new(Segments::new(segments)) })
}

/// Segments named in a marker, read by name: each alone when they are few,
/// else one range read from the first name to the last (a registration's
/// batch is a run of consecutive names). A name no longer there was deleted
/// after the marker; the marker that deleted it names it.
async fn read_named(kv: &Kv, keys: &Keys, raw: &str, names: &[String]) -> r2o_common::Result<Vec<SegmentMeta>> {
    let typed = format!("{raw}_REALTIME");
    let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = Vec::with_capacity(wanted.len());
    if wanted.len() <= NAMED_GETS {
        let named: Vec<String> = wanted.iter().map(|n| keys.segment(&typed, n)).collect();
        for entry in futures::future::try_join_all(named.iter().map(|k| kv.get(k))).await?.into_iter().flatten() {
            out.push(decode_realtime(&entry)?);
        }
        return Ok(out);
    }
    let (Some(first), Some(last)) = (wanted.first(), wanted.last()) else { return Ok(out) };
    let prefix = keys.segments(&typed);
    let (first, last) = (keys.segment(&typed, first), keys.segment(&typed, last));
    for entry in entries_between(kv, &prefix, &first, &last).await? {
        if wanted.binary_search(&&entry.key[prefix.len()..]).is_ok() {
            out.push(decode_realtime(&entry)?);
        }
    }
    Ok(out)
}

/// Names read one `get` each by [`read_named`]; more are read as one range.
const NAMED_GETS: usize = 8;

/// `segments` (name order) with the segments a marker named applied: `put`
/// (as read now, any order) replace or join the copy, `deleted` leave it.
/// Pure.
pub fn apply_named(mut segments: Segments, mut put: Vec<SegmentMeta>, deleted: &[String]) -> Segments {
    if !deleted.is_empty() {
        let gone: std::collections::HashSet<&str> = deleted.iter().map(String::as_str).collect();
        segments.remove_named(&gone);
    }
    put.sort_by(|a, b| a.segment_name.cmp(&b.segment_name));
    merge(segments, put)
}

/// `segments` (name order) with `changed` (the records put since they were
/// read, name order) merged in: a changed record replaces the one of its
/// name, a new one goes in its place. `None` when the result does not hold
/// `count` segments (the number etcd has now): some were deleted, which the
/// changes cannot show, and the table must be read again.
pub fn apply_changes(segments: Segments, changed: Vec<SegmentMeta>, count: usize) -> Option<Segments> {
    let merged = merge(segments, changed);
    (merged.len() == count).then_some(merged)
}

/// `segments` with `changed` (both in name order) merged in: a changed
/// segment replaces the one of its name, a new one goes in its place; the
/// facts follow.
fn merge(mut segments: Segments, changed: Vec<SegmentMeta>) -> Segments {
    let mut added = vec![];
    for s in changed {
        match segments.list.binary_search_by(|x| x.segment_name.as_str().cmp(&s.segment_name)) {
            Ok(i) => {
                segments.facts[i] = SegmentFacts::of(&s);
                segments.list[i] = s;
            }
            Err(_) => added.push(s),
        }
    }
    match (segments.list.last(), added.first()) {
        // the usual case: new segments sort after every known one
        (Some(last), Some(first)) if last.segment_name < first.segment_name => {
            segments.list.reserve(added.len());
            segments.facts.reserve(added.len());
            added.into_iter().for_each(|s| segments.push(s));
        }
        (_, None) => {}
        _ => {
            let Segments { list: old, facts: old_facts } = std::mem::take(&mut segments);
            segments.list.reserve(old.len() + added.len());
            segments.facts.reserve(old.len() + added.len());
            let old_facts = old_facts.into_vec();
            let (mut a, mut b) = (old.into_iter().zip(old_facts).peekable(), added.into_iter().peekable());
            loop {
                let take_a = match (a.peek(), b.peek()) {
                    (Some((x, _)), Some(y)) => x.segment_name < y.segment_name,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                if take_a {
                    let (s, f) = a.next().expect("peeked");
                    segments.list.push(s);
                    segments.facts.push(f);
                } else {
                    segments.push(b.next().expect("peeked"));
                }
            }
        }
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Summary;
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
            start_time_ms: docs as i64 * 10,
            end_time_ms: docs as i64 * 10 + 5,
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
            // a summary made before the merge is not kept past it
            let copy = Segments::new(copy);
            copy.facts().summary();
            match apply_changes(copy, changed, now.len()) {
                Some(merged) => {
                    prop_assert_eq!(names_and_docs(&merged), want);
                    prop_assert_eq!(merged.facts().to_vec(), SegmentFacts::of_all(&merged).to_vec(), "facts follow the list");
                    prop_assert_eq!(merged.facts().summary(), &Summary::of(merged.facts()), "the summary too");
                }
                None => prop_assert!(deleted_known, "read again without a deletion"),
            }
        }
    }

    #[test]
    fn new_segments_in_the_middle_are_merged_in_order() {
        let copy = vec![seg("a", 1), seg("c", 1), seg("e", 1)];
        let merged = apply_changes(Segments::new(copy), vec![seg("b", 2), seg("c", 3), seg("f", 2)], 5).unwrap();
        assert_eq!(merged.facts().as_slice(), SegmentFacts::of_all(&merged).as_slice());
        assert_eq!(
            names_and_docs(&merged),
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3), ("e".into(), 1), ("f".into(), 2)]
        );
        // one deleted ("e") and one added ("d"): the count tells
        assert!(apply_changes(merged, vec![seg("d", 1)], 5).is_none());
    }

    /// Against the in-memory store: registrations, rewrites, deletions and a
    /// purge, one or several transactions between reads (the marker's names
    /// or the read by revision), markers written before they named anything,
    /// each followed by a read through the cache that must equal a read of
    /// the whole table.
    #[tokio::test]
    async fn the_cache_follows_puts_and_deletions_of_the_store() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/r2o");
        let cache = SegmentCache::default();
        // one transaction: puts and deletes, with the marker naming them
        // (or, `legacy`, a bare timestamp as markers held before)
        let txn = |puts: Vec<(String, u64)>, deletes: Vec<&'static str>, legacy: bool| {
            let (kv, keys) = (kv.clone(), keys.clone());
            async move {
                let mut ops: Vec<Op> =
                    puts.iter().map(|(n, d)| Op::put(keys.segment("t_REALTIME", n), encode(&seg(n, *d)))).collect();
                ops.extend(deletes.iter().map(|n| Op::delete(keys.segment("t_REALTIME", n))));
                ops.push(match legacy {
                    true => Op::put(keys.segments_marker("t"), b"1700000000000".to_vec()),
                    false => crate::protocol::touch_marker(
                        &keys,
                        "t",
                        1,
                        puts.iter().map(|(n, _)| n.clone()).collect(),
                        deletes.iter().map(|n| n.to_string()).collect(),
                    ),
                });
                assert!(kv.txn(vec![], ops).await.unwrap());
            }
        };
        let put = |names: &[(&str, u64)]| names.iter().map(|(n, d)| (n.to_string(), *d)).collect::<Vec<_>>();
        let check = |step: &'static str| {
            let (kv, keys, cache) = (kv.clone(), keys.clone(), cache.clone());
            async move {
                let (cached, marker) = cache.get(&kv, &keys, "t").await.unwrap();
                let (whole, _) = read_realtime(&kv, &keys, "t").await.unwrap();
                assert_eq!(names_and_docs(&cached), names_and_docs(&whole), "{step}");
                assert_eq!(cached.facts().as_slice(), SegmentFacts::of_all(&whole).as_slice(), "{step}");
                let created: Vec<i64> = cached.iter().map(|s| s.registered_revision).collect();
                assert_eq!(created, whole.iter().map(|s| s.registered_revision).collect::<Vec<_>>(), "{step}");
                assert_eq!(marker, kv.mod_revision(&keys.segments_marker("t")).await.unwrap().unwrap_or(0), "{step}");
                cached
            }
        };
        check("no table yet").await;
        txn(put(&[("s01", 1), ("s03", 1)]), vec![], false).await;
        check("first registrations").await;
        txn(put(&[("s04", 1)]), vec![], false).await;
        check("one more at the end, by the marker's names").await;
        txn(put(&[("s02", 1), ("s03", 7)]), vec![], false).await;
        let held = check("one in the middle and one rewritten").await;
        txn(vec![], vec!["s01"], false).await;
        check("one deleted, by the marker's names").await;
        assert_eq!(held.len(), 4, "a copy a caller holds is not changed under it");
        txn(put(&[("s05", 1)]), vec![], false).await;
        txn(put(&[("s06", 1), ("s02", 9)]), vec![], false).await;
        check("two transactions since the copy: read by revision").await;
        txn(put(&[("s07", 1)]), vec!["s04"], false).await;
        txn(put(&[("s08", 1)]), vec![], false).await;
        check("a deletion among two transactions: the count tells").await;
        txn(put(&[("s00", 2)]), vec!["s05"], true).await;
        check("a marker that names nothing").await;
        let many: Vec<(String, u64)> = (10..40).map(|i| (format!("s{i:02}"), 3)).collect();
        txn(many, vec!["s06"], false).await;
        check("more names than gets: one range read").await;
        txn(put(&[("s12", 4), ("s38", 4)]), vec![], false).await;
        check("two names far apart").await;
        let ops = vec![Op::delete_prefix(keys.segments("t_REALTIME")), Op::delete(keys.segments_marker("t"))];
        assert!(kv.txn(vec![], ops).await.unwrap());
        check("purged").await;
        txn(put(&[("s09", 1)]), vec![], false).await;
        check("registered again").await;
        // purged and registered twice since the copy: the marker's second
        // version is a new creation's, not one write after the copy's
        let ops = vec![Op::delete_prefix(keys.segments("t_REALTIME")), Op::delete(keys.segments_marker("t"))];
        assert!(kv.txn(vec![], ops).await.unwrap());
        txn(put(&[("s20", 1)]), vec![], false).await;
        txn(put(&[("s21", 1)]), vec![], false).await;
        check("purged and registered twice").await;
    }

    proptest! {
        /// One transaction's puts and deletes, applied from the names its
        /// marker gives, make the table as it is after it.
        #[test]
        fn a_markers_names_applied_are_the_table_after_its_transaction(
            before in proptest::collection::btree_map(0u16..100, 0u64..5, 0..40),
            puts in proptest::collection::btree_map(0u16..100, 5u64..10, 0..10),
            deletes in proptest::collection::btree_set(0u16..100, 0..10),
        ) {
            let name = |k: &u16| format!("s{k:04}");
            let deletes: Vec<u16> = deletes.into_iter().filter(|k| !puts.contains_key(k)).collect();
            let mut after = before.clone();
            after.extend(puts.iter().map(|(k, v)| (*k, *v)));
            for k in &deletes {
                after.remove(k);
            }
            let copy: Vec<SegmentMeta> = before.iter().map(|(k, v)| seg(&name(k), *v)).collect();
            // as read: any order
            let read: Vec<SegmentMeta> = puts.iter().rev().map(|(k, v)| seg(&name(k), *v)).collect();
            let copy = Segments::new(copy);
            copy.facts().summary();
            let merged = apply_named(copy, read, &deletes.iter().map(name).collect::<Vec<_>>());
            prop_assert_eq!(names_and_docs(&merged), after.iter().map(|(k, v)| (name(k), *v)).collect::<Vec<_>>());
            prop_assert_eq!(merged.facts().to_vec(), SegmentFacts::of_all(&merged).to_vec(), "facts follow the list");
            prop_assert_eq!(merged.facts().summary(), &Summary::of(merged.facts()), "the summary too");
        }
    }
}
