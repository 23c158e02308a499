#!/usr/bin/env bash
# Starts a PRIVATE containerd (never the system one) whose every path lives under STATEDIR:
# config.toml, root/, state/, containerd.sock (+ ttrpc), runc Root, CNI conf_dir with one bridge+portmap
# conflist (bridge name, network name and /24 subnet derived from STATEDIR, so instances don't collide),
# host-local IPAM data, network namespaces (netns_mounts_under_state_dir); the subnet is also claimed in
# /run/mini-kubelet-e2e/<hash>.subnet so that concurrent instances pick different ones. Then imports the
# local pause and busybox images into the k8s.io namespace (busybox also as
# mini-kubelet.local/busybox:1.36-b) and prints the CRI endpoint
# unix://STATEDIR/containerd.sock as the last line on stdout (progress goes to stderr). Idempotent: an instance already running for
# STATEDIR is reused. Stop it with containerd-down.sh STATEDIR.
# Usage: containerd-up.sh STATEDIR [IMAGEDIR]
#   MK_CONTAINERD_BIN_DIR: a folder with containerd, containerd-shim-runc-v2, ctr and runc to run
#   instead of Debian's (containerd2-up.sh passes its containerd 2.x build); a containerd 2.x gets the
#   configuration schema of version 3 (its CRI plugin split into images and runtime plugins).
#   IMAGEDIR (default $MK_E2E_IMAGE_DIR, else <repo>/target/e2e-images) holds pause.tar and busybox.tar;
#   they are built there by build-images.sh when missing.
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
sock=$statedir/containerd.sock
config=$statedir/config.toml
pidfile=$statedir/containerd.pid
log=$statedir/containerd.log

say() { echo "containerd-up: $*" >&2; }

if ((${#sock} > 100)); then
  say "STATEDIR path too long for a unix socket: $sock"
  exit 1
fi
if [[ -n ${MK_CONTAINERD_BIN_DIR:-} ]]; then
  # Its shim and runc first in PATH: containerd finds the shim there, the shim finds runc.
  export PATH=$MK_CONTAINERD_BIN_DIR:$PATH
fi
for bin in containerd ctr runc /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap; do
  if ! command -v "$bin" >/dev/null; then
    say "$bin missing: run e2e/scripts/install-deps.sh"
    exit 1
  fi
done

# The pid of the containerd serving this config, if one runs.
running_pid() {
  local pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "--config $config" || return 1
  echo "$pid"
}

# containerd 1.x: schema version 2.
write_config_v2() {
cat >"$config" <<EOF
# Private containerd for mini-kubelet's end-to-end tests (written by e2e/scripts/containerd-up.sh).
version = 2
root = "$statedir/root"
state = "$statedir/state"
temp = "$statedir/tmp"
disabled_plugins = [
"io.containerd.snapshotter.v1.aufs",
"io.containerd.snapshotter.v1.btrfs",
"io.containerd.snapshotter.v1.devmapper",
"io.containerd.snapshotter.v1.zfs",
"io.containerd.tracing.processor.v1.otlp",
"io.containerd.internal.v1.tracing",
]

[grpc]
address = "$sock"

[ttrpc]
address = "$statedir/containerd-ttrpc.sock"

[debug]
address = ""

[metrics]
address = ""

[plugins."io.containerd.internal.v1.opt"]
path = "$statedir/opt"

[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "mini-kubelet.local/pause:3.10"
# Root here lacks CAP_SYS_RESOURCE: sandboxes' oom_score_adj -998 would make every RunPodSandbox fail.
restrict_oom_score_adj = true
netns_mounts_under_state_dir = true
stream_server_address = "127.0.0.1"
stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "$statedir/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$statedir/cni"
  max_conf_num = 1
EOF
}

# containerd 2.x: schema version 3, where the CRI plugin is split into images and runtime plugins.
write_config_v3() {
cat >"$config" <<EOF
# Private containerd 2.x for mini-kubelet's end-to-end tests (written by e2e/scripts/containerd-up.sh).
version = 3
root = "$statedir/root"
state = "$statedir/state"
temp = "$statedir/tmp"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$statedir/containerd-ttrpc.sock"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$statedir/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "mini-kubelet.local/pause:3.10"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here lacks CAP_SYS_RESOURCE: sandboxes' oom_score_adj -998 would make every RunPodSandbox fail.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
        Root = "$statedir/runc"

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$statedir/cni"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
}

if pid=$(running_pid) && ctr -a "$sock" version >/dev/null 2>&1; then
  say "containerd already running for $statedir (pid $pid)"
else
  # Per-instance network identity, derived from the state directory's path.
  hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
  bridge=mk${hash}
  netname=mk-e2e-$hash
  # A 10.x.y.0/24 that overlaps no route of this host and no other instance's subnet.
  subnet=$(free_subnet "$hash" 0)
  mkdir -p "$statedir"/{root,state,opt,runc,cni,cni-ipam,tmp} /run/mini-kubelet-e2e
  echo "$subnet" >"/run/mini-kubelet-e2e/$hash.subnet"
  cat >"$statedir/network.env" <<EOF
BRIDGE=$bridge
NETWORK=$netname
SUBNET=$subnet
EOF
  write_bridge_conflist "$statedir/cni/10-$netname.conflist" "$netname" "$bridge" "$subnet" "$statedir/cni-ipam"
  major=$(containerd --version | sed -n 's/.* v\{0,1\}\([0-9][0-9]*\)\.[0-9][0-9]*\.[0-9].*/\1/p')
  if ((${major:-1} >= 2)); then
    write_config_v3
  else
    write_config_v2
  fi
  say "starting containerd: config $config, log $log (bridge $bridge, subnet $subnet)"
  started=$(date +%s%N)
  # setsid: its own session, so a ctrl-c in the caller's terminal reaches the caller's EXIT trap
  # (which runs containerd-down.sh) rather than killing containerd halfway.
  setsid containerd --config "$config" </dev/null >>"$log" 2>&1 &
  launched=$!
  pid=""
  for _ in $(seq 1 300); do
    # setsid execs in place here, but look the daemon up by its config path to be sure.
    if [[ -z $pid ]]; then
      for c in /proc/[0-9]*/cmdline; do
        if { tr '\0' ' ' <"$c"; } 2>/dev/null | grep -qF -- "containerd --config $config"; then
          pid=${c#/proc/}
          pid=${pid%/cmdline}
          echo "$pid" >"$pidfile"
          break
        fi
      done
    fi
    # Up once it answers and its pid is known (on a loaded machine it could answer before the
    # /proc scan above found it, which left no pid file).
    if [[ -n $pid ]] && ctr -a "$sock" version >/dev/null 2>&1; then
      break
    fi
    if ! kill -0 "$launched" 2>/dev/null && { [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; }; then
      say "containerd exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if ! ctr -a "$sock" version >/dev/null 2>&1; then
    say "containerd did not answer on $sock within 30 s; last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  # setsid execs in place (the caller is no group leader): the launched pid is the daemon's.
  [[ -f $pidfile ]] || echo "$launched" >"$pidfile"
  say "containerd up (pid $(<"$pidfile")) in $((($(date +%s%N) - started) / 1000000)) ms"
fi

if ! [[ -f $imagedir/pause.tar && -f $imagedir/busybox.tar ]]; then
  "$here/build-images.sh" "$imagedir" >&2
fi
for image in pause busybox; do
  ctr -a "$sock" -n k8s.io images import "$imagedir/$image.tar" >&2
done
# A second tag of the same busybox, for the tests that roll a workload to a "new" image.
ctr -a "$sock" -n k8s.io images tag --force mini-kubelet.local/busybox:1.36 \
  mini-kubelet.local/busybox:1.36-b >&2
say "images: $(ctr -a "$sock" -n k8s.io images ls -q | tr '\n' ' ')"
echo "unix://$sock"
