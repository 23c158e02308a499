#!/usr/bin/env bash
# The project's single test entry point (CI calls it through .ci/run): installs the Debian packages the
# tests need, builds the local OCI images (cached in target/e2e-images), starts a private containerd and
# a private dockerd and a private image registry (basic auth, on loopback) in fresh temporary directories,
# builds (or takes from its cache outside the repo) and starts a real Kubernetes control plane on loopback
# (controlplane-up.sh: etcd, kube-apiserver with Node,RBAC and NodeRestriction, scheduler,
# controller-manager), builds the workspace's binaries and runs `cargo test --workspace` (the agent
# suites on containerd, their cluster tests against the real control plane; the Docker adapter's CRI
# tests on dockerd),
# then the agent suites a second time on the built-in Docker adapter in its CNI mode (the CNI network
# dockerd-up.sh writes; MK_E2E_DOCKER_NETWORK=bridge runs them on Docker's bridge), and a third time
# on containerd 2.x built from its Go module (containerd2-up.sh; the agent follows its container
# events there), and a fourth time on cri-o 1.36 built from its Go module (crio-up.sh); and the CRI
# validation suite (critest, built from cri-tools' Go module) against the Docker adapter, with the
# specs it may skip listed in e2e/critest-skips/docker.txt, and against the in-memory fake runtime
# (runtimes/fake, served by the fake-cri binary) with what an in-memory runtime cannot pass listed in
# e2e/critest-skips/fake.txt. Extra arguments go to the first `cargo test` only and skip the reruns (e.g.
# `e2e/run-tests.sh -p mk-e2e -- --nocapture`).
# Both daemons are torn down on any exit, failure or ctrl-c included; the script exits with cargo's
# status.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts=$repo/e2e/scripts
step() { echo "==> $*"; }
# A clean checkout gains nothing from incremental compilation and it doubles the build's disk use.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The test agents run with `evictionHard: nodefs.available: 1Gi` (e2e/src/lib.rs): on a fuller disk
# they report DiskPressure, the node is tainted and the tests' pods are refused. Say so up front.
disk_report() {
  local free_kib
  free_kib=$(df -Pk "$repo" | awk 'NR == 2 { print $4 }')
  step "disk: $((free_kib / 1024)) MiB free under $repo ($1)"
  if [ "$free_kib" -lt $((2 * 1024 * 1024)) ]; then
    echo "warning: less than 2 GiB free: the test agents' nodes will report DiskPressure" \
      "(evictionHard nodefs.available 1Gi) and refuse pods" >&2
  fi
}
disk_report "before the build"

step "installing dependencies (e2e/scripts/install-deps.sh)"
"$scripts/install-deps.sh"

imagedir=${CARGO_TARGET_DIR:-$repo/target}/e2e-images
step "building local images into $imagedir"
"$scripts/build-images.sh" "$imagedir"

# Short paths: the daemons' sockets live inside them (unix socket paths are limited to 108 bytes).
statedir=$(mktemp -d /tmp/mk-e2e.XXXXXX)
dockerdir=$(mktemp -d /tmp/mk-dkr.XXXXXX)
regdir=$(mktemp -d /tmp/mk-reg.XXXXXX)
cpdir=$(mktemp -d /tmp/mk-cp.XXXXXX)
statedir2=$(mktemp -d /tmp/mk-c2.XXXXXX)
criodir=$(mktemp -d /tmp/mk-crio.XXXXXX)
# shellcheck disable=SC2317 # called by the traps below
teardown() {
  local status=$?
  trap - EXIT INT TERM
  step "stopping the control plane (e2e/scripts/controlplane-down.sh $cpdir)"
  "$scripts/controlplane-down.sh" "$cpdir" || echo "warning: controlplane-down.sh failed" >&2
  step "stopping the registry (e2e/scripts/registry-down.sh $regdir)"
  "$scripts/registry-down.sh" "$regdir" || echo "warning: registry-down.sh failed" >&2
  step "stopping dockerd (e2e/scripts/dockerd-down.sh $dockerdir)"
  "$scripts/dockerd-down.sh" "$dockerdir" || echo "warning: dockerd-down.sh failed" >&2
  step "stopping cri-o (e2e/scripts/crio-down.sh $criodir)"
  "$scripts/crio-down.sh" "$criodir" || echo "warning: crio-down.sh failed" >&2
  step "stopping containerd 2.x (e2e/scripts/containerd2-down.sh $statedir2)"
  "$scripts/containerd2-down.sh" "$statedir2" || echo "warning: containerd2-down.sh failed" >&2
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
step "starting a private dockerd in $dockerdir"
MK_E2E_DOCKER_ENDPOINT=$("$scripts/dockerd-up.sh" "$dockerdir" "$imagedir" | tail -n 1)
export MK_E2E_DOCKER_ENDPOINT
step "starting a private registry with basic auth in $regdir"
MK_E2E_REGISTRY=$("$scripts/registry-up.sh" "$regdir" "$imagedir" | tail -n 1)
export MK_E2E_REGISTRY
step "building (or reusing) containerd 2.x and runc, and starting them in $statedir2"
endpoint2=$("$scripts/containerd2-up.sh" "$statedir2" "$imagedir" | tail -n 1)
step "building (or reusing) and starting a real control plane in $cpdir"
"$scripts/controlplane-up.sh" "$cpdir" >/dev/null
export MK_E2E_CONTROLPLANE=$cpdir
step "MK_E2E_CRI_ENDPOINT=$MK_E2E_CRI_ENDPOINT MK_E2E_DOCKER_ENDPOINT=$MK_E2E_DOCKER_ENDPOINT MK_E2E_REGISTRY=$MK_E2E_REGISTRY MK_E2E_CONTROLPLANE=$MK_E2E_CONTROLPLANE"

step "building (or reusing) crictl and critest from cri-tools' Go module (e2e/scripts/cri-tools-build.sh)"
MK_E2E_CRICTL=$("$scripts/cri-tools-build.sh" | tail -n 1)/crictl
export MK_E2E_CRICTL

step "cargo build --workspace --bins"
cargo build --workspace --bins
disk_report "after the build"

step "cargo test --workspace $* (the agent suites on containerd)"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
step "cargo test exited with status $status"

if (($# == 0)); then
  step "the Helm chart: helm lint, template, server-side dry run and the rendered agent joining the control plane (e2e/scripts/chart-test.sh)"
  chart_status=0
  "$scripts/chart-test.sh" "$cpdir" || chart_status=$?
  step "chart test exited with status $chart_status"
  ((status == 0)) && status=$chart_status

  step "the agent suites again, on the built-in Docker adapter (MK_E2E_RUNTIME=docker)"
  docker_status=0
  MK_E2E_RUNTIME=docker cargo test -p mk-e2e --no-fail-fast \
    --test static_pods --test cluster --test pod_spec --test images --test kubelet_port \
    --test log_rotation --test stats_summary --test container_gc --test cgroups --test cli || docker_status=$?
  step "cargo test on Docker exited with status $docker_status"
  ((status == 0)) && status=$docker_status

  step "the CRI validation suite (critest) on the Docker adapter, alone on a private dockerd (e2e/scripts/critest.sh)"
  critest_status=0
  "$scripts/critest.sh" docker "$repo/e2e/critest-skips/docker.txt" || critest_status=$?
  step "critest on Docker exited with status $critest_status"
  ((status == 0)) && status=$critest_status

  step "the CRI validation suite (critest) on the in-memory fake runtime (e2e/scripts/critest.sh fake)"
  fake_critest_status=0
  "$scripts/critest.sh" fake "$repo/e2e/critest-skips/fake.txt" || fake_critest_status=$?
  step "critest on the fake runtime exited with status $fake_critest_status"
  ((status == 0)) && status=$fake_critest_status

  step "the agent suites again, on containerd 2.x ($endpoint2)"
  c2_status=0
  MK_E2E_CRI_ENDPOINT=$endpoint2 cargo test -p mk-e2e --no-fail-fast \
    --test static_pods --test cluster --test pod_spec --test images --test kubelet_port \
    --test log_rotation --test container_gc --test cri_containerd --test cgroups || c2_status=$?
  step "cargo test on containerd 2.x exited with status $c2_status"
  ((status == 0)) && status=$c2_status

  step "building (or reusing) cri-o and starting it in $criodir"
  crio_status=0
  crio_endpoint=$("$scripts/crio-up.sh" "$criodir" "$imagedir" | tail -n 1) || crio_status=$?
  if ((crio_status == 0)); then
    step "the agent suites again, on cri-o ($crio_endpoint)"
    MK_E2E_RUNTIME=crio MK_E2E_CRI_ENDPOINT=$crio_endpoint cargo test -p mk-e2e --no-fail-fast \
      --test static_pods --test cluster --test pod_spec --test images --test kubelet_port || crio_status=$?
  fi
  step "cargo test on cri-o exited with status $crio_status"
  ((status == 0)) && status=$crio_status
fi
exit "$status"
