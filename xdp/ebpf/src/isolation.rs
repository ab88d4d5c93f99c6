//! Isolated tenant networks (docs/vnet.md): membership enforced with hash
//! lookups, so a packet costs the same with 1 or 10,000 networks.
//!
//! - `vnet_from_pod` (TC ingress on the host end of a pod's veth):
//!   anti-spoofing, ARP answered in place (gateway and peers), IPv4 to an
//!   endpoint of the same network: `bpf_redirect_peer` to a local one, or
//!   the tunnel key (VNI = network id) and `bpf_redirect` to the VXLAN
//!   device for a remote one; everything else is dropped and counted.
//! - `vnet_from_tunnel` (TC ingress on the collect-metadata VXLAN device):
//!   VNI + inner destination -> local endpoint, after checking that the inner
//!   source is an endpoint of that network on the sending node.

use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
    EbpfContext,
};
use virtlink_xdp_common::vnet::{
    VnConfig, VnCounter, VnEndpoint, VnEndpointKey, VnIface, VnNetwork, VN_COUNTERS,
    VN_ENDPOINTS_MAX, VN_FLAG_EGRESS, VN_IFACES_MAX, VN_NETWORKS_MAX,
};

use crate::packet::{eth_macs, set_macs, ETH_HLEN, ETH_P_ARP, ETH_P_IP};

#[map(name = "VN_IFACES")]
static IFACES: HashMap<u32, VnIface> = HashMap::with_max_entries(VN_IFACES_MAX, 0);

#[map(name = "VN_ENDPOINTS")]
static ENDPOINTS: HashMap<VnEndpointKey, VnEndpoint> =
    HashMap::with_max_entries(VN_ENDPOINTS_MAX, BPF_F_NO_PREALLOC);

#[map(name = "VN_NETWORKS")]
static NETWORKS: HashMap<u32, VnNetwork> =
    HashMap::with_max_entries(VN_NETWORKS_MAX, BPF_F_NO_PREALLOC);

#[map(name = "VN_CONFIG")]
static CONFIG: Array<VnConfig> = Array::with_max_entries(1, 0);

#[map(name = "VN_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VN_COUNTERS, 0);

/// `PACKET_HOST` from linux/if_packet.h.
const PACKET_HOST: u32 = 0;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Offsets in an Ethernet + ARP (IPv4 over Ethernet) frame.
const ARP_OP: usize = ETH_HLEN + 6;
const ARP_SHA: usize = ETH_HLEN + 8;
const ARP_SPA: usize = ETH_HLEN + 14;
const ARP_TPA: usize = ETH_HLEN + 24;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
const TUNNEL_TTL: u8 = 64;

#[inline(always)]
fn count(c: VnCounter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup; it
        // is valid for the program's run and only this CPU writes it.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn drop_for(c: VnCounter) -> i32 {
    count(c);
    TC_ACT_SHOT as i32
}

/// The IPv4 source and destination (raw), from packet memory when the
/// header is linear, else through the helper.
#[inline(always)]
fn ipv4_addrs(ctx: &TcContext) -> Option<(u32, u32)> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + IP_DADDR + 4 <= end {
        // SAFETY: checked against data_end just above; unaligned reads.
        return Some(unsafe {
            (
                core::ptr::read_unaligned((data + IP_SADDR) as *const u32),
                core::ptr::read_unaligned((data + IP_DADDR) as *const u32),
            )
        });
    }
    Some((ctx.load(IP_SADDR).ok()?, ctx.load(IP_DADDR).ok()?))
}

/// Hands the frame to the namespace behind host veth `ifindex` (its peer's
/// ingress). The frame's type was classified against the interface it came
/// in on; the peer does not classify again, so it is marked for this host.
#[inline(always)]
fn deliver(ctx: &TcContext, ifindex: u32) -> i32 {
    if ctx.skb.change_type(PACKET_HOST).is_err() {
        return drop_for(VnCounter::DropError);
    }
    // SAFETY: a helper taking an ifindex and flags.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

/// Egress of a network with the flag: the node's stack forwards the packet
/// (it was sent to the gateway's MAC, so it is marked for this host) and
/// masquerades it (docs/vnet.md, "Egress").
#[inline(always)]
fn to_node_stack(ctx: &TcContext) -> i32 {
    if ctx.skb.change_type(PACKET_HOST).is_err() {
        return drop_for(VnCounter::DropError);
    }
    TC_ACT_OK as i32
}

/// TC ingress on the host end of a pod's veth.
#[classifier]
pub fn vnet_from_pod(ctx: TcContext) -> i32 {
    // SAFETY: the skb pointer is the program's own context, valid for the run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(me) = (unsafe { IFACES.get(&ifindex) }).copied() else {
        return drop_for(VnCounter::DropNoIface);
    };
    let Ok((_dst, src)) = eth_macs(&ctx) else {
        return drop_for(VnCounter::DropError);
    };
    if src != me.mac {
        return drop_for(VnCounter::DropSpoofMac);
    }
    let Ok(ty) = ctx.load::<u16>(12) else {
        return drop_for(VnCounter::DropError);
    };
    match u16::from_be(ty) {
        ETH_P_IP => from_pod_ipv4(&ctx, &me),
        ETH_P_ARP => arp_reply(&ctx, &me, ifindex),
        _ => drop_for(VnCounter::DropNotIpv4),
    }
}

#[inline(always)]
fn from_pod_ipv4(ctx: &TcContext, me: &VnIface) -> i32 {
    let Some((saddr, daddr)) = ipv4_addrs(ctx) else {
        return drop_for(VnCounter::DropError);
    };
    if saddr != me.ip {
        return drop_for(VnCounter::DropSpoofIp);
    }
    let key = VnEndpointKey {
        net: me.net,
        ip: daddr,
    };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(&key) }).copied() else {
        // SAFETY: as above.
        let egress =
            unsafe { NETWORKS.get(&me.net) }.is_some_and(|n| n.flags & VN_FLAG_EGRESS != 0);
        if egress {
            return to_node_stack(ctx);
        }
        return drop_for(VnCounter::DropNoEndpoint);
    };
    // The pod may have sent to the gateway's MAC (a route through it):
    // the frame leaves addressed to the endpoint itself.
    if set_macs(ctx, &ep.mac, &me.mac).is_err() {
        return drop_for(VnCounter::DropError);
    }
    if ep.ifindex != 0 {
        count(VnCounter::ForwardLocal);
        return deliver(ctx, ep.ifindex);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return drop_for(VnCounter::DropError);
    };
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut tk: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    tk.tunnel_id = me.net;
    tk.__bindgen_anon_1.remote_ipv4 = ep.node_ip;
    tk.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: the helper reads `size` bytes of `tk`, which lives on the stack
    // for the call.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.as_ptr().cast(),
            &mut tk,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if ret != 0 {
        return drop_for(VnCounter::DropError);
    }
    count(VnCounter::ForwardRemote);
    // SAFETY: a helper taking an ifindex and flags.
    unsafe { bpf_redirect(cfg.vxlan_ifindex, 0) as i32 }
}

/// Answers an ARP request for the gateway or for an endpoint of the same
/// network by turning it into the reply and sending it back.
#[inline(always)]
fn arp_reply(ctx: &TcContext, me: &VnIface, ifindex: u32) -> i32 {
    let (Ok(op), Ok(spa), Ok(tpa)) = (
        ctx.load::<u16>(ARP_OP),
        ctx.load::<u32>(ARP_SPA),
        ctx.load::<u32>(ARP_TPA),
    ) else {
        return drop_for(VnCounter::DropError);
    };
    if spa != me.ip {
        return drop_for(VnCounter::DropSpoofIp);
    }
    if u16::from_be(op) != ARP_REQUEST {
        return drop_for(VnCounter::DropNotIpv4);
    }
    // SAFETY: read-only lookups; the values are copied out at once.
    let net = unsafe { NETWORKS.get(&me.net) }.copied();
    let mac = match net {
        Some(n) if n.gateway == tpa => n.gateway_mac,
        _ => {
            let key = VnEndpointKey {
                net: me.net,
                ip: tpa,
            };
            // SAFETY: as above.
            match unsafe { ENDPOINTS.get(&key) } {
                Some(ep) if tpa != me.ip => ep.mac,
                _ => return drop_for(VnCounter::DropArpMiss),
            }
        }
    };
    // Reply: to the asker from `mac`; sender = (mac, target IP), target =
    // the asker.
    let mut sender = [0u8; 10];
    sender[..6].copy_from_slice(&mac);
    sender[6..].copy_from_slice(&tpa.to_ne_bytes());
    let mut target = [0u8; 10];
    target[..6].copy_from_slice(&me.mac);
    target[6..].copy_from_slice(&spa.to_ne_bytes());
    let ok = set_macs(ctx, &me.mac, &mac).is_ok()
        && ctx.store(ARP_OP, &ARP_REPLY.to_be(), 0).is_ok()
        && ctx.store(ARP_SHA, &sender, 0).is_ok()
        && ctx.store(ARP_SHA + 10, &target, 0).is_ok();
    if !ok {
        return drop_for(VnCounter::DropError);
    }
    count(VnCounter::ArpReplied);
    // SAFETY: a helper taking an ifindex and flags; egress of the same veth
    // reaches the pod.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// TC ingress on the node's collect-metadata VXLAN device.
#[classifier]
pub fn vnet_from_tunnel(ctx: TcContext) -> i32 {
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut tk: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the helper writes at most `size` bytes into `tk`.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.as_ptr().cast(),
            &mut tk,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if ret != 0 {
        return drop_for(VnCounter::DropTunnelSpoof);
    }
    let net = tk.tunnel_id;
    // SAFETY: reading the IPv4 member of the union the helper filled.
    let from_node = unsafe { tk.__bindgen_anon_1.remote_ipv4 };
    let Ok(ty) = ctx.load::<u16>(12) else {
        return drop_for(VnCounter::DropError);
    };
    if u16::from_be(ty) != ETH_P_IP {
        return drop_for(VnCounter::DropNotIpv4);
    }
    let Some((saddr, daddr)) = ipv4_addrs(&ctx) else {
        return drop_for(VnCounter::DropError);
    };
    let src = VnEndpointKey { net, ip: saddr };
    // SAFETY: a read-only lookup.
    match unsafe { ENDPOINTS.get(&src) } {
        Some(ep) if ep.ifindex == 0 && ep.node_ip == from_node => {}
        _ => return drop_for(VnCounter::DropTunnelSpoof),
    }
    let dst = VnEndpointKey { net, ip: daddr };
    // SAFETY: a read-only lookup; the value is copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(&dst) }).copied() else {
        return drop_for(VnCounter::DropNoEndpoint);
    };
    if ep.ifindex == 0 {
        return drop_for(VnCounter::DropNoEndpoint);
    }
    count(VnCounter::FromTunnel);
    deliver(&ctx, ep.ifindex)
}
