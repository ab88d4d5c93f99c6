//! Reading and rewriting Ethernet/IPv4/IPv6/L4 headers. The fast path (an IPv4
//! header without options, the headers in the skb's linear part, pulled in
//! with `bpf_skb_pull_data` when they are not) reads and writes the packet
//! directly, computes the IPv4 checksum itself and keeps only
//! `bpf_l4_csum_replace` (which knows the skb's checksum state). Anything
//! else goes through the skb helpers (`bpf_skb_load_bytes`,
//! `bpf_skb_store_bytes`, `bpf_l3/l4_csum_replace`), which work on
//! non-linear skbs too. IPv6 (no header checksum) reads its headers
//! directly when they are linear and writes addresses after updating the L4
//! checksum with one `bpf_l4_csum_replace` per changed field (a 16-byte
//! address goes in as a checksum difference).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use virtlink_xdp_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// ICMPv6: errors are types 1 (destination unreachable), 2 (packet too
/// big), 3 (time exceeded), 4 (parameter problem).
pub const ICMPV6_ERROR_MAX: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// IPv6 header: source and destination address offsets, L4 after a header
/// without extension headers.
const IP6_SADDR: usize = ETH_HLEN + 8;
const IP6_DADDR: usize = ETH_HLEN + 24;
const L4_V6: usize = ETH_HLEN + 40;

/// `bpf_l4_csum_replace`: the pseudo header is IPv6 (kernel >= 6.16; a
/// CHECKSUM_COMPLETE skb then keeps a correct `csum`). Retried without it
/// on kernels that refuse the flag.
const BPF_F_IPV6: u64 = 1 << 7;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub type Result<T> = core::result::Result<T, i64>;

/// An IPv4 or IPv6 packet's addresses and ports, raw (network byte order;
/// IPv4 addresses in the first word). ICMP echo: requests have the id in
/// `sport`, replies in `dport`.
#[derive(Clone, Copy)]
pub struct Packet {
    pub l4: usize,
    /// The L4 protocol; for IPv6 the first next header (an extension
    /// header's number when there is one: not translated).
    pub proto: u8,
    pub v6: bool,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
}

impl Packet {
    /// Is this a packet the NAT translates (TCP, UDP, ICMP/ICMPv6 echo)?
    #[inline(always)]
    pub fn translatable(&self) -> bool {
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => true,
            IPPROTO_ICMP if !self.v6 => {
                self.icmp_type == ICMP_ECHO_REQUEST || self.icmp_type == ICMP_ECHO_REPLY
            }
            IPPROTO_ICMPV6 if self.v6 => {
                self.icmp_type == ICMPV6_ECHO_REQUEST || self.icmp_type == ICMPV6_ECHO_REPLY
            }
            _ => false,
        }
    }

    /// ICMP or ICMPv6 (of the packet's family).
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        if self.v6 {
            self.proto == IPPROTO_ICMPV6
        } else {
            self.proto == IPPROTO_ICMP
        }
    }

    /// An ICMP(v6) echo request.
    #[inline(always)]
    pub fn is_echo_request(&self) -> bool {
        self.is_icmp()
            && self.icmp_type
                == if self.v6 {
                    ICMPV6_ECHO_REQUEST
                } else {
                    ICMP_ECHO_REQUEST
                }
    }

    /// An ICMP(v6) error that quotes the packet it is about.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        if self.v6 {
            self.proto == IPPROTO_ICMPV6
                && self.icmp_type >= 1
                && self.icmp_type <= ICMPV6_ERROR_MAX
        } else {
            self.proto == IPPROTO_ICMP
                && (self.icmp_type == ICMP_DEST_UNREACH || self.icmp_type == ICMP_TIME_EXCEEDED)
        }
    }
}

/// The packet quoted in an ICMP error (raw addresses and ports; an ICMP
/// echo request has its id in `sport`).
pub struct Quoted {
    /// Offset of the quoted IP header.
    pub ip: usize,
    /// Offset of the quoted L4 header.
    pub l4: usize,
    pub proto: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
}

/// Parses the packet quoted by the ICMP error `p` (TCP, UDP or an echo
/// request, of `p`'s family).
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, p: &Packet) -> Result<Option<Quoted>> {
    if p.v6 {
        return parse_quoted6(ctx, p);
    }
    let ip = p.l4 + 8;
    let vihl: u8 = ctx.load(ip)?;
    if vihl >> 4 != 4 {
        return Ok(None);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    let l4 = ip + ihl;
    let proto: u8 = ctx.load(ip + 9)?;
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (ctx.load::<u16>(l4)?, ctx.load::<u16>(l4 + 2)?),
        IPPROTO_ICMP => {
            let t: u8 = ctx.load(l4)?;
            if t != ICMP_ECHO_REQUEST {
                return Ok(None);
            }
            (ctx.load::<u16>(l4 + 4)?, 0)
        }
        _ => return Ok(None),
    };
    Ok(Some(Quoted {
        ip,
        l4,
        proto,
        saddr: [ctx.load(ip + 12)?, 0, 0, 0],
        daddr: [ctx.load(ip + 16)?, 0, 0, 0],
        sport,
        dport,
    }))
}

/// [`parse_quoted`] for ICMPv6: the quoted IPv6 header (without extension
/// headers) and its TCP, UDP or echo request header.
#[inline(always)]
fn parse_quoted6(ctx: &TcContext, p: &Packet) -> Result<Option<Quoted>> {
    let ip = p.l4 + 8;
    let vtc: u8 = ctx.load(ip)?;
    if vtc >> 4 != 6 {
        return Ok(None);
    }
    let proto: u8 = ctx.load(ip + 6)?;
    let l4 = ip + 40;
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (ctx.load::<u16>(l4)?, ctx.load::<u16>(l4 + 2)?),
        IPPROTO_ICMPV6 => {
            let t: u8 = ctx.load(l4)?;
            if t != ICMPV6_ECHO_REQUEST {
                return Ok(None);
            }
            (ctx.load::<u16>(l4 + 4)?, 0)
        }
        _ => return Ok(None),
    };
    Ok(Some(Quoted {
        ip,
        l4,
        proto,
        saddr: ctx.load(ip + 8)?,
        daddr: ctx.load(ip + 24)?,
        sport,
        dport,
    }))
}

/// The one's complement difference of replacing `old` by `new` (raw
/// words), for `bpf_l4_csum_replace` with size 0 (as `bpf_csum_diff`
/// computes it).
#[inline(always)]
fn csum_diff16(old: &[u32; 4], new: &[u32; 4]) -> u64 {
    let mut s: u64 = 0;
    let mut i = 0;
    while i < 4 {
        s += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s
}

/// Adds the difference `old` -> `new` (16-byte addresses) to the L4
/// checksum at `off`; `pseudo` when the address is part of the pseudo
/// header.
#[inline(always)]
fn l4_csum_diff16(
    ctx: &TcContext,
    off: usize,
    old: &[u32; 4],
    new: &[u32; 4],
    pseudo: bool,
    flags: u64,
) -> Result<()> {
    let diff = csum_diff16(old, new);
    let flags = if pseudo {
        flags | BPF_F_PSEUDO_HDR as u64
    } else {
        flags
    };
    if ctx
        .l4_csum_replace(off, 0, diff, flags | BPF_F_IPV6)
        .is_err()
    {
        ctx.l4_csum_replace(off, 0, diff, flags)?;
    }
    Ok(())
}

/// [`rewrite_icmp_error`] for ICMPv6: its checksum covers the pseudo header
/// (the outer addresses) and the quoted packet.
#[inline(always)]
fn rewrite_icmp6_error(
    ctx: &TcContext,
    p: &Packet,
    q: &Quoted,
    from_guest: bool,
    addr: &[u32; 4],
    port: u16,
) -> Result<()> {
    let icmp_csum = p.l4 + 2;
    let (outer_off, outer_old) = if from_guest {
        (IP6_SADDR, p.saddr)
    } else {
        (IP6_DADDR, p.daddr)
    };
    l4_csum_diff16(ctx, icmp_csum, &outer_old, addr, true, 0)?;
    ctx.store(outer_off, addr, 0)?;
    let (inner_off, inner_old) = if from_guest {
        (q.ip + 24, q.daddr)
    } else {
        (q.ip + 8, q.saddr)
    };
    l4_csum_diff16(ctx, icmp_csum, &inner_old, addr, false, 0)?;
    ctx.store(inner_off, addr, 0)?;
    let (port_off, port_old) = match q.proto {
        IPPROTO_ICMPV6 => (q.l4 + 4, q.sport),
        _ if from_guest => (q.l4 + 2, q.dport),
        _ => (q.l4, q.sport),
    };
    if port_old != port {
        ctx.store(port_off, &port, 0)?;
        ctx.l4_csum_replace(icmp_csum, port_old as u64, port as u64, 2)?;
    }
    Ok(())
}

/// Rewrites an ICMP error about a translated flow: the outer source
/// (`from_guest`) or destination becomes `addr`; in the quoted packet the
/// matching destination (`from_guest`) or source becomes `addr`/`port`. The
/// outer IPv4 checksum, the quoted IPv4 checksum and the ICMP checksum (which
/// covers the quoted bytes) are updated; the quoted L4 checksum is left as is
/// (only its first 8 bytes are quoted; receivers do not check it).
#[inline(always)]
pub fn rewrite_icmp_error(
    ctx: &TcContext,
    p: &Packet,
    q: &Quoted,
    from_guest: bool,
    addr: &[u32; 4],
    port: u16,
) -> Result<()> {
    if p.v6 {
        return rewrite_icmp6_error(ctx, p, q, from_guest, addr, port);
    }
    let addr = addr[0];
    let icmp_csum = p.l4 + 2;
    let (outer_off, outer_old) = if from_guest {
        (IP_SADDR, p.saddr[0])
    } else {
        (IP_DADDR, p.daddr[0])
    };
    ctx.l3_csum_replace(IP_CSUM, outer_old as u64, addr as u64, 4)?;
    ctx.store(outer_off, &addr, 0)?;

    let (inner_off, inner_old) = if from_guest {
        (q.ip + 16, q.daddr[0])
    } else {
        (q.ip + 12, q.saddr[0])
    };
    let old_sum: u16 = ctx.load(q.ip + 10)?;
    ctx.l3_csum_replace(q.ip + 10, inner_old as u64, addr as u64, 4)?;
    let new_sum: u16 = ctx.load(q.ip + 10)?;
    ctx.store(inner_off, &addr, 0)?;
    ctx.l4_csum_replace(icmp_csum, inner_old as u64, addr as u64, 4)?;
    ctx.l4_csum_replace(icmp_csum, old_sum as u64, new_sum as u64, 2)?;

    let (port_off, port_old) = match q.proto {
        IPPROTO_ICMP => (q.l4 + 4, q.sport),
        _ if from_guest => (q.l4 + 2, q.dport),
        _ => (q.l4, q.sport),
    };
    if port_old != port {
        ctx.store(port_off, &port, 0)?;
        ctx.l4_csum_replace(icmp_csum, port_old as u64, port as u64, 2)?;
    }
    Ok(())
}

#[inline(always)]
pub fn ethertype(ctx: &TcContext) -> Result<u16> {
    Ok(u16::from_be(ctx.load::<u16>(12)?))
}

/// The headers the fast path reads: Ethernet, IPv4 without options and the
/// TCP header up to its flags.
const L4_FAST: usize = ETH_HLEN + 20;
const HEADERS_FAST: usize = L4_FAST + 14;

/// Reads a `T` at the address `addr`.
///
/// # Safety
///
/// `addr..addr + size_of::<T>()` must be within the packet's linear data
/// (checked against `data_end` so that the verifier accepts it).
#[inline(always)]
unsafe fn rd<T: Copy>(addr: usize) -> T {
    // SAFETY: in bounds by the caller's contract; no alignment required.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Writes `v` at the address `addr`.
///
/// # Safety
///
/// As for [`rd`].
#[inline(always)]
unsafe fn wr<T: Copy>(addr: usize, v: T) {
    // SAFETY: in bounds by the caller's contract; no alignment required.
    unsafe { core::ptr::write_unaligned(addr as *mut T, v) }
}

/// The linear data `[data, data_end)` when it holds at least `len` bytes.
#[inline(always)]
fn linear(ctx: &TcContext, len: usize) -> Option<(usize, usize)> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len > end {
        None
    } else {
        Some((data, end))
    }
}

/// Makes the first `upto` bytes of headers linear (as many as the packet
/// has); invalidates earlier `data` pointers.
#[inline(always)]
fn pull_headers(ctx: &TcContext, upto: usize) {
    let len = ctx.len() as usize;
    let want = if len < upto { len } else { upto };
    if ctx.data() + want > ctx.data_end() {
        let _ = ctx.pull_data(want as u32);
    }
}

/// The Ethernet source MAC and ethertype (host order).
#[inline(always)]
pub fn eth_src_type(ctx: &TcContext) -> Result<([u8; 6], u16)> {
    if let Some((data, _)) = linear(ctx, ETH_HLEN) {
        // SAFETY: `linear` checked that the Ethernet header is in bounds.
        let (src, ty) = unsafe { (rd::<[u8; 6]>(data + 6), rd::<u16>(data + 12)) };
        return Ok((src, u16::from_be(ty)));
    }
    Ok((ctx.load(6)?, ethertype(ctx)?))
}

/// The destination and source MACs (isolated networks' anti-spoofing).
#[inline(always)]
pub fn eth_macs(ctx: &TcContext) -> Result<([u8; 6], [u8; 6])> {
    if let Some((data, _)) = linear(ctx, ETH_HLEN) {
        // SAFETY: `linear` checked that the Ethernet header is in bounds.
        return Ok(unsafe { (rd::<[u8; 6]>(data), rd::<[u8; 6]>(data + 6)) });
    }
    Ok((ctx.load(0)?, ctx.load(6)?))
}

/// The destination and source MACs, swapped: `[source, destination]`, the
/// addresses of a frame back to the sender.
#[inline(always)]
pub fn eth_macs_back(ctx: &TcContext) -> Result<[u8; 12]> {
    let macs: [u8; 12] = if let Some((data, _)) = linear(ctx, ETH_HLEN) {
        // SAFETY: `linear` checked that the Ethernet header is in bounds.
        unsafe { rd(data) }
    } else {
        ctx.load(0)?
    };
    let mut back = [0u8; 12];
    back[..6].copy_from_slice(&macs[6..]);
    back[6..].copy_from_slice(&macs[..6]);
    Ok(back)
}

/// Sets the Ethernet destination and source MACs (one write).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<()> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    set_l2(ctx, &macs)
}

/// Sets `[destination, source]` MACs (one write).
#[inline(always)]
pub fn set_l2(ctx: &TcContext, macs: &[u8; 12]) -> Result<()> {
    let macs = *macs;
    if let Some((data, _)) = linear(ctx, ETH_HLEN) {
        // SAFETY: `linear` checked that the Ethernet header is in bounds.
        unsafe { wr(data, macs) };
        return Ok(());
    }
    ctx.store(0, &macs, 0)
}

/// Adds `old` -> `new` (raw 32-bit words) to the IPv4 checksum `csum` (raw),
/// as `bpf_l3_csum_replace` does (RFC 1624).
#[inline(always)]
fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    let mut s = (!csum) as u32 + (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Is the frame IPv6 (for [`parse6`])?
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> Result<bool> {
    if let Some((data, _)) = linear(ctx, ETH_HLEN) {
        // SAFETY: `linear` checked that the Ethernet header is in bounds.
        let ty = unsafe { rd::<u16>(data + 12) };
        return Ok(u16::from_be(ty) == ETH_P_IPV6);
    }
    Ok(ethertype(ctx)? == ETH_P_IPV6)
}

/// Parses an IPv6 packet ([`is_ipv6`] said it is one).
#[inline(always)]
pub fn parse6(ctx: &TcContext) -> Result<Option<Packet>> {
    parse_ipv6(ctx)
}

/// Parses an unfragmented IPv4 packet; `None` for anything else (which
/// the programs pass on untouched; IPv6 goes to [`parse6`]).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>> {
    pull_headers(ctx, HEADERS_FAST);
    let Some((data, end)) = linear(ctx, L4_FAST) else {
        return parse_slow(ctx);
    };
    // SAFETY: `linear` checked that Ethernet and a 20-byte IPv4 header are
    // in bounds.
    let (ty, vihl, frag, proto, saddr, daddr) = unsafe {
        (
            rd::<u16>(data + 12),
            rd::<u8>(data + ETH_HLEN),
            rd::<u16>(data + ETH_HLEN + 6),
            rd::<u8>(data + ETH_HLEN + 9),
            rd::<u32>(data + IP_SADDR),
            rd::<u32>(data + IP_DADDR),
        )
    };
    if u16::from_be(ty) != ETH_P_IP {
        return Ok(None);
    }
    if vihl != 0x45 {
        // Not IPv4, or with options.
        return parse_ipv4_slow(ctx);
    }
    // More-fragments flag or a fragment offset: no L4 header to translate.
    if u16::from_be(frag) & 0x3fff != 0 {
        return Ok(None);
    }
    let mut p = Packet {
        l4: L4_FAST,
        proto,
        v6: false,
        saddr: [saddr, 0, 0, 0],
        daddr: [daddr, 0, 0, 0],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    let l4 = data + L4_FAST;
    match proto {
        IPPROTO_TCP => {
            if l4 + 14 > end {
                return parse_ipv4_slow(ctx);
            }
            // SAFETY: checked against `data_end` just above.
            unsafe {
                p.sport = rd(l4);
                p.dport = rd(l4 + 2);
                p.tcp_flags = rd(l4 + 13);
            }
        }
        IPPROTO_UDP => {
            if l4 + 4 > end {
                return parse_ipv4_slow(ctx);
            }
            // SAFETY: checked against `data_end` just above.
            unsafe {
                p.sport = rd(l4);
                p.dport = rd(l4 + 2);
            }
        }
        IPPROTO_ICMP => {
            if l4 + 8 > end {
                return parse_ipv4_slow(ctx);
            }
            // SAFETY: checked against `data_end` just above.
            let (t, id) = unsafe { (rd::<u8>(l4), rd::<u16>(l4 + 4)) };
            p.icmp_type = t;
            if t == ICMP_ECHO_REQUEST {
                p.sport = id;
            } else if t == ICMP_ECHO_REPLY {
                p.dport = id;
            }
        }
        _ => {}
    }
    Ok(Some(p))
}

/// [`parse`] when not even the Ethernet and a minimal IPv4 header are
/// linear.
#[inline(always)]
fn parse_slow(ctx: &TcContext) -> Result<Option<Packet>> {
    match ethertype(ctx)? {
        ETH_P_IP => parse_ipv4_slow(ctx),
        _ => Ok(None),
    }
}

/// An IPv6 packet: the fixed header and, when the next header is TCP, UDP
/// or ICMPv6, its ports (extension headers, fragments among them, are left
/// to the kernel: `proto` is then the extension header's number).
#[inline(always)]
fn parse_ipv6(ctx: &TcContext) -> Result<Option<Packet>> {
    pull_headers(ctx, L4_V6 + 14);
    // After the pull the headers are linear unless the pull failed: such a
    // packet passes to the kernel (the nftables fallback).
    let Some((data, end)) = linear(ctx, L4_V6) else {
        return Ok(None);
    };
    // SAFETY: `linear` checked that Ethernet and the 40-byte IPv6 header are
    // in bounds.
    let (vtc, proto, saddr, daddr) = unsafe {
        (
            rd::<u8>(data + ETH_HLEN),
            rd::<u8>(data + ETH_HLEN + 6),
            rd::<[u32; 4]>(data + IP6_SADDR),
            rd::<[u32; 4]>(data + IP6_DADDR),
        )
    };
    if vtc >> 4 != 6 {
        return Ok(None);
    }
    let mut p = Packet {
        l4: L4_V6,
        proto,
        v6: true,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    let l4 = data + L4_V6;
    match proto {
        IPPROTO_TCP => {
            if l4 + 14 > end {
                return Ok(None);
            }
            // SAFETY: checked against `data_end` just above.
            unsafe {
                p.sport = rd(l4);
                p.dport = rd(l4 + 2);
                p.tcp_flags = rd(l4 + 13);
            }
        }
        IPPROTO_UDP => {
            if l4 + 4 > end {
                return Ok(None);
            }
            // SAFETY: checked against `data_end` just above.
            unsafe {
                p.sport = rd(l4);
                p.dport = rd(l4 + 2);
            }
        }
        IPPROTO_ICMPV6 => {
            if l4 + 8 > end {
                return Ok(None);
            }
            // SAFETY: checked against `data_end` just above.
            let (t, id) = unsafe { (rd::<u8>(l4), rd::<u16>(l4 + 4)) };
            p.icmp_type = t;
            if t == ICMPV6_ECHO_REQUEST {
                p.sport = id;
            } else if t == ICMPV6_ECHO_REPLY {
                p.dport = id;
            }
        }
        _ => {}
    }
    Ok(Some(p))
}

/// The IPv4 part of [`parse_slow`]: IPv4 options, headers not in the
/// linear part.
#[inline(never)]
fn parse_ipv4_slow(ctx: &TcContext) -> Result<Option<Packet>> {
    if ethertype(ctx)? != ETH_P_IP {
        return Ok(None);
    }
    let vihl: u8 = ctx.load(ETH_HLEN)?;
    if vihl >> 4 != 4 {
        return Ok(None);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    // More-fragments flag or a fragment offset: no L4 header to translate.
    let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?);
    if frag & 0x3fff != 0 {
        return Ok(None);
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9)?;
    let saddr: u32 = ctx.load(IP_SADDR)?;
    let daddr: u32 = ctx.load(IP_DADDR)?;
    let l4 = ETH_HLEN + ihl;
    let mut p = Packet {
        l4,
        proto,
        v6: false,
        saddr: [saddr, 0, 0, 0],
        daddr: [daddr, 0, 0, 0],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    match proto {
        IPPROTO_TCP => {
            p.sport = ctx.load(l4)?;
            p.dport = ctx.load(l4 + 2)?;
            p.tcp_flags = ctx.load(l4 + 13)?;
        }
        IPPROTO_UDP => {
            p.sport = ctx.load(l4)?;
            p.dport = ctx.load(l4 + 2)?;
        }
        IPPROTO_ICMP => {
            p.icmp_type = ctx.load(l4)?;
            let id: u16 = ctx.load(l4 + 4)?;
            if p.icmp_type == ICMP_ECHO_REQUEST {
                p.sport = id;
            } else if p.icmp_type == ICMP_ECHO_REPLY {
                p.dport = id;
            }
        }
        _ => {}
    }
    Ok(Some(p))
}

/// Rewrites the source (`src`) or destination address and port (ICMP echo:
/// the id) to `addr`/`port` (raw), updating the IP (v4) and L4 checksums.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Packet, src: bool, addr: &[u32; 4], port: u16) -> Result<()> {
    if p.v6 {
        return rewrite6(ctx, p, src, addr, port);
    }
    let addr = addr[0];
    let (csum_off, l4_flags) = match p.proto {
        IPPROTO_TCP => (p.l4 + 16, 0u64),
        IPPROTO_UDP => (p.l4 + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => (p.l4 + 2, 0u64),
    };
    let old_ip = if src { p.saddr[0] } else { p.daddr[0] };
    let old_port = match p.proto {
        IPPROTO_ICMP => {
            if src {
                p.sport
            } else {
                p.dport
            }
        }
        _ if src => p.sport,
        _ => p.dport,
    };
    let ip_changed = old_ip != addr;
    let port_changed = old_port != port;
    // The L4 checksum through the helper, which knows whether it is a full
    // checksum or (offloaded) the pseudo header's; it invalidates `data`.
    if ip_changed && p.proto != IPPROTO_ICMP {
        // TCP and UDP checksums cover the pseudo header.
        ctx.l4_csum_replace(
            csum_off,
            old_ip as u64,
            addr as u64,
            BPF_F_PSEUDO_HDR as u64 | l4_flags | 4,
        )?;
    }
    if port_changed {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, l4_flags | 2)?;
    }
    if p.l4 == L4_FAST {
        if let Some((data, _)) = linear(ctx, L4_FAST + 8) {
            // SAFETY: `linear` checked that Ethernet, the 20-byte IPv4 header
            // and the first 8 bytes of the L4 header are in bounds; all
            // offsets below are within them.
            unsafe {
                if ip_changed {
                    let sum = csum_replace4(rd(data + IP_CSUM), old_ip, addr);
                    wr(data + IP_CSUM, sum);
                    if src {
                        wr(data + IP_SADDR, addr);
                    } else {
                        wr(data + IP_DADDR, addr);
                    }
                }
                if port_changed {
                    let l4 = data + L4_FAST;
                    match p.proto {
                        IPPROTO_ICMP => wr(l4 + 4, port),
                        _ if src => wr(l4, port),
                        _ => wr(l4 + 2, port),
                    }
                }
            }
            return Ok(());
        }
    }
    let ip_off = if src { IP_SADDR } else { IP_DADDR };
    if ip_changed {
        ctx.l3_csum_replace(IP_CSUM, old_ip as u64, addr as u64, 4)?;
        ctx.store(ip_off, &addr, 0)?;
    }
    if port_changed {
        let port_off = match p.proto {
            IPPROTO_ICMP => p.l4 + 4,
            _ if src => p.l4,
            _ => p.l4 + 2,
        };
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}

/// [`rewrite`] for IPv6: no header checksum; the L4 checksum (TCP, UDP,
/// ICMPv6 all cover the pseudo header) gets the address difference, then
/// the port's.
#[inline(always)]
fn rewrite6(ctx: &TcContext, p: &Packet, src: bool, addr: &[u32; 4], port: u16) -> Result<()> {
    let (csum_off, l4_flags) = match p.proto {
        IPPROTO_TCP => (p.l4 + 16, 0u64),
        IPPROTO_UDP => (p.l4 + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => (p.l4 + 2, 0u64),
    };
    let old_ip = if src { p.saddr } else { p.daddr };
    // ICMPv6 echo: requests carry the id in `sport`, replies in `dport`.
    let old_port = if src { p.sport } else { p.dport };
    let ip_changed = old_ip != *addr;
    let port_changed = old_port != port;
    if ip_changed {
        l4_csum_diff16(ctx, csum_off, &old_ip, addr, true, l4_flags)?;
    }
    if port_changed {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, l4_flags | 2)?;
    }
    let port_off = match p.proto {
        IPPROTO_ICMPV6 => p.l4 + 4,
        _ if src => p.l4,
        _ => p.l4 + 2,
    };
    if p.l4 == L4_V6 {
        if let Some((data, _)) = linear(ctx, L4_V6 + 8) {
            // SAFETY: `linear` checked that Ethernet, the IPv6 header and
            // the first 8 bytes of the L4 header are in bounds; the offsets
            // below are within them.
            unsafe {
                if ip_changed {
                    wr(data + if src { IP6_SADDR } else { IP6_DADDR }, *addr);
                }
                if port_changed {
                    match p.proto {
                        IPPROTO_ICMPV6 => wr(data + L4_V6 + 4, port),
                        _ if src => wr(data + L4_V6, port),
                        _ => wr(data + L4_V6 + 2, port),
                    }
                }
            }
            return Ok(());
        }
    }
    if ip_changed {
        ctx.store(if src { IP6_SADDR } else { IP6_DADDR }, addr, 0)?;
    }
    if port_changed {
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}
