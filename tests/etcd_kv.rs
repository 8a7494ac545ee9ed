//! The metadata-store conformance suite against a real etcd process (the
//! same suite the in-memory backend passes in `common`), plus lease expiry.

mod support;

use r2o_common::kv::{conformance, EtcdKv, KvBackend};
use std::time::Duration;

#[tokio::test]
async fn etcd_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::Etcd::start(dir.path());
    let kv = EtcdKv::connect(std::slice::from_ref(&etcd.endpoint), Duration::from_secs(5)).await.unwrap();
    conformance(&kv, "/conformance").await;

    // a lease that is not renewed expires and takes its keys with it
    let lease = kv.grant_lease(1).await.unwrap();
    kv.put("/conformance/short", b"x".to_vec(), Some(lease)).await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if kv.get("/conformance/short").await.unwrap().is_none() {
            gone = true;
            break;
        }
    }
    assert!(gone, "a key on an expired lease must disappear");
    assert!(kv.keep_alive(lease).await.is_err(), "an expired lease cannot be renewed");
}
