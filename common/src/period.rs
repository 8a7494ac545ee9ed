//! Pinot's period syntax (`1d`, `6h`, `4h30m`, `90s`), as used by
//! `bucketTimePeriod`, `bufferTimePeriod` and `roundBucketTimePeriod`.
//!
//! Pinot parses these with a Joda period formatter of days, hours, minutes
//! and seconds in that order (`TimeUtils.convertPeriodToMillis`); r2o keeps
//! the same grammar: one or more `<digits><unit>` parts, units `d`, `h`, `m`,
//! `s` (any case), each at most once and in that order. Also sizes with
//! units ([`parse_size`]: `256MB`, `1GiB`), for budgets and segment sizes.

use crate::error::ConfigError;

const UNITS: [(char, i64); 4] = [('d', 86_400_000), ('h', 3_600_000), ('m', 60_000), ('s', 1_000)];

/// Parses a Pinot period into milliseconds.
///
/// `field` names the config key for the error message.
///
/// # Errors
/// [`ConfigError::Invalid`] when the text is empty, has an unknown unit, a
/// unit out of order or twice, a number without a unit, overflows, or is 0.
pub fn parse_period_ms(field: &str, text: &str) -> Result<i64, ConfigError> {
    parse_period_total(field, text, false)
}

/// [`parse_period_ms`] that also accepts a zero period (`0d`, `0h`, `0m`),
/// for `bufferTimePeriod`: Pinot's generator takes 0 as "a window is ready
/// as soon as it ends" (the CONSUMING and last-completed-segment rules
/// still hold it while rows may come).
///
/// # Errors
/// As [`parse_period_ms`], but 0 is valid.
pub fn parse_period_ms_zero_ok(field: &str, text: &str) -> Result<i64, ConfigError> {
    parse_period_total(field, text, true)
}

fn parse_period_total(field: &str, text: &str, zero_ok: bool) -> Result<i64, ConfigError> {
    let what = if zero_ok {
        "a Pinot period such as 0d, 1d, 6h or 4h30m"
    } else {
        "a positive Pinot period such as 1d, 6h or 4h30m"
    };
    let bad = |why: &str| ConfigError::Invalid {
        field: field.to_string(),
        value: text.to_string(),
        expected: format!("{what} ({why})"),
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut next_unit = 0usize;
    for ch in trimmed.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let lower = ch.to_ascii_lowercase();
        let Some(pos) = UNITS.iter().position(|(u, _)| *u == lower) else {
            return Err(bad(&format!("unknown unit '{ch}'")));
        };
        if digits.is_empty() {
            return Err(bad(&format!("unit '{ch}' has no number")));
        }
        if pos < next_unit {
            return Err(bad("units must appear once each, in the order d, h, m, s"));
        }
        let n: i64 = digits.parse().map_err(|_| bad("number too large"))?;
        total = n.checked_mul(UNITS[pos].1).and_then(|v| total.checked_add(v)).ok_or_else(|| bad("too large"))?;
        digits.clear();
        next_unit = pos + 1;
    }
    if !digits.is_empty() {
        return Err(bad(&format!("'{digits}' has no unit")));
    }
    if total < 0 || (total == 0 && !zero_ok) {
        return Err(bad("it must be greater than zero"));
    }
    Ok(total)
}

/// Formats milliseconds back into Pinot's period syntax (`86400000` -> `1d`).
pub fn format_period_ms(mut ms: i64) -> String {
    if ms <= 0 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    for (unit, size) in UNITS {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// Parses a size with an optional unit, as Kubernetes writes them: plain
/// bytes (`268435456`), decimal `KB`/`MB`/`GB`/`TB` (or `K`, `M`, `G`, `T`:
/// powers of 1000) and binary `KiB`/`MiB`/`GiB`/`TiB` (or `Ki`, `Mi`, `Gi`,
/// `Ti`: powers of 1024); a fraction is allowed (`1.5GiB`).
///
/// # Errors
/// A message naming the value and the expected form.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!("'{text}' is not a size: expected bytes with an optional unit, e.g. 268435456, 256MB, 256MiB or 4GiB")
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_pinot_examples() {
        assert_eq!(parse_period_ms("f", "1d").unwrap(), 86_400_000);
        assert_eq!(parse_period_ms("f", "6h").unwrap(), 21_600_000);
        assert_eq!(parse_period_ms("f", "4h30m").unwrap(), 16_200_000);
        assert_eq!(parse_period_ms("f", "1D2H").unwrap(), 93_600_000);
        assert_eq!(parse_period_ms("f", "90s").unwrap(), 90_000);
    }

    #[test]
    fn rejects_bad_periods_naming_field_and_value() {
        for bad in ["", "0d", "1x", "h", "30m4h", "1d1d", "12", "-1d"] {
            let err = parse_period_ms("bucketTimePeriod", bad).unwrap_err().to_string();
            assert!(err.contains("bucketTimePeriod"), "{err}");
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn a_buffer_may_be_zero_as_in_pinot() {
        assert_eq!(parse_period_ms_zero_ok("bufferTimePeriod", "0d").unwrap(), 0);
        assert_eq!(parse_period_ms_zero_ok("bufferTimePeriod", "0h0m").unwrap(), 0);
        assert_eq!(parse_period_ms_zero_ok("bufferTimePeriod", "2h").unwrap(), 7_200_000);
        for bad in ["", "-1d", "1x"] {
            let err = parse_period_ms_zero_ok("bufferTimePeriod", bad).unwrap_err().to_string();
            assert!(err.contains("bufferTimePeriod") && err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(d in 0i64..400, h in 0i64..24, m in 0i64..60, s in 0i64..60) {
            let ms = ((d * 24 + h) * 60 + m) * 60_000 + s * 1000;
            prop_assume!(ms > 0);
            prop_assert_eq!(parse_period_ms("f", &format_period_ms(ms)).unwrap(), ms);
        }
    }
}
