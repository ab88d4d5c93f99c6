# The containerd end-to-end tests (cni/tests/containerd.rs): Debian's
# containerd (with ctr and its CRI plugin) and runc; Debian's static catatonit
# (the pause process) and busybox-static, from which the tests build their
# image (cni/tests/cri/build_image.py); the reference CNI plugins; and the CRI
# client of cni/tests/cri/cri.py, PyPI's container-runtime-interface-api.
# That package pins protobuf 6 while the device plugin tests' grpcio-tools
# needs protobuf 7, so the client gets a virtualenv of its own (the tests find
# it at the same path; VIRTLINK_CRI_VENV overrides it for both).
apt_install containerd runc catatonit busybox-static containernetworking-plugins iproute2
CRI_VENV=${VIRTLINK_CRI_VENV:-/opt/virtlink/cri-venv}
CRI_API_VERSION=2.0.1
if ! "$CRI_VENV/bin/python" -c 'import grpc, cri_api.v1.api_pb2_grpc' 2>/dev/null; then
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  log "creating the CRI client virtualenv $CRI_VENV (container-runtime-interface-api $CRI_API_VERSION)"
  mkdir -p "$(dirname "$CRI_VENV")"
  python3 -m venv --clear "$CRI_VENV"
  "$CRI_VENV/bin/pip" install -q --disable-pip-version-check \
    "container-runtime-interface-api==$CRI_API_VERSION"
fi
