#!/usr/bin/env python3
"""The flights backfill benchmark: r2o through a real cluster against the
peers, measured side by side in one sitting.

For each scale (x1, x30 of ../shared/bench/gen_flights.py) and mergeType
(concat, rollup, dedup) it:
  1. starts a fresh etcd, one r2o controller and two r2o minions (release
     build) on loopback, with the segment store in a local directory;
  2. adds the table paused (../shared/bench/table-<merge>.json) and registers
     every REALTIME segment in bulk (`r2o segment add --dir`), timed apart;
  3. resumes the flow and times the backfill alone, until the watermark
     reaches the end of the data (read from the controller's /metrics);
  4. reads each process's peak RSS (VmHWM);
  5. runs the peers (peers.py: duckdb, polars per window; duckdb-1q,
     polars-1p in one pass) on the same segments, each with its peak RSS;
  6. checks r2o's OFFLINE output against a peer's (peers.py verify
     --check-sorted) before printing a figure;
  7. with --floor, runs ../shared/bench/floor on the same segments (read
     and write, no transform) and gives r2o's time as a multiple of it.
Then it prints one table: tool, scale, mergeType, wall s, rows/s, windows/s,
peak RSS, and r2o's ratio to the best peer.

Setup (once): `bash scripts/setup.sh --bench` (etcd, and the Python
packages of the generator and the peers in .venv); the script builds r2o in
release mode itself.

Each run writes under a fresh directory of <work>/runs; the previous
sitting's files are deleted only after this sitting has measured: on ext4,
creating files in the minutes after tens of thousands were deleted is several
times slower (inode allocation skips recently deleted inodes), which would
charge a previous run's cleanup to the next run.

`--merges rollup-sketch` runs the rollup with five sketch columns added
(HLL, Theta, CPC, KLL, AvgPair; see SKETCH_AGGREGATIONS), with no peer:
none merges sketches, so it stands beside r2o's plain rollup.

Usage: scripts/bench.py [--scales x1,x30] [--merges concat,rollup,dedup,rollup-sketch]
                        [--peers duckdb,polars,duckdb-1q,polars-1p] [--bucket 1d] [--floor]
       scripts/bench.py --one-window [--merges ...]   (x30 as one window)
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BENCH_R2O_BIN: an r2o binary built elsewhere (an A/B against another
# commit in one sitting); unset, the tree's release build (built first)
R2O = os.environ.get("BENCH_R2O_BIN") or os.path.join(ROOT, "target", "release", "r2o")
PY = os.path.join(ROOT, ".venv", "bin", "python")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    start = time.time()
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.time() - start > timeout:
                raise RuntimeError(f"port {port} did not open")
            time.sleep(0.05)


def vm_hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    """User + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port, name):
    """A metric's value, or None (also when a scrape under load times out:
    the caller polls again)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except (TimeoutError, OSError):
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


class Cluster:
    """etcd + one controller + two minions of the release build."""

    def __init__(self, work, bench_dir, minion_env=None, insecure=False, log=None):
        """TLS everywhere (etcd with client certificates, mutual gRPC) and
        roles on, as the quickstart and production run; `insecure`: plain
        text, to measure what TLS costs; `log`: the processes' R2O_LOG
        (default: $R2O_LOG, else warn)."""
        self.work = work
        os.makedirs(work)
        self.procs = {}
        scheme = "http" if insecure else "https"
        base = dict(os.environ, R2O_LOG=log or os.environ.get("R2O_LOG", "warn"))
        tls = os.path.join(work, "tls")
        etcd_tls = []
        if insecure:
            base["R2O_INSECURE"] = "true"
        else:
            subprocess.run([R2O, "certs", "init", "--dir", tls], check=True, stdout=subprocess.DEVNULL)
            base["R2O_TLS_CA"] = os.path.join(tls, "ca.pem")
            etcd_tls = ["--cert-file", os.path.join(tls, "controller.pem"), "--key-file",
                        os.path.join(tls, "controller.key"), "--trusted-ca-file", os.path.join(tls, "ca.pem"),
                        "--client-cert-auth"]
        cp, pp = free_port(), free_port()
        self.etcd_url = f"{scheme}://127.0.0.1:{cp}"
        self.procs["etcd"] = subprocess.Popen(
            ["etcd", "--data-dir", os.path.join(work, "etcd"), "--name", "bench",
             "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
             "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
             "--initial-cluster", f"bench=http://127.0.0.1:{pp}", "--quota-backend-bytes", str(8 << 30)] + etcd_tls
            + os.environ.get("BENCH_ETCD_ARGS", "").split(),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "etcd.log"), "w"))
        wait_port(cp)
        self.env = dict(base, R2O_ETCD=self.etcd_url, R2O_PREFIX="/bench",
                        R2O_STORE=f"file://{os.path.join(work, 'store')}")

        def as_(who):
            return {} if insecure else {"R2O_TLS_CERT": os.path.join(tls, f"{who}.pem"),
                                        "R2O_TLS_KEY": os.path.join(tls, f"{who}.key")}
        self.controller_port, self.controller_http = free_port(), free_port()
        self.spawn("controller", ["controller", "--listen", f"127.0.0.1:{self.controller_port}",
                                  "--http-listen", f"127.0.0.1:{self.controller_http}"], self.controller_port,
                   dict(self.env, **as_("controller")))
        for i in range(2):
            port = free_port()
            self.spawn(f"minion{i}", ["minion", "--listen", f"127.0.0.1:{port}", "--id", f"minion{i}",
                                      "--http-listen", f"127.0.0.1:{free_port()}"], port,
                       dict(self.env, **as_("minion"), **(minion_env or {})))
        self.env["R2O_CONTROLLER"] = f"{scheme}://127.0.0.1:{self.controller_port}"
        # the CLI registers segments and reads the table as the admin
        self.env.update(as_("admin"))

    def spawn(self, name, args, port, env=None):
        # BENCH_WRAP_<NAME> (CONTROLLER, MINION0, ...): a command that process
        # runs under, for profiling (e.g. "heaptrack -o /tmp/controller"); the
        # figures of such a run say nothing about speed
        wrap = os.environ.get(f"BENCH_WRAP_{name.upper()}", "").split()
        self.procs[name] = subprocess.Popen(wrap + [R2O] + args, env=env or self.env, stdout=subprocess.DEVNULL,
                                            stderr=open(os.path.join(self.work, f"{name}.log"), "w"))
        wait_port(port)

    def cli(self, *args):
        out = subprocess.run([R2O] + list(args), env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"r2o {' '.join(args)}: {out.stderr}")
        return out.stdout

    def rss(self):
        return {name: vm_hwm_mb(p.pid) for name, p in self.procs.items()}

    def cpu(self):
        return {name: cpu_s(p.pid) for name, p in self.procs.items()}

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def parse_period(text):
    """Pinot-style period (`1d`, `6h`, `20000d`) in ms."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    for u in sorted(units, key=len, reverse=True):
        if text.endswith(u):
            return int(text[: -len(u)]) * units[u]
    raise ValueError(f"bucket '{text}': expected a period such as 1d or 20000d")


def final_watermark(seg_dir, bucket_ms=86_400_000):
    with open(os.path.join(seg_dir, "segments.json")) as f:
        segs = json.load(f)["segments"]
    end = max(s["endTs"] for s in segs)
    return (end // bucket_ms + 1) * bucket_ms, sum(s["numRows"] for s in segs)


# The sketch columns of `--merges rollup-sketch`: each REALTIME row holds one
# flight's sketches, as Pinot's realtime servers store them, rolled up with
# Pinot's value aggregators (the bench's plain rollup plus these).
SKETCH_AGGREGATIONS = {
    "tails_hll": "distinctCountHLL",
    "tails_theta": "distinctCountThetaSketch",
    "tails_cpc": "distinctCountCPCSketch",
    "delay_kll": "percentileKLL",
    "dist_avg": "avg",
}


def sketch_segments(seg_dir):
    """The segments of `seg_dir` with the sketch columns added (cached in
    `<seg_dir>-sketch`): per distinct tail number an HLL (stream-lib, log2m
    8), a Theta and a CPC (lgK 12) sketch; per distinct dep_delay a KLL
    sketch; per distance an AvgPair; made once per value with
    scripts/sketch_flights.py's functions and the reference library, then
    taken per row."""
    out = seg_dir.rstrip("/") + "-sketch"
    if os.path.exists(os.path.join(out, "segments.json")):
        return out
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import struct

    import datasketches as ds

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import sketch_flights as sf

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    files = sorted(f for f in os.listdir(seg_dir) if f.endswith(".parquet"))

    def hll(tail):
        regs = [0] * (1 << sf.LOG2M)
        sf.hll_offer(regs, tail)
        return sf.hll_bytes(regs)

    def theta(tail):
        t = ds.update_theta_sketch()
        t.update(tail)
        return t.compact().serialize()

    def cpc(tail):
        c = ds.cpc_sketch(12)
        c.update(tail)
        return c.serialize()

    def kll(delay):
        k = ds.kll_doubles_sketch(200)
        k.update(delay)
        return k.serialize()

    cache = {}
    for name in files:
        t = pq.read_table(os.path.join(seg_dir, name))
        cols = {}
        for col, src, make in [("tails_hll", "tailnum", hll), ("tails_theta", "tailnum", theta),
                               ("tails_cpc", "tailnum", cpc), ("delay_kll", "dep_delay", kll),
                               ("dist_avg", "distance", lambda d: struct.pack(">dq", float(d), 1))]:
            values = t.column(src)
            uniq = pc.unique(values).drop_null()
            known = cache.setdefault(col, {})
            for v in uniq.to_pylist():
                if v not in known:
                    known[v] = make(v)
            keys = pa.array(list(known.keys()), type=values.type)
            table = pa.array(list(known.values()), type=pa.binary())
            cols[col] = table.take(pc.index_in(values, value_set=keys))
        for col, arr in cols.items():
            t = t.append_column(col, arr)
        pq.write_table(t, os.path.join(tmp, name), compression="zstd", row_group_size=65536)
    shutil.copy(os.path.join(seg_dir, "segments.json"), os.path.join(tmp, "segments.json"))
    os.rename(tmp, out)
    return out


def table_schema(merge, bench_dir, work):
    """The bench's schema, with the sketch metrics for `rollup-sketch`."""
    path = os.path.join(bench_dir, "schema.json")
    if merge != "rollup-sketch":
        return path
    with open(path) as f:
        schema = json.load(f)
    schema["metricFieldSpecs"] += [{"name": c, "dataType": "BYTES"} for c in SKETCH_AGGREGATIONS]
    path = os.path.join(work, "schema-sketch.json")
    with open(path, "w") as f:
        json.dump(schema, f)
    return path


def table_config(merge, bench_dir, work, bucket):
    """The bench's table config for `merge`, with `bucket` as bucketTimePeriod
    (`rollup-sketch`: the rollup's, plus the sketch columns' aggregations)."""
    with open(os.path.join(bench_dir, f"table-{merge.removesuffix('-sketch')}.json")) as f:
        config = json.load(f)
    task = config["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]
    if merge == "rollup-sketch":
        task.update({f"{c}.aggregationType": a for c, a in SKETCH_AGGREGATIONS.items()})
    config["task"]["taskTypeConfigsMap"]["RealtimeToOfflineSegmentsTask"]["bucketTimePeriod"] = bucket
    path = os.path.join(work, f"table-{merge}-{bucket}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def run_r2o(scale, merge, seg_dir, work, bench_dir, bucket="1d", minion_env=None, insecure=False, label=""):
    tag = f"{scale}-{merge}-{bucket}" + ("-insecure" if insecure else "") + (f"-{label}" if label else "")
    c = Cluster(os.path.join(work, f"r2o-{tag}"), bench_dir, minion_env, insecure)
    try:
        c.cli("table", "add", "--config", table_config(merge, bench_dir, work, bucket),
              "--schema", table_schema(merge, bench_dir, work), "--paused")
        t0 = time.perf_counter()
        c.cli("segment", "add", "--table", "flights", "--dir", seg_dir, "--end-of-stream")
        registration = time.perf_counter() - t0
        final, rows_in = final_watermark(seg_dir, parse_period(bucket))
        cpu0 = c.cpu()
        # BENCH_PERF=FILE: a system-wide `perf record` over the backfill
        # alone (BENCH_PERF_ARGS adds options, e.g. "--call-graph dwarf"),
        # for `perf report --sort pid,sym`; such a run's figures say little
        # about speed
        perf = None
        if os.environ.get("BENCH_PERF"):
            perf = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-q", "-o",
                                     os.environ["BENCH_PERF"] + f".{tag}"]
                                    + os.environ.get("BENCH_PERF_ARGS", "").split(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        t0 = time.perf_counter()
        c.cli("resume", "--table", "flights")
        polls = 0
        while True:
            wm = metric(c.controller_http, 'r2o_table_watermark_ms{table="flights"}')
            if wm is not None and wm >= final:
                break
            if time.perf_counter() - t0 > 3600:
                raise RuntimeError("the backfill did not finish within an hour")
            polls += 1
            if polls % 50 == 0:  # every ~5 s: a flow that cannot move says so in `r2o watermark`
                nxt = json.loads(c.cli("watermark", "--table", "flights", "--output", "json")).get("next", "")
                if "cannot be planned" in nxt:
                    raise RuntimeError(nxt)
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        # the Delta log's lag at the end: from the watermark's last move to the
        # version that holds it (binaries before issue 23 have no log)
        delta_lag = None
        while True:
            w = json.loads(c.cli("watermark", "--table", "flights", "--output", "json"))
            if "deltaHoldsWatermark" not in w:
                break
            if w["deltaHoldsWatermark"]:
                delta_lag = time.perf_counter() - t0 - wall
                break
            if time.perf_counter() - t0 - wall > 120:
                raise RuntimeError("the Delta log did not catch up within 2 minutes")
            time.sleep(0.02)
        rss = c.rss()
        cpu = {k: v - cpu0[k] for k, v in c.cpu().items()}
        print("bench: backfill CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()), file=sys.stderr)
        segs = json.loads(c.cli("segment", "list", "--table", "flights", "--output", "json"))
        if delta_lag is not None:
            print(f"bench: the Delta log held the watermark {delta_lag:.2f} s after it moved (version "
                  f"{w['deltaVersion']})", file=sys.stderr)
            seg_file = os.path.join(c.work, "segments.json")
            with open(seg_file, "w") as f:
                json.dump(segs, f)
            subprocess.run([PY, os.path.join(ROOT, "scripts", "verify_delta.py"), seg_file,
                            os.path.join(c.work, "store"), w["deltaTableUrl"]], check=True)
        out = os.path.join(work, f"out-r2o-{tag}")
        os.makedirs(out)
        store = os.path.join(c.work, "store")
        for s in segs:
            if s["tableName"].endswith("_OFFLINE"):
                os.symlink(os.path.join(store, s["location"]), os.path.join(out, s["segmentName"] + ".parquet"))
        return {"tool": f"r2o {label}" if label else "r2o", "scale": scale, "merge": merge, "seconds": wall, "rows_in": rows_in,
                "windows": w["windowsCommitted"], "rss_mb": rss, "out": out, "registration_s": registration}
    finally:
        c.stop()


def run_measured(tool, cmd):
    """Runs `cmd` in a wrapper process, so the peak RSS is this run's alone;
    returns its `RESULT {...}` line as a dict and its peak RSS in MB."""
    wrapper = ("import resource,subprocess,sys;r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "sys.stdout.write(r.stdout);sys.stderr.write(r.stderr);"
               "print('RSS',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(r.returncode)")
    r = subprocess.run([PY, "-c", wrapper] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{tool} failed: {r.stderr[-2000:]}")
    res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
    rss = int(next(l for l in r.stdout.splitlines() if l.startswith("RSS ")).split()[1]) / 1024
    return res, rss


def run_peer(tool, scale, merge, seg_dir, work, bench_dir, bucket="1d"):
    out = os.path.join(work, f"out-{tool}-{scale}-{merge}-{bucket}")
    cmd = [PY, os.path.join(bench_dir, "peers.py"), "run", seg_dir, out, "--tool", tool, "--merge", merge,
           "--bucket", bucket]
    res, rss = run_measured(tool, cmd)
    windows = res["windows"] if res["windows"] >= 0 else None
    return {"tool": tool, "scale": scale, "merge": merge, "seconds": res["seconds"], "rows_in": res["rows_in"],
            "windows": windows, "rss_mb": {tool: rss}, "out": out}


def build_floor(bench_dir):
    """Builds ../shared/bench/floor (release, the project's patched zstd, as
    floor/README.md says) into target/floor; returns the binary's path."""
    target = os.path.join(ROOT, "target", "floor")
    zstd = os.path.join(ROOT, "vendor", "zstd")
    subprocess.run(["cargo", "build", "--release", "--manifest-path", os.path.join(bench_dir, "floor", "Cargo.toml"),
                    "--target-dir", target, "--config", f"patch.crates-io.zstd.path='{zstd}'"], check=True)
    return os.path.join(target, "release", "floor")


def run_floor(binary, scale, seg_dir, work, bucket="1d"):
    """The floor on one scale: every segment read and written back as zstd
    Parquet, one file per day, no transform, 2 threads (the machine's cores,
    as r2o's two minions share them). Only a 1-day bucket has a floor."""
    if bucket != "1d":
        return None
    out = os.path.join(work, f"out-floor-{scale}")
    res, rss = run_measured("floor", [binary, seg_dir, out, "--threads", "2", "--mode", "day"])
    shutil.rmtree(out, ignore_errors=True)
    return {"tool": "floor", "scale": scale, "merge": "-", "seconds": res["seconds"], "rows_in": res["rows"],
            "windows": res["files_out"], "rss_mb": {"floor": rss}, "out": None}


def sorted_files(d):
    """Every file of `d` sorted by (carrier, ts): (files, files not sorted)."""
    import pyarrow.parquet as pq
    nf = bad = 0
    for root, _, fs in os.walk(d):
        for f in fs:
            if f.endswith(".parquet"):
                nf += 1
                t = pq.read_table(os.path.join(root, f), columns=["carrier", "ts"])
                keys = list(zip(t.column("carrier").to_pylist(), t.column("ts").to_pylist()))
                bad += keys != sorted(keys)
    return nf, bad


def verify(a, b, bench_dir, one_window=False):
    """`a` holds what `b` holds (rows, sums, distinct keys, files), and every
    file of `a` is sorted by (carrier, ts) within one day (the one-pass peers
    do not sort within files, so only `a` is checked for that). One window
    (`one_window`) spans every day, and r2o's sub-tasks cut their own files:
    there the file count may differ and files are checked for order only."""
    peers = os.path.join(bench_dir, "peers.py")
    same = subprocess.run([PY, peers, "verify", a, b], capture_output=True, text=True)
    if not one_window:
        own = subprocess.run([PY, peers, "verify", a, a, "--check-sorted"], capture_output=True, text=True)
        return same.returncode == 0 and own.returncode == 0, same.stdout + own.stdout
    diffs = [l for l in same.stdout.splitlines() if l.rstrip().endswith("DIFF")]
    nf, bad = sorted_files(a)
    text = same.stdout + f"  sorted(carrier,ts): {a}: {nf - bad}/{nf} files ok\n"
    return all(l.split()[0] == "files" for l in diffs) and bad == 0, text


def run_idle(tables, seg_dir, work, bench_dir, idle_s):
    """Issue 21's idle cost: `tables` small rollup tables (the flights config
    under N names, 2 x1 segments each) on one cluster (TLS, as everywhere),
    each caught up; then the CPU controller and etcd burn over `idle_s`
    seconds while nothing happens (../shared/bench/many_tables.py's
    measurement, on the secured cluster)."""
    c = Cluster(os.path.join(work, f"idle-{tables}"), bench_dir)
    try:
        with open(os.path.join(seg_dir, "segments.json")) as f:
            man = json.load(f)["segments"][:8]
        with open(os.path.join(bench_dir, "schema.json")) as f:
            schema = json.load(f)
        with open(os.path.join(bench_dir, "table-rollup.json")) as f:
            table = json.load(f)
        t0 = time.perf_counter()
        for i in range(tables):
            n = f"t{i:04d}"
            sc = dict(schema, schemaName=n)
            cf = json.loads(json.dumps(table))
            cf["tableName"] = f"{n}_REALTIME"
            cf.setdefault("segmentsConfig", {})["schemaName"] = n
            for name, doc in (("s.json", sc), ("c.json", cf)):
                with open(os.path.join(c.work, name), "w") as f:
                    json.dump(doc, f)
            c.cli("table", "add", "--config", os.path.join(c.work, "c.json"), "--schema", os.path.join(c.work, "s.json"))
            m = {"segments": [dict(x, file=os.path.join(seg_dir, x["file"]),
                                   segmentName=x["segmentName"].replace("flights", n)) for x in man]}
            with open(os.path.join(c.work, "m.json"), "w") as f:
                json.dump(m, f)
            c.cli("segment", "add", "--table", n, "--manifest", os.path.join(c.work, "m.json"), "--end-of-stream")
        add_s = time.perf_counter() - t0
        for i in range(tables):
            c.cli("wait", "--table", f"t{i:04d}", "--timeout-secs", "600")
        catch_s = time.perf_counter() - t0 - add_s
        time.sleep(5)  # the last commits' follow-up passes
        cpu0 = c.cpu()
        time.sleep(idle_s)
        cpu1 = c.cpu()
        pct = {k: 100 * (cpu1[k] - cpu0[k]) / idle_s for k in ("controller", "etcd")}
        return {"tables": tables, "add_s": add_s, "catch_up_s": catch_s, "idle_s": idle_s,
                "controller_pct": pct["controller"], "etcd_pct": pct["etcd"], "rss_mb": c.rss()}
    finally:
        c.stop()


def run_freshness(samples, work, bench_dir, extra_tables=0, seg_dir=None, history=0):
    """Issue 21's freshness: with bufferTimePeriod 0, the time from
    registering a DONE segment that completes a 1-hour window to that
    window's commit (polling `r2o watermark --table fr`: one table's records,
    whatever the number of tables; /metrics reads every table), p50 and p99,
    beside `extra_tables` idle tables (../shared/bench/freshness.py's
    measurement, on the secured cluster), on a table that already holds
    `history` committed segments (20 to an hour before the samples'), with
    the controller's CPU per sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    # the commits' log lines carry the controller's own measurement (freshness_ms)
    c = Cluster(os.path.join(work, f"fresh-{extra_tables}-{history}"), bench_dir,
                log="warn,r2o_controller::authority=info")
    try:
        if extra_tables:
            with open(os.path.join(bench_dir, "schema.json")) as f:
                schema = json.load(f)
            with open(os.path.join(bench_dir, "table-rollup.json")) as f:
                table = json.load(f)
            for i in range(extra_tables):
                n = f"t{i:04d}"
                cf = json.loads(json.dumps(table))
                cf["tableName"] = f"{n}_REALTIME"
                cf.setdefault("segmentsConfig", {})["schemaName"] = n
                for name, doc in (("s.json", dict(schema, schemaName=n)), ("c.json", cf)):
                    with open(os.path.join(c.work, name), "w") as f:
                        json.dump(doc, f)
                c.cli("table", "add", "--config", os.path.join(c.work, "c.json"),
                      "--schema", os.path.join(c.work, "s.json"))
        segs = os.path.join(c.work, "segs")
        os.makedirs(segs)
        sc = {"schemaName": "fr", "dimensionFieldSpecs": [{"name": "k", "dataType": "STRING"}],
              "metricFieldSpecs": [{"name": "v", "dataType": "LONG"}],
              "dateTimeFieldSpecs": [{"name": "ts", "dataType": "LONG", "format": "1:MILLISECONDS:EPOCH",
                                      "granularity": "1:MILLISECONDS"}]}
        cf = {"tableName": "fr_REALTIME", "tableType": "REALTIME",
              "segmentsConfig": {"schemaName": "fr", "timeColumnName": "ts", "replication": "1"},
              "task": {"taskTypeConfigsMap": {"RealtimeToOfflineSegmentsTask": {
                  "bucketTimePeriod": "1h", "bufferTimePeriod": "0d", "mergeType": "rollup"}}}}
        for name, doc in (("fs.json", sc), ("ft.json", cf)):
            with open(os.path.join(c.work, name), "w") as f:
                json.dump(doc, f)
        c.cli("table", "add", "--config", os.path.join(c.work, "ft.json"), "--schema", os.path.join(c.work, "fs.json"))
        h0 = 1_600_000_000_000 - 1_600_000_000_000 % 3_600_000
        if history:
            hist = os.path.join(c.work, "hist")
            os.makedirs(hist)
            for i in range(history):
                ws = h0 - (history // 20 - i // 20) * 3_600_000
                pq.write_table(pa.table({"ts": [ws + (i % 20) * 60_000 + j for j in range(10)], "k": ["h"] * 10,
                                         "v": list(range(10))}), os.path.join(hist, f"hist_{i:06d}.parquet"))
            c.cli("segment", "add", "--table", "fr", "--dir", hist)
            t0 = time.perf_counter()
            while json.loads(c.cli("watermark", "--table", "fr", "--output", "json")).get("watermarkMs", 0) < h0:
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("the history did not commit in 10 min")
                time.sleep(0.5)
        lat = []
        cpu0 = None
        for i in range(samples + 1):
            ws = h0 + i * 3_600_000
            f = os.path.join(segs, f"seg_{i:04d}.parquet")
            pq.write_table(pa.table({"ts": [ws + j * 60_000 for j in range(60)], "k": ["a"] * 60,
                                     "v": list(range(60))}), f)
            t0 = time.perf_counter()
            c.cli("segment", "add", "--table", "fr", "--file", f, "--name", f"seg_{i:04d}", "--status", "DONE")
            while True:
                w = json.loads(c.cli("watermark", "--table", "fr", "--output", "json"))
                if w.get("exists") and w.get("watermarkMs", 0) >= ws + 3_600_000:
                    break
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"sample {i}: window not committed in 30 s")
            if i:  # the first sample includes the cold start
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                cpu0 = c.cpu()
        cpu1 = c.cpu()
        ctl_ms, etcd_ms = ((cpu1[k] - cpu0[k]) * 1000 / max(1, len(lat)) for k in ("controller", "etcd"))
        # the controller's own measurement of each sample window: the
        # freshness_ms of its "windows committed" line (registration as DONE
        # to commit, the controller's clock; no CLI process, no polling)
        wanted = {h0 + i * 3_600_000 for i in range(1, samples + 1)}
        own = []
        with open(os.path.join(c.work, "controller.log"), errors="replace") as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                if "windows committed" not in line or "table=fr " not in line:
                    continue
                ws = re.search(r"window_start_ms=(-?\d+)", line)
                fm = re.search(r"freshness_ms=(\d+)", line)
                if ws and fm and int(ws.group(1)) in wanted:
                    own.append(int(fm.group(1)))
        lat.sort()
        own.sort()
        q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")
        return {"tables": extra_tables + 1, "samples": len(lat), "p50_ms": q(lat, 0.5), "p99_ms": q(lat, 0.99),
                "max_ms": lat[-1], "controller_cpu_ms": ctl_ms, "etcd_cpu_ms": etcd_ms,
                "own_p50_ms": q(own, 0.5), "own_p99_ms": q(own, 0.99), "own_samples": len(own)}
    finally:
        c.stop()


def main():
    global R2O  # --bins runs each binary in turn
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="x1,x30")
    ap.add_argument("--merges", default="concat,rollup,dedup")
    ap.add_argument("--peers", default="duckdb,polars,duckdb-1q,polars-1p")
    ap.add_argument("--bench-dir", default=os.path.join(ROOT, "..", "shared", "bench"))
    ap.add_argument("--work", default=os.path.join(ROOT, ".r2o", "bench"))
    ap.add_argument("--bucket", default="1d", help="bucketTimePeriod of the table and the peers")
    ap.add_argument("--bins", default=None,
                    help="A/B in one sitting: NAME=PATH,NAME=PATH,... r2o binaries run in turn for each mergeType "
                         "(--repeat rounds), before the floor and the peers; no files are deleted between runs")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of --bins")
    ap.add_argument("--floor", action="store_true",
                    help="also run ../shared/bench/floor (read and write the same files, no transform) on each "
                         "scale, and give r2o's time as a multiple of it")
    ap.add_argument("--one-window", action="store_true",
                    help="the huge-window benchmark: x30 (or --scales) in one 20000d window, next to "
                         "DuckDB and Polars doing that window in one query; the minions run on their "
                         "default settings unless --memory-budget is given")
    ap.add_argument("--also-insecure", action="store_true",
                    help="also run r2o in plain text (--insecure) in the same sitting, to measure what TLS costs")
    ap.add_argument("--memory-budget", default=None,
                    help="R2O_MEMORY_BUDGET of the minions (default: theirs; 256MB with --one-window)")
    ap.add_argument("--idle-tables", default=None,
                    help="instead of the backfill: the idle cost of N caught-up tables (comma list, e.g. 300,1000)")
    ap.add_argument("--idle-s", type=int, default=60, help="seconds the idle cost is measured over")
    ap.add_argument("--freshness", default=None,
                    help="instead of the backfill: DONE segment to committed window latency beside N-1 idle "
                         "tables (comma list of table counts, e.g. 1,1000)")
    ap.add_argument("--samples", type=int, default=40, help="freshness samples")
    ap.add_argument("--history", type=int, default=0,
                    help="freshness: segments the table holds (committed) before the samples, e.g. 40000")
    args = ap.parse_args()
    if args.idle_tables or args.freshness:
        bench_dir = os.path.abspath(args.bench_dir)
        subprocess.run([os.path.join(ROOT, "scripts", "setup.sh"), "--bench"], check=True)
        if not os.environ.get("BENCH_R2O_BIN"):
            subprocess.run(["cargo", "build", "--release", "--bin", "r2o"], cwd=ROOT, check=True)
        work = os.path.join(args.work, "runs", f"small-{time.time_ns()}")
        os.makedirs(work)
        seg_dir = os.path.join(args.work, "x1")
        if not os.path.exists(os.path.join(seg_dir, "segments.json")):
            subprocess.run([PY, os.path.join(bench_dir, "gen_flights.py"), seg_dir, "--scale", "1"], check=True)
        for n in [int(x) for x in (args.idle_tables or "").split(",") if x]:
            r = run_idle(n, seg_dir, work, bench_dir, args.idle_s)
            print(f"| idle | {n} tables | controller {r['controller_pct']:.1f}% + etcd {r['etcd_pct']:.1f}% of a core "
                  f"over {r['idle_s']} s | RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mb"].items())
                  + f" | add {r['add_s']:.0f} s, catch-up {r['catch_up_s']:.0f} s |", flush=True)
        for n in [int(x) for x in (args.freshness or "").split(",") if x]:
            r = run_freshness(args.samples, work, bench_dir, n - 1, seg_dir, args.history)
            print(f"| freshness | {n} tables, {args.history} segments before | p50 {r['p50_ms']:.0f} ms, "
                  f"p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms over {r['samples']} samples | "
                  f"CPU a sample: controller {r['controller_cpu_ms']:.0f} ms, etcd {r['etcd_cpu_ms']:.0f} ms | "
                  f"the controller's own (r2o_window_freshness_seconds): p50 {r['own_p50_ms']:.0f} ms, "
                  f"p99 {r['own_p99_ms']:.0f} ms over {r['own_samples']} commits |", flush=True)
        return
    minion_env = {}
    if args.one_window:
        if args.scales == ap.get_default("scales"):
            args.scales = "x30"
        args.bucket = "20000d"
        if args.peers == ap.get_default("peers"):
            args.peers = "duckdb,polars"
        if args.memory_budget:
            minion_env = {"R2O_MEMORY_BUDGET": args.memory_budget}
    elif args.memory_budget:
        minion_env = {"R2O_MEMORY_BUDGET": args.memory_budget}
    parse_period(args.bucket)
    bench_dir = os.path.abspath(args.bench_dir)
    subprocess.run([os.path.join(ROOT, "scripts", "setup.sh"), "--bench"], check=True)
    # (label, binary): one unlabelled run of R2O unless --bins names several
    bins = [(label, path) for label, _, path in (b.partition("=") for b in (args.bins or "").split(",") if b)]
    if any(not label or not path for label, path in bins):
        raise SystemExit(f"--bins '{args.bins}': expected NAME=PATH,NAME=PATH,... (r2o binaries)")
    if not os.environ.get("BENCH_R2O_BIN") and not bins:
        subprocess.run(["cargo", "build", "--release", "--bin", "r2o"], cwd=ROOT, check=True)
    bins = bins or [("", None)]
    floor_bin = build_floor(bench_dir) if args.floor else None
    # this sitting's runs; the last sitting's are set aside and deleted at the end
    runs = os.path.join(args.work, "runs")
    os.makedirs(args.work, exist_ok=True)  # a fresh checkout has none yet
    if os.path.exists(runs):
        os.rename(runs, os.path.join(args.work, f"old-runs-{time.time_ns()}"))
    old = [os.path.join(args.work, d) for d in os.listdir(args.work) if d.startswith(("old-runs-", "r2o-", "out-"))]
    os.makedirs(runs)
    rows, failures = [], []
    for scale in args.scales.split(","):
        seg_dir = os.path.join(args.work, scale)
        if not os.path.exists(os.path.join(seg_dir, "segments.json")):
            n = scale.lstrip("x")
            print(f"bench: generating {scale} into {seg_dir}", file=sys.stderr)
            subprocess.run([PY, os.path.join(bench_dir, "gen_flights.py"), seg_dir, "--scale", n], check=True)
        for merge in args.merges.split(","):
            print(f"bench: r2o {scale} {merge}", file=sys.stderr)
            segs = seg_dir
            if merge == "rollup-sketch":
                print(f"bench: adding the sketch columns to {scale}", file=sys.stderr)
                segs = sketch_segments(seg_dir)
            results = []
            for label, path in bins * args.repeat:
                R2O = path or R2O
                try:
                    results.append(run_r2o(scale, merge, segs, runs, bench_dir, args.bucket, minion_env,
                                           label=f"{label}-{len(results)}" if label else ""))
                    print(f"bench: {results[-1]['tool']} {scale} {merge}: {results[-1]['seconds']:.2f} s",
                          file=sys.stderr)
                except RuntimeError as e:
                    print(f"bench: r2o {label} {scale} {merge} failed: {e}", file=sys.stderr)
                    failures.append(f"r2o {label} {scale} {merge}: {e}")
            r = results[0] if results else None
            plain = None
            if args.also_insecure:
                print(f"bench: r2o {scale} {merge} --insecure", file=sys.stderr)
                plain = run_r2o(scale, merge, seg_dir, runs, bench_dir, args.bucket, minion_env, insecure=True)
                plain["tool"] = "r2o --insecure"
            floor = None
            if args.floor:
                print(f"bench: floor {scale}", file=sys.stderr)
                floor = run_floor(floor_bin, scale, seg_dir, runs, args.bucket)
            peers = []
            # no peer merges sketches: the sketch rollup stands beside r2o's plain rollup
            for tool in [t for t in args.peers.split(",") if t and merge != "rollup-sketch"]:
                print(f"bench: {tool} {scale} {merge}", file=sys.stderr)
                peers.append(run_peer(tool, scale, merge, seg_dir, runs, bench_dir, args.bucket))
            if r is None:
                rows.extend(peers)
                continue
            for r in results:
                if peers:
                    ok, text = verify(r["out"], peers[0]["out"], bench_dir, args.one_window)
                    if not ok:
                        print(text, file=sys.stderr)
                        raise SystemExit(f"{r['tool']}'s OFFLINE output differs from {peers[0]['tool']}'s "
                                         f"({scale} {merge})")
                    r["verified"] = peers[0]["tool"]
                if floor:
                    r["floor_x"] = r["seconds"] / floor["seconds"]
            best = min((p["seconds"] for p in peers), default=None)
            mine = results + ([plain] if plain else [])
            for x in mine + peers + ([floor] if floor else []):
                is_r2o = any(x is y for y in mine)
                x["ratio"] = (best / x["seconds"]) if (best and is_r2o) else None
                rows.append(x)
                # as it comes, so a sitting cut short keeps what it measured
                # (each r2o run printed its own as it ended)
                if x is plain or not is_r2o:
                    print(f"bench: {x['tool']} {scale} {merge}: {x['seconds']:.2f} s", file=sys.stderr)
    print()
    print("| tool | scale | mergeType | wall s | rows/s | windows/s | peak RSS MB | vs best peer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for x in rows:
        rss = ", ".join(f"{k} {v:.0f}" for k, v in x["rss_mb"].items())
        wps = f"{x['windows'] / x['seconds']:,.0f}" if x.get("windows") else "-"
        vs = f"{x['ratio']:.2f}x faster" if x.get("ratio") and x["ratio"] >= 1 else (
            f"{1 / x['ratio']:.2f}x slower" if x.get("ratio") else "")
        notes = ([f"verified against {x['verified']}"] if x.get("verified") else []) + (
            [f"{x['floor_x']:.2f}x the floor"] if x.get("floor_x") else []) + (
            [f"registration {x['registration_s']:.1f} s"] if x.get("registration_s") else [])
        extra = f" ({'; '.join(notes)})" if notes else ""
        scale = x["scale"] if args.bucket == "1d" else f"{x['scale']}, {args.bucket} windows"
        print(f"| {x['tool']} | {scale} | {x['merge']} | {x['seconds']:.2f} | {x['rows_in'] / x['seconds']:,.0f} "
              f"| {wps} | {rss} | {vs}{extra} |")
    for f in failures:
        print(f"\nr2o failed: {f}")
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
