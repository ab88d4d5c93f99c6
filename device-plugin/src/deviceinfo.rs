//! NPWG device-info files (spec 1.1.0) that Allocate writes for the CNI:
//! `<dir>/<resourceName with / as ->-<deviceID>-device.json`, the name the
//! upstream SR-IOV device plugin and Multus use.

use std::io;
use std::path::{Path, PathBuf};

use netattach::status::{DeviceInfo, PciDevice, VlanDevice};

use crate::pool::{DeviceKind, PoolDevice};

/// The default directory, as in the NPWG spec.
pub const DEFAULT_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo/dp";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write device-info file {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("remove device-info file {path}")]
    Remove {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("encode device-info for {0}")]
    Encode(String, #[source] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The device-info directory.
#[derive(Debug, Clone)]
pub struct DevInfoDir {
    dir: PathBuf,
}

impl DevInfoDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the file for `device_id` of resource `resource` (`prefix/name`).
    pub fn path(&self, resource: &str, device_id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-device.json",
            resource.replace('/', "-"),
            device_id.replace('/', "-")
        ))
    }

    /// Writes (or replaces) the file for `dev`, atomically.
    pub fn write(&self, resource: &str, dev: &PoolDevice) -> Result<PathBuf> {
        let path = self.path(resource, &dev.id);
        let werr = |source| Error::Write {
            path: path.display().to_string(),
            source,
        };
        let body =
            serde_json::to_vec(&info_for(dev)).map_err(|e| Error::Encode(dev.id.clone(), e))?;
        std::fs::create_dir_all(&self.dir).map_err(werr)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(werr)?;
        std::fs::write(tmp.path(), body).map_err(werr)?;
        tmp.persist(&path).map_err(|e| werr(e.error))?;
        Ok(path)
    }

    /// Removes the file for `device_id`, if there is one.
    pub fn remove(&self, resource: &str, device_id: &str) -> Result<()> {
        let path = self.path(resource, device_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Remove {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// The device-info object for one device.
pub fn info_for(dev: &PoolDevice) -> DeviceInfo {
    match &dev.kind {
        DeviceKind::Pci(d) => DeviceInfo {
            kind: "pci".into(),
            version: "1.1.0".into(),
            pci: Some(PciDevice {
                pci_address: d.address.to_string(),
                pf_pci_address: d.pf.as_ref().map(|p| p.address.to_string()),
                ..Default::default()
            }),
            vlan: None,
        },
        DeviceKind::Vlan { id, master } => DeviceInfo {
            kind: "vlan".into(),
            version: "1.1.0".into(),
            pci: None,
            vlan: Some(VlanDevice {
                id: *id,
                master: master.clone(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_and_vlan_json() {
        let d = tempfile::tempdir().unwrap();
        let dir = DevInfoDir::new(d.path().join("dp"));
        let dev = PoolDevice {
            id: "vlan100-eth0-0".into(),
            healthy: true,
            numa_node: None,
            kind: DeviceKind::Vlan {
                id: 100,
                master: "eth0".into(),
            },
        };
        let p = dir.write("virtlink.io/vlan100", &dev).unwrap();
        assert_eq!(
            p.file_name().unwrap(),
            "virtlink.io-vlan100-vlan100-eth0-0-device.json"
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "vlan", "version": "1.1.0", "vlan": {"id": 100, "master": "eth0"}})
        );
        dir.remove("virtlink.io/vlan100", &dev.id).unwrap();
        assert!(!p.exists());
        dir.remove("virtlink.io/vlan100", &dev.id).unwrap();
    }
}
