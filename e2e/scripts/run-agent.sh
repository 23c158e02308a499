#!/usr/bin/env bash
# Runs mini-kubelet on this machine with its default set-up: static pods (manifests/static-pods) on a
# private containerd started by the same scripts the tests use. The read-only port (10255) serves
# /pods and /metrics. Ctrl-C stops the agent and then containerd (and with it the pods).
#
# With MK_CONTROLPLANE=DIR it also joins a real control plane on loopback (etcd, kube-apiserver,
# scheduler, controller-manager: e2e/scripts/controlplane-up.sh DIR, built from Go on first use and
# left running for the next time; stop it with controlplane-down.sh DIR), as a kubeadm node does:
# TLS bootstrap with the cluster's bootstrap token, client certificate rotation, the API server's
# client CA on the kubelet port. The admin kubeconfig is printed; kubectl is next to the binaries.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
statedir=${MK_STATE_DIR:-/tmp/mini-kubelet-containerd}
manifests=${MK_MANIFESTS:-$repo/manifests/static-pods}

"$scripts/install-deps.sh"
imagedir=${CARGO_TARGET_DIR:-$repo/target}/e2e-images
"$scripts/build-images.sh" "$imagedir"
cargo build --release --bin mini-kubelet

endpoint=$("$scripts/containerd-up.sh" "$statedir" "$imagedir" | tail -n 1)
# shellcheck disable=SC2317 # called by the trap
teardown() {
  trap - EXIT INT TERM
  "$scripts/containerd-down.sh" "$statedir" || true
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

join=()
if [[ -n ${MK_CONTROLPLANE:-} ]]; then
  admin=$("$scripts/controlplane-up.sh" "$MK_CONTROLPLANE" | tail -n 1)
  # shellcheck disable=SC1091 # written by controlplane-up.sh
  source "$MK_CONTROLPLANE/controlplane.env"
  join=(--bootstrap-kubeconfig "$BOOTSTRAP_KUBECONFIG" --kubeconfig /var/lib/mini-kubelet/kubelet.conf
    --rotate-certificates --client-ca-file "$CA_CERT" --node-ip 127.0.0.1)
  echo "==> joining $SERVER; admin kubeconfig: $admin"
  echo "==> try: $KUBECTL --kubeconfig $admin get nodes,pods -A -o wide"
fi
echo "==> mini-kubelet on $endpoint; static pods from $manifests"
echo "==> try: curl -s localhost:10255/pods | head; curl -s localhost:10255/metrics | grep kubelet_running"
"${CARGO_TARGET_DIR:-$repo/target}/release/mini-kubelet" \
  --config "$repo/manifests/kubelet-config.yaml" \
  --container-runtime-endpoint "$endpoint" \
  --pod-manifest-path "$manifests" \
  --root-dir /var/lib/mini-kubelet "${join[@]}" "$@"
