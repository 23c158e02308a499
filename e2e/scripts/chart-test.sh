#!/usr/bin/env bash
# Tests the Helm chart charts/mini-kubelet with the real Helm and the real API server:
#   1. builds Helm v4 from its Go module (e2e/chart/helm names helm.sh/helm/v4/cmd/helm as a tool; the
#      binary is cached outside the repository by lib/go-build.sh, ~1.5 min cold) — PyPI's
#      helm-python-sdk embeds Helm only as a C library for Python, with no `helm` command;
#   2. for each case (default values, the Docker adapter with most values changed, a bootstrap token
#      of the control plane, a kubeconfig from an existing Secret or inline, the ServiceAccount with
#      its ClusterRole, a PodMonitor, a ServiceMonitor, standalone): `helm lint --strict` and
#      `helm template` with those values, then `kubectl apply --server-side --dry-run=server
#      --validate=strict` of the rendered objects against the control plane (Kubernetes' own schemas
#      and admission; unknown fields fail), and e2e/chart/check-rendered.py on what the server
#      returned (flags and their values, host mounts, privileges, the config, the RBAC rules compared
#      with the API server's own system:node ClusterRole, every flag known to the agent's --help);
#      the bootstrap kubeconfig the chart wrote must authenticate to the API server as
#      system:bootstrap:<token id>;
#   3. the chart rendered for this host (the test containerd, free ports, folders of its own, the
#      control plane's bootstrap token) and its DaemonSet's container run as the kubelet would run it,
#      minus the image: the agent binary with the container's args and the ConfigMap and Secret
#      volumes laid out on disk (e2e/chart/pod-on-host.py). It must join the control plane by TLS
#      bootstrap, turn Ready, run a static pod from staticPodPath (mirror pod Ready), remove it from
#      the API and the runtime when the manifest goes, and log no unknown KubeletConfiguration field;
#   4. values that must be refused (wrong runtime kind, partial bootstrap values, a TCP endpoint, a
#      malformed token, monitoring without the read-only port, serviceAccount without apiServer):
#      `helm template` must fail with the chart's message;
#   5. every value of values.yaml has a `# --` comment and a row in the chart's README (check-docs.py).
# The ServiceMonitor/PodMonitor CRDs are not in this API server: minimal stand-ins of them
# (e2e/chart/monitoring-crds.yaml, the fields the chart uses) are created for the run and removed after.
#
#   e2e/scripts/chart-test.sh CONTROLPLANE_DIR
#
# CONTROLPLANE_DIR is a running controlplane-up.sh's directory (e2e/run-tests.sh passes its own).
# Needs MK_E2E_CRI_ENDPOINT (a containerd of containerd-up.sh, with the test images imported), crictl
# ($MK_E2E_CRICTL, or cri-tools-build.sh's cached build) and the agent binary: $MK_E2E_AGENT_BIN or <target>/debug/mini-kubelet (cargo build -p mini-kubelet). Exits
# non-zero on any failure, and never skips a case; prints "chart: N passed, M failed" at the end.
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 CONTROLPLANE_DIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart=$repo/charts/mini-kubelet
cases=$repo/e2e/chart/values
say() { echo "chart-test: $*" >&2; }
started=$(date +%s)

cpdir=$(cd "$1" && pwd -P)
if [[ ! -f $cpdir/controlplane.env ]]; then
  say "no control plane in $cpdir (start one with e2e/scripts/controlplane-up.sh $cpdir)"
  exit 1
fi
# shellcheck disable=SC1091 # written by controlplane-up.sh
source "$cpdir/controlplane.env"
k() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
if ! k get --raw /readyz >/dev/null; then
  say "the API server of $cpdir ($SERVER) is not ready"
  exit 1
fi

cri_endpoint=${MK_E2E_CRI_ENDPOINT:-}
if [[ -z $cri_endpoint ]]; then
  say "MK_E2E_CRI_ENDPOINT is not set: the rendered agent runs on a containerd of the tests (ep=\$(e2e/scripts/containerd-up.sh DIR target/e2e-images | tail -1))"
  exit 1
fi
crictl=${MK_E2E_CRICTL:-}
if [[ -z $crictl ]]; then
  crictl=$("$here/cri-tools-build.sh" | tail -n 1)/crictl
fi
cri() { "$crictl" --runtime-endpoint "$cri_endpoint" --image-endpoint "$cri_endpoint" "$@" 2>/dev/null; }
# runtime_objects NODE: the IDs of the containers and sandboxes the runtime holds for NODE's agent
# (its node-name label), or "unknown" when crictl fails.
runtime_objects() {
  local label=io.mini-kubelet.node-name=$1
  cri ps -a -q --label "$label" || echo unknown
  cri pods -q --label "$label" || echo unknown
}
agent=${MK_E2E_AGENT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/mini-kubelet}
if [[ ! -x $agent ]]; then
  say "no agent binary at $agent (cargo build -p mini-kubelet, or set MK_E2E_AGENT_BIN)"
  exit 1
fi

# --- Helm, from its Go module -------------------------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=lib/go-build.sh
source "$here/lib/go-build.sh"
helm_version=$(awk '$1 == "helm.sh/helm/v4" { print $2 }' "$repo/e2e/chart/helm/go.mod")
if [[ -z $helm_version ]]; then
  say "e2e/chart/helm/go.mod does not require helm.sh/helm/v4"
  exit 1
fi
helm=$(go_build chart/helm helm helm.sh/helm/v4/cmd/helm \
  "-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version")
say "Helm $("$helm" version --short) ($helm); API server $SERVER"

work=$(mktemp -d /tmp/mk-chart.XXXXXX)
created_crds=()
agent_pid=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  local status=$?
  if [[ -n $agent_pid ]]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  if ((${#created_crds[@]})); then
    k delete --ignore-not-found --wait=false "${created_crds[@]}" >/dev/null ||
      say "warning: could not delete ${created_crds[*]}"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
# Helm keeps nothing of ours in the home directory.
export HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data

release=mk
namespace=kube-system
"$agent" --help >"$work/agent-help.txt"
export CHART_RELEASE=$release CHART_NAMESPACE=$namespace AGENT_HELP=$work/agent-help.txt
export CP_SERVER=$SERVER CP_CA_CERT=$CA_CERT

# The control plane's own bootstrap token (in its bootstrap kubeconfig) and system:node ClusterRole.
CP_BOOTSTRAP_TOKEN=$("$KUBECTL" --kubeconfig "$BOOTSTRAP_KUBECONFIG" config view --raw \
  -o jsonpath='{.users[0].user.token}')
export CP_BOOTSTRAP_TOKEN
k get clusterrole system:node -o json >"$work/system-node.json"
export SYSTEM_NODE_ROLE=$work/system-node.json

# The monitoring CRDs' stand-ins, unless the cluster has the real ones.
for crd in servicemonitors.monitoring.coreos.com podmonitors.monitoring.coreos.com; do
  if ! k get crd "$crd" >/dev/null 2>&1; then
    created_crds+=("crd/$crd")
  fi
done
if ((${#created_crds[@]})); then
  say "creating the stand-in monitoring CRDs (e2e/chart/monitoring-crds.yaml)"
  k apply --server-side -f "$repo/e2e/chart/monitoring-crds.yaml" >/dev/null
  k wait --for condition=Established --timeout=60s "${created_crds[@]}" >/dev/null
fi

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  say "ok: $*"
}
fail() {
  failed=$((failed + 1))
  say "FAILED: $*"
}

# render CASE HELM-ARG...: lint, template, server-side dry run and the case's assertions.
render() {
  local name=$1 out=$work/$1
  shift
  mkdir -p "$out"
  if ! "$helm" lint --strict "$chart" --namespace "$namespace" "$@" >"$out/lint.txt" 2>&1; then
    cat "$out/lint.txt" >&2
    fail "$name: helm lint --strict"
    return
  fi
  if ! "$helm" template "$release" "$chart" --namespace "$namespace" "$@" >"$out/rendered.yaml" 2>"$out/template.err"; then
    cat "$out/template.err" >&2
    fail "$name: helm template"
    return
  fi
  if ! k apply --server-side --dry-run=server --validate=strict --field-manager=chart-test \
    -f "$out/rendered.yaml" -o json >"$out/objects.json" 2>"$out/apply.err"; then
    cat "$out/apply.err" >&2
    fail "$name: server-side dry run (kubectl apply --dry-run=server --validate=strict)"
    return
  fi
  if [[ $name == bootstrap-token ]]; then
    # The bootstrap kubeconfig the chart wrote, as the API server stored it in the Secret.
    python3 -c '
import base64, json, sys
objs = json.load(open(sys.argv[1]))["items"]
secret = [o for o in objs if o["kind"] == "Secret"][0]
sys.stdout.write(base64.b64decode(secret["data"]["kubeconfig"]).decode())' \
      "$out/objects.json" >"$out/bootstrap-kubeconfig"
    "$KUBECTL" --kubeconfig "$out/bootstrap-kubeconfig" config view --raw -o json >"$out/bootstrap-kubeconfig.json"
    export RENDERED_BOOTSTRAP_KUBECONFIG=$out/bootstrap-kubeconfig.json
    local who want="system:bootstrap:${CP_BOOTSTRAP_TOKEN%%.*}"
    who=$("$KUBECTL" --kubeconfig "$out/bootstrap-kubeconfig" auth whoami -o jsonpath='{.status.userInfo.username}') || who="(failed)"
    if [[ $who == "$want" ]]; then
      pass "$name: the chart's bootstrap kubeconfig authenticates to $SERVER as $who"
    else
      fail "$name: the chart's bootstrap kubeconfig authenticates as $who, want $want"
    fi
  fi
  if python3 "$repo/e2e/chart/check-rendered.py" "$name" "$out/objects.json" >&2; then
    pass "$name: lint, template, server-side dry run, assertions"
  else
    fail "$name: assertions (rendered objects in $out/rendered.yaml)"
  fi
}

# refuse CASE MESSAGE HELM-ARG...: helm template must fail, saying MESSAGE.
refuse() {
  local name=$1 message=$2 err
  shift 2
  if err=$("$helm" template "$release" "$chart" --namespace "$namespace" "$@" 2>&1 >/dev/null); then
    fail "refuse $name: helm template accepted it"
  elif [[ $err != *"$message"* ]]; then
    echo "$err" >&2
    fail "refuse $name: helm template failed without saying \"$message\""
  else
    pass "refuse $name: \"$message\""
  fi
}

# run_rendered_agent: the chart rendered for this host (the test containerd, free ports, folders of
# its own, the control plane's bootstrap token) and its DaemonSet's container run as the kubelet would
# run it, minus the image: the agent binary with the container's args, the ConfigMap and Secret
# volumes laid out on disk (e2e/chart/pod-on-host.py). It must join the control plane by TLS
# bootstrap as the node `spec.nodeName` names, turn Ready, and run a static pod from staticPodPath
# whose mirror pod turns Ready; then the manifest is removed, the pod must be cleaned up, and the
# agent stops and its Node is deleted.
run_rendered_agent() {
  local name=run out=$work/run node status=0
  node=chart-$(date +%s)-$$
  mkdir -p "$out/host" "$out/static"
  # shellcheck source-path=SCRIPTDIR source=lib/free-port.sh
  source "$here/lib/free-port.sh"
  local args=(--set "runtime.endpoint=$cri_endpoint" --set "rootDir=$out/host/root"
    --set "staticPodPath=$out/static" --set "kubeletConfig.podLogsDir=$out/host/pods"
    --set "kubeletConfig.port=$(free_port)" --set "kubeletConfig.readOnlyPort=$(free_port)"
    --set "kubeletConfig.healthzPort=$(free_port)" --set kubeletConfig.address=127.0.0.1
    # As the test harness's agents (e2e/src/lib.rs): this machine's disk is shared with the build
    # caches; kubelet's default thresholds would put the node under DiskPressure.
    --set-json 'kubeletConfig.evictionHard={"memory.available":"100Mi","nodefs.available":"1Gi","imagefs.available":"1Gi","nodefs.inodesFree":"1%"}'
    --set kubeletConfig.imageGCHighThresholdPercent=100
    --set "credentials.apiServer=$SERVER" --set-file "credentials.caCert=$CA_CERT"
    --set "credentials.bootstrapToken=$CP_BOOTSTRAP_TOKEN" --set 'extraArgs={--node-ip=127.0.0.1}')
  "$helm" template "$release" "$chart" --namespace "$namespace" "${args[@]}" >"$out/rendered.yaml" &&
    k apply --server-side --dry-run=server --validate=strict --field-manager=chart-test \
      -f "$out/rendered.yaml" -o json >"$out/objects.json" &&
    python3 "$repo/e2e/chart/pod-on-host.py" "$out/objects.json" "$out/volumes" "$node" >"$out/argv" || status=$?
  if ((status != 0)); then
    fail "$name: rendering the chart for this host"
    return
  fi
  local argv=()
  mapfile -d '' -t argv <"$out/argv"
  say "$name: $agent ${argv[*]}"
  cat >"$out/static/chart-web.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: chart-web
  namespace: default
spec:
  terminationGracePeriodSeconds: 5
  containers:
    - name: web
      image: mini-kubelet.local/busybox:1.36
      imagePullPolicy: Never
      command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]
YAML
  RUST_LOG=info "$agent" "${argv[@]}" >"$out/agent.log" 2>&1 &
  agent_pid=$!
  # Deadlines: TLS bootstrap (a CSR the controller-manager approves and signs) and the first node
  # status; then a pod start on the local containerd, reported within the status period (10 s).
  if k wait --for=create --timeout=120s "node/$node" >/dev/null &&
    k wait --for=condition=Ready --timeout=120s "node/$node" >/dev/null; then
    pass "$name: the agent joined as node $node (TLS bootstrap with the chart's Secret) and is Ready"
  else
    status=1
    fail "$name: node $node did not register and turn Ready in 240 s"
  fi
  local mirror=pod/chart-web-$node
  if ((status == 0)); then
    if k -n default wait --for=create --timeout=120s "$mirror" >/dev/null &&
      k -n default wait --for=condition=Ready --timeout=120s "$mirror" >/dev/null; then
      pass "$name: the static pod of staticPodPath runs on the runtime endpoint (mirror ${mirror#pod/} Ready)"
    else
      status=1
      fail "$name: the static pod's mirror ${mirror#pod/} did not turn Ready in 240 s"
    fi
  fi
  # Clean up: the manifest removed, the pod must go (grace 5 s): its mirror pod, its containers and
  # sandbox in the runtime (crictl, by the agent's node-name label), its pod folder.
  rm -f "$out/static/chart-web.yaml"
  local deadline=$(($(date +%s) + 120))
  until [[ -z $(ls -A "$out/host/root/pods" 2>/dev/null) ]] &&
    ! k -n default get "$mirror" >/dev/null 2>&1 &&
    [[ -z $(runtime_objects "$node") ]]; do
    if (($(date +%s) > deadline)); then
      status=1
      fail "$name: the static pod was not cleaned up within 120 s of its manifest's removal (runtime: $(runtime_objects "$node" | tr '\n' ' '))"
      break
    fi
    sleep 0.5
  done
  kill -TERM "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=
  k delete --ignore-not-found --wait=false "node/$node" >/dev/null || true
  # Every field of the chart's KubeletConfiguration is one the agent reads.
  if grep -i "unknown or unsupported KubeletConfiguration field" "$out/agent.log" >&2; then
    status=1
    fail "$name: the agent ignored fields of the chart's KubeletConfiguration"
  fi
  if ((status != 0)); then
    say "$name: the end of the agent's log:"
    tail -n 40 "$out/agent.log" >&2
  else
    pass "$name: the static pod was cleaned up after its manifest's removal"
  fi
}

if python3 "$repo/e2e/chart/check-docs.py" "$chart/values.yaml" "$chart/README.md" >&2; then
  pass "docs: every value of values.yaml has a comment and a row in the chart's README"
else
  fail "docs: values.yaml and the chart's README (e2e/chart/check-docs.py)"
fi

render default
render docker -f "$cases/docker.yaml"
render bootstrap-token --set "credentials.apiServer=$SERVER" --set-file "credentials.caCert=$CA_CERT" \
  --set "credentials.bootstrapToken=$CP_BOOTSTRAP_TOKEN"
render kubeconfig-existing -f "$cases/kubeconfig-existing.yaml"
render kubeconfig-inline -f "$cases/kubeconfig-inline.yaml"
render service-account --set credentials.mode=serviceAccount --set "credentials.apiServer=$SERVER"
render podmonitor -f "$cases/podmonitor.yaml"
render servicemonitor -f "$cases/servicemonitor.yaml"
render standalone -f "$cases/standalone.yaml"

run_rendered_agent

refuse runtime-kind "/runtime/kind" --set runtime.kind=cri
refuse partial-bootstrap "give all of credentials.apiServer, credentials.caCert and credentials.bootstrapToken" \
  --set credentials.bootstrapToken=abcdef.0123456789abcdef
refuse bad-token "must look like a bootstrap token" --set credentials.apiServer=https://10.0.0.1:6443 \
  --set credentials.caCert=CA --set credentials.bootstrapToken=not-a-token
refuse tcp-endpoint "/runtime/endpoint" --set runtime.endpoint=tcp://10.0.0.1:2376
refuse monitoring-without-read-only-port "set kubeletConfig.readOnlyPort" \
  --set monitoring.enabled=true --set kubeletConfig.readOnlyPort=0
refuse service-account-without-server "credentials.mode serviceAccount needs credentials.apiServer" \
  --set credentials.mode=serviceAccount

say "$(($(date +%s) - started)) s"
echo "chart: $passed passed, $failed failed"
((failed == 0))
