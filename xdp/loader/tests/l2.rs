//! The Ethernet side of the NAT in the real kernel: the MACs towards a
//! remote live in the connection's conntrack entries and follow a change of
//! the next hop's MAC; frames to the guest carry the configured gateway MAC.

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{accept, connect, exchange, listen, sock, udp, Netns, Topology, PEER_IP};
use virtlink_xdp::common::IPPROTO_TCP;
use virtlink_xdp::nat::Forward;

fn mac_of(ns: &Netns, dev: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", dev])?)?;
    Ok(v[0]["address"].as_str().context("no address")?.to_string())
}

fn hex(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The learned next-hop MAC of the outbound TCP entry.
fn learned(t: &Topology) -> Result<Option<String>> {
    Ok(t.pinned(0)?
        .conntrack()?
        .iter()
        .find(|c| c.is_outbound() && c.key.proto == IPPROTO_TCP)
        .and_then(|c| c.l2())
        .map(|(d, _)| hex(d)))
}

#[test]
fn next_hop_mac_change_is_picked_up() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    // A MAC of the bridge's own (by default it has its first port's, which
    // stays local to it after a change).
    t.peer
        .ip(&["link", "set", "br0", "address", "02:00:00:00:aa:00"])?;
    t.attach(0, t.spec(0, Forward::All))?;
    let l = listen(&t.peer, &sock(PEER_IP, 7500))?;
    let mut c = connect(&p.guest, &sock(PEER_IP, 7500), None)?;
    let (mut s, _) = accept(&l)?;
    exchange(&mut c, &mut s, b"before")?;
    exchange(&mut s, &mut c, b"answer")?;
    assert_eq!(learned(&t)?, Some(mac_of(&t.peer, "br0")?));

    // The next hop (the peer's bridge) changes its MAC: frames to the old
    // one are no longer the bridge's own and go nowhere. The remote's next
    // packet carries the new MAC; the guest's packets must follow it.
    let new = "02:00:00:00:aa:01";
    t.peer.ip(&["link", "set", "br0", "address", new])?;
    exchange(&mut s, &mut c, b"from the new MAC")?;
    exchange(&mut c, &mut s, b"to the new MAC")?;
    assert_eq!(learned(&t)?.as_deref(), Some(new));
    Ok(())
}

#[test]
fn frames_to_the_guest_carry_the_gateway_mac() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    let server = udp(&t.peer, &sock(PEER_IP, 7600))?;
    let tap_mac = p.pod.enter(|| virtlink_xdp::mac("tap0"))??;
    for (gateway_mac, want) in [
        (
            Some([0x02, 0, 0, 0, 0, 0x42]),
            "02:00:00:00:00:42".to_string(),
        ),
        (None, hex(tap_mac)),
    ] {
        let mut spec = t.spec(0, Forward::All);
        spec.gateway_mac = gateway_mac;
        t.attach(0, spec)?;
        let capture = p
            .guest
            .command("timeout")
            .args(["5", "tcpdump", "-i", "eth0", "-e", "-n", "-c", "1", "-l"])
            .args(["udp", "and", "src", "port", "7600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(1000));
        let client = udp(&p.guest, "0.0.0.0:0")?;
        client.send_to(b"hi", sock(PEER_IP, 7600))?;
        let mut buf = [0u8; 16];
        let (_, from) = server.recv_from(&mut buf)?;
        server.send_to(b"back", from)?;
        let (n, _) = client.recv_from(&mut buf)?;
        assert_eq!(&buf[..n], b"back");
        let out = capture.wait_with_output()?;
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            line.contains(&format!("{want} > ")),
            "frame to the guest not from {want}: {line:?}"
        );
    }
    Ok(())
}
