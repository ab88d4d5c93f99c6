#!/usr/bin/env python3
"""A small CRI client that plays kubelet's part against containerd.

Run with the CRI virtualenv's python (scripts/setup.d/containerd.sh makes it):
    cri.py SOCKET COMMAND [ARG...]
Every command prints one JSON object on stdout; on a gRPC error it prints
{"error": ..., "code": ...} and exits 1.

Commands:
  run-sandbox SPEC_JSON         RunPodSandbox; SPEC = {"name", "namespace", "uid",
                                "annotations"?, "labels"?, "hostname"?}
                                -> {"id"}
  create-container SPEC_JSON    CreateContainer + StartContainer; SPEC = {"sandbox_id",
                                "sandbox": <run-sandbox SPEC>, "name", "image", "command"}
                                -> {"id"}
  exec ID TIMEOUT CMD...        ExecSync -> {"exit", "stdout", "stderr"}
  inspect ID                    PodSandboxStatus (verbose) -> {"state", "ip",
                                "additional_ips", "netns", "info"}
  stop ID                       StopPodSandbox (containerd sends CNI DEL) -> {}
  remove ID                     RemovePodSandbox (a second DEL, empty CNI_NETNS) -> {}
  list                          ListPodSandbox -> {"sandboxes": [{"id", "state", "name"}]}
  wait-ready TIMEOUT            polls Status until the runtime and its network
                                (a CNI config loaded) are ready -> {"conditions"}
"""
import json
import sys
import time

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1.api_pb2_grpc import RuntimeServiceStub


def sandbox_config(spec):
    name, namespace = spec["name"], spec["namespace"]
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=spec["uid"], attempt=0),
        hostname=spec.get("hostname", name),
        annotations=spec.get("annotations", {}),
        labels={
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": namespace,
            "io.kubernetes.pod.uid": spec["uid"],
            **spec.get("labels", {}),
        },
        linux=api.LinuxPodSandboxConfig(
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(
                    network=api.POD, pid=api.CONTAINER, ipc=api.POD
                ),
            )
        ),
    )


def run_sandbox(rt, spec):
    req = api.RunPodSandboxRequest(config=sandbox_config(json.loads(spec)))
    return {"id": rt.RunPodSandbox(req, timeout=90).pod_sandbox_id}


def create_container(rt, spec):
    spec = json.loads(spec)
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=spec["name"], attempt=0),
        image=api.ImageSpec(image=spec["image"]),
        command=spec["command"],
        linux=api.LinuxContainerConfig(),
    )
    created = rt.CreateContainer(
        api.CreateContainerRequest(
            pod_sandbox_id=spec["sandbox_id"],
            config=config,
            sandbox_config=sandbox_config(spec["sandbox"]),
        ),
        timeout=60,
    )
    rt.StartContainer(api.StartContainerRequest(container_id=created.container_id), timeout=60)
    return {"id": created.container_id}


def exec_sync(rt, cid, timeout, cmd):
    timeout = int(timeout)
    r = rt.ExecSync(
        api.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=timeout + 15
    )
    return {
        "exit": r.exit_code,
        "stdout": r.stdout.decode(errors="replace"),
        "stderr": r.stderr.decode(errors="replace"),
    }


def inspect(rt, sid):
    r = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=30)
    info = json.loads(r.info.get("info", "{}"))
    netns = ""
    for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            netns = ns.get("path", "")
    return {
        "state": api.PodSandboxState.Name(r.status.state),
        "ip": r.status.network.ip,
        "additional_ips": [a.ip for a in r.status.network.additional_ips],
        "netns": netns,
        "info": info,
    }


def list_sandboxes(rt):
    r = rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30)
    return {
        "sandboxes": [
            {"id": s.id, "state": api.PodSandboxState.Name(s.state), "name": s.metadata.name}
            for s in r.items
        ]
    }


def wait_ready(rt, timeout):
    deadline = time.monotonic() + float(timeout)
    while True:
        try:
            conds = rt.Status(api.StatusRequest(), timeout=5).status.conditions
            out = {c.type: {"status": c.status, "reason": c.reason, "message": c.message} for c in conds}
            if conds and all(c.status for c in conds):
                return {"conditions": out}
        except grpc.RpcError as e:
            out = {"rpc": {"status": False, "message": e.details() or str(e.code())}}
        if time.monotonic() > deadline:
            print(json.dumps({"error": "runtime not ready", "conditions": out}))
            sys.exit(1)
        time.sleep(0.1)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sock, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    rt = RuntimeServiceStub(grpc.insecure_channel(f"unix://{sock}"))
    if cmd == "run-sandbox":
        out = run_sandbox(rt, args[0])
    elif cmd == "create-container":
        out = create_container(rt, args[0])
    elif cmd == "exec":
        out = exec_sync(rt, args[0], args[1], args[2:])
    elif cmd == "inspect":
        out = inspect(rt, args[0])
    elif cmd == "stop":
        rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=args[0]), timeout=60)
        out = {}
    elif cmd == "remove":
        rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=args[0]), timeout=60)
        out = {}
    elif cmd == "list":
        out = list_sandboxes(rt)
    elif cmd == "wait-ready":
        out = wait_ready(rt, args[0])
    else:
        sys.exit(f"unknown command {cmd}\n{__doc__}")
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(json.dumps({"error": e.details(), "code": str(e.code())}))
        sys.exit(1)
