//! VM interface bindings: connects a KubeVirt launcher pod's interfaces
//! (created by the CNI plugin: `eth0`, `net1`, ...) to the VM's interfaces.
//!
//! - [`spec`]: the VM spec's interfaces and networks, mapped to pod interfaces;
//! - [`bridge`], [`masquerade`], [`sriov`]: the three bindings;
//! - [`dhcp`]: the DHCPv4 server that tells the guest its address;
//! - [`hypervisor`]: QEMU arguments and libvirt XML for tap NICs.
//!
//! [`bind`] and [`unbind`] are the entry points for the CLI.

pub mod bridge;
pub mod dhcp;
pub mod dhcpv6;
pub mod hypervisor;
pub mod launcher;
pub mod mac;
pub mod masquerade;
pub mod plugin;
pub mod spec;
pub mod sriov;
pub mod tap;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use netattach::netlink;
use netattach::status::NetworkStatus;
use serde::{Deserialize, Serialize};

pub use mac::Mac;
pub use spec::{BindingKind, PlannedInterface, Vm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error(transparent)]
    Netns(#[from] netattach::netns::Error),
    #[error("interface {iface}: {step}")]
    Step {
        iface: String,
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {iface}: invalid macAddress")]
    Mac {
        iface: String,
        #[source]
        source: mac::ParseMacError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn step<E: std::error::Error + Send + Sync + 'static>(
    iface: &str,
    step: &'static str,
) -> impl FnOnce(E) -> Error {
    let iface = iface.to_string();
    move |e| Error::Step {
        iface,
        step,
        source: Box::new(e),
    }
}

/// Settings that are not in the VM spec.
#[derive(Debug, Clone)]
pub struct BindOptions {
    /// The masquerade binding's private subnets.
    pub masquerade: masquerade::MasqueradeConfig,
    /// Where the guest's DNS settings come from (the launcher pod's own).
    pub resolv_conf: PathBuf,
    /// The sysfs root for passthrough devices (`/sys`; tests use a temp dir).
    pub sysfs_root: PathBuf,
    /// The uid the hypervisor runs as, to own the taps.
    pub tap_owner: Option<u32>,
    /// Start the DHCP servers (off when the guest is configured otherwise).
    pub dhcp: bool,
    /// DHCP lease time, seconds.
    pub lease_time: u32,
    /// Who translates the masquerade binding's traffic.
    pub datapath: masquerade::Datapath,
    /// The bpffs under which the eBPF datapath pins per pod
    /// (`<root>/virtlink/<namespace>_<vm>_<iface>`); mounted when it is not.
    pub bpffs_root: PathBuf,
    /// The pod runs Istio's sidecar: eBPF-translated packets go through the
    /// pod's stack (see docs/xdp.md).
    pub istio: bool,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self {
            masquerade: masquerade::MasqueradeConfig::default(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            sysfs_root: PathBuf::from("/sys"),
            tap_owner: None,
            dhcp: true,
            lease_time: 86400,
            datapath: masquerade::Datapath::default(),
            bpffs_root: PathBuf::from(virtlink_xdp::bpffs::DEFAULT_ROOT),
            istio: false,
        }
    }
}

/// One VM interface after binding: what the hypervisor and the user need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundInterface {
    pub name: String,
    pub network: String,
    pub binding: BindingKind,
    pub pod_interface: String,
    /// The guest's MAC.
    pub mac: Mac,
    /// The guest's address (from DHCP), when the binder knows it.
    pub ip: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// The tap the hypervisor opens (not for passthrough).
    pub tap: Option<String>,
    /// The PCI device (passthrough only).
    pub pci_address: Option<String>,
    pub qemu_args: Vec<String>,
    pub libvirt_xml: String,
    /// The device the DHCP server answers on.
    pub dhcp_device: Option<String>,
    /// The lease the DHCP server hands out.
    pub lease: Option<dhcp::Lease>,
    /// The guest's IPv6 address (masquerade with an IPv6 pod address),
    /// from DHCPv6.
    #[serde(default)]
    pub ip6: Option<ipnet::Ipv6Net>,
    /// What DHCPv6 and the router advertisements tell the guest.
    #[serde(default)]
    pub lease6: Option<dhcpv6::Lease6>,
}

/// A server answering one guest on its device.
#[derive(Debug)]
pub(crate) enum Server {
    Dhcp(dhcp::DhcpServer),
    Ipv6(dhcpv6::Ipv6Server),
}

impl Server {
    fn device(&self) -> &str {
        match self {
            Server::Dhcp(s) => s.device(),
            Server::Ipv6(s) => s.device(),
        }
    }

    pub(crate) fn stop(self) {
        match self {
            Server::Dhcp(s) => s.stop(),
            Server::Ipv6(s) => s.stop(),
        }
    }
}

/// The result of [`bind`]: the interfaces and the running DHCP servers.
/// Dropping it stops the servers but leaves the kernel objects; use
/// [`Binding::unbind`] (or [`unbind`]) to remove them.
#[derive(Debug)]
pub struct Binding {
    pub netns: PathBuf,
    pub interfaces: Vec<BoundInterface>,
    servers: Vec<Server>,
    bpffs_root: PathBuf,
}

impl Binding {
    /// All QEMU arguments for the VM's network interfaces.
    pub fn qemu_args(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .flat_map(|i| i.qemu_args.iter().cloned())
            .collect()
    }

    /// Devices with a running DHCP server.
    pub fn dhcp_devices(&self) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| matches!(s, Server::Dhcp(_)))
            .map(|s| s.device())
            .collect()
    }

    /// Devices with a running IPv6 server (router advertisements and DHCPv6).
    pub fn ipv6_devices(&self) -> Vec<&str> {
        self.servers
            .iter()
            .filter(|s| matches!(s, Server::Ipv6(_)))
            .map(|s| s.device())
            .collect()
    }

    /// Stops the DHCP servers and undoes every interface's binding.
    pub fn unbind(mut self, vm: &Vm, network_status: &[NetworkStatus]) -> Result<()> {
        for s in self.servers.drain(..) {
            s.stop();
        }
        unbind_with(vm, &self.netns, network_status, &self.bpffs_root)
    }
}

/// Where the eBPF datapath of a VM interface pins its maps and links:
/// `<root>/virtlink/<namespace>_<vm>_<iface>_<netns inode, hex>` (the
/// inode keeps two pods of the same VM name apart, e.g. during a restart).
pub fn pin_dir(bpffs_root: &Path, vm: &Vm, pod_netns: &Path, iface: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(pod_netns).map(|m| m.ino()).unwrap_or(0);
    virtlink_xdp::bpffs::pod_dir(
        bpffs_root,
        &format!("{}_{}_{}_{ino:x}", vm.namespace, vm.name, iface),
    )
}

/// The pin directories of `vm`'s interfaces under `bpffs_root` (for
/// `virtlink stats`): `(directory name, path)`.
pub fn pin_dirs(bpffs_root: &Path, namespace: &str, vm: &str) -> Vec<(String, PathBuf)> {
    let prefix = virtlink_xdp::bpffs::pod_dir(bpffs_root, &format!("{namespace}_{vm}_"));
    let (Some(parent), Some(prefix)) = (prefix.parent(), prefix.file_name()) else {
        return Vec::new();
    };
    let prefix = prefix.to_string_lossy().into_owned();
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix).then(|| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The guest tap of the VM interface at `index`.
pub fn tap_name(index: usize) -> String {
    format!("tap{index}")
}

fn guest_mac(vm: &Vm, p: &PlannedInterface) -> Result<Mac> {
    match &p.mac {
        Some(m) => m.parse().map_err(|source| Error::Mac {
            iface: p.name.clone(),
            source,
        }),
        None => Ok(Mac::stable(&vm.namespace, &vm.name, &p.name)),
    }
}

fn mtu16(mtu: Option<u32>) -> Option<u16> {
    mtu.and_then(|m| u16::try_from(m).ok())
}

/// Connects every VM interface to its pod interface in the namespace at
/// `pod_netns`, starts the DHCP servers, and returns what the hypervisor
/// needs. On error, whatever was bound is unbound again.
pub fn bind(
    vm: &Vm,
    pod_netns: &Path,
    network_status: &[NetworkStatus],
    opts: &BindOptions,
) -> Result<Binding> {
    let plan = vm.plan(network_status)?;
    let mut binding = Binding {
        netns: pod_netns.to_path_buf(),
        interfaces: Vec::new(),
        servers: Vec::new(),
        bpffs_root: opts.bpffs_root.clone(),
    };
    let resolv = if opts.dhcp && plan.iter().any(|p| p.binding != BindingKind::Sriov) {
        dhcp::Resolv::read(&opts.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no DNS settings for the guest");
            dhcp::Resolv::default()
        })
    } else {
        dhcp::Resolv::default()
    };
    for p in &plan {
        let target = Target {
            tap: tap_name(p.index),
            pin_dir: pin_dir(&opts.bpffs_root, vm, pod_netns, &p.name),
            keep_pod_mac: false,
        };
        match bind_one(vm, p, &target, pod_netns, opts, &resolv) {
            Ok((iface, servers)) => {
                binding.interfaces.push(iface);
                binding.servers.extend(servers);
            }
            Err(e) => {
                for s in binding.servers.drain(..) {
                    s.stop();
                }
                if let Err(undo) = unbind_with(vm, pod_netns, network_status, &opts.bpffs_root) {
                    tracing::warn!(error = %undo, "rollback after a failed bind");
                }
                return Err(e);
            }
        }
    }
    Ok(binding)
}

/// Where one VM interface's binding puts its kernel objects.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The guest's tap.
    pub(crate) tap: String,
    /// The eBPF datapath's pins (masquerade).
    pub(crate) pin_dir: PathBuf,
    /// Bridge binding: the pod interface keeps its MAC, which the guest
    /// shares (KubeVirt's tap domain attachment copies the pod interface's
    /// MAC to the guest after the binding ran; see [`plugin`]).
    pub(crate) keep_pod_mac: bool,
}

pub(crate) fn bind_one(
    vm: &Vm,
    p: &PlannedInterface,
    target: &Target,
    netns: &Path,
    opts: &BindOptions,
    resolv: &dhcp::Resolv,
) -> Result<(BoundInterface, Vec<Server>)> {
    let mut mac = guest_mac(vm, p)?;
    let tap = target.tap.clone();
    let mut out = BoundInterface {
        name: p.name.clone(),
        network: p.network.clone(),
        binding: p.binding,
        pod_interface: p.pod_interface.clone(),
        mac,
        ip: None,
        gateway: None,
        tap: None,
        pci_address: None,
        qemu_args: Vec::new(),
        libvirt_xml: String::new(),
        dhcp_device: None,
        lease: None,
        ip6: None,
        lease6: None,
    };
    let mut tap6 = None;
    let base_lease = |mac: Mac,
                      address: Ipv4Net,
                      gateway,
                      server_id,
                      mtu,
                      extra: &[(Ipv4Net, std::net::Ipv4Addr)]| dhcp::Lease {
        client_mac: Some(mac),
        address,
        gateway,
        server_id,
        dns: resolv.nameservers.clone(),
        search: resolv.search.clone(),
        domain: resolv.domain.clone(),
        mtu: mtu16(mtu),
        hostname: Some(vm.name.clone()),
        routes: dhcp::Lease::routes_for(address, gateway, extra),
        lease_time: opts.lease_time,
    };
    let mtu = match p.binding {
        BindingKind::Sriov => {
            let info = p
                .status
                .as_ref()
                .and_then(|s| s.device_info.as_ref())
                .ok_or_else(|| Error::Step {
                    iface: p.name.clone(),
                    step: "find device-info in network-status",
                    source: "no device-info for the network".into(),
                })?;
            let address =
                sriov::address_from_device_info(info).map_err(step(&p.name, "read PCI address"))?;
            let pt = sriov::Passthrough {
                name: p.name.clone(),
                address,
                mac,
                vlan: info.vlan.as_ref().map(|v| v.id),
            };
            pt.check(&opts.sysfs_root)
                .map_err(step(&p.name, "check PCI device"))?;
            out.pci_address = Some(address.to_string());
            out.qemu_args = pt.qemu_args();
            out.libvirt_xml = pt.libvirt_xml();
            return Ok((out, Vec::new()));
        }
        BindingKind::Bridge => {
            let (pod_if, tap2, index, owner, keep) = (
                p.pod_interface.clone(),
                tap.clone(),
                p.index,
                opts.tap_owner,
                target.keep_pod_mac,
            );
            let spec_mac = p.mac.as_ref().map(|_| mac);
            let bound = netattach::netns::run_in(netns, move || {
                bridge::bind(&pod_if, &tap2, index, owner, spec_mac, keep)
            })?
            .map_err(step(&p.name, "bridge binding"))?;
            let saved = bound.saved;
            let server_id = bridge::server_address(p.index);
            // Without a macAddress in the spec the guest takes over the pod
            // interface's original MAC.
            mac = bound.guest_mac;
            out.mac = mac;
            if let Some(address) = saved.ipv4() {
                let extra: Vec<_> = saved
                    .routes
                    .iter()
                    .filter_map(|r| Some((r.dst, r.gateway?)))
                    .collect();
                let lease = base_lease(mac, address, saved.gateway(), server_id, saved.mtu, &extra);
                out.ip = Some(IpNet::V4(address));
                out.gateway = saved.gateway().map(IpAddr::V4);
                out.lease = Some(lease);
                out.dhcp_device = Some(bridge::bridge_name(&p.pod_interface));
            }
            saved.mtu
        }
        BindingKind::Masquerade => {
            let (gw, guest) = opts
                .masquerade
                .v4()
                .map_err(step(&p.name, "masquerade subnet"))?;
            let v6 = opts
                .masquerade
                .v6()
                .map_err(step(&p.name, "masquerade subnet"))?;
            let (pod_if, tap2, owner, cfg) = (
                p.pod_interface.clone(),
                tap.clone(),
                opts.tap_owner,
                opts.masquerade,
            );
            let ports: Vec<(spec::Protocol, u16)> = p
                .ports
                .iter()
                .filter_map(|port| Some((port.protocol().ok()?, port.port)))
                .collect();
            for (_, port) in &ports {
                if masquerade::ISTIO_PORTS.contains(port) {
                    tracing::warn!(iface = %p.name, port, "Istio port is never forwarded");
                }
            }
            let forward = if ports.is_empty() {
                masquerade::Forward::All
            } else {
                masquerade::Forward::Ports(ports)
            };
            let table = masquerade::table_name(&p.name);
            let name = p.name.clone();
            let datapath = match vm.annotations.get(spec::DATAPATH_ANNOTATION) {
                Some(v) => v.parse().map_err(|reason: String| Error::Step {
                    iface: p.name.clone(),
                    step: "read the masquerade-datapath annotation",
                    source: reason.into(),
                })?,
                None => opts.datapath,
            };
            let ebpf = match datapath {
                masquerade::Datapath::Nftables => None,
                masquerade::Datapath::Ebpf => {
                    virtlink_xdp::bpffs::ensure_mounted(&opts.bpffs_root)
                        .map_err(step(&p.name, "mount bpffs"))?;
                    Some(EbpfMasquerade {
                        pin_dir: target.pin_dir.clone(),
                        guest_mac: mac,
                        istio: opts.istio,
                    })
                }
            };
            let bound = netattach::netns::run_in(netns, move || {
                masquerade_bind(
                    &name, &pod_if, &tap2, owner, cfg, gw, guest, v6, table, forward, ebpf,
                )
            })??;
            let mtu = bound.mtu;
            if let (Some((_, guest6)), Some(net6)) = (bound.v6, opts.masquerade.ipv6) {
                let address = ipnet::Ipv6Net::new(guest6, net6.prefix_len())
                    .map_err(step(&p.name, "masquerade subnet"))?;
                out.ip6 = Some(address);
                out.lease6 = Some(dhcpv6::Lease6 {
                    address,
                    dns: resolv.nameservers6.clone(),
                    search: resolv.search.clone(),
                    mtu,
                    lease_time: opts.lease_time,
                });
                tap6 = Some(bound.tap);
            }
            let address = Ipv4Net::new(guest, opts.masquerade.ipv4.prefix_len())
                .map_err(step(&p.name, "masquerade subnet"))?;
            out.ip = Some(IpNet::V4(address));
            out.gateway = Some(IpAddr::V4(gw));
            out.lease = Some(base_lease(mac, address, Some(gw), gw, mtu, &[]));
            out.dhcp_device = Some(tap.clone());
            mtu
        }
    };
    let nic = hypervisor::TapNic {
        name: &p.name,
        tap: &tap,
        mac,
        mtu,
    };
    out.qemu_args = nic.qemu_args();
    out.libvirt_xml = nic.libvirt_xml();
    out.tap = Some(tap.clone());
    let mut servers = Vec::new();
    if let (Some(lease), Some(dev), true) = (&out.lease, &out.dhcp_device, opts.dhcp) {
        servers.push(Server::Dhcp(
            dhcp::DhcpServer::start(netns, dev, lease.clone())
                .map_err(step(&p.name, "start DHCP server"))?,
        ));
    }
    if let (Some(lease6), Some(tap), true) = (&out.lease6, tap6, opts.dhcp) {
        // Dropping `servers` on error stops the DHCPv4 server again.
        servers.push(Server::Ipv6(
            dhcpv6::Ipv6Server::start(netns, tap, lease6.clone())
                .map_err(step(&p.name, "start IPv6 server (RA, DHCPv6)"))?,
        ));
    }
    Ok((out, servers))
}

/// What [`masquerade_bind`] set up.
struct MasqueradeBound {
    /// The pod interface's MTU.
    mtu: Option<u32>,
    /// (gateway, guest) IPv6 addresses, when the pod has IPv6.
    v6: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
    tap: dhcpv6::Tap,
}

/// The eBPF datapath's settings for one masquerade interface.
struct EbpfMasquerade {
    pin_dir: PathBuf,
    guest_mac: Mac,
    istio: bool,
}

/// The masquerade binding's kernel work, inside the pod's namespace.
#[allow(clippy::too_many_arguments)]
fn masquerade_bind(
    iface: &str,
    pod_if: &str,
    tap_name: &str,
    owner: Option<u32>,
    cfg: masquerade::MasqueradeConfig,
    gw: std::net::Ipv4Addr,
    guest: std::net::Ipv4Addr,
    v6: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
    table: String,
    forward: masquerade::Forward,
    ebpf: Option<EbpfMasquerade>,
) -> Result<MasqueradeBound> {
    let n = netlink::Netlink::new().map_err(step(iface, "open netlink"))?;
    let pod = n
        .link(pod_if)
        .map_err(step(iface, "find pod interface"))?
        .ok_or_else(|| Error::Step {
            iface: iface.to_string(),
            step: "find pod interface",
            source: format!("no interface {pod_if}").into(),
        })?;
    let addrs = n
        .global_addrs(pod.index)
        .map_err(step(iface, "read pod addresses"))?;
    let pod_v4 = addrs.iter().find_map(|a| match a {
        IpNet::V4(n) => Some(n.addr()),
        IpNet::V6(_) => None,
    });
    let pod_v6 = addrs.iter().find_map(|a| match a {
        IpNet::V6(n) => Some(n.addr()),
        IpNet::V4(_) => None,
    });
    let v6 = if pod_v6.is_some() { v6 } else { None };
    tap::create_persistent(tap_name, owner).map_err(step(iface, "create tap"))?;
    let t = n
        .link(tap_name)
        .map_err(step(iface, "find tap"))?
        .ok_or_else(|| Error::Step {
            iface: iface.to_string(),
            step: "find tap",
            source: format!("tap {tap_name} vanished").into(),
        })?;
    if let Some(mtu) = pod.mtu {
        n.set_mtu(&t, mtu).map_err(step(iface, "set tap MTU"))?;
    }
    if v6.is_some() {
        // The tap is a point-to-point link to the guest: no duplicate
        // address detection, so the gateway and link-local addresses (the
        // RAs' source) are usable as soon as the guest opens the tap.
        masquerade::disable_dad(tap_name).map_err(step(iface, "disable DAD on tap"))?;
    }
    let gw_net = Ipv4Net::new(gw, cfg.ipv4.prefix_len()).map_err(step(iface, "gateway address"))?;
    n.add_addr(&t, IpNet::V4(gw_net))
        .map_err(step(iface, "add gateway address to tap"))?;
    if let (Some((gw6, _)), Some(net6)) = (v6, cfg.ipv6) {
        let gw6 =
            ipnet::Ipv6Net::new(gw6, net6.prefix_len()).map_err(step(iface, "gateway address"))?;
        n.add_addr(&t, IpNet::V6(gw6))
            .map_err(step(iface, "add IPv6 gateway address to tap"))?;
    }
    n.set_up(&t).map_err(step(iface, "set tap up"))?;
    masquerade::enable_forwarding(v6.is_some()).map_err(step(iface, "enable forwarding"))?;
    // With eBPF in Istio mode the programs translate after the stack (TC
    // egress), so netfilter must not masquerade those families first.
    let istio_ebpf = ebpf.as_ref().is_some_and(|e| e.istio);
    let rules = masquerade::Ruleset {
        table,
        pod_if: pod_if.to_string(),
        tap: tap_name.to_string(),
        pod_v4,
        pod_v6,
        guest_v4: guest,
        guest_v6: v6.map(|(_, g)| g),
        forward: forward.clone(),
        masquerade_v4: !(istio_ebpf && pod_v4.is_some()),
        masquerade_v6: !(istio_ebpf && pod_v6.is_some()),
    };
    masquerade::load(&rules).map_err(step(iface, "load nftables ruleset"))?;
    if let Some(e) = ebpf {
        let ipv4 = pod_v4.map(|pod| virtlink_xdp::nat::Addrs {
            pod,
            guest,
            gateway: gw,
        });
        let ipv6 = match (pod_v6, v6) {
            (Some(pod), Some((gateway, guest))) => Some(virtlink_xdp::nat::Addrs {
                pod,
                guest,
                gateway,
            }),
            _ => None,
        };
        match (ipv4, ipv6) {
            (None, None) => tracing::warn!(
                iface,
                "no address on the pod interface: eBPF datapath not attached"
            ),
            (ipv4, ipv6) => {
                let spec = virtlink_xdp::nat::NatSpec {
                    pod_interface: pod_if.to_string(),
                    guest_interface: tap_name.to_string(),
                    ipv4,
                    ipv6,
                    guest_mac: e.guest_mac.0,
                    // The gateway addresses are on the tap itself.
                    gateway_mac: None,
                    anti_spoof: true,
                    forward: match forward {
                        masquerade::Forward::All => virtlink_xdp::nat::Forward::All,
                        masquerade::Forward::Ports(ports) => virtlink_xdp::nat::Forward::Ports(
                            ports
                                .into_iter()
                                .map(|(proto, port)| match proto {
                                    spec::Protocol::Tcp => {
                                        (virtlink_xdp::common::IPPROTO_TCP, port)
                                    }
                                    spec::Protocol::Udp => {
                                        (virtlink_xdp::common::IPPROTO_UDP, port)
                                    }
                                })
                                .collect(),
                        ),
                    },
                    istio: e.istio,
                    nat_ports: virtlink_xdp::nat::DEFAULT_NAT_PORTS,
                    timeouts: virtlink_xdp::nat::Timeouts::default(),
                    pin_dir: e.pin_dir,
                };
                virtlink_xdp::nat::attach(&spec).map_err(step(iface, "attach eBPF masquerade"))?;
            }
        }
    }
    let tap_mac = t.mac.map(Mac).ok_or_else(|| Error::Step {
        iface: iface.to_string(),
        step: "read tap MAC",
        source: format!("tap {tap_name} has no MAC").into(),
    })?;
    Ok(MasqueradeBound {
        mtu: pod.mtu,
        v6,
        tap: dhcpv6::Tap {
            name: tap_name.to_string(),
            index: t.index,
            mac: tap_mac,
        },
    })
}

/// Undoes the bindings of every VM interface in `pod_netns`, from the spec
/// alone (so it works after a restart of the binder). Removing what is
/// already gone is fine; the first real failure is returned after trying
/// every interface. eBPF pins are looked for under the default bpffs root.
pub fn unbind(vm: &Vm, pod_netns: &Path, network_status: &[NetworkStatus]) -> Result<()> {
    unbind_with(
        vm,
        pod_netns,
        network_status,
        Path::new(virtlink_xdp::bpffs::DEFAULT_ROOT),
    )
}

/// [`unbind`] with eBPF pins under `bpffs_root`.
pub fn unbind_with(
    vm: &Vm,
    pod_netns: &Path,
    network_status: &[NetworkStatus],
    bpffs_root: &Path,
) -> Result<()> {
    let plan = vm.plan(network_status)?;
    let mut first_err = None;
    for p in plan {
        let tap = tap_name(p.index);
        let pod_if = p.pod_interface.clone();
        let name = p.name.clone();
        let r: Result<()> = match p.binding {
            BindingKind::Sriov => Ok(()),
            BindingKind::Bridge => netattach::netns::run_in(pod_netns, move || {
                bridge::unbind(&pod_if, &tap).map(|_| ())
            })
            .map_err(Error::from)
            .and_then(|r| r.map_err(step(&name, "undo bridge binding"))),
            BindingKind::Masquerade => {
                let pins = pin_dir(bpffs_root, vm, pod_netns, &name);
                netattach::netns::run_in(pod_netns, move || {
                    virtlink_xdp::nat::detach(&pins)
                        .map_err(step(&name, "detach eBPF masquerade"))?;
                    masquerade::unload(&masquerade::table_name(&name))
                        .map_err(step(&name, "remove nftables table"))?;
                    netlink::Netlink::new()
                        .and_then(|n| n.del_link(&tap))
                        .map_err(step(&name, "delete tap"))
                })
                .map_err(Error::from)
                .and_then(|r| r)
            }
        };
        if let Err(e) = r {
            tracing::warn!(iface = %p.name, error = %e, "unbind");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
