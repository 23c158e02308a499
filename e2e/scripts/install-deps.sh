#!/usr/bin/env bash
# Installs the Debian packages the agent's tests need: a real containerd + runc,
# the CNI plugins, the pieces the local images are built from (busybox-static,
# catatonit; python3 writes the OCI archives), protoc for the CRI protos, and etcd + openssl
# + curl for the control plane (controlplane-up.sh; its Go components are built from source), and
# what the runtimes built from their Go modules need: cgo with libseccomp for runc and cri-o
# (containerd2-build.sh, crio-build.sh), conmon for cri-o.
# Idempotent: skips apt when everything is already there.
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins busybox-static catatonit protobuf-compiler iproute2 iptables docker-registry skopeo apache2-utils python3 etcd-server openssl curl
  gcc libc6-dev pkg-config libseccomp-dev conmon)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
