//! A small synchronous wrapper around rtnetlink for the calling thread's
//! network namespace. Create it on a thread that is already inside the
//! namespace (see [`crate::netns::run_in`]): the netlink socket belongs to
//! the namespace it was opened in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkGetRequest, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("{step}")]
    Request {
        step: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("open network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the binder and the isolated networks need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub up: bool,
    /// `bridge`, `tun`, `vxlan`, `veth`, ... (from IFLA_INFO_KIND).
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// A VXLAN device in collect-metadata ("external") mode.
    pub collect_metadata: bool,
}

/// An IPv4 route through one link, as the binder records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route4 {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug)]
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

fn req(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let step = step.into();
    move |source| Error::Request { step, source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// `02:ab:cd:00:11:ff`, for messages.
fn mac_str(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's namespace.
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Socket)?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
            tokio::spawn(conn);
            Ok::<_, Error>(handle)
        })?;
        Ok(Self { rt, handle })
    }

    /// The link called `name`, or `None` when there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let get = self.handle.link().get().match_name(name.to_string());
        self.one_link(get, name)
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let get = self.handle.link().get().match_index(index);
        self.one_link(get, &format!("#{index}"))
    }

    /// The link `get` matches; "no such device" is `None`.
    fn one_link(&self, get: LinkGetRequest, what: &str) -> Result<Option<Link>> {
        match self.rt.block_on(async { get.execute().try_next().await }) {
            Ok(v) => Ok(v.map(to_link)),
            Err(e) if is_errno(&e, nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("get link {what}"))(e)),
        }
    }

    /// Creates a bridge; one that already exists is fine.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        let r = self.rt.block_on(
            self.handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute(),
        );
        match r {
            Err(e) if is_errno(&e, nix::libc::EEXIST) => Ok(()),
            r => r.map_err(req(format!("create bridge {name}"))),
        }
    }

    /// Creates the veth pair `name` / `peer` (both here); `EEXIST` is an error
    /// (names are derived from the container, a leftover must be removed first).
    pub fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        self.rt
            .block_on(
                self.handle
                    .link()
                    .add(LinkVeth::new(name, peer).mtu(mtu).build())
                    .execute(),
            )
            .map_err(req(format!("create veth pair {name}/{peer}")))
    }

    /// Creates a collect-metadata ("external") VXLAN device on UDP `port`
    /// with `local` as its source address; one that exists is kept (the
    /// caller checks its kind).
    pub fn add_vxlan_external(&self, name: &str, port: u16, local: Ipv4Addr) -> Result<()> {
        if self.link(name)?.is_some() {
            return Ok(());
        }
        let msg = LinkVxlan::new(name, 0)
            .collect_metadata(true)
            .port(port)
            .local(local)
            .learning(false)
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(req(format!(
                "create VXLAN device {name} (external, port {port})"
            )))
    }

    fn set(&self, step: String, msg: LinkMessage) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(req(step))
    }

    /// Moves `name` into the network namespace at `netns`.
    pub fn move_to_netns(&self, name: &str, netns: &std::path::Path) -> Result<()> {
        let f = std::fs::File::open(netns).map_err(|source| Error::Netns {
            path: netns.display().to_string(),
            source,
        })?;
        self.set(
            format!("move {name} to {}", netns.display()),
            LinkUnspec::new_with_name(name)
                .setns_by_fd(f.as_raw_fd())
                .build(),
        )
    }

    /// Renames `link` and sets its MAC and MTU, skipping what already
    /// matches (a link must be down to be renamed: call before [`Self::set_up`]).
    pub fn configure(&self, link: &Link, name: &str, mac: Option<[u8; 6]>, mtu: u32) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(link.index);
        let mut changed = false;
        if link.name != name {
            b = b.name(name.to_string());
            changed = true;
        }
        if let Some(mac) = mac.filter(|m| link.mac != Some(*m)) {
            b = b.address(mac.to_vec());
            changed = true;
        }
        if link.mtu != Some(mtu) {
            b = b.mtu(mtu);
            changed = true;
        }
        if changed {
            self.set(format!("configure {} as {name}", link.name), b.build())?;
        }
        Ok(())
    }

    /// Attaches `link` to the bridge with index `controller` (or detaches it
    /// with `None`) unless it already is.
    pub fn set_controller(&self, link: &Link, controller: Option<u32>) -> Result<()> {
        if link.controller == controller {
            return Ok(());
        }
        let b = LinkUnspec::new_with_index(link.index);
        let (msg, step) = match controller {
            Some(c) => (
                b.controller(c).build(),
                format!("attach {} to bridge #{c}", link.name),
            ),
            None => (
                b.nocontroller().build(),
                format!("detach {} from its bridge", link.name),
            ),
        };
        self.set(step, msg)
    }

    /// Sets the MAC of `link` unless it has it.
    pub fn set_mac(&self, link: &Link, mac: [u8; 6]) -> Result<()> {
        if link.mac == Some(mac) {
            return Ok(());
        }
        self.set(
            format!("set MAC {} on {}", mac_str(&mac), link.name),
            LinkUnspec::new_with_index(link.index)
                .address(mac.to_vec())
                .build(),
        )
    }

    /// Sets the MTU of `link` unless it has it.
    pub fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        if link.mtu == Some(mtu) {
            return Ok(());
        }
        self.set(
            format!("set MTU {mtu} on {}", link.name),
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
        )
    }

    /// Brings `link` up unless it is.
    pub fn set_up(&self, link: &Link) -> Result<()> {
        if link.up {
            return Ok(());
        }
        self.set(
            format!("set {} up", link.name),
            LinkUnspec::new_with_index(link.index).up().build(),
        )
    }

    /// Sets the alias (`IFLA_IFALIAS`) of `link` unless it has it.
    pub fn set_alias(&self, link: &Link, alias: &str) -> Result<()> {
        if link.alias.as_deref() == Some(alias) {
            return Ok(());
        }
        self.set(
            format!("set alias of {}", link.name),
            LinkUnspec::new_with_index(link.index)
                .alias(alias.to_string())
                .build(),
        )
    }

    /// Removes the bridge's own (local) FDB entry for `mac` on port `port`,
    /// so frames to that MAC are forwarded to another port instead of being
    /// delivered to the bridge. One that is already gone is fine.
    pub fn del_local_fdb(&self, port: &Link, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = port.index;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        match self
            .rt
            .block_on(self.handle.neighbours().del(msg).execute())
        {
            Err(e) if is_errno(&e, nix::libc::ENOENT) => Ok(()),
            r => r.map_err(req(format!(
                "delete local FDB entry {} on {}",
                mac_str(&mac),
                port.name
            ))),
        }
    }

    /// Deletes a link; one that is already gone is fine.
    pub fn del_link(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name)? else {
            return Ok(());
        };
        match self
            .rt
            .block_on(self.handle.link().del(link.index).execute())
        {
            Err(e) if is_errno(&e, nix::libc::ENODEV) => Ok(()),
            r => r.map_err(req(format!("delete link {name}"))),
        }
    }

    fn addr_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        self.rt
            .block_on(async {
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(req(format!("list addresses of link #{index}")))
    }

    /// The link's global (universe scope) addresses, IPv4 and IPv6.
    pub fn global_addrs(&self, index: u32) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for m in self.addr_messages(index)? {
            if m.header.index != index || m.header.scope != AddressScope::Universe {
                continue;
            }
            if let Some(net) = addr_of(&m) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Adds an address; one that is already there is fine.
    pub fn add_addr(&self, link: &Link, net: IpNet) -> Result<()> {
        let r = self.rt.block_on(
            self.handle
                .address()
                .add(link.index, net.addr(), net.prefix_len())
                .execute(),
        );
        match r {
            Err(e) if is_errno(&e, nix::libc::EEXIST) => Ok(()),
            r => r.map_err(req(format!("add address {net} to {}", link.name))),
        }
    }

    /// Removes an address; one that is already gone is fine.
    pub fn del_addr(&self, link: &Link, net: IpNet) -> Result<()> {
        for m in self.addr_messages(link.index)? {
            if m.header.index == link.index && addr_of(&m) == Some(net) {
                let r = self.rt.block_on(self.handle.address().del(m).execute());
                match r {
                    Err(e) if is_errno(&e, nix::libc::EADDRNOTAVAIL) => {}
                    r => r.map_err(req(format!("remove address {net} from {}", link.name)))?,
                }
            }
        }
        Ok(())
    }

    /// The routes of one address family, all tables.
    fn route_messages(&self, ipv6: bool) -> Result<Vec<RouteMessage>> {
        let (msg, step) = if ipv6 {
            (
                RouteMessageBuilder::<Ipv6Addr>::new().build(),
                "list IPv6 routes",
            )
        } else {
            (
                RouteMessageBuilder::<Ipv4Addr>::new().build(),
                "list IPv4 routes",
            )
        };
        self.rt
            .block_on(async {
                self.handle
                    .route()
                    .get(msg)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(req(step))
    }

    /// IPv4 routes of the main table through `index` that were not added by
    /// the kernel for an address (those come back with the address).
    pub fn routes4(&self, index: u32) -> Result<Vec<Route4>> {
        let mut out = Vec::new();
        for m in self.route_messages(false)? {
            if m.header.address_family != AddressFamily::Inet
                || m.header.table != RouteHeader::RT_TABLE_MAIN
                || m.header.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            let mut oif = None;
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            if let Ok(dst) = Ipv4Net::new(dst, m.header.destination_prefix_length) {
                out.push(Route4 { dst, gateway });
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) an IPv4 route through `link`: via its gateway, or
    /// on-link when it has none.
    pub fn add_route4(&self, link: &Link, route: Route4) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(link.index);
        let step = if let Some(gw) = route.gateway {
            b = b.gateway(gw);
            format!("add route {} via {gw} dev {}", route.dst, link.name)
        } else {
            b = b.scope(RouteScope::Link);
            format!("add route {} dev {}", route.dst, link.name)
        };
        self.rt
            .block_on(self.handle.route().add(b.build()).replace().execute())
            .map_err(req(step))
    }

    /// Deletes every default route of the main table in one address family
    /// (IPv6 when `ipv6`), whatever link it goes through.
    pub fn del_default_routes(&self, ipv6: bool) -> Result<()> {
        let family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        for m in self.route_messages(ipv6)? {
            if m.header.address_family == family
                && m.header.destination_prefix_length == 0
                && m.header.table == RouteHeader::RT_TABLE_MAIN
            {
                self.rt
                    .block_on(self.handle.route().del(m).execute())
                    .map_err(req("delete old default route"))?;
            }
        }
        Ok(())
    }

    /// Adds (or replaces) the default route through `gateway` on `link`,
    /// IPv4 or IPv6 after the gateway.
    pub fn add_default_route(&self, link: &Link, gateway: IpAddr) -> Result<()> {
        let msg = match gateway {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(g)
                .output_interface(link.index)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .gateway(g)
                .output_interface(link.index)
                .build(),
        };
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(req(format!(
                "add default route via {gateway} dev {}",
                link.name
            )))
    }
}

fn addr_of(m: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the address itself on point-to-point links, IFA_ADDRESS
    // otherwise; prefer LOCAL when present.
    let mut local = None;
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip: IpAddr = local.or(address)?;
    IpNet::new(ip, m.header.prefix_len).ok()
}

fn to_link(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        controller: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        alias: None,
        collect_metadata: false,
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => link.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::IfAlias(s) => link.alias = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => {
                            link.kind = Some(match k {
                                InfoKind::Bridge => "bridge".to_string(),
                                InfoKind::Tun => "tun".to_string(),
                                InfoKind::Veth => "veth".to_string(),
                                InfoKind::Vxlan => "vxlan".to_string(),
                                other => format!("{other:?}").to_lowercase(),
                            })
                        }
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.collect_metadata = attrs
                                .iter()
                                .any(|a| matches!(a, InfoVxlan::CollectMetadata(true)));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_in_messages() {
        assert_eq!(
            mac_str(&[0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]),
            "02:ab:cd:00:11:ff"
        );
    }

    #[test]
    fn route4_serde_is_stable() {
        // The binder records routes in its state file: keep the field names.
        let r = Route4 {
            dst: "10.1.0.0/16".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"dst":"10.1.0.0/16","gateway":"10.1.0.1"}"#);
        assert_eq!(serde_json::from_str::<Route4>(&json).unwrap(), r);
    }
}
