#!/usr/bin/env bash
# containerd-up.sh on containerd 2.x: builds (or takes from its cache) containerd 2.x and runc from
# their Go modules (containerd2-build.sh) and starts a private instance of them exactly as
# containerd-up.sh does for Debian's containerd (same layout under STATEDIR, schema version 3
# configuration). Prints the CRI endpoint last; stop it with containerd2-down.sh STATEDIR.
# Usage: containerd2-up.sh STATEDIR [IMAGEDIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MK_CONTAINERD_BIN_DIR=$("$here/containerd2-build.sh" | tail -n 1)
export MK_CONTAINERD_BIN_DIR
exec "$here/containerd-up.sh" "$@"
