//! The leader's copy of each table's committed OFFLINE files, kept current
//! by what changed rather than by reading the table's lineage and manifests
//! again (issue 21: cost that follows change; issue 23: the Delta log's
//! pass after every commit).
//!
//! The Delta projector needs, at each pass, the table's committed files
//! (`registry::offline_segments`). Read whole, that is every lineage record
//! and every manifest chunk of the table, decoded, after every commit: on a
//! table of 7,300 committed windows, ~45 ms of the controller's CPU and ~35
//! ms of etcd's per commit. The copy holds what the visible rule reads
//! ([`crate::registry::LineageFacts`], and of each manifest entry its
//! location, size, rows, commit time and window) and, at each pass, reads
//! only the lineage and manifest keys put since its revision
//! ([`r2o_common::kv::KvBackend::range_changed`]). A deletion (a retention
//! run, a flush, a purge, the janitor removing an attempt that never
//! committed) is not among the changes: it shows as fewer keys than the
//! merged copy holds, and the table is read again whole ([`Copy::apply`]).
//!
//! A chunk's canonical locations are kept end to end in one string, its
//! entries' other fields in one vector: two allocations a chunk rather than
//! one a file, so the long-lived copy does not pin pages among the pass's
//! short-lived allocations. An entry takes ~180 bytes (its location is most
//! of it): ~6.5 MB for the 36,526 files of the x100 backfill.

use crate::delta::CommittedFile;
use crate::registry::{manifest_attempt, visible_by, LineageFacts};
use r2o_common::kv::{Changes, KeyValue, Kv};
use r2o_common::meta::{chunks::decode_chunk, decode, Keys, LineageRecord, SegmentMeta};
use r2o_common::store::canonical_path;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One committed manifest entry: where its location ends in its chunk's
/// `locations`, the file's size, rows and commit time, and what the visible
/// rule reads of its window.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// End of its canonical location in [`Chunk::locations`], bytes (it
    /// starts where the entry before it ends).
    end: u32,
    size_bytes: u64,
    created_ms: i64,
    total_docs: u64,
    /// The window it records, UTC epoch ms (`None`: written before entries recorded it).
    window_start_ms: Option<i64>,
    /// Its last row's time, UTC epoch ms.
    end_time_ms: i64,
}

/// One manifest chunk: the task and attempt it belongs to, its entries'
/// canonical locations end to end, and its entries.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    task: String,
    attempt: u32,
    locations: String,
    entries: Vec<Entry>,
}

impl Chunk {
    /// Entry `i` as a file.
    fn file(&self, i: usize) -> CommittedFile<'_> {
        let start = if i == 0 { 0 } else { self.entries[i - 1].end as usize };
        let e = &self.entries[i];
        CommittedFile::new(&self.locations[start..e.end as usize], e.size_bytes, e.created_ms, e.total_docs)
    }
}

/// A table's lineage and manifests, compact, as of a store revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Copy {
    /// Every change up to this store revision is in (and maybe some after).
    revision: i64,
    /// Lineage key -> its facts and the key's create revision.
    lineages: BTreeMap<String, (LineageFacts, i64)>,
    /// Manifest chunk key -> the chunk.
    chunks: BTreeMap<String, Chunk>,
    /// Keys under the manifests' prefix that are not chunks (counted only).
    others: std::collections::BTreeSet<String>,
}

impl Copy {
    /// The copy with the lineage and manifest keys put since it (`lineages`
    /// read first, then `manifests`, each with the number of keys now under
    /// its prefix) merged in; `false` (and the copy unusable) when a key it
    /// held was deleted: more keys than the store counts. A manifest key
    /// whose rest (after `manifests/<raw>/`) is not `<task>/a<n>/..` is not
    /// a chunk and is only counted. Pure but for decoding.
    ///
    /// # Errors
    /// A record that does not decode.
    pub fn apply(
        &mut self,
        lineages: &Changes,
        manifests: &Changes,
        manifest_prefix: &str,
    ) -> r2o_common::Result<bool> {
        for kv in &lineages.kvs {
            let l: LineageRecord = decode(kv)?;
            self.lineages.insert(kv.key.clone(), (LineageFacts::of(&l), kv.create_revision));
        }
        for kv in &manifests.kvs {
            match chunk_of(kv, manifest_prefix)? {
                Some(c) => {
                    self.chunks.insert(kv.key.clone(), c);
                }
                None => {
                    self.others.insert(kv.key.clone());
                }
            }
        }
        self.revision = lineages.revision.min(manifests.revision);
        Ok(self.lineages.len() == lineages.count && self.chunks.len() + self.others.len() == manifests.count)
    }

    /// The committed files readers see ([`visible_by`]), in chunk key order.
    pub fn files(&self) -> Vec<CommittedFile<'_>> {
        let chunks: Vec<&Chunk> = self.chunks.values().collect();
        let visible = visible_by(
            self.lineages.values().map(|(l, rev)| (l, *rev)),
            chunks.iter().map(|c| (c.task.as_str(), c.attempt, c.entries.as_slice())),
            |e| (e.window_start_ms, e.end_time_ms),
        );
        visible.into_iter().map(|(c, i)| chunks[c].file(i)).collect()
    }

    /// The store revision every change up to which is in.
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

fn chunk_of(kv: &KeyValue, prefix: &str) -> r2o_common::Result<Option<Chunk>> {
    let Some((task, attempt)) = kv.key.strip_prefix(prefix).and_then(manifest_attempt) else { return Ok(None) };
    let metas = decode_chunk::<SegmentMeta>(kv)?;
    let mut locations = String::with_capacity(metas.iter().map(|s| s.location.len()).sum());
    let mut entries = Vec::with_capacity(metas.len());
    for s in &metas {
        locations.push_str(&canonical_path(&s.location));
        let end = u32::try_from(locations.len()).map_err(|_| r2o_common::Error::Codec {
            key: kv.key.clone(),
            message: "a manifest chunk's locations past 4 GiB".into(),
        })?;
        entries.push(Entry {
            end,
            size_bytes: s.size_bytes,
            created_ms: s.created_ms,
            total_docs: s.total_docs,
            window_start_ms: s.window_start_ms,
            end_time_ms: s.end_time_ms,
        });
    }
    locations.shrink_to_fit();
    Ok(Some(Chunk { task: task.to_string(), attempt, locations, entries }))
}

/// Each table's [`Copy`], for the leader's Delta passes.
#[derive(Clone, Default)]
pub struct CommittedCache {
    tables: Arc<Mutex<HashMap<String, Arc<Copy>>>>,
}

impl CommittedCache {
    /// The lineage and manifests of `raw` ([`Copy::files`]: the committed
    /// OFFLINE files, those `registry::offline_segments` gives), as of a
    /// revision at or after the call: reads what changed since the last
    /// call; the whole table on the first and after a deletion.
    ///
    /// # Errors
    /// etcd errors; a record that does not decode.
    pub async fn read(&self, kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<Arc<Copy>> {
        // taken over when no caller still holds it (an export running beside a pass)
        let held = self.lock().remove(raw).map(|c| Arc::try_unwrap(c).unwrap_or_else(|shared| (*shared).clone()));
        let copy = match held {
            Some(mut copy) => match read_into(&mut copy, kv, keys, raw).await? {
                true => copy,
                false => {
                    tracing::debug!(table = raw, "committed segments deleted: reading the table's again");
                    read_whole(kv, keys, raw).await?
                }
            },
            None => read_whole(kv, keys, raw).await?,
        };
        let copy = Arc::new(copy);
        self.lock().insert(raw.to_string(), copy.clone());
        Ok(copy)
    }

    /// Forgets `raw`'s copy (a purged table).
    pub fn forget(&self, raw: &str) {
        self.lock().remove(raw);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Copy>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Merges into `copy` what changed since its revision; `false` when a key it
/// held was deleted ([`Copy::apply`]).
async fn read_into(copy: &mut Copy, kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<bool> {
    let from = copy.revision + 1;
    // lineage first: a lineage read names manifests already written
    let lineages = kv.range_changed(&keys.lineages(raw), from).await?;
    let prefix = keys.manifests(raw);
    let manifests = kv.range_changed(&prefix, from).await?;
    copy.apply(&lineages, &manifests, &prefix)
}

async fn read_whole(kv: &Kv, keys: &Keys, raw: &str) -> r2o_common::Result<Copy> {
    let mut copy = Copy::default();
    // nothing held: the counts cannot fall short
    read_into(&mut copy, kv, keys, raw).await?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use r2o_common::kv::MemKv;
    use r2o_common::meta::{chunks, encode, LateRun, TaskId, WindowStats};

    fn lineage(task: &str, window: i64, late: Option<&str>) -> LineageRecord {
        LineageRecord {
            window_start_ms: window,
            window_end_ms: window + 10,
            windows: vec![WindowStats { start_ms: window, end_ms: window + 10, ..Default::default() }],
            task_id: task.into(),
            attempt: 1,
            late: late.map(|p| LateRun { policy: p.into(), segments: vec!["l".into()] }),
            ..Default::default()
        }
    }

    fn entry(raw: &str, name: &str, window: i64, recorded: bool) -> SegmentMeta {
        SegmentMeta {
            segment_name: name.into(),
            location: format!("ns/offline/{raw}_OFFLINE/{window}/{name}.parquet"),
            size_bytes: 100,
            total_docs: 7,
            end_time_ms: window + 5,
            window_start_ms: recorded.then_some(window),
            ..Default::default()
        }
    }

    /// What the store holds, as the full read (`registry::offline_segments`) sees it.
    async fn truth(kv: &Kv, keys: &Keys, raw: &str) -> Vec<String> {
        let mut v: Vec<String> = crate::registry::offline_segments(kv, keys, raw)
            .await
            .unwrap()
            .into_iter()
            .map(|s| canonical_path(&s.location))
            .collect();
        v.sort();
        v
    }

    fn sorted(copy: Arc<Copy>) -> Vec<String> {
        let files = copy.files();
        let mut v: Vec<String> = files.iter().map(|f| f.location().to_string()).collect();
        v.sort();
        v
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// stage attempt `a` of task `t` (window `w`) with `n` entries, `recorded` windows
        Stage { t: u8, w: u8, n: u8, recorded: bool },
        /// commit the last staged attempt of task `t` (a late run with this policy)
        Commit { t: u8, late: Option<bool> },
        /// delete task `t`'s lineage and manifests (retention, flush)
        Delete { t: u8 },
        /// the projector reads the copy
        Read,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u8..4, 0u8..4, any::<bool>()).prop_map(|(t, w, n, recorded)| Op::Stage { t, w, n, recorded }),
            (0u8..6, proptest::option::of(any::<bool>())).prop_map(|(t, late)| Op::Commit { t, late }),
            (0u8..6).prop_map(|t| Op::Delete { t }),
            Just(Op::Read),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever was staged, committed (as flow tasks and late runs of
        /// either policy), replaced and deleted between reads, the copy's
        /// files are those the full read gives.
        #[test]
        fn the_copy_is_the_full_read_after_any_changes(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let kv: Kv = Arc::new(MemKv::new());
                let keys = Keys::new("/r");
                let raw = "t";
                let cache = CommittedCache::default();
                // task -> (window, attempts staged)
                let mut staged: HashMap<u8, (i64, u32)> = HashMap::new();
                let mut serial = 0;
                for op in ops.iter().cloned().chain([Op::Read]) {
                    match op {
                        Op::Stage { t, w, n, recorded } => {
                            let window = w as i64 * 10;
                            let a = staged.get(&t).map_or(1, |(_, a)| a + 1);
                            staged.insert(t, (window, a));
                            let id = TaskId { table: raw.into(), window_start_ms: t as i64, created_ms: 1 };
                            let entries: Vec<SegmentMeta> =
                                (0..n).map(|i| entry(raw, &format!("t{t}a{a}e{i}"), window, recorded)).collect();
                            for (i, c) in chunks::encode_all(&entries).into_iter().enumerate() {
                                kv.put(&format!("{}{i:04}", keys.manifest(&id, a)), c, None).await.unwrap();
                            }
                        }
                        Op::Commit { t, late } => {
                            let Some((window, a)) = staged.get(&t).copied() else { continue };
                            let policy = late.map(|r| if r { "rematerialize" } else { "append" });
                            let id = TaskId { table: raw.into(), window_start_ms: t as i64, created_ms: 1 };
                            let mut l = lineage(&id.to_string(), window, policy);
                            l.attempt = a;
                            serial += 1;
                            let key = format!("{}{window:04}-{serial:04}", keys.lineages(raw));
                            kv.put(&key, encode(&l), None).await.unwrap();
                        }
                        Op::Delete { t } => {
                            let id = TaskId { table: raw.into(), window_start_ms: t as i64, created_ms: 1 };
                            for k in kv.range_keys(&keys.lineages(raw)).await.unwrap() {
                                let l: LineageRecord = decode(&kv.get(&k).await.unwrap().unwrap()).unwrap();
                                if l.task_id == id.to_string() {
                                    kv.delete(&k).await.unwrap();
                                }
                            }
                            for k in kv.range_keys(&format!("{}{id}/", keys.manifests(raw))).await.unwrap() {
                                kv.delete(&k).await.unwrap();
                            }
                            staged.remove(&t);
                        }
                        Op::Read => {
                            let got = sorted(cache.read(&kv, &keys, raw).await.unwrap());
                            prop_assert_eq!(got, truth(&kv, &keys, raw).await);
                        }
                    }
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn a_chunks_locations_are_kept_canonical_end_to_end() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/r");
        let id = TaskId { table: "t".into(), window_start_ms: 0, created_ms: 1 };
        let mut entries = vec![entry("t", "a", 0, true), entry("t", "b", 0, true), entry("t", "c", 0, true)];
        entries[1].location = "/ns//offline/t_OFFLINE/0/b%b.parquet".into();
        entries[2].size_bytes = 300;
        kv.put(&format!("{}0000", keys.manifest(&id, 1)), chunks::encode_all(&entries).remove(0), None).await.unwrap();
        kv.put(&format!("{}0000", keys.lineages("t")), encode(&lineage(&id.to_string(), 0, None)), None).await.unwrap();
        let copy = CommittedCache::default().read(&kv, &keys, "t").await.unwrap();
        let files = copy.files();
        let got: Vec<(&str, u64)> = files.iter().map(|f| (f.location(), f.size_bytes)).collect();
        assert_eq!(
            got,
            [
                ("ns/offline/t_OFFLINE/0/a.parquet", 100),
                ("ns/offline/t_OFFLINE/0/b%25b.parquet", 100),
                ("ns/offline/t_OFFLINE/0/c.parquet", 300)
            ]
        );
        assert_eq!(files[1].path_under("ns/offline/t_OFFLINE"), Some("0/b%25b.parquet"));
    }

    #[tokio::test]
    async fn a_deletion_reads_the_table_again_and_a_put_reads_only_itself() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/r");
        for (t, w) in [("a", 0), ("b", 10)] {
            let id = TaskId { table: "t".into(), window_start_ms: w, created_ms: 1 };
            let c = chunks::encode_all(&[entry("t", t, w, true)]).remove(0);
            kv.put(&format!("{}0000", keys.manifest(&id, 1)), c, None).await.unwrap();
            kv.put(&format!("{}{w:04}", keys.lineages("t")), encode(&lineage(&id.to_string(), w, None)), None)
                .await
                .unwrap();
        }
        let cache = CommittedCache::default();
        assert_eq!(cache.read(&kv, &keys, "t").await.unwrap().files().len(), 2);
        let before = cache.lock().get("t").unwrap().revision();
        // a key the copy holds is deleted: the counts show it
        kv.delete(&format!("{}0000", keys.lineages("t"))).await.unwrap();
        let mut copy = (**cache.lock().get("t").unwrap()).clone();
        let l = kv.range_changed(&keys.lineages("t"), before + 1).await.unwrap();
        let m = kv.range_changed(&keys.manifests("t"), before + 1).await.unwrap();
        assert!(l.kvs.is_empty(), "a deletion is not a change");
        assert!(!copy.apply(&l, &m, &keys.manifests("t")).unwrap(), "but the count falls short");
        assert_eq!(sorted(cache.read(&kv, &keys, "t").await.unwrap()), truth(&kv, &keys, "t").await);
        assert_eq!(cache.read(&kv, &keys, "t").await.unwrap().files().len(), 1);
    }
}
