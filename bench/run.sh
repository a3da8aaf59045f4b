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
#   portcullis-auth - a signed-in (`auth: login`) route, no rate limit, no risk
#                  scoring; loaded with a real session cookie (the baseline)
#   portcullis-auth-risk - the same route with a per-user rate limit and risk
#                  scoring (every available signal, thresholds not reached)
# and prints req/s, p50 and p99 for each plus same-run ratios. The same table
# is written to bench/results/latest.md. See bench/README.md for the method.
# The sessions come from a scripted login (curl) at the development identity
# provider of `portcullis demo`, which the script runs for that purpose.
#
# Usage: bench/run.sh [--duration N] [--connections N] [--rounds N] [--no-build] [--no-auth]
#   --duration N     seconds of measured load per target and round (default: $DURATION or 6)
#   --rounds N       rounds over all targets, interleaved; medians are reported
#                    (default: $ROUNDS or 3)
#   --connections N  concurrent wrk connections (default: $CONNECTIONS or 50)
#   --no-build       do not run `cargo build --release` first
#   --no-auth        skip portcullis-auth and portcullis-auth-risk (no demo, no login)
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
AUTH=1                    # measure the signed-in route targets
THREADS=2                 # wrk threads for the measured run
WARMUP_CONNECTIONS=10
WARMUP_ARGS=(-t1 "-c$WARMUP_CONNECTIONS" -d2s)
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
        --no-auth) AUTH=0; shift ;;
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
mkdir -p "$TMP/upstream" "$TMP/proxy" "$TMP/proxy-default" "$TMP/minimal" "$TMP/gateway/policies" "$TMP/wrk" \
    "$TMP/demo" "$TMP/gateway-auth/policies" "$TMP/gateway-auth-risk/policies" "$TMP/login"

# All sockets are held open together, so the ports are distinct. (The demo picks the
# ports of its own app and identity provider itself, the same way.)
read -r UP_PORT PROXY_PORT GW_PORT ADMIN_PORT DEF_PORT MIN_PORT \
    AUTH_PORT AUTH_ADMIN_PORT RISK_PORT RISK_ADMIN_PORT DEMO_PORT DEMO_ADMIN_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(12):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
)
for p in "$UP_PORT" "$PROXY_PORT" "$GW_PORT" "$ADMIN_PORT" "$DEF_PORT" "$MIN_PORT" \
    "$AUTH_PORT" "$AUTH_ADMIN_PORT" "$RISK_PORT" "$RISK_ADMIN_PORT" "$DEMO_PORT" "$DEMO_ADMIN_PORT"; do
    [[ "$p" =~ ^[0-9]+$ ]] || die "could not pick free loopback ports"
done
log "ports: upstream=$UP_PORT nginx-proxy=$PROXY_PORT nginx-default=$DEF_PORT pingora-minimal=$MIN_PORT portcullis=$GW_PORT admin=$ADMIN_PORT"
if ((AUTH)); then
    log "ports: portcullis-auth=$AUTH_PORT admin=$AUTH_ADMIN_PORT portcullis-auth-risk=$RISK_PORT admin=$RISK_ADMIN_PORT demo=$DEMO_PORT admin=$DEMO_ADMIN_PORT"
fi

IDP_PORT=""      # known once the demo runs (section 3b)
IDP_SECRET=""
render() {   # render TEMPLATE OUT
    sed -e "s|@@TMP@@|$TMP|g" \
        -e "s|@@ROOT@@|$ROOT|g" \
        -e "s|@@UP_PORT@@|$UP_PORT|g" \
        -e "s|@@PROXY_PORT@@|$PROXY_PORT|g" \
        -e "s|@@GW_PORT@@|$GW_PORT|g" \
        -e "s|@@ADMIN_PORT@@|$ADMIN_PORT|g" \
        -e "s|@@DEF_PORT@@|$DEF_PORT|g" \
        -e "s|@@AUTH_PORT@@|$AUTH_PORT|g" \
        -e "s|@@AUTH_ADMIN_PORT@@|$AUTH_ADMIN_PORT|g" \
        -e "s|@@RISK_PORT@@|$RISK_PORT|g" \
        -e "s|@@RISK_ADMIN_PORT@@|$RISK_ADMIN_PORT|g" \
        -e "s|@@DEMO_PORT@@|$DEMO_PORT|g" \
        -e "s|@@IDP_PORT@@|$IDP_PORT|g" \
        -e "s|@@IDP_SECRET@@|$IDP_SECRET|g" \
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
# wait_ready NAME PID URL TRIES [TEXT]  (TRIES x 0.1 s, plus curl's own 1 s cap): until
# URL answers 2xx (with TEXT in its body, when given).
wait_ready() {
    local name=$1 pid=$2 url=$3 tries=$4 want=${5:-} i body
    for ((i = 0; i < tries; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if body="$(curl -sf --max-time 1 "$url")" && [[ -z "$want" || "$body" == *"$want"* ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "$name not ready at $url after $tries polls${want:+ (waiting for '$want')}"
    return 1
}

# check_body NAME URL [CURL-ARGS...]: the target must answer 200 with the upstream's body.
check_body() {
    local name=$1 url=$2 code body
    shift 2
    code="$(curl -s --max-time 2 "$@" -o "$TMP/body" -w '%{http_code}' "$url" || true)"
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

# start_portcullis NAME DIR ADMIN-PORT [READYZ-TEXT] [ENV=VALUE...] [-- ARGS...]: runs
# `portcullis ARGS` (default: run --config DIR/gateway.yaml) in DIR and waits for its
# admin /readyz; with READYZ-TEXT, until the answer contains it.
start_portcullis() {
    local name=$1 dir=$2 admin=$3 want=${4:-} pid rc
    shift 4 || shift $#
    local envs=() args=(run --config "$dir/gateway.yaml")
    while (($#)); do
        if [[ "$1" == -- ]]; then shift; args=("$@"); break; fi
        envs+=("$1"); shift
    done
    (cd "$dir" && export RUST_LOG="${RUST_LOG:-warn}" && exec env "${envs[@]}" "$PORTCULLIS_BIN" "${args[@]}") \
        >"$dir/stdout.log" 2>"$dir/stderr.log" </dev/null &
    pid=$!
    # Pingora: SIGINT = fast shutdown (SIGTERM waits out a long grace period).
    PIDS+=("$pid:$name:INT")
    TPID[$name]=$pid
    if ! wait_ready "$name" "$pid" "http://127.0.0.1:$admin/readyz" 300 "$want"; then
        if kill -0 "$pid" 2>/dev/null; then
            log "$name is running but /readyz never answered 2xx${want:+ with '$want'}"
            curl -s --max-time 1 "http://127.0.0.1:$admin/readyz" >&2 || true
        else
            rc=0; wait "$pid" 2>/dev/null || rc=$?
            log "$name exited with status $rc"
        fi
        printf '%s\n' "----- $name stderr -----" >&2
        cat "$dir/stderr.log" >&2 || true
        if [[ -s "$dir/stdout.log" ]]; then
            printf '%s\n' "----- $name stdout -----" >&2
            cat "$dir/stdout.log" >&2 || true
        fi
        printf '%s\n' "----- end of $name output -----" >&2
        die "$name failed to start: $PORTCULLIS_BIN ${args[*]}"
    fi
}

start_portcullis portcullis "$TMP/gateway" "$ADMIN_PORT"
check_body portcullis "http://127.0.0.1:$GW_PORT/"
log "portcullis ready (pid ${TPID[portcullis]})"

# --------------------------------------------------------------------------
# 3b. Signed-in route: the development identity provider, two gateways and a
#     session on each (skipped with --no-auth)
# --------------------------------------------------------------------------
# `portcullis run` cannot host the development identity provider; `portcullis demo` runs
# it (beside a demo gateway and app that this benchmark does not use). The provider has
# exactly one client, whose one redirect URI is the demo gateway's callback and whose
# secret the demo writes to <its config dir>/client-secret. The two measured gateways
# use that client: their public_url is the demo's origin, so the redirect_uri they send
# and redeem the code with is the registered one, and the script hands the provider's
# answer (code, state, iss) to the measured gateway's own callback. Everything else is
# the real login: PKCE, state, nonce, browser binding cookie, signed ID token, session.
BENCH_UA="portcullis-bench/1.0"   # the browser: at sign-in (curl) and under load (wrk)
BENCH_USER=alice                  # demo user: password login (acr below the route's mfa step-up)
declare -A SID                    # target -> its session cookie's value

# metric ADMIN-PORT NAME [LABEL="VALUE"...]: the sum of NAME's samples having every label.
metric() {
    local port=$1 name=$2
    shift 2
    curl -sf --max-time 2 "http://127.0.0.1:$port/metrics" | awk -v name="$name" -v want="$*" '
        BEGIN { n = split(want, w, " ") }
        /^#/ { next }
        {
            split($1, a, "{"); if (a[1] != name) next
            for (i = 1; i <= n; i++) if (index($1, w[i]) == 0) next
            sum += $NF
        }
        END { printf "%d\n", sum }'
}

# hop NAME WHAT EXPECT-CODE EXPECT-LOCATION-PREFIX CURL-ARGS...: one step of the login;
# prints the Location.
hop() {
    local name=$1 what=$2 want=$3 prefix=$4 out code loc
    shift 4
    out="$(curl -s --max-time 5 -A "$BENCH_UA" -o /dev/null -w '%{http_code} %{redirect_url}' "$@")" \
        || die "$name: sign-in, $what: curl failed"
    code="${out%% *}"; loc="${out#* }"
    [[ "$code" == "$want" && "$loc" == "$prefix"* ]] \
        || die "$name: sign-in, $what: HTTP $code to '$loc', expected $want to $prefix..."
    printf '%s\n' "$loc"
}

# sign_in NAME PORT: signs in at gateway NAME as $BENCH_USER with a cookie jar, and keeps
# the session cookie's value in SID[NAME].
sign_in() {
    local name=$1 gw="http://127.0.0.1:$2" pub="http://127.0.0.1:$DEMO_PORT"
    local jar="$TMP/login/$name.jar" page="$TMP/login/$name-authorize.html"
    local idp="http://127.0.0.1:$IDP_PORT" loc code f v sid fields=()
    local c=(-b "$jar" -c "$jar")
    # Signed out: a browser navigation is sent to log in, an API client gets 401.
    loc="$(hop "$name" "GET / without a session" 302 "$pub/.portcullis/login?" "$gw/")"
    code="$(curl -s --max-time 5 -A "$BENCH_UA" -H 'Accept: application/json' -o /dev/null -w '%{http_code}' "$gw/" || true)"
    [[ "$code" == 401 ]] || die "$name: GET / without a session, as an API client: HTTP '$code', expected 401"
    # Login start, at this gateway (the path of the login URL, on this gateway's port).
    loc="$(hop "$name" "login start" 302 "$idp/authorize?" "${c[@]}" "$gw${loc#"$pub"}")"
    # The provider's page; choose the user (the form's hidden fields, plus user=).
    code="$(curl -s --max-time 5 -A "$BENCH_UA" "${c[@]}" -o "$page" -w '%{http_code}' "$loc" || true)"
    [[ "$code" == 200 ]] || die "$name: sign-in, provider's page: HTTP '$code'"
    for f in state nonce code_challenge; do
        v="$(grep -o "name=\"$f\" value=\"[^\"]*\"" "$page" | head -n 1 | sed 's/.*value="//; s/"$//')"
        [[ -n "$v" ]] || die "$name: sign-in: no '$f' field on the provider's page"
        fields+=(--data-urlencode "$f=$v")
    done
    loc="$(hop "$name" "choosing $BENCH_USER" 303 "$pub/.portcullis/callback?" \
        "${c[@]}" "${fields[@]}" --data-urlencode "user=$BENCH_USER" "$idp/authorize/approve")"
    # The callback, at this gateway: code exchange, ID token checks, a new session.
    hop "$name" "callback" 302 "$pub/" "${c[@]}" "$gw${loc#"$pub"}" >/dev/null
    sid="$(awk -F'\t' '$6 == "portcullis" { v = $7 } END { print v }' "$jar")"
    [[ "$sid" =~ ^[A-Za-z0-9_-]{32,}$ ]] || die "$name: sign-in: no session cookie in $jar"
    SID[$name]="$sid"
    # The session cookie alone, as wrk will send it, reaches the upstream.
    check_body "$name" "$gw/" -H "Cookie: portcullis=$sid" -A "$BENCH_UA"
}

if ((AUTH)); then
    # The demo writes its configuration (and the client secret) under $TMPDIR.
    start_portcullis demo "$TMP/demo" "$DEMO_ADMIN_PORT" '"status":"ready"' "TMPDIR=$TMP/demo" \
        -- demo --port "$DEMO_PORT" --admin-port "$DEMO_ADMIN_PORT"
    demo_dirs=("$TMP"/demo/portcullis-demo-*/)
    DEMO_CONF="${demo_dirs[0]}"
    [[ -n "$DEMO_CONF" && -f "$DEMO_CONF/gateway.yaml" && -f "$DEMO_CONF/client-secret" ]] \
        || die "demo: no configuration written under $TMP/demo"
    IDP_PORT="$(sed -n 's|^ *issuer: *"http://127\.0\.0\.1:\([0-9][0-9]*\)".*|\1|p' "$DEMO_CONF/gateway.yaml" | head -n 1)"
    [[ "$IDP_PORT" =~ ^[0-9]+$ ]] || die "demo: cannot read its provider's issuer from $DEMO_CONF/gateway.yaml"
    IDP_SECRET="${DEMO_CONF%/}/client-secret"
    log "development identity provider on 127.0.0.1:$IDP_PORT (portcullis demo, pid ${TPID[demo]})"

    render "$CONF_DIR/gateway-auth.yaml" "$TMP/gateway-auth/gateway.yaml"
    render "$CONF_DIR/policies-auth/auth.yaml" "$TMP/gateway-auth/policies/auth.yaml"
    render "$CONF_DIR/gateway-auth-risk.yaml" "$TMP/gateway-auth-risk/gateway.yaml"
    render "$CONF_DIR/policies-auth-risk/auth-risk.yaml" "$TMP/gateway-auth-risk/policies/auth-risk.yaml"
    # "ready" (not "degraded"): the provider is discovered and its keys are loaded.
    start_portcullis portcullis-auth "$TMP/gateway-auth" "$AUTH_ADMIN_PORT" '"status":"ready"'
    start_portcullis portcullis-auth-risk "$TMP/gateway-auth-risk" "$RISK_ADMIN_PORT" '"status":"ready"'

    sign_in portcullis-auth "$AUTH_PORT"
    sign_in portcullis-auth-risk "$RISK_PORT"
    [[ "${#SID[portcullis-auth]}" == "${#SID[portcullis-auth-risk]}" ]] \
        || die "the two session cookies differ in length; the requests would not be the same size"
    # The risk route really decides by risk: the same session from another browser scores
    # 10 + 30 (new device) + 30 (user_agent_changed) = 70 and is sent to step up; on the
    # baseline the same request passes.
    check_body portcullis-auth "http://127.0.0.1:$AUTH_PORT/" \
        -H "Cookie: portcullis=${SID[portcullis-auth]}" -A "other-browser/1.0"
    out="$(curl -s --max-time 5 -A "other-browser/1.0" -H "Cookie: portcullis=${SID[portcullis-auth-risk]}" \
        -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$RISK_PORT/" || true)"
    [[ "$out" == "302 http://127.0.0.1:$DEMO_PORT/.portcullis/login?"*"step_up=account"* ]] \
        || die "portcullis-auth-risk: a changed User-Agent answered '$out', expected a 302 to step up"
    log "signed in as $BENCH_USER on portcullis-auth and portcullis-auth-risk; another User-Agent is stepped up on the risk route only"
fi

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
declare -A ADMIN=()
if ((AUTH)); then
    TARGETS+=(portcullis-auth portcullis-auth-risk)
    PORT+=([portcullis-auth]=$AUTH_PORT [portcullis-auth-risk]=$RISK_PORT)
    ADMIN+=([portcullis-auth]=$AUTH_ADMIN_PORT [portcullis-auth-risk]=$RISK_ADMIN_PORT)
fi
SOCKET_ERRORS=0
declare -A SEEN   # signed-in targets: what their metrics say about the measured requests

# route_counts NAME: the signed-in route's counters on NAME's admin listener: requests
# answered, of them 2xx, risk decisions, of them allowed with new_device as top signal,
# rate-limit refusals.
route_counts() {
    local a=${ADMIN[$1]} r='route="account"' n all ok risk allow limited
    all="$(metric "$a" portcullis_requests_total "$r")" || die "$1: cannot read its metrics"
    ok="$(metric "$a" portcullis_requests_total "$r" 'status_class="2xx"')" || die "$1: cannot read its metrics"
    risk="$(metric "$a" portcullis_risk_decisions_total "$r")" || die "$1: cannot read its metrics"
    allow="$(metric "$a" portcullis_risk_decisions_total "$r" 'outcome="allow"' 'mode="enforce"' 'top_signal="new_device"')" \
        || die "$1: cannot read its metrics"
    limited="$(metric "$a" portcullis_rate_limited_total)" || die "$1: cannot read its metrics"
    for n in "$all" "$ok" "$risk" "$allow" "$limited"; do
        [[ "$n" =~ ^[0-9]+$ ]] || die "$1: unreadable metrics ($all $ok $risk $allow $limited)"
    done
    echo "$all $ok $risk $allow $limited"
}

# check_signed_in NAME BEFORE AFTER: every request of the warm-up and the measured run
# was answered 2xx on the signed-in route (wrk counts 3xx, such as a redirect to log in,
# as successes), none was rate-limited, and on the risk target every one was scored and
# allowed (the score 40 has new_device as its top signal); on the baseline none was scored.
check_signed_in() {
    local name=$1 b a d_all d_ok d_risk d_allow d_lim
    read -r -a b <<<"$2"; read -r -a a <<<"$3"
    d_all=$((a[0] - b[0])); d_ok=$((a[1] - b[1])); d_risk=$((a[2] - b[2]))
    d_allow=$((a[3] - b[3])); d_lim=$((a[4] - b[4]))
    ((d_all == d_ok)) || die "$name: $((d_all - d_ok)) of $d_all requests on the signed-in route were not answered 2xx (session lost?)"
    ((d_ok >= REQS[$name])) || die "$name: the gateway counted $d_ok requests on the route, wrk $((REQS[$name]))"
    ((d_lim == 0)) || die "$name: $d_lim requests were rate-limited"
    if [[ "$name" == portcullis-auth-risk ]]; then
        # Requests still in flight when wrk stops are scored but, their client gone, not
        # counted as answered: at most one per connection of the warm-up and the run.
        ((d_allow == d_risk && d_risk >= d_ok && d_risk <= d_ok + WARMUP_CONNECTIONS + CONNECTIONS)) \
            || die "$name: $d_ok requests but $d_risk risk decisions ($d_allow allowed with top signal new_device)"
    else
        ((d_risk == 0)) || die "$name: $d_risk risk decisions on the baseline"
    fi
    SEEN[$name]="$d_ok requests (warm-up included) all 2xx, $d_risk risk decisions ($d_allow allow), $d_lim rate-limited"
    log "$name: ${SEEN[$name]}"
}

run_target() {
    local name=$1 url="http://127.0.0.1:${PORT[$1]}/" out="$TMP/wrk/$1.txt" v e hdr=() before=""
    # Signed-in targets: the session cookie and the User-Agent of the sign-in.
    if [[ -n "${SID[$name]:-}" ]]; then
        hdr=(-H "Cookie: portcullis=${SID[$name]}" -H "User-Agent: $BENCH_UA")
        before="$(route_counts "$name")"
    fi
    log "$name: warm-up (wrk ${WARMUP_ARGS[*]})"
    timeout 30 wrk "${WARMUP_ARGS[@]}" "${hdr[@]}" "$url" >"$TMP/wrk/$name-warmup.txt" 2>&1 \
        || { cat "$TMP/wrk/$name-warmup.txt" >&2; die "$name: warm-up wrk failed"; }
    log "$name: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency${hdr[*]:+ (with session cookie and User-Agent)} $url"
    local t0 t1
    t0="$(cpu_ticks "${TPID[$name]}")"
    timeout $((DURATION + 30)) wrk "-t$THREADS" "-c$CONNECTIONS" "-d${DURATION}s" --latency "${hdr[@]}" "$url" >"$out" 2>&1 \
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
    if [[ -n "$before" ]]; then check_signed_in "$name" "$before" "$(route_counts "$name")"; fi
    # The target must still be serving correctly after the load.
    check_body "$name" "$url" "${hdr[@]}"
}

# Rounds interleave the targets, so a slow patch of the machine hits all of them; the
# median of each figure over the rounds is reported.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Other work on the machine skews every figure: the load average is recorded.
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
T_START=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS"
    order=("${TARGETS[@]}")
    # The two signed-in targets are measured back to back, in turns first.
    if ((AUTH && round % 2 == 0)); then
        order[-2]=portcullis-auth-risk; order[-1]=portcullis-auth
    fi
    for t in "${order[@]}"; do
        run_target "$t"
        ALL_RPS[$t]+=" ${RPS[$t]}"; ALL_P50[$t]+=" ${P50[$t]}"
        ALL_P99[$t]+=" ${P99[$t]}"; ALL_CPU[$t]+=" ${CPU[$t]}"
    done
done
for t in "${TARGETS[@]}"; do
    RPS[$t]="$(median <<<"${ALL_RPS[$t]}")"; P50[$t]="$(median <<<"${ALL_P50[$t]}")"
    P99[$t]="$(median <<<"${ALL_P99[$t]}")"; CPU[$t]="$(median <<<"${ALL_CPU[$t]}")"
done

LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
MEASURE_SECS=$((SECONDS - T_START))

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
# per_round A B FIGURE: A / B within each round (the pair is measured back to back).
per_round() {
    local -n fig=$3
    local a b i out=""
    read -r -a a <<<"${fig[$1]}"; read -r -a b <<<"${fig[$2]}"
    for i in "${!a[@]}"; do out+="$(ratio "${a[$i]}" "${b[$i]:-0}") "; done
    echo "${out% }"
}
AUTH_RATIOS=()   # "label|value" lines of the signed-in targets
if ((AUTH)); then
    AUTH_RATIOS=(   # "figure|A / B|value"
        "throughput|portcullis-auth-risk / portcullis-auth|$(ratio "${RPS[portcullis-auth-risk]}" "${RPS[portcullis-auth]}")"
        "p50|portcullis-auth-risk / portcullis-auth|$(ratio "${P50[portcullis-auth-risk]}" "${P50[portcullis-auth]}")"
        "p99|portcullis-auth-risk / portcullis-auth|$(ratio "${P99[portcullis-auth-risk]}" "${P99[portcullis-auth]}")"
        "cpu us/req|portcullis-auth-risk / portcullis-auth|$(ratio "${CPU[portcullis-auth-risk]}" "${CPU[portcullis-auth]}")"
        "throughput|portcullis-auth / portcullis (public)|$(ratio "${RPS[portcullis-auth]}" "${RPS[portcullis]}")"
        "cpu us/req|portcullis-auth / portcullis (public)|$(ratio "${CPU[portcullis-auth]}" "${CPU[portcullis]}")"
    )
    RISK_ROUNDS_RPS="$(per_round portcullis-auth-risk portcullis-auth ALL_RPS)"
    RISK_ROUNDS_CPU="$(per_round portcullis-auth-risk portcullis-auth ALL_CPU)"
fi

# Terminal table
{
    echo
    echo "Portcullis benchmark  $DATE  commit $COMMIT  nproc $NPROC"
    echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (after wrk ${WARMUP_ARGS[*]} warm-up), loopback; median of $ROUNDS interleaved rounds"
    echo "load average before: $LOAD_START, after: $LOAD_END; rounds took ${MEASURE_SECS} s"
    echo
    printf '%-21s %10s %9s %9s %12s %7s\n' target req/s "p50 ms" "p99 ms" "cpu us/req" errors
    printf '%-21s %10s %9s %9s %12s %7s\n' --------------------- ---------- --------- --------- ------------ -------
    for t in "${TARGETS[@]}"; do
        printf '%-21s %10.0f %9.3f %9.3f %12s %7s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${CPU[$t]}" "${ERRS[$t]}"
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
    if ((AUTH)); then
        echo
        for line in "${AUTH_RATIOS[@]}"; do
            IFS='|' read -r fig pair val <<<"$line"
            printf '%-11s %-40s %s\n' "$fig" "$pair" "$val"
        done
        printf '%-52s %s\n' "per round: throughput auth-risk / auth" "$RISK_ROUNDS_RPS"
        printf '%-52s %s\n' "per round: cpu us/req auth-risk / auth" "$RISK_ROUNDS_CPU"
        for t in portcullis-auth portcullis-auth-risk; do printf '%-21s %s\n' "$t:" "${SEEN[$t]}"; done
    fi
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
    echo "- Load average (1, 5, 15 min) before the rounds: $LOAD_START; after: $LOAD_END; rounds took ${MEASURE_SECS} s"
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
    if ((AUTH)); then
        for line in "${AUTH_RATIOS[@]}"; do
            IFS='|' read -r fig pair val <<<"$line"
            printf '| %s: %s | %s |\n' "${fig/cpu us\/req/CPU µs per request}" "$pair" "$val"
        done
    fi
    echo
    if ((AUTH)); then
        echo "Signed-in targets (\`portcullis-auth\`, \`portcullis-auth-risk\`): one session each, signed in as"
        echo "\`$BENCH_USER\` at the development provider of \`portcullis demo\` (scripted with curl);"
        echo "wrk sends \`Cookie: portcullis=<session id>\` and \`User-Agent: $BENCH_UA\`."
        echo "Per-round ratios auth-risk / auth: throughput $RISK_ROUNDS_RPS; CPU µs/req $RISK_ROUNDS_CPU."
        echo "Checked from each gateway's metrics over the last round's warm-up and run:"
        for t in portcullis-auth portcullis-auth-risk; do echo "- $t: ${SEEN[$t]}"; done
        echo
    fi
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
