#!/usr/bin/env python3
"""A kubelet stand-in for virtlink-device-plugin's integration tests.

No kubelet exists on the development machines, so this plays its part of the
deviceplugin/v1beta1 contract with an independent gRPC implementation (Python
grpcio), using stubs generated at start with grpcio-tools from the same
vendored proto (device-plugin/proto/api.proto):

- serves Registration on <kubelet-dir>/kubelet.sock;
- on each Register, like kubelet, connects back to the plugin's endpoint in
  <kubelet-dir>, calls GetDevicePluginOptions and keeps a ListAndWatch stream,
  recording every full device list it receives;
- "restart" does what a kubelet restart does: stops serving, deletes every
  socket in <kubelet-dir> and serves a fresh kubelet.sock.

The Rust test drives it with one JSON command per stdin line and reads one
JSON reply per stdout line.
"""
import argparse
import glob
import json
import os
import sys
import threading
import time
from concurrent import futures


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc

    os.makedirs(out_dir, exist_ok=True)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(proto_dir, "api.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)


class Watch:
    """kubelet's side of one plugin endpoint: options plus a ListAndWatch stream."""

    def __init__(self, grpc, pb, pb_grpc, path):
        self.lock = threading.Lock()
        self.updates = 0
        self.devices = []
        self.error = None
        self.ended = False
        self.options = None
        # kubelet >= 1.26 sends `:authority: localhost` on unix sockets
        # (kubernetes/kubernetes#112597); grpcio would send the socket path,
        # which HTTP/2 servers built on h2 (tonic) reject as malformed.
        self.channel = grpc.insecure_channel(
            "unix://" + path, options=[("grpc.default_authority", "localhost")]
        )
        self.stub = pb_grpc.DevicePluginStub(self.channel)
        self.pb = pb
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            o = self.stub.GetDevicePluginOptions(self.pb.Empty(), timeout=5)
            with self.lock:
                self.options = {
                    "pre_start_required": o.pre_start_required,
                    "get_preferred_allocation_available": o.get_preferred_allocation_available,
                }
            for resp in self.stub.ListAndWatch(self.pb.Empty()):
                devs = [
                    {
                        "id": d.ID,
                        "health": d.health,
                        "numa": [n.ID for n in d.topology.nodes] if d.HasField("topology") else [],
                    }
                    for d in resp.devices
                ]
                with self.lock:
                    self.devices = devs
                    self.updates += 1
        except Exception as e:  # the stream ends when either side goes away
            with self.lock:
                self.error = str(e)
        with self.lock:
            self.ended = True

    def view(self):
        with self.lock:
            return {
                "updates": self.updates,
                "devices": list(self.devices),
                "options": self.options,
                "ended": self.ended,
                "error": self.error,
            }

    def close(self):
        self.channel.close()


class Kubelet:
    def __init__(self, grpc, pb, pb_grpc, kubelet_dir):
        self.grpc, self.pb, self.pb_grpc = grpc, pb, pb_grpc
        self.dir = kubelet_dir
        self.lock = threading.Lock()
        self.registrations = []
        self.watches = {}
        self.server = None
        self.generation = 0

    def start(self):
        kubelet = self

        class Registration(self.pb_grpc.RegistrationServicer):
            def Register(self, request, context):
                if request.version != "v1beta1":
                    context.abort(kubelet.grpc.StatusCode.INVALID_ARGUMENT, "unsupported version")
                path = os.path.join(kubelet.dir, request.endpoint)
                if not os.path.exists(path):
                    context.abort(kubelet.grpc.StatusCode.FAILED_PRECONDITION, "no socket " + path)
                w = Watch(kubelet.grpc, kubelet.pb, kubelet.pb_grpc, path)
                with kubelet.lock:
                    old = kubelet.watches.get(request.resource_name)
                    kubelet.watches[request.resource_name] = w
                    kubelet.registrations.append(
                        {
                            "resource": request.resource_name,
                            "endpoint": request.endpoint,
                            "version": request.version,
                            "generation": kubelet.generation,
                            "preferred": request.options.get_preferred_allocation_available,
                        }
                    )
                if old is not None:
                    old.close()
                return kubelet.pb.Empty()

        self.generation += 1
        sock = os.path.join(self.dir, "kubelet.sock")
        self.server = self.grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.pb_grpc.add_RegistrationServicer_to_server(Registration(), self.server)
        self.server.add_insecure_port("unix://" + sock)
        self.server.start()

    def restart(self):
        self.server.stop(grace=None).wait()
        with self.lock:
            watches = list(self.watches.values())
            self.watches.clear()
        for w in watches:
            w.close()
        # kubelet removes every socket in its dir when it starts.
        for f in glob.glob(os.path.join(self.dir, "*.sock")):
            os.remove(f)
        time.sleep(0.1)
        self.start()

    def stub(self, resource):
        with self.lock:
            w = self.watches.get(resource)
        if w is None:
            raise KeyError("resource not registered: " + resource)
        return w.stub

    def handle(self, c):
        cmd = c["cmd"]
        pb = self.pb
        if cmd == "registrations":
            with self.lock:
                return {"registrations": list(self.registrations)}
        if cmd == "devices":
            with self.lock:
                w = self.watches.get(c["resource"])
            return w.view() if w else {"updates": 0, "devices": [], "options": None, "ended": False, "error": "not registered"}
        if cmd == "allocate":
            req = pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=ids) for ids in c["ids"]]
            )
            try:
                resp = self.stub(c["resource"]).Allocate(req, timeout=5)
            except self.grpc.RpcError as e:
                return {"ok": False, "code": e.code().name, "details": e.details()}
            return {
                "ok": True,
                "responses": [
                    {
                        "envs": dict(r.envs),
                        "devices": [
                            {"container_path": d.container_path, "host_path": d.host_path, "permissions": d.permissions}
                            for d in r.devices
                        ],
                        "mounts": [m.host_path for m in r.mounts],
                    }
                    for r in resp.container_responses
                ],
            }
        if cmd == "preferred":
            req = pb.PreferredAllocationRequest(
                container_requests=[
                    pb.ContainerPreferredAllocationRequest(
                        available_deviceIDs=c["available"],
                        must_include_deviceIDs=c.get("must", []),
                        allocation_size=c["size"],
                    )
                ]
            )
            resp = self.stub(c["resource"]).GetPreferredAllocation(req, timeout=5)
            return {"ids": list(resp.container_responses[0].deviceIDs)}
        if cmd == "prestart":
            self.stub(c["resource"]).PreStartContainer(pb.PreStartContainerRequest(devices_ids=c["ids"]), timeout=5)
            return {"ok": True}
        if cmd == "restart":
            self.restart()
            return {"ok": True, "generation": self.generation}
        if cmd == "quit":
            self.server.stop(grace=None)
            return {"ok": True}
        raise ValueError("unknown command " + cmd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--stubs-dir", required=True)
    ap.add_argument("--kubelet-dir", required=True)
    a = ap.parse_args()
    generate_stubs(a.proto_dir, a.stubs_dir)
    import grpc
    import api_pb2 as pb
    import api_pb2_grpc as pb_grpc

    k = Kubelet(grpc, pb, pb_grpc, a.kubelet_dir)
    k.start()
    print(json.dumps({"ready": True, "grpc": grpc.__version__}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            c = json.loads(line)
            reply = k.handle(c)
        except Exception as e:
            reply = {"exception": repr(e)}
        print(json.dumps(reply), flush=True)
        if c.get("cmd") == "quit":
            break


if __name__ == "__main__":
    main()
