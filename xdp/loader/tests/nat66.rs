//! NAT66 in the real kernel: the same topology as nat.rs with IPv6 beside
//! IPv4 (peer fd99::1, pods fd99::5.., guests fd10:0:2::2 behind
//! fd10:0:2::1). The pod does not forward IPv6 either, so only the programs
//! can carry the guest's IPv6 traffic.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use common::{
    accept, connect, exchange, listen, nat_port, sock, talk_and_bulk, udp, udp_ping_pong, Topology,
    GUEST_IP6, PEER_IP, PEER_IP6, PING_WAIT,
};
use virtlink_xdp::common::{Counter, IPPROTO_TCP};
use virtlink_xdp::nat::Forward;

#[test]
fn tcp_udp_icmpv6_are_translated() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    // The pod does not forward IPv6: without the NAT nothing gets through.
    assert!(
        !p.guest.ping(PEER_IP6, 1, PING_WAIT, &["-6"]),
        "pod forwards IPv6 without NAT"
    );
    // IPv4 only: IPv6 still passes untouched (and goes nowhere).
    t.attach(0, t.spec(0, Forward::All))?;
    assert!(
        !p.guest.ping(PEER_IP6, 1, PING_WAIT, &["-6"]),
        "IPv6 translated without ipv6"
    );
    t.attach(0, t.spec6(0, Forward::All))?;

    // TCP both ways, with a bulk transfer (full-segment checksums).
    let l = listen(&t.peer, &sock(PEER_IP6, 7000))?;
    let mut c = connect(&p.guest, &sock(PEER_IP6, 7000), None)?;
    let (mut s, from) = accept(&l)?;
    assert_eq!(from.ip().to_string(), p.pod_ip6, "source is the pod's IPv6");
    assert!(
        nat_port(from.port()),
        "source port {} from the NAT range",
        from.port()
    );
    talk_and_bulk(&mut c, &mut s)?;

    // UDP both ways.
    let from = udp_ping_pong(&t.peer, &p.guest, &sock(PEER_IP6, 7001))?;
    assert_eq!(from.ip().to_string(), p.pod_ip6);
    assert!(nat_port(from.port()));

    // ICMPv6 echo; IPv4 still works beside it.
    assert!(
        p.guest.ping(PEER_IP6, 1, PING_WAIT, &["-6"]),
        "ping6 through the NAT"
    );
    assert!(
        p.guest.ping(PEER_IP, 1, PING_WAIT, &[]),
        "ping (IPv4) through the NAT"
    );
    // The pod's own IPv6 traffic is untouched.
    assert!(p.pod.ping(PEER_IP6, 1, PING_WAIT, &["-6"]));

    let pinned = t.pinned(0)?;
    assert!(pinned.counter(Counter::OutPackets6)? > 10);
    assert!(pinned.counter(Counter::InPackets6)? > 10);
    assert_eq!(pinned.counter(Counter::DropError)?, 0);
    let ct = pinned.conntrack()?;
    let tcp6: Vec<_> = ct
        .iter()
        .filter(|e| e.is_ipv6() && e.key.proto == IPPROTO_TCP)
        .collect();
    assert_eq!(tcp6.len(), 2, "{ct:?}");
    let out = tcp6.iter().find(|e| e.is_outbound()).copied();
    assert_eq!(
        out.map(|e| e.src().0.to_string()).as_deref(),
        Some(GUEST_IP6),
        "{ct:?}"
    );
    assert_eq!(
        out.map(|e| e.translated().0),
        Some(p.pod_ip6.parse::<IpAddr>()?)
    );
    Ok(())
}

#[test]
fn icmpv6_errors_are_translated_both_ways() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    t.attach(0, t.spec6(0, Forward::All))?;
    common::icmp_errors_both_ways(&t, PEER_IP6, &t.pods[0].pod_ip6)?;
    let pinned = t.pinned(0)?;
    assert!(pinned.counter(Counter::InPackets6)? >= 2);
    assert_eq!(pinned.counter(Counter::DropError)?, 0);
    Ok(())
}

#[test]
fn two_guests_same_source_port_v6() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(2)?;
    t.attach(0, t.spec6(0, Forward::All))?;
    t.attach(1, t.spec6(1, Forward::All))?;
    let l = listen(&t.peer, &sock(PEER_IP6, 7100))?;
    let mut a = connect(&t.pods[0].guest, &sock(PEER_IP6, 7100), Some(40000))?;
    let (mut sa, fa) = accept(&l)?;
    let mut b = connect(&t.pods[1].guest, &sock(PEER_IP6, 7100), Some(40000))?;
    let (mut sb, fb) = accept(&l)?;
    assert_eq!(fa.ip().to_string(), t.pods[0].pod_ip6);
    assert_eq!(fb.ip().to_string(), t.pods[1].pod_ip6);
    assert_eq!((fa.port(), fb.port()), (40000, 40000));
    exchange(&mut sa, &mut a, b"to a")?;
    exchange(&mut sb, &mut b, b"to b")?;
    exchange(&mut a, &mut sa, b"from a")?;
    exchange(&mut b, &mut sb, b"from b")?;
    Ok(())
}

#[test]
fn conntrack_v6_entries_expire() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let mut spec = t.spec6(0, Forward::Ports(vec![]));
    spec.timeouts.udp = 1;
    t.attach(0, spec)?;
    common::udp_mapping_expires(&t, &sock(PEER_IP6, 7200))
}

#[test]
fn inbound_v6_forwarded_ports_never_envoy() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    t.attach(
        0,
        t.spec6(
            0,
            Forward::Ports(vec![(IPPROTO_TCP, 8080), (IPPROTO_TCP, 15006)]),
        ),
    )?;
    let pod = &p.pod_ip6;
    let l8080 = listen(&p.guest, &sock(GUEST_IP6, 8080))?;
    let _l15006 = listen(&p.guest, &sock(GUEST_IP6, 15006))?;
    let _l9090 = listen(&p.guest, &sock(GUEST_IP6, 9090))?;
    let mut c = connect(&t.peer, &sock(pod, 8080), None)?;
    let (mut s, from) = accept(&l8080)?;
    assert_eq!(from.ip().to_string(), PEER_IP6, "the guest sees the client");
    exchange(&mut c, &mut s, b"in")?;
    exchange(&mut s, &mut c, b"out")?;
    assert!(
        connect(&t.peer, &sock(pod, 15006), None).is_err(),
        "Envoy's port reached the guest"
    );
    assert!(connect(&t.peer, &sock(pod, 9090), None).is_err());
    let pinned = t.pinned(0)?;
    assert!(pinned.counter(Counter::InPackets6)? >= 2);
    Ok(())
}

#[test]
fn spoofed_ipv6_source_is_dropped_and_counted() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    t.attach(0, t.spec6(0, Forward::All))?;
    // Neighbour discovery (link-local sources) keeps working: the gateway
    // answers, and the NAT carries the guest's own address.
    assert!(
        p.guest.ping("fd10:0:2::1", 1, PING_WAIT, &["-6"]),
        "gateway unreachable"
    );
    assert!(p.guest.ping(PEER_IP6, 1, PING_WAIT, &["-6"]));
    let pinned = t.pinned(0)?;
    assert_eq!(pinned.counter(Counter::DropSpoofIp)?, 0);
    p.guest
        .ip(&["addr", "add", "fd10:0:2::99/120", "dev", "eth0", "nodad"])?;
    assert!(!p
        .guest
        .ping(PEER_IP6, 1, PING_WAIT, &["-6", "-I", "fd10:0:2::99"]));
    let l = listen(&t.peer, &sock(PEER_IP6, 7300))?;
    let forged = p.guest.enter({
        let dst = sock(PEER_IP6, 7300);
        move || -> Result<()> {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            let src: std::net::SocketAddr = "[fd10:0:2::99]:0".parse()?;
            s.bind(&src.into())?;
            let dst: std::net::SocketAddr = dst.parse()?;
            s.connect_timeout(&dst.into(), Duration::from_secs(2))?;
            Ok(())
        }
    })?;
    assert!(forged.is_err(), "a TCP connection from a forged source");
    assert!(accept(&l).is_err());
    assert!(pinned.counter(Counter::DropSpoofIp)? >= 2);
    Ok(())
}

#[test]
fn istio_mode_v6_goes_through_the_pods_stack() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    p.pod.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let mut spec = t.spec6(0, Forward::All);
    spec.istio = true;
    t.attach(0, spec)?;
    p.pod.exec(
        "nft",
        &["add table inet sidecar; \
             add chain inet sidecar outbound { type filter hook forward priority 0; }; \
             add rule inet sidecar outbound ip6 saddr fd10:0:2::2 tcp dport 7401 counter drop"],
    )?;
    let l = listen(&t.peer, &sock(PEER_IP6, 7400))?;
    let mut c = connect(&p.guest, &sock(PEER_IP6, 7400), None)?;
    let (mut s, from) = accept(&l)?;
    assert_eq!(from.ip().to_string(), p.pod_ip6);
    assert!(nat_port(from.port()), "translated after the stack: {from}");
    exchange(&mut c, &mut s, b"via the stack")?;
    exchange(&mut s, &mut c, b"and back")?;
    let _l2 = listen(&t.peer, &sock(PEER_IP6, 7401))?;
    assert!(
        connect(&p.guest, &sock(PEER_IP6, 7401), None).is_err(),
        "the pod's forward rule did not apply"
    );
    let pinned = t.pinned(0)?;
    assert!(pinned.counter(Counter::OutPackets6)? >= 2);
    Ok(())
}

/// The verifier's work per program stays well under its 1M-instruction
/// limit (the IPv6 programs are tail calls so that neither program nears
/// it); prints the counts and the attach time.
#[test]
fn programs_verify_with_headroom() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let start = std::time::Instant::now();
    t.attach(0, t.spec6(0, Forward::All))?;
    eprintln!("attach: {:?}", start.elapsed());
    let names = [
        "guest_ingress",
        "pod_ingress",
        "guest_ingress6",
        "pod_ingress6",
        "pod_egress6",
    ];
    let mut seen = 0;
    for info in aya::programs::loaded_programs().filter_map(|p| p.ok()) {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        let n = info.verified_instruction_count().unwrap_or(0);
        eprintln!("{name}: {n} instructions verified");
        assert!(n < 700_000, "{name}: {n} instructions verified");
        seen += 1;
    }
    assert!(seen >= names.len(), "found {seen} of the programs");
    Ok(())
}

/// An ICMPv6 "packet too big" from the world about the guest's UDP flow
/// (to the pod's address and NAT port, quoting the translated packet)
/// reaches the guest with the quoted packet translated back: the guest's
/// kernel finds its socket by the quoted addresses and ports and records the
/// path MTU. Without the inner translation it would find no socket.
#[test]
fn packet_too_big_reaches_the_guest() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    t.attach(0, t.spec6(0, Forward::All))?;
    let server = udp(&t.peer, &sock(PEER_IP6, 7900))?;
    let client = udp(&p.guest, "[::]:0")?;
    client.connect(sock(PEER_IP6, 7900))?;
    client.send(b"x")?;
    let mut buf = [0u8; 16];
    let (_, from) = server.recv_from(&mut buf)?;
    let (std::net::SocketAddr::V6(from), Ok(peer)) = (from, PEER_IP6.parse::<std::net::Ipv6Addr>())
    else {
        anyhow::bail!("not IPv6: {from}");
    };
    // ICMPv6 type 2, code 0, checksum (the kernel fills it for raw ICMPv6
    // sockets), MTU 1280, then the quoted packet: the IPv6 header and the
    // UDP header of what the peer received.
    let mut msg = vec![2u8, 0, 0, 0];
    msg.extend_from_slice(&1280u32.to_be_bytes());
    msg.extend_from_slice(&[0x60, 0, 0, 0]);
    msg.extend_from_slice(&9u16.to_be_bytes());
    msg.extend_from_slice(&[17, 64]);
    msg.extend_from_slice(&from.ip().octets());
    msg.extend_from_slice(&peer.octets());
    msg.extend_from_slice(&from.port().to_be_bytes());
    msg.extend_from_slice(&7900u16.to_be_bytes());
    msg.extend_from_slice(&9u16.to_be_bytes());
    msg.extend_from_slice(&[0, 0, b'x']);
    let to: std::net::SocketAddr = sock(&p.pod_ip6, 0).parse()?;
    t.peer.enter(move || -> Result<()> {
        let raw = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::from(nix::libc::SOCK_RAW),
            Some(socket2::Protocol::ICMPV6),
        )?;
        raw.send_to(&msg, &to.into())?;
        Ok(())
    })??;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let route = p.guest.ip(&["-6", "route", "get", PEER_IP6])?;
        if route.contains("mtu 1280") {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the guest did not learn the path MTU: {route}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(t.pinned(0)?.counter(Counter::InPackets6)? >= 1);
    Ok(())
}
