//! Addresses without cross-node collisions: each node allocates only from
//! `/28` blocks it has claimed in its own endpoint slice; a block is free
//! when no slice of the network lists it. Blocks are owned by one node at a
//! time, so allocating inside one's own blocks needs nobody else; claiming a
//! new block is a write others can see followed by a fresh read of every
//! slice ([`crate::registry`]): a node keeps a block only when that read
//! shows no other node claiming it ([`rival`]). A requested address claims
//! its block the same way, and is refused in another node's block.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{is_host, Error, Network, NetworkEndpointSliceSpec, Result};

/// Prefix length of a block: 16 addresses.
pub const BLOCK_PREFIX: u8 = 28;

/// The blocks of a network, in order (a CIDR smaller than a block is one block).
pub fn blocks(net: &Network) -> impl Iterator<Item = Ipv4Net> + '_ {
    net.cidrs.iter().flat_map(|c| {
        let sub: Box<dyn Iterator<Item = Ipv4Net>> = if c.prefix_len() >= BLOCK_PREFIX {
            Box::new(std::iter::once(*c))
        } else {
            match c.subnets(BLOCK_PREFIX) {
                Ok(s) => Box::new(s),
                Err(_) => Box::new(std::iter::empty()),
            }
        };
        sub
    })
}

/// An address handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    /// The CIDR the address is in (its prefix is the interface's).
    pub cidr: Ipv4Net,
    /// A block this allocation newly claims for the node.
    pub claimed: Option<Ipv4Net>,
}

fn used(slices: &[NetworkEndpointSliceSpec]) -> std::collections::BTreeMap<Ipv4Addr, String> {
    slices
        .iter()
        .flat_map(|s| {
            s.endpoints
                .iter()
                .map(move |e| (e.ip, format!("{} on node {}", e.container_id, s.node)))
        })
        .collect()
}

/// The block `ip` belongs to.
pub fn block_of(net: &Network, ip: Ipv4Addr) -> Option<Ipv4Net> {
    let cidr = net.cidr_of(ip)?;
    let prefix = cidr.prefix_len().max(BLOCK_PREFIX);
    Ipv4Net::new(ip, prefix).ok().map(|b| b.trunc())
}

/// Picks an address for `node` in `net` given every slice of the network
/// (`requested` is checked, not picked), claiming no block in `avoid`.
pub fn allocate(
    net: &Network,
    node: &str,
    slices: &[NetworkEndpointSliceSpec],
    requested: Option<Ipv4Addr>,
    avoid: &BTreeSet<Ipv4Net>,
) -> Result<Allocation> {
    let used = used(slices);
    let mine: Vec<Ipv4Net> = slices
        .iter()
        .filter(|s| s.node == node)
        .flat_map(|s| s.blocks.iter().copied())
        .collect();
    if let Some(ip) = requested {
        let cidr = net.check_address(ip)?;
        if let Some(owner) = used.get(&ip) {
            return Err(Error::AddressInUse {
                network: net.name.clone(),
                ip,
                owner: owner.clone(),
            });
        }
        let block = block_of(net, ip).ok_or_else(|| Error::AddressOutside {
            network: net.name.clone(),
            ip,
            cidrs: String::new(),
        })?;
        if mine.contains(&block) {
            return Ok(Allocation {
                ip,
                cidr,
                claimed: None,
            });
        }
        if let Some(other) = slices
            .iter()
            .find(|s| s.node != node && s.blocks.contains(&block))
        {
            return Err(Error::BlockOfOtherNode {
                network: net.name.clone(),
                ip,
                block,
                node: other.node.clone(),
            });
        }
        return Ok(Allocation {
            ip,
            cidr,
            claimed: Some(block),
        });
    }
    let free_in = |block: &Ipv4Net| -> Option<(Ipv4Addr, Ipv4Net)> {
        let cidr = net.cidr_of(block.network())?;
        block
            .hosts_all()
            .find(|ip| *ip != net.gateway && is_host(&cidr, *ip) && !used.contains_key(ip))
            .map(|ip| (ip, cidr))
    };
    for b in &mine {
        if let Some((ip, cidr)) = free_in(b) {
            return Ok(Allocation {
                ip,
                cidr,
                claimed: None,
            });
        }
    }
    let claimed: BTreeSet<Ipv4Net> = slices
        .iter()
        .flat_map(|s| s.blocks.iter().copied())
        .collect();
    for b in blocks(net).filter(|b| !claimed.contains(b) && !avoid.contains(b)) {
        if let Some((ip, cidr)) = free_in(&b) {
            return Ok(Allocation {
                ip,
                cidr,
                claimed: Some(b),
            });
        }
    }
    Err(Error::Exhausted {
        network: net.name.clone(),
    })
}

/// Another node whose slice claims the block `a` claimed, or lists its
/// address: read after this node's claim was written, any such node claimed
/// at the same time (or earlier), so this node gives the claim up.
pub fn rival<'a>(
    node: &str,
    slices: &'a [NetworkEndpointSliceSpec],
    a: &Allocation,
) -> Option<&'a str> {
    slices
        .iter()
        .filter(|s| s.node != node)
        .find(|s| {
            a.claimed.is_some_and(|b| s.blocks.contains(&b))
                || s.endpoints.iter().any(|e| e.ip == a.ip)
        })
        .map(|s| s.node.as_str())
}

trait HostsAll {
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>>;
}

impl HostsAll for Ipv4Net {
    /// Every address of the block (the CIDR's reserved ones are filtered
    /// by the caller: a block's first address may be a CIDR host).
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>> {
        let start = u32::from(self.network());
        let end = u32::from(self.broadcast());
        Box::new((start..=end).map(Ipv4Addr::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointRecord, VirtualNetworkSpec};

    fn net(cidrs: &[&str]) -> Network {
        Network::from_spec(
            "n",
            &VirtualNetworkSpec {
                id: 5,
                cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                gateway: None,
                mtu: None,
                tenant: String::new(),
                egress: false,
            },
        )
        .unwrap()
    }

    fn slice(node: &str, blocks: &[&str], ips: &[&str]) -> NetworkEndpointSliceSpec {
        NetworkEndpointSliceSpec {
            network: "n".into(),
            node: node.into(),
            node_ip: Ipv4Addr::new(192, 168, 0, 1),
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
            endpoints: ips
                .iter()
                .map(|ip| EndpointRecord {
                    ip: ip.parse().unwrap(),
                    mac: String::new(),
                    container_id: format!("c-{ip}"),
                    ifname: "net1".into(),
                    host_ifname: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn first_allocation_claims_the_first_block_skipping_reserved() {
        let n = net(&["10.0.0.0/24"]);
        let a = allocate(&n, "node1", &[], None, &none()).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(a.claimed, Some("10.0.0.0/28".parse().unwrap()));
    }

    #[test]
    fn nodes_get_disjoint_blocks() {
        let n = net(&["10.0.0.0/24"]);
        let s = [slice("node1", &["10.0.0.0/28"], &["10.0.0.2"])];
        let a = allocate(&n, "node2", &s, None, &none()).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 16));
        assert_eq!(a.claimed, Some("10.0.0.16/28".parse().unwrap()));
        let b = allocate(&n, "node1", &s, None, &none()).unwrap();
        assert_eq!((b.ip, b.claimed), (Ipv4Addr::new(10, 0, 0, 3), None));
    }

    #[test]
    fn a_full_block_claims_the_next_and_the_last_stops() {
        let n = net(&["10.0.0.0/28"]);
        let ips: Vec<String> = (2..15).map(|i| format!("10.0.0.{i}")).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let s = [slice("node1", &["10.0.0.0/28"], &ips)];
        let e = allocate(&n, "node1", &s, None, &none()).unwrap_err();
        assert!(matches!(e, Error::Exhausted { .. }), "{e}");
    }

    fn none() -> BTreeSet<Ipv4Net> {
        BTreeSet::new()
    }

    #[test]
    fn requested_addresses_claim_their_block_and_stay_out_of_others() {
        let n = net(&["10.0.0.0/24"]);
        let s = [slice("node1", &["10.0.0.0/28"], &["10.0.0.2"])];
        let req = |node: &str, ip: [u8; 4]| allocate(&n, node, &s, Some(ip.into()), &none());
        let e = req("node2", [10, 0, 0, 2]).unwrap_err();
        assert!(
            e.to_string()
                .contains("already used by c-10.0.0.2 on node node1"),
            "{e}"
        );
        let e = req("node2", [10, 0, 1, 2]).unwrap_err();
        assert!(matches!(e, Error::AddressOutside { .. }));
        let e = req("node2", [10, 0, 0, 5]).unwrap_err();
        assert!(
            e.to_string()
                .contains("block 10.0.0.0/28, which node node1"),
            "{e}"
        );
        let a = req("node2", [10, 0, 0, 99]).unwrap();
        assert_eq!(a.claimed, Some("10.0.0.96/28".parse().unwrap()));
        let a = req("node1", [10, 0, 0, 5]).unwrap();
        assert_eq!(a.claimed, None);
    }

    #[test]
    fn avoided_blocks_are_skipped() {
        let n = net(&["10.0.0.0/24"]);
        let avoid = ["10.0.0.0/28".parse().unwrap()].into();
        let a = allocate(&n, "node1", &[], None, &avoid).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 16));
    }

    #[test]
    fn a_claim_seen_on_another_node_is_a_rival() {
        let n = net(&["10.0.0.0/24"]);
        let a = allocate(&n, "node2", &[], None, &none()).unwrap();
        let mine = slice("node2", &["10.0.0.0/28"], &["10.0.0.2"]);
        assert_eq!(rival("node2", std::slice::from_ref(&mine), &a), None);
        let other = slice("node1", &["10.0.0.0/28"], &[]);
        assert_eq!(rival("node2", &[mine.clone(), other], &a), Some("node1"));
        let other = slice("node3", &["10.0.0.16/28"], &["10.0.0.2"]);
        assert_eq!(rival("node2", &[mine, other], &a), Some("node3"));
    }

    #[test]
    fn blocks_of_addresses() {
        let n = net(&["10.0.0.0/24", "10.1.0.0/30"]);
        let b = |ip: [u8; 4]| block_of(&n, ip.into()).map(|b| b.to_string());
        assert_eq!(b([10, 0, 0, 37]).as_deref(), Some("10.0.0.32/28"));
        assert_eq!(b([10, 1, 0, 1]).as_deref(), Some("10.1.0.0/30"));
        assert_eq!(b([10, 2, 0, 1]), None);
    }
}
