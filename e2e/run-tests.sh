#!/usr/bin/env bash
# The project's single test entry point (CI calls it through .ci/run): installs the Debian packages the
# tests need, builds the local OCI images (cached in target/e2e-images), starts a private containerd in a
# fresh temporary directory, then builds the workspace's binaries and runs `cargo test --workspace` with
# MK_E2E_CRI_ENDPOINT and MK_E2E_IMAGE_DIR exported. Extra arguments go to `cargo test`
# (e.g. `e2e/run-tests.sh -p mk-e2e -- --nocapture`). containerd is torn down on any exit, failure or
# ctrl-c included; the script exits with cargo's status.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
step() { echo "==> $*"; }

step "installing dependencies (e2e/scripts/install-deps.sh)"
"$scripts/install-deps.sh"

imagedir=${CARGO_TARGET_DIR:-$repo/target}/e2e-images
step "building local images into $imagedir"
"$scripts/build-images.sh" "$imagedir"

# Short path: the containerd socket lives inside it (unix socket paths are limited to 108 bytes).
statedir=$(mktemp -d /tmp/mk-e2e.XXXXXX)
# shellcheck disable=SC2317 # called by the traps below
teardown() {
  local status=$?
  trap - EXIT INT TERM
  step "stopping containerd (e2e/scripts/containerd-down.sh $statedir)"
  "$scripts/containerd-down.sh" "$statedir" || echo "warning: containerd-down.sh failed" >&2
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting a private containerd in $statedir"
endpoint=$("$scripts/containerd-up.sh" "$statedir" "$imagedir" | tail -n 1)
export MK_E2E_CRI_ENDPOINT=$endpoint
export MK_E2E_IMAGE_DIR=$imagedir
step "MK_E2E_CRI_ENDPOINT=$MK_E2E_CRI_ENDPOINT MK_E2E_IMAGE_DIR=$MK_E2E_IMAGE_DIR"

step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace $*"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
step "cargo test exited with status $status"
exit "$status"
