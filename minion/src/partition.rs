//! Pinot's partition functions (`columnPartitionMap`), vectorised over an
//! Arrow column: `Murmur` (Kafka's murmur2), `Modulo`, `HashCode`.
//!
//! Pinot hands every function the value's Java string form
//! (`PartitionFunction.getPartition(String)`): [`java_string`] reproduces it
//! for each column type (`Double.toString`, `Float.toString`, decimal
//! integers, epoch millis for TIMESTAMP, `1`/`0` for BOOLEAN, which Pinot
//! stores as INT, lowercase hex for BYTES), so a row lands in the partition
//! Pinot would give it.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType};

use r2o_common::config::{PartitionFunction, Partitioning};
use r2o_common::Error;

/// Kafka's murmur2 (seed `0x9747b28c`), as Pinot's `MurmurPartitionFunction` uses it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Java's `String.hashCode()` (over UTF-16 code units).
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Kafka's `Utils.abs`, as Pinot's `HashCodePartitionFunction` uses it:
/// `Integer.MIN_VALUE` maps to 0 (Java's `Math.abs` would leave it negative).
fn kafka_abs(n: i32) -> i32 {
    if n == i32::MIN {
        0
    } else {
        n.abs()
    }
}

/// Java's rule for values whose shortest round-tripping decimal has one
/// digit (JDK 19+ `Double.toString`): among the one- and two-digit decimals
/// that round to the value, the closest one is printed (so
/// `Double.MIN_VALUE` prints as `4.9E-324`, not `5.0E-324`). `sci` is the
/// shortest form, `exact` the value with 17 more digits, `round_trips`
/// whether a decimal text parses back to the value.
fn closest_two_digits(sci: &str, exact: &str, round_trips: impl Fn(&str) -> bool) -> String {
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let (sign, m) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    if m.len() != 1 {
        return sci.to_string();
    }
    let Ok(d) = m.parse::<i64>() else { return sci.to_string() };
    let (xm, xe) = exact.split_once('e').unwrap_or((exact, "0"));
    let (Ok(xm), Ok(xe), Ok(e)) = (xm.trim_start_matches('-').parse::<f64>(), xe.parse::<i32>(), exp.parse::<i32>())
    else {
        return sci.to_string();
    };
    let x = xm * 10f64.powi(xe - e); // the value in units of 10^e
    let mut best: Option<(f64, i64)> = None;
    for q in (10 * d - 9).max(10)..=(10 * d + 9).min(99) {
        let text = format!("{sign}{}.{}e{e}", q / 10, q % 10);
        if round_trips(&text) {
            let dist = (q as f64 / 10.0 - x).abs();
            if best.is_none_or(|(b, _)| dist < b) {
                best = Some((dist, q));
            }
        }
    }
    match best {
        Some((_, q)) => format!("{sign}{}.{}e{e}", q / 10, q % 10),
        None => sci.to_string(),
    }
}

/// Java's `Double.toString` / `Float.toString` (JDK 19 and later) from the
/// shortest scientific form: `1.0E20`, `100.0`, `0.001`, `1.0E-4`, `NaN`,
/// `-Infinity`.
fn java_float_text(sci: String) -> String {
    match sci.as_str() {
        "NaN" => return "NaN".into(),
        "inf" => return "Infinity".into(),
        "-inf" => return "-Infinity".into(),
        _ => {}
    }
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = match digits.trim_end_matches('0') {
        "" => "0".to_string(),
        d => d.to_string(),
    };
    if digits.chars().all(|c| c == '0') {
        return format!("{sign}0.0");
    }
    if (-3..7).contains(&exp) {
        if exp >= 0 {
            let e = exp as usize;
            let mut int_part: String = digits.chars().take(e + 1).collect();
            while int_part.len() < e + 1 {
                int_part.push('0');
            }
            let frac: String = digits.chars().skip(e + 1).collect();
            format!("{sign}{int_part}.{}", if frac.is_empty() { "0" } else { &frac })
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        format!("{sign}{first}.{}E{exp}", if rest.is_empty() { "0" } else { rest })
    }
}

/// Java's `Double.toString(v)`.
pub fn java_double_string(v: f64) -> String {
    if !v.is_finite() {
        return java_float_text(format!("{v:e}"));
    }
    let sci = closest_two_digits(&format!("{v:e}"), &format!("{v:.17e}"), |t| t.parse::<f64>().ok() == Some(v));
    java_float_text(sci)
}

/// Java's `Float.toString(v)`.
pub fn java_float_string(v: f32) -> String {
    if !v.is_finite() {
        return java_float_text(format!("{v:e}"));
    }
    let sci =
        closest_two_digits(&format!("{v:e}"), &format!("{:.17e}", f64::from(v)), |t| t.parse::<f32>().ok() == Some(v));
    java_float_text(sci)
}

/// The string Pinot passes to a partition function for row `i` of `column`
/// (`None` for a null).
pub fn java_string(column: &ArrayRef, i: usize) -> Result<Option<String>, Error> {
    if column.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => column.as_string::<i64>().value(i).to_string(),
        DataType::Int32 => column.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => column.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Float32 => java_float_string(column.as_primitive::<Float32Type>().value(i)),
        DataType::Float64 => java_double_string(column.as_primitive::<Float64Type>().value(i)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            column.as_primitive::<TimestampMillisecondType>().value(i).to_string()
        }
        DataType::Boolean => if column.as_boolean().value(i) { "1" } else { "0" }.to_string(),
        DataType::Binary => column.as_binary::<i32>().value(i).iter().map(|b| format!("{b:02x}")).collect(),
        other => {
            return Err(Error::Segment {
                segment: String::new(),
                problem: format!("cannot partition a column of type {other}"),
            })
        }
    }))
}

fn of_text(f: PartitionFunction, text: &str, n: u32) -> Result<u32, Error> {
    let n64 = i64::from(n);
    Ok(match f {
        PartitionFunction::Murmur => ((i64::from(murmur2(text.as_bytes()) & 0x7fff_ffff)) % n64) as u32,
        PartitionFunction::HashCode => (kafka_abs(java_string_hash(text)) % n as i32) as u32,
        PartitionFunction::Modulo => match text.parse::<i64>() {
            Ok(v) => v.rem_euclid(n64) as u32,
            Err(_) => {
                return Err(Error::Segment {
                    segment: String::new(),
                    problem: format!("Modulo partitioning needs an integer value, got '{text}'"),
                })
            }
        },
    })
}

/// Partition id of every row of `column` (nulls go to partition 0; the
/// value's Java string form feeds Murmur and HashCode, as in Pinot).
///
/// # Errors
/// A column type Pinot cannot partition, or a non-integer under Modulo.
pub fn partition_ids(column: &ArrayRef, p: &Partitioning) -> Result<Vec<u32>, Error> {
    let n = p.num_partitions;
    let mut out = Vec::with_capacity(column.len());
    match column.data_type() {
        DataType::Utf8 => {
            let a = column.as_string::<i32>();
            for i in 0..a.len() {
                out.push(if a.is_null(i) { 0 } else { of_text(p.function, a.value(i), n)? });
            }
        }
        DataType::Int32 | DataType::Int64 if p.function == PartitionFunction::Modulo => {
            let vals: Vec<Option<i64>> = match column.data_type() {
                DataType::Int32 => column.as_primitive::<Int32Type>().iter().map(|v| v.map(i64::from)).collect(),
                _ => column.as_primitive::<Int64Type>().iter().collect(),
            };
            out.extend(vals.into_iter().map(|v| v.map_or(0, |v| v.rem_euclid(i64::from(n)) as u32)));
        }
        _ => {
            for i in 0..column.len() {
                out.push(match java_string(column, i)? {
                    None => 0,
                    Some(text) => of_text(p.function, &text, n)?,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn murmur2_matches_kafka_vectors() {
        // Kafka's UtilsTest.testMurmur2
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn java_hash_matches() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("abc"), 96354);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn java_number_strings_match_the_jdk() {
        // Double.toString / Float.toString outputs of a JDK (19+)
        for (v, java) in [
            (1.0e20, "1.0E20"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (1234567.0, "1234567.0"),
            (1.0e7, "1.0E7"),
            (123456789.123, "1.23456789123E8"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::MAX, "1.7976931348623157E308"),
            (f64::MIN_POSITIVE * f64::EPSILON, "4.9E-324"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(java_double_string(v), java, "{v:e}");
        }
        for (v, java) in [
            (1.1f32, "1.1"),
            (f32::MAX, "3.4028235E38"),
            (1.0e10f32, "1.0E10"),
            (0.5f32, "0.5"),
            (f32::from_bits(1), "1.4E-45"),
        ] {
            assert_eq!(java_float_string(v), java, "{v:e}");
        }
    }

    #[test]
    fn non_string_columns_hash_their_java_strings() {
        use arrow::array::{BooleanArray, Float64Array, TimestampMillisecondArray};
        let p = Partitioning { column: "c".into(), function: PartitionFunction::Murmur, num_partitions: 7 };
        let col: ArrayRef = Arc::new(Float64Array::from(vec![1.0e20, 2.0]));
        let ids = partition_ids(&col, &p).unwrap();
        let expect = |s: &str| ((murmur2(s.as_bytes()) & 0x7fff_ffff) % 7) as u32;
        assert_eq!(ids, vec![expect("1.0E20"), expect("2.0")]);
        let col: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_600_000_000_123]));
        assert_eq!(partition_ids(&col, &p).unwrap(), vec![expect("1600000000123")], "TIMESTAMP as epoch millis");
        let col: ArrayRef = Arc::new(BooleanArray::from(vec![true, false]));
        assert_eq!(partition_ids(&col, &p).unwrap(), vec![expect("1"), expect("0")], "BOOLEAN as Pinot's stored INT");
        let col: ArrayRef = Arc::new(Int64Array::from(vec![-42]));
        assert_eq!(partition_ids(&col, &p).unwrap(), vec![expect("-42")]);
    }

    #[test]
    fn hash_code_of_integer_min_value_goes_to_partition_zero() {
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE; Pinot's abs maps it to 0
        let p = Partitioning { column: "c".into(), function: PartitionFunction::HashCode, num_partitions: 7 };
        let col: ArrayRef = Arc::new(StringArray::from(vec!["polygenelubricants", "abc"]));
        assert_eq!(partition_ids(&col, &p).unwrap(), vec![0, (96354 % 7) as u32]);
        let m = Partitioning { column: "c".into(), function: PartitionFunction::Modulo, num_partitions: 4 };
        let col: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        assert!(partition_ids(&col, &m).is_err(), "Modulo of a non-integer is refused, as in Pinot");
    }

    #[test]
    fn ids_are_in_range_and_stable() {
        let col: ArrayRef = Arc::new(StringArray::from(vec![Some("UA"), None, Some("AA"), Some("UA")]));
        let p = Partitioning { column: "c".into(), function: PartitionFunction::Murmur, num_partitions: 4 };
        let ids = partition_ids(&col, &p).unwrap();
        assert!(ids.iter().all(|i| *i < 4));
        assert_eq!(ids[0], ids[3]);
        assert_eq!(ids[1], 0);
        let col: ArrayRef = Arc::new(Int64Array::from(vec![7, -1, 8]));
        let p = Partitioning { column: "c".into(), function: PartitionFunction::Modulo, num_partitions: 4 };
        assert_eq!(partition_ids(&col, &p).unwrap(), vec![3, 3, 0]);
    }
}
