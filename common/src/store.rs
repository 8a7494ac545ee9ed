//! The segment store: `object_store` chosen from a URI (`file:///abs/dir`,
//! `s3://bucket[/prefix]`, `memory://`), the layout of r2o's objects in it,
//! and whole-object helpers that each carry a deadline.
//!
//! Everything an install writes is under its own namespace `<ns>/` (see
//! [`crate::meta::ClusterRecord::store_namespace`]), laid out by [`Layout`]:
//!
//! - `<ns>/realtime/<raw>_REALTIME/<segment>.<upload id>.parquet`: REALTIME
//!   segments, one object per upload (never overwritten);
//! - `<ns>/offline/<raw>_OFFLINE/<task>/attempt-<n>/<segment>.parquet`: an
//!   attempt's staged outputs. A commit publishes them by naming them in a
//!   manifest (no copy); the janitor removes what no committed metadata
//!   names, and never looks outside `<ns>/`.
//!
//! Object paths are compared in one encoding, [`canonical_path`]
//! (object_store percent-encodes characters such as `[ ] { } # % ?`).

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, Error, Result};
use crate::meta::TaskId;

/// A shared object store handle.
pub type Store = Arc<dyn ObjectStore>;

/// Default deadline of one whole-object store call (get, put, head), ms.
pub const DEFAULT_STORE_DEADLINE_MS: u64 = 120_000;

static STORE_DEADLINE_MS: AtomicU64 = AtomicU64::new(DEFAULT_STORE_DEADLINE_MS);

/// Sets the deadline of every store call made through this module's helpers
/// (process-wide; set once at start from the `store_timeout_secs` setting).
pub fn set_store_deadline(deadline: Duration) {
    STORE_DEADLINE_MS.store(deadline.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// The current store-call deadline.
pub fn store_deadline() -> Duration {
    Duration::from_millis(STORE_DEADLINE_MS.load(Ordering::Relaxed))
}

/// Runs one store call under the deadline; a call past it fails with a
/// retryable [`Error::Store`].
async fn deadline<T>(path: &str, call: impl std::future::Future<Output = object_store::Result<T>>) -> Result<T> {
    let limit = store_deadline();
    let path = listed_text(path);
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(|source| Error::Store { path: path.into(), source }),
        Err(_) => Err(Error::Store {
            path: path.into(),
            source: object_store::Error::Generic {
                store: "deadline",
                source: format!("no answer within {} ms (store_timeout_secs)", limit.as_millis()).into(),
            },
        }),
    }
}

/// Opens the store named by `uri`: `file:///abs/dir` (created if missing),
/// `s3://bucket[/prefix]` (S3 or any S3-compatible server; endpoint, region,
/// path style and credentials from the standard `AWS_*` environment:
/// `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, `AWS_ALLOW_HTTP`), or `memory://`. When the environment sets `R2O_FAULT_STORE` (fault
/// tests only), the store is wrapped in a [`FaultyStore`].
///
/// # Errors
/// [`ConfigError::Invalid`] naming `store` for an unsupported scheme or a
/// directory that cannot be created.
pub fn open_store(uri: &str) -> Result<Store> {
    let store = open_plain_store(uri)?;
    match std::env::var("R2O_FAULT_STORE") {
        Ok(spec) if !spec.is_empty() => Ok(Arc::new(FaultyStore::new(store, FaultSpec::parse(&spec)?))),
        _ => Ok(store),
    }
}

fn open_plain_store(uri: &str) -> Result<Store> {
    let bad = |expected: &str| {
        Error::Config(ConfigError::Invalid { field: "store".into(), value: uri.into(), expected: expected.into() })
    };
    if uri == "memory://" || uri == "memory:///" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("an absolute path after file://, e.g. file:///var/lib/r2o/store"));
        }
        std::fs::create_dir_all(path).map_err(|e| bad(&format!("a directory r2o can create ({e})")))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| bad(&format!("a usable directory ({e})")))?;
        return Ok(Arc::new(fs));
    }
    if let Some(rest) = uri.strip_prefix("s3://") {
        install_tls_provider();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("s3://<bucket>[/<prefix>]"));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| bad(&format!("a usable S3 bucket and AWS_* settings ({e})")))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Ok(Arc::new(s3));
        }
        return Ok(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)));
    }
    Err(bad("file:///<absolute dir>, s3://<bucket>[/<prefix>] or memory://"))
}

/// Whether `location` is a file outside the cluster's store: a full URI
/// (`file:///abs/dir/f.parquet`, `s3://bucket/key`) of a file registered
/// in place by segment discovery. r2o reads such files and never writes or
/// deletes them.
pub fn is_external(location: &str) -> bool {
    location.contains("://")
}

/// Stores of external files, by root (`file:///`, `s3://bucket`), opened
/// once and kept.
static EXTERNAL: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Store>>> =
    std::sync::LazyLock::new(Default::default);

/// The root and the path under it of an external location: (`file:///`,
/// `abs/dir/f.parquet`) or (`s3://bucket`, `key`).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `location` for another scheme.
pub fn split_external(location: &str) -> Result<(String, String)> {
    if let Some(path) = location.strip_prefix("file:///") {
        return Ok(("file:///".into(), path.to_string()));
    }
    if let Some(rest) = location.strip_prefix("s3://") {
        if let Some((bucket, key)) = rest.split_once('/') {
            if !bucket.is_empty() {
                return Ok((format!("s3://{bucket}"), key.to_string()));
            }
        }
    }
    Err(Error::Config(ConfigError::Invalid {
        field: "location".into(),
        value: location.into(),
        expected: "a path in the cluster's store, file:///<absolute path> or s3://<bucket>/<key>".into(),
    }))
}

/// Marks a path [`resolve`]d from an external location: the text after it
/// is the key as the source's store lists it, already in object_store's
/// form, so it is read with `Path::parse` and never encoded again.
const LISTED: char = '\u{1}';

/// The object_store path of a path given to this module's helpers: r2o's
/// own paths are encoded from their text (`Path::from`, as they were
/// written); an external file's path from [`resolve`] is taken as listed
/// (finding 5 of issue 19: a discovered file named `00%3A00`, as in
/// Hive-escaped partitions, was encoded again to `00%253A00` on read, never
/// found, and listed again forever).
pub fn object_path(path: &str) -> Path {
    match path.strip_prefix(LISTED) {
        Some(listed) => Path::parse(listed).unwrap_or_else(|_| Path::from(listed)),
        None => Path::from(path),
    }
}

/// A path from [`resolve`] as text (without its mark), for messages and
/// comparisons with listed keys.
pub fn listed_text(path: &str) -> &str {
    path.strip_prefix(LISTED).unwrap_or(path)
}

/// The store holding `location` and its path there: `home` (the cluster's
/// store) for its own paths, the external file's own store (see
/// [`is_external`]; opened from its root with [`open_store`]) otherwise,
/// with the path marked as listed (read it through [`object_path`] or this
/// module's helpers).
///
/// # Errors
/// An external location of an unsupported scheme, or a store that cannot be opened.
pub fn resolve(home: &Store, location: &str) -> Result<(Store, String)> {
    if !is_external(location) {
        return Ok((home.clone(), location.to_string()));
    }
    let (root, path) = split_external(location)?;
    let path = format!("{LISTED}{path}");
    let mut stores = EXTERNAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = stores.get(&root) {
        return Ok((s.clone(), path));
    }
    let store = open_store(&root)?;
    stores.insert(root, store.clone());
    Ok((store, path))
}

/// Installs rustls' ring crypto provider for the S3 client's https (r2o
/// builds reqwest without aws-lc); harmless when one is installed already.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The one encoding object paths are compared in: object_store's own
/// (percent-encoded) form of `location`.
pub fn canonical_path(location: &str) -> String {
    Path::from(location).to_string()
}

/// Where an install's objects go in the store (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    namespace: String,
}

impl Layout {
    /// The layout under `namespace` (e.g. `r2o-3f2a9c0d11b7e845/`; a
    /// missing trailing `/` is added).
    pub fn new(namespace: &str) -> Layout {
        let ns = namespace.trim_matches('/');
        Layout { namespace: format!("{ns}/") }
    }

    /// `<ns>/`: everything the install writes, and all the janitor may delete.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `<ns>/realtime/<raw>_REALTIME/`.
    pub fn realtime_prefix(&self, raw: &str) -> String {
        format!("{}realtime/{raw}_REALTIME/", self.namespace)
    }

    /// A fresh object path for one upload of a REALTIME segment:
    /// `<ns>/realtime/<raw>_REALTIME/<segment>.<upload id>.parquet`, where the
    /// upload id is random, so an upload never overwrites another.
    pub fn realtime_upload(&self, raw: &str, segment: &str) -> String {
        format!("{}{segment}.{:016x}.parquet", self.realtime_prefix(raw), rand::random::<u64>())
    }

    /// `<ns>/offline/<raw>_OFFLINE/`.
    pub fn offline_prefix(&self, raw: &str) -> String {
        format!("{}offline/{raw}_OFFLINE/", self.namespace)
    }

    /// Staging prefix of one attempt (unique to the attempt).
    pub fn staging_prefix(&self, task: &TaskId, attempt: u32) -> String {
        format!("{}{task}/attempt-{attempt}/", self.offline_prefix(&task.table))
    }
}

/// Reads a whole object, within the store deadline.
pub async fn get_bytes(store: &Store, path: &str) -> Result<Bytes> {
    let p = object_path(path);
    let got = deadline(path, store.get(&p)).await?;
    deadline(path, got.bytes()).await
}

/// Reads `range` of an object (bytes), within the store deadline.
pub async fn get_range(store: &Store, path: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
    deadline(path, store.get_range(&object_path(path), range)).await
}

/// The size of an object and its last `n` bytes (all of it when smaller),
/// in one request within the store deadline; `None` when it does not exist.
pub async fn get_tail(store: &Store, path: &str, n: u64) -> Result<Option<(u64, Bytes)>> {
    let opts = object_store::GetOptions { range: Some(object_store::GetRange::Suffix(n)), ..Default::default() };
    let got = match deadline(path, store.get_opts(&object_path(path), opts)).await {
        Ok(g) => g,
        Err(Error::Store { source: object_store::Error::NotFound { .. }, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = got.meta.size;
    Ok(Some((size, deadline(path, got.bytes()).await?)))
}

/// Writes a whole object (overwriting), within the store deadline. For
/// staged outputs, whose paths are unique to their attempt.
pub async fn put_bytes(store: &Store, path: &str, bytes: Bytes) -> Result<()> {
    deadline(path, store.put(&object_path(path), PutPayload::from(bytes))).await?;
    Ok(())
}

/// Writes a new object, failing with `AlreadyExists` (not retryable) when
/// one is there: registered REALTIME objects are never overwritten.
pub async fn put_new(store: &Store, path: &str, bytes: Bytes) -> Result<()> {
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    deadline(path, store.put_opts(&object_path(path), PutPayload::from(bytes), opts)).await?;
    Ok(())
}

/// An object's version as discovery records it
/// ([`crate::meta::SegmentMeta::source_version`]): its ETag, else its
/// modification time in ms (`mtime:<ms>`). Pure.
pub fn version_text(meta: &object_store::ObjectMeta) -> String {
    match &meta.e_tag {
        Some(tag) => tag.clone(),
        None => format!("mtime:{}", meta.last_modified.timestamp_millis()),
    }
}

/// Checks that the external file at `path` (from [`resolve`]) is still the
/// one registered: `size_bytes` long and at version `version` (see
/// [`version_text`]; empty: size only). A minion reads a discovered file
/// where it lies, so content changed after registration must fail its
/// attempt, never be moved (finding 12 of issue 19).
///
/// # Errors
/// [`Error::Segment`] naming `segment`, what changed and how (not
/// retryable); store errors (a missing file: `NotFound`).
pub async fn check_registered(store: &Store, path: &str, segment: &str, size_bytes: u64, version: &str) -> Result<()> {
    let meta = deadline(path, store.head(&object_path(path))).await?;
    let now = version_text(&meta);
    if meta.size != size_bytes || (!version.is_empty() && now != version) {
        return Err(Error::Segment {
            segment: segment.to_string(),
            problem: format!(
                "the discovered file {} changed after registration ({} bytes, version {now}; registered {size_bytes} \
                 bytes, version {version}); its rows are not moved (discovery refuses it)",
                listed_text(path),
                meta.size
            ),
        });
    }
    Ok(())
}

/// Size of an object in bytes, `None` when it does not exist.
pub async fn object_size(store: &Store, path: &str) -> Result<Option<u64>> {
    match deadline(path, store.head(&object_path(path))).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(Error::Store { source: object_store::Error::NotFound { .. }, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes an object (absent is fine), within the store deadline.
pub async fn delete_object(store: &Store, path: &str) -> Result<()> {
    match deadline(path, store.delete(&object_path(path))).await {
        Ok(()) | Err(Error::Store { source: object_store::Error::NotFound { .. }, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a [`FaultyStore`] injects: `read_error_rate=0.05,write_error_rate=0.05,latency_ms=20,seed=7`
/// (random), and/or `first_read_fails=true` (deterministic: the first read
/// of every object fails, the next ones pass).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultSpec {
    /// Probability that a read (get, head) fails, 0..=1.
    pub read_error_rate: f64,
    /// Probability that a write (put) fails, 0..=1.
    pub write_error_rate: f64,
    /// Added latency per read and write, ms.
    pub latency_ms: u64,
    /// RNG seed; each process mixes in its pid, so processes given the
    /// same seed do not fail in lockstep.
    pub seed: u64,
    /// Whether the first read (get, head) of each object fails.
    pub first_read_fails: bool,
}

impl FaultSpec {
    /// Parses `key=value` pairs separated by commas.
    pub fn parse(text: &str) -> Result<FaultSpec> {
        let mut f =
            FaultSpec { read_error_rate: 0.0, write_error_rate: 0.0, latency_ms: 0, seed: 0, first_read_fails: false };
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let bad = || {
                Error::Config(ConfigError::Invalid {
                    field: "R2O_FAULT_STORE".into(),
                    value: part.into(),
                    expected: "read_error_rate=<0..1>, write_error_rate=<0..1>, latency_ms=<ms>, seed=<n> \
                               or first_read_fails=<true|false>"
                        .into(),
                })
            };
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k.trim() {
                "read_error_rate" => f.read_error_rate = v.trim().parse().map_err(|_| bad())?,
                "write_error_rate" => f.write_error_rate = v.trim().parse().map_err(|_| bad())?,
                "latency_ms" => f.latency_ms = v.trim().parse().map_err(|_| bad())?,
                "seed" => f.seed = v.trim().parse().map_err(|_| bad())?,
                "first_read_fails" => f.first_read_fails = v.trim().parse().map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        Ok(f)
    }
}

/// An object store wrapper that injects latency and transient errors into
/// reads and writes, for fault tests (in the spirit of object_store's
/// `ThrottledStore`). Each injected error is logged as `injected store
/// fault` with the operation and path, so a test can account for it.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Store,
    spec: FaultSpec,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
    /// Objects read once (`first_read_fails`).
    read_once: std::sync::Mutex<std::collections::HashSet<Path>>,
    injected: std::sync::atomic::AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Store, spec: FaultSpec) -> FaultyStore {
        use rand::SeedableRng;
        let seed = spec.seed ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        tracing::warn!(?spec, seed, "segment store with injected faults");
        FaultyStore {
            inner,
            spec,
            rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            read_once: std::sync::Mutex::default(),
            injected: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Errors injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn inject(&self, op: &'static str, rate: f64, path: &Path) -> object_store::Result<()> {
        use rand::Rng;
        if self.spec.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.spec.latency_ms)).await;
        }
        let first = op == "get"
            && self.spec.first_read_fails
            && self.read_once.lock().map(|mut seen| seen.insert(path.clone())).unwrap_or(false);
        let fail = first || self.rng.lock().map(|mut r| r.random::<f64>() < rate).unwrap_or(false);
        if fail {
            self.injected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(op, path = %path, "injected store fault");
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: format!("injected {op} fault on {path}").into(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inject("put", self.spec.write_error_rate, location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inject("put", self.spec.write_error_rate, location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inject("get", self.spec.read_error_rate, location).await?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: object_store::CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_external_file_is_read_by_its_listed_key_whatever_its_name() {
        // finding 5 of issue 19: Hive-escaped names (`00%3A00`) and the other
        // characters object_store encodes were encoded again on read
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let names = ["ts=2024-01-01 00%3A00", "a[1]{x}#^|~<>", "q?*"];
        for n in names {
            std::fs::create_dir_all(dir.path().join(n)).unwrap();
            std::fs::write(dir.path().join(n).join("p.parquet"), n.as_bytes()).unwrap();
        }
        let root = open_store("file:///").unwrap();
        let base = dir.path().to_str().unwrap().trim_start_matches('/').to_string();
        let listed: Vec<object_store::ObjectMeta> =
            root.list(Some(&Path::parse(&base).unwrap())).try_collect().await.unwrap();
        assert_eq!(listed.len(), names.len());
        for m in listed {
            let location = format!("file:///{}", m.location.as_ref());
            let (store, path) = resolve(&root, &location).unwrap();
            let bytes = get_bytes(&store, &path).await.unwrap_or_else(|e| panic!("{location}: {e}"));
            assert!(names.iter().any(|n| n.as_bytes() == &bytes[..]), "{location}");
            assert_eq!(object_size(&store, &path).await.unwrap(), Some(m.size));
        }
        // r2o's own paths keep their encoding from text
        assert_eq!(object_path("ns/a%b").as_ref(), "ns/a%25b");
    }

    #[tokio::test]
    async fn a_discovered_file_changed_after_registration_is_refused_on_read() {
        // finding 12 of issue 19: minions read discovered files unchecked
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.parquet");
        std::fs::write(&file, b"first").unwrap();
        let root = open_store("file:///").unwrap();
        let location = format!("file://{}", file.display());
        let (store, path) = resolve(&root, &location).unwrap();
        let meta = store.head(&object_path(&path)).await.unwrap();
        let version = version_text(&meta);
        check_registered(&store, &path, "f", 5, &version).await.unwrap();
        // rewritten with the same size, then with another
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"other").unwrap();
        let e = check_registered(&store, &path, "f", 5, &version).await.unwrap_err().to_string();
        assert!(e.contains("changed after registration") && e.contains("f.parquet"), "{e}");
        std::fs::write(&file, b"longer now").unwrap();
        let e = check_registered(&store, &path, "f", 5, "").await.unwrap_err().to_string();
        assert!(e.contains("10 bytes"), "{e}");
        std::fs::remove_file(&file).unwrap();
        let e = check_registered(&store, &path, "f", 5, "").await.unwrap_err();
        assert!(matches!(e, Error::Store { source: object_store::Error::NotFound { .. }, .. }), "{e}");
    }

    #[tokio::test]
    async fn faulty_store_injects_retryable_errors_at_the_rate() {
        let inner = open_plain_store("memory://").unwrap();
        let spec = FaultSpec::parse("read_error_rate=0.5,write_error_rate=0,seed=3").unwrap();
        let store: Store = Arc::new(FaultyStore::new(inner, spec));
        put_bytes(&store, "a", Bytes::from_static(b"x")).await.unwrap();
        let mut failed = 0;
        for _ in 0..200 {
            match get_bytes(&store, "a").await {
                Ok(b) => assert_eq!(&b[..], b"x"),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    failed += 1;
                }
            }
        }
        assert!((60..140).contains(&failed), "about half the reads fail: {failed}");
        assert!(FaultSpec::parse("latency=3").is_err());

        let once = FaultyStore::new(
            open_plain_store("memory://").unwrap(),
            FaultSpec::parse("first_read_fails=true").unwrap(),
        );
        let once = Arc::new(once);
        let store: Store = once.clone();
        put_bytes(&store, "b", Bytes::from_static(b"y")).await.unwrap();
        let first = store.get(&Path::from("b")).await;
        assert!(first.is_err(), "the first read of an object fails");
        assert_eq!(&get_bytes(&store, "b").await.unwrap()[..], b"y", "the next one passes");
        assert_eq!(once.injected(), 1);
        assert!(FaultSpec::parse("first_read_fails=maybe").is_err());
    }
}
