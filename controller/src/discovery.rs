//! Segment discovery: REALTIME files that arrive on their own.
//!
//! A table whose config has Pinot's
//! `ingestionConfig.batchIngestionConfig.batchConfigMaps` (see
//! [`r2o_common::config::FileSource`]) gets its files registered by the
//! leader, in place (never copied, written or deleted), as DONE REALTIME
//! segments:
//!
//! - a pass lists each source incrementally: only the keys after its
//!   cursor (S3's `StartAfter`; the cursor is the last key before which
//!   every listed file is registered), and every [`FULL_LISTING_EVERY`]
//!   passes the whole source, which finds files landing under keys that
//!   sort before the cursor (another partition's directory), changed
//!   registered files and deleted ones. The store pages every listing;
//! - a file is registered once it is *stable*: listed with the same size and
//!   version (ETag, else modification time) by two passes in a row, so a
//!   file still being written is not read half-way;
//! - its row count and time range come from the Parquet footer's statistics
//!   (or the time column when there are none); a file that cannot be read is
//!   registered with its error and no rows (load status SKIPPED), and never
//!   blocks the flow;
//! - a registered file that changes, or disappears before its rows moved, is
//!   refused: its segment gets the error, is never planned again, and an
//!   in-flight window holding it is planned again without it. It is never
//!   read again silently.
//!
//! [`step`] decides a pass from the listing and the registered segments
//! (pure); [`Discoverer`] does the I/O around it.

use futures::{StreamExt, TryStreamExt};
use r2o_common::config::{FileSource, TableSpec};
use r2o_common::kv::Compare;
use r2o_common::meta::{get_record, now_ms, SegmentMeta, SegmentStatus};
use r2o_common::store::{object_size, resolve, split_external, Store};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::authority::Authority;
use crate::error::{ControllerError, Result};

/// A listed file's identity: its size (bytes) and version (ETag, else
/// modification time, ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    /// Bytes.
    pub size: u64,
    /// ETag, else `mtime:<ms>`.
    pub version: String,
}

/// Every this many passes a source is listed whole; in between, only the
/// keys after its cursor.
pub const FULL_LISTING_EVERY: u32 = 30;

/// A file listed under a source that its patterns want.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Its key in its store (what the source's cursor compares).
    pub key: String,
    /// Its full URI (`file:///dir/f.parquet`, `s3://bucket/key`): the
    /// segment's location.
    pub location: String,
    /// Its path under the source's `inputDirURI`.
    pub relative: String,
    /// Size and version as listed.
    pub version: FileVersion,
}

/// What one pass does for one table.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Stable files not yet registered, to read and register.
    pub register: Vec<Listed>,
    /// Registered segments to refuse: (segment name, why).
    pub refuse: Vec<(String, String)>,
    /// Unregistered files seen for the first time or changed since the last
    /// pass: compared with the next listing.
    pub seen: HashMap<String, FileVersion>,
}

/// Decides a pass (pure): `listed` is this listing of every source
/// (`full`: whole, else only the keys after the cursors), `registered` the
/// table's REALTIME segments, `seen` the unstable files of the previous
/// pass, `sources` the table's sources (after a full listing, a registered
/// file under one of them that is not listed vanished) and `watermark_ms`
/// the table's watermark (a vanished file whose rows all moved is no loss).
pub fn step(
    listed: &[Listed],
    full: bool,
    registered: &[SegmentMeta],
    seen: &HashMap<String, FileVersion>,
    sources: &[FileSource],
    watermark_ms: Option<i64>,
) -> Step {
    let by_location: HashMap<&str, &SegmentMeta> = registered.iter().map(|s| (s.location.as_str(), s)).collect();
    let mut out = Step::default();
    for f in listed {
        match by_location.get(f.location.as_str()) {
            Some(s) => {
                let was = version_of(s);
                if s.error.is_empty() && was != f.version {
                    out.refuse.push((
                        s.segment_name.clone(),
                        format!(
                            "the file changed after registration ({} bytes, version {} when registered; now {} bytes, version {}); \
                             r2o does not read it again",
                            was.size, was.version, f.version.size, f.version.version
                        ),
                    ));
                }
            }
            None if seen.get(&f.location) == Some(&f.version) => out.register.push(f.clone()),
            None => {
                out.seen.insert(f.location.clone(), f.version.clone());
            }
        }
    }
    let listed_now: HashSet<&str> = listed.iter().map(|f| f.location.as_str()).collect();
    for s in registered {
        let ours = sources.iter().any(|src| s.location.starts_with(&src.input_dir_uri));
        let moved = watermark_ms.is_some_and(|w| s.end_time_ms < w);
        if full && ours && s.error.is_empty() && s.total_docs > 0 && !moved && !listed_now.contains(s.location.as_str())
        {
            out.refuse.push((
                s.segment_name.clone(),
                "the file was deleted before its rows moved; r2o does not read it again".to_string(),
            ));
        }
    }
    out
}

/// Checks every source of `spec`: it must lie inside one of the
/// operator's `allow`ed locations (`--source-allow`, canonical forms; empty:
/// discovery is off), and must not overlap the install's namespace
/// (`namespace` under the store `store_uri`): the janitor deletes objects
/// there that no segment names, and a source holding it would discover
/// r2o's own files. Pure; `store_uri` empty: the namespace is not checked.
///
/// # Errors
/// [`r2o_common::ConfigError::Invalid`] naming the source's `inputDirURI`
/// and the allowed locations.
pub fn check_sources(
    spec: &TableSpec,
    store_uri: &str,
    namespace: &str,
    allow: &[String],
) -> Result<(), r2o_common::ConfigError> {
    let field = |i: usize| format!("ingestionConfig.batchIngestionConfig.batchConfigMaps[{i}].inputDirURI");
    for (i, s) in spec.file_sources.iter().enumerate() {
        if !r2o_common::config::source_allowed(&s.input_dir_uri, allow) {
            return Err(r2o_common::ConfigError::Invalid {
                field: field(i),
                value: s.input_dir_uri.clone(),
                expected: if allow.is_empty() {
                    "no source: discovery is off on this controller (its --source-allow, R2O_SOURCE_ALLOW, is empty)"
                        .into()
                } else {
                    format!("a location inside one the operator allows (--source-allow): {}", allow.join(", "))
                },
            });
        }
    }
    if store_uri.is_empty() {
        return Ok(());
    }
    let install = format!("{}/{}", store_uri.trim_end_matches('/'), namespace.trim_matches('/'));
    let install = format!("{install}/");
    for (i, s) in spec.file_sources.iter().enumerate() {
        if s.input_dir_uri.starts_with(&install) || install.starts_with(&s.input_dir_uri) {
            return Err(r2o_common::ConfigError::Invalid {
                field: field(i),
                value: s.input_dir_uri.clone(),
                expected: format!(
                    "a location that neither holds nor lies inside r2o's own namespace {install} (its janitor deletes files there)"
                ),
            });
        }
    }
    Ok(())
}

/// The registered version of a discovered segment.
fn version_of(s: &SegmentMeta) -> FileVersion {
    FileVersion { size: s.size_bytes, version: s.source_version.clone() }
}

/// A segment name for the file at `relative` under its source: the path with
/// `%` and `/` percent-encoded (so two paths never share a name), at most
/// 255 bytes (a longer one keeps its first 230 bytes and a hash of the rest).
pub fn segment_name(relative: &str) -> String {
    let name = relative.replace('%', "%25").replace('/', "%2F");
    if name.len() <= 255 {
        return name;
    }
    // FNV-1a 64: stable across builds, unlike std's hasher
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut cut = 230;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &name[..cut])
}

/// Lists one source (paged by the store): whole, or only the keys after
/// `after` (its cursor); keeps the files its patterns want, in key order.
///
/// # Errors
/// Store errors (the pass is abandoned; nothing is decided on a partial listing).
pub async fn list_source(home: &Store, source: &FileSource, after: Option<&str>) -> r2o_common::Result<Vec<Listed>> {
    let (store, prefix) = resolve(home, &source.input_dir_uri)?;
    let (root, _) = split_external(&source.input_dir_uri)?;
    let dir = r2o_common::store::listed_text(&prefix).trim_end_matches('/');
    // keys are used as listed, never encoded again (see `store::object_path`)
    let as_listed = |k: &str| object_store::path::Path::parse(k).unwrap_or_else(|_| object_store::path::Path::from(k));
    let path = (!dir.is_empty()).then(|| as_listed(dir));
    let listing = match after {
        Some(k) => store.list_with_offset(path.as_ref(), &as_listed(k)),
        None => store.list(path.as_ref()),
    };
    let metas: Vec<object_store::ObjectMeta> = listing
        .try_collect()
        .await
        .map_err(|source| r2o_common::Error::Store { path: source_text(&root, dir), source })?;
    let mut out = Vec::new();
    for m in metas {
        let key = m.location.as_ref();
        let relative = if dir.is_empty() { key } else { key.strip_prefix(dir).unwrap_or(key).trim_start_matches('/') };
        if !source.wants(relative) {
            continue;
        }
        let version = r2o_common::store::version_text(&m);
        out.push(Listed {
            key: key.to_string(),
            location: source_text(&root, key),
            relative: relative.to_string(),
            version: FileVersion { size: m.size, version },
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// A source's cursor after a pass: the last of `listed` (one source's
/// listing, in key order, all after `cursor`) before the first file not
/// `handled` (registered, or never to be), else `cursor`. Pure.
pub fn advance_cursor(cursor: Option<String>, listed: &[Listed], handled: &dyn Fn(&Listed) -> bool) -> Option<String> {
    let mut cursor = cursor;
    for f in listed {
        if !handled(f) {
            break;
        }
        cursor = Some(f.key.clone());
    }
    cursor
}

/// `root` (`file:///`, `s3://bucket`) joined with a path under it.
fn source_text(root: &str, path: &str) -> String {
    if root.ends_with('/') {
        format!("{root}{path}")
    } else {
        format!("{root}/{path}")
    }
}

/// The leader's discovery state per table (kept in memory: a new leader
/// starts with a full listing and needs two passes before it registers).
#[derive(Default)]
pub struct Discoverer {
    tables: HashMap<String, TableState>,
}

#[derive(Default)]
struct TableState {
    /// Unstable files of the last pass: listed once, or changed since.
    seen: HashMap<String, FileVersion>,
    /// Per source (`inputDirURI`): the key after which the next
    /// incremental listing starts.
    cursors: HashMap<String, String>,
    /// Passes so far (every [`FULL_LISTING_EVERY`]th is a full listing).
    passes: u32,
}

/// What one pass did to one table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableReport {
    /// Files registered with rows.
    pub registered: usize,
    /// Files registered SKIPPED because they cannot be read (or have no time).
    pub unreadable: usize,
    /// Registered files refused because they changed or vanished.
    pub refused: usize,
}

impl Discoverer {
    /// One pass over every table with sources.
    ///
    /// # Errors
    /// etcd errors reading the tables; a table's own failure is logged and
    /// the others go on.
    pub async fn pass(&mut self, auth: &Authority) -> r2o_common::Result<()> {
        // the planner's table cache: configs parsed once per change, not per pass
        let tables = auth.tables.all(&auth.kv, &auth.keys).await.map_err(ControllerError::into_common)?;
        let mut names = HashSet::new();
        for (_, view) in tables {
            let Ok(view) = view else { continue };
            let spec = view.spec.as_ref();
            if spec.file_sources.is_empty() {
                continue;
            }
            // a table added before the operator narrowed --source-allow: its
            // sources outside the list are not read (the namespace check is
            // done at add and update)
            if let Err(e) = check_sources(spec, "", "", &auth.cfg.source_allow) {
                if let Some(m) = &auth.metrics {
                    m.errors.with_label_values(&["discovery"]).inc();
                }
                warn!(table = %spec.name, error = %e, "discovery skips a table whose source is not allowed");
                continue;
            }
            names.insert(spec.name.clone());
            match self.table(auth, spec).await {
                Ok(r) if r != TableReport::default() => {
                    info!(table = %spec.name, registered = r.registered, unreadable = r.unreadable, refused = r.refused, "discovery pass");
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(m) = &auth.metrics {
                        m.errors.with_label_values(&["discovery"]).inc();
                    }
                    warn!(table = %spec.name, error = %e, "discovery pass failed; trying on the next one");
                }
            }
        }
        self.tables.retain(|t, _| names.contains(t));
        Ok(())
    }

    /// One pass over one table's sources.
    async fn table(&mut self, auth: &Authority, spec: &TableSpec) -> Result<TableReport> {
        let raw = spec.name.as_str();
        let mut state = self.tables.remove(raw).unwrap_or_default();
        let full = state.passes.is_multiple_of(FULL_LISTING_EVERY);
        state.passes = state.passes.wrapping_add(1);
        let mut per_source: Vec<(String, Vec<Listed>)> = Vec::new();
        for source in &spec.file_sources {
            let after = if full { None } else { state.cursors.get(&source.input_dir_uri).map(String::as_str) };
            per_source.push((source.input_dir_uri.clone(), list_source(&auth.store, source, after).await?));
        }
        let listed: Vec<Listed> = per_source.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
        let (segments, _) = auth.segments.get(&auth.kv, &auth.keys, raw).await?;
        let watermark = get_record::<r2o_common::meta::WatermarkRecord>(&auth.kv, &auth.keys.watermark(raw))
            .await?
            .map(|(w, _)| w.watermark_ms);
        let step = step(&listed, full, &segments, &state.seen, &spec.file_sources, watermark);
        let mut report = TableReport::default();
        for (name, why) in &step.refuse {
            if refuse(auth, spec, name, why).await? {
                error!(table = %raw, segment = %name, reason = %why, "discovered file refused");
                report.refused += 1;
                count(auth, raw, "changed");
            }
        }
        let mut next_seen = step.seen;
        // handled: registered before or now, or never to be (a name taken by another segment)
        let mut handled: HashSet<String> = segments.iter().map(|s| s.location.clone()).collect();
        let taken: HashSet<&str> = segments.iter().map(|s| s.segment_name.as_str()).collect();
        let mut fresh: Vec<Listed> = Vec::new();
        for f in step.register {
            let name = segment_name(&f.relative);
            if taken.contains(name.as_str()) {
                warn!(table = %raw, file = %f.location, segment = %name, "a segment of this name exists; the file is not registered");
                handled.insert(f.location.clone());
                continue;
            }
            fresh.push(f);
        }
        let metas: Vec<(Option<SegmentMeta>, Listed)> = futures::stream::iter(fresh)
            .map(|f| {
                let (store, spec) = (auth.store.clone(), spec.clone());
                async move { (read_file(&store, &spec, &f).await, f) }
            })
            .buffered(8)
            .collect()
            .await;
        let mut batch = Vec::new();
        for (meta, f) in metas {
            match meta {
                // changed between the listing and the read: compared again next pass
                None => {
                    next_seen.insert(f.location.clone(), f.version.clone());
                }
                Some(m) => batch.push(m),
            }
        }
        for chunk in batch.chunks(crate::registry::SEGMENTS_PER_TXN) {
            let warnings = crate::registry::write_segments(&auth.kv, &auth.keys, spec, chunk).await?;
            for w in warnings {
                warn!(table = %raw, "{w}");
            }
            for m in chunk {
                handled.insert(m.location.clone());
                if m.error.is_empty() {
                    report.registered += 1;
                    count(auth, raw, "registered");
                } else {
                    warn!(table = %raw, segment = %m.segment_name, file = %m.location, error = %m.error, "discovered file registered SKIPPED");
                    report.unreadable += 1;
                    count(auth, raw, "unreadable");
                }
            }
        }
        for (uri, l) in &per_source {
            let old = state.cursors.remove(uri).filter(|_| !full);
            if let Some(c) = advance_cursor(old, l, &|f: &Listed| handled.contains(&f.location)) {
                state.cursors.insert(uri.clone(), c);
            }
        }
        state.seen = next_seen;
        self.tables.insert(raw.to_string(), state);
        Ok(report)
    }
}

fn count(auth: &Authority, raw: &str, outcome: &str) {
    if let Some(m) = &auth.metrics {
        m.discovered_files.with_label_values(&[raw, outcome]).inc();
    }
}

/// Reads a stable file and describes it as a DONE REALTIME segment of
/// `spec`; one that cannot be read (or has no time value) gets its error and
/// no rows. `None` when the file is no longer what was listed (its size
/// changed, or it is gone): it is looked at again on the next pass.
async fn read_file(home: &Store, spec: &TableSpec, f: &Listed) -> Option<SegmentMeta> {
    let mut meta = SegmentMeta {
        segment_name: segment_name(&f.relative),
        table_name: spec.realtime_name(),
        status: SegmentStatus::Done,
        size_bytes: f.version.size,
        schema_fingerprint: spec.schema.fingerprint(),
        location: f.location.clone(),
        created_ms: now_ms(),
        source_version: f.version.version.clone(),
        ..Default::default()
    };
    // the file's footer (and, without exact statistics, its time column),
    // never the whole file: the leader holds no file in memory
    let (store, path) = match resolve(home, &f.location) {
        Ok(r) => r,
        Err(e) => {
            meta.error = format!("the file cannot be read: {e}");
            return Some(meta);
        }
    };
    match object_size(&store, &path).await {
        Ok(Some(size)) if size == f.version.size => {}
        Ok(_) | Err(r2o_common::Error::Store { source: object_store::Error::NotFound { .. }, .. }) => return None,
        Err(e) => {
            meta.error = format!("the file cannot be read: {e}");
            return Some(meta);
        }
    }
    let format = spec.time_format();
    let facts = r2o_common::columnar::segment_facts_in_store(
        &meta.segment_name,
        &store,
        &path,
        f.version.size,
        &spec.schema,
        &spec.flow.time_column,
        format,
    )
    .await;
    match facts {
        Err(e) => meta.error = format!("the file cannot be read as a segment of the table: {e}"),
        Ok((facts, _footer)) => {
            meta.total_docs = facts.rows;
            meta.null_time_rows = facts.null_time_rows;
            match facts.time_range_ms {
                Some((start, end)) => (meta.start_time_ms, meta.end_time_ms) = (start, end),
                None if facts.rows > 0 => {
                    meta.error = format!("no row has a value in time column '{}'", spec.flow.time_column)
                }
                None => {}
            }
        }
    }
    Some(meta)
}

/// Sets `why` as the error of segment `name` (unless it has one), with the
/// watermark it is refused at, in one transaction with the segment marker
/// (so a task holding it is planned again) that checks that watermark.
/// Returns whether it did (`false`: retried on the next pass).
async fn refuse(auth: &Authority, spec: &TableSpec, name: &str, why: &str) -> Result<bool> {
    let key = auth.keys.segment(&spec.realtime_name(), name);
    let Some((mut s, entry)) = get_record::<SegmentMeta>(&auth.kv, &key).await? else { return Ok(false) };
    if !s.error.is_empty() {
        return Ok(false);
    }
    s.error = why.to_string();
    // the watermark it is refused at says which of its rows had moved
    let wm_key = auth.keys.watermark(&spec.name);
    let wm = get_record::<r2o_common::meta::WatermarkRecord>(&auth.kv, &wm_key).await?;
    s.error_watermark_ms = wm.as_ref().map(|(w, _)| w.watermark_ms);
    let wm_rev = wm.map_or(0, |(_, e)| e.mod_revision);
    let extra = vec![Compare::ModRevision(wm_key, wm_rev)];
    let txn = crate::protocol::rewrite_segments(&auth.keys, &spec.name, &[(s, entry.mod_revision)], extra, now_ms());
    Ok(txn.apply(&auth.kv).await?)
}

/// Runs discovery every `interval` while this controller leads (a new term
/// starts with no unstable files remembered).
pub async fn discovery_loop(auth: Authority, interval: Duration, cancel: CancellationToken) {
    let mut d: Option<Discoverer> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if auth.leadership.borrow().is_none() {
            d = None;
            continue;
        }
        if auth.cfg.source_allow.is_empty() {
            continue; // discovery is off (`--source-allow` empty): nothing to read
        }
        let disc = d.get_or_insert_with(Discoverer::default);
        if let Err(e) = disc.pass(&auth).await {
            if let Some(m) = &auth.metrics {
                m.errors.with_label_values(&["discovery"]).inc();
            }
            warn!(error = %e, "discovery pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str) -> FileSource {
        FileSource { input_dir_uri: uri.into(), include: None, exclude: None }
    }

    fn listed(name: &str, size: u64, v: &str) -> Listed {
        Listed {
            key: format!("in/{name}"),
            location: format!("file:///in/{name}"),
            relative: name.into(),
            version: FileVersion { size, version: v.into() },
        }
    }

    fn registered(name: &str, size: u64, v: &str, end: i64) -> SegmentMeta {
        SegmentMeta {
            segment_name: segment_name(name),
            location: format!("file:///in/{name}"),
            size_bytes: size,
            source_version: v.into(),
            total_docs: 10,
            end_time_ms: end,
            ..Default::default()
        }
    }

    #[test]
    fn a_file_is_registered_once_two_listings_agree() {
        let src = [source("file:///in/")];
        let first = step(&[listed("a.parquet", 10, "e1")], true, &[], &HashMap::new(), &src, None);
        assert!(first.register.is_empty(), "one listing is not enough");
        // still growing: seen again, not registered
        let second = step(&[listed("a.parquet", 20, "e2")], true, &[], &first.seen, &src, None);
        assert!(second.register.is_empty());
        let third = step(&[listed("a.parquet", 20, "e2")], true, &[], &second.seen, &src, None);
        assert_eq!(third.register, vec![listed("a.parquet", 20, "e2")]);
        assert!(third.seen.is_empty());
    }

    #[test]
    fn a_registered_file_that_changes_or_vanishes_is_refused() {
        let src = [source("file:///in/")];
        let regs = [registered("a.parquet", 10, "e1", 100), registered("b.parquet", 10, "e1", 100)];
        let same = step(
            &[listed("a.parquet", 10, "e1"), listed("b.parquet", 10, "e1")],
            true,
            &regs,
            &HashMap::new(),
            &src,
            None,
        );
        assert_eq!(same, Step::default(), "unchanged registered files: nothing to do");
        let changed = step(
            &[listed("a.parquet", 12, "e2"), listed("b.parquet", 10, "e1")],
            true,
            &regs,
            &HashMap::new(),
            &src,
            None,
        );
        assert_eq!(changed.refuse.len(), 1);
        assert_eq!(changed.refuse[0].0, "a.parquet");
        assert!(changed.refuse[0].1.contains("changed after registration"), "{}", changed.refuse[0].1);
        // b deleted before its rows moved: refused; after they moved: the owner's cleanup
        let gone = step(&[listed("a.parquet", 10, "e1")], true, &regs, &HashMap::new(), &src, Some(50));
        assert_eq!(
            gone.refuse,
            vec![("b.parquet".into(), "the file was deleted before its rows moved; r2o does not read it again".into())]
        );
        let cleaned = step(&[listed("a.parquet", 10, "e1")], true, &regs, &HashMap::new(), &src, Some(101));
        assert!(cleaned.refuse.is_empty());
        // a segment already refused is not refused again
        let mut refused = regs.clone();
        refused[0].error = "changed".into();
        assert!(step(
            &[listed("a.parquet", 12, "e2"), listed("b.parquet", 10, "e1")],
            true,
            &refused,
            &HashMap::new(),
            &src,
            None
        )
        .refuse
        .is_empty());
    }

    #[test]
    fn an_incremental_listing_never_reports_unlisted_files_as_deleted() {
        let src = [source("file:///in/")];
        let regs = [registered("a.parquet", 10, "e1", 100)];
        let partial = step(&[listed("b.parquet", 10, "e1")], false, &regs, &HashMap::new(), &src, None);
        assert!(partial.refuse.is_empty(), "a is before the cursor, not gone");
        let full = step(&[listed("b.parquet", 10, "e1")], true, &regs, &HashMap::new(), &src, None);
        assert_eq!(full.refuse.len(), 1);
    }

    #[test]
    fn the_cursor_stops_before_the_first_file_not_yet_registered() {
        let l = [listed("a", 1, "x"), listed("b", 1, "x"), listed("c", 1, "x"), listed("d", 1, "x")];
        let done: HashSet<&str> = ["in/a", "in/b", "in/d"].into();
        let handled = |f: &Listed| done.contains(f.key.as_str());
        assert_eq!(advance_cursor(None, &l, &handled), Some("in/b".into()), "c is not stable yet: listed again");
        assert_eq!(advance_cursor(Some("in/0".into()), &l[2..], &handled), Some("in/0".into()));
        assert_eq!(advance_cursor(Some("in/0".into()), &[], &handled), Some("in/0".into()), "nothing new: kept");
        let all = |_: &Listed| true;
        assert_eq!(advance_cursor(None, &l, &all), Some("in/d".into()));
    }

    /// A table with one discovery source at `uri`.
    fn source_spec(uri: &str) -> Result<TableSpec, r2o_common::ConfigError> {
        TableSpec::from_json(
            serde_json::json!({"tableName": "t", "tableType": "REALTIME", "segmentsConfig": {"timeColumnName": "ts"},
                "ingestionConfig": {"batchIngestionConfig": {"batchConfigMaps": [{"inputDirURI": uri}]}}}),
            serde_json::json!({"schemaName": "s", "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG",
                "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MILLISECONDS"}]}),
        )
    }

    #[test]
    fn a_source_may_not_overlap_the_install_namespace() {
        let spec = |uri: &str| source_spec(uri).unwrap();
        let store = "file:///var/lib/r2o/store";
        let all = ["file:///".to_string(), "s3://b/".to_string()];
        assert!(check_sources(&spec("file:///var/lib/r2o/landing"), store, "r2o-1/", &all).is_ok());
        assert!(check_sources(&spec("file:///var/lib/r2o/store/other"), store, "r2o-1/", &all).is_ok(), "beside it");
        assert!(
            check_sources(&spec("file:///var/lib/r2o/store/r2o-10"), store, "r2o-1/", &all).is_ok(),
            "a longer name"
        );
        for bad in ["file:///var/lib/r2o/store/r2o-1/in", "file:///var/lib/r2o/store", "file:///var"] {
            let e = check_sources(&spec(bad), store, "r2o-1/", &all).unwrap_err().to_string();
            assert!(e.contains("batchConfigMaps[0].inputDirURI"), "{bad}: {e}");
        }
        assert!(check_sources(&spec("s3://b/landing"), "s3://b/r2o", "r2o-1/", &all).is_ok());
        assert!(check_sources(&spec("s3://b"), "s3://b/r2o", "r2o-1/", &all).is_err(), "the whole bucket holds it");
        assert!(check_sources(&spec("file:///anything"), "", "r2o-1/", &all).is_ok(), "no store: not checked");
    }

    #[test]
    fn a_source_must_lie_inside_the_allowed_locations() {
        let spec = source_spec;
        let allow = r2o_common::config::parse_source_allow("file:///data/landing/,s3://landing/").unwrap();
        let check = |uri: &str| check_sources(&spec(uri).unwrap(), "file:///var/lib/r2o/store", "r2o-1/", &allow);
        assert!(check("file:///data/landing/topic").is_ok());
        assert!(check("file:///data//landing/topic").is_ok(), "'//' is collapsed, and stays inside");
        assert!(check("s3://landing/sink").is_ok());
        for outside in ["file:///data/landing2", "file:///data", "file:///etc", "s3://other/x", "s3://landing2"] {
            let e = check(outside).unwrap_err().to_string();
            assert!(e.contains("inputDirURI") && e.contains("file:///data/landing/, s3://landing/"), "{outside}: {e}");
        }
        // ways around a string prefix are refused when the table is parsed
        for escape in
            ["file:///data/landing/../../etc", "file:///data/landing/%2e%2e/etc", "file:///data/landing/%2F.."]
        {
            let e = spec(escape).unwrap_err().to_string();
            assert!(e.contains("inputDirURI"), "{escape}: {e}");
        }
        let off = check_sources(&spec("file:///data/landing").unwrap(), "", "", &[]).unwrap_err().to_string();
        assert!(off.contains("discovery is off"), "{off}");
    }

    #[test]
    fn segment_names_are_unique_per_path_and_bounded() {
        assert_eq!(segment_name("2024/01/a.parquet"), "2024%2F01%2Fa.parquet");
        assert_ne!(segment_name("a/b.parquet"), segment_name("a%2Fb.parquet"));
        let long = format!("{}/x.parquet", "d".repeat(400));
        let n = segment_name(&long);
        assert!(n.len() <= 255, "{}", n.len());
        assert_ne!(n, segment_name(&format!("{}/y.parquet", "d".repeat(400))));
    }
}
