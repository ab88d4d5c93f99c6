# vm-binder: dhcpcd (dhcpcd-base) is the DHCPv6 client of the IPv6 test and the
# test guest; nft loads the masquerade binding's ruleset (nftables), iproute2
# and ping/iperf3 are used by its integration tests, and the real-VM test
# (vm-binder/tests/vm_masquerade.rs) boots the vm-tests guest under QEMU,
# whose own packages and guest build come from vm-tests' setup.
apt_install nftables iproute2 iputils-ping iperf3 qemu-system-x86 busybox-static cpio dhcpcd-base
