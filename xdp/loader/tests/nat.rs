//! The eBPF masquerade NAT in the real kernel: a peer ("the world"), a pod
//! namespace that does not forward (ip_forward=0, so only the programs can
//! carry the guest's traffic) and a guest namespace behind a veth playing
//! the tap.

mod common;

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{
    accept, connect, exchange, listen, nat_port, talk_and_bulk, udp_ping_pong, Topology, GUEST_IP,
    PEER_IP, PING_WAIT,
};
use virtlink_xdp::common::{Counter, IPPROTO_TCP};
use virtlink_xdp::nat::Forward;

#[test]
fn tcp_udp_icmp_are_translated() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    // Without the NAT the pod does not forward: the guest reaches nothing.
    assert!(
        !p.guest.ping(PEER_IP, 1, PING_WAIT, &[]),
        "pod forwards without NAT"
    );
    t.attach(0, t.spec(0, Forward::All))?;

    // TCP, both ways, with a large transfer (checksums of full segments).
    let l = listen(&t.peer, &format!("{PEER_IP}:7000"))?;
    let mut c = connect(&p.guest, &format!("{PEER_IP}:7000"), None)?;
    let (mut s, from) = accept(&l)?;
    assert_eq!(from.ip().to_string(), p.pod_ip, "source is the pod IP");
    assert!(
        nat_port(from.port()),
        "source port {} from the NAT range",
        from.port()
    );
    talk_and_bulk(&mut c, &mut s)?;

    // UDP both ways.
    let from = udp_ping_pong(&t.peer, &p.guest, &format!("{PEER_IP}:7001"))?;
    assert_eq!(from.ip().to_string(), p.pod_ip);
    assert!(nat_port(from.port()));

    // ICMP echo.
    assert!(
        p.guest.ping(PEER_IP, 1, PING_WAIT, &[]),
        "ping through the NAT"
    );

    // The pod's own traffic is untouched.
    assert!(p.pod.ping(PEER_IP, 1, PING_WAIT, &[]));
    let l2 = listen(&t.peer, &format!("{PEER_IP}:7002"))?;
    let _own = connect(&p.pod, &format!("{PEER_IP}:7002"), None)?;
    let (_s2, own_from) = accept(&l2)?;
    assert!(
        !nat_port(own_from.port()),
        "pod socket got NAT port {own_from}"
    );

    let pinned = t.pinned(0)?;
    assert!(pinned.counter(Counter::OutPackets)? > 10);
    assert!(pinned.counter(Counter::InPackets)? > 10);
    assert_eq!(pinned.counter(Counter::DropError)?, 0);
    let ct = pinned.conntrack()?;
    // TCP, UDP, ICMP: two entries each.
    assert!(ct.len() >= 6, "{ct:?}");
    assert!(ct.iter().any(|e| e.is_outbound()
        && e.key.proto == IPPROTO_TCP
        && e.translated().1 == from_port(&ct)));
    Ok(())
}

/// Any outbound TCP entry's translated port (for a self-consistency check).
fn from_port(ct: &[virtlink_xdp::nat::Conn]) -> u16 {
    ct.iter()
        .find(|e| e.is_outbound() && e.key.proto == IPPROTO_TCP)
        .map(|e| e.translated().1)
        .unwrap_or(0)
}

#[test]
fn two_guests_same_source_port() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(2)?;
    t.attach(0, t.spec(0, Forward::All))?;
    t.attach(1, t.spec(1, Forward::All))?;
    let l = listen(&t.peer, &format!("{PEER_IP}:7100"))?;
    // Both guests are 10.0.2.2 and use source port 40000; a third flow from
    // the first guest reuses the source port towards another server port.
    let mut a = connect(&t.pods[0].guest, &format!("{PEER_IP}:7100"), Some(40000))?;
    let (mut sa, fa) = accept(&l)?;
    let mut b = connect(&t.pods[1].guest, &format!("{PEER_IP}:7100"), Some(40000))?;
    let (mut sb, fb) = accept(&l)?;
    let l2 = listen(&t.peer, &format!("{PEER_IP}:7101"))?;
    let mut a2 = connect(&t.pods[0].guest, &format!("{PEER_IP}:7101"), Some(40000))?;
    let (mut sa2, fa2) = accept(&l2)?;
    assert_eq!(fa.ip().to_string(), t.pods[0].pod_ip);
    assert_eq!(fb.ip().to_string(), t.pods[1].pod_ip);
    assert_eq!(fa2.ip().to_string(), t.pods[0].pod_ip);
    // The guests' own ports are kept (they are in the NAT range), as
    // netfilter keeps them; the pods' own sockets moved below the range.
    assert_eq!((fa.port(), fb.port(), fa2.port()), (40000, 40000, 40000));
    let range = t.pods[0]
        .pod
        .exec("cat", &["/proc/sys/net/ipv4/ip_local_port_range"])?;
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["16384", "32767"]
    );
    exchange(&mut sa, &mut a, b"to a")?;
    exchange(&mut sb, &mut b, b"to b")?;
    exchange(&mut sa2, &mut a2, b"to a2")?;
    exchange(&mut a, &mut sa, b"from a")?;
    exchange(&mut b, &mut sb, b"from b")?;
    exchange(&mut a2, &mut sa2, b"from a2")?;
    Ok(())
}

#[test]
fn conntrack_entries_expire() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let mut spec = t.spec(0, Forward::Ports(vec![]));
    spec.timeouts.udp = 1;
    t.attach(0, spec)?;
    common::udp_mapping_expires(&t, &format!("{PEER_IP}:7200"))?;
    assert!(t.pinned(0)?.conntrack()?.is_empty());
    Ok(())
}

#[test]
fn inbound_forwarded_ports_never_envoy() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    t.attach(
        0,
        t.spec(
            0,
            Forward::Ports(vec![(IPPROTO_TCP, 8080), (IPPROTO_TCP, 15006)]),
        ),
    )?;
    let pod = &p.pod_ip;
    let l8080 = listen(&p.guest, &format!("{GUEST_IP}:8080"))?;
    let _l15006 = listen(&p.guest, &format!("{GUEST_IP}:15006"))?;
    let _l9090 = listen(&p.guest, &format!("{GUEST_IP}:9090"))?;

    let mut c = connect(&t.peer, &format!("{pod}:8080"), None)?;
    let (mut s, from) = accept(&l8080)?;
    assert_eq!(from.ip().to_string(), PEER_IP, "the guest sees the client");
    exchange(&mut c, &mut s, b"in")?;
    exchange(&mut s, &mut c, b"out")?;
    // Envoy's port and an unlisted one stay with the pod (nothing listens
    // there: refused).
    assert!(connect(&t.peer, &format!("{pod}:15006"), None).is_err());
    assert!(connect(&t.peer, &format!("{pod}:9090"), None).is_err());

    // All ports: 9090 now reaches the guest, 15006 still does not.
    t.attach(0, t.spec(0, Forward::All))?;
    let mut c = connect(&t.peer, &format!("{pod}:9090"), None)?;
    let (mut s, _) = accept(&_l9090)?;
    exchange(&mut c, &mut s, b"all")?;
    assert!(connect(&t.peer, &format!("{pod}:15006"), None).is_err());
    Ok(())
}

#[test]
fn reattach_keeps_open_connection() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    let first = t.attach(0, t.spec(0, Forward::All))?;
    assert!(first.replaced.is_empty());
    let l = listen(&t.peer, &format!("{PEER_IP}:7300"))?;
    let mut c = connect(&p.guest, &format!("{PEER_IP}:7300"), None)?;
    let (mut s, _) = accept(&l)?;
    exchange(&mut c, &mut s, b"before")?;
    let ids_before = tcx_ids(p)?;
    // A new loader (the first one's descriptors are long closed) attaches
    // again: it reuses the pinned maps and swaps the programs in place.
    let again = t.attach(0, t.spec(0, Forward::All))?;
    assert_eq!(again.replaced.len(), 2, "{again:?}");
    let ids_after = tcx_ids(p)?;
    assert_eq!(ids_before.len(), ids_after.len());
    assert_ne!(ids_before, ids_after, "programs were replaced");
    exchange(&mut c, &mut s, b"after")?;
    exchange(&mut s, &mut c, b"back")?;
    Ok(())
}

/// Program ids attached with tcx on the pod's eth0 and tap0 ingress.
fn tcx_ids(p: &common::PodNs) -> Result<Vec<u32>> {
    p.pod.enter(|| -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for iface in ["eth0", "tap0"] {
            for at in [
                aya::programs::TcAttachType::Ingress,
                aya::programs::TcAttachType::Egress,
            ] {
                let (_, progs) = aya::programs::SchedClassifier::query_tcx(iface, at)?;
                for prog in progs {
                    ids.push(prog.id());
                }
            }
        }
        Ok(ids)
    })?
}

#[test]
fn detach_leaves_no_program_pin_or_map() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    t.attach(0, t.spec(0, Forward::All))?;
    assert!(p.guest.ping(PEER_IP, 1, PING_WAIT, &[]));
    assert_eq!(tcx_ids(p)?.len(), 2);
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(&p.pin_dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        {
            continue;
        }
        if let Ok(info) = aya::maps::MapInfo::from_pin(&path) {
            maps.push((info.id(), info.name_as_str().unwrap_or("?").to_string()));
        }
    }
    assert_eq!(maps.len(), 5, "pinned maps: {maps:?}");
    p.pod.enter({
        let dir = p.pin_dir.clone();
        move || virtlink_xdp::nat::detach(&dir)
    })??;
    assert!(
        !p.pin_dir.exists(),
        "pin dir left: {:?}",
        std::fs::read_dir(&p.pin_dir).map(|d| d
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect::<Vec<_>>())
    );
    assert!(tcx_ids(p)?.is_empty(), "programs left attached");
    // Maps go once the last reference does: the kernel frees programs and
    // maps after RCU grace periods, from a workqueue, which takes seconds on
    // a loaded 2-CPU machine (CI failed once at 5 s). A map still alive
    // after 30 s is a leak.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Ids only, no map opened: see common::kernel_map_ids.
        let ids = common::kernel_map_ids();
        let alive: Vec<&(u32, String)> = maps.iter().filter(|(id, _)| ids.contains(id)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "maps left: {alive:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !p.guest.ping(PEER_IP, 1, PING_WAIT, &[]),
        "guest still reaches out"
    );
    // Detaching twice is fine.
    virtlink_xdp::nat::detach(&p.pin_dir)?;
    Ok(())
}

#[test]
fn spoofed_mac_and_ip_are_dropped_and_counted() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    t.attach(0, t.spec(0, Forward::All))?;
    assert!(p.guest.ping(PEER_IP, 1, PING_WAIT, &[]));
    let pinned = t.pinned(0)?;
    // A second address on the guest: traffic from it is dropped.
    p.guest
        .ip(&["addr", "add", "10.0.2.99/24", "dev", "eth0"])?;
    assert!(!p.guest.ping(PEER_IP, 1, PING_WAIT, &["-I", "10.0.2.99"]));
    assert!(pinned.counter(Counter::DropSpoofIp)? >= 1);
    // Another MAC: everything is dropped, even towards the gateway.
    p.guest
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:00:66"])?;
    assert!(!p.guest.ping(PEER_IP, 1, PING_WAIT, &[]));
    assert!(pinned.counter(Counter::DropSpoofMac)? >= 1);
    Ok(())
}

#[test]
fn icmp_errors_are_translated_both_ways() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    t.attach(0, t.spec(0, Forward::All))?;
    common::icmp_errors_both_ways(&t, PEER_IP, &t.pods[0].pod_ip)
}

#[test]
fn istio_mode_goes_through_the_pods_stack() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    // Istio mode routes the guest's packets through the pod's stack.
    p.pod.sysctl("net.ipv4.ip_forward", "1")?;
    let mut spec = t.spec(0, Forward::All);
    spec.istio = true;
    t.attach(0, spec)?;
    assert_eq!(
        tcx_ids(p)?.len(),
        3,
        "guest_ingress, pod_ingress, pod_egress"
    );
    // A netfilter rule in the pod (as a sidecar's would be) sees the
    // guest's own addresses and applies.
    p.pod.exec(
        "nft",
        &["add table inet sidecar; \
             add chain inet sidecar outbound { type filter hook forward priority 0; }; \
             add rule inet sidecar outbound ip saddr 10.0.2.2 tcp dport 7401 counter drop"],
    )?;
    let l = listen(&t.peer, &format!("{PEER_IP}:7400"))?;
    let mut c = connect(&p.guest, &format!("{PEER_IP}:7400"), None)?;
    let (mut s, from) = accept(&l)?;
    assert_eq!(from.ip().to_string(), p.pod_ip);
    assert!(nat_port(from.port()), "translated after the stack: {from}");
    exchange(&mut c, &mut s, b"via the stack")?;
    exchange(&mut s, &mut c, b"and back")?;
    let _l2 = listen(&t.peer, &format!("{PEER_IP}:7401"))?;
    assert!(
        connect(&p.guest, &format!("{PEER_IP}:7401"), None).is_err(),
        "the pod's forward rule did not apply"
    );
    let rules = p.pod.exec("nft", &["list", "table", "inet", "sidecar"])?;
    assert!(!rules.contains("packets 0 "), "{rules}");
    // New inbound connections are left to the pod's stack (the sidecar).
    let _g = listen(&p.guest, &format!("{GUEST_IP}:8080"))?;
    assert!(connect(&t.peer, &format!("{}:8080", p.pod_ip), None).is_err());
    Ok(())
}

/// Short connections to one server: a NAT port whose connection is over in
/// both directions is taken by the next SYN, so a range of 4 ports carries
/// 40 connections in a row without a stall (before, the fifth SYN was
/// dropped for the closing timeout: `drop_no_port`).
#[test]
fn closed_connections_give_their_port_to_new_ones() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    let mut spec = t.spec(0, Forward::Ports(vec![]));
    spec.nat_ports = (61000, 61003);
    t.attach(0, spec)?;
    let l = listen(&t.peer, &format!("{PEER_IP}:7300"))?;
    let start = std::time::Instant::now();
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..40u32 {
        let mut c = connect(&p.guest, &format!("{PEER_IP}:7300"), None)
            .with_context(|| format!("connection {i}"))?;
        let (mut s, from) = accept(&l).with_context(|| format!("accept {i}"))?;
        ports.insert(from.port());
        exchange(&mut c, &mut s, b"ping")?;
        // The server closes first (it keeps TIME_WAIT), then the guest.
        drop(s);
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf)?, 0, "connection {i}: no FIN");
        drop(c);
        // Let the guest's FIN (and the last ACK) cross before the next SYN.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ports.iter().all(|p| (61000..=61003).contains(p)),
        "{ports:?}"
    );
    let pinned = t.pinned(0)?;
    assert_eq!(pinned.counter(Counter::DropNoPort)?, 0);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "40 connections took {:?}: SYNs waited for a port",
        start.elapsed()
    );
    // An open connection keeps its port: with all 4 ports open, a fifth
    // connection gets none.
    let mut open = Vec::new();
    for _ in 0..4 {
        let c = connect(&p.guest, &format!("{PEER_IP}:7300"), None)?;
        let (s, _) = accept(&l)?;
        open.push((c, s));
    }
    assert!(
        connect(&p.guest, &format!("{PEER_IP}:7300"), None).is_err(),
        "a fifth connection took the port of an open one"
    );
    assert!(pinned.counter(Counter::DropNoPort)? > 0);
    Ok(())
}

/// Creates an array map (`value_size` bytes, one entry) pinned at `path`
/// with raw `bpf(2)` calls: a map as an older loader left it.
fn pin_array_map(path: &std::path::Path, value_size: u32) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, then zeros.
    let mut create = [0u32; 32];
    create[0] = 2; // BPF_MAP_TYPE_ARRAY
    create[1] = 4;
    create[2] = value_size;
    create[3] = 1;
    // SAFETY: BPF_MAP_CREATE (0) reads `size` bytes of `create`, which is
    // that large and lives across the call.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            0,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    anyhow::ensure!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // BPF_OBJ_PIN: pathname (u64 pointer), bpf_fd (u32).
    let mut pin = [0u64; 4];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: BPF_OBJ_PIN (6) reads the path pointer (a NUL-terminated
    // string alive across the call) and the fd from `pin`.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            6,
            pin.as_ptr(),
            std::mem::size_of_val(&pin),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is the map descriptor made above and not used after.
    unsafe { nix::libc::close(fd as i32) };
    anyhow::ensure!(ret == 0, "BPF_OBJ_PIN {}: {err}", path.display());
    Ok(())
}

/// Pins of an older loader whose maps have another layout (here: a config
/// map of the old, IPv4-only size) are replaced, not reused: the new
/// programs load and carry traffic.
#[test]
fn stale_pins_of_another_layout_are_replaced() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let t = Topology::new(1)?;
    let p = &t.pods[0];
    virtlink_xdp::bpffs::create_dir(&p.pin_dir)?;
    let old = p.pin_dir.join(virtlink_xdp::common::MAP_CONFIG);
    pin_array_map(&old, 64)?;
    assert_eq!(aya::maps::MapInfo::from_pin(&old)?.value_size(), 64);
    t.attach(0, t.spec(0, Forward::All))?;
    assert_eq!(
        aya::maps::MapInfo::from_pin(&old)?.value_size() as usize,
        std::mem::size_of::<virtlink_xdp::common::NatConfig>()
    );
    assert!(p.guest.ping(PEER_IP, 1, PING_WAIT, &[]));
    Ok(())
}
