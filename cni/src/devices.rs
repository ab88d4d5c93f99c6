//! Devices that a device plugin allocated to the pod, for networks whose NAD
//! carries `k8s.v1.cni.cncf.io/resourceName`.
//!
//! Which device went to which pod is in kubelet's device manager checkpoint
//! (`kubelet_internal_checkpoint`: pod UID → resource → device IDs); what the
//! device is (PCI address, VLAN, ...) is in the NPWG device-info file the
//! device plugin wrote at Allocate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use netattach::status::DeviceInfo;
use serde::Deserialize;

use crate::spec::{code, CniError};

/// kubelet's default checkpoint file.
pub const DEFAULT_CHECKPOINT: &str = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint";
/// NPWG device-info directory for device plugins.
pub const DEFAULT_DEVICE_INFO_DIR: &str = "/var/run/k8s.cni.cncf.io/devinfo/dp";

#[derive(Deserialize)]
struct Checkpoint {
    #[serde(rename = "Data")]
    data: CheckpointData,
}

#[derive(Deserialize)]
struct CheckpointData {
    #[serde(rename = "PodDeviceEntries", default)]
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "PodUID")]
    pod_uid: String,
    #[serde(rename = "ResourceName")]
    resource: String,
    /// A list (kubelet < 1.20) or a map from NUMA node to a list.
    #[serde(rename = "DeviceIDs")]
    device_ids: DeviceIds,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DeviceIds {
    List(Vec<String>),
    ByNuma(BTreeMap<String, Vec<String>>),
}

/// The devices of each resource allocated to one pod.
#[derive(Debug, Default)]
pub struct Allocations {
    by_resource: BTreeMap<String, Vec<String>>,
}

impl Allocations {
    /// Reads the checkpoint for `pod_uid`. A missing file means nothing is allocated.
    pub fn load(checkpoint: &Path, pod_uid: &str) -> Result<Self, CniError> {
        let bytes = match std::fs::read(checkpoint) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(CniError::new(
                    code::IO_FAILURE,
                    format!("read kubelet checkpoint {}: {e}", checkpoint.display()),
                ))
            }
        };
        let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("decode kubelet checkpoint {}: {e}", checkpoint.display()),
            )
        })?;
        let mut by_resource: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in cp.data.entries.into_iter().filter(|e| e.pod_uid == pod_uid) {
            let ids = match e.device_ids {
                DeviceIds::List(l) => l,
                DeviceIds::ByNuma(m) => m.into_values().flatten().collect(),
            };
            let slot = by_resource.entry(e.resource).or_default();
            for id in ids {
                if !slot.contains(&id) {
                    slot.push(id);
                }
            }
        }
        Ok(Self { by_resource })
    }

    /// Takes the next unused device of `resource` for `network`.
    pub fn take(&mut self, resource: &str, network: &str) -> Result<String, CniError> {
        let ids = self.by_resource.get_mut(resource).filter(|l| !l.is_empty());
        match ids {
            Some(ids) => Ok(ids.remove(0)),
            None => Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network {network}: no device of resource {resource} is allocated to the pod \
                     (does the pod request {resource}?)"
                ),
            )),
        }
    }
}

/// The device-info file the device plugin wrote for `device_id`, if any:
/// `<dir>/<resource>-<device id>-device.json`, each with '/' as '-' (the
/// name virtlink-device-plugin writes).
pub fn device_info_path(dir: &Path, resource: &str, device_id: &str) -> PathBuf {
    dir.join(format!(
        "{}-{}-device.json",
        resource.replace('/', "-"),
        device_id.replace('/', "-")
    ))
}

pub fn read_device_info(
    dir: &Path,
    resource: &str,
    device_id: &str,
) -> Result<Option<DeviceInfo>, CniError> {
    let path = device_info_path(dir, resource, device_id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("decode device-info {}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("read device-info {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_checkpoint_formats_and_hands_out_each_device_once() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("kubelet_internal_checkpoint");
        std::fs::write(
            &cp,
            r#"{"Data":{"PodDeviceEntries":[
                {"PodUID":"u1","ContainerName":"compute","ResourceName":"virtlink.io/sriov_a","DeviceIDs":{"0":["0000:03:00.2"],"1":["0000:81:00.4"]},"AllocResp":"e30="},
                {"PodUID":"u1","ContainerName":"compute","ResourceName":"virtlink.io/vlan100","DeviceIDs":["vlan100-0"],"AllocResp":"e30="},
                {"PodUID":"u2","ContainerName":"compute","ResourceName":"virtlink.io/sriov_a","DeviceIDs":{"0":["0000:03:00.3"]},"AllocResp":"e30="}],
              "RegisteredDevices":{"virtlink.io/sriov_a":["0000:03:00.2","0000:03:00.3","0000:81:00.4"]}},"Checksum":42}"#,
        )
        .unwrap();
        let mut a = Allocations::load(&cp, "u1").unwrap();
        assert_eq!(a.take("virtlink.io/sriov_a", "n1").unwrap(), "0000:03:00.2");
        assert_eq!(a.take("virtlink.io/sriov_a", "n2").unwrap(), "0000:81:00.4");
        let e = a.take("virtlink.io/sriov_a", "n3").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("n3") && e.msg.contains("virtlink.io/sriov_a"));
        assert_eq!(a.take("virtlink.io/vlan100", "v").unwrap(), "vlan100-0");
        assert!(Allocations::load(&dir.path().join("none"), "u1")
            .unwrap()
            .take("x", "n")
            .is_err());
    }

    #[test]
    fn device_info_file_name_follows_the_device_plugin_convention() {
        let p = device_info_path(Path::new("/d"), "virtlink.io/sriov_a", "0000:03:00.2");
        assert_eq!(
            p,
            PathBuf::from("/d/virtlink.io-sriov_a-0000:03:00.2-device.json")
        );
    }
}
