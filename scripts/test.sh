#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root, on a fresh Debian machine):
# installs what it needs, builds one profile (release), then runs the unit
# and mount tests, the POSIX conformance comparison (pjdfstest against ext4)
# and fsx (each also with the kernel's writeback cache, and over FUSE's
# io_uring where the kernel has it), and the self-test of the WebDAV test
# servers. Every mount is torn
# down by the test that made it.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# apache2 and rclone: the WebDAV backend's test servers (tests/webdav/).
scripts/deps.sh rsync e2fsprogs libacl1-dev util-linux apache2 rclone
export PATH="$HOME/.cargo/bin:$PATH"

start=$(date +%s)
failed=0
passed=0
step() {
  local name=$1; shift
  echo "==> $name"
  if "$@"; then passed=$((passed + 1)); else echo "==> $name FAILED"; failed=$((failed + 1)); fi
}

# One profile for everything (tests and the binary the scripts mount).
cargo build --release --all-targets
step "cargo test" cargo test --release --no-fail-fast
step "systemd unit" scripts/check-unit.sh
step "webdav test servers" python3 tests/webdav/selftest.py
step "pjdfstest" scripts/pjdfstest.sh
step "pjdfstest, writeback cache" scripts/pjdfstest.sh --no-install --writeback-cache
step "fsx" scripts/fsx.sh
step "fsx, writeback cache" scripts/fsx.sh --no-install --writeback-cache
# FUSE over io_uring (-o io_uring), where the kernel has it (6.14+): the
# same conformance comparison, and fsx with fewer operations (the full count
# would take the suite past its time budget).
if modprobe fuse 2>/dev/null; [ -e /sys/module/fuse/parameters/enable_uring ]; then
  step "pjdfstest, io_uring" scripts/pjdfstest.sh --no-install --io-uring
  step "fsx, io_uring" env FSX_OPS=40000 scripts/fsx.sh --no-install --io-uring
else
  echo "==> io_uring legs skipped: this kernel ($(uname -r)) has no FUSE over io_uring"
fi

echo "test suite took $(( $(date +%s) - start )) s"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
