//! A small synchronous wrapper around rtnetlink for the calling thread's
//! network namespace. Create it on a thread that is already inside the pod's
//! namespace (see [`netattach::netns::run_in`]): the netlink socket belongs to
//! the namespace it was opened in.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkUnspec, RouteMessageBuilder};

use crate::mac::Mac;

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
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the binder needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
    pub alias: Option<String>,
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

/// True for "no such device" answers.
fn is_enodev(e: &rtnetlink::Error) -> bool {
    is_errno(e, nix::libc::ENODEV)
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
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
        let got = self.rt.block_on(async {
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match got {
            Ok(Some(msg)) => Ok(Some(to_link(msg))),
            Ok(None) => Ok(None),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let got = self.rt.block_on(async {
            self.handle
                .link()
                .get()
                .match_index(index)
                .execute()
                .try_next()
                .await
        });
        match got {
            Ok(v) => Ok(v.map(to_link)),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(req(format!("get link #{index}"))(e)),
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

    fn set(&self, step: String, msg: rtnetlink::packet_route::link::LinkMessage) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(req(step))
    }

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

    pub fn set_mac(&self, link: &Link, mac: Mac) -> Result<()> {
        if link.mac == Some(mac) {
            return Ok(());
        }
        self.set(
            format!("set MAC {mac} on {}", link.name),
            LinkUnspec::new_with_index(link.index)
                .address(mac.0.to_vec())
                .build(),
        )
    }

    pub fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        if link.mtu == Some(mtu) {
            return Ok(());
        }
        self.set(
            format!("set MTU {mtu} on {}", link.name),
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
        )
    }

    pub fn set_up(&self, link: &Link) -> Result<()> {
        if link.up {
            return Ok(());
        }
        self.set(
            format!("set {} up", link.name),
            LinkUnspec::new_with_index(link.index).up().build(),
        )
    }

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
    pub fn del_local_fdb(&self, port: &Link, mac: Mac) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = port.index;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        match self
            .rt
            .block_on(self.handle.neighbours().del(msg).execute())
        {
            Err(e) if is_errno(&e, nix::libc::ENOENT) => Ok(()),
            r => r.map_err(req(format!(
                "delete local FDB entry {mac} on {}",
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
            Err(e) if is_enodev(&e) => Ok(()),
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

    /// IPv4 routes of the main table through `index` that were not added by
    /// the kernel for an address (those come back with the address).
    pub fn routes4(&self, index: u32) -> Result<Vec<Route4>> {
        let msgs = self
            .rt
            .block_on(async {
                self.handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(req("list IPv4 routes"))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.address_family != AddressFamily::Inet
                || m.header.table != rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
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

    /// Adds (or replaces) an IPv4 route through `link`.
    pub fn add_route4(&self, link: &Link, route: Route4) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .output_interface(link.index);
        if let Some(gw) = route.gateway {
            b = b.gateway(gw);
        } else {
            b = b.scope(rtnetlink::packet_route::route::RouteScope::Link);
        }
        self.rt
            .block_on(self.handle.route().add(b.build()).replace().execute())
            .map_err(req(format!(
                "add route {} via {:?} dev {}",
                route.dst, route.gateway, link.name
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

fn to_link(msg: rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        controller: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        alias: None,
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => link.mac = Mac::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::IfAlias(s) => link.alias = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(match k {
                            InfoKind::Bridge => "bridge".to_string(),
                            InfoKind::Tun => "tun".to_string(),
                            InfoKind::Veth => "veth".to_string(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    link
}
