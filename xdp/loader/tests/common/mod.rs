//! Helpers for the eBPF datapath tests: a bpffs mount and the NAT topology,
//! removed on drop (also when a test fails), on top of vm-tests' namespace
//! fixtures.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use virtlink_xdp::common::Counter;
use virtlink_xdp::nat::{self, Addrs, Forward, NatSpec, Timeouts, DEFAULT_NAT_PORTS};
pub use vm_tests::netns::{require_root, veth, Netns};

/// The ids of every BPF map in the kernel, read with `BPF_MAP_GET_NEXT_ID`
/// without opening any map. A leak check must not open maps by id (what
/// `aya::maps::loaded_maps` does): opening a prog array by id while the
/// kernel's deferred clear of it is still queued (its last user reference
/// just went) makes the close queue a second clear, which `schedule_work`
/// drops while the reference taken for it is never put, so the array then
/// lives for ever (`prog_array_map_clear` in kernel/bpf/arraymap.c). CI hit
/// that once on a loaded machine: VL_JUMP left after 30 s.
pub fn kernel_map_ids() -> Vec<u32> {
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        // union bpf_attr: { start_id, next_id, open_flags }
        let mut attr = [start, 0u32, 0u32];
        // SAFETY: attr outlives the call and its size is passed with it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        if rc != 0 {
            break; // ENOENT: no map after `start`
        }
        start = attr[1];
        ids.push(start);
    }
    ids
}

/// A bpffs mounted on a temp dir, unmounted on drop.
pub struct Bpffs {
    pub dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vl-bpffs").tempdir()?;
        virtlink_xdp::bpffs::ensure_mounted(dir.path())?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub const PEER_IP: &str = "10.99.0.1";
pub const PEER_IP6: &str = "fd99::1";
pub const GATEWAY_IP6: &str = "fd10:0:2::1";
pub const GUEST_IP6: &str = "fd10:0:2::2";
pub const GATEWAY_IP: &str = "10.0.2.1";
pub const GUEST_IP: &str = "10.0.2.2";
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const GUEST_MAC_STR: &str = "02:00:00:00:00:02";

/// client/world `peer` -- `pod` (eth0 = pod IP, tap0 = 10.0.2.1/24) --
/// `guest` (eth0 = 10.0.2.2/24). The pod does not forward (ip_forward=0):
/// only the eBPF NAT can carry the guest's traffic. Several pods share the
/// peer through a bridge. Everything is undone on drop: NAT pins first,
/// then the bpffs mount, then the namespaces.
pub struct Topology {
    pub peer: Netns,
    pub pods: Vec<PodNs>,
    pub bpffs: Bpffs,
}

pub struct PodNs {
    pub pod: Netns,
    pub guest: Netns,
    pub pod_ip: String,
    pub pod_ip6: String,
    pub pin_dir: PathBuf,
}

impl Topology {
    pub fn new(pods: usize) -> Result<Self> {
        let bpffs = Bpffs::new()?;
        let peer = Netns::with_prefix("xpe")?;
        peer.ip(&["link", "add", "br0", "type", "bridge"])?;
        peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "br0"])?;
        peer.ip(&[
            "addr",
            "add",
            &format!("{PEER_IP6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        peer.ip(&["link", "set", "br0", "up"])?;
        let mut t = Topology {
            peer,
            pods: Vec::new(),
            bpffs,
        };
        for i in 0..pods {
            let pod = Netns::with_prefix("xpo")?;
            let guest = Netns::with_prefix("xgu")?;
            let pod_ip = format!("10.99.0.{}", 5 + i);
            let pod_ip6 = format!("fd99::{}", 5 + i);
            let port = format!("p{i}");
            veth(&t.peer, &port, &pod, "eth0")?;
            t.peer.ip(&["link", "set", &port, "master", "br0"])?;
            pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"])?;
            pod.ip(&["route", "add", "default", "via", PEER_IP])?;
            pod.ip(&[
                "addr",
                "add",
                &format!("{pod_ip6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            pod.ip(&["-6", "route", "add", "default", "via", PEER_IP6])?;
            veth(&pod, "tap0", &guest, "eth0")?;
            pod.ip(&["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "tap0"])?;
            pod.ip(&[
                "addr",
                "add",
                &format!("{GATEWAY_IP6}/120"),
                "dev",
                "tap0",
                "nodad",
            ])?;
            pod.sysctl("net.ipv4.ip_forward", "0")?;
            pod.sysctl("net.ipv6.conf.all.forwarding", "0")?;
            guest.ip(&["link", "set", "eth0", "address", GUEST_MAC_STR])?;
            guest.ip(&["addr", "add", &format!("{GUEST_IP}/24"), "dev", "eth0"])?;
            guest.ip(&["route", "add", "default", "via", GATEWAY_IP])?;
            guest.ip(&[
                "addr",
                "add",
                &format!("{GUEST_IP6}/120"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            guest.ip(&["-6", "route", "add", "default", "via", GATEWAY_IP6])?;
            let pin_dir = virtlink_xdp::bpffs::pod_dir(t.bpffs.path(), pod.name());
            t.pods.push(PodNs {
                pod,
                guest,
                pod_ip,
                pod_ip6,
                pin_dir,
            });
        }
        Ok(t)
    }

    pub fn spec(&self, i: usize, forward: Forward) -> NatSpec {
        let p = &self.pods[i];
        NatSpec {
            pod_interface: "eth0".into(),
            guest_interface: "tap0".into(),
            ipv4: Some(Addrs {
                pod: p.pod_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                guest: Ipv4Addr::new(10, 0, 2, 2),
                gateway: Ipv4Addr::new(10, 0, 2, 1),
            }),
            ipv6: None,
            guest_mac: GUEST_MAC,
            gateway_mac: None,
            anti_spoof: true,
            forward,
            istio: false,
            nat_ports: DEFAULT_NAT_PORTS,
            timeouts: Timeouts::default(),
            pin_dir: p.pin_dir.clone(),
        }
    }

    /// [`Topology::spec`] with IPv6 translated too.
    pub fn spec6(&self, i: usize, forward: Forward) -> NatSpec {
        let mut s = self.spec(i, forward);
        s.ipv6 = Some(Addrs {
            pod: self.pods[i]
                .pod_ip6
                .parse()
                .unwrap_or(Ipv6Addr::UNSPECIFIED),
            guest: GUEST_IP6.parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
            gateway: GATEWAY_IP6.parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
        });
        s
    }

    /// Attaches the NAT in pod `i`'s namespace.
    pub fn attach(&self, i: usize, spec: NatSpec) -> Result<nat::Attached> {
        Ok(self.pods[i].pod.enter(move || nat::attach(&spec))??)
    }

    pub fn pinned(&self, i: usize) -> Result<nat::Pinned> {
        Ok(nat::Pinned::open(&self.pods[i].pin_dir)?)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = nat::detach(&p.pin_dir);
        }
    }
}

pub const T: Duration = Duration::from_secs(3);

/// How long a ping waits for its reply (`ping -W`).
pub const PING_WAIT: Duration = Duration::from_secs(2);

/// `[addr]:port` for IPv6 addresses, `addr:port` otherwise.
pub fn sock(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// A TCP listener in `ns` on `addr`.
pub fn listen(ns: &Netns, addr: &str) -> Result<TcpListener> {
    let addr: SocketAddr = addr.parse()?;
    let l = ns.enter(move || TcpListener::bind(addr))??;
    Ok(l)
}

/// Connects from `ns` (optionally from a fixed source port).
pub fn connect(ns: &Netns, dst: &str, src_port: Option<u16>) -> Result<TcpStream> {
    let dst: SocketAddr = dst.parse()?;
    let s = ns.enter(move || -> std::io::Result<TcpStream> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(dst),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_reuse_address(true)?;
        if let Some(p) = src_port {
            let src: SocketAddr = if dst.is_ipv6() {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, p))
            } else {
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, p))
            };
            sock.bind(&src.into())?;
        }
        sock.connect_timeout(&dst.into(), T)?;
        Ok(sock.into())
    })??;
    s.set_read_timeout(Some(T))?;
    Ok(s)
}

/// Accepts one connection (with a timeout), returns it and the peer address.
pub fn accept(l: &TcpListener) -> Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + T;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(T))?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("no connection within {T:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `msg` one way and reads it on the other side.
pub fn exchange(a: &mut TcpStream, b: &mut TcpStream, msg: &[u8]) -> Result<()> {
    a.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    b.read_exact(&mut buf).context("read")?;
    anyhow::ensure!(buf == msg, "got {buf:?}");
    Ok(())
}

/// A UDP socket in `ns` bound to `bind`.
pub fn udp(ns: &Netns, bind: &str) -> Result<UdpSocket> {
    let addr: SocketAddr = bind.parse()?;
    let s = ns.enter(move || UdpSocket::bind(addr))??;
    s.set_read_timeout(Some(T))?;
    Ok(s)
}

/// Waits for an error on a connected UDP socket (an ICMP error arrived).
pub fn refused(sock: &UdpSocket) -> bool {
    let mut buf = [0u8; 16];
    match sock.recv(&mut buf) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// Whether `port` is in the NAT's default port range.
pub fn nat_port(port: u16) -> bool {
    (DEFAULT_NAT_PORTS.0..=DEFAULT_NAT_PORTS.1).contains(&port)
}

/// Any address and port of `addr`'s family: `[::]:0` or `0.0.0.0:0`.
fn any_like(addr: SocketAddr) -> &'static str {
    if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
}

/// Greetings both ways over a connected pair, then 4 MiB from `c` to `s`
/// (full segments, so their checksums are checked end to end).
pub fn talk_and_bulk(c: &mut TcpStream, s: &mut TcpStream) -> Result<()> {
    exchange(c, s, b"hello world")?;
    exchange(s, c, b"hello guest")?;
    let big = vec![0x5au8; 4 << 20];
    let writer = {
        let mut c2 = c.try_clone()?;
        let big = big.clone();
        std::thread::spawn(move || c2.write_all(&big))
    };
    let mut got = vec![0u8; big.len()];
    s.read_exact(&mut got)?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    anyhow::ensure!(got == big, "bulk data corrupted");
    Ok(())
}

/// A UDP "ping" from a socket in `client_ns` to a server in `server_ns` at
/// `server` (`addr:port`) and a "pong" back, which must come from `server`.
/// Returns the source the server saw (the translated one, behind a NAT).
pub fn udp_ping_pong(server_ns: &Netns, client_ns: &Netns, server: &str) -> Result<SocketAddr> {
    let to: SocketAddr = server.parse()?;
    let listener = udp(server_ns, server)?;
    let client = udp(client_ns, any_like(to))?;
    client.send_to(b"ping", to)?;
    let mut buf = [0u8; 16];
    let (n, from) = listener.recv_from(&mut buf)?;
    anyhow::ensure!(&buf[..n] == b"ping", "server got {:?}", &buf[..n]);
    listener.send_to(b"pong", from)?;
    let (n, back) = client.recv_from(&mut buf)?;
    anyhow::ensure!(&buf[..n] == b"pong", "client got {:?}", &buf[..n]);
    anyhow::ensure!(
        (back.ip(), back.port()) == (to.ip(), to.port()),
        "pong from {back}, not {to}"
    );
    Ok(from)
}

/// With pod 0's NAT attached with a 1 s UDP timeout: a guest's UDP flow to
/// `server` (on the peer) gets a mapping both ways and a reply in time; after
/// the timeout a late reply no longer reaches the guest (the pod's stack
/// gets it and has no such socket), and GC removes both directions.
pub fn udp_mapping_expires(t: &Topology, server: &str) -> Result<()> {
    let listener = udp(&t.peer, server)?;
    let client = udp(&t.pods[0].guest, any_like(server.parse()?))?;
    client.send_to(b"one", server)?;
    let mut buf = [0u8; 16];
    let (_, from) = listener.recv_from(&mut buf)?;
    listener.send_to(b"reply", from)?;
    let (n, _) = client.recv_from(&mut buf)?;
    anyhow::ensure!(&buf[..n] == b"reply", "reply in time: got {:?}", &buf[..n]);
    let pinned = t.pinned(0)?;
    let ct = pinned.conntrack()?;
    anyhow::ensure!(ct.len() == 2, "one mapping, both directions: {ct:?}");

    std::thread::sleep(Duration::from_millis(2500));
    listener.send_to(b"late", from)?;
    client.set_read_timeout(Some(Duration::from_millis(700)))?;
    anyhow::ensure!(
        client.recv_from(&mut buf).is_err(),
        "late reply got through"
    );
    anyhow::ensure!(
        pinned.counter(Counter::CtExpired)? >= 1,
        "no expiry counted"
    );
    anyhow::ensure!(pinned.gc()? == 2, "both directions expired");
    Ok(())
}

/// ICMP errors cross pod 0's NAT both ways: the world answers the guest's
/// UDP to a closed port on `peer_ip` with "port unreachable" to the pod's
/// address and NAT port, which the guest's socket must see; the guest
/// answers UDP to a forwarded port on `pod_ip` it does not listen on, which
/// the client in the world must see.
pub fn icmp_errors_both_ways(t: &Topology, peer_ip: &str, pod_ip: &str) -> Result<()> {
    let closed: SocketAddr = sock(peer_ip, 7999).parse()?;
    let guest_sock = udp(&t.pods[0].guest, any_like(closed))?;
    guest_sock.connect(closed)?;
    guest_sock.send(b"anyone?")?;
    anyhow::ensure!(refused(&guest_sock), "the guest did not get the ICMP error");
    let client = udp(&t.peer, &sock(peer_ip, 0))?;
    client.connect(sock(pod_ip, 8999))?;
    client.send(b"hello guest")?;
    anyhow::ensure!(
        refused(&client),
        "the client did not get the guest's ICMP error"
    );
    Ok(())
}
