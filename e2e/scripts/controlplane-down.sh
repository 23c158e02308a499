#!/usr/bin/env bash
# Stops the control plane controlplane-up.sh started for STATEDIR — metrics-server, scheduler,
# controller-manager, API server, then etcd, each by its pid file (TERM, then KILL after 10 s) — and removes STATEDIR.
# Safe to run when nothing is running or STATEDIR is already gone.
# Usage: controlplane-down.sh STATEDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 STATEDIR" >&2
  exit 2
fi
say() { echo "controlplane-down: $*" >&2; }
if ! [[ -d $1 ]]; then
  say "$1 does not exist: nothing to do"
  exit 0
fi
statedir=$(cd "$1" && pwd -P)
if [[ -z $(ls -A "$statedir") ]]; then
  rmdir "$statedir"
  say "$statedir was empty: removed"
  exit 0
fi
if [[ $statedir == / ]] || ! [[ -f $statedir/controlplane.env || -d $statedir/pki ]]; then
  say "$statedir was not made by controlplane-up.sh: refusing to touch it"
  exit 1
fi

# True while a process exists and is not a zombie.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

for name in metrics-server kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pidfile=$statedir/$name.pid
  [[ -f $pidfile ]] || continue
  pid=$(<"$pidfile")
  # Only a process started for this STATEDIR (a recycled pid is left alone).
  if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$statedir"; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      say "$name did not exit after 10 s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
done
rm -rf "$statedir"
say "removed $statedir"
