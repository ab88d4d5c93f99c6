//! Moving a pod's default route to the network that asked for it
//! (`default-route` in a network selection element), over rtnetlink inside
//! the pod's namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netattach::netlink::{self, Netlink};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netattach::netns::Error),
    #[error("in network namespace {netns}")]
    Netlink {
        netns: PathBuf,
        #[source]
        source: netlink::Error,
    },
    #[error("find interface {ifname}: no such link")]
    NoLink { ifname: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Replaces the default route of each gateway's address family with one via
/// that gateway on `ifname`.
pub fn set_default_routes(netns: &Path, ifname: &str, gateways: &[IpAddr]) -> Result<()> {
    let ifname = ifname.to_string();
    let gateways = gateways.to_vec();
    let ns = netns.to_path_buf();
    netattach::netns::run_in(netns, move || {
        let in_ns = |source| Error::Netlink {
            netns: ns.clone(),
            source,
        };
        let n = Netlink::new().map_err(in_ns)?;
        let link = n
            .link(&ifname)
            .map_err(in_ns)?
            .ok_or_else(|| Error::NoLink {
                ifname: ifname.clone(),
            })?;
        for gw in gateways {
            n.del_default_routes(gw.is_ipv6()).map_err(in_ns)?;
            n.add_default_route(&link, gw).map_err(in_ns)?;
        }
        Ok(())
    })?
}
