//! Passthrough (SR-IOV) binding: a VF bound to vfio-pci is handed to the
//! guest whole. This module turns the device plugin's PCI address into the
//! QEMU arguments and the libvirt `<hostdev>` element; it does not touch
//! VFIO itself.

use std::path::{Path, PathBuf};

use netattach::status::DeviceInfo;
use serde::Serialize;

use crate::mac::Mac;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read device-info {path}")]
    ReadDeviceInfo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse device-info {path}")]
    ParseDeviceInfo {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("device-info is of type {0:?}, not pci")]
    NotPci(String),
    #[error("device-info has no pci.pci-address")]
    NoPciAddress,
    #[error("invalid PCI address {0:?} (want DDDD:BB:SS.F)")]
    BadAddress(String),
    #[error("PCIDEVICE value {value:?} has no device number {index}")]
    NoSuchDevice { value: String, index: usize },
    #[error("PCI device {address} not found at {path}")]
    Missing { address: String, path: PathBuf },
    #[error("PCI device {address} is bound to {driver:?}, not vfio-pci")]
    WrongDriver {
        address: String,
        driver: Option<String>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A PCI address `domain:bus:slot.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl std::str::FromStr for PciAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadAddress(s.to_string());
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (slot, function) = rest.split_once('.').ok_or_else(bad)?;
        if domain.len() != 4 || bus.len() != 2 || slot.len() != 2 || function.len() != 1 {
            return Err(bad());
        }
        let hex = |t: &str| u16::from_str_radix(t, 16).map_err(|_| bad());
        let slot = hex(slot)?;
        let function = hex(function)?;
        if slot > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(Self {
            domain: hex(domain)?,
            bus: u8::try_from(hex(bus)?).map_err(|_| bad())?,
            slot: slot as u8,
            function: function as u8,
        })
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

/// The PCI address from an NPWG device-info value.
pub fn address_from_device_info(info: &DeviceInfo) -> Result<PciAddress> {
    if info.kind != "pci" {
        return Err(Error::NotPci(info.kind.clone()));
    }
    info.pci
        .as_ref()
        .ok_or(Error::NoPciAddress)?
        .pci_address
        .parse()
}

/// The PCI address from an NPWG device-info file.
pub fn address_from_device_info_file(path: &Path) -> Result<PciAddress> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadDeviceInfo {
        path: path.to_path_buf(),
        source,
    })?;
    let info: DeviceInfo =
        serde_json::from_str(&text).map_err(|source| Error::ParseDeviceInfo {
            path: path.to_path_buf(),
            source,
        })?;
    address_from_device_info(&info)
}

/// The `index`-th PCI address of a `PCIDEVICE_<RESOURCE>` environment
/// value (a comma separated list, one per allocated device).
pub fn address_from_env_value(value: &str, index: usize) -> Result<PciAddress> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .nth(index)
        .ok_or_else(|| Error::NoSuchDevice {
            value: value.to_string(),
            index,
        })?
        .parse()
}

/// `PCIDEVICE_<RESOURCE>` for a resource name such as `intel.com/sriov_net`.
pub fn env_name(resource: &str) -> String {
    let up: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("PCIDEVICE_{up}")
}

/// A VF to pass through, ready for the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Passthrough {
    pub name: String,
    pub address: PciAddress,
    /// The MAC to set on the VF (through its PF) before the guest starts.
    pub mac: Mac,
    /// The VLAN to set on the VF, if the network has one.
    pub vlan: Option<u16>,
}

impl Passthrough {
    /// Checks that the device exists under `sysfs_root` (normally `/sys`)
    /// and is bound to vfio-pci.
    pub fn check(&self, sysfs_root: &Path) -> Result<()> {
        let address = self.address.to_string();
        let dev = sysfs_root.join("bus/pci/devices").join(&address);
        if !dev.exists() {
            return Err(Error::Missing { address, path: dev });
        }
        let driver = std::fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(Error::WrongDriver { address, driver });
        }
        Ok(())
    }

    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-device".to_string(),
            format!("vfio-pci,host={},id=ua-{}", self.address, self.name),
        ]
    }

    pub fn libvirt_xml(&self) -> String {
        let a = self.address;
        format!(
            "<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n    \
             <address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>\n  \
             </source>\n  <alias name='ua-{}'/>\n</hostdev>",
            a.domain,
            a.bus,
            a.slot,
            a.function,
            crate::hypervisor::xml_escape(&self.name)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Passthrough {
        Passthrough {
            name: "fast".into(),
            address: "0000:03:00.1".parse().unwrap(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            vlan: Some(100),
        }
    }

    #[test]
    fn pci_addresses() {
        let a: PciAddress = "0000:03:00.1".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.slot, a.function), (0, 3, 0, 1));
        assert_eq!(a.to_string(), "0000:03:00.1");
        assert_eq!(
            "0001:af:1f.7".parse::<PciAddress>().unwrap().to_string(),
            "0001:af:1f.7"
        );
        for bad in [
            "",
            "03:00.1",
            "0000:03:00",
            "0000:03:20.1",
            "0000:03:00.8",
            "0000:3:00.1",
            "zzzz:03:00.1",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_info_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("info.json");
        std::fs::write(
            &path,
            r#"{"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:03:00.1"}}"#,
        )
        .unwrap();
        assert_eq!(
            address_from_device_info_file(&path).unwrap().to_string(),
            "0000:03:00.1"
        );
        std::fs::write(&path, r#"{"type":"vhost-user","version":"1.1.0"}"#).unwrap();
        assert!(matches!(
            address_from_device_info_file(&path),
            Err(Error::NotPci(_))
        ));
        assert!(matches!(
            address_from_device_info_file(&dir.path().join("nope")),
            Err(Error::ReadDeviceInfo { .. })
        ));
        assert_eq!(
            address_from_env_value("0000:03:00.1,0000:03:00.2", 1)
                .unwrap()
                .to_string(),
            "0000:03:00.2"
        );
        assert!(matches!(
            address_from_env_value("0000:03:00.1", 1),
            Err(Error::NoSuchDevice { .. })
        ));
        assert_eq!(
            env_name("intel.com/sriov_net-a"),
            "PCIDEVICE_INTEL_COM_SRIOV_NET_A"
        );
    }

    #[test]
    fn hypervisor_output() {
        let p = sample();
        assert_eq!(
            p.qemu_args(),
            vec!["-device", "vfio-pci,host=0000:03:00.1,id=ua-fast"]
        );
        assert_eq!(
            p.libvirt_xml(),
            "<hostdev mode='subsystem' type='pci' managed='no'>\n  <source>\n    \
             <address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/>\n  </source>\n  \
             <alias name='ua-fast'/>\n</hostdev>"
        );
    }

    #[test]
    fn sysfs_checks() {
        let root = tempfile::tempdir().unwrap();
        let p = sample();
        let err = p.check(root.path()).unwrap_err();
        assert!(matches!(err, Error::Missing { .. }), "{err}");
        assert!(err.to_string().contains("0000:03:00.1 not found"));
        let dev = root.path().join("bus/pci/devices/0000:03:00.1");
        std::fs::create_dir_all(&dev).unwrap();
        let drivers = root.path().join("bus/pci/drivers");
        std::fs::create_dir_all(drivers.join("iavf")).unwrap();
        std::fs::create_dir_all(drivers.join("vfio-pci")).unwrap();
        assert!(matches!(
            p.check(root.path()),
            Err(Error::WrongDriver { driver: None, .. })
        ));
        std::os::unix::fs::symlink(drivers.join("iavf"), dev.join("driver")).unwrap();
        match p.check(root.path()) {
            Err(Error::WrongDriver { driver, .. }) => assert_eq!(driver.as_deref(), Some("iavf")),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dev.join("driver")).unwrap();
        std::os::unix::fs::symlink(drivers.join("vfio-pci"), dev.join("driver")).unwrap();
        p.check(root.path()).unwrap();
    }
}
