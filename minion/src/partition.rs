//! Pinot's partition functions (`columnPartitionMap`), vectorised over an
//! Arrow column: `Murmur` (Kafka's murmur2), `Modulo`, `HashCode`.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};

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

fn of_text(f: PartitionFunction, text: &str, n: u32) -> u32 {
    let n = i64::from(n);
    match f {
        PartitionFunction::Murmur => ((i64::from(murmur2(text.as_bytes()) & 0x7fff_ffff)) % n) as u32,
        PartitionFunction::HashCode => i64::from(java_string_hash(text).wrapping_abs()).rem_euclid(n) as u32,
        PartitionFunction::Modulo => text.parse::<i64>().map(|v| v.rem_euclid(n) as u32).unwrap_or(0),
    }
}

/// Partition id of every row of `column` (nulls go to partition 0; the
/// value's string form feeds Murmur and HashCode, as in Pinot).
pub fn partition_ids(column: &ArrayRef, p: &Partitioning) -> Result<Vec<u32>, Error> {
    let n = p.num_partitions;
    let mut out = Vec::with_capacity(column.len());
    match column.data_type() {
        DataType::Utf8 => {
            let a = column.as_string::<i32>();
            for i in 0..a.len() {
                out.push(if a.is_null(i) { 0 } else { of_text(p.function, a.value(i), n) });
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
            let fmt = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())?;
            for i in 0..column.len() {
                out.push(if column.is_null(i) { 0 } else { of_text(p.function, &fmt.value(i).to_string(), n) });
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
