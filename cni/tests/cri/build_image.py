#!/usr/bin/env python3
"""Builds the containerd test image as a docker-archive tar (for `ctr images import`).

    build_image.py OUT.tar IMAGE_REF

One layer: Debian's busybox-static as /bin/busybox (with the applets the test
runs) and Debian's static catatonit as /pause. The entrypoint is the pause
process, so the same image is the CRI sandbox ("pause") image and the
container image. Standard library only; the output is byte-identical for the
same input binaries.
"""
import hashlib
import io
import json
import sys
import tarfile

BUSYBOX = "/bin/busybox"
CATATONIT = "/usr/bin/catatonit"
APPLETS = ["sh", "ping", "ip", "sleep", "cat", "ls", "echo", "true"]


def entry(name, kind, **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = 0
    info.uname = info.gname = "root"
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def add_file(tar, src, dst):
    with open(src, "rb") as f:
        data = f.read()
    tar.addfile(entry(dst, tarfile.REGTYPE, size=len(data), mode=0o755), io.BytesIO(data))


def layer():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "dev", "etc", "proc", "run", "sys", "tmp"]:
            tar.addfile(entry(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755))
        add_file(tar, BUSYBOX, "bin/busybox")
        add_file(tar, CATATONIT, "pause")
        for applet in APPLETS:
            tar.addfile(entry(f"bin/{applet}", tarfile.SYMTYPE, linkname="busybox", mode=0o777))
    return buf.getvalue()


def main():
    out, ref = sys.argv[1], sys.argv[2]
    data = layer()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause", "-P"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(data).hexdigest()]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, body in [("layer.tar", data), (config_name, config), ("manifest.json", manifest)]:
            tar.addfile(entry(name, tarfile.REGTYPE, size=len(body), mode=0o644), io.BytesIO(body))


if __name__ == "__main__":
    main()
