//! Helpers for vm-binder's integration tests: a pod namespace wired to a
//! "network" namespace (vm-tests' namespace fixtures, removed on drop), a
//! fake guest on a tap (raw Ethernet frames) and a real guest booted with
//! what `bind` produced.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
pub use vm_tests::netns::{require_root, unique_name, veth, Netns};

/// A pod namespace whose `eth0` is a veth to a "network" namespace.
pub struct Pod {
    pub pod: Netns,
    pub net: Netns,
}

pub const POD_IP: &str = "10.99.0.5";
pub const NET_IP: &str = "10.99.0.1";
pub const POD_IP6: &str = "fd99::5";
pub const NET_IP6: &str = "fd99::1";

impl Pod {
    pub fn new() -> Result<Self> {
        let pod = Netns::with_prefix("vbp")?;
        let net = Netns::with_prefix("vbn")?;
        veth(&pod, "eth0", &net, "eth0")?;
        pod.ip(&["link", "set", "eth0", "mtu", "1450"])?;
        pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"])?;
        pod.ip(&["route", "add", "default", "via", NET_IP])?;
        pod.ip(&["route", "add", "10.96.0.0/12", "via", NET_IP])?;
        net.ip(&["link", "set", "eth0", "mtu", "1450"])?;
        net.ip(&["addr", "add", &format!("{NET_IP}/24"), "dev", "eth0"])?;
        Ok(Pod { pod, net })
    }

    /// Gives the pod and its network IPv6 addresses next to the IPv4 ones
    /// (`POD_IP6`, `NET_IP6`, the network as the pod's IPv6 default route).
    pub fn add_ipv6(&self) -> Result<()> {
        let pod_addr = format!("{POD_IP6}/64");
        self.pod
            .ip(&["addr", "add", &pod_addr, "dev", "eth0", "nodad"])?;
        self.pod
            .ip(&["-6", "route", "add", "default", "via", NET_IP6])?;
        let net_addr = format!("{NET_IP6}/64");
        self.net
            .ip(&["addr", "add", &net_addr, "dev", "eth0", "nodad"])?;
        Ok(())
    }
}

/// Fields are in network byte order on the wire.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP around `payload`.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

/// Ethernet + IPv6 + UDP (with its mandatory checksum) around `payload`.
pub fn udp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let c = checksum(&pseudo);
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&udp);
    f
}

/// (source IP, UDP destination port, payload) of an IPv6/UDP frame whose
/// UDP checksum is right (so a translation that broke it is caught).
pub fn parse_udp6(frame: &[u8]) -> Option<(std::net::Ipv6Addr, u16, &[u8])> {
    if frame.len() < 62 || frame[12..14] != [0x86, 0xdd] || frame[20] != 17 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&frame[22..38]);
    let udp = frame.get(54..)?;
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let udp = udp.get(..len)?;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[22..54]);
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(udp);
    if checksum(&pseudo) != 0 {
        return None;
    }
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    Some((std::net::Ipv6Addr::from(src), dport, &udp[8..]))
}

/// (source IP, UDP destination port, payload) of an IPv4/UDP frame.
pub fn parse_udp(frame: &[u8]) -> Option<(Ipv4Addr, u16, &[u8])> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dport = u16::from_be_bytes([*frame.get(udp + 2)?, *frame.get(udp + 3)?]);
    let len = usize::from(u16::from_be_bytes([
        *frame.get(udp + 4)?,
        *frame.get(udp + 5)?,
    ]));
    Some((src, dport, frame.get(udp + 8..udp + len)?))
}

/// The guest's end of a tap: raw Ethernet frames.
pub struct FakeGuest {
    pub tap: File,
    pub mac: [u8; 6],
}

impl FakeGuest {
    /// Attaches to `tap` inside the namespace at `netns`.
    pub fn attach(netns: &std::path::Path, tap: &str, mac: [u8; 6]) -> Result<Self> {
        let name = tap.to_string();
        let file = netattach::netns::run_in(netns, move || vm_binder::tap::attach(&name))??;
        let flags = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
        flags.insert(nix::fcntl::OFlag::O_NONBLOCK);
        nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Self { tap: file, mac })
    }

    pub fn dhcp_message(
        &self,
        kind: MessageType,
        xid: u32,
        requested: Option<Ipv4Addr>,
    ) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(xid)
            .set_chaddr(&self.mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(ip) = requested {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        m
    }

    pub fn send_dhcp(&mut self, m: &Message) -> Result<()> {
        let payload = vm_binder::dhcp::encode(m).context("encode")?;
        let frame = udp_frame(
            self.mac,
            [0xff; 6],
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            68,
            67,
            &payload,
        );
        self.tap.write_all(&frame)?;
        Ok(())
    }

    /// Waits for a DHCP reply with `xid`, resending `request` every second.
    pub fn exchange(
        &mut self,
        request: &Message,
        timeout: Duration,
    ) -> Result<(Ipv4Addr, Message)> {
        let deadline = Instant::now() + timeout;
        let mut next_send = Instant::now();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if Instant::now() >= next_send {
                self.send_dhcp(request)?;
                next_send = Instant::now() + Duration::from_secs(1);
            }
            match self.tap.read(&mut buf) {
                Ok(n) => {
                    if let Some((src, 68, payload)) = parse_udp(&buf[..n]) {
                        if let Some(m) = vm_binder::dhcp::decode(payload) {
                            if m.xid() == request.xid() && m.opcode() == Opcode::BootReply {
                                return Ok((src, m));
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no DHCP reply within {timeout:?}")
    }
}

pub fn msg_type(m: &Message) -> Option<MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// Binds `vm` (JSON) in the pod with a resolv.conf naming 10.96.0.10, boots
/// a guest with exactly the QEMU arguments `bind` produced and DHCP on, and
/// waits until it is ready. The guest is dropped (powered off) by the caller.
pub fn bind_and_boot(
    pod: &Pod,
    vm_json: &str,
    name_prefix: &str,
) -> Result<(
    vm_binder::Vm,
    vm_binder::Binding,
    vm_tests::Vm,
    tempfile::TempDir,
)> {
    bind_and_boot_with(
        pod,
        vm_json,
        name_prefix,
        "nameserver 10.96.0.10\n",
        &[],
        |_| {},
    )
}

/// [`bind_and_boot`] with the pod's resolv.conf text, extra guest kernel
/// command-line words (such as `virtlink.dhcp6=1`) and options changed by
/// `tweak`.
pub fn bind_and_boot_with(
    pod: &Pod,
    vm_json: &str,
    name_prefix: &str,
    resolv_conf: &str,
    cmdline: &[&str],
    tweak: impl FnOnce(&mut vm_binder::BindOptions),
) -> Result<(
    vm_binder::Vm,
    vm_binder::Binding,
    vm_tests::Vm,
    tempfile::TempDir,
)> {
    let dir = tempfile::tempdir()?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, resolv_conf)?;
    let vm = vm_binder::Vm::parse(vm_json)?;
    let mut opts = vm_binder::BindOptions {
        resolv_conf: resolv,
        ..Default::default()
    };
    tweak(&mut opts);
    let binding = vm_binder::bind(&vm, pod.pod.path(), &[], &opts)?;
    let mut spec = vm_tests::VmSpec::new(unique_name(name_prefix))
        .netns(pod.pod.path())
        .qemu_args(binding.qemu_args())
        .cmdline("virtlink.dhcp=1");
    for word in cmdline {
        spec = spec.cmdline(*word);
    }
    let guest = vm_tests::Vm::boot(spec).context("boot guest")?;
    guest.wait_ready(Duration::from_secs(180))?;
    Ok((vm, binding, guest, dir))
}
