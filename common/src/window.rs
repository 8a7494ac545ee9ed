//! Window math, in one place. Every window is half-open:
//! `[window_start_ms, window_end_ms)` with `window_end_ms - window_start_ms ==
//! bucket_ms`, aligned to multiples of `bucket_ms` from the UTC epoch.
//! Segment time ranges are closed: `[start_time_ms, end_time_ms]` (Pinot keeps
//! a segment's end time inclusive). All values are UTC epoch milliseconds;
//! negative values (before 1970) are handled with `div_euclid`, and window
//! ends saturate at `i64::MAX` instead of overflowing.

use serde::{Deserialize, Serialize};

/// A half-open time window `[start_ms, end_ms)` in UTC epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Inclusive start, ms.
    pub start_ms: i64,
    /// Exclusive end, ms.
    pub end_ms: i64,
}

impl Window {
    /// The bucket-aligned window holding `t_ms`.
    pub fn containing(t_ms: i64, bucket_ms: i64) -> Window {
        let start_ms = floor_to_bucket(t_ms, bucket_ms);
        Window { start_ms, end_ms: start_ms.saturating_add(bucket_ms) }
    }

    /// The window starting at `start_ms` (not re-aligned) and `bucket_ms` long.
    pub fn starting_at(start_ms: i64, bucket_ms: i64) -> Window {
        Window { start_ms, end_ms: start_ms.saturating_add(bucket_ms) }
    }

    /// Whether `t_ms` lies in `[start_ms, end_ms)`.
    pub fn contains(&self, t_ms: i64) -> bool {
        self.start_ms <= t_ms && t_ms < self.end_ms
    }

    /// Pinot's overlap rule between this window and a segment whose times are
    /// `[seg_start_ms, seg_end_ms]` (end inclusive):
    /// `windowStart <= segEnd && segStart < windowEnd`.
    pub fn overlaps_segment(&self, seg_start_ms: i64, seg_end_ms: i64) -> bool {
        self.start_ms <= seg_end_ms && seg_start_ms < self.end_ms
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start_ms, self.end_ms)
    }
}

/// `floor(t_ms / bucket_ms) * bucket_ms`, rounding toward negative infinity so
/// that times before 1970 land in the window that holds them.
///
/// `bucket_ms` must be > 0 (validated when a table is added). Near
/// `i64::MIN` the true floor may not fit; it saturates at `i64::MIN`.
pub fn floor_to_bucket(t_ms: i64, bucket_ms: i64) -> i64 {
    debug_assert!(bucket_ms > 0);
    t_ms.div_euclid(bucket_ms).checked_mul(bucket_ms).unwrap_or(i64::MIN)
}

/// Pinot's cold-start watermark: the start of the window holding the earliest
/// segment start time, `floor(minStart / bucket) * bucket`.
pub fn cold_start_watermark_ms(min_segment_start_ms: i64, bucket_ms: i64) -> i64 {
    floor_to_bucket(min_segment_start_ms, bucket_ms)
}

/// Whether a window is past the buffer at `now_ms`:
/// `windowEnd <= now - bufferTimePeriod` (Pinot's eligibility rule).
pub fn past_buffer(window: &Window, now_ms: i64, buffer_ms: i64) -> bool {
    window.end_ms <= now_ms.saturating_sub(buffer_ms)
}

/// Formats epoch ms as an RFC 3339 UTC instant (`2013-01-01T00:00:00Z`), for
/// logs and reports. Pure integer arithmetic (civil-from-days).
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, (sod % 3600) / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn negative_times_floor_down() {
        assert_eq!(floor_to_bucket(-1, DAY), -DAY);
        assert_eq!(floor_to_bucket(-DAY, DAY), -DAY);
        assert_eq!(floor_to_bucket(0, DAY), 0);
        assert_eq!(Window::containing(-1, DAY), Window { start_ms: -DAY, end_ms: 0 });
    }

    #[test]
    fn huge_times_saturate() {
        let w = Window::containing(i64::MAX, DAY);
        assert_eq!(w.start_ms, i64::MAX / DAY * DAY);
        assert_eq!(w.end_ms, i64::MAX, "the end saturates instead of overflowing");
        assert!(w.contains(i64::MAX - 1));
        let w = Window::containing(i64::MIN, DAY);
        assert_eq!(w.start_ms, i64::MIN, "the floor saturates instead of overflowing");
        assert!(w.contains(i64::MIN));
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_356_998_400_000), "2013-01-01T00:00:00Z");
        assert_eq!(format_utc(-1000), "1969-12-31T23:59:59Z");
    }

    proptest! {
        #[test]
        fn containing_window_holds_time(t in any::<i64>(), bucket in 1i64..(400 * DAY)) {
            let w = Window::containing(t, bucket);
            prop_assert!(w.start_ms <= t);
            prop_assert_eq!(w.start_ms.rem_euclid(bucket), 0);
            if w.end_ms != i64::MAX {
                prop_assert!(t < w.end_ms);
                prop_assert_eq!(w.end_ms - w.start_ms, bucket);
            }
        }

        #[test]
        fn a_point_segment_overlaps_exactly_its_window(t in -(1i64 << 50)..(1i64 << 50), bucket in 1i64..(40 * DAY), k in -3i64..3) {
            let own = Window::containing(t, bucket);
            let other = Window::starting_at(own.start_ms + k * bucket, bucket);
            prop_assert_eq!(other.overlaps_segment(t, t), k == 0);
        }

        #[test]
        fn overlap_matches_pointwise_definition(s in -1000i64..1000, len in 0i64..500, ws in -1000i64..1000, bucket in 1i64..300) {
            let w = Window::starting_at(ws, bucket);
            let e = s + len;
            let pointwise = (s..=e).any(|t| w.contains(t));
            prop_assert_eq!(w.overlaps_segment(s, e), pointwise);
        }
    }
}
