//! Isolated tenant networks (issue 6, docs/vnet.md): the maps of the
//! `vnet_from_pod` and `vnet_from_tunnel` programs. Kept apart from the
//! masquerade types above: nothing here is per pod; the maps are per node.
//!
//! IPv4 addresses are raw (network byte order, as in packets) except
//! [`VnEndpoint::node_ip`] and [`VnConfig::node_ip`], which are host order
//! because `bpf_skb_set_tunnel_key` takes them that way.

/// TC ingress on the host end of a pod's veth.
pub const PROG_VN_FROM_POD: &str = "vnet_from_pod";
/// TC ingress on the node's collect-metadata VXLAN device.
pub const PROG_VN_FROM_TUNNEL: &str = "vnet_from_tunnel";

/// Host-side ifindex (`u32`) -> [`VnIface`].
pub const MAP_VN_IFACES: &str = "VN_IFACES";
/// [`VnEndpointKey`] -> [`VnEndpoint`].
pub const MAP_VN_ENDPOINTS: &str = "VN_ENDPOINTS";
/// Network id (`u32`) -> [`VnNetwork`].
pub const MAP_VN_NETWORKS: &str = "VN_NETWORKS";
/// [`VnConfig`] at index 0.
pub const MAP_VN_CONFIG: &str = "VN_CONFIG";
/// Per-CPU `u64` counters indexed by [`VnCounter`].
pub const MAP_VN_COUNTERS: &str = "VN_COUNTERS";

/// Every map of the isolation programs; all are pinned per node.
pub const VN_MAPS: [&str; 5] = [
    MAP_VN_IFACES,
    MAP_VN_ENDPOINTS,
    MAP_VN_NETWORKS,
    MAP_VN_CONFIG,
    MAP_VN_COUNTERS,
];

/// Capacities.
pub const VN_IFACES_MAX: u32 = 16384;
pub const VN_ENDPOINTS_MAX: u32 = 262_144;
pub const VN_NETWORKS_MAX: u32 = 16384;

/// The endpoint behind a pod's host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnIface {
    /// The network id (VNI).
    pub net: u32,
    /// The endpoint's IPv4 (raw).
    pub ip: u32,
    /// The endpoint's MAC.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// An endpoint's address within its network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VnEndpointKey {
    pub net: u32,
    /// IPv4 (raw).
    pub ip: u32,
}

/// Where an endpoint lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnEndpoint {
    /// Host-side ifindex of a local endpoint; 0 for a remote one.
    pub ifindex: u32,
    /// A remote endpoint's node (underlay IPv4, host byte order).
    pub node_ip: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// [`VnNetwork::flags`]: traffic to outside the network's CIDRs may leave
/// through the node (egress gateway; not implemented in the programs yet).
pub const VN_FLAG_EGRESS: u32 = 1;

/// A network as the programs need it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnNetwork {
    /// The gateway's IPv4 (raw); ARP for it is answered with `gateway_mac`.
    pub gateway: u32,
    pub flags: u32,
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The node's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnConfig {
    /// The collect-metadata VXLAN device.
    pub vxlan_ifindex: u32,
    /// This node's underlay IPv4 (host byte order).
    pub node_ip: u32,
}

/// [`MAP_VN_COUNTERS`] indexes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnCounter {
    /// Delivered to an endpoint on the same node.
    ForwardLocal = 0,
    /// Sent through the VXLAN device to another node.
    ForwardRemote = 1,
    /// Received from the VXLAN device and delivered.
    FromTunnel = 2,
    /// ARP requests answered.
    ArpReplied = 3,
    /// From an interface the node does not know.
    DropNoIface = 4,
    /// Source MAC not the endpoint's.
    DropSpoofMac = 5,
    /// Source IPv4 (or ARP sender) not the endpoint's.
    DropSpoofIp = 6,
    /// Destination not an endpoint of the same network: isolation.
    DropNoEndpoint = 7,
    /// ARP for an address that is not in the network.
    DropArpMiss = 8,
    /// Neither IPv4 nor an ARP request.
    DropNotIpv4 = 9,
    /// From the tunnel with an inner source that is not an endpoint of that
    /// network on the sending node, or an unknown VNI.
    DropTunnelSpoof = 10,
    /// A packet the programs could not read or rewrite.
    DropError = 11,
}

/// Number of counters.
pub const VN_COUNTERS: u32 = 12;

impl VnCounter {
    pub const ALL: [VnCounter; VN_COUNTERS as usize] = [
        VnCounter::ForwardLocal,
        VnCounter::ForwardRemote,
        VnCounter::FromTunnel,
        VnCounter::ArpReplied,
        VnCounter::DropNoIface,
        VnCounter::DropSpoofMac,
        VnCounter::DropSpoofIp,
        VnCounter::DropNoEndpoint,
        VnCounter::DropArpMiss,
        VnCounter::DropNotIpv4,
        VnCounter::DropTunnelSpoof,
        VnCounter::DropError,
    ];

    /// A stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            VnCounter::ForwardLocal => "forward_local",
            VnCounter::ForwardRemote => "forward_remote",
            VnCounter::FromTunnel => "from_tunnel",
            VnCounter::ArpReplied => "arp_replied",
            VnCounter::DropNoIface => "drop_no_iface",
            VnCounter::DropSpoofMac => "drop_spoof_mac",
            VnCounter::DropSpoofIp => "drop_spoof_ip",
            VnCounter::DropNoEndpoint => "drop_no_endpoint",
            VnCounter::DropArpMiss => "drop_arp_miss",
            VnCounter::DropNotIpv4 => "drop_not_ipv4",
            VnCounter::DropTunnelSpoof => "drop_tunnel_spoof",
            VnCounter::DropError => "drop_error",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: #[repr(C)], Copy, only integers and integer arrays with
    // explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for VnIface {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VnEndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VnEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VnNetwork {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VnConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn no_implicit_padding() {
        assert_eq!(size_of::<VnIface>(), 16);
        assert_eq!(size_of::<VnEndpointKey>(), 8);
        assert_eq!(size_of::<VnEndpoint>(), 16);
        assert_eq!(size_of::<VnNetwork>(), 16);
        assert_eq!(size_of::<VnConfig>(), 8);
    }
}
