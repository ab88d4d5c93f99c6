//! Resource pools: which discovered device belongs to which pool (the first
//! pool that matches), the devices of VLAN pools, and a pool's advertised view.

use std::sync::Arc;

use crate::config::{Config, DeviceType, PoolConfig, VlanPool};
use crate::sysfs::{PciNetDevice, Sysfs};

/// What backs one advertised device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    Pci(PciNetDevice),
    Vlan { id: u16, master: String },
}

/// One device as a pool advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDevice {
    /// The kubelet device id: the PCI address, or `vlan<id>-<master>-<slot>`.
    pub id: String,
    pub healthy: bool,
    pub numa_node: Option<i64>,
    pub kind: DeviceKind,
}

impl PoolDevice {
    /// PCI address of the PF for a VF (devices on one PF are allocated together).
    pub fn pf_key(&self) -> Option<String> {
        match &self.kind {
            DeviceKind::Pci(d) => Some(
                d.pf.as_ref()
                    .map_or_else(|| d.address.to_string(), |p| p.address.to_string()),
            ),
            DeviceKind::Vlan { master, .. } => Some(master.clone()),
        }
    }
}

/// A pool's configuration and its current devices, sorted by id.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub config: Arc<PoolConfig>,
    pub devices: Vec<PoolDevice>,
}

impl PoolSnapshot {
    pub fn device(&self, id: &str) -> Option<&PoolDevice> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// Same config object and same devices.
    pub fn same_as(&self, other: &PoolSnapshot) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.devices == other.devices
    }
}

fn takes(pool: &PoolConfig, dev: &PciNetDevice) -> bool {
    let type_ok = match pool.device_type {
        DeviceType::NetDevice => !dev.is_vfio(),
        DeviceType::Vfio => dev.is_vfio() && dev.iommu_group.is_some(),
        DeviceType::Vlan => false,
    };
    type_ok && pool.selector.matches(dev)
}

/// The devices of a VLAN pool: `capacity` slots per VLAN id, healthy while
/// the master interface exists and its link is not down.
pub fn vlan_devices(vlan: &VlanPool, sysfs: &Sysfs) -> Vec<PoolDevice> {
    let healthy = sysfs.link_healthy(&vlan.master);
    let mut out = Vec::new();
    for id in vlan.first..=vlan.last {
        for slot in 0..vlan.capacity {
            out.push(PoolDevice {
                id: format!("vlan{id}-{}-{slot}", vlan.master),
                healthy,
                numa_node: None,
                kind: DeviceKind::Vlan {
                    id,
                    master: vlan.master.clone(),
                },
            });
        }
    }
    out
}

/// Splits discovered devices over the configured pools: each device goes to
/// the first pool (in config order) that takes it. Returns one snapshot per
/// pool, in config order; a pool nothing matched has no devices.
pub fn assign(config: &Config, devices: &[PciNetDevice], sysfs: &Sysfs) -> Vec<PoolSnapshot> {
    let mut snaps: Vec<PoolSnapshot> = config
        .pools
        .iter()
        .map(|p| PoolSnapshot {
            config: p.clone(),
            devices: p
                .vlan
                .as_ref()
                .map(|v| vlan_devices(v, sysfs))
                .unwrap_or_default(),
        })
        .collect();
    for dev in devices {
        if let Some(snap) = snaps.iter_mut().find(|s| takes(&s.config, dev)) {
            snap.devices.push(PoolDevice {
                id: dev.address.to_string(),
                healthy: dev.healthy,
                numa_node: dev.numa_node,
                kind: DeviceKind::Pci(dev.clone()),
            });
        }
    }
    for s in &mut snaps {
        s.devices.sort_by(|a, b| a.id.cmp(&b.id));
    }
    snaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakesys::{FakeSysfs, VfSpec};

    fn setup() -> (tempfile::TempDir, FakeSysfs) {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path()).unwrap();
        fake.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
        fake.add_pf("0000:81:00.0", "ens2f0", 1).unwrap();
        for i in 0..4u32 {
            fake.add_vf(
                "0000:03:00.0",
                i,
                &VfSpec::netdev(&format!("0000:03:02.{i}"), &format!("a{i}")),
            )
            .unwrap();
        }
        fake.add_vf("0000:81:00.0", 0, &VfSpec::vfio("0000:81:02.0", 50))
            .unwrap();
        fake.add_vf("0000:81:00.0", 1, &VfSpec::vfio("0000:81:02.1", 51))
            .unwrap();
        (dir, fake)
    }

    fn ids(s: &PoolSnapshot) -> Vec<&str> {
        s.devices.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn first_matching_pool_wins_and_types_split_devices() {
        let (_d, fake) = setup();
        let sys = Sysfs::new(fake.root());
        let cfg = Config::parse(
            r#"{"resourceList": [
              {"resourceName": "low", "selectors": {"pfNames": ["ens1f0#0-1"]}},
              {"resourceName": "all_net", "selectors": {"vendors": ["8086"]}},
              {"resourceName": "dpdk", "deviceType": "vfio", "selectors": {"vendors": ["8086"]}},
              {"resourceName": "none", "selectors": {"pfNames": ["nope"]}},
              {"resourceName": "v", "deviceType": "vlan", "vlan": {"master": "ens2f0", "id": "10-11", "capacity": 2}}
            ]}"#,
        )
        .unwrap();
        let snaps = assign(&cfg, &sys.scan().unwrap(), &sys);
        assert_eq!(ids(&snaps[0]), ["0000:03:02.0", "0000:03:02.1"]);
        assert_eq!(ids(&snaps[1]), ["0000:03:02.2", "0000:03:02.3"]);
        assert_eq!(ids(&snaps[2]), ["0000:81:02.0", "0000:81:02.1"]);
        assert!(
            snaps[3].devices.is_empty(),
            "a pool nothing matches has no devices"
        );
        assert_eq!(
            ids(&snaps[4]),
            [
                "vlan10-ens2f0-0",
                "vlan10-ens2f0-1",
                "vlan11-ens2f0-0",
                "vlan11-ens2f0-1"
            ]
        );
        assert!(snaps[4].devices.iter().all(|d| d.healthy));
        fake.set_operstate("ens2f0", "down").unwrap();
        let snaps = assign(&cfg, &sys.scan().unwrap(), &sys);
        assert!(
            snaps[4].devices.iter().all(|d| !d.healthy),
            "VLAN master down"
        );
        assert!(snaps[2].devices.iter().all(|d| !d.healthy), "PF down");
        assert!(snaps[0].devices.iter().all(|d| d.healthy));
    }
}
