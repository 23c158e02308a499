# shellcheck shell=bash
# Process helpers of the *-down.sh scripts. The caller defines `say MESSAGE` (to stderr).

# Pids of processes whose command line contains all the given words.
pids_matching() {
  local c pid line
  for c in /proc/[0-9]*/cmdline; do
    pid=${c#/proc/}
    pid=${pid%/cmdline}
    line=$( { tr '\0' ' ' <"$c"; } 2>/dev/null) || continue
    local w ok=1
    for w in "$@"; do
      [[ $line == *"$w"* ]] || ok=0
    done
    if ((ok)) && [[ $pid != "$$" && $pid != "$BASHPID" ]]; then echo "$pid"; fi
  done
}

# True while a process exists and is not a zombie (an orphaned daemon is reaped late by PID 1).
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# stop_pids TENTHS PID...: TERM, wait up to TENTHS tenths of a second for all to end, then KILL.
stop_pids() {
  local limit=$1 pid
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 "$limit"); do
    local any=0
    for pid in "$@"; do alive "$pid" && any=1; done
    ((any)) || return 0
    sleep 0.1
  done
  say "still alive after $((limit / 10)) s: KILL $*"
  kill -KILL "$@" 2>/dev/null || true
  sleep 0.2
}
