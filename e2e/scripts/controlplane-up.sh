#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback whose every file lives under STATEDIR: etcd
# (Debian's etcd-server), kube-apiserver, kube-controller-manager and kube-scheduler (built from their
# upstream Go packages by controlplane-build.sh). As a kubeadm cluster is set up:
#   - a CA and certificates made with openssl (pki/): the API server's serving cert, service-account
#     keys, an admin client (system:masters), the API server's client cert for the kubelet port
#     (kube-apiserver-kubelet-client, bound to system:kubelet-api-admin), scheduler and
#     controller-manager identities; the controller-manager signs CSRs with the CA;
#   - --authorization-mode=Node,RBAC and the NodeRestriction admission plugin (plus the defaults);
#   - a bootstrap token (group system:bootstrappers:kubeadm:default-node-token) allowed to create
#     CSRs, with the controller-manager auto-approving node client CSRs (kubeadm's bindings); a
#     bootstrap kubeconfig for nodes in STATEDIR/bootstrap-kubeconfig;
#   - metrics-server (built beside the control plane) as the aggregated API metrics.k8s.io, for
#     `kubectl top`: a front-proxy CA and client certificate for the aggregator (kubeadm's
#     front-proxy-*), metrics-server's RBAC as its upstream manifest grants it, reached by the API
#     server through an ExternalName Service `kube-system/metrics-server` (localhost; there is no
#     Service network here) with the manifest's `insecureSkipTLSVerify`; it scrapes every node's
#     /metrics/resource every 15 s with its own client certificate, skipping verification of the
#     nodes' serving certificates (`--kubelet-insecure-tls`, as kind and minikube set it up).
# Waits until the API server is ready, the scheduler and controller-manager are healthy and the
# `default` ServiceAccount exists, then prints the admin kubeconfig path as the last line on stdout
# (progress goes to stderr). STATEDIR/controlplane.env records ports, the kubectl path and the
# bootstrap kubeconfig. Idempotent: a control plane already running for STATEDIR is reused. Stop it
# with controlplane-down.sh STATEDIR.
# Usage: controlplane-up.sh STATEDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 STATEDIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
statedir=$(cd "$1" && pwd -P)
pki=$statedir/pki
envfile=$statedir/controlplane.env
admin=$statedir/admin.kubeconfig
say() { echo "controlplane-up: $*" >&2; }

for bin in etcd openssl curl python3; do
  if ! command -v "$bin" >/dev/null; then
    say "$bin missing: run e2e/scripts/install-deps.sh"
    exit 1
  fi
done

# True while the process in STATEDIR/NAME.pid runs the command it was started with.
running() {
  local pid state cmd
  [[ -f $statedir/$1.pid ]] || return 1
  pid=$(<"$statedir/$1.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]] || return 1
  cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || return 1
  # The command line reads empty while the process execs (setsid into the daemon): alive, and the
  # pid was just written. Otherwise it must be ours (not a reused pid).
  [[ -z $cmd || $cmd == *"$statedir"* ]]
}

if [[ -f $envfile ]] && running etcd && running kube-apiserver && running kube-controller-manager &&
  running kube-scheduler && running metrics-server; then
  say "control plane already running for $statedir"
  echo "$admin"
  exit 0
fi
if [[ -f $envfile ]]; then
  say "a control plane for $statedir is partly down: stop it first (controlplane-down.sh $statedir)"
  exit 1
fi

cp_bin=$("$here/controlplane-build.sh" | tail -n 1)
bindir=$(dirname "$cp_bin")
kubectl=$bindir/kubectl

# shellcheck source-path=SCRIPTDIR source=lib/free-port.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/free-port.sh"
etcd_port=$(free_port)
etcd_peer_port=$(free_port)
api_port=$(free_port)
cm_port=$(free_port)
sched_port=$(free_port)
ms_port=$(free_port)
server=https://127.0.0.1:$api_port

# --- certificates -------------------------------------------------------------------------------
mkdir -p "$pki" "$statedir/etcd"
cat >"$pki/openssl.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:10.96.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
CNF
# ca NAME SUBJECT: a self-signed CA.
ca() {
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -config "$pki/openssl.cnf" \
    -extensions ca -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.crt" 2>/dev/null
}
ca ca "/CN=mini-kubelet-e2e-ca"
ca front-proxy-ca "/CN=mini-kubelet-e2e-front-proxy-ca"
# cert NAME SUBJECT EXTENSIONS [CA]: a key and a certificate signed by CA (default: the cluster CA).
cert() {
  local signer=${4:-ca}
  openssl req -new -newkey rsa:2048 -nodes -config "$pki/openssl.cnf" -subj "$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$signer.crt" -CAkey "$pki/$signer.key" \
    -CAcreateserial -days 365 -extfile "$pki/openssl.cnf" -extensions "$3" -out "$pki/$1.crt" \
    2>/dev/null
  rm -f "$pki/$1.csr"
}
cert apiserver "/CN=kube-apiserver" server
cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" client
cert admin "/O=system:masters/CN=kubernetes-admin" client
cert controller-manager "/CN=system:kube-controller-manager" client
cert scheduler "/CN=system:kube-scheduler" client
cert metrics-server "/CN=system:metrics-server" client
# The aggregator's client towards metrics-server, which trusts front-proxy-ca for it.
cert front-proxy-client "/CN=front-proxy-client" client front-proxy-ca
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
chmod 600 "$pki"/*.key

# kubeconfig FILE USER CERT-NAME
kubeconfig() {
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mini-kubelet-e2e
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$3.crt
    client-key: $pki/$3.key
contexts:
- name: $2@mini-kubelet-e2e
  context:
    cluster: mini-kubelet-e2e
    user: $2
current-context: $2@mini-kubelet-e2e
KC
}
kubeconfig "$admin" kubernetes-admin admin
kubeconfig "$statedir/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
kubeconfig "$statedir/scheduler.kubeconfig" system:kube-scheduler scheduler
kubeconfig "$statedir/metrics-server.kubeconfig" system:metrics-server metrics-server

# A bootstrap token as kubeadm makes one: [a-z0-9]{6}.[a-z0-9]{16}.
token_id=$(tr -dc 'a-z0-9' </dev/urandom | head -c 6 || true)
token_secret=$(tr -dc 'a-z0-9' </dev/urandom | head -c 16 || true)
cat >"$statedir/bootstrap-kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mini-kubelet-e2e
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: kubelet-bootstrap
  user:
    token: $token_id.$token_secret
contexts:
- name: kubelet-bootstrap@mini-kubelet-e2e
  context:
    cluster: mini-kubelet-e2e
    user: kubelet-bootstrap
current-context: kubelet-bootstrap@mini-kubelet-e2e
KC
chmod 600 "$statedir/bootstrap-kubeconfig"

# --- processes ----------------------------------------------------------------------------------
# start NAME COMMAND...: in the background, its own session, output to STATEDIR/NAME.log.
start() {
  local name=$1
  shift
  say "starting $name"
  setsid "$@" >"$statedir/$name.log" 2>&1 </dev/null &
  echo $! >"$statedir/$name.pid"
}
# wait_for WHAT SECONDS COMMAND...: until the command succeeds; fails with the log tail of WHAT.
wait_for() {
  local what=$1 seconds=$2 deadline
  shift 2
  deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! running "$what"; then
      say "$what exited; the end of $statedir/$what.log:"
      tail -n 30 "$statedir/$what.log" >&2
      exit 1
    fi
    if (($(date +%s) > deadline)); then
      say "$what not ready after $seconds s; the end of $statedir/$what.log:"
      tail -n 30 "$statedir/$what.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}
cat >"$envfile" <<ENV
SERVER=$server
ETCD_PORT=$etcd_port
API_PORT=$api_port
CONTROLLER_MANAGER_PORT=$cm_port
SCHEDULER_PORT=$sched_port
METRICS_SERVER_PORT=$ms_port
KUBECTL=$kubectl
ADMIN_KUBECONFIG=$admin
BOOTSTRAP_KUBECONFIG=$statedir/bootstrap-kubeconfig
CA_CERT=$pki/ca.crt
CA_KEY=$pki/ca.key
ENV

# Debian's etcd 3.4.23 predates the watch-progress requests kube-apiserver uses to bring its watch
# caches up to date (etcd >= 3.4.31; the API server logs "RequestWatchProgress feature is not
# supported"): periodic progress notifications, as kubeadm sets them (5 s), keep the caches of
# seldom-written resources from lagging ("Too large resource version" in its log).
start etcd etcd --name mk-e2e --data-dir "$statedir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "mk-e2e=http://127.0.0.1:$etcd_peer_port" \
  --experimental-watch-progress-notify-interval 5s
wait_for etcd 120 curl -sf "http://127.0.0.1:$etcd_port/health"

start kube-apiserver "$bindir/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --secure-port "$api_port" --cert-dir "$pki" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --enable-bootstrap-token-auth --allow-privileged \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --endpoint-reconciler-type none \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
  --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" \
  --proxy-client-key-file "$pki/front-proxy-client.key"
wait_for kube-apiserver 300 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
  "$server/readyz"

start kube-controller-manager "$bindir/kube-controller-manager" \
  --kubeconfig "$statedir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$statedir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$statedir/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$cm_port" --cert-dir "$pki/controller-manager" \
  --leader-elect=false --use-service-account-credentials \
  --controllers '*,bootstrapsigner,tokencleaner' \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16
start kube-scheduler "$bindir/kube-scheduler" \
  --kubeconfig "$statedir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$statedir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$statedir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --cert-dir "$pki/scheduler" \
  --leader-elect=false

# --- what kubeadm would apply -------------------------------------------------------------------
k() { "$kubectl" --kubeconfig "$admin" "$@"; }
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-$token_id
  namespace: kube-system
type: bootstrap.kubernetes.io/token
stringData:
  token-id: "$token_id"
  token-secret: "$token_secret"
  usage-bootstrap-authentication: "true"
  usage-bootstrap-signing: "true"
  auth-extra-groups: system:bootstrappers:kubeadm:default-node-token
---
# Nodes may ask for a client certificate with the bootstrap token...
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:kubelet-bootstrap
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-bootstrapper
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:bootstrappers:kubeadm:default-node-token
---
# ...which the controller-manager approves,
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-autoapprove-bootstrap
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:nodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:bootstrappers:kubeadm:default-node-token
---
# as it approves a node's renewal of its own client certificate.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-autoapprove-certificate-rotation
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
# The API server's client for the kubelet port (logs, exec, attach, port-forward, metrics).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:apiserver-kubelet-client
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: kube-apiserver-kubelet-client
---
# metrics-server, as its upstream manifest (components.yaml) grants it, to its certificate's user.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:metrics-server
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:metrics-server
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:metrics-server
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:metrics-server
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: metrics-server:system:auth-delegator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:metrics-server
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: metrics-server-auth-reader
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: extension-apiserver-authentication-reader
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:metrics-server
---
# No Service network here: the aggregator resolves an ExternalName Service to its name.
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
spec:
  type: ExternalName
  externalName: localhost
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  insecureSkipTLSVerify: true
  service:
    name: metrics-server
    namespace: kube-system
    port: $ms_port
YAML

start metrics-server "$bindir/metrics-server" \
  --kubeconfig "$statedir/metrics-server.kubeconfig" \
  --authentication-kubeconfig "$statedir/metrics-server.kubeconfig" \
  --authorization-kubeconfig "$statedir/metrics-server.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$ms_port" --cert-dir "$pki/metrics-server" \
  --kubelet-preferred-address-types InternalIP --kubelet-use-node-status-port \
  --kubelet-insecure-tls --metric-resolution 15s

wait_for kube-controller-manager 300 curl -sfk "https://127.0.0.1:$cm_port/healthz"
wait_for kube-scheduler 300 curl -sfk "https://127.0.0.1:$sched_port/healthz"
wait_for metrics-server 300 curl -sfk "https://127.0.0.1:$ms_port/livez"
# Pods need their namespace's `default` ServiceAccount, which a controller makes.
wait_for kube-controller-manager 300 k get serviceaccount default -n default
say "ready: $server (admin kubeconfig $admin, bootstrap kubeconfig $statedir/bootstrap-kubeconfig)"
echo "$admin"
