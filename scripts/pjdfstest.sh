#!/usr/bin/env bash
# POSIX conformance of LOCKER, measured with pjdfstest (the Rust rewrite,
# crates.io `pjdfstest` 0.2.x) against a fresh ext4 filesystem on this machine.
#
# The bar: every pjdfstest case that passes on ext4 must pass on LOCKER, unless
# it is listed in tests/pjdfstest-exceptions.txt.
#
# Run `scripts/pjdfstest.sh --help` for usage.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source-path=SCRIPTDIR
. "$SCRIPT_DIR/lib/harness.sh"

LOCKER_BIN=${LOCKER_BIN:-$REPO/target/release/locker}
EXCEPTIONS=${PJDFSTEST_EXCEPTIONS:-$REPO/tests/pjdfstest-exceptions.txt}
CONFORMANCE=${PJDFSTEST_CONFORMANCE:-}
PJDFSTEST_VERSION_REQ='^0.2'          # for cargo install
PJDFSTEST_VERSION_RE='^0\.2\.'        # what `pjdfstest --version` must show
CHUNK_TIMEOUT=${PJDFSTEST_CHUNK_TIMEOUT:-120}   # seconds per pjdfstest invocation
TOTAL_BUDGET=${PJDFSTEST_BUDGET:-900}           # seconds for all invocations on one side
NAPTIME=${PJDFSTEST_NAPTIME:-0.01}
IMG_SIZE=${PJDFSTEST_IMG_SIZE:-512M}

usage() {
  cat <<EOF
Usage: scripts/pjdfstest.sh [OPTIONS]

Runs pjdfstest (crates.io pjdfstest ${PJDFSTEST_VERSION_REQ}) with one config on
  (a) a fresh ext4 filesystem in an image file on a loop device, and
  (b) a LOCKER mount (test dir MOUNT/corp/pjd, data dir in a temp dir),
then compares the results test by test. Must run as root.

The bar: every test that passes on ext4 also passes on LOCKER. A test that
passes on ext4 but not on LOCKER (failed, skipped or no result) fails this
script unless it is listed in tests/pjdfstest-exceptions.txt.

Installs what it needs first (libacl1-dev, e2fsprogs, fuse3; pjdfstest with
cargo install -j 1 into \$HOME/.cargo/bin unless that version is there) and
creates the dummy users nobody and tests (group tests) if missing.

Options:
  --write-conformance  write the counts and the ext4-pass/LOCKER-fail list to
                       CONFORMANCE.md (reasons already written there, or given
                       as comments in the exceptions file, are kept)
  --keep-workdir       keep the temp dir (outputs of every run) for debugging
  --no-install         do not install anything; use what is on PATH
  --bindfs             harness self-test: run side (b) on a bindfs passthrough
                       instead of LOCKER. Never use this to judge LOCKER.
  --writeback-cache    mount LOCKER with -o writeback_cache (the kernel's
                       writeback cache)
  --io-uring           mount LOCKER with -o io_uring (FUSE over io_uring;
                       turns the fuse module's enable_uring on for the run);
                       fails if the rings served no request
  -h, --help           this help

Environment:
  LOCKER_BIN                 LOCKER binary (default: REPO/target/release/locker)
  PJDFSTEST_EXCEPTIONS       allow-list (default: REPO/tests/pjdfstest-exceptions.txt)
  PJDFSTEST_NAPTIME          pjdfstest naptime in seconds (default 0.01)
  PJDFSTEST_CHUNK_TIMEOUT    timeout of one pjdfstest invocation (default 120 s)
  PJDFSTEST_BUDGET           time for all invocations on one side (default 900 s);
                             chunks not started by then count as failed
  PJDFSTEST_CONFORMANCE      file --write-conformance writes (default REPO/CONFORMANCE.md)
  TMPDIR                     where the temp dir goes (default /var/tmp)

Output: a table of the tests whose result differs, then the final line
  pjdfstest: N passed, M failed
where N = tests passing on ext4 that also pass on LOCKER, and M = tests passing
on ext4 that do not pass on LOCKER and are not in the exceptions file (allowed
ones are counted on the line before). Exit status 0 iff M = 0.
EOF
}

WRITE_CONFORMANCE=
NO_INSTALL=
IO_URING=
while [ $# -gt 0 ]; do
  case "$1" in
    --write-conformance) WRITE_CONFORMANCE=1 ;;
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

if [ -n "$WRITE_CONFORMANCE" ] && [ -z "$CONFORMANCE" ]; then
  [ -z "${HARNESS_BINDFS:-}" ] || { echo "refusing to write bindfs results to CONFORMANCE.md (set PJDFSTEST_CONFORMANCE=FILE)" >&2; exit 2; }
  CONFORMANCE=$REPO/CONFORMANCE.md
fi

harness_init pjdfstest
[ -z "$IO_URING" ] || harness_io_uring
START=$(date +%s)

# ---------------------------------------------------------------- installs ---
if [ -z "$NO_INSTALL" ]; then
  apt_install libacl1-dev e2fsprogs fuse3 mount util-linux passwd
  cargo_install_tool pjdfstest pjdfstest "$PJDFSTEST_VERSION_RE" --version "$PJDFSTEST_VERSION_REQ"
fi
command -v pjdfstest >/dev/null || die "pjdfstest not found"
PJD_VERSION=$(pjdfstest --version | awk '{print $2}')
if [ -z "${HARNESS_BINDFS:-}" ] && [ ! -x "$LOCKER_BIN" ]; then
  die "LOCKER binary not found at $LOCKER_BIN (build it with cargo build --release, or set LOCKER_BIN)"
fi

# ------------------------------------------------------------- dummy users ---
# pjdfstest switches to two unprivileged users, each in its own primary group.
getent passwd nobody >/dev/null || {
  getent group nogroup >/dev/null || groupadd -r nogroup
  useradd -r -g nogroup -M -d /nonexistent -s /usr/sbin/nologin nobody
}
NOBODY_GROUP=$(id -gn nobody)
getent group tests >/dev/null || groupadd tests
getent passwd tests >/dev/null || useradd -g tests -M -d / -s /usr/sbin/nologin -c "pjdfstest dummy user" tests
[ "$(id -gn tests)" = tests ] || die "user 'tests' exists but its primary group is $(id -gn tests), not 'tests'"

# -------------------------------------------------------- exceptions file ---
if [ ! -f "$EXCEPTIONS" ]; then
  mkdir -p "$(dirname "$EXCEPTIONS")"
  cat >"$EXCEPTIONS" <<'EOF'
# pjdfstest cases that may fail on LOCKER although they pass on ext4.
# Read by scripts/pjdfstest.sh. One test name per line, exactly as pjdfstest
# prints it (e.g. `chmod::clear_isgid_bit`). Give the reason as a `#` comment,
# either at the end of the line or on the comment line(s) just above it; the
# reason is copied to CONFORMANCE.md. A blank line ends a reason block.

EOF
  log "created $EXCEPTIONS"
fi

# ------------------------------------------------------------------ config ---
# Short paths: pjdfstest binds unix sockets at absolute paths (108 bytes max),
# and both sides run in the same relative place (MNT/corp/pjd) so that path
# lengths are equal.
make_workdir lkpjd
mkdir -p "$WORK/bin" "$WORK/secondary" "$WORK/ext4" "$WORK/locker"
chmod 755 "$WORK/secondary"
CONF=$WORK/pjdfstest.toml
write_config() { # $1 = allow_remount (true|false)
  cat <<EOF
# pjdfstest ${PJD_VERSION} config used for both ext4 and LOCKER.
# Features: what ext4 on Linux supports. chflags, chflags_sf_snapshot,
# stat_st_birthtime and nfsv4_acls do not exist on Linux.
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}
# For the EXDEV tests: a directory on another filesystem than either side.
secondary_fs = "$WORK/secondary"

[settings]
naptime = ${NAPTIME}
# The EROFS tests remount the filesystem under test read-only and back.
allow_remount = $1

[dummy_auth]
entries = [
  ["nobody", "${NOBODY_GROUP}"],
  ["tests", "tests"],
]
EOF
}
write_config true >"$CONF"
write_config false >"$WORK/discover.toml"

# pjdfstest remounts with `mount -o remount,ro|rw MOUNTPOINT`. For a FUSE mount
# mount(8) hands that to mount.fuse3, which cannot remount; with -i mount(8)
# makes the remount(2) call itself, which the kernel supports for FUSE (and for
# ext4 -i changes nothing). Only pjdfstest gets this shim on its PATH.
REAL_MOUNT=$(command -v mount)
printf '#!/bin/sh\nexec %s -i "$@"\n' "$REAL_MOUNT" >"$WORK/bin/mount"
chmod 755 "$WORK/bin/mount"

# ------------------------------------------------------------------- ext4 ---
EXT4_MNT=$WORK/e
mkdir -p "$EXT4_MNT"
truncate -s "$IMG_SIZE" "$WORK/ext4/ext4.img"
mkfs.ext4 -q -F -E nodiscard "$WORK/ext4/ext4.img"
on_exit "umount '$EXT4_MNT' 2>/dev/null || umount -l '$EXT4_MNT' 2>/dev/null"
mount -o loop,nodiscard "$WORK/ext4/ext4.img" "$EXT4_MNT"
chmod 755 "$EXT4_MNT"
EXT4_DIR=$EXT4_MNT/corp/pjd
mkdir -p "$EXT4_DIR"
chmod 755 "$EXT4_MNT/corp" "$EXT4_DIR"

# run_pjdfstest OUTFILE CONFIG PATH [pjdfstest args...]; returns its status.
run_pjdfstest() {
  local out=$1 conf=$2 path=$3; shift 3
  local rc=0
  run_child env -C "$WORK" NO_COLOR=1 RUST_BACKTRACE=0 PATH="$WORK/bin:$PATH" \
    timeout -k 10 "${PJD_TIMEOUT:-$CHUNK_TIMEOUT}" pjdfstest -c "$conf" -p "$path" "$@" >"$out" 2>&1 || rc=$?
  return "$rc"
}

# parse_results OUTFILE: prints "name<TAB>status<TAB>detail" for every result
# line; status is pass|fail|skip, detail the first indented line after it.
parse_results() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '
    function flush() { if (name != "") { print name "\t" st "\t" det; name = "" } }
    /^[A-Za-z0-9_]+(::[A-Za-z0-9_]+)+ +(ok|skipped|FAILED|PASSED UNEXPECTEDLY|failed as expected)$/ {
      flush()
      name = $1; st = $NF
      if ($0 ~ / ok$/ || $0 ~ /PASSED UNEXPECTEDLY$/) st = "pass"
      else if ($0 ~ / skipped$/) st = "skip"
      else st = "fail"
      det = ""; next
    }
    /^\t/ && name != "" && det == "" { d = $0; sub(/^\t+/, "", d); gsub(/\t/, " ", d); det = d; next }
    { flush() }
    END { flush() }'
}

# Discover the test names: a full run on ext4 that remounts nothing (the EROFS
# tests are only listed as skipped).
log "discovering test cases (pjdfstest ${PJD_VERSION} on ext4)"
PJD_TIMEOUT=$TOTAL_BUDGET run_pjdfstest "$WORK/ext4/discover.out" "$WORK/discover.toml" "$EXT4_DIR" || true
parse_results "$WORK/ext4/discover.out" | cut -f1 | sort -u >"$WORK/names.txt"
NTESTS=$(wc -l <"$WORK/names.txt")
[ "$NTESTS" -gt 100 ] || { tail -n 30 "$WORK/ext4/discover.out" >&2; die "pjdfstest listed only $NTESTS tests"; }

# Chunks: one pjdfstest invocation per syscall module (a hang or crash then
# costs one module, and pjdfstest's posix_fallocate tests leave ext4 busy so
# that a later remount fails), and the EROFS tests in a chunk of their own.
grep '::erofs' "$WORK/names.txt" >"$WORK/chunk.erofs" || true
grep -v '::erofs' "$WORK/names.txt" | awk -F'::' -v dir="$WORK" '{ print > (dir "/chunk." $1) }'
CHUNKS=()
for f in "$WORK"/chunk.*; do CHUNKS+=("${f##*/chunk.}"); done

# run_side SIDE PATH MOUNTPOINT: runs every chunk, writes $WORK/SIDE.tsv.
run_side() {
  local side=$1 path=$2 mnt=$3 chunk rc names t0
  t0=$(date +%s)
  : >"$WORK/$side.tsv"
  for chunk in "${CHUNKS[@]}"; do
    [ -s "$WORK/chunk.$chunk" ] || continue
    if [ $(($(date +%s) - t0)) -ge "$TOTAL_BUDGET" ]; then
      echo "chunk $chunk not run: the ${TOTAL_BUDGET}s budget was used up" >>"$WORK/$side/incidents.txt"
      awk '{ print $1 "\tfail\tnot run (time budget used up)" }' "$WORK/chunk.$chunk" >>"$WORK/$side.tsv"
      continue
    fi
    if [ "$side" = locker ] && ! fs_alive; then
      log "WARNING: LOCKER is not mounted any more (daemon died?); remounting for chunk $chunk"
      echo "LOCKER died or unmounted before chunk $chunk" >>"$WORK/locker/incidents.txt"
      fs_unmount "$LOCKER_MNT" "${FS_PID:-0}" "$WORK/locker/locker.log"
      fs_mount "$LOCKER_MNT" "$WORK/locker/data" "$WORK/locker/locker.log"
      mkdir -p "$path" && chmod 755 "$path"
    fi
    # -e matches the full names, before pjdfstest trims this prefix for output.
    mapfile -t names < <(sed 's/^/pjdfstest::tests::/' "$WORK/chunk.$chunk")
    rc=0
    run_pjdfstest "$WORK/$side/$chunk.out" "$CONF" "$path" -e -- "${names[@]}" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      log "WARNING: pjdfstest chunk $chunk on $side timed out after ${CHUNK_TIMEOUT}s"
      echo "chunk $chunk timed out after ${CHUNK_TIMEOUT}s" >>"$WORK/$side/incidents.txt"
      if [ "$side" = locker ]; then
        log "restarting LOCKER after the timeout"
        fs_unmount "$LOCKER_MNT" "${FS_PID:-0}" "$WORK/locker/locker.log"
        echo "LOCKER restarted after chunk $chunk (unmount: $FS_UNMOUNT_HOW)" >>"$WORK/locker/incidents.txt"
        fs_mount "$LOCKER_MNT" "$WORK/locker/data" "$WORK/locker/locker.log"
        mkdir -p "$path" && chmod 755 "$path"
      fi
    fi
    # An EROFS test interrupted between its two remounts leaves it read-only.
    if is_mounted "$mnt" && findmnt -no OPTIONS "$mnt" | grep -qE '(^|,)ro(,|$)'; then
      echo "$mnt was left read-only after chunk $chunk; remounted rw" >>"$WORK/$side/incidents.txt"
      "$REAL_MOUNT" -i -o remount,rw "$mnt" || true
    fi
    parse_results "$WORK/$side/$chunk.out" >"$WORK/$side/$chunk.tsv"
    # Tests of the chunk without a result line: the run hung or crashed.
    awk -F'\t' -v rc="$rc" 'NR == FNR { seen[$1] = 1; next }
      !($1 in seen) { print $1 "\tfail\tno result (pjdfstest exited with status " rc ": crash or timeout)" }' \
      "$WORK/$side/$chunk.tsv" "$WORK/chunk.$chunk" >"$WORK/$side/$chunk.missing"
    cat "$WORK/$side/$chunk.tsv" "$WORK/$side/$chunk.missing" >>"$WORK/$side.tsv"
  done
  [ -s "$WORK/$side/incidents.txt" ] && sed "s/^/$side: /" "$WORK/$side/incidents.txt" >&2
  return 0
}

T0=$(date +%s)
log "running ${NTESTS} tests on ext4 in ${#CHUNKS[@]} chunks"
run_side ext4 "$EXT4_DIR" "$EXT4_MNT"
T1=$(date +%s)
EXT4_SECS=$((T1 - T0))

# ------------------------------------------------------------------ LOCKER ---
LOCKER_MNT=$WORK/l
mkdir -p "$WORK/locker/data"
fs_mount "$LOCKER_MNT" "$WORK/locker/data" "$WORK/locker/locker.log"
LOCKER_DIR=$LOCKER_MNT/corp/pjd
mkdir -p "$LOCKER_DIR"
chmod 755 "$LOCKER_DIR"
log "running ${NTESTS} tests on $(fs_label) in ${#CHUNKS[@]} chunks"
run_side locker "$LOCKER_DIR" "$LOCKER_MNT"
T2=$(date +%s)
LOCKER_SECS=$((T2 - T1))
fs_unmount "$LOCKER_MNT" "${FS_PID:-0}" "$WORK/locker/locker.log"
[ "$FS_UNMOUNT_HOW" = clean ] || echo "unmount after the run: $FS_UNMOUNT_HOW" >>"$WORK/locker/incidents.txt"
if [ -n "$IO_URING" ]; then
  served=$(rings_served "$WORK/locker/locker.log") || die "LOCKER's FUSE rings served no request (-o io_uring)"
  log "the FUSE rings served $served requests"
fi

# ----------------------------------------------------------------- compare ---
# Exceptions: name<TAB>reason
awk '
  /^[ \t]*$/ { reason = ""; next }
  /^[ \t]*#/ { r = $0; sub(/^[ \t]*#[ \t]*/, "", r); reason = (reason == "" ? r : reason " " r); next }
  {
    line = $0; r = ""
    if (index(line, "#")) { r = substr(line, index(line, "#") + 1); line = substr(line, 1, index(line, "#") - 1); sub(/^[ \t]+/, "", r) }
    gsub(/[ \t]/, "", line)
    if (line != "") print line "\t" (r != "" ? r : reason)
  }' "$EXCEPTIONS" >"$WORK/exceptions.tsv"

# One row per test: name, ext4 status, locker status, verdict, locker detail, exception reason
awk -F'\t' -v OFS='\t' '
  FILENAME == ARGV[1] { exc[$1] = $2; isexc[$1] = 1; next }
  FILENAME == ARGV[2] { e[$1] = $2; next }
  FILENAME == ARGV[3] { l[$1] = $2; ld[$1] = $3; next }
  {
    n = $1; es = (n in e) ? e[n] : "fail"; ls = (n in l) ? l[n] : "fail"
    if (es == "pass" && ls == "pass") v = "ok"
    else if (es == "pass") v = (n in isexc) ? "allowed" : "REGRESSION"
    else if (ls == "pass") v = "locker-only-pass"
    else if (es == ls) v = "same"
    else v = "differs"
    print n, es, ls, v, ld[n], exc[n]
  }' "$WORK/exceptions.tsv" "$WORK/ext4.tsv" "$WORK/locker.tsv" "$WORK/names.txt" >"$WORK/compare.tsv"

count() { awk -F'\t' -v c="$1" -v s="$2" '$c == s' "$WORK/compare.tsv" | wc -l; }
E_PASS=$(count 2 pass); E_FAIL=$(count 2 fail); E_SKIP=$(count 2 skip)
L_PASS=$(count 3 pass); L_FAIL=$(count 3 fail); L_SKIP=$(count 3 skip)
BAR=$E_PASS
GOOD=$(count 4 ok); ALLOWED=$(count 4 allowed); REGRESS=$(count 4 REGRESSION)
EXTRA=$(count 4 locker-only-pass)
if [ "$E_PASS" -lt $((NTESTS / 2)) ]; then
  cat "$WORK/ext4/chmod.out" >&2 || true
  die "only $E_PASS of $NTESTS tests pass on ext4: the harness is broken, not LOCKER"
fi

echo
echo "== pjdfstest ${PJD_VERSION}: results that differ between ext4 and $(fs_label) =="
if awk -F'\t' '$4 != "ok" && $4 != "same"' "$WORK/compare.tsv" | grep -q .; then
  {
    printf 'TEST\tEXT4\tLOCKER\tVERDICT\tLOCKER DETAIL\n'
    awk -F'\t' -v OFS='\t' '$4 != "ok" && $4 != "same" {
        d = $5; if (length(d) > 110) d = substr(d, 1, 107) "..."
        print $1, $2, $3, $4, d }' "$WORK/compare.tsv" | sort -t$'\t' -k4,4 -k1,1
  } | column -t -s$'\t'
else
  echo "(none)"
fi
if awk -F'\t' '$4 == "same" && $2 != "pass"' "$WORK/compare.tsv" | grep -q .; then
  echo
  echo "Not passing on either side (not part of the bar):"
  awk -F'\t' '$4 == "same" && $2 != "pass" { print "  " $1 " (" $2 ")" }' "$WORK/compare.tsv"
fi
STALE=$(awk -F'\t' 'NR == FNR { v[$1] = $4; next } !(($1 in v) && (v[$1] == "allowed")) {
    why = !($1 in v) ? "no such test" : (v[$1] == "ok" ? "passes on LOCKER" : "does not pass on ext4")
    print "  " $1 " (" why ")" }' \
  "$WORK/compare.tsv" "$WORK/exceptions.tsv")
if [ -n "$STALE" ]; then
  echo
  echo "Exceptions that are not needed (the test passes on LOCKER, fails on ext4 too, or does not exist):"
  echo "$STALE"
fi
if [ -s "$WORK/ext4/incidents.txt" ] || [ -s "$WORK/locker/incidents.txt" ]; then
  echo
  echo "Incidents:"
  cat "$WORK"/ext4/incidents.txt "$WORK"/locker/incidents.txt 2>/dev/null | sed 's/^/  /'
fi

echo
printf '%-8s %7s %7s %8s %6s\n' "" passed failed skipped total
printf '%-8s %7d %7d %8d %6d   (%ss)\n' ext4 "$E_PASS" "$E_FAIL" "$E_SKIP" "$NTESTS" "$EXT4_SECS"
printf '%-8s %7d %7d %8d %6d   (%ss)\n' LOCKER "$L_PASS" "$L_FAIL" "$L_SKIP" "$NTESTS" "$LOCKER_SECS"
echo "bar: $BAR tests pass on ext4; on LOCKER $GOOD of them pass, $REGRESS do not (failed, skipped or no result), $ALLOWED do not but are allowed by ${EXCEPTIONS#"$REPO"/}; $EXTRA tests pass only on LOCKER"

# ------------------------------------------------------------ CONFORMANCE ---
if [ -n "$WRITE_CONFORMANCE" ]; then
  # Keep the reasons already written in CONFORMANCE.md (4th column).
  : >"$WORK/old-reasons.tsv"
  if [ -f "$CONFORMANCE" ]; then
    awk -F'|' '/^\| `[^`]+` \|/ {
        n = $2; gsub(/[ `]/, "", n); r = $(NF - 1); sub(/^ +/, "", r); sub(/ +$/, "", r)
        if (r != "" && r !~ /^_?TODO/) print n "\t" r }' "$CONFORMANCE" >"$WORK/old-reasons.tsv"
  fi
  {
    echo "# POSIX conformance"
    echo
    echo "Generated by \`scripts/pjdfstest.sh --write-conformance\` on $(date -u +%Y-%m-%d)"
    echo "with pjdfstest ${PJD_VERSION} (crates.io) on Linux $(uname -r), as root, one"
    echo "config for both sides (features posix_fallocate, rename_ctime, utime_now,"
    echo "utimensat; secondary_fs for EXDEV; allow_remount for EROFS; naptime ${NAPTIME} s)."
    echo "ext4: a fresh filesystem in an image file on a loop device. LOCKER: tests run in"
    echo "\`MOUNT/corp/pjd\`; mounted with allow_other and default_permissions."
    echo
    echo "The bar: every test that passes on ext4 also passes on LOCKER. Tests listed in"
    echo "\`tests/pjdfstest-exceptions.txt\` may fail without failing the script."
    echo
    echo "| | passed | failed | skipped | total |"
    echo "|---|---:|---:|---:|---:|"
    echo "| ext4 | $E_PASS | $E_FAIL | $E_SKIP | $NTESTS |"
    echo "| LOCKER | $L_PASS | $L_FAIL | $L_SKIP | $NTESTS |"
    echo
    echo "Of the $BAR tests that pass on ext4, LOCKER passes $GOOD; $REGRESS do not pass there"
    echo "(failed, skipped or no result) and are not allowed; $ALLOWED do not pass and are"
    echo "allowed by the exceptions file. $EXTRA tests pass on LOCKER only."
    echo
    echo "## Tests that pass on ext4 but fail on LOCKER"
    echo
    if [ $((REGRESS + ALLOWED)) -eq 0 ]; then
      echo "None."
    else
      echo "| test | LOCKER result | allowed | reason |"
      echo "|---|---|---|---|"
      awk -F'\t' 'FILENAME == ARGV[1] { old[$1] = $2; next }
        $4 == "REGRESSION" || $4 == "allowed" {
          d = ($5 != "" ? $5 : $3); gsub(/\|/, "\\|", d); gsub(/`/, "'"'"'", d)
          if (length(d) > 120) d = substr(d, 1, 117) "..."
          r = ($1 in old) ? old[$1] : ($6 != "" ? $6 : "_TODO: reason_"); gsub(/\|/, "\\|", r)
          printf "| `%s` | %s | %s | %s |\n", $1, d, ($4 == "allowed" ? "yes" : "no"), r
        }' "$WORK/old-reasons.tsv" "$WORK/compare.tsv" | sort
    fi
    if [ "$EXTRA" -gt 0 ]; then
      echo
      echo "## Tests that pass on LOCKER but not on ext4"
      echo
      awk -F'\t' '$4 == "locker-only-pass" { printf "- `%s` (ext4: %s)\n", $1, $2 }' "$WORK/compare.tsv" | sort
    fi
  } >"$CONFORMANCE"
  log "wrote $CONFORMANCE"
fi

log "total time $(($(date +%s) - START)) s (ext4 ${EXT4_SECS} s, LOCKER ${LOCKER_SECS} s)"
[ "$ALLOWED" -gt 0 ] && echo "pjdfstest: $ALLOWED tests fail on LOCKER but are allowed by the exceptions file"
# N = tests passing on ext4 that pass on LOCKER too; M = tests passing on ext4
# that fail (or skip, or give no result) on LOCKER and are not allowed.
echo "pjdfstest: $GOOD passed, $REGRESS failed"
[ "$REGRESS" -eq 0 ]
