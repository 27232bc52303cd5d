#!/usr/bin/env bash
# Compares the sequential write speed of two (or more) LOCKER binaries:
# `dd bs=1M conv=fsync` of 1 GiB of random data from /dev/shm into a fresh
# mount with no backend, on a scratch ext4 image (loop device, no online
# discard), the binaries alternated three times, with a nice-19 busy loop
# on one CPU as in bench.sh. Prints one line per run; not a CI test.
#
# Usage (as root): scripts/bench/seqwrite-ab.sh BIN_A BIN_B [BIN...]
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN_A BIN_B [BIN...]" >&2; exit 2; }
B=$(mktemp -d /var/tmp/seqwrite.XXXXXX)
LOOP=
BUSY=
cleanup() {
  [ -n "$BUSY" ] && kill "$BUSY" 2>/dev/null || true
  mountpoint -q "$B/m" && fusermount3 -u "$B/m" || true
  mountpoint -q "$B/s" && umount "$B/s" || true
  [ -n "$LOOP" ] && losetup -d "$LOOP" || true
  rm -f /dev/shm/seqwrite.src
  rm -rf "$B"
}
trap cleanup EXIT
mkdir -p "$B/s" "$B/m"
truncate -s 6G "$B/img"
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$B/img"
LOOP=$(losetup --find --show --direct-io=on "$B/img")
mount -o nodiscard "$LOOP" "$B/s"
head -c 1G /dev/urandom >/dev/shm/seqwrite.src
printf '[cache]\nsize_mb = 4096\n[namespaces.corp]\n' >"$B/cfg.toml"
taskset -c 1 nice -n 19 bash -c 'while :; do :; done' &
BUSY=$!
for r in 1 2 3; do
  for bin in "$@"; do
    rm -rf "$B/s/d"
    mkdir -p "$B/s/d"
    setsid "$bin" mount "$B/m" --data-dir "$B/s/d" --config "$B/cfg.toml" </dev/null >"$B/l.log" 2>&1 &
    lp=$!
    for _ in $(seq 50); do mountpoint -q "$B/m" && break; sleep 0.1; done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$EPOCHREALTIME
    dd if=/dev/shm/seqwrite.src of="$B/m/corp/f" bs=1M conv=fsync status=none
    t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    echo "run $r $bin: ${t} s, $(awk -v t="$t" 'BEGIN { printf "%.0f", 1024 / t }') MiB/s"
    kill -TERM "$lp"
    wait "$lp" || true
  done
done
