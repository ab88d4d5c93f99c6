//! The masquerade binding's eBPF NAT, per pod: programs attached with tcx
//! to the guest's tap (ingress) and the pod interface (ingress; egress in
//! Istio mode), links and maps pinned in the pod's pin directory.
//!
//! [`attach`] on a directory that already holds pins reuses the pinned maps
//! (conntrack survives) and swaps the programs of the pinned links
//! atomically, so restarting the loader keeps established connections.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray};
use aya::programs::TcAttachType;
use virtlink_xdp_common::{
    Counter, Counters, CtEntry, FlowKey, NatConfig, PortKey, CONNTRACK_MAX, DIR_HAIRPIN, DIR_OUT,
    ENVOY_PORTS, FLAG_ANTI_SPOOF, FLAG_FORWARD_ALL, FLAG_GUEST_PEER, FLAG_ISTIO, FLAG_POD_PEER,
    FLAG_V4, FLAG_V6, IPPROTO_TCP, IPPROTO_UDP, MAP_CONFIG, MAP_CONNTRACK, MAP_COUNTERS, MAP_JUMP,
    MAP_PORTS, NAT_JUMP_PROGRAMS, PORT_DENY, PORT_FORWARD, PROG_GUEST_INGRESS, PROG_POD_EGRESS,
    PROG_POD_INGRESS, TCP_CLOSED, TCP_CLOSING, TCP_ESTABLISHED,
};

use crate::{attach as attach_prog, bpffs, classifier, ifindex, load, map_err, Error, Result};

/// NAT source ports: above Linux's default `ip_local_port_range`
/// (32768-60999), and reserved in the pod's namespace as well
/// (`ip_local_reserved_ports`), so the pod's own sockets never get them.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (32768, 60999);
/// Where the pod's own ephemeral ports go when its `ip_local_port_range`
/// overlaps the NAT range (below it, above the well-known and Envoy ports).
pub const POD_LOCAL_PORTS: (u16, u16) = (16384, 32767);

/// Which new inbound connections to the pod IP reach the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Every TCP and UDP port except Envoy's.
    All,
    /// Only these `(IPPROTO_TCP | IPPROTO_UDP, port)` (Envoy's never).
    Ports(Vec<(u8, u16)>),
}

/// Conntrack timeouts, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    /// TCP established as RFC 5382 asks (2 h 4 min), the others as nf_conntrack.
    fn default() -> Self {
        Self {
            tcp_syn: 120,
            tcp_established: 7440,
            tcp_closing: 120,
            udp: 120,
            icmp: 30,
        }
    }
}

/// One family's addresses: the pod's (what the guest's traffic is
/// translated to), the guest's, and the gateway's on the guest's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs<A> {
    pub pod: A,
    pub guest: A,
    pub gateway: A,
}

/// Everything the NAT of one pod needs.
#[derive(Debug, Clone)]
pub struct NatSpec {
    /// The pod interface with the pod IP (`eth0`).
    pub pod_interface: String,
    /// The guest's tap.
    pub guest_interface: String,
    /// IPv4 translation (`None`: IPv4 passes to the pod's stack untouched).
    pub ipv4: Option<Addrs<Ipv4Addr>>,
    /// IPv6 translation (NAT66) to the pod's IPv6 address (`None`: IPv6
    /// passes untouched). At least one family must be given.
    pub ipv6: Option<Addrs<Ipv6Addr>>,
    pub guest_mac: [u8; 6],
    /// The source MAC of frames the programs send to the guest: the MAC the
    /// guest knows for its gateway. `None`: the guest interface's own MAC
    /// (the gateway address is on the tap); set it when the gateway address
    /// lives on a bridge in front of the tap (KubeVirt's `k6t-` bridge).
    pub gateway_mac: Option<[u8; 6]>,
    /// Drop and count frames from the tap not from the guest's MAC and IP.
    pub anti_spoof: bool,
    pub forward: Forward,
    /// Translated packets go through the pod's stack (see docs/xdp.md).
    pub istio: bool,
    /// Inclusive NAT source port range.
    pub nat_ports: (u16, u16),
    pub timeouts: Timeouts,
    /// The pod's pin directory on bpffs ([`bpffs::pod_dir`]).
    pub pin_dir: PathBuf,
}

fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// An IPv6 address as the programs see it: four words in packet order.
fn raw6(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    let mut w = [0u32; 4];
    for (i, c) in o.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

fn from_raw6(w: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, v) in w.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// A raw address of `family` (4 or 6).
fn ip_of(family: u8, w: [u32; 4]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(from_raw6(w))
    } else {
        IpAddr::V4(Ipv4Addr::from(w[0].to_ne_bytes()))
    }
}

fn link_pin(dir: &Path, prog: &str) -> PathBuf {
    dir.join(format!("link_{prog}"))
}

/// Reads `/proc/sys/net/ipv4/ip_local_port_range` of the calling thread's
/// namespace.
fn local_port_range() -> Result<(u16, u16)> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        step: "read",
        path: path.into(),
        source,
    })?;
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Error::Config(format!("{path}: {text:?}"))),
    }
}

/// Sets `/proc/sys/net/ipv4/ip_local_port_range` of the calling thread's
/// namespace.
fn set_local_port_range(range: (u16, u16)) -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    std::fs::write(path, format!("{} {}", range.0, range.1)).map_err(|source| Error::Io {
        step: "write",
        path: path.into(),
        source,
    })
}

/// Adds `min-max` to `ip_local_reserved_ports` of the calling thread's
/// namespace (kept when already there).
fn reserve_ports(min: u16, max: u16) -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let range = format!("{min}-{max}");
    let current = std::fs::read_to_string(path).map_err(|source| Error::Io {
        step: "read",
        path: path.into(),
        source,
    })?;
    let current = current.trim();
    if current.split(',').any(|r| r == range) {
        return Ok(());
    }
    let value = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    std::fs::write(path, &value).map_err(|source| Error::Io {
        step: "write",
        path: path.into(),
        source,
    })
}

/// What [`attach`] learns about the interfaces in the pod's namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interfaces {
    pub pod_ifindex: u32,
    pub guest_ifindex: u32,
    /// The guest interface's own MAC.
    pub tap_mac: [u8; 6],
    /// The pod interface / the guest's interface is a veth.
    pub pod_veth: bool,
    pub guest_veth: bool,
}

/// The [`NatConfig`] for `spec`.
pub fn config(spec: &NatSpec, ifs: &Interfaces, local: (u16, u16)) -> NatConfig {
    let mut flags = 0;
    if matches!(spec.forward, Forward::All) {
        flags |= FLAG_FORWARD_ALL;
    }
    if spec.anti_spoof {
        flags |= FLAG_ANTI_SPOOF;
    }
    if spec.istio {
        flags |= FLAG_ISTIO;
    }
    if ifs.pod_veth {
        flags |= FLAG_POD_PEER;
    }
    if ifs.guest_veth {
        flags |= FLAG_GUEST_PEER;
    }
    if spec.ipv4.is_some() {
        flags |= FLAG_V4;
    }
    if spec.ipv6.is_some() {
        flags |= FLAG_V6;
    }
    let v4 = spec
        .ipv4
        .map(|a| (raw(a.pod), raw(a.guest), raw(a.gateway)));
    let v6 = spec
        .ipv6
        .map(|a| (raw6(a.pod), raw6(a.guest), raw6(a.gateway)));
    NatConfig {
        pod_ip: v4.map_or(0, |a| a.0),
        guest_ip: v4.map_or(0, |a| a.1),
        gateway_ip: v4.map_or(0, |a| a.2),
        pod_ifindex: ifs.pod_ifindex,
        guest_ifindex: ifs.guest_ifindex,
        flags,
        timeout_tcp_syn: spec.timeouts.tcp_syn,
        timeout_tcp_established: spec.timeouts.tcp_established,
        timeout_tcp_closing: spec.timeouts.tcp_closing,
        timeout_udp: spec.timeouts.udp,
        timeout_icmp: spec.timeouts.icmp,
        port_min: spec.nat_ports.0,
        port_max: spec.nat_ports.1,
        local_port_min: local.0,
        local_port_max: local.1,
        guest_mac: spec.guest_mac,
        gateway_mac: spec.gateway_mac.unwrap_or(ifs.tap_mac),
        pod_ip6: v6.map_or([0; 4], |a| a.0),
        guest_ip6: v6.map_or([0; 4], |a| a.1),
        gateway_ip6: v6.map_or([0; 4], |a| a.2),
    }
}

/// The port map's contents for `forward`: listed ports forwarded, Envoy's
/// denied (also with [`Forward::All`]).
pub fn port_entries(forward: &Forward) -> Vec<(PortKey, u8)> {
    let mut out = std::collections::BTreeMap::new();
    if let Forward::Ports(list) = forward {
        for &(proto, port) in list {
            out.insert((proto, port), PORT_FORWARD);
        }
    }
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        for port in ENVOY_PORTS {
            out.insert((proto, port), PORT_DENY);
        }
    }
    out.into_iter()
        .map(|((proto, port), v)| {
            (
                PortKey {
                    port,
                    proto,
                    _pad: 0,
                },
                v,
            )
        })
        .collect()
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub pin_dir: PathBuf,
    /// Programs that replaced the ones of already pinned links.
    pub replaced: Vec<&'static str>,
}

/// Loads and attaches the NAT for one pod (or updates it in place); call on
/// a thread in the pod's network namespace.
pub fn attach(spec: &NatSpec) -> Result<Attached> {
    if spec.ipv4.is_none() && spec.ipv6.is_none() {
        return Err(Error::Config(
            "no address family to translate (neither IPv4 nor IPv6 given)".into(),
        ));
    }
    if spec.gateway_mac == Some([0; 6]) || spec.guest_mac == [0; 6] {
        return Err(Error::Config(format!(
            "zero MAC (guest {:02x?}, gateway {:02x?})",
            spec.guest_mac, spec.gateway_mac
        )));
    }
    if spec.nat_ports.0 > spec.nat_ports.1 || spec.nat_ports.0 < 1024 {
        return Err(Error::Config(format!(
            "NAT port range {}-{}",
            spec.nat_ports.0, spec.nat_ports.1
        )));
    }
    let mut local = local_port_range()?;
    if spec.nat_ports.0 <= local.1 && local.0 <= spec.nat_ports.1 {
        // The guest's ephemeral ports (Linux: 32768-60999) are the NAT
        // range, kept as they are where possible; the pod's own sockets
        // take theirs from below.
        let moved = POD_LOCAL_PORTS;
        if moved.0 <= spec.nat_ports.1 && spec.nat_ports.0 <= moved.1 {
            return Err(Error::Config(format!(
                "NAT port range {}-{} overlaps both the pod's ip_local_port_range {}-{} and {}-{}",
                spec.nat_ports.0, spec.nat_ports.1, local.0, local.1, moved.0, moved.1
            )));
        }
        set_local_port_range(moved)?;
        tracing::info!(
            nat = ?spec.nat_ports,
            was = ?local,
            now = ?moved,
            "moved the pod's ip_local_port_range below the NAT range"
        );
        local = moved;
    }
    reserve_ports(spec.nat_ports.0, spec.nat_ports.1)?;
    let ifs = Interfaces {
        pod_ifindex: ifindex(&spec.pod_interface)?,
        guest_ifindex: ifindex(&spec.guest_interface)?,
        tap_mac: crate::mac(&spec.guest_interface)?,
        pod_veth: crate::driver(&spec.pod_interface)? == "veth",
        guest_veth: crate::driver(&spec.guest_interface)? == "veth",
    };
    tracing::debug!(?ifs, "interfaces");
    bpffs::create_dir(&spec.pin_dir)?;
    drop_stale_pins(&spec.pin_dir)?;

    let mut ebpf = load(Some(&spec.pin_dir))?;
    {
        let map = ebpf
            .map_mut(MAP_CONFIG)
            .ok_or(Error::MissingMap(MAP_CONFIG))?;
        let mut cfg: Array<_, NatConfig> =
            Array::try_from(map).map_err(map_err(MAP_CONFIG, "open"))?;
        cfg.set(0, config(spec, &ifs, local), 0)
            .map_err(map_err(MAP_CONFIG, "write"))?;
    }
    {
        let map = ebpf
            .map_mut(MAP_PORTS)
            .ok_or(Error::MissingMap(MAP_PORTS))?;
        let mut ports: HashMap<_, PortKey, u8> =
            HashMap::try_from(map).map_err(map_err(MAP_PORTS, "open"))?;
        let wanted = port_entries(&spec.forward);
        let keep: BTreeSet<(u8, u16)> = wanted.iter().map(|(k, _)| (k.proto, k.port)).collect();
        let stale: Vec<PortKey> = ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(&(k.proto, k.port)))
            .collect();
        for k in stale {
            ports.remove(&k).map_err(map_err(MAP_PORTS, "remove"))?;
        }
        for (k, v) in wanted {
            ports.insert(k, v, 0).map_err(map_err(MAP_PORTS, "write"))?;
        }
    }

    // The IPv6 programs first: the IPv4 programs (old or new) tail-call
    // them through the pinned jump table, whose entries are swapped here.
    let mut fds = Vec::new();
    for name in NAT_JUMP_PROGRAMS {
        let prog = classifier(&mut ebpf, name)?;
        let fd = prog
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| Error::Program {
                name,
                source: Box::new(source),
            })?;
        fds.push(fd);
    }
    {
        let map = ebpf.map_mut(MAP_JUMP).ok_or(Error::MissingMap(MAP_JUMP))?;
        let mut jump: ProgramArray<_> =
            ProgramArray::try_from(map).map_err(map_err(MAP_JUMP, "open"))?;
        for (i, fd) in fds.iter().enumerate() {
            jump.set(i as u32, fd, 0)
                .map_err(map_err(MAP_JUMP, "write"))?;
        }
    }

    let mut plan = vec![
        (
            PROG_GUEST_INGRESS,
            spec.guest_interface.as_str(),
            TcAttachType::Ingress,
        ),
        (
            PROG_POD_INGRESS,
            spec.pod_interface.as_str(),
            TcAttachType::Ingress,
        ),
    ];
    if spec.istio {
        plan.push((
            PROG_POD_EGRESS,
            spec.pod_interface.as_str(),
            TcAttachType::Egress,
        ));
    } else {
        // Leaving Istio mode: the egress program goes.
        remove_pin(&link_pin(&spec.pin_dir, PROG_POD_EGRESS))?;
    }
    let mut replaced = Vec::new();
    for (name, iface, at) in plan {
        let pin = link_pin(&spec.pin_dir, name);
        if pin.exists() {
            replaced.push(name);
        }
        let prog = classifier(&mut ebpf, name)?;
        attach_prog(prog, name, iface, at, Some(&pin))?;
    }
    tracing::info!(
        pin_dir = %spec.pin_dir.display(),
        pod_if = %spec.pod_interface,
        guest_if = %spec.guest_interface,
        ipv4 = spec.ipv4.is_some(),
        ipv6 = spec.ipv6.is_some(),
        istio = spec.istio,
        "eBPF masquerade attached"
    );
    // Dropping `ebpf` closes our descriptors; the pins keep links and maps.
    Ok(Attached {
        pin_dir: spec.pin_dir.clone(),
        replaced,
    })
}

/// `(map, key size, value size)` as this version's programs define them.
fn map_layouts() -> [(&'static str, usize, usize); 5] {
    use std::mem::size_of;
    [
        (MAP_CONFIG, 4, size_of::<NatConfig>()),
        (MAP_CONNTRACK, size_of::<FlowKey>(), size_of::<CtEntry>()),
        (MAP_PORTS, size_of::<PortKey>(), 1),
        (MAP_COUNTERS, 4, size_of::<Counters>()),
        (MAP_JUMP, 4, 4),
    ]
}

/// Removes pinned maps whose key or value size is not this version's (pins
/// of an older loader): the new programs would not load against them. Their
/// state (conntrack) is lost; the programs that use them go when the pinned
/// links get the new programs.
fn drop_stale_pins(dir: &Path) -> Result<()> {
    for (name, key, value) in map_layouts() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name, "open pinned"))?;
        let (k, v) = (info.key_size() as usize, info.value_size() as usize);
        if (k, v) != (key, value) {
            tracing::warn!(
                map = name,
                pinned = ?(k, v),
                expected = ?(key, value),
                "pinned map has another layout (an older loader): replacing it"
            );
            remove_pin(&path)?;
        }
    }
    Ok(())
}

fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            step: "remove pin",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Detaches the pod's programs and removes its pins (and so its maps).
/// Nothing pinned is fine.
pub fn detach(pin_dir: &Path) -> Result<()> {
    bpffs::remove_dir(pin_dir)?;
    tracing::info!(pin_dir = %pin_dir.display(), "eBPF masquerade detached");
    Ok(())
}

fn open(dir: &Path, name: &'static str) -> Result<MapData> {
    MapData::from_pin(dir.join(name)).map_err(map_err(name, "open pinned"))
}

/// One conntrack entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub key: FlowKey,
    pub entry: CtEntry,
}

impl Conn {
    pub fn src(&self) -> (IpAddr, u16) {
        (
            ip_of(self.key.family, self.key.src_ip),
            u16::from_be(self.key.src_port),
        )
    }
    pub fn dst(&self) -> (IpAddr, u16) {
        (
            ip_of(self.key.family, self.key.dst_ip),
            u16::from_be(self.key.dst_port),
        )
    }
    /// What the entry rewrites to (hairpin entries: nothing stored, the
    /// addresses come from the configuration).
    pub fn translated(&self) -> (IpAddr, u16) {
        (
            ip_of(self.key.family, self.entry.addr),
            u16::from_be(self.entry.port),
        )
    }
    pub fn is_outbound(&self) -> bool {
        self.entry.dir == DIR_OUT
    }
    pub fn is_hairpin(&self) -> bool {
        self.entry.dir == DIR_HAIRPIN
    }
    pub fn is_ipv6(&self) -> bool {
        self.key.family == 6
    }
    /// The MACs towards the remote learned for this connection
    /// (destination, source), when learned.
    pub fn l2(&self) -> Option<([u8; 6], [u8; 6])> {
        let l2 = self.entry.l2;
        if l2 == [0; 12] {
            return None;
        }
        let mut d = [0u8; 6];
        let mut s = [0u8; 6];
        d.copy_from_slice(&l2[..6]);
        s.copy_from_slice(&l2[6..]);
        Some((d, s))
    }
}

/// A pod's pinned NAT state, for reading counters and conntrack.
#[derive(Debug)]
pub struct Pinned {
    dir: PathBuf,
}

impl Pinned {
    /// The pins in `dir` (made by [`attach`]); fails when there are none.
    pub fn open(dir: &Path) -> Result<Self> {
        for name in [MAP_CONFIG, MAP_CONNTRACK, MAP_COUNTERS, MAP_PORTS, MAP_JUMP] {
            if !dir.join(name).exists() {
                return Err(Error::MissingMap(name));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        let map = PerCpuArray::<_, Counters>::try_from(aya::maps::Map::PerCpuArray(open(
            &self.dir,
            MAP_COUNTERS,
        )?))
        .map_err(map_err(MAP_COUNTERS, "open"))?;
        let per_cpu = map.get(&0, 0).map_err(map_err(MAP_COUNTERS, "read"))?;
        Ok(Counter::ALL
            .iter()
            .map(|&c| (c, per_cpu.iter().map(|v| v.get(c)).sum()))
            .collect())
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .unwrap_or(0))
    }

    /// Every conntrack entry (two per connection).
    pub fn conntrack(&self) -> Result<Vec<Conn>> {
        let map = HashMap::<_, FlowKey, CtEntry>::try_from(aya::maps::Map::LruHashMap(open(
            &self.dir,
            MAP_CONNTRACK,
        )?))
        .map_err(map_err(MAP_CONNTRACK, "open"))?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, entry) = item.map_err(map_err(MAP_CONNTRACK, "read"))?;
            out.push(Conn { key, entry });
        }
        Ok(out)
    }

    /// The configuration the programs use.
    pub fn config(&self) -> Result<NatConfig> {
        let map =
            Array::<_, NatConfig>::try_from(aya::maps::Map::Array(open(&self.dir, MAP_CONFIG)?))
                .map_err(map_err(MAP_CONFIG, "open"))?;
        map.get(&0, 0).map_err(map_err(MAP_CONFIG, "read"))
    }

    /// Removes expired entries (the programs ignore them; this frees their
    /// slots before LRU eviction would); returns how many went.
    pub fn gc(&self) -> Result<usize> {
        let cfg = self.config()?;
        let now = monotonic_ns()?;
        let mut map = HashMap::<_, FlowKey, CtEntry>::try_from(aya::maps::Map::LruHashMap(open(
            &self.dir,
            MAP_CONNTRACK,
        )?))
        .map_err(map_err(MAP_CONNTRACK, "open"))?;
        let expired: Vec<FlowKey> = map
            .iter()
            .filter_map(|i| i.ok())
            .filter(|(k, e)| {
                now.saturating_sub(e.last_seen_ns) > timeout_ns(&cfg, k.proto, e.state)
            })
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in expired {
            if map.remove(&k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The conntrack capacity in connections.
pub const MAX_CONNECTIONS: u32 = CONNTRACK_MAX / 2;

fn timeout_ns(cfg: &NatConfig, proto: u8, state: u8) -> u64 {
    let s = match (proto, state) {
        (IPPROTO_TCP, TCP_ESTABLISHED) => cfg.timeout_tcp_established,
        (IPPROTO_TCP, TCP_CLOSING | TCP_CLOSED) => cfg.timeout_tcp_closing,
        (IPPROTO_TCP, _) => cfg.timeout_tcp_syn,
        (IPPROTO_UDP, _) => cfg.timeout_udp,
        _ => cfg.timeout_icmp,
    };
    u64::from(s) * 1_000_000_000
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> Result<u64> {
    let t =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(|e| Error::Io {
            step: "read CLOCK_MONOTONIC",
            path: PathBuf::new(),
            source: e.into(),
        })?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_ports_always_denied() {
        let e = port_entries(&Forward::Ports(vec![
            (IPPROTO_TCP, 80),
            (IPPROTO_TCP, 15001),
        ]));
        assert!(e.contains(&(
            PortKey {
                port: 80,
                proto: IPPROTO_TCP,
                _pad: 0
            },
            PORT_FORWARD
        )));
        assert!(e.contains(&(
            PortKey {
                port: 15001,
                proto: IPPROTO_TCP,
                _pad: 0
            },
            PORT_DENY
        )));
        let all = port_entries(&Forward::All);
        assert_eq!(all.len(), 2 * ENVOY_PORTS.len());
        assert!(all.iter().all(|(_, v)| *v == PORT_DENY));
    }

    #[test]
    fn config_is_network_order() {
        let mut spec = NatSpec {
            pod_interface: "eth0".into(),
            guest_interface: "tap0".into(),
            ipv4: Some(Addrs {
                pod: Ipv4Addr::new(10, 99, 0, 5),
                guest: Ipv4Addr::new(10, 0, 2, 2),
                gateway: Ipv4Addr::new(10, 0, 2, 1),
            }),
            ipv6: None,
            guest_mac: [2, 0, 0, 0, 0, 1],
            gateway_mac: None,
            anti_spoof: true,
            forward: Forward::All,
            istio: false,
            nat_ports: DEFAULT_NAT_PORTS,
            timeouts: Timeouts::default(),
            pin_dir: PathBuf::from("/sys/fs/bpf/virtlink/p"),
        };
        let ifs = Interfaces {
            pod_ifindex: 2,
            guest_ifindex: 3,
            tap_mac: [2, 0, 0, 0, 0, 9],
            pod_veth: true,
            guest_veth: false,
        };
        let c = config(&spec, &ifs, POD_LOCAL_PORTS);
        assert_eq!(c.pod_ip.to_ne_bytes(), [10, 99, 0, 5]);
        assert_eq!(
            c.flags,
            FLAG_FORWARD_ALL | FLAG_ANTI_SPOOF | FLAG_POD_PEER | FLAG_V4
        );
        assert_eq!(c.gateway_mac, [2, 0, 0, 0, 0, 9], "the tap's own MAC");
        assert_eq!(c.pod_ip6, [0; 4]);
        assert_eq!((c.port_min, c.port_max), (32768, 60999));
        assert_eq!((c.local_port_min, c.local_port_max), (16384, 32767));

        // IPv6 beside it, and a gateway MAC of a bridge in front of the tap.
        let pod6: Ipv6Addr = "fd99::5".parse().unwrap();
        spec.ipv6 = Some(Addrs {
            pod: pod6,
            guest: "fd10:0:2::2".parse().unwrap(),
            gateway: "fd10:0:2::1".parse().unwrap(),
        });
        spec.gateway_mac = Some([2, 0, 0, 0, 0, 0x42]);
        let c = config(&spec, &ifs, POD_LOCAL_PORTS);
        assert_eq!(c.flags & (FLAG_V4 | FLAG_V6), FLAG_V4 | FLAG_V6);
        assert_eq!(c.gateway_mac, [2, 0, 0, 0, 0, 0x42]);
        // Packet order: the first word holds fd99:0000 as it is on the wire.
        assert_eq!(c.pod_ip6[0].to_ne_bytes(), [0xfd, 0x99, 0, 0]);
        assert_eq!(c.pod_ip6[3].to_ne_bytes(), [0, 0, 0, 5]);
        assert_eq!(from_raw6(c.pod_ip6), pod6);
        assert_eq!(ip_of(6, c.guest_ip6).to_string(), "fd10:0:2::2");
        assert_eq!(ip_of(4, [c.guest_ip, 0, 0, 0]).to_string(), "10.0.2.2");
    }
}
