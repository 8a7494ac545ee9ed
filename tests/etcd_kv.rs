//! The metadata-store conformance suite against a real etcd process (the
//! same suite the in-memory backend passes in `common`), plus lease expiry.

mod support;

use r2o_common::kv::{conformance, KvBackend};
use std::time::Duration;

#[tokio::test]
async fn etcd_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::Etcd::start(dir.path());
    let kv = etcd.kv(Duration::from_secs(5)).await.unwrap();
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

    // several ranges read at one revision: a key that moves from one range to
    // the other between the reads is seen exactly once (`r2o tasks`)
    kv.put("/c/active/t1", b"1".to_vec(), None).await.unwrap();
    let first = kv.range_page_at("/c/active/", None, 10, 0).await.unwrap();
    assert_eq!(first.kvs.len(), 1);
    kv.txn(
        vec![],
        vec![r2o_common::kv::Op::delete("/c/active/t1"), r2o_common::kv::Op::put("/c/history/t1", b"1".to_vec())],
    )
    .await
    .unwrap();
    let at = kv.range_page_at("/c/history/", None, 10, first.revision).await.unwrap();
    assert!(at.kvs.is_empty(), "as of the first read, t1 was not in history yet");
    assert_eq!(at.revision, first.revision);
    let both = kv.range_consistent(&["/c/history/".to_string(), "/c/active/".to_string()]).await.unwrap();
    assert_eq!((both[0].len(), both[1].len()), (1, 0), "now in history only");
}
