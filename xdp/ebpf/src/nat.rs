//! Masquerade NAT for the VM's masquerade binding (IPv4 TCP, UDP, ICMP echo).
//!
//! - `guest_ingress` (TC ingress on the guest's tap): anti-spoofing; the
//!   guest's connections get the pod IP and a port from the NAT range and are
//!   redirected to the pod interface's egress (`bpf_redirect_neigh`).
//! - `pod_ingress` (TC ingress on the pod interface): replies are translated
//!   back and redirected to the tap; new connections to forwarded ports are
//!   translated to the guest.
//! - `pod_egress` (TC egress on the pod interface, Istio mode): the guest's
//!   connections are source-translated after the pod's stack routed them.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use virtlink_xdp_common::{
    Counter, CtEntry, FlowKey, L2Entry, NatConfig, PortKey, CONNTRACK_MAX, COUNTERS, DIR_IN,
    DIR_OUT, FLAG_ANTI_SPOOF, FLAG_FORWARD_ALL, FLAG_GUEST_PEER, FLAG_ISTIO, FLAG_POD_PEER,
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PORTS_MAX, PORT_DENY, PORT_FORWARD, TCP_CLOSED,
    TCP_CLOSING, TCP_ESTABLISHED, TCP_SYN,
};

use crate::packet::{
    self, parse_ipv4, parse_quoted, rewrite, rewrite_icmp_error, Ipv4Packet, Result, ETH_HLEN,
    ETH_P_ARP, ICMP_ECHO_REQUEST, TCP_ACK, TCP_FIN, TCP_RST,
};

#[map(name = "VL_CONFIG")]
static CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

#[map(name = "VL_CT")]
static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(CONNTRACK_MAX, 0);

#[map(name = "VL_PORTS")]
static PORTS: HashMap<PortKey, u8> = HashMap::with_max_entries(PORTS_MAX, 0);

#[map(name = "VL_L2")]
static L2: LruHashMap<u32, L2Entry> = LruHashMap::with_max_entries(4096, 0);

#[map(name = "VL_COUNTERS")]
static COUNTER_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// How long a closed connection's NAT port rests before a new SYN takes it
/// (two ticks of the TCP timestamp clock).
const REUSE_AFTER_NS: u64 = 2_000_000;

/// Attempts at a free NAT port before the connection is dropped.
const PORT_TRIES: u32 = 16;

#[inline(always)]
fn count(c: Counter, n: u64) {
    if let Some(v) = COUNTER_MAP.get_ptr_mut(c as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup; it
        // is valid for the program's run and only this CPU writes it.
        unsafe { *v += n };
    }
}

#[inline(always)]
fn pass() -> i32 {
    count(Counter::Passed, 1);
    TC_ACT_OK as i32
}

#[inline(always)]
fn config() -> Option<&'static NatConfig> {
    CONFIG.get(0)
}

fn timeout_ns(cfg: &NatConfig, proto: u8, state: u8) -> u64 {
    let s = match proto {
        IPPROTO_TCP => match state {
            TCP_ESTABLISHED => cfg.timeout_tcp_established,
            TCP_CLOSING | TCP_CLOSED => cfg.timeout_tcp_closing,
            _ => cfg.timeout_tcp_syn,
        },
        IPPROTO_UDP => cfg.timeout_udp,
        _ => cfg.timeout_icmp,
    };
    s as u64 * 1_000_000_000
}

#[inline(always)]
fn expired(cfg: &NatConfig, proto: u8, e: &CtEntry, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) > timeout_ns(cfg, proto, e.state)
}

/// The TCP state after a packet with `flags`.
#[inline(always)]
fn tcp_next(state: u8, flags: u8) -> u8 {
    if flags & TCP_RST != 0 || (state == TCP_CLOSED && flags & packet::TCP_SYN == 0) {
        TCP_CLOSED
    } else if flags & TCP_FIN != 0 {
        TCP_CLOSING
    } else if flags & packet::TCP_SYN != 0 && flags & TCP_ACK == 0 {
        TCP_SYN
    } else if state == TCP_SYN && flags & TCP_ACK != 0 {
        TCP_ESTABLISHED
    } else {
        state
    }
}

#[inline(always)]
fn key_of(p: &Ipv4Packet) -> FlowKey {
    FlowKey {
        src_ip: [p.saddr, 0, 0, 0],
        dst_ip: [p.daddr, 0, 0, 0],
        src_port: p.sport,
        dst_port: p.dport,
        proto: p.proto,
        family: 4,
        _pad: [0; 2],
    }
}

/// Looks up a live entry for `key`, refreshing it; `None` when there is none
/// or it expired.
#[inline(always)]
fn lookup(cfg: &NatConfig, key: &FlowKey, p: &Ipv4Packet, now: u64) -> Option<(u32, u16)> {
    let e = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup in a preallocated
    // hash map and is valid for this run; a concurrent update of the same
    // entry can at worst mix two timestamps, which only affects expiry.
    let e = unsafe { &mut *e };
    if expired(cfg, p.proto, e, now) {
        count(Counter::CtExpired, 1);
        return None;
    }
    e.last_seen_ns = now;
    if p.proto == IPPROTO_TCP {
        e.state = tcp_next(e.state, p.tcp_flags);
    }
    Some((e.addr[0], e.port))
}

fn initial_state(p: &Ipv4Packet) -> u8 {
    if p.proto == IPPROTO_TCP {
        tcp_next(TCP_SYN, p.tcp_flags)
    } else {
        0
    }
}

/// When the TCP connection whose world-side entry is `world` is over in
/// both directions (a reset, or a FIN each way): the time of its last
/// packet either way.
#[inline(always)]
fn closed_since(world: &CtEntry, guest_side: &FlowKey) -> Option<u64> {
    // SAFETY: a read of an entry from a successful lookup, copied at once.
    let (closed, last) = match unsafe { CONNTRACK.get(guest_side) }.copied() {
        Some(g) => (
            world.state == TCP_CLOSED
                || g.state == TCP_CLOSED
                || (world.state == TCP_CLOSING && g.state == TCP_CLOSING),
            if g.last_seen_ns > world.last_seen_ns {
                g.last_seen_ns
            } else {
                world.last_seen_ns
            },
        ),
        None => (
            world.state == TCP_CLOSED || world.state == TCP_CLOSING,
            world.last_seen_ns,
        ),
    };
    if closed {
        Some(last)
    } else {
        None
    }
}

/// Creates both directions of a new guest connection with a free NAT port
/// from the configured range; returns the (raw) port.
#[inline(always)]
fn allocate(cfg: &NatConfig, key: &FlowKey, p: &Ipv4Packet, now: u64) -> Option<u16> {
    let min = cfg.port_min as u32;
    let span = (cfg.port_max as u32).saturating_sub(min) + 1;
    // SAFETY: a helper without arguments or side effects.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let state = initial_state(p);
    let back = CtEntry {
        addr: key.src_ip,
        port: key.src_port,
        dir: DIR_IN,
        state,
        _pad: 0,
        last_seen_ns: now,
    };
    let syn =
        p.proto == IPPROTO_TCP && p.tcp_flags & packet::TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0;
    // The guest's own port first (as netfilter keeps the source port when
    // it can): the remote then sees one guest connection per tuple, so a
    // new connection from a reused guest port meets the remote's TIME_WAIT
    // with a larger sequence number and is accepted. Then random ports.
    let own = u16::from_be(key.src_port);
    let own_first = own >= cfg.port_min && own <= cfg.port_max;
    for i in 0..PORT_TRIES + 1 {
        let port = if i == 0 {
            if !own_first {
                continue;
            }
            key.src_port
        } else {
            ((min + (start + i) % span) as u16).to_be()
        };
        let reply = key.reply(DIR_OUT, [cfg.pod_ip, 0, 0, 0], port);
        let mut flags = BPF_NOEXIST as u64;
        if let Some(old) = CONNTRACK.get_ptr(&reply) {
            // SAFETY: a pointer from a successful lookup, copied at once.
            let old = unsafe { *old };
            let same_guest_tuple = old.addr == key.src_ip && old.port == key.src_port;
            if !expired(cfg, p.proto, &old, now) && !same_guest_tuple {
                // A connection to the same remote endpoint that is over in
                // both directions gives its port to a new SYN, as the
                // kernel's conntrack reopens TIME_WAIT: without this, short
                // connections to one server would exhaust the range in
                // under a second and stall for the closing timeout. The
                // remote may still hold the old connection in TIME_WAIT; it
                // accepts the new SYN when its TCP timestamp is newer, so
                // the port is only taken once the TCP timestamp clock (1 ms)
                // has ticked since the old connection's last packet.
                let guest_side = reply.reply(DIR_IN, old.addr, old.port);
                let reusable = syn
                    && closed_since(&old, &guest_side)
                        .is_some_and(|last| now.saturating_sub(last) > REUSE_AFTER_NS);
                if !reusable {
                    continue;
                }
                let _ = CONNTRACK.remove(&guest_side);
            }
            flags = BPF_ANY as u64;
        }
        if CONNTRACK.insert(&reply, &back, flags).is_ok() {
            let out = CtEntry {
                addr: [cfg.pod_ip, 0, 0, 0],
                port,
                dir: DIR_OUT,
                state,
                _pad: 0,
                last_seen_ns: now,
            };
            if CONNTRACK.insert(key, &out, BPF_ANY as u64).is_err() {
                let _ = CONNTRACK.remove(&reply);
                return None;
            }
            count(Counter::CtCreated, 2);
            return Some(port);
        }
    }
    None
}

/// Source-translates a guest packet; `Ok(false)` when it must be dropped
/// (no free port).
#[inline(always)]
fn snat(ctx: &TcContext, cfg: &NatConfig, p: &Ipv4Packet) -> Result<bool> {
    let key = key_of(p);
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let port = match lookup(cfg, &key, p, now) {
        Some((_, port)) => port,
        None => match allocate(cfg, &key, p, now) {
            Some(port) => port,
            None => {
                count(Counter::DropNoPort, 1);
                return Ok(false);
            }
        },
    };
    rewrite(ctx, p, true, cfg.pod_ip, port)?;
    count(Counter::OutPackets, 1);
    count(Counter::OutBytes, ctx.len() as u64);
    Ok(true)
}

/// Is this IPv4 destination something the guest talks to locally (the
/// gateway, the pod itself, broadcast, multicast)?
#[inline(always)]
fn local_destination(cfg: &NatConfig, daddr: u32) -> bool {
    let first = u32::from_be(daddr) >> 24;
    daddr == cfg.gateway_ip
        || daddr == cfg.pod_ip
        || daddr == u32::MAX
        || (224..240).contains(&first)
}

/// Translates an ICMP error about a tracked connection (the quoted packet,
/// reversed, is the connection's key on this side); `Ok(false)` when it is
/// about no tracked connection.
#[inline(always)]
fn icmp_error(ctx: &TcContext, p: &Ipv4Packet, from_guest: bool) -> Result<bool> {
    let Some(q) = parse_quoted(ctx, p)? else {
        return Ok(false);
    };
    let key = FlowKey {
        src_ip: [q.daddr, 0, 0, 0],
        dst_ip: [q.saddr, 0, 0, 0],
        src_port: q.dport,
        dst_port: q.sport,
        proto: q.proto,
        family: 4,
        _pad: [0; 2],
    };
    // SAFETY: a read of an entry from a successful lookup, copied at once.
    let Some(e) = (unsafe { CONNTRACK.get(&key) }).copied() else {
        return Ok(false);
    };
    rewrite_icmp_error(ctx, p, &q, from_guest, e.addr[0], e.port)?;
    Ok(true)
}

/// Sends a translated guest packet out of the pod interface. Once a packet
/// from the remote was translated, its MACs are known ([`learn`]): the frame
/// goes straight to the veth peer's ingress (`bpf_redirect_peer`) or out of
/// the interface (`bpf_redirect`). Before that, `bpf_redirect_neigh` resolves
/// the next hop (`bpf_fib_lookup` would too, but it is GPL-only and these
/// programs are not GPL-licensed).
#[inline(always)]
fn to_world(ctx: &TcContext, cfg: &NatConfig, daddr: u32) -> Result<i32> {
    // SAFETY: a read of an entry from a successful lookup, copied at once.
    let Some(l2) = (unsafe { L2.get(&daddr) }).copied() else {
        // SAFETY: a helper taking an ifindex and no parameters (null, 0).
        return Ok(
            unsafe { bpf_redirect_neigh(cfg.pod_ifindex, core::ptr::null_mut(), 0, 0) } as i32,
        );
    };
    packet::set_macs(ctx, &l2.dmac, &l2.smac)?;
    if cfg.flags & FLAG_POD_PEER != 0 {
        // SAFETY: a helper taking an ifindex and flags.
        Ok(unsafe { bpf_redirect_peer(cfg.pod_ifindex, 0) } as i32)
    } else {
        // SAFETY: a helper taking an ifindex and flags (0: egress).
        Ok(unsafe { bpf_redirect(cfg.pod_ifindex, 0) } as i32)
    }
}

/// Remembers the MACs of a unicast frame from `saddr` that arrived on the
/// pod interface: the way back to that remote (routing is symmetric on a
/// pod's interface: the last hop is the next hop).
#[inline(always)]
fn learn(ctx: &TcContext, saddr: u32) -> Result<()> {
    let (dst, src) = packet::eth_macs(ctx)?;
    if dst[0] & 1 != 0 {
        return Ok(());
    }
    let entry = L2Entry {
        dmac: src,
        smac: dst,
    };
    // SAFETY: a read of an entry from a successful lookup, copied at once.
    if (unsafe { L2.get(&saddr) }).copied() != Some(entry) {
        let _ = L2.insert(&saddr, &entry, BPF_ANY as u64);
    }
    Ok(())
}

/// Sends a translated packet to the guest: the guest's and the tap's MACs
/// are known, so no neighbour lookup; `bpf_redirect_peer` when the guest's
/// interface is a veth, the tap's egress otherwise.
#[inline(always)]
fn to_guest(ctx: &TcContext, cfg: &NatConfig) -> Result<i32> {
    if cfg.guest_mac == [0; 6] || cfg.tap_mac == [0; 6] {
        // SAFETY: a helper taking an ifindex and no parameters (null, 0).
        return Ok(
            unsafe { bpf_redirect_neigh(cfg.guest_ifindex, core::ptr::null_mut(), 0, 0) } as i32,
        );
    }
    packet::set_macs(ctx, &cfg.guest_mac, &cfg.tap_mac)?;
    if cfg.flags & FLAG_GUEST_PEER != 0 {
        // SAFETY: a helper taking an ifindex and flags.
        Ok(unsafe { bpf_redirect_peer(cfg.guest_ifindex, 0) } as i32)
    } else {
        // SAFETY: a helper taking an ifindex and flags (0: egress).
        Ok(unsafe { bpf_redirect(cfg.guest_ifindex, 0) } as i32)
    }
}

#[classifier]
pub fn guest_ingress(ctx: TcContext) -> i32 {
    match try_guest_ingress(&ctx) {
        Ok(action) => action,
        Err(_) => {
            count(Counter::DropError, 1);
            TC_ACT_SHOT as i32
        }
    }
}

fn try_guest_ingress(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    let anti_spoof = cfg.flags & FLAG_ANTI_SPOOF != 0;
    if anti_spoof {
        let (src, ty) = packet::eth_src_type(ctx)?;
        if src != cfg.guest_mac {
            count(Counter::DropSpoofMac, 1);
            return Ok(TC_ACT_SHOT as i32);
        }
        if ty == ETH_P_ARP {
            // The sender protocol address of an Ethernet/IPv4 ARP packet.
            let spa: u32 = ctx.load(ETH_HLEN + 14)?;
            if spa != cfg.guest_ip && spa != 0 {
                count(Counter::DropSpoofIp, 1);
                return Ok(TC_ACT_SHOT as i32);
            }
            return Ok(pass());
        }
    }
    let Some(p) = parse_ipv4(ctx)? else {
        return Ok(pass());
    };
    if p.saddr != cfg.guest_ip {
        // 0.0.0.0 is a DHCP client without an address yet.
        if anti_spoof && p.saddr != 0 {
            count(Counter::DropSpoofIp, 1);
            return Ok(TC_ACT_SHOT as i32);
        }
        return Ok(pass());
    }
    if cfg.flags & FLAG_ISTIO == 0
        && !local_destination(cfg, p.daddr)
        && p.is_icmp_error()
        && icmp_error(ctx, &p, true)?
    {
        count(Counter::OutPackets, 1);
        count(Counter::OutBytes, ctx.len() as u64);
        return to_world(ctx, cfg, p.daddr);
    }
    if cfg.flags & FLAG_ISTIO != 0
        || local_destination(cfg, p.daddr)
        || !p.translatable()
        || (p.proto == IPPROTO_ICMP && p.icmp_type != ICMP_ECHO_REQUEST)
    {
        return Ok(pass());
    }
    if !snat(ctx, cfg, &p)? {
        return Ok(TC_ACT_SHOT as i32);
    }
    to_world(ctx, cfg, p.daddr)
}

#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    match try_pod_egress(&ctx) {
        Ok(action) => action,
        Err(_) => {
            count(Counter::DropError, 1);
            TC_ACT_SHOT as i32
        }
    }
}

fn try_pod_egress(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    let Some(p) = parse_ipv4(ctx)? else {
        return Ok(TC_ACT_OK as i32);
    };
    if cfg.flags & FLAG_ISTIO == 0
        || p.saddr != cfg.guest_ip
        || !p.translatable()
        || (p.proto == IPPROTO_ICMP && p.icmp_type != ICMP_ECHO_REQUEST)
    {
        return Ok(TC_ACT_OK as i32);
    }
    if !snat(ctx, cfg, &p)? {
        return Ok(TC_ACT_SHOT as i32);
    }
    Ok(TC_ACT_OK as i32)
}

/// Does a new inbound connection to `p.dport` go to the guest?
#[inline(always)]
fn forwarded(cfg: &NatConfig, p: &Ipv4Packet) -> bool {
    let port = u16::from_be(p.dport);
    let key = PortKey {
        port,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: a read-only lookup of a u8 value.
    match unsafe { PORTS.get(&key) } {
        Some(&PORT_FORWARD) => true,
        Some(&PORT_DENY) => false,
        _ => {
            // A TCP SYN opens a new connection on any port; other packets
            // to the NAT range without a conntrack entry are late ones of
            // the guest's expired connections and stay with the pod.
            let new_tcp = p.proto == IPPROTO_TCP
                && p.tcp_flags & packet::TCP_SYN != 0
                && p.tcp_flags & TCP_ACK == 0;
            cfg.flags & FLAG_FORWARD_ALL != 0
                && (new_tcp || !(port >= cfg.port_min && port <= cfg.port_max))
                && !(p.proto == IPPROTO_UDP
                    && port >= cfg.local_port_min
                    && port <= cfg.local_port_max)
        }
    }
}

#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    match try_pod_ingress(&ctx) {
        Ok(action) => action,
        Err(_) => {
            count(Counter::DropError, 1);
            TC_ACT_SHOT as i32
        }
    }
}

fn try_pod_ingress(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    let Some(p) = parse_ipv4(ctx)? else {
        return Ok(pass());
    };
    if p.daddr != cfg.pod_ip {
        return Ok(pass());
    }
    if p.is_icmp_error() {
        if !icmp_error(ctx, &p, false)? {
            return Ok(pass());
        }
        count(Counter::InPackets, 1);
        count(Counter::InBytes, ctx.len() as u64);
        if cfg.flags & FLAG_ISTIO != 0 {
            return Ok(TC_ACT_OK as i32);
        }
        learn(ctx, p.saddr)?;
        return to_guest(ctx, cfg);
    }
    if !p.translatable() {
        return Ok(pass());
    }
    let key = key_of(&p);
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let (addr, port) = match lookup(cfg, &key, &p, now) {
        Some(found) => found,
        None => {
            let new = match p.proto {
                IPPROTO_TCP => p.tcp_flags & packet::TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0,
                IPPROTO_UDP => true,
                _ => false,
            };
            // Istio mode: new inbound connections go to the pod's stack,
            // where the sidecar intercepts them.
            if !new || cfg.flags & FLAG_ISTIO != 0 || !forwarded(cfg, &p) {
                return Ok(pass());
            }
            let state = initial_state(&p);
            let inbound = CtEntry {
                addr: [cfg.guest_ip, 0, 0, 0],
                port: p.dport,
                dir: DIR_IN,
                state,
                _pad: 0,
                last_seen_ns: now,
            };
            let reply = key.reply(DIR_IN, inbound.addr, p.dport);
            let outbound = CtEntry {
                addr: [cfg.pod_ip, 0, 0, 0],
                port: p.dport,
                dir: DIR_OUT,
                state,
                _pad: 0,
                last_seen_ns: now,
            };
            if CONNTRACK.insert(&key, &inbound, BPF_ANY as u64).is_err()
                || CONNTRACK.insert(&reply, &outbound, BPF_ANY as u64).is_err()
            {
                count(Counter::DropError, 1);
                return Ok(TC_ACT_SHOT as i32);
            }
            count(Counter::CtCreated, 2);
            (cfg.guest_ip, p.dport)
        }
    };
    learn(ctx, p.saddr)?;
    rewrite(ctx, &p, false, addr, port)?;
    count(Counter::InPackets, 1);
    count(Counter::InBytes, ctx.len() as u64);
    if cfg.flags & FLAG_ISTIO != 0 {
        // Through the pod's stack (routing, netfilter, the sidecar's rules).
        return Ok(TC_ACT_OK as i32);
    }
    to_guest(ctx, cfg)
}
