//! IPv6 for a masquerade guest: router advertisements and a DHCPv6 server,
//! both answering only on the guest's tap in the pod's namespace.
//!
//! The masquerade binding's IPv6 subnet (`fd10:0:2::/120` by default) is too
//! long for SLAAC, so, as in KubeVirt, the address comes from DHCPv6 (the RA
//! sets the managed flag) and the default route from the RA (its source, the
//! tap's link-local address, is the guest's router). The RA also announces
//! the subnet as on-link and the MTU; DHCPv6 adds the DNS servers and search
//! domains of the pod's resolv.conf.
//!
//! Packets are built and parsed by maintained crates: `dhcproto` (DHCPv6)
//! and `smoltcp`'s wire module (the RA and RS).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsFd;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, Message, MessageType, OptionCode, Status, StatusCode, IANA,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use smoltcp::wire::{
    Icmpv6Packet, Icmpv6Repr, NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr,
    NdiscRouterFlags, RawHardwareAddress,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::dhcp::{Error, ServerThread};
use crate::mac::Mac;

pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;
/// All nodes on the link: where unsolicited RAs go.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All routers on the link: where guests send router solicitations.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// All DHCP relay agents and servers (RFC 8415 section 7.1).
const ALL_DHCP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// ICMPv6 type of a router solicitation (RFC 4861 section 4.1).
const ROUTER_SOLICIT: u8 = 133;
/// How long the guest may use this router as its default (RFC 4861 allows
/// up to 9000 s; the RA is repeated well before).
const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
/// Unsolicited RAs: quickly while the guest boots, then rarely.
const RA_FAST: Duration = Duration::from_secs(3);
const RA_FAST_FOR: Duration = Duration::from_secs(60);
const RA_SLOW: Duration = Duration::from_secs(200);

/// What the guest is told over IPv6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease6 {
    /// The guest's address, with the on-link prefix the RA announces.
    pub address: Ipv6Net,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    pub mtu: Option<u32>,
    /// Valid lifetime of the address, seconds (preferred is the same).
    pub lease_time: u32,
}

/// The server's DUID: DUID-LL (type 3) of the tap's MAC (RFC 8415 11.4).
pub fn server_duid(mac: Mac) -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&mac.octets());
    duid
}

fn status(code: Status, msg: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status: code,
        msg: msg.to_string(),
    })
}

/// The IA_NA answering the client's `iaid` with the guest's address.
fn ia_na(lease: &Lease6, iaid: u32) -> DhcpOption {
    let mut opts = DhcpOptions::new();
    opts.insert(DhcpOption::IAAddr(IAAddr {
        addr: lease.address.addr(),
        preferred_life: lease.lease_time,
        valid_life: lease.lease_time,
        opts: DhcpOptions::new(),
    }));
    DhcpOption::IANA(IANA {
        id: iaid,
        t1: lease.lease_time / 2,
        t2: lease.lease_time / 8 * 7,
        opts,
    })
}

/// The IAIDs of the client's IA_NA options.
fn requested_ias(request: &Message) -> Vec<u32> {
    request
        .opts()
        .get_all(OptionCode::IANA)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ia.id),
            _ => None,
        })
        .collect()
}

/// The answer to a client message (RFC 8415 section 18.3), or `None` when
/// it gets none: not for this server, or not a client message.
pub fn reply(lease: &Lease6, duid: &[u8], request: &Message) -> Option<Message> {
    let client_id = match request.opts().get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(id)) => Some(id.clone()),
        _ => None,
    };
    let server_id = match request.opts().get(OptionCode::ServerId) {
        Some(DhcpOption::ServerId(id)) => Some(id.as_slice()),
        _ => None,
    };
    let for_us = server_id.is_none_or(|id| id == duid);
    let rapid = request.opts().get(OptionCode::RapidCommit).is_some();
    let (kind, with_address) = match request.msg_type() {
        MessageType::Solicit if server_id.is_none() => {
            if rapid {
                (MessageType::Reply, true)
            } else {
                (MessageType::Advertise, true)
            }
        }
        MessageType::Request | MessageType::Renew if server_id == Some(duid) => {
            (MessageType::Reply, true)
        }
        MessageType::Rebind if server_id.is_none() => (MessageType::Reply, true),
        MessageType::Confirm | MessageType::InformationRequest if for_us => {
            (MessageType::Reply, false)
        }
        MessageType::Release | MessageType::Decline if server_id == Some(duid) => {
            (MessageType::Reply, false)
        }
        _ => return None,
    };
    // Every client message but Information-request carries its DUID.
    if client_id.is_none() && request.msg_type() != MessageType::InformationRequest {
        return None;
    }
    let mut m = Message::new_with_id(kind, request.xid());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::ServerId(duid.to_vec()));
    if let Some(id) = client_id {
        opts.insert(DhcpOption::ClientId(id));
    }
    if rapid && request.msg_type() == MessageType::Solicit {
        opts.insert(DhcpOption::RapidCommit);
    }
    match request.msg_type() {
        MessageType::Confirm => {
            let on_link = request
                .opts()
                .get_all(OptionCode::IANA)
                .unwrap_or_default()
                .iter()
                .flat_map(|o| match o {
                    DhcpOption::IANA(ia) => ia.opts.iter().collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .all(|o| match o {
                    DhcpOption::IAAddr(a) => lease.address.contains(&a.addr),
                    _ => true,
                });
            opts.insert(if on_link {
                status(Status::Success, "on link")
            } else {
                status(Status::NotOnLink, "not on this link")
            });
            return Some(m);
        }
        MessageType::Release | MessageType::Decline => {
            opts.insert(status(Status::Success, "done"));
            return Some(m);
        }
        _ => {}
    }
    if with_address {
        let ias = requested_ias(request);
        if ias.is_empty() {
            opts.insert(status(Status::NoAddrsAvail, "ask for an IA_NA"));
        }
        for iaid in ias {
            opts.insert(ia_na(lease, iaid));
        }
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServers(lease.dns.clone()));
    }
    let search: Vec<dhcproto::Name> = lease
        .search
        .iter()
        .filter_map(|s| dhcproto::Name::from_str(s).ok())
        .collect();
    if !search.is_empty() {
        opts.insert(DhcpOption::DomainSearchList(search));
    }
    Some(m)
}

pub fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    m.encode(&mut Encoder::new(&mut buf)).ok()?;
    Some(buf)
}

pub fn decode(bytes: &[u8]) -> Option<Message> {
    Message::decode(&mut Decoder::new(bytes)).ok()
}

/// The router advertisement for the guest: managed and other-config flags,
/// this router as the default, the subnet on-link (not for SLAAC), the
/// tap's MAC and the MTU. `src` is the tap's link-local address (used only
/// for the checksum, which the kernel recomputes on raw ICMPv6 sockets).
pub fn router_advert(lease: &Lease6, mac: Mac, src: Ipv6Addr) -> Vec<u8> {
    let lifetime = smoltcp::time::Duration::from_secs(u64::from(lease.lease_time));
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        hop_limit: 64,
        flags: NdiscRouterFlags::MANAGED | NdiscRouterFlags::OTHER,
        router_lifetime: smoltcp::time::Duration::from_secs(ROUTER_LIFETIME.as_secs()),
        reachable_time: smoltcp::time::Duration::ZERO,
        retrans_time: smoltcp::time::Duration::ZERO,
        lladdr: Some(RawHardwareAddress::from_bytes(&mac.octets())),
        mtu: lease.mtu,
        prefix_info: Some(NdiscPrefixInformation {
            prefix_len: lease.address.prefix_len(),
            flags: NdiscPrefixInfoFlags::ON_LINK,
            valid_lifetime: lifetime,
            preferred_lifetime: lifetime,
            prefix: lease.address.network(),
        }),
    });
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(
        &src,
        &ALL_NODES,
        &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    buf
}

/// Whether an ICMPv6 message (as a raw socket returns it: no IP header) is
/// a router solicitation.
pub fn is_router_solicit(bytes: &[u8]) -> bool {
    bytes.first() == Some(&ROUTER_SOLICIT) && bytes.get(1) == Some(&0)
}

/// The tap the servers answer on, seen from inside the pod's namespace.
#[derive(Debug, Clone)]
pub struct Tap {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// Router advertisements and DHCPv6 for one guest; stopped (and the thread
/// joined) on [`Ipv6Server::stop`] or drop.
#[derive(Debug)]
pub struct Ipv6Server(ServerThread);

fn sock_err<'a>(step: &'static str, device: &'a str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Socket {
        step,
        device: device.to_string(),
        source,
    }
}

fn open_sockets(tap: &Tap) -> Result<(Socket, Socket), Error> {
    let dev = tap.name.as_str();
    // Router solicitations in, advertisements out. The hop limit must be
    // 255: receivers drop NDP messages that crossed a router.
    let icmp = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(sock_err("open ICMPv6 socket", dev))?;
    icmp.bind_device(Some(dev.as_bytes()))
        .map_err(sock_err("bind ICMPv6 socket to device", dev))?;
    icmp.set_multicast_hops_v6(255)
        .map_err(sock_err("set RA hop limit", dev))?;
    icmp.set_unicast_hops_v6(255)
        .map_err(sock_err("set RA hop limit", dev))?;
    icmp.set_multicast_if_v6(tap.index)
        .map_err(sock_err("set RA interface", dev))?;
    icmp.join_multicast_v6(&ALL_ROUTERS, tap.index)
        .map_err(sock_err("join all-routers group", dev))?;
    icmp.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(sock_err("set timeout", dev))?;

    let udp = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
        .map_err(sock_err("open DHCPv6 socket", dev))?;
    udp.set_only_v6(true)
        .map_err(sock_err("set IPV6_V6ONLY", dev))?;
    udp.set_reuse_address(true)
        .map_err(sock_err("set SO_REUSEADDR", dev))?;
    udp.bind_device(Some(dev.as_bytes()))
        .map_err(sock_err("bind DHCPv6 socket to device", dev))?;
    udp.bind(&SockAddr::from(SocketAddrV6::new(
        Ipv6Addr::UNSPECIFIED,
        SERVER_PORT,
        0,
        0,
    )))
    .map_err(sock_err("bind DHCPv6 port 547", dev))?;
    udp.join_multicast_v6(&ALL_DHCP, tap.index)
        .map_err(sock_err("join all-DHCP-servers group", dev))?;
    udp.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(sock_err("set timeout", dev))?;
    Ok((icmp, udp))
}

impl Ipv6Server {
    /// Starts advertising and serving `lease` on `tap` inside the namespace
    /// at `netns`. Returns once the sockets are bound, or with the reason
    /// they could not be.
    pub fn start(netns: &Path, tap: Tap, lease: Lease6) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let ns = netns.to_path_buf();
        let flag = stop.clone();
        let device = tap.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dhcpv6-{device}"))
            .spawn(move || {
                // The thread stays in the pod's namespace for its whole life.
                let opened = netattach::netns::Guard::enter(&ns)
                    .map_err(Error::from)
                    .and_then(|guard| open_sockets(&tap).map(|s| (guard, s)));
                let (_guard, (icmp, udp)) = match opened {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&icmp, &udp, &tap, &lease, &flag);
            })
            .map_err(sock_err("spawn thread", &device))?;
        let started = ready_rx.recv().unwrap_or(Err(Error::NotStarted {
            device: device.clone(),
        }));
        let server = Self(ServerThread {
            device,
            stop,
            thread: Some(thread),
        });
        started.map(|()| server)
    }

    pub fn device(&self) -> &str {
        &self.0.device
    }

    /// Stops the server and waits for its thread.
    pub fn stop(self) {
        drop(self);
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Waits up to 100 ms for either socket to become readable.
fn wait_readable(a: &Socket, b: &Socket) -> (bool, bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [
        PollFd::new(a.as_fd(), PollFlags::POLLIN),
        PollFd::new(b.as_fd(), PollFlags::POLLIN),
    ];
    if poll(&mut fds, PollTimeout::from(100u8)).unwrap_or(0) <= 0 {
        return (false, false);
    }
    let ready = |f: &PollFd| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
    (ready(&fds[0]), ready(&fds[1]))
}

fn recv(sock: &Socket, buf: &mut [u8]) -> std::io::Result<(usize, SockAddr)> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and recv_from only
    // writes initialised bytes into the buffer.
    let uninit = unsafe {
        std::slice::from_raw_parts_mut(
            buf.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
            buf.len(),
        )
    };
    sock.recv_from(uninit)
}

fn serve(icmp: &Socket, udp: &Socket, tap: &Tap, lease: &Lease6, stop: &AtomicBool) {
    let device = tap.name.as_str();
    let duid = server_duid(tap.mac);
    // The checksum source; the kernel fills in the real one.
    let ra = router_advert(lease, tap.mac, Ipv6Addr::UNSPECIFIED);
    let all_nodes = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, tap.index));
    let started = Instant::now();
    let mut next_ra = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_ra {
            // Fails while the tap has no carrier (no guest yet) and so no
            // link-local address: the next round tries again.
            match icmp.send_to(&ra, &all_nodes) {
                Ok(_) => tracing::debug!(device, "router advertisement sent"),
                Err(e) => tracing::trace!(device, error = %e, "router advertisement not sent"),
            }
            let every = if now - started < RA_FAST_FOR {
                RA_FAST
            } else {
                RA_SLOW
            };
            next_ra = now + every;
        }
        let (rs, dhcp) = wait_readable(icmp, udp);
        if rs {
            match recv(icmp, &mut buf) {
                Ok((n, _)) if is_router_solicit(&buf[..n]) => {
                    // Answer now (to all nodes, as RFC 4861 6.2.6 allows).
                    next_ra = Instant::now();
                }
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => tracing::warn!(device, error = %e, "ICMPv6 receive failed"),
            }
        }
        if dhcp {
            let (n, from) = match recv(udp, &mut buf) {
                Ok(v) => v,
                Err(e) if transient(&e) => continue,
                Err(e) => {
                    tracing::warn!(device, error = %e, "DHCPv6 receive failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Some(answer) = decode(&buf[..n])
                .and_then(|request| reply(lease, &duid, &request))
                .and_then(|m| encode(&m).map(|b| (m.msg_type(), b)))
            else {
                continue;
            };
            match udp.send_to(&answer.1, &from) {
                Ok(_) => tracing::debug!(device, kind = ?answer.0, "DHCPv6 reply sent"),
                Err(e) => tracing::warn!(device, error = %e, "DHCPv6 send failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease6 {
        Lease6 {
            address: "fd10:0:2::2/120".parse().unwrap(),
            dns: vec!["fd00::53".parse().unwrap()],
            search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            mtu: Some(1450),
            lease_time: 3600,
        }
    }

    fn duid() -> Vec<u8> {
        server_duid("02:00:00:00:00:aa".parse().unwrap())
    }

    fn client(kind: MessageType, server: Option<Vec<u8>>) -> Message {
        let mut m = Message::new_with_id(kind, [1, 2, 3]);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientId(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1]));
        o.insert(DhcpOption::IANA(IANA {
            id: 7,
            t1: 0,
            t2: 0,
            opts: DhcpOptions::new(),
        }));
        if let Some(s) = server {
            o.insert(DhcpOption::ServerId(s));
        }
        m
    }

    fn address_of(m: &Message) -> Option<(u32, Ipv6Addr, u32)> {
        match m.opts().get(OptionCode::IANA)? {
            DhcpOption::IANA(ia) => match ia.opts.get(OptionCode::IAAddr)? {
                DhcpOption::IAAddr(a) => Some((ia.id, a.addr, a.valid_life)),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn duid_is_link_layer_of_the_mac() {
        assert_eq!(duid(), vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 0xaa]);
    }

    #[test]
    fn solicit_gets_an_advertise_with_the_address_and_dns() {
        let a = reply(&lease(), &duid(), &client(MessageType::Solicit, None)).unwrap();
        assert_eq!(a.msg_type(), MessageType::Advertise);
        assert_eq!(a.xid(), [1, 2, 3]);
        assert_eq!(
            address_of(&a),
            Some((7, "fd10:0:2::2".parse().unwrap(), 3600))
        );
        assert!(matches!(
            a.opts().get(OptionCode::DomainNameServers),
            Some(DhcpOption::DomainNameServers(d)) if d == &vec!["fd00::53".parse::<Ipv6Addr>().unwrap()]
        ));
        assert!(matches!(
            a.opts().get(OptionCode::DomainSearchList),
            Some(DhcpOption::DomainSearchList(d)) if d.len() == 2
        ));
        assert!(matches!(
            a.opts().get(OptionCode::ServerId),
            Some(DhcpOption::ServerId(s)) if s == &duid()
        ));
        // Survives a round trip through the wire format.
        let again = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(address_of(&again), address_of(&a));
    }

    #[test]
    fn rapid_commit_solicit_gets_a_reply() {
        let mut s = client(MessageType::Solicit, None);
        s.opts_mut().insert(DhcpOption::RapidCommit);
        let a = reply(&lease(), &duid(), &s).unwrap();
        assert_eq!(a.msg_type(), MessageType::Reply);
        assert!(a.opts().get(OptionCode::RapidCommit).is_some());
    }

    #[test]
    fn request_for_another_server_is_ignored() {
        let other = vec![0, 3, 0, 1, 9, 9, 9, 9, 9, 9];
        assert!(reply(
            &lease(),
            &duid(),
            &client(MessageType::Request, Some(other))
        )
        .is_none());
        let ours = reply(
            &lease(),
            &duid(),
            &client(MessageType::Request, Some(duid())),
        )
        .unwrap();
        assert_eq!(ours.msg_type(), MessageType::Reply);
        assert!(address_of(&ours).is_some());
        // A Rebind names no server and is answered.
        let rebind = reply(&lease(), &duid(), &client(MessageType::Rebind, None)).unwrap();
        assert!(address_of(&rebind).is_some());
        // Server messages are never answered.
        assert!(reply(&lease(), &duid(), &client(MessageType::Reply, None)).is_none());
    }

    #[test]
    fn confirm_says_whether_the_address_is_on_link() {
        let mut c = Message::new_with_id(MessageType::Confirm, [4, 5, 6]);
        let mut ia = DhcpOptions::new();
        ia.insert(DhcpOption::IAAddr(IAAddr {
            addr: "fd99::2".parse().unwrap(),
            preferred_life: 0,
            valid_life: 0,
            opts: DhcpOptions::new(),
        }));
        c.opts_mut().insert(DhcpOption::ClientId(vec![1, 2]));
        c.opts_mut().insert(DhcpOption::IANA(IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: ia,
        }));
        let a = reply(&lease(), &duid(), &c).unwrap();
        assert!(matches!(
            a.opts().get(OptionCode::StatusCode),
            Some(DhcpOption::StatusCode(s)) if s.status == Status::NotOnLink
        ));
    }

    #[test]
    fn router_advert_parses_back() {
        let mac: Mac = "02:00:00:00:00:aa".parse().unwrap();
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let bytes = router_advert(&lease(), mac, src);
        let packet = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
        let repr = Icmpv6Repr::parse(
            &src,
            &ALL_NODES,
            &packet,
            &smoltcp::phy::ChecksumCapabilities::default(),
        )
        .unwrap();
        let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            flags,
            router_lifetime,
            lladdr,
            mtu,
            prefix_info: Some(p),
            ..
        }) = repr
        else {
            panic!("not a router advertisement: {repr:?}");
        };
        assert!(flags.contains(NdiscRouterFlags::MANAGED | NdiscRouterFlags::OTHER));
        assert_eq!(router_lifetime.secs(), 1800);
        assert_eq!(lladdr.unwrap().as_bytes(), &mac.octets());
        assert_eq!(mtu, Some(1450));
        assert_eq!(p.prefix_len, 120);
        assert_eq!(p.prefix, "fd10:0:2::".parse::<Ipv6Addr>().unwrap());
        assert!(p.flags.contains(NdiscPrefixInfoFlags::ON_LINK));
        assert!(!p.flags.contains(NdiscPrefixInfoFlags::ADDRCONF));
        assert!(!is_router_solicit(&bytes));
        assert!(is_router_solicit(&[133, 0, 0, 0, 0, 0, 0, 0]));
    }
}
