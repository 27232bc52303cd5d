#!/usr/bin/env bash
# Benchmark of LOCKER's sync sidecar against rclone, both pushing to the same
# local server in the same run, started and stopped here on 127.0.0.1 (a free
# port, random credentials made for the run):
#   --backend s3 (default)  moto_server
#   --backend garage        Garage, a real S3 server (built once outside the
#                           repository; see scripts/lib/garage.sh), reached
#                           directly or, with --delay-ms N, through a proxy
#                           that holds every byte N ms each way
#   --backend nextcloud     the Nextcloud emulator, tests/webdav/ncserver.py
#   --backend apache        Apache httpd with mod_dav, tests/webdav/apache.sh
# Informational only: it never gates CI. Prints a markdown table and
# writes/replaces its own section of BENCHMARKS.md (one per backend).
#
# Workloads (sizes for a full run; --quick shrinks them):
#   a. upload of one 1 GiB random file: LOCKER = from the start of `cp` into
#      MNT/corp/ until `locker status --json` shows every namespace's queue
#      empty (and the object is in the bucket); rclone = `rclone copy` of the
#      same file to another bucket
#   b. the same for 3000 small files (1-16 KiB, random content) in a
#      directory tree (scripts/bench/randtree.py): `cp -r` vs `rclone copy`
#   c. cold read of the big file once evicted: LOCKER's upload data dir is
#      remounted with a 16 MiB cache (the evictor drops the blocks the
#      backend holds) and the page cache dropped, so every block comes from
#      the backend by ranged GET: `cat MNT/corp/big` vs `rclone cat`, and
#      (Garage) vs `cat` through `rclone mount --vfs-cache-mode full`
#   g. (after d) removal of b's tree: `rm -rf MNT/corp/small` until the queue
#      is empty and nothing is left under the prefix, vs `rclone purge`
#   d. close-to-confirmed latency of a 4 KiB file: from the return of the
#      `cp` that writes (and closes) it until HEAD on the bucket shows the
#      object with its size (scripts/lib/s3tool.py wait, 10 ms polls), median
#      of 10 files; it includes LOCKER's upload_delay_ms. Reference: the run
#      time of `rclone copyto` of the same file.
# An object's key is the file's path below the namespace (no prefix set).
#
# On WebDAV the "buckets" are folders below the user's files root (made with
# MKCOL; LOCKER's namespace has the prefix corp-rN/), the checks are WebDAV
# requests (scripts/lib/davtool.py: HEAD, PROPFIND Depth 1 walks, GET), d
# polls HEAD on the file every 10 ms, and rclone uses a webdav remote
# (vendor nextcloud or other) configured by environment variables. LOCKER's
# flavor is set (nextcloud / plain) and chunk_size_mb = 10: on Nextcloud the
# big file goes up as chunked upload v2.
#
# Usage: scripts/bench-sync.sh [--backend s3|garage|nextcloud|apache]
#                              [--delay-ms N] [--quick]
#                              [--only locker,rclone] [--repeat N]
#                              [--build] [--no-md] [--keep-logs]
# Needs root (FUSE mount with allow_other, drop_caches). See --help.
set -uo pipefail
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
. "$REPO/scripts/lib/bench-common.sh"
HELPERS=$SCRIPT_DIR/bench
S3TOOL=$SCRIPT_DIR/lib/s3tool.py
DAVTOOL=$SCRIPT_DIR/lib/davtool.py
NCSERVER=$REPO/tests/webdav/ncserver.py
APACHE_SH=$REPO/tests/webdav/apache.sh
DEFAULT_LOCKER_BIN=$REPO/target/release/locker
LOCKER_BIN=${LOCKER_BIN:-$DEFAULT_LOCKER_BIN}
VENV=${LOCKER_TEST_VENV:-/opt/locker-test/venv}
VPY=$VENV/bin/python
MOTO_BIN=$VENV/bin/moto_server
MD_FILE=${BENCH_MD:-$REPO/BENCHMARKS.md}
ALL_CONTENDERS=(locker rclone)
ORIG_ARGS=("$@")

usage() {
  cat <<'EOF'
Usage: scripts/bench-sync.sh [options]

  --backend NAME     the server both contenders push to, started here on
                     127.0.0.1: s3 (moto_server; the default), nextcloud
                     (tests/webdav/ncserver.py, the Nextcloud emulator) or
                     apache (tests/webdav/apache.sh, mod_dav); each writes
                     its own section of BENCHMARKS.md
  --delay-ms N       (garage) hold every TCP packet to and from the server
                     N ms (a round trip of 2N ms more, as across a WAN),
                     with a netfilter queue and scripts/bench/nfqdelay.c:
                     this kernel has no tc netem. Each delay has its own
                     section
  --quick            smoke-test sizes (64 MiB file, 300 small files)
  --only LIST        comma-separated contenders from locker,rclone
                     (default: both)
  --repeat N         run every workload N times and report medians (default 1)
  --build            run `cargo build --release` first even when the binary
                     exists (by default it is built only when missing)
  --no-md            do not write BENCHMARKS.md (the table still goes to stdout)
  --keep-logs        keep the log directory even when every step succeeded
  -h, --help         this text

Environment:
  LOCKER_BIN           LOCKER binary (default: REPO/target/release/locker)
  LOCKER_TEST_VENV     venv with moto[server] and boto3 (default
                       /opt/locker-test/venv; scripts/deps.sh makes it); its
                       python also runs the Nextcloud emulator when present
  BENCH_TMP            where data dirs and the server's files go (default /var/tmp)
  BENCH_MD             the markdown file to update (default REPO/BENCHMARKS.md)
  BENCH_STEP_TIMEOUT   seconds allowed to any single timed command (default 900)
  BENCH_DRAIN_TIMEOUT  seconds allowed for LOCKER's queue to drain (default 900)
  BENCH_CACHE_EXTRA    lines added to LOCKER's [cache] section, for experiments
                       (e.g. "fetches = 8"); only with --no-md, since the
                       written setup would not show them
EOF
}

# ---------------------------------------------------------------- options
QUICK=0
BACKEND=s3
DELAY_MS=0
ONLY=locker,rclone
REPEAT=1
BUILD=0
WRITE_MD=1
KEEP_LOGS=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --backend) [ $# -ge 2 ] || { echo "bench-sync: --backend needs a name" >&2; exit 2; }; BACKEND=$2; shift ;;
    --backend=*) BACKEND=${1#--backend=} ;;
    --delay-ms) [ $# -ge 2 ] || { echo "bench-sync: --delay-ms needs a number" >&2; exit 2; }; DELAY_MS=$2; shift ;;
    --delay-ms=*) DELAY_MS=${1#--delay-ms=} ;;
    --only) [ $# -ge 2 ] || { echo "bench-sync: --only needs a list" >&2; exit 2; }; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --repeat) [ $# -ge 2 ] || { echo "bench-sync: --repeat needs a number" >&2; exit 2; }; REPEAT=$2; shift ;;
    --repeat=*) REPEAT=${1#--repeat=} ;;
    --build) BUILD=1 ;;
    --no-md) WRITE_MD=0 ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench-sync: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

select_contenders bench-sync
case $BACKEND in
  s3) MD_NAME=bench-sync ;;
  garage) MD_NAME=bench-sync-garage-${DELAY_MS}ms ;;
  nextcloud|apache) MD_NAME=bench-sync-$BACKEND ;;
  *) echo "bench-sync: --backend must be s3, garage, nextcloud or apache" >&2; exit 2 ;;
esac
case $DELAY_MS in ''|*[!0-9]*) echo "bench-sync: --delay-ms needs a number" >&2; exit 2 ;; esac
if [ "$DELAY_MS" -gt 0 ] && [ "$BACKEND" != garage ]; then
  echo "bench-sync: --delay-ms goes with --backend garage" >&2; exit 2
fi
is_dav() { [ "$BACKEND" = nextcloud ] || [ "$BACKEND" = apache ]; }
is_garage() { [ "$BACKEND" = garage ]; }
. "$REPO/scripts/lib/garage.sh"
if is_garage && [ ! -x "$GARAGE_BIN" ]; then
  echo "bench-sync: no Garage at $GARAGE_BIN: skipped (build it once outside the repository, see scripts/lib/garage.sh, or set GARAGE_BIN)" >&2
  exit 0
fi
case $REPEAT in ''|*[!0-9]*|0) echo "bench-sync: --repeat needs a positive number" >&2; exit 2 ;; esac

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-sync: must run as root (FUSE mount with allow_other, drop_caches)" >&2
  exit 2
fi

# ---------------------------------------------------------------- sizes
if [ $QUICK -eq 1 ]; then
  MODE=quick
  SEQ_MB=64 SMALL_FILES=300 SMALL_DIRS=20
else
  MODE=full
  SEQ_MB=1024 SMALL_FILES=3000 SMALL_DIRS=100
fi
LAT_FILES=10 LAT_SIZE=4096
UPLOAD_DELAY_MS=200
# The upload mounts' cache holds all the test data: blocks not yet uploaded
# are never evicted, so a smaller cache would make the writes wait for room
# (cache.write_timeout_s) and measure that bound instead of the uploads.
UP_CACHE_MB=$((SEQ_MB * 2 + 256))
COLD_CACHE_MB=16                           # eviction mount: far below the file
READ_CACHE_MB=1024                         # the cold read's mount: the default's readahead fits
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-900}    # any single command run through step()
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-900}  # LOCKER's queue to drain after a copy
MOUNT_TIMEOUT=30                           # seconds to wait for a mount
STOP_TIMEOUT=60                            # after SIGTERM (LOCKER drains up to 30 s)
MOTO_TIMEOUT=30                            # moto_server (or a WebDAV server) to answer
APPEAR_TIMEOUT=120                         # remote files to show in a new mount
LAT_TIMEOUT=60                             # one small file to reach the bucket

if [ -n "${BENCH_CACHE_EXTRA:-}" ] && [ "$WRITE_MD" = 1 ]; then
  echo "bench-sync: BENCH_CACHE_EXTRA changes LOCKER's settings; use it with --no-md" >&2
  exit 2
fi
RUN_ID=$(date +%Y%m%d-%H%M%S)
BASE=${BENCH_TMP:-/var/tmp}/locker-bench-sync.$$
SHM=/dev/shm/locker-bench-sync.$$
LOGDIR=${TMPDIR:-/tmp}/locker-bench-sync-$RUN_ID
MNT=$BASE/mnt
RCLONE_REMOTE=bench
export RCLONE_CONFIG=$BASE/rclone.conf
if is_dav; then
  RCLONE_FLAGS=(--transfers 8)                          # LOCKER: uploads = 8
else
  RCLONE_FLAGS=(--transfers 8 --s3-upload-concurrency 4)  # LOCKER: uploads = 8, parallel_parts = 4
fi
DAV_CHUNK_MB=10                             # LOCKER's chunk_size_mb (Nextcloud)
MOTO_PID=
NC_PID=
APACHE_DIR=
LOCKER_PID=
LOCKER_DATA=
WAITER_PID=
declare -A RES=() SECS=() COUNT=() FAILED=()
FAILURES=0
FAIL_NOTES=()
NOTES=()
T_START=$SECONDS

# fd 3 and 4 keep the script's own stdout and stderr: a trap can fire while a
# step's output is redirected to a log file.
exec 3>&1 4>&2
log() { printf '[bench-sync %4ds] %s\n' $((SECONDS - T_START)) "$*" >&4; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- teardown

locker_stop() {  # unmount LOCKER: SIGTERM (it drains, then unmounts), else force
  local pid=$LOCKER_PID
  [ -n "$pid" ] || return 0
  LOCKER_PID=
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    local i
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && log "locker: still running ${STOP_TIMEOUT}s after SIGTERM"
  fi
  if mountpoint -q "$MNT" 2>/dev/null; then
    log "locker: $MNT still mounted after its process ended or was signalled; fusermount3 -uz"
    fusermount3 -uz "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
  fi
  if alive "$pid"; then
    log "locker: kill -9 $pid"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
}

RCLONE_MNT=
RCLONE_MOUNT_PID=
rclone_unmount() {
  [ -n "$RCLONE_MNT" ] || return 0
  fusermount3 -u "$RCLONE_MNT" 2>/dev/null || fusermount3 -uz "$RCLONE_MNT" 2>/dev/null
  [ -n "$RCLONE_MOUNT_PID" ] && stop_pid "$RCLONE_MOUNT_PID" 10
  RCLONE_MNT=''
  RCLONE_MOUNT_PID=''
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  exec 1>&3 2>&4
  stop_step
  [ -n "$WAITER_PID" ] && stop_pid "$WAITER_PID" 2
  locker_stop
  if [ -n "$MOTO_PID" ]; then
    stop_pid "$MOTO_PID" 10 || log "moto_server: killed with SIGKILL"
    MOTO_PID=
  fi
  rclone_unmount
  delay_stop
  garage_stop
  if [ -n "$NC_PID" ]; then
    stop_pid "$NC_PID" 10 || log "ncserver.py: killed with SIGKILL"
    NC_PID=
  fi
  if [ -n "$APACHE_DIR" ]; then
    cp "$APACHE_DIR/access.log" "$APACHE_DIR/error.log" "$LOGDIR/" 2>/dev/null
    "$APACHE_SH" stop "$APACHE_DIR" >>"$LOGDIR/apache.log" 2>&1 3>&- 4>&- || log "apache.sh stop failed"
    APACHE_DIR=
  fi
  if mountpoint -q "$MNT" 2>/dev/null; then
    log "WARNING: $MNT is still mounted; not removing $BASE"
  else
    rm -rf --one-file-system "$BASE"
  fi
  rm -rf "$SHM"
  tidy_logs $rc bench-sync
  exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- helpers
# STORE: the client that checks what the server holds, independent of LOCKER
# and rclone (s3tool.py or davtool.py, the same commands); set once the
# server runs.
STORE=()
store() { "${STORE[@]}" "$@"; }
case $BACKEND in
  s3) SERVER_LOG=$LOGDIR/moto.log OBJ_HOME=bucket ;;
  garage) SERVER_LOG=$LOGDIR/garage.log OBJ_HOME=bucket ;;
  nextcloud) SERVER_LOG=$LOGDIR/ncserver.log OBJ_HOME=folder ;;
  apache) SERVER_LOG=$LOGDIR/apache.log OBJ_HOME=folder ;;
esac
server_alive() {
  case $BACKEND in
    s3) alive "$MOTO_PID" ;;
    garage) alive "$GARAGE_PID" && { [ "$DELAY_MS" -eq 0 ] || alive "$DELAY_PID"; } ;;
    nextcloud) alive "$NC_PID" ;;
    apache) [ -n "$APACHE_DIR" ] && alive "$(cat "$APACHE_DIR/httpd.pid" 2>/dev/null)" ;;
  esac
}

# ---------------------------------------------------------------- dependencies
need=()
command -v python3 >/dev/null || need+=(python3)
command -v mountpoint >/dev/null || need+=(util-linux)
has rclone && { command -v rclone >/dev/null || need+=(rclone); }
has locker && { command -v fusermount3 >/dev/null || need+=(fuse3); }
is_garage && has rclone && { command -v fusermount3 >/dev/null || need+=(fuse3); }
is_garage && { command -v curl >/dev/null || need+=(curl); }
if [ "$DELAY_MS" -gt 0 ]; then
  command -v cc >/dev/null || need+=(gcc)
  command -v iptables >/dev/null || need+=(iptables)
  [ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
fi
if [ "$BACKEND" = apache ]; then
  [ -x /usr/sbin/apache2 ] || need+=(apache2)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  command -v curl >/dev/null || need+=(curl)
fi
apt_install "${need[@]}"
# Python for the Nextcloud emulator and davtool.py (standard library only):
# the test venv's, as the tests use, else python3.
DPY=python3
[ -x "$VPY" ] && DPY=$VPY
if is_dav; then
  :
elif [ ! -x "$MOTO_BIN" ] || ! "$VPY" -c 'import boto3' 2>/dev/null; then
  log "no moto_server/boto3 in $VENV: running scripts/deps.sh"
  bash "$SCRIPT_DIR/deps.sh" >&2 || die "scripts/deps.sh failed"
  [ -x "$MOTO_BIN" ] || die "scripts/deps.sh did not install $MOTO_BIN"
fi
if has locker; then
  if [ $BUILD -eq 1 ] || [ ! -x "$LOCKER_BIN" ]; then
    [ "$LOCKER_BIN" = "$DEFAULT_LOCKER_BIN" ] || [ $BUILD -eq 0 ] ||
      die "--build builds $DEFAULT_LOCKER_BIN, but LOCKER_BIN=$LOCKER_BIN"
    [ "$LOCKER_BIN" = "$DEFAULT_LOCKER_BIN" ] || die "LOCKER_BIN=$LOCKER_BIN does not exist"
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    build_locker
  fi
  if [ -n "$(find "$REPO/src" "$REPO/Cargo.toml" -newer "$LOCKER_BIN" -print -quit 2>/dev/null)" ]; then
    log "WARNING: sources are newer than $LOCKER_BIN (use --build)"
    NOTES+=("the LOCKER binary was older than some of the sources")
  fi
fi

# ---------------------------------------------------------------- work dirs, data
mkdir -p "$BASE/moto-tmp" "$SHM" "$LOGDIR" "$MNT" || die "cannot create work directories"
log "backend $BACKEND; mode $MODE; contenders: ${CONTENDERS[*]}; logs in $LOGDIR"
need_space /dev/shm $(((SEQ_MB + SMALL_FILES * 17 / 1024 + 16) * 1024))
# moto spills large objects to files, a WebDAV server keeps files (and, on
# Nextcloud, a chunked upload's parts until it is assembled); every repeat
# keeps two copies of each.
need_space "$BASE" $(((SEQ_MB * 4 * REPEAT + SEQ_MB * 2 + 1024) * 1024))

log "generating test data in $SHM (${SEQ_MB} MiB random file, ${SMALL_FILES} small files, ${LAT_FILES} x ${LAT_SIZE} B)"
head -c "$((SEQ_MB * 1048576))" /dev/urandom >"$SHM/big" || die "cannot write $SHM/big"
SEQ_BYTES=$((SEQ_MB * 1048576))
SEQ_SHA=$(sha256sum <"$SHM/big" | cut -d' ' -f1)
SMALL_BYTES=$(python3 "$HELPERS/randtree.py" "$SHM/small" "$SMALL_FILES" "$SMALL_DIRS") || die "randtree.py failed"
mkdir -p "$SHM/lat"
for ((i = 1; i <= LAT_FILES; i++)); do
  head -c "$LAT_SIZE" /dev/urandom >"$SHM/lat/f$i.bin" || die "cannot write $SHM/lat/f$i.bin"
done

# ---------------------------------------------------------------- WebDAV servers
start_nextcloud() {  # sets NC_PID, DAV_URL
  local deadline line
  : >"$BASE/nc.out"
  setsid "$DPY" "$NCSERVER" --root "$BASE/nc" --port 0 --user "$DAV_USER" \
    --password-file "$DAV_PWFILE" </dev/null >"$BASE/nc.out" 2>>"$LOGDIR/ncserver.log" 3>&- 4>&- &
  NC_PID=$!
  deadline=$((SECONDS + MOTO_TIMEOUT))
  while alive "$NC_PID" && [ $SECONDS -lt $deadline ]; do
    line=$(head -n1 "$BASE/nc.out")
    case $line in
      "ready http://"*)
        DAV_URL=${line#ready }
        DAV_URL=${DAV_URL%/}/remote.php/dav/files/$DAV_USER/
        log "ncserver.py on $DAV_URL (pid $NC_PID)"
        return 0 ;;
    esac
    sleep 0.1
  done
  log "ncserver.py did not say ready within ${MOTO_TIMEOUT}s; last log lines:"
  tail -n 5 "$LOGDIR/ncserver.log" >&2
  return 1
}

start_apache() {  # sets APACHE_DIR, DAV_URL; a few ports are tried
  local try port out
  for try in 1 2 3; do
    port=$(free_port) || return 1
    APACHE_DIR=$BASE/apache
    if out=$("$APACHE_SH" start "$APACHE_DIR" "$port" "$DAV_USER" "$DAV_PWFILE" 2>>"$LOGDIR/apache.log" 3>&- 4>&-) &&
       [ "${out#ready http://}" != "$out" ]; then
      DAV_URL=${out#ready }
      log "apache httpd on $DAV_URL (pid $(cat "$APACHE_DIR/httpd.pid" 2>/dev/null))"
      return 0
    fi
    log "apache.sh did not start httpd on port $port (try $try); last log lines:"
    tail -n 5 "$LOGDIR/apache.log" >&2
    "$APACHE_SH" stop "$APACHE_DIR" >>"$LOGDIR/apache.log" 2>&1 3>&- 4>&-
    APACHE_DIR=
  done
  return 1
}

if is_dav; then
  # A user and password made for this run only; the password is in a 0600
  # file (LOCKER, the servers, davtool.py) and, obscured, in rclone's
  # environment.
  DAV_USER=bench$(python3 -c 'import secrets; print(secrets.token_hex(4))')
  DAV_PWFILE=$BASE/dav.password
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(24))' >"$DAV_PWFILE") ||
    die "cannot write $DAV_PWFILE"
  case $BACKEND in
    nextcloud)
      start_nextcloud || die "ncserver.py did not start (log: $LOGDIR/ncserver.log)"
      SERVER_VERSION="tests/webdav/ncserver.py (a Nextcloud 30 emulator in Python $("$DPY" -c 'import platform; print(platform.python_version())'), one thread per connection)"
      RCLONE_VENDOR=nextcloud LOCKER_FLAVOR=nextcloud ;;
    apache)
      start_apache || die "apache httpd did not start (log: $LOGDIR/apache.log)"
      SERVER_VERSION="Apache httpd $(dpkg-query -W -f '${Version}' apache2 2>/dev/null) with mod_dav_fs (tests/webdav/apache.sh: event MPM, up to 32 workers, basic auth)"
      RCLONE_VENDOR=other LOCKER_FLAVOR=plain ;;
  esac
  STORE=("$DPY" "$DAVTOOL" --url "$DAV_URL" --user "$DAV_USER" --password-file "$DAV_PWFILE")
  if has rclone; then
    : >"$RCLONE_CONFIG"
    RCLONE_PASS=$(rclone obscure - <"$DAV_PWFILE") || die "rclone obscure failed"
    export RCLONE_CONFIG_BENCH_TYPE=webdav RCLONE_CONFIG_BENCH_URL=$DAV_URL
    export RCLONE_CONFIG_BENCH_VENDOR=$RCLONE_VENDOR RCLONE_CONFIG_BENCH_USER=$DAV_USER
    export RCLONE_CONFIG_BENCH_PASS=$RCLONE_PASS
  fi
elif is_garage; then
# ---------------------------------------------------------------- Garage
# Its key for this run (made by garage, written 0600 in its directory);
# LOCKER and rclone read it from the environment.
garage_start "$BASE/garage" "$LOGDIR/garage.log" || die "garage did not start (log: $LOGDIR/garage.log)"
ENDPOINT=$GARAGE_URL
log "garage $(garage_version) on $GARAGE_URL (pid $GARAGE_PID)"
if [ "$DELAY_MS" -gt 0 ]; then
  delay_start "$GARAGE_URL" "$DELAY_MS" "$LOGDIR/nfqdelay.log" "$BASE" || die "the delay did not start"
  ENDPOINT=$DELAY_URL
  log "packets to and from $ENDPOINT held ${DELAY_MS} ms each way (nfqdelay)"
fi
export AWS_ACCESS_KEY_ID=$GARAGE_KEY_ID AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET
export AWS_DEFAULT_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_CA_BUNDLE
else
# ---------------------------------------------------------------- moto
# Random credentials for this run only; moto accepts any, LOCKER and rclone
# read them from the environment.
AWS_ACCESS_KEY_ID=bench$(python3 -c 'import secrets; print(secrets.token_hex(8))')
AWS_SECRET_ACCESS_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=us-east-1
# The endpoint is plain HTTP: a CA bundle from the environment is of no use,
# and rclone's S3 client fails outright when AWS_CA_BUNDLE is set.
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_CA_BUNDLE

moto_listening() {  # port: the listener on it is our moto_server (not another server that took the port)
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -q "pid=$MOTO_PID,"
}

start_moto() {  # sets MOTO_PID, ENDPOINT; a few ports are tried (the free one may be taken meanwhile)
  local try port deadline
  for try in 1 2 3; do
    port=$(free_port) || return 1
    ENDPOINT=http://127.0.0.1:$port
    TMPDIR=$BASE/moto-tmp setsid "$MOTO_BIN" -H 127.0.0.1 -p "$port" \
      </dev/null >>"$LOGDIR/moto.log" 2>&1 3>&- 4>&- &
    MOTO_PID=$!
    deadline=$((SECONDS + MOTO_TIMEOUT))
    while alive "$MOTO_PID" && [ $SECONDS -lt $deadline ]; do
      if "$VPY" "$S3TOOL" wait-http "$ENDPOINT/" 1 2>/dev/null && moto_listening "$port"; then
        log "moto_server $MOTO_VERSION on $ENDPOINT (pid $MOTO_PID)"
        return 0
      fi
    done
    log "moto_server did not start on port $port (try $try); last log lines:"
    tail -n 5 "$LOGDIR/moto.log" >&2
    stop_pid "$MOTO_PID" 5
    MOTO_PID=
  done
  return 1
}
MOTO_VERSION=$("$VPY" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null)
start_moto || die "moto_server did not start (log: $LOGDIR/moto.log)"
fi
if ! is_dav; then
  STORE=("$VPY" "$S3TOOL" --endpoint "$ENDPOINT")
  cat >"$RCLONE_CONFIG" <<EOF
[$RCLONE_REMOTE]
type = s3
provider = Other
env_auth = true
endpoint = $ENDPOINT
region = us-east-1
force_path_style = true
EOF
fi

# ---------------------------------------------------------------- LOCKER
write_config() {  # file bucket cache_mb
  cat >"$1" <<EOF
[sync]
upload_delay_ms = $UPLOAD_DELAY_MS
refresh_interval_s = 0

[cache]
size_mb = $3
${BENCH_CACHE_EXTRA:-}

EOF
  if is_dav; then
    cat >>"$1" <<EOF
[namespaces.corp]
backend = "webdav"
url = "$DAV_URL"
prefix = "$2/"
user = "$DAV_USER"
password_file = "$DAV_PWFILE"
flavor = "$LOCKER_FLAVOR"
EOF
    if [ "$LOCKER_FLAVOR" = nextcloud ]; then echo "chunk_size_mb = $DAV_CHUNK_MB" >>"$1"; fi
  else
    cat >>"$1" <<EOF
[namespaces.corp]
backend = "s3"
endpoint = "$ENDPOINT"
region = "us-east-1"
bucket = "$2"
path_style = true
EOF
  fi
}

locker_mount() {  # config data-dir logfile: mounts at MNT, waits for the FUSE fs and MNT/corp
  local cfg=$1 data=$2 logf=$3 deadline=$((SECONDS + MOUNT_TIMEOUT)) t
  mkdir -p "$data"
  if mountpoint -q "$MNT"; then log "locker: $MNT is already a mount point"; return 1; fi
  setsid "$LOCKER_BIN" mount "$MNT" --config "$cfg" --data-dir "$data" \
    </dev/null >>"$logf" 2>&1 3>&- 4>&- &
  LOCKER_PID=$!
  LOCKER_DATA=$data
  while :; do
    t=$(stat -f -c %T "$MNT" 2>/dev/null)
    case $t in fuse*) [ -d "$MNT/corp" ] && break ;; esac
    if ! alive "$LOCKER_PID"; then
      wait "$LOCKER_PID"
      log "locker: exited (status $?) before $MNT was mounted; last log lines:"
      tail -n 20 "$logf" >&2
      LOCKER_PID=
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "locker: $MNT not mounted with corp/ after ${MOUNT_TIMEOUT}s (fs type: ${t:-?}); last log lines:"
      tail -n 20 "$logf" >&2
      return 1
    fi
    sleep 0.1
  done
  log "locker: mounted $MNT (pid $LOCKER_PID, data dir $data)"
}

# Reads `locker status --json` on stdin. Prints a one-line summary; exit 0
# when every namespace's queue is empty, 1 while something is pending, 2 when
# the JSON is not what it should be.
cat >"$BASE/status.py" <<'EOF'
import json, sys
try:
    d = json.load(sys.stdin)
    ns = d["namespaces"]
    assert isinstance(ns, list) and ns, "no namespaces"
    parts, pending = [], False
    for n in ns:
        busy = bool(n["queue"]) or bool(n["pending_bytes"])
        pending |= busy
        s = "%s: %d queued, %d bytes" % (n["name"], n["queue"], n["pending_bytes"])
        if n.get("oldest_age_s") is not None:
            s += ", oldest %ss" % n["oldest_age_s"]
        if n.get("reachable") is False:
            s += ", UNREACHABLE"
        if n.get("last_error"):
            s += ", last error: %s" % " ".join(str(n["last_error"]).split())
        parts.append(s)
    c = d.get("cache") or {}
    parts.append("cache %s/%s bytes, %s dirty" % (c.get("used_bytes"), c.get("limit_bytes"), c.get("dirty_bytes")))
except Exception as e:
    print("unexpected status JSON (%s: %s)" % (e.__class__.__name__, e))
    sys.exit(2)
print("; ".join(parts))
sys.exit(1 if pending else 0)
EOF

# wait_drained LABEL CHECK...: polls `locker status --json` until every queue
# is empty and then CHECK (a command that looks at the bucket) succeeds.
# Sets DRAINED_AT to the time of the first status that showed the queues
# empty with CHECK passing. Returns 1 on timeout or if the daemon died, with
# why in DRAIN_WHY and the daemon's last log lines on stderr.
DRAINED_AT=
DRAIN_WHY=
wait_drained() {
  local label=$1; shift
  local deadline=$((SECONDS + DRAIN_TIMEOUT)) out rc summary="no status yet" t early=0 last_check=
  DRAINED_AT="" DRAIN_WHY=""
  while :; do
    if ! alive "$LOCKER_PID"; then
      DRAIN_WHY="the daemon exited while its uploads were pending; last status: $summary"
      log "locker: $label: $DRAIN_WHY; last log lines:"
      tail -n 20 "$LOGDIR/locker-$REP.log" >&2
      return 1
    fi
    out=$(timeout 20 "$LOCKER_BIN" status --data-dir "$LOCKER_DATA" --json 2>"$BASE/status.err")
    rc=$?
    t=$EPOCHREALTIME
    if [ $rc -ne 0 ]; then
      summary="\`locker status\` exited with $rc: $(head -c 300 "$BASE/status.err" | tr '\n' ' ')"
    else
      summary=$(printf '%s' "$out" | python3 "$BASE/status.py")
      rc=$?
      if [ $rc -eq 0 ]; then
        if last_check=$("$@" 2>&1); then
          DRAINED_AT=$t
          [ $early -gt 0 ] && NOTES+=("$label: \`locker status\` showed the queue empty $early time(s) before the bucket had everything")
          return 0
        fi
        [ $early -eq 0 ] && log "locker: $label: status shows the queue empty but the bucket is not complete yet ($last_check)"
        early=$((early + 1))
        summary="queue empty, but the bucket check says: $last_check"
      elif [ $rc -eq 2 ]; then
        summary="$summary: $(printf '%s' "$out" | head -c 300)"
      fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      DRAIN_WHY="uploads not finished after ${DRAIN_TIMEOUT}s (BENCH_DRAIN_TIMEOUT); last status: $summary"
      log "locker: $label: $DRAIN_WHY"
      log "locker: last lines of its log:"
      tail -n 20 "$LOGDIR/locker-$REP.log" >&2
      return 1
    fi
    sleep 0.1
  done
}

# wait_listed LABEL: until every namespace's first listing of the backend
# (the refresh a mount starts with) is done, so that it does not run beside a
# timed workload. Untimed; a note if it does not end in APPEAR_TIMEOUT.
wait_listed() {
  local deadline=$((SECONDS + APPEAR_TIMEOUT))
  while alive "$LOCKER_PID"; do
    "$LOCKER_BIN" status --data-dir "$LOCKER_DATA" --json 2>/dev/null | python3 -c '
import json, sys
ns = json.load(sys.stdin)["namespaces"]
sys.exit(0 if ns and all(n.get("last_refresh_age_s") is not None for n in ns) else 1)' 2>/dev/null && return 0
    if [ $SECONDS -ge $deadline ]; then
      NOTES+=("$1: the mount's first listing of the backend had not finished after ${APPEAR_TIMEOUT}s; the workload started anyway")
      return 1
    fi
    sleep 0.1
  done
  return 1
}

check_big() {  # bucket key: object there with the big file's size
  local out size
  out=$(store head "$1" "$2" 2>&1) || { echo "$out"; return 1; }
  size=$(printf '%s' "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["size"])')
  [ "$size" = "$SEQ_BYTES" ] || { echo "$1/$2 has $size bytes, want $SEQ_BYTES"; return 1; }
}
check_small() {  # bucket prefix: all small files there with the right total size
  local out
  out=$(store ls "$1" "$2" 2>&1) || { echo "$out"; return 1; }
  printf '%s\n' "$out" | python3 -c '
import json, sys
n = int(sys.argv[1]); b = int(sys.argv[2])
objs = [json.loads(l) for l in sys.stdin if l.strip()]
# Directory markers ("dir/", empty) are not files.
objs = [o for o in objs if not o["key"].endswith("/")]
tot = sum(o["size"] for o in objs)
if len(objs) != n or tot != b:
    print("%d objects of %d bytes under the prefix, want %d of %d" % (len(objs), tot, n, b))
    sys.exit(1)' "$SMALL_FILES" "$SMALL_BYTES"
}
check_none() {  # bucket prefix: nothing left under it (files nor folders)
  local out n rc
  out=$(store ls "$1" "$2" 2>&1)
  rc=$?
  # 3: no such folder (WebDAV), which is what is wanted.
  [ $rc -eq 3 ] && return 0
  [ $rc -eq 0 ] || { echo "$out"; return 1; }
  n=$(printf '%s\n' "$out" | grep -c .)
  [ "$n" -eq 0 ] || { echo "$n entries still under $1/$2"; return 1; }
}
check_sha() {  # bucket key: the object's bytes are the big file's
  local got
  got=$(store sha256 "$1" "$2" 2>&1) || { echo "$got"; return 1; }
  [ "$got" = "$SEQ_SHA" ] || { echo "$1/$2: SHA-256 differs from the source file"; return 1; }
}

# a, b and d on one mount, from a fresh data dir and an empty bucket.
locker_upload() {
  local b=corp-r$REP cfg=$BASE/locker-up.toml data=$BASE/locker-data-up t0 msg
  local logf=$LOGDIR/locker-$REP.log
  write_config "$cfg" "$b" "$UP_CACHE_MB"
  cp "$cfg" "$LOGDIR/locker-up.toml"
  if ! locker_mount "$cfg" "$data" "$logf"; then
    for m in up_big up_small latency; do fail "$m" locker "mount failed (see $logf)"; done
    locker_stop
    return 1
  fi
  wait_listed "upload mount"

  log "locker: a. upload of a ${SEQ_MB} MiB file (cp, then until the queue is empty)"
  sync
  t0=$EPOCHREALTIME
  if ! step cp "$SHM/big" "$MNT/corp/big" 2>>"$logf"; then
    fail up_big locker "cp into the mount failed"
  else
    local closed=$EPOCHREALTIME
    put_timed cp_big locker "$SEQ_MB" "$(awk -v a="$t0" -v b="$closed" 'BEGIN { printf "%.6f", b - a }')"
    if wait_drained "a. big file" check_big "$b" big; then
      put_timed up_big locker "$SEQ_MB" "$(awk -v a="$t0" -v b="$DRAINED_AT" 'BEGIN { printf "%.6f", b - a }')"
      put_timed close_big locker "$SEQ_MB" "$(awk -v a="$closed" -v b="$DRAINED_AT" 'BEGIN { printf "%.6f", b - a }')"
      msg=$(check_sha "$b" big) || fail verify_big locker "$msg"
    else
      fail up_big locker "$DRAIN_WHY"
    fi
  fi

  log "locker: b. upload of $SMALL_FILES small files (cp -r, then until the queue is empty)"
  sync
  cpu_mark
  t0=$EPOCHREALTIME
  if ! step cp -r "$SHM/small" "$MNT/corp/small" 2>>"$logf"; then
    fail up_small locker "cp -r into the mount failed"
  else
    put_timed cp_small locker "$SMALL_FILES" "$(since "$t0")"
    if wait_drained "b. small files" check_small "$b" small/; then
      put_timed up_small locker "$SMALL_FILES" "$(awk -v a="$t0" -v b="$DRAINED_AT" 'BEGIN { printf "%.6f", b - a }')"
      cpu_put b locker
    else
      fail up_small locker "$DRAIN_WHY"
    fi
  fi

  log "locker: d. close-to-confirmed latency, $LAT_FILES files of $LAT_SIZE B"
  locker_latency "$b" "$logf"
  # Settled before the next phase: nothing of d (the lat/ folder, say) may
  # still be going up while rclone runs. Untimed.
  wait_drained "after d" true || NOTES+=("after d, LOCKER's queue did not empty: $DRAIN_WHY")

  log "locker: g. removal of the $SMALL_FILES small files (rm -rf, then until the queue is empty)"
  t0=$EPOCHREALTIME
  if ! step rm -rf "$MNT/corp/small" 2>>"$logf"; then
    fail rm_small locker "rm -rf in the mount failed"
  else
    put_timed rmcmd_small locker "$SMALL_FILES" "$(since "$t0")"
    if wait_drained "g. removal" check_none "$b" small/; then
      put_timed rm_small locker "$SMALL_FILES" "$(awk -v a="$t0" -v b="$DRAINED_AT" 'BEGIN { printf "%.6f", b - a }')"
    else
      fail rm_small locker "$DRAIN_WHY"
    fi
  fi

  locker_stop
  # The data dir stays for the cold read (c), which remounts it with a
  # small cache so that the big file's blocks are evicted.
}

locker_latency() {  # bucket logfile
  local b=$1 logf=$2 i rf out rc t_close ms deadline samples=()
  if ! mkdir -p "$MNT/corp/lat"; then
    fail latency locker "mkdir in the mount failed"
    return
  fi
  for ((i = 1; i <= LAT_FILES; i++)); do
    rf=$BASE/ready.$i
    rm -f "$rf"
    # The waiter starts polling before the file is written: its own start-up
    # (Python, boto3) must not delay the first poll after the close.
    "${STORE[@]}" wait "$b" "lat/f$i.bin" --size "$LAT_SIZE" \
      --timeout "$LAT_TIMEOUT" --interval 0.01 --ready-file "$rf" >"$BASE/wait.$i" 2>>"$logf" &
    WAITER_PID=$!
    deadline=$((SECONDS + 30))
    while [ ! -e "$rf" ] && alive "$WAITER_PID" && [ $SECONDS -lt $deadline ]; do sleep 0.01; done
    if [ ! -e "$rf" ]; then
      stop_pid "$WAITER_PID" 2
      WAITER_PID=
      fail latency locker "the HEAD poller did not start (see $logf)"
      return
    fi
    if ! step cp "$SHM/lat/f$i.bin" "$MNT/corp/lat/f$i.bin" 2>>"$logf"; then
      stop_pid "$WAITER_PID" 2
      WAITER_PID=
      fail latency locker "writing file $i into the mount failed"
      return
    fi
    t_close=$EPOCHREALTIME
    wait "$WAITER_PID"
    rc=$?
    WAITER_PID=
    if [ $rc -ne 0 ]; then
      fail latency locker "file $i did not reach the bucket with its size within ${LAT_TIMEOUT}s"
      return
    fi
    out=$(cat "$BASE/wait.$i")
    ms=$(printf '%s' "$out" | python3 -c 'import json, sys; print("%.1f" % ((json.load(sys.stdin)["seen_at"] - float(sys.argv[1])) * 1000))' "$t_close") ||
      { fail latency locker "bad output from s3tool wait: $out"; return; }
    samples+=("$ms")
  done
  LAT_SAMPLES[locker]+=" ${samples[*]}"
  put latency locker "$(median "${samples[@]}")"
}

# c: a new data dir against the rep's bucket, with a small cache.
locker_cold() {
  local b=corp-r$REP cfg=$BASE/locker-cold.toml data=$BASE/locker-data-up deadline used msg
  local logf=$LOGDIR/locker-$REP.log
  if ! msg=$(check_big "$b" big); then
    fail cold_big locker "nothing to read: $msg"
    return 1
  fi
  # The upload's data dir, remounted with a cache far below the file: the
  # evictor drops the blocks the backend holds, and the read fetches them.
  write_config "$cfg" "$b" "$COLD_CACHE_MB"
  cp "$cfg" "$LOGDIR/locker-cold.toml"
  if ! locker_mount "$cfg" "$data" "$logf"; then
    fail cold_big locker "remount with a ${COLD_CACHE_MB} MiB cache failed (see $logf)"
    locker_stop
    return 1
  fi
  deadline=$((SECONDS + APPEAR_TIMEOUT))
  while :; do
    used=$("$LOCKER_BIN" status --data-dir "$data" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache"]["used_bytes"])' 2>/dev/null)
    [ -n "$used" ] && [ "$used" -le $((COLD_CACHE_MB << 20)) ] && break
    if ! alive "$LOCKER_PID" || [ $SECONDS -ge $deadline ]; then
      fail cold_big locker "the cache did not shrink to ${COLD_CACHE_MB} MiB within ${APPEAR_TIMEOUT}s (used: ${used:-unknown})"
      locker_stop
      rm -rf "$data"
      return 1
    fi
    sleep 0.2
  done
  # Nothing else in flight when the clock starts: the mount's first listing
  # done, the queue empty. Untimed.
  wait_listed "cold-read mount"
  wait_drained "before c" true || NOTES+=("before c, LOCKER's queue did not empty: $DRAIN_WHY")

  # Read by a mount with a cache of a usual size (the evicted blocks stay
  # evicted: nothing is fetched until read), so that the readahead window
  # (at most an eighth of the cache) is the default's.
  locker_stop
  write_config "$cfg" "$b" "$READ_CACHE_MB"
  if ! locker_mount "$cfg" "$data" "$logf"; then
    fail cold_big locker "remount with a ${READ_CACHE_MB} MiB cache failed (see $logf)"
    locker_stop
    return 1
  fi
  wait_listed "cold-read mount"
  log "locker: c. cold read of ${SEQ_MB} MiB (evicted by a ${COLD_CACHE_MB} MiB cache, read with ${READ_CACHE_MB} MiB)"
  drop_caches
  cpu_mark
  if timeit cat "$MNT/corp/big" >/dev/null 2>>"$logf"; then
    cpu_put c locker
    put_timed cold_big locker "$SEQ_MB" "$ELAPSED"
    is_garage && put_timed cold_mount locker "$SEQ_MB" "$ELAPSED"
    step cmp -s "$SHM/big" "$MNT/corp/big" || fail verify_cold locker "the file read back differs from the source"
  else
    fail cold_big locker "cat exit status $?"
  fi
  if has_small_files "$b"; then
    local n
    n=$(find "$MNT/corp/small" -type f 2>/dev/null | wc -l)
    [ "$n" -eq "$SMALL_FILES" ] || fail verify_listing locker "the new mount lists $n small files, want $SMALL_FILES"
  fi
  locker_stop
  rm -rf "$data"
}
has_small_files() { check_small "$1" small/ >/dev/null 2>&1; }

# CPU time (user + system, seconds) of a process, and of the whole machine.
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
sys_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.3f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat
}
cpu_mark() {  # before a phase measured on Garage
  CPU_G0=$(proc_cpu "${GARAGE_PID:-0}"); CPU_L0=$(proc_cpu "${LOCKER_PID:-0}"); CPU_S0=$(sys_cpu)
}
cpu_put() {  # phase contender: the CPU time since cpu_mark
  is_garage || return 0
  local d='BEGIN { printf "%.2f", b - a }'
  put "cpu_$1_garage" "$2" "$(awk -v a="$CPU_G0" -v b="$(proc_cpu "$GARAGE_PID")" "$d")"
  put "cpu_$1_all" "$2" "$(awk -v a="$CPU_S0" -v b="$(sys_cpu)" "$d")"
  if [ "$2" = locker ]; then put "cpu_$1_locker" locker "$(awk -v a="$CPU_L0" -v b="$(proc_cpu "$LOCKER_PID")" "$d")"; fi
}

# ---------------------------------------------------------------- rclone
rclone_run() {  # logfile args...: a timed rclone command (sets ELAPSED)
  local logf=$1; shift
  timeit rclone "${RCLONE_FLAGS[@]}" "$@" >>"$logf" 2>&1
}

rclone_upload() {
  local b=rclone-r$REP logf=$LOGDIR/rclone-$REP.log i msg samples=()
  log "rclone: a. rclone copy of the ${SEQ_MB} MiB file"
  sync
  if rclone_run "$logf" copy "$SHM/big" "$RCLONE_REMOTE:$b/"; then
    put_timed up_big rclone "$SEQ_MB" "$ELAPSED"
    put_timed close_big rclone "$SEQ_MB" "$ELAPSED"
    msg=$(check_sha "$b" big) || fail verify_big rclone "$msg"
  else
    fail up_big rclone "rclone copy failed (see $logf)"
  fi

  log "rclone: b. rclone copy of $SMALL_FILES small files"
  sync
  cpu_mark
  if rclone_run "$logf" copy "$SHM/small" "$RCLONE_REMOTE:$b/small"; then
    cpu_put b rclone
    put_timed up_small rclone "$SMALL_FILES" "$ELAPSED"
    msg=$(check_small "$b" small/) || fail verify_small rclone "$msg"
  else
    fail up_small rclone "rclone copy failed (see $logf)"
  fi

  log "rclone: d. rclone copyto of $LAT_FILES files of $LAT_SIZE B (process run time)"
  for ((i = 1; i <= LAT_FILES; i++)); do
    if ! rclone_run "$logf" copyto "$SHM/lat/f$i.bin" "$RCLONE_REMOTE:$b/lat/f$i.bin"; then
      fail latency rclone "rclone copyto failed (see $logf)"
      return
    fi
    samples+=("$(awk -v s="$ELAPSED" 'BEGIN { printf "%.1f", s * 1000 }')")
  done
  LAT_SAMPLES[rclone]+=" ${samples[*]}"
  put latency rclone "$(median "${samples[@]}")"

  log "rclone: g. rclone purge of the $SMALL_FILES small files"
  if rclone_run "$logf" purge "$RCLONE_REMOTE:$b/small"; then
    put_timed rm_small rclone "$SMALL_FILES" "$ELAPSED"
    msg=$(check_none "$b" small/) || fail verify_rm rclone "$msg"
  else
    fail rm_small rclone "rclone purge failed (see $logf)"
  fi
}

rclone_cold() {
  local b=rclone-r$REP logf=$LOGDIR/rclone-$REP.log msg
  if ! msg=$(check_big "$b" big); then
    fail cold_big rclone "nothing to read: $msg"
    return 1
  fi
  log "rclone: c. rclone cat of ${SEQ_MB} MiB"
  drop_caches
  cpu_mark
  if timeit rclone cat "$RCLONE_REMOTE:$b/big" >/dev/null 2>>"$logf"; then
    cpu_put c rclone
    put_timed cold_big rclone "$SEQ_MB" "$ELAPSED"
  else
    fail cold_big rclone "rclone cat failed (see $logf)"
  fi
}

# rclone mount of rclone's bucket (--vfs-cache-mode full, a fresh cache dir):
# the mount other programs would read through. Sets RCLONE_MNT.
rclone_mount() {  # bucket logfile
  local deadline=$((SECONDS + MOUNT_TIMEOUT))
  RCLONE_MNT=$BASE/rmnt
  rm -rf "$BASE/rcache"
  mkdir -p "$RCLONE_MNT" "$BASE/rcache"
  setsid rclone mount "$RCLONE_REMOTE:$1" "$RCLONE_MNT" --vfs-cache-mode full \
    --cache-dir "$BASE/rcache" </dev/null >>"$2" 2>&1 3>&- 4>&- &
  RCLONE_MOUNT_PID=$!
  until mountpoint -q "$RCLONE_MNT" && [ -e "$RCLONE_MNT/big" ]; do
    if ! alive "$RCLONE_MOUNT_PID" || [ $SECONDS -ge $deadline ]; then
      rclone_unmount
      return 1
    fi
    sleep 0.1
  done
}

first_byte() {  # contender file logfile: times `head -c 1` of the file, caches dropped
  drop_caches
  if timeit head -c 1 "$2" >/dev/null 2>>"$3"; then
    put first_byte "$1" "$(awk -v s="$ELAPSED" 'BEGIN { printf "%.1f", s * 1000 }')"
  else
    fail first_byte "$1" "head exit status $?"
  fi
}

# e. the first byte of a file that is only in the bucket (never read by the
# reader before): LOCKER on a fresh data dir over rclone's bucket, rclone
# through a fresh mount. Then (rclone) c. through that mount, fresh again.
locker_first_byte() {
  local b=rclone-r$REP cfg=$BASE/locker-first.toml data=$BASE/locker-data-first
  local logf=$LOGDIR/locker-$REP.log
  check_big "$b" big >/dev/null || { fail first_byte locker "nothing in $b to read"; return 1; }
  write_config "$cfg" "$b" "$UP_CACHE_MB"
  if ! locker_mount "$cfg" "$data" "$logf"; then
    fail first_byte locker "mount over $b failed (see $logf)"
    locker_stop
    return 1
  fi
  wait_listed "first-byte mount"
  log "locker: e. head -c 1 of the ${SEQ_MB} MiB file, only in the bucket"
  first_byte locker "$MNT/corp/big" "$logf"
  # f. The whole file, streamed (it has not been read here before, and is
  # larger than a quarter of the cache, so nothing of it is kept), with the
  # daemon's resident memory sampled every 20 ms.
  locker_stop
  rm -rf "$data"
  if ! locker_mount "$cfg" "$data" "$logf"; then
    fail stream_read locker "mount over $b failed (see $logf)"
    locker_stop
    return 1
  fi
  wait_listed "stream mount"
  log "locker: f. cat of the ${SEQ_MB} MiB file, only in the bucket, RSS sampled"
  drop_caches
  local peak=0 rss cpid
  cat "$MNT/corp/big" >/dev/null 2>>"$logf" &
  cpid=$!
  local t0=$EPOCHREALTIME
  while alive "$cpid"; do
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$LOCKER_PID/status" 2>/dev/null)
    [ -n "$rss" ] && [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.02
  done
  if wait "$cpid"; then
    put_timed stream_read locker "$SEQ_MB" "$(since "$t0")"
    put stream_rss locker "$(awk -v k="$peak" 'BEGIN { printf "%.1f", k / 1024 }')"
  else
    fail stream_read locker "cat failed"
  fi
  locker_stop
  rm -rf "$data"
}

rclone_mount_reads() {
  local b=rclone-r$REP logf=$LOGDIR/rclone-mount-$REP.log
  log "rclone: e. head -c 1 through a fresh rclone mount"
  rclone_mount "$b" "$logf" || { fail first_byte rclone "rclone mount failed (see $logf)"; return 1; }
  first_byte rclone "$RCLONE_MNT/big" "$logf"
  rclone_unmount
  log "rclone: c. cat of ${SEQ_MB} MiB through a fresh rclone mount --vfs-cache-mode full"
  rclone_mount "$b" "$logf" || { fail cold_mount rclone "rclone mount failed (see $logf)"; return 1; }
  drop_caches
  if timeit cat "$RCLONE_MNT/big" >/dev/null 2>>"$logf"; then
    put_timed cold_mount rclone "$SEQ_MB" "$ELAPSED"
  else
    fail cold_mount rclone "cat exit status $?"
  fi
  rclone_unmount
  rm -rf "$BASE/rcache"
}

# ---------------------------------------------------------------- run
declare -A LAT_SAMPLES=()
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((REP = 1; REP <= REPEAT; REP++)); do
  log "=== run $REP of $REPEAT"
  for b in corp-r$REP rclone-r$REP; do
    store mb "$b" 2>>"$SERVER_LOG" || die "cannot create $OBJ_HOME $b on the $BACKEND server"
  done
  has locker && locker_upload
  has rclone && rclone_upload
  has locker && locker_cold
  has rclone && rclone_cold
  if is_garage && has rclone; then
    has locker && locker_first_byte
    rclone_mount_reads
  fi
  server_alive || die "the $BACKEND server died (log: $SERVER_LOG)"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL_SECS=$((SECONDS - T_START))

# ---------------------------------------------------------------- report
# metric | label | unit | decimals | kind (rate: higher is better; time: lower is)
case $BACKEND in
  nextcloud) HOW_BIG=" (LOCKER: chunked upload, ${DAV_CHUNK_MB} MiB chunks; rclone: one PUT)" ;;
  apache) HOW_BIG=" (both: one PUT)" ;;
  *) HOW_BIG= ;;
esac
METRICS=(
  "up_big|a. upload of one ${SEQ_MB} MiB file$HOW_BIG: LOCKER cp → queue empty; rclone copy|MiB/s|1|rate"
  "cp_big|a. (LOCKER: the cp into the mount alone)|MiB/s|1|info"
  "close_big|a. the same upload from the cp's return (the file closed) → queue empty, LOCKER's quiet delay included; rclone copy as above|MiB/s|1|rate"
  "up_small|b. upload of $SMALL_FILES small files ($((SMALL_BYTES / 1024)) KiB): LOCKER cp -r → queue empty; rclone copy|files/s|0|rate"
  "cp_small|b. (LOCKER: the cp -r into the mount alone)|files/s|0|info"
  "cold_big|c. cold read of the ${SEQ_MB} MiB file, evicted (the upload's data dir remounted with a ${COLD_CACHE_MB} MiB cache until its blocks are evicted, then with ${READ_CACHE_MB} MiB to read; page cache dropped): cat; rclone cat|MiB/s|1|rate"
)
is_garage && METRICS+=(
  "cold_mount|c. the same read, rclone through \`rclone mount --vfs-cache-mode full\` (fresh cache): cat (LOCKER: as above)|MiB/s|1|rate"
  "cpu_b_all|b. CPU time of the whole machine during that upload (user + system; LOCKER: the cp -r, the daemon and Garage; rclone: rclone and Garage)|CPU s|2|time"
  "cpu_b_garage|b. Garage's share of it|CPU s|2|time"
  "cpu_b_locker|b. (LOCKER: the daemon's share of it)|CPU s|2|info"
  "cpu_c_all|c. CPU time of the whole machine during the cold read with cat; rclone cat (as for b)|CPU s|2|time"
  "cpu_c_garage|c. Garage's share of it|CPU s|2|time"
  "cpu_c_locker|c. (LOCKER: the daemon's share of it)|CPU s|2|info"
)
METRICS+=(
  "rm_small|g. removal of the $SMALL_FILES small files of b: LOCKER rm -rf → queue empty (nothing left under the prefix); rclone purge|files/s|0|rate"
  "rmcmd_small|g. (LOCKER: the rm -rf in the mount alone)|files/s|0|info"
)
METRICS+=(
  "latency|d. ${LAT_SIZE} B file, close → $( is_dav && echo file || echo object) visible (HEAD), median of $LAT_FILES; rclone: copyto run time|ms|0|time"
)
if is_garage; then
  METRICS+=(
    "first_byte|e. \`head -c 1\` of the ${SEQ_MB} MiB file only in the bucket (LOCKER: a fresh data dir over rclone's bucket; rclone: a fresh rclone mount)|ms|1|time"
    "stream_read|f. LOCKER: cat of the ${SEQ_MB} MiB file only in the bucket (a fresh data dir with a ${UP_CACHE_MB} MiB cache: streamed and checked as it arrives; larger than a quarter of the cache, so nothing of it is kept)|MiB/s|1|info"
    "stream_rss|f. LOCKER: the daemon's peak VmRSS during that cat (sampled every 20 ms)|MiB|1|info"
  )
fi
speed_ratio() {  # locker other kind: LOCKER's speed ÷ the other's
  case "$1$2" in *FAIL*) printf -- '–'; return ;; esac
  [ -n "$1" ] && [ -n "$2" ] || { printf -- '–'; return; }
  awk -v a="$1" -v b="$2" -v k="$3" 'BEGIN {
    r = (k == "time") ? (a > 0 ? b / a : -1) : (b > 0 ? a / b : -1)
    if (r >= 0) printf "%.2f×", r; else printf "–" }'
}

table() {
  local line key label unit dec kind c v s row hdr sep
  hdr="| workload | unit |"; sep="|---|---|"
  for c in "${CONTENDERS[@]}"; do hdr+=" $c |"; sep+="---:|"; done
  has locker && has rclone && { hdr+=" LOCKER/rclone |"; sep+="---:|"; }
  printf '%s\n%s\n' "$hdr" "$sep"
  for line in "${METRICS[@]}"; do
    IFS='|' read -r key label unit dec kind <<<"$line"
    [ "$kind" = info ] && ! has locker && continue
    row="| $label | $unit |"
    for c in "${CONTENDERS[@]}"; do
      if [ "$kind" = info ] && [ "$c" != locker ]; then row+=" |"; continue; fi
      v=$(value "$key" "$c")
      s=$(median ${SECS["$key|$c"]:-})
      if [ "$key" = latency ] && [ -n "${LAT_SAMPLES[$c]:-}" ] && [ "$v" != FAIL ]; then
        row+=" $(fmt "$v" "$dec") ($(printf '%s\n' ${LAT_SAMPLES[$c]} | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }')) |"
      elif [ -n "$s" ] && [ "$v" != FAIL ]; then
        row+=" $(fmt "$v" "$dec") ($(printf '%.2f' "$s") s) |"
      else
        row+=" $(fmt "$v" "$dec") |"
      fi
    done
    if has locker && has rclone; then
      if [ "$kind" = info ]; then row+=" |"
      else row+=" $(speed_ratio "$(value "$key" locker)" "$(value "$key" rclone)" "$kind") |"; fi
    fi
    printf '%s\n' "$row"
  done
}

dav_facts() {
  local where
  where=$(findmnt -no SOURCE,FSTYPE,OPTIONS --target "$BASE" 2>/dev/null | tr -s ' ')
  echo "- Storage: $(has locker && echo "LOCKER's data dirs and ")the server's files on \`$where\`; test data prepared in /dev/shm"
  case $BACKEND in
    nextcloud)
      echo "- Server: $SERVER_VERSION, started by the script on loopback (\`ncserver.py --root DIR --port 0 --user USER --password-file FILE\`), user and password made for the run; files under \`/remote.php/dav/files/USER/\`, kept as plain files on the disk above. It is a local test server and an emulator: no PHP, no database, no file locking, so absolute speeds say little about a real Nextcloud (where every request costs PHP and database time); the ratios compare LOCKER and rclone against the same server in the same run" ;;
    apache)
      echo "- Server: $SERVER_VERSION, started by the script on loopback (\`tests/webdav/apache.sh start DIR PORT USER PASSWORD_FILE\`), user and password made for the run; files under \`/dav/\`, kept as plain files on the disk above. A local test server: absolute speeds are those of loopback and this disk; the ratios compare LOCKER and rclone against the same server in the same run" ;;
  esac
  echo "- One server for both contenders, separate folders below the user's root (corp-rN/ for LOCKER, rclone-rN/ for rclone, a fresh pair per run, made with MKCOL); checks (untimed) with scripts/lib/davtool.py: HEAD, PROPFIND Depth 1 walks, GET for the SHA-256"
  if has locker; then
    if [ "$LOCKER_FLAVOR" = nextcloud ]; then
      echo "- LOCKER: \`locker mount MNT --config CFG --data-dir DATA\`, config \`[sync] upload_delay_ms = $UPLOAD_DELAY_MS, refresh_interval_s = 0\`, \`[cache] size_mb = $UP_CACHE_MB\` for the uploads (above the test data, so no write waits for cache room) then \`$COLD_CACHE_MB\` to evict the big file and \`$READ_CACHE_MB\` to read it back cold, one \`[namespaces.corp]\` with \`backend = \"webdav\", flavor = \"nextcloud\", chunk_size_mb = $DAV_CHUNK_MB, prefix = \"corp-rN/\"\`, url the user's root (loopback http); other settings default. So the big file goes up as Nextcloud chunked upload v2 ($DAV_CHUNK_MB MiB chunks, then the MOVE that assembles them), a small file as one conditional PUT. Drained = \`locker status --json\` shows queue 0 and pending_bytes 0 for every namespace, polled every 0.1 s, confirmed by HEAD/PROPFIND on the server"
    else
      echo "- LOCKER: \`locker mount MNT --config CFG --data-dir DATA\`, config \`[sync] upload_delay_ms = $UPLOAD_DELAY_MS, refresh_interval_s = 0\`, \`[cache] size_mb = $UP_CACHE_MB\` for the uploads (above the test data, so no write waits for cache room) then \`$COLD_CACHE_MB\` to evict the big file and \`$READ_CACHE_MB\` to read it back cold, one \`[namespaces.corp]\` with \`backend = \"webdav\", flavor = \"plain\", prefix = \"corp-rN/\"\`, url \`/dav/\` (loopback http); other settings default. The plain flavor writes each file to a temporary name beside the target, sets its SHA-256, mtime and mode as dead properties, reads them back and moves it over the target. Drained = \`locker status --json\` shows queue 0 and pending_bytes 0 for every namespace, polled every 0.1 s, confirmed by HEAD/PROPFIND on the server"
    fi
    echo "- LOCKER binary: \`$LOCKER_BIN\` ($(bin_facts))"
  fi
  if has rclone; then
    echo "- rclone $(rclone version 2>/dev/null | awk 'NR==1 {print $2}'): webdav remote from the environment (\`RCLONE_CONFIG_BENCH_TYPE=webdav\`, \`_URL\` = the user's root, \`_VENDOR=$RCLONE_VENDOR\`, \`_USER\`, \`_PASS\` from \`rclone obscure\`), flags \`${RCLONE_FLAGS[*]}\` (as many uploads at once as LOCKER's \`uploads\` default), otherwise default$( [ "$BACKEND" = nextcloud ] && echo ". This rclone has no Nextcloud chunked upload (later versions have it): the big file is one PUT")"
  fi
  echo "- Tools: $(cp --version | head -1), Python $("$DPY" -c 'import platform; print(platform.python_version())') (scripts/lib/davtool.py)"
}

machine_facts() {
  machine_line " (no busy loop runs here; a load well above 2 means other work shared the machine)"
  if is_dav; then dav_facts; return; fi
  if is_garage; then
    echo "- Storage: $(has locker && echo "LOCKER's data dirs and ")Garage's data on \`$(findmnt -no SOURCE,FSTYPE,OPTIONS --target "$BASE" 2>/dev/null | tr -s ' ')\`; test data prepared in /dev/shm"
    echo "- Backend: Garage $(garage_version) (\`$GARAGE_BIN\`), one node on 127.0.0.1 started by the script (scripts/lib/garage.sh: sqlite metadata, replication 1, a key made for the run), one server for both contenders, separate buckets (corp-rN for LOCKER, rclone-rN for rclone, a fresh pair per run)"
    if [ "$DELAY_MS" -gt 0 ]; then
      echo "- Link: every TCP packet between the contenders and Garage's S3 port on lo is held ${DELAY_MS} ms before the kernel takes it in (a round trip of $((2 * DELAY_MS)) ms more, as across a WAN): iptables NFQUEUE in raw PREROUTING and scripts/bench/nfqdelay.c, as this kernel has no tc netem (CONFIG_NET_SCH_NETEM is not set). The connections are the kernel's own TCP end to end, so each one's throughput is bounded by its window over the round trip as over a real link: with this machine's $(sysctl -n net.ipv4.tcp_wmem | awk '{print "tcp_wmem max " $3 / 1048576 " MiB"}') and $(sysctl -n net.ipv4.tcp_rmem | awk '{print "tcp_rmem max " $3 / 1048576 " MiB"}') (defaults, untouched), about the send buffer (tcp_wmem max) over the round trip per connection"
    else
      echo "- Link: loopback, no added delay"
    fi
  else
  echo "- Storage: $(has locker && echo "LOCKER's data dirs and ")moto's spill files on \`$(findmnt -no SOURCE,FSTYPE,OPTIONS --target "$BASE" 2>/dev/null | tr -s ' ')\`; test data prepared in /dev/shm"
  echo "- Backend: moto_server $MOTO_VERSION (\`$MOTO_BIN -H 127.0.0.1 -p PORT\`), one server for both contenders, separate buckets (corp-rN for LOCKER, rclone-rN for rclone, a fresh pair per run); it keeps objects in memory and spill files, so the absolute figures are bound by moto and the ratios are the point"
  fi
  if has locker; then
    echo "- LOCKER: \`locker mount MNT --config CFG --data-dir DATA\`, config \`[sync] upload_delay_ms = $UPLOAD_DELAY_MS, refresh_interval_s = 0\`, \`[cache] size_mb = $UP_CACHE_MB\` for the uploads (above the test data, so no write waits for cache room) then \`$COLD_CACHE_MB\` to evict the big file and \`$READ_CACHE_MB\` to read it back cold, one \`[namespaces.corp]\` of backend s3 (path_style); other settings default. Drained = \`locker status --json\` shows queue 0 and pending_bytes 0 for every namespace, polled every 0.1 s, confirmed by a HEAD/list of the bucket"
    echo "- LOCKER binary: \`$LOCKER_BIN\` ($(bin_facts))"
  fi
  if has rclone; then
    echo "- rclone $(rclone version 2>/dev/null | awk 'NR==1 {print $2}'): remote \`type = s3, provider = Other, env_auth = true, force_path_style = true\`, flags \`${RCLONE_FLAGS[*]}\` (as many uploads at once as LOCKER's \`uploads\` and \`parallel_parts\` defaults), otherwise default (5 MiB chunks)"
  fi
  echo "- Tools: $(cp --version | head -1), Python $("$VPY" -c 'import platform; print(platform.python_version())') with boto3 $("$VPY" -c 'import importlib.metadata as m; print(m.version("boto3"))') (scripts/lib/s3tool.py)"
}

section() {
  local n
  case $BACKEND in
    s3) section_head "Sync sidecar benchmark" scripts/bench-sync.sh ;;
    garage) section_head "Sync sidecar benchmark, Garage, $([ "$DELAY_MS" -gt 0 ] && echo "${DELAY_MS} ms each way" || echo "no added delay")" scripts/bench-sync.sh ;;
    nextcloud) section_head "Sync sidecar benchmark, WebDAV: the Nextcloud test server" scripts/bench-sync.sh ;;
    apache) section_head "Sync sidecar benchmark, WebDAV: Apache mod_dav" scripts/bench-sync.sh ;;
  esac
  if [ "$REPEAT" -gt 1 ]; then
    echo "- Repeats: every workload ran $REPEAT times; each figure is the median"
  else
    echo "- Repeats: one run (use \`--repeat 3\` for medians)"
  fi
  machine_facts
  echo "- Figures: throughputs (MiB/s or files/s = amount ÷ elapsed wall time, the elapsed time in brackets) and, for d, the latency in ms (range over all files in brackets). The LOCKER upload times include the configured upload_delay_ms = $UPLOAD_DELAY_MS (a file is sent once closed and quiet that long); d's LOCKER latency is from the return of the \`cp\` that closed the file to the first HEAD (10 ms polls) showing the $(is_dav && echo file || echo object) with its size, and rclone's is the whole run time of \`rclone copyto\`, process start-up included. LOCKER/rclone is a speed ratio (the inverse of the time ratio): above 1× LOCKER is faster."
  is_dav && echo "- Phases: each starts once the previous one has settled: LOCKER's queue empty and the server checked before its next workload, LOCKER unmounted (SIGTERM, which drains) before rclone's, page cache dropped before each cold read; nothing else runs against the server meanwhile"
  for n in "${NOTES[@]}"; do echo "- Note: $n"; done
  if [ $FAILURES -gt 0 ]; then
    echo "- $FAILURES step(s) failed (FAIL in the table):"
    printf '  - %s\n' "${FAIL_NOTES[@]}"
  fi
  echo
  table
}

SECTION=$(section)
report_section "$MD_FILE" "$MD_NAME" "sync $BACKEND $MODE"
log "done in ${TOTAL_SECS}s; $FAILURES failed step(s)"
[ $FAILURES -eq 0 ]
