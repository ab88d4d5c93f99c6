#!/usr/bin/env python3
"""A minimal CRI client playing kubelet's part against containerd.

Usage: cri.py SOCKET COMMAND [ARGS...]; prints JSON on stdout.
  run-sandbox NAME NAMESPACE UID ANNOTATIONS_JSON   -> {"id": ...}
  create-container SANDBOX_ID NAME NAMESPACE UID IMAGE CMD... -> {"id": ...}
  exec CONTAINER_ID TIMEOUT CMD...                   -> {"exit": N, "stdout": ..., "stderr": ...}
  stop-sandbox ID / remove-sandbox ID
  sandbox-status ID                                  -> {"ip": ..., "netns": ...}
"""
import json
import sys

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1.api_pb2_grpc import RuntimeServiceStub


def sandbox_config(name, namespace, uid, annotations):
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
        hostname=name,
        log_directory="",
        annotations=annotations,
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace},
        linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=api.POD, pid=api.CONTAINER, ipc=api.POD),
            )
        ),
    )


def main():
    sock, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    rt = RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))
    out = {}
    if cmd == "run-sandbox":
        name, ns, uid, ann = args[0], args[1], args[2], json.loads(args[3])
        r = rt.RunPodSandbox(api.RunPodSandboxRequest(config=sandbox_config(name, ns, uid, ann)), timeout=120)
        out = {"id": r.pod_sandbox_id}
    elif cmd == "create-container":
        sid, name, ns, uid, image, command = args[0], args[1], args[2], args[3], args[4], args[5:]
        cfg = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="work", attempt=0),
            image=api.ImageSpec(image=image),
            command=command,
            linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(privileged=False)),
        )
        r = rt.CreateContainer(
            api.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=sandbox_config(name, ns, uid, {})),
            timeout=60,
        )
        rt.StartContainer(api.StartContainerRequest(container_id=r.container_id), timeout=60)
        out = {"id": r.container_id}
    elif cmd == "exec":
        cid, timeout, command = args[0], int(args[1]), args[2:]
        r = rt.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=command, timeout=timeout), timeout=timeout + 10)
        out = {"exit": r.exit_code, "stdout": r.stdout.decode(), "stderr": r.stderr.decode()}
    elif cmd == "stop-sandbox":
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=args[0]), timeout=60)
    elif cmd == "remove-sandbox":
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=args[0]), timeout=60)
    elif cmd == "sandbox-status":
        r = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=args[0], verbose=True), timeout=30)
        info = json.loads(r.info.get("info", "{}"))
        netns = ""
        for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                netns = ns.get("path", "")
        out = {"ip": r.status.network.ip, "netns": netns, "state": r.status.state}
    else:
        sys.exit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(json.dumps({"error": e.details(), "code": str(e.code())}))
        sys.exit(1)
