//! The objects of isolated networks and every check of user input.
//!
//! - [`VirtualNetwork`] (cluster scoped, `virtualnetworks.virtlink.io`):
//!   a network's id (VNI), CIDRs, gateway, MTU, tenant;
//! - [`NetworkEndpointSlice`] (`networkendpointslices.virtlink.io`, one per
//!   (network, node), written only by that node): the node's underlay
//!   address, its IPAM blocks and its endpoints.
//!
//! [`Network`] is a validated `VirtualNetwork`; [`check_collisions`] checks a
//! set of them against each other.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest VXLAN network identifier.
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// The default MTU: 1500 on the underlay minus the VXLAN overhead (50).
pub const DEFAULT_MTU: u32 = 1450;
pub const MTU_MIN: u32 = 576;
pub const MTU_MAX: u32 = 9000 - 50;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("network {network}: id {id} is not a VXLAN network identifier (1..={VNI_MAX})")]
    VniOutOfRange { network: String, id: u32 },
    #[error("network {network}: no CIDR")]
    NoCidr { network: String },
    #[error("network {network}: CIDRs {a} and {b} overlap")]
    CidrOverlap {
        network: String,
        a: Ipv4Net,
        b: Ipv4Net,
    },
    #[error("network {network}: gateway {gateway} is not a host address of its CIDRs")]
    GatewayOutside { network: String, gateway: Ipv4Addr },
    #[error("network {network}: MTU {mtu} out of range {MTU_MIN}..={MTU_MAX}")]
    MtuOutOfRange { network: String, mtu: u32 },
    #[error("network {network}: invalid name (a DNS label: lower case letters, digits, '-')")]
    BadName { network: String },
    #[error("VNI collision: networks {a} and {b} both have id {id}")]
    VniCollision { id: u32, a: String, b: String },
    #[error("network {network} is defined twice with different settings ({field} differs)")]
    Mismatch {
        network: String,
        field: &'static str,
    },
    #[error("network {network}: requested address {ip} is outside its CIDRs ({cidrs})")]
    AddressOutside {
        network: String,
        ip: Ipv4Addr,
        cidrs: String,
    },
    #[error(
        "network {network}: requested address {ip} is reserved (network, broadcast or gateway)"
    )]
    AddressReserved { network: String, ip: Ipv4Addr },
    #[error("network {network}: address {ip} is already used by {owner}")]
    AddressInUse {
        network: String,
        ip: Ipv4Addr,
        owner: String,
    },
    #[error(
        "network {network}: requested address {ip} is in block {block}, which node {node} \
         allocates from (each node hands out addresses from its own /28 blocks)"
    )]
    BlockOfOtherNode {
        network: String,
        ip: Ipv4Addr,
        block: Ipv4Net,
        node: String,
    },
    #[error("network {network}: no free address left")]
    Exhausted { network: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A virtual network as users write it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "virtlink.io",
    version = "v1alpha1",
    kind = "VirtualNetwork",
    plural = "virtualnetworks",
    shortname = "vnet",
    printcolumn = r#"{"name":"ID","type":"integer","jsonPath":".spec.id"}"#,
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNetworkSpec {
    /// The network id, carried as the VXLAN VNI (1..=16777215), unique in
    /// the cluster.
    pub id: u32,
    /// IPv4 CIDRs; they must not overlap. Pods get addresses from them.
    pub cidrs: Vec<Ipv4Net>,
    /// The gateway address (ARP for it is answered on every node); default:
    /// the first host address of the first CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Pod interface MTU (default 1450: a 1500 underlay minus VXLAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Who owns the network (informational; isolation is per network).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Let traffic to outside the CIDRs leave through the node (masquerade).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress: bool,
}

/// The endpoints one node has in one network. Name: `<network>.<node>`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "virtlink.io",
    version = "v1alpha1",
    kind = "NetworkEndpointSlice",
    plural = "networkendpointslices",
    shortname = "nes"
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEndpointSliceSpec {
    pub network: String,
    pub node: String,
    /// The node's underlay address (VXLAN remote).
    pub node_ip: Ipv4Addr,
    /// IPAM blocks this node allocates from.
    #[serde(default)]
    pub blocks: Vec<Ipv4Net>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
}

/// One attached interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    pub ip: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub container_id: String,
    /// The interface in the pod.
    pub ifname: String,
    /// The host end of the veth (on the node).
    pub host_ifname: String,
}

impl EndpointRecord {
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        parse_mac(&self.mac)
    }
}

/// The slice's object name.
pub fn slice_name(network: &str, node: &str) -> String {
    format!("{network}.{node}")
}

/// The label naming a slice's network: agents watch the slices of one
/// network with the selector `virtlink.io/network=<name>`.
pub const NETWORK_LABEL: &str = "virtlink.io/network";
/// The label naming a slice's node.
pub const NODE_LABEL: &str = "virtlink.io/node";

/// The slice object of `spec`: its name and both labels.
pub fn slice_object(spec: &NetworkEndpointSliceSpec) -> NetworkEndpointSlice {
    let mut s = NetworkEndpointSlice::new(&slice_name(&spec.network, &spec.node), spec.clone());
    s.metadata.labels = Some(BTreeMap::from([
        (NETWORK_LABEL.to_string(), spec.network.clone()),
        (NODE_LABEL.to_string(), spec.node.clone()),
    ]));
    s
}

/// A validated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub id: u32,
    pub cidrs: Vec<Ipv4Net>,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub tenant: String,
    pub egress: bool,
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Network {
    /// Checks `spec` (named `name`) on its own.
    pub fn from_spec(name: &str, spec: &VirtualNetworkSpec) -> Result<Self> {
        let network = name.to_string();
        if !is_dns_label(name) {
            return Err(Error::BadName { network });
        }
        if spec.id == 0 || spec.id > VNI_MAX {
            return Err(Error::VniOutOfRange {
                network,
                id: spec.id,
            });
        }
        let cidrs: Vec<Ipv4Net> = spec.cidrs.iter().map(|c| c.trunc()).collect();
        let Some(first) = cidrs.first() else {
            return Err(Error::NoCidr { network });
        };
        for (i, a) in cidrs.iter().enumerate() {
            for b in &cidrs[i + 1..] {
                if a.contains(b) || b.contains(a) {
                    return Err(Error::CidrOverlap {
                        network,
                        a: *a,
                        b: *b,
                    });
                }
            }
        }
        let gateway = match spec.gateway {
            Some(g) => g,
            None => first.hosts().next().ok_or(Error::NoCidr {
                network: network.clone(),
            })?,
        };
        if !cidrs
            .iter()
            .any(|c| c.contains(&gateway) && is_host(c, gateway))
        {
            return Err(Error::GatewayOutside { network, gateway });
        }
        let mtu = spec.mtu.unwrap_or(DEFAULT_MTU);
        if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
            return Err(Error::MtuOutOfRange { network, mtu });
        }
        Ok(Self {
            name: network,
            id: spec.id,
            cidrs,
            gateway,
            mtu,
            tenant: spec.tenant.clone(),
            egress: spec.egress,
        })
    }

    pub fn from_object(vn: &VirtualNetwork) -> Result<Self> {
        Self::from_spec(vn.metadata.name.as_deref().unwrap_or_default(), &vn.spec)
    }

    /// The CIDR holding `ip`.
    pub fn cidr_of(&self, ip: Ipv4Addr) -> Option<Ipv4Net> {
        self.cidrs.iter().copied().find(|c| c.contains(&ip))
    }

    /// Checks a requested address: inside the CIDRs, not reserved.
    pub fn check_address(&self, ip: Ipv4Addr) -> Result<Ipv4Net> {
        let Some(cidr) = self.cidr_of(ip) else {
            return Err(Error::AddressOutside {
                network: self.name.clone(),
                ip,
                cidrs: self
                    .cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if ip == self.gateway || !is_host(&cidr, ip) {
            return Err(Error::AddressReserved {
                network: self.name.clone(),
                ip,
            });
        }
        Ok(cidr)
    }

    /// The gateway's MAC, the same on every node: `02:76:6e:` + the VNI.
    pub fn gateway_mac(&self) -> [u8; 6] {
        let id = self.id.to_be_bytes();
        [0x02, 0x76, 0x6e, id[1], id[2], id[3]]
    }

    /// The same network as `other` (for definitions that come from two places).
    pub fn check_same(&self, other: &Network) -> Result<()> {
        let field = if self.id != other.id {
            "id"
        } else if self.cidrs != other.cidrs {
            "cidrs"
        } else if self.gateway != other.gateway {
            "gateway"
        } else if self.mtu != other.mtu {
            "mtu"
        } else if self.egress != other.egress {
            "egress"
        } else {
            return Ok(());
        };
        Err(Error::Mismatch {
            network: self.name.clone(),
            field,
        })
    }

    pub fn to_spec(&self) -> VirtualNetworkSpec {
        VirtualNetworkSpec {
            id: self.id,
            cidrs: self.cidrs.clone(),
            gateway: Some(self.gateway),
            mtu: Some(self.mtu),
            tenant: self.tenant.clone(),
            egress: self.egress,
        }
    }
}

/// Is `ip` a host address of `net` (not its network or broadcast address,
/// for prefixes that have those)?
pub fn is_host(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast())
}

/// Checks a set of networks against each other: one definition per name,
/// one name per id.
pub fn check_collisions<'a>(nets: impl IntoIterator<Item = &'a Network>) -> Result<()> {
    let mut by_id: BTreeMap<u32, &Network> = BTreeMap::new();
    let mut by_name: BTreeMap<&str, &Network> = BTreeMap::new();
    for n in nets {
        if let Some(prev) = by_name.get(n.name.as_str()) {
            prev.check_same(n)?;
            continue;
        }
        if let Some(prev) = by_id.get(&n.id) {
            return Err(Error::VniCollision {
                id: n.id,
                a: prev.name.clone(),
                b: n.name.clone(),
            });
        }
        by_id.insert(n.id, n);
        by_name.insert(n.name.as_str(), n);
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// The MAC of the endpoint with address `ip`: `0a:58:` + the address
/// (unique within a network; networks never share lookups).
pub fn endpoint_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The CRDs, as multi-document YAML (manifests/base/crd-virtual-networks.yaml).
pub fn crds_yaml() -> std::result::Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `virtlink crd --vnet` from virtlink's Rust types; do not edit.\n",
    );
    out.push_str(&serde_yaml::to_string(&VirtualNetwork::crd())?);
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(&NetworkEndpointSlice::crd())?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, cidrs: &[&str]) -> VirtualNetworkSpec {
        VirtualNetworkSpec {
            id,
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            gateway: None,
            mtu: None,
            tenant: String::new(),
            egress: false,
        }
    }

    #[test]
    fn defaults() {
        let n = Network::from_spec("blue", &spec(100, &["10.0.0.0/24"])).unwrap();
        assert_eq!(n.gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(n.mtu, DEFAULT_MTU);
        assert_eq!(n.gateway_mac(), [2, 0x76, 0x6e, 0, 0, 100]);
    }

    #[test]
    fn bad_networks_name_the_problem() {
        let e = Network::from_spec("b", &spec(1, &["10.0.0.0/16", "10.0.5.0/24"])).unwrap_err();
        assert!(matches!(e, Error::CidrOverlap { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("10.0.0.0/16 and 10.0.5.0/24 overlap"));
        let e = Network::from_spec("b", &spec(0, &["10.0.0.0/24"])).unwrap_err();
        assert!(matches!(e, Error::VniOutOfRange { .. }));
        let e = Network::from_spec("b", &spec(1 << 24, &["10.0.0.0/24"])).unwrap_err();
        assert!(matches!(e, Error::VniOutOfRange { .. }));
        let e = Network::from_spec("b", &spec(1, &[])).unwrap_err();
        assert!(matches!(e, Error::NoCidr { .. }));
        let mut s = spec(1, &["10.0.0.0/24"]);
        s.gateway = Some(Ipv4Addr::new(10, 0, 1, 1));
        assert!(matches!(
            Network::from_spec("b", &s).unwrap_err(),
            Error::GatewayOutside { .. }
        ));
        s.gateway = Some(Ipv4Addr::new(10, 0, 0, 255));
        assert!(matches!(
            Network::from_spec("b", &s).unwrap_err(),
            Error::GatewayOutside { .. }
        ));
        assert!(matches!(
            Network::from_spec("Blue", &spec(1, &["10.0.0.0/24"])).unwrap_err(),
            Error::BadName { .. }
        ));
    }

    #[test]
    fn vni_collision_and_mismatch() {
        let a = Network::from_spec("a", &spec(7, &["10.0.0.0/24"])).unwrap();
        let b = Network::from_spec("b", &spec(7, &["10.1.0.0/24"])).unwrap();
        let e = check_collisions([&a, &b]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VNI collision: networks a and b both have id 7"
        );
        let a2 = Network::from_spec("a", &spec(8, &["10.0.0.0/24"])).unwrap();
        assert!(matches!(
            check_collisions([&a, &a2]).unwrap_err(),
            Error::Mismatch { field: "id", .. }
        ));
        // Same addresses in two networks are fine: that is the point.
        let c = Network::from_spec("c", &spec(9, &["10.0.0.0/24"])).unwrap();
        check_collisions([&a, &c, &a.clone()]).unwrap();
    }

    #[test]
    fn requested_addresses() {
        let n = Network::from_spec("n", &spec(3, &["10.0.0.0/24", "10.9.0.0/28"])).unwrap();
        assert!(n.check_address(Ipv4Addr::new(10, 9, 0, 5)).is_ok());
        let e = n.check_address(Ipv4Addr::new(10, 1, 0, 5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network n: requested address 10.1.0.5 is outside its CIDRs (10.0.0.0/24, 10.9.0.0/28)"
        );
        for ip in [[10, 0, 0, 1], [10, 0, 0, 0], [10, 0, 0, 255]] {
            assert!(matches!(
                n.check_address(Ipv4Addr::from(ip)).unwrap_err(),
                Error::AddressReserved { .. }
            ));
        }
    }

    #[test]
    fn macs() {
        let m = endpoint_mac(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(format_mac(&m), "0a:58:0a:00:00:02");
        assert_eq!(parse_mac("0a:58:0a:00:00:02"), Some(m));
        assert_eq!(parse_mac("0a:58:0a:00:00"), None);
        assert_eq!(parse_mac("0a:58:0a:00:00:02:01"), None);
    }

    #[test]
    fn crds_render() {
        let y = crds_yaml().unwrap();
        assert!(y.contains("virtualnetworks.virtlink.io"));
        assert!(y.contains("networkendpointslices.virtlink.io"));
    }
}
