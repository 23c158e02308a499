#!/usr/bin/env python3
"""Assertions on the mini-kubelet chart's objects as the real API server returned them from a
server-side dry run (`kubectl apply --server-side --dry-run=server -o json`), one case at a time.

    check-rendered.py CASE OBJECTS.json

CASE names the values the chart was rendered with (e2e/scripts/chart-test.sh lists them). Facts of
the run come from the environment: CHART_RELEASE, CHART_NAMESPACE, AGENT_HELP (the agent's --help
text, a file), and per case CP_SERVER, CP_CA_CERT, CP_BOOTSTRAP_TOKEN, SYSTEM_NODE_ROLE (the live
system:node ClusterRole, JSON). Exits 1 with every failed assertion listed.
"""

import base64
import json
import os
import re
import sys

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def objects(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    return {(o["kind"], o["metadata"]["name"]): o for o in items}


class Rendered:
    def __init__(self, path):
        self.objs = objects(path)
        self.release = os.environ["CHART_RELEASE"]
        self.namespace = os.environ["CHART_NAMESPACE"]
        self.full = f"{self.release}-mini-kubelet"

    def get(self, kind, name):
        obj = self.objs.get((kind, name))
        check(obj is not None, f"no {kind} {name} rendered (have {sorted(self.objs)})")
        return obj or {}

    def kinds(self):
        return sorted({k for k, _ in self.objs})

    @property
    def ds(self):
        return self.get("DaemonSet", self.full)

    @property
    def pod(self):
        return self.ds.get("spec", {}).get("template", {}).get("spec", {})

    @property
    def container(self):
        containers = self.pod.get("containers", [])
        check(len(containers) == 1, f"one container expected, got {len(containers)}")
        return containers[0] if containers else {}

    @property
    def args(self):
        return self.container.get("args", [])

    def arg(self, flag):
        """The value of --flag=VALUE, or None; fails when the flag is given twice."""
        values = [a.split("=", 1)[1] for a in self.args if a.startswith(f"--{flag}=")]
        check(len(values) <= 1, f"--{flag} given {len(values)} times: {self.args}")
        return values[0] if values else None

    def config(self):
        cm = self.get("ConfigMap", f"{self.full}-config")
        text = cm.get("data", {}).get("kubelet-config.json")
        if not check(text is not None, "the ConfigMap has no kubelet-config.json"):
            return {}
        return json.loads(text)

    def mount(self, name):
        """(volumeMount, volume) of the volume NAME."""
        mounts = [m for m in self.container.get("volumeMounts", []) if m["name"] == name]
        volumes = [v for v in self.pod.get("volumes", []) if v["name"] == name]
        check(len(mounts) == 1 and len(volumes) == 1, f"volume {name}: mounts {mounts}, volumes {volumes}")
        return (mounts[0] if mounts else {}), (volumes[0] if volumes else {})

    def host_mount(self, host_path, mount_path=None, read_only=False, types=None):
        """A hostPath volume of HOST_PATH mounted at MOUNT_PATH (default the same path)."""
        mount_path = mount_path or host_path
        by_path = {v["hostPath"]["path"]: v for v in self.pod.get("volumes", []) if "hostPath" in v}
        volume = by_path.get(host_path)
        if not check(volume is not None, f"no hostPath volume of {host_path} (have {sorted(by_path)})"):
            return {}
        if types:
            check(volume["hostPath"].get("type") in types, f"hostPath {host_path} type {volume['hostPath'].get('type')}, want {types}")
        mounts = [m for m in self.container.get("volumeMounts", []) if m["name"] == volume["name"]]
        if check(len(mounts) == 1, f"hostPath {host_path} mounted {len(mounts)} times"):
            check(mounts[0]["mountPath"] == mount_path, f"hostPath {host_path} mounted at {mounts[0]['mountPath']}, want {mount_path}")
            check(bool(mounts[0].get("readOnly")) == read_only, f"hostPath {host_path} readOnly={mounts[0].get('readOnly')}, want {read_only}")
            return mounts[0]
        return {}


def node_agent_basics(r, runtime_kind="remote", root_dir="/var/lib/mini-kubelet"):
    """What every rendering must hold: a privileged host-namespace pod running the agent with the
    config, node name, root dir and the host folders it works in."""
    pod = r.pod
    check(pod.get("hostPID") is True, "hostPID is not set")
    check(pod.get("hostNetwork") is True, "hostNetwork is not set")
    check(pod.get("dnsPolicy") == "Default", f"dnsPolicy {pod.get('dnsPolicy')}")
    sc = r.container.get("securityContext", {})
    check(sc.get("privileged") is True, f"the container is not privileged: {sc}")
    config_path = r.arg("config")
    check(config_path == "/etc/mini-kubelet/config/kubelet-config.json", f"--config={config_path}")
    mount, volume = r.mount("config")
    check(mount.get("mountPath") == "/etc/mini-kubelet/config", f"config mounted at {mount.get('mountPath')}")
    check(volume.get("configMap", {}).get("name") == f"{r.full}-config", f"config volume {volume}")
    check(r.arg("hostname-override") == "$(NODE_NAME)", f"--hostname-override={r.arg('hostname-override')}")
    env = {e["name"]: e for e in r.container.get("env", [])}
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
          f"NODE_NAME is not the downward API's spec.nodeName: {env.get('NODE_NAME')}")
    check(r.arg("root-dir") == root_dir, f"--root-dir={r.arg('root-dir')}")
    check(r.arg("container-runtime") == runtime_kind, f"--container-runtime={r.arg('container-runtime')}")
    root = r.host_mount(root_dir, types=("DirectoryOrCreate",))
    check(root.get("mountPropagation") == "Bidirectional", f"root dir propagation {root.get('mountPropagation')}")
    config = r.config()
    r.host_mount(config.get("podLogsDir", "/var/log/pods"), types=("DirectoryOrCreate",))
    r.host_mount("/sys/fs/cgroup", types=("Directory",))
    check(config.get("apiVersion") == "kubelet.config.k8s.io/v1beta1", f"config apiVersion {config.get('apiVersion')}")
    check(config.get("kind") == "KubeletConfiguration", f"config kind {config.get('kind')}")
    static = config.get("staticPodPath")
    check(static is not None, "no staticPodPath in the config")
    if static:
        r.host_mount(static, read_only=True, types=("DirectoryOrCreate",))
    # Every flag the chart passes is one the agent has.
    with open(os.environ["AGENT_HELP"], encoding="utf-8") as f:
        known = set(re.findall(r"--[a-z][a-z0-9-]*", f.read()))
    for a in r.args:
        flag = a.split("=", 1)[0]
        check(flag in known, f"{flag} is not a flag of the agent (mini-kubelet --help)")
    # The ports it serves are declared as the node's.
    ports = {p["name"]: p for p in r.container.get("ports", [])}
    for name, key in (("kubelet", "port"), ("read-only", "readOnlyPort")):
        want = config.get(key, 10250 if key == "port" else 0)
        if want:
            p = ports.get(name, {})
            check(p.get("containerPort") == want and p.get("hostPort") == want, f"port {name}: {p}, want {want}")
        else:
            check(name not in ports, f"port {name} declared though {key} is 0")
    probe = r.container.get("livenessProbe", {}).get("httpGet", {})
    check(probe.get("path") == "/healthz" and probe.get("port") == config.get("healthzPort", 10248)
          and probe.get("host") == config.get("healthzBindAddress", "127.0.0.1"), f"liveness probe {probe}")
    sa = r.pod.get("serviceAccountName")
    check((("ServiceAccount", sa) in r.objs), f"the pods' ServiceAccount {sa} is not rendered")
    return config


def remote_runtime(r, endpoint):
    config = r.config()
    check(r.arg("container-runtime-endpoint") == endpoint, f"--container-runtime-endpoint={r.arg('container-runtime-endpoint')}, want {endpoint}")
    check(config.get("containerRuntimeEndpoint") == endpoint, f"config containerRuntimeEndpoint {config.get('containerRuntimeEndpoint')}")
    check(r.arg("docker-endpoint") is None, "--docker-endpoint with a remote runtime")
    socket = endpoint[len("unix://"):]
    r.host_mount(os.path.dirname(socket), types=("Directory",))


def bootstrap_args(r, secret):
    check(r.arg("bootstrap-kubeconfig") == "/etc/mini-kubelet/credentials/kubeconfig", f"--bootstrap-kubeconfig={r.arg('bootstrap-kubeconfig')}")
    check(r.arg("kubeconfig") == "/var/lib/mini-kubelet/kubeconfig", f"--kubeconfig={r.arg('kubeconfig')}")
    mount, volume = r.mount("credentials")
    check(mount.get("mountPath") == "/etc/mini-kubelet/credentials" and mount.get("readOnly") is True, f"credentials mount {mount}")
    check(volume.get("secret", {}).get("secretName") == secret, f"credentials volume {volume}, want Secret {secret}")


def no_rbac(r):
    check(not any(k in ("ClusterRole", "ClusterRoleBinding") for k, _ in r.objs), f"RBAC rendered: {r.kinds()}")
    check(r.pod.get("automountServiceAccountToken") is False, "the pods mount a ServiceAccount token they do not use")


def case_default(r):
    node_agent_basics(r)
    remote_runtime(r, "unix:///run/containerd/containerd.sock")
    bootstrap_args(r, f"{r.full}-credentials")
    check(("Secret", f"{r.full}-credentials") not in r.objs, "a Secret rendered without credentials values")
    no_rbac(r)
    check(r.kinds() == ["ConfigMap", "DaemonSet", "ServiceAccount"], f"kinds {r.kinds()}")
    check({"operator": "Exists"} in r.pod.get("tolerations", []), f"tolerations {r.pod.get('tolerations')}")
    check(r.pod.get("priorityClassName") == "system-node-critical", f"priorityClassName {r.pod.get('priorityClassName')}")
    check(r.container.get("image") == "mini-kubelet:0.1.0", f"image {r.container.get('image')}")
    check(r.container.get("imagePullPolicy") == "IfNotPresent", f"pullPolicy {r.container.get('imagePullPolicy')}")
    check(r.container.get("resources") == {"requests": {"cpu": "100m", "memory": "128Mi"}}, f"resources {r.container.get('resources')}")
    check(r.pod.get("nodeSelector") == {"kubernetes.io/os": "linux"}, f"nodeSelector {r.pod.get('nodeSelector')}")
    check(r.arg("v") == "0" and r.arg("node-labels") is None, f"args {r.args}")
    default_update_strategy(r)


def case_docker(r):
    node_agent_basics(r, runtime_kind="docker", root_dir="/srv/mk")
    config = r.config()
    check(r.arg("docker-endpoint") == "unix:///var/run/docker.sock", f"--docker-endpoint={r.arg('docker-endpoint')}")
    check(r.arg("container-runtime-endpoint") is None, "--container-runtime-endpoint with the Docker adapter")
    check("containerRuntimeEndpoint" not in config, "containerRuntimeEndpoint in the config with the Docker adapter")
    r.host_mount("/var/run", types=("Directory",))
    check(r.arg("cni-bin-dir") == "/opt/cni/bin,/usr/lib/cni", f"--cni-bin-dir={r.arg('cni-bin-dir')}")
    check(r.arg("network-plugin") == "cni", f"--network-plugin={r.arg('network-plugin')}")
    check(r.arg("pod-infra-container-image") == "registry.example/pause:3.10", f"--pod-infra-container-image={r.arg('pod-infra-container-image')}")
    for d in ("/opt/cni/bin", "/usr/lib/cni", "/etc/cni/net.d"):
        r.host_mount(d, read_only=True)
    r.host_mount("/var/lib/cni/cache")
    # The other values of this case: image, node labels, extra args, scheduling, resources.
    check(r.container.get("image") == "registry.example/mini-kubelet:dev", f"image {r.container.get('image')}")
    check(r.container.get("imagePullPolicy") == "Always", f"pullPolicy {r.container.get('imagePullPolicy')}")
    check(r.arg("node-labels") == "role=edge,zone=a", f"--node-labels={r.arg('node-labels')}")
    check(r.args[-2:] == ["--max-pods=20", "--node-ip=10.0.0.5"], f"extra args not last: {r.args}")
    check(r.arg("v") == "3", f"--v={r.arg('v')}")
    check(config.get("maxPods") == 50 and config.get("shutdownGracePeriod") == "30s", f"config {config}")
    # Helm merges maps with the defaults: the default kubernetes.io/os stays.
    check(r.pod.get("nodeSelector") == {"kubernetes.io/os": "linux", "node-role.example/edge": "true"}, f"nodeSelector {r.pod.get('nodeSelector')}")
    check(r.pod.get("tolerations") == [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}], f"tolerations {r.pod.get('tolerations')}")
    check(r.container.get("resources") == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
          f"resources {r.container.get('resources')}")
    check(r.ds["spec"].get("updateStrategy") == {"type": "OnDelete"}, f"updateStrategy {r.ds['spec'].get('updateStrategy')}")


def default_update_strategy(r):
    want = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    check(r.ds["spec"].get("updateStrategy") == want, f"updateStrategy {r.ds['spec'].get('updateStrategy')}")


def case_bootstrap_token(r):
    node_agent_basics(r)
    remote_runtime(r, "unix:///run/containerd/containerd.sock")
    secret_name = f"{r.full}-credentials"
    bootstrap_args(r, secret_name)
    secret = r.get("Secret", secret_name)
    data = secret.get("data", {})
    if check("kubeconfig" in data, f"the Secret has no kubeconfig key: {sorted(data)}"):
        # The dry run returns stringData merged into data (base64).
        # chart-test.sh decoded it and had kubectl turn it into JSON (kubectl config view -o json).
        with open(os.environ["RENDERED_BOOTSTRAP_KUBECONFIG"], encoding="utf-8") as f:
            kubeconfig = json.load(f)
        cluster = kubeconfig["clusters"][0]["cluster"]
        check(cluster["server"] == os.environ["CP_SERVER"], f"server {cluster['server']}")
        with open(os.environ["CP_CA_CERT"], encoding="utf-8") as f:
            ca = f.read()
        check(base64.b64decode(cluster["certificate-authority-data"]).decode() == ca, "the CA differs from the control plane's")
        check(kubeconfig["users"][0]["user"]["token"] == os.environ["CP_BOOTSTRAP_TOKEN"], "the token differs")
    no_rbac(r)


def case_kubeconfig_existing(r):
    node_agent_basics(r)
    remote_runtime(r, "unix:///var/run/crio/crio.sock")
    check(r.arg("kubeconfig") == "/etc/mini-kubelet/credentials/kubelet.conf", f"--kubeconfig={r.arg('kubeconfig')}")
    check(r.arg("bootstrap-kubeconfig") is None, "--bootstrap-kubeconfig in kubeconfig mode")
    _, volume = r.mount("credentials")
    check(volume.get("secret", {}).get("secretName") == "node-credentials", f"credentials volume {volume}")
    check(not any(k == "Secret" for k, _ in r.objs), "a Secret rendered with existingSecret")
    no_rbac(r)


def case_kubeconfig_inline(r):
    node_agent_basics(r)
    check(r.arg("kubeconfig") == "/etc/mini-kubelet/credentials/kubeconfig", f"--kubeconfig={r.arg('kubeconfig')}")
    secret = r.get("Secret", f"{r.full}-credentials")
    text = base64.b64decode(secret.get("data", {}).get("kubeconfig", "")).decode()
    check("client-certificate-data: Q0VSVA==" in text and text.startswith("apiVersion: v1"), f"kubeconfig in the Secret: {text!r}")


def rule_triples(rules):
    out = set()
    for rule in rules:
        for g in rule.get("apiGroups", []):
            for res in rule.get("resources", []):
                for v in rule.get("verbs", []):
                    out.add((g, res, v))
    return out


def case_service_account(r):
    node_agent_basics(r)
    check(r.arg("kubeconfig") == "/etc/mini-kubelet/credentials/kubeconfig", f"--kubeconfig={r.arg('kubeconfig')}")
    check(r.arg("bootstrap-kubeconfig") is None, "--bootstrap-kubeconfig in serviceAccount mode")
    check(r.pod.get("automountServiceAccountToken") is True, "the ServiceAccount token is not mounted")
    _, volume = r.mount("credentials")
    check(volume.get("configMap", {}).get("name") == f"{r.full}-kubeconfig", f"credentials volume {volume}")
    kubeconfig = r.get("ConfigMap", f"{r.full}-kubeconfig").get("data", {}).get("kubeconfig", "")
    check(f'server: "{os.environ["CP_SERVER"]}"' in kubeconfig, f"kubeconfig server: {kubeconfig}")
    check("tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token" in kubeconfig, "kubeconfig tokenFile")
    role = r.get("ClusterRole", f"{r.full}-node")
    with open(os.environ["SYSTEM_NODE_ROLE"], encoding="utf-8") as f:
        upstream = rule_triples(json.load(f)["rules"])
    ours = rule_triples(role.get("rules", []))
    check(ours == upstream, f"ClusterRole differs from the API server's system:node: missing {sorted(upstream - ours)}, extra {sorted(ours - upstream)}")
    binding = r.get("ClusterRoleBinding", f"{r.full}-node")
    check(binding.get("roleRef", {}).get("name") == f"{r.full}-node", f"roleRef {binding.get('roleRef')}")
    check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": r.pod.get("serviceAccountName"), "namespace": r.namespace}],
          f"subjects {binding.get('subjects')}")


def monitor_common(r, spec, endpoints_key):
    check(spec.get("selector", {}).get("matchLabels") == r.ds["spec"]["selector"]["matchLabels"], f"selector {spec.get('selector')}")
    check(spec.get("namespaceSelector") == {"matchNames": [r.namespace]}, f"namespaceSelector {spec.get('namespaceSelector')}")
    eps = spec.get(endpoints_key, [])
    check([e.get("path") for e in eps] == ["/metrics", "/metrics/probes", "/metrics/cadvisor"]
          and all(e.get("port") == "read-only" and e.get("scheme") == "http" for e in eps),
          f"{endpoints_key} {eps}")
    ports = {p["name"]: p for p in r.container.get("ports", [])}
    check(ports.get("read-only", {}).get("containerPort") == r.config().get("readOnlyPort"), f"ports {ports}")


def case_podmonitor(r):
    node_agent_basics(r)
    pm = r.get("PodMonitor", r.full)
    check(pm.get("metadata", {}).get("labels", {}).get("release") == "prom", f"PodMonitor labels {pm.get('metadata', {}).get('labels')}")
    monitor_common(r, pm.get("spec", {}), "podMetricsEndpoints")
    check(not any(k in ("Service", "ServiceMonitor") for k, _ in r.objs), f"kinds {r.kinds()}")


def case_servicemonitor(r):
    node_agent_basics(r)
    sm = r.get("ServiceMonitor", r.full)
    monitor_common(r, sm.get("spec", {}), "endpoints")
    svc = r.get("Service", f"{r.full}-metrics")
    check(svc.get("spec", {}).get("clusterIP") == "None", f"Service clusterIP {svc.get('spec', {}).get('clusterIP')}")
    check(svc.get("spec", {}).get("selector") == r.ds["spec"]["selector"]["matchLabels"], "Service selector")
    check(svc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name") == "mini-kubelet", "Service labels (the ServiceMonitor selects them)")
    check(not any(k == "PodMonitor" for k, _ in r.objs), f"kinds {r.kinds()}")


def case_standalone(r):
    node_agent_basics(r)
    check(r.arg("kubeconfig") is None and r.arg("bootstrap-kubeconfig") is None, f"credentials flags in mode none: {r.args}")
    check(not any(v["name"] == "credentials" for v in r.pod.get("volumes", [])), "a credentials volume in mode none")
    check(r.config().get("staticPodPath") == "/etc/mk/static", f"staticPodPath {r.config().get('staticPodPath')}")
    no_rbac(r)


CASES = {
    "default": case_default,
    "docker": case_docker,
    "bootstrap-token": case_bootstrap_token,
    "kubeconfig-existing": case_kubeconfig_existing,
    "kubeconfig-inline": case_kubeconfig_inline,
    "service-account": case_service_account,
    "podmonitor": case_podmonitor,
    "servicemonitor": case_servicemonitor,
    "standalone": case_standalone,
}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in CASES:
        print(f"usage: {sys.argv[0]} {{{','.join(CASES)}}} OBJECTS.json", file=sys.stderr)
        return 2
    case, path = sys.argv[1], sys.argv[2]
    r = Rendered(path)
    CASES[case](r)
    if failures:
        print(f"chart case {case}: {len(failures)} assertion(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"chart case {case}: ok ({', '.join(r.kinds())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
