#!/usr/bin/env bash
# The test command: installs what the tests need (etcd, protoc, promtool,
# headless Chromium), then runs
# every test of the workspace (all of them, even after a failure): unit and property tests, the etcd
# conformance suite, and the tests against real etcd, controller and minion
# processes (end to end, poisoned input, timeouts, faults, drain, metrics,
# flow management). Ends with one summary line: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -f target/faults-summary.txt
set +e
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
[ -f target/faults-summary.txt ] && cat target/faults-summary.txt
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
