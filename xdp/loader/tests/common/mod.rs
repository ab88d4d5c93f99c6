//! Helpers for the eBPF datapath tests: namespaces, veths and a bpffs mount,
//! all removed on drop (also when a test fails).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use virtlink_xdp::nat::{self, Addrs, Forward, NatSpec, Timeouts, DEFAULT_NAT_PORTS};

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        eprintln!("SKIPPED: needs root (CAP_NET_ADMIN, CAP_BPF) for namespaces and eBPF");
        false
    }
}

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

/// A unique short name: `<prefix><pid><n>`, at most 15 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut s = format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    s.truncate(15);
    s
}

/// A named network namespace deleted on drop.
pub struct Ns {
    pub name: String,
    pub path: PathBuf,
}

impl Ns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        let path = netattach::netns::create(&name).with_context(|| format!("create {name}"))?;
        let ns = Ns { name, path };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {}: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.exec("ip", args)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a thread inside this namespace (sockets made there stay
    /// there).
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(netattach::netns::run_in(&self.path, f)?)
    }

    /// `ping -c 1` to `dst`; true when answered.
    pub fn ping(&self, dst: &str, extra: &[&str]) -> bool {
        let mut args = vec!["-c", "1", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(dst);
        self.exec("ping", &args).is_ok()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netattach::netns::delete(&self.name);
    }
}

/// A veth pair `a` (in `ns_a`) -- `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Ns, a: &str, ns_b: &Ns, b: &str) -> Result<()> {
    let tmp = unique("vt");
    ns_a.ip(&[
        "link", "add", a, "type", "veth", "peer", "name", &tmp, "netns", &ns_b.name,
    ])?;
    ns_b.ip(&["link", "set", &tmp, "name", b])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
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
    pub peer: Ns,
    pub pods: Vec<PodNs>,
    pub bpffs: Bpffs,
}

pub struct PodNs {
    pub pod: Ns,
    pub guest: Ns,
    pub pod_ip: String,
    pub pod_ip6: String,
    pub pin_dir: PathBuf,
}

impl Topology {
    pub fn new(pods: usize) -> Result<Self> {
        let bpffs = Bpffs::new()?;
        let peer = Ns::new("xpe")?;
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
            let pod = Ns::new("xpo")?;
            let guest = Ns::new("xgu")?;
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
            let pin_dir = virtlink_xdp::bpffs::pod_dir(t.bpffs.path(), &pod.name);
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
        Ok(self.pods[i].pod.run(move || nat::attach(&spec))??)
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

/// `[addr]:port` for IPv6 addresses, `addr:port` otherwise.
pub fn sock(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// A TCP listener in `ns` on `addr`.
pub fn listen(ns: &Ns, addr: &str) -> Result<TcpListener> {
    let addr: SocketAddr = addr.parse()?;
    let l = ns.run(move || TcpListener::bind(addr))??;
    Ok(l)
}

/// Connects from `ns` (optionally from a fixed source port).
pub fn connect(ns: &Ns, dst: &str, src_port: Option<u16>) -> Result<TcpStream> {
    let dst: SocketAddr = dst.parse()?;
    let s = ns.run(move || -> std::io::Result<TcpStream> {
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
pub fn udp(ns: &Ns, bind: &str) -> Result<UdpSocket> {
    let addr: SocketAddr = bind.parse()?;
    let s = ns.run(move || UdpSocket::bind(addr))??;
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
