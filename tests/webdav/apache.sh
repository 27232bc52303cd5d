#!/usr/bin/env bash
# Plain WebDAV for the WebDAV backend's tests: Debian's Apache httpd with
# mod_dav and mod_dav_fs, basic auth, on 127.0.0.1, configured entirely
# inside DIR (nothing under /etc/apache2 is read or changed).
#
#   tests/webdav/apache.sh start DIR PORT USER PASSWORD_FILE
#       writes DIR/httpd.conf and DIR/htpasswd, serves DIR/dav at /dav/,
#       starts httpd in the background (pid in DIR/httpd.pid), waits until
#       it answers, and prints "ready http://127.0.0.1:PORT/dav/"
#   tests/webdav/apache.sh stop DIR
#       stops it and waits until it is gone
#
# As root, httpd's children run as www-data, so DIR/dav and the lock
# database directory are given to www-data. PUT bodies have no size limit
# (LimitRequestBody 0); PROPFIND Depth: infinity is refused (403), mod_dav's
# default (DavDepthInfinity Off). Needs the apache2 package (scripts/deps.sh).
set -euo pipefail

MODULES=/usr/lib/apache2/modules
HTTPD=${APACHE_HTTPD:-/usr/sbin/apache2}

usage() {
  echo "usage: $0 start DIR PORT USER PASSWORD_FILE | $0 stop DIR" >&2
  exit 2
}

start() {
  local dir=$1 port=$2 user=$3 pwfile=$4
  [ -x "$HTTPD" ] || { echo "apache.sh: $HTTPD not found (apt-get install apache2)" >&2; exit 1; }
  mkdir -p "$dir/dav" "$dir/lock" "$dir/run"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/httpd.pid" ] && kill -0 "$(cat "$dir/httpd.pid")" 2>/dev/null; then
    echo "apache.sh: already running in $dir (pid $(cat "$dir/httpd.pid"))" >&2
    exit 1
  fi
  rm -f "$dir/httpd.pid"

  # The password is read from the file on stdin, never put on a command line.
  head -n1 "$pwfile" | tr -d '\r\n' | htpasswd -i -B -C 4 -c "$dir/htpasswd" "$user" 2>/dev/null

  local run_as=""
  if [ "$(id -u)" -eq 0 ]; then
    chown -R www-data:www-data "$dir/dav" "$dir/lock"
    chgrp www-data "$dir/htpasswd"
    chmod 640 "$dir/htpasswd"
    run_as=$'User www-data\nGroup www-data'
    # A temporary DIR is often inside 0700 directories (mktemp -d): www-data
    # needs to pass through them (search permission only, no listing).
    local p=$dir
    while [ "$p" != / ]; do
      if ! runuser -u www-data -- test -x "$p" 2>/dev/null; then
        chmod o+x "$p"
      fi
      p=$(dirname "$p")
    done
  fi
  local mime=""
  [ -f /etc/mime.types ] && mime=$'LoadModule mime_module '"$MODULES"$'/mod_mime.so\nTypesConfig /etc/mime.types'

  cat > "$dir/httpd.conf" <<EOF
# Written by tests/webdav/apache.sh; self-contained, nothing from /etc/apache2.
ServerRoot "$dir"
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile "$dir/httpd.pid"
DefaultRuntimeDir "$dir/run"
ErrorLog "$dir/error.log"
LogLevel warn
LogFormat "%h %u \"%r\" %>s %b" short
CustomLog "$dir/access.log" short
$run_as

LoadModule mpm_event_module $MODULES/mod_mpm_event.so
LoadModule authn_core_module $MODULES/mod_authn_core.so
LoadModule authn_file_module $MODULES/mod_authn_file.so
LoadModule authz_core_module $MODULES/mod_authz_core.so
LoadModule authz_user_module $MODULES/mod_authz_user.so
LoadModule auth_basic_module $MODULES/mod_auth_basic.so
LoadModule alias_module $MODULES/mod_alias.so
LoadModule dav_module $MODULES/mod_dav.so
LoadModule dav_fs_module $MODULES/mod_dav_fs.so
$mime

StartServers 1
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
Timeout 300
KeepAlive On
LimitRequestBody 0

DocumentRoot "$dir/run"
<Directory />
  AllowOverride None
  Require all denied
</Directory>

DavLockDB "$dir/lock/DavLock"
Alias /dav "$dir/dav"
<Directory "$dir/dav">
  Dav On
  DavDepthInfinity Off
  Options None
  AuthType Basic
  AuthName "LOCKER test"
  AuthBasicProvider file
  AuthUserFile "$dir/htpasswd"
  Require valid-user
  LimitRequestBody 0
</Directory>
EOF

  "$HTTPD" -f "$dir/httpd.conf" -k start
  local i
  for i in $(seq 1 100); do
    if code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/dav/" 2>/dev/null) &&
       [ "$code" = 401 ]; then
      echo "ready http://127.0.0.1:$port/dav/"
      return 0
    fi
    sleep 0.1
  done
  echo "apache.sh: httpd did not answer on port $port; $dir/error.log says:" >&2
  tail -n 20 "$dir/error.log" >&2 || true
  stop "$dir"
  exit 1
}

stop() {
  local dir=$1 pid i
  [ -f "$dir/httpd.pid" ] || return 0
  pid=$(cat "$dir/httpd.pid")
  "$HTTPD" -f "$dir/httpd.conf" -k stop 2>/dev/null || kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/httpd.pid"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/httpd.pid"
}

case "${1:-}" in
  start) [ $# -eq 5 ] || usage; start "$2" "$3" "$4" "$5" ;;
  stop) [ $# -eq 2 ] || usage; stop "$2" ;;
  *) usage ;;
esac
