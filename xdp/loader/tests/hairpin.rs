//! Hairpin in the real kernel: the guest connects to its own pod IP (IPv4
//! and IPv6) on a forwarded port and reaches itself, with TCP and UDP, as
//! a client in the world would. The pod neither forwards nor listens there:
//! without the programs the connection is refused.

mod common;

use anyhow::Result;
use common::{accept, connect, exchange, listen, sock, udp, Topology, GUEST_IP, GUEST_IP6};
use virtlink_xdp::common::{Counter, IPPROTO_TCP, IPPROTO_UDP};
use virtlink_xdp::nat::Forward;

fn hairpin(v6: bool) -> Result<()> {
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    let (guest, pod) = if v6 {
        (GUEST_IP6, p.pod_ip6.as_str())
    } else {
        (GUEST_IP, p.pod_ip.as_str())
    };
    let l = listen(&p.guest, &sock(guest, 8080))?;
    // Before the NAT: the pod has nothing on 8080.
    assert!(connect(&p.guest, &sock(pod, 8080), None).is_err());
    t.attach(
        0,
        t.spec6(
            0,
            Forward::Ports(vec![(IPPROTO_TCP, 8080), (IPPROTO_UDP, 8081)]),
        ),
    )?;

    // TCP: the guest's server sees the connection come from the pod IP and
    // the client's own port; data flows both ways.
    let mut c = connect(&p.guest, &sock(pod, 8080), None)?;
    let (mut s, from) = accept(&l)?;
    assert_eq!(from.ip().to_string(), pod, "source of a hairpin connection");
    assert_eq!(from.port(), c.local_addr()?.port(), "client port kept");
    assert_eq!(c.peer_addr()?.to_string(), sock(pod, 8080));
    exchange(&mut c, &mut s, b"to myself")?;
    exchange(&mut s, &mut c, b"from myself")?;

    // UDP: a request and its answer.
    let server = udp(&p.guest, &sock(guest, 8081))?;
    let client = udp(&p.guest, &sock(guest, 0))?;
    client.send_to(b"ping", sock(pod, 8081))?;
    let mut buf = [0u8; 16];
    let (n, from) = server.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from.ip().to_string(), pod);
    server.send_to(b"pong", from)?;
    let (n, back) = client.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(back.to_string(), sock(pod, 8081), "answer from the pod IP");

    // A port that is not forwarded stays with the pod (nothing there).
    let _other = listen(&p.guest, &sock(guest, 8082))?;
    assert!(connect(&p.guest, &sock(pod, 8082), None).is_err());

    let pinned = t.pinned(0)?;
    assert!(pinned.counter(Counter::Hairpin)? >= 6);
    assert!(pinned.conntrack()?.iter().any(|c| c.is_hairpin()));
    assert_eq!(pinned.counter(Counter::DropError)?, 0);
    Ok(())
}

#[test]
fn hairpin_v4_tcp_and_udp() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    hairpin(false)
}

#[test]
fn hairpin_v6_tcp_and_udp() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    hairpin(true)
}
