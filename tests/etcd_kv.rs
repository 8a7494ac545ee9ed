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

/// etcd users: r2o connects as a user with a password (`--etcd-user`,
/// `--etcd-password-file`), and a wrong password is refused.
#[tokio::test]
async fn etcd_users_with_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = support::Etcd::start(dir.path());
    // enable etcd's auth: a root user with the root role, and an r2o user
    let mut admin = etcd_client::Client::connect([etcd.endpoint.as_str()], None).await.unwrap();
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.user_add("r2o", "r2o-secret", None).await.unwrap();
    admin.role_add("r2o").await.unwrap();
    admin.role_grant_permission("r2o", etcd_client::Permission::read_write("/r2o/").with_prefix()).await.unwrap();
    admin.user_grant_role("r2o", "r2o").await.unwrap();
    admin.auth_enable().await.unwrap();
    let as_user = |user: &str, password: &str| r2o_common::kv::EtcdSecurity {
        user: Some((user.into(), password.into())),
        ..Default::default()
    };
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    let kv = r2o_common::kv::EtcdKv::connect(endpoints, Duration::from_secs(5), &as_user("r2o", "r2o-secret"))
        .await
        .unwrap();
    kv.put("/r2o/x", b"1".to_vec(), None).await.unwrap();
    assert_eq!(kv.get("/r2o/x").await.unwrap().map(|e| e.value), Some(b"1".to_vec()));
    assert!(kv.put("/other/x", b"1".to_vec(), None).await.is_err(), "outside the user's prefix");
    let wrong = r2o_common::kv::EtcdKv::connect(endpoints, Duration::from_secs(5), &as_user("r2o", "nope")).await;
    assert!(wrong.is_err(), "a wrong password is refused");
    // without credentials nothing is readable any more
    let anon = etcd.kv(Duration::from_secs(5)).await.unwrap();
    assert!(anon.get("/r2o/x").await.is_err());
}
