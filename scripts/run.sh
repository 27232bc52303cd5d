#!/usr/bin/env bash
# LOCKER's main job on a fresh Debian machine (as root): installs what it
# needs, builds, and mounts with the embedded default config in the
# foreground (Ctrl-C or SIGTERM unmounts cleanly).
#   scripts/run.sh [MOUNTPOINT] [locker mount options...]   default /data/locker
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The same build as scripts/test.sh's: the test targets' dev-dependencies
# (proptest, tempfile) turn on features of shared crates (regex-syntax,
# num-traits, getrandom), so a build without them would recompile most
# dependencies after a test run, and the reverse.
cargo build --release --all-targets
# mount(8)'s helper for type fuse.locker (fstab lines, mount -t fuse.locker).
if [ "$(id -u)" = 0 ]; then ln -sf "$REPO/target/release/locker" /sbin/mount.fuse.locker; fi
MNT=${1:-/data/locker}
[ $# -gt 0 ] && shift
mkdir -p "$MNT"
exec "$REPO/target/release/locker" mount "$MNT" "$@"
