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

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// How time is cut into buckets (windows, or the rounding of
/// `roundBucketTimePeriod`): multiples of `period_ms` from the UTC epoch
/// (Pinot's rule), or, with a time zone (`bucketTimeZone`), local calendar
/// units: a period of whole days starts at local midnight (so a DST day is
/// 23 or 25 hours long; where midnight does not exist, at the day's first
/// instant), a period of whole hours dividing a day starts at local hours
/// that are multiples of it (the repeated hour of a fall-back day is a bucket
/// of its own). All values are UTC epoch ms; the time zone rules come from the
/// tz database bundled into the binary, so every process agrees.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucketing {
    period_ms: i64,
    zone: Option<jiff::tz::TimeZone>,
}

impl Bucketing {
    /// UTC multiples of `period_ms` (> 0).
    pub fn utc(period_ms: i64) -> Bucketing {
        Bucketing { period_ms: period_ms.max(1), zone: None }
    }

    /// Local calendar buckets of `period_ms` in `zone`; `period_ms` must be
    /// whole days or whole hours dividing a day (checked by
    /// [`Bucketing::zoned_period_ok`] when a table is added).
    pub fn zoned(period_ms: i64, zone: jiff::tz::TimeZone) -> Bucketing {
        Bucketing { period_ms: period_ms.max(1), zone: Some(zone) }
    }

    /// Whether `period_ms` can be cut in local time: whole days, or whole
    /// hours dividing 24.
    pub fn zoned_period_ok(period_ms: i64) -> bool {
        period_ms > 0 && (period_ms % DAY_MS == 0 || (period_ms % HOUR_MS == 0 && DAY_MS % period_ms == 0))
    }

    /// The nominal period, ms.
    pub fn period_ms(&self) -> i64 {
        self.period_ms
    }

    /// The time zone, if any.
    pub fn zone(&self) -> Option<&jiff::tz::TimeZone> {
        self.zone.as_ref()
    }

    /// The start of the bucket holding `t_ms`.
    pub fn floor(&self, t_ms: i64) -> i64 {
        match &self.zone {
            None => floor_to_bucket(t_ms, self.period_ms),
            Some(tz) => zoned_floor(t_ms, self.period_ms, tz).unwrap_or_else(|| floor_to_bucket(t_ms, self.period_ms)),
        }
    }

    /// The end of the bucket that starts at (or holds) `start_ms`: the first
    /// bucket boundary after it.
    pub fn next(&self, start_ms: i64) -> i64 {
        match &self.zone {
            None => floor_to_bucket(start_ms, self.period_ms).saturating_add(self.period_ms),
            Some(tz) => zoned_next(start_ms, self.period_ms, tz)
                .unwrap_or_else(|| floor_to_bucket(start_ms, self.period_ms).saturating_add(self.period_ms)),
        }
    }

    /// The bucket holding `t_ms`.
    pub fn containing(&self, t_ms: i64) -> Window {
        let start_ms = self.floor(t_ms);
        Window { start_ms, end_ms: self.next(start_ms) }
    }

    /// The bucket starting at the boundary `start_ms`.
    pub fn window_at(&self, start_ms: i64) -> Window {
        Window { start_ms, end_ms: self.next(start_ms) }
    }

    /// Buckets from `from_ms` (a boundary) up to `to_ms` (exclusive start).
    pub fn count_between(&self, from_ms: i64, to_ms: i64) -> u64 {
        match &self.zone {
            None => ((to_ms as i128 - from_ms as i128).max(0) / self.period_ms as i128) as u64,
            Some(_) => {
                let (mut n, mut t) = (0u64, from_ms);
                while t < to_ms {
                    let next = self.next(t);
                    if next <= t {
                        break;
                    }
                    n += 1;
                    t = next;
                }
                n
            }
        }
    }
}

/// Local-calendar floor (see [`Bucketing`]); `None` outside jiff's range.
fn zoned_floor(t_ms: i64, period_ms: i64, tz: &jiff::tz::TimeZone) -> Option<i64> {
    use jiff::civil::{Date, Time};
    let z = jiff::Timestamp::from_millisecond(t_ms).ok()?.to_zoned(tz.clone());
    if period_ms % DAY_MS == 0 {
        let days = period_ms / DAY_MS;
        let epoch = Date::constant(1970, 1, 1);
        let day_number = i64::from(z.date().since(epoch).ok()?.get_days());
        let start_day = day_number.div_euclid(days) * days;
        let date = epoch.checked_add(jiff::Span::new().try_days(start_day).ok()?).ok()?;
        let start = date.to_zoned(tz.clone()).ok()?.start_of_day().ok()?;
        return Some(start.timestamp().as_millisecond());
    }
    let hours = (period_ms / HOUR_MS).max(1) as i8;
    let hour = z.hour() - z.hour().rem_euclid(hours);
    let local = z.date().to_datetime(Time::new(hour, 0, 0, 0).ok()?);
    let amb = tz.to_ambiguous_zoned(local);
    // in a fold, the later of the two instants if it is not after t; in a
    // gap, the instant after it
    let later = amb.clone().later().ok()?.timestamp().as_millisecond();
    if later <= t_ms {
        return Some(later);
    }
    Some(amb.earlier().ok()?.timestamp().as_millisecond().min(t_ms))
}

/// The first local-calendar boundary after `start_ms`; `None` outside
/// jiff's range.
fn zoned_next(start_ms: i64, period_ms: i64, tz: &jiff::tz::TimeZone) -> Option<i64> {
    let floor = zoned_floor(start_ms, period_ms, tz)?;
    // a bucket is at most its period plus one hour (a fall-back day or hour)
    // and at least its period minus one hour: step in hours from there
    let mut probe = floor.saturating_add(period_ms - HOUR_MS).max(floor + 1);
    for _ in 0..4 {
        let b = zoned_floor(probe, period_ms, tz)?;
        if b > floor {
            return Some(b);
        }
        probe = probe.saturating_add(HOUR_MS);
    }
    None
}

/// Formats epoch ms in the time zone named `zone` (RFC 3339 with the offset
/// and the zone, `2020-11-01T00:00:00-04:00[America/New_York]`); UTC when
/// the name is not a known zone.
pub fn format_in_zone(ms: i64, zone: &str) -> String {
    match (jiff::Timestamp::from_millisecond(ms), jiff::tz::TimeZone::get(zone)) {
        (Ok(ts), Ok(tz)) => ts.to_zoned(tz).to_string(),
        _ => format_utc(ms),
    }
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

    fn ny() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("America/New_York").unwrap()
    }

    #[test]
    fn local_days_follow_dst() {
        let days = Bucketing::zoned(DAY, ny());
        // 2020-03-08 (23 h) and 2020-11-01 (25 h) in New York
        let spring = days.containing(1_583_668_800_000 + 12 * 3_600_000); // 2020-03-08T12:00Z
        assert_eq!(spring.start_ms, 1_583_643_600_000, "local midnight, -05:00");
        assert_eq!(spring.end_ms - spring.start_ms, 23 * 3_600_000);
        let fall = days.containing(1_604_232_000_000 + 12 * 3_600_000); // 2020-11-01T12:00Z
        assert_eq!(fall.start_ms, 1_604_203_200_000, "local midnight, -04:00");
        assert_eq!(fall.end_ms - fall.start_ms, 25 * 3_600_000);
        // the repeated hour of the fall-back day is an hour bucket of its own
        let hours = Bucketing::zoned(3_600_000, ny());
        let first = hours.containing(1_604_208_600_000); // 05:30Z = 01:30 EDT
        let second = hours.containing(1_604_212_200_000); // 06:30Z = 01:30 EST
        assert_eq!((first.start_ms, first.end_ms), (1_604_206_800_000, 1_604_210_400_000));
        assert_eq!((second.start_ms, second.end_ms), (1_604_210_400_000, 1_604_214_000_000));
        // UTC bucketing is Pinot's
        assert_eq!(Bucketing::utc(DAY).containing(-1), Window::containing(-1, DAY));
        assert!(Bucketing::zoned_period_ok(DAY) && Bucketing::zoned_period_ok(6 * 3_600_000));
        assert!(!Bucketing::zoned_period_ok(5 * 3_600_000) && !Bucketing::zoned_period_ok(90 * 60_000));
    }

    proptest! {
        /// Local buckets tile time: a bucket holds its time, its end is the
        /// next bucket's start, no boundary lies inside it, it starts at a
        /// local time that is a multiple of the period, and its length is
        /// the period give or take the DST hour.
        #[test]
        fn local_buckets_tile_time_across_dst(
            t in 1_262_304_000_000i64..1_893_456_000_000, // 2010..2030
            zone in prop::sample::select(vec!["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"]),
            period_h in prop::sample::select(vec![1i64, 2, 3, 6, 12, 24, 48, 168]),
        ) {
            let tz = jiff::tz::TimeZone::get(zone).unwrap();
            let period = period_h * 3_600_000;
            let b = Bucketing::zoned(period, tz.clone());
            let w = b.containing(t);
            prop_assert!(w.start_ms <= t && t < w.end_ms, "{w} holds {t}");
            prop_assert_eq!(b.floor(w.start_ms), w.start_ms);
            prop_assert_eq!(b.floor(w.end_ms), w.end_ms);
            prop_assert_eq!(b.floor(w.end_ms - 1), w.start_ms, "no boundary inside {}", w);
            prop_assert!((w.end_ms - w.start_ms - period).abs() <= 3_600_000, "{w}: {} h", (w.end_ms - w.start_ms) / 3_600_000);
            let local = jiff::Timestamp::from_millisecond(w.start_ms).unwrap().to_zoned(tz);
            if period_h % 24 == 0 {
                prop_assert_eq!(local.clone().start_of_day().unwrap().timestamp().as_millisecond(), w.start_ms);
            } else {
                prop_assert!(local.minute() == 0 || local.minute() == 30, "{}", local);
            }
            prop_assert_eq!(b.count_between(w.start_ms, b.next(w.end_ms)), 2);
        }

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
