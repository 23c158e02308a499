#!/usr/bin/env bash
# Stops the private dockerd that dockerd-up.sh started for STATEDIR and removes every trace of it, so
# that up/down/up works repeatedly: its containers (removed through the API while it still answers)
# and the empty pod cgroup directories runc leaves behind for them,
# the daemon (TERM, then KILL after 20 s), its own containerd, shims, runc containers and
# docker-proxy processes left behind, every mount under STATEDIR (overlay2 rootfs, shm, netns, the
# data root's own bind mount), the iptables rules naming its bridge or subnet (and Docker's shared
# chains when no other dockerd runs), the iptables rules and chains the CNI plugins tagged with its CNI
# network's name (pods of the adapter's CNI mode removed without a CNI DEL), its bridges, its subnet
# claims, and finally STATEDIR itself. Safe
# to run when nothing is running or when STATEDIR is already gone.
# Usage: dockerd-down.sh STATEDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 STATEDIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/cni-net.sh
source "$here/lib/cni-net.sh"
say() { echo "dockerd-down: $*" >&2; }
if ! [[ -d $1 ]]; then
  say "$1 does not exist: nothing to do"
  exit 0
fi
statedir=$(cd "$1" && pwd -P)
if [[ -z $(ls -A "$statedir") ]]; then
  # dockerd-up.sh never ran in it (the caller made the directory, then failed earlier).
  rmdir "$statedir"
  say "removed empty $statedir"
  exit 0
fi
marker=$statedir/dockerd-up.env
sock=$statedir/docker.sock
config=$statedir/daemon.json
docker=/usr/bin/docker
if [[ $statedir == / ]] || ! [[ -f $marker ]] || ! grep -q 'dockerd-up.sh' "$marker"; then
  say "$statedir was not made by dockerd-up.sh (no dockerd-up.env of ours): refusing to touch it"
  exit 1
fi
hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
bridge=$(sed -n 's/^BRIDGE=//p' "$marker")
subnet=$(sed -n 's/^SUBNET=//p' "$marker")
bridge=${bridge:-mkd$hash}
cni_bridge=$(sed -n 's/^CNI_BRIDGE=//p' "$marker")
cni_network=$(sed -n 's/^CNI_NETWORK=//p' "$marker")

# shellcheck source-path=SCRIPTDIR source=lib/teardown.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/teardown.sh"

# 1. Its containers, while the daemon still answers (faster than letting dockerd stop each one);
#    their cgroup parents (a pod's /kubepods/<qos>/pod<uid>) are noted to be removed below.
cgroup_parents=""
if [[ -S $sock ]] && ids=$(timeout 10 "$docker" -H "unix://$sock" ps -aq 2>/dev/null) && [[ -n $ids ]]; then
  say "removing $(echo "$ids" | wc -l) container(s)"
  # shellcheck disable=SC2086 # one id per word
  cgroup_parents=$(timeout 10 "$docker" -H "unix://$sock" inspect --format '{{.HostConfig.CgroupParent}}' $ids 2>/dev/null | sort -u || true)
  # shellcheck disable=SC2086
  timeout 60 "$docker" -H "unix://$sock" rm -f -v $ids >/dev/null 2>&1 || say "docker rm -f failed"
fi

# 2. The daemon, then whatever of its family survived it: its containerd, shims, docker-proxy.
daemon=$(pids_matching "dockerd --config-file $config" | head -n 1 || true)
if [[ -z $daemon && -f $statedir/docker.pid ]]; then
  daemon=$(<"$statedir/docker.pid")
  [[ $daemon =~ ^[0-9]+$ ]] && alive "$daemon" || daemon=""
fi
if [[ -n $daemon ]]; then
  say "stopping dockerd pid $daemon"
  stop_pids 200 "$daemon"
fi
if [[ -d $statedir/exec ]]; then
  for root in "$statedir"/exec/runtime-runc/*/; do
    [[ -d $root ]] || continue
    for id in $(runc --root "$root" list -q 2>/dev/null || true); do
      say "removing leftover container $id"
      runc --root "$root" kill -a "$id" KILL >/dev/null 2>&1 || true
      runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
    done
  done
fi
# shellcheck disable=SC2046 # one pid per word
stop_pids 50 $(pids_matching containerd-shim "-address $statedir/exec/" || true)
# shellcheck disable=SC2046
stop_pids 50 $(pids_matching "containerd --config $statedir/exec/" || true)
if [[ -n $subnet ]]; then
  # shellcheck disable=SC2046
  stop_pids 20 $(pids_matching docker-proxy "-container-ip ${subnet%.0/24}." || true)
fi

# runc leaves a pod's cgroup directory behind on cgroup v1: remove the empty ones of our containers
# (only the pod level, never the shared /kubepods/<qos> above it).
for parent in $cgroup_parents; do
  [[ $parent == /*/* && $parent != *..* ]] || continue
  for dir in /sys/fs/cgroup"$parent" /sys/fs/cgroup/*"$parent"; do
    if [[ -d $dir ]]; then rmdir "$dir" 2>/dev/null || true; fi
  done
done

# 3. Everything mounted under STATEDIR, deepest first.
unmount_under "$statedir"

# 4. iptables: every rule naming our bridge or subnet; Docker's own chains (shared by every dockerd on
#    this host) only when no other dockerd runs.
if command -v iptables-save >/dev/null; then
  others=""
  for comm in /proc/[0-9]*/comm; do
    pid=${comm#/proc/}
    pid=${pid%/comm}
    if [[ $(cat "$comm" 2>/dev/null) == dockerd ]] && alive "$pid"; then others+=" $pid"; fi
  done
  python3 - "$bridge" "$subnet" "${others:+others}" <<'PY'
import shlex, subprocess, sys
bridge, subnet, others = sys.argv[1], sys.argv[2], sys.argv[3] == "others"
docker_chains = ("DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2")
removed = 0
for table in ("nat", "filter"):
    dump = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
    rules = [shlex.split(l) for l in dump.splitlines() if l.startswith("-A ")]
    chains = {l.split()[0][1:] for l in dump.splitlines() if l.startswith(":")}
    for words in rules:
        ours = bridge in words or (subnet and any(w.startswith(subnet) for w in words))
        if not ours and not others:
            # Docker's jumps into its own chains and the chains' default RETURNs.
            target = words[words.index("-j") + 1] if "-j" in words else ""
            ours = target in docker_chains or (words[1] in docker_chains and words[2:] == ["-j", "RETURN"])
        if ours:
            if subprocess.run(["iptables", "-w", "-t", table, "-D"] + words[1:],
                              capture_output=True).returncode == 0:
                removed += 1
    if not others:
        for chain in docker_chains:
            if chain in chains:
                subprocess.run(["iptables", "-w", "-t", table, "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-w", "-t", table, "-X", chain], capture_output=True)
if removed:
    print(f"dockerd-down: removed {removed} iptables rule(s)", file=sys.stderr)
PY
fi
# The rules the bridge (ipMasq) and portmap plugins tagged with the CNI network's name, and the
# per-container chains they jump to (remove_cni_iptables of lib/cni-net.sh, as containerd-down.sh does).
if [[ -n $cni_network ]]; then
  remove_cni_iptables "$cni_network" dockerd-down
fi

# 5. The bridge, the subnet claim, and the state directory.
for b in "$bridge" $cni_bridge; do
  if ip link show "$b" >/dev/null 2>&1; then
    say "deleting bridge $b"
    ip link delete "$b" || true
  fi
done
rm -f "/run/mini-kubelet-e2e/dockerd-$hash.subnet" "/run/mini-kubelet-e2e/dockerd-cni-$hash.subnet"
if awk -v p="$statedir/" 'index($5, p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
  say "mounts remain under $statedir:"
  awk -v p="$statedir/" 'index($5, p) == 1 { print "  " $5 }' /proc/self/mountinfo >&2
  exit 1
fi
rm -rf "$statedir"
say "removed $statedir"
