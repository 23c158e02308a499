#!/usr/bin/env bash
# Prints the time from pod creation to Running seen through a watch (median, p99 of N pods created at
# once; default 30) and the API requests per minute of the idle node, against the stand-in API server
# and a private containerd, with release builds.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
target=${CARGO_TARGET_DIR:-$repo/target}
"$scripts/install-deps.sh"
"$scripts/build-images.sh" "$target/e2e-images" >/dev/null
cargo build --release --bin mini-kubelet --bin bench-api-start
statedir=$(mktemp -d /tmp/mk-bench.XXXXXX)
trap '"$scripts/containerd-down.sh" "$statedir" >/dev/null 2>&1 || true' EXIT
MK_E2E_CRI_ENDPOINT=$("$scripts/containerd-up.sh" "$statedir" "$target/e2e-images" 2>/dev/null | tail -n 1)
export MK_E2E_CRI_ENDPOINT
export MK_E2E_AGENT_BIN=$target/release/mini-kubelet
"$target/release/bench-api-start" "${1:-30}" "${2:-60}"
