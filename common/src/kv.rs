//! The metadata store behind a narrow trait: get, paged range, put, delete,
//! a transaction with revision compares, leases, status and compaction.
//! [`EtcdKv`] is the real implementation; [`MemKv`] is an in-memory one for
//! unit tests of pure logic. Both pass [`conformance`].
//!
//! Revisions follow etcd: every write bumps a global revision; a key's
//! `create_revision` / `mod_revision` is `0` when the key does not exist, so
//! `Compare::ModRevision(key, 0)` means "key absent".
//!
//! Limits are etcd's defaults, enforced by both backends before anything is
//! sent ([`check_txn`]): at most [`MAX_TXN_OPS`] compares and at most
//! [`MAX_TXN_OPS`] operations per transaction, at most [`MAX_REQUEST_BYTES`]
//! per request. Range reads are paged ([`KvBackend::range_page`], at most
//! [`RANGE_PAGE_KEYS`] keys a page), so no reply grows with a prefix.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// An etcd lease id.
pub type LeaseId = i64;

/// etcd's default `--max-txn-ops`: compares, success ops and failure ops of
/// one transaction are each limited to this many.
pub const MAX_TXN_OPS: usize = 128;

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request
/// (a put or a whole transaction) etcd accepts, bytes.
pub const MAX_REQUEST_BYTES: usize = 1_572_864;

/// Bytes counted per compare or op on top of its key and value (protobuf
/// framing, revisions, lease), so estimates stay on the safe side.
const PER_ITEM_OVERHEAD_BYTES: usize = 32;

/// Keys per page of a range read. With r2o's largest values (chunks of at
/// most [`crate::meta::CHUNK_BYTES`]) a page may still exceed gRPC's 4 MiB
/// reply limit, so the etcd backend also halves the page on a too-large reply.
pub const RANGE_PAGE_KEYS: usize = 256;

/// Keys per page of [`KvBackend::range_changed`] on etcd, which reads the
/// rest of the range again for every page of a filtered read.
const CHANGED_PAGE_KEYS: usize = 4096;

/// A stored key and value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key.
    pub key: String,
    /// Value bytes (JSON for r2o's records).
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Writes to the key since it was created (1 after the first; etcd's
    /// `version`, reset when the key is deleted).
    pub version: i64,
    /// Lease the key is attached to (0: none).
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the value (0: the key is absent).
    ModRevision(String, i64),
    /// The key's `create_revision` equals the value (0: the key is absent).
    CreateRevision(String, i64),
}

impl Compare {
    fn key(&self) -> &str {
        match self {
            Compare::ModRevision(k, _) | Compare::CreateRevision(k, _) => k,
        }
    }
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put `value` at `key`, attached to `lease` when given.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease to attach.
        lease: Option<LeaseId>,
    },
    /// Delete `key` (no error when absent).
    Delete {
        /// Key.
        key: String,
    },
    /// Delete every key starting with `prefix` (one op, however many keys:
    /// etcd limits a transaction's ops, not the keys they touch).
    DeletePrefix {
        /// Prefix.
        prefix: String,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Op {
        Op::Put { key: key.into(), value, lease: None }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }

    /// A delete of every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<String>) -> Op {
        Op::DeletePrefix { prefix: prefix.into() }
    }

    fn size_bytes(&self) -> usize {
        PER_ITEM_OVERHEAD_BYTES
            + match self {
                Op::Put { key, value, .. } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
                Op::DeletePrefix { prefix } => 2 * prefix.len(),
            }
    }
}

/// Checks a read of `keys` in one transaction ([`KvBackend::get_many`])
/// against etcd's limit of [`MAX_TXN_OPS`] operations.
///
/// # Errors
/// [`Error::Limit`] naming the count; not retryable.
fn check_gets(keys: &[String]) -> Result<()> {
    if keys.len() > MAX_TXN_OPS {
        return Err(Error::Limit(format!(
            "a read of {} keys in one transaction exceeds etcd's limit of {MAX_TXN_OPS} operations",
            keys.len()
        )));
    }
    Ok(())
}

/// Checks a transaction against etcd's default limits ([`MAX_TXN_OPS`]
/// compares, [`MAX_TXN_OPS`] ops, [`MAX_REQUEST_BYTES`] in all).
///
/// # Errors
/// [`Error::Limit`] saying which limit and by how much; not retryable.
pub fn check_txn(compares: &[Compare], ops: &[Op]) -> Result<()> {
    if compares.len() > MAX_TXN_OPS {
        return Err(Error::Limit(format!(
            "a transaction of {} compares exceeds etcd's limit of {MAX_TXN_OPS}",
            compares.len()
        )));
    }
    if ops.len() > MAX_TXN_OPS {
        return Err(Error::Limit(format!(
            "a transaction of {} operations exceeds etcd's limit of {MAX_TXN_OPS}",
            ops.len()
        )));
    }
    let bytes: usize = compares.iter().map(|c| c.key().len() + PER_ITEM_OVERHEAD_BYTES).sum::<usize>()
        + ops.iter().map(Op::size_bytes).sum::<usize>();
    if bytes > MAX_REQUEST_BYTES {
        return Err(Error::Limit(format!(
            "a transaction of about {bytes} bytes exceeds etcd's request limit of {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_put(key: &str, value: &[u8]) -> Result<()> {
    let bytes = key.len() + value.len() + PER_ITEM_OVERHEAD_BYTES;
    if bytes > MAX_REQUEST_BYTES {
        return Err(Error::Limit(format!(
            "a put of about {bytes} bytes at '{key}' exceeds etcd's request limit of {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(())
}

/// One page of a range read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Entries in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether keys remain after the last one returned.
    pub more: bool,
    /// The store revision the page was read at.
    pub revision: i64,
}

/// What changed under a prefix since a revision
/// ([`KvBackend::range_changed`]), read at one store revision.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The keys whose `mod_revision` is at least the one asked for, with
    /// their values at [`Changes::revision`], in key order.
    pub kvs: Vec<KeyValue>,
    /// Keys under the prefix at [`Changes::revision`], changed or not. A
    /// deletion shows only here: a copy that knew N keys and adds the new
    /// ones of `kvs` counts more than this when one was deleted.
    pub count: usize,
    /// The store revision read.
    pub revision: i64,
}

/// One change of a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The key.
    pub key: String,
    /// Whether it was deleted (else put).
    pub deleted: bool,
    /// Revision of the change.
    pub revision: i64,
}

/// Changes under a watched prefix, in revision order; an `Err` or the end of
/// the stream means the watch broke (connection lost, compaction): re-read
/// what you need and watch again.
pub type WatchReceiver = tokio::sync::mpsc::UnboundedReceiver<Result<Vec<WatchEvent>>>;

/// The store's health, for `/readyz` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStatus {
    /// Current revision of the store.
    pub revision: i64,
    /// Size of the store's database file, bytes (0 when unknown).
    pub db_size_bytes: i64,
    /// Active alarms by name (`NOSPACE`: the space quota is exhausted and
    /// every write is refused until an operator frees space and disarms it;
    /// `CORRUPT`).
    pub alarms: Vec<String>,
}

/// The narrow interface r2o uses over etcd.
///
/// Errors: [`Error::Meta`] for transport failures (retryable),
/// [`Error::LeaseLost`] when a lease has expired or was revoked,
/// [`Error::Limit`] for a request over etcd's limits (not retryable).
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// The value at `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// The values at `keys` (exact keys, not prefixes), in their order, all
    /// read at one store revision in one request (etcd: one transaction of
    /// gets): what a status answer reads of a table's small records.
    ///
    /// # Errors
    /// As the trait; more than [`MAX_TXN_OPS`] keys is [`Error::Limit`]
    /// (etcd's limit on a transaction's operations).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>>;
    /// At most `limit` keys starting with `prefix`, in key order, after
    /// `after` (exclusive) when given, as of store revision `revision` (0:
    /// the latest); [`Page::revision`] says which revision was read.
    ///
    /// # Errors
    /// As the trait; a revision already compacted (or, for [`MemKv`], any
    /// revision but the current one: it keeps no history) is [`Error::Meta`].
    async fn range_page_at(&self, prefix: &str, after: Option<&str>, limit: usize, revision: i64) -> Result<Page>;
    /// Puts a value (optionally attached to a lease).
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()>;
    /// Deletes a key; `Ok` when it was absent.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Applies `ops` atomically when every compare holds; returns whether it did.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool>;
    /// Grants a lease of `ttl_secs` seconds.
    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId>;
    /// Renews a lease once; [`Error::LeaseLost`] when it is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Revokes a lease, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// Revision, database size and active alarms.
    async fn status(&self) -> Result<KvStatus>;
    /// Discards the history of revisions before `revision` (etcd's
    /// compaction). Compacting to a revision already compacted is `Ok`.
    async fn compact(&self, revision: i64) -> Result<()>;
    /// Streams the changes under `prefix` made from now on (for wake-ups:
    /// callers read the state itself after an event).
    async fn watch(&self, prefix: &str) -> Result<WatchReceiver>;

    /// At most `limit` keys starting with `prefix`, in key order, after
    /// `after` (exclusive) when given; the latest revision.
    async fn range_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page> {
        self.range_page_at(prefix, after, limit, 0).await
    }

    /// Every key under each of `prefixes`, all read at one store revision
    /// (the first page's), page by page: one consistent view of several
    /// ranges, e.g. a table's task history and its active tasks, so a task
    /// that moves from one to the other between the reads is seen exactly
    /// once.
    ///
    /// # Errors
    /// As [`KvBackend::range_page_at`] (a compaction racing the read:
    /// retryable).
    async fn range_consistent(&self, prefixes: &[String]) -> Result<Vec<Vec<KeyValue>>> {
        let mut revision = 0;
        let mut out = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = self.range_page_at(prefix, after.as_deref(), RANGE_PAGE_KEYS, revision).await?;
                if revision == 0 {
                    revision = page.revision;
                }
                after = page.kvs.last().map(|kv| kv.key.clone());
                all.extend(page.kvs);
                if !page.more || after.is_none() {
                    break;
                }
            }
            out.push(all);
        }
        Ok(out)
    }

    /// The keys under `prefix` put at or after `min_mod_revision` and the
    /// number of keys under `prefix` in all, read at one store revision: what
    /// a copy read at `min_mod_revision - 1` must apply to be current (a
    /// deletion shows only as a lower [`Changes::count`]). etcd filters by
    /// revision after reading the range, so this costs the server a range
    /// read but sends only what changed.
    ///
    /// # Errors
    /// As [`KvBackend::range_page_at`].
    async fn range_changed(&self, prefix: &str, min_mod_revision: i64) -> Result<Changes> {
        let mut out = Changes::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.range_page_at(prefix, after.as_deref(), RANGE_PAGE_KEYS, out.revision).await?;
            if out.revision == 0 {
                out.revision = page.revision;
            }
            after = page.kvs.last().map(|kv| kv.key.clone());
            out.count += page.kvs.len();
            out.kvs.extend(page.kvs.into_iter().filter(|kv| kv.mod_revision >= min_mod_revision));
            if !page.more || after.is_none() {
                return Ok(out);
            }
        }
    }

    /// `mod_revision` of `key` (without its value), `None` when absent.
    async fn mod_revision(&self, key: &str) -> Result<Option<i64>> {
        Ok(self.get(key).await?.map(|e| e.mod_revision))
    }

    /// Every key (no values) starting with `prefix`, in key order, read
    /// page by page.
    async fn range_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.range(prefix).await?.into_iter().map(|kv| kv.key).collect())
    }

    /// Every key starting with `prefix`, in key order, read page by page.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.range_page(prefix, after.as_deref(), RANGE_PAGE_KEYS).await?;
            after = page.kvs.last().map(|kv| kv.key.clone());
            out.extend(page.kvs);
            if !page.more || after.is_none() {
                return Ok(out);
            }
        }
    }
}

/// A shared handle to a backend.
pub type Kv = Arc<dyn KvBackend>;

/// The smallest key greater than every key starting with `prefix` (etcd's
/// range end for a prefix); empty for "to the end of the keyspace".
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

// ---------------------------------------------------------------- etcd

/// [`KvBackend`] over a real etcd cluster (v3 API, etcd-client).
#[derive(Clone)]
pub struct EtcdKv {
    client: etcd_client::Client,
}

fn meta_err(e: etcd_client::Error) -> Error {
    Error::Meta(e.to_string())
}

/// Largest reply the client decodes (etcd-client's default is 4 MiB); pages
/// are sized to stay well below it.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// How r2o reaches etcd: TLS (a CA that verifies etcd's server
/// certificate, and a client certificate for etcd's `--client-cert-auth`)
/// and/or an etcd user with a password. `Default` is plain text without
/// credentials, which processes accept only with `--insecure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// CA file (PEM) of etcd's server certificate; TLS when set (endpoints `https://`).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key files (PEM).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// etcd user name and password.
    pub user: Option<(String, String)>,
}

impl EtcdSecurity {
    /// Checks the settings against the endpoints: TLS needs `https://`
    /// endpoints, and plain `http://` endpoints need `insecure`.
    ///
    /// Errors: name the endpoint and the setting that is missing.
    pub fn check(&self, endpoints: &[String], insecure: bool) -> std::result::Result<(), String> {
        for e in endpoints {
            let plain = !e.starts_with("https://");
            if self.ca.is_some() && plain {
                return Err(format!("etcd endpoint {e}: TLS to etcd is on (--etcd-ca), expected https://"));
            }
            if self.ca.is_none() && !insecure {
                return Err(format!(
                    "etcd endpoint {e}: r2o talks to etcd over TLS by default; give --etcd-ca (R2O_ETCD_CA, default \
                     --tls-ca) and an https:// endpoint, or pass --insecure for plain text"
                ));
            }
        }
        Ok(())
    }
}

impl EtcdKv {
    /// Connects to `endpoints` (e.g. `https://127.0.0.1:2379`) with
    /// `security`, a `connect_timeout` for each attempt, request timeouts
    /// of 5 s and HTTP/2 keep-alive pings every 5 s (dead connections are
    /// noticed within about 10 s).
    ///
    /// Errors: unreadable TLS files ([`Error::Config`]-like meta errors
    /// naming the file), etcd unreachable, a wrong password.
    pub async fn connect(endpoints: &[String], connect_timeout: Duration, security: &EtcdSecurity) -> Result<EtcdKv> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some(ca) = &security.ca {
            let identity = security.identity.as_ref().map(|(c, k)| (c, k));
            let tls = crate::tls::client_config(ca, identity).map_err(|e| Error::Meta(format!("etcd TLS: {e}")))?;
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = &security.user {
            options = options.with_user(user.clone(), password.clone());
        }
        let client = etcd_client::Client::connect(endpoints, Some(options)).await.map_err(meta_err)?;
        Ok(EtcdKv { client })
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn too_large(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("message length too large") || text.contains("larger than max") || text.contains("OutOfRange")
}

#[async_trait]
impl KvBackend for EtcdKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.client.kv_client().get(key, None).await.map_err(meta_err)?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        use etcd_client::{Txn, TxnOp, TxnOpResponse};
        check_gets(keys)?;
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let resp = self.client.kv_client().txn(Txn::new().and_then(gets)).await.map_err(meta_err)?;
        let out: Vec<Option<KeyValue>> = resp
            .op_responses()
            .iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(to_kv),
                _ => None,
            })
            .collect();
        if out.len() != keys.len() {
            return Err(Error::Meta(format!("a transaction of {} gets answered {}", keys.len(), out.len())));
        }
        Ok(out)
    }

    async fn mod_revision(&self, key: &str) -> Result<Option<i64>> {
        let opts = etcd_client::GetOptions::new().with_keys_only();
        let resp = self.client.kv_client().get(key, Some(opts)).await.map_err(meta_err)?;
        Ok(resp.kvs().first().map(|kv| kv.mod_revision()))
    }

    async fn range_page_at(&self, prefix: &str, after: Option<&str>, limit: usize, revision: i64) -> Result<Page> {
        let start: Vec<u8> = match after {
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                k
            }
            None => prefix.as_bytes().to_vec(),
        };
        let mut limit = limit.max(1);
        loop {
            let mut opts = etcd_client::GetOptions::new().with_range(prefix_end(prefix)).with_limit(limit as i64);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp =
                self.client.kv_client().max_decoding_message_size(MAX_REPLY_BYTES).get(start.clone(), Some(opts)).await;
            match resp {
                Ok(resp) => {
                    return Ok(Page {
                        kvs: resp.kvs().iter().map(to_kv).collect(),
                        more: resp.more(),
                        // (etcd's header gives the store's current revision)
                        revision: if revision > 0 { revision } else { resp.header().map_or(0, |h| h.revision()) },
                    });
                }
                Err(e) if too_large(&e) && limit > 1 => limit /= 2,
                Err(e) => return Err(meta_err(e)),
            }
        }
    }

    async fn range_changed(&self, prefix: &str, min_mod_revision: i64) -> Result<Changes> {
        // etcd reads the whole rest of the range for each page of a filtered
        // read (it filters, then cuts to the limit): large pages
        let mut limit = CHANGED_PAGE_KEYS;
        let mut out = Changes::default();
        let mut start = prefix.as_bytes().to_vec();
        loop {
            let mut opts = etcd_client::GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_limit(limit as i64)
                .with_min_mod_revision(min_mod_revision.max(1));
            if out.revision > 0 {
                opts = opts.with_revision(out.revision);
            }
            let resp =
                self.client.kv_client().max_decoding_message_size(MAX_REPLY_BYTES).get(start.clone(), Some(opts)).await;
            let resp = match resp {
                Ok(resp) => resp,
                Err(e) if too_large(&e) && limit > 1 => {
                    limit /= 2;
                    continue;
                }
                Err(e) => return Err(meta_err(e)),
            };
            if out.revision == 0 {
                // the first page's range is the whole prefix: its count
                // (unaffected by the filter and the limit) is every key
                out.revision = resp.header().map_or(0, |h| h.revision());
                out.count = resp.count().max(0) as usize;
            }
            out.kvs.extend(resp.kvs().iter().map(to_kv));
            match out.kvs.last() {
                Some(last) if resp.more() => {
                    start = last.key.as_bytes().to_vec();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    async fn range_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut start = prefix.as_bytes().to_vec();
        loop {
            let opts = etcd_client::GetOptions::new().with_range(prefix_end(prefix)).with_limit(4096).with_keys_only();
            let resp = self.client.kv_client().get(start.clone(), Some(opts)).await.map_err(meta_err)?;
            let keys: Vec<String> =
                resp.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect();
            let more = resp.more();
            if let Some(last) = keys.last() {
                start = last.as_bytes().to_vec();
                start.push(0);
            }
            let empty = keys.is_empty();
            out.extend(keys);
            if !more || empty {
                return Ok(out);
            }
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        check_put(key, &value)?;
        let opts = lease.map(|l| etcd_client::PutOptions::new().with_lease(l));
        self.client.kv_client().put(key, value, opts).await.map_err(|e| lease_or_meta(e, lease))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client.kv_client().delete(key, None).await.map_err(meta_err)?;
        Ok(())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        use etcd_client::{Compare as C, CompareOp, PutOptions, Txn, TxnOp};
        check_txn(&compares, &ops)?;
        let cmps: Vec<C> = compares
            .into_iter()
            .map(|c| match c {
                Compare::ModRevision(k, r) => C::mod_revision(k, CompareOp::Equal, r),
                Compare::CreateRevision(k, r) => C::create_revision(k, CompareOp::Equal, r),
            })
            .collect();
        let mut lease_used = None;
        let txn_ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => {
                    lease_used = lease.or(lease_used);
                    TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l)))
                }
                Op::Delete { key } => TxnOp::delete(key, None),
                Op::DeletePrefix { prefix } => {
                    TxnOp::delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix()))
                }
            })
            .collect();
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().when(cmps).and_then(txn_ops))
            .await
            .map_err(|e| lease_or_meta(e, lease_used))?;
        Ok(resp.succeeded())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        let resp = self.client.lease_client().grant(ttl_secs, None).await.map_err(meta_err)?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let lost = |e: etcd_client::Error| lease_or_meta(e, Some(lease));
        let (mut keeper, mut stream) = self.client.lease_client().keep_alive(lease).await.map_err(lost)?;
        keeper.keep_alive().await.map_err(lost)?;
        match stream.message().await.map_err(lost)? {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            _ => Err(Error::LeaseLost(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(meta_err(e)),
        }
    }

    async fn status(&self) -> Result<KvStatus> {
        use etcd_client::{AlarmAction, AlarmType};
        let mut m = self.client.maintenance_client();
        let status = m.status().await.map_err(meta_err)?;
        let alarms = m.alarm(AlarmAction::Get, AlarmType::None, None).await.map_err(meta_err)?;
        let mut names: Vec<String> = alarms
            .alarms()
            .iter()
            .map(|a| match a.alarm() {
                AlarmType::Nospace => "NOSPACE".to_string(),
                AlarmType::Corrupt => "CORRUPT".to_string(),
                AlarmType::None => "NONE".to_string(),
            })
            .filter(|n| n != "NONE")
            .collect();
        names.sort();
        names.dedup();
        Ok(KvStatus {
            revision: status.header().map_or(0, |h| h.revision()),
            db_size_bytes: status.db_size(),
            alarms: names,
        })
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(meta_err(e)),
        }
    }

    async fn watch(&self, prefix: &str) -> Result<WatchReceiver> {
        let opts = etcd_client::WatchOptions::new().with_prefix();
        let mut stream = self.client.watch_client().watch(prefix, Some(opts)).await.map_err(meta_err)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            let _ = tx.send(Err(Error::Meta(format!("watch canceled: {}", resp.cancel_reason()))));
                            return;
                        }
                        let events: Vec<WatchEvent> = resp
                            .events()
                            .iter()
                            .filter_map(|e| {
                                let kv = e.kv()?;
                                Some(WatchEvent {
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    deleted: e.event_type() == etcd_client::EventType::Delete,
                                    revision: kv.mod_revision(),
                                })
                            })
                            .collect();
                        if !events.is_empty() && tx.send(Ok(events)).is_err() {
                            return; // nobody listens any more
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(meta_err(e)));
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

fn lease_or_meta(e: etcd_client::Error, lease: Option<LeaseId>) -> Error {
    match lease {
        // etcd says "lease not found" for an expired or revoked lease
        Some(l) if e.to_string().contains("lease not found") => Error::LeaseLost(l),
        _ => meta_err(e),
    }
}

// ---------------------------------------------------------------- memory

/// In-memory [`KvBackend`] with etcd's revision, lease and limit semantics,
/// for unit tests of pure logic. Leases expire on the wall clock.
#[derive(Clone, Default)]
pub struct MemKv {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    revision: i64,
    compacted: i64,
    data: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    next_lease: LeaseId,
    alarms: Vec<String>,
    /// Transactions left before the next one fails as if etcd were gone
    /// (`None`: never); see [`MemKv::fail_txn_after`].
    txn_budget: Option<usize>,
    watchers: Vec<(String, tokio::sync::mpsc::UnboundedSender<Result<Vec<WatchEvent>>>)>,
}

impl MemState {
    fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<LeaseId> =
            self.leases.iter().filter(|(_, (_, deadline))| *deadline <= now).map(|(id, _)| *id).collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let keys: Vec<String> = self.data.values().filter(|kv| kv.lease == id).map(|kv| kv.key.clone()).collect();
        if !keys.is_empty() {
            self.revision += 1;
            let rev = self.revision;
            for k in &keys {
                self.data.remove(k);
            }
            self.notify(keys.into_iter().map(|key| WatchEvent { key, deleted: true, revision: rev }).collect());
        }
    }

    /// Sends events to every watcher whose prefix matches; drops closed ones.
    fn notify(&mut self, events: Vec<WatchEvent>) {
        if events.is_empty() {
            return;
        }
        self.watchers.retain(|(prefix, tx)| {
            let mine: Vec<WatchEvent> = events.iter().filter(|e| e.key.starts_with(prefix.as_str())).cloned().collect();
            mine.is_empty() || tx.send(Ok(mine)).is_ok()
        });
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(l) if !self.leases.contains_key(&l) => Err(Error::LeaseLost(l)),
            _ => Ok(()),
        }
    }

    fn check_space(&self) -> Result<()> {
        if self.alarms.iter().any(|a| a == "NOSPACE") {
            return Err(Error::Meta("etcdserver: mvcc: database space exceeded".into()));
        }
        Ok(())
    }

    fn apply_put(&mut self, key: String, value: Vec<u8>, lease: Option<LeaseId>) {
        let rev = self.revision;
        let (create, version) = self.data.get(&key).map_or((rev, 1), |kv| (kv.create_revision, kv.version + 1));
        self.data.insert(
            key.clone(),
            KeyValue { key, value, create_revision: create, mod_revision: rev, version, lease: lease.unwrap_or(0) },
        );
    }
}

impl MemKv {
    /// An empty store.
    pub fn new() -> MemKv {
        MemKv::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.expire();
        s
    }

    /// Raises (or clears) an alarm by name, e.g. `NOSPACE`, as etcd does
    /// when its space quota is exhausted; while `NOSPACE` is raised every
    /// write fails.
    pub fn set_alarm(&self, name: &str, raised: bool) {
        let mut s = self.state();
        s.alarms.retain(|a| a != name);
        if raised {
            s.alarms.push(name.to_string());
        }
    }

    /// After `n` more successful transactions, the next one fails with a
    /// transport error without applying (a lost etcd, for fault tests of
    /// callers); `None` turns this off.
    pub fn fail_txn_after(&self, n: Option<usize>) {
        self.state().txn_budget = n;
    }

    /// Revision up to which history was compacted.
    pub fn compacted_revision(&self) -> i64 {
        self.state().compacted
    }
}

#[async_trait]
impl KvBackend for MemKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.state().data.get(key).cloned())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        check_gets(keys)?;
        let s = self.state();
        Ok(keys.iter().map(|k| s.data.get(k).cloned()).collect())
    }

    async fn range_page_at(&self, prefix: &str, after: Option<&str>, limit: usize, revision: i64) -> Result<Page> {
        let s = self.state();
        if revision != 0 && revision != s.revision {
            return Err(Error::Meta(format!(
                "the in-memory store keeps no history: revision {revision} is not the current {}",
                s.revision
            )));
        }
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut iter = s
            .data
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone());
        let kvs: Vec<KeyValue> = iter.by_ref().take(limit.max(1)).collect();
        let more = iter.next().is_some();
        Ok(Page { kvs, more, revision: s.revision })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        check_put(key, &value)?;
        let mut s = self.state();
        s.check_space()?;
        s.check_lease(lease)?;
        s.revision += 1;
        s.apply_put(key.to_string(), value, lease);
        let rev = s.revision;
        s.notify(vec![WatchEvent { key: key.to_string(), deleted: false, revision: rev }]);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let mut s = self.state();
        if s.data.remove(key).is_some() {
            s.revision += 1;
            let rev = s.revision;
            s.notify(vec![WatchEvent { key: key.to_string(), deleted: true, revision: rev }]);
        }
        Ok(())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        check_txn(&compares, &ops)?;
        let mut s = self.state();
        if let Some(n) = s.txn_budget {
            if n == 0 {
                return Err(Error::Meta("injected: etcd unreachable".into()));
            }
            s.txn_budget = Some(n - 1);
        }
        let holds = compares.iter().all(|c| match c {
            Compare::ModRevision(k, r) => s.data.get(k).map_or(0, |kv| kv.mod_revision) == *r,
            Compare::CreateRevision(k, r) => s.data.get(k).map_or(0, |kv| kv.create_revision) == *r,
        });
        if !holds {
            return Ok(false);
        }
        if ops.iter().any(|o| matches!(o, Op::Put { .. })) {
            s.check_space()?;
        }
        for op in &ops {
            if let Op::Put { lease, .. } = op {
                s.check_lease(*lease)?;
            }
        }
        s.revision += 1;
        let rev = s.revision;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    events.push(WatchEvent { key: key.clone(), deleted: false, revision: rev });
                    s.apply_put(key, value, lease)
                }
                Op::Delete { key } => {
                    if s.data.remove(&key).is_some() {
                        events.push(WatchEvent { key, deleted: true, revision: rev });
                    }
                }
                Op::DeletePrefix { prefix } => {
                    let gone: Vec<String> = s.data.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                    for key in gone {
                        s.data.remove(&key);
                        events.push(WatchEvent { key, deleted: true, revision: rev });
                    }
                }
            }
        }
        s.notify(events);
        Ok(true)
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        let mut s = self.state();
        s.next_lease += 1;
        let id = s.next_lease;
        let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
        s.leases.insert(id, (ttl, Instant::now() + ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut s = self.state();
        match s.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(Error::LeaseLost(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.state().drop_lease(lease);
        Ok(())
    }

    async fn status(&self) -> Result<KvStatus> {
        let s = self.state();
        let size = s.data.values().map(|kv| kv.key.len() + kv.value.len()).sum::<usize>();
        Ok(KvStatus { revision: s.revision, db_size_bytes: size as i64, alarms: s.alarms.clone() })
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut s = self.state();
        s.compacted = s.compacted.max(revision.min(s.revision));
        Ok(())
    }

    async fn watch(&self, prefix: &str) -> Result<WatchReceiver> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.state().watchers.push((prefix.to_string(), tx));
        Ok(rx)
    }
}

/// The conformance suite every [`KvBackend`] must pass. Uses keys under
/// `prefix` only. Panics (with a message) on the first violation.
pub async fn conformance(kv: &dyn KvBackend, prefix: &str) {
    let k = |s: &str| format!("{prefix}/{s}");
    assert!(kv.get(&k("a")).await.unwrap().is_none(), "fresh key must be absent");
    kv.put(&k("a"), b"1".to_vec(), None).await.unwrap();
    let a = kv.get(&k("a")).await.unwrap().expect("put key must be readable");
    assert_eq!(a.value, b"1");
    assert!(a.create_revision > 0 && a.mod_revision == a.create_revision);

    // create-if-absent: fails when present, succeeds when absent
    let ok = kv.txn(vec![Compare::CreateRevision(k("a"), 0)], vec![Op::put(k("a"), b"2".to_vec())]).await.unwrap();
    assert!(!ok, "create-if-absent must fail on an existing key");
    assert_eq!(kv.get(&k("a")).await.unwrap().unwrap().value, b"1");
    let ok = kv
        .txn(
            vec![Compare::ModRevision(k("a"), a.mod_revision), Compare::ModRevision(k("b"), 0)],
            vec![Op::put(k("a"), b"3".to_vec()), Op::put(k("b"), b"4".to_vec())],
        )
        .await
        .unwrap();
    assert!(ok, "compares that hold must apply");
    let a2 = kv.get(&k("a")).await.unwrap().unwrap();
    let b = kv.get(&k("b")).await.unwrap().unwrap();
    assert_eq!(a2.mod_revision, b.mod_revision, "one txn, one revision");
    assert_eq!((a.version, a2.version, b.version), (1, 2, 1), "a version counts the writes to a key");
    assert_eq!(a2.create_revision, a.create_revision);
    // a stale revision changes nothing
    let ok = kv.txn(vec![Compare::ModRevision(k("a"), a.mod_revision)], vec![Op::delete(k("b"))]).await.unwrap();
    assert!(!ok);
    assert!(kv.get(&k("b")).await.unwrap().is_some());

    let all = kv.range(&format!("{prefix}/")).await.unwrap();
    assert_eq!(all.iter().map(|x| x.key.clone()).collect::<Vec<_>>(), vec![k("a"), k("b")]);
    // several exact keys in one read, in their order, absent ones as None
    // (a key is not a prefix: `a` does not answer for `a2`)
    let many = kv.get_many(&[k("b"), k("none"), k("a"), k("")]).await.unwrap();
    assert_eq!(many.len(), 4);
    assert_eq!(many[0].as_ref().map(|x| (&x.key, &x.value)), Some((&k("b"), &b"4".to_vec())));
    assert!(many[1].is_none() && many[3].is_none());
    assert_eq!(many[2].as_ref().map(|x| x.mod_revision), Some(a2.mod_revision));
    assert_eq!(many[0].as_ref().map(|x| x.mod_revision), many[2].as_ref().map(|x| x.mod_revision));
    assert!(kv.get_many(&[]).await.unwrap().is_empty());
    let too_many: Vec<String> = (0..=MAX_TXN_OPS).map(|i| k(&format!("m{i}"))).collect();
    assert!(matches!(kv.get_many(&too_many).await, Err(Error::Limit(_))), "past etcd's operations per transaction");

    kv.delete(&k("b")).await.unwrap();
    kv.delete(&k("b")).await.unwrap();
    assert!(kv.get(&k("b")).await.unwrap().is_none());
    kv.put(&k("b"), b"5".to_vec(), None).await.unwrap();
    assert_eq!(kv.get(&k("b")).await.unwrap().unwrap().version, 1, "a key written again after a delete starts over");
    kv.delete(&k("b")).await.unwrap();

    // delete by prefix in a transaction, leaving neighbours alone
    for name in ["p/1", "p/2", "p/3", "px"] {
        kv.put(&k(name), b"v".to_vec(), None).await.unwrap();
    }
    let ok = kv.txn(vec![], vec![Op::delete_prefix(k("p/"))]).await.unwrap();
    assert!(ok);
    assert!(kv.range(&k("p/")).await.unwrap().is_empty(), "prefix deleted");
    assert!(kv.get(&k("px")).await.unwrap().is_some(), "a key outside the prefix survives");
    kv.delete(&k("px")).await.unwrap();

    // paging: pages follow each other in key order, none larger than asked,
    // and a whole range read crosses page boundaries without loss
    let n = RANGE_PAGE_KEYS.max(CHANGED_PAGE_KEYS) + 45;
    let mut chunk_revisions = vec![];
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|i| Op::put(k(&format!("g/{i:05}")), vec![b'x'; 10])).collect();
        assert!(kv.txn(vec![], ops).await.unwrap());
        chunk_revisions.push(kv.get(&k(&format!("g/{:05}", chunk[0]))).await.unwrap().unwrap().mod_revision);
    }
    // what changed since a revision: the keys put from it on, over pages,
    // and the count of every key; a deletion shows only in the count
    let since = kv.range_changed(&k("g/"), chunk_revisions[1]).await.unwrap();
    assert_eq!(since.count, n, "the count is every key, changed or not");
    assert_eq!(since.kvs.len(), n - 100, "every key put from the revision on, across pages");
    assert_eq!(since.kvs[0].key, k("g/00100"));
    assert!(since.kvs.windows(2).all(|w| w[0].key < w[1].key), "in key order");
    kv.put(&k("g/00007"), b"y".to_vec(), None).await.unwrap();
    kv.delete(&k("g/00008")).await.unwrap();
    kv.put(&k("g/zz"), b"z".to_vec(), None).await.unwrap();
    let later = kv.range_changed(&k("g/"), since.revision + 1).await.unwrap();
    assert!(later.revision > since.revision);
    assert_eq!(later.kvs.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), vec![k("g/00007"), k("g/zz")]);
    assert_eq!(later.kvs[0].value, b"y", "a changed key comes with its new value");
    assert_eq!(later.count, n, "one deleted, one added");
    assert!(kv.range_changed(&k("g/"), later.revision + 1).await.unwrap().kvs.is_empty(), "nothing since");
    kv.delete(&k("g/zz")).await.unwrap();
    kv.put(&k("g/00008"), vec![b'x'; 10], None).await.unwrap();
    let first = kv.range_page(&k("g/"), None, 7).await.unwrap();
    assert_eq!(first.kvs.len(), 7);
    assert!(first.more);
    let second = kv.range_page(&k("g/"), Some(&first.kvs[6].key), 7).await.unwrap();
    assert_eq!(second.kvs[0].key, k("g/00007"), "the next page starts after the last key");
    let all = kv.range(&k("g/")).await.unwrap();
    assert_eq!(all.len(), n, "a paged range read returns every key once");
    let keys = kv.range_keys(&k("g/")).await.unwrap();
    assert_eq!(keys, all.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), "keys only, same keys");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "in key order");
    let last = kv.range_page(&k("g/"), Some(&all[n - 3].key), 7).await.unwrap();
    assert_eq!((last.kvs.len(), last.more), (2, false));
    assert!(kv.txn(vec![], vec![Op::delete_prefix(k("g/"))]).await.unwrap());

    // etcd's default limits, refused before anything is applied
    let many: Vec<Op> = (0..=MAX_TXN_OPS).map(|i| Op::put(k(&format!("m/{i}")), b"v".to_vec())).collect();
    let r = kv.txn(vec![], many).await;
    assert!(matches!(r, Err(Error::Limit(_))), "a transaction over the op limit is refused: {r:?}");
    assert!(kv.range(&k("m/")).await.unwrap().is_empty(), "a refused transaction applies nothing");
    let big = vec![b'x'; MAX_REQUEST_BYTES];
    let r = kv.put(&k("big"), big.clone(), None).await;
    assert!(matches!(r, Err(Error::Limit(_))), "a put over the request limit is refused: {r:?}");
    let r = kv
        .txn(vec![], vec![Op::put(k("big1"), big[..800_000].to_vec()), Op::put(k("big2"), big[..800_000].to_vec())])
        .await;
    assert!(matches!(r, Err(Error::Limit(_))), "a transaction over the request limit is refused: {r:?}");
    let r = kv
        .txn(vec![], vec![Op::put(k("big1"), big[..700_000].to_vec()), Op::put(k("big2"), big[..700_000].to_vec())])
        .await;
    assert!(matches!(r, Ok(true)), "a transaction within the limits applies: {r:?}");
    assert!(kv.txn(vec![], vec![Op::delete(k("big1")), Op::delete(k("big2"))]).await.unwrap());

    // watch: changes under the prefix arrive, in order, others do not
    let mut w = kv.watch(&k("w/")).await.unwrap();
    kv.put(&k("w/1"), b"a".to_vec(), None).await.unwrap();
    kv.put(&k("other"), b"a".to_vec(), None).await.unwrap();
    assert!(kv.txn(vec![], vec![Op::put(k("w/2"), b"b".to_vec()), Op::delete(k("w/1"))]).await.unwrap());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), w.recv())
            .await
            .expect("watch events arrive")
            .expect("the watch stays open")
            .expect("no watch error");
        seen.extend(batch.into_iter().map(|e| (e.key[prefix.len()..].to_string(), e.deleted)));
    }
    assert_eq!(seen, vec![("/w/1".to_string(), false), ("/w/2".to_string(), false), ("/w/1".to_string(), true)]);
    kv.delete(&k("other")).await.unwrap();
    kv.delete(&k("w/2")).await.unwrap();
    drop(w);

    // status and compaction
    let st = kv.status().await.unwrap();
    assert!(st.revision > 0, "status reports the revision: {st:?}");
    assert!(st.alarms.is_empty(), "no alarm on a healthy store: {st:?}");
    kv.compact(st.revision).await.unwrap();
    kv.compact(st.revision).await.unwrap();

    // leases: keys die with their lease
    let lease = kv.grant_lease(30).await.unwrap();
    kv.put(&k("l"), b"x".to_vec(), Some(lease)).await.unwrap();
    kv.keep_alive(lease).await.unwrap();
    assert_eq!(kv.get(&k("l")).await.unwrap().unwrap().lease, lease);
    kv.revoke_lease(lease).await.unwrap();
    assert!(kv.get(&k("l")).await.unwrap().is_none(), "revoked lease must delete its keys");
    let ka = kv.keep_alive(lease).await;
    assert!(matches!(ka, Err(Error::LeaseLost(_))), "keep-alive of a revoked lease: {ka:?}");
    let put = kv.put(&k("l2"), b"x".to_vec(), Some(lease)).await;
    assert!(matches!(put, Err(Error::LeaseLost(_))), "put on a dead lease must fail: {put:?}");
    kv.delete(&k("a")).await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mem_kv_conforms() {
        conformance(&MemKv::new(), "/t").await;
    }

    #[tokio::test]
    async fn mem_lease_expires() {
        let kv = MemKv::new();
        let lease = kv.grant_lease(1).await.unwrap();
        kv.put("/x", vec![], Some(lease)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(kv.get("/x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn nospace_alarm_refuses_writes_and_shows_in_status() {
        let kv = MemKv::new();
        kv.set_alarm("NOSPACE", true);
        assert_eq!(kv.status().await.unwrap().alarms, vec!["NOSPACE".to_string()]);
        assert!(kv.put("/x", vec![1], None).await.is_err());
        kv.set_alarm("NOSPACE", false);
        kv.put("/x", vec![1], None).await.unwrap();
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), vec![b'a', 0x80]);
    }
}
