#!/usr/bin/env bash
# Runs the private cri-o of STATEDIR (crio-up.sh) as its systemd unit would (cri-o's crio.service:
# Restart=on-failure): when crio dies of a Go crash of its own (exit status 2: a `fatal error:` such
# as cri-o's "concurrent map iteration and map write", or an unrecovered panic), it is started again
# after RESTART_DELAY, and the crash (time, status, the log from its `fatal error:`/`panic:` line)
# is appended to STATEDIR/crashes.log, which crio-down.sh prints, so a run that met a crash says so.
# Any other end (a signal, another status, a sixth crash) is recorded there too and not restarted: the tests then
# fail against a dead runtime, as they should when something killed it.
# Writes crio's pid to STATEDIR/crio.pid at each start and its own to STATEDIR/supervisor.pid.
# Usage (by crio-up.sh only): crio-supervise.sh STATEDIR BINDIR
# Its command line must not contain "crio --config": crio-down.sh finds the daemon by those words.
set -uo pipefail

statedir=$1
bindir=$2
config=$statedir/crio.conf
log=$statedir/crio.log
crashes=$statedir/crashes.log
restart_delay=${MK_CRIO_RESTART_DELAY:-2}
max_restarts=5
restarts=0
echo "$$" >"$statedir/supervisor.pid"

child=""
# crio-down.sh stops the supervisor first; a TERM that reaches it stops crio as well and waits for it
# (crio-down.sh stops crio itself if that takes too long).
trap 'if [[ -n $child ]]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 0' TERM INT

while true; do
  start_line=$(($(wc -l <"$log" 2>/dev/null || echo 0) + 1))
  # --registries-conf(-dir): hidden flags; cri-o ignores CONTAINERS_REGISTRIES_CONF.
  "$bindir/crio" --config "$config" --config-dir "$statedir/crio.conf.d" \
    --registries-conf "$statedir/registries.conf" --registries-conf-dir "$statedir/registries.conf.d" \
    </dev/null >>"$log" 2>&1 &
  child=$!
  echo "$child" >"$statedir/crio.pid"
  wait "$child"
  status=$?
  child=""
  {
    echo "== $(date -u +%FT%TZ): crio exited with status $status"
    # The crash report of this run of crio: from its first `fatal error:`, `panic:` or `SIGxxx:` line.
    tail -n "+$start_line" "$log" | awk '/^(fatal error:|panic:|SIG[A-Z]+: )/ { on = 1 } on && n < 60 { print; n++ }'
  } >>"$crashes"
  if ((status != 2)); then
    echo "== not restarted (only cri-o's own Go crash, status 2, is)" >>"$crashes"
    exit "$status"
  fi
  if ((++restarts > max_restarts)); then
    echo "== not restarted: it crashed $max_restarts times already" >>"$crashes"
    exit "$status"
  fi
  echo "== restarting crio in $restart_delay s (as crio.service's Restart=on-failure)" >>"$crashes"
  sleep "$restart_delay"
done
