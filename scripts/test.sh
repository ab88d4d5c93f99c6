#!/usr/bin/env bash
# The README's test command: sets up what the tests need, then runs the
# formatting and lint checks and the whole test suite (privileged tests included:
# run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the tests create network namespaces, links and VMs" >&2; exit 1; }
scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries the tests run)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked -- --test-threads="${VIRTLINK_TEST_THREADS:-2}"
