//! NPWG `network-status` entries and `device-info`.

use serde::{Deserialize, Serialize};

/// One entry of the `k8s.v1.cni.cncf.io/network-status` list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `namespace/name` of the NAD, or the cluster network's name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// True for the attachment that holds the pod's default route.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
    #[serde(
        rename = "device-info",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_info: Option<DeviceInfo>,
}

/// DNS settings as CNI results carry them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// NPWG device-info (spec v1.1.0): what device backs an attachment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `pci`, `vhost-user`, `memif`, `vdpa` or `vlan` (virtlink's VLAN resources).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "device_info_version")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<PciDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<VlanDevice>,
}

fn device_info_version() -> String {
    "1.1.0".to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PciDevice {
    pub pci_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pf_pci_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub representor_device: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VlanDevice {
    pub id: u16,
    pub master: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_status_uses_npwg_field_names() {
        let s = NetworkStatus {
            name: "default/net1".into(),
            interface: Some("net1".into()),
            ips: vec!["10.1.1.2".into()],
            mac: Some("0a:58:0a:01:01:02".into()),
            default: false,
            device_info: Some(DeviceInfo {
                kind: "pci".into(),
                version: "1.1.0".into(),
                pci: Some(PciDevice {
                    pci_address: "0000:03:00.1".into(),
                    ..Default::default()
                }),
                vlan: None,
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["device-info"]["pci"]["pci-address"], "0000:03:00.1");
        assert!(v.get("default").is_none(), "false default is omitted");
        let back: NetworkStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
