#!/usr/bin/env bash
# xfstests (fstests, the kdave/xfstests mirror) on LOCKER and, as the
# baseline, on a bindfs passthrough of a local directory, both through
# xfstests' FSTYP=fuse support (mount -t fuse$FUSE_SUBTYP); then a comparison.
#
# Run `scripts/xfstests.sh --help` for usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR
. "$SCRIPT_DIR/lib/harness.sh"

# The xfstests commit these results are meant for (kdave/xfstests, 2025-12-23,
# "xfstests: add HFS/HFS+ and NILFS2 into supported FS table"). Another one
# runs too, with a warning.
XFSTESTS_PINNED=63a29724a85f1999e49bf0a9bf0d22643b6116e5
LOCKER_BIN=${LOCKER_BIN:-$REPO/target/release/locker}
XFSTESTS_DIR=${XFSTESTS_DIR:-}
BUDGET=${XFSTESTS_BUDGET:-10800}          # seconds of ./check per contender
JOBS=${XFSTESTS_JOBS:-$(nproc)}           # make -j for building xfstests
EXCLUDE_FILE=${XFSTESTS_EXCLUDE:-}        # passed to ./check -E
OUT=${XFSTESTS_OUT:-/var/tmp/locker-xfstests/$(date -u +%Y%m%dT%H%M%SZ)}
HELPER=/sbin/mount.fuse.locker
PARSE="$SCRIPT_DIR/lib/xfstests-results.py"

usage() {
  cat <<EOF
Usage: XFSTESTS_DIR=/path/to/xfstests scripts/xfstests.sh [OPTIONS]

Runs xfstests' quick group (with FSTYP=fuse, check selects tests/generic/
only: 633 tests at the pinned commit) on
  (a) bindfs: a passthrough of a local directory (mount -t fuse.bindfs), the
      baseline, and
  (b) LOCKER: mount -t fuse.locker locker:t (test fs) and locker:s (scratch
      fs), each with its own config and data dir,
one after the other, then prints a table of pass/fail/notrun per contender
and the tests that pass on bindfs but not on LOCKER. Must run as root.

XFSTESTS_DIR is a source checkout of xfstests (pinned: kdave/xfstests
${XFSTESTS_PINNED:0:12}); it is built there with make when ltp/fsstress or
tests/generic/group.list is missing. Its local.config is not used or
changed: each contender gets its own config (HOST_OPTIONS).

Installs the build and run dependencies with apt (README of xfstests, less
what only other filesystems need), bindfs and fuse3; creates the users
fsgqa, fsgqa2 and 123456-fsgqa and the group fsgqa if missing. For LOCKER,
links ${HELPER} to the binary under test and puts back what was there
at exit (do not run this beside scripts/test.sh, whose mount tests link it
too). Every mount is unmounted at exit, also after a failure.

Options:
  --only locker|bindfs  run one contender only (no comparison)
  --tests "T1 T2 ..."   run these tests (e.g. "generic/001 generic/003")
                        instead of the quick group
  --keep-workdir        keep the temp dir (data dirs, configs) for debugging
  --no-install          install nothing (no apt, no users); build nothing
  -h, --help            this help

Environment:
  XFSTESTS_DIR       xfstests source checkout (required)
  LOCKER_BIN         LOCKER binary (default: REPO/target/release/locker)
  XFSTESTS_BUDGET    seconds ./check may run per contender (default ${BUDGET});
                     tests not reached by then count as "missing"
  XFSTESTS_EXCLUDE   file of tests to skip (./check -E), e.g. known hangs
  XFSTESTS_JOBS      make -j for the xfstests build (default: nproc)
  XFSTESTS_OUT       where results are kept (default /var/tmp/locker-xfstests/TIME)
  TMPDIR             where the temp dir goes (default /var/tmp)

Harness shims (in the temp dir; each contender's config points xfstests at
them, nothing on the system PATH changes):
  mount   adds -i to remounts (mount -o remount,...): mount(8) would hand a
          remount to the fuse helper, which starts file systems and cannot
          remount; with -i mount(8) makes the remount(2) call itself. Both.
  df      LOCKER only: shows type fuse.locker as fuse. xfstests checks that
          TEST_DEV is mounted with type \$FSTYP (= fuse) as df -T prints it;
          bindfs mounts have type fuse (no subtype), LOCKER's fuse.locker.
  umount  bindfs only: xfstests unmounts by source (umount \$SCRATCH_DEV);
          bindfs's source is its directory, which umount(8) takes for a
          mount point, so a source that is not a mount point is replaced by
          the mount point it is mounted on.

Output (also in XFSTESTS_OUT/summary.txt, with each contender's results dir,
check output, daemon logs and a per-test TSV): the table, the tests passing
on bindfs but not on LOCKER with LOCKER's status and reason, and the reverse.
Exit status: 0 when every selected test that passes on bindfs passes on
LOCKER (or only one contender ran and ./check produced results), 1 otherwise.
EOF
}

ONLY=
TESTS=()
NO_INSTALL=
while [ $# -gt 0 ]; do
  case "$1" in
    --only)
      [ $# -ge 2 ] || { echo "--only needs locker or bindfs" >&2; exit 2; }
      case "$2" in locker | bindfs) ONLY=$2 ;; *) echo "--only: locker or bindfs, not $2" >&2; exit 2 ;; esac
      shift ;;
    --tests)
      [ $# -ge 2 ] || { echo "--tests needs a list" >&2; exit 2; }
      read -r -a TESTS <<<"$2"
      [ ${#TESTS[@]} -gt 0 ] || { echo "--tests: empty list" >&2; exit 2; }
      shift ;;
    --keep-workdir) export KEEP_WORKDIR=1 ;;
    --no-install) NO_INSTALL=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

CONTENDERS=(bindfs locker)
[ -z "$ONLY" ] || CONTENDERS=("$ONLY")
want() { [[ " ${CONTENDERS[*]} " == *" $1 "* ]]; }

harness_init xfstests
START=$(date +%s)

[ -n "$XFSTESTS_DIR" ] || die "set XFSTESTS_DIR to an xfstests source checkout (kdave/xfstests at ${XFSTESTS_PINNED:0:12})"
XFSTESTS_DIR=$(cd "$XFSTESTS_DIR" && pwd) || die "XFSTESTS_DIR: no such directory"
if [ ! -x "$XFSTESTS_DIR/check" ] || [ ! -f "$XFSTESTS_DIR/common/rc" ]; then
  die "$XFSTESTS_DIR is not an xfstests checkout (no ./check, common/rc)"
fi
if want locker && [ ! -x "$LOCKER_BIN" ]; then
  die "LOCKER binary not found at $LOCKER_BIN (build it with cargo build --release, or set LOCKER_BIN)"
fi
if [ -n "$EXCLUDE_FILE" ]; then
  [ -f "$EXCLUDE_FILE" ] || die "XFSTESTS_EXCLUDE: no such file: $EXCLUDE_FILE"
  EXCLUDE_FILE=$(realpath "$EXCLUDE_FILE")
fi
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

# ---------------------------------------------------------------- installs ---
# xfstests' README (Debian) less lvm2, dump, indent, dbench, sqlite3 and the
# kernel headers, which only tests of block-device filesystems use; plus
# libcap2-bin (setcap, getcap, capsh) and xz-utils that generic tests call.
BUILD_PKGS=(make gcc autoconf automake libtool libtool-bin pkg-config uuid-dev
  xfslibs-dev libacl1-dev libattr1-dev libaio-dev libgdbm-dev libgdbm-compat-dev
  liburing-dev libcap-dev)
RUN_PKGS=(xfsprogs acl attr bc e2fsprogs fio gawk perl psmisc python3 quota
  uuid-runtime util-linux mount passwd libcap2-bin xz-utils fuse3 bindfs)
if [ -z "$NO_INSTALL" ]; then
  apt_install "${BUILD_PKGS[@]}" "${RUN_PKGS[@]}"
fi
for tool in python3 xfs_io bc findmnt; do
  command -v "$tool" >/dev/null || die "$tool not found (run without --no-install)"
done
if want bindfs; then command -v bindfs >/dev/null || die "bindfs not found (apt-get install bindfs)"; fi

# ------------------------------------------------------------------- build ---
XFS_REV=$(git -C "$XFSTESTS_DIR" rev-parse HEAD 2>/dev/null || echo unknown)
log "xfstests at $XFSTESTS_DIR, commit $XFS_REV"
if [ "$XFS_REV" != "$XFSTESTS_PINNED" ]; then
  log "WARNING: not the pinned commit $XFSTESTS_PINNED; results may differ"
fi
if [ ! -x "$XFSTESTS_DIR/ltp/fsstress" ] || [ ! -f "$XFSTESTS_DIR/tests/generic/group.list" ]; then
  [ -z "$NO_INSTALL" ] || die "xfstests is not built in $XFSTESTS_DIR (run make there, or drop --no-install)"
  log "building xfstests (make -j$JOBS; log: $OUT/build.log)"
  if ! make -C "$XFSTESTS_DIR" -j"$JOBS" >"$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log" >&2
    die "building xfstests failed (log: $OUT/build.log)"
  fi
fi
[ -x "$XFSTESTS_DIR/ltp/fsstress" ] || die "make did not build ltp/fsstress (log: $OUT/build.log)"

# ------------------------------------------------------------- test users ---
# xfstests' README: useradd -m fsgqa; useradd 123456-fsgqa; useradd fsgqa2;
# groupadd fsgqa. A name starting with digits needs --badname(s) on some
# shadow versions; tests that want it are not run when it cannot be made.
add_user() { # NAME [useradd args]
  local name=$1; shift
  getent passwd "$name" >/dev/null && return 0
  useradd "$@" "$name" 2>/dev/null || useradd --badname "$@" "$name" 2>/dev/null ||
    useradd --badnames "$@" "$name" 2>/dev/null ||
    log "WARNING: could not create user $name; the tests that need it will not run"
}
if [ -z "$NO_INSTALL" ]; then
  add_user fsgqa -m
  add_user fsgqa2
  add_user 123456-fsgqa
  getent group fsgqa >/dev/null || groupadd fsgqa
fi

# --------------------------------------------------------- test selection ---
make_workdir lkxfs
if [ ${#TESTS[@]} -gt 0 ]; then
  printf '%s\n' "${TESTS[@]}" >"$WORK/expected.txt"
  CHECK_ARGS=("${TESTS[@]}")
  SELECTION="tests: ${TESTS[*]}"
else
  # With FSTYP=fuse, check takes groups from tests/generic and tests/fuse
  # (there is none): the quick group is generic tests only.
  awk '!/^#/ && NF > 1 { for (i = 2; i <= NF; i++) if ($i == "quick") { print "generic/" $1; break } }' \
    "$XFSTESTS_DIR/tests/generic/group.list" >"$WORK/expected.txt"
  CHECK_ARGS=(-g quick)
  SELECTION="group quick ($(wc -l <"$WORK/expected.txt") generic tests)"
fi
[ -s "$WORK/expected.txt" ] || die "no tests selected"
EXCLUDE_ARGS=()
[ -z "$EXCLUDE_FILE" ] || EXCLUDE_ARGS=(-E "$EXCLUDE_FILE")

# ------------------------------------------------------------ the helper ---
# mount -t fuse.locker runs /sbin/mount.fuse.locker: the binary under test,
# for the length of this run; what was there before is put back at exit.
restore_helper() {
  rm -f "$HELPER"
  if [ -e "$WORK/saved-helper" ] || [ -L "$WORK/saved-helper" ]; then
    mv -T "$WORK/saved-helper" "$HELPER" && log "restored $HELPER"
  fi
}
if want locker; then
  if [ -e "$HELPER" ] || [ -L "$HELPER" ]; then
    mv -T "$HELPER" "$WORK/saved-helper"
    log "moved the existing $HELPER aside to $WORK/saved-helper (put back at exit)"
  fi
  on_exit restore_helper
  ln -s "$(realpath "$LOCKER_BIN")" "$HELPER"
fi

# ------------------------------------------------------------------ shims ---
write_shims() { # DIR CONTENDER
  local d=$1 who=$2
  mkdir -p "$d"
  cat >"$d/mount" <<EOF
#!/bin/bash
# xfstests' MOUNT_PROG: a remount is made by mount(8) itself (-i), not by
# the fuse helper, which can only start a file system.
for a in "\$@"; do
  case "\$a" in *remount*) exec $(command -v mount) -i "\$@" ;; esac
done
exec $(command -v mount) "\$@"
EOF
  if [ "$who" = locker ]; then
    cat >"$d/df" <<EOF
#!/bin/bash
# xfstests' DF_PROG (called as df -T -P): LOCKER's type fuse.locker shown as
# fuse, the type xfstests expects of a FSTYP=fuse mount.
set -o pipefail
$(command -v df) "\$@" | sed -E 's/^([^ ]+ +)fuse\.locker( )/\1fuse\2/'
EOF
  else
    cat >"$d/umount" <<EOF
#!/bin/bash
# xfstests' UMOUNT_PROG: it unmounts by source (umount \$SCRATCH_DEV); a
# bindfs source is a directory, which umount(8) takes for a mount point.
# An argument that is not a mount point but a mount's source becomes the
# newest mount point of that source.
args=()
for a in "\$@"; do
  if [[ "\$a" != -* ]] && ! mountpoint -q -- "\$a" 2>/dev/null; then
    t=\$(findmnt -rn -S "\$a" -o TARGET 2>/dev/null | tail -n 1)
    [ -z "\$t" ] || a=\$t
  fi
  args+=("\$a")
done
exec $(command -v umount) "\${args[@]}"
EOF
  fi
  chmod 755 "$d"/*
}

# ------------------------------------------------------------- contenders ---
# daemon_pids MOUNTPOINT: LOCKER daemons serving it (argv: locker mount DIR ...).
daemon_pids() {
  local mnt p argv
  mnt=$(realpath -m "$1")
  for p in /proc/[0-9]*; do
    argv=()
    mapfile -d '' -t argv 2>/dev/null <"$p/cmdline" || continue
    [ ${#argv[@]} -ge 3 ] && [ "${argv[0]}" = locker ] && [ "${argv[1]}" = mount ] &&
      [ "$(realpath -m "${argv[2]}")" = "$mnt" ] && echo "${p#/proc/}"
  done
  return 0
}

# teardown DIR: unmounts whatever is mounted below DIR and waits for (then
# stops) the LOCKER daemons of its two mountpoints. Idempotent.
teardown() {
  local -
  set +e
  local d=$1 m i pids
  for m in $(mounts_below "$d" | sort -r); do
    for ((i = 0; i < 25; i++)); do # a test's stray process may hold it: 5 s
      umount "$m" 2>/dev/null
      is_mounted "$m" || break
      sleep 0.2
    done
    if is_mounted "$m"; then
      log "WARNING: $m still mounted (busy?); lazy unmount"
      echo "lazy unmount of $m at teardown" >>"$d/incidents.txt"
      umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
    fi
  done
  for m in "$d/test" "$d/scratch"; do
    for ((i = 0; i < 300; i++)); do # the daemon drains, then exits: 60 s
      pids=$(daemon_pids "$m")
      [ -n "$pids" ] || break
      sleep 0.2
    done
    [ -n "$pids" ] || continue
    log "WARNING: LOCKER daemon(s) $pids of $m still running 60 s after unmount; SIGTERM"
    echo "daemon of $m still running 60 s after unmount" >>"$d/incidents.txt"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    sleep 5
    pids=$(daemon_pids "$m")
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
  done
  return 0
}

# setup CONTENDER: dirs, configs, shims; sets CFG to xfstests' config file.
setup() {
  local who=$1 d=$WORK/$1
  mkdir -p "$d/test" "$d/scratch" "$d/results" "$d/shim"
  chmod 755 "$d" "$d/test" "$d/scratch"
  write_shims "$d/shim" "$who"
  local test_dev scratch_dev subtype test_opts scratch_opts extra
  if [ "$who" = locker ]; then
    # One daemon per data dir: the test and scratch file systems each get
    # their own config, data dir and namespace (t, s); the mount root is
    # that namespace, so TEST_DIR and SCRATCH_MNT are writable at the root.
    mkdir -p "$d/test-data" "$d/scratch-data"
    printf 'data_dir = "%s"\n\n[namespaces.t]\n' "$d/test-data" >"$d/test.toml"
    printf 'data_dir = "%s"\n\n[namespaces.s]\n' "$d/scratch-data" >"$d/scratch.toml"
    test_dev=locker:t
    scratch_dev=locker:s
    subtype=.locker
    # log=: the daemon must not write to the mount command's stderr, which
    # xfstests compares with the expected output.
    test_opts="-o config=$d/test.toml,log=$d/test.log,allow_other"
    scratch_opts="-o config=$d/scratch.toml,log=$d/scratch.log,allow_other"
    extra="export DF_PROG=\"$d/shim/df -T -P\""
  else
    mkdir -p "$d/test-src" "$d/scratch-src"
    test_dev=$d/test-src
    scratch_dev=$d/scratch-src
    subtype=.bindfs
    test_opts="-o allow_other"
    scratch_opts="-o allow_other"
    extra="export UMOUNT_PROG=$d/shim/umount"
  fi
  CFG=$d/xfstests.config
  cat >"$CFG" <<EOF
# xfstests config for $who, written by scripts/xfstests.sh (HOST_OPTIONS).
# check sources it again for every test.
export FSTYP=fuse
export FUSE_SUBTYP=$subtype
export TEST_DEV=$test_dev
export TEST_DIR=$d/test
export SCRATCH_DEV=$scratch_dev
export SCRATCH_MNT=$d/scratch
export TEST_FS_MOUNT_OPTS="$test_opts"
export MOUNT_OPTIONS="$scratch_opts"
export RESULT_BASE=$d/results
export MOUNT_PROG=$d/shim/mount
$extra
EOF
}

# preflight CONTENDER: mounts the test fs once by hand and checks what
# xfstests will check (source and type), for a clear error before ./check.
preflight() {
  local who=$1 d=$WORK/$1 src want_type
  if [ "$who" = locker ]; then
    src=locker:t; want_type=fuse.locker
    mount -t fuse.locker -o "config=$d/test.toml,log=$d/test.log,allow_other" "$src" "$d/test" ||
      { tail -n 20 "$d/test.log" >&2 2>/dev/null; die "LOCKER: mount -t fuse.locker $src $d/test failed"; }
  else
    src=$d/test-src; want_type=fuse
    mount -t fuse.bindfs -o allow_other "$src" "$d/test" || die "bindfs: mount -t fuse.bindfs $src $d/test failed"
  fi
  local got
  got=$(findmnt -rn -o SOURCE,FSTYPE --mountpoint "$d/test" || true)
  [ "$got" = "$src $want_type" ] || die "$who: mounted as '$got', expected '$src $want_type'"
  if ! { touch "$d/test/.preflight" && rm -f "$d/test/.preflight"; }; then
    die "$who: the test fs is not writable at its root"
  fi
  teardown "$d"
}

# run_contender CONTENDER: ./check with that contender's config.
declare -A SECS
run_contender() {
  local who=$1 d=$WORK/$1 rc=0 t0
  setup "$who"
  on_exit "teardown '$d'"
  preflight "$who"
  log "running xfstests ($SELECTION) on $who; output: $d/check.out (copied to $OUT/$who/)"
  t0=$(date +%s)
  # check must run from its own directory; timeout signals its whole
  # process group at the end of the budget.
  run_child env -C "$XFSTESTS_DIR" HOST_OPTIONS="$CFG" \
    timeout -k 60 "$BUDGET" ./check -R xunit-quiet "${EXCLUDE_ARGS[@]}" "${CHECK_ARGS[@]}" \
    >"$d/check.out" 2>&1 </dev/null || rc=$?
  SECS[$who]=$(($(date +%s) - t0))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    log "WARNING: ./check on $who used up its ${BUDGET}s budget; tests not reached count as missing"
    echo "./check stopped after ${BUDGET}s (budget)" >>"$d/incidents.txt"
  elif [ "$rc" -ne 0 ]; then
    log "./check on $who exited with status $rc (it does when a test fails)"
  fi
  teardown "$d"
  python3 "$PARSE" parse "$d/results" "$WORK/expected.txt" ${EXCLUDE_FILE:+"$EXCLUDE_FILE"} >"$d/results.tsv"
  # Kept: results, check output, daemon logs, configs; not the data dirs.
  mkdir -p "$OUT/$who"
  cp -a "$d/results" "$OUT/$who/"
  cp -a "$d/results.tsv" "$d/check.out" "$d/xfstests.config" "$OUT/$who/"
  for f in "$d"/*.log "$d"/*.toml "$d/incidents.txt"; do [ -f "$f" ] && cp -a "$f" "$OUT/$who/"; done
  # (No pipe into grep -q here: with pipefail, awk's SIGPIPE would fail it.)
  if ! awk -F'\t' '$2 != "missing" && $2 != "excluded" { n++ } END { exit !n }' "$d/results.tsv"; then
    tail -n 30 "$d/check.out" >&2
    die "./check on $who produced no test results: the harness is broken (see $OUT/$who/check.out)"
  fi
  log "$who done in ${SECS[$who]} s"
}

for who in "${CONTENDERS[@]}"; do
  run_contender "$who"
done

# ----------------------------------------------------------------- report ---
SIDES=()
for who in "${CONTENDERS[@]}"; do
  label=$who; [ "$who" = locker ] && label=LOCKER
  SIDES+=("$label=$WORK/$who/results.tsv:${SECS[$who]}")
done
{
  echo "== xfstests (kdave/xfstests $XFS_REV), FSTYP=fuse, $SELECTION =="
  echo "   on Linux $(uname -r); LOCKER: $(realpath "$LOCKER_BIN" 2>/dev/null || echo -); bindfs $(bindfs --version 2>/dev/null | head -n 1 | awk '{print $NF}')"
  echo
  if [ ${#CONTENDERS[@]} -eq 2 ]; then
    python3 "$PARSE" report --base bindfs "${SIDES[@]}"
  else
    python3 "$PARSE" report "${SIDES[@]}"
  fi
  for who in "${CONTENDERS[@]}"; do
    if [ -s "$WORK/$who/incidents.txt" ]; then
      echo
      echo "Incidents ($who):"
      sed 's/^/  /' "$WORK/$who/incidents.txt"
    fi
  done
} | tee "$OUT/summary.txt"

REGRESS=0
if [ ${#CONTENDERS[@]} -eq 2 ]; then
  # Both lists name every selected test (a test without a result is "missing").
  REGRESS=$(awk -F'\t' 'FILENAME == ARGV[1] { if ($2 == "pass") b[$1] = 1; next }
    ($1 in b) && $2 != "pass" { n++ } END { print n + 0 }' \
    "$WORK/bindfs/results.tsv" "$WORK/locker/results.tsv")
fi
log "results kept in $OUT; total time $(($(date +%s) - START)) s"
echo "xfstests: $REGRESS tests pass on bindfs but not on LOCKER"
[ "$REGRESS" -eq 0 ]
