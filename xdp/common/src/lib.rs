//! Types shared by virtlink's eBPF programs (`xdp/ebpf`) and their loader
//! (`xdp/loader`): program and map names, map keys and values.
//!
//! Every type is `#[repr(C)]`, `Copy` and free of implicit padding, so both
//! sides see the same bytes. Addresses and ports are kept in network byte
//! order exactly as they appear in packets; IPv4 addresses use the first word
//! of the 16-byte address fields.
#![no_std]

pub mod vnet;

#[cfg(test)]
mod layout {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn no_implicit_padding() {
        assert_eq!(size_of::<NatConfig>(), 11 * 4 + 4 * 2 + 6 + 6 + 3 * 16);
        assert_eq!(size_of::<FlowKey>(), 32 + 4 + 4);
        assert_eq!(size_of::<CtEntry>(), 16 + 4 + 12 + 8);
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(size_of::<VlanConfig>(), 4);
        assert_eq!(size_of::<Counters>(), 8 * COUNTERS as usize);
    }

    #[test]
    fn counters_by_name() {
        let mut c = Counters::default();
        c.values[Counter::InPackets6 as usize] = 7;
        assert_eq!(c.get(Counter::InPackets6), 7);
        assert_eq!(Counter::ALL.len(), COUNTERS as usize);
        for (i, k) in Counter::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn reply_keys() {
        let k = FlowKey {
            src_ip: [1, 0, 0, 0],
            dst_ip: [2, 0, 0, 0],
            src_port: 10,
            dst_port: 20,
            proto: IPPROTO_TCP,
            family: 4,
            _pad: [0; 2],
        };
        let r = k.reply(DIR_OUT, [3, 0, 0, 0], 30);
        assert_eq!(
            (r.src_ip[0], r.src_port, r.dst_ip[0], r.dst_port),
            (2, 20, 3, 30)
        );
        let back = r.reply(DIR_IN, [1, 0, 0, 0], 10);
        assert_eq!(back, k);
    }
}

/// TC ingress on the guest's tap: anti-spoofing and source NAT of the
/// guest's traffic.
pub const PROG_GUEST_INGRESS: &str = "guest_ingress";
/// TC egress on the pod's interface, Istio mode only: source NAT of the
/// guest's traffic after the pod's stack (and the sidecar's rules) routed it.
pub const PROG_POD_EGRESS: &str = "pod_egress";
/// TC ingress on the pod's interface: reverse translation of replies and
/// destination NAT of new connections to forwarded ports.
pub const PROG_POD_INGRESS: &str = "pod_ingress";
/// TC ingress that only redirects to a peer (`bpf_redirect_peer`): the
/// benchmark's untranslated ceiling.
pub const PROG_REDIRECT_PEER: &str = "redirect_peer";
/// The IPv6 halves of the three above, reached by tail call through
/// [`MAP_JUMP`] (own stack frame and verifier budget).
pub const PROG_GUEST_INGRESS6: &str = "guest_ingress6";
pub const PROG_POD_INGRESS6: &str = "pod_ingress6";
pub const PROG_POD_EGRESS6: &str = "pod_egress6";
/// [`MAP_JUMP`] indexes.
pub const JUMP_GUEST6: u32 = 0;
pub const JUMP_POD6: u32 = 1;
pub const JUMP_EGRESS6: u32 = 2;
pub const NAT_JUMPS: u32 = 3;
/// The IPv6 programs by [`MAP_JUMP`] index.
pub const NAT_JUMP_PROGRAMS: [&str; NAT_JUMPS as usize] =
    [PROG_GUEST_INGRESS6, PROG_POD_INGRESS6, PROG_POD_EGRESS6];
/// TC egress: pushes the interface's 802.1Q tag.
pub const PROG_VLAN_PUSH: &str = "vlan_push";
/// TC ingress: pops the interface's 802.1Q tag, drops other tags and
/// untagged frames.
pub const PROG_VLAN_POP: &str = "vlan_pop";

/// [`NatConfig`] at index 0.
pub const MAP_CONFIG: &str = "VL_CONFIG";
/// [`FlowKey`] -> [`CtEntry`]: connection tracking (LRU hash).
pub const MAP_CONNTRACK: &str = "VL_CT";
/// [`PortKey`] -> [`PORT_FORWARD`] or [`PORT_DENY`].
pub const MAP_PORTS: &str = "VL_PORTS";
/// Per-CPU [`Counters`] at index 0 (one lookup per packet).
pub const MAP_COUNTERS: &str = "VL_COUNTERS";
/// Ingress ifindex (`u32`) -> the ifindex whose peer gets the packet.
pub const MAP_REDIRECT: &str = "VL_REDIRECT";
/// [`VlanConfig`] at index 0.
pub const MAP_VLAN: &str = "VL_VLAN";
/// Program array of the IPv6 programs (pinned: a program array is emptied
/// when its last user reference goes).
pub const MAP_JUMP: &str = "VL_JUMP";

/// Every map of the masquerade programs; all are pinned per pod.
pub const NAT_MAPS: [&str; 5] = [MAP_CONFIG, MAP_CONNTRACK, MAP_PORTS, MAP_COUNTERS, MAP_JUMP];

/// Conntrack capacity (entries; two per connection).
pub const CONNTRACK_MAX: u32 = 65536;
/// Forwarded-port map capacity.
pub const PORTS_MAX: u32 = 1024;

/// Ports Istio's sidecar (Envoy, pilot-agent) listens on in the pod: never
/// forwarded to the guest.
pub const ENVOY_PORTS: [u16; 10] = [
    15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090,
];

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// [`NatConfig::flags`]: forward every port not listed as [`PORT_DENY`].
pub const FLAG_FORWARD_ALL: u32 = 1;
/// [`NatConfig::flags`]: drop frames from the tap whose source MAC or IP is
/// not the guest's.
pub const FLAG_ANTI_SPOOF: u32 = 2;
/// [`NatConfig::flags`]: translated packets go through the pod's network stack
/// (`TC_ACT_OK` after rewriting) instead of being redirected past it.
pub const FLAG_ISTIO: u32 = 4;

/// [`NatConfig::flags`]: the pod interface is a veth: translated packets
/// go straight to its peer's ingress (`bpf_redirect_peer`) when the FIB
/// knows the next hop's MAC.
pub const FLAG_POD_PEER: u32 = 8;
/// [`NatConfig::flags`]: the guest's interface is a veth (a guest namespace
/// instead of a VM): `bpf_redirect_peer` to the guest.
pub const FLAG_GUEST_PEER: u32 = 16;
/// [`NatConfig::flags`]: translate IPv4 (`pod_ip`, `guest_ip`, `gateway_ip`
/// are set); without it IPv4 passes untouched.
pub const FLAG_V4: u32 = 32;
/// [`NatConfig::flags`]: translate IPv6 (`pod_ip6`, `guest_ip6`,
/// `gateway_ip6` are set); without it IPv6 passes untouched.
pub const FLAG_V6: u32 = 64;

/// [`MAP_PORTS`] value: new inbound connections to the port go to the guest.
pub const PORT_FORWARD: u8 = 1;
/// [`MAP_PORTS`] value: never forwarded (Envoy's ports).
pub const PORT_DENY: u8 = 2;

/// Everything the masquerade programs need to know about one pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// The pod's IPv4 address (network byte order).
    pub pod_ip: u32,
    /// The guest's IPv4 address.
    pub guest_ip: u32,
    /// The tap's (gateway's) IPv4 address.
    pub gateway_ip: u32,
    /// The pod interface (`eth0`) in the pod's namespace.
    pub pod_ifindex: u32,
    /// The guest's tap.
    pub guest_ifindex: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Conntrack timeouts, seconds.
    pub timeout_tcp_syn: u32,
    pub timeout_tcp_established: u32,
    pub timeout_tcp_closing: u32,
    pub timeout_udp: u32,
    pub timeout_icmp: u32,
    /// NAT source ports (host byte order, inclusive); also ICMP echo ids.
    pub port_min: u16,
    pub port_max: u16,
    /// The pod's own ephemeral ports (`ip_local_port_range`, host byte
    /// order): UDP to them is never forwarded by "all ports", since those are
    /// replies to the pod's own sockets.
    pub local_port_min: u16,
    pub local_port_max: u16,
    /// The guest's MAC (anti-spoofing; destination of frames to the guest).
    pub guest_mac: [u8; 6],
    /// The source MAC of frames to the guest: the gateway's (the tap's own
    /// MAC, or a bridge's in front of it).
    pub gateway_mac: [u8; 6],
    // --- IPv6 (NAT66), with FLAG_V6 ---
    /// The pod's IPv6 address (network byte order, as in packets).
    pub pod_ip6: [u32; 4],
    /// The guest's IPv6 address.
    pub guest_ip6: [u32; 4],
    /// The gateway's IPv6 address on the tap.
    pub gateway_ip6: [u32; 4],
}

/// A packet's flow as seen where it arrives. ICMP echo: requests carry the
/// identifier in `src_port`, replies in `dst_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: [u32; 4],
    pub dst_ip: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// The same connection's key in the other direction after translation
    /// `(addr, port)` of this side (source for [`DIR_OUT`], destination for
    /// [`DIR_IN`]).
    pub fn reply(&self, dir: u8, addr: [u32; 4], port: u16) -> FlowKey {
        let mut k = *self;
        if dir == DIR_OUT {
            k.src_ip = self.dst_ip;
            k.src_port = self.dst_port;
            k.dst_ip = addr;
            k.dst_port = port;
        } else {
            k.src_ip = addr;
            k.src_port = port;
            k.dst_ip = self.src_ip;
            k.dst_port = self.src_port;
        }
        k
    }
}

/// From the guest: the entry rewrites the source.
pub const DIR_OUT: u8 = 0;
/// From the world: the entry rewrites the destination.
pub const DIR_IN: u8 = 1;
/// Hairpin, the guest to its own pod IP on a forwarded port: the entry
/// rewrites the source to the pod IP and the destination to the guest (ports
/// kept); used by `guest_ingress` only.
pub const DIR_HAIRPIN: u8 = 2;

/// TCP states the timeouts depend on.
pub const TCP_SYN: u8 = 0;
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSING: u8 = 2;
/// A reset was seen: the connection is over in both directions.
pub const TCP_CLOSED: u8 = 3;

/// One direction of a translated connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// What the source ([`DIR_OUT`]) or destination ([`DIR_IN`]) becomes.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    /// `DIR_*`.
    pub dir: u8,
    /// `TCP_*` (0 for UDP and ICMP).
    pub state: u8,
    /// The Ethernet addresses towards the remote, learned from the
    /// connection's last packet from it (its source and destination MACs,
    /// swapped): `[next hop (destination) MAC, pod interface MAC]`; all
    /// zero until the remote's first packet. Kept in both entries of a
    /// connection.
    pub l2: [u8; 12],
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
}

/// A forwarded (or denied) port: protocol and port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The VLAN program's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VlanConfig {
    /// 1..=4094.
    pub vid: u16,
    pub _pad: u16,
}

/// [`MAP_COUNTERS`] indexes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Translated guest -> world packets and their bytes.
    OutPackets = 0,
    OutBytes = 1,
    /// Translated world -> guest packets and their bytes.
    InPackets = 2,
    InBytes = 3,
    /// Frames from the tap with a foreign source MAC, dropped.
    DropSpoofMac = 4,
    /// Frames from the tap with a foreign source IP, dropped.
    DropSpoofIp = 5,
    /// Guest connections dropped because no NAT port was free.
    DropNoPort = 6,
    /// Packets the programs could not rewrite, dropped.
    DropError = 7,
    /// Conntrack entries created (two per connection).
    CtCreated = 8,
    /// Lookups that found an expired entry.
    CtExpired = 9,
    /// Packets passed to the pod's stack untouched.
    Passed = 10,
    /// Of `OutPackets` and `InPackets`: IPv6.
    OutPackets6 = 11,
    InPackets6 = 12,
    /// Hairpin packets (the guest to its own pod IP and back).
    Hairpin = 13,
}

/// Number of counters.
pub const COUNTERS: u32 = 14;

/// [`MAP_COUNTERS`]' value: every counter of one CPU, indexed by
/// [`Counter`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTERS as usize],
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize]
    }
}

impl Counter {
    /// All counters in index order.
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::OutPackets,
        Counter::OutBytes,
        Counter::InPackets,
        Counter::InBytes,
        Counter::DropSpoofMac,
        Counter::DropSpoofIp,
        Counter::DropNoPort,
        Counter::DropError,
        Counter::CtCreated,
        Counter::CtExpired,
        Counter::Passed,
        Counter::OutPackets6,
        Counter::InPackets6,
        Counter::Hairpin,
    ];

    /// A stable snake_case name (for `virtlink stats`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::OutPackets => "out_packets",
            Counter::OutBytes => "out_bytes",
            Counter::InPackets => "in_packets",
            Counter::InBytes => "in_bytes",
            Counter::DropSpoofMac => "drop_spoof_mac",
            Counter::DropSpoofIp => "drop_spoof_ip",
            Counter::DropNoPort => "drop_no_port",
            Counter::DropError => "drop_error",
            Counter::CtCreated => "conntrack_created",
            Counter::CtExpired => "conntrack_expired",
            Counter::Passed => "passed",
            Counter::OutPackets6 => "out_packets_ipv6",
            Counter::InPackets6 => "in_packets_ipv6",
            Counter::Hairpin => "hairpin_packets",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], Copy, made only of integers and
    // integer arrays, with explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for NatConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VlanConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
}
