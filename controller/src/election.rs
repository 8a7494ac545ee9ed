//! Leader election over the metadata store: the leader holds
//! `election/leader`, created if absent and attached to its lease. A standby
//! retries every `retry` interval; the leader renews every `ttl / 3` and
//! steps down at once when a renewal fails, so at most one controller
//! believes it leads for longer than one renewal interval. Commits are
//! fenced by the key's create revision (see [`Leadership`]).

use r2o_common::kv::{Compare, Kv, Op};
use r2o_common::meta::{encode, now_ms, Keys, LeaderRecord};
use r2o_common::retry::reconnect_backoff;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Proof of leadership: commits compare the leader key's create revision,
/// so a deposed leader's transaction fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The leader's lease.
    pub lease: i64,
    /// Create revision of `election/leader` when this controller took it.
    pub create_revision: i64,
}

/// Campaign settings.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// This controller's id.
    pub id: String,
    /// Address minions and the CLI use to reach it (`http://host:port`).
    pub addr: String,
    /// Lease TTL in seconds; a dead leader is replaced within about this long.
    pub ttl_secs: i64,
    /// How often a standby tries to take over.
    pub retry: Duration,
}

/// Runs the campaign until `cancel`, publishing the current leadership
/// (or `None`) on `tx`. On cancel a leader revokes its lease so that a
/// standby takes over at once.
pub async fn run(
    kv: Kv,
    keys: Keys,
    cfg: ElectionConfig,
    tx: watch::Sender<Option<Leadership>>,
    cancel: CancellationToken,
) {
    let key = keys.leader();
    let renew = Duration::from_millis((cfg.ttl_secs.max(1) as u64) * 1000 / 3);
    let max_backoff = Duration::from_secs(cfg.ttl_secs.max(1) as u64);
    let mut backoff = reconnect_backoff(cfg.retry / 2, max_backoff);
    while !cancel.is_cancelled() {
        let lease = match kv.grant_lease(cfg.ttl_secs).await {
            Ok(l) => l,
            Err(e) => {
                let delay = backoff.next().unwrap_or(max_backoff);
                warn!(error = %e, retry_in = ?delay, "election: cannot grant lease");
                sleep_or_cancel(delay, &cancel).await;
                continue;
            }
        };
        backoff = reconnect_backoff(cfg.retry / 2, max_backoff);
        let record = LeaderRecord { id: cfg.id.clone(), addr: cfg.addr.clone(), since_ms: now_ms() };
        let won = kv
            .txn(
                vec![Compare::CreateRevision(key.clone(), 0)],
                vec![Op::Put { key: key.clone(), value: encode(&record), lease: Some(lease) }],
            )
            .await;
        let create_revision = match won {
            Ok(true) => match kv.get(&key).await {
                Ok(Some(kv_entry)) if kv_entry.lease == lease => Some(kv_entry.create_revision),
                _ => None,
            },
            Ok(false) => None,
            Err(e) => {
                warn!(error = %e, "election: campaign failed");
                None
            }
        };
        let Some(create_revision) = create_revision else {
            let _ = kv.revoke_lease(lease).await;
            sleep_or_cancel(cfg.retry, &cancel).await;
            continue;
        };
        info!(controller = %cfg.id, lease, "became leader");
        let _ = tx.send(Some(Leadership { lease, create_revision }));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(renew) => {}
            }
            if let Err(e) = kv.keep_alive(lease).await {
                warn!(controller = %cfg.id, error = %e, "lost leadership");
                break;
            }
        }
        let _ = tx.send(None);
        let _ = kv.revoke_lease(lease).await;
        if !cancel.is_cancelled() {
            sleep_or_cancel(cfg.retry, &cancel).await;
        }
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2o_common::kv::MemKv;
    use std::sync::Arc;

    #[tokio::test]
    async fn one_leader_then_takeover_on_stop() {
        let kv: Kv = Arc::new(MemKv::new());
        let keys = Keys::new("/e");
        let mk = |id: &str| ElectionConfig {
            id: id.into(),
            addr: format!("http://{id}"),
            ttl_secs: 2,
            retry: Duration::from_millis(50),
        };
        let (tx1, mut rx1) = watch::channel(None);
        let (tx2, mut rx2) = watch::channel(None);
        let c1 = CancellationToken::new();
        let c2 = CancellationToken::new();
        let h1 = tokio::spawn(run(kv.clone(), keys.clone(), mk("a"), tx1, c1.clone()));
        rx1.wait_for(|l| l.is_some()).await.unwrap();
        let h2 = tokio::spawn(run(kv.clone(), keys.clone(), mk("b"), tx2, c2.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx2.borrow().is_none(), "a second leader while the first holds its lease");
        c1.cancel();
        h1.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx2.wait_for(|l| l.is_some())).await.unwrap().unwrap();
        let rec: LeaderRecord = serde_json::from_slice(&kv.get(&keys.leader()).await.unwrap().unwrap().value).unwrap();
        assert_eq!(rec.id, "b");
        c2.cancel();
        h2.await.unwrap();
    }
}
