# shellcheck shell=bash
# Garage (a real S3 server, https://garagehq.deuxfleurs.fr) for benchmarks:
# one node on 127.0.0.1 with a fresh data directory, a layout of one zone,
# and a key made for the run that may create buckets. Sourced by
# scripts/bench-sync.sh; needs `log`, `alive`, `stop_pid` and `free_port`
# from scripts/lib/bench-common.sh.
#
# Garage is not in Debian and a script may not download it: build it once,
# outside the repository (25-50 minutes here), e.g.
#   nice -n 19 cargo install garage --locked -j 1 --root /opt/garage
# and point GARAGE_BIN at it (default /opt/garage/bin/garage).

GARAGE_BIN=${GARAGE_BIN:-/opt/garage/bin/garage}
GARAGE_PID=
GARAGE_CFG=
DELAY_PID=

garage() { "$GARAGE_BIN" -c "$GARAGE_CFG" "$@"; }

# garage_start DIR LOGFILE: starts the server; sets GARAGE_PID, GARAGE_URL,
# GARAGE_KEY_ID and GARAGE_SECRET (the key is also written, mode 0600, to
# DIR/key).
garage_start() {
  local dir=$1 logf=$2 s3 rpc admin deadline id out
  mkdir -p "$dir/meta" "$dir/data" || return 1
  s3=$(free_port) && rpc=$(free_port) && admin=$(free_port) || return 1
  GARAGE_CFG=$dir/garage.toml
  (umask 077 && cat >"$GARAGE_CFG" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
  ) || return 1
  setsid "$GARAGE_BIN" -c "$GARAGE_CFG" server </dev/null >>"$logf" 2>&1 3>&- 4>&- &
  GARAGE_PID=$!
  deadline=$((SECONDS + 30))
  until id=$(garage status 2>/dev/null | awk '/NO ROLE ASSIGNED/ { print $1; exit }') && [ -n "$id" ]; do
    if ! alive "$GARAGE_PID" || [ $SECONDS -ge $deadline ]; then
      log "garage did not start; last log lines:"
      tail -n 5 "$logf" >&2
      return 1
    fi
    sleep 0.2
  done
  if ! garage layout assign -z bench -c 100G "$id" >>"$logf" 2>&1 ||
     ! garage layout apply --version 1 >>"$logf" 2>&1; then
    log "garage: layout failed"
    return 1
  fi
  out=$(garage key create bench 2>>"$logf") || { log "garage: key create failed"; return 1; }
  GARAGE_KEY_ID=$(awk -F': *' '/^Key ID/ { print $2 }' <<<"$out")
  GARAGE_SECRET=$(awk -F': *' '/^Secret key/ { print $2 }' <<<"$out")
  if [ -z "$GARAGE_KEY_ID" ] || [ -z "$GARAGE_SECRET" ]; then
    log "garage: no key in its answer"
    return 1
  fi
  (umask 077 && printf '%s\n%s\n' "$GARAGE_KEY_ID" "$GARAGE_SECRET" >"$dir/key") || return 1
  garage key allow --create-bucket bench >>"$logf" 2>&1 || { log "garage: key allow failed"; return 1; }
  GARAGE_URL=http://127.0.0.1:$s3
  # The S3 listener answers once the layout is in place.
  deadline=$((SECONDS + 30))
  until curl -s -o /dev/null "$GARAGE_URL/"; do
    [ $SECONDS -lt $deadline ] || { log "garage: no S3 answer on $GARAGE_URL"; return 1; }
    sleep 0.2
  done
}

garage_version() { "$GARAGE_BIN" --version 2>/dev/null | awk '{ print $2 }'; }

garage_stop() {
  [ -n "$GARAGE_PID" ] || return 0
  stop_pid "$GARAGE_PID" 10 || log "garage: killed with SIGKILL"
  GARAGE_PID=
}

# delay_start URL DELAY_MS LOGFILE: every TCP packet to and from URL's port
# on lo (http://127.0.0.1:PORT) is held DELAY_MS before the kernel takes
# it in, so connections to it see a round trip of 2 x DELAY_MS more, in the
# kernel's own TCP (its windows, slow start and buffers as over a long
# link). This kernel has no sch_netem; the packets go through a netfilter
# queue (iptables NFQUEUE in raw PREROUTING, where loopback packets no
# longer count against their sender's socket) to scripts/bench/nfqdelay.c,
# built here into DIR (needs cc, iptables and libnetfilter-queue-dev).
# --queue-bypass lets packets through undelayed if nfqdelay is gone, so a
# failure cannot cut the server off. Sets DELAY_PID and DELAY_URL (= URL).
DELAY_RULES=()
DELAY_QUEUE=4242
delay_start() {
  local url=$1 ms=$2 logf=$3 port bin deadline dir=${4:-${TMPDIR:-/tmp}}
  port=${url##*:}
  bin=$dir/nfqdelay
  cc -O2 -o "$bin" "$(dirname "${BASH_SOURCE[0]}")/../bench/nfqdelay.c" \
    -lnetfilter_queue -lnfnetlink 2>>"$logf" || { log "nfqdelay.c did not build (log: $logf)"; return 1; }
  setsid "$bin" "$DELAY_QUEUE" "$ms" </dev/null >"$logf.out" 2>>"$logf" 3>&- 4>&- &
  DELAY_PID=$!
  deadline=$((SECONDS + 10))
  until grep -q nfqdelay "$logf.out" 2>/dev/null; do
    if ! alive "$DELAY_PID" || [ $SECONDS -ge $deadline ]; then
      log "nfqdelay did not start (log: $logf)"
      return 1
    fi
    sleep 0.1
  done
  local dirn rule
  for dirn in --dport --sport; do
    rule=(PREROUTING -i lo -p tcp "$dirn" "$port" -j NFQUEUE --queue-num "$DELAY_QUEUE" --queue-bypass)
    iptables -t raw -I "${rule[@]}" 2>>"$logf" || { log "iptables refused the delay rule (log: $logf)"; return 1; }
    DELAY_RULES+=("${rule[*]}")
  done
  # shellcheck disable=SC2034  # read by the script that sources this
  DELAY_URL=$url
}

delay_stop() {
  local r
  for r in "${DELAY_RULES[@]}"; do
    # shellcheck disable=SC2086  # the rule's words, as inserted
    iptables -t raw -D $r 2>/dev/null || log "could not remove iptables rule: $r"
  done
  DELAY_RULES=()
  [ -n "$DELAY_PID" ] || return 0
  stop_pid "$DELAY_PID" 5
  DELAY_PID=
}
