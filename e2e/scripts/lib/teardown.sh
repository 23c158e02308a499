# shellcheck shell=bash
# What the *-down.sh scripts share: finding and stopping processes, unmounting a state directory.
# The caller defines `say MESSAGE` (to stderr).

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

# unmount_under DIR: everything mounted under DIR, deepest first (rootfs overlays, shm, namespace
# bind mounts), twice for mounts that were stacked.
unmount_under() {
  local dir=$1 m pass
  for pass in 1 2; do
    # mountinfo field 5 is the mount point, with spaces etc. octal-escaped.
    awk -v p="$dir/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo |
      awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- | while read -r m; do
        m=$(printf '%b' "$m")
        umount "$m" 2>/dev/null || umount -R "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
          { ((pass == 2)) && say "could not unmount $m"; } || true
      done
  done
}
