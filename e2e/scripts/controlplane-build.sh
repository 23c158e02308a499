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
shopt -s nullglob # e2e/metrics-server has no .go file of its own

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
e2e=$(cd "$here/.." && pwd)
say() { echo "controlplane-build: $*" >&2; }

go=$(command -v go || true)
[[ -n $go ]] || go=/usr/local/go/bin/go
if ! [[ -x $go ]]; then
  say "no Go toolchain (not in PATH, not at /usr/local/go): it is needed to build the control plane"
  exit 1
fi
cache=${MK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mini-kubelet}

# build NAME PACKAGE: builds PACKAGE of the Go module e2e/NAME into $cache/NAME/<hash>/NAME unless
# it is there, and prints that path.
build() {
  local name=$1 package=$2 module=$e2e/$1 hash bin started
  hash=$(cat "$module/go.mod" "$module/go.sum" "$module"/*.go | sha256sum | cut -c1-16)
  bin=$cache/$name/$hash/$name
  if [[ -x $bin ]]; then
    say "cached: $bin"
  else
    mkdir -p "$cache/$name/$hash"
    say "building $bin with $("$go" version) (cold: minutes on 2 cores; later builds reuse Go's cache)"
    started=$(date +%s)
    (cd "$module" && "$go" build -buildvcs=false -trimpath -ldflags='-s -w' -o "$bin.tmp" "$package")
    mv "$bin.tmp" "$bin"
    say "built $name in $(($(date +%s) - started)) s"
    # Older builds of other sources are of no further use.
    find "$cache/$name" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" -exec rm -rf {} +
  fi
  echo "$bin"
}

metrics_server=$(build metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server)
bin=$(build controlplane .)
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  ln -sfn controlplane "$(dirname "$bin")/$name"
done
ln -sfn "$metrics_server" "$(dirname "$bin")/metrics-server"
echo "$bin"
