#!/usr/bin/env bash
# Measures what an idle node costs: for each pod count N (default "30 110") it writes N idle static pods
# (busybox `sleep`, no probes) into a fresh manifest folder, runs the release agent standalone on a
# private containerd with kubelet's default periods (fileCheckFrequency 20s, syncFrequency 1m, PLEG
# relist 1s), waits until all N pods run, lets it settle, then over a window (default 60 s) prints the
# agent's CPU (utime+stime from /proc/PID/stat, percent of one core), its RSS, and the CRI calls it
# made per second (from its own /metrics, kubelet_runtime_operations_total):
#   pods=110 cpu=0.42% rss=23.1MiB cri_calls_per_s=2.00 (list_podsandbox 1.00, list_containers 1.00)
# With --perf, `perf record -g` runs on the agent during the window and the top of `perf report` is
# printed after the line (the CPU figure then includes perf's sampling overhead on the agent).
# Everything (agent, pods, containerd, temporary folders) is removed on any exit.
#
# With --containerd2 the runtime is containerd 2.x (containerd2-up.sh), which serves container events;
# --pleg relist,events runs each count once with the 1 s relist (featureGates EventedPLEG: false) and
# once following the events, and prints both lines (default: the agent's default, events where served):
#   bench-idle.sh --containerd2 --pleg relist,events 100
#
# Usage: bench-idle.sh [--perf] [--containerd2] [--pleg MODES] [--window SECONDS] [--settle SECONDS] [COUNT...]
#   MK_AGENT_BIN  the agent binary (default: ${CARGO_TARGET_DIR:-target}/release/mini-kubelet, built
#                 with cargo when the variable is unset)
#   MK_PERF_ARGS  perf record's call-graph options (default: -g; e.g. "--call-graph dwarf")
#   MK_PERF_KEEP  a folder to copy each perf.data to (perf-COUNT.data), for your own perf report
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
target=${CARGO_TARGET_DIR:-$repo/target}

perf=0
flavour=containerd
modes=(default)
window=60
settle=15
counts=()
while (($#)); do
  case $1 in
    --perf) perf=1 ;;
    --containerd2) flavour=containerd2 ;;
    --pleg) IFS=, read -r -a modes <<<"$2"; shift ;;
    --window) window=$2; shift ;;
    --settle) settle=$2; shift ;;
    -h | --help)
      sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *[!0-9]* | '')
      echo "bench-idle: unknown argument $1" >&2
      exit 2
      ;;
    *) counts+=("$1") ;;
  esac
  shift
done
((${#counts[@]})) || counts=(30 110)
say() { echo "bench-idle: $*" >&2; }

"$scripts/install-deps.sh" >&2
"$scripts/build-images.sh" "$target/e2e-images" >/dev/null
if [[ -z ${MK_AGENT_BIN:-} ]]; then
  cargo build --release -p mini-kubelet --bin mini-kubelet >&2
fi
agent_bin=${MK_AGENT_BIN:-$target/release/mini-kubelet}
[[ -x $agent_bin ]] || { say "$agent_bin is not an executable"; exit 1; }
if ((perf)) && ! command -v perf >/dev/null; then
  say "--perf: perf is not installed (Debian: linux-perf)"
  exit 1
fi

workdir=$(mktemp -d /tmp/mk-idle.XXXXXX)
statedir=$workdir/ctrd
agent_pid=""
perf_pid=""
node=""
port=""

# shellcheck source-path=SCRIPTDIR source=lib/free-port.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/free-port.sh"
get() { curl -fsS --max-time 10 "http://127.0.0.1:$port$1"; }

# Stops the current agent run: removes its pods (the agent itself, so that it also removes their
# cgroups and logs), then the agent. Bounded: what is left goes with containerd-down.sh.
stop_agent() {
  [[ -n $agent_pid ]] || return 0
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=""
  fi
  if kill -0 "$agent_pid" 2>/dev/null; then
    rm -f "$workdir/manifests"/*.yaml
    local deadline=$((SECONDS + 90)) left
    while ((SECONDS < deadline)); do
      left=$(get /pods 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))' 2>/dev/null || echo "?")
      [[ $left == 0 ]] && break
      sleep 1
    done
    kill -TERM "$agent_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$agent_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$agent_pid" 2>/dev/null || true
  fi
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=""
}

# shellcheck disable=SC2317 # called by the trap
teardown() {
  trap - EXIT INT TERM
  stop_agent
  "$scripts/$flavour-down.sh" "$statedir" >/dev/null 2>&1 || say "$flavour-down.sh failed; see $statedir"
  # Pod cgroups the runtime left behind (cgroup v1 keeps them after RemovePodSandbox).
  if [[ -s $workdir/uids ]]; then
    while read -r uid; do
      for d in /sys/fs/cgroup/*/kubepods/pod"$uid" /sys/fs/cgroup/*/kubepods/*/pod"$uid" \
        /sys/fs/cgroup/kubepods/pod"$uid" /sys/fs/cgroup/kubepods/*/pod"$uid"; do
        [[ -d $d ]] && rmdir "$d" 2>/dev/null || true
      done
    done <"$workdir/uids"
  fi
  [[ -d $statedir ]] || rm -rf "$workdir"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

endpoint=$("$scripts/$flavour-up.sh" "$statedir" "$target/e2e-images" 2>/dev/null | tail -n 1)
hz=$(getconf CLK_TCK)

# utime+stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# The CRI operation counters as "operation count" lines.
cri_counts() {
  get /metrics | awk '/^kubelet_runtime_operations_total\{/ {
    match($0, /operation_type="[^"]*"/); op = substr($0, RSTART + 16, RLENGTH - 17); print op, $NF }'
}

for count in "${counts[@]}"; do
for mode in "${modes[@]}"; do
  case $mode in
    relist) gates='featureGates: {EventedPLEG: false}' ;;
    events) gates='featureGates: {EventedPLEG: true}' ;;
    default) gates='' ;;
    *) say "--pleg: unknown mode $mode (relist, events)"; exit 2 ;;
  esac
  run=$workdir/run-$count-$mode
  mkdir -p "$run/root" "$run/pods"
  rm -rf "$workdir/manifests"
  mkdir -p "$workdir/manifests"
  port=$(free_port)
  node=mk-idle-$$-$count
  for i in $(seq 1 "$count"); do
    cat >"$workdir/manifests/idle-$i.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: idle-$i
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    image: mini-kubelet.local/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sleep, "1000000"]
EOF
  done
  # kubelet's defaults, written out: the agent's own defaults are the same.
  cat >"$run/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: $workdir/manifests
containerRuntimeEndpoint: $endpoint
readOnlyPort: $port
healthzPort: 0
port: 0
address: 127.0.0.1
podLogsDir: $run/pods
maxPods: $((count > 110 ? count : 110))
fileCheckFrequency: 20s
syncFrequency: 1m0s
$gates
EOF
  "$agent_bin" --config "$run/kubelet.yaml" --hostname-override "$node" --root-dir "$run/root" \
    >"$run/agent.log" 2>&1 &
  agent_pid=$!

  # All pods running: every container of every pod in state running, as /pods reports them.
  started=$SECONDS
  running=0
  while ((running < count)); do
    if ! kill -0 "$agent_pid" 2>/dev/null; then
      say "the agent exited; last lines of $run/agent.log:"
      tail -n 20 "$run/agent.log" >&2
      exit 1
    fi
    if ((SECONDS - started > 60 + 3 * count)); then
      say "only $running of $count pods running after $((SECONDS - started)) s; last lines of $run/agent.log:"
      tail -n 20 "$run/agent.log" >&2
      exit 1
    fi
    sleep 1
    running=$(get /pods 2>/dev/null | python3 -c '
import json, sys
n = 0
for p in json.load(sys.stdin)["items"]:
    st = p.get("status") or {}
    cs = st.get("containerStatuses") or []
    if st.get("phase") == "Running" and cs and all("running" in (c.get("state") or {}) for c in cs):
        n += 1
print(n)' 2>/dev/null || echo 0)
  done
  get /pods | python3 -c 'import json,sys; [print(p["metadata"]["uid"]) for p in json.load(sys.stdin)["items"]]' \
    >>"$workdir/uids" || true
  say "$count pods running after $((SECONDS - started)) s; settling $settle s, then measuring $window s"
  sleep "$settle"

  if ((perf)); then
    # shellcheck disable=SC2086 # options, split on purpose
    perf record -q ${MK_PERF_ARGS:--g} -F 999 -p "$agent_pid" -o "$run/perf.data" >"$run/perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
  fi
  before_ops=$(cri_counts)
  before_cpu=$(cpu_ticks "$agent_pid")
  t0=$(date +%s%N)
  sleep "$window"
  after_cpu=$(cpu_ticks "$agent_pid")
  t1=$(date +%s%N)
  after_ops=$(cri_counts)
  if ((perf)); then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=""
  fi
  rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$agent_pid/status")

  awk -v count="$count" -v hz="$hz" -v c0="$before_cpu" -v c1="$after_cpu" -v t0="$t0" -v t1="$t1" \
    -v rss="$rss_kib" -v before="$before_ops" -v after="$after_ops" -v mode="$mode" 'BEGIN {
      secs = (t1 - t0) / 1e9
      n = split(before, lines, "\n")
      for (i = 1; i <= n; i++) { split(lines[i], f, " "); if (f[1] != "") b[f[1]] = f[2] }
      n = split(after, lines, "\n")
      total = 0; detail = ""
      for (i = 1; i <= n; i++) {
        split(lines[i], f, " "); if (f[1] == "") continue
        d = f[2] - (f[1] in b ? b[f[1]] : 0)
        if (d <= 0) continue
        total += d; rate[f[1]] = d / secs
      }
      # Busiest operation first.
      m = 0; for (op in rate) ops[++m] = op
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (rate[ops[j]] > rate[ops[i]]) { t = ops[i]; ops[i] = ops[j]; ops[j] = t }
      for (i = 1; i <= m; i++) detail = detail (i > 1 ? ", " : "") sprintf("%s %.2f", ops[i], rate[ops[i]])
      printf "pods=%d%s cpu=%.2f%% rss=%.1fMiB cri_calls_per_s=%.2f (%s)\n", count, mode == "default" ? "" : " pleg=" mode, 100 * (c1 - c0) / hz / secs, rss / 1024, total / secs, detail
    }'
  if ((perf)); then
    if [[ -n ${MK_PERF_KEEP:-} ]]; then
      mkdir -p "$MK_PERF_KEEP" && cp "$run/perf.data" "$MK_PERF_KEEP/perf-$count-$mode.data"
    fi
    echo "--- perf report (pods=$count, self time, top entries) ---"
    perf report -i "$run/perf.data" --stdio --no-children --percent-limit 1.5 --sort dso,symbol -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -n 40
    echo "--- perf report (pods=$count, with children, top entries) ---"
    perf report -i "$run/perf.data" --stdio --children --percent-limit 5 --sort symbol -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -n 40
  fi
  stop_agent
done
done
