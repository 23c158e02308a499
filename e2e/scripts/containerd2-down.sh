#!/usr/bin/env bash
# Stops what containerd2-up.sh STATEDIR started (the same as containerd-down.sh: daemon, shims,
# containers, network), with containerd 2.x's own ctr and runc first in PATH when they are built.
# Usage: containerd2-down.sh STATEDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/go-build.sh
source "$here/lib/go-build.sh"
bindir=$(go_build_dir containerd2)
if [[ -x $bindir/ctr ]]; then
  export PATH=$bindir:$PATH
fi
exec "$here/containerd-down.sh" "$@"
