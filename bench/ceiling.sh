#!/usr/bin/env bash
# How far hyper alone gets on this machine, beside nginx and the gateway: the compare.sh
# layout (wrk on LOAD_CPU, the upstream and every proxy on PROXY_CPU) with four targets:
#   nginx                   nginx injecting the key (as in compare.sh)
#   gateway                 awork-gateway with every feature of compare.sh on
#   ceiling-pooled          the `ceiling` example: hyper server + hyper-util's pooled client
#   ceiling-per-connection  the `ceiling` example: one upstream connection per caller connection
# wrk -t1 at --conns connections, targets alternated for --rounds rounds; prints each round's
# req/s and the medians, with each target's ratio to nginx. The gap between the gateway and
# ceiling-pooled is what the gateway's features cost; between ceiling-pooled and nginx, hyper.
#
# Usage: bench/ceiling.sh [--rounds 3] [--duration 8] [--conns 64]
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUNDS=3
DURATION=8
CONNS=64
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift 2 ;;
    --duration) DURATION=$2 && shift 2 ;;
    --conns) CONNS=$2 && shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
for tool in wrk nginx taskset curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y nginx wrk)"
done
[[ -x target/release/awork-gateway && -x target/release/examples/ceiling ]] ||
    die "build first: cargo build --release && cargo build --release --example ceiling"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RUN_DIR=$(mktemp -d /tmp/awork-ceiling.XXXXXX)
trap stop_started EXIT
trap 'exit 130' INT TERM

start_upstream "$RUN_DIR" "$PROXY_CPU"
start_nginx "$RUN_DIR" "$PROXY_CPU" "$UPSTREAM_PORT"
GATEWAY_PORT=$(free_port)
GATEWAY_ADMIN=$(free_port)
gateway_config "$RUN_DIR" "$GATEWAY_PORT" "$GATEWAY_ADMIN" "$UPSTREAM_PORT" 1000000 3000000
start_gateway "$RUN_DIR" "$PROXY_CPU" target/release/awork-gateway "$GATEWAY_ADMIN"
declare -A PORTS=([nginx]=$NGINX_PORT [gateway]=$GATEWAY_PORT)
for mode in pooled per-connection; do
    PORTS[ceiling-$mode]=$(free_port)
    taskset -c "$PROXY_CPU" target/release/examples/ceiling "$mode" "127.0.0.1:${PORTS[ceiling-$mode]}" \
        "127.0.0.1:$UPSTREAM_PORT" "$BENCH_KEY" 2>"$RUN_DIR/ceiling-$mode.log" &
    STARTED_PIDS+=("$!")
    wait_port "${PORTS[ceiling-$mode]}"
done
TARGETS=(nginx gateway ceiling-pooled ceiling-per-connection)

load() { # target seconds -> req/s
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$2s" -H "Authorization: Bearer $BENCH_TOKEN" \
        "http://127.0.0.1:${PORTS[$1]}$BENCH_PATH" | awk '/^Requests\/sec/ { print $2 }'
}

for target in "${TARGETS[@]}"; do
    [[ $(curl -s -H "Authorization: Bearer $BENCH_TOKEN" "http://127.0.0.1:${PORTS[$target]}$BENCH_PATH") == "$(upstream_json)" ]] ||
        die "$target does not answer the upstream's JSON"
    load "$target" 2 >/dev/null
done
declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
        RESULTS[$target]+="$(load "$target" "$DURATION") "
        echo "round $round $target ${RESULTS[$target]##* }" >&2
    done
done

rounds_median() { tr ' ' '\n' <<<"${RESULTS[$1]% }" | median; }
NGINX=$(rounds_median nginx)
echo "wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds alternated; wrk on cpu $LOAD_CPU, upstream and proxies on cpu $PROXY_CPU"
echo "| target | req/s (median) | / nginx | req/s per round |"
echo "|---|---:|---:|---|"
for target in "${TARGETS[@]}"; do
    m=$(rounds_median "$target")
    echo "| $target | $m | $(awk -v a="$m" -v b="$NGINX" 'BEGIN { printf "%.2f", a / b }') | ${RESULTS[$target]% } |"
done
