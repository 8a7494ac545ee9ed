"""Checks the OFFLINE table's Delta Lake log (written by the leader, brought up to date by `r2o table
export-delta`) against r2o's own list of committed files: Python's
deltalake must see exactly those files and their rows, nothing else, and
each file's statistics (row count, min/max) must be those of its rows.

    verify_delta.py segments.json store_dir table_url

segments.json: `r2o segment list --output json`; store_dir: the local store.
"""
import json
import os
import sys

from urllib.parse import urlparse

from deltalake import DeltaTable

from delta_read import check_stats


def main():
    segments_path, store, url = sys.argv[1:4]
    offline = [s for s in json.load(open(segments_path)) if s["tableName"].endswith("_OFFLINE")]
    want_files = sorted(os.path.normpath(f"{store}/{s['location']}") for s in offline)
    want_rows = sum(int(s["totalDocs"]) for s in offline)
    dt = DeltaTable(url)
    files = sorted(os.path.normpath(u.removeprefix("file://")) for u in dt.file_uris())
    rows = dt.to_pyarrow_table().num_rows
    if files != want_files:
        missing = sorted(set(want_files) - set(files))[:5]
        extra = sorted(set(files) - set(want_files))[:5]
        sys.exit(f"verify-delta: FAILED: the Delta table's files are not the committed ones "
                 f"(missing {missing}, extra {extra})")
    if rows != want_rows:
        sys.exit(f"verify-delta: FAILED: {rows} rows through Delta, {want_rows} committed")
    columns, problems = check_stats(dt, urlparse(url).path)
    if problems:
        sys.exit(f"verify-delta: FAILED: {len(problems)} file statistics are not their rows' ({problems[:5]})")
    print(f"verify-delta: OK, Delta version {dt.version()} holds the {len(files)} committed files, {rows} rows; "
          f"each file's statistics match its rows (min/max of {', '.join(columns)})")


if __name__ == "__main__":
    main()
    # deltalake 1.6 with pyarrow 26 may abort in its teardown at exit, after the work
    sys.stdout.flush()
    os._exit(0)
