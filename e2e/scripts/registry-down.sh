#!/usr/bin/env bash
# Stops the private registry that registry-up.sh started for STATEDIR (TERM, then KILL after 10 s; found
# by the pid in STATEDIR/registry.pid, checked against its command line, or else by its command line)
# and removes STATEDIR with the images stored in it, so that up/down/up works repeatedly. Safe to run
# when nothing is running or when STATEDIR is already gone; refuses to touch a directory registry-up.sh
# did not make.
# Usage: registry-down.sh STATEDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 STATEDIR" >&2
  exit 2
fi
say() { echo "registry-down: $*" >&2; }
if ! [[ -d $1 ]]; then
  say "$1 does not exist: nothing to do"
  exit 0
fi
statedir=$(cd "$1" && pwd -P)
if [[ -z $(ls -A "$statedir") ]]; then
  # registry-up.sh stopped before writing anything (or the caller made the directory for it).
  rmdir "$statedir"
  say "removed empty $statedir"
  exit 0
fi
config=$statedir/config.yml
pidfile=$statedir/registry.pid
if [[ $statedir == / ]] || ! [[ -f $config ]] || ! grep -q 'registry-up.sh' "$config"; then
  say "$statedir was not made by registry-up.sh (no config.yml of ours): refusing to touch it"
  exit 1
fi

# True when pid $1 runs `docker-registry serve CONFIG` (a pid file can outlive its process and the
# number be reused) and is not a zombie.
ours() {
  local state
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]] || return 1
  { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -qF -- "docker-registry serve $config"
}

pids=()
if [[ -f $pidfile ]] && ours "$(<"$pidfile")"; then
  pids+=("$(<"$pidfile")")
else
  # No usable pid file (e.g. registry-up.sh was interrupted): look the daemon up by its command line.
  for c in /proc/[0-9]*/cmdline; do
    pid=${c#/proc/}
    pid=${pid%/cmdline}
    if [[ $pid != "$$" && $pid != "$BASHPID" ]] && ours "$pid"; then pids+=("$pid"); fi
  done
fi
for pid in "${pids[@]}"; do
  say "stopping docker-registry pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    ours "$pid" || break
    sleep 0.1
  done
  if ours "$pid"; then
    say "docker-registry did not exit after 10 s: KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
done

rm -rf "$statedir"
say "removed $statedir"
