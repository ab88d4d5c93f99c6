//! virtlink's kubelet device plugin (deviceplugin/v1beta1).
//!
//! Pools of SR-IOV VFs (kernel netdevs), vfio-pci devices (DPDK) and VLAN
//! slots are configured like the SR-IOV network device plugin's
//! `resourceList`, discovered from sysfs, and offered to kubelet by one gRPC
//! server per pool. Allocate writes NPWG device-info files for the CNI.
//!
//! - [`config`]: the `resourceList` file, checked field by field.
//! - [`pci`]: PCI addresses and VF index ranges.
//! - [`selector`]: per-pool device filters.
//! - [`sysfs`]: discovery under a configurable sysfs root.
//! - [`pool`]: which device belongs to which pool; VLAN pool devices.
//! - [`server`]: the DevicePlugin gRPC service of one pool.
//! - [`registration`]: Register with kubelet over `kubelet.sock`.
//! - [`deviceinfo`]: NPWG device-info files.
//! - [`state`]: allocations persisted across restarts, kubelet's checkpoint.
//! - [`plugin`]: the supervisor tying it together.
//! - [`fakesys`]: a sysfs tree in a temp dir, for tests and the benchmark.
//! - [`bench`]: Allocate latency and VF discovery delay figures.

pub mod bench;
pub mod config;
pub mod deviceinfo;
pub mod fakesys;
pub mod pci;
pub mod plugin;
pub mod pool;
pub mod registration;
pub mod selector;
pub mod server;
pub mod state;
pub mod sysfs;

/// The generated deviceplugin/v1beta1 messages, client and server.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
    tonic::include_proto!("v1beta1");
}

/// An error and its sources as one line: `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
