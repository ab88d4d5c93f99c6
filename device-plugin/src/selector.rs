//! Device selectors, as in the SR-IOV network device plugin's config: small
//! filter types, each answering "does this device match", combined per pool.
//!
//! Within one selector field the values are alternatives (any may match);
//! the fields of one selector object must all match; a pool with several
//! selector objects takes a device that matches any of them.

use std::collections::BTreeSet;
use std::fmt::Debug;

use serde::Deserialize;

use crate::pci::{self, PciAddress, VfRange};
use crate::sysfs::PciNetDevice;

/// Errors of this module; `field` is the selector field's name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {value:?} is not a 4-digit hex id (e.g. \"8086\")")]
    HexId { field: &'static str, value: String },
    #[error("{field}: {value:?}")]
    Pci {
        field: &'static str,
        value: String,
        #[source]
        source: pci::Error,
    },
    #[error("{field}: empty value")]
    Empty { field: &'static str },
    #[error("linkTypes: unknown link type {0:?} (expected \"ether\" or \"infiniband\")")]
    LinkType(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One selector object as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSelectors {
    #[serde(default)]
    pub vendors: Vec<String>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub drivers: Vec<String>,
    #[serde(default)]
    pub pf_names: Vec<String>,
    #[serde(default)]
    pub root_devices: Vec<String>,
    #[serde(default)]
    pub pci_addresses: Vec<String>,
    #[serde(default)]
    pub link_types: Vec<String>,
}

/// A test on one device.
pub trait Filter: Debug + Send + Sync {
    fn matches(&self, dev: &PciNetDevice) -> bool;
}

/// `vendors`: the PCI vendor id.
#[derive(Debug)]
pub struct Vendors(BTreeSet<u16>);

impl Filter for Vendors {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        self.0.contains(&dev.vendor)
    }
}

/// `devices`: the PCI device id (the VF's own id for VFs).
#[derive(Debug)]
pub struct DeviceIds(BTreeSet<u16>);

impl Filter for DeviceIds {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        self.0.contains(&dev.device)
    }
}

/// `drivers`: the bound driver's name.
#[derive(Debug)]
pub struct Drivers(BTreeSet<String>);

impl Filter for Drivers {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        dev.driver.as_ref().is_some_and(|d| self.0.contains(d))
    }
}

/// `pfNames`: the PF's interface name, optionally with a VF index range
/// (`ens1f0#0-3`). A PF without VFs matches by its own name when no range is given.
#[derive(Debug)]
pub struct PfNames(Vec<(String, Option<VfRange>)>);

impl Filter for PfNames {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        self.0.iter().any(|(name, range)| match (&dev.pf, range) {
            (Some(pf), range) => {
                pf.netdev.as_deref() == Some(name.as_str())
                    && range.as_ref().is_none_or(|r| r.contains(pf.vf_index))
            }
            (None, None) => dev.netdev.as_deref() == Some(name.as_str()),
            (None, Some(_)) => false,
        })
    }
}

/// `rootDevices`: the PF's PCI address, optionally with a VF index range.
#[derive(Debug)]
pub struct RootDevices(Vec<(PciAddress, Option<VfRange>)>);

impl Filter for RootDevices {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        self.0.iter().any(|(addr, range)| match (&dev.pf, range) {
            (Some(pf), range) => {
                pf.address == *addr && range.as_ref().is_none_or(|r| r.contains(pf.vf_index))
            }
            (None, None) => dev.address == *addr,
            (None, Some(_)) => false,
        })
    }
}

/// `pciAddresses`: the device's own PCI address.
#[derive(Debug)]
pub struct PciAddresses(BTreeSet<PciAddress>);

impl Filter for PciAddresses {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        self.0.contains(&dev.address)
    }
}

/// `linkTypes`: `ether` or `infiniband` (a vfio-bound VF has no netdev of its
/// own and uses its PF's link type).
#[derive(Debug)]
pub struct LinkTypes(BTreeSet<String>);

impl Filter for LinkTypes {
    fn matches(&self, dev: &PciNetDevice) -> bool {
        dev.link_type.as_ref().is_some_and(|t| self.0.contains(t))
    }
}

/// All filters of one selector object: a device must pass each of them.
#[derive(Debug, Default)]
pub struct SelectorSet {
    filters: Vec<Box<dyn Filter>>,
}

impl SelectorSet {
    /// Checks and compiles one selector object.
    pub fn new(raw: &RawSelectors) -> Result<Self> {
        let mut filters: Vec<Box<dyn Filter>> = Vec::new();
        if !raw.vendors.is_empty() {
            filters.push(Box::new(Vendors(hex_ids("vendors", &raw.vendors)?)));
        }
        if !raw.devices.is_empty() {
            filters.push(Box::new(DeviceIds(hex_ids("devices", &raw.devices)?)));
        }
        if !raw.drivers.is_empty() {
            filters.push(Box::new(Drivers(non_empty("drivers", &raw.drivers)?)));
        }
        if !raw.pf_names.is_empty() {
            let mut v = Vec::new();
            for s in &raw.pf_names {
                let (name, range) = pci::split_vf_suffix(s).map_err(|source| Error::Pci {
                    field: "pfNames",
                    value: s.clone(),
                    source,
                })?;
                if name.is_empty() {
                    return Err(Error::Empty { field: "pfNames" });
                }
                v.push((name.to_string(), range));
            }
            filters.push(Box::new(PfNames(v)));
        }
        if !raw.root_devices.is_empty() {
            let mut v = Vec::new();
            for s in &raw.root_devices {
                let err = |source| Error::Pci {
                    field: "rootDevices",
                    value: s.clone(),
                    source,
                };
                let (addr, range) = pci::split_vf_suffix(s).map_err(err)?;
                v.push((addr.parse().map_err(err)?, range));
            }
            filters.push(Box::new(RootDevices(v)));
        }
        if !raw.pci_addresses.is_empty() {
            let mut set = BTreeSet::new();
            for s in &raw.pci_addresses {
                set.insert(s.parse().map_err(|source| Error::Pci {
                    field: "pciAddresses",
                    value: s.clone(),
                    source,
                })?);
            }
            filters.push(Box::new(PciAddresses(set)));
        }
        if !raw.link_types.is_empty() {
            for t in &raw.link_types {
                if !matches!(t.as_str(), "ether" | "infiniband") {
                    return Err(Error::LinkType(t.clone()));
                }
            }
            filters.push(Box::new(LinkTypes(
                raw.link_types.iter().cloned().collect(),
            )));
        }
        Ok(Self { filters })
    }

    pub fn matches(&self, dev: &PciNetDevice) -> bool {
        self.filters.iter().all(|f| f.matches(dev))
    }
}

/// A pool's selector objects: a device matching any one of them is taken.
/// No selector object at all takes every device of the pool's type.
#[derive(Debug, Default)]
pub struct PoolSelector {
    sets: Vec<SelectorSet>,
}

impl PoolSelector {
    pub fn new(sets: Vec<SelectorSet>) -> Self {
        Self { sets }
    }

    pub fn matches(&self, dev: &PciNetDevice) -> bool {
        self.sets.is_empty() || self.sets.iter().any(|s| s.matches(dev))
    }
}

fn hex_ids(field: &'static str, values: &[String]) -> Result<BTreeSet<u16>> {
    values
        .iter()
        .map(|v| {
            let ok = v.len() == 4 && v.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| u16::from_str_radix(v, 16).ok())
                .flatten()
                .ok_or_else(|| Error::HexId {
                    field,
                    value: v.clone(),
                })
        })
        .collect()
}

fn non_empty(field: &'static str, values: &[String]) -> Result<BTreeSet<String>> {
    if values.iter().any(|v| v.trim().is_empty()) {
        return Err(Error::Empty { field });
    }
    Ok(values.iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::PhysFn;

    fn vf(addr: &str, pf_name: &str, index: u32) -> PciNetDevice {
        PciNetDevice {
            address: addr.parse().unwrap(),
            vendor: 0x8086,
            device: 0x154c,
            driver: Some("iavf".into()),
            numa_node: Some(0),
            iommu_group: Some(7),
            netdev: Some(format!("{pf_name}v{index}")),
            link_type: Some("ether".into()),
            pf: Some(PhysFn {
                address: "0000:03:00.0".parse().unwrap(),
                netdev: Some(pf_name.into()),
                vf_index: index,
            }),
            healthy: true,
        }
    }

    fn set(raw: RawSelectors) -> SelectorSet {
        SelectorSet::new(&raw).unwrap()
    }

    #[test]
    fn fields_are_anded_values_are_ored() {
        let s = set(RawSelectors {
            vendors: vec!["8086".into(), "15b3".into()],
            drivers: vec!["iavf".into()],
            ..Default::default()
        });
        assert!(s.matches(&vf("0000:03:02.0", "ens1f0", 0)));
        let mut other = vf("0000:03:02.0", "ens1f0", 0);
        other.driver = Some("vfio-pci".into());
        assert!(!s.matches(&other));
    }

    #[test]
    fn pf_names_with_vf_ranges() {
        let s = set(RawSelectors {
            pf_names: vec!["ens1f0#0-1,3".into()],
            ..Default::default()
        });
        assert!(s.matches(&vf("0000:03:02.0", "ens1f0", 0)));
        assert!(s.matches(&vf("0000:03:02.1", "ens1f0", 1)));
        assert!(!s.matches(&vf("0000:03:02.2", "ens1f0", 2)));
        assert!(s.matches(&vf("0000:03:02.3", "ens1f0", 3)));
        assert!(!s.matches(&vf("0000:03:02.0", "ens1f1", 0)));
    }

    #[test]
    fn root_devices_and_pci_addresses() {
        let s = set(RawSelectors {
            root_devices: vec!["0000:03:00.0#2-3".into()],
            ..Default::default()
        });
        assert!(!s.matches(&vf("0000:03:02.1", "ens1f0", 1)));
        assert!(s.matches(&vf("0000:03:02.2", "ens1f0", 2)));
        let p = set(RawSelectors {
            pci_addresses: vec!["0000:03:02.1".into()],
            ..Default::default()
        });
        assert!(p.matches(&vf("0000:03:02.1", "ens1f0", 1)));
        assert!(!p.matches(&vf("0000:03:02.2", "ens1f0", 2)));
    }

    #[test]
    fn bad_selector_values_name_the_field() {
        let cases = [
            (
                RawSelectors {
                    vendors: vec!["80861".into()],
                    ..Default::default()
                },
                "vendors",
            ),
            (
                RawSelectors {
                    root_devices: vec!["0000:03:00#1".into()],
                    ..Default::default()
                },
                "rootDevices",
            ),
            (
                RawSelectors {
                    pf_names: vec!["ens1f0#5-2".into()],
                    ..Default::default()
                },
                "pfNames",
            ),
            (
                RawSelectors {
                    pci_addresses: vec!["0000:03:00.9".into()],
                    ..Default::default()
                },
                "pciAddresses",
            ),
            (
                RawSelectors {
                    link_types: vec!["wifi".into()],
                    ..Default::default()
                },
                "linkTypes",
            ),
        ];
        for (raw, field) in cases {
            let err = SelectorSet::new(&raw).unwrap_err().to_string();
            assert!(err.contains(field), "{err:?} does not name {field}");
        }
    }

    #[test]
    fn empty_pool_selector_takes_all_and_any_set_may_match() {
        assert!(PoolSelector::default().matches(&vf("0000:03:02.0", "x", 0)));
        let p = PoolSelector::new(vec![
            set(RawSelectors {
                pf_names: vec!["a".into()],
                ..Default::default()
            }),
            set(RawSelectors {
                pf_names: vec!["b".into()],
                ..Default::default()
            }),
        ]);
        assert!(p.matches(&vf("0000:03:02.0", "b", 0)));
        assert!(!p.matches(&vf("0000:03:02.0", "c", 0)));
    }
}
