//! CNI results, readable from any supported version and writable in any.

use netattach::status::Dns;
use serde::{Deserialize, Serialize};

use super::error::{code, CniError};
use super::version::Version;

/// A plugin's result. Fields that only some versions have are optional and
/// dropped by [`CniResult::convert_to`] when the target version lacks them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; only before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// CIDR notation: the address and its prefix length.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// 1.1.0 fields below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl CniResult {
    /// Parses a result printed by a plugin of any supported version.
    pub fn from_json(value: serde_json::Value) -> Result<Self, CniError> {
        serde_json::from_value(value)
            .map_err(|e| CniError::new(code::DECODE_FAILURE, format!("decode CNI result: {e}")))
    }

    /// The same result as a plugin speaking `target` would print it.
    pub fn convert_to(&self, target: Version) -> Result<Self, CniError> {
        if target < Version::V0_3_0 || !target.is_supported() {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cannot convert a result to CNI version {target}"),
            ));
        }
        let mut out = self.clone();
        out.cni_version = target.to_string();
        for ip in &mut out.ips {
            ip.version = if target.has_ip_version_field() {
                Some(if ip.address.contains(':') { "6" } else { "4" }.to_string())
            } else {
                None
            };
        }
        if target < Version::V1_1_0 {
            for i in &mut out.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut out.routes {
                r.mtu = None;
                r.advmss = None;
                r.priority = None;
                r.table = None;
                r.scope = None;
            }
        }
        Ok(out)
    }

    /// Index of the interface named `ifname` inside the sandbox.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
    }

    /// The addresses that belong to `ifname` (or carry no interface index).
    pub fn ips_of(&self, ifname: &str) -> impl Iterator<Item = &IpConfig> {
        let idx = self.sandbox_interface(ifname);
        self.ips
            .iter()
            .filter(move |ip| ip.interface.is_none() || ip.interface == idx)
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult::from_json(json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:00:00:01"},
                {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": "/var/run/netns/x", "mtu": 1400}
            ],
            "ips": [
                {"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                {"interface": 1, "address": "fd00::5/64"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "priority": 10}],
            "dns": {"nameservers": ["10.96.0.10"]}
        }))
        .unwrap()
    }

    #[test]
    fn down_to_0_4_adds_ip_versions_and_drops_new_fields() {
        let r = sample().convert_to(Version::V0_4_0).unwrap();
        let v = r.to_value();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["routes"][0].get("priority").is_none());
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn up_from_0_4_drops_ip_versions() {
        let old = sample().convert_to(Version::V0_4_0).unwrap();
        let new = old.convert_to(Version::V1_0_0).unwrap();
        assert!(new.to_value()["ips"][0].get("version").is_none());
        assert_eq!(new.cni_version, "1.0.0");
    }

    #[test]
    fn ips_of_sandbox_interface() {
        let r = sample();
        assert_eq!(r.sandbox_interface("eth0"), Some(1));
        assert_eq!(r.ips_of("eth0").count(), 2);
        assert_eq!(r.ips_of("net1").count(), 0);
    }

    #[test]
    fn unknown_target_is_incompatible() {
        let e = sample().convert_to(Version::new(9, 0, 0)).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }
}
