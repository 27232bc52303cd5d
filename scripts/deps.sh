#!/usr/bin/env bash
# Installs what building, mounting and testing LOCKER needs on a fresh Debian
# machine (run as root). Idempotent: packages already present are skipped.
set -euo pipefail

need_apt=()
for pkg in "$@" fuse3 pkg-config attr acl python3-venv curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# allow_other is needed so that the legacy applications' accounts reach the mount.
if [ -f /etc/fuse.conf ] && ! grep -q '^user_allow_other' /etc/fuse.conf; then
  echo user_allow_other >> /etc/fuse.conf
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "deps: installing the Rust toolchain with rustup"
    command -v curl >/dev/null || { apt-get update -qq; apt-get install -y -qq curl ca-certificates >/dev/null; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# The test and benchmark tools' Python: moto's S3 server (moto_server) and
# boto3 for scripts/lib/s3tool.py, in a venv of Debian's python3 so that no
# system package is touched. Skipped when the venv already has both.
# (The WebDAV test servers need nothing from PyPI: tests/webdav/ncserver.py
# is standard-library Python 3.11, and apache2 and rclone come from apt.)
VENV=${LOCKER_TEST_VENV:-/opt/locker-test/venv}
MOTO_REQ='moto[server]>=5.1,<6'
venv_ok() {
  [ -x "$VENV/bin/moto_server" ] &&
    "$VENV/bin/python" -c 'import importlib.metadata as m, sys
for d in ("moto", "boto3", "flask", "flask-cors"):
    m.version(d)
sys.exit(0 if m.version("moto").split(".")[0] == "5" else 1)' 2>/dev/null
}
if ! venv_ok; then
  echo "deps: installing $MOTO_REQ into $VENV"
  # A venv whose interpreter is gone (python3 upgraded) is remade from scratch.
  if [ -f "$VENV/pyvenv.cfg" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then rm -rf "$VENV"; fi
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$MOTO_REQ"
  venv_ok || { echo "deps: $VENV still lacks moto[server] after pip install" >&2; exit 1; }
fi
