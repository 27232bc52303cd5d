# shellcheck shell=bash
# Shared helpers for scripts/pjdfstest.sh and scripts/fsx.sh: tool installs,
# mounting LOCKER (or a bindfs passthrough for harness self-tests) and a
# teardown that never leaves a mount behind. Source it; do not run it.
#
# The caller must set REPO and call harness_init before anything else.

# --- logging -----------------------------------------------------------------
log() { printf '%s: %s\n' "${HARNESS_NAME:-harness}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- cleanup registry --------------------------------------------------------
# Actions run in reverse order on EXIT (also after INT/TERM, which exit).
_CLEANUP=()
on_exit() { _CLEANUP+=("$1"); }

_harness_cleanup() {
  local rc=$? i
  set +e
  trap - EXIT INT TERM HUP
  kill_child
  for ((i = ${#_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${_CLEANUP[$i]}"
  done
  exit "$rc"
}

harness_init() {
  HARNESS_NAME=$1
  [ "$(id -u)" -eq 0 ] || die "must run as root (mounts, loop devices, dummy users)"
  export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
  trap _harness_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# run_child CMD...: runs CMD in the background and waits for it, so that a
# signal to this script is handled at once (bash defers traps while a
# foreground command runs); the EXIT handler stops it. CMD must not be a
# subshell or pipeline (its children would outlive it): use `env -C DIR` to
# change directory. Returns CMD's status.
CHILD_PID=
run_child() {
  local rc=0
  "$@" &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=
  return "$rc"
}

kill_child() {
  local i
  [ -n "$CHILD_PID" ] || return 0
  kill -TERM "$CHILD_PID" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$CHILD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$CHILD_PID" 2>/dev/null
  wait "$CHILD_PID" 2>/dev/null
  CHILD_PID=
}

# Make a world-traversable work dir (the dummy users of pjdfstest and the
# allow_other accounts must be able to walk into it) removed on exit, but only
# when nothing is mounted below it any more.
make_workdir() {
  local prefix=$1 d
  d=$(mktemp -d "${TMPDIR:-/var/tmp}/$prefix.XXXXXX")
  chmod 755 "$d"
  on_exit "remove_workdir '$d'"
  WORK=$d # used by the caller
  export WORK
}

remove_workdir() {
  local d=$1
  [ -n "$d" ] && [ -d "$d" ] || return 0
  if [ -n "${KEEP_WORKDIR:-}" ]; then
    log "keeping work dir $d"
    return 0
  fi
  if mounts_below "$d" | grep -q .; then
    log "WARNING: not removing $d: still mounted below it:"
    mounts_below "$d" >&2
    return 0
  fi
  rm -rf --one-file-system "$d"
}

# Mount points (from /proc/self/mountinfo) at or below a directory.
mounts_below() {
  local d
  d=$(realpath -m "$1")
  awk -v d="$d" '{ p = $5; gsub(/\\040/, " ", p); if (p == d || index(p, d "/") == 1) print p }' /proc/self/mountinfo
}

is_mounted() { mounts_below "$1" | grep -qxF "$(realpath -m "$1")"; }

# --- apt / cargo installs ----------------------------------------------------
_APT_UPDATED=
apt_install() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "apt-get install ${need[*]}"
  if [ -z "$_APT_UPDATED" ]; then apt-get update -qq >/dev/null; _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# cargo_install_tool BIN CRATE VERSION_REGEX [cargo install args...]
# Skips the install when `BIN --version` already matches VERSION_REGEX.
cargo_install_tool() {
  local bin=$1 crate=$2 want=$3; shift 3
  local have
  have=$("$bin" --version 2>/dev/null | awk '{print $2}') || true
  if [ -n "$have" ] && [[ "$have" =~ $want ]]; then
    return 0
  fi
  command -v cargo >/dev/null || die "cargo not found (run scripts/deps.sh first)"
  log "cargo install $crate $* (installed: ${have:-none}; this takes a few minutes)"
  local cl
  cl=$(mktemp "${TMPDIR:-/var/tmp}/cargo-install-$crate.XXXXXX.log")
  if ! CARGO_TARGET_DIR="${TOOLS_TARGET_DIR:-/var/tmp/locker-tools-target}" \
      cargo install "$crate" "$@" --locked -j "${TOOLS_JOBS:-1}" >"$cl" 2>&1; then
    tail -n 40 "$cl" >&2
    die "cargo install $crate failed (log: $cl)"
  fi
  rm -f "$cl"
  have=$("$bin" --version 2>/dev/null | awk '{print $2}') || true
  [[ "$have" =~ $want ]] || die "$bin --version says '${have:-nothing}' after install, wanted $want"
}

# --- the filesystem under test -------------------------------------------------
# fs_mount MOUNTPOINT DATADIR LOGFILE
# Mounts LOCKER (or, with HARNESS_BINDFS=1, a bindfs passthrough of DATADIR,
# for testing this harness only) in the background and waits until it is a
# mount point. Sets FS_PID. Registers the teardown on exit.
FS_PID=
FS_MNT=
fs_mount() {
  local mnt=$1 data=$2 logf=$3 i
  mkdir -p "$mnt" "$data"
  if is_mounted "$mnt"; then die "$mnt is already a mount point"; fi
  if [ -n "${HARNESS_BINDFS:-}" ]; then
    command -v bindfs >/dev/null || apt_install bindfs
    # The namespaces LOCKER shows at its root.
    mkdir -p "$data"/{corp,deck,emails,factory,hst}
    bindfs -f -o allow_other "$data" "$mnt" </dev/null >>"$logf" 2>&1 &
  else
    [ -x "$LOCKER_BIN" ] || die "LOCKER binary not found at $LOCKER_BIN (build it: cargo build --release, or set LOCKER_BIN)"
    "$LOCKER_BIN" mount "$mnt" --data-dir "$data" ${LOCKER_MOUNT_OPTS:+-o "$LOCKER_MOUNT_OPTS"} </dev/null >>"$logf" 2>&1 &
  fi
  FS_PID=$!
  FS_MNT=$mnt
  on_exit "fs_unmount '$mnt' $FS_PID '$logf'"
  for ((i = 0; i < 200; i++)); do
    if mountpoint -q "$mnt"; then
      log "mounted $(fs_label) at $mnt (pid $FS_PID)"
      return 0
    fi
    if ! kill -0 "$FS_PID" 2>/dev/null; then
      local rc=0
      wait "$FS_PID" || rc=$?
      log "$(fs_label) exited with status $rc before mounting; its log:"
      tail -n 40 "$logf" >&2
      die "mount of $mnt failed"
    fi
    sleep 0.1
  done
  log "$(fs_label) did not mount $mnt within 20 s; its log:"
  tail -n 40 "$logf" >&2
  die "mount of $mnt timed out"
}

fs_label() { if [ -n "${HARNESS_BINDFS:-}" ]; then echo "bindfs (harness self-test, NOT LOCKER)"; else echo "LOCKER ($LOCKER_BIN${LOCKER_MOUNT_OPTS:+, -o $LOCKER_MOUNT_OPTS})"; fi; }

# fs_unmount MOUNTPOINT PID LOGFILE
# SIGTERM, wait up to 20 s, then fusermount3 -uz and kill -9 as needed.
# Sets FS_UNMOUNT_HOW to "clean" when the daemon exited 0 and unmounted by
# itself within 20 s, otherwise to what went wrong. Idempotent per PID.
FS_UNMOUNT_HOW=
_UNMOUNTED_PIDS=" "
fs_unmount() {
  local -
  set +e
  local mnt=$1 pid=$2 logf=${3:-/dev/null} i rc=0
  FS_UNMOUNT_HOW=clean
  # Never signal pid 0/1 or a process group by mistake.
  [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] || pid=
  if [ -z "$pid" ]; then
    if is_mounted "$mnt"; then
      FS_UNMOUNT_HOW="mounted without a known daemon"
      fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
    fi
    return 0
  fi
  case "$_UNMOUNTED_PIDS" in *" $pid "*) return 0 ;; esac
  _UNMOUNTED_PIDS+="$pid "
  local was_alive=
  if kill -0 "$pid" 2>/dev/null; then
    was_alive=1
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    FS_UNMOUNT_HOW="daemon still running 20 s after SIGTERM"
    log "WARNING: $FS_UNMOUNT_HOW (pid $pid); forcing"
  else
    wait "$pid" 2>/dev/null
    rc=$?
    if [ -z "$was_alive" ]; then
      FS_UNMOUNT_HOW="daemon had already exited (status $rc) before SIGTERM"
      log "WARNING: $FS_UNMOUNT_HOW"
    elif [ "$rc" -ne 0 ]; then
      FS_UNMOUNT_HOW="daemon exited with status $rc after SIGTERM"
      log "WARNING: $FS_UNMOUNT_HOW"
    fi
  fi
  if is_mounted "$mnt"; then
    [ "$FS_UNMOUNT_HOW" = clean ] && FS_UNMOUNT_HOW="still mounted after the daemon exited"
    fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  if is_mounted "$mnt"; then
    fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  fi
  is_mounted "$mnt" && log "ERROR: $mnt is STILL mounted"
  if [ "$FS_UNMOUNT_HOW" != clean ] && [ -s "$logf" ]; then
    log "last lines of the daemon log ($logf):"
    tail -n 20 "$logf" >&2
  fi
  [ "$FS_PID" = "$pid" ] && FS_PID=
  return 0
}

# harness_io_uring: LOCKER is mounted with -o io_uring (FUSE over io_uring).
# The kernel offers it only while the fuse module's enable_uring is on: it is
# turned on for the run and put back at exit. Dies on a kernel without it.
URING_PARAM=/sys/module/fuse/parameters/enable_uring
harness_io_uring() {
  modprobe fuse 2>/dev/null || true
  [ -w "$URING_PARAM" ] || die "this kernel has no FUSE over io_uring ($URING_PARAM is missing; Linux 6.14+)"
  local old
  old=$(cat "$URING_PARAM")
  on_exit "echo '$old' >'$URING_PARAM'"
  echo Y >"$URING_PARAM"
  export LOCKER_MOUNT_OPTS=${LOCKER_MOUNT_OPTS:+$LOCKER_MOUNT_OPTS,}io_uring
}

# rings_served LOGFILE: prints how many requests LOCKER's FUSE rings served
# during the last mount in LOGFILE (each ring says so as it ends); true if
# that is more than none.
rings_served() {
  local n
  n=$(awk '/ serving / { n = 0 } /a FUSE ring ends/ { if (match($0, /requests=[0-9]+/)) n += substr($0, RSTART + 9, RLENGTH - 9) } END { print n + 0 }' "$1")
  echo "$n"
  [ "$n" -gt 0 ]
}

fs_alive() { [ -n "$FS_PID" ] && kill -0 "$FS_PID" 2>/dev/null && mountpoint -q "$FS_MNT"; }
