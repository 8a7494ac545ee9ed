"""Writes the reference sketches of minion/src/sketch.rs's tests into
minion/testdata/: sketches made and merged by Apache DataSketches' C++
library (the PyPI `datasketches` package), whose serialized formats are the
ones the Java library Pinot uses reads and writes. Each `<kind>_a.bin` and
`<kind>_b.bin` is merged by the reference into `<kind>_ab.bin`; the Rust test
merges a and b and compares bytes. Run: .venv/bin/python scripts/sketch_fixtures.py
(after .venv/bin/pip install datasketches)."""
import pathlib

import datasketches as ds

out = pathlib.Path(__file__).resolve().parent.parent / "minion" / "testdata"
out.mkdir(exist_ok=True)


def write(name, data):
    (out / name).write_bytes(bytes(data))


# Theta: estimation mode (more items than 2^6 nominal entries), union of lg_k 6
a, b = ds.update_theta_sketch(lg_k=6), ds.update_theta_sketch(lg_k=6)
for i in range(0, 300):
    a.update(i)
for i in range(200, 1000):
    b.update(i)
u = ds.theta_union(lg_k=6)
u.update(a)
u.update(b)
write("theta_a.bin", a.compact(True).serialize())
write("theta_b.bin", b.compact(True).serialize())
write("theta_ab.bin", u.get_result(True).serialize())

# integer-sum Tuple: same keys, the union sums their summaries
a = ds.update_tuple_sketch(ds.AccumulatorPolicy(), lg_k=6)
b = ds.update_tuple_sketch(ds.AccumulatorPolicy(), lg_k=6)
for i in range(0, 300):
    a.update(i, 1)
for i in range(200, 1000):
    b.update(i, 2)
u = ds.tuple_union(ds.AccumulatorPolicy(), lg_k=6)
u.update(a)
u.update(b)
serde = ds.PyIntsSerDe()
write("tuple_a.bin", a.compact(True).serialize(serde))
write("tuple_b.bin", b.compact(True).serialize(serde))
write("tuple_ab.bin", u.get_result(True).serialize(serde))

# CPC of lg_k 8, union of lg_k 8
a, b = ds.cpc_sketch(8), ds.cpc_sketch(8)
for i in range(0, 300):
    a.update(i)
for i in range(200, 1000):
    b.update(i)
u = ds.cpc_union(8)
u.update(a)
u.update(b)
write("cpc_a.bin", a.serialize())
write("cpc_b.bin", b.serialize())
write("cpc_ab.bin", u.get_result().serialize())

# KLL doubles of K 200, merged into an empty K 200 sketch as Pinot does
# (150 items: below K, so no random compaction and one right answer)
a, b = ds.kll_doubles_sketch(200), ds.kll_doubles_sketch(200)
for i in range(0, 100):
    a.update(float(i))
for i in range(100, 150):
    b.update(float(i) / 2)
u = ds.kll_doubles_sketch(200)
u.merge(a)
u.merge(b)
write("kll_a.bin", a.serialize())
write("kll_b.bin", b.serialize())
write("kll_ab.bin", u.serialize())
print("wrote", sorted(p.name for p in out.iterdir()))
