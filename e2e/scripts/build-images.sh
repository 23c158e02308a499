#!/usr/bin/env bash
# Builds the two OCI image archives the end-to-end tests use, without any network,
# from Debian packages already installed (busybox-static, catatonit):
#   OUTDIR/pause.tar    mini-kubelet.local/pause:3.10    /pause = catatonit, entrypoint ["/pause","-P"]
#   OUTDIR/busybox.tar  mini-kubelet.local/busybox:1.36  static busybox + applet symlinks, passwd/group, /tmp
# Each is a one-layer OCI layout tar that `ctr -n k8s.io images import` accepts. The output is
# deterministic (fixed mtimes/owners, sorted entries, gzip without timestamp); when both archives exist
# and their inputs (this script, the two binaries) are unchanged, nothing is rebuilt.
# Usage: build-images.sh OUTDIR
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
outdir=$1
script=$(readlink -f "${BASH_SOURCE[0]}")
busybox=/bin/busybox
catatonit=/usr/bin/catatonit
for bin in "$busybox" "$catatonit"; do
  if ! [[ -x $bin ]]; then
    echo "$0: $bin missing: run e2e/scripts/install-deps.sh" >&2
    exit 1
  fi
done
case "$(dpkg --print-architecture 2>/dev/null || echo amd64)" in
  arm64) arch=arm64 ;;
  *) arch=amd64 ;;
esac

mkdir -p "$outdir"
stamp="$outdir/.inputs"
inputs=$(sha256sum "$script" "$busybox" "$catatonit" | awk '{print $1}'; echo "$arch")
if [[ -f $outdir/pause.tar && -f $outdir/busybox.tar && -f $stamp ]] && [[ "$(cat "$stamp")" == "$inputs" ]]; then
  echo "build-images: $outdir/pause.tar and $outdir/busybox.tar are up to date"
  exit 0
fi

python3 - "$outdir" "$busybox" "$catatonit" "$arch" <<'PY'
import gzip, hashlib, io, json, os, subprocess, sys, tarfile

outdir, busybox, catatonit, arch = sys.argv[1:5]
MTIME = 0  # 1970-01-01: reproducible output
CREATED = "1970-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tar_bytes(entries):
    """entries: list of (path, kind, data_or_target, mode, uid, gid) -> deterministic tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, payload, mode, uid, gid in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.mtime, info.mode, info.uid, info.gid = MTIME, mode, uid, gid
            info.uname = info.gname = ""
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image(name, ref, layer_entries, config):
    layer = tar_bytes(layer_entries)
    layer_gz = gzip_bytes(layer)
    image_config = {
        "created": CREATED,
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
        "history": [{"created": CREATED, "created_by": "e2e/scripts/build-images.sh"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha(layer_gz),
            "size": len(layer_gz),
        }],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(manifest_bytes),
            "size": len(manifest_bytes),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": ref,
                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
            },
        }],
    }
    index_bytes = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    blob = lambda data: ("blobs/sha256/" + hashlib.sha256(data).hexdigest(), "file", data, 0o644, 0, 0)
    archive = tar_bytes([
        ("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}', 0o644, 0, 0),
        ("index.json", "file", index_bytes, 0o644, 0, 0),
        ("blobs", "dir", None, 0o755, 0, 0),
        ("blobs/sha256", "dir", None, 0o755, 0, 0),
        blob(config_bytes),
        blob(manifest_bytes),
        blob(layer_gz),
    ])
    target = os.path.join(outdir, name)
    with open(target + ".tmp", "wb") as f:
        f.write(archive)
    os.replace(target + ".tmp", target)
    print(f"build-images: {target}  {ref}  manifest {sha(manifest_bytes)}")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def d(path, mode=0o755, uid=0, gid=0):
    return (path, "dir", None, mode, uid, gid)


# (a) pause: catatonit's static binary as /pause.
pause_entries = [("pause", "file", read(catatonit), 0o755, 0, 0)]
for p in ("dev", "proc", "sys", "etc"):
    pause_entries.append(d(p))
write_image("pause.tar", "mini-kubelet.local/pause:3.10", pause_entries, {
    "Env": [PATH_ENV],
    "Entrypoint": ["/pause", "-P"],
    "WorkingDir": "/",
})

# (b) busybox: /bin/busybox plus every applet busybox knows, at its usual path, as a symlink.
applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout.split()
required = {"sh", "sleep", "echo", "cat", "wget", "id", "ls", "env", "true", "false", "kill", "printf",
            "date", "nc", "httpd", "mkdir", "touch", "hostname"}
missing = required - {a.rsplit("/", 1)[-1] for a in applets}
if missing:
    sys.exit(f"build-images: {busybox} lacks applets {sorted(missing)}")
entries = {}
for p in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "root", "home",
          "var", "run"):
    entries[p] = d(p, 0o700 if p == "root" else 0o755)
entries["tmp"] = d("tmp", 0o1777)
entries["var/tmp"] = d("var/tmp", 0o1777)
entries["home/app"] = d("home/app", 0o755, 1000, 1000)
entries["bin/busybox"] = ("bin/busybox", "file", read(busybox), 0o755, 0, 0)
for applet in applets:
    if "/" not in applet or applet == "bin/busybox":
        continue  # e.g. "linuxrc" at the root
    entries[applet] = (applet, "symlink", "/bin/busybox", 0o777, 0, 0)
entries["etc/passwd"] = ("etc/passwd", "file", (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n").encode(), 0o644, 0, 0)
entries["etc/group"] = ("etc/group", "file", (
    "root:x:0:\n"
    "app:x:1000:\n"
    "nobody:x:65534:\n").encode(), 0o644, 0, 0)
write_image("busybox.tar", "mini-kubelet.local/busybox:1.36", list(entries.values()), {
    "Env": [PATH_ENV],
    "Cmd": ["sh"],
    "WorkingDir": "/",
})
PY

echo "$inputs" >"$stamp"
