# virtlink-device-plugin: its integration tests run a kubelet stand-in written
# with Python grpcio (device-plugin/tests/kubelet_standin.py), whose stubs are
# generated at test time from device-plugin/proto/api.proto by grpcio-tools.
# python3 with pip is part of the machine; the Rust build needs no protoc
# (the protoc-bin-vendored crate ships one).
pip_install grpcio grpcio-tools
