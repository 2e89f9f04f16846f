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
# Beside them, each proxy's CPU per request over all its rounds, user and kernel (from
# /proc/PID/stat, so to the clock tick), and with perf installed its syscalls and context
# switches per request (perf stat on the proxy process while wrk runs): where the time goes.
#
# With --candidate, a second gateway build (same config, its own process on PROXY_CPU) is a
# target too, alternated with the first: the A/B of two builds that bench/README.md quotes as
# "builds alternated". Two copies of one binary show what the A/B can resolve. --no-ceiling
# leaves the ceiling example out (it need not be built then).
#
# The table is printed and saved as bench/results/DATE-HHMM-ceiling.md.
#
# Usage: bench/ceiling.sh [--rounds 3] [--duration 8] [--conns 64]
#                         [--binary target/release/awork-gateway, e.g. target/pgo/awork-gateway]
#                         [--candidate another/awork-gateway] [--no-ceiling]
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUNDS=3
DURATION=8
CONNS=64
BINARY=target/release/awork-gateway
CANDIDATE=
CEILING=1
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift 2 ;;
    --duration) DURATION=$2 && shift 2 ;;
    --conns) CONNS=$2 && shift 2 ;;
    --binary) BINARY=$2 && shift 2 ;;
    --candidate) CANDIDATE=$2 && shift 2 ;;
    --no-ceiling) CEILING= && shift ;;
    -h | --help) sed -n '2,22p' "$0" && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
for tool in wrk nginx taskset curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y nginx wrk)"
done
[[ -x $BINARY ]] || die "$BINARY not found: cargo build --release"
[[ -z $CANDIDATE || -x $CANDIDATE ]] || die "$CANDIDATE not found"
[[ -z $CEILING || -x target/release/examples/ceiling ]] ||
    die "build first: cargo build --release --example ceiling (or pass --no-ceiling)"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RUN_DIR=$(mktemp -d /tmp/awork-ceiling.XXXXXX)
trap end_run EXIT
trap 'exit 130' INT TERM

start_upstream "$RUN_DIR" "$PROXY_CPU"
start_nginx "$RUN_DIR" "$PROXY_CPU" "$UPSTREAM_PORT"
GATEWAY_PORT=$(free_port)
GATEWAY_ADMIN=$(free_port)
gateway_config "$RUN_DIR" "$GATEWAY_PORT" "$GATEWAY_ADMIN" "$UPSTREAM_PORT" 1000000 3000000
start_gateway "$RUN_DIR" "$PROXY_CPU" "$BINARY" "$GATEWAY_ADMIN"
declare -A PORTS=([nginx]=$NGINX_PORT [gateway]=$GATEWAY_PORT)
# The process doing each target's work: nginx's worker, not its master.
declare -A PIDS=([nginx]=$(children_of "$NGINX_PID" | awk '{ print $1 }') [gateway]=$GATEWAY_PID)
TARGETS=(nginx gateway)
if [[ -n $CANDIDATE ]]; then
    mkdir -p "$RUN_DIR/candidate"
    PORTS[candidate]=$(free_port)
    CANDIDATE_ADMIN=$(free_port)
    gateway_config "$RUN_DIR/candidate" "${PORTS[candidate]}" "$CANDIDATE_ADMIN" "$UPSTREAM_PORT" 1000000 3000000
    start_gateway "$RUN_DIR/candidate" "$PROXY_CPU" "$CANDIDATE" "$CANDIDATE_ADMIN"
    PIDS[candidate]=$GATEWAY_PID
    TARGETS+=(candidate)
fi
for mode in ${CEILING:+pooled per-connection}; do
    PORTS[ceiling-$mode]=$(free_port)
    taskset -c "$PROXY_CPU" target/release/examples/ceiling "$mode" "127.0.0.1:${PORTS[ceiling-$mode]}" \
        "127.0.0.1:$UPSTREAM_PORT" "$BENCH_KEY" 2>"$RUN_DIR/ceiling-$mode.log" &
    STARTED_PIDS+=("$!")
    PIDS[ceiling-$mode]=$!
    wait_port "${PORTS[ceiling-$mode]}"
    TARGETS+=("ceiling-$mode")
done
PERF=$(command -v perf || true)
TICK_US=$((1000000 / $(getconf CLK_TCK)))
# Per target, over all measured rounds: requests, user and kernel clock ticks, syscalls, switches.
declare -A REQUESTS USER_TICKS SYS_TICKS SYSCALLS SWITCHES

ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }

load() { # target seconds [measure]; sets RPS and P99 (not in a subshell: it adds to the totals)
    local target=$1 seconds=$2 pid=${PIDS[$1]} out u0 s0 u1 s1 perf_pid=""
    read -r u0 s0 < <(ticks "$pid")
    if [[ -n ${3:-} && -n $PERF ]]; then
        "$PERF" stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$RUN_DIR/perf.$target" \
            -- sleep "$seconds" 2>/dev/null &
        perf_pid=$!
    fi
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${seconds}s" --latency -H "Authorization: Bearer $BENCH_TOKEN" \
        "http://127.0.0.1:${PORTS[$target]}$BENCH_PATH")
    [[ -z $perf_pid ]] || wait "$perf_pid"
    read -r u1 s1 < <(ticks "$pid")
    if [[ -n ${3:-} ]]; then
        REQUESTS[$target]=$((${REQUESTS[$target]:-0} + $(awk '/requests in/ { print $1 }' <<<"$out")))
        USER_TICKS[$target]=$((${USER_TICKS[$target]:-0} + u1 - u0))
        SYS_TICKS[$target]=$((${SYS_TICKS[$target]:-0} + s1 - s0))
        if [[ -n $PERF ]]; then
            SYSCALLS[$target]=$((${SYSCALLS[$target]:-0} + $(awk -F, '/sys_enter/ { print $1 }' "$RUN_DIR/perf.$target")))
            SWITCHES[$target]=$((${SWITCHES[$target]:-0} + $(awk -F, '/context-switches/ { print $1 }' "$RUN_DIR/perf.$target")))
        fi
    fi
    RPS=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
    P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
}

per_request() { # total requests scale -> total * scale / requests, 2 decimals ("-" without a figure)
    awk -v t="$1" -v n="$2" -v k="$3" 'BEGIN { if (t == "" || n == 0) print "-"; else printf "%.2f", t * k / n }'
}

for target in "${TARGETS[@]}"; do
    [[ $(curl -s -H "Authorization: Bearer $BENCH_TOKEN" "http://127.0.0.1:${PORTS[$target]}$BENCH_PATH") == "$(upstream_json)" ]] ||
        die "$target does not answer the upstream's JSON"
    load "$target" 2
done
declare -A RESULTS LATENCIES
for round in $(seq 1 "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
        load "$target" "$DURATION" measure
        RESULTS[$target]+="$RPS "
        LATENCIES[$target]+="$P99 "
        echo "round $round $target $RPS req/s, p99 $P99 ms" >&2
    done
done

rounds_median() { tr ' ' '\n' <<<"${RESULTS[$1]% }" | median; }
p99_median() { tr ' ' '\n' <<<"${LATENCIES[$1]% }" | median; }
NGINX=$(rounds_median nginx)
mkdir -p bench/results
REPORT="bench/results/$(date -u +%Y-%m-%d-%H%M)-ceiling.md"
{
    echo "# hyper's ceiling beside nginx and the gateway, with CPU per request ($(date -u '+%Y-%m-%d %H:%M') UTC)"
    echo
    echo "\`bench/ceiling.sh --rounds $ROUNDS --duration $DURATION --conns $CONNS\`, $(gateway_label "$BINARY")${CANDIDATE:+; candidate: $(gateway_label "$CANDIDATE")}." \
        "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -r)."
    echo
    echo "wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds alternated; wrk on cpu $LOAD_CPU, upstream and proxies on cpu $PROXY_CPU"
    echo "| target | req/s (median) | / nginx | p99 ms (median) | user µs/request | kernel µs/request | syscalls/request | switches/request | req/s per round | p99 ms per round |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    for target in "${TARGETS[@]}"; do
        m=$(rounds_median "$target")
        n=${REQUESTS[$target]}
        echo "| $target | $m | $(awk -v a="$m" -v b="$NGINX" 'BEGIN { printf "%.2f", a / b }') | $(p99_median "$target")" \
            "| $(per_request "${USER_TICKS[$target]}" "$n" "$TICK_US") | $(per_request "${SYS_TICKS[$target]}" "$n" "$TICK_US")" \
            "| $(per_request "${SYSCALLS[$target]:-}" "$n" 1) | $(per_request "${SWITCHES[$target]:-}" "$n" 1) | ${RESULTS[$target]% } | ${LATENCIES[$target]% } |"
    done
} >"$REPORT"
cat "$REPORT"
