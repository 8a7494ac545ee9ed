"""Independent check of the quickstart: recompute the flights rollup from the
CSV with plain Python, read the committed OFFLINE Parquet files with duckdb,
and compare group by group.

usage: verify_flights.py flights.csv segments.json watermark.json store_dir
"""
import csv
import datetime as dt
import json
import math
import sys

import duckdb

csv_path, segments_path, watermark_path, store = sys.argv[1:5]
watermark_ms = json.load(open(watermark_path))["watermarkMs"]
segments = [s for s in json.load(open(segments_path)) if s["tableName"] == "flights_OFFLINE"]
files = [f"{store}/{s['location']}" for s in segments]


def num(v):
    return None if v in ("", "NA") else float(v)


def add(a, b):
    return b if a is None else a if b is None else a + b


def hi(a, b):
    return b if a is None else a if b is None else max(a, b)


expected = {}
rows_in = 0
for r in csv.DictReader(open(csv_path)):
    t = dt.datetime.strptime(r["time_hour"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    ms = int(t.timestamp() * 1000)
    if ms >= watermark_ms:
        continue
    rows_in += 1
    hour = ms // 3_600_000 * 3_600_000
    g = expected.setdefault((r["carrier"], r["origin"], hour), [None, None, None, None, 0])
    g[0] = add(g[0], num(r["dep_delay"]))
    g[1] = add(g[1], num(r["arr_delay"]))
    g[2] = add(g[2], num(r["distance"]))
    g[3] = hi(g[3], num(r["air_time"]))
    g[4] += 1

rows = duckdb.sql(
    "SELECT carrier, origin, epoch_ms(time_hour), dep_delay, arr_delay, distance, air_time, flights "
    f"FROM read_parquet({files!r})"
).fetchall()
actual = {}
for c, o, h, dep, arr, dist, air, n in rows:
    key = (c, o, h)
    if key in actual:
        sys.exit(f"verify: group {key} appears twice in the OFFLINE data")
    actual[key] = [dep, arr, dist, air, n]


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)


bad = [k for k in expected if k not in actual or not all(same(x, y) for x, y in zip(expected[k], actual[k]))]
extra = [k for k in actual if k not in expected]
flights = sum(v[4] for v in actual.values())
print(f"verify: {len(expected)} expected groups, {len(actual)} in {len(files)} OFFLINE files; "
      f"{rows_in} flights before the watermark, {flights} counted in OFFLINE")
if bad or extra or flights != rows_in:
    for k in (bad + extra)[:10]:
        print("  mismatch", k, expected.get(k), actual.get(k))
    sys.exit("verify: FAILED")
print("verify: OK, every group matches (sums of dep_delay, arr_delay, distance; max air_time; flight count)")
