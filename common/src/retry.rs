//! Backoff policies shared by the roles (backon's exponential backoff with
//! jitter), so reconnects after an etcd outage spread out instead of
//! arriving in lockstep.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// An endless, jittered exponential backoff from `min` to `max`, for
/// reconnecting to etcd (campaigns, registrations, keep-alives).
pub fn reconnect_backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times().build()
}

/// The bounded, jittered backoff for object-store calls inside one attempt:
/// 4 retries from 50 ms (the attempt's `timeoutMs` is the overall deadline).
pub fn store_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(Duration::from_millis(50)).with_max_times(4).with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_grows_and_is_capped() {
        let delays: Vec<Duration> =
            reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2)).take(12).collect();
        assert_eq!(delays.len(), 12, "never runs out");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(4)),
            "capped (jitter adds at most one more max): {delays:?}"
        );
        assert!(delays[8] >= Duration::from_secs(2), "grows to the cap: {delays:?}");
    }
}
