#!/usr/bin/env bash
# The README's main command: installs what it needs, builds virtlink, and runs
# the standalone demo: two KubeVirt VMs (real guests under QEMU) and a pod,
# attached to four networks (one of them an isolated eBPF network) by
# virtlink-cni, bound by vm-binder (masquerade and bridge bindings, DHCP for
# the guests), with traffic checked on every network from inside the guests;
# then removes everything again.
# `--keep` leaves the demo up (`virtlink exec`, `virtlink down` work on it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the demo creates network namespaces, links and VMs" >&2; exit 1; }
keep=0; [ "${1:-}" = "--keep" ] && keep=1
scripts/setup.sh
echo "[demo] building virtlink (release)..." >&2
cargo build --release --locked -q -p virtlink -p virtlink-cni
virtlink=./target/release/virtlink
example=examples/vms.yaml
$virtlink up "$example"
echo >&2
echo "[demo] inside vm-a: virtlink exec $example vm-a 'ip -4 addr; ip route'" >&2
$virtlink exec "$example" vm-a 'ip -4 addr; ip route'
if [ "$keep" = 0 ]; then
  $virtlink down "$example"
else
  echo "left up; remove with: $virtlink down $example" >&2
fi
