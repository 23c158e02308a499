#!/usr/bin/env bash
# Starts a PRIVATE dockerd (Debian's docker.io; never the system one) whose every path lives under
# STATEDIR: daemon.json (empty: /etc/docker/daemon.json is not read), data/ (--data-root: images,
# containers, overlay2 layers, its containerd's root), exec/ (--exec-root: its own containerd socket
# and state, netns files), docker.sock (-H), docker.pid (--pidfile), dockerd.log. Networking is
# Docker's bridge driver on a bridge this script creates first, with a name and /24 subnet derived
# from STATEDIR (claimed in /run/mini-kubelet-e2e/dockerd-<hash>.subnet, a directory that
# containerd-up.sh also consults, so concurrent instances pick different subnets); dockerd manages
# the iptables rules for it (--iptables). For the Docker adapter's CNI mode it also writes a CNI
# network config into STATEDIR/cni/net.d (bridge plugin on a second bridge of its own, mkc<hash>, with
# its own /24 claimed in /run/mini-kubelet-e2e/dockerd-cni-<hash>.subnet, host-local IPAM data in
# STATEDIR/cni/ipam, and portmap), recorded with its subnet in dockerd-up.env (CNI_*); the adapter's
# CNI cache belongs in STATEDIR/cni/cache. Then loads the local pause and busybox images (converted
# from the OCI archives of build-images.sh into docker-archive form on the fly) and prints the
# docker endpoint unix://STATEDIR/docker.sock as the last line on stdout (progress goes to stderr).
# Installs docker.io with apt when dockerd is missing. Idempotent: an instance already running for
# STATEDIR is reused. Stop it with dockerd-down.sh STATEDIR.
# Usage: dockerd-up.sh STATEDIR [IMAGEDIR]
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
sock=$statedir/docker.sock
pidfile=$statedir/docker.pid
log=$statedir/dockerd.log
config=$statedir/daemon.json
marker=$statedir/dockerd-up.env
# Debian's client speaks the engine's API version; another docker client may come first on PATH.
docker=/usr/bin/docker

say() { echo "dockerd-up: $*" >&2; }

# The exec root holds containerd's socket (exec/containerd/containerd.sock): keep it under 108 bytes.
if ((${#statedir} > 70)); then
  say "STATEDIR path too long for the daemon's unix sockets: $statedir"
  exit 1
fi

if ! [[ -x /usr/sbin/dockerd && -x $docker ]]; then
  say "dockerd missing: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends docker.io >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends docker.io >&2
  fi
fi
for bin in /usr/sbin/dockerd "$docker" containerd runc ip iptables python3; do
  if ! command -v "$bin" >/dev/null; then
    say "$bin missing (docker.io, containerd, runc, iproute2, iptables and python3 are needed)"
    exit 1
  fi
done

dockerd_cmd() { echo "dockerd --config-file $config"; }

# The pid of the dockerd of this STATEDIR, if one runs.
running_pid() {
  local pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$(dockerd_cmd)" || return 1
  echo "$pid"
}

answers() { "$docker" -H "unix://$sock" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if pid=$(running_pid) && answers; then
  say "dockerd already running for $statedir (pid $pid)"
else
  # Per-instance network identity, derived from the state directory's path.
  hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
  bridge=mkd${hash}
  claim=/run/mini-kubelet-e2e/dockerd-$hash.subnet
  mkdir -p "$statedir"/{data,exec} /run/mini-kubelet-e2e
  # A 10.x.y.0/24 that overlaps no route of this host and no other instance's subnet (free_subnet of
  # lib/cni-net.sh); the searches start at different offsets so that the two subnets of one instance differ.
  if [[ -f $marker ]] && grep -q '^SUBNET=' "$marker"; then
    subnet=$(sed -n 's/^SUBNET=//p' "$marker") # a restart keeps its subnet
  else
    subnet=$(free_subnet "$hash" 7919)
  fi
  echo "$subnet" >"$claim"
  # The CNI network of the Docker adapter's CNI mode: its own bridge and subnet.
  cni_bridge=mkc${hash}
  cni_network=mk-dkr-$hash
  cni_claim=/run/mini-kubelet-e2e/dockerd-cni-$hash.subnet
  if [[ -f $marker ]] && grep -q '^CNI_SUBNET=' "$marker"; then
    cni_subnet=$(sed -n 's/^CNI_SUBNET=//p' "$marker")
  else
    cni_subnet=$(free_subnet "$hash" 15511)
  fi
  echo "$cni_subnet" >"$cni_claim"
  gateway=${subnet%.0/24}.1/24
  cat >"$marker" <<EOF
# written by e2e/scripts/dockerd-up.sh: dockerd-down.sh only touches directories holding this file
BRIDGE=$bridge
SUBNET=$subnet
CNI_BRIDGE=$cni_bridge
CNI_NETWORK=$cni_network
CNI_SUBNET=$cni_subnet
CNI_CONF_DIR=$statedir/cni/net.d
CNI_CACHE_DIR=$statedir/cni/cache
EOF
  mkdir -p "$statedir"/cni/{net.d,ipam,cache}
  write_bridge_conflist "$statedir/cni/net.d/10-$cni_network.conflist" "$cni_network" "$cni_bridge" \
    "$cni_subnet" "$statedir/cni/ipam"
  echo '{}' >"$config"
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
  fi
  ip addr replace "$gateway" dev "$bridge"
  ip link set "$bridge" up
  # Forwarding on before dockerd starts: a dockerd that has to enable it itself also turns the
  # FORWARD chain's policy to DROP, which would cut off the CNI bridges of other runtimes here.
  if [[ $(cat /proc/sys/net/ipv4/ip_forward) != 1 ]]; then
    echo 1 >/proc/sys/net/ipv4/ip_forward
  fi

  say "starting dockerd: state $statedir, log $log (bridge $bridge, subnet $subnet; CNI network $cni_network: bridge $cni_bridge, subnet $cni_subnet)"
  started=$(date +%s%N)
  # setsid: its own session, so a ctrl-c in the caller's terminal reaches the caller's EXIT trap
  # (which runs dockerd-down.sh) rather than killing dockerd halfway.
  setsid /usr/sbin/dockerd --config-file "$config" \
    --host "unix://$sock" \
    --pidfile "$pidfile" \
    --data-root "$statedir/data" \
    --exec-root "$statedir/exec" \
    --bridge "$bridge" \
    --iptables=true \
    --ip-masq=true \
    --exec-opt native.cgroupdriver=cgroupfs \
    --storage-driver overlay2 \
    --log-driver json-file \
    --userland-proxy=true \
    </dev/null >>"$log" 2>&1 &
  launched=$!
  for _ in $(seq 1 300); do
    if answers; then
      break
    fi
    if ! kill -0 "$launched" 2>/dev/null; then
      say "dockerd exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if ! answers; then
    say "dockerd did not answer on $sock within 30 s; last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  say "dockerd $("$docker" -H "unix://$sock" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})') up (pid $(<"$pidfile")) in $((($(date +%s%N) - started) / 1000000)) ms"
fi

if ! [[ -f $imagedir/pause.tar && -f $imagedir/busybox.tar ]]; then
  "$here/build-images.sh" "$imagedir" >&2
fi
# `docker load` of this engine (20.10) reads docker-archive only: rewrite each one-layer OCI archive
# (index.json -> manifest -> config + layers) as manifest.json + <config>.json + <layer>/layer.tar,
# tagged with the index's io.containerd.image.name annotation, streamed straight into docker load.
for image in pause busybox; do
  python3 - "$imagedir/$image.tar" <<'PY' | "$docker" -H "unix://$sock" load >&2
import gzip, io, json, sys, tarfile

src = tarfile.open(sys.argv[1])
read = lambda name: src.extractfile(name).read()
blob = lambda digest: read("blobs/" + digest.replace(":", "/"))
index = json.loads(read("index.json"))
out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|")


def add(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))


entries = []
for desc in index["manifests"]:
    ref = desc.get("annotations", {}).get("io.containerd.image.name")
    manifest = json.loads(blob(desc["digest"]))
    config_digest = manifest["config"]["digest"]
    config_name = config_digest.split(":", 1)[1] + ".json"
    add(config_name, blob(config_digest))
    layers = []
    for layer in manifest["layers"]:
        data = blob(layer["digest"])
        if layer["mediaType"].endswith("gzip"):
            data = gzip.decompress(data)
        name = layer["digest"].split(":", 1)[1] + "/layer.tar"
        add(name, data)
        layers.append(name)
    entries.append({"Config": config_name, "RepoTags": [ref] if ref else [], "Layers": layers})
add("manifest.json", json.dumps(entries).encode())
out.close()
PY
done
say "images: $("$docker" -H "unix://$sock" images --format '{{.Repository}}:{{.Tag}}' | tr '\n' ' ')"
echo "unix://$sock"
