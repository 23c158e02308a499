#!/usr/bin/env bash
# Builds local stand-ins for the images the CRI validation suite (critest, cri-tools v1.37) pulls by
# their upstream names, without any network, into one OCI layout folder OUTDIR/critest-images (plus
# refs.txt: one `LAYOUT-REF REPOSITORY:TAG` line per image to push; REPOSITORY is the upstream name
# without its registry host, e.g. `e2e-test-images/busybox:1.29-2`). Every image is the busybox layer
# of build-images.sh plus one small layer of its own, so each has its own image ID (critest removes
# images by ID, and an image ID shared by two names would remove both):
#   e2e-test-images/busybox:1.29-2   the default container image (sh, top, ping, nc, hostname...)
#   e2e-test-images/nginx:1.14-2     /proc/1/cmdline holds "master process", /var/run/nginx.pid, and
#                                    HTTP 200 on port 80 (busybox httpd), as the tests look for nginx
#   e2e-test-images/httpd:2.4.39-4   prints "httpd" on stdout, HTTP 200 on port 80
#   e2e-test-images/nonewprivs:1.3   a setuid-root static program printing "Effective uid: N"
#                                    (built here with Go: CGO_ENABLED=0)
#   k8s-staging-cri-tools/test-image-{user-uid,user-username,user-uid-group,user-username-group,
#     predefined-group,latest,tag:test,tag:all,1,2,3}, test-image-tags:{1,2,3} (one image, three
#     tags), hostnet-nginx-<arch> (HTTP on host port 12003)
#   pause:3.9                        the pause image (catatonit) of build-images.sh
# Not built: test-image-digest@sha256:9700f9a2..., which only upstream's exact manifest can match.
# The output is deterministic and rebuilt only when its inputs (this script, the two archives of
# build-images.sh) change. Progress goes to stderr; the layout folder is printed on stdout.
# Usage: critest-images.sh OUTDIR [IMAGEDIR]
#   IMAGEDIR (default $MK_E2E_IMAGE_DIR, else <repo>/target/e2e-images) holds busybox.tar and
#   pause.tar; they are built there by build-images.sh when missing.
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 OUTDIR [IMAGEDIR]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
script=$(readlink -f "${BASH_SOURCE[0]}")
outdir=$1
imagedir=${2:-${MK_E2E_IMAGE_DIR:-$repo/target/e2e-images}}
layout=$outdir/critest-images
stamp=$layout/.inputs

say() { echo "critest-images: $*" >&2; }

if ! [[ -f $imagedir/busybox.tar && -f $imagedir/pause.tar ]]; then
  "$here/build-images.sh" "$imagedir" >&2
fi
case "$(dpkg --print-architecture 2>/dev/null || echo amd64)" in
  arm64) arch=arm64 ;;
  *) arch=amd64 ;;
esac
inputs=$(sha256sum "$script" "$imagedir/busybox.tar" "$imagedir/pause.tar" | awk '{print $1}'; echo "$arch")
if [[ -f $layout/index.json && -f $layout/refs.txt && -f $stamp ]] && [[ "$(cat "$stamp")" == "$inputs" ]]; then
  say "$layout is up to date"
  echo "$layout"
  exit 0
fi

go=$(command -v go || true)
[[ -n $go ]] || go=/usr/local/go/bin/go
if ! [[ -x $go ]]; then
  say "no Go toolchain (not in PATH, not at /usr/local/go): it builds the nonewprivs program"
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/main.go" <<'EOF'
// The nonewprivs check of critest: run as a non-root user, this setuid-root program reports the
// effective uid it got (0 unless no_new_privs is set).
package main

import (
	"fmt"
	"os"
)

func main() { fmt.Printf("Effective uid: %d\n", os.Geteuid()) }
EOF
(cd "$work" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOFLAGS=-buildvcs=false GO111MODULE=off \
  "$go" build -trimpath -ldflags='-s -w' -o nonewprivs main.go)

rm -rf "$layout"
mkdir -p "$layout"
python3 - "$layout" "$imagedir/busybox.tar" "$imagedir/pause.tar" "$work/nonewprivs" "$arch" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile

layout, busybox_tar, pause_tar, nonewprivs, arch = sys.argv[1:6]
CREATED = "1970-01-01T00:00:00Z"
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(data):
    digest = sha(data)
    with open(os.path.join(blobs, digest.split(":", 1)[1]), "wb") as f:
        f.write(data)
    return digest


def read_image(path):
    """(config dict, [(layer media type, layer bytes)]) of a one-image OCI archive."""
    src = tarfile.open(path)
    read = lambda name: src.extractfile(name).read()
    blob = lambda digest: read("blobs/" + digest.replace(":", "/"))
    index = json.loads(read("index.json"))
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    layers = [(l["mediaType"], blob(l["digest"])) for l in manifest["layers"]]
    return config, layers


def layer_tar(files):
    """files: (path, data, mode, uid, gid), data None for a dir or ("link", target) for a hard link
    to an earlier entry -> deterministic tar bytes (hard links after their targets)."""
    buf = io.BytesIO()
    order = lambda f: (isinstance(f[1], tuple), f[0])
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data, mode, uid, gid in sorted(files, key=order):
            info = tarfile.TarInfo(path)
            info.mtime, info.mode, info.uid, info.gid = 0, mode, uid, gid
            info.uname = info.gname = ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


manifests = []
refs = []


def image(ref, tags, base, files, **config_changes):
    """An image of `base` (config, layers) plus one layer of `files`, pushed as each of `tags`."""
    base_config, base_layers = base
    marker = ("etc/critest-image", f"{tags[0]}\n".encode(), 0o644, 0, 0)
    extra = layer_tar([marker] + files)
    extra_gz = gz(extra)
    config = json.loads(json.dumps(base_config))
    config["config"].update(config_changes)
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"] + [sha(extra)]
    config["history"] = config.get("history", []) + [
        {"created": CREATED, "created_by": f"e2e/scripts/critest-images.sh: {tags[0]}"}]
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    layers = [{"mediaType": t, "digest": put(d), "size": len(d)} for t, d in base_layers]
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": put(extra_gz), "size": len(extra_gz)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config_bytes), "size": len(config_bytes)},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifests.append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(manifest_bytes),
        "size": len(manifest_bytes),
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": ref},
    })
    refs.extend(f"{ref} {tag}" for tag in tags)


def script(path, text):
    return (path, text.encode(), 0o755, 0, 0)


busybox = read_image(busybox_tar)
pause = read_image(pause_tar)
passwd = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"www-data:x:33:33:www-data:/var/www:/bin/false\n"
          b"default-user:x:1000:1000::/home/default-user:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
group = (b"root:x:0:\n"
         b"www-data:x:33:\n"
         b"default-user:x:1000:\n"
         b"group-defined-in-image:x:50000:default-user\n"
         b"nobody:x:65534:\n")
users = [("etc/passwd", passwd, 0o644, 0, 0), ("etc/group", group, 0o644, 0, 0)]
index_html = (b"<html><body><h1>Welcome to nginx!</h1>"
              b"<p>A stand-in of mini-kubelet's e2e tests (busybox httpd).</p></body></html>\n")

# A web server as PID 1 that stops at once on TERM (a shell without a trap waits out the grace period).
def server(port, greeting="", pidfile=""):
    return (
        "#!/bin/sh\n"
        + (f"echo {greeting}\n" if greeting else "")
        + (f"mkdir -p {os.path.dirname(pidfile)} && echo $$ > {pidfile}\n" if pidfile else "")
        + f"httpd -f -v -p {port} -h /www &\n"
        "child=$!\n"
        "trap 'kill $child; exit 0' TERM INT\n"
        "wait $child\n")

www = [("www", None, 0o755, 0, 0), ("www/index.html", index_html, 0o644, 0, 0)]

# busybox as upstream's image has it: applets as hard links (critest masks /bin/ls, which must not
# mask the shell too, as it would through a symlink), plus the two applets Debian's busybox-static
# lacks and critest calls: pgrep (from /proc/*/comm) and `ipcs -m` (from /proc/sysvipc/shm).
base_layer = tarfile.open(fileobj=io.BytesIO(gzip.decompress(busybox[1][0][1])))
busybox_bin = base_layer.extractfile("bin/busybox").read()
scripts = {
    "usr/bin/pgrep": "#!/bin/sh\n"
    "# pgrep NAME (stand-in): the pids of the processes whose name is NAME\n"
    "status=1\n"
    "for p in /proc/[0-9]*; do\n"
    "  read -r comm <\"$p/comm\" 2>/dev/null || continue\n"
    "  if [ \"$comm\" = \"$1\" ]; then echo \"${p#/proc/}\"; status=0; fi\n"
    "done\n"
    "exit $status\n",
    "usr/bin/ipcs": "#!/bin/sh\n"
    "# ipcs -m (stand-in): the shared memory segments of this IPC namespace\n"
    "echo '------ Shared Memory Segments --------'\n"
    "echo 'key        shmid      owner      perms      bytes      nattch'\n"
    "awk 'NR > 1 { printf \"0x%08x %-10s %-10s %-10s %-10s %s\\n\", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm\n",
}
applets = [m.name for m in base_layer.getmembers()
           if m.issym() and m.linkname == "/bin/busybox" and m.name not in scripts]
image("busybox", ["e2e-test-images/busybox:1.29-2"], busybox,
      [("bin/busybox", busybox_bin, 0o755, 0, 0)]
      + [(a, ("link", "bin/busybox"), 0o755, 0, 0) for a in applets]
      + [script(path, text) for path, text in scripts.items()])
# critest reads "master process" in /proc/1/cmdline, so the script's own arguments say it.
image("nginx", ["e2e-test-images/nginx:1.14-2"], busybox,
      www + [script("usr/sbin/nginx", server(80, pidfile="/var/run/nginx.pid"))],
      Entrypoint=["/usr/sbin/nginx", "-g", "daemon off; master process"], Cmd=None,
      ExposedPorts={"80/tcp": {}})
image("httpd", ["e2e-test-images/httpd:2.4.39-4"], busybox,
      www + [script("usr/local/bin/httpd-foreground",
                    server(80, greeting="'httpd: serving /www on port 80'"))],
      Entrypoint=None, Cmd=["httpd-foreground"], ExposedPorts={"80/tcp": {}},
      Env=["PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"])
with open(nonewprivs, "rb") as f:
    nnp = f.read()
image("nonewprivs", ["e2e-test-images/nonewprivs:1.3"], busybox,
      [("usr/local/bin/nnp", nnp, 0o4755, 0, 0)], Entrypoint=["/usr/local/bin/nnp"], Cmd=None)
image("hostnet-nginx", [f"k8s-staging-cri-tools/hostnet-nginx-{arch}:latest"], busybox,
      www + [script("usr/sbin/nginx", server(12003))], Entrypoint=["/usr/sbin/nginx"], Cmd=None)
staging = "k8s-staging-cri-tools/"
for name, user in [("user-uid", "1002"), ("user-username", "www-data"),
                   ("user-uid-group", "1003:1003"), ("user-username-group", "www-data:www-data"),
                   ("predefined-group", "1000")]:
    image(name, [f"{staging}test-image-{name}:latest"], busybox, users, User=user)
for name, tags in [("latest", ["test-image-latest:latest"]), ("tag-test", ["test-image-tag:test"]),
                   ("tag-all", ["test-image-tag:all"]), ("one", ["test-image-1:latest"]),
                   ("two", ["test-image-2:latest"]), ("three", ["test-image-3:latest"]),
                   ("tags", ["test-image-tags:1", "test-image-tags:2", "test-image-tags:3"])]:
    image(name, [staging + t for t in tags], busybox, [])
image("pause", ["pause:3.9"], pause, [])

index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": manifests}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
with open(os.path.join(layout, "refs.txt"), "w") as f:
    f.write("\n".join(refs) + "\n")
print(f"critest-images: {len(manifests)} images, {len(refs)} tags in {layout}", file=sys.stderr)
PY
echo "$inputs" >"$stamp"
echo "$layout"
