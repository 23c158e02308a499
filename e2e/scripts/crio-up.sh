#!/usr/bin/env bash
# Starts a PRIVATE cri-o (built by crio-build.sh from its Go module; never a system one) whose every path
# lives under STATEDIR: crio.conf (and an empty drop-in folder, so /etc/crio is never read),
# registries.conf, policy.json, storage.conf, containers/storage root/ and runroot/, crio.sock, the runc
# root, the namespaces pinns pins (ns/), conmon's exit files and attach sockets, the pod log fallback, its
# version and clean-shutdown files, and a CNI conf dir with one bridge+portmap conflist (bridge name,
# network name and /24 subnet derived from STATEDIR, so instances don't collide; the subnet is claimed in
# /run/mini-kubelet-e2e/<hash>.subnet like containerd-up.sh's). Its cgroup manager is cgroupfs; conmon
# is Debian's. Its OCI runtime is runc through a small wrapper, bin/runc (written here): cri-o always
# asks oom_score_adj -998 for a pod's infra container, which root here may not set (no
# CAP_SYS_RESOURCE), so the wrapper raises `oomScoreAdj` in the bundle's config.json (and in an exec's
# process.json) to its own value before it execs the real runc. Loopback registries (127.0.0.1:*,
# localhost:*) are plain HTTP; every image is accepted unsigned.
# Then imports the local pause and busybox images (OCI archives from build-images.sh) into the store
# with skopeo (busybox also as mini-kubelet.local/busybox:1.36-b), and prints the CRI endpoint
# unix://STATEDIR/crio.sock as the last line on stdout (progress goes to stderr). Idempotent: an instance
# already running for STATEDIR is reused. Stop it with crio-down.sh STATEDIR.
# Usage: crio-up.sh STATEDIR [IMAGEDIR]
#   IMAGEDIR (default $MK_E2E_IMAGE_DIR, else <repo>/target/e2e-images) holds pause.tar and busybox.tar;
#   they are built there by build-images.sh when missing.
#   MK_CRIO_BIN_DIR: a folder with crio and pinns to run instead of crio-build.sh's build.
#   MK_CRIO_POD_EVENTS=false: turn off cri-o's container events (GetContainerEvents; on by default here).
#   MK_CRIO_DROP_INFRA=false: give every pod an infra (pause) container (cri-o's default drops it
#   when the pod shares no PID namespace).
#   (cri-o's conmon creates the pod's log_directory but not the folder of a container's log_path: the
#   agent makes `<pod log dir>/<container>/` itself before CreateContainer, as kubelet does.)
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 STATEDIR [IMAGEDIR]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/cni-net.sh
source "$here/lib/cni-net.sh"
mkdir -p "$1"
statedir=$(cd "$1" && pwd -P)
imagedir=${2:-${MK_E2E_IMAGE_DIR:-$repo/target/e2e-images}}
sock=$statedir/crio.sock
config=$statedir/crio.conf
pidfile=$statedir/crio.pid
log=$statedir/crio.log
store="overlay@$statedir/root+$statedir/runroot"

say() { echo "crio-up: $*" >&2; }

if ((${#sock} > 100)); then
  say "STATEDIR path too long for a unix socket: $sock"
  exit 1
fi
for bin in runc conmon skopeo curl python3 /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap \
  /usr/lib/cni/loopback; do
  if ! command -v "$bin" >/dev/null; then
    say "$bin missing: run e2e/scripts/install-deps.sh (cri-o also needs Debian's conmon)"
    exit 1
  fi
done
bindir=${MK_CRIO_BIN_DIR:-$("$here/crio-build.sh" | tail -n 1)}
crio=$bindir/crio
for bin in "$crio" "$bindir/pinns"; do
  if ! [[ -x $bin ]]; then
    say "$bin missing (crio-build.sh builds it)"
    exit 1
  fi
done

# The pid of the crio serving this config, if one runs.
running_pid() {
  local pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "--config $config" || return 1
  echo "$pid"
}

# Whether crio answers CRI Version on its socket: a gRPC call by curl over HTTP/2 (an empty request).
answers() {
  printf '\0\0\0\0\0' | curl -sS --max-time 2 --unix-socket "$sock" --http2-prior-knowledge \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
    http://localhost/runtime.v1.RuntimeService/Version -o /dev/null -D - 2>/dev/null |
    grep -qi '^grpc-status: *0'
}

# The runc wrapper cri-o runs as its OCI runtime.
write_runc_wrapper() {
  cat >"$statedir/bin/runc" <<EOF
#!/usr/bin/env bash
# runc for the private cri-o of $statedir (written by e2e/scripts/crio-up.sh). cri-o asks
# oom_score_adj -998 for a pod's infra container; root here lacks CAP_SYS_RESOURCE and may not go
# below its own value, so runc would fail. Raise process.oomScoreAdj in the bundle's config.json (create,
# run) or in an exec's process.json to this process's own oom_score_adj, then exec the real runc.
real=$(command -v runc)
EOF
  cat >>"$statedir/bin/runc" <<'EOF'
floor=$(</proc/self/oom_score_adj)
raise() {
  local file=$1 value
  [[ -f $file ]] || return 0
  value=$(grep -o '"oomScoreAdj": *-\{0,1\}[0-9]*' "$file" | head -n 1 | sed 's/.*: *//')
  if [[ -n $value ]] && ((value < floor)); then
    sed -i "s/\"oomScoreAdj\": *-\{0,1\}[0-9]*/\"oomScoreAdj\":$floor/" "$file"
  fi
}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --bundle | -b) raise "${args[i + 1]:-}/config.json" ;;
    --bundle=*) raise "${args[i]#--bundle=}/config.json" ;;
    --process | -p) raise "${args[i + 1]:-}" ;;
    --process=*) raise "${args[i]#--process=}" ;;
  esac
done
exec "$real" "$@"
EOF
  chmod 755 "$statedir/bin/runc"
}

write_config() {
  cat >"$config" <<EOF
# Private cri-o for mini-kubelet's end-to-end tests (written by e2e/scripts/crio-up.sh).
[crio]
root = "$statedir/root"
runroot = "$statedir/runroot"
storage_driver = "overlay"
log_dir = "$statedir/pod-logs"
version_file = "$statedir/version"
version_file_persist = "$statedir/version-persist"
clean_shutdown_file = "$statedir/clean.shutdown"

[crio.api]
listen = "$sock"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
cgroup_manager = "cgroupfs"
selinux = false
apparmor_profile = ""
seccomp_profile = ""
decryption_keys_path = "$statedir/keys"
irqbalance_config_file = ""
irqbalance_config_restore_file = "disable"
cdi_spec_dirs = ["$statedir/cdi"]
hooks_dir = ["$statedir/hooks.d"]
container_exits_dir = "$statedir/exits"
container_attach_socket_dir = "$statedir/attach"
namespaces_dir = "$statedir/ns"
pinns_path = "$statedir/bin/pinns"
enable_criu_support = false
enable_pod_events = ${MK_CRIO_POD_EVENTS:-true}
drop_infra_ctr = ${MK_CRIO_DROP_INFRA:-true}
log_level = "info"

[crio.runtime.runtimes.runc]
runtime_path = "$statedir/bin/runc"
runtime_type = "oci"
runtime_root = "$statedir/runc"
monitor_path = "$monitor"
# cgroupfs: conmon goes into the pod's cgroup.
monitor_cgroup = "pod"
monitor_env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

[crio.image]
pause_image = "mini-kubelet.local/pause:3.10"
# "": the pause image's own entrypoint (catatonit -P).
pause_command = ""
pinned_images = ["mini-kubelet.local/pause:3.10"]
signature_policy = "$statedir/policy.json"
signature_policy_dir = "$statedir/policies"
short_name_mode = "disabled"

[crio.network]
network_dir = "$statedir/cni"
plugin_dirs = ["/usr/lib/cni"]
cni_default_network = "$netname"

[crio.metrics]
enable_metrics = false

[crio.tracing]
enable_tracing = false

[crio.nri]
enable_nri = false
nri_listen = "$statedir/nri.sock"
EOF
  cat >"$statedir/registries.conf" <<EOF
# Private registries.conf for the cri-o of $statedir (written by e2e/scripts/crio-up.sh).
unqualified-search-registries = []
# Plain HTTP on loopback. A location matches a reference with that prefix followed by ":", so these
# also cover 127.0.0.1:PORT/... and localhost:PORT/... (the test registry's port is not known here).
[[registry]]
location = "127.0.0.1"
insecure = true
[[registry]]
location = "localhost"
insecure = true
EOF
  cat >"$statedir/policy.json" <<'EOF'
{ "default": [{ "type": "insecureAcceptAnything" }] }
EOF
  cat >"$statedir/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$statedir/root"
runroot = "$statedir/runroot"
EOF
}

# Environment for skopeo and containers/storage (cri-o takes registries.conf by flags, below).
export CONTAINERS_REGISTRIES_CONF=$statedir/registries.conf
export CONTAINERS_STORAGE_CONF=$statedir/storage.conf

if pid=$(running_pid) && answers; then
  say "crio already running for $statedir (pid $pid)"
  hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
else
  # Per-instance network identity, derived from the state directory's path.
  hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
  bridge=mk${hash}
  netname=mk-e2e-$hash
  if [[ -f $statedir/network.env ]]; then
    subnet=$(sed -n 's/^SUBNET=//p' "$statedir/network.env")
  else
    # A 10.x.y.0/24 that overlaps no route of this host and no other instance's subnet.
    subnet=$(free_subnet "$hash" 0)
  fi
  mkdir -p "$statedir"/{root,runroot,runc,cni,cni-ipam,ns,exits,attach,pod-logs,keys,cdi,hooks.d,policies,bin,crio.conf.d,registries.conf.d} \
    /run/mini-kubelet-e2e
  echo "$subnet" >"/run/mini-kubelet-e2e/$hash.subnet"
  cat >"$statedir/network.env" <<EOF
BRIDGE=$bridge
NETWORK=$netname
SUBNET=$subnet
EOF
  write_bridge_conflist "$statedir/cni/10-$netname.conflist" "$netname" "$bridge" "$subnet" "$statedir/cni-ipam"
  monitor=$(command -v conmon)
  write_config
  write_runc_wrapper
  cp -f "$bindir/pinns" "$statedir/bin/pinns"

  if ! [[ -f $imagedir/pause.tar && -f $imagedir/busybox.tar ]]; then
    "$here/build-images.sh" "$imagedir" >&2
  fi
  # The pause image must be in the store before crio starts (it checks its pinned images).
  skopeo --registries-conf "$statedir/registries.conf" copy --quiet "oci-archive:$imagedir/pause.tar" \
    "containers-storage:[$store]mini-kubelet.local/pause:3.10" >&2
  imported_pause=1

  say "starting crio: config $config, log $log (bridge $bridge, subnet $subnet)"
  started=$(date +%s%N)
  rm -f "$pidfile" "$statedir/supervisor.pid"
  # Under a supervisor that restarts it after a crash of its own, as its systemd unit does
  # (lib/crio-supervise.sh; crashes are recorded in crashes.log and printed by crio-down.sh).
  # setsid: its own session, so a ctrl-c in the caller's terminal reaches the caller's EXIT trap
  # (which runs crio-down.sh) rather than killing crio halfway.
  setsid bash "$here/lib/crio-supervise.sh" "$statedir" "$bindir" </dev/null >/dev/null 2>&1 &
  launched=$!
  for _ in $(seq 1 300); do
    pid=$(running_pid) || pid=""
    if [[ -n $pid ]] && answers; then
      break
    fi
    if ! kill -0 "$launched" 2>/dev/null && [[ -z $pid ]]; then
      say "crio exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if ! answers; then
    say "crio did not answer on $sock within 30 s; last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  say "crio up (pid $(<"$pidfile")) in $((($(date +%s%N) - started) / 1000000)) ms"
fi

if ! [[ -f $imagedir/pause.tar && -f $imagedir/busybox.tar ]]; then
  "$here/build-images.sh" "$imagedir" >&2
fi
# skopeo's containers/storage takes the store's locks, so this works with crio running.
if ((!${imported_pause:-0})); then
  skopeo --registries-conf "$statedir/registries.conf" copy --quiet "oci-archive:$imagedir/pause.tar" \
    "containers-storage:[$store]mini-kubelet.local/pause:3.10" >&2
fi
for tag in 1.36 1.36-b; do
  # The second tag of the same busybox is for the tests that roll a workload to a "new" image.
  skopeo --registries-conf "$statedir/registries.conf" copy --quiet "oci-archive:$imagedir/busybox.tar" \
    "containers-storage:[$store]mini-kubelet.local/busybox:$tag" >&2
done
echo "unix://$sock"
