#!/usr/bin/env bash
# Edge redirects/s with `wrk -t1 -c64` against `touchline edge` (every click delivered to
# Tansu with memory storage) side by side with nginx `return 302` with one worker, in one
# run; then p99 latency with the open-loop load generator at half the edge's peak rate.
# Needs Redis (scripts/stack.sh up), wrk, nginx and a release build.
#   scripts/bench-edge.sh [seconds per run]   (BIN=path/to/touchline for another build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-15}
BIN=${BIN:-target/release/touchline}
WORK=$(mktemp -d)
KPORT=9192; EPORT=8180; NPORT=8181
UA="Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
# Waits for every process it started to exit, so that a run right after this one finds
# its ports free.
cleanup() { kill "${EDGE:-}" "${TANSU:-}" 2>/dev/null || true; [[ -f "$WORK/nginx.pid" ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
# Waits up to 10 s for something to listen on 127.0.0.1:$1.
listening() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }
trap cleanup EXIT

tansu broker --storage-engine memory://tansu/ --listener-url "tcp://127.0.0.1:$KPORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KPORT" >"$WORK/tansu.log" 2>&1 &
TANSU=$!
listening "$KPORT"
export TOUCHLINE__KAFKA__BROKERS=127.0.0.1:$KPORT TOUCHLINE__KAFKA__PARTITIONS=4 \
  TOUCHLINE__REDIS__PREFIX=bench$$ TOUCHLINE__EDGE__LISTEN=127.0.0.1:$EPORT \
  TOUCHLINE__EDGE__PUBLIC_URL=http://127.0.0.1:$EPORT TOUCHLINE__LOG__LEVEL=warn \
  TOUCHLINE__SINK__KIND=file TOUCHLINE__SINK__DATA_DIR=$WORK/data
$BIN migrate --config config/local.toml >/dev/null
$BIN edge --config config/local.toml &
EDGE=$!
listening "$EPORT"
$BIN loadgen --target "http://127.0.0.1:$EPORT" --rate 1 --duration 1 \
  --setup-admin-token touchline-dev-admin-token >/dev/null

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NPORT;
    location / { return 302 https://shop.example/landing?lang=en; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf"

run() { wrk -t1 -c64 -d"${SECS}s" -H "User-Agent: $UA" "$1" | tee -a "$WORK/wrk.log"; }
for round in 1 2; do
  echo "== round $round: nginx return 302 (1 worker)"; run "http://127.0.0.1:$NPORT/r/loadgen"
  echo "== round $round: touchline edge";             run "http://127.0.0.1:$EPORT/r/loadgen"
done

sleep 3  # let the producer drain
metric() { curl -s "http://127.0.0.1:$EPORT/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {printf "%d", s}'; }
ANSWERED=$(metric touchline_edge_clicks_total)
DELIVERED=$(metric touchline_edge_clicks_delivered_total)
OVERFLOW=$(metric touchline_edge_click_buffer_overflow_total)
ERRORS=$(metric touchline_edge_click_delivery_errors_total)
echo "== clicks answered $ANSWERED, acknowledged by the broker $DELIVERED, overflow $OVERFLOW, delivery errors $ERRORS"

PEAK=$(grep "Requests/sec" "$WORK/wrk.log" | sed -n '2p;4p' | awk '{s+=$2} END {printf "%d", s/NR}')
HALF=$((PEAK / 2))
echo "== open-loop latency at half the edge's peak ($HALF/s)"
$BIN loadgen --target "http://127.0.0.1:$EPORT" --rate "$HALF" --duration "$SECS" --max-in-flight 512
