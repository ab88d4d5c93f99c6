//! Real-VM test harness: boots small Linux guests under QEMU (TCG) inside a
//! launcher pod's network namespace and runs commands in them over the serial
//! console.
//!
//! # Parts
//! - [`guest`]: the guest image. A Debian cloud kernel (fetched with
//!   `apt-get download`, unpacked, never installed) and a busybox initramfs
//!   with the virtio-net modules and iperf3, built by
//!   `vm-tests/guest/build-guest.sh` and cached in
//!   `/var/cache/virtlink/guest/<recipe hash>` (or `$VIRTLINK_GUEST_DIR`).
//!   The guest's `init` reads `virtlink.*` settings from the kernel command
//!   line (static addresses, default route, DHCP on all or some NICs, MTU)
//!   and prints [`READY_MARKER`] before starting a root shell on `ttyS0`.
//! - [`vm`]: [`Vm::boot`] starts QEMU from a [`VmSpec`] (namespace, tap
//!   NICs, memory, kernel command line, raw QEMU arguments), with its serial
//!   port on a Unix socket the harness reads and writes. [`Vm::run`] types a
//!   command into the guest shell and returns its output and exit status,
//!   framed by unique markers. Dropping a [`Vm`] powers the guest off
//!   (`poweroff -f`), kills QEMU if it hangs, and reaps it. QEMU is forked
//!   with a parent-death signal, so it also dies if the test binary is killed.
//! - [`netns`]: fixtures the tests need around a VM, shared with the
//!   vm-binder, vnet and xdp integration tests: a named namespace
//!   ([`Netns`]) with `ip`/`exec`/`ping` helpers, veth pairs ([`veth`]),
//!   taps ([`Tap`]) and helper processes ([`ChildGuard`]), each removed when
//!   dropped, [`Netns::enter`] to bind sockets inside, [`unique_name`] for
//!   names that fit an interface and [`require_root`] to skip loudly.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use vm_tests::{mac_from, Netns, Vm, VmSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ns = Netns::new()?;
//! let _tap = ns.add_tap("tap0", Some("192.168.77.1/24"))?;
//! let vm = Vm::boot(
//!     VmSpec::new("demo")
//!         .netns(ns.path())
//!         .tap("tap0", mac_from(1))
//!         .cmdline("virtlink.ip=eth0:192.168.77.2/24"),
//! )?;
//! vm.wait_ready(Duration::from_secs(60))?;
//! let out = vm.run("ping -c 1 192.168.77.1", Duration::from_secs(10))?;
//! assert_eq!(out.status, 0);
//! // Dropping `vm`, then `ns`, removes the VM, the tap and the namespace.
//! # Ok(())
//! # }
//! ```
//!
//! Tests need root (namespaces, taps) and QEMU; `scripts/setup.sh` installs
//! everything and pre-builds the guest. KVM is not used (`-accel tcg`), nor
//! vhost-net: a guest boots in about 3-5 s.

pub mod guest;
pub mod netns;
mod spawn;
pub mod vm;

pub use guest::{GuestImage, READY_MARKER};
pub use netns::{require_root, unique_name, veth, ChildGuard, Netns, Tap};
pub use vm::{mac_from, Nic, RunOutput, Vm, VmSpec};
