#!/usr/bin/env bash
# Builds cri-tools' crictl and critest (the CRI validation suite) from their upstream Go module,
# sigs.k8s.io/cri-tools, named as tools by the Go module e2e/cri-tools (never vendored), unless builds of
# the same sources are cached (lib/go-build.sh: outside the repository), and prints the folder that holds
# both as the last line on stdout. critest is a test binary upstream (package main of _test.go files,
# built with `go test -c`); crictl a plain `go build`. Progress and build times go to stderr.
#
#   e2e/scripts/cri-tools-build.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/go-build.sh
source "$here/lib/go-build.sh"

go_build cri-tools crictl sigs.k8s.io/cri-tools/cmd/crictl >/dev/null
go_test_build cri-tools critest sigs.k8s.io/cri-tools/cmd/critest >/dev/null
go_build_dir cri-tools
