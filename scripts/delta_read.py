"""Reads an r2o OFFLINE table through its Delta Lake log with Python's
`deltalake` (delta-rs), as an analyst would, and prints what it sees as one
JSON object: the version read, its rows (every column, sorted), its files,
every version's `txn` actions read from the log's own JSON commits, and the
table's configuration (its properties).

    .venv/bin/python scripts/delta_read.py <table url> [version]

The table URL is what `r2o table export-delta` prints (a file:// store).
Used by tests/delta.rs as a reader independent of r2o.
"""
import json
import os
import sys
from urllib.parse import urlparse

from deltalake import DeltaTable


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
    print(json.dumps({
        "version": dt.version(),
        "columns": names,
        "rows": [json.loads(r) for r in rows],
        "files": sorted(dt.file_uris()),
        "txns": txns,
        "configuration": dt.metadata().configuration,
    }))


if __name__ == "__main__":
    main()
    # deltalake 1.6 with pyarrow 26 sometimes aborts in its threads' teardown
    # at interpreter exit ("terminate called without an active exception"),
    # after the work is done: leave without running finalizers
    sys.stdout.flush()
    os._exit(0)
