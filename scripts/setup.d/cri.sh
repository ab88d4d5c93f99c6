# The containerd end-to-end test (cni/tests/runtime_containerd.rs): Debian's
# containerd and runc, a static pause (catatonit) and busybox for the test
# image, and a CRI client. The client's PyPI package pins an older protobuf
# than grpcio-tools needs, so it lives in its own virtualenv.
apt_install containerd runc catatonit busybox-static
CRI_VENV=/opt/virtlink/cri-venv
if ! "$CRI_VENV/bin/python" -c 'import cri_api.v1.api_pb2' 2>/dev/null; then
  log "creating the CRI client virtualenv in $CRI_VENV"
  mkdir -p /opt/virtlink
  python3 -m venv "$CRI_VENV"
  "$CRI_VENV/bin/pip" install -q --disable-pip-version-check container-runtime-interface-api
fi
