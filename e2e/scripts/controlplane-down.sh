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

# shellcheck source-path=SCRIPTDIR source=lib/teardown.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/teardown.sh"

for name in metrics-server kube-scheduler kube-controller-manager kube-apiserver etcd; do
  pidfile=$statedir/$name.pid
  [[ -f $pidfile ]] || continue
  pid=$(<"$pidfile")
  # Only a process started for this STATEDIR (a recycled pid is left alone).
  if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$statedir"; then
    say "stopping $name (pid $pid)"
    stop_pids 100 "$pid"
  fi
  rm -f "$pidfile"
done
rm -rf "$statedir"
say "removed $statedir"
