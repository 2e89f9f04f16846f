#!/usr/bin/env bash
# Instructions per request of the gateway's hot path, under callgrind: the bench/compare.sh
# gateway (API key, token client, policy rule, quota, JSON access log at info to a file) in
# front of the same nginx upstream, warmed up, counters zeroed, then exactly --requests GETs over
# --connections keep-alive connections. Prints instructions per request and the functions with
# the most inclusive instructions; the callgrind file stays for callgrind_annotate/kcachegrind.
# Instruction counts do not depend on the machine's load, so they compare builds on a busy
# machine where req/s cannot. The profiled process is pinned to one core (PROXY_CPU, default 1)
# as bench/compare.sh pins the proxies, so the gateway runs the one-core runtime it runs there.
#
# --ceiling pooled|per-connection profiles the `ceiling` example (bench/ceiling.rs: hyper alone,
# setting Authorization and forwarding) under the same load instead, for the instructions the
# gateway's own path adds. --nginx profiles nginx as bench/compare.sh runs it (one worker,
# injecting the key, keep-alive pool, JSON access log), for the instructions of the reference.
#
# Usage: bench/profile.sh [--requests 20000] [--connections 16] [--ceiling pooled|per-connection | --nginx]
#                         [--binary target/release/awork-gateway, or with --ceiling target/release/examples/ceiling]
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REQUESTS=20000
CONNECTIONS=16
BINARY=
CEILING=
PROXY_CPU=${PROXY_CPU:-1}
while (($#)); do
    case $1 in
    --requests) REQUESTS=$2 && shift 2 ;;
    --connections) CONNECTIONS=$2 && shift 2 ;;
    --binary) BINARY=$2 && shift 2 ;;
    --ceiling) CEILING=$2 && shift 2 ;;
    --nginx) CEILING=nginx && shift ;;
    -h | --help) sed -n '2,17p' "$0" && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
command -v valgrind >/dev/null || die "valgrind is not installed"
case $CEILING in
"") BINARY=${BINARY:-target/release/awork-gateway} ;;
pooled | per-connection) BINARY=${BINARY:-target/release/examples/ceiling} ;;
nginx) BINARY=$(command -v nginx) || die "nginx is not installed" ;;
*) die "--ceiling takes pooled or per-connection, not $CEILING" ;;
esac
[[ -x $BINARY ]] || die "$BINARY not found: cargo build --release (--ceiling: cargo build --release --example ceiling)"

RUN_DIR=$(mktemp -d /tmp/awork-profile.XXXXXX)
trap stop_started EXIT
trap 'exit 130' INT TERM

start_upstream "$RUN_DIR" 0-1
PORT=$(free_port)
ADMIN=$(free_port)
if [[ $CEILING == nginx ]]; then
    nginx_proxy_conf "$RUN_DIR" "$UPSTREAM_PORT"
    PORT=$NGINX_PORT
    taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/callgrind.out" "$BINARY" -p "$RUN_DIR/nginx" \
        -c "$RUN_DIR/nginx/nginx.conf" -e "$RUN_DIR/nginx/error.log" -g 'daemon off; master_process off;' \
        2>"$RUN_DIR/valgrind.log" &
elif [[ -n $CEILING ]]; then
    taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/callgrind.out" \
        "$BINARY" "$CEILING" "127.0.0.1:$PORT" "127.0.0.1:$UPSTREAM_PORT" "$BENCH_KEY" 2>"$RUN_DIR/ceiling.log" &
else
    gateway_config "$RUN_DIR" "$PORT" "$ADMIN" "$UPSTREAM_PORT" 1000000 3000000
    BENCH_AWORK_KEY=$BENCH_KEY RUST_LOG=info taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$RUN_DIR/callgrind.out" \
        "$BINARY" --config "$RUN_DIR/gateway.toml" 2>"$RUN_DIR/gateway.log" &
fi
PROFILED_PID=$!
STARTED_PIDS+=("$PROFILED_PID")
for _ in $(seq 1 600); do
    if [[ -n $CEILING ]]; then
        curl -sf -o /dev/null "http://127.0.0.1:$PORT$BENCH_PATH" && break
    else
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz") == 200 ]] && break
    fi
    sleep 0.1
done
python3 bench/probe.py load "$PORT" "$BENCH_TOKEN" 2000 "$CONNECTIONS"
callgrind_control -z "$PROFILED_PID" >/dev/null
python3 bench/probe.py load "$PORT" "$BENCH_TOKEN" "$REQUESTS" "$CONNECTIONS"
callgrind_control -d "$PROFILED_PID" >/dev/null
DUMP=$(find "$RUN_DIR" -name 'callgrind.out.*' -size +1k | sort | tail -1)
TOTAL=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$(awk -v t="$TOTAL" -v n="$REQUESTS" 'BEGIN { printf "%.0f", t / n }') instructions per request" \
    "($TOTAL over $REQUESTS requests, $CONNECTIONS connections); $DUMP"
callgrind_annotate --inclusive=yes --threshold=99 "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | head -60
