#!/usr/bin/env bash
# Checks systemd/locker.service with systemd-analyze: the unit parses, its
# directives are known, and its exposure score is reported. ExecStart is
# pointed at the freshly built binary for the check.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${LOCKER_BIN:-$REPO/target/release/locker}
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "check-unit: systemd-analyze not installed; installing systemd"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/local/bin/locker|$BIN|g" "$REPO/systemd/locker.service" > "$tmp/locker.service"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp/locker.service" 2>&1 || true)
# Complaints about the host's own units are not ours.
ours=$(printf '%s\n' "$out" | grep -F "locker.service" || true)
if [ -n "$ours" ]; then
  printf '%s\n' "$ours"
  echo "check-unit: systemd/locker.service has problems"
  exit 1
fi
systemd-analyze security --offline=true "$tmp/locker.service" 2>/dev/null | tail -1 || true
echo "check-unit: systemd/locker.service verified"
