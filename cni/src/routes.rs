//! Moving a pod's default route to the network that asked for it
//! (`default-route` in a network selection element), over rtnetlink inside
//! the pod's namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::{IpVersion, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netattach::netns::Error),
    #[error("open netlink socket in {netns}")]
    Socket {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("find interface {ifname}")]
    Link { ifname: String, reason: String },
    #[error("{step}: {reason}")]
    Route { step: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Replaces the default route of each gateway's address family with one via
/// that gateway on `ifname`.
pub fn set_default_routes(netns: &Path, ifname: &str, gateways: &[IpAddr]) -> Result<()> {
    let ifname = ifname.to_string();
    let gateways = gateways.to_vec();
    let ns = netns.to_path_buf();
    netattach::netns::run_in(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Socket {
                netns: ns.clone(),
                source,
            })?;
        rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| Error::Socket {
                    netns: ns.clone(),
                    source,
                })?;
            tokio::spawn(conn);
            let link = handle
                .link()
                .get()
                .match_name(ifname.clone())
                .execute()
                .try_next()
                .await
                .map_err(|e| Error::Link {
                    ifname: ifname.clone(),
                    reason: e.to_string(),
                })?
                .ok_or_else(|| Error::Link {
                    ifname: ifname.clone(),
                    reason: "no such link".into(),
                })?;
            let index = link.header.index;
            for gw in gateways {
                let version = if gw.is_ipv4() {
                    IpVersion::V4
                } else {
                    IpVersion::V6
                };
                let mut routes = handle
                    .route()
                    .get(RouteMessageBuilder::<IpAddr>::new().build())
                    .execute();
                let mut defaults = Vec::new();
                while let Some(r) = routes.try_next().await.map_err(|e| Error::Route {
                    step: "list routes".into(),
                    reason: e.to_string(),
                })? {
                    let family_matches = match version {
                        IpVersion::V4 => {
                            r.header.address_family == rtnetlink::packet_route::AddressFamily::Inet
                        }
                        IpVersion::V6 => {
                            r.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6
                        }
                    };
                    if family_matches
                        && r.header.destination_prefix_length == 0
                        && r.header.table
                            == rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
                    {
                        defaults.push(r);
                    }
                }
                for r in defaults {
                    handle
                        .route()
                        .del(r)
                        .execute()
                        .await
                        .map_err(|e| Error::Route {
                            step: "delete old default route".into(),
                            reason: e.to_string(),
                        })?;
                }
                let msg = match gw {
                    IpAddr::V4(g) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                        .gateway(g)
                        .output_interface(index)
                        .build(),
                    IpAddr::V6(g) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                        .gateway(g)
                        .output_interface(index)
                        .build(),
                };
                handle
                    .route()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| Error::Route {
                        step: format!("add default route via {gw} dev {ifname}"),
                        reason: e.to_string(),
                    })?;
            }
            Ok(())
        })
    })?
}
