#!/usr/bin/env bash
# awork-gateway's streaming and scale figures, against the mock awork (target/release/mock-awork,
# quota off) as upstream, with the same gateway config as bench/compare.sh (API key, token
# client, policy rule, quota above the load, JSON access log at info to a file):
#   - time from start to the first 200 of /readyz (median of --starts starts), and peak RSS idle
#     (VmHWM one second after ready, before any request);
#   - peak RSS with 1,000 and 10,000 open keep-alive connections (each sent one request, then
#     holds; the gateway's idle_timeout is 5m here so none is closed while counted);
#   - 1 GiB down (GET .../download?size=1GiB) and 1 GiB up (POST /api/v1/temporaryfiles with a
#     Content-Length) with curl: direct to the mock, through the gateway, and, as the reference
#     for what any proxy hop costs on this machine, through nginx (unbuffered), haproxy,
#     haproxy with splice(2) and a plain TCP relay that only copies (bench/probe.py relay);
#     alternated, median of --rounds; the gateway's peak RSS over all of them. Not pinned: a
#     stream is a pipeline of three processes (curl, proxy, mock) on two cores, direct of two.
#
# Usage: bench/scale.sh [--rounds 3] [--starts 5] [--binary target/release/awork-gateway]
#                       [--mock target/release/mock-awork] [--out bench/results]
# Prints a table and writes it to OUT/<date>-<HHMM>-scale.md. Exit 0 when the figures are within the
# targets (idle <= 20 MiB, 1,000 connections <= 64 MiB, 1 GiB at >= 80% of direct both ways),
# 1 when not, 2 when the run could not be made.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUNDS=3
STARTS=5
BINARY=target/release/awork-gateway
MOCK=target/release/mock-awork
OUT=bench/results
GIB=1073741824

while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift 2 ;;
    --starts) STARTS=$2 && shift 2 ;;
    --binary) BINARY=$2 && shift 2 ;;
    --mock) MOCK=$2 && shift 2 ;;
    --out) OUT=$2 && shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ -x $BINARY ]] || die "$BINARY not found: cargo build --release"
[[ -x $MOCK ]] || die "$MOCK not found: cargo build --release --bin mock-awork"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RUN_DIR=$(mktemp -d /tmp/awork-scale.XXXXXX)
trap end_run EXIT
trap 'exit 130' INT TERM

MOCK_PORT=$(free_port)
"$MOCK" --listen "127.0.0.1:$MOCK_PORT" --api-key "$BENCH_KEY" --per-second 0 --per-minute 0 >"$RUN_DIR/mock.log" 2>&1 &
STARTED_PIDS+=("$!")
wait_port "$MOCK_PORT"

# A fresh gateway in front of the mock; sets GW_PORT, GW_ADMIN, GATEWAY_PID and READY_MS.
fresh_gateway() {
    if [[ -n ${GATEWAY_PID:-} ]]; then
        stop_pid "$GATEWAY_PID"
    fi
    GW_PORT=$(free_port)
    GW_ADMIN=$(free_port)
    gateway_config "$RUN_DIR" "$GW_PORT" "$GW_ADMIN" "$MOCK_PORT" 1000000 3000000 5m
    local line
    line=$(BENCH_AWORK_KEY=$BENCH_KEY RUST_LOG=info python3 bench/probe.py ready "$GW_ADMIN" -- \
        "$BINARY" --config "$RUN_DIR/gateway.toml" 2>>"$RUN_DIR/gateway.log")
    GATEWAY_PID=${line% *}
    READY_MS=${line#* }
    STARTED_PIDS+=("$GATEWAY_PID")
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

# Start to /readyz, and idle memory.
: >"$RUN_DIR/ready.txt"
: >"$RUN_DIR/idle.txt"
for _ in $(seq 1 "$STARTS"); do
    fresh_gateway
    sleep 1
    echo "$READY_MS" >>"$RUN_DIR/ready.txt"
    peak_rss_kib "$GATEWAY_PID" >>"$RUN_DIR/idle.txt"
    echo "  start to /readyz ${READY_MS} ms, idle peak RSS $(mib "$(tail -1 "$RUN_DIR/idle.txt")") MiB" >&2
done
READY=$(median <"$RUN_DIR/ready.txt")
IDLE=$(mib "$(sort -g "$RUN_DIR/idle.txt" | tail -1)")

# Open keep-alive connections.
fresh_gateway
coproc HOLD { python3 bench/probe.py hold "$GW_PORT" "$BENCH_TOKEN" 1000 10000; }
declare -A CONN_PEAK CONN_NOW
for count in 1000 10000; do
    read -r reply <&"${HOLD[0]}" || die "the connection holder stopped"
    [[ $reply == "open $count" ]] || die "the connection holder said: $reply"
    sleep 1
    CONN_PEAK[$count]=$(mib "$(peak_rss_kib "$GATEWAY_PID")")
    CONN_NOW[$count]=$(mib "$(rss_kib "$GATEWAY_PID")")
    echo "  $count open connections: peak RSS ${CONN_PEAK[$count]} MiB, now ${CONN_NOW[$count]} MiB" >&2
    echo >&"${HOLD[1]}"
done
wait "$HOLD_PID" || true

# Streams: 1 GiB down and up, direct and through the gateway, alternated.
fresh_gateway
head -c "$GIB" /dev/zero >"$RUN_DIR/upload.bin"
: >"$RUN_DIR/streams.tsv"
stream() { # direction target round
    local url auth out
    auth="Authorization: Bearer $BENCH_TOKEN"
    case $2 in
    direct) url="http://127.0.0.1:$MOCK_PORT" auth="Authorization: Bearer $BENCH_KEY" ;;
    gateway) url="http://127.0.0.1:$GW_PORT" ;;
    nginx) url="http://127.0.0.1:$NGINX_PORT" ;;
    haproxy) url="http://127.0.0.1:$HAPROXY_PORT" ;;
    haproxy-splice) url="http://127.0.0.1:$SPLICE_PORT" ;;
    relay) url="http://127.0.0.1:$RELAY_PORT" auth="Authorization: Bearer $BENCH_KEY" ;;
    esac
    if [[ $1 == down ]]; then
        out=$(curl -sS -o /dev/null -H "$auth" -w '%{http_code} %{size_download} %{speed_download}' \
            "$url/api/v1/files/0d5e0c2a-bench/download?size=$GIB")
    else
        out=$(curl -sS -o /dev/null -H "$auth" -H 'Content-Type: application/octet-stream' -X POST \
            -T "$RUN_DIR/upload.bin" -w '%{http_code} %{size_upload} %{speed_upload}' "$url/api/v1/temporaryfiles")
    fi
    read -r code size speed <<<"$out"
    [[ $code == 200 && $size == "$GIB" ]] || die "1 GiB $1 via $2: status $code after $size bytes"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(awk -v s="$speed" 'BEGIN { printf "%.0f", s / 1e6 }')" \
        >>"$RUN_DIR/streams.tsv"
    echo "  1 GiB $1 $2 round $3: $(tail -1 "$RUN_DIR/streams.tsv" | cut -f4) MB/s" >&2
}
# What a proxy hop costs here, in front of the same mock: nginx and haproxy; haproxy moving
# bodies by splice(2), without a copy; and a plain TCP relay that copies and does nothing else,
# the least any proxy that copies its bytes can cost.
start_nginx "$RUN_DIR" 0-1 "$MOCK_PORT" stream
start_haproxy "$RUN_DIR" 0-1 "$MOCK_PORT" splice
SPLICE_PORT=$HAPROXY_PORT
start_haproxy "$RUN_DIR" 0-1 "$MOCK_PORT"
RELAY_PORT=$(free_port)
python3 bench/probe.py relay "$RELAY_PORT" "$MOCK_PORT" &
STARTED_PIDS+=("$!")
wait_port "$RELAY_PORT"
STREAM_TARGETS=(direct gateway nginx haproxy haproxy-splice relay)
for round in $(seq 1 "$ROUNDS"); do
    for direction in down up; do
        for target in "${STREAM_TARGETS[@]}"; do
            stream "$direction" "$target" "$round"
        done
    done
done
STREAM_PEAK=$(mib "$(peak_rss_kib "$GATEWAY_PID")")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

speed_of() { awk -F'\t' -v d="$1" -v t="$2" '$1 == d && $2 == t { print $4 }' "$RUN_DIR/streams.tsv" | median; }
rounds_of() { awk -F'\t' -v d="$1" -v t="$2" '$1 == d && $2 == t { printf "%s%s", (n++ ? " " : ""), $4 }' "$RUN_DIR/streams.tsv"; }

VERDICT=0
check() { # label ok
    if [[ $2 == 1 ]]; then
        echo "- $1: PASS"
    else
        echo "- $1: FAIL"
        VERDICT=1
    fi
}

REPORT="$OUT/$(date -u +%Y-%m-%d-%H%M)-scale.md"
mkdir -p "$OUT"
{
    echo "# awork-gateway streaming and scale figures ($STARTED)"
    echo
    echo "\`bench/scale.sh --rounds $ROUNDS --starts $STARTS\`, $(gateway_label "$BINARY"),"
    echo "upstream: mock-awork (quota off). $(nproc) cores, $(uname -r). Load average before/after: $LOAD_BEFORE / $LOAD_AFTER."
    echo
    echo "| measure | value |"
    echo "|---|---:|"
    echo "| start to /readyz 200 (median of $STARTS) | $READY ms ($(paste -sd' ' "$RUN_DIR/ready.txt")) |"
    echo "| peak RSS idle (highest of $STARTS starts) | $IDLE MiB |"
    for count in 1000 10000; do
        echo "| peak RSS, $count open keep-alive connections | ${CONN_PEAK[$count]} MiB (now ${CONN_NOW[$count]} MiB) |"
    done
    for direction in down up; do
        d=$(speed_of "$direction" direct)
        for target in "${STREAM_TARGETS[@]}"; do
            echo "| 1 GiB $direction, $target (median of $ROUNDS) | $(speed_of "$direction" "$target") MB/s ($(rounds_of "$direction" "$target")) |"
        done
        for target in "${STREAM_TARGETS[@]:1}"; do
            echo "| 1 GiB $direction, $target / direct |" \
                "$(awk -v g="$(speed_of "$direction" "$target")" -v d="$d" 'BEGIN { printf "%.0f%%", 100 * g / d }') |"
        done
    done
    echo "| peak RSS over the 1 GiB streams | $STREAM_PEAK MiB |"
    echo
    check "idle <= 20 MiB" "$(awk -v v="$IDLE" 'BEGIN { print (v <= 20) }')"
    check "1,000 connections <= 64 MiB" "$(awk -v v="${CONN_PEAK[1000]}" 'BEGIN { print (v <= 64) }')"
    for direction in down up; do
        check "1 GiB $direction >= 80% of direct" \
            "$(awk -v g="$(speed_of "$direction" gateway)" -v d="$(speed_of "$direction" direct)" 'BEGIN { print (g >= 0.8 * d) }')"
    done
} >"$REPORT"
cat "$REPORT"
exit "$VERDICT"
