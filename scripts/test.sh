#!/usr/bin/env bash
# The test command: installs what the tests need (etcd, protoc), then runs
# every test of the workspace: unit and property tests, the etcd
# conformance suite, the CLI tests and the end-to-end test against real
# etcd, controller and minion processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets
cargo test --workspace --doc
