//! A DHCPv4 server for one guest: it answers only on one device in the pod's
//! namespace (the guest's tap, or the in-pod bridge for the bridge binding)
//! and only offers the one address the guest must have.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::mac::Mac;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netattach::netns::Error),
    #[error("{step} for DHCP server on {device}")]
    Socket {
        step: &'static str,
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP server thread for {device} ended before it was ready")]
    NotStarted { device: String },
    #[error("read {path}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Everything a guest is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Answer only this client hardware address (the guest's MAC).
    pub client_mac: Option<Mac>,
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The server identifier (option 54) and the replies' source.
    pub server_id: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub hostname: Option<String>,
    /// Classless static routes (option 121). When present, RFC 3442 clients
    /// ignore the router option, so the default route is included here too.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub lease_time: u32,
}

impl Lease {
    /// The routes a guest needs for `address` and `gateway`, plus `extra`:
    /// a link route to the gateway when it is outside the guest's subnet (a
    /// /32 pod address), then `extra`, then the default route.
    pub fn routes_for(
        address: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        extra: &[(Ipv4Net, Ipv4Addr)],
    ) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let mut routes = Vec::new();
        if let Some(gw) = gateway {
            if !address.contains(&gw) {
                routes.push((Ipv4Net::from(gw), Ipv4Addr::UNSPECIFIED));
            }
        }
        for r in extra {
            if r.0.prefix_len() != 0 && !routes.contains(r) {
                routes.push(*r);
            }
        }
        if let Some(gw) = gateway {
            routes.push((Ipv4Net::default(), gw));
        }
        routes
    }
}

/// DNS settings from a resolv.conf file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolv {
    pub nameservers: Vec<Ipv4Addr>,
    /// IPv6 name servers (for DHCPv6).
    pub nameservers6: Vec<std::net::Ipv6Addr>,
    pub search: Vec<String>,
    pub domain: Option<String>,
}

impl Resolv {
    pub fn parse(text: &str) -> Self {
        let mut r = Resolv::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => match words.next().map(std::net::IpAddr::from_str) {
                    Some(Ok(std::net::IpAddr::V4(ip))) => r.nameservers.push(ip),
                    Some(Ok(std::net::IpAddr::V6(ip))) => r.nameservers6.push(ip),
                    _ => {}
                },
                Some("search") => r.search = words.map(str::to_string).collect(),
                Some("domain") => r.domain = words.next().map(str::to_string),
                _ => {}
            }
        }
        r
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::parse(&text))
    }
}

fn message_type(m: &Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// The answer to a client message, or `None` when it gets none.
pub fn reply(lease: &Lease, request: &Message) -> Option<Message> {
    if request.opcode() != Opcode::BootRequest {
        return None;
    }
    let chaddr = Mac::try_from(request.chaddr().get(..6)?).ok()?;
    if lease.client_mac.is_some_and(|m| m != chaddr) {
        return None;
    }
    let reply_type = match message_type(request)? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            let wanted = match request.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => request.ciaddr(),
            };
            let other_server = matches!(
                request.opts().get(OptionCode::ServerIdentifier),
                Some(DhcpOption::ServerIdentifier(s)) if *s != lease.server_id
            );
            if other_server {
                return None;
            }
            if wanted == lease.address.addr() {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return None,
    };
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_chaddr(request.chaddr())
        .set_giaddr(request.giaddr())
        .set_ciaddr(request.ciaddr())
        .set_siaddr(lease.server_id);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(lease.server_id));
    if reply_type == MessageType::Nak {
        return Some(m);
    }
    let inform = message_type(request) == Some(MessageType::Inform);
    if !inform {
        m.set_yiaddr(lease.address.addr());
    }
    let opts = m.opts_mut();
    if !inform {
        opts.insert(DhcpOption::AddressLeaseTime(lease.lease_time));
        opts.insert(DhcpOption::Renewal(lease.lease_time / 2));
        opts.insert(DhcpOption::Rebinding(lease.lease_time / 8 * 7));
    }
    opts.insert(DhcpOption::SubnetMask(lease.address.netmask()));
    opts.insert(DhcpOption::BroadcastAddr(lease.address.broadcast()));
    if let Some(gw) = lease.gateway {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if let Some(d) = &lease.domain {
        opts.insert(DhcpOption::DomainName(d.clone()));
    }
    let search: Vec<dhcproto::Name> = lease
        .search
        .iter()
        .filter_map(|s| match dhcproto::Name::from_str(s) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(domain = %s, error = %e, "skipping search domain");
                None
            }
        })
        .collect();
    if !search.is_empty() {
        opts.insert(DhcpOption::DomainSearch(search));
    }
    if let Some(mtu) = lease.mtu {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = &lease.hostname {
        opts.insert(DhcpOption::Hostname(h.clone()));
    }
    if !lease.routes.is_empty() {
        opts.insert(DhcpOption::ClasslessStaticRoute(lease.routes.clone()));
    }
    Some(m)
}

pub fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(576);
    m.encode(&mut Encoder::new(&mut buf)).ok()?;
    // Some clients drop BOOTP replies shorter than the BOOTP minimum.
    if buf.len() < 300 {
        buf.resize(300, 0);
    }
    Some(buf)
}

pub fn decode(bytes: &[u8]) -> Option<Message> {
    Message::decode(&mut Decoder::new(bytes)).ok()
}

/// A running DHCP server; stopped (and its thread joined) on [`stop`] or drop.
///
/// [`stop`]: DhcpServer::stop
#[derive(Debug)]
pub struct DhcpServer(ServerThread);

/// A server's thread on one device: told to stop and joined on drop. Shared
/// by the DHCPv4 and the IPv6 servers.
#[derive(Debug)]
pub(crate) struct ServerThread {
    pub(crate) device: String,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket(device: &str) -> std::io::Result<UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(device),
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT)),
    )?;
    let sock = UdpSocket::from(fd);
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(sock)
}

impl DhcpServer {
    /// Starts serving `lease` on `device` inside the namespace at `netns`.
    /// Returns once the socket is bound, or with the reason it could not be.
    pub fn start(netns: &Path, device: &str, lease: Lease) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns = netns.to_path_buf();
        let dev = device.to_string();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{device}"))
            .spawn(move || {
                // The thread stays in the pod's namespace for its whole life.
                let opened = netattach::netns::Guard::enter(&ns)
                    .map_err(Error::from)
                    .and_then(|guard| {
                        open_socket(&dev)
                            .map(|sock| (guard, sock))
                            .map_err(|source| Error::Socket {
                                step: "open socket",
                                device: dev.clone(),
                                source,
                            })
                    });
                let (_guard, sock) = match opened {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&sock, &dev, &lease, &flag);
            })
            .map_err(|source| Error::Socket {
                step: "spawn thread",
                device: device.to_string(),
                source,
            })?;
        let started = ready_rx.recv().unwrap_or(Err(Error::NotStarted {
            device: device.to_string(),
        }));
        let server = Self(ServerThread {
            device: device.to_string(),
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

fn serve(sock: &UdpSocket, device: &str, lease: &Lease, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
    while !stop.load(Ordering::SeqCst) {
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(device, error = %e, "DHCP receive failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(request) = buf.get(..n).and_then(decode) else {
            continue;
        };
        let Some(answer) = reply(lease, &request) else {
            continue;
        };
        let Some(bytes) = encode(&answer) else {
            continue;
        };
        if let Err(e) = sock.send_to(&bytes, dest) {
            tracing::warn!(device, error = %e, "DHCP send failed");
        } else {
            tracing::debug!(device, kind = ?message_type(&answer), "DHCP reply sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        let address: Ipv4Net = "10.0.2.2/24".parse().unwrap();
        let gw: Ipv4Addr = "10.0.2.1".parse().unwrap();
        Lease {
            client_mac: Some("02:00:00:00:00:01".parse().unwrap()),
            address,
            gateway: Some(gw),
            server_id: gw,
            dns: vec!["10.96.0.10".parse().unwrap()],
            search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            domain: None,
            mtu: Some(1450),
            hostname: Some("testvm".into()),
            routes: Lease::routes_for(address, Some(gw), &[]),
            lease_time: 86400,
        }
    }

    fn request(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(0x1234_5678)
            .set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(ip) = requested {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        m
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn offer_carries_everything() {
        let offer = reply(&lease(), &request(MessageType::Discover, MAC, None)).unwrap();
        // Through the wire format and back.
        let offer = decode(&encode(&offer).unwrap()).unwrap();
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234_5678);
        assert_eq!(message_type(&offer), Some(MessageType::Offer));
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
        let o = offer.opts();
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 96, 0, 10
            )]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("testvm".into()))
        );
        assert_eq!(
            o.get(OptionCode::ClasslessStaticRoute),
            Some(&DhcpOption::ClasslessStaticRoute(vec![(
                "0.0.0.0/0".parse().unwrap(),
                Ipv4Addr::new(10, 0, 2, 1)
            )]))
        );
        match o.get(OptionCode::DomainSearch) {
            Some(DhcpOption::DomainSearch(names)) => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                assert_eq!(names.len(), 2);
                assert!(
                    names[0].starts_with("default.svc.cluster.local"),
                    "{names:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_ack_nak_and_ignored() {
        let l = lease();
        let ack = reply(
            &l,
            &request(MessageType::Request, MAC, Some(l.address.addr())),
        )
        .unwrap();
        assert_eq!(message_type(&ack), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), l.address.addr());
        let nak = reply(
            &l,
            &request(MessageType::Request, MAC, Some(Ipv4Addr::new(10, 0, 2, 99))),
        )
        .unwrap();
        assert_eq!(message_type(&nak), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        // Another client's MAC, or a message we don't answer.
        assert!(reply(
            &l,
            &request(MessageType::Discover, [2, 0, 0, 0, 0, 2], None)
        )
        .is_none());
        assert!(reply(&l, &request(MessageType::Release, MAC, None)).is_none());
        // A REQUEST for another server's offer.
        let mut other = request(MessageType::Request, MAC, Some(l.address.addr()));
        other
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(reply(&l, &other).is_none());
    }

    #[test]
    fn routes_for_slash_32_addresses() {
        let addr: Ipv4Net = "10.244.1.5/32".parse().unwrap();
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        let extra = [("10.96.0.0/12".parse().unwrap(), gw)];
        assert_eq!(
            Lease::routes_for(addr, Some(gw), &extra),
            vec![
                ("169.254.1.1/32".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
                ("10.96.0.0/12".parse().unwrap(), gw),
                ("0.0.0.0/0".parse().unwrap(), gw),
            ]
        );
        assert!(Lease::routes_for(addr, None, &[]).is_empty());
    }

    #[test]
    fn resolv_conf() {
        let r = Resolv::parse(
            "# comment\nnameserver 10.96.0.10\nnameserver fd00::10\nsearch a.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
        );
        assert_eq!(r.nameservers, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(r.search, vec!["a.svc.cluster.local", "svc.cluster.local"]);
        assert_eq!(r.domain, None);
    }
}
