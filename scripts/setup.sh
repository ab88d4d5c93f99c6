#!/usr/bin/env bash
# Installs everything virtlink's demo and tests need on a fresh Debian bookworm
# machine (root). Quick when everything is already there.
# Each part adds its own needs in scripts/setup.d/*.sh (sourced in order).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# apt_install PKG...: installs the packages that are missing, nothing else.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    APT_UPDATED=1
  fi
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pip_install PKG...: installs Python packages that are missing.
pip_install() {
  local missing=()
  for p in "$@"; do
    python3 -m pip show -q "${p%%[=<>]*}" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "pip installing ${missing[*]}"
  python3 -m pip install -q --disable-pip-version-check "${missing[@]}"
}

apt_install containernetworking-plugins iproute2 nftables iptables jq iperf3 \
  ethtool tcpdump procps psmisc util-linux kmod ca-certificates iputils-ping netcat-openbsd \
  sockperf

for part in "$here"/setup.d/*.sh; do
  [ -e "$part" ] || continue
  # shellcheck source=/dev/null
  . "$part"
done

# Rust components the checks use.
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
log "ready"
