# shellcheck shell=bash
# Cached builds of the Go programs the tests meet (control plane, metrics-server, containerd 2.x,
# runc, cri-tools), each named as a tool or package of a small Go module in e2e/<module>/.
#
#   source lib/go-build.sh
#   go_build MODULE BINARY PACKAGE [GO BUILD FLAG...]        # prints the binary's path
#   go_test_build MODULE BINARY PACKAGE [GO BUILD FLAG...]   # the same for `go test -c` (a test binary,
#                                                            # e.g. cri-tools' critest)
#
# The binary is kept in $MK_CACHE_DIR (default ~/.cache/mini-kubelet)/MODULE/<hash>/BINARY, where the
# hash covers the module's go.mod, go.sum and .go files; older hashes of the module are removed. The Go
# module and build caches are Go's defaults (~/go/pkg/mod, ~/.cache/go-build): all outside the
# repository, so a rebuild after a clean checkout is quick. Go is taken from PATH or /usr/local/go.
# Progress goes to stderr.

go_build_e2e=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
go_build_cache=${MK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mini-kubelet}

go_build_say() { echo "go-build: $*" >&2; }

# The go command, or a clear failure.
go_build_go() {
  local go
  go=$(command -v go || true)
  [[ -n $go ]] || go=/usr/local/go/bin/go
  if ! [[ -x $go ]]; then
    go_build_say "no Go toolchain (not in PATH, not at /usr/local/go): it is needed to build the tests' Go components"
    return 1
  fi
  echo "$go"
}

# The hash directory of MODULE's current sources.
go_build_dir() {
  local module=$go_build_e2e/$1 hash
  hash=$(shopt -s nullglob; cat "$module/go.mod" "$module/go.sum" "$module"/*.go | sha256sum | cut -c1-16)
  echo "$go_build_cache/$1/$hash"
}

# go_build_cached MODULE BINARY PACKAGE GO-SUBCOMMAND... -- [GO BUILD FLAG...]: builds PACKAGE of MODULE with
# `go GO-SUBCOMMAND... <common flags> FLAGS -o BINARY PACKAGE` unless the binary of the module's current
# sources is cached, and prints its path.
go_build_cached() {
  local module=$1 binary=$2 package=$3 dir bin go started
  shift 3
  local command=()
  while (($#)) && [[ $1 != -- ]]; do
    command+=("$1")
    shift
  done
  shift # --
  dir=$(go_build_dir "$module")
  bin=$dir/$binary
  if [[ -x $bin ]]; then
    go_build_say "cached: $bin"
  else
    go=$(go_build_go)
    mkdir -p "$dir"
    go_build_say "building $bin with $("$go" version) (cold: minutes on 2 cores; later builds reuse Go's cache)"
    started=$(date +%s)
    (cd "$go_build_e2e/$module" && "$go" "${command[@]}" -buildvcs=false -trimpath -ldflags='-s -w' "$@" -o "$bin.tmp" "$package")
    mv "$bin.tmp" "$bin"
    go_build_say "built $module/$binary in $(($(date +%s) - started)) s"
    # Builds of older sources of the module are of no further use.
    find "$go_build_cache/$module" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$dir")" -exec rm -rf {} +
  fi
  echo "$bin"
}

go_build() {
  local module=$1 binary=$2 package=$3
  shift 3
  go_build_cached "$module" "$binary" "$package" build -- "$@"
}

# A test binary (`go test -c`), for programs that upstream builds that way (cri-tools' critest: package
# main of _test.go files only).
go_test_build() {
  local module=$1 binary=$2 package=$3
  shift 3
  go_build_cached "$module" "$binary" "$package" test -c -- "$@"
}
