//! Device discovery from sysfs under a configurable root (`/sys` on a node, a
//! temp dir in tests): network-class PCI devices, SR-IOV PFs and their VFs
//! (`virtfnN`, `physfn`, `sriov_numvfs`), the bound driver, IOMMU group, NUMA
//! node, netdev name, link type and link state.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::pci::PciAddress;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("list PCI devices in {path}")]
    ListDevices {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The driver that makes a device a DPDK / VFIO device.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// The PF of a VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysFn {
    pub address: PciAddress,
    pub netdev: Option<String>,
    /// N of the PF's `virtfnN` link to this VF.
    pub vf_index: u32,
}

/// A network PCI device that a pool may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciNetDevice {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub driver: Option<String>,
    pub numa_node: Option<i64>,
    pub iommu_group: Option<u32>,
    pub netdev: Option<String>,
    /// `ether` or `infiniband` (the PF's for a VF without a netdev).
    pub link_type: Option<String>,
    pub pf: Option<PhysFn>,
    /// False when the device's link (a VF's PF link) is down.
    pub healthy: bool,
}

impl PciNetDevice {
    pub fn is_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_DRIVER)
    }
}

/// A sysfs tree.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

struct RawDev {
    dir: PathBuf,
    vendor: u16,
    device: u16,
    driver: Option<String>,
    numa_node: Option<i64>,
    iommu_group: Option<u32>,
    netdev: Option<String>,
    link_type: Option<String>,
    operstate: Option<String>,
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every network-class PCI device that can be handed out: VFs, and PFs or
    /// plain NICs that have no VFs enabled. PFs with VFs are left out (their
    /// VFs are the devices). Sorted by PCI address.
    pub fn scan(&self) -> Result<Vec<PciNetDevice>> {
        let bus = self.root.join("bus/pci/devices");
        let entries = match std::fs::read_dir(&bus) {
            Ok(e) => e,
            // No PCI bus (a container without /sys/bus/pci): no devices.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::ListDevices {
                    path: bus.display().to_string(),
                    source,
                })
            }
        };
        let mut devs = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(addr) = name.to_str().and_then(|s| s.parse::<PciAddress>().ok()) else {
                continue;
            };
            // A device that vanishes or is half-written while we read it is
            // skipped now and seen on the next scan.
            if let Some(raw) = read_device(&entry.path()) {
                devs.insert(addr, raw);
            }
        }
        // VF -> (PF, index) from the PFs' virtfnN links.
        let mut vf_of = BTreeMap::new();
        let mut has_vfs = std::collections::BTreeSet::new();
        for (addr, raw) in &devs {
            let Ok(entries) = std::fs::read_dir(&raw.dir) else {
                continue;
            };
            for e in entries.flatten() {
                let fname = e.file_name();
                let Some(index) = fname
                    .to_str()
                    .and_then(|n| n.strip_prefix("virtfn"))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(vf) = link_name(&e.path()).and_then(|n| n.parse::<PciAddress>().ok()) {
                    vf_of.insert(vf, (*addr, index));
                    has_vfs.insert(*addr);
                }
            }
        }
        let mut out = Vec::new();
        for (addr, raw) in &devs {
            if has_vfs.contains(addr) {
                continue;
            }
            let pf_addr = link_name(&raw.dir.join("physfn"))
                .and_then(|n| n.parse::<PciAddress>().ok())
                .or_else(|| vf_of.get(addr).map(|(pf, _)| *pf));
            let pf = match pf_addr {
                Some(pf_addr) => {
                    let Some((_, index)) = vf_of.get(addr).filter(|(p, _)| *p == pf_addr) else {
                        // physfn without the PF's virtfn link yet: VF half-created.
                        continue;
                    };
                    Some((pf_addr, *index, devs.get(&pf_addr)))
                }
                None => None,
            };
            let (healthy, link_type) = match &pf {
                Some((_, _, Some(pfraw))) => (
                    link_healthy(pfraw.operstate.as_deref()),
                    raw.link_type.clone().or_else(|| pfraw.link_type.clone()),
                ),
                Some((_, _, None)) => (true, raw.link_type.clone()),
                None => (
                    link_healthy(raw.operstate.as_deref()),
                    raw.link_type.clone(),
                ),
            };
            out.push(PciNetDevice {
                address: *addr,
                vendor: raw.vendor,
                device: raw.device,
                driver: raw.driver.clone(),
                numa_node: raw.numa_node,
                iommu_group: raw.iommu_group,
                netdev: raw.netdev.clone(),
                link_type,
                pf: pf.map(|(address, vf_index, pfraw)| PhysFn {
                    address,
                    netdev: pfraw.and_then(|p| p.netdev.clone()),
                    vf_index,
                }),
                healthy,
            });
        }
        Ok(out)
    }

    /// `operstate` of `/sys/class/net/<ifname>`, `None` when there is no such
    /// interface.
    pub fn operstate(&self, ifname: &str) -> Option<String> {
        read_trim(&self.root.join("class/net").join(ifname).join("operstate"))
    }

    /// Whether interface `ifname` exists and its link is not down.
    pub fn link_healthy(&self, ifname: &str) -> bool {
        self.operstate(ifname)
            .is_some_and(|s| link_healthy(Some(&s)))
    }
}

fn link_healthy(operstate: Option<&str>) -> bool {
    !matches!(operstate, Some("down" | "lowerlayerdown" | "notpresent"))
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_hex(path: &Path) -> Option<u32> {
    let s = read_trim(path)?;
    u32::from_str_radix(s.strip_prefix("0x").unwrap_or(&s), 16).ok()
}

/// The file name a symlink points to (`driver` -> `.../drivers/iavf` gives `iavf`).
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    target.file_name()?.to_str().map(str::to_string)
}

fn read_device(dir: &Path) -> Option<RawDev> {
    let class = read_hex(&dir.join("class"))?;
    if class >> 16 != 0x02 {
        return None; // not a network controller
    }
    let vendor = u16::try_from(read_hex(&dir.join("vendor"))?).ok()?;
    let device = u16::try_from(read_hex(&dir.join("device"))?).ok()?;
    let numa_node = read_trim(&dir.join("numa_node"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0);
    let netdev = std::fs::read_dir(dir.join("net")).ok().and_then(|it| {
        let mut names: Vec<String> = it
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names.into_iter().next()
    });
    let (link_type, operstate) = match &netdev {
        Some(n) => {
            let ndir = dir.join("net").join(n);
            let link_type = read_trim(&ndir.join("type")).and_then(|t| match t.as_str() {
                "1" => Some("ether".to_string()),
                "32" => Some("infiniband".to_string()),
                _ => None,
            });
            (link_type, read_trim(&ndir.join("operstate")))
        }
        None => (None, None),
    };
    Some(RawDev {
        dir: dir.to_path_buf(),
        vendor,
        device,
        driver: link_name(&dir.join("driver")),
        numa_node,
        iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
        netdev,
        link_type,
        operstate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakesys::{FakeSysfs, VfSpec};

    fn tree() -> (tempfile::TempDir, FakeSysfs) {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::new(dir.path()).unwrap();
        (dir, fake)
    }

    #[test]
    fn finds_vfs_on_two_pfs_and_hides_their_pfs() {
        let (_d, fake) = tree();
        fake.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
        fake.add_pf("0000:81:00.0", "ens2f0", 1).unwrap();
        for i in 0..3 {
            fake.add_vf(
                "0000:03:00.0",
                i,
                &VfSpec::netdev(&format!("0000:03:02.{i}"), &format!("ens1f0v{i}")),
            )
            .unwrap();
        }
        fake.add_vf("0000:81:00.0", 0, &VfSpec::vfio("0000:81:02.0", 42))
            .unwrap();
        let devs = Sysfs::new(fake.root()).scan().unwrap();
        let addrs: Vec<String> = devs.iter().map(|d| d.address.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "0000:03:02.0",
                "0000:03:02.1",
                "0000:03:02.2",
                "0000:81:02.0"
            ]
        );
        let d = &devs[1];
        assert_eq!(d.driver.as_deref(), Some("iavf"));
        assert_eq!(d.netdev.as_deref(), Some("ens1f0v1"));
        assert_eq!(d.numa_node, Some(0));
        let pf = d.pf.as_ref().unwrap();
        assert_eq!(pf.netdev.as_deref(), Some("ens1f0"));
        assert_eq!(pf.vf_index, 1);
        let v = &devs[3];
        assert!(v.is_vfio());
        assert_eq!(v.iommu_group, Some(42));
        assert_eq!(v.netdev, None);
        assert_eq!(v.numa_node, Some(1));
        assert_eq!(
            v.link_type.as_deref(),
            Some("ether"),
            "vfio VF takes its PF's link type"
        );
        assert_eq!(fake.numvfs("0000:03:00.0").unwrap(), 3);
    }

    #[test]
    fn a_pf_without_vfs_is_a_device_and_non_network_devices_are_ignored() {
        let (_d, fake) = tree();
        fake.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
        fake.add_non_network("0000:00:1f.2").unwrap();
        let devs = Sysfs::new(fake.root()).scan().unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].netdev.as_deref(), Some("ens1f0"));
        assert!(devs[0].pf.is_none());
    }

    #[test]
    fn pf_link_down_makes_its_vfs_unhealthy() {
        let (_d, fake) = tree();
        fake.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
        fake.add_vf("0000:03:00.0", 0, &VfSpec::netdev("0000:03:02.0", "v0"))
            .unwrap();
        let sys = Sysfs::new(fake.root());
        assert!(sys.scan().unwrap()[0].healthy);
        fake.set_operstate("ens1f0", "down").unwrap();
        assert!(!sys.scan().unwrap()[0].healthy);
        assert!(!sys.link_healthy("ens1f0"));
        assert!(!sys.link_healthy("nonexistent"));
    }

    #[test]
    fn vf_added_and_removed() {
        let (_d, fake) = tree();
        fake.add_pf("0000:03:00.0", "ens1f0", 0).unwrap();
        let sys = Sysfs::new(fake.root());
        assert_eq!(sys.scan().unwrap().len(), 1, "PF without VFs");
        fake.add_vf("0000:03:00.0", 0, &VfSpec::netdev("0000:03:02.0", "v0"))
            .unwrap();
        fake.add_vf("0000:03:00.0", 1, &VfSpec::netdev("0000:03:02.1", "v1"))
            .unwrap();
        assert_eq!(sys.scan().unwrap().len(), 2);
        fake.remove_vf("0000:03:00.0", 1).unwrap();
        let devs = sys.scan().unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].address.to_string(), "0000:03:02.0");
        assert_eq!(fake.numvfs("0000:03:00.0").unwrap(), 1);
    }

    #[test]
    fn missing_bus_means_no_devices() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Sysfs::new(dir.path()).scan().unwrap().is_empty());
    }
}
