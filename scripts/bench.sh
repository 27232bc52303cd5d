#!/usr/bin/env bash
# LOCKER benchmark: compares LOCKER with the native filesystem, a bindfs
# passthrough mount and an `rclone mount --vfs-cache-mode full` peer, all on
# one scratch ext4 filesystem (image file on a loop device, mounted without
# online discard), and, for the metadata phases, with nullfs
# (scripts/bench/nullfs.c: a FUSE filesystem that keeps its tree in memory
# and does no other work, the floor of FUSE's own cost) over /dev/fuse and
# over FUSE-over-io_uring. Prints markdown tables and writes/replaces a section of
# BENCHMARKS.md at the repo root.
#
# Workloads, each on every contender (sizes for a full run; --quick shrinks them):
#   1. sequential write of 1 GiB of random data from /dev/shm, dd bs=1M conv=fsync
#   2. sequential read of that file, cold (after drop_caches) and warm
#   3. fio random 4 KiB reads (cold, warm) and writes (+ final fsync), psync,
#      iodepth 1, on a 256 MiB file
#   4. metadata: create/stat/rename/delete of 5000 4 KiB files in 100 dirs
#      (bench/meta.py, each phase timed)
#   5. small files: tar -xf of a deterministic 3000-file/200-dir tree
#      (bench/mktree.py), cp -r of it back out to the native fs (cold),
#      then rm -rf of it
#   6. more metadata (bench/ops.py): create + rename of 5000 files while the
#      previous create's uploads run (no settle), 4 processes creating 2000
#      files each at once, ls -l of a 10,000-entry directory and find + du -s
#      over 50,000 files (cold), git-like churn of 10,000 small files
# Every phase starts once the previous one has settled: sync, and for
# LOCKER an empty upload queue (`locker status --json`), for rclone no
# upload in flight.
# A nice-19 busy loop runs during every contender's runs (see --busy).
#
# Usage: scripts/bench.sh [--quick] [--only native,bindfs,locker,rclone]
#                         [--repeat N] [--busy MODE] [--no-md] [--keep-logs]
# Needs root (loop device, mount, drop_caches). See --help.
set -uo pipefail
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
. "$REPO/scripts/lib/bench-common.sh"
HELPERS=$SCRIPT_DIR/bench
DEFAULT_LOCKER_BIN=$REPO/target/release/locker
LOCKER_BIN=${LOCKER_BIN:-$DEFAULT_LOCKER_BIN}
ALL_CONTENDERS=(native bindfs locker locker-uring rclone nullfs nullfs-uring)
ORIG_ARGS=("$@")

usage() {
  cat <<'EOF'
Usage: scripts/bench.sh [options]

  --quick            smoke-test sizes (64 MiB sequential file, 500 files)
  --only LIST        comma-separated contenders to run, from
                     native,bindfs,locker,locker-uring,rclone,nullfs,
                     nullfs-uring (default: all); locker-uring is LOCKER
                     mounted with -o io_uring (FUSE over io_uring); nullfs
                     and nullfs-uring run the metadata phases (4) only
  --repeat N         run every contender N times, interleaved, and report
                     the median of each figure (default 1)
  --busy MODE        CPU condition during every run (default: one):
                       one   one nice-19 busy loop pinned to the last CPU
                       all   one such loop pinned to each CPU (measured worse)
                       none  no busy loop (idle CPUs; FUSE pays wake-ups)
  --no-md            do not write BENCHMARKS.md (tables still go to stdout)
  --keep-logs        keep the log directory even when every step succeeded
  -h, --help         this text

Environment:
  LOCKER_BIN         LOCKER binary (default: REPO/target/release/locker;
                     built with `cargo build --release` only when missing)
  BENCH_TMP          where the scratch image goes (default: /var/tmp)
  BENCH_STEP_TIMEOUT seconds allowed to any single step (default: 600)
EOF
}

# ---------------------------------------------------------------- options
QUICK=0
ONLY=native,bindfs,locker,locker-uring,rclone,nullfs,nullfs-uring
BUSY=one
REPEAT=1
WRITE_MD=1
KEEP_LOGS=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --only) [ $# -ge 2 ] || { echo "bench: --only needs a list" >&2; exit 2; }; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    --busy) [ $# -ge 2 ] || { echo "bench: --busy needs a mode" >&2; exit 2; }; BUSY=$2; shift ;;
    --busy=*) BUSY=${1#--busy=} ;;
    --repeat) [ $# -ge 2 ] || { echo "bench: --repeat needs a number" >&2; exit 2; }; REPEAT=$2; shift ;;
    --repeat=*) REPEAT=${1#--repeat=} ;;
    --no-md) WRITE_MD=0 ;;
    --keep-logs) KEEP_LOGS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

select_contenders bench
case $BUSY in all|one|none) ;; *) echo "bench: --busy must be one, all or none" >&2; exit 2 ;; esac
case $REPEAT in ''|*[!0-9]*|0) echo "bench: --repeat needs a positive number" >&2; exit 2 ;; esac

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: must run as root (loop device, mount, drop_caches)" >&2
  exit 2
fi

# ---------------------------------------------------------------- sizes
if [ $QUICK -eq 1 ]; then
  MODE=quick
  SEQ_MB=64 RAND_MB=64 RUNTIME=3 COLD_IOS=1024
  META_FILES=500 META_DIRS=20 SMALL_FILES=500 SMALL_DIRS=40
  PAR_FILES=250 LS_FILES=1000 MANY_FILES=2000 CHURN_FILES=1000
  IMG_MB=3072
else
  MODE=full
  SEQ_MB=1024 RAND_MB=256 RUNTIME=8 COLD_IOS=4096
  META_FILES=5000 META_DIRS=100 SMALL_FILES=3000 SMALL_DIRS=200
  PAR_FILES=2000 LS_FILES=10000 MANY_FILES=50000 CHURN_FILES=10000
  IMG_MB=8192
fi
# Another CPU condition than the default gets a section of its own.
[ "$BUSY" = one ] || MODE+="-busy-$BUSY"
# LOCKER pushes a changed path once it has been quiet this long (the default
# config's upload_delay_ms): the "while uploading" phase waits that long
# after the previous create so that the uploads are running.
UPLOAD_DELAY_S=3.5
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-600}  # any single step run through step()
MOUNT_TIMEOUT=30                         # seconds to wait for a mount
STOP_TIMEOUT=60                          # seconds to wait after SIGTERM
SETTLE_TIMEOUT=300                       # rclone uploads to drain

RUN_ID=$(date +%Y%m%d-%H%M%S)
BASE=${BENCH_TMP:-/var/tmp}/locker-bench.$$
SHM=/dev/shm/locker-bench.$$
LOGDIR=${TMPDIR:-/tmp}/locker-bench-$RUN_ID
SCRATCH=$BASE/scratch
MNTROOT=$BASE/mnt
IMG=$BASE/scratch.img
RC_PORT=$((55000 + $$ % 5000))
LOOPDEV=
BUSY_PIDS=()
# FUSE over io_uring is a fuse module parameter (Linux 6.14+, when built in);
# URING_WAS is its value to put back, once nullfs-uring is to run.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
URING_WAS=
declare -A MPID=() MDIR=() RES=() SECS=() COUNT=() FAILED=() STATUS=()
FAILURES=0
T_START=$SECONDS

# fd 3 and 4 keep the script's own stdout and stderr: a trap can fire while a
# step's output is redirected to a log file.
exec 3>&1 4>&2
log() { printf '[bench %4ds] %s\n' $((SECONDS - T_START)) "$*" >&4; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- teardown

stop_daemon() {  # contender
  local c=$1 pid=${MPID[$1]:-} mnt=${MDIR[$1]:-} i
  [ -n "$pid" ] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$c: still running ${STOP_TIMEOUT}s after SIGTERM"; STATUS[$c]+=" slow-stop"; fi
  fi
  if [ -n "$mnt" ] && mountpoint -q "$mnt" 2>/dev/null; then
    log "$c: still mounted after its process ended or was signalled; fusermount3 -uz"
    STATUS[$c]+=" lazy-unmount"
    fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  fi
  if alive "$pid"; then
    log "$c: kill -9 $pid"
    STATUS[$c]+=" killed"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  unset "MPID[$c]"
}

stop_busy() {
  local p
  for p in "${BUSY_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  BUSY_PIDS=()
}

cleanup() {
  local rc=$? c
  trap - EXIT INT TERM HUP
  exec 1>&3 2>&4
  stop_step
  for c in "${!MPID[@]}"; do stop_daemon "$c"; done
  stop_busy
  [ -n "$URING_WAS" ] && echo "$URING_WAS" >"$URING_PARAM"
  if [ -n "$LOOPDEV" ]; then
    if mountpoint -q "$SCRATCH" 2>/dev/null; then
      umount "$SCRATCH" 2>/dev/null || { sleep 1; umount "$SCRATCH" 2>/dev/null; } || umount -l "$SCRATCH"
    fi
    losetup -d "$LOOPDEV" 2>/dev/null
  fi
  rm -rf "$BASE" "$SHM"
  tidy_logs $rc bench
  exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# ---------------------------------------------------------------- helpers
FAIL_NOTES=()

fio_iops() {  # json-file rw
  python3 - "$1" "$2" <<'EOF'
import json, sys
with open(sys.argv[1]) as f:
    text = f.read()
job = json.loads(text[text.index("{"):])["jobs"][0]
if job.get("error"):
    sys.exit("fio error %s" % job["error"])
print("%.1f" % job[sys.argv[2]]["iops"])
EOF
}

wait_zero() {  # what deadline command...: polls the command until it prints 0
  local what=$1 deadline=$2 out
  shift 2
  while :; do
    out=$("$@" 2>/dev/null)
    [ "$out" = 0 ] && return 0
    [ $SECONDS -ge "$deadline" ] && { log "$what still pending ($out) after ${SETTLE_TIMEOUT}s"; return 1; }
    sleep 0.5
  done
}

locker_queued() {  # entries in every namespace's upload queue
  "$LOCKER_BIN" status --json --data-dir "$SCRATCH/locker-data" |
    python3 -c 'import json,sys; print(sum(n["queue"] for n in json.load(sys.stdin)["namespaces"]))'
}

rclone_pending() {  # uploads rclone has in flight or queued
  rclone rc --url "http://127.0.0.1:$RC_PORT/" vfs/stats |
    python3 -c 'import json,sys; d=json.load(sys.stdin)["diskCache"]; print(d["uploadsInProgress"] + d["uploadsQueued"])'
}

settle() {  # contender: flush and let background uploads finish (untimed)
  local c=$1 deadline=$((SECONDS + SETTLE_TIMEOUT))
  sync
  # LOCKER queues what was just written at once, so an empty queue means
  # everything pushed.
  case $c in
    locker | locker-uring) wait_zero "$c: upload queue" "$deadline" locker_queued; sync ;;
    rclone) wait_zero "rclone: uploads" "$deadline" rclone_pending; sync ;;
  esac
  return 0
}

# ---------------------------------------------------------------- dependencies
need=()
command -v python3 >/dev/null || need+=(python3)
command -v fio >/dev/null || need+=(fio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(util-linux)
command -v taskset >/dev/null || need+=(util-linux)
command -v mountpoint >/dev/null || need+=(util-linux)
if has bindfs || has locker || has locker-uring || has rclone; then command -v fusermount3 >/dev/null || need+=(fuse3); fi
has bindfs && { command -v bindfs >/dev/null || need+=(bindfs); }
has rclone && { command -v rclone >/dev/null || need+=(rclone); }
if has nullfs || has nullfs-uring; then
  command -v gcc >/dev/null || need+=(gcc)
  [ -e /usr/include/linux/io_uring.h ] && [ -e /usr/include/stdio.h ] || need+=(libc6-dev linux-libc-dev)
fi
NO_URING=
if has nullfs-uring || has locker-uring; then
  [ -e /sys/module/fuse ] || modprobe fuse 2>/dev/null
  if [ -e "$URING_PARAM" ]; then
    URING_WAS=$(cat "$URING_PARAM")
  else
    NO_URING="nullfs-uring and locker-uring did not run: this kernel ($(uname -r)) has no FUSE over io_uring ($URING_PARAM)"
    ONLY=$(printf '%s\n' "${CONTENDERS[@]}" | grep -vx 'nullfs-uring\|locker-uring' | paste -sd,)
    select_contenders bench
    log "$NO_URING"
  fi
fi
apt_install "${need[@]}"
if { has locker || has locker-uring; } && [ ! -x "$LOCKER_BIN" ]; then
  [ "$LOCKER_BIN" = "$DEFAULT_LOCKER_BIN" ] || die "LOCKER_BIN=$LOCKER_BIN does not exist"
  build_locker
fi

# ---------------------------------------------------------------- scratch fs
mkdir -p "$BASE" "$SHM" "$LOGDIR" "$SCRATCH" "$MNTROOT" || die "cannot create work directories"
log "mode $MODE; contenders: ${CONTENDERS[*]}; logs in $LOGDIR"
need_space /dev/shm $(((SEQ_MB + 2 * SMALL_FILES * 20 / 1024 + 64) * 1024))

log "creating ${IMG_MB} MiB scratch ext4 image on a loop device"
fallocate -l "${IMG_MB}M" "$IMG" 2>/dev/null || truncate -s "${IMG_MB}M" "$IMG" || die "cannot create $IMG"
mkfs.ext4 -q -F -L lockerbench -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$IMG" ||
  die "mkfs.ext4 failed"
LOOP_DIO=on
LOOPDEV=$(losetup --find --show --direct-io=on "$IMG" 2>/dev/null) || {
  LOOP_DIO=off
  LOOPDEV=$(losetup --find --show "$IMG")
} || die "losetup failed"
mount -t ext4 -o nodiscard "$LOOPDEV" "$SCRATCH" || die "cannot mount $LOOPDEV"
SCRATCH_OPTS=$(findmnt -no OPTIONS "$SCRATCH")
ROOT_OPTS=$(findmnt -no SOURCE,FSTYPE,OPTIONS --target "$BASE" | tr -s ' ')

NULLFS=$BASE/nullfs
if has nullfs || has nullfs-uring; then
  gcc -O2 -Wall -o "$NULLFS" "$HELPERS/nullfs.c" -lpthread >"$LOGDIR/nullfs-build.log" 2>&1 ||
    die "cannot build scripts/bench/nullfs.c (see $LOGDIR/nullfs-build.log)"
fi

# ---------------------------------------------------------------- test data
log "generating test data in $SHM (${SEQ_MB} MiB random file, ${SMALL_FILES}-file tree)"
head -c "$((SEQ_MB * 1048576))" /dev/urandom >"$SHM/rand.bin" || die "cannot write $SHM/rand.bin"
python3 "$HELPERS/mktree.py" "$SHM/tree" "$SMALL_FILES" "$SMALL_DIRS" >"$SHM/tree.bytes" || die "mktree.py failed"
tar -C "$SHM/tree" --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
  -cf "$SHM/tree.tar" . || die "tar -cf failed"
SMALL_BYTES=$(cat "$SHM/tree.bytes")

# ---------------------------------------------------------------- busy loop
start_busy() {
  local cpus=() cpu n
  n=$(nproc)
  case $BUSY in
    none) return 0 ;;
    one) cpus=($((n - 1))) ;;
    all) for ((cpu = 0; cpu < n; cpu++)); do cpus+=("$cpu"); done ;;
  esac
  for cpu in "${cpus[@]}"; do
    # Lowest priority (nice 19) so it only takes time nobody else wants, but
    # its CPU never idles, so a wake-up there costs no idle-state exit.
    # It also exits by itself if this script dies without cleaning up.
    taskset -c "$cpu" nice -n 19 bash -c \
      'p=$1; while kill -0 "$p" 2>/dev/null; do for ((i = 0; i < 200000; i++)); do :; done; done' \
      busy "$$" </dev/null >/dev/null 2>&1 3>&- 4>&- &
    BUSY_PIDS+=($!)
  done
}
case $BUSY in
  all) BUSY_DESC="one shell busy loop (\`while :; do :; done\`) per CPU ($(nproc)), each pinned with taskset, at nice 19, running during every contender's runs (native included)" ;;
  one) BUSY_DESC="one shell busy loop (\`while :; do :; done\`) pinned with taskset to CPU $(($(nproc) - 1)) of $(nproc), at nice 19, running during every contender's runs (native included)" ;;
  none) BUSY_DESC="no busy loop: CPUs idle between requests" ;;
esac

# ---------------------------------------------------------------- contenders
mount_wait() {  # contender mountpoint
  local c=$1 mnt=$2 deadline=$((SECONDS + MOUNT_TIMEOUT))
  while ! mountpoint -q "$mnt"; do
    if ! alive "${MPID[$c]}"; then
      log "$c: exited before $mnt was mounted; last log lines:"
      tail -n 20 "$LOGDIR/$c.log" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$c: $mnt not mounted after ${MOUNT_TIMEOUT}s; last log lines:"
      tail -n 20 "$LOGDIR/$c.log" >&2
      return 1
    fi
    sleep 0.1
  done
}

start_contender() {  # contender; sets WORK (the directory to benchmark in)
  local c=$1 mnt=$MNTROOT/$1
  WORK=
  mkdir -p "$mnt"
  case $c in
    native)
      WORK=$SCRATCH/native
      mkdir -p "$WORK"
      return 0
      ;;
    bindfs)
      mkdir -p "$SCRATCH/bindfs-src"
      setsid bindfs -f -o big_writes "$SCRATCH/bindfs-src" "$mnt" </dev/null >"$LOGDIR/$c.log" 2>&1 3>&- 4>&- &
      WORK=$mnt
      ;;
    rclone)
      mkdir -p "$SCRATCH/rclone-src" "$SCRATCH/rclone-cache"
      RCLONE_CONFIG=$BASE/rclone.conf setsid rclone mount "$SCRATCH/rclone-src" "$mnt" \
        --vfs-cache-mode full --cache-dir "$SCRATCH/rclone-cache" \
        --rc --rc-addr "127.0.0.1:$RC_PORT" --rc-no-auth \
        </dev/null >"$LOGDIR/$c.log" 2>&1 3>&- 4>&- &
      WORK=$mnt
      ;;
    nullfs|nullfs-uring)
      local how=dev
      if [ "$c" = nullfs-uring ]; then
        how=uring
        # Only while this contender runs (put back after it stops): a daemon
        # that takes the ring must register it, or the kernel holds every
        # request, and the other contenders' daemons do not know of it.
        echo Y >"$URING_PARAM" || { log "$c: cannot set $URING_PARAM"; return 1; }
      fi
      setsid "$NULLFS" "$mnt" "$how" </dev/null >"$LOGDIR/$c.log" 2>&1 3>&- 4>&- &
      WORK=$mnt
      ;;
    locker | locker-uring)
      mkdir -p "$SCRATCH/locker-data"
      local opts=()
      if [ "$c" = locker-uring ]; then
        opts=(-o io_uring)
        echo Y >"$URING_PARAM" || { log "$c: cannot set $URING_PARAM"; return 1; }
      fi
      setsid "$LOCKER_BIN" mount "$mnt" --data-dir "$SCRATCH/locker-data" "${opts[@]}" </dev/null >"$LOGDIR/$c.log" 2>&1 3>&- 4>&- &
      WORK=$mnt/corp/bench
      ;;
  esac
  MPID[$c]=$!
  MDIR[$c]=$mnt
  mount_wait "$c" "$mnt" || return 1
  mkdir -p "$WORK" || { log "$c: cannot create $WORK"; return 1; }
}

# ---------------------------------------------------------------- workloads
run_fio() {  # contender name extra-args...
  local c=$1 name=$2
  shift 2
  timeit fio --name="$name" --filename="$WORK/rand.bin" --size="${RAND_MB}M" --bs=4k \
    --ioengine=psync --iodepth=1 --direct=0 --fallocate=none --randrepeat=1 \
    --output-format=json --output="$LOGDIR/fio-$c-$name.json" "$@" >>"$LOGDIR/steps-$c.log" 2>&1
}

cold_timed() {  # contender metric count command dir: `command dir`, output
               # discarded, timed after drop_caches
  local c=$1 m=$2 n=$3 cmd=$4 dir=$5
  drop_caches
  # shellcheck disable=SC2016  # $1 is the inner shell's
  if timeit bash -c "$cmd"' "$1" >/dev/null' "$m" "$dir" 2>>"$LOGDIR/steps-$c.log"; then
    put_timed "$m" "$c" "$n" "$ELAPSED"
  else
    fail "$m" "$c" "$cmd exit status $?"
  fi
}

bench_meta() {  # contender (mounted; WORK set): create / stat / rename /
                # delete, settled between phases
  local c=$1 v phase secs
  local steps=$LOGDIR/steps-$c.log
  log "$c: metadata, $META_FILES files of 4 KiB in $META_DIRS directories"
  mkdir -p "$WORK/meta"
  for v in create stat rename delete; do
    if step python3 "$HELPERS/meta.py" "$WORK/meta" "$META_FILES" "$META_DIRS" "$v" >"$LOGDIR/meta-$c.out" 2>>"$steps"; then
      read -r phase secs <"$LOGDIR/meta-$c.out"
      put_timed "meta_$phase" "$c" "$META_FILES" "$secs"
    else
      fail "meta_$v" "$c" "meta.py $v failed (see $steps)"
    fi
    settle "$c"
  done
  step rm -rf "$WORK/meta"
  settle "$c"
}

bench_contender() {  # contender (mounted; WORK set)
  local c=$1 v out
  local steps=$LOGDIR/steps-$c.log
  # nullfs serves only what the metadata phases do.
  case $c in nullfs*) bench_meta "$c"; return ;; esac

  # 1. sequential write, 1 MiB writes, fsync at the end
  settle "$c"
  log "$c: sequential write ${SEQ_MB} MiB (bs=1M, conv=fsync)"
  if timeit dd if="$SHM/rand.bin" of="$WORK/seq.bin" bs=1M conv=fsync status=none 2>>"$steps"; then
    put_timed seqwrite "$c" "$SEQ_MB" "$ELAPSED"
  else
    fail seqwrite "$c" "dd exit status $?"
  fi
  settle "$c"

  # 2. sequential read, cold then warm
  drop_caches
  log "$c: sequential read cold + warm"
  if timeit dd if="$WORK/seq.bin" of=/dev/null bs=1M status=none 2>>"$steps"; then
    put_timed seqread_cold "$c" "$SEQ_MB" "$ELAPSED"
  else
    fail seqread_cold "$c" "dd exit status $?"
  fi
  if timeit dd if="$WORK/seq.bin" of=/dev/null bs=1M status=none 2>>"$steps"; then
    put_timed seqread_warm "$c" "$SEQ_MB" "$ELAPSED"
  else
    fail seqread_warm "$c" "dd exit status $?"
  fi
  if ! step cmp -s "$SHM/rand.bin" "$WORK/seq.bin"; then
    fail verify_seq "$c" "file read back differs from what was written"
  fi
  step rm -f "$WORK/seq.bin"
  settle "$c"

  # 3. random 4 KiB I/O (fio, psync, iodepth 1) on a RAND_MB file
  log "$c: random 4 KiB read (cold, warm) and write on a ${RAND_MB} MiB file"
  if step dd if="$SHM/rand.bin" of="$WORK/rand.bin" bs=1M count="$RAND_MB" conv=fsync status=none 2>>"$steps"; then
    settle "$c"
    drop_caches
    if run_fio "$c" randread_cold --rw=randread --number_ios="$COLD_IOS" --invalidate=1 &&
      v=$(fio_iops "$LOGDIR/fio-$c-randread_cold.json" read); then
      put randread_cold "$c" "$v"
    else
      fail randread_cold "$c" "fio failed (see $steps)"
    fi
    step cat "$WORK/rand.bin" >/dev/null 2>>"$steps"
    if run_fio "$c" randread_warm --rw=randread --time_based --runtime="$RUNTIME" --invalidate=0 &&
      v=$(fio_iops "$LOGDIR/fio-$c-randread_warm.json" read); then
      put randread_warm "$c" "$v"
    else
      fail randread_warm "$c" "fio failed (see $steps)"
    fi
    if run_fio "$c" randwrite --rw=randwrite --time_based --runtime="$RUNTIME" --invalidate=0 \
      --refill_buffers --end_fsync=1 &&
      v=$(fio_iops "$LOGDIR/fio-$c-randwrite.json" write); then
      put randwrite "$c" "$v"
    else
      fail randwrite "$c" "fio failed (see $steps)"
    fi
  else
    for v in randread_cold randread_warm randwrite; do fail "$v" "$c" "could not lay out $WORK/rand.bin"; done
  fi
  step rm -f "$WORK/rand.bin"
  settle "$c"

  # 4. metadata: create / stat / rename / delete, settled between phases
  bench_meta "$c"
  local phase secs v2

  # 5. small files: tar -xf into the contender, cp -r back out to native
  log "$c: small files, tar -xf of $SMALL_FILES files then cp -r out"
  mkdir -p "$WORK/small"
  if timeit tar --no-same-owner -xf "$SHM/tree.tar" -C "$WORK/small" 2>>"$steps"; then
    put_timed small_untar "$c" "$SMALL_FILES" "$ELAPSED"
  else
    fail small_untar "$c" "tar exit status $?"
  fi
  settle "$c"
  drop_caches
  rm -rf "$SCRATCH/cpout"
  mkdir -p "$SCRATCH/cpout"
  if timeit cp -r "$WORK/small" "$SCRATCH/cpout/" 2>>"$steps"; then
    put_timed small_cpout "$c" "$SMALL_FILES" "$ELAPSED"
    step diff -r "$SHM/tree" "$SCRATCH/cpout/small" >>"$steps" 2>&1 ||
      fail verify_small "$c" "tree copied back differs from the original"
  else
    fail small_cpout "$c" "cp exit status $?"
  fi
  step rm -rf "$SCRATCH/cpout"
  settle "$c"
  if timeit rm -rf "$WORK/small" 2>>"$steps"; then
    put_timed small_rm "$c" "$SMALL_FILES" "$ELAPSED"
  else
    fail small_rm "$c" "rm exit status $?"
  fi
  settle "$c"

  # 6. more metadata
  # 6a. create and rename while the uploads of a create just before run
  log "$c: create + rename of $META_FILES files while the previous create is being uploaded"
  mkdir -p "$WORK/busyA" "$WORK/busyB"
  if step python3 "$HELPERS/meta.py" "$WORK/busyA" "$META_FILES" "$META_DIRS" create >/dev/null 2>>"$steps" &&
    sleep "$UPLOAD_DELAY_S" &&
    step python3 "$HELPERS/meta.py" "$WORK/busyB" "$META_FILES" "$META_DIRS" create rename >"$LOGDIR/busy-$c.out" 2>>"$steps"; then
    while read -r phase secs; do
      put_timed "busy_$phase" "$c" "$META_FILES" "$secs"
    done <"$LOGDIR/busy-$c.out"
  else
    for v in create rename; do fail "busy_$v" "$c" "meta.py failed (see $steps)"; done
  fi
  settle "$c"
  step rm -rf "$WORK/busyA" "$WORK/busyB"
  settle "$c"

  # 6b. four processes creating at once
  log "$c: 4 processes creating $PAR_FILES files each at once"
  if step python3 "$HELPERS/ops.py" par "$WORK/par" 4 "$PAR_FILES" >"$LOGDIR/par-$c.out" 2>>"$steps"; then
    read -r phase secs <"$LOGDIR/par-$c.out"
    put_timed par_create "$c" $((4 * PAR_FILES)) "$secs"
  else
    fail par_create "$c" "ops.py par failed (see $steps)"
  fi
  settle "$c"
  step rm -rf "$WORK/par"
  settle "$c"

  # 6c. ls -l of a big directory, find and du -s over many files (cold)
  log "$c: ls -l of $LS_FILES entries, find + du -s over $MANY_FILES files"
  if step python3 "$HELPERS/ops.py" tree "$WORK/big" "$LS_FILES" 1 2>>"$steps" &&
    step python3 "$HELPERS/ops.py" tree "$WORK/many" "$MANY_FILES" 100 2>>"$steps"; then
    settle "$c"
    cold_timed "$c" ls_l "$LS_FILES" "ls -l" "$WORK/big/d000"
    cold_timed "$c" find "$MANY_FILES" find "$WORK/many"
    cold_timed "$c" du "$MANY_FILES" "du -s" "$WORK/many"
  else
    for v in ls_l find du; do fail "$v" "$c" "ops.py tree failed (see $steps)"; done
  fi
  step rm -rf "$WORK/big" "$WORK/many"
  settle "$c"

  # 6d. git-like churn
  log "$c: churn of $CHURN_FILES small files (write, rename over, unlink)"
  if step python3 "$HELPERS/ops.py" churn "$WORK/churn" "$CHURN_FILES" >"$LOGDIR/churn-$c.out" 2>>"$steps"; then
    read -r phase secs <"$LOGDIR/churn-$c.out"
    put_timed churn "$c" "$CHURN_FILES" "$secs"
  else
    fail churn "$c" "ops.py churn failed (see $steps)"
  fi
  step rm -rf "$WORK/churn"
  settle "$c"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_busy
log "CPU condition: $BUSY_DESC"
for c in "${CONTENDERS[@]}"; do STATUS[$c]=; done
for ((rep = 1; rep <= REPEAT; rep++)); do
for c in "${CONTENDERS[@]}"; do
  log "=== $c (run $rep of $REPEAT)"
  if start_contender "$c"; then
    bench_contender "$c"
    started=1
  else
    started=0
    STATUS[$c]+=" mount-failed"
    fail mount "$c" "did not mount (see $LOGDIR/$c.log); its cells are empty"
  fi
  [ "$c" = native ] || stop_daemon "$c"
  if [ "$c" = nullfs-uring ]; then
    echo "$URING_WAS" >"$URING_PARAM" || log "cannot put $URING_PARAM back to $URING_WAS"
    # nullfs says on exit how many requests came each way.
    [ "$started" = 0 ] ||
      grep -Eq 'requests: [0-9]+ from /dev/fuse, [1-9][0-9]* from io_uring' "$LOGDIR/$c.log" ||
      fail uring "$c" "its requests did not come over io_uring (see $LOGDIR/$c.log)"
  fi
  if [ "$c" = locker-uring ]; then
    echo "$URING_WAS" >"$URING_PARAM" || log "cannot put $URING_PARAM back to $URING_WAS"
    # Each of LOCKER's rings says as it ends how many requests it served.
    [ "$started" = 0 ] ||
      grep -Eq 'a FUSE ring ends .*requests=[1-9]' "$LOGDIR/$c.log" ||
      fail uring "$c" "its requests did not come over io_uring (see $LOGDIR/$c.log)"
  fi
  rm -rf "$SCRATCH/native" "$SCRATCH/bindfs-src" "$SCRATCH/rclone-src" "$SCRATCH/rclone-cache" "$SCRATCH/locker-data"
  sync
done
done
stop_busy
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL_SECS=$((SECONDS - T_START))

# ---------------------------------------------------------------- report
# metric | group | label | unit | decimals | target
METRICS=(
  "seqwrite|1|sequential write, 1 MiB writes + fsync|MiB/s|1|native:0.8"
  "seqread_cold|2|sequential read, cold cache|MiB/s|1|bindfs:1.0"
  "seqread_warm|2|sequential read, warm cache|MiB/s|1|bindfs:1.0"
  "randread_cold|3|random 4 KiB read, cold cache ($COLD_IOS reads)|IOPS|0|bindfs:1.0"
  "randread_warm|3|random 4 KiB read, warm cache (${RUNTIME} s)|IOPS|0|bindfs:1.0"
  "randwrite|3|random 4 KiB write + final fsync (${RUNTIME} s)|IOPS|0|bindfs:1.5"
  "meta_create|4|create (mkdir + write 4 KiB + close)|files/s|0|bindfs:1.0"
  "meta_stat|4|stat|files/s|0|bindfs:1.2"
  "meta_rename|4|rename (same directory)|files/s|0|bindfs:1.5"
  "meta_delete|4|delete (unlink + rmdir)|files/s|0|bindfs:1.5"
  "small_untar|5|tar -xf into the contender|files/s|0|bindfs:1.3"
  "small_cpout|5|cp -r back out to native (cold cache)|files/s|0|bindfs:1.0"
  "small_rm|5|rm -rf of the tree|files/s|0|bindfs:1.5"
  "busy_create|6|create while the previous create is uploaded|files/s|0|self:meta_create:0.8"
  "busy_rename|6|rename while the previous create is uploaded|files/s|0|self:meta_rename:0.8"
  "par_create|6|create, 4 processes at once ($PAR_FILES files each)|files/s|0|self:meta_create:1.8"
  "ls_l|6|ls -l of a $LS_FILES-entry directory (cold cache)|entries/s|0|bindfs:1.0"
  "find|6|find over $MANY_FILES files in 100 directories (cold cache)|files/s|0|bindfs:1.0"
  "du|6|du -s over the same (cold cache)|files/s|0|bindfs:1.0"
  "churn|6|git-like churn: write, rename over, unlink every 4th ($CHURN_FILES files)|files/s|0|bindfs:1.0"
)
GROUP_TITLES=(
  ""
  "1. Sequential write (${SEQ_MB} MiB of incompressible data, dd bs=1M conv=fsync)"
  "2. Sequential read (${SEQ_MB} MiB, dd bs=1M; cold = after drop_caches, warm = immediately again)"
  "3. Random 4 KiB I/O (fio psync, iodepth 1, ${RAND_MB} MiB file; cold = after drop_caches; write = buffered with fsync at the end, included)"
  "4. Metadata ($META_FILES files of 4 KiB in $META_DIRS directories, scripts/bench/meta.py; each phase timed separately)"
  "5. Small files ($SMALL_FILES files in $SMALL_DIRS directories, $((SMALL_BYTES / 1048576)) MiB, deterministic tar)"
  "6. More metadata (scripts/bench/meta.py and ops.py; \"while uploading\" = ${UPLOAD_DELAY_S} s after a create of $META_FILES files, not settled; targets against LOCKER's own settled or 1-way figure are marked self)"
)
tables() {
  local g line key grp label unit dec target c others=() cols=() ratios=() hdr sep row v s tc tf r
  declare -A val=()
  for line in "${METRICS[@]}"; do
    key=${line%%|*}
    for c in "${CONTENDERS[@]}"; do val["$key|$c"]=$(value "$key" "$c"); done
  done
  for c in native bindfs locker-uring rclone nullfs nullfs-uring; do has "$c" && has locker && others+=("$c"); done
  for g in 1 2 3 4 5 6; do
    # nullfs runs the metadata phases (group 4) only.
    cols=() ratios=()
    for c in "${CONTENDERS[@]}"; do [[ $c != nullfs* || $g = 4 ]] && cols+=("$c"); done
    for c in "${others[@]}"; do [[ $c != nullfs* || $g = 4 ]] && ratios+=("$c"); done
    printf '\n#### %s\n\n' "${GROUP_TITLES[$g]}"
    hdr="| metric | unit |"; sep="|---|---|"
    for c in "${cols[@]}"; do hdr+=" $c |"; sep+="---:|"; done
    for c in "${ratios[@]}"; do hdr+=" LOCKER/$c |"; sep+="---:|"; done
    hdr+=" target |"; sep+="---|"
    printf '%s\n%s\n' "$hdr" "$sep"
    for line in "${METRICS[@]}"; do
      IFS='|' read -r key grp label unit dec target <<<"$line"
      [ "$grp" = "$g" ] || continue
      row="| $label | $unit |"
      for c in "${cols[@]}"; do
        v=${val["$key|$c"]}
        s=$(median ${SECS["$key|$c"]:-})
        if [ -n "$s" ] && [ "$v" != FAIL ] && [ "$g" -ge 4 ]; then
          row+=" $(fmt "$v" "$dec") ($(printf '%.2f' "$s") s) |"
        else
          row+=" $(fmt "$v" "$dec") |"
        fi
      done
      for c in "${ratios[@]}"; do row+=" $(ratio "${val["$key|locker"]}" "${val["$key|$c"]}") |"; done
      tc=${target%%:*} tf=${target#*:}
      r=
      if [ "$tc" = self ]; then
        # Against LOCKER's own figure of another metric.
        local of=${tf%%:*}
        tf=${tf#*:}
        if has locker; then
          r=$(awk -v a="${val["$key|locker"]:-x}" -v b="$(value "$of" locker)" -v t="$tf" \
            'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf " (%.2f×: %s)", a / b, (a / b >= t ? "met" : "not met") }')
        fi
        if has locker-uring; then
          r+=$(awk -v a="${val["$key|locker-uring"]:-x}" -v b="$(value "$of" locker-uring)" -v t="$tf" \
            'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "; io_uring %.2f×: %s", a / b, (a / b >= t ? "met" : "not met") }')
        fi
        row+=" LOCKER ≥ ${tf}× its $of$r |"
        printf '%s\n' "$row"
        continue
      fi
      if has locker && has "$tc"; then
        r=$(awk -v a="${val["$key|locker"]:-x}" -v b="${val["$key|$tc"]:-x}" -v t="$tf" \
          'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) print (a / b >= t ? " (met)" : " (not met)") }')
      fi
      if has locker-uring && has "$tc"; then
        r+=$(awk -v a="${val["$key|locker-uring"]:-x}" -v b="${val["$key|$tc"]:-x}" -v t="$tf" \
          'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf " (io_uring %.2f×: %s)", a / b, (a / b >= t ? "met" : "not met") }')
      fi
      row+=" ≥ ${tf}× $tc$r |"
      printf '%s\n' "$row"
    done
  done
}

machine_facts() {
  if [ "$BUSY" = one ]; then
    machine_line " (anything well above the busy loop's 1 means other work shared the machine)"
  else
    machine_line ""
  fi
  echo "- Scratch filesystem: ${IMG_MB} MiB image file (fallocated on \`$ROOT_OPTS\`), loop device with direct-io=$LOOP_DIO, \`mkfs.ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0\`, mounted \`$SCRATCH_OPTS\` (no online discard). Native, bindfs's source, LOCKER's data dir and rclone's remote and cache dir all live on it; test data is prepared in /dev/shm."
  local cs=()
  has native && cs+=("native = a directory on the scratch fs")
  has bindfs && cs+=("bindfs $(bindfs --version 2>/dev/null | awk '{print $2}') = \`bindfs -f -o big_writes SRC MNT\`")
  has rclone && cs+=("rclone $(rclone version 2>/dev/null | awk 'NR==1 {print $2}') = \`rclone mount SRC MNT --vfs-cache-mode full --cache-dir SCRATCH/rclone-cache\` (default write-back delay; the script waits, untimed, for its uploads to finish between workloads)")
  has locker && cs+=("LOCKER = \`locker mount MNT --data-dir SCRATCH/locker-data\`, working in \`MNT/corp/bench\`")
  has locker-uring && cs+=("locker-uring = the same with \`-o io_uring\` (FUSE over io_uring: a ring of 4 entries per possible CPU, each served by a thread pinned to it; \`enable_uring\` set only for its run)")
  has nullfs && cs+=("nullfs = \`scripts/bench/nullfs MNT dev\` (\`gcc -O2\`): a tree in memory and no other work, one thread reading /dev/fuse and answering with writev as LOCKER's does, the same capabilities asked of the kernel as LOCKER and its 60 s entry and attribute lifetimes; metadata phases only")
  has nullfs-uring && cs+=("nullfs-uring = the same over FUSE-over-io_uring (\`nullfs MNT uring\`: one ring per possible CPU, each served by a thread pinned to it; \`enable_uring\` set only for its run)")
  local out=${cs[0]} i
  for ((i = 1; i < ${#cs[@]}; i++)); do out+="; ${cs[$i]}"; done
  echo "- Contenders: $out"
  if has locker || has locker-uring; then
    echo "- LOCKER binary: \`$LOCKER_BIN\` ($(bin_facts))"
  fi
  echo "- Tools: $(fio --version), $(dd --version | head -1), $(tar --version | head -1), Python $(python3 -c 'import platform; print(platform.python_version())')"
}

section() {
  local c
  section_head "LOCKER benchmark" scripts/bench.sh
  if [ "$REPEAT" -gt 1 ]; then
    echo "- Repeats: every contender ran $REPEAT times, interleaved; each figure is the median"
  else
    echo "- Repeats: one run per contender (use \`--repeat 3\` for medians)"
  fi
  machine_facts
  if [ "$BUSY" = none ]; then
    echo "- CPU condition: $BUSY_DESC. A FUSE round trip may wake an idle CPU, as on a machine with nothing else to do; the default run keeps the CPUs out of idle with a busy loop instead."
  else
    echo "- CPU condition: $BUSY_DESC. An idle CPU makes every FUSE round trip pay a wake-up, so the loop keeps the CPUs out of idle for all contenders alike."
  fi
  echo "- Figures are higher-is-better throughputs (MiB/s, IOPS, or files/s = files ÷ elapsed wall time; the elapsed time is shown in brackets). LOCKER/X columns are speed ratios (LOCKER's throughput ÷ X's, the inverse of the time ratio): above 1× LOCKER is faster."
  echo "- Targets (reported, not gates): sequential write with fsync ≥ 0.8× native; the rest as each row says (issue 11's targets for metadata and small files; LOCKER's create and rename while uploading within 20 % of its settled figures, its 4-way create ≥ 1.8× its 1-way create)."
  echo "- Settling: every phase starts after \`sync\` and, for LOCKER, an empty upload queue (\`locker status --json\`), for rclone no upload in flight; the \"while uploading\" rows deliberately start ${UPLOAD_DELAY_S} s after a create, with its uploads running."
  for c in "${CONTENDERS[@]}"; do
    [ -n "${STATUS[$c]:-}" ] && echo "- Note: $c:${STATUS[$c]}"
  done
  [ -n "$NO_URING" ] && echo "- Note: $NO_URING"
  if [ $FAILURES -gt 0 ]; then
    echo "- $FAILURES step(s) failed (FAIL in the tables):"
    printf '  - %s\n' "${FAIL_NOTES[@]}"
  fi
  tables
}

SECTION=$(section)
report_section "$REPO/BENCHMARKS.md" bench "$MODE" \
  $'# Benchmarks\n\nProduced by `scripts/bench.sh` (sections are replaced on each run; the full run and the `--quick` smoke test keep separate sections).\n'
log "done in ${TOTAL_SECS}s; $FAILURES failed step(s)"
[ $FAILURES -eq 0 ]
