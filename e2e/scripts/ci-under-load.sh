#!/usr/bin/env bash
# Runs the whole CI (`CI=true bash .ci/run`) RUNS times in a row (default 5), each time from a fresh
# `git clone` of this repository's committed HEAD into a new temporary directory, with a CPU hog beside
# it: `stress-ng --cpu N` (N = the number of cores; Debian's stress-ng is apt-get installed when
# missing), or, when it cannot be had, one `while :; do :; done` busy loop per core.
#
#   e2e/scripts/ci-under-load.sh [RUNS]
#
# It stops at the first failing run and prints that run's log path and its tail. The hog is killed
# on any exit (failure and ctrl-c included). One summary line per run (exit status, wall time, log),
# then a final `N passed, M failed` line; exits 0 only when every run passed.
#
# Environment:
#   MK_LOAD_TARGET_DIR  a CARGO_TARGET_DIR shared by every run (warm builds after the first, so five
#                       runs fit in a working session). Unset (the default): every run gets a fresh
#                       target directory inside its clone, i.e. a truly cold build, as a fresh CI
#                       machine does.
#   MK_LOAD_LOG_DIR     where the logs go (default: a new /tmp/mk-load.XXXXXX); printed at the start.
#   MK_LOAD_HOGS        how many CPUs to hog (default: all, `nproc`).
#   MK_LOAD_KEEP=1      keep the clones (default: each passing run's clone is removed).
set -euo pipefail

runs=${1:-5}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
head=$(git -C "$repo" rev-parse HEAD)
logdir=${MK_LOAD_LOG_DIR:-$(mktemp -d /tmp/mk-load.XXXXXX)}
mkdir -p "$logdir"
hogs=${MK_LOAD_HOGS:-$(nproc)}
summary=$logdir/summary.txt
: >"$summary"
echo "==> logs in $logdir (HEAD $head, $runs run(s), $hogs CPU hog(s), target dir: ${MK_LOAD_TARGET_DIR:-fresh per run})"

hog_pids=()
clone=""
# shellcheck disable=SC2317 # called by the traps below
stop_hog() {
  local pid
  for pid in "${hog_pids[@]}"; do
    # The hog runs in its own process group (setsid): end the whole group, then reap it.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${hog_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  hog_pids=()
}
# shellcheck disable=SC2317
on_exit() {
  local status=$?
  trap - EXIT INT TERM
  stop_hog
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v stress-ng >/dev/null 2>&1; then
  echo "==> stress-ng missing: apt-get install stress-ng"
  if ! { apt-get install -y --no-install-recommends stress-ng >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends stress-ng >/dev/null 2>&1; }; }; then
    echo "==> stress-ng could not be installed: busy loops instead"
  fi
fi

start_hog() {
  if command -v stress-ng >/dev/null 2>&1; then
    # Longer than any run; killed when the run ends.
    setsid stress-ng --cpu "$hogs" --timeout 6h --quiet >"$logdir/hog.log" 2>&1 &
    hog_pids+=("$!")
  else
    local i
    for ((i = 0; i < hogs; i++)); do
      setsid bash -c 'while :; do :; done' &
      hog_pids+=("$!")
    done
  fi
}

passed=0
failed=0
for ((run = 1; run <= runs; run++)); do
  clone=$(mktemp -d /tmp/mk-load-clone.XXXXXX)
  log=$logdir/run-$run.log
  git clone --quiet --no-hardlinks "$repo" "$clone/repo"
  git -C "$clone/repo" checkout --quiet --detach "$head"
  target=${MK_LOAD_TARGET_DIR:-$clone/repo/target}
  start_hog
  started=$(date +%s)
  status=0
  (cd "$clone/repo" && CI=true CARGO_TARGET_DIR=$target bash .ci/run) >"$log" 2>&1 || status=$?
  took=$(($(date +%s) - started))
  stop_hog
  line=$(printf 'run %d/%d: %s (exit %d) in %dm%02ds, log %s' "$run" "$runs" \
    "$( ((status == 0)) && echo passed || echo FAILED)" "$status" $((took / 60)) $((took % 60)) "$log")
  echo "$line" | tee -a "$summary"
  if ((status != 0)); then
    failed=$((failed + 1))
    echo "==> run $run failed; the clone is kept at $clone/repo; the tail of $log:"
    tail -n 60 "$log"
    break
  fi
  passed=$((passed + 1))
  if [[ ${MK_LOAD_KEEP:-0} != 1 ]]; then
    rm -rf "$clone"
  fi
done
echo "$passed passed, $failed failed" | tee -a "$summary"
((failed == 0))
