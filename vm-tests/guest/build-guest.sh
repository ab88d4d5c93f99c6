#!/usr/bin/env bash
# Builds the virtlink test guest (kernel + initramfs) or finds it in the cache.
#
#   vm-tests/guest/build-guest.sh [--force]
#
# Prints the guest directory on stdout; it holds `vmlinuz`, `initrd.img` and
# `recipe` (what went in). The directory is $VIRTLINK_GUEST_DIR when set, else
# /var/cache/virtlink/guest/KEY, KEY being a hash of this script, `init`,
# `udhcpc.script` and the dhcpcd files: editing any of them yields a fresh
# build. --force rebuilds.
#
# Guest = the kernel of Debian's linux-image-cloud-amd64 (fetched with
# `apt-get download`, unpacked with `dpkg-deb -x`, never installed) + an
# initramfs of busybox-static, the virtio-net modules and `init`, followed by a
# second cpio with iperf3 and dhcpcd (the DHCPv6 client; busybox's udhcpc
# does IPv4) and the libraries `ldd` lists for them.
# Needs (scripts/setup.d/qemu.sh installs them): busybox-static cpio iperf3 dhcpcd-base.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[build-guest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

force=0
case "${1:-}" in
  --force) force=1 ;;
  '') ;;
  *) die "usage: $0 [--force]" ;;
esac

key=$(cat "$here/build-guest.sh" "$here/init" "$here/udhcpc.script" "$here/dhcpcd.conf" \
  "$here/dhcpcd.script" | sha256sum | cut -c1-16)
dir=${VIRTLINK_GUEST_DIR:-/var/cache/virtlink/guest/$key}
complete() { [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ]; }

if [ "$force" = 0 ] && complete; then
  echo "$dir"
  exit 0
fi

mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
# Another build may have finished while we waited for the lock.
if [ "$force" = 0 ] && complete; then
  echo "$dir"
  exit 0
fi

for tool in busybox:/bin/busybox cpio:cpio iperf3:iperf3 dhcpcd:dhcpcd apt-get:apt-get dpkg-deb:dpkg-deb gzip:gzip; do
  command -v "${tool#*:}" >/dev/null || die "${tool%%:*} is missing: run scripts/setup.sh"
done

work=$(mktemp -d "$dir.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
start=$(date +%s)

# Kernel: the versioned package linux-image-cloud-amd64 depends on.
kernel_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then
  log "apt lists lack linux-image-cloud-amd64: apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  pkg=$(kernel_pkg)
fi
[ -n "$pkg" ] || die "cannot resolve the package linux-image-cloud-amd64 depends on"
log "fetching $pkg"
mkdir "$work/deb"
chmod 777 "$work/deb" # apt-get download runs as _apt when it can
(cd "$work/deb" && apt-get -q download "$pkg" >&2) || die "apt-get download $pkg failed"
dpkg-deb -x "$work"/deb/*.deb "$work/kernel"
kver=${pkg#linux-image-}
[ -s "$work/kernel/boot/vmlinuz-$kver" ] || die "$pkg has no /boot/vmlinuz-$kver"

# Base initramfs: busybox and its applet links, the virtio-net modules, init.
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/share/udhcpc,etc,lib/modules,proc,sys,dev,run,tmp,root,var}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list-full); do
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
  failover net_failover virtio_net; do
  src=$(find "$work/kernel/lib/modules/$kver" -name "$m.ko*" | head -n 1)
  [ -n "$src" ] || die "module $m not in $pkg"
  case "$src" in
    *.ko) cp "$src" "$root/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$src" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$root/lib/modules/$m.ko" ;;
    *) die "unsupported module file $src" ;;
  esac
done
install -m 755 "$here/init" "$root/init"
install -m 755 "$here/udhcpc.script" "$root/usr/share/udhcpc/default.script"
# dhcpcd runs privilege-separated as its own user, chrooted in its home.
printf 'root:x:0:0:root:/root:/bin/sh\ndhcpcd:x:100:65534:dhcpcd:/usr/lib/dhcpcd:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
chmod 1777 "$root/tmp"

# Extra cpio: iperf3 and dhcpcd with their shared libraries, dhcpcd's config
# and hook script.
extra=$work/extra
iperf3=$(command -v iperf3)
dhcpcd=$(command -v dhcpcd)
mkdir -p "$extra/usr/bin" "$extra/usr/sbin" "$extra/etc" "$extra/usr/lib/dhcpcd" \
  "$extra/var/lib/dhcpcd" "$extra/usr/share/dhcpcd"
cp -L "$iperf3" "$extra/usr/bin/iperf3"
cp -L "$dhcpcd" "$extra/usr/sbin/dhcpcd"
install -m 644 "$here/dhcpcd.conf" "$extra/etc/dhcpcd.conf"
install -m 755 "$here/dhcpcd.script" "$extra/usr/share/dhcpcd/virtlink.script"
for lib in $({ ldd "$iperf3"; ldd "$dhcpcd"; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
  mkdir -p "$extra$(dirname "$lib")"
  cp -L "$lib" "$extra$lib"
done

mkcpio() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6); }
out=$work/out
mkdir "$out"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
{ mkcpio "$root"; mkcpio "$extra"; } >"$out/initrd.img"
cat >"$out/recipe" <<RECIPE
key=$key
kernel_package=$pkg
busybox=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)
iperf3=$(dpkg-query -W -f='${Version}' iperf3 2>/dev/null || echo unknown)
dhcpcd=$(dpkg-query -W -f='${Version}' dhcpcd-base 2>/dev/null || echo unknown)
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
RECIPE

rm -rf "$dir"
mv "$out" "$dir"
log "built $dir ($pkg) in $(($(date +%s) - start)) s"
echo "$dir"
