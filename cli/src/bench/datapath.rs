//! `virtlink bench datapath`: the masquerade datapaths between network
//! namespaces, without a guest's emulated CPU in the way, side by side with
//! their baselines in one run.
//!
//! Every path carries traffic from a generator namespace ("guest") to a
//! server namespace ("peer"):
//!
//! ```text
//! bare:        guest g0 ───────────────── eth0 peer
//! via the pod: guest g0 ── tap0 [pod] eth0 ── eth0 peer
//! ```
//!
//! Through the pod namespace: plain routing without translation, nftables
//! masquerade (the binder's baseline), TC `bpf_redirect_peer` without
//! translation (the ceiling for any path through the pod namespace), and
//! virtlink's eBPF masquerade (`virtlink_xdp::nat`, as the binder attaches
//! it, with anti-spoofing on). All paths exist
//! at once and are measured in interleaved rounds with the same offload
//! settings (`tx off` on the guest's and the peer's interfaces, so TCP is
//! not dominated by segmentation offload noise): iperf3 TCP one stream,
//! iperf3 UDP with 64-byte payloads, sockperf TCP ping-pong RTT, and a
//! sequential connect/send/receive/close loop. Generators run on CPU 0,
//! servers on CPU 1. Medians of the rounds, as ratios to the bare pair.
//!
//! Every path also carries IPv6 (guest `fd10:0:2::2` behind `fd10:0:2::1`,
//! pod `fd99::5`, peer `fd99::1`; the bare and redirect paths put the guest
//! on the peer's subnet as `fd99::2`): iperf3 TCP and a TCP ping-pong RTT
//! (64 bytes, measured in-process: the installed sockperf has no IPv6) over
//! IPv6, with the eBPF masquerade translating NAT66 and the nftables ruleset
//! its `ip6` rules.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ip, iperf3_json, iperf3_tcp_gbps, iperf3_udp_pps, median, parse_sockperf_avg, sh};
use anyhow::{bail, Context, Result};

const GUEST_IP: &str = "10.0.2.2";
const GATEWAY_IP: &str = "10.0.2.1";
const POD_IP: &str = "10.99.0.5";
const PEER_IP: &str = "10.99.0.1";
/// The guest's address on the bare pair (same subnet as the peer).
const BARE_IP: &str = "10.99.0.2";
const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const CONN_PORT: u16 = 7070;
const RTT6_PORT: u16 = 7071;
const GUEST_IP6: &str = "fd10:0:2::2";
const GATEWAY_IP6: &str = "fd10:0:2::1";
const POD_IP6: &str = "fd99::5";
const PEER_IP6: &str = "fd99::1";
/// The guest's IPv6 address on the bare pair and the redirect wire.
const BARE_IP6: &str = "fd99::2";

/// A path through (or around) the pod namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Bare,
    Routed,
    Nftables,
    Redirect,
    Ebpf,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Bare => "bare veth pair (baseline)",
            Path::Routed => "pod namespace, plain routing, no translation",
            Path::Nftables => "pod namespace, nftables masquerade (KubeVirt today)",
            Path::Redirect => "pod namespace, TC bpf_redirect_peer, no translation (ceiling)",
            Path::Ebpf => "pod namespace, virtlink eBPF masquerade",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Path::Bare => "bare",
            Path::Routed => "route",
            Path::Nftables => "nft",
            Path::Redirect => "redir",
            Path::Ebpf => "ebpf",
        }
    }
}

/// The namespaces of one path; removed on drop.
struct Topology {
    path: Path,
    guest: String,
    pod: Option<String>,
    peer: String,
    /// The server address the guest sends to.
    target: Ipv4Addr,
    /// The same over IPv6.
    target6: Ipv6Addr,
    servers: Vec<Child>,
    /// The untranslated redirect programs, attached while this lives.
    redirect: Option<virtlink_xdp::redirect::RedirectPeer>,
    /// The bpffs mount and pin directory of the eBPF masquerade.
    ebpf: Option<(PathBuf, PathBuf)>,
}

fn new_ns(name: &str) -> Result<String> {
    netattach::netns::create(name).with_context(|| format!("create namespace {name}"))?;
    ip(name, &["link", "set", "lo", "up"])?;
    Ok(name.to_string())
}

/// A veth pair `a` in `ns_a`, `b` in `ns_b`, both up.
fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
    let tmp = format!("vlbtmp{}", std::process::id() % 100000);
    ip(
        ns_a,
        &["link", "add", a, "type", "veth", "peer", "name", &tmp],
    )?;
    ip(ns_a, &["link", "set", &tmp, "netns", ns_b])?;
    ip(ns_b, &["link", "set", &tmp, "name", b])?;
    ip(ns_a, &["link", "set", a, "up"])?;
    ip(ns_b, &["link", "set", b, "up"])?;
    Ok(())
}

fn tx_off(ns: &str, dev: &str) -> Result<()> {
    sh(ns, &["ethtool", "-K", dev, "tx", "off"]).map(|_| ())
}

impl Topology {
    fn build(path: Path, tag: &str) -> Result<Self> {
        let guest = new_ns(&format!("vlb-{tag}-g"))?;
        let peer = match new_ns(&format!("vlb-{tag}-w")) {
            Ok(p) => p,
            Err(e) => {
                let _ = netattach::netns::delete(&guest);
                return Err(e);
            }
        };
        let mut t = Topology {
            path,
            guest,
            pod: None,
            peer,
            target: PEER_IP.parse()?,
            target6: PEER_IP6.parse()?,
            servers: Vec::new(),
            redirect: None,
            ebpf: None,
        };
        t.wire()?;
        t.start_servers()?;
        Ok(t)
    }

    fn wire(&mut self) -> Result<()> {
        let (g, w) = (self.guest.clone(), self.peer.clone());
        let addr6 = |ns: &str, a: &str, dev: &str| -> Result<()> {
            ip(ns, &["addr", "add", a, "dev", dev, "nodad"]).map(|_| ())
        };
        if self.path == Path::Bare {
            veth(&g, "g0", &w, "eth0")?;
            ip(&g, &["addr", "add", &format!("{BARE_IP}/24"), "dev", "g0"])?;
            ip(
                &w,
                &["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"],
            )?;
            addr6(&g, &format!("{BARE_IP6}/64"), "g0")?;
            addr6(&w, &format!("{PEER_IP6}/64"), "eth0")?;
        } else {
            let p = new_ns(&format!("{}p", &g[..g.len() - 1]))?;
            self.pod = Some(p.clone());
            veth(&g, "g0", &p, "tap0")?;
            veth(&p, "eth0", &w, "eth0")?;
            if self.path == Path::Redirect {
                // A wire through the pod namespace: the guest and the peer
                // share a subnet (frames keep their MACs, ARP passes).
                ip(&g, &["addr", "add", &format!("{BARE_IP}/24"), "dev", "g0"])?;
                addr6(&g, &format!("{BARE_IP6}/64"), "g0")?;
            } else {
                ip(&g, &["addr", "add", &format!("{GUEST_IP}/24"), "dev", "g0"])?;
                ip(&g, &["route", "add", "default", "via", GATEWAY_IP])?;
                addr6(&g, &format!("{GUEST_IP6}/120"), "g0")?;
                ip(&g, &["-6", "route", "add", "default", "via", GATEWAY_IP6])?;
            }
            addr6(&p, &format!("{GATEWAY_IP6}/120"), "tap0")?;
            addr6(&p, &format!("{POD_IP6}/64"), "eth0")?;
            ip(&p, &["-6", "route", "add", "default", "via", PEER_IP6])?;
            addr6(&w, &format!("{PEER_IP6}/64"), "eth0")?;
            sh(&p, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
            ip(
                &p,
                &["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "tap0"],
            )?;
            ip(&p, &["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"])?;
            ip(&p, &["route", "add", "default", "via", PEER_IP])?;
            ip(
                &w,
                &["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"],
            )?;
            sh(&p, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            match self.path {
                Path::Routed => {
                    ip(&w, &["route", "add", "10.0.2.0/24", "via", POD_IP])?;
                    ip(
                        &w,
                        &["-6", "route", "add", "fd10:0:2::/120", "via", POD_IP6],
                    )?;
                }
                Path::Nftables => {
                    // Exactly the binder's ruleset (all ports forwarded in).
                    let rules = vm_binder::masquerade::Ruleset {
                        table: vm_binder::masquerade::table_name("default"),
                        pod_if: "eth0".into(),
                        tap: "tap0".into(),
                        pod_v4: Some(POD_IP.parse()?),
                        pod_v6: Some(POD_IP6.parse()?),
                        guest_v4: GUEST_IP.parse()?,
                        guest_v6: Some(GUEST_IP6.parse()?),
                        forward: vm_binder::masquerade::Forward::All,
                        masquerade_v4: true,
                        masquerade_v6: true,
                    };
                    let netns = PathBuf::from("/run/netns").join(&p);
                    netattach::netns::run_in(&netns, move || vm_binder::masquerade::load(&rules))?
                        .context("load the masquerade ruleset")?;
                }
                Path::Redirect => {
                    sh(&p, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
                    sh(&p, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
                    let netns = PathBuf::from("/run/netns").join(&p);
                    let r = netattach::netns::run_in(&netns, || {
                        virtlink_xdp::redirect::attach_redirect_peer(&[
                            ("tap0", "eth0"),
                            ("eth0", "tap0"),
                        ])
                    })?
                    .context("attach redirect_peer")?;
                    self.redirect = Some(r);
                }
                Path::Ebpf => self.attach_ebpf(&g, &p)?,
                Path::Bare => {}
            }
        }
        tx_off(&g, "g0")?;
        tx_off(&w, "eth0")?;
        // Short connections: the generator must not run out of ports.
        sh(&g, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
        Ok(())
    }

    /// The binder's eBPF masquerade between `tap0` and `eth0` of pod `p`,
    /// pinned on a bpffs of its own; the pod's forwarding is turned off to
    /// show the programs carry the traffic.
    fn attach_ebpf(&mut self, g: &str, p: &str) -> Result<()> {
        let root = PathBuf::from(format!("/run/virtlink-bench-bpffs-{p}"));
        virtlink_xdp::bpffs::ensure_mounted(&root).context("mount bpffs")?;
        let pin_dir = virtlink_xdp::bpffs::pod_dir(&root, p);
        self.ebpf = Some((root, pin_dir.clone()));
        sh(p, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
        sh(p, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])?;
        let link: serde_json::Value = serde_json::from_str(&ip(g, &["-j", "link", "show", "g0"])?)?;
        let mac: vm_binder::mac::Mac = link[0]["address"]
            .as_str()
            .context("guest MAC")?
            .parse()
            .map_err(|e| anyhow::anyhow!("guest MAC: {e}"))?;
        let spec = virtlink_xdp::nat::NatSpec {
            pod_interface: "eth0".into(),
            guest_interface: "tap0".into(),
            ipv4: Some(virtlink_xdp::nat::Addrs {
                pod: POD_IP.parse()?,
                guest: GUEST_IP.parse()?,
                gateway: GATEWAY_IP.parse()?,
            }),
            ipv6: Some(virtlink_xdp::nat::Addrs {
                pod: POD_IP6.parse()?,
                guest: GUEST_IP6.parse()?,
                gateway: GATEWAY_IP6.parse()?,
            }),
            guest_mac: mac.octets(),
            gateway_mac: None,
            anti_spoof: true,
            forward: virtlink_xdp::nat::Forward::All,
            istio: false,
            nat_ports: virtlink_xdp::nat::DEFAULT_NAT_PORTS,
            timeouts: virtlink_xdp::nat::Timeouts::default(),
            pin_dir,
        };
        let netns = PathBuf::from("/run/netns").join(p);
        netattach::netns::run_in(&netns, move || virtlink_xdp::nat::attach(&spec))?
            .context("attach the eBPF masquerade")?;
        Ok(())
    }

    fn start_servers(&mut self) -> Result<()> {
        let w = self.peer.clone();
        let spawn = |args: &[&str]| -> Result<Child> {
            Command::new("ip")
                .args(["netns", "exec", &w, "taskset", "-c", "1"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {}", args[0]))
        };
        let port = IPERF_PORT.to_string();
        self.servers.push(spawn(&["iperf3", "-s", "-p", &port])?);
        let sport = SOCKPERF_PORT.to_string();
        self.servers.push(spawn(&[
            "sockperf", "sr", "--tcp", "-i", PEER_IP, "-p", &sport,
        ])?);
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    fn guest_cmd(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["taskset", "-c", "0"];
        all.extend_from_slice(args);
        sh(&self.guest, &all)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.redirect = None;
        if let Some((root, pin_dir)) = self.ebpf.take() {
            let _ = virtlink_xdp::nat::detach(&pin_dir);
            let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&root);
        }
        for ns in [Some(&self.guest), self.pod.as_ref(), Some(&self.peer)]
            .into_iter()
            .flatten()
        {
            let _ = netattach::netns::delete(ns);
        }
    }
}

/// One round's figures for one path.
#[derive(Debug, Default, Clone)]
struct Sample {
    tcp_gbps: f64,
    /// Busy CPU cores (whole machine) per Gbit/s during the TCP run.
    cpu_per_gbps: f64,
    /// The generator's own CPU use during the UDP run, percent of a core.
    udp_sender_cpu: f64,
    udp_pps: f64,
    rtt_us: f64,
    conn_per_s: f64,
    /// IPv6: iperf3 TCP and the in-process TCP ping-pong.
    tcp6_gbps: f64,
    rtt6_us: f64,
}

/// Busy and total jiffies of all CPUs.
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

fn tcp(t: &Topology, seconds: u32) -> Result<(f64, f64)> {
    tcp_to(t, &t.target.to_string(), seconds)
}

fn tcp_to(t: &Topology, target: &str, seconds: u32) -> Result<(f64, f64)> {
    let (b0, t0) = cpu_jiffies()?;
    let out = t.guest_cmd(&[
        "iperf3",
        "-c",
        target,
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ])?;
    let (b1, t1) = cpu_jiffies()?;
    let gbps = iperf3_tcp_gbps(&iperf3_json(&out)?)?;
    let cores = 2.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    Ok((gbps, cores / gbps.max(1e-9)))
}

fn udp(t: &Topology, seconds: u32) -> Result<(f64, f64)> {
    let target = t.target.to_string();
    let out = t.guest_cmd(&[
        "iperf3",
        "-c",
        &target,
        "-p",
        &IPERF_PORT.to_string(),
        "-u",
        "-l",
        "64",
        "-b",
        "0",
        "-t",
        &seconds.to_string(),
        "-J",
    ])?;
    let v = iperf3_json(&out)?;
    let cpu = v["end"]["cpu_utilization_percent"]["host_total"]
        .as_f64()
        .unwrap_or(0.0);
    Ok((iperf3_udp_pps(&v, seconds)?, cpu))
}

fn rtt(t: &Topology, seconds: u32) -> Result<f64> {
    let target = t.target.to_string();
    let out = t.guest_cmd(&[
        "sockperf",
        "pp",
        "--tcp",
        "-i",
        &target,
        "-p",
        &SOCKPERF_PORT.to_string(),
        "-m",
        "64",
        "-t",
        &seconds.to_string(),
        "--full-rtt",
    ])?;
    parse_sockperf_avg(&out).with_context(|| format!("sockperf output: {out}"))
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Connections per second: the guest connects, sends one byte, reads the
/// answer and the server's close, and closes; one after another.
fn conn_rate(t: &Topology, seconds: u32) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let peer = PathBuf::from("/run/netns").join(&t.peer);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let server = std::thread::spawn(move || -> Result<()> {
        netattach::netns::run_in(&peer, move || -> Result<()> {
            pin(1);
            let l = TcpListener::bind((PEER_IP, CONN_PORT))?;
            l.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 1];
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        if s.read_exact(&mut buf).is_ok() {
                            let _ = s.write_all(&buf);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::yield_now();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })?
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("connection server did not start")?;
    let guest = PathBuf::from("/run/netns").join(&t.guest);
    let addr = SocketAddr::from((t.target, CONN_PORT));
    let result = netattach::netns::run_in(&guest, move || -> Result<f64> {
        pin(0);
        let start = Instant::now();
        let until = start + Duration::from_secs(u64::from(seconds));
        let mut n = 0u64;
        let mut buf = [0u8; 1];
        while Instant::now() < until {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .with_context(|| format!("connect {addr}"))?;
            s.set_nodelay(true)?;
            s.write_all(b"x")?;
            s.read_exact(&mut buf)?;
            // The server closes first: its side keeps TIME_WAIT.
            let _ = s.read(&mut buf);
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    });
    stop.store(true, Ordering::Relaxed);
    let served = server.join();
    let rate = result??;
    match served {
        Ok(r) => r?,
        Err(_) => bail!("connection server panicked"),
    }
    Ok(rate)
}

/// TCP ping-pong over IPv6: 64 bytes there and back, one after another, for
/// `seconds`; the mean round trip in µs.
fn rtt6(t: &Topology, seconds: u32) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let peer = PathBuf::from("/run/netns").join(&t.peer);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let target = t.target6;
    let server = std::thread::spawn(move || -> Result<()> {
        netattach::netns::run_in(&peer, move || -> Result<()> {
            pin(1);
            let l = TcpListener::bind((target, RTT6_PORT))?;
            let _ = ready_tx.send(());
            let (mut s, _) = l.accept()?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if s.read_exact(&mut buf).is_err() {
                    break;
                }
                s.write_all(&buf)?;
            }
            Ok(())
        })?
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("IPv6 ping-pong server did not start")?;
    let guest = PathBuf::from("/run/netns").join(&t.guest);
    let addr = SocketAddr::from((target, RTT6_PORT));
    let result = netattach::netns::run_in(&guest, move || -> Result<f64> {
        pin(0);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        let mut buf = [0x5au8; 64];
        let start = Instant::now();
        let until = start + Duration::from_secs(u64::from(seconds));
        let mut n = 0u64;
        while Instant::now() < until {
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            n += 1;
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64)
    });
    stop.store(true, Ordering::Relaxed);
    let served = server.join();
    let rtt = result??;
    match served {
        Ok(r) => r?,
        Err(_) => bail!("IPv6 ping-pong server panicked"),
    }
    Ok(rtt)
}

fn measure(t: &Topology, seconds: u32) -> Result<Sample> {
    let (tcp_gbps, cpu_per_gbps) = tcp(t, seconds).context("TCP")?;
    let (udp_pps, udp_sender_cpu) = udp(t, seconds).context("UDP")?;
    let rtt_us = rtt(t, seconds).context("RTT")?;
    let conn_per_s = conn_rate(t, seconds.min(3)).context("connections")?;
    let (tcp6_gbps, _) = tcp_to(t, &t.target6.to_string(), seconds).context("TCP over IPv6")?;
    let rtt6_us = rtt6(t, seconds).context("RTT over IPv6")?;
    Ok(Sample {
        tcp_gbps,
        cpu_per_gbps,
        udp_sender_cpu,
        udp_pps,
        rtt_us,
        conn_per_s,
        tcp6_gbps,
        rtt6_us,
    })
}

/// Medians of one path's samples.
fn summary(samples: &[Sample]) -> Sample {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect::<Vec<_>>());
    Sample {
        tcp_gbps: m(|s| s.tcp_gbps),
        cpu_per_gbps: m(|s| s.cpu_per_gbps),
        udp_sender_cpu: m(|s| s.udp_sender_cpu),
        udp_pps: m(|s| s.udp_pps),
        rtt_us: m(|s| s.rtt_us),
        conn_per_s: m(|s| s.conn_per_s),
        tcp6_gbps: m(|s| s.tcp6_gbps),
        rtt6_us: m(|s| s.rtt6_us),
    }
}

pub fn run(paths: &[Path], rounds: usize, seconds: u32) -> Result<()> {
    for tool in ["iperf3", "sockperf", "ethtool", "nft", "taskset"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing: run scripts/setup.sh");
        }
    }
    let tag = format!("{}", std::process::id() % 10000);
    let mut all = vec![Path::Bare];
    all.extend(paths.iter().copied().filter(|p| *p != Path::Bare));
    eprintln!("[bench] building {} paths", all.len());
    let mut topologies = Vec::new();
    for p in &all {
        topologies.push(
            Topology::build(*p, &format!("{tag}{}", p.short()))
                .with_context(|| format!("build the {} path", p.short()))?,
        );
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); all.len()];
    for round in 0..rounds {
        // Rotate the order each round so no path always runs first.
        for k in 0..topologies.len() {
            let i = (k + round) % topologies.len();
            let t = &topologies[i];
            eprintln!("[bench] round {}/{rounds}: {}", round + 1, t.path.short());
            samples[i].push(measure(t, seconds).with_context(|| t.path.label())?);
        }
    }
    let sums: Vec<Sample> = samples.iter().map(|s| summary(s)).collect();
    print_table(&all, &sums, rounds, seconds);
    Ok(())
}

fn print_table(paths: &[Path], sums: &[Sample], rounds: usize, seconds: u32) {
    let bare = &sums[0];
    println!(
        "\nMedians of {rounds} interleaved round(s), {seconds} s per tool; ratios to the bare pair \
         (RTT as bare/path, so higher is better everywhere)\n"
    );
    println!(
        "| path | TCP tx-off Gbit/s | 64 B UDP pps | TCP RTT µs | conn/s | TCP | pps | RTT | conn/s | CPU cores per Gbit/s | UDP sender CPU % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (p, s) in paths.iter().zip(sums) {
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.0} | {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.3} | {:.0} |",
            p.label(),
            s.tcp_gbps,
            s.udp_pps,
            s.rtt_us,
            s.conn_per_s,
            s.tcp_gbps / bare.tcp_gbps,
            s.udp_pps / bare.udp_pps,
            bare.rtt_us / s.rtt_us,
            s.conn_per_s / bare.conn_per_s,
            s.cpu_per_gbps,
            s.udp_sender_cpu,
        );
    }
    println!("\nIPv6 (NAT66 for the masquerade paths):\n");
    println!("| path | TCP tx-off Gbit/s | TCP ping-pong RTT µs | TCP | RTT |");
    println!("|---|---|---|---|---|");
    for (p, s) in paths.iter().zip(sums) {
        println!(
            "| {} | {:.2} | {:.1} | {:.2}x | {:.2}x |",
            p.label(),
            s.tcp6_gbps,
            s.rtt6_us,
            s.tcp6_gbps / bare.tcp6_gbps,
            bare.rtt6_us / s.rtt6_us,
        );
    }
    let find = |p: Path| paths.iter().position(|x| *x == p).map(|i| &sums[i]);
    let ratio = |name: &str, a: &Sample, b: &Sample| {
        println!(
            "{name}: TCP {:.2}x, pps {:.2}x, RTT {:.2}x, conn/s {:.2}x",
            a.tcp_gbps / b.tcp_gbps,
            a.udp_pps / b.udp_pps,
            b.rtt_us / a.rtt_us,
            a.conn_per_s / b.conn_per_s
        );
    };
    println!();
    if let (Some(nft), Some(route)) = (find(Path::Nftables), find(Path::Routed)) {
        ratio("nftables masquerade / routing", nft, route);
    }
    if let Some(ebpf) = find(Path::Ebpf) {
        for (p, name) in [
            (
                Path::Nftables,
                "eBPF masquerade / nftables masquerade (floors 1.3x, 1.3x, 1.2x, 1.15x)",
            ),
            (Path::Routed, "eBPF masquerade / routing"),
            (Path::Redirect, "eBPF masquerade / redirect_peer"),
        ] {
            if let Some(base) = find(p) {
                ratio(name, ebpf, base);
            }
        }
        if let Some(nft) = find(Path::Nftables) {
            println!(
                "IPv6: eBPF NAT66 / nftables masquerade: TCP {:.2}x, RTT {:.2}x",
                ebpf.tcp6_gbps / nft.tcp6_gbps,
                nft.rtt6_us / ebpf.rtt6_us
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sockperf_summary() {
        let out = "sockperf: ====> avg-rtt=21.034 (std-dev=3.1, mean-ad=1.2)\n";
        assert_eq!(parse_sockperf_avg(out), Some(21.034));
        assert_eq!(parse_sockperf_avg("sockperf: avg-lat= 10.5"), None);
        assert_eq!(parse_sockperf_avg("nothing"), None);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
