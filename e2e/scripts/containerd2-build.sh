#!/usr/bin/env bash
# Builds containerd 2.x (containerd, containerd-shim-runc-v2, ctr) and runc from their upstream Go
# modules, named as tools by the Go module e2e/containerd2 (containerd v2.4, runc v1.5 with seccomp),
# unless builds of the same sources are cached (lib/go-build.sh: outside the repository), and prints
# the folder that holds all four as the last line on stdout. runc needs cgo and libseccomp-dev
# (install-deps.sh). Progress goes to stderr.
#
#   e2e/scripts/containerd2-build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/go-build.sh
source "$here/lib/go-build.sh"

go_build containerd2 containerd github.com/containerd/containerd/v2/cmd/containerd >/dev/null
go_build containerd2 containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 >/dev/null
go_build containerd2 ctr github.com/containerd/containerd/v2/cmd/ctr >/dev/null
CGO_ENABLED=1 go_build containerd2 runc github.com/opencontainers/runc -tags seccomp >/dev/null
go_build_dir containerd2
