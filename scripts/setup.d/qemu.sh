# vm-tests: real VMs under QEMU (TCG; no KVM, no vhost-net here) booting a
# guest built from Debian packages: the cloud kernel (downloaded, not
# installed), busybox-static and iperf3 in an initramfs (cpio).
# The guest is cached under /var/cache/virtlink/guest/<recipe hash>, so this
# is quick once built; vm-tests/guest/build-guest.sh --force rebuilds it.
apt_install qemu-system-x86 busybox-static cpio gzip iperf3 dhcpcd-base iproute2 util-linux
log "vm-tests guest: $("$here/../vm-tests/guest/build-guest.sh")"
