#!/usr/bin/env bash
# Starts a PRIVATE image registry (Debian's docker-registry, i.e. distribution 2.8; never the system
# one) for the image-pull tests, and pushes the local busybox image into it.
#
# Output contract:
#   stdout  exactly one line, `127.0.0.1:PORT`: the registry's address, to be used as the registry part
#           of image references (`127.0.0.1:PORT/e2e/busybox:1.36`). run-tests.sh exports it as
#           MK_E2E_REGISTRY. Progress and errors go to stderr.
#   exit    0 when the registry answers and both tags are pushed; non-zero otherwise (with the last lines
#           of the registry's log on stderr).
#   The registry requires HTTP basic auth (htpasswd, bcrypt) for every request, pulls included:
#     user `e2e`, password `e2e-secret`.
#   It serves plain HTTP on loopback only; containerd (1.6 and 2.x) and dockerd treat 127.0.0.0/8 as an
#   insecure registry by default, so they pull from it with no extra configuration. distribution 2.8
#   accepts htpasswd auth over plain HTTP (checked: 401 without, 200 with credentials), so one registry
#   serves both the authenticated and the unauthenticated cases: a pull without credentials gets 401 ("authentication required").
#   Images, pushed from IMAGEDIR/busybox.tar (the OCI archive of build-images.sh) with skopeo:
#     127.0.0.1:PORT/e2e/busybox:1.36
#     127.0.0.1:PORT/e2e/busybox:latest
#   Files in STATEDIR: config.yml (recognised by registry-down.sh), htpasswd, data/ (the storage),
#   registry.log, registry.pid (the daemon's pid), address (the line printed on stdout), and
#   registry.env (REGISTRY=, REGISTRY_USER=, REGISTRY_PASSWORD=, for shells: `. STATEDIR/registry.env`).
#
# The port is picked by the kernel (the registry listens on 127.0.0.1:0 and logs the address it got), so
# concurrent instances never collide. Installs docker-registry, skopeo and apache2-utils (htpasswd) with
# apt when missing. Idempotent: a registry already running for STATEDIR is reused (the images are pushed
# again, which costs nothing when they are there). Stop it with registry-down.sh STATEDIR.
# Usage: registry-up.sh STATEDIR [IMAGEDIR]
#   IMAGEDIR (default $MK_E2E_IMAGE_DIR, else <repo>/target/e2e-images) holds busybox.tar; it is built
#   there by build-images.sh when missing.
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 STATEDIR [IMAGEDIR]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
mkdir -p "$1"
statedir=$(cd "$1" && pwd -P)
imagedir=${2:-${MK_E2E_IMAGE_DIR:-$repo/target/e2e-images}}
config=$statedir/config.yml
pidfile=$statedir/registry.pid
log=$statedir/registry.log
user=e2e
password=e2e-secret

say() { echo "registry-up: $*" >&2; }

# 1. The packages.
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi
for bin in docker-registry skopeo htpasswd curl; do
  if ! command -v "$bin" >/dev/null; then
    say "$bin missing (docker-registry, skopeo, apache2-utils and curl are needed)"
    exit 1
  fi
done

# The HTTP status of GET /v2/ at $1, with credentials when $2 is set ("000" when nothing answers).
v2_status() {
  local args=(-s -o /dev/null -w '%{http_code}' --max-time 2)
  [[ -n ${2:-} ]] && args+=(-u "$user:$password")
  curl "${args[@]}" "http://$1/v2/" 2>/dev/null || true
}

# The pid of the process running `docker-registry serve CONFIG`, looked up by command line.
find_pid() {
  local c pid
  for c in /proc/[0-9]*/cmdline; do
    if { tr '\0' ' ' <"$c"; } 2>/dev/null | grep -qF -- "docker-registry serve $config"; then
      pid=${c#/proc/}
      echo "${pid%/cmdline}"
      return 0
    fi
  done
  return 1
}

# The pid of the registry serving this config, if one runs.
running_pid() {
  local pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "serve $config" || return 1
  echo "$pid"
}

address=""
if pid=$(running_pid) && [[ -f $statedir/address ]] &&
  [[ $(v2_status "$(<"$statedir/address")" auth) == 200 ]]; then
  address=$(<"$statedir/address")
  say "registry already running for $statedir (pid $pid) on $address"
else
  if pid=$(running_pid); then
    say "registry pid $pid for $statedir does not answer: stopping it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$statedir/address"
  mkdir -p "$statedir/data"
  htpasswd -Bbn "$user" "$password" >"$statedir/htpasswd" 2>/dev/null
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  cat >"$config" <<EOF
# Private registry for mini-kubelet's end-to-end tests (written by e2e/scripts/registry-up.sh).
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $statedir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:0
  secret: $secret
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: mini-kubelet-e2e
    path: $statedir/htpasswd
EOF
  : >"$log"
  say "starting docker-registry: config $config, log $log"
  # setsid: its own session, so a ctrl-c in the caller's terminal reaches the caller's EXIT trap (which
  # runs registry-down.sh) rather than killing the registry halfway.
  setsid docker-registry serve "$config" </dev/null >>"$log" 2>&1 &
  launched=$!
  pid=""
  for _ in $(seq 1 150); do
    # setsid execs in place here ($! is the daemon), but look the daemon up by its config to be sure.
    if [[ -z $pid ]] && pid=$(find_pid); then
      echo "$pid" >"$pidfile"
    fi
    if [[ -z $address ]]; then
      address=$(sed -n 's/.*msg="listening on \(127\.0\.0\.1:[0-9][0-9]*\)".*/\1/p' "$log" | tail -n 1)
    fi
    if [[ -n $address && $(v2_status "$address" auth) == 200 ]]; then
      break
    fi
    if ! kill -0 "$launched" 2>/dev/null && { [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; }; then
      say "docker-registry exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.1
  done
  if [[ -z $address || $(v2_status "$address" auth) != 200 ]]; then
    say "docker-registry did not answer within 15 s; last lines of $log:"
    tail -n 30 "$log" >&2
    exit 1
  fi
  if [[ -z $pid ]] && ! pid=$(find_pid); then
    say "the registry answers on $address, but no process runs docker-registry serve $config"
    exit 1
  fi
  echo "$pid" >"$pidfile"
  # Auth must really be enforced, or the tests without credentials would prove nothing.
  anonymous=$(v2_status "$address")
  if [[ $anonymous != 401 ]]; then
    say "the registry answered $anonymous to an anonymous request, 401 expected"
    exit 1
  fi
  echo "$address" >"$statedir/address"
  say "registry up on $address (pid $pid)"
fi
cat >"$statedir/registry.env" <<EOF
REGISTRY=$address
REGISTRY_USER=$user
REGISTRY_PASSWORD=$password
EOF

# 2. The images.
if ! [[ -f $imagedir/busybox.tar ]]; then
  "$here/build-images.sh" "$imagedir" >&2
fi
for tag in 1.36 latest; do
  # --insecure-policy: no dependency on /etc/containers/policy.json; the source is our own archive.
  skopeo --insecure-policy copy --quiet --dest-tls-verify=false --dest-creds "$user:$password" \
    "oci-archive:$imagedir/busybox.tar" "docker://$address/e2e/busybox:$tag" >&2
done
say "pushed $address/e2e/busybox:1.36 and $address/e2e/busybox:latest"
echo "$address"
