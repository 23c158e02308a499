#!/usr/bin/env bash
# Stops the private containerd that containerd-up.sh started for STATEDIR and removes every trace of it,
# so that up/down/up works repeatedly: the daemon (TERM, then KILL after 10 s), the containers left in
# its runc Root and their shims, every mount under STATEDIR (rootfs overlays, sandbox shm, netns), the
# iptables rules/chains the CNI plugins made for its network, its bridge, its shim sockets in
# /run/containerd/s, its subnet claim, and finally STATEDIR itself. Safe to run when nothing is running
# or when STATEDIR is already gone.
# Usage: containerd-down.sh STATEDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 STATEDIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/cni-net.sh
source "$here/lib/cni-net.sh"
say() { echo "containerd-down: $*" >&2; }
if ! [[ -d $1 ]]; then
  say "$1 does not exist: nothing to do"
  exit 0
fi
statedir=$(cd "$1" && pwd -P)
config=$statedir/config.toml
sock=$statedir/containerd.sock
if [[ $statedir == / ]] || ! [[ -f $config ]] || ! grep -q 'containerd-up.sh' "$config"; then
  say "$statedir was not made by containerd-up.sh (no config.toml of ours): refusing to touch it"
  exit 1
fi
hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
bridge=mk${hash}
netname=mk-e2e-$hash
if [[ -f $statedir/network.env ]]; then
  bridge=$(sed -n 's/^BRIDGE=//p' "$statedir/network.env")
  netname=$(sed -n 's/^NETWORK=//p' "$statedir/network.env")
fi

# shellcheck source-path=SCRIPTDIR source=lib/teardown.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/teardown.sh"

# 1. The daemon: TERM, then KILL after 10 s.
daemon=$(pids_matching "containerd --config $config" | head -n 1 || true)
if [[ -z $daemon && -f $statedir/containerd.pid ]]; then
  daemon=$(<"$statedir/containerd.pid")
  alive "$daemon" || daemon=""
fi
if [[ -n $daemon ]]; then
  say "stopping containerd pid $daemon"
  stop_pids 100 "$daemon"
fi

# 2. Containers still running in our runc Root (one directory per containerd namespace), then shims.
if [[ -d $statedir/runc ]]; then
  for root in "$statedir"/runc/*/; do
    [[ -d $root ]] || continue
    for id in $(runc --root "$root" list -q 2>/dev/null || true); do
      say "removing leftover container $id"
      runc --root "$root" kill -a "$id" KILL >/dev/null 2>&1 || true
      runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
    done
  done
fi
shims=$(pids_matching containerd-shim "-address $sock" || true)
if [[ -n $shims ]]; then
  say "killing shims: $(echo "$shims" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one pid per word
  kill -KILL $shims 2>/dev/null || true
  sleep 0.2
fi
# Shim sockets live in /run/containerd/s/; each task bundle records its own in an `address` file.
for address in "$statedir"/state/io.containerd.runtime.v2.task/*/*/address; do
  [[ -f $address ]] || continue
  socket=$(sed -e 's|^unix://||' "$address")
  if [[ $socket == /run/containerd/s/* ]]; then rm -f "$socket"; fi
done

# 3. Everything mounted under STATEDIR, deepest first (rootfs overlays, shm, netns bind mounts).
unmount_under "$statedir"

# 4. iptables: the rules the bridge (ipMasq) and portmap plugins tagged with our network's name, and the
#    per-container chains they jump to (remove_cni_iptables, lib/cni-net.sh).
remove_cni_iptables "$netname" containerd-down

# 5. The bridge, the subnet claim, and the state directory.
if ip link show "$bridge" >/dev/null 2>&1; then
  say "deleting bridge $bridge"
  ip link delete "$bridge" || true
fi
rm -f "/run/mini-kubelet-e2e/$hash.subnet"
if awk -v p="$statedir/" 'index($5, p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
  say "mounts remain under $statedir:"
  awk -v p="$statedir/" 'index($5, p) == 1 { print "  " $5 }' /proc/self/mountinfo >&2
  exit 1
fi
rm -rf "$statedir"
say "removed $statedir"
