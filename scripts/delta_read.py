"""Reads an r2o OFFLINE table through its Delta Lake log with Python's
`deltalake` (delta-rs), as an analyst would, and prints what it sees as one
JSON object: the version read, its rows (every column, sorted), its files,
every version's `txn` actions read from the log's own JSON commits, the
table's configuration (its properties), and each file's statistics as
deltalake parses them, checked against the file's own rows: `stats_columns`
(the columns every file has a min/max for) and `stats_problems` (each file
whose row count or a column's min/max is not the one its rows give).

    .venv/bin/python scripts/delta_read.py <table url> [version]

The table URL is what `r2o table export-delta` prints (a file:// store).
Used by tests/delta.rs as a reader independent of r2o.
"""
import json
import os
import sys
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable


def check_stats(dt, root):
    """Each add action's statistics (as deltalake parses them) against the
    rows of its file: (columns with statistics in every file, problems)."""
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    problems, columns = [], None
    for a in actions:
        path = a["path"]
        # only the columns with statistics are read (the row count comes with them)
        stats = [k[4:] for k, v in a.items() if k.startswith("min.") and v is not None]
        data = pq.read_table(os.path.join(root, path), columns=stats)
        if not stats:
            data = pq.read_metadata(os.path.join(root, path))
        if a.get("num_records") != data.num_rows:
            problems.append(f"{path}: numRecords {a.get('num_records')}, {data.num_rows} rows")
        have = set()
        for key, value in a.items():
            if not key.startswith("min.") or value is None:
                continue
            col = key[4:]
            have.add(col)
            got = pc.min_max(data[col]).as_py()
            if (value, a.get("max." + col)) != (got["min"], got["max"]):
                problems.append(f"{path}: {col} stats {value}..{a.get('max.' + col)}, rows {got['min']}..{got['max']}")
        columns = have if columns is None else columns & have
    return sorted(columns or []), problems


def main():
    url = sys.argv[1]
    version = int(sys.argv[2]) if len(sys.argv) > 2 else None
    dt = DeltaTable(url, version=version)
    table = dt.to_pyarrow_table()
    names = table.column_names
    rows = sorted(json.dumps([r[c] for c in names], default=str) for r in table.to_pylist())
    log = os.path.join(urlparse(url).path, "_delta_log")
    txns = {}
    for name in sorted(os.listdir(log)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(log, name)) as f:
            for line in f:
                action = json.loads(line)
                if "txn" in action:
                    txns[str(int(name[:-5]))] = [action["txn"]["appId"], action["txn"]["version"]]
    stats_columns, stats_problems = check_stats(dt, urlparse(url).path)
    print(json.dumps({
        "version": dt.version(),
        "columns": names,
        "rows": [json.loads(r) for r in rows],
        "files": sorted(dt.file_uris()),
        "txns": txns,
        "configuration": dt.metadata().configuration,
        "stats_columns": stats_columns,
        "stats_problems": stats_problems,
    }))


if __name__ == "__main__":
    main()
    # deltalake 1.6 with pyarrow 26 sometimes aborts in its threads' teardown
    # at interpreter exit ("terminate called without an active exception"),
    # after the work is done: leave without running finalizers
    sys.stdout.flush()
    os._exit(0)
