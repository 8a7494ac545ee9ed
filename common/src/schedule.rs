//! Pinot's task `schedule` key: a Quartz cron expression (`sec min hour
//! day-of-month month day-of-week [year]`, e.g. `0 */10 * * * ?`), evaluated
//! in UTC with croner (Quartz's `?`, `L`, `W`, `#`, and Quartz's day-of-week
//! numbering, 1 = Sunday). A table with a schedule is planned in runs that
//! start at its fire times; [`Schedule::due`] is the rule, pure.

use serde::{Deserialize, Serialize};

/// A parsed `schedule`.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Schedule {
    /// Parses a Quartz cron expression (6 or 7 fields, seconds first).
    ///
    /// # Errors
    /// What is wrong with the expression, in croner's words.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(format!(
                "{fields} fields; a Quartz cron expression has 6 or 7 (seconds minutes hours day-of-month month day-of-week [year])"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .year(croner::parser::Year::Optional)
            .alternative_weekdays(true)
            .build()
            .parse(text)
            .map_err(|e| e.to_string())?;
        Ok(Schedule { text: text.trim().to_string(), cron })
    }

    /// The expression as given (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first fire time strictly after `after_ms` (UTC epoch ms), if any.
    /// Fire times are whole seconds, as in Quartz: the search starts from
    /// `after_ms` truncated to its second (croner keeps the sub-second part
    /// of the instant it is given, which made fire times drift with the
    /// caller's clock).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms.div_euclid(1000) * 1000)?;
        self.cron.find_next_occurrence(&t, false).ok().map(|d| d.timestamp_millis().div_euclid(1000) * 1000)
    }

    /// Whether a run is due at `now_ms` given the last fire time a run was
    /// started for (`last_fire_ms`), and the fire time to record: the latest
    /// one at or before `now_ms` (missed fires while nobody led collapse into
    /// one run, which catches up on everything ready anyway).
    pub fn due(&self, last_fire_ms: i64, now_ms: i64) -> Option<i64> {
        let mut fire = self.next_after(last_fire_ms).filter(|f| *f <= now_ms)?;
        for _ in 0..10_000 {
            match self.next_after(fire) {
                Some(f) if f <= now_ms => fire = f,
                _ => break,
            }
        }
        Some(fire)
    }
}

/// A scheduled table's runs (`schedules/<raw>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRecord {
    /// The fire time of the last scheduled run, UTC epoch ms (before the
    /// first run the record is absent and the table's creation counts as
    /// the last fire).
    pub last_fire_ms: i64,
    /// When the last run (scheduled or manual) started, UTC epoch ms
    /// (`None`: none yet; legacy records wrote 0).
    #[serde(default, deserialize_with = "crate::meta::wall_clock_or_none")]
    pub last_run_ms: Option<i64>,
    /// `scheduled` or `manual`.
    pub last_trigger: String,
    /// A scheduled run is planning (until nothing more is ready).
    pub active: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartz_expressions_fire_in_utc() {
        let s = Schedule::parse("0 */10 * * * ?").unwrap();
        // 2020-01-01T00:03:00Z -> 00:10:00Z
        assert_eq!(s.next_after(1_577_836_980_000), Some(1_577_837_400_000));
        assert_eq!(s.due(1_577_836_980_000, 1_577_837_399_999), None, "not yet");
        assert_eq!(s.due(1_577_836_980_000, 1_577_838_100_000), Some(1_577_838_000_000), "the latest missed fire");
        // Quartz weekdays: 2 = Monday; 2020-01-06 was a Monday
        let mon = Schedule::parse("0 0 12 ? * 2").unwrap();
        assert_eq!(mon.next_after(1_577_836_800_000), Some(1_578_312_000_000));
        assert!(Schedule::parse("0 */10 * * *").unwrap_err().contains("5 fields"));
        // fire times are whole seconds whatever the caller's milliseconds
        assert_eq!(s.next_after(1_577_836_980_806), Some(1_577_837_400_000));
        assert_eq!(s.next_after(1_577_837_400_000 - 1), Some(1_577_837_400_000), "one ms before a fire");
        assert_eq!(s.next_after(1_577_837_400_000), Some(1_577_838_000_000), "strictly after");
        let every = Schedule::parse("* * * * * ?").unwrap();
        assert_eq!(every.next_after(1_577_836_980_806), Some(1_577_836_981_000));
        assert_eq!(every.due(1_577_836_980_000, 1_577_836_990_123), Some(1_577_836_990_000));
        assert!(Schedule::parse("0 61 * * * ?").is_err());
    }
}
