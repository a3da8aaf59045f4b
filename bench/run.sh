#!/usr/bin/env bash
# Portcullis benchmark harness.
#
# Measures, in one run and on loopback only:
#   upstream     - a static nginx origin, hit directly (the ceiling)
#   nginx-proxy  - nginx reverse-proxying to that origin with pooled keep-alive
#                  upstream connections (the peer baseline, tuned)
#   nginx-default - nginx with proxy_pass as shipped (HTTP/1.0, a new upstream
#                  connection per request): what most deployments run
#   pingora-minimal - the smallest Pingora proxy (examples/minimal_proxy.rs):
#                  the framework's own ceiling on this machine
#   portcullis   - Portcullis's public (no-auth) route to that origin
# and prints req/s, p50 and p99 for each plus same-run ratios. The same table
# is written to bench/results/latest.md. See bench/README.md for the method.
#
# Usage: bench/run.sh [--duration N] [--connections N] [--rounds N] [--no-build]
#   --duration N     seconds of measured load per target and round (default: $DURATION or 6)
#   --rounds N       rounds over all targets, interleaved; medians are reported
#                    (default: $ROUNDS or 3)
#   --connections N  concurrent wrk connections (default: $CONNECTIONS or 50)
#   --no-build       do not run `cargo build --release` first
# Environment:
#   PORTCULLIS_BIN   binary to benchmark (default: <repo>/target/release/portcullis)
#   RUST_LOG         passed to Portcullis (default here: warn)
#   BUILD_TIMEOUT    seconds allowed for cargo build (default 1800)

set -Eeuo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
CONF_DIR="$BENCH_DIR/conf"
RESULTS_DIR="$BENCH_DIR/results"

DURATION="${DURATION:-6}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-50}"
BUILD=1
THREADS=2                 # wrk threads for the measured run
WARMUP_ARGS=(-t1 -c10 -d2s)
PORTCULLIS_BIN="${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-1800}"

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { printf '\nbench: ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf 'bench: %s\n' "$*" >&2; }

while (($#)); do
    case "$1" in
        --duration) DURATION="${2:-}"; shift 2 || die "--duration needs a value" ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --connections) CONNECTIONS="${2:-}"; shift 2 || die "--connections needs a value" ;;
        --connections=*) CONNECTIONS="${1#*=}"; shift ;;
        --rounds) ROUNDS="${2:-}"; shift 2 || die "--rounds needs a value" ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer (seconds), got '$DURATION'"
[[ "$ROUNDS" =~ ^[1-9]$ ]] || die "--rounds must be 1 to 9, got '$ROUNDS'"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive integer, got '$CONNECTIONS'"
((CONNECTIONS >= THREADS)) || die "--connections must be >= $THREADS (wrk threads)"
((DURATION <= 300)) || die "--duration is capped at 300 s to keep the run bounded"

# --------------------------------------------------------------------------
# Cleanup: every process this script starts is recorded here and stopped on
# exit, whatever the exit path.
# --------------------------------------------------------------------------
TMP=""
PIDS=()          # "pid:name:first-signal"
POLICY_RC_CREATED=0

stop_pid() {
    local pid=$1 name=$2 sig=$3 kids k i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kids="$(pgrep -P "$pid" 2>/dev/null || true)"
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIG$sig for 5s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Children (nginx workers) normally exit with their master; make sure.
    for k in $kids; do
        if kill -0 "$k" 2>/dev/null; then kill -KILL "$k" 2>/dev/null || true; fi
    done
}

cleanup() {
    local rc=$? entry pid rest name sig i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        entry="${PIDS[$i]}"
        pid="${entry%%:*}"; rest="${entry#*:}"; name="${rest%%:*}"; sig="${rest#*:}"
        stop_pid "$pid" "$name" "$sig"
    done
    if ((POLICY_RC_CREATED)); then rm -f /usr/sbin/policy-rc.d; fi
    if [[ -n "$TMP" && -d "$TMP" ]]; then rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "command failed (line $LINENO): $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------
# 1. Tools and build
# --------------------------------------------------------------------------
ensure_tools() {
    local missing=() pkg
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    command -v pgrep >/dev/null 2>&1 || missing+=(procps)
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]} and not root: install them (apt-get install ${missing[*]})"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get"
    log "installing: ${missing[*]}"
    # Keep the nginx package's postinst from starting a system nginx on :80.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq || die "apt-get update failed"
    timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    if ((POLICY_RC_CREATED)); then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
    for pkg in wrk curl python3; do command -v "$pkg" >/dev/null 2>&1 || die "$pkg still missing after install"; done
}
ensure_tools
NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"

if ((BUILD)); then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (use --no-build with a prebuilt binary)"
    log "cargo build --release (in $ROOT)"
    (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release --bin portcullis --example minimal_proxy) \
        || die "cargo build --release failed"
fi
[[ -x "$PORTCULLIS_BIN" ]] || die "Portcullis binary not found or not executable: $PORTCULLIS_BIN"
MINIMAL_BIN="${MINIMAL_BIN:-$ROOT/target/release/examples/minimal_proxy}"
[[ -x "$MINIMAL_BIN" ]] || die "minimal Pingora proxy not built: cargo build --release --example minimal_proxy"

# --------------------------------------------------------------------------
# 2. Temp dir and free loopback ports
# --------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")"
chmod 755 "$TMP"   # nginx workers may run as an unprivileged user
mkdir -p "$TMP/upstream" "$TMP/proxy" "$TMP/proxy-default" "$TMP/minimal" "$TMP/gateway/policies" "$TMP/wrk"

# All sockets are held open together, so the ports are distinct.
read -r UP_PORT PROXY_PORT GW_PORT ADMIN_PORT DEF_PORT MIN_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(6):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
)
for p in "$UP_PORT" "$PROXY_PORT" "$GW_PORT" "$ADMIN_PORT" "$DEF_PORT" "$MIN_PORT"; do
    [[ "$p" =~ ^[0-9]+$ ]] || die "could not pick free loopback ports"
done
log "ports: upstream=$UP_PORT nginx-proxy=$PROXY_PORT nginx-default=$DEF_PORT pingora-minimal=$MIN_PORT portcullis=$GW_PORT admin=$ADMIN_PORT"

render() {   # render TEMPLATE OUT
    sed -e "s|@@TMP@@|$TMP|g" \
        -e "s|@@UP_PORT@@|$UP_PORT|g" \
        -e "s|@@PROXY_PORT@@|$PROXY_PORT|g" \
        -e "s|@@GW_PORT@@|$GW_PORT|g" \
        -e "s|@@ADMIN_PORT@@|$ADMIN_PORT|g" \
        -e "s|@@DEF_PORT@@|$DEF_PORT|g" \
        "$1" >"$2"
    if grep -Eq '@@[A-Z_]+@@' "$2"; then die "unrendered placeholder in $2"; fi
}
render "$CONF_DIR/upstream.nginx.conf" "$TMP/upstream/nginx.conf"
render "$CONF_DIR/proxy.nginx.conf" "$TMP/proxy/nginx.conf"
render "$CONF_DIR/proxy-default.nginx.conf" "$TMP/proxy-default/nginx.conf"
render "$CONF_DIR/gateway.yaml" "$TMP/gateway/gateway.yaml"
render "$CONF_DIR/policies/bench.yaml" "$TMP/gateway/policies/bench.yaml"

# --------------------------------------------------------------------------
# 3. Start upstream, nginx-proxy, Portcullis; wait for readiness by polling
# --------------------------------------------------------------------------
# wait_ready NAME PID URL TRIES  (TRIES x 0.1 s, plus curl's own 1 s cap)
wait_ready() {
    local name=$1 pid=$2 url=$3 tries=$4 i
    for ((i = 0; i < tries; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if curl -sf -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    log "$name not ready at $url after $tries polls"
    return 1
}

# check_body NAME URL: the target must answer 200 with the upstream's body.
check_body() {
    local name=$1 url=$2 code body
    code="$(curl -s --max-time 2 -o "$TMP/body" -w '%{http_code}' "$url" || true)"
    body="$(head -c 200 "$TMP/body" 2>/dev/null || true)"
    [[ "$code" == 200 && "$body" == ok ]] \
        || die "$name: GET $url answered HTTP '$code' body '$body', expected 200 'ok'"
}

start_nginx() {   # start_nginx NAME DIR PORT
    local name=$1 dir=$2 port=$3 pid
    if ! "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/configtest.log"; then
        cat "$dir/configtest.log" >&2
        die "$name: nginx config test failed"
    fi
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    pid=$!
    PIDS+=("$pid:$name:TERM")
    TPID[$name]=$pid
    if ! wait_ready "$name" "$pid" "http://127.0.0.1:$port/" 100; then
        cat "$dir/error.log" "$dir/stdout.log" >&2 2>/dev/null || true
        die "$name (nginx) failed to start"
    fi
    check_body "$name" "http://127.0.0.1:$port/"
    log "$name ready (pid $pid)"
}

declare -A TPID
start_nginx upstream "$TMP/upstream" "$UP_PORT"
start_nginx nginx-proxy "$TMP/proxy" "$PROXY_PORT"
start_nginx nginx-default "$TMP/proxy-default" "$DEF_PORT"

"$MINIMAL_BIN" "127.0.0.1:$MIN_PORT" "127.0.0.1:$UP_PORT" 2 >"$TMP/minimal/stderr.log" 2>&1 </dev/null &
MIN_PID=$!
PIDS+=("$MIN_PID:pingora-minimal:INT")
TPID[pingora-minimal]=$MIN_PID
wait_ready pingora-minimal "$MIN_PID" "http://127.0.0.1:$MIN_PORT/" 300 \
    || { cat "$TMP/minimal/stderr.log" >&2; die "pingora-minimal failed to start"; }
check_body pingora-minimal "http://127.0.0.1:$MIN_PORT/"
log "pingora-minimal ready (pid $MIN_PID)"

GW_LOG="$TMP/gateway/stderr.log"
GW_OUT="$TMP/gateway/stdout.log"
(cd "$TMP/gateway" && export RUST_LOG="${RUST_LOG:-warn}" && exec "$PORTCULLIS_BIN" run --config "$TMP/gateway/gateway.yaml") \
    >"$GW_OUT" 2>"$GW_LOG" </dev/null &
GW_PID=$!
# Pingora: SIGINT = fast shutdown (SIGTERM waits out a long grace period).
PIDS+=("$GW_PID:portcullis:INT")
TPID[portcullis]=$GW_PID
if ! wait_ready portcullis "$GW_PID" "http://127.0.0.1:$ADMIN_PORT/readyz" 300; then
    if kill -0 "$GW_PID" 2>/dev/null; then
        log "portcullis is running but /readyz never answered 2xx"
    else
        rc=0; wait "$GW_PID" 2>/dev/null || rc=$?
        log "portcullis exited with status $rc"
    fi
    printf '%s\n' "----- portcullis stderr -----" >&2
    cat "$GW_LOG" >&2 || true
    if [[ -s "$GW_OUT" ]]; then
        printf '%s\n' "----- portcullis stdout -----" >&2
        cat "$GW_OUT" >&2 || true
    fi
    printf '%s\n' "----- end of portcullis output -----" >&2
    die "Portcullis failed to start: $PORTCULLIS_BIN run --config $TMP/gateway/gateway.yaml"
fi
check_body portcullis "http://127.0.0.1:$GW_PORT/"
log "portcullis ready (pid $GW_PID)"

# --------------------------------------------------------------------------
# 4. Load
# --------------------------------------------------------------------------
# to_ms VALUE-WITH-UNIT  (wrk prints us, ms, s, m, h)
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) { print "NaN"; exit 1 }
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
        else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else { print "NaN"; exit 1 }
        printf "%.3f", n * f }'
}

declare -A RPS P50 P99 ERRS REQS CPU ALL_RPS ALL_P50 ALL_P99 ALL_CPU
CLK_TCK="$(getconf CLK_TCK)"

# cpu_ticks PID: user+system CPU ticks of PID and its children (nginx workers).
cpu_ticks() {
    local total=0 p t
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        t="$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}
TARGETS=(upstream nginx-proxy nginx-default pingora-minimal portcullis)
declare -A PORT=([upstream]=$UP_PORT [nginx-proxy]=$PROXY_PORT [nginx-default]=$DEF_PORT [pingora-minimal]=$MIN_PORT [portcullis]=$GW_PORT)
SOCKET_ERRORS=0

run_target() {
    local name=$1 url="http://127.0.0.1:${PORT[$1]}/" out="$TMP/wrk/$1.txt" v e
    log "$name: warm-up (wrk ${WARMUP_ARGS[*]})"
    timeout 30 wrk "${WARMUP_ARGS[@]}" "$url" >"$TMP/wrk/$name-warmup.txt" 2>&1 \
        || { cat "$TMP/wrk/$name-warmup.txt" >&2; die "$name: warm-up wrk failed"; }
    log "$name: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency $url"
    local t0 t1
    t0="$(cpu_ticks "${TPID[$name]}")"
    timeout $((DURATION + 30)) wrk "-t$THREADS" "-c$CONNECTIONS" "-d${DURATION}s" --latency "$url" >"$out" 2>&1 \
        || { cat "$out" >&2; die "$name: wrk failed"; }
    t1="$(cpu_ticks "${TPID[$name]}")"

    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        cat "$out" >&2
        die "$name: wrk saw non-2xx/3xx responses ($(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$out")) - figures are invalid"
    fi
    v="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    [[ -n "$v" ]] || { cat "$out" >&2; die "$name: could not parse Requests/sec from wrk output"; }
    RPS[$name]="$v"
    REQS[$name]="$(awk '/ requests in / {print $1}' "$out")"
    [[ "${REQS[$name]:-0}" != 0 ]] || { cat "$out" >&2; die "$name: wrk completed no requests"; }
    # CPU time the server spent per request (user + system, all its threads/workers):
    # less sensitive than req/s to how the shared cores were divided in this run.
    CPU[$name]="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="${REQS[$name]}" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
    v="$(awk '$1 == "50%" {print $2}' "$out")"; P50[$name]="$(to_ms "$v")" \
        || die "$name: could not parse p50 '$v'"
    v="$(awk '$1 == "99%" {print $2}' "$out")"; P99[$name]="$(to_ms "$v")" \
        || die "$name: could not parse p99 '$v'"
    # "Socket errors: connect A, read B, write C, timeout D" only appears when non-zero.
    e="$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")"
    ERRS[$name]="${e:-0}"
    if [[ "${ERRS[$name]}" != 0 ]]; then
        log "WARNING: $name: $(grep 'Socket errors:' "$out" | sed 's/^ *//')"
        SOCKET_ERRORS=1
    fi
    # The target must still be serving correctly after the load.
    check_body "$name" "$url"
}

# Rounds interleave the targets, so a slow patch of the machine hits all of them; the
# median of each figure over the rounds is reported.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    for t in "${TARGETS[@]}"; do
        run_target "$t"
        ALL_RPS[$t]+=" ${RPS[$t]}"; ALL_P50[$t]+=" ${P50[$t]}"
        ALL_P99[$t]+=" ${P99[$t]}"; ALL_CPU[$t]+=" ${CPU[$t]}"
    done
done
for t in "${TARGETS[@]}"; do
    RPS[$t]="$(median <<<"${ALL_RPS[$t]}")"; P50[$t]="$(median <<<"${ALL_P50[$t]}")"
    P99[$t]="$(median <<<"${ALL_P99[$t]}")"; CPU[$t]="$(median <<<"${ALL_CPU[$t]}")"
done

# --------------------------------------------------------------------------
# 5. Report
# --------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"
if [[ "$COMMIT" != none && -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    COMMIT="$COMMIT (dirty)"
fi
DATE="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
NPROC="$(nproc)"
NGINX_VER="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
WRK_VER="$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}')"

R_PX="$(ratio "${RPS[portcullis]}" "${RPS[nginx-proxy]}")"
R_UP="$(ratio "${RPS[portcullis]}" "${RPS[upstream]}")"
R_NX="$(ratio "${RPS[nginx-proxy]}" "${RPS[upstream]}")"
L_PX="$(ratio "${P99[portcullis]}" "${P99[nginx-proxy]}")"
L_UP="$(ratio "${P99[portcullis]}" "${P99[upstream]}")"
M_PX="$(ratio "${P50[portcullis]}" "${P50[nginx-proxy]}")"
R_DEF="$(ratio "${RPS[portcullis]}" "${RPS[nginx-default]}")"
R_MIN="$(ratio "${RPS[portcullis]}" "${RPS[pingora-minimal]}")"
R_MINPX="$(ratio "${RPS[pingora-minimal]}" "${RPS[nginx-proxy]}")"

# Terminal table
{
    echo
    echo "Portcullis benchmark  $DATE  commit $COMMIT  nproc $NPROC"
    echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (after wrk ${WARMUP_ARGS[*]} warm-up), loopback; median of $ROUNDS interleaved rounds"
    echo
    printf '%-16s %10s %9s %9s %12s %7s\n' target req/s "p50 ms" "p99 ms" "cpu us/req" errors
    printf '%-16s %10s %9s %9s %12s %7s\n' ---------------- ---------- --------- --------- ------------ -------
    for t in "${TARGETS[@]}"; do
        printf '%-16s %10.0f %9.3f %9.3f %12s %7s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${CPU[$t]}" "${ERRS[$t]}"
    done
    echo
    printf '%-44s %s\n' "throughput  portcullis / nginx-proxy" "$R_PX"
    printf '%-44s %s\n' "throughput  portcullis / nginx-default" "$R_DEF"
    printf '%-44s %s\n' "throughput  portcullis / pingora-minimal" "$R_MIN"
    printf '%-44s %s\n' "throughput  pingora-minimal / nginx-proxy" "$R_MINPX"
    printf '%-44s %s\n' "throughput  portcullis / upstream" "$R_UP"
    printf '%-44s %s\n' "throughput  nginx-proxy / upstream" "$R_NX"
    printf '%-44s %s\n' "p99         portcullis / nginx-proxy" "$L_PX"
    printf '%-44s %s\n' "p99         portcullis / upstream" "$L_UP"
    printf '%-44s %s\n' "p50         portcullis / nginx-proxy" "$M_PX"
    echo
}

# Markdown results (only written once every target has been measured)
mkdir -p "$RESULTS_DIR"
{
    echo "# Portcullis benchmark: latest run"
    echo
    echo "- Date: $DATE"
    echo "- Commit: \`$COMMIT\`"
    echo "- nproc: $NPROC (load generator and all servers share these cores)"
    echo "- Load: \`wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency\` per target, after a \`wrk ${WARMUP_ARGS[*]}\` warm-up; loopback only; medians of $ROUNDS interleaved rounds"
    echo "- Per-round req/s: $(for t in "${TARGETS[@]}"; do printf '%s:%s; ' "$t" "${ALL_RPS[$t]# }"; done)"
    echo "- Tools: $NGINX_VER, wrk $WRK_VER, kernel $(uname -r)"
    echo
    echo "| target | req/s | p50 ms | p99 ms | server CPU µs/req | socket errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for t in "${TARGETS[@]}"; do
        printf '| %s | %.0f | %.3f | %.3f | %s | %s |\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${CPU[$t]}" "${ERRS[$t]}"
    done
    echo
    echo "| ratio (same run) | value |"
    echo "| --- | ---: |"
    echo "| throughput: portcullis / nginx-proxy | $R_PX |"
    echo "| throughput: portcullis / nginx-default | $R_DEF |"
    echo "| throughput: portcullis / pingora-minimal | $R_MIN |"
    echo "| throughput: pingora-minimal / nginx-proxy | $R_MINPX |"
    echo "| throughput: portcullis / upstream | $R_UP |"
    echo "| throughput: nginx-proxy / upstream | $R_NX |"
    echo "| p99: portcullis / nginx-proxy | $L_PX |"
    echo "| p99: portcullis / upstream | $L_UP |"
    echo "| p50: portcullis / nginx-proxy | $M_PX |"
    echo
    echo "Raw wrk output of this run: \`bench/results/wrk-<target>.txt\`."
    if ((SOCKET_ERRORS)); then
        echo
        echo "**Warning: wrk reported socket errors (see the errors column); treat these figures as suspect.**"
    fi
} >"$RESULTS_DIR/latest.md"
for t in "${TARGETS[@]}"; do cp "$TMP/wrk/$t.txt" "$RESULTS_DIR/wrk-$t.txt"; done
log "wrote $RESULTS_DIR/latest.md"

if ((SOCKET_ERRORS)); then
    die "wrk reported socket errors (connect/read/write/timeout); figures are suspect"
fi
