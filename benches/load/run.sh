#!/usr/bin/env bash
# authgate load test: authgate (session / HS256 / EdDSA cookies, default configuration: access log
# on) against a direct nginx upstream, nginx as a plain proxy (access log off and on) and HAProxy
# verifying JWTs (HS256 / ES256), all on 127.0.0.1, interleaved rounds with wrk; then a login storm
# and the session-memory bench. See benches/load/README.md.
#
#   benches/load/run.sh                 # full run (DURATION=10 CONNECTIONS=64 ROUNDS=3), layout "default"
#   QUICK=1 benches/load/run.sh         # smoke check: 3 s runs, 1 round
#   PIN=1 benches/load/run.sh           # servers and wrk on separate cores (taskset); on 2 cores
#                                       # layout "one-core-shared": servers + upstream on cpu 0, wrk on cpu 1
#
# Every setting is an environment variable; the flags below are shorthands. Every process this
# script starts is stopped by pid when it exits (normally, on error or on Ctrl-C).
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LIB="$HERE/loadlib.py"

usage() {
  cat <<'EOF'
usage: benches/load/run.sh [--quick] [--pin] [--skip-memory] [--keep] [--duration S]
                           [--connections N] [--rounds N] [--threads N] [--targets "a b ..."]

Environment (flags above set the same variables):
  DURATION=10          seconds per wrk run (a trailing "s" is accepted)
  CONNECTIONS=64       wrk connections for the throughput runs
  ROUNDS=3             interleaved rounds (A B C, B C A, C A B ...: each round starts one target
                       later); the table shows medians
  THREADS              wrk threads (default: number of load-generator cores, at least 1)
  WARMUP=1             seconds of unrecorded load per target before the rounds (0 = none)
  LAT_DURATION         seconds of the 1-connection latency run per target (default DURATION)
  LAT_ROUNDS           interleaved rounds of the 1-connection runs (default ROUNDS); medians shown
  PIN=0                1: taskset servers and load generator onto separate cores (on 2 cores the
                       "one-core-shared" layout: servers and upstream on cpu 0, wrk on cpu 1);
                       0: the "default" layout, nothing pinned
  UPSTREAM_CPUS, SERVER_CPUS, LOAD_CPUS   cpu lists used with PIN=1 (defaults from nproc)
  QUICK=0              1: DURATION=3 ROUNDS=1 WARMUP=1 unless set explicitly
  TARGETS              subset of: upstream nginx-proxy nginx-proxy-log hyper-floor haproxy-hs256
                       haproxy-es256 authgate-session authgate-nolog authgate-metrics
                       authgate-hs256 authgate-eddsa authgate-redis authgate-redis-nol1
                       (nginx-proxy-log: nginx-proxy with its access log on; authgate-nolog /
                       authgate-metrics: authgate-session with [log] access_log = false / with
                       [metrics] listen = "127.0.0.1:0"; authgate-redis / -redis-nol1: session
                       mode on Redis with its L1 cache, and the oauth2-proxy way: one Redis GET per
                       request, a bench-only switch). Default: all of them
  AUTHGATE_RUST_LOG    RUST_LOG of the authgate instances (default: unset, authgate's own default
                       "info", under which the access log is written; a RUST_LOG in the caller's
                       environment is not passed on)
  AUTHGATE_WORKERS=1   [server] workers of every authgate instance
  AUTHGATE_RUNTIME=thread-per-core   [server] runtime (or work-stealing)
  JWT_CACHE_SIZE       [auth.jwt] cache_size of the JWT instances (default: authgate's default)
  HASH_POOL            [auth] login_concurrency of the authgate instances (default: authgate's: one per core, at most 4)
  SKIP_STORM=0         1: skip the login storm
  LOGIN_RATE=50        logins/s during the storm (open loop); 0 = closed loop, LOGIN_CONCURRENCY
                       clients logging in back to back (e.g. LOGIN_RATE=0 LOGIN_CONCURRENCY=200)
  LOGIN_CONCURRENCY=200  cap on logins in flight (open loop) / number of clients (closed loop)
  STORM_CONNECTIONS=16 wrk connections of the authenticated GET traffic during the storm
  STORM_GET_RATE=2000  offered GET rate (per-connection pacing in wrk); 0 = as fast as possible
  SKIP_MEMORY=0        1: skip `cargo bench --bench session_memory` (SESSIONS=N passes through)
  PERF=0               1: sample the authgate targets' CPU with `perf record -e cpu-clock` during
                       every throughput run and report the share of its log writer thread and
                       of its access-log code (needs perf: apt-get install linux-perf)
  SKIP_BUILD=0         1: use the existing target/release/authgate
  SKIP_INSTALL=0       1: never call apt-get (fail if nginx/haproxy/wrk are missing)
  KEEP_WORK=0          1: keep the temporary work dir (configs, keys, logs)
  RESULTS_DIR          where results-<timestamp>.json goes (default target/load)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --pin) PIN=1 ;;
    --skip-memory) SKIP_MEMORY=1 ;;
    --skip-storm) SKIP_STORM=1 ;;
    --keep) KEEP_WORK=1 ;;
    --duration) DURATION="$2"; shift ;;
    --connections) CONNECTIONS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --targets) TARGETS="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
  DURATION="${DURATION:-3}"; ROUNDS="${ROUNDS:-1}"; WARMUP="${WARMUP:-1}"
fi
DURATION="${DURATION:-10}"; DURATION="${DURATION%s}"
CONNECTIONS="${CONNECTIONS:-64}"
ROUNDS="${ROUNDS:-3}"
WARMUP="${WARMUP:-1}"; WARMUP="${WARMUP%s}"
LAT_DURATION="${LAT_DURATION:-$DURATION}"; LAT_DURATION="${LAT_DURATION%s}"
LAT_ROUNDS="${LAT_ROUNDS:-$ROUNDS}"
PIN="${PIN:-0}"
AUTHGATE_WORKERS="${AUTHGATE_WORKERS:-1}"
AUTHGATE_RUNTIME="${AUTHGATE_RUNTIME:-thread-per-core}"
JWT_CACHE_SIZE="${JWT_CACHE_SIZE:-}"
HASH_POOL="${HASH_POOL:-}"
SKIP_STORM="${SKIP_STORM:-0}"
LOGIN_RATE="${LOGIN_RATE:-50}"
LOGIN_CONCURRENCY="${LOGIN_CONCURRENCY:-200}"
STORM_CONNECTIONS="${STORM_CONNECTIONS:-16}"
STORM_GET_RATE="${STORM_GET_RATE:-2000}"
SKIP_MEMORY="${SKIP_MEMORY:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
PERF="${PERF:-0}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"
KEEP_WORK="${KEEP_WORK:-0}"
RESULTS_DIR="${RESULTS_DIR:-$ROOT/target/load}"
AUTHGATE_RUST_LOG="${AUTHGATE_RUST_LOG:-}"
ALL_TARGETS="upstream nginx-proxy nginx-proxy-log hyper-floor haproxy-hs256 haproxy-es256 authgate-session authgate-nolog authgate-metrics authgate-hs256 authgate-eddsa authgate-redis authgate-redis-nol1"
TARGETS="${TARGETS:-$ALL_TARGETS}"

die() { echo "run.sh: $*" >&2; exit 1; }
say() { echo "== $*"; }
is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }
in_list() { case " $1 " in *" $2 "*) return 0 ;; *) return 1 ;; esac; } # LIST WORD
drop() { local out="" x; for x in $1; do [ "$x" = "$2" ] || out+="${out:+ }$x"; done; echo "$out"; } # LIST WORD
for v in DURATION CONNECTIONS ROUNDS WARMUP LAT_DURATION LAT_ROUNDS AUTHGATE_WORKERS LOGIN_CONCURRENCY \
         STORM_CONNECTIONS STORM_GET_RATE; do
  is_uint "${!v}" || die "$v must be a whole number (got '${!v}')"
done
case "$AUTHGATE_RUNTIME" in thread-per-core|work-stealing) ;; *) die "AUTHGATE_RUNTIME must be thread-per-core or work-stealing" ;; esac
[ "$DURATION" -ge 1 ] && [ "$ROUNDS" -ge 1 ] && [ "$CONNECTIONS" -ge 1 ] || die "DURATION, ROUNDS, CONNECTIONS must be >= 1"
for t in $TARGETS; do
  case " $ALL_TARGETS " in *" $t "*) ;; *) die "unknown target '$t' (known: $ALL_TARGETS)" ;; esac
done

# --------------------------------------------------------------------------- cores and pinning
NPROC="$(nproc)"
if [ "$NPROC" -ge 3 ]; then
  UPSTREAM_CPUS="${UPSTREAM_CPUS:-0}"; SERVER_CPUS="${SERVER_CPUS:-1}"; LOAD_CPUS="${LOAD_CPUS:-2-$((NPROC - 1))}"
elif [ "$NPROC" -eq 2 ]; then
  UPSTREAM_CPUS="${UPSTREAM_CPUS:-0}"; SERVER_CPUS="${SERVER_CPUS:-0}"; LOAD_CPUS="${LOAD_CPUS:-1}"
else
  UPSTREAM_CPUS="${UPSTREAM_CPUS:-0}"; SERVER_CPUS="${SERVER_CPUS:-0}"; LOAD_CPUS="${LOAD_CPUS:-0}"
fi
cpu_count() { # number of cpus in a taskset list like "2-5,7"
  local n=0 part a b
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ "$part" == *-* ]]; then a="${part%-*}"; b="${part#*-}"; n=$((n + b - a + 1)); else n=$((n + 1)); fi
  done
  echo "$n"
}
if [ "$PIN" = 1 ]; then
  [ "$NPROC" -ge 2 ] || echo "WARNING: PIN=1 on a single core: servers and wrk share it" >&2
  command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
  PIN_UP=(taskset -c "$UPSTREAM_CPUS"); PIN_SRV=(taskset -c "$SERVER_CPUS"); PIN_LOAD=(taskset -c "$LOAD_CPUS")
  DEFAULT_THREADS="$(cpu_count "$LOAD_CPUS")"
else
  PIN_UP=(); PIN_SRV=(); PIN_LOAD=()
  DEFAULT_THREADS=$(( NPROC / 2 )); [ "$DEFAULT_THREADS" -ge 1 ] || DEFAULT_THREADS=1
fi
# The layout's name for the report: "default" (nothing pinned), "one-core-shared" (the servers under
# test and the upstream share one cpu, wrk elsewhere: PIN=1 on two cores) or "pinned" (any other
# PIN=1 split, e.g. the upstream on a core of its own with three or more cores).
if [ "$PIN" != 1 ]; then
  LAYOUT="default"; LAYOUT_DESC="unpinned: servers, upstream and wrk share all $NPROC cpu(s)"
elif [ "$UPSTREAM_CPUS" = "$SERVER_CPUS" ] && [ "$(cpu_count "$SERVER_CPUS")" -eq 1 ]; then
  LAYOUT="one-core-shared"; LAYOUT_DESC="servers and upstream on cpu $SERVER_CPUS, wrk on cpu(s) $LOAD_CPUS"
else
  LAYOUT="pinned"; LAYOUT_DESC="upstream on cpu(s) $UPSTREAM_CPUS, servers on cpu(s) $SERVER_CPUS, wrk on cpu(s) $LOAD_CPUS"
fi
THREADS="${THREADS:-$DEFAULT_THREADS}"
is_uint "$THREADS" && [ "$THREADS" -ge 1 ] || die "THREADS must be >= 1"
[ "$THREADS" -le "$CONNECTIONS" ] || THREADS="$CONNECTIONS"
STORM_THREADS="$THREADS"; [ "$STORM_THREADS" -le "$STORM_CONNECTIONS" ] || STORM_THREADS="$STORM_CONNECTIONS"

# HAProxy needs ~2 descriptors per connection and refuses to start if it cannot get them.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"; [ "$NOFILE" = unlimited ] && NOFILE=1048576
HAP_MAXCONN=$(( (NOFILE - 64) / 2 )); [ "$HAP_MAXCONN" -le 4096 ] || HAP_MAXCONN=4096
[ "$CONNECTIONS" -lt "$HAP_MAXCONN" ] || die "CONNECTIONS=$CONNECTIONS needs a higher open-file limit (ulimit -n is $NOFILE)"

# --------------------------------------------------------------------------- process bookkeeping
PIDS=()      # long-running servers, in start order
NAMES=()
TRANSIENT=() # wrk currently running
STORM_PID="" # login stream currently running
WORK=""
CREATED_POLICY=0

stop_pid() { # TERM, wait up to 5 s, then KILL (children too: nginx workers)
  local pid="$1" kids i
  kill -0 "$pid" 2>/dev/null || return 0
  kids="$(pgrep -P "$pid" 2>/dev/null || true)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP ERR
  set +e
  local p i
  for p in "${TRANSIENT[@]}" $STORM_PID; do stop_pid "$p"; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [ "$CREATED_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    # Kept on failure for its logs (Ctrl-C / kill: removed); it holds the bench keys, mode 0700.
    if [ "$KEEP_WORK" = 1 ] || { [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ] && [ "$rc" -ne 129 ]; }; then
      echo "work dir kept: $WORK" >&2
    else
      rm -rf "$WORK"
    fi
  fi
  [ "$rc" -eq 0 ] || echo "run.sh: exiting with status $rc" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# start NAME PIN_ARRAY_NAME ENV... -- CMD...: background process, pid recorded for cleanup
start() {
  local name="$1" pinvar="$2"; shift 2
  local -n pinref="$pinvar"
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "${pinref[@]}" "$@" >"$WORK/log/$name.log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name")
  eval "PID_${name//-/_}=$!"
}

wait_ready() { # NAME PORT
  local name="$1" port="$2" pidvar="PID_${1//-/_}"
  if ! python3 "$LIB" wait-port "$port" 10; then
    cat "$WORK/log/$name.log" >&2 || true
    die "$name did not start listening on 127.0.0.1:$port"
  fi
  sleep 0.2
  if ! kill -0 "${!pidvar}" 2>/dev/null; then
    cat "$WORK/log/$name.log" >&2 || true
    die "$name exited right after start (port $port taken by someone else?)"
  fi
}

# --------------------------------------------------------------------------- machine
CPU_MODEL="$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -1)"
KERNEL="$(uname -srm)"
say "machine: nproc=$NPROC cpu: ${CPU_MODEL:-unknown} kernel: $KERNEL"
say "settings: DURATION=${DURATION}s CONNECTIONS=$CONNECTIONS ROUNDS=$ROUNDS THREADS=$THREADS PIN=$PIN QUICK=$QUICK"
say "layout: $LAYOUT ($LAYOUT_DESC)"

# --------------------------------------------------------------------------- build and tools
if [ "$SKIP_BUILD" != 1 ]; then
  say "cargo build --release --bins --example hyper_floor"
  (cd "$ROOT" && cargo build --release --bins --example hyper_floor) || die "cargo build --release failed"
fi
AG="$ROOT/target/release/authgate"
[ -x "$AG" ] || die "$AG missing (build it or unset SKIP_BUILD)"
FLOOR="$ROOT/target/release/examples/hyper_floor"
[ -x "$FLOOR" ] || die "$FLOOR missing (cargo build --release --example hyper_floor, or unset SKIP_BUILD)"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
[ "$PERF" != 1 ] || command -v perf >/dev/null 2>&1 || need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then
  [ "$SKIP_INSTALL" != 1 ] || die "missing: ${need[*]} (SKIP_INSTALL=1)"
  [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
  say "apt-get install ${need[*]} (distro services are not started)"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Keeps the packages' postinst from starting nginx/haproxy on port 80 (removed again below).
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    CREATED_POLICY=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" \
      || die "apt-get install ${need[*]} failed"
  fi
  if [ "$CREATED_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; CREATED_POLICY=0; fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
HAPROXY_VERSION="$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([0-9.]*\).*/\1/p' | head -1)"
case "$HAPROXY_VERSION" in
  1.*|2.[0-4]|2.[0-4].*|"") die "HAProxy ${HAPROXY_VERSION:-?} has no jwt_verify (needs 2.5+)" ;;
esac
NGINX_VERSION="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
WRK_VERSION="$(wrk -v 2>&1 | sed -n 's/^wrk \([^ ]*\).*/\1/p' | head -1 || true)"
say "tools: nginx $NGINX_VERSION, haproxy $HAPROXY_VERSION, wrk ${WRK_VERSION:-?}, $("$AG" --version)"

# --------------------------------------------------------------------------- work dir, keys, users
WORK="$(mktemp -d /tmp/authgate-load.XXXXXX)"
chmod 700 "$WORK"
mkdir -p "$WORK/log" "$WORK/keys" "$WORK/nginx-up" "$WORK/nginx-proxy" "$WORK/nginx-proxy-log"
RAW="$WORK/raw.txt"; : >"$RAW"
META="$WORK/meta.txt"
say "work dir: $WORK"

"$AG" gen-jwt-key --alg HS256 --out "$WORK/keys/hs" >/dev/null
"$AG" gen-jwt-key --alg EdDSA --out "$WORK/keys/ed" >/dev/null
"$AG" gen-jwt-key --alg ES256 --out "$WORK/keys/es" >/dev/null
HS_SECRET="$(tr -d '\r\n' <"$WORK/keys/hs.secret")"
[ "${#HS_SECRET}" -ge 32 ] || die "HS256 secret shorter than 32 bytes"
# Goes verbatim into haproxy.cfg: must not need quoting.
[[ "$HS_SECRET" =~ ^[A-Za-z0-9_-]+$ ]] || die "HS256 secret has characters unsafe for haproxy.cfg"

BENCH_USER="bench"
BENCH_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
HASH="$(printf '%s' "$BENCH_PASSWORD" | "$AG" hash-password)"
cat >"$WORK/users.toml" <<EOF
[[users]]
username = "$BENCH_USER"
password_hash = "$HASH"
email = "bench@example.com"
name = "Bench User"
groups = ["bench"]
EOF
LOGIN_JSON="{\"username\":\"$BENCH_USER\",\"password\":\"$BENCH_PASSWORD\"}"

# --------------------------------------------------------------------------- ports and configs
read -r P_UP P_NGX P_HAP_HS P_HAP_ES P_AG_SESS P_AG_HS P_AG_ED P_AG_ES P_FLOOR P_REDIS P_AG_RED P_AG_RED0 \
        P_NGX_LOG P_AG_NOLOG P_AG_MET <<<"$(python3 "$LIB" ports 15)"

nginx_common() { # DIR
  cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
{
  nginx_common "$WORK/nginx-up"
  cat <<EOF
http {
  access_log off;
  client_body_temp_path $WORK/nginx-up/body; proxy_temp_path $WORK/nginx-up/proxy;
  fastcgi_temp_path $WORK/nginx-up/fastcgi; uwsgi_temp_path $WORK/nginx-up/uwsgi; scgi_temp_path $WORK/nginx-up/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$P_UP;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
}
EOF
} >"$WORK/nginx-up/nginx.conf"
nginx_proxy_cfg() { # DIR PORT ACCESS_LOG  (ACCESS_LOG: "off" or a file path)
  nginx_common "$1"
  cat <<EOF
http {
  access_log $3;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  upstream up {
    server 127.0.0.1:$P_UP;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}
nginx_proxy_cfg "$WORK/nginx-proxy" "$P_NGX" off >"$WORK/nginx-proxy/nginx.conf"
# nginx's default access log: the "combined" format, no buffer= (one write per request).
NGX_ACCESS_LOG="$WORK/nginx-proxy-log/access.log"
nginx_proxy_cfg "$WORK/nginx-proxy-log" "$P_NGX_LOG" "$NGX_ACCESS_LOG" >"$WORK/nginx-proxy-log/nginx.conf"

haproxy_cfg() { # PORT ALG KEY  (KEY: the secret for HS256, a public key PEM path otherwise)
  cat <<EOF
global
    nbthread 1
    maxconn $HAP_MAXCONN
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 120s
frontend fe
    bind 127.0.0.1:$1
    http-request set-var(txn.bearer) req.cook(authgate)
    http-request deny unless { var(txn.bearer),jwt_header_query('\$.alg') -m str $2 }
    http-request deny unless { var(txn.bearer),jwt_verify("$2","$3") -m int 1 }
    default_backend be
backend be
    http-reuse always
    server up 127.0.0.1:$P_UP
EOF
}
haproxy_cfg "$P_HAP_HS" HS256 "$HS_SECRET" >"$WORK/haproxy-hs256.cfg"
haproxy_cfg "$P_HAP_ES" ES256 "$WORK/keys/es.pub.pem" >"$WORK/haproxy-es256.cfg"
chmod 600 "$WORK/haproxy-hs256.cfg"

authgate_cfg() { # PORT MODE [ALG KEYFILE]
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
public_url = "http://127.0.0.1:$1"
workers = $AUTHGATE_WORKERS
runtime = "$AUTHGATE_RUNTIME"
shutdown_grace = "1s"

[auth]
mode = "$2"
users_file = "users.toml"
EOF
  [ -z "$HASH_POOL" ] || echo "login_concurrency = $HASH_POOL"
  if [ "$2" = jwt ]; then
    cat <<EOF

[auth.jwt]
algorithm = "$3"
signing_key = "$4"
issuer = "authgate-bench"
audience = "authgate-bench"
# Long enough that no sliding renewal (re-signing on every request, since wrk ignores Set-Cookie)
# starts during a run: renewal begins once less than half the ttl is left.
ttl = "6h"
EOF
    [ -z "$JWT_CACHE_SIZE" ] || echo "cache_size = $JWT_CACHE_SIZE"
  fi
  cat <<EOF

[[routes]]
path_prefix = "/"
upstream = "http://127.0.0.1:$P_UP"
access = "authenticated"
EOF
}
# The default configuration ([log] access_log on); the two variants differ by one section each.
authgate_cfg "$P_AG_SESS" session >"$WORK/authgate-session.toml"
{ authgate_cfg "$P_AG_NOLOG" session; printf '\n[log]\naccess_log = false\n'; } >"$WORK/authgate-nolog.toml"
{ authgate_cfg "$P_AG_MET" session; printf '\n[metrics]\nlisten = "127.0.0.1:0"\n'; } >"$WORK/authgate-metrics.toml"
redis_store() { printf '\n[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s/0"\nkey_prefix = "bench:"\n' "$P_REDIS"; }
{ authgate_cfg "$P_AG_RED" session; redis_store; } >"$WORK/authgate-redis.toml"
{ authgate_cfg "$P_AG_RED0" session; redis_store; } >"$WORK/authgate-redis-nol1.toml"
authgate_cfg "$P_AG_HS" jwt HS256 "keys/hs.secret" >"$WORK/authgate-hs256.toml"
authgate_cfg "$P_AG_ED" jwt EdDSA "keys/ed.pem" >"$WORK/authgate-eddsa.toml"
authgate_cfg "$P_AG_ES" jwt ES256 "keys/es.pem" >"$WORK/authgate-es256-mint.toml"
for f in authgate-session authgate-nolog authgate-hs256 authgate-eddsa authgate-es256-mint authgate-redis authgate-redis-nol1; do
  "$AG" check-config --config "$WORK/$f.toml" >/dev/null 2>"$WORK/log/$f.check" \
    || { cat "$WORK/log/$f.check" >&2; die "authgate check-config failed for $f"; }
done
# An authgate without [metrics] support refuses the section: the metrics target is then left out
# (with a warning and a line in the report) rather than failing the whole run.
AVAILABLE="$ALL_TARGETS"; SKIPPED=""
if ! "$AG" check-config --config "$WORK/authgate-metrics.toml" >/dev/null 2>"$WORK/log/authgate-metrics.check"; then
  echo "WARNING: this authgate refuses the [metrics] section; authgate-metrics is left out:" >&2
  sed 's/^/  /' "$WORK/log/authgate-metrics.check" >&2
  SKIPPED="authgate-metrics: config refused: $(tr '\n' ' ' <"$WORK/log/authgate-metrics.check")"
  AVAILABLE="$(drop "$AVAILABLE" authgate-metrics)"; TARGETS="$(drop "$TARGETS" authgate-metrics)"
  [ -n "$TARGETS" ] || die "no target left to load"
fi
nginx -t -q -e "$WORK/log/nginx-t.err" -p "$WORK/nginx-up" -c "$WORK/nginx-up/nginx.conf" || die "nginx upstream config invalid"
nginx -t -q -e "$WORK/log/nginx-t.err" -p "$WORK/nginx-proxy" -c "$WORK/nginx-proxy/nginx.conf" || die "nginx proxy config invalid"
nginx -t -q -e "$WORK/log/nginx-t.err" -p "$WORK/nginx-proxy-log" -c "$WORK/nginx-proxy-log/nginx.conf" || die "nginx proxy (access log) config invalid"
haproxy -c -q -f "$WORK/haproxy-hs256.cfg" || die "haproxy-hs256 config invalid"
haproxy -c -q -f "$WORK/haproxy-es256.cfg" || die "haproxy-es256 config invalid"

# --------------------------------------------------------------------------- start servers
say "starting servers on 127.0.0.1 ports: upstream $P_UP, nginx-proxy $P_NGX, nginx-proxy-log $P_NGX_LOG, hyper-floor $P_FLOOR, haproxy-hs256 $P_HAP_HS, haproxy-es256 $P_HAP_ES, authgate-session $P_AG_SESS, authgate-nolog $P_AG_NOLOG, authgate-metrics $P_AG_MET, authgate-hs256 $P_AG_HS, authgate-eddsa $P_AG_ED"
# authgate's stderr (its log, access log included) goes to $WORK/log/NAME.log, as an operator would
# redirect it; RUST_LOG is authgate's default unless AUTHGATE_RUST_LOG says otherwise.
if [ -n "$AUTHGATE_RUST_LOG" ]; then AG_ENV=("RUST_LOG=$AUTHGATE_RUST_LOG"); else AG_ENV=(-u RUST_LOG); fi
mkdir -p "$WORK/redis"
start redis PIN_UP -- redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK/redis" --logfile ""
wait_ready redis "$P_REDIS"
start upstream PIN_UP -- nginx -e "$WORK/nginx-up/error.log" -p "$WORK/nginx-up" -c "$WORK/nginx-up/nginx.conf"
start nginx-proxy PIN_SRV -- nginx -e "$WORK/nginx-proxy/error.log" -p "$WORK/nginx-proxy" -c "$WORK/nginx-proxy/nginx.conf"
start nginx-proxy-log PIN_SRV -- nginx -e "$WORK/nginx-proxy-log/error.log" -p "$WORK/nginx-proxy-log" -c "$WORK/nginx-proxy-log/nginx.conf"
start hyper-floor PIN_SRV -- "$FLOOR" "127.0.0.1:$P_FLOOR" "127.0.0.1:$P_UP"
start haproxy-hs256 PIN_SRV -- haproxy -db -f "$WORK/haproxy-hs256.cfg"
start haproxy-es256 PIN_SRV -- haproxy -db -f "$WORK/haproxy-es256.cfg"
start authgate-session PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-session.toml"
start authgate-nolog PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-nolog.toml"
if in_list "$AVAILABLE" authgate-metrics; then
  start authgate-metrics PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-metrics.toml"
fi
start authgate-hs256 PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-hs256.toml"
start authgate-eddsa PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-eddsa.toml"
start authgate-es256-mint PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-es256-mint.toml"
start authgate-redis PIN_SRV "${AG_ENV[@]}" -- "$AG" --config "$WORK/authgate-redis.toml"
start authgate-redis-nol1 PIN_SRV "${AG_ENV[@]}" AUTHGATE_BENCH_REDIS_NO_L1=1 -- "$AG" --config "$WORK/authgate-redis-nol1.toml"
wait_ready upstream "$P_UP"
wait_ready nginx-proxy "$P_NGX"
wait_ready nginx-proxy-log "$P_NGX_LOG"
wait_ready hyper-floor "$P_FLOOR"
wait_ready haproxy-hs256 "$P_HAP_HS"
wait_ready haproxy-es256 "$P_HAP_ES"
wait_ready authgate-session "$P_AG_SESS"
wait_ready authgate-nolog "$P_AG_NOLOG"
if in_list "$AVAILABLE" authgate-metrics; then wait_ready authgate-metrics "$P_AG_MET"; fi
wait_ready authgate-hs256 "$P_AG_HS"
wait_ready authgate-eddsa "$P_AG_ED"
wait_ready authgate-es256-mint "$P_AG_ES"
wait_ready authgate-redis "$P_AG_RED"
wait_ready authgate-redis-nol1 "$P_AG_RED0"

# Threads serving connections: the main thread plus ag-worker-N (thread-per-core), or tokio's
# tokio-rt-worker threads (work-stealing; blocking-pool threads share that name but none exist
# before the first login).
AG_THREADS=""
for n in $AVAILABLE; do
  case "$n" in authgate-*) ;; *) continue ;; esac
  pv="PID_${n//-/_}"
  comms="$(ps -T -p "${!pv}" -o comm=)"
  if [ "$AUTHGATE_RUNTIME" = work-stealing ] && [ "$AUTHGATE_WORKERS" != 1 ]; then
    c="$(grep -c '^tokio-rt-worker' <<<"$comms" || true)"
  else
    c=$(( 1 + $(grep -c '^ag-worker-' <<<"$comms" || true) ))
  fi
  AG_THREADS+="$n=$c "
  if [ "$AUTHGATE_WORKERS" -gt 0 ] && [ "$c" -gt "$AUTHGATE_WORKERS" ]; then
    echo "WARNING: $n runs $c serving threads although [server] workers = $AUTHGATE_WORKERS" >&2
  fi
done
say "authgate serving threads at start ($AUTHGATE_RUNTIME): $AG_THREADS"

# --------------------------------------------------------------------------- credentials
login_cookie() { # PORT -> cookie value on stdout
  local hdrs code
  hdrs="$(curl -s -i --max-time 30 -H 'content-type: application/json' -d "$LOGIN_JSON" "http://127.0.0.1:$1/.auth/login" | tr -d '\r')"
  code="$(printf '%s\n' "$hdrs" | head -1 | awk '{print $2}')"
  [ "$code" = 200 ] || { printf '%s\n' "$hdrs" >&2; die "login on port $1 answered ${code:-nothing}, not 200"; }
  printf '%s\n' "$hdrs" | sed -n 's/^[Ss]et-[Cc]ookie: authgate=\([^;]*\).*/\1/p' | head -1
}
SESSION_COOKIE="$(login_cookie "$P_AG_SESS")"
NOLOG_COOKIE="$(login_cookie "$P_AG_NOLOG")"
METRICS_COOKIE="-"
if in_list "$AVAILABLE" authgate-metrics; then METRICS_COOKIE="$(login_cookie "$P_AG_MET")"; fi
HS_TOKEN="$(login_cookie "$P_AG_HS")"
ED_TOKEN="$(login_cookie "$P_AG_ED")"
ES_TOKEN="$(login_cookie "$P_AG_ES")"
# Both Redis instances share the store: a session made on one is valid on the other.
REDIS_COOKIE="$(login_cookie "$P_AG_RED")"
for v in SESSION_COOKIE NOLOG_COOKIE METRICS_COOKIE HS_TOKEN ED_TOKEN ES_TOKEN REDIS_COOKIE; do [ -n "${!v}" ] || die "no authgate cookie for $v"; done
stop_pid "$PID_authgate_es256_mint"   # only needed to mint the ES256 token for HAProxy
keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$PID_authgate_es256_mint" ] || keep+=("$p"); done; PIDS=("${keep[@]}")

declare -A URL COOKIE
URL[upstream]="http://127.0.0.1:$P_UP/";             COOKIE[upstream]=""
URL[nginx-proxy]="http://127.0.0.1:$P_NGX/";         COOKIE[nginx-proxy]=""
URL[nginx-proxy-log]="http://127.0.0.1:$P_NGX_LOG/"; COOKIE[nginx-proxy-log]=""
URL[hyper-floor]="http://127.0.0.1:$P_FLOOR/";       COOKIE[hyper-floor]=""
URL[haproxy-hs256]="http://127.0.0.1:$P_HAP_HS/";    COOKIE[haproxy-hs256]="$HS_TOKEN"
URL[haproxy-es256]="http://127.0.0.1:$P_HAP_ES/";    COOKIE[haproxy-es256]="$ES_TOKEN"
URL[authgate-session]="http://127.0.0.1:$P_AG_SESS/"; COOKIE[authgate-session]="$SESSION_COOKIE"
URL[authgate-nolog]="http://127.0.0.1:$P_AG_NOLOG/";  COOKIE[authgate-nolog]="$NOLOG_COOKIE"
URL[authgate-metrics]="http://127.0.0.1:$P_AG_MET/";  COOKIE[authgate-metrics]="$METRICS_COOKIE"
URL[authgate-hs256]="http://127.0.0.1:$P_AG_HS/";     COOKIE[authgate-hs256]="$HS_TOKEN"
URL[authgate-eddsa]="http://127.0.0.1:$P_AG_ED/";     COOKIE[authgate-eddsa]="$ED_TOKEN"
URL[authgate-redis]="http://127.0.0.1:$P_AG_RED/";     COOKIE[authgate-redis]="$REDIS_COOKIE"
URL[authgate-redis-nol1]="http://127.0.0.1:$P_AG_RED0/"; COOKIE[authgate-redis-nol1]="$REDIS_COOKIE"

tamper() { # change one character of the last dot-separated part (the signature / session id)
  local tok="$1" head sig c
  if [[ "$tok" == *.* ]]; then head="${tok%.*}."; sig="${tok##*.}"; else head=""; sig="$tok"; fi
  c="${sig:4:1}"; [ "$c" = A ] && c=B || c=A
  printf '%s%s%s%s' "$head" "${sig:0:4}" "$c" "${sig:5}"
}

# --------------------------------------------------------------------------- sanity checks
code_of() { # URL [COOKIE]
  if [ -n "${2:-}" ]; then
    curl -s -o /dev/null --max-time 5 -w '%{http_code}' -H "Cookie: authgate=$2" "$1" || true
  else
    curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$1" || true
  fi
}
say "sanity checks"
fail=0
for t in $AVAILABLE; do
  url="${URL[$t]}"; ck="${COOKIE[$t]}"
  with="$(code_of "$url" "$ck")"
  line="  $t: with credentials $with"
  [ "$with" = 200 ] || fail=1
  if [ -n "$ck" ]; then
    without="$(code_of "$url")"; bad="$(code_of "$url" "$(tamper "$ck")")"
    line+=", without $without, tampered $bad"
    case "$without" in 401|403) ;; *) fail=1 ;; esac
    case "$bad" in 401|403) ;; *) fail=1 ;; esac
  fi
  echo "$line"
done
# HAProxy checks alg: an EdDSA token for the HS256 frontend must fail too.
alg_bad="$(code_of "${URL[haproxy-hs256]}" "$ED_TOKEN")"
echo "  haproxy-hs256 with an EdDSA token: $alg_bad"
case "$alg_bad" in 403) ;; *) fail=1 ;; esac
[ "$fail" = 0 ] || die "sanity check failed: every target must answer 200 with credentials, 401/403 without"

# --------------------------------------------------------------------------- load
# Commands the bench Redis has served so far, but for the heartbeats (PING) and these INFO calls.
redis_cmds() {
  redis-cli -p "$P_REDIS" info commandstats | tr -d '\r' \
    | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_ping" && $1 != "cmdstat_info" { n += $3 } END { print n + 0 }'
}
run_wrk() { # PHASE TARGET ROUND CONNS THREADS SECONDS [DELAY_MS]
  local phase="$1" t="$2" r="$3" c="$4" th="$5" d="$6" delay="${7:-0}" out line
  out="$WORK/log/wrk-$phase-$t-$r.txt"
  local args=(-t"$th" -c"$c" -d"${d}s" --timeout 5s -s "$HERE/report.lua")
  [ -z "${COOKIE[$t]}" ] || args+=(-H "Cookie: authgate=${COOKIE[$t]}")
  # CPU time of the server under test (its whole process tree: nginx's worker is a child)
  # around the run, so the report can show CPU per request — steadier than req/s on shared cores.
  local spid="PID_${t//-/_}" cpu0 cpu1
  case "$t" in authgate-redis*) redis_cmds_before=$(redis_cmds) ;; esac
  cpu0="$(python3 "$LIB" cpu "${!spid}")"
  WRK_DELAY_MS="$delay" "${PIN_LOAD[@]}" wrk "${args[@]}" "${URL[$t]}" >"$out" 2>&1 &
  local pid=$! ppid=""
  TRANSIENT=("$pid")
  if [ "$PERF" = 1 ] && [ "$phase" = load ]; then
    case "$t" in authgate-*)
      # Software clock sampling (VMs rarely expose hardware counters); stops by itself.
      perf record -q -e cpu-clock -F 1999 -p "${!spid}" -o "$WORK/perf-$t-$r.data" \
        -- sleep "$d" >"$WORK/log/perf-$t-$r.log" 2>&1 &
      ppid=$!
      TRANSIENT+=("$ppid") ;;
    esac
  fi
  wait "$pid" || true
  [ -z "$ppid" ] || wait "$ppid" || true
  TRANSIENT=()
  cpu1="$(python3 "$LIB" cpu "${!spid}")"
  line="$(grep -m1 '^WRKRESULT' "$out" || echo MISSING)"
  # Responses wrk got from this target over all phases (warm-up too): checked against its metrics.
  SENT[$t]=$(( ${SENT[$t]:-0} + $(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line") + 0 ))
  [ "$phase" != warmup ] || return 0
  case "$t" in authgate-redis*) redis_cmds_after=$(redis_cmds) ;; esac
  case "$t" in authgate-redis*)
    [ "$line" = MISSING ] || awk -v t="$t" -v a="$redis_cmds_before" -v b="$redis_cmds_after" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      if (v["requests"]) printf "  %s: %d Redis commands for %d requests = %.4f per request\n", t, b - a, v["requests"], (b - a) / v["requests"]
    }' <<<"$line" | tee -a "$WORK/redis-commands.txt" ;;
  esac
  # "user system log-thread" seconds before and after: total, user part and authgate's log writer.
  if [ -n "$ppid" ] && [ "$line" != MISSING ]; then
    line+=" $(python3 "$LIB" perf-shares "$WORK/perf-$t-$r.data" || echo perf_failed=1)"
    rm -f "$WORK/perf-$t-$r.data"
  fi
  [ "$line" = MISSING ] || line+="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    printf " server_cpu_s=%.3f server_user_s=%.3f server_log_s=%.3f", (y[1] + y[2]) - (x[1] + x[2]), y[1] - x[1], y[3] - x[3] }')"
  echo "$phase $t $r $line" >>"$RAW"
  if [ "$line" = MISSING ]; then
    printf '  %-8s %-17s round %s: no result (see %s)\n' "$phase" "$t" "$r" "$out"
  else
    awk -v ph="$phase" -v t="$t" -v r="$r" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      errs = v["err_connect"] + v["err_read"] + v["err_write"] + v["err_timeout"] + v["err_status"]
      printf "  %-8s %-17s round %s: %9.0f req/s  p50 %6d us  p99 %6d us  cpu %5.1f us/req (user %4.1f)%s\n", ph, t, r,
        v["requests"] / (v["duration_us"] / 1e6), v["lat_p50_us"], v["lat_p99_us"],
        v["requests"] ? v["server_cpu_s"] * 1e6 / v["requests"] : 0,
        v["requests"] ? v["server_user_s"] * 1e6 / v["requests"] : 0,
        errs ? sprintf("  INVALID (%d socket errors, %d status >= 400)", errs - v["err_status"], v["err_status"]) : ""
    }' <<<"$line"
  fi
}

declare -A SENT
if [ "$WARMUP" -gt 0 ]; then
  say "warm-up: ${WARMUP}s per target"
  for t in $TARGETS; do run_wrk warmup "$t" 0 "$CONNECTIONS" "$THREADS" "$WARMUP"; done
fi
say "throughput: $ROUNDS round(s) x [$TARGETS], ${DURATION}s, $CONNECTIONS connections, $THREADS wrk thread(s)"
# Each round starts one target later (A B C, B C A, C A B, ...): on a VM whose speed drifts
# within a round (burst credits, a neighbour), a target always run last would always look slower.
rotated() {
  local k="$1" list=($TARGETS) n i
  n=${#list[@]}
  for ((i = 0; i < n; i++)); do printf '%s ' "${list[$(( (i + k) % n ))]}"; done
}
for r in $(seq 1 "$ROUNDS"); do
  for t in $(rotated $((r - 1))); do run_wrk load "$t" "$r" "$CONNECTIONS" "$THREADS" "$DURATION"; done
done
# Interleaved rounds here too: a single short 1-connection run moves by 10-20 us on a shared VM.
say "latency: 1 connection, $LAT_ROUNDS round(s) x [$TARGETS], ${LAT_DURATION}s"
for r in $(seq 1 "$LAT_ROUNDS"); do
  for t in $(rotated $((r - 1))); do run_wrk latency1 "$t" "$r" 1 1 "$LAT_DURATION"; done
done

# --------------------------------------------------------------------------- metrics, log sizes
# One scrape of authgate-metrics after its last run: authgate_http_requests_total (summed over its
# labels) must be at least the responses wrk got from it. Reported, never fatal.
METRICS_JSON="$WORK/metrics-check.json"
if in_list "$TARGETS" authgate-metrics; then
  say "metrics: one scrape of authgate-metrics (address from its log)"
  python3 "$LIB" scrape-metrics --log "$WORK/log/authgate-metrics.log" --metric authgate_http_requests_total \
    --expect-min "${SENT[authgate-metrics]:-0}" --out "$METRICS_JSON" || true
fi
# Size of each target's log after the throughput and latency runs: shows the access logs were on.
LOGSIZES="$WORK/log-sizes.txt"; : >"$LOGSIZES"
for t in $TARGETS; do
  case "$t" in
    authgate-*) f="$WORK/log/$t.log" ;;
    nginx-proxy-log) f="$NGX_ACCESS_LOG" ;;
    *) continue ;;
  esac
  if [ -e "$f" ]; then lines="$(wc -l <"$f")"; bytes="$(wc -c <"$f")"; else lines=0; bytes=0; fi
  echo "$t lines=$lines bytes=$bytes sent=${SENT[$t]:-0}" >>"$LOGSIZES"
done

# --------------------------------------------------------------------------- login storm
STORM_TARGET=authgate-session
STORM_DELAY_MS=0
if [ "$STORM_GET_RATE" -gt 0 ]; then
  STORM_DELAY_MS=$(( STORM_CONNECTIONS * 1000 / STORM_GET_RATE ))
  [ "$STORM_DELAY_MS" -ge 1 ] || STORM_DELAY_MS=1
fi
if [ "$SKIP_STORM" != 1 ]; then
  say "login storm on $STORM_TARGET: GETs with $STORM_CONNECTIONS connections (pacing ${STORM_DELAY_MS} ms/connection), logins: rate $LOGIN_RATE/s, concurrency $LOGIN_CONCURRENCY"
  for r in $(seq 1 "$ROUNDS"); do
    run_wrk storm-base "$STORM_TARGET" "$r" "$STORM_CONNECTIONS" "$STORM_THREADS" "$DURATION" "$STORM_DELAY_MS"
    sf="$WORK/log/storm-$r.json"
    # The login stream starts 0.5 s before and ends ~0.5 s after the GET run.
    "${PIN_LOAD[@]}" python3 "$LIB" storm --port "$P_AG_SESS" --username "$BENCH_USER" \
      --password "$BENCH_PASSWORD" --rate "$LOGIN_RATE" --concurrency "$LOGIN_CONCURRENCY" \
      --duration "$((DURATION + 1))" --out "$sf" >"$WORK/log/storm-$r.log" 2>&1 &
    STORM_PID=$!
    sleep 0.5
    run_wrk storm-with "$STORM_TARGET" "$r" "$STORM_CONNECTIONS" "$STORM_THREADS" "$DURATION" "$STORM_DELAY_MS"
    wait "$STORM_PID" || echo "  login stream exited with an error (see $WORK/log/storm-$r.log)"
    STORM_PID=""
    echo "storm-logins $STORM_TARGET $r STORMFILE=$sf" >>"$RAW"
    [ -s "$sf" ] && echo "  logins round $r: $(cat "$sf")"
  done
fi

# --------------------------------------------------------------------------- Redis memory per session
# Sessions of the shape the gateway writes (s:<sha256 hex> record, t:<hash> last use, the user's
# index set), loaded with redis-cli --pipe into the bench Redis; used_memory before and after.
REDIS_SESSIONS="${REDIS_SESSIONS:-1000000}"
if [ "$SKIP_MEMORY" != 1 ] && [ "$REDIS_SESSIONS" -gt 0 ]; then
  say "Redis memory: $REDIS_SESSIONS sessions"
  redis-cli -p "$P_REDIS" flushall >/dev/null
  m0="$(redis-cli -p "$P_REDIS" info memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p')"
  python3 - "$REDIS_SESSIONS" <<'PY' | redis-cli -p "$P_REDIS" --pipe >"$WORK/log/redis-pipe.log"
import hashlib, os, sys, time
n = int(sys.argv[1]); now = int(time.time() * 1000); end = now + 12 * 3600 * 1000
out = sys.stdout.buffer
def cmd(*a):
    out.write(b"*%d\r\n" % len(a))
    for x in a:
        x = x if isinstance(x, bytes) else str(x).encode()
        out.write(b"$%d\r\n%s\r\n" % (len(x), x))
for i in range(n):
    h = hashlib.sha256(os.urandom(32)).hexdigest()
    user = "user%d" % (i % 1000)
    cmd("SET", "authgate:s:" + h, "%s\n%d\n%d" % (user, 1234567890123456789, now), "PXAT", end)
    cmd("SET", "authgate:t:" + h, now, "PXAT", end)
    cmd("SADD", "authgate:u:" + user, h)
PY
  m1="$(redis-cli -p "$P_REDIS" info memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p')"
  awk -v a="$m0" -v b="$m1" -v n="$REDIS_SESSIONS" 'BEGIN { printf "  Redis used_memory +%.1f MiB for %d sessions = %.0f bytes per session\n", (b - a) / 1048576, n, (b - a) / n }' \
    | tee "$WORK/redis-memory.txt"
  redis-cli -p "$P_REDIS" flushall >/dev/null
fi

# --------------------------------------------------------------------------- memory
MEMFILE="$WORK/memory.txt"
if [ "$SKIP_MEMORY" != 1 ]; then
  say "cargo bench --bench session_memory${SESSIONS:+ (SESSIONS=$SESSIONS)}"
  (cd "$ROOT" && cargo bench --bench session_memory 2>"$WORK/log/session_memory.err") >"$MEMFILE" \
    || { tail -20 "$WORK/log/session_memory.err" >&2; echo "WARNING: session_memory bench failed" >&2; }
fi

# --------------------------------------------------------------------------- report
{
  echo "timestamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$NPROC"; echo "cpu_model=$CPU_MODEL"; echo "kernel=$KERNEL"
  echo "duration=$DURATION"; echo "lat_duration=$LAT_DURATION"; echo "lat_rounds=$LAT_ROUNDS"; echo "connections=$CONNECTIONS"
  echo "threads=$THREADS"; echo "rounds=$ROUNDS"; echo "warmup=$WARMUP"; echo "pin=$PIN"
  echo "layout=$LAYOUT"; echo "layout_desc=$LAYOUT_DESC"
  echo "authgate_rust_log=${AUTHGATE_RUST_LOG:-unset: authgate default, info}"
  echo "authgate_log_format=${AUTHGATE_LOG_FORMAT:-config (default text)}"
  echo "skipped=$SKIPPED"; echo "metrics_check=$METRICS_JSON"; echo "log_sizes=$LOGSIZES"
  echo "upstream_cpus=$UPSTREAM_CPUS"; echo "server_cpus=$SERVER_CPUS"; echo "load_cpus=$LOAD_CPUS"
  echo "targets=$TARGETS"; echo "authgate_workers=$AUTHGATE_WORKERS"; echo "authgate_runtime=$AUTHGATE_RUNTIME"; echo "authgate_threads=$AG_THREADS"
  echo "jwt_cache_size=${JWT_CACHE_SIZE:-default}"; echo "hash_pool=${HASH_POOL:-default (one per core, max 4)}"
  echo "storm_target=$STORM_TARGET"; echo "storm_connections=$STORM_CONNECTIONS"
  echo "storm_get_rate=$STORM_GET_RATE"; echo "storm_delay_ms=$STORM_DELAY_MS"
  echo "login_rate=$LOGIN_RATE"; echo "login_concurrency=$LOGIN_CONCURRENCY"
  echo "nginx=$NGINX_VERSION"; echo "haproxy=$HAPROXY_VERSION"; echo "wrk=${WRK_VERSION:-}"
  echo "authgate=$("$AG" --version)"; echo "git=$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)"
} >"$META"
if [ -s "$WORK/redis-commands.txt" ] || [ -s "$WORK/redis-memory.txt" ]; then
  say "Redis backend"
  cat "$WORK/redis-commands.txt" "$WORK/redis-memory.txt" 2>/dev/null || true
  mkdir -p "$RESULTS_DIR"
  cat "$WORK/redis-commands.txt" "$WORK/redis-memory.txt" >"$RESULTS_DIR/redis-$(date -u +%Y%m%dT%H%M%SZ).txt" 2>/dev/null || true
fi
mkdir -p "$RESULTS_DIR"
JSON="$RESULTS_DIR/results-$(date -u +%Y%m%dT%H%M%SZ).json"
report_rc=0
python3 "$LIB" report --raw "$RAW" --meta "$META" --memory "$MEMFILE" --json "$JSON" || report_rc=$?
if [ "$report_rc" -eq 2 ]; then
  echo "some runs are INVALID (socket errors or responses >= 400): see the lines above" >&2
  exit 2
fi
exit "$report_rc"
