//! The pool configuration file: `{"resourceList": [...]}` in JSON or YAML, the
//! same shape as the SR-IOV network device plugin's ConfigMap, plus
//! `deviceType: vfio` (DPDK) and `deviceType: vlan` pools.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::selector::{self, PoolSelector, RawSelectors, SelectorSet};

/// The prefix used when a pool does not name one.
pub const DEFAULT_RESOURCE_PREFIX: &str = "virtlink.io";
/// Most devices one VLAN pool may advertise (ids x capacity).
pub const MAX_VLAN_DEVICES: u32 = 4096;

/// Errors of this module. `field` is a path such as `resourceList[1].vlan.id`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parse config: {field}: {message}")]
    Parse { field: String, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("invalid config: {field}")]
    Selector {
        field: String,
        #[source]
        source: selector::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a pool hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum DeviceType {
    /// A PCI network device bound to a kernel driver (VF or PF with a netdev).
    #[default]
    #[serde(rename = "netDevice")]
    NetDevice,
    /// A PCI device bound to vfio-pci, for DPDK / VFIO passthrough.
    #[serde(rename = "vfio")]
    Vfio,
    /// A slot on a VLAN of a master interface (an L2 network, no PCI device).
    #[serde(rename = "vlan")]
    Vlan,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    resource_list: Vec<RawPool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPool {
    resource_name: String,
    #[serde(default)]
    resource_prefix: Option<String>,
    #[serde(default)]
    device_type: DeviceType,
    /// One selector object, or a list of them.
    #[serde(default)]
    selectors: Option<serde_json::Value>,
    #[serde(default)]
    vlan: Option<RawVlan>,
    #[serde(default)]
    need_vhost_net: bool,
    #[serde(default)]
    exclude_topology: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawVlan {
    master: String,
    /// `100`, `"100"` or `"100-110"`.
    id: serde_json::Value,
    #[serde(default)]
    capacity: Option<u32>,
}

/// A VLAN pool: `capacity` slots on each VLAN id `first..=last` of `master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPool {
    pub master: String,
    pub first: u16,
    pub last: u16,
    pub capacity: u32,
}

/// One checked pool.
#[derive(Debug)]
pub struct PoolConfig {
    pub resource_name: String,
    pub resource_prefix: String,
    pub device_type: DeviceType,
    pub selector: PoolSelector,
    pub vlan: Option<VlanPool>,
    pub need_vhost_net: bool,
    pub exclude_topology: bool,
}

impl PoolConfig {
    /// `prefix/name`, the name pods request.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.resource_prefix, self.resource_name)
    }
}

/// A checked configuration.
#[derive(Debug, Default)]
pub struct Config {
    pub pools: Vec<Arc<PoolConfig>>,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses JSON or YAML text and checks every field.
    pub fn parse(text: &str) -> Result<Self> {
        let raw: RawConfig = if text.trim_start().starts_with('{') {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| Error::Parse {
                field: field_name(e.path()),
                message: e.inner().to_string(),
            })?
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| Error::Parse {
                field: field_name(e.path()),
                message: e.inner().to_string(),
            })?
        };
        let mut pools = Vec::new();
        let mut names = BTreeSet::new();
        for (i, p) in raw.resource_list.into_iter().enumerate() {
            let pool = check_pool(i, p)?;
            if !names.insert(pool.full_name()) {
                return Err(invalid(
                    format!("resourceList[{i}].resourceName"),
                    format!("{} is configured twice", pool.full_name()),
                ));
            }
            pools.push(Arc::new(pool));
        }
        check_vlan_overlap(&pools)?;
        Ok(Self { pools })
    }
}

fn field_name(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        "(top level)".into()
    } else {
        s
    }
}

fn invalid(field: String, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

fn check_pool(i: usize, p: RawPool) -> Result<PoolConfig> {
    let at = |f: &str| format!("resourceList[{i}].{f}");
    if !is_resource_name(&p.resource_name) {
        return Err(invalid(
            at("resourceName"),
            format!(
                "{:?} must be 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric",
                p.resource_name
            ),
        ));
    }
    let prefix = p
        .resource_prefix
        .unwrap_or_else(|| DEFAULT_RESOURCE_PREFIX.to_string());
    if !is_dns_subdomain(&prefix) {
        return Err(invalid(
            at("resourcePrefix"),
            format!("{prefix:?} is not a DNS subdomain (e.g. \"virtlink.io\")"),
        ));
    }
    let mut sets = Vec::new();
    match p.selectors {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) => {
            for (j, item) in items.into_iter().enumerate() {
                sets.push(selector_set(at(&format!("selectors[{j}]")), item)?);
            }
        }
        Some(item) => sets.push(selector_set(at("selectors"), item)?),
    }
    let vlan = match (p.device_type, p.vlan) {
        (DeviceType::Vlan, None) => {
            return Err(invalid(at("vlan"), "a vlan pool needs a vlan section"))
        }
        (DeviceType::Vlan, Some(v)) => {
            if !sets.is_empty() {
                return Err(invalid(
                    at("selectors"),
                    "a vlan pool has no PCI devices to select",
                ));
            }
            Some(check_vlan(&at("vlan"), v)?)
        }
        (_, Some(_)) => {
            return Err(invalid(
                at("vlan"),
                "only pools with deviceType \"vlan\" take a vlan section",
            ))
        }
        (_, None) => None,
    };
    Ok(PoolConfig {
        resource_name: p.resource_name,
        resource_prefix: prefix,
        device_type: p.device_type,
        selector: PoolSelector::new(sets),
        vlan,
        need_vhost_net: p.need_vhost_net,
        exclude_topology: p.exclude_topology,
    })
}

fn selector_set(field: String, value: serde_json::Value) -> Result<SelectorSet> {
    let raw: RawSelectors = serde_path_to_error::deserialize(value).map_err(|e| Error::Parse {
        field: format!("{field}.{}", field_name(e.path())),
        message: e.inner().to_string(),
    })?;
    SelectorSet::new(&raw).map_err(|source| Error::Selector { field, source })
}

fn check_vlan(at: &str, v: RawVlan) -> Result<VlanPool> {
    let valid_if = !v.master.is_empty()
        && v.master.len() <= 15
        && !v.master.contains(['/', ':'])
        && !v.master.chars().any(char::is_whitespace)
        && v.master != "."
        && v.master != "..";
    if !valid_if {
        return Err(invalid(
            format!("{at}.master"),
            format!("{:?} is not an interface name", v.master),
        ));
    }
    let id_field = format!("{at}.id");
    let (first, last) = match &v.id {
        serde_json::Value::Number(n) => {
            let id = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| invalid(id_field.clone(), format!("{n} is not a VLAN id")))?;
            (id, id)
        }
        serde_json::Value::String(s) => {
            let num = |t: &str| {
                t.trim().parse::<u16>().map_err(|_| {
                    invalid(id_field.clone(), format!("{s:?} is not a VLAN id or range"))
                })
            };
            match s.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let id = num(s)?;
                    (id, id)
                }
            }
        }
        other => {
            return Err(invalid(
                id_field,
                format!("{other} is not a VLAN id or range"),
            ))
        }
    };
    if first == 0 || last > 4094 || first > last {
        return Err(invalid(
            id_field,
            format!("{first}-{last}: VLAN ids are 1-4094, start <= end"),
        ));
    }
    let capacity = v.capacity.unwrap_or(1);
    let total = u32::from(last - first + 1).saturating_mul(capacity);
    if capacity == 0 || total > MAX_VLAN_DEVICES {
        return Err(invalid(
            format!("{at}.capacity"),
            format!("{capacity}: must be at least 1 and ids x capacity at most {MAX_VLAN_DEVICES}"),
        ));
    }
    Ok(VlanPool {
        master: v.master,
        first,
        last,
        capacity,
    })
}

fn check_vlan_overlap(pools: &[Arc<PoolConfig>]) -> Result<()> {
    let vlans: Vec<(usize, &VlanPool)> = pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.vlan.as_ref().map(|v| (i, v)))
        .collect();
    for (n, (i, a)) in vlans.iter().enumerate() {
        for (j, b) in &vlans[n + 1..] {
            if a.master == b.master && a.first <= b.last && b.first <= a.last {
                return Err(invalid(
                    format!("resourceList[{j}].vlan.id"),
                    format!("overlaps resourceList[{i}] on {}", a.master),
                ));
            }
        }
    }
    Ok(())
}

fn is_resource_name(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "resourceList": [
        {"resourceName": "sriov_a", "selectors": {"vendors": ["8086"], "pfNames": ["ens1f0#0-3"]}},
        {"resourceName": "dpdk", "resourcePrefix": "example.com", "deviceType": "vfio",
         "selectors": [{"drivers": ["vfio-pci"]}, {"rootDevices": ["0000:03:00.0#4-7"]}]},
        {"resourceName": "vlan100", "deviceType": "vlan", "vlan": {"master": "eth0", "id": 100, "capacity": 4}},
        {"resourceName": "vlans", "deviceType": "vlan", "vlan": {"master": "eth0", "id": "200-203"}}
      ]
    }"#;

    #[test]
    fn parses_json_pools() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.pools.len(), 4);
        assert_eq!(c.pools[0].full_name(), "virtlink.io/sriov_a");
        assert_eq!(c.pools[1].full_name(), "example.com/dpdk");
        assert_eq!(c.pools[1].device_type, DeviceType::Vfio);
        let v = c.pools[2].vlan.as_ref().unwrap();
        assert_eq!((v.first, v.last, v.capacity), (100, 100, 4));
        let v = c.pools[3].vlan.as_ref().unwrap();
        assert_eq!((v.first, v.last, v.capacity), (200, 203, 1));
    }

    #[test]
    fn parses_yaml() {
        let c = Config::parse(
            "resourceList:\n- resourceName: a\n  deviceType: netDevice\n  selectors:\n    pciAddresses: ['0000:03:02.0']\n",
        )
        .unwrap();
        assert_eq!(c.pools.len(), 1);
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"resourceList": [{"resourceName": "a", "deviceType": "gpu"}]}"#,
                "resourceList[0].deviceType",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a/b"}]}"#,
                "resourceList[0].resourceName",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a", "resourcePrefix": "Bad_Prefix"}]}"#,
                "resourceList[0].resourcePrefix",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a"}, {"resourceName": "a"}]}"#,
                "resourceList[1].resourceName",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a", "selector": {}}]}"#,
                "selector",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a", "selectors": {"pfNames": ["x#3-1"]}}]}"#,
                "resourceList[0].selectors",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a", "selectors": [{}, {"pciAddresses": ["0000:03:00"]}]}]}"#,
                "resourceList[0].selectors[1]",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a", "selectors": {"vendor": ["8086"]}}]}"#,
                "vendor",
            ),
            (
                r#"{"resourceList": [{"resourceName": "v", "deviceType": "vlan"}]}"#,
                "resourceList[0].vlan",
            ),
            (
                r#"{"resourceList": [{"resourceName": "v", "deviceType": "vlan", "vlan": {"master": "eth0", "id": 4095}}]}"#,
                "resourceList[0].vlan.id",
            ),
            (
                r#"{"resourceList": [{"resourceName": "v", "deviceType": "vlan", "vlan": {"master": "eth0", "id": "10-5"}}]}"#,
                "resourceList[0].vlan.id",
            ),
            (
                r#"{"resourceList": [{"resourceName": "v", "deviceType": "vlan", "vlan": {"master": "eth0", "id": 5, "capacity": 0}}]}"#,
                "resourceList[0].vlan.capacity",
            ),
            (
                r#"{"resourceList": [{"resourceName": "v", "deviceType": "vlan", "vlan": {"master": "a very long ifname", "id": 5}}]}"#,
                "resourceList[0].vlan.master",
            ),
            (
                r#"{"resourceList": [{"resourceName": "a", "vlan": {"master": "eth0", "id": 5}}]}"#,
                "resourceList[0].vlan",
            ),
            (
                r#"{"resourceList": [
                {"resourceName": "v1", "deviceType": "vlan", "vlan": {"master": "eth0", "id": "5-9"}},
                {"resourceName": "v2", "deviceType": "vlan", "vlan": {"master": "eth0", "id": 9}}]}"#,
                "resourceList[1].vlan.id",
            ),
            (r#"{"resources": []}"#, "resources"),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert!(e.contains(field), "error {e:?} does not name {field}");
        }
    }
}
