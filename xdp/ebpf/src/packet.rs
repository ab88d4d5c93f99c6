//! Reading and rewriting Ethernet/IPv4/L4 headers through the skb helpers
//! (`bpf_skb_load_bytes`, `bpf_skb_store_bytes`, `bpf_l3/l4_csum_replace`),
//! which work on non-linear skbs too.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use virtlink_xdp_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub type Result<T> = core::result::Result<T, i64>;

/// An IPv4 packet's addresses and ports, raw (network byte order). ICMP
/// echo: requests have the id in `sport`, replies in `dport`.
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    pub l4: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
}

impl Ipv4Packet {
    /// Is this a packet the NAT translates (TCP, UDP, ICMP echo)?
    pub fn translatable(&self) -> bool {
        match self.proto {
            IPPROTO_TCP | IPPROTO_UDP => true,
            IPPROTO_ICMP => {
                self.icmp_type == ICMP_ECHO_REQUEST || self.icmp_type == ICMP_ECHO_REPLY
            }
            _ => false,
        }
    }
}

impl Ipv4Packet {
    /// An ICMP error that quotes the packet it is about.
    pub fn is_icmp_error(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && (self.icmp_type == ICMP_DEST_UNREACH || self.icmp_type == ICMP_TIME_EXCEEDED)
    }
}

/// The packet quoted in an ICMP error (raw addresses and ports; an ICMP
/// echo request has its id in `sport`).
pub struct Quoted {
    /// Offset of the quoted IPv4 header.
    pub ip: usize,
    /// Offset of the quoted L4 header.
    pub l4: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

/// Parses the IPv4 packet quoted by the ICMP error `p` (TCP, UDP or an echo
/// request).
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, p: &Ipv4Packet) -> Result<Option<Quoted>> {
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
        saddr: ctx.load(ip + 12)?,
        daddr: ctx.load(ip + 16)?,
        sport,
        dport,
    }))
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
    p: &Ipv4Packet,
    q: &Quoted,
    from_guest: bool,
    addr: u32,
    port: u16,
) -> Result<()> {
    let icmp_csum = p.l4 + 2;
    let (outer_off, outer_old) = if from_guest {
        (IP_SADDR, p.saddr)
    } else {
        (IP_DADDR, p.daddr)
    };
    ctx.l3_csum_replace(IP_CSUM, outer_old as u64, addr as u64, 4)?;
    ctx.store(outer_off, &addr, 0)?;

    let (inner_off, inner_old) = if from_guest {
        (q.ip + 16, q.daddr)
    } else {
        (q.ip + 12, q.saddr)
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

/// Parses an unfragmented IPv4 packet; `None` for anything else (which the
/// programs pass on untouched).
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Result<Option<Ipv4Packet>> {
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
    let mut p = Ipv4Packet {
        l4,
        proto,
        saddr,
        daddr,
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
/// the id) to `addr`/`port` (raw), updating the IPv4 and L4 checksums.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Ipv4Packet, src: bool, addr: u32, port: u16) -> Result<()> {
    let (csum_off, l4_flags) = match p.proto {
        IPPROTO_TCP => (p.l4 + 16, 0u64),
        IPPROTO_UDP => (p.l4 + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => (p.l4 + 2, 0u64),
    };
    let (ip_off, old_ip) = if src {
        (IP_SADDR, p.saddr)
    } else {
        (IP_DADDR, p.daddr)
    };
    if old_ip != addr {
        if p.proto != IPPROTO_ICMP {
            // TCP and UDP checksums cover the pseudo header.
            ctx.l4_csum_replace(
                csum_off,
                old_ip as u64,
                addr as u64,
                BPF_F_PSEUDO_HDR as u64 | l4_flags | 4,
            )?;
        }
        ctx.l3_csum_replace(IP_CSUM, old_ip as u64, addr as u64, 4)?;
        ctx.store(ip_off, &addr, 0)?;
    }
    let (port_off, old_port) = match p.proto {
        IPPROTO_ICMP => (p.l4 + 4, if src { p.sport } else { p.dport }),
        _ if src => (p.l4, p.sport),
        _ => (p.l4 + 2, p.dport),
    };
    if old_port != port {
        ctx.l4_csum_replace(csum_off, old_port as u64, port as u64, l4_flags | 2)?;
        ctx.store(port_off, &port, 0)?;
    }
    Ok(())
}
