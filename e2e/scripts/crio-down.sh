#!/usr/bin/env bash
# Stops the private cri-o that crio-up.sh started for STATEDIR and removes every trace of it, so that
# up/down/up works repeatedly: the daemon (TERM, then KILL after 10 s), the containers left in its runc
# root and their conmon monitors, every mount under STATEDIR (overlay rootfs, shm, the namespaces pinns
# pinned), the iptables rules/chains the CNI plugins made for its network and cri-o's own hostport
# chains (KUBE-HP-*/CRIO-MASQ-*) that lead into its subnet, its bridge, its subnet claim, and finally
# STATEDIR itself. Safe to run when nothing is running, when STATEDIR is already gone, or empty.
# Usage: crio-down.sh STATEDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 STATEDIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/cni-net.sh
source "$here/lib/cni-net.sh"
say() { echo "crio-down: $*" >&2; }
if ! [[ -d $1 ]]; then
  say "$1 does not exist: nothing to do"
  exit 0
fi
statedir=$(cd "$1" && pwd -P)
config=$statedir/crio.conf
if [[ $statedir != / ]] && [[ -z $(ls -A "$statedir") ]]; then
  # An empty folder (a caller's mktemp -d, crio-up.sh never ran in it).
  rmdir "$statedir"
  say "removed the empty $statedir"
  exit 0
fi
if [[ $statedir == / ]] || ! [[ -f $config ]] || ! grep -q 'crio-up.sh' "$config"; then
  say "$statedir was not made by crio-up.sh (no crio.conf of ours): refusing to touch it"
  exit 1
fi
hash=$(printf '%s' "$statedir" | sha256sum | cut -c1-8)
bridge=mk${hash}
netname=mk-e2e-$hash
subnet=""
if [[ -f $statedir/network.env ]]; then
  bridge=$(sed -n 's/^BRIDGE=//p' "$statedir/network.env")
  netname=$(sed -n 's/^NETWORK=//p' "$statedir/network.env")
  subnet=$(sed -n 's/^SUBNET=//p' "$statedir/network.env")
fi

# shellcheck source-path=SCRIPTDIR source=lib/teardown.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/teardown.sh"

# 1. Its supervisor (lib/crio-supervise.sh, which restarts crio after a crash of its own), so that
#    it does not start crio again; then the daemon: TERM, then KILL after 10 s. cri-o leaves its
#    containers running when it stops.
supervised=0
if [[ -f $statedir/supervisor.pid ]]; then
  supervisor=$(<"$statedir/supervisor.pid")
  if [[ $supervisor =~ ^[0-9]+$ ]] && alive "$supervisor" &&
    { tr '\0' ' ' <"/proc/$supervisor/cmdline"; } 2>/dev/null | grep -qF "crio-supervise.sh $statedir "; then
    say "stopping crio's supervisor pid $supervisor (and crio with it)"
    stop_pids 100 "$supervisor"
    supervised=1
  fi
fi
daemon=$(pids_matching "crio --config $config" | head -n 1 || true)
if [[ -z $daemon && -f $statedir/crio.pid ]]; then
  daemon=$(<"$statedir/crio.pid")
  alive "$daemon" || daemon=""
fi
if [[ -n $daemon ]]; then
  say "stopping crio pid $daemon"
  stop_pids 100 "$daemon"
elif ((!supervised)) && [[ -f $statedir/crio.log && ! -f $statedir/crashes.log ]]; then
  say "crio was not running (it ended before this script); last lines of $statedir/crio.log:"
  tail -n 40 "$statedir/crio.log" >&2
fi
# What the supervisor saw: crio's crashes during the run (each restarted), or how it ended.
if [[ -s $statedir/crashes.log ]]; then
  say "crio ended while it was in use; from $statedir/crashes.log:"
  cat "$statedir/crashes.log" >&2
fi

# 2. Containers still running in our runc root, then their conmon monitors (whose command lines name
#    paths under STATEDIR), and the cgroup directories the containers leave behind.
cgroups=()
if [[ -d $statedir/runc ]]; then
  for id in $(runc --root "$statedir/runc" list -q 2>/dev/null || true); do
    say "removing leftover container $id"
    pid=$(runc --root "$statedir/runc" state "$id" 2>/dev/null | sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p')
    if [[ -n $pid && -r /proc/$pid/cgroup ]]; then
      cgroups+=("$(awk -F: '$2 == "memory" { print $3 }' "/proc/$pid/cgroup")")
    fi
    runc --root "$statedir/runc" kill -a "$id" KILL >/dev/null 2>&1 || true
    runc --root "$statedir/runc" delete -f "$id" >/dev/null 2>&1 || true
  done
fi
monitors=$(pids_matching /conmon " $statedir/" || true)
if [[ -n $monitors ]]; then
  say "killing conmon monitors: $(echo "$monitors" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one pid per word
  kill -KILL $monitors 2>/dev/null || true
  sleep 0.2
fi
# The per-container cgroups (cgroupfs: <parent>/crio-<id>, conmon's crio-conmon-<id>) of what was left.
for cg in "${cgroups[@]}"; do
  [[ $cg == */crio-* ]] || continue
  for dir in /sys/fs/cgroup/*/"${cg#/}" /sys/fs/cgroup/*/"$(dirname "${cg#/}")"/crio-conmon-"${cg##*/crio-}"; do
    if [[ -d $dir ]]; then rmdir "$dir" 2>/dev/null || true; fi
  done
done

# 3. Everything mounted under STATEDIR, deepest first (overlay rootfs, shm, pinned namespaces).
unmount_under "$statedir"

# 4. iptables: the rules the bridge (ipMasq) and portmap plugins tagged with our network's name and the
#    per-container chains they jump to (remove_cni_iptables, lib/cni-net.sh); then cri-o's own hostport
#    chains (its iptables mode, used when there is no `nft`) whose DNAT leads into our subnet. The shared
#    KUBE-HOSTPORTS / CRIO-HOSTPORTS-MASQ chains stay, like the CNI-HOSTPORT-* ones.
remove_cni_iptables "$netname" crio-down
if [[ -n $subnet ]] && command -v iptables-save >/dev/null; then
  python3 - "$subnet" <<'PY'
import ipaddress, shlex, subprocess, sys
net = ipaddress.ip_network(sys.argv[1])
dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
rules = [shlex.split(l) for l in dump.splitlines() if l.startswith("-A ")]
ours = set()
for words in rules:
    chain = words[1]
    if not chain.startswith("KUBE-HP-") or "--to-destination" not in words:
        continue
    dest = words[words.index("--to-destination") + 1].rsplit(":", 1)[0].strip("[]")
    try:
        if ipaddress.ip_address(dest) in net:
            ours.add(chain)
    except ValueError:
        pass
# Each KUBE-HP-<hash> has a CRIO-MASQ-<same hash>.
ours |= {"CRIO-MASQ-" + c[len("KUBE-HP-"):] for c in ours}
for words in rules:
    target = words[words.index("-j") + 1] if "-j" in words else ""
    if target in ours and words[1] not in ours:
        subprocess.run(["iptables", "-w", "-t", "nat", "-D"] + words[1:], capture_output=True)
for chain in sorted(ours):
    subprocess.run(["iptables", "-w", "-t", "nat", "-F", chain], capture_output=True)
    subprocess.run(["iptables", "-w", "-t", "nat", "-X", chain], capture_output=True)
if ours:
    print(f"crio-down: removed iptables nat chains {' '.join(sorted(ours))}", file=sys.stderr)
PY
fi

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
