#!/usr/bin/env python3
"""Lays out on this host what the kubelet would give the chart's agent container, and prints its
command line, so that chart-test.sh can run the agent binary exactly as the rendered DaemonSet
would run it, without an image:

    pod-on-host.py OBJECTS.json DIR NODE_NAME > argv (NUL-separated)

OBJECTS.json is the server-side dry run's output. Every configMap or secret volume of the pod is
written under DIR/<volume name>/ (each key a file, secrets decoded, mode 0600) and its mountPath in
the arguments is replaced with that folder; hostPath volumes must be mounted at their own path (the
chart mounts them so), which holds on the host as it is. `$(NODE_NAME)` is expanded to NODE_NAME as
the downward API would (spec.nodeName). Fails on any volume kind it cannot lay out.
"""

import base64
import json
import os
import sys


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    path, root, node = sys.argv[1:]
    with open(path, encoding="utf-8") as f:
        items = json.load(f)["items"]
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in items}
    ds = [o for o in items if o["kind"] == "DaemonSet"]
    if len(ds) != 1:
        raise SystemExit(f"one DaemonSet expected, got {len(ds)}")
    pod = ds[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    replace = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            if volume["hostPath"]["path"] != mount["mountPath"]:
                raise SystemExit(f"hostPath {volume['hostPath']['path']} mounted at {mount['mountPath']}")
            continue
        if "configMap" in volume:
            data = by_kind[("ConfigMap", volume["configMap"]["name"])]["data"]
            files = {k: v.encode() for k, v in data.items()}
        elif "secret" in volume:
            secret = by_kind.get(("Secret", volume["secret"]["secretName"]))
            if secret is None:
                raise SystemExit(f"Secret {volume['secret']['secretName']} is not among the objects")
            files = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
        else:
            raise SystemExit(f"volume {mount['name']}: cannot lay out {sorted(volume)}")
        folder = os.path.join(root, mount["name"])
        os.makedirs(folder, exist_ok=True)
        for key, content in files.items():
            file = os.path.join(folder, key)
            with open(file, "wb") as f:
                f.write(content)
            os.chmod(file, 0o600)
        replace[mount["mountPath"].rstrip("/") + "/"] = folder + "/"
    env = {"NODE_NAME": node}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    argv = []
    for arg in container.get("command", []) + container.get("args", []):
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value)
        for prefix, folder in replace.items():
            arg = arg.replace(prefix, folder)
        argv.append(arg)
    sys.stdout.write("\0".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
