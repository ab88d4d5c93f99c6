# Builds a docker-archive image with busybox-static and catatonit (pause).
import hashlib, io, json, os, sys, tarfile
out, name = sys.argv[1], sys.argv[2]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    def add_dir(p):
        i = tarfile.TarInfo(p); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"]:
        add_dir(d)
    t.add("/bin/busybox", "bin/busybox")
    t.add("/usr/bin/catatonit", "pause")
    for applet in ["sh", "ping", "ip", "sleep", "cat", "ls", "ifconfig", "nc", "echo"]:
        i = tarfile.TarInfo(f"bin/{applet}"); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; t.addfile(i)
data = layer.getvalue()
diff = "sha256:" + hashlib.sha256(data).hexdigest()
config = {"architecture": "amd64", "os": "linux",
          "config": {"Entrypoint": ["/pause", "-P"], "Env": ["PATH=/bin"]},
          "rootfs": {"type": "layers", "diff_ids": [diff]}}
cfg = json.dumps(config).encode()
cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
manifest = json.dumps([{"Config": cfg_name, "RepoTags": [name], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(out, "w") as t:
    for n, b in [("layer.tar", data), (cfg_name, cfg), ("manifest.json", manifest)]:
        i = tarfile.TarInfo(n); i.size = len(b); t.addfile(i, io.BytesIO(b))
