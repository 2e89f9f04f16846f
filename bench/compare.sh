#!/usr/bin/env bash
# awork-gateway against what an operator would deploy instead, on loopback, in one run.
#
# One fixed upstream (nginx, one worker, answering a ~1 KiB JSON) measured through:
#   direct    wrk -> upstream
#   nginx     injecting Authorization, keep-alive upstream pool
#   haproxy   injecting Authorization, connections to the upstream reused
#   gateway   awork-gateway: API-key injection, a token client, a policy rule, the quota on
#             (above the load), the access log at info in JSON to a file
# wrk (keep-alive) at each connection count, targets alternated (direct nginx haproxy gateway,
# direct nginx haproxy gateway, ...) for --rounds rounds; medians reported. wrk runs on one
# core (LOAD_CPU), the upstream and every proxy on the other (PROXY_CPU), so each proxy gets
# the same one core (nginx 1 worker, haproxy 1 thread, the gateway sees one core and runs
# tokio's current-thread runtime). All three proxies write one access-log line per request to a file.
#
# Usage: bench/compare.sh [--rounds N] [--duration SECS] [--conns "64 256"]
#                         [--binary target/release/awork-gateway] [--out bench/results]
# Prints the table and writes it to OUT/<date>-<HHMM>-compare.md, the raw wrk output beside it
# (OUT/<date>-<HHMM>-compare.raw.txt). Exit 0 when the gateway met the bar at every connection count
# (req/s at least nginx's and haproxy's, p99 no higher than either's), 1 when not, 2 when the
# run could not be made.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUNDS=5
DURATION=10
WARMUP=2
CONNS="64 256"
BINARY=target/release/awork-gateway
OUT=bench/results
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-$PROXY_CPU}
# The quota: above the load (the gateway does well under 100,000/s here), and per minute
# above the requests it sees in any minute of the run (its sliding log grows with them).
QUOTA_PER_SECOND=${QUOTA_PER_SECOND:-1000000}
QUOTA_PER_MINUTE=${QUOTA_PER_MINUTE:-3000000}
TARGETS=(direct nginx haproxy gateway)

while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift 2 ;;
    --duration) DURATION=$2 && shift 2 ;;
    --warmup) WARMUP=$2 && shift 2 ;;
    --conns) CONNS=$2 && shift 2 ;;
    --binary) BINARY=$2 && shift 2 ;;
    --out) OUT=$2 && shift 2 ;;
    -h | --help) sed -n '2,22p' "$0" && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

for tool in wrk nginx haproxy taskset curl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y nginx haproxy wrk)"
done
[[ -x $BINARY ]] || die "$BINARY not found: cargo build --release"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RUN_DIR=$(mktemp -d /tmp/awork-bench.XXXXXX)
trap end_run EXIT
trap 'exit 130' INT TERM

start_bench_gateway() {
    GATEWAY_PORT=$(free_port)
    GATEWAY_ADMIN=$(free_port)
    gateway_config "$RUN_DIR" "$GATEWAY_PORT" "$GATEWAY_ADMIN" "$UPSTREAM_PORT" "$QUOTA_PER_SECOND" "$QUOTA_PER_MINUTE"
    BENCH_AWORK_KEY=$BENCH_KEY "$BINARY" check --config "$RUN_DIR/gateway.toml" >/dev/null ||
        die "the gateway refused its config"
    start_gateway "$RUN_DIR" "$PROXY_CPU" "$BINARY" "$GATEWAY_ADMIN"
}

# Every target answers the same 200 body, and the proxies attached the key, not the token.
smoke_check() {
    local target url body expected
    expected=$(upstream_json)
    for target in "${TARGETS[@]}"; do
        url="http://127.0.0.1:${PORT[$target]}"
        body=$(curl -s -H "Authorization: Bearer $BENCH_TOKEN" "$url$BENCH_PATH")
        [[ $body == "$expected" ]] || die "$target did not answer the upstream's JSON: $body"
        [[ $target == direct ]] && continue
        body=$(curl -s -H "Authorization: Bearer $BENCH_TOKEN" "$url/api/v1/_authorization")
        [[ $body == "Bearer $BENCH_KEY" ]] || die "$target sent Authorization: $body"
    done
}

# Runs wrk once; appends "conns target round rps p50 p99 errors" to $RUN_DIR/results.tsv.
measure() {
    local conns=$1 target=$2 round=$3 out rps p50 p99 errors
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION}s" --latency \
        -H "Authorization: Bearer $BENCH_TOKEN" "http://127.0.0.1:${PORT[$target]}$BENCH_PATH")
    {
        echo "### c=$conns target=$target round=$round $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "$out"
    } >>"$RAW"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errors=$(awk '/Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } /Non-2xx/ { n += $5 } END { print n + 0 }' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "$target" "$round" "$rps" "$p50" "$p99" "$errors" \
        >>"$RUN_DIR/results.tsv"
    printf '  c=%-4s round %s %-8s %10s req/s  p50 %7s ms  p99 %7s ms  errors %s\n' \
        "$conns" "$round" "$target" "$rps" "$p50" "$p99" "$errors" >&2
}

# Peak RSS in MiB of a target's processes (the upstream's own is not counted for the proxies).
peak_mib() {
    local kib
    # shellcheck disable=SC2046 # one pid per word
    case $1 in
    direct) kib=$(peak_rss_kib "$UPSTREAM_PID" $(children_of "$UPSTREAM_PID")) ;;
    nginx) kib=$(peak_rss_kib "$NGINX_PID" $(children_of "$NGINX_PID")) ;;
    haproxy) kib=$(peak_rss_kib "$HAPROXY_PID") ;;
    gateway) kib=$(peak_rss_kib "$GATEWAY_PID") ;;
    esac
    awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }'
}

column_of() { # conns target column -> the column's values, one per round
    awk -F'\t' -v c="$1" -v t="$2" -v k="$3" '$1 == c && $2 == t { print $k }' "$RUN_DIR/results.tsv"
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
}

# Per round: the gateway's req/s over the target's, as "min-max".
round_ratio_range() {
    awk -F'\t' -v c="$1" -v t="$2" '
        $1 == c && $2 == "gateway" { g[$3] = $4 }
        $1 == c && $2 == t { o[$3] = $4 }
        END {
            for (r in g) if (o[r] > 0) { x = g[r] / o[r]; if (min == "" || x < min) min = x; if (x > max) max = x }
            printf "%.2f-%.2f", min, max
        }' "$RUN_DIR/results.tsv"
}

RAW_NAME="$(date -u +%Y-%m-%d-%H%M)-compare"
mkdir -p "$OUT"
RAW="$OUT/$RAW_NAME.raw.txt"
REPORT="$OUT/$RAW_NAME.md"
: >"$RAW"
: >"$RUN_DIR/results.tsv"

start_upstream "$RUN_DIR" "$UPSTREAM_CPU"
start_nginx "$RUN_DIR" "$PROXY_CPU" "$UPSTREAM_PORT"
start_haproxy "$RUN_DIR" "$PROXY_CPU" "$UPSTREAM_PORT"
start_bench_gateway
declare -A PORT=([direct]=$UPSTREAM_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [gateway]=$GATEWAY_PORT)
smoke_check

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
declare -A PEAK
echo "run dir $RUN_DIR (removed at the end unless BENCH_KEEP_RUN_DIR=1); wrk on cpu $LOAD_CPU, upstream on cpu $UPSTREAM_CPU, proxies on cpu $PROXY_CPU; load $LOAD_BEFORE" >&2
for conns in $CONNS; do
    for target in "${TARGETS[@]}"; do
        taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${WARMUP}s" -H "Authorization: Bearer $BENCH_TOKEN" \
            "http://127.0.0.1:${PORT[$target]}$BENCH_PATH" >/dev/null
    done
    for round in $(seq 1 "$ROUNDS"); do
        for target in "${TARGETS[@]}"; do
            measure "$conns" "$target" "$round"
        done
    done
    for target in "${TARGETS[@]}"; do
        PEAK[$conns.$target]=$(peak_mib "$target")
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

VERDICT=0
declare -A RPS P99
{
    echo "# awork-gateway vs nginx and haproxy ($STARTED)"
    echo
    echo "\`bench/compare.sh --rounds $ROUNDS --duration $DURATION --conns \"$CONNS\"\`, $(gateway_label "$BINARY"). "
    echo "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -r);" \
        "$(nginx -v 2>&1 | cut -d' ' -f3), HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }'), wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')."
    echo "wrk \`-t1 -c<conns> -d${DURATION}s --latency\`, keep-alive, pinned to cpu $LOAD_CPU; upstream pinned to cpu $UPSTREAM_CPU, proxies to cpu $PROXY_CPU."
    echo "Load average before/after: $LOAD_BEFORE / $LOAD_AFTER."
    echo
    echo "Medians of $ROUNDS rounds (targets alternated in every round). Peak RSS: VmHWM at the end of that" \
        "connection count's rounds (nginx: master + worker; direct: the upstream nginx)."
    echo
    echo "| conns | target | req/s | p50 ms | p99 ms | peak RSS MiB | errors | req/s per round |"
    echo "|---:|---|---:|---:|---:|---:|---:|---|"
    for conns in $CONNS; do
        for target in "${TARGETS[@]}"; do
            RPS[$conns.$target]=$(column_of "$conns" "$target" 4 | median)
            P99[$conns.$target]=$(column_of "$conns" "$target" 6 | median)
            p50=$(column_of "$conns" "$target" 5 | median)
            errors=$(column_of "$conns" "$target" 7 | awk '{ n += $1 } END { print n + 0 }')
            rounds=$(column_of "$conns" "$target" 4 | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }')
            printf '| %s | %s | %.0f | %s | %s | %s | %s | %s |\n' "$conns" "$target" "${RPS[$conns.$target]}" \
                "$p50" "${P99[$conns.$target]}" "${PEAK[$conns.$target]}" "$errors" "$rounds"
        done
    done
    echo
    echo "| conns | gateway/nginx req/s | gateway/haproxy req/s | gateway/direct req/s | nginx/direct | haproxy/direct | gateway/nginx per round | gateway/haproxy per round | gateway p99 / nginx p99 | gateway p99 / haproxy p99 |"
    echo "|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"
    for conns in $CONNS; do
        g=${RPS[$conns.gateway]}
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$conns" \
            "$(ratio "$g" "${RPS[$conns.nginx]}")" "$(ratio "$g" "${RPS[$conns.haproxy]}")" \
            "$(ratio "$g" "${RPS[$conns.direct]}")" "$(ratio "${RPS[$conns.nginx]}" "${RPS[$conns.direct]}")" \
            "$(ratio "${RPS[$conns.haproxy]}" "${RPS[$conns.direct]}")" \
            "$(round_ratio_range "$conns" nginx)" "$(round_ratio_range "$conns" haproxy)" \
            "$(ratio "${P99[$conns.gateway]}" "${P99[$conns.nginx]}")" \
            "$(ratio "${P99[$conns.gateway]}" "${P99[$conns.haproxy]}")"
    done
    echo
    for conns in $CONNS; do
        for peer in nginx haproxy; do
            rps_ok=$(awk -v g="${RPS[$conns.gateway]}" -v p="${RPS[$conns.$peer]}" 'BEGIN { print (g >= p) }')
            p99_ok=$(awk -v g="${P99[$conns.gateway]}" -v p="${P99[$conns.$peer]}" 'BEGIN { print (g <= p) }')
            verdict=PASS
            if [[ $rps_ok != 1 || $p99_ok != 1 ]]; then
                verdict=FAIL
                VERDICT=1
            fi
            echo "- c=$conns, gateway vs $peer: req/s $(ratio "${RPS[$conns.gateway]}" "${RPS[$conns.$peer]}")x" \
                "(>= 1 needed), p99 ${P99[$conns.gateway]} vs ${P99[$conns.$peer]} ms: $verdict"
        done
    done
    echo
    echo "Access logs written (lines): gateway $(grep -c '"request"' "$RUN_DIR/gateway.log" || true)," \
        "nginx $(wc -l <"$RUN_DIR/nginx/access.log"), haproxy $(wc -l <"$RUN_DIR/haproxy/access.log")."
    echo "Quota: $(curl -s "http://127.0.0.1:$GATEWAY_ADMIN/metrics" | awk '
        /^awork_gateway_queue_wait_seconds_count/ { n = $2 } /^awork_gateway_queue_wait_seconds_sum/ { s = $2 }
        END { printf "%d requests admitted, %.3f s waited in all", n, s }')."
    echo "Raw wrk output: \`$RAW\`."
} >"$REPORT"
cat "$REPORT"
exit "$VERDICT"
