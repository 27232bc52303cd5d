#!/usr/bin/env bash
# Data-integrity soak of LOCKER with fsx (the Rust rewrite, crates.io `fsx`
# 0.3.x): two fixed-seed runs of random reads, writes, truncates, mmap reads
# and writes, fsync and posix_fallocate on a file in MOUNT/corp/, with an
# unmount and remount of the same data dir after each run.
#
# Run `scripts/fsx.sh --help` for usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR
. "$SCRIPT_DIR/lib/harness.sh"

LOCKER_BIN=${LOCKER_BIN:-$REPO/target/release/locker}
FSX_VERSION_REQ='^0.3'
FSX_VERSION_RE='^0\.3\.'
OPS=${FSX_OPS:-100000}
SEEDS=("${FSX_SEED1:-1001}" "${FSX_SEED2:-2002}")
FLEN=${FSX_FLEN:-2097152}       # max file size: 2 LOCKER blocks (1 MiB each)
RUN_TIMEOUT=${FSX_TIMEOUT:-1200}  # seconds per fsx run

usage() {
  cat <<EOF
Usage: scripts/fsx.sh [OPTIONS]

Installs fsx (crates.io fsx ${FSX_VERSION_REQ}, cargo install -j 1, unless that
version is on PATH), mounts LOCKER on a fresh data dir and:
  run 1: fsx with seed ${SEEDS[0]}, ${OPS} ops, on MOUNT/corp/fsx.bin; then
         unmount (SIGTERM), remount the same data dir and check that the
         file is byte-identical to what it was before the unmount;
  run 2: fsx with seed ${SEEDS[1]}, ${OPS} ops, on the same file (fsx
         opens it with O_TRUNC: it cannot continue an existing file), then
         the same unmount/remount check.
The final contents of each run are also compared with the same fsx run on
a tmpfs (fsx is deterministic for a seed), run in parallel.
A run fails on any fsx error (miscompare, size error, failed syscall), a
contents mismatch, or an unmount that needed force. Must run as root.

Operations enabled (weights): read 10, write 10, mapread 10, mapwrite 10,
truncate 5, fsync 1, fdatasync 1, close_open 1, invalidate (msync
MS_INVALIDATE) 1, posix_fallocate (mode 0) 1. Not enabled: punch_hole,
sendfile, posix_fadvise, copy_file_range (fsx 0.3 has no zero/insert/
collapse range). Max file size ${FLEN} bytes, op size up to 128 KiB.

Options:
  --keep-workdir  keep the temp dir (logs, fsx.toml, data dir) for debugging
  --no-install    do not install anything; use what is on PATH
  --bindfs        harness self-test: a bindfs passthrough instead of LOCKER.
                  Never use this to judge LOCKER.
  --writeback-cache  mount LOCKER with -o writeback_cache (the kernel's
                  writeback cache) for every run
  --io-uring      mount LOCKER with -o io_uring (FUSE over io_uring; turns
                  the fuse module's enable_uring on for the run); a run
                  fails if the rings served no request
  -h, --help      this help

Environment: LOCKER_BIN (default REPO/target/release/locker), FSX_OPS
(${OPS}), FSX_SEED1, FSX_SEED2, FSX_FLEN, FSX_TIMEOUT (per run, ${RUN_TIMEOUT} s),
TMPDIR (default /var/tmp).

On failure the fsx logs and .fsxgood files are copied to
/var/tmp/locker-fsx-failure/. The last line is
  fsx: N passed, M failed
counting the two runs. Exit status 0 iff M = 0.
EOF
}

NO_INSTALL=
IO_URING=
while [ $# -gt 0 ]; do
  case "$1" in
    --keep-workdir) export KEEP_WORKDIR=1 ;;
    --no-install) NO_INSTALL=1 ;;
    --bindfs) export HARNESS_BINDFS=1 ;;
    --writeback-cache) export LOCKER_MOUNT_OPTS=writeback_cache ;;
    --io-uring) IO_URING=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

harness_init fsx
[ -z "$IO_URING" ] || harness_io_uring
START=$(date +%s)
FAILDIR=/var/tmp/locker-fsx-failure

if [ -z "$NO_INSTALL" ]; then
  apt_install fuse3 util-linux
  cargo_install_tool fsx fsx "$FSX_VERSION_RE" --version "$FSX_VERSION_REQ"
fi
command -v fsx >/dev/null || die "fsx not found"
if [ -z "${HARNESS_BINDFS:-}" ] && [ ! -x "$LOCKER_BIN" ]; then
  die "LOCKER binary not found at $LOCKER_BIN (build it with cargo build --release, or set LOCKER_BIN)"
fi

make_workdir lkfsx
CONF=$WORK/fsx.toml
cat >"$CONF" <<EOF
# fsx $(fsx --version | awk '{print $2}') config for LOCKER (written by scripts/fsx.sh)
flen = ${FLEN}
nosizechecks = false
nomsyncafterwrite = false

[opsize]
max = 131072
min = 0
align = 1

[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 5
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 0
posix_fadvise = 0
copy_file_range = 0
EOF

# Reference runs on tmpfs, in the background (each a single fsx process).
REFDIR=$WORK/ref
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  REFDIR=$(mktemp -d /dev/shm/lkfsx-ref.XXXXXX)
  on_exit "rm -rf '$REFDIR'"
fi
mkdir -p "$REFDIR"
REF_PIDS=("" "")
kill_refs() {
  local p
  for p in "${REF_PIDS[@]}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  return 0
}
on_exit kill_refs
start_ref() { # $1 = run index
  fsx -f "$CONF" -N "$OPS" -S "${SEEDS[$1]}" -P "$REFDIR" "$REFDIR/ref$1.bin" \
    </dev/null >"$WORK/ref$1.log" 2>&1 &
  REF_PIDS[$1]=$!
}
# ref_sum IDX: waits for the reference run; sets REF_SUM to its sha256 (empty
# if it failed).
ref_sum() {
  local rc=0
  REF_SUM=
  [ -n "${REF_PIDS[$1]}" ] || return 0
  wait "${REF_PIDS[$1]}" || rc=$?
  REF_PIDS[$1]=
  if [ "$rc" -ne 0 ]; then
    log "WARNING: reference run $(($1 + 1)) on tmpfs failed (status $rc); no reference check"
    tail -n 5 "$WORK/ref$1.log" >&2
    return 0
  fi
  REF_SUM=$(sha256sum "$REFDIR/ref$1.bin" | awk '{print $1}')
}

MNT=$WORK/mnt
DATA=$WORK/data
FSLOG=$WORK/locker.log
FILE=$MNT/corp/fsx.bin

mount_fs() {
  fs_mount "$MNT" "$DATA" "$FSLOG"
  [ -d "$MNT/corp" ] || die "no namespace corp at the root of the mount"
}

# fsx_failure_summary LOG: the error lines and the op that failed.
fsx_failure_summary() {
  local logf=$1
  echo "---- fsx errors (before its log dump) ----"
  awk '/LOG DUMP/ { exit } { print }' "$logf" | head -n 20
  grep -m1 -E "panicked at|Using seed" "$logf" || true
  local last
  last=$(awk '/LOG DUMP/ { d = 1; next } d && /^\[ERROR fsx\] +[0-9]+ / { l = $0 } END { print l }' "$logf")
  [ -n "$last" ] && echo "last op in the dump (the failing one): ${last#\[ERROR fsx\] }"
  echo "---- last 40 lines of the fsx output ----"
  tail -n 40 "$logf"
}

save_failure() { # files to keep
  mkdir -p "$FAILDIR"
  cp -f "$@" "$FAILDIR"/ 2>/dev/null || true
  cp -f "$CONF" "$FSLOG" "$FAILDIR"/ 2>/dev/null || true
  log "kept failure artifacts in $FAILDIR"
}

# first_diff A B: describe where two files first differ.
first_diff() { cmp "$1" "$2" 2>&1 | head -n 1 || true; }

PASSED=0
FAILED=0
RESULTS=()
rm -rf "$FAILDIR"

start_ref 0
mount_fs

for idx in 0 1; do
  run=$((idx + 1))
  seed=${SEEDS[$idx]}
  problems=()
  [ "$idx" -eq 1 ] && start_ref 1
  if ! fs_alive; then
    log "WARNING: the filesystem is not mounted any more; remounting"
    fs_unmount "$MNT" "${FS_PID:-0}" "$FSLOG"
    mount_fs
  fi
  mkdir -p "$WORK/art$run"
  log "run $run: fsx seed $seed, $OPS ops on ${FILE#"$WORK"/}"
  t0=$(date +%s)
  rc=0
  run_child env -C "$WORK" timeout -k 10 "$RUN_TIMEOUT" \
    fsx -f "$CONF" -N "$OPS" -S "$seed" -P "$WORK/art$run" "$FILE" \
    </dev/null >"$WORK/run$run.log" 2>&1 || rc=$?
  secs=$(($(date +%s) - t0))
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      problems+=("fsx timed out after ${RUN_TIMEOUT} s")
    else
      problems+=("fsx failed (exit status $rc)")
    fi
    echo "==== fsx run $run (seed $seed) FAILED after ${secs} s; reproduce with: fsx -f fsx.toml -N $OPS -S $seed FILE ===="
    fsx_failure_summary "$WORK/run$run.log"
    save_failure "$WORK/run$run.log" "$WORK/art$run"/*
  else
    log "run $run: fsx completed $OPS ops in ${secs} s"
    sum=$(sha256sum "$FILE" | awk '{print $1}')
    cp "$FILE" "$WORK/run$run.before"
    ref_sum "$idx"
    ref=$REF_SUM
    if [ -n "$ref" ] && [ "$ref" != "$sum" ]; then
      problems+=("final contents differ from the same fsx run on tmpfs ($(first_diff "$WORK/run$run.before" "$REFDIR/ref$idx.bin"))")
    fi
    fs_unmount "$MNT" "${FS_PID:-0}" "$FSLOG"
    [ "$FS_UNMOUNT_HOW" = clean ] || problems+=("unmount on SIGTERM was not clean: $FS_UNMOUNT_HOW")
    if [ -n "$IO_URING" ]; then
      if served=$(rings_served "$FSLOG"); then
        log "run $run: the FUSE rings served $served requests"
      else
        problems+=("the FUSE rings served no request (-o io_uring)")
      fi
    fi
    mount_fs
    if [ ! -f "$FILE" ]; then
      problems+=("the file is gone after the remount")
    else
      sum2=$(sha256sum "$FILE" | awk '{print $1}')
      if [ "$sum2" != "$sum" ]; then
        problems+=("contents changed across unmount/remount ($(first_diff "$WORK/run$run.before" "$FILE"); sizes $(stat -c %s "$WORK/run$run.before") -> $(stat -c %s "$FILE"))")
      else
        log "run $run: contents (sha256 ${sum:0:16}...) survive the remount${ref:+ and match the tmpfs reference}"
      fi
    fi
    [ ${#problems[@]} -eq 0 ] || save_failure "$WORK/run$run.log"
  fi
  if [ ${#problems[@]} -eq 0 ]; then
    PASSED=$((PASSED + 1))
    RESULTS+=("run $run (seed $seed): passed in ${secs} s")
  else
    FAILED=$((FAILED + 1))
    RESULTS+=("run $run (seed $seed): FAILED: $(IFS=';'; echo "${problems[*]}")")
  fi
done

fs_unmount "$MNT" "${FS_PID:-0}" "$FSLOG"
if [ $FAILED -gt 0 ] && [ -s "$FSLOG" ]; then
  echo "---- last 30 lines of the $(fs_label) log ----"
  tail -n 30 "$FSLOG"
fi

echo
echo "== fsx on $(fs_label): $OPS ops per run, max file size $FLEN =="
printf '  %s\n' "${RESULTS[@]}"
log "total time $(($(date +%s) - START)) s"
echo "fsx: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
