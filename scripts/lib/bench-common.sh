# Helpers shared by the benchmark scripts (sourced). They expect, from the
# script: STEP_TIMEOUT, and the associative arrays RES, SECS, COUNT and
# FAILED (samples, timed samples, amounts, failures).

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

alive() {  # pid: running and not a zombie
  local s
  [ -n "$1" ] || return 1
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$s" ] && [ "$s" != Z ]
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

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }'; }

ELAPSED=0
timeit() {  # cmd...: runs it through step, sets ELAPSED (seconds)
  local t0=$EPOCHREALTIME rc
  step "$@"
  rc=$?
  ELAPSED=$(since "$t0")
  return $rc
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
    s=$(median ${SECS["$1|$2"]})
    rate "${COUNT[$1]}" "$s"
  else
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
