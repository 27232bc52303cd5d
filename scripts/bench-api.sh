#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Benchmark of LOCKER's HTTP API (`locker serve`, no mount) against nginx
# serving the same files from a plain directory (static GET with sendfile,
# PUT through its WebDAV module), both on 127.0.0.1, in the same run.
# Informational only: it never gates CI. Prints a markdown table and
# writes/replaces its own section of BENCHMARKS.md.
#
# Workloads (sizes for a full run; --quick shrinks them):
#   1. 4 KiB GET: wrk with scripts/bench/http-load.lua, cycling over 1000
#      files of random content (each wrk thread from its own offset; no hot
#      path), at 1, 16 and 64 connections, 10 s each
#   2. 4 KiB PUT: the same 1000 paths, so every PUT replaces an existing
#      file; every body is distinct (no content deduplication); same
#      connection counts and durations; responses outside 2xx are counted
#   3. 1 GiB PUT of one random file with `curl -T` (streamed from a file on
#      the same disk), LOCKER's RSS sampled every 10 ms meanwhile
#   4. 1 GiB GET with `curl -o /dev/null`, cold (after drop_caches) and warm
#      (right after); the bytes' SHA-256 checked once per server, untimed
# LOCKER's data dir and nginx's root are on the same filesystem.
#
# Usage: scripts/bench-api.sh [--quick] [--no-md] [--keep-logs]
# Needs root (drop_caches, apt-get for wrk/nginx when missing). See --help.
set -uo pipefail
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=lib/bench-common.sh disable=SC1091  # followed with shellcheck -x
. "$REPO/scripts/lib/bench-common.sh"
HELPERS=$SCRIPT_DIR/bench
LUA=$HELPERS/http-load.lua
PREP=$HELPERS/http-prep.py
DEFAULT_LOCKER_BIN=$REPO/target/release/locker
LOCKER_BIN=${LOCKER_BIN:-$DEFAULT_LOCKER_BIN}
MD_FILE=${BENCH_MD:-$REPO/BENCHMARKS.md}
CONTENDERS=(locker nginx)
ORIG_ARGS=("$@")

usage() {
  cat <<'EOF'
Usage: scripts/bench-api.sh [options]

  --quick            smoke-test sizes (256 MiB file, 3 s wrk runs)
  --no-md            do not write BENCHMARKS.md (the table still goes to stdout)
  --keep-logs        keep the log directory even when every step succeeded
  -h, --help         this text

Environment:
  LOCKER_BIN           LOCKER binary (default: REPO/target/release/locker;
                       built with `cargo build --release` only when missing)
  BENCH_TMP            where LOCKER's data dir, nginx's root and the big file
                       go (default /var/tmp)
  BENCH_MD             the markdown file to update (default REPO/BENCHMARKS.md)
  BENCH_STEP_TIMEOUT   seconds allowed to any single command (default 600)
  BENCH_DRAIN_TIMEOUT  seconds allowed for LOCKER's upload queue to empty
                       (default 600)
EOF
}

# ---------------------------------------------------------------- options
QUICK=0
WRITE_MD=1
KEEP_LOGS=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --no-md) WRITE_MD=0 ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench-api: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-api: must run as root (drop_caches, apt-get)" >&2
  exit 2
fi

# ---------------------------------------------------------------- sizes
if [ $QUICK -eq 1 ]; then
  MODE=quick
  SEQ_MB=256 DURATION=3
else
  MODE=full
  SEQ_MB=1024 DURATION=10
fi
SEQ_BYTES=$((SEQ_MB * 1048576))
SMALL_N=1000 SMALL_SIZE=4096
CONNS=(1 16 64)
MAX_THREADS=2                              # wrk -t: min(this, connections)
WARMUP_SECS=1                              # untimed wrk GET run before the GET series
NGINX_WORKERS=2                            # LOCKER's API runtime has 2 worker threads
UPLOAD_DELAY_MS=3000
CACHE_MB=8192
MAX_BODY_MB=4096
# shellcheck disable=SC2034  # read by step() in bench-common.sh
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-600}    # any single command run through step()
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-600}  # LOCKER's upload queue to empty
START_TIMEOUT=30                           # a server to answer
STOP_TIMEOUT=70                            # after SIGTERM (LOCKER: 30 s request grace + 30 s drain)

RUN_ID=$(date +%Y%m%d-%H%M%S)
BASE=${BENCH_TMP:-/var/tmp}/locker-bench-api.$$
LOGDIR=${TMPDIR:-/tmp}/locker-bench-api-$RUN_ID
DATA=$BASE/locker-data
NGX=$BASE/nginx                            # nginx's prefix: config, logs, body temp files
NGX_ROOT=$BASE/nginx-root                  # the plain directory nginx serves
BIG=$BASE/big.bin
HDR=$BASE/auth.hdr                         # `Authorization: Bearer KEY` for curl -H @file
LOCKER_PID=
NGINX_PID=
NGINX_CHILDREN=()
SAMPLER_PID=
LOCKER_URL=
NGINX_URL=
# shellcheck disable=SC2034  # RES and COUNT are bench-common.sh's (put, put_timed, value)
declare -A RES=() SECS=() COUNT=() FAILED=() LAT=() ERRS=()
FAILURES=0
FAIL_NOTES=()
NOTES=()
T_START=$SECONDS

# fd 3 and 4 keep the script's own stdout and stderr: a trap can fire while a
# step's output is redirected to a log file.
exec 3>&1 4>&2
log() { printf '[bench-api %4ds] %s\n' $((SECONDS - T_START)) "$*" >&4; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- teardown

locker_stop() {  # SIGTERM: it finishes the requests in flight and drains its queue
  local pid=$LOCKER_PID i rc
  [ -n "$pid" ] || return 0
  LOCKER_PID=
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      log "locker: still running ${STOP_TIMEOUT}s after SIGTERM; SIGKILL"
      NOTES+=("\`locker serve\` did not stop within ${STOP_TIMEOUT} s of SIGTERM and was killed")
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  wait "$pid" 2>/dev/null
  rc=$?
  if [ $rc -ne 0 ]; then
    log "locker: exit status $rc after SIGTERM"
    NOTES+=("\`locker serve\` exited with status $rc after SIGTERM")
  fi
}

nginx_stop() {  # SIGTERM to the master (fast shutdown); then any worker left over
  local pid=$NGINX_PID p
  [ -n "$pid" ] || return 0
  NGINX_PID=
  stop_pid "$pid" 10 || log "nginx: master killed with SIGKILL"
  for p in "${NGINX_CHILDREN[@]}"; do
    if alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^nginx: '; then
      log "nginx: worker $p outlived its master; SIGKILL"
      kill -KILL "$p" 2>/dev/null
    fi
  done
  NGINX_CHILDREN=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  exec 1>&3 2>&4
  stop_step
  [ -n "$SAMPLER_PID" ] && stop_pid "$SAMPLER_PID" 2
  locker_stop
  nginx_stop
  rm -rf --one-file-system "$BASE"
  tidy_logs $rc bench-api
  exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- helpers
flag() {  # metric contender why: the figure stands, but the run had errors
  ERRS["$1|$2"]=$3
  FAIL_NOTES+=("$2: $1: $3")
  FAILURES=$((FAILURES + 1))
  log "$2: $1: $3"
}

listening() {  # port pid: the listener on the port belongs to pid
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -q "pid=$2,"
}

vm() {  # pid field: /proc/PID/status field (VmRSS, VmHWM) in KiB
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
conns() { if [ "$1" = 1 ]; then echo "1 connection"; else echo "$1 connections"; fi; }
threads_for() { echo $(($1 < MAX_THREADS ? $1 : MAX_THREADS)); }

# ---------------------------------------------------------------- dependencies
need=()
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v ss >/dev/null || need+=(iproute2)
apt_install "${need[@]}"
nginx -V 2>&1 | grep -q -- --with-http_dav_module || die "this nginx has no http_dav_module (PUT)"
if [ ! -x "$LOCKER_BIN" ]; then
  [ "$LOCKER_BIN" = "$DEFAULT_LOCKER_BIN" ] || die "LOCKER_BIN=$LOCKER_BIN does not exist"
  command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
  build_locker
fi
# Recorded now: the binary may be rebuilt while the benchmark runs (the
# daemon started below keeps the file it was started from).
BIN_FACTS="$(bin_facts) when the run started"
if [ -n "$(find "$REPO/src" "$REPO/Cargo.toml" -newer "$LOCKER_BIN" -print -quit 2>/dev/null)" ]; then
  log "WARNING: sources are newer than $LOCKER_BIN"
  NOTES+=("the LOCKER binary was older than some of the sources")
fi

# ---------------------------------------------------------------- work dirs, data
mkdir -p "$BASE" "$LOGDIR" "$DATA" "$NGX/logs" "$NGX/body" "$NGX_ROOT/small" || die "cannot create work directories"
log "mode $MODE; work dir $BASE; logs in $LOGDIR"
# The big file, LOCKER's blocks and its local backend's copy, nginx's copy
# and its body temp file.
need_space "$BASE" $(((SEQ_MB * 5 + 1024) * 1024))

# A key for this run only, never written to a file but $HDR (mode 0600),
# and given to LOCKER through its environment.
API_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') || die "cannot make an API key"
(umask 077 && printf 'Authorization: Bearer %s\n' "$API_KEY" >"$HDR") || die "cannot write $HDR"
LOCKER_AUTH=(-H "@$HDR")

log "generating a ${SEQ_MB} MiB random file in $BASE"
step head -c "$SEQ_BYTES" /dev/urandom >"$BIG" || die "cannot write $BIG"
BIG_SHA=$(sha256sum <"$BIG" | cut -d' ' -f1)

# ---------------------------------------------------------------- servers
write_locker_config() {  # file port
  cat >"$1" <<EOF
[sync]
upload_delay_ms = $UPLOAD_DELAY_MS

[cache]
size_mb = $CACHE_MB

[api]
listen = "127.0.0.1:$2"
public_url = "http://127.0.0.1:$2"
max_body_mb = $MAX_BODY_MB

# Key material from the environment: LOCKER_API_KEY_BENCH.
[api.keys.bench]
namespaces = ["*"]
write = true

[namespaces.corp]
EOF
}

locker_start() {  # sets LOCKER_PID, LOCKER_URL; a few ports are tried
  local try port deadline code
  for try in 1 2 3; do
    port=$(free_port) || return 1
    LOCKER_URL=http://127.0.0.1:$port
    write_locker_config "$BASE/locker.toml" "$port"
    cp "$BASE/locker.toml" "$LOGDIR/locker.toml"
    LOCKER_API_KEY_BENCH=$API_KEY setsid "$LOCKER_BIN" serve --config "$BASE/locker.toml" --data-dir "$DATA" \
      </dev/null >>"$LOGDIR/locker.log" 2>&1 3>&- 4>&- &
    LOCKER_PID=$!
    deadline=$((SECONDS + START_TIMEOUT))
    while alive "$LOCKER_PID" && [ $SECONDS -lt $deadline ]; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "${LOCKER_AUTH[@]}" "$LOCKER_URL/api/files")
      if [ "$code" = 200 ] && listening "$port" "$LOCKER_PID"; then
        log "locker serve on $LOCKER_URL (pid $LOCKER_PID, data dir $DATA)"
        return 0
      fi
      sleep 0.1
    done
    log "locker serve did not answer on port $port (try $try); last log lines:"
    tail -n 5 "$LOGDIR/locker.log" >&2
    stop_pid "$LOCKER_PID" 10
    LOCKER_PID=
  done
  return 1
}

write_nginx_config() {  # file port
  cat >"$1" <<EOF
# nginx for scripts/bench-api.sh: static files from a plain directory, PUT
# through the WebDAV module.
user nobody $(id -gn nobody);
worker_processes $NGINX_WORKERS;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    client_body_temp_path $NGX/body;
    proxy_temp_path $NGX/body;
    fastcgi_temp_path $NGX/body;
    uwsgi_temp_path $NGX/body;
    scgi_temp_path $NGX/body;
    server {
        listen 127.0.0.1:$2;
        root $NGX_ROOT;
        client_max_body_size 0;
        location / {
            dav_methods PUT;
            create_full_put_path on;
        }
    }
}
EOF
}

nginx_start() {  # sets NGINX_PID, NGINX_URL, NGINX_CHILDREN; a few ports are tried
  local try port deadline code
  # The workers run as nobody: they need to write the root and the body temp dir.
  chown -R "nobody:$(id -gn nobody)" "$NGX_ROOT" "$NGX/body" || return 1
  for try in 1 2 3; do
    port=$(free_port) || return 1
    NGINX_URL=http://127.0.0.1:$port
    write_nginx_config "$NGX/nginx.conf" "$port"
    cp "$NGX/nginx.conf" "$LOGDIR/nginx.conf"
    setsid nginx -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" -p "$NGX/" -g 'daemon off;' \
      </dev/null >>"$LOGDIR/nginx.out" 2>&1 3>&- 4>&- &
    NGINX_PID=$!
    deadline=$((SECONDS + START_TIMEOUT))
    while alive "$NGINX_PID" && [ $SECONDS -lt $deadline ]; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$NGINX_URL/")
      if [ "$code" != 000 ] && listening "$port" "$NGINX_PID"; then
        mapfile -t NGINX_CHILDREN < <(ps -o pid= --ppid "$NGINX_PID" | tr -d ' ')
        log "nginx on $NGINX_URL (master pid $NGINX_PID, workers ${NGINX_CHILDREN[*]})"
        return 0
      fi
      sleep 0.1
    done
    log "nginx did not answer on port $port (try $try); last log lines:"
    tail -n 5 "$NGX/logs/error.log" "$LOGDIR/nginx.out" >&2
    stop_pid "$NGINX_PID" 10
    NGINX_PID=
  done
  return 1
}

# locker_drain LABEL: waits until `locker status --json` shows every
# namespace's queue empty and no pending bytes (untimed for the benchmark).
# Sets DRAIN_SECS to the time that took. Returns 1 on timeout or if the
# daemon died.
DRAIN_SECS=
locker_drain() {
  local label=$1 t0=$EPOCHREALTIME deadline=$((SECONDS + DRAIN_TIMEOUT)) out left=
  DRAIN_SECS=
  while :; do
    if ! alive "$LOCKER_PID"; then
      log "locker: $label: the daemon is gone; last log lines:"
      tail -n 20 "$LOGDIR/locker.log" >&2
      return 1
    fi
    out=$(timeout 20 "$LOCKER_BIN" status --data-dir "$DATA" --json 2>>"$LOGDIR/status.err")
    # Sum of every namespace's "queue" and "pending_bytes"; empty if none is seen.
    left=$(printf '%s\n' "$out" | awk -F'[:,]' '
      $1 ~ /"(queue|pending_bytes)"/ { n++; s += $2 }
      END { if (n) print s }')
    if [ "$left" = 0 ]; then
      DRAIN_SECS=$(since "$t0")
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "locker: $label: upload queue not empty after ${DRAIN_TIMEOUT}s (BENCH_DRAIN_TIMEOUT); status: $(printf '%s' "$out" | tr -s ' \n' ' ' | head -c 400)"
      return 1
    fi
    sleep 0.2
  done
}
drain_or_die() { locker_drain "$1" || die "LOCKER's upload queue did not empty ($1)"; }

# ---------------------------------------------------------------- workloads

# wrk_run METRIC CONTENDER CONNS METHOD: one wrk run of DURATION seconds over
# the SMALL_N paths; records requests/s, latencies and errors.
wrk_run() {
  local key=$1 c=$2 conns=$3 method=$4 threads out line rc url prefix auth='' errs=''
  local -A f=()
  threads=$(threads_for "$conns")
  out=$LOGDIR/wrk-$key-$c.txt
  if [ "$c" = locker ]; then
    url=$LOCKER_URL prefix=/api/files/corp/small auth="Bearer $API_KEY"
  else
    url=$NGINX_URL prefix=/small
  fi
  log "$c: 4 KiB $method, $(conns "$conns"), wrk -t $threads, ${DURATION} s"
  BENCH_AUTH=$auth step wrk -t "$threads" -c "$conns" -d "${DURATION}s" --timeout 10s -s "$LUA" "$url" \
    -- "$method" "$prefix" "$SMALL_N" "$threads" "$SMALL_SIZE" "$RUN_ID-$$-$key-$c" >"$out" 2>&1
  rc=$?
  line=$(grep '^BENCH ' "$out" | tail -n 1)
  if [ $rc -ne 0 ] || [ -z "$line" ]; then
    fail "$key" "$c" "wrk exit status $rc (see $out)"
    return 1
  fi
  local kv kvs
  read -r -a kvs <<<"${line#BENCH }"
  for kv in "${kvs[@]}"; do f[${kv%%=*}]=${kv#*=}; done
  put "$key" "$c" "${f[rps]}"
  LAT["$key|$c"]=$(awk -v a="${f[p50_us]}" -v b="${f[p99_us]}" 'BEGIN { printf "p50 %.2f / p99 %.2f ms", a / 1000, b / 1000 }')
  [ "${f[non2xx]}" != 0 ] && errs="${f[non2xx]} of ${f[requests]} responses not 2xx (status×count: ${f[statuses]})"
  if [ $((f[connect] + f[read] + f[write] + f[timeout])) -ne 0 ]; then
    errs+="${errs:+; }socket errors: connect ${f[connect]}, read ${f[read]}, write ${f[write]}, timeout ${f[timeout]}"
  fi
  [ -z "$errs" ] || flag "$key" "$c" "$errs"
  return 0
}

# curl_big METRIC CONTENDER DIRECTION URL [curl args...]: one timed 1 GiB
# transfer; DIRECTION put (curl -T BIG) or get (curl -o /dev/null).
# Throughput from curl's time_total; the JSON answer of a PUT goes to
# LOGDIR/METRIC-CONTENDER.out.
curl_big() {
  local key=$1 c=$2 dir=$3 url=$4 out code size secs
  shift 4
  out=$LOGDIR/$key-$c.out
  if [ "$dir" = put ]; then
    step curl -sS -o "$out" -w '%{http_code} %{size_upload} %{time_total}\n' -H 'Expect:' "$@" \
      -T "$BIG" "$url" >"$BASE/curl.w" 2>>"$LOGDIR/curl.log"
  else
    step curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$@" \
      "$url" >"$BASE/curl.w" 2>>"$LOGDIR/curl.log"
  fi
  local rc=$?
  read -r code size secs <"$BASE/curl.w"
  if [ $rc -ne 0 ]; then
    fail "$key" "$c" "curl exit status $rc (see $LOGDIR/curl.log)"
    return 1
  fi
  case $code in
    2??) ;;
    *) fail "$key" "$c" "HTTP status $code (answer in $out)"; return 1 ;;
  esac
  if [ "$size" != "$SEQ_BYTES" ]; then
    fail "$key" "$c" "$size bytes moved, want $SEQ_BYTES"
    return 1
  fi
  put_timed "$key" "$c" "$SEQ_MB" "$secs"
}

get_sha() {  # url [curl args...]: SHA-256 of the body
  # shellcheck disable=SC2016  # expanded by the inner bash
  step bash -c 'set -o pipefail; url=$1; shift; curl -fsS "$@" "$url" | sha256sum | cut -d" " -f1' _ "$@" 2>>"$LOGDIR/curl.log"
}

# ---------------------------------------------------------------- run
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
locker_start || die "locker serve did not start (log: $LOGDIR/locker.log)"

log "preparing $SMALL_N files of $SMALL_SIZE B: PUT to LOCKER, and the same bytes into nginx's root"
BENCH_AUTH="Bearer $API_KEY" step python3 "$PREP" "$LOCKER_URL/api/files/corp/small" "$NGX_ROOT/small" \
  "$SMALL_N" "$SMALL_SIZE" >/dev/null 2>>"$LOGDIR/prep.log" ||
  die "preparing the small files failed: $(tail -n 3 "$LOGDIR/prep.log")"
nginx_start || die "nginx did not start (logs: $NGX/logs, $LOGDIR/nginx.out)"
drain_or_die "after preparing the small files"
sync

# 1. 4 KiB GET
for c in "${CONTENDERS[@]}"; do
  log "$c: ${WARMUP_SECS} s GET warm-up (discarded)"
  if [ "$c" = locker ]; then
    BENCH_AUTH="Bearer $API_KEY" step wrk -t 2 -c 16 -d "${WARMUP_SECS}s" -s "$LUA" "$LOCKER_URL" \
      -- GET /api/files/corp/small "$SMALL_N" 2 >"$LOGDIR/wrk-warmup-$c.txt" 2>&1
  else
    step wrk -t 2 -c 16 -d "${WARMUP_SECS}s" -s "$LUA" "$NGINX_URL" \
      -- GET /small "$SMALL_N" 2 >"$LOGDIR/wrk-warmup-$c.txt" 2>&1
  fi
done
for n in "${CONNS[@]}"; do
  for c in "${CONTENDERS[@]}"; do wrk_run "get_c$n" "$c" "$n" GET; done
done

# 2. 4 KiB PUT (each LOCKER run is followed by an untimed wait for its upload queue)
PUT_DRAINS=()
for n in "${CONNS[@]}"; do
  for c in "${CONTENDERS[@]}"; do
    wrk_run "put_c$n" "$c" "$n" PUT
    if [ "$c" = locker ]; then
      drain_or_die "after the 4 KiB PUTs at $(conns "$n")"
      PUT_DRAINS+=("$(printf '%.1f' "$DRAIN_SECS") s at $n")
    fi
  done
done

# 3. big PUT, LOCKER's RSS sampled meanwhile
cat >"$BASE/rss.py" <<'EOF'
import os, sys, time
pid, ready, stop = sys.argv[1:4]
peak = n = 0
open(ready, "w").close()
while True:
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]))
                    n += 1
                    break
    except OSError:
        break
    if os.path.exists(stop):
        break
    time.sleep(0.01)
print(peak, n)
EOF
sync
RSS_BEFORE=$(vm "$LOCKER_PID" VmRSS)
HWM_RESET=yes
echo 5 >"/proc/$LOCKER_PID/clear_refs" 2>/dev/null || HWM_RESET=no
rm -f "$BASE/rss.ready" "$BASE/rss.stop"
python3 "$BASE/rss.py" "$LOCKER_PID" "$BASE/rss.ready" "$BASE/rss.stop" >"$BASE/rss.out" 2>>"$LOGDIR/rss.log" &
SAMPLER_PID=$!
for ((i = 0; i < 100; i++)); do [ -e "$BASE/rss.ready" ] && break; sleep 0.05; done
[ -e "$BASE/rss.ready" ] || die "the RSS sampler did not start (see $LOGDIR/rss.log)"
log "locker: ${SEQ_MB} MiB PUT (curl -T), RSS sampled every 10 ms"
curl_big bigput locker put "$LOCKER_URL/api/files/corp/big.bin" "${LOCKER_AUTH[@]}"
PUT_DONE=$EPOCHREALTIME
touch "$BASE/rss.stop"
wait "$SAMPLER_PID"
SAMPLER_PID=
read -r RSS_PEAK RSS_SAMPLES <"$BASE/rss.out"
RSS_HWM=$(vm "$LOCKER_PID" VmHWM)
RSS_AFTER=$(vm "$LOCKER_PID" VmRSS)
put rss_before locker "$(mib "$RSS_BEFORE")"
if [ -n "${RSS_PEAK:-}" ] && [ "${RSS_SAMPLES:-0}" -gt 0 ]; then
  put rss_peak locker "$(mib "$RSS_PEAK")"
else
  fail rss_peak locker "no RSS sample (see $LOGDIR/rss.log)"
fi
if [ -z "${FAILED["bigput|locker"]:-}" ]; then
  got=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' "$LOGDIR/bigput-locker.out" 2>/dev/null)
  [ "$got" = "$BIG_SHA" ] || fail verify_bigput locker "the PUT's answer gives SHA-256 ${got:-none}, want $BIG_SHA"
fi
drain_or_die "after the ${SEQ_MB} MiB PUT"
PUSH_SECS=$(awk -v a="$PUT_DONE" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
sync

log "nginx: ${SEQ_MB} MiB PUT (curl -T)"
curl_big bigput nginx put "$NGINX_URL/big.bin"
sync

# 4. big GET, cold then warm
for c in "${CONTENDERS[@]}"; do
  if [ "$c" = locker ]; then url=$LOCKER_URL/api/files/corp/big.bin; auth=("${LOCKER_AUTH[@]}")
  else url=$NGINX_URL/big.bin; auth=(); fi
  log "$c: ${SEQ_MB} MiB GET, cold (after drop_caches) then warm"
  drop_caches
  curl_big bigget_cold "$c" get "$url" "${auth[@]}"
  curl_big bigget_warm "$c" get "$url" "${auth[@]}"
  got=$(get_sha "$url" "${auth[@]}") || got=
  [ "$got" = "$BIG_SHA" ] || fail verify_bigget "$c" "the GET's bytes have SHA-256 ${got:-none}, want $BIG_SHA"
done

log "stopping the servers"
locker_stop
nginx_stop
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL_SECS=$((SECONDS - T_START))

# ---------------------------------------------------------------- report
# metric | label | unit | decimals | kind (rate: LOCKER/nginx ratio; info: LOCKER only)
METRICS=()
for n in "${CONNS[@]}"; do
  METRICS+=("get_c$n|4 KiB GET, $(conns "$n") (wrk -t $(threads_for "$n") -c $n, ${DURATION} s)|req/s|0|rate")
done
for n in "${CONNS[@]}"; do
  METRICS+=("put_c$n|4 KiB PUT replacing a file, $(conns "$n") (wrk -t $(threads_for "$n") -c $n, ${DURATION} s)|req/s|0|rate")
done
METRICS+=(
  "bigput|${SEQ_MB} MiB PUT (curl -T)|MiB/s|1|rate"
  "bigget_cold|${SEQ_MB} MiB GET, cold: after drop_caches (curl -o /dev/null)|MiB/s|1|rate"
  "bigget_warm|${SEQ_MB} MiB GET, warm: right after the cold one|MiB/s|1|rate"
  "rss_before|LOCKER daemon RSS before the ${SEQ_MB} MiB PUT|MiB|1|info"
  "rss_peak|LOCKER daemon peak RSS during the ${SEQ_MB} MiB PUT (VmRSS every 10 ms; VmHWM after it in brackets)|MiB|1|info"
)

table() {
  local line key label unit dec kind c v s row cell
  printf '| workload | unit | locker | nginx | LOCKER/nginx |\n|---|---|---:|---:|---:|\n'
  for line in "${METRICS[@]}"; do
    IFS='|' read -r key label unit dec kind <<<"$line"
    row="| $label | $unit |"
    for c in "${CONTENDERS[@]}"; do
      if [ "$kind" = info ] && [ "$c" != locker ]; then row+=" |"; continue; fi
      v=$(value "$key" "$c")
      cell=$(fmt "$v" "$dec")
      s=${SECS["$key|$c"]:-}  # one sample per cell
      if [ "$v" != FAIL ]; then
        if [ -n "${LAT["$key|$c"]:-}" ]; then cell+=" (${LAT["$key|$c"]})"
        elif [ -n "$s" ]; then cell+=" ($(printf '%.2f' "$s") s)"
        elif [ "$key" = rss_peak ] && [ -n "${RSS_HWM:-}" ]; then cell+=" ($(mib "$RSS_HWM"))"
        fi
        [ -n "${ERRS["$key|$c"]:-}" ] && cell+=" **with errors**"
      fi
      row+=" $cell |"
    done
    if [ "$kind" = info ]; then row+=" |"
    else row+=" $(ratio "$(value "$key" locker)" "$(value "$key" nginx)") |"; fi
    printf '%s\n' "$row"
  done
}

machine_facts() {
  machine_line ". wrk, curl and the server under test share these CPUs (nothing is pinned)"
  echo "- Storage: LOCKER's data dir, nginx's root and the ${SEQ_MB} MiB source file on \`$(findmnt -no SOURCE,FSTYPE,OPTIONS --target "$BASE" 2>/dev/null | tr -s ' ')\`"
  echo "- LOCKER: \`locker serve --config CFG --data-dir DATA\`, config \`[sync] upload_delay_ms = $UPLOAD_DELAY_MS\`, \`[cache] size_mb = $CACHE_MB\`, \`[api] listen/public_url = 127.0.0.1:PORT, max_body_mb = $MAX_BODY_MB\`, one key \`[api.keys.bench] namespaces = [\"*\"], write = true\` (random key for the run, from the environment), \`[namespaces.corp]\` with the default local backend (DATA/backend/corp); files under \`/api/files/corp/\`. A PUT file is pushed to the backend ${UPLOAD_DELAY_MS} ms after it is stored: during the 4 KiB PUT runs that push runs alongside; after every LOCKER PUT run and before the next run the script waits, untimed, for \`locker status --json\` to show the queue empty"
  echo "- LOCKER binary: \`$LOCKER_BIN\` ($BIN_FACTS)"
  echo "- nginx $(nginx -v 2>&1 | sed 's|.*nginx/||') (Debian package), own config: \`worker_processes $NGINX_WORKERS\` (LOCKER's API runtime has 2 worker threads), workers as nobody, \`sendfile on; access_log off; keepalive_requests 1000000;\`, root = a plain directory, \`dav_methods PUT; create_full_put_path on; client_max_body_size 0;\` with \`client_body_temp_path\` on the same filesystem (a PUT body goes to a temp file, then is renamed into place; a new file answers 201, a replaced one 204)"
  echo "- Load: $(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//') with \`scripts/bench/http-load.lua\`: threads = min(2, connections), \`--timeout 10s\`, requests cycle over the $SMALL_N paths \`small/f0000..f$(printf '%04d' $((SMALL_N - 1)))\` (every thread from its own offset, no hot path). The $SMALL_N files of $SMALL_SIZE B random bytes are PUT to LOCKER (\`scripts/bench/http-prep.py\`), the same bytes written to nginx's root, so they are in the page cache; a ${WARMUP_SECS} s GET run per server precedes the GET runs, discarded. The PUT runs write to those same paths, so every PUT replaces a file; every body is distinct (its first 48 bytes are unique), so LOCKER never deduplicates one. Connection counts run in turn, LOCKER then nginx at each"
  echo "- Big file: $(curl --version | head -n 1 | cut -d' ' -f1-2); PUT \`curl -T FILE -H 'Expect:'\` (streamed from the file, page cache warm since it was just written; no 100-continue round trip for either server); GET \`curl -o /dev/null\`, cold = after \`sync; echo 3 > /proc/sys/vm/drop_caches\`, warm = the same GET right after. Each GET's bytes checked once per server by SHA-256 (untimed), and LOCKER's PUT answer's sha256"
}

section() {
  local n
  section_head "HTTP API benchmark" scripts/bench-api.sh
  echo "- Repeats: one run. Timings on these machines are noisy: the ratios compare LOCKER and nginx within this one run; absolute figures move between runs"
  machine_facts
  echo "- Figures: req/s = wrk's requests ÷ its run time (p50 / p99 latency in brackets); MiB/s = ${SEQ_MB} MiB ÷ curl's time_total (in brackets). LOCKER/nginx is a speed ratio: above 1× LOCKER is faster. nginx is the ceiling for GET (static files, sendfile)"
  echo "- Memory: LOCKER's VmRSS from /proc/PID/status before the ${SEQ_MB} MiB PUT, then sampled every 10 ms during it (${RSS_SAMPLES:-0} samples); VmHWM read after it$([ "$HWM_RESET" = yes ] && echo ", reset just before it with \`echo 5 > /proc/PID/clear_refs\`" || echo " (could not be reset: peak since start)"); RSS after the PUT: $(mib "${RSS_AFTER:-0}") MiB"
  echo "- After the ${SEQ_MB} MiB PUT returned, LOCKER's push of the file to its local backend finished ${PUSH_SECS:-?} s later (includes the ${UPLOAD_DELAY_MS} ms upload delay; untimed, nothing else ran meanwhile)"
  echo "- After each 4 KiB PUT run, LOCKER's upload queue took this long to empty (untimed, before the next run): $(IFS=,; d="${PUT_DRAINS[*]}"; echo "${d//,/, }") connections"
  for n in "${NOTES[@]}"; do echo "- Note: $n"; done
  if [ $FAILURES -gt 0 ]; then
    echo "- $FAILURES problem(s) (FAIL in the table: no figure; **with errors**: figure kept, but some requests failed):"
    printf '  - %s\n' "${FAIL_NOTES[@]}"
  else
    echo "- Errors: none (every response 2xx, no socket errors, every check passed)"
  fi
  echo
  table
}

SECTION=$(section)
report_section "$MD_FILE" bench-api "API $MODE"
log "done in ${TOTAL_SECS}s; $FAILURES problem(s)"
[ $FAILURES -eq 0 ]
