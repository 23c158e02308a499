#!/usr/bin/env bash
# Builds cri-o (crio) from its upstream Go module, named as a tool by the Go module e2e/crio (cri-o
# v1.36.3: the newest the Go module proxy serves; 1.37.x is refused), and pinns, cri-o's small C helper
# that pins namespaces, from the C sources inside the same module (in Go's module cache), unless builds
# of the same sources are cached (lib/go-build.sh: outside the repository). Prints the folder that holds
# both as the last line on stdout. crio needs cgo and libseccomp-dev (build tag seccomp); the other tags
# drop what needs C libraries not installed here (btrfs, devicemapper, gpgme, ostree). pinns needs a C
# compiler and a static libc (gcc, libc6-dev). Progress goes to stderr.
#
#   e2e/scripts/crio-build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/go-build.sh
source "$here/lib/go-build.sh"

tags=containers_image_ostree_stub,containers_image_openpgp,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,seccomp
CGO_ENABLED=1 go_build crio crio github.com/cri-o/cri-o/cmd/crio -tags "$tags" >/dev/null
dir=$(go_build_dir crio)

if ! [[ -x $dir/pinns ]]; then
  go=$(go_build_go)
  src=$(cd "$go_build_e2e/crio" && "$go" list -m -f '{{.Dir}}' github.com/cri-o/cri-o)/pinns/src
  go_build_say "building $dir/pinns from $src"
  started=$(date +%s)
  # As cri-o's pinns/Makefile does: static, so it runs in any mount namespace.
  cc -std=c99 -Os -O3 -Wall -Wextra -static -o "$dir/pinns.tmp" "$src"/*.c
  strip -s "$dir/pinns.tmp"
  mv "$dir/pinns.tmp" "$dir/pinns"
  go_build_say "built crio/pinns in $(($(date +%s) - started)) s"
fi
echo "$dir"
