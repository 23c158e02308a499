#!/usr/bin/env bash
# A soak of a long-running node's housekeeping: the agent runs standalone on a private containerd with
# PODS static pods (default 30) for SECONDS (default 600) while every pod writes its log steadily
# (busybox printing ~100 kB/s: ten 1000-byte lines every 0.1 s), some of them crash-looping
# (restartPolicy Always, exiting after ~3 s of writing; default one pod in six, 5 of 30) so that dead
# containers and their logs pile up too, with log rotation small enough that it really happens
# (containerLogMaxSize 1Mi, containerLogMaxFiles 3, containerLogMonitorInterval 3s). It only measures:
# whatever the agent does about rotation and dead containers is what is seen.
#
# Why 3s and not kubelet's default 10s: a file is rotated by the first check after it reached maxSize,
# so it can grow by another interval of writing first, and kubelet keeps the live file and the newest
# rotated one uncompressed. At 100 kB/s a 10 s interval lets each of them reach ~2 MiB, and a
# container's files ~4 MiB against its 3 x 1Mi share: kubelet itself would exceed the bound. With 3 s
# they stay under ~1.35 MB each (plus a small .gz), so a node doing its housekeeping passes.
#
# Once all pods run, and at the end, it prints the pod logs directory (apparent bytes, allocated disk
# bytes, files, and container_logs: the containers' own RESTART.log files, rotated ones not counted,
# so one per container whose log is still there, removed containers' included), the agent's RSS
# (VmRSS) and CPU since the previous line (utime+stime from /proc/PID/stat, percent of one core), the
# containers and sandboxes in the runtime (ctr, by the CRI plugin's io.cri-containerd.kind label;
# "running" = a running task) and the restarts /pods reports; every SAMPLE seconds (default 60) a
# line of the same figures; then the agent's CPU over the whole period and the bound the logs must
# stay under, PODS x maxFiles x maxSize (one container a pod). The logs directory is also measured every 3 s
# between the printed lines; the last line is PASS when its largest apparent size stayed within the
# bound, FAIL (exit status 1) otherwise.
#   bench-housekeeping.sh                 # 30 pods, 600 s
#   bench-housekeeping.sh --sample 20 5 60
# Everything (agent, pods, containerd, temporary folders, pod cgroups) is removed on any exit,
# ctrl-c included.
#
# Usage: bench-housekeeping.sh [--crashing K] [--sample SECONDS] [--max-size QUANTITY] [--max-files N]
#                              [--monitor-interval DURATION] [--keep DIR] [PODS [SECONDS]]
#   --keep DIR    copy the agent's log and configuration there before cleaning up
#   MK_AGENT_BIN  the agent binary (default: ${CARGO_TARGET_DIR:-target}/release/mini-kubelet, built
#                 with cargo when the variable is unset)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
target=${CARGO_TARGET_DIR:-$repo/target}

pods=30
duration=600
crashing=""
sample=60
max_size=1Mi
max_files=3
monitor=3s
keep=""
positional=()
while (($#)); do
  case $1 in
    --crashing) crashing=$2; shift ;;
    --sample) sample=$2; shift ;;
    --max-size) max_size=$2; shift ;;
    --max-files) max_files=$2; shift ;;
    --monitor-interval) monitor=$2; shift ;;
    --keep) keep=$2; shift ;;
    -h | --help)
      sed -n '2,35p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *[!0-9]* | '')
      echo "bench-housekeeping: unknown argument $1" >&2
      exit 2
      ;;
    *) positional+=("$1") ;;
  esac
  shift
done
say() { echo "bench-housekeeping: $*" >&2; }
((${#positional[@]} <= 2)) || { say "at most two numbers: PODS SECONDS"; exit 2; }
pods=${positional[0]:-$pods}
duration=${positional[1]:-$duration}
crashing=${crashing:-$(((pods + 5) / 6))}
for n in "$pods" "$duration" "$crashing" "$sample" "$max_files"; do
  [[ $n =~ ^[0-9]+$ ]] || { say "not a number: $n"; exit 2; }
done
((pods >= 1 && duration >= 1 && sample >= 1)) || { say "PODS, SECONDS and --sample must be positive"; exit 2; }
((crashing <= pods)) || { say "--crashing $crashing is more than the $pods pods"; exit 2; }
((max_files >= 2)) || { say "--max-files must be at least 2 (kubelet's minimum)"; exit 2; }
# containerLogMaxSize in bytes: a plain number or one with a binary or decimal suffix.
max_bytes=$(awk -v q="$max_size" 'BEGIN {
  if (!match(q, /^[0-9]+(Ki|Mi|Gi|k|M|G)?$/)) exit 1
  n = q + 0; s = q; sub(/^[0-9]+/, "", s)
  m["Ki"] = 1024; m["Mi"] = 1048576; m["Gi"] = 1073741824; m["k"] = 1e3; m["M"] = 1e6; m["G"] = 1e9
  printf "%d\n", (s == "" ? n : n * m[s]) }') || { say "--max-size: not a quantity this script reads: $max_size"; exit 2; }
bound=$((pods * max_files * max_bytes))

"$scripts/install-deps.sh" >&2
"$scripts/build-images.sh" "$target/e2e-images" >/dev/null
if [[ -z ${MK_AGENT_BIN:-} ]]; then
  cargo build --release -p mini-kubelet --bin mini-kubelet >&2
fi
agent_bin=${MK_AGENT_BIN:-$target/release/mini-kubelet}
[[ -x $agent_bin ]] || { say "$agent_bin is not an executable"; exit 1; }

workdir=$(mktemp -d /tmp/mk-soak.XXXXXX)
statedir=$workdir/ctrd
manifests=$workdir/manifests
logs=$workdir/pods
agent_pid=""
port=""
sock=""

# shellcheck source-path=SCRIPTDIR source=lib/free-port.sh
source "$scripts/lib/free-port.sh"
# shellcheck source-path=SCRIPTDIR source=lib/teardown.sh
source "$scripts/lib/teardown.sh"
get() { curl -fsS --max-time 10 "http://127.0.0.1:$port$1"; }
pods_left() {
  get /pods 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))' 2>/dev/null || echo "?"
}

# shellcheck disable=SC2317 # called by the trap
teardown() {
  trap - EXIT INT TERM
  if [[ -n $agent_pid ]] && alive "$agent_pid"; then
    # The agent removes its pods itself (their containers, sandboxes, cgroups), bounded: what is left
    # goes with containerd-down.sh.
    say "removing the pods, then stopping the agent"
    rm -f "$manifests"/*.yaml
    local deadline=$((SECONDS + 90))
    while ((SECONDS < deadline)) && alive "$agent_pid" && [[ $(pods_left) != 0 ]]; do
      sleep 1
    done
    stop_pids 50 "$agent_pid"
  fi
  [[ -z $agent_pid ]] || wait "$agent_pid" 2>/dev/null || true
  if [[ -n $keep ]]; then
    { mkdir -p "$keep" && cp "$workdir/agent.log" "$workdir/kubelet.yaml" "$keep/"; } 2>/dev/null ||
      say "could not copy the agent's log to $keep"
  fi
  "$scripts/containerd-down.sh" "$statedir" >/dev/null 2>&1 || say "containerd-down.sh failed; see $statedir"
  # Pod cgroups a runtime or a killed agent left behind (cgroup v1 keeps them after RemovePodSandbox);
  # the pods' uids as /pods listed them, and in the names of the log directories left
  # (NAMESPACE_NAME_UID).
  local dir uid d
  for uid in $(cat "$workdir/uids" 2>/dev/null || true) $(for dir in "$logs"/*_*_*; do
    if [[ -d $dir ]]; then echo "${dir##*_}"; fi; done); do
    for d in /sys/fs/cgroup/*/kubepods/pod"$uid" /sys/fs/cgroup/*/kubepods/*/pod"$uid" \
      /sys/fs/cgroup/kubepods/pod"$uid" /sys/fs/cgroup/kubepods/*/pod"$uid"; do
      if [[ -d $d ]]; then rmdir "$d" 2>/dev/null || true; fi
    done
  done
  [[ -d $statedir ]] || rm -rf "$workdir"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

endpoint=$("$scripts/containerd-up.sh" "$statedir" "$target/e2e-images" 2>/dev/null | tail -n 1)
sock=${endpoint#unix://}
hz=$(getconf CLK_TCK)
port=$(free_port)

# The pods. A writer prints ten 1000-byte lines (tick and line numbers, then x's) every 0.1 s: at most
# 100 kB/s; a crashing one does so for 30 ticks and exits 1. TERM ends either at once.
# shellcheck disable=SC2016 # expanded by the container's shell
line='x=xxxxxxxxxx; x=$x$x$x$x$x$x$x$x$x$x; x=$x$x$x$x$x$x$x$x$x$x; x=${x#??????????????}'
steady="trap \"exit 0\" TERM; $line; i=0; while true; do i=\$((i+1)); j=0; while [ \$j -lt 10 ]; do echo \"tick \$i \$j \$x\"; j=\$((j+1)); done; sleep 0.1; done"
crash="trap \"exit 0\" TERM; $line; i=0; while [ \$i -lt 30 ]; do i=\$((i+1)); j=0; while [ \$j -lt 10 ]; do echo \"tick \$i \$j \$x\"; j=\$((j+1)); done; sleep 0.1; done; echo crashing >&2; exit 1"
mkdir -p "$manifests" "$logs" "$workdir/root"
for i in $(seq 1 "$pods"); do
  if ((i <= crashing)); then name=soak-crash-$i; command=$crash; else name=soak-log-$i; command=$steady; fi
  # JSON-quoted for the YAML flow sequence (JSON is YAML).
  quoted=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$command")
  cat >"$manifests/$name.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: mini-kubelet.local/busybox:1.36
    imagePullPolicy: IfNotPresent
    command: [sh, -c, $quoted]
EOF
done
# evictionHard and imageGCHighThresholdPercent as the e2e harness sets them (Agent::start_with): the
# node shares its disk with build caches, and kubelet's defaults (nodefs.available<10%, image GC at
# 85 %) would evict the soak's pods or remove its images for reasons that are not the soak's.
cat >"$workdir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: $manifests
containerRuntimeEndpoint: $endpoint
readOnlyPort: $port
healthzPort: 0
port: 0
address: 127.0.0.1
podLogsDir: $logs
maxPods: $((pods > 110 ? pods : 110))
fileCheckFrequency: 20s
syncFrequency: 1m0s
containerLogMaxSize: $max_size
containerLogMaxFiles: $max_files
containerLogMonitorInterval: $monitor
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1Gi
  imagefs.available: 1Gi
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
EOF
# setsid: a ctrl-c in the terminal reaches this script's trap only, which then removes the pods
# through the agent before stopping it. (The pause image is containerd's sandbox_image, set by
# containerd-up.sh; the flag names it for the agent too.)
setsid "$agent_bin" --config "$workdir/kubelet.yaml" --hostname-override "mk-soak-$$" \
  --root-dir "$workdir/root" --pod-infra-container-image mini-kubelet.local/pause:3.10 \
  </dev/null >"$workdir/agent.log" 2>&1 &
agent_pid=$!

agent_died() {
  say "the agent exited; last lines of $workdir/agent.log:"
  tail -n 20 "$workdir/agent.log" >&2
  exit 1
}
# Sleeps in the background, so that a signal's trap runs at once.
pause() {
  sleep "$1" &
  wait $! || true
}

# All pods started: phase Running, a writer running, a crashing one's container started at least once.
started=$SECONDS
ready=0
while ((ready < pods)); do
  alive "$agent_pid" || agent_died
  if ((SECONDS - started > 60 + 3 * pods)); then
    say "only $ready of $pods pods running after $((SECONDS - started)) s; last lines of $workdir/agent.log:"
    tail -n 20 "$workdir/agent.log" >&2
    exit 1
  fi
  pause 1
  ready=$(get /pods 2>/dev/null | python3 -c '
import json, sys
n = 0
for p in json.load(sys.stdin)["items"]:
    st = p.get("status") or {}
    cs = st.get("containerStatuses") or []
    if st.get("phase") != "Running" or not cs:
        continue
    if p["metadata"]["name"].startswith("soak-crash-"):
        n += all(c.get("containerID") for c in cs)
    else:
        n += all("running" in (c.get("state") or {}) for c in cs)
print(n)' 2>/dev/null || echo 0)
done
get /pods | python3 -c 'import json,sys; [print(p["metadata"]["uid"]) for p in json.load(sys.stdin)["items"]]' \
  >"$workdir/uids" || true
say "$pods pods running ($crashing crash-looping) after $((SECONDS - started)) s; measuring for $duration s"

# utime+stime of the agent, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$agent_pid/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$agent_pid/status"; }
# The pod logs directory: "apparent-bytes allocated-bytes files container-logs", the last being the
# containers' own log files (POD/CONTAINER/RESTART.log, not rotated ones), one per container that ran.
log_usage() {
  { find "$logs" -type f -printf '%s %b %f\n' 2>/dev/null || true; } |
    awk '{ a += $1; d += $2 * 512; n++; if ($3 ~ /^[0-9]+\.log$/) c++ } END { printf "%d %d %d %d\n", a, d, n, c }'
}
# The runtime's CRI objects: "sandboxes containers running-containers".
runtime_counts() {
  local ids tasks
  ids=$(ctr -a "$sock" -n k8s.io containers ls -q 'labels."io.cri-containerd.kind"==container' 2>/dev/null || true)
  tasks=$(ctr -a "$sock" -n k8s.io tasks ls 2>/dev/null | awk '$3 == "RUNNING" { print $1 }' || true)
  awk -v s="$(ctr -a "$sock" -n k8s.io containers ls -q 'labels."io.cri-containerd.kind"==sandbox' 2>/dev/null | grep -c . || true)" \
    -v ids="$ids" -v tasks="$tasks" 'BEGIN {
      n = split(ids, c, "\n"); m = split(tasks, t, "\n")
      for (i = 1; i <= m; i++) run[t[i]] = 1
      for (i = 1; i <= n; i++) { if (c[i] == "") continue; total++; if (c[i] in run) r++ }
      printf "%d %d %d\n", s, total, r }'
}
# Restarts of all containers, as /pods reports them.
restarts() {
  get /pods 2>/dev/null | python3 -c '
import json, sys
print(sum(c.get("restartCount", 0) for p in json.load(sys.stdin)["items"]
          for c in (p.get("status") or {}).get("containerStatuses") or []))' 2>/dev/null || echo "?"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1fMiB", b / 1048576 }'; }
# figures LABEL CPU-PERCENT: one line of everything measured now.
figures() {
  local usage counts rss
  read -r -a usage <<<"$(log_usage)"
  read -r -a counts <<<"$(runtime_counts)"
  rss=$(rss_kib)
  printf '%s logs=%s apparent=%dB disk=%dB files=%d container_logs=%d rss=%s cpu=%s containers=%d running=%d exited=%d sandboxes=%d restarts=%s\n' \
    "$1" "$(mib "${usage[0]}")" "${usage[0]}" "${usage[1]}" "${usage[2]}" "${usage[3]}" "$(awk -v k="$rss" 'BEGIN { printf "%.1fMiB", k / 1024 }')" \
    "$2" "${counts[1]}" "${counts[2]}" "$((counts[1] - counts[2]))" "${counts[0]}" "$(restarts)"
  peak_check "${usage[0]}"
}
peak=0
peak_at=0
peak_check() {
  if (($1 > peak)); then
    peak=$1
    peak_at=$(((now - t0) / 1000000000))
  fi
}
# CPU percent of one core between two (ticks, ns) points.
cpu_pct() { awk -v c0="$1" -v c1="$2" -v t0="$3" -v t1="$4" -v hz="$hz" 'BEGIN { printf "%.2f%%", 100 * (c1 - c0) / hz / ((t1 - t0) / 1e9) }'; }

echo "bench-housekeeping: pods=$pods (crash-looping $crashing) duration=${duration}s agent=$agent_bin containerLogMaxSize=$max_size containerLogMaxFiles=$max_files containerLogMonitorInterval=$monitor"
t0=$(date +%s%N)
now=$t0
c0=$(cpu_ticks)
figures "start:" "-"
last_c=$c0
last_t=$t0
end=$((t0 + duration * 1000000000))
next_print=$((t0 + sample * 1000000000))
while :; do
  now=$(date +%s%N)
  ((now < end)) || break
  next=$((now + 3 * 1000000000))
  ((next < next_print)) || next=$next_print
  ((next < end)) || next=$end
  pause "$(awk -v d=$((next - now)) 'BEGIN { printf "%.3f", d / 1e9 }')"
  alive "$agent_pid" || agent_died
  now=$(date +%s%N)
  if ((now >= next_print && now < end)); then
    c=$(cpu_ticks)
    figures "t=$(((now - t0) / 1000000000))s" "$(cpu_pct "$last_c" "$c" "$last_t" "$now")"
    last_c=$c
    last_t=$now
    next_print=$((next_print + sample * 1000000000))
  elif ((now < end)); then
    peak_check "$(log_usage | awk '{ print $1 }')"
  fi
done
c1=$(cpu_ticks)
now=$(date +%s%N)
figures "end: t=$(((now - t0) / 1000000000))s" "$(cpu_pct "$last_c" "$c1" "$last_t" "$now")"
echo "agent cpu over $(((now - t0) / 1000000000)) s: $(cpu_pct "$c0" "$c1" "$t0" "$now") of one core"
echo "log bound: $pods pods x $max_files files x $max_size = $bound B ($(mib "$bound")); largest seen $peak B ($(mib "$peak")) at t=${peak_at}s"
if ((peak <= bound)); then
  echo PASS
else
  echo FAIL
  exit 1
fi
