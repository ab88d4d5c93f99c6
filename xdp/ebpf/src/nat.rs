//! Masquerade NAT for the VM's masquerade binding: IPv4 and IPv6 (NAT66),
//! TCP, UDP, ICMP/ICMPv6 echo and the ICMP errors about them.
//!
//! - `guest_ingress` (TC ingress on the guest's tap): anti-spoofing; the
//!   guest's connections get the pod IP and a port from the NAT range and are
//!   redirected to the pod interface's egress; the guest's connections to
//!   its own pod IP on a forwarded port come back to it (hairpin).
//! - `pod_ingress` (TC ingress on the pod interface): replies are translated
//!   back and redirected to the tap; new connections to forwarded ports are
//!   translated to the guest.
//! - `pod_egress` (TC egress on the pod interface, Istio mode): the guest's
//!   connections are source-translated after the pod's stack routed them.
//!
//! Per packet: one config (array) lookup, one conntrack lookup and one
//! per-CPU counters lookup. The MACs towards a remote live in the
//! connection's conntrack entries, refreshed from the remote's packets.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
};
use virtlink_xdp_common::{
    Counter, Counters, CtEntry, FlowKey, NatConfig, PortKey, CONNTRACK_MAX, DIR_HAIRPIN, DIR_IN,
    DIR_OUT, FLAG_ANTI_SPOOF, FLAG_FORWARD_ALL, FLAG_GUEST_PEER, FLAG_ISTIO, FLAG_POD_PEER,
    FLAG_V4, FLAG_V6, IPPROTO_TCP, IPPROTO_UDP, JUMP_EGRESS6, JUMP_GUEST6, JUMP_POD6, NAT_JUMPS,
    PORTS_MAX, PORT_DENY, PORT_FORWARD, TCP_CLOSED, TCP_CLOSING, TCP_ESTABLISHED, TCP_SYN,
};

use crate::packet::{
    self, parse, parse_quoted, rewrite, rewrite_icmp_error, Packet, Result, ETH_HLEN, ETH_P_ARP,
    TCP_ACK, TCP_FIN, TCP_RST,
};

#[map(name = "VL_CONFIG")]
static CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// IPv4 and IPv6 connections share the map: `FlowKey` always had 16-byte
/// addresses and a family, so the IPv4 key (and its hashing) is unchanged.
#[map(name = "VL_CT")]
static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::with_max_entries(CONNTRACK_MAX, 0);

#[map(name = "VL_PORTS")]
static PORTS: HashMap<PortKey, u8> = HashMap::with_max_entries(PORTS_MAX, 0);

#[map(name = "VL_COUNTERS")]
static COUNTER_MAP: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// The IPv6 programs (`JUMP_*`): each classifier tail-calls its IPv6 twin,
/// so IPv6 gets a stack frame and a verifier budget of its own and the IPv4
/// path stays as it was.
#[map(name = "VL_JUMP")]
static JUMP: ProgramArray = ProgramArray::with_max_entries(NAT_JUMPS, 0);

/// How long a closed connection's NAT port rests before a new SYN takes it
/// (two ticks of the TCP timestamp clock).
const REUSE_AFTER_NS: u64 = 2_000_000;

/// Attempts at a free NAT port before the connection is dropped.
const PORT_TRIES: u32 = 16;

/// This CPU's counters (one lookup).
#[inline(always)]
fn counters() -> Option<&'static mut Counters> {
    let c = COUNTER_MAP.get_ptr_mut(0)?;
    // SAFETY: the pointer comes from a successful per-CPU array lookup; it
    // is valid for the program's run and only this CPU writes it.
    Some(unsafe { &mut *c })
}

#[inline(always)]
fn count(c: Counter, n: u64) {
    if let Some(cs) = counters() {
        cs.values[c as usize] += n;
    }
}

/// Counts a translated packet (packets, bytes, IPv6 packets) with one
/// counters lookup.
#[inline(always)]
fn count_packet(out: bool, v6: bool, len: u64) {
    let Some(cs) = counters() else {
        return;
    };
    if out {
        cs.values[Counter::OutPackets as usize] += 1;
        cs.values[Counter::OutBytes as usize] += len;
        if v6 {
            cs.values[Counter::OutPackets6 as usize] += 1;
        }
    } else {
        cs.values[Counter::InPackets as usize] += 1;
        cs.values[Counter::InBytes as usize] += len;
        if v6 {
            cs.values[Counter::InPackets6 as usize] += 1;
        }
    }
}

#[inline(always)]
fn pass() -> i32 {
    count(Counter::Passed, 1);
    TC_ACT_OK as i32
}

#[inline(always)]
fn shot(c: Counter) -> i32 {
    count(c, 1);
    TC_ACT_SHOT as i32
}

#[inline(always)]
fn config() -> Option<&'static NatConfig> {
    CONFIG.get(0)
}

/// Does the NAT translate this family?
#[inline(always)]
fn family_on(cfg: &NatConfig, v6: bool) -> bool {
    cfg.flags & if v6 { FLAG_V6 } else { FLAG_V4 } != 0
}

#[inline(always)]
fn pod_addr(cfg: &NatConfig, v6: bool) -> [u32; 4] {
    if v6 {
        cfg.pod_ip6
    } else {
        [cfg.pod_ip, 0, 0, 0]
    }
}

#[inline(always)]
fn guest_addr(cfg: &NatConfig, v6: bool) -> [u32; 4] {
    if v6 {
        cfg.guest_ip6
    } else {
        [cfg.guest_ip, 0, 0, 0]
    }
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
fn key_of(p: &Packet) -> FlowKey {
    FlowKey {
        src_ip: p.saddr,
        dst_ip: p.daddr,
        src_port: p.sport,
        dst_port: p.dport,
        proto: p.proto,
        family: if p.v6 { 6 } else { 4 },
        _pad: [0; 2],
    }
}

/// A TCP SYN without ACK (a new connection) or any UDP packet.
#[inline(always)]
fn opens(p: &Packet) -> bool {
    match p.proto {
        IPPROTO_TCP => p.tcp_flags & packet::TCP_SYN != 0 && p.tcp_flags & TCP_ACK == 0,
        IPPROTO_UDP => true,
        _ => false,
    }
}

/// The live entry for `key`, refreshed (last seen, TCP state); `None` when
/// there is none or it expired.
#[inline(always)]
fn lookup(cfg: &NatConfig, key: &FlowKey, p: &Packet, now: u64) -> Option<&'static mut CtEntry> {
    let e = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup in a preallocated
    // hash map and is valid for this run; a concurrent update of the same
    // entry can at worst mix two timestamps (expiry) or, when the remote's
    // MAC changes, two MACs until its next packet.
    let e = unsafe { &mut *e };
    if expired(cfg, p.proto, e, now) {
        count(Counter::CtExpired, 1);
        return None;
    }
    e.last_seen_ns = now;
    if p.proto == IPPROTO_TCP {
        e.state = tcp_next(e.state, p.tcp_flags);
    }
    Some(e)
}

fn initial_state(p: &Packet) -> u8 {
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
/// from the configured range; returns the (raw) port and the MACs towards
/// the remote when a closed connection to it handed its port over.
#[inline(always)]
fn allocate<const V6: bool>(
    cfg: &NatConfig,
    key: &FlowKey,
    p: &Packet,
    l2_out: &mut [u8; 12],
) -> u32 {
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let min = cfg.port_min as u32;
    let span = (cfg.port_max as u32).saturating_sub(min) + 1;
    // SAFETY: a helper without arguments or side effects.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let state = initial_state(p);
    let pod = pod_addr(cfg, V6);
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
        let reply = key.reply(DIR_OUT, pod, port);
        let mut flags = BPF_NOEXIST as u64;
        let mut l2 = [0u8; 12];
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
            // The same remote endpoint: the same next hop.
            l2 = old.l2;
            flags = BPF_ANY as u64;
        }
        let back = CtEntry {
            addr: key.src_ip,
            port: key.src_port,
            dir: DIR_IN,
            state,
            l2,
            last_seen_ns: now,
        };
        if CONNTRACK.insert(&reply, &back, flags).is_ok() {
            let out = CtEntry {
                addr: pod,
                port,
                dir: DIR_OUT,
                state,
                l2,
                last_seen_ns: now,
            };
            if CONNTRACK.insert(key, &out, BPF_ANY as u64).is_err() {
                let _ = CONNTRACK.remove(&reply);
                return NO_PORT;
            }
            count(Counter::CtCreated, 2);
            *l2_out = l2;
            return port as u32;
        }
    }
    NO_PORT
}

/// [`allocate`] found no port.
const NO_PORT: u32 = u32::MAX;

/// Source-translates a guest packet; returns the MACs towards the remote
/// (zero when not learned yet), `None` when it must be dropped (no free
/// port).
#[inline(always)]
fn snat<const V6: bool>(ctx: &TcContext, cfg: &NatConfig, p: &Packet) -> Result<Option<[u8; 12]>> {
    let key = key_of(p);
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let (port, l2) = match lookup(cfg, &key, p, now) {
        Some(e) => (e.port, e.l2),
        None => {
            let mut l2 = [0u8; 12];
            match allocate::<V6>(cfg, &key, p, &mut l2) {
                NO_PORT => return Ok(None),
                port => (port as u16, l2),
            }
        }
    };
    rewrite(ctx, p, true, &pod_addr(cfg, V6), port)?;
    count_packet(true, V6, ctx.len() as u64);
    Ok(Some(l2))
}

/// Is this destination something the guest talks to locally (the gateway,
/// the pod itself, broadcast, multicast; for IPv6 also link-local and the
/// unspecified address)?
#[inline(always)]
fn local_destination(cfg: &NatConfig, p: &Packet) -> bool {
    let first = u32::from_be(p.daddr[0]);
    if p.v6 {
        p.daddr == cfg.gateway_ip6
            || p.daddr == cfg.pod_ip6
            || first >> 24 == 0xff
            || first >> 22 == 0x3fa
            || p.daddr == [0; 4]
    } else {
        let d = p.daddr[0];
        d == cfg.gateway_ip
            || d == cfg.pod_ip
            || d == u32::MAX
            || (224..240).contains(&(first >> 24))
    }
}

/// An IPv6 source that never leaves the link: link-local (fe80::/10) or
/// unspecified (duplicate address detection).
#[inline(always)]
fn link_scope_source6(saddr: &[u32; 4]) -> bool {
    *saddr == [0; 4] || u32::from_be(saddr[0]) >> 22 == 0x3fa
}

/// Translates an ICMP error about a tracked connection (the quoted packet,
/// reversed, is the connection's key on this side); `Ok(false)` when it is
/// about no tracked connection.
#[inline(always)]
fn icmp_error(ctx: &TcContext, p: &Packet, from_guest: bool) -> i32 {
    match icmp_error_inner(ctx, p, from_guest) {
        Ok(true) => ICMP_TRANSLATED,
        Ok(false) => ICMP_UNTRACKED,
        Err(_) => ICMP_FAILED,
    }
}

/// [`icmp_error`]'s results.
const ICMP_TRANSLATED: i32 = 1;
const ICMP_UNTRACKED: i32 = 0;
const ICMP_FAILED: i32 = -1;

#[inline(always)]
fn icmp_error_inner(ctx: &TcContext, p: &Packet, from_guest: bool) -> Result<bool> {
    let Some(q) = parse_quoted(ctx, p)? else {
        return Ok(false);
    };
    let key = FlowKey {
        src_ip: q.daddr,
        dst_ip: q.saddr,
        src_port: q.dport,
        dst_port: q.sport,
        proto: q.proto,
        family: if p.v6 { 6 } else { 4 },
        _pad: [0; 2],
    };
    // SAFETY: a read of an entry from a successful lookup, copied at once.
    let Some(e) = (unsafe { CONNTRACK.get(&key) }).copied() else {
        return Ok(false);
    };
    if e.dir != if from_guest { DIR_OUT } else { DIR_IN } {
        return Ok(false);
    }
    rewrite_icmp_error(ctx, p, &q, from_guest, &e.addr, e.port)?;
    Ok(true)
}

/// Lets the kernel's FIB and neighbour table find the next hop (the MACs
/// are not known yet). `bpf_fib_lookup` would give them up front, but it is
/// GPL-only and these programs are not GPL-licensed.
#[inline(always)]
fn redirect_neigh(ifindex: u32) -> i32 {
    // SAFETY: a helper taking an ifindex and no parameters (null, 0).
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Sends a translated guest packet out of the pod interface. Once a packet
/// from the remote was translated, the connection's entry holds its MACs
/// (`l2`): the frame goes straight to the veth peer's ingress
/// (`bpf_redirect_peer`) or out of the interface (`bpf_redirect`). Before
/// that, `bpf_redirect_neigh`.
#[inline(always)]
fn to_world(ctx: &TcContext, cfg: &NatConfig, l2: &[u8; 12]) -> Result<i32> {
    if *l2 == [0; 12] {
        return Ok(redirect_neigh(cfg.pod_ifindex));
    }
    packet::set_l2(ctx, l2)?;
    if cfg.flags & FLAG_POD_PEER != 0 {
        // SAFETY: a helper taking an ifindex and flags.
        Ok(unsafe { bpf_redirect_peer(cfg.pod_ifindex, 0) } as i32)
    } else {
        // SAFETY: a helper taking an ifindex and flags (0: egress).
        Ok(unsafe { bpf_redirect(cfg.pod_ifindex, 0) } as i32)
    }
}

/// Sends a translated packet to the guest: the guest's and the gateway's
/// MACs are known, so no neighbour lookup; `bpf_redirect_peer` when the
/// guest's interface is a veth, the tap's egress otherwise.
#[inline(always)]
fn to_guest(ctx: &TcContext, cfg: &NatConfig) -> Result<i32> {
    if cfg.guest_mac == [0; 6] || cfg.gateway_mac == [0; 6] {
        return Ok(redirect_neigh(cfg.guest_ifindex));
    }
    packet::set_macs(ctx, &cfg.guest_mac, &cfg.gateway_mac)?;
    if cfg.flags & FLAG_GUEST_PEER != 0 {
        // SAFETY: a helper taking an ifindex and flags.
        Ok(unsafe { bpf_redirect_peer(cfg.guest_ifindex, 0) } as i32)
    } else {
        // SAFETY: a helper taking an ifindex and flags (0: egress).
        Ok(unsafe { bpf_redirect(cfg.guest_ifindex, 0) } as i32)
    }
}

/// The guest's TCP/UDP to its own pod IP. A forwarded port comes back to
/// the guest as if from the world: source the pod IP, destination the
/// guest, ports kept (so the guest's reply, from the forwarded port to the
/// client's port on the pod IP, is the reverse entry's key). Anything else
/// goes to the pod's stack (the pod's own sockets).
#[inline(always)]
fn hairpin(ctx: &TcContext, cfg: &NatConfig, p: &Packet) -> i32 {
    match hairpin_inner(ctx, cfg, p) {
        Ok(action) => action,
        Err(_) => shot(Counter::DropError),
    }
}

#[inline(always)]
fn hairpin_inner(ctx: &TcContext, cfg: &NatConfig, p: &Packet) -> Result<i32> {
    let key = key_of(p);
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    match lookup(cfg, &key, p, now) {
        Some(e) if e.dir == DIR_HAIRPIN => {}
        Some(_) => return Ok(pass()),
        None => {
            if !opens(p) || !forwarded(cfg, p) {
                return Ok(pass());
            }
            let e = CtEntry {
                addr: [0; 4],
                port: 0,
                dir: DIR_HAIRPIN,
                state: initial_state(p),
                l2: [0; 12],
                last_seen_ns: now,
            };
            // The guest server's replies: from the forwarded port to the
            // client's port on the pod IP.
            let mut back = key;
            back.src_port = p.dport;
            back.dst_port = p.sport;
            if CONNTRACK.insert(&key, &e, BPF_ANY as u64).is_err()
                || CONNTRACK.insert(&back, &e, BPF_ANY as u64).is_err()
            {
                return Ok(shot(Counter::DropError));
            }
            count(Counter::CtCreated, 2);
        }
    }
    rewrite(ctx, p, true, &pod_addr(cfg, p.v6), p.sport)?;
    rewrite(ctx, p, false, &guest_addr(cfg, p.v6), p.dport)?;
    count(Counter::Hairpin, 1);
    to_guest(ctx, cfg)
}

#[classifier]
pub fn guest_ingress(ctx: TcContext) -> i32 {
    match try_guest_ingress(&ctx) {
        Ok(action) => action,
        Err(_) => shot(Counter::DropError),
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
            return Ok(shot(Counter::DropSpoofMac));
        }
        if ty == ETH_P_ARP {
            // The sender protocol address of an Ethernet/IPv4 ARP packet.
            let spa: u32 = ctx.load(ETH_HLEN + 14)?;
            if spa != cfg.guest_ip && spa != 0 {
                return Ok(shot(Counter::DropSpoofIp));
            }
            return Ok(pass());
        }
    }
    if packet::is_ipv6(ctx)? {
        return Ok(jump(ctx, cfg, JUMP_GUEST6, TC_ACT_OK as i32));
    }
    let Some(p) = parse(ctx)? else {
        return Ok(pass());
    };
    guest_family::<false>(ctx, cfg, &p)
}

/// IPv6: tail call to the IPv6 program `index` (when the NAT translates
/// IPv6); without one, `otherwise`.
#[inline(always)]
fn jump(ctx: &TcContext, cfg: &NatConfig, index: u32, otherwise: i32) -> i32 {
    if cfg.flags & FLAG_V6 != 0 {
        // SAFETY: `ctx` is this program's context; the call does not
        // return when the program at `index` exists.
        unsafe { JUMP.tail_call(ctx, index) };
    }
    if otherwise == TC_ACT_OK as i32 {
        count(Counter::Passed, 1);
    }
    otherwise
}

/// `guest_ingress` for IPv6 (tail-called, after the MAC check).
#[classifier]
pub fn guest_ingress6(ctx: TcContext) -> i32 {
    match try_guest_ingress6(&ctx) {
        Ok(action) => action,
        Err(_) => shot(Counter::DropError),
    }
}

fn try_guest_ingress6(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    let Some(p) = packet::parse6(ctx)? else {
        return Ok(pass());
    };
    guest_family::<true>(ctx, cfg, &p)
}

/// `p` with its family fixed at compile time: every `p.v6` branch below
/// folds away, so the verifier walks each family's path once.
#[inline(always)]
fn with_family<const V6: bool>(p: &Packet) -> Packet {
    let mut p = *p;
    p.v6 = V6;
    p
}

/// The guest's packet of one family (after the MAC and ARP checks).
#[inline(always)]
fn guest_family<const V6: bool>(ctx: &TcContext, cfg: &NatConfig, p: &Packet) -> Result<i32> {
    let p = with_family::<V6>(p);
    let anti_spoof = cfg.flags & FLAG_ANTI_SPOOF != 0;
    if !family_on(cfg, V6) {
        return Ok(pass());
    }
    if p.saddr != guest_addr(cfg, V6) {
        // IPv4 0.0.0.0 is a DHCP client without an address yet; IPv6
        // link-local and unspecified sources stay on the link (neighbour
        // discovery, router solicitations, DHCPv6).
        let link_scope = if V6 {
            link_scope_source6(&p.saddr)
        } else {
            p.saddr[0] == 0
        };
        if anti_spoof && !link_scope {
            return Ok(shot(Counter::DropSpoofIp));
        }
        return Ok(pass());
    }
    let istio = cfg.flags & FLAG_ISTIO != 0;
    if !istio && p.daddr == pod_addr(cfg, V6) && (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP)
    {
        return Ok(hairpin(ctx, cfg, &p));
    }
    let local = local_destination(cfg, &p);
    if !istio && !local && p.is_icmp_error() {
        match icmp_error(ctx, &p, true) {
            ICMP_TRANSLATED => {
                count_packet(true, V6, ctx.len() as u64);
                return Ok(redirect_neigh(cfg.pod_ifindex));
            }
            ICMP_FAILED => return Ok(shot(Counter::DropError)),
            _ => {}
        }
    }
    if istio || local || !p.translatable() || (p.is_icmp() && !p.is_echo_request()) {
        return Ok(pass());
    }
    match snat::<V6>(ctx, cfg, &p)? {
        Some(l2) => to_world(ctx, cfg, &l2),
        None => Ok(shot(Counter::DropNoPort)),
    }
}

#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    match try_pod_egress(&ctx) {
        Ok(action) => action,
        Err(_) => shot(Counter::DropError),
    }
}

fn try_pod_egress(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    if cfg.flags & FLAG_ISTIO == 0 {
        return Ok(TC_ACT_OK as i32);
    }
    if packet::is_ipv6(ctx)? {
        return Ok(jump(ctx, cfg, JUMP_EGRESS6, TC_ACT_OK as i32));
    }
    let Some(p) = parse(ctx)? else {
        return Ok(TC_ACT_OK as i32);
    };
    egress_family::<false>(ctx, cfg, &p)
}

/// `pod_egress` for IPv6 (tail-called).
#[classifier]
pub fn pod_egress6(ctx: TcContext) -> i32 {
    match try_pod_egress6(&ctx) {
        Ok(action) => action,
        Err(_) => shot(Counter::DropError),
    }
}

fn try_pod_egress6(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    let Some(p) = packet::parse6(ctx)? else {
        return Ok(TC_ACT_OK as i32);
    };
    egress_family::<true>(ctx, cfg, &p)
}

#[inline(always)]
fn egress_family<const V6: bool>(ctx: &TcContext, cfg: &NatConfig, p: &Packet) -> Result<i32> {
    let p = with_family::<V6>(p);
    if !family_on(cfg, V6)
        || p.saddr != guest_addr(cfg, V6)
        || !p.translatable()
        || (p.is_icmp() && !p.is_echo_request())
    {
        return Ok(TC_ACT_OK as i32);
    }
    if snat::<V6>(ctx, cfg, &p)?.is_none() {
        return Ok(shot(Counter::DropNoPort));
    }
    Ok(TC_ACT_OK as i32)
}

/// Does a new inbound connection to `p.dport` go to the guest?
#[inline(always)]
fn forwarded(cfg: &NatConfig, p: &Packet) -> bool {
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
        Err(_) => shot(Counter::DropError),
    }
}

fn try_pod_ingress(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    if packet::is_ipv6(ctx)? {
        return Ok(jump(ctx, cfg, JUMP_POD6, TC_ACT_OK as i32));
    }
    let Some(p) = parse(ctx)? else {
        return Ok(pass());
    };
    pod_family::<false>(ctx, cfg, &p)
}

/// `pod_ingress` for IPv6 (tail-called).
#[classifier]
pub fn pod_ingress6(ctx: TcContext) -> i32 {
    match try_pod_ingress6(&ctx) {
        Ok(action) => action,
        Err(_) => shot(Counter::DropError),
    }
}

fn try_pod_ingress6(ctx: &TcContext) -> Result<i32> {
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    let Some(p) = packet::parse6(ctx)? else {
        return Ok(pass());
    };
    pod_family::<true>(ctx, cfg, &p)
}

/// A packet of one family on the pod interface.
#[inline(always)]
fn pod_family<const V6: bool>(ctx: &TcContext, cfg: &NatConfig, p: &Packet) -> Result<i32> {
    let p = with_family::<V6>(p);
    if !family_on(cfg, V6) || p.daddr != pod_addr(cfg, V6) {
        return Ok(pass());
    }
    let istio = cfg.flags & FLAG_ISTIO != 0;
    if p.is_icmp_error() {
        match icmp_error(ctx, &p, false) {
            ICMP_TRANSLATED => {}
            ICMP_FAILED => return Ok(shot(Counter::DropError)),
            _ => return Ok(pass()),
        }
        count_packet(false, V6, ctx.len() as u64);
        if istio {
            return Ok(TC_ACT_OK as i32);
        }
        return to_guest(ctx, cfg);
    }
    if !p.translatable() {
        return Ok(pass());
    }
    let key = key_of(&p);
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // The MACs back to the remote, from this frame (not for multicast
    // frames, which are not the remote's unicast path).
    let back = packet::eth_macs_back(ctx)?;
    let unicast = back[6] & 1 == 0;
    let (addr, port) = match lookup(cfg, &key, &p, now) {
        Some(e) if e.dir == DIR_IN => {
            // The remote's MACs are compared on every packet (12 bytes of
            // the entry already in hand); when the next hop changed (a new
            // MAC, another router), both entries of the connection take it.
            if unicast && e.l2 != back {
                e.l2 = back;
                let guest_side = key.reply(DIR_IN, e.addr, e.port);
                if let Some(g) = CONNTRACK.get_ptr_mut(&guest_side) {
                    // SAFETY: a pointer from a successful lookup, valid for
                    // this run.
                    unsafe { (*g).l2 = back };
                }
            }
            (e.addr, e.port)
        }
        // Hairpin entries belong to the guest's side only.
        Some(_) => return Ok(pass()),
        None => {
            // Istio mode: new inbound connections go to the pod's stack,
            // where the sidecar intercepts them.
            if !opens(&p) || istio || !forwarded(cfg, &p) {
                return Ok(pass());
            }
            let guest = guest_addr(cfg, p.v6);
            let state = initial_state(&p);
            let l2 = if unicast { back } else { [0; 12] };
            let inbound = CtEntry {
                addr: guest,
                port: p.dport,
                dir: DIR_IN,
                state,
                l2,
                last_seen_ns: now,
            };
            let reply = key.reply(DIR_IN, guest, p.dport);
            let outbound = CtEntry {
                addr: pod_addr(cfg, p.v6),
                port: p.dport,
                dir: DIR_OUT,
                state,
                l2,
                last_seen_ns: now,
            };
            if CONNTRACK.insert(&key, &inbound, BPF_ANY as u64).is_err()
                || CONNTRACK.insert(&reply, &outbound, BPF_ANY as u64).is_err()
            {
                return Ok(shot(Counter::DropError));
            }
            count(Counter::CtCreated, 2);
            (guest, p.dport)
        }
    };
    rewrite(ctx, &p, false, &addr, port)?;
    count_packet(false, p.v6, ctx.len() as u64);
    if istio {
        // Through the pod's stack (routing, netfilter, the sidecar's rules).
        return Ok(TC_ACT_OK as i32);
    }
    to_guest(ctx, cfg)
}
