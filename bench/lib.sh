# Shared by bench/compare.sh and bench/scale.sh (sourced, not run): the fixed upstream, the
# gateway's config with every feature a real deployment turns on, process bookkeeping.
# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this

# The API key the proxies attach and the client token wrk presents (bench values, no secret).
BENCH_KEY="bench-awork-api-key-4f1c9e"
BENCH_TOKEN="bench-client-token-8d27a1"
BENCH_PATH="/api/v1/me"

# The process ids this run started; stopped (by id) on exit.
STARTED_PIDS=()

die() {
    echo "error: $*" >&2
    exit 2
}

stop_started() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

# On exit: stops what the run started and removes its scratch directory, whose access logs grow
# by hundreds of MiB a run (the report and raw figures are saved under bench/results first).
# BENCH_KEEP_RUN_DIR=1 keeps it for a look.
end_run() {
    stop_started
    [[ -n ${BENCH_KEEP_RUN_DIR:-} || -z ${RUN_DIR:-} ]] || rm -rf "$RUN_DIR"
}

# Stops one process (not necessarily a child) and waits until it is gone (at most 10 s).
stop_pid() {
    local i
    kill "$1" 2>/dev/null || return 0
    for i in $(seq 1 200); do
        [[ -e /proc/$1 && $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]] || return 0
        sleep 0.05
    done
    echo "warning: process $1 still running 10 s after SIGTERM" >&2
}

# A TCP port nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts on 127.0.0.1:$1 (at most 10 s).
wait_port() {
    local i
    for i in $(seq 1 200); do
        if (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    die "nothing listens on port $1 after 10 s"
}

# What the report says was measured: the tree's commit for the default binary, the commit
# bench/pgo.sh built for its binary, else the path given with --binary.
gateway_label() {
    if [[ $1 == target/release/awork-gateway ]]; then
        echo "gateway at \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
    elif [[ -f $1.commit ]]; then
        echo "gateway at \`$(cat "$1.commit")\` (\`$1\`, bench/pgo.sh)"
    else
        echo "gateway binary \`$1\`"
    fi
}

# The median of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Peak resident memory (VmHWM) of the given pids, summed, in KiB.
peak_rss_kib() {
    local pid total=0 kib
    for pid in "$@"; do
        kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# Current resident memory (VmRSS) of one pid, in KiB.
rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# Milliseconds of a wrk latency figure ("612.00us", "2.35ms", "1.02s").
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n
    }'
}

# The children of a pid (nginx's workers).
children_of() {
    cat "/proc/$1/task/$1/children" 2>/dev/null || true
}

# The ~1 KiB JSON answer of the fixed upstream: an awork user, as GET /api/v1/me returns it.
upstream_json() {
    local tags="" i
    for i in 1 2 3 4 5 6; do
        tags+="{\"id\":\"7a4c1e2b-0000-4000-8000-00000000000$i\",\"name\":\"team-$i\",\"color\":\"blue\"},"
    done
    printf '{"id":"5e3f1a7c-2b4d-4e6f-8a9b-0c1d2e3f4a5b","firstName":"Ada","lastName":"Lovelace",'
    printf '"email":"ada.lovelace@example.com","position":"Engineering lead","language":"en-GB",'
    printf '"timezone":"Europe/Berlin","isExternal":false,"isArchived":false,"isDeactivated":false,'
    printf '"hasImage":true,"createdOn":"2024-02-11T09:14:53.120Z","updatedOn":"2026-11-20T16:02:11.004Z",'
    printf '"userContactInfos":[{"type":"phone","subType":"work","value":"+49 30 1234567"}],'
    printf '"teams":[%s],' "${tags%,}"
    printf '"capacityPerWeek":144000,"workspaceId":"1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809"}'
}

# Writes DIR/nginx.conf for one nginx worker with its pid, error log and temp files in DIR and
# keep-alive raised; the rest of the http block comes from stdin.
nginx_conf() {
    local dir=$1
    mkdir -p "$dir/tmp"
    {
        cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 10000; }
http {
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
EOF
        cat
        echo "}"
    } >"$dir/nginx.conf"
}

# Starts the fixed upstream (nginx, one worker, on the proxies' core): the 1 KiB JSON for any
# path, and at /api/v1/_authorization the Authorization header it received.
# Sets UPSTREAM_PORT and UPSTREAM_PID.
start_upstream() {
    local dir=$1 cpu=$2
    UPSTREAM_PORT=$(free_port)
    nginx_conf "$dir/upstream" <<EOF
    access_log off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location / {
            default_type application/json;
            return 200 '$(upstream_json)';
        }
        # What the proxies attached, for the smoke check.
        location = /api/v1/_authorization {
            default_type text/plain;
            return 200 '\$http_authorization';
        }
    }
EOF
    taskset -c "$cpu" nginx -p "$dir/upstream" -c "$dir/upstream/nginx.conf" -e "$dir/upstream/error.log" \
        -g 'daemon off;' &
    UPSTREAM_PID=$!
    STARTED_PIDS+=("$UPSTREAM_PID")
    wait_port "$UPSTREAM_PORT"
}

# The gateway's config: API-key injection, one token client with a policy rule, the quota on
# (above the load), the access log at info in JSON. Args: dir port admin_port upstream_port
# per_second per_minute idle_timeout.
gateway_config() {
    local dir=$1 port=$2 admin=$3 upstream=$4 per_second=$5 per_minute=$6 idle=${7:-30s}
    local token_sha256
    token_sha256=$(printf '%s' "$BENCH_TOKEN" | sha256sum | cut -d' ' -f1)
    cat >"$dir/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
max_connections = 20000
idle_timeout = "$idle"

[upstream]
url = "http://127.0.0.1:$upstream"

[credentials.main]
type = "api_key"
key = { env = "BENCH_AWORK_KEY" }

# Above the load, so it paces nothing; every request still takes a slot.
[rate_limit]
per_second = $per_second
per_minute = $per_minute
max_wait = "5s"
max_queue = 10000

[[clients]]
name = "bench"
token_sha256 = "$token_sha256"
credential = "main"
allow = ["GET,HEAD /api/v1/**", "POST /api/v1/temporaryfiles"]

[log]
format = "json"
EOF
    chmod 600 "$dir/gateway.toml"
}

# Starts the gateway on $cpu with its access log (info, JSON) going to $dir/gateway.log.
# Sets GATEWAY_PID; waits for /readyz.
start_gateway() {
    local dir=$1 cpu=$2 binary=$3 admin=$4
    BENCH_AWORK_KEY=$BENCH_KEY RUST_LOG=info taskset -c "$cpu" "$binary" --config "$dir/gateway.toml" \
        2>"$dir/gateway.log" &
    GATEWAY_PID=$!
    STARTED_PIDS+=("$GATEWAY_PID")
    wait_ready "$admin"
}

# Waits (at most 10 s) for the gateway's /readyz to answer 200.
wait_ready() {
    local i
    for i in $(seq 1 1000); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz") == 200 ]]; then
            return 0
        fi
        sleep 0.01
    done
    die "the gateway's /readyz did not answer 200 within 10 s"
}

# The config of nginx in front of the upstream at 127.0.0.1:$upstream, in $dir/nginx: injecting
# the key with a keep-alive pool to the upstream and a JSON access log; $stream set: bodies of
# any size pass through unbuffered, as an operator would set it for file transfers.
# Sets NGINX_PORT.
nginx_proxy_conf() {
    local dir=$1 upstream=$2 stream=${3:-} streaming=""
    if [[ -n $stream ]]; then
        streaming="client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;"
    fi
    NGINX_PORT=$(free_port)
    nginx_conf "$dir/nginx" <<EOF
    log_format json escape=json '{"time":"\$time_iso8601","client":"\$remote_addr",'
        '"method":"\$request_method","path":"\$uri","status":\$status,'
        '"duration":\$request_time,"upstream":"\$upstream_response_time","bytes_out":\$body_bytes_sent}';
    access_log $dir/nginx/access.log json;
    upstream awork {
        server 127.0.0.1:$upstream;
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://awork;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $BENCH_KEY";
            $streaming
        }
    }
EOF
}

# nginx (one worker, on $cpu) as `nginx_proxy_conf` sets it up. Sets NGINX_PORT and NGINX_PID.
start_nginx() {
    local dir=$1 cpu=$2 upstream=$3 stream=${4:-}
    nginx_proxy_conf "$dir" "$upstream" "$stream"
    taskset -c "$cpu" nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" \
        -e "$dir/nginx/error.log" -g 'daemon off;' &
    NGINX_PID=$!
    STARTED_PIDS+=("$NGINX_PID")
    wait_port "$NGINX_PORT"
}

# haproxy (one thread, on $cpu) in front of the upstream, injecting the key, reusing upstream
# connections, logging each request. With a fourth argument `splice`, bodies are moved between
# the sockets by splice(2) (`option splice-request`, `option splice-response`), without a copy
# through haproxy, in a directory of their own. Sets HAPROXY_PORT and HAPROXY_PID.
start_haproxy() {
    local dir=$1 cpu=$2 upstream=$3 splice=${4:-}
    local name=haproxy options=""
    if [[ $splice == splice ]]; then
        name=haproxy-splice
        options=$'    option splice-request\n    option splice-response'
    fi
    dir=$dir/$name
    HAPROXY_PORT=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 5000
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
$options

frontend gateway
    bind 127.0.0.1:$HAPROXY_PORT
    http-request set-header Authorization "Bearer $BENCH_KEY"
    default_backend awork

backend awork
    http-reuse always
    server upstream 127.0.0.1:$upstream
EOF
    taskset -c "$cpu" haproxy -db -f "$dir/haproxy.cfg" >"$dir/access.log" 2>&1 &
    HAPROXY_PID=$!
    STARTED_PIDS+=("$HAPROXY_PID")
    wait_port "$HAPROXY_PORT"
}
