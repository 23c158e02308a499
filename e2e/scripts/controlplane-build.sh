#!/usr/bin/env bash
# Builds the control plane the cluster tests meet — kube-apiserver, kube-scheduler,
# kube-controller-manager and kubectl from their upstream Go packages, one multi-call binary
# (e2e/controlplane) — and metrics-server (sigs.k8s.io/metrics-server, the Go module in
# e2e/metrics-server: it serves `kubectl top` from the nodes' /metrics/resource), unless builds of the
# same sources are cached, and prints the control plane binary's path; metrics-server is beside it.
#
#   e2e/scripts/controlplane-build.sh
#
# Each binary is kept in $MK_CACHE_DIR (default ~/.cache/mini-kubelet)/<name>/<sources hash>/, the Go
# module and build caches in Go's defaults (~/go/pkg/mod, ~/.cache/go-build): all outside the
# repository, so a rebuild after a clean checkout is quick. Go is taken from PATH or /usr/local/go.
# Progress goes to stderr; the control plane binary's path is the last line on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/go-build.sh
source "$here/lib/go-build.sh"

metrics_server=$(go_build metrics-server metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server)
# The version the binaries report (the API server's /version, `kubectl version`, what a kubelet's
# version skew is judged against), stamped as Kubernetes' own builds do (hack/lib/version.sh): the
# version of k8s.io/kubernetes in the module's go.mod.
version=$(sed -n 's|^[[:space:]]*k8s.io/kubernetes \(v[0-9][^[:space:]]*\)$|\1|p' \
  "$here/../controlplane/go.mod" | head -n 1)
if ! [[ $version =~ ^v([0-9]+)\.([0-9]+)\. ]]; then
  echo "controlplane-build: no k8s.io/kubernetes version in e2e/controlplane/go.mod" >&2
  exit 1
fi
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=${BASH_REMATCH[1]}"
  ldflags+=" -X $pkg.gitMinor=${BASH_REMATCH[2]} -X $pkg.gitTreeState=clean"
done
bin=$(go_build controlplane controlplane . "-ldflags=$ldflags")
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  ln -sfn controlplane "$(dirname "$bin")/$name"
done
ln -sfn "$metrics_server" "$(dirname "$bin")/metrics-server"
echo "$bin"
