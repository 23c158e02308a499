# shellcheck shell=bash
# The CNI networking pieces that containerd-up.sh/dockerd-up.sh and containerd-down.sh/dockerd-down.sh
# share; sourced by them (it sets no options and runs nothing by itself). Every instance claims its
# subnets in /run/mini-kubelet-e2e/*.subnet (one 10.x.y.0/24 a file), which free_subnet consults.
#   free_subnet HASH OFFSET                                 print a free 10.x.y.0/24
#   write_bridge_conflist FILE NAME BRIDGE SUBNET IPAM_DIR  write a bridge+portmap CNI conflist
#   remove_cni_iptables NETWORK_NAME LOG_PREFIX             delete the iptables rules/chains of a network

# free_subnet HASH OFFSET: prints a 10.x.y.0/24 (x from 100 to 199) that overlaps no route of this
# host (any routing table) and no subnet claimed in /run/mini-kubelet-e2e/*.subnet. The search starts
# at candidate number HASH (hex, e.g. the 8-digit hash of STATEDIR) + OFFSET (decimal), so that
# instances, and the several subnets of one instance, start apart. It claims nothing: the caller
# writes the claim file. Fails when none of the 25600 candidates is free.
free_subnet() {
  python3 - "$1" "$2" <<'PY'
import glob, ipaddress, subprocess, sys
h = int(sys.argv[1], 16) + int(sys.argv[2])
taken = []
for line in subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True,
                           text=True).stdout.splitlines():
    words = line.split()
    if not words:
        continue
    dst = words[0]
    if dst in ("default", "broadcast", "local", "unreachable", "prohibit", "blackhole") and len(words) > 1:
        dst = words[1]
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError:
        continue
    if net.prefixlen > 0:
        taken.append(net)
for claim in glob.glob("/run/mini-kubelet-e2e/*.subnet"):  # other instances' subnets
    try:
        taken.append(ipaddress.ip_network(open(claim).read().strip()))
    except (OSError, ValueError):
        pass
for i in range(25600):
    n = (h + i) % 25600
    cand = ipaddress.ip_network(f"10.{100 + n // 256}.{n % 256}.0/24")
    if not any(cand.overlaps(t) for t in taken):
        print(cand)
        break
else:
    sys.exit("no free 10.x.y.0/24 subnet")
PY
}

# write_bridge_conflist FILE NAME BRIDGE SUBNET IPAM_DIR: writes FILE, the CNI network NAME: the
# bridge plugin on BRIDGE (gateway, masquerading, hairpin) with host-local IPAM over SUBNET (data in
# IPAM_DIR, default route through the bridge), then portmap for hostPorts.
write_bridge_conflist() {
  cat >"$1" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$2",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$3",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$4" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$5"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

# remove_cni_iptables NETWORK_NAME LOG_PREFIX: deletes, in the nat and filter tables, the rules the
# bridge (ipMasq) and portmap plugins tagged with NETWORK_NAME (comment `name: "NETWORK_NAME" id: ...`)
# and the per-container CNI-* chains they jump to (never the shared CNI-HOSTPORT-* ones), reporting the
# chains removed on stderr as "LOG_PREFIX: removed ...". Does nothing without iptables-save.
remove_cni_iptables() {
  command -v iptables-save >/dev/null || return 0
  python3 - "$1" "$2" <<'PY'
import shlex, subprocess, sys
tag, prefix = f'name: "{sys.argv[1]}" id: ', sys.argv[2]
for table in ("nat", "filter"):
    dump = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
    chains = set()
    for line in dump.splitlines():
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        comment = words[words.index("--comment") + 1] if "--comment" in words else ""
        if tag not in comment:
            continue
        target = words[words.index("-j") + 1] if "-j" in words else ""
        if target.startswith("CNI-") and not target.startswith("CNI-HOSTPORT-"):
            chains.add(target)
        subprocess.run(["iptables", "-w", "-t", table, "-D"] + words[1:], capture_output=True)
    for chain in sorted(chains):
        subprocess.run(["iptables", "-w", "-t", table, "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-t", table, "-X", chain], capture_output=True)
    if chains:
        print(f"{prefix}: removed iptables {table} chains {' '.join(sorted(chains))}", file=sys.stderr)
PY
}
