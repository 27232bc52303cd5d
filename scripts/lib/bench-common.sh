# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced). They expect, from the
# script: STEP_TIMEOUT, the associative arrays RES, SECS, COUNT and FAILED
# (samples, timed samples, amounts, failures), and log and die; the
# functions further down name what else they read.

BENCH_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

alive() {  # pid: running and not a zombie
  local s
  [ -n "$1" ] || return 1
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$s" ] && [ "$s" != Z ]
}

stop_pid() {  # pid seconds: SIGTERM, wait, then SIGKILL; returns 1 if it had to kill
  local pid=$1 secs=$2 i rc=0
  [ -n "$pid" ] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < secs * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null
      rc=1
    fi
  fi
  wait "$pid" 2>/dev/null
  return $rc
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

STEP_PID=
step() {  # cmd...: run under a timeout, in the background so that a signal
          # reaches the script's traps at once instead of after the command
  timeout -k 10 "$STEP_TIMEOUT" "$@" 3>&- 4>&- &
  STEP_PID=$!
  wait "$STEP_PID"
  local rc=$?
  STEP_PID=
  return $rc
}

stop_step() {  # for cleanup: stops the step that was running, if any
  local i
  [ -n "$STEP_PID" ] || return 0
  log "stopping the running step"
  kill -TERM "$STEP_PID" 2>/dev/null
  for ((i = 0; i < 30; i++)); do alive "$STEP_PID" || break; sleep 0.1; done
  kill -KILL -- "-$STEP_PID" 2>/dev/null  # timeout leads its own process group
  wait "$STEP_PID" 2>/dev/null
}

tidy_logs() {  # rc name: removes LOGDIR after a clean run (rc 0, no FAILURES,
               # KEEP_LOGS 0); otherwise tells on stderr, as name, where it is
  if [ "$1" -eq 0 ] && [ "$FAILURES" -eq 0 ] && [ "$KEEP_LOGS" -eq 0 ]; then
    rm -rf "$LOGDIR"
  elif [ -d "$LOGDIR" ]; then
    echo "$2: logs kept in $LOGDIR" >&2
  fi
}

select_contenders() {  # name: sets CONTENDERS to those of ALL_CONTENDERS listed
                       # in ONLY (comma-separated), in ALL_CONTENDERS's order;
                       # exits 2, with name in the message, on an unknown
                       # contender or an empty choice
  local want=() c w
  IFS=, read -r -a want <<<"$ONLY"
  CONTENDERS=()
  for c in "${ALL_CONTENDERS[@]}"; do
    for w in "${want[@]}"; do [ "$w" = "$c" ] && CONTENDERS+=("$c") && break; done
  done
  for w in "${want[@]}"; do
    case " ${ALL_CONTENDERS[*]} " in *" $w "*) ;; *) echo "$1: unknown contender '$w'" >&2; exit 2 ;; esac
  done
  [ ${#CONTENDERS[@]} -gt 0 ] || { echo "$1: --only selected no contender" >&2; exit 2; }
}
has() {  # contender: one of CONTENDERS
  case " ${CONTENDERS[*]} " in *" $1 "*) return 0 ;; esac
  return 1
}

apt_install() {  # package...: installs them with apt-get (none: does nothing), or dies
  [ $# -gt 0 ] || return 0
  log "installing $* with apt-get"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }; then
    die "apt-get install $* failed"
  fi
}

build_locker() {  # cargo build --release in REPO; dies unless it makes LOCKER_BIN
  log "building LOCKER: cargo build --release"
  (cd "$REPO" && cargo build --release) >&2 || die "cargo build --release failed"
  [ -x "$LOCKER_BIN" ] || die "cargo build did not produce $LOCKER_BIN"
}

need_space() {  # dir kib: dies unless the filesystem of dir has more than kib KiB free
  local free
  free=$(df -k --output=avail "$1" | tail -1)
  [ "$free" -gt "$2" ] || die "$1 has ${free} KiB free, need $2 KiB"
}

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }'; }

ELAPSED=0
timeit() {  # cmd...: runs it through step, sets ELAPSED (seconds)
  local t0=$EPOCHREALTIME rc
  step "$@"
  rc=$?
  # shellcheck disable=SC2034  # read by the scripts
  ELAPSED=$(since "$t0")
  return $rc
}

fail() {  # metric contender why: no figure (FAIL in the table); adds to
           # FAILURES and FAIL_NOTES
  FAILED["$1|$2"]=1
  FAIL_NOTES+=("$2: $1: $3")
  FAILURES=$((FAILURES + 1))
  log "$2: $1 FAILED: $3"
}

put() {  # metric contender value: one more sample
  RES["$1|$2"]+="${RES["$1|$2"]:+ }$3"
}
put_timed() {  # metric contender count seconds: one more sample of count/seconds
  SECS["$1|$2"]+="${SECS["$1|$2"]:+ }$4"
  COUNT[$1]=$3
}
median() {  # samples...
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
value() {  # metric contender: median (of the times, for timed ones), FAIL, or empty
  local s
  if [ -n "${FAILED["$1|$2"]:-}" ]; then
    echo FAIL
  elif [ -n "${SECS["$1|$2"]:-}" ]; then
    # shellcheck disable=SC2086  # one word per sample
    s=$(median ${SECS["$1|$2"]})
    rate "${COUNT[$1]}" "$s"
  else
    # shellcheck disable=SC2086  # one word per sample
    median ${RES["$1|$2"]:-}
  fi
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.3f", (s > 0 ? n / s : 0) }'; }

fmt() {  # value decimals
  case $1 in
    FAIL) printf 'FAIL' ;;
    '') printf -- '–' ;;
    *) printf "%'.${2}f" "$1" ;;
  esac
}

ratio() {  # a b: a ÷ b as "N.NN×", or – when either is missing, FAIL or b is 0
  case "$1$2" in *FAIL*) printf -- '–'; return ;; esac
  if [ -z "$1" ] || [ -z "$2" ]; then printf -- '–'; return; fi
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else printf "–" }'
}

# ---------------------------------------------------------------- report
section_head() {  # title script: a report section's heading (with MODE),
                  # command line (script and ORIG_ARGS; TOTAL_SECS) and date
  local cmd=$2
  [ ${#ORIG_ARGS[@]} -gt 0 ] && cmd+=" ${ORIG_ARGS[*]}"
  echo "### $1 ($MODE run)"
  echo
  echo "- Command: \`$cmd\` (as root; ran in $((TOTAL_SECS / 60)) min $((TOTAL_SECS % 60)) s)"
  echo "- Date: $(date '+%Y-%m-%d %H:%M %Z')"
}

machine_line() {  # tail: "- Machine: " CPUs, RAM, kernel, LOAD_START and LOAD_END, then tail
  local model mem
  model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
  echo "- Machine: $(nproc) CPUs ($model), $mem RAM, kernel $(uname -r); load average (1/5/15 min) $LOAD_START at start, $LOAD_END at end$1"
}

bin_facts() {  # LOCKER_BIN's build time and REPO's commit (" + uncommitted changes" when src/ differs)
  echo "built $(date -r "$LOCKER_BIN" '+%Y-%m-%d %H:%M'), repo at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit')$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes')"
}

# report_section FILE NAME WHAT [FIRST]: prints SECTION to stdout between
# blank lines; when WRITE_MD is 1, also writes it as the NAME:MODE section of
# the markdown FILE (md-section.py; FIRST is what a missing FILE starts with)
# and logs "wrote the WHAT section of FILE".
report_section() {
  echo
  printf '%s\n' "$SECTION"
  echo
  [ "$WRITE_MD" -eq 1 ] || return 0
  printf '%s\n' "$SECTION" | python3 "$BENCH_LIB/md-section.py" "$1" "$2" "$MODE" "${@:4}"
  log "wrote the $3 section of $1"
}
