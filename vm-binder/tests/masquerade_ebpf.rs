//! The masquerade binding on the eBPF datapath, against real kernel objects:
//! the binder's tap with a fake guest writing raw frames, the programs
//! attached in the pod, pins on a bpffs of the test's own.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use common::{
    parse_udp, parse_udp6, udp6_frame, udp_frame, FakeGuest, Pod, NET_IP, NET_IP6, POD_IP, POD_IP6,
};
use virtlink_xdp::common::Counter;
use vm_binder::masquerade::Datapath;
use vm_binder::{bind, BindOptions, Vm};

/// A bpffs on a temp dir, unmounted on drop.
struct Bpffs(tempfile::TempDir);

impl Bpffs {
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vb-bpffs").tempdir()?;
        virtlink_xdp::bpffs::ensure_mounted(dir.path())?;
        Ok(Self(dir))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn vm() -> Result<Vm> {
    Ok(Vm::parse(
        r#"{"metadata":{"name":"masq","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","masquerade":{}}]}},
                    "networks":[{"name":"default","pod":{}}]}}"#,
    )?)
}

/// Reads frames from the tap until a UDP one to `dport` arrives.
fn recv_udp(guest: &mut FakeGuest, dport: u16) -> Result<(Ipv4Addr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match guest.tap.read(&mut buf) {
            Ok(n) => {
                if let Some((src, p, payload)) = parse_udp(&buf[..n]) {
                    if p == dport {
                        return Ok((src, payload.to_vec()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no UDP frame to port {dport}")
}

#[test]
fn ebpf_masquerade_translates_drops_spoofing_and_unbinds_clean() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let bpffs = Bpffs::new()?;
    let vm = vm()?;
    let opts = BindOptions {
        datapath: Datapath::Ebpf,
        bpffs_root: bpffs.0.path().to_path_buf(),
        dhcp: false,
        ..Default::default()
    };
    let binding = bind(&vm, pod.pod.path(), &[], &opts)?;
    let pins = vm_binder::pin_dir(bpffs.0.path(), &vm, pod.pod.path(), "default");
    assert!(pins.join("link_guest_ingress").exists());
    let listed = vm_binder::pin_dirs(bpffs.0.path(), "test", "masq");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1, pins);
    assert!(pins.join("link_pod_ingress").exists());
    let attached = pod.pod.enter(|| {
        virtlink_xdp::tcx_programs("eth0")
            .and_then(|a| Ok((a, virtlink_xdp::tcx_programs("tap0")?)))
    })??;
    assert_eq!((attached.0.len(), attached.1.len()), (1, 1), "{attached:?}");

    let mac = binding.interfaces[0].mac.0;
    let tap_mac: vm_binder::Mac = pod
        .pod
        .link("tap0")
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .unwrap_or_default()
        .parse()?;
    let mut guest = FakeGuest::attach(pod.pod.path(), "tap0", mac)?;
    // The fake guest does not answer ARP.
    pod.pod.ip(&[
        "neigh",
        "replace",
        "10.0.2.2",
        "lladdr",
        &binding.interfaces[0].mac.to_string(),
        "dev",
        "tap0",
        "nud",
        "permanent",
    ])?;
    let server = pod
        .net
        .enter(|| UdpSocket::bind(SocketAddr::from(([10, 99, 0, 1], 7777))))??;
    server.set_read_timeout(Some(Duration::from_secs(3)))?;
    let guest_ip = Ipv4Addr::new(10, 0, 2, 2);
    let net: Ipv4Addr = NET_IP.parse()?;
    guest
        .tap
        .write_all(&udp_frame(mac, tap_mac.0, guest_ip, net, 5555, 7777, b"hi"))?;
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"hi");
    assert_eq!(from.ip().to_string(), POD_IP);
    // netfilter's masquerade would have kept 5555; it is outside the eBPF
    // NAT range, so the programs chose a port from it.
    let range = virtlink_xdp::nat::DEFAULT_NAT_PORTS;
    assert!(
        (range.0..=range.1).contains(&from.port()),
        "source port {} not from the eBPF range",
        from.port()
    );
    server.send_to(b"re", from)?;
    let (src, payload) = recv_udp(&mut guest, 5555)?;
    assert_eq!((src, payload.as_slice()), (net, &b"re"[..]));

    let pinned = virtlink_xdp::nat::Pinned::open(&pins)?;
    assert!(pinned.counter(Counter::OutPackets)? >= 1);
    assert!(pinned.counter(Counter::InPackets)? >= 1);

    // Forged source IP, then forged source MAC: dropped and counted.
    guest.tap.write_all(&udp_frame(
        mac,
        tap_mac.0,
        Ipv4Addr::new(10, 0, 2, 99),
        net,
        5555,
        7777,
        b"ip",
    ))?;
    guest.tap.write_all(&udp_frame(
        [2, 0, 0, 0, 0, 0x66],
        tap_mac.0,
        guest_ip,
        net,
        5555,
        7777,
        b"mac",
    ))?;
    server.set_read_timeout(Some(Duration::from_millis(700)))?;
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a forged frame got through"
    );
    assert_eq!(pinned.counter(Counter::DropSpoofIp)?, 1);
    assert_eq!(pinned.counter(Counter::DropSpoofMac)?, 1);

    drop(guest);
    binding.unbind(&vm, &[])?;
    assert!(!pins.exists(), "pins left after unbind");
    let left = pod.pod.enter(|| virtlink_xdp::tcx_programs("eth0"))??;
    assert!(left.is_empty(), "programs left on eth0: {left:?}");
    Ok(())
}

/// Reads frames from the tap until an IPv6 UDP one to `dport` arrives.
fn recv_udp6(guest: &mut FakeGuest, dport: u16) -> Result<(Ipv6Addr, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match guest.tap.read(&mut buf) {
            Ok(n) => {
                if let Some((src, p, payload)) = parse_udp6(&buf[..n]) {
                    if p == dport {
                        return Ok((src, payload.to_vec()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no IPv6 UDP frame to port {dport}")
}

/// A dual-stack pod: the programs translate the guest's IPv6 to the pod's
/// IPv6 address (NAT66), the nftables table keeps IPv6 only as the
/// fallback for what the programs pass, and a forged IPv6 source is dropped.
#[test]
fn ebpf_masquerade_translates_ipv6() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    ipv6(false)
}

/// The same on a pod with IPv6 only: the programs are attached for IPv6
/// alone.
#[test]
fn ebpf_masquerade_on_an_ipv6_only_pod() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    ipv6(true)
}

fn ipv6(only: bool) -> Result<()> {
    let pod = Pod::new()?;
    pod.add_ipv6()?;
    if only {
        pod.pod
            .ip(&["addr", "del", &format!("{POD_IP}/24"), "dev", "eth0"])?;
    }
    let bpffs = Bpffs::new()?;
    let vm = vm()?;
    let opts = BindOptions {
        datapath: Datapath::Ebpf,
        bpffs_root: bpffs.0.path().to_path_buf(),
        dhcp: false,
        ..Default::default()
    };
    let binding = bind(&vm, pod.pod.path(), &[], &opts)?;
    let pins = vm_binder::pin_dir(bpffs.0.path(), &vm, pod.pod.path(), "default");
    let pinned = virtlink_xdp::nat::Pinned::open(&pins)?;
    let cfg = pinned.config()?;
    assert_ne!(cfg.pod_ip6, [0; 4], "IPv6 not configured in the programs");
    assert_eq!(
        cfg.flags & (virtlink_xdp::common::FLAG_V4 | virtlink_xdp::common::FLAG_V6),
        if only {
            virtlink_xdp::common::FLAG_V6
        } else {
            virtlink_xdp::common::FLAG_V4 | virtlink_xdp::common::FLAG_V6
        }
    );
    let mac = binding.interfaces[0].mac.0;
    let tap_mac: vm_binder::Mac = pod
        .pod
        .link("tap0")
        .and_then(|l| l["address"].as_str().map(str::to_string))
        .unwrap_or_default()
        .parse()?;
    let mut guest = FakeGuest::attach(pod.pod.path(), "tap0", mac)?;
    let net: Ipv6Addr = NET_IP6.parse()?;
    let server = pod
        .net
        .enter(move || UdpSocket::bind(SocketAddr::from((net, 7777))))??;
    server.set_read_timeout(Some(Duration::from_secs(3)))?;
    let guest_ip: Ipv6Addr = "fd10:0:2::2".parse()?;
    guest.tap.write_all(&udp6_frame(
        mac, tap_mac.0, guest_ip, net, 5555, 7777, b"hi6",
    ))?;
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"hi6");
    assert_eq!(from.ip().to_string(), POD_IP6);
    let range = virtlink_xdp::nat::DEFAULT_NAT_PORTS;
    assert!((range.0..=range.1).contains(&from.port()), "{from}");
    server.send_to(b"re6", from)?;
    let (src, payload) = recv_udp6(&mut guest, 5555)?;
    assert_eq!((src, payload.as_slice()), (net, &b"re6"[..]));
    assert!(pinned.counter(Counter::OutPackets6)? >= 1);
    assert!(pinned.counter(Counter::InPackets6)? >= 1);

    // A forged IPv6 source: dropped and counted.
    guest.tap.write_all(&udp6_frame(
        mac,
        tap_mac.0,
        "fd10:0:2::99".parse()?,
        net,
        5555,
        7777,
        b"forged",
    ))?;
    server.set_read_timeout(Some(Duration::from_millis(700)))?;
    assert!(
        server.recv_from(&mut buf).is_err(),
        "forged frame got through"
    );
    assert_eq!(pinned.counter(Counter::DropSpoofIp)?, 1);

    // nftables keeps IPv6 only for what the programs pass on.
    let table = pod
        .pod
        .exec("nft", &["list", "table", "inet", "virtlink-default"])?;
    assert!(
        table.contains("ip6 saddr fd10:0:2::2 masquerade"),
        "{table}"
    );

    drop(guest);
    binding.unbind(&vm, &[])?;
    assert!(!pins.exists(), "pins left after unbind");
    Ok(())
}

#[test]
fn annotation_chooses_the_datapath() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let pod = Pod::new()?;
    let bpffs = Bpffs::new()?;
    let opts = BindOptions {
        datapath: Datapath::Ebpf,
        bpffs_root: bpffs.0.path().to_path_buf(),
        dhcp: false,
        ..Default::default()
    };
    let vm = Vm::parse(
        r#"{"metadata":{"name":"annot","namespace":"test",
              "annotations":{"virtlink.io/masquerade-datapath":"nftables"}},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","masquerade":{}}]}},
                    "networks":[{"name":"default","pod":{}}]}}"#,
    )?;
    let binding = bind(&vm, pod.pod.path(), &[], &opts)?;
    assert!(
        vm_binder::pin_dirs(bpffs.0.path(), "test", "annot").is_empty(),
        "nftables chosen, but eBPF pins exist"
    );
    let table = pod
        .pod
        .exec("nft", &["list", "table", "inet", "virtlink-default"])?;
    assert!(table.contains("ip saddr 10.0.2.2 masquerade"), "{table}");
    binding.unbind(&vm, &[])?;

    let bad = Vm::parse(
        r#"{"metadata":{"name":"annot","namespace":"test",
              "annotations":{"virtlink.io/masquerade-datapath":"xdp"}},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","masquerade":{}}]}},
                    "networks":[{"name":"default","pod":{}}]}}"#,
    )?;
    let err = bind(&bad, pod.pod.path(), &[], &opts).expect_err("unknown datapath accepted");
    assert!(format!("{err:#}").contains("annotation"), "{err:#}");
    Ok(())
}
