#!/usr/bin/env bash
# Builds the control plane the cluster tests meet — kube-apiserver, kube-scheduler,
# kube-controller-manager and kubectl from their upstream Go packages, one multi-call binary
# (e2e/controlplane) — unless a build of the same sources is cached, and prints its path.
#
#   e2e/scripts/controlplane-build.sh
#
# The binary is kept in $MK_CACHE_DIR (default ~/.cache/mini-kubelet)/controlplane/<sources hash>/, the
# Go module and build caches in Go's defaults (~/go/pkg/mod, ~/.cache/go-build): all outside the
# repository, so a rebuild after a clean checkout is quick. Go is taken from PATH or /usr/local/go.
# Progress goes to stderr; the binary's path is the last line on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
module=$(cd "$here/../controlplane" && pwd)
say() { echo "controlplane-build: $*" >&2; }

go=$(command -v go || true)
[[ -n $go ]] || go=/usr/local/go/bin/go
if ! [[ -x $go ]]; then
  say "no Go toolchain (not in PATH, not at /usr/local/go): it is needed to build the control plane"
  exit 1
fi
cache=${MK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mini-kubelet}/controlplane
hash=$(cat "$module/go.mod" "$module/go.sum" "$module"/*.go | sha256sum | cut -c1-16)
bin=$cache/$hash/controlplane
if [[ -x $bin ]]; then
  say "cached: $bin"
else
  mkdir -p "$cache/$hash"
  say "building $bin with $("$go" version) (cold: ~15 min on 2 cores; later builds reuse Go's cache)"
  started=$(date +%s)
  (cd "$module" && "$go" build -buildvcs=false -trimpath -ldflags='-s -w' -o "$bin.tmp" .)
  mv "$bin.tmp" "$bin"
  say "built in $(($(date +%s) - started)) s"
  # Older builds of other sources are of no further use.
  find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" -exec rm -rf {} +
fi
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  ln -sfn controlplane "$cache/$hash/$name"
done
echo "$bin"
