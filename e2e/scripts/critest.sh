#!/usr/bin/env bash
# Runs the CRI validation suite (critest of cri-tools v1.37, built by cri-tools-build.sh from its Go
# module) against a CRI endpoint, skipping the specs of a committed skip list, and prints its summary
# as a table. Fails when any spec that is not on the skip list fails (so a new failure fails CI), or
# when critest does not run to its end.
#
#   critest.sh docker SKIPLIST [CRITEST FLAG...]
#       The built-in Docker adapter, served alone (`mini-kubelet dockershim`, the binary of
#       $MK_E2E_AGENT_BIN, else target/debug/mini-kubelet) on a private dockerd of its own
#       (dockerd-up.sh), in CNI mode on the network dockerd-up.sh writes (MK_E2E_DOCKER_NETWORK=bridge:
#       on Docker's bridge). The images critest pulls by their upstream names (registry.k8s.io/...,
#       gcr.io/k8s-staging-cri-tools/..., k8s.gcr.io/pause) come from a private loopback registry: the
#       stand-ins of critest-images.sh are pushed into a distribution registry on 127.0.0.1 (TLS with
#       a CA made here, no auth), and dockerd reaches it under the upstream names through a small
#       CONNECT proxy on loopback (HTTPS_PROXY) that tunnels those hosts, and no other, to it;
#       dockerd trusts the CA through SSL_CERT_FILE. Nothing on the host outside STATEDIR is
#       configured. Everything is torn down on exit.
#   critest.sh endpoint ENDPOINT SKIPLIST [CRITEST FLAG...]
#       Any CRI endpoint (unix://...) that already has or can pull the images by their upstream
#       names (e.g. an in-memory runtime, which "pulls" anything).
#   critest.sh fake SKIPLIST [CRITEST FLAG...]
#       The in-memory runtime of runtimes/fake, served by the fake-cri binary of mk-e2e
#       ($MK_E2E_FAKE_CRI_BIN, else target/debug/fake-cri) on a socket in the state directory. It
#       "pulls" any image, so no registry is needed; it runs no processes (see
#       e2e/critest-skips/fake.txt for what that rules out).
#
# SKIPLIST: one Go regular expression a line, matched against the full spec text (`-ginkgo.skip`);
# `#` starts a comment (give each entry its reason above it); blank lines are ignored.
# Output: critest's own report on stderr, its log in $MK_E2E_CRITEST_LOG (default a file in the state
# directory, shown on failure); the summary table on stdout:
#   critest RUNTIME: ran R of T specs in S s: P passed, F failed, K skipped (SKIPLIST)
# Environment: MK_E2E_IMAGE_DIR (images of build-images.sh, default <repo>/target/e2e-images),
# MK_E2E_KEEP=1 leaves the state directory (and its daemons) behind for a look.
set -euo pipefail

usage() {
  echo "usage: $0 docker|fake SKIPLIST [CRITEST FLAG...] | $0 endpoint ENDPOINT SKIPLIST [CRITEST FLAG...]" >&2
  exit 2
}
(($# >= 2)) || usage
mode=$1
shift
case $mode in
  docker | fake) endpoint="" ;;
  endpoint)
    (($# >= 2)) || usage
    endpoint=$1
    shift
    ;;
  *) usage ;;
esac
skiplist=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
imagedir=${MK_E2E_IMAGE_DIR:-$repo/target/e2e-images}
say() { echo "critest: $*" >&2; }

if ! [[ -f $skiplist ]]; then
  say "skip list $skiplist missing"
  exit 1
fi
# The skip list as one regular expression.
skip=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^[[:space:]]*$/d' "$skiplist" | paste -sd '|')
skip_count=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$skiplist" | wc -l)

tools=$("$here/cri-tools-build.sh" | tail -n 1)
critest=$tools/critest

# Short path: dockerd's and the adapter's sockets live inside it.
statedir=$(mktemp -d /tmp/mk-crit.XXXXXX)
log=${MK_E2E_CRITEST_LOG:-$statedir/critest.log}
pids=()
dockerdir=$statedir/dockerd
# shellcheck disable=SC2317 # called by the traps below
teardown() {
  local status=$? pid
  trap - EXIT INT TERM
  if [[ ${MK_E2E_KEEP:-} == 1 ]]; then
    say "MK_E2E_KEEP=1: leaving $statedir (pids ${pids[*]:-none}) behind"
    exit "$status"
  fi
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ -d $dockerdir ]]; then
    "$here/dockerd-down.sh" "$dockerdir" >&2 || say "warning: dockerd-down.sh failed"
  fi
  if [[ $log == "$statedir"/* && $status != 0 && -f $log ]]; then
    say "last lines of $log:"
    tail -n 40 "$log" >&2
  fi
  rm -rf "$statedir"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits up to $2 tenths of a second for the command $3... to succeed while pid $1 lives.
wait_for() {
  local pid=$1 limit=$2
  shift 2
  for _ in $(seq 1 "$limit"); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  "$@"
}

if [[ $mode == docker ]]; then
  runtime=docker
  agent=${MK_E2E_AGENT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/mini-kubelet}
  if ! [[ -x $agent ]]; then
    say "$agent missing: build it first (cargo build -p mini-kubelet, or set MK_E2E_AGENT_BIN)"
    exit 1
  fi
  for bin in docker-registry skopeo openssl python3 curl; do
    if ! command -v "$bin" >/dev/null; then
      say "$bin missing (install-deps.sh / registry-up.sh install docker-registry and skopeo)"
      exit 1
    fi
  done
  layout=$("$here/critest-images.sh" "$statedir" "$imagedir" | tail -n 1)

  # 1. A CA, and the registry's certificate for the upstream names it stands in for.
  hosts=(registry.k8s.io k8s.gcr.io gcr.io)
  pki=$statedir/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=mini-kubelet critest CA" -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  mkdir -p "$pki/ca"
  cp "$pki/ca.crt" "$pki/ca/ca.crt" # a folder of CA certificates only, for skopeo
  san="DNS:localhost,IP:127.0.0.1"
  for host in "${hosts[@]}"; do san+=",DNS:$host"; done
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=registry.k8s.io" -keyout "$pki/registry.key" -out "$pki/registry.csr" 2>/dev/null
  openssl x509 -req -in "$pki/registry.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -out "$pki/registry.crt" \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san") 2>/dev/null

  # 2. The registry: loopback, TLS, no auth, a port of the kernel's choosing.
  regdir=$statedir/registry
  mkdir -p "$regdir/data"
  cat >"$regdir/config.yml" <<EOF
# critest's image registry (written by e2e/scripts/critest.sh).
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $regdir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: $(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  tls:
    certificate: $pki/registry.crt
    key: $pki/registry.key
EOF
  setsid docker-registry serve "$regdir/config.yml" </dev/null >"$regdir/registry.log" 2>&1 &
  pids+=($!)
  registry_address() { sed -n 's/.*msg="listening on \(127\.0\.0\.1:[0-9][0-9]*\), tls".*/\1/p' "$regdir/registry.log" | tail -n 1; }
  # shellcheck disable=SC2317 # called through wait_for
  registry_answers() {
    local address
    address=$(registry_address)
    [[ -n $address ]] && curl -sf --max-time 2 --cacert "$pki/ca.crt" "https://$address/v2/" >/dev/null
  }
  if ! wait_for "${pids[-1]}" 150 registry_answers; then
    say "the registry did not answer; its log:"
    tail -n 30 "$regdir/registry.log" >&2
    exit 1
  fi
  registry=$(registry_address)
  say "registry on $registry; pushing the images of $layout"
  while read -r ref name; do
    skopeo --insecure-policy copy --quiet --dest-cert-dir "$pki/ca" \
      "oci:$layout:$ref" "docker://$registry/$name" >&2
  done <"$layout/refs.txt"

  # 3. The CONNECT proxy: the upstream registries' hosts (port 443) lead to the registry; anything
  #    else is refused, so no pull leaves the machine.
  python3 - "$registry" "$statedir/proxy.port" "${hosts[@]}" >"$statedir/proxy.log" 2>&1 <<'PY' &
import asyncio, sys

registry, portfile, hosts = sys.argv[1], sys.argv[2], set(sys.argv[3:])
reg_host, reg_port = registry.rsplit(":", 1)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    host, _, port = (words[1] if len(words) == 3 else "").rpartition(":")
    if words[:1] != ["CONNECT"] or host not in hosts or port != "443":
        print(f"refused: {' '.join(words)}", flush=True)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    try:
        up_reader, up_writer = await asyncio.open_connection(reg_host, int(reg_port))
    except OSError as e:
        print(f"registry unreachable: {e}", flush=True)
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        writer.close()
        return
    print(f"tunnel: {host}:{port} -> {registry}", flush=True)
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    import os
    os.replace(portfile + ".tmp", portfile)
    async with server:
        await server.serve_forever()


asyncio.run(main())
PY
  pids+=($!)
  if ! wait_for "${pids[-1]}" 100 test -s "$statedir/proxy.port"; then
    say "the proxy did not start:"
    cat "$statedir/proxy.log" >&2
    exit 1
  fi
  proxy=http://127.0.0.1:$(<"$statedir/proxy.port")
  say "CONNECT proxy on $proxy for ${hosts[*]}"

  # 4. dockerd, with the proxy and the CA in its environment (nothing else sees them).
  mkdir -p "$dockerdir"
  docker_endpoint=$(HTTPS_PROXY=$proxy HTTP_PROXY=$proxy NO_PROXY=localhost,127.0.0.1 \
    SSL_CERT_FILE=$pki/ca.crt "$here/dockerd-up.sh" "$dockerdir" "$imagedir" | tail -n 1)

  # 5. The adapter alone on its socket.
  endpoint=unix://$statedir/cri.sock
  network=(--network-plugin bridge)
  if [[ ${MK_E2E_DOCKER_NETWORK:-cni} != bridge ]]; then
    network=(--network-plugin cni
      --cni-conf-dir "$(sed -n 's/^CNI_CONF_DIR=//p' "$dockerdir/dockerd-up.env")"
      --cni-cache-dir "$(sed -n 's/^CNI_CACHE_DIR=//p' "$dockerdir/dockerd-up.env")"
      --cni-bin-dir /usr/lib/cni)
  fi
  # The pause image dockerd-up.sh loaded (the adapter's default is registry.k8s.io's).
  setsid "$agent" dockershim --listen "$endpoint" --docker-endpoint "$docker_endpoint" "${network[@]}" \
    --pod-infra-container-image mini-kubelet.local/pause:3.10 \
    </dev/null >"$statedir/dockershim.log" 2>&1 &
  pids+=($!)
  if ! wait_for "${pids[-1]}" 300 test -S "$statedir/cri.sock"; then
    say "the Docker adapter did not serve $endpoint; its log:"
    tail -n 30 "$statedir/dockershim.log" >&2
    exit 1
  fi
  say "Docker adapter ($agent dockershim ${network[*]}) on $endpoint, dockerd $docker_endpoint"
elif [[ $mode == fake ]]; then
  runtime=fake
  fake=${MK_E2E_FAKE_CRI_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/fake-cri}
  if ! [[ -x $fake ]]; then
    say "$fake missing: build it first (cargo build -p mk-e2e --bin fake-cri, or set MK_E2E_FAKE_CRI_BIN)"
    exit 1
  fi
  endpoint=unix://$statedir/cri.sock
  setsid "$fake" "$statedir/cri.sock" </dev/null >"$statedir/fake-cri.log" 2>&1 &
  pids+=($!)
  if ! wait_for "${pids[-1]}" 100 test -S "$statedir/cri.sock"; then
    say "the fake runtime did not serve $endpoint; its log:"
    tail -n 30 "$statedir/fake-cri.log" >&2
    exit 1
  fi
  say "fake runtime ($fake) on $endpoint"
else
  runtime=$endpoint
fi

# 6. critest itself, serially (its default), with the report kept for the summary.
# critest's HostIpc specs make 1 MiB SysV shared memory segments on the host (ipcmk) and leave them:
# the new ones of that size, unattached, whose creator is gone, are removed afterwards.
shm_ids() { awk 'NR > 1 { print $2 }' /proc/sysvipc/shm 2>/dev/null | sort; }
shm_before=$(shm_ids)
say "running $critest against $endpoint (skipping $skip_count spec pattern(s) of $skiplist)"
started=$(date +%s)
status=0
skip_flags=()
# (An empty -ginkgo.skip would be a regular expression matching, and skipping, every spec.)
[[ -z $skip ]] || skip_flags=(-ginkgo.skip "$skip")
"$critest" -runtime-endpoint "$endpoint" -image-endpoint "$endpoint" \
  "${skip_flags[@]}" -ginkgo.no-color "$@" >"$log" 2>&1 || status=$?
elapsed=$(($(date +%s) - started))
while read -r id size cpid nattch; do
  if [[ $size == 1048576 && $nattch == 0 ]] && ! kill -0 "$cpid" 2>/dev/null &&
    ! grep -qx "$id" <<<"$shm_before"; then
    ipcrm -m "$id" 2>/dev/null || true
  fi
done < <(awk 'NR > 1 { print $2, $4, $5, $7 }' /proc/sysvipc/shm 2>/dev/null)
grep -E '^\[(FAIL|PANICKED)\]|^  \[FAIL\]|Ran [0-9]+ of [0-9]+ Specs|Passed \||^(SUCCESS|FAIL)!' "$log" >&2 || true

ran=$(sed -n 's/^Ran \([0-9]*\) of \([0-9]*\) Specs.*/\1 \2/p' "$log" | tail -n 1)
counts=$(grep -oE '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$log" |
  tail -n 1 | awk '{ print $1, $4, $7, $10 }')
if [[ -z $ran || -z $counts ]]; then
  say "critest did not print its summary (exit status $status)"
  ((status != 0)) || status=1
  exit "$status"
fi
read -r run total <<<"$ran"
read -r passed failed pending skipped <<<"$counts"
echo "critest $runtime: ran $run of $total specs in $elapsed s: $passed passed, $failed failed, $skipped skipped, $pending pending ($skiplist)"
if ((status != 0 || failed != 0)); then
  say "FAILED: specs not on $skiplist failed (see the [FAIL] lines above and $log)"
  ((status != 0)) || status=1
fi
exit "$status"
