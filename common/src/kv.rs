//! The metadata store behind a narrow trait: get, range, put, delete, a
//! transaction with revision compares, and leases. [`EtcdKv`] is the real
//! implementation; [`MemKv`] is an in-memory one for unit tests of pure
//! logic. Both pass [`conformance`].
//!
//! Revisions follow etcd: every write bumps a global revision; a key's
//! `create_revision` / `mod_revision` is `0` when the key does not exist, so
//! `Compare::ModRevision(key, 0)` means "key absent".

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// An etcd lease id.
pub type LeaseId = i64;

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
    /// etcd limits a transaction to 128 ops by default, not keys).
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
}

/// The narrow interface r2o uses over etcd.
///
/// Errors: [`Error::Meta`] for transport failures (retryable) and
/// [`Error::LeaseLost`] when a lease has expired or was revoked.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// The value at `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys starting with `prefix`, in key order.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>>;
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
}

/// A shared handle to a backend.
pub type Kv = Arc<dyn KvBackend>;

// ---------------------------------------------------------------- etcd

/// [`KvBackend`] over a real etcd cluster (v3 API, etcd-client).
#[derive(Clone)]
pub struct EtcdKv {
    client: etcd_client::Client,
}

fn meta_err(e: etcd_client::Error) -> Error {
    Error::Meta(e.to_string())
}

impl EtcdKv {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`), with a
    /// `connect_timeout` for each attempt and request timeouts of 5 s.
    pub async fn connect(endpoints: &[String], connect_timeout: Duration) -> Result<EtcdKv> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
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
        lease: kv.lease(),
    }
}

#[async_trait]
impl KvBackend for EtcdKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.client.kv_client().get(key, None).await.map_err(meta_err)?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let opts = etcd_client::GetOptions::new().with_prefix();
        let resp = self.client.kv_client().get(prefix, Some(opts)).await.map_err(meta_err)?;
        Ok(resp.kvs().iter().map(to_kv).collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
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
}

fn lease_or_meta(e: etcd_client::Error, lease: Option<LeaseId>) -> Error {
    match lease {
        // etcd says "lease not found" for an expired or revoked lease
        Some(l) if e.to_string().contains("lease not found") => Error::LeaseLost(l),
        _ => meta_err(e),
    }
}

// ---------------------------------------------------------------- memory

/// In-memory [`KvBackend`] with etcd's revision and lease semantics, for unit
/// tests of pure logic. Leases expire on the wall clock.
#[derive(Clone, Default)]
pub struct MemKv {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct MemState {
    revision: i64,
    data: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    next_lease: LeaseId,
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
            for k in keys {
                self.data.remove(&k);
            }
        }
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<()> {
        match lease {
            Some(l) if !self.leases.contains_key(&l) => Err(Error::LeaseLost(l)),
            _ => Ok(()),
        }
    }

    fn apply_put(&mut self, key: String, value: Vec<u8>, lease: Option<LeaseId>) {
        let rev = self.revision;
        let create = self.data.get(&key).map_or(rev, |kv| kv.create_revision);
        self.data.insert(
            key.clone(),
            KeyValue { key, value, create_revision: create, mod_revision: rev, lease: lease.unwrap_or(0) },
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
}

#[async_trait]
impl KvBackend for MemKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.state().data.get(key).cloned())
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let s = self.state();
        Ok(s.data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        let mut s = self.state();
        s.check_lease(lease)?;
        s.revision += 1;
        s.apply_put(key.to_string(), value, lease);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let mut s = self.state();
        if s.data.remove(key).is_some() {
            s.revision += 1;
        }
        Ok(())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        let mut s = self.state();
        let holds = compares.iter().all(|c| match c {
            Compare::ModRevision(k, r) => s.data.get(k).map_or(0, |kv| kv.mod_revision) == *r,
            Compare::CreateRevision(k, r) => s.data.get(k).map_or(0, |kv| kv.create_revision) == *r,
        });
        if !holds {
            return Ok(false);
        }
        for op in &ops {
            if let Op::Put { lease, .. } = op {
                s.check_lease(*lease)?;
            }
        }
        s.revision += 1;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => s.apply_put(key, value, lease),
                Op::Delete { key } => {
                    s.data.remove(&key);
                }
                Op::DeletePrefix { prefix } => {
                    s.data.retain(|k, _| !k.starts_with(&prefix));
                }
            }
        }
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
    assert_eq!(a2.create_revision, a.create_revision);
    // a stale revision changes nothing
    let ok = kv.txn(vec![Compare::ModRevision(k("a"), a.mod_revision)], vec![Op::delete(k("b"))]).await.unwrap();
    assert!(!ok);
    assert!(kv.get(&k("b")).await.unwrap().is_some());

    let all = kv.range(&format!("{prefix}/")).await.unwrap();
    assert_eq!(all.iter().map(|x| x.key.clone()).collect::<Vec<_>>(), vec![k("a"), k("b")]);

    kv.delete(&k("b")).await.unwrap();
    kv.delete(&k("b")).await.unwrap();
    assert!(kv.get(&k("b")).await.unwrap().is_none());

    // delete by prefix in a transaction, leaving neighbours alone
    for name in ["p/1", "p/2", "p/3", "px"] {
        kv.put(&k(name), b"v".to_vec(), None).await.unwrap();
    }
    let ok = kv.txn(vec![], vec![Op::DeletePrefix { prefix: k("p/") }]).await.unwrap();
    assert!(ok);
    assert!(kv.range(&k("p/")).await.unwrap().is_empty(), "prefix deleted");
    assert!(kv.get(&k("px")).await.unwrap().is_some(), "a key outside the prefix survives");
    kv.delete(&k("px")).await.unwrap();

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
}
