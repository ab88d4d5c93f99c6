//! A small synchronous rtnetlink wrapper for the calling thread's network
//! namespace (open it on a thread that is already inside the namespace:
//! the socket belongs to the namespace it was opened in).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
};
use rtnetlink::{LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

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

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// `vxlan`, `veth`, ... (from IFLA_INFO_KIND).
    pub kind: Option<String>,
    /// A VXLAN device in collect-metadata ("external") mode.
    pub collect_metadata: bool,
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

    /// The link called `name`, or `None`.
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
            Ok(v) => Ok(v.map(to_link)),
            Err(e) if is_errno(&e, nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    fn set(&self, step: String, msg: rtnetlink::packet_route::link::LinkMessage) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(req(step))
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

    /// Adds an address; one that is already there is fine.
    pub fn add_addr(&self, link: &Link, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let r = self.rt.block_on(
            self.handle
                .address()
                .add(link.index, addr.into(), prefix)
                .execute(),
        );
        match r {
            Err(e) if is_errno(&e, nix::libc::EEXIST) => Ok(()),
            r => r.map_err(req(format!("add address {addr}/{prefix} to {}", link.name))),
        }
    }

    /// Adds (or replaces) an on-link route to `dst` through `link`.
    pub fn add_onlink_route(&self, link: &Link, dst: Ipv4Net) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .output_interface(link.index)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(req(format!("add route {dst} dev {}", link.name)))
    }
}

impl Netlink {
    /// Adds (or replaces) the default route through `gateway` on `link`.
    pub fn add_default_route(&self, link: &Link, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(link.index)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(req(format!(
                "add default route via {gateway} dev {}",
                link.name
            )))
    }
}

fn to_link(msg: rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        collect_metadata: false,
    };
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => link.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => {
                            link.kind = Some(match k {
                                InfoKind::Vxlan => "vxlan".to_string(),
                                InfoKind::Veth => "veth".to_string(),
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

/// Turns off IPv6 on `ifname` in the calling thread's namespace: the
/// isolated networks are IPv4 and the programs drop (and count) anything
/// else, so the interface should not send router solicitations.
pub fn disable_ipv6(ifname: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
