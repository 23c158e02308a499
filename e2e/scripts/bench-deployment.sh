#!/usr/bin/env bash
# Prints, for the agent joined to a real control plane (controlplane-up.sh) on a private containerd,
# with release builds: agent start -> node Ready, and for Deployments of each given size (default 30
# and 100 replicas) each pod's creation -> Running time (median, p99) next to the raw CRI floor for as
# many pods started at once, and the agent's resident memory with them running.
#   e2e/scripts/bench-deployment.sh [N...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
target=${CARGO_TARGET_DIR:-$repo/target}
"$scripts/install-deps.sh"
"$scripts/build-images.sh" "$target/e2e-images" >/dev/null
cargo build --release --bin mini-kubelet --bin bench-deployment
statedir=$(mktemp -d /tmp/mk-bench.XXXXXX)
cpdir=$(mktemp -d /tmp/mk-bcp.XXXXXX)
cleanup() {
  "$scripts/controlplane-down.sh" "$cpdir" >/dev/null 2>&1 || true
  "$scripts/containerd-down.sh" "$statedir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
MK_E2E_CRI_ENDPOINT=$("$scripts/containerd-up.sh" "$statedir" "$target/e2e-images" 2>/dev/null | tail -n 1)
export MK_E2E_CRI_ENDPOINT
"$scripts/controlplane-up.sh" "$cpdir" >/dev/null
export MK_E2E_CONTROLPLANE=$cpdir
export MK_E2E_AGENT_BIN=$target/release/mini-kubelet
"$target/release/bench-deployment" "$@"
