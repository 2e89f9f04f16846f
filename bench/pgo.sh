#!/usr/bin/env bash
# The release gateway built with profile-guided optimisation (PGO): the binary bench/compare.sh
# measures and the container image ships, written to target/pgo/awork-gateway.
#
#   1. builds a gateway instrumented to count its branches and calls (target/pgo/gen);
#   2. trains it on the compare.sh setup (the nginx upstream of bench/lib.sh, every feature on):
#      wrk GETs at 64 and at 256 keep-alive connections (--seconds each), POSTs with a 2 KiB
#      body (half as long), and a caller with a wrong token (401, one second); then stops it
#      with SIGTERM, which writes the counts;
#   3. merges the counts with llvm-profdata of rustc's own LLVM;
#   4. builds the release gateway again with them (target/pgo/use): hot code laid out together,
#      inlining and branch order chosen by the counts.
#
# Why: the request path is many small functions (hyper, tower's layers, the pool), and the CPU
# spends much of its time fetching their code. Under callgrind's cache model a request misses
# the L1 instruction cache ~2,600 times through the gateway and ~900 times through a bare hyper
# proxy. Measured (bench/README.md): ~1 us less user time per request, +6-9 % req/s.
#
# Needs: wrk, nginx, curl, python3, taskset, and llvm-profdata of rustc's LLVM version
# (`rustup component add llvm-tools`, or Debian's llvm-NN for rustc's LLVM NN).
# Two release builds (8-15 min on 2 cores here) and the training (2.5 x --seconds + 1 s).
#
# Usage: bench/pgo.sh [--seconds 8]
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

SECONDS_PER_STEP=8
while (($#)); do
    case $1 in
    --seconds) SECONDS_PER_STEP=$2 && shift 2 ;;
    -h | --help) sed -n '2,23p' "$0" && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
for tool in wrk nginx curl python3 taskset; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y wrk nginx curl python3 util-linux)"
done

# llvm-profdata must read the format of rustc's LLVM: the toolchain's own (llvm-tools), else
# the distribution's of the same major version.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    PROFDATA=$(command -v "llvm-profdata-$llvm_major" || true)
fi
[[ -n $PROFDATA ]] ||
    die "no llvm-profdata for LLVM $llvm_major: rustup component add llvm-tools (or apt-get install -y llvm-$llvm_major)"

PGO_DIR=$PWD/target/pgo
PROFILES=$PGO_DIR/profiles
rm -rf "$PROFILES"
mkdir -p "$PROFILES"

echo "== 1/4 instrumented build (target/pgo/gen)"
RUSTFLAGS="-Cprofile-generate=$PROFILES" CARGO_TARGET_DIR=$PGO_DIR/gen \
    cargo build --release --locked --bin awork-gateway

echo "== 2/4 training"
# Build scripts and proc macros ran instrumented too: only the gateway's counts are kept.
rm -f "$PROFILES"/*.profraw
RUN_DIR=$(mktemp -d /tmp/awork-pgo.XXXXXX)
trap end_run EXIT
trap 'exit 130' INT TERM
CPUS=$(taskset -pc $$ | awk -F': ' '{ print $2 }')
start_upstream "$RUN_DIR" "$CPUS"
PORT=$(free_port)
ADMIN=$(free_port)
gateway_config "$RUN_DIR" "$PORT" "$ADMIN" "$UPSTREAM_PORT" 1000000 30000000
start_gateway "$RUN_DIR" "$CPUS" "$PGO_DIR/gen/release/awork-gateway" "$ADMIN"
cat >"$RUN_DIR/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
url="http://127.0.0.1:$PORT"
train() { # label, seconds, wrk arguments...
    local label=$1 seconds=$2
    shift 2
    printf '   %-28s ' "$label"
    wrk -t1 -d"${seconds}s" "$@" |
        awk '/Requests\/sec/ { rps = $2 } /Non-2xx/ { refused = " (" $NF " not 2xx)" } END { print rps " req/s" refused }'
}
train "GET, 64 connections" "$SECONDS_PER_STEP" -c64 -H "Authorization: Bearer $BENCH_TOKEN" "$url$BENCH_PATH"
train "GET, 256 connections" "$SECONDS_PER_STEP" -c256 -H "Authorization: Bearer $BENCH_TOKEN" "$url$BENCH_PATH"
train "POST 2 KiB, 64 connections" "$(((SECONDS_PER_STEP + 1) / 2))" -c64 -s "$RUN_DIR/post.lua" \
    -H "Authorization: Bearer $BENCH_TOKEN" "$url/api/v1/temporaryfiles"
# Refusals are answered without awork, twice as fast: one second keeps them a small share.
train "wrong token, 16 connections" 1 -c16 -H "Authorization: Bearer not-the-token" "$url$BENCH_PATH"
stop_pid "$GATEWAY_PID"
compgen -G "$PROFILES/*.profraw" >/dev/null || die "the instrumented gateway wrote no profile into $PROFILES"

echo "== 3/4 merging the profile"
"$PROFDATA" merge -o "$PGO_DIR/gateway.profdata" "$PROFILES"

echo "== 4/4 optimised build (target/pgo/use)"
RUSTFLAGS="-Cprofile-use=$PGO_DIR/gateway.profdata" CARGO_TARGET_DIR=$PGO_DIR/use \
    cargo build --release --locked --bin awork-gateway
install -m 0755 "$PGO_DIR/use/release/awork-gateway" "$PGO_DIR/awork-gateway"
git rev-parse --short HEAD >"$PGO_DIR/awork-gateway.commit" 2>/dev/null || echo unknown >"$PGO_DIR/awork-gateway.commit"
echo "target/pgo/awork-gateway (PGO build of $(cat "$PGO_DIR/awork-gateway.commit"))"
