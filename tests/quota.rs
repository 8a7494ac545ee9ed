//! etcd's space quota: when etcd raises its NOSPACE alarm it refuses every
//! write, so r2o can move nothing. The controller says so where an SRE looks:
//! `/readyz` fails and `r2o_etcd_alarm{alarm="NOSPACE"}` is 1. Real etcd with
//! a 4 MiB quota, filled until the alarm goes off.

mod support;

use r2o_common::kv::KvBackend;
use std::time::{Duration, Instant};
use support::{http_get, metric, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nospace_alarm_shows_in_readyz_and_metrics() {
    let cluster = Cluster::start_full(1, 0, vec![], None, &["--quota-backend-bytes", "4194304"]);
    let port = cluster.controllers[0].http_port;
    let start = Instant::now();
    while http_get(port, "/readyz").0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "controller never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = http_get(port, "/metrics");
    assert_eq!(metric(&body, "r2o_etcd_alarm{alarm=\"NOSPACE\"}"), Some(0.0), "{body}");
    assert!(metric(&body, "r2o_etcd_db_size_bytes").is_some_and(|v| v > 0.0));

    // fill etcd past its quota
    let kv = cluster.etcd.kv(Duration::from_secs(5)).await.unwrap();
    let mut refused = false;
    for i in 0..100 {
        if kv.put(&format!("/filler/{i}"), vec![b'x'; 500_000], None).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "etcd never refused a write");
    assert!(kv.status().await.unwrap().alarms.contains(&"NOSPACE".to_string()));

    let start = Instant::now();
    loop {
        let (code, _) = http_get(port, "/readyz");
        let (_, body) = http_get(port, "/metrics");
        if code == 503 && metric(&body, "r2o_etcd_alarm{alarm=\"NOSPACE\"}") == Some(1.0) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "readyz {code}, metrics:\n{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = std::fs::read_to_string(cluster.dir.path().join(format!("{}.log", cluster.controllers[0].name))).unwrap();
    assert!(log.contains("etcd raised an alarm"), "the controller logs the alarm");
}
