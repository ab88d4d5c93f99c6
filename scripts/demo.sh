#!/usr/bin/env bash
# The README's main command: installs what it needs, builds virtlink, and runs
# the standalone demo (pods with several networks, traffic checked on each),
# then removes everything again. `--keep` leaves the demo up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the demo creates network namespaces and links" >&2; exit 1; }
keep=0; [ "${1:-}" = "--keep" ] && keep=1
scripts/setup.sh
echo "[demo] building virtlink (release)..." >&2
cargo build --release --locked -q -p virtlink -p virtlink-cni
example=examples/pods.yaml
./target/release/virtlink up "$example"
if [ "$keep" = 0 ]; then
  ./target/release/virtlink down "$example"
else
  echo "left up; remove with: ./target/release/virtlink down $example" >&2
fi
