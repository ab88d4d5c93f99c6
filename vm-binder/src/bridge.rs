//! Bridge binding: the pod interface and the guest's tap become ports of an
//! in-pod bridge `k6t-<ifname>`; the pod interface gives its IP addresses to
//! the guest (served by DHCP) and its MAC too (it gets a random one).
//!
//! What was changed is recorded, before anything is changed, as JSON in the
//! bridge's alias (`ip link show` shows it): the namespace itself carries
//! what unbind needs, across binder restarts, and it disappears with the pod.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::tap;
use netattach::netlink::{self, Link, Netlink, Route4};

/// IFALIASZ - 1.
const MAX_ALIAS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod interface {0} not found")]
    NoPodInterface(String),
    #[error("{step}")]
    Netlink {
        step: &'static str,
        #[source]
        source: netlink::Error,
    },
    #[error("create tap")]
    Tap(#[source] tap::Error),
    #[error("link {0} disappeared")]
    Gone(String),
    #[error("state of {bridge} does not fit in its alias ({len} bytes)")]
    StateTooLarge { bridge: String, len: usize },
    #[error("generate a MAC")]
    RandomMac(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

fn nl(step: &'static str) -> impl FnOnce(netlink::Error) -> Error {
    move |source| Error::Netlink { step, source }
}

/// What the pod interface had before it was bridged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(rename = "v")]
    pub version: u8,
    pub mac: Mac,
    pub addrs: Vec<IpNet>,
    pub routes: Vec<Route4>,
    pub mtu: Option<u32>,
}

impl Saved {
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        self.addrs.iter().find_map(|a| match a {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.gateway)
    }
}

/// `k6t-<ifname>`, cut to the kernel's 15 bytes.
pub fn bridge_name(pod_if: &str) -> String {
    let mut n = format!("k6t-{pod_if}");
    n.truncate(15);
    n
}

/// The link-local address the bridge gets so the DHCP server has a source
/// and server identifier: 169.254.75.(10 + index), like KubeVirt.
pub fn server_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 75, 10u8.saturating_add(index.min(200) as u8))
}

fn link(n: &Netlink, name: &str, step: &'static str) -> Result<Link> {
    n.link(name)
        .map_err(nl(step))?
        .ok_or_else(|| Error::Gone(name.to_string()))
}

/// The link kinds whose parent delivers a frame only to the device owning
/// its destination MAC: the guest must use the pod interface's MAC, which
/// the interface keeps.
const KEEP_MAC_KINDS: [&str; 2] = ["macvlan", "macvtap"];

/// What [`bind`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// What the pod interface had before.
    pub saved: Saved,
    /// The MAC the guest must use.
    pub guest_mac: Mac,
}

/// Binds; call inside the pod's namespace. `guest_mac` is the VM spec's
/// `macAddress`, if any; otherwise the guest takes the pod interface's MAC.
///
/// Usually the pod interface then gets a new random MAC (as KubeVirt does).
/// A macvlan interface, or any interface with `keep_mac`, keeps its MAC
/// instead (set to `guest_mac` when given):
/// its parent only delivers frames addressed to it, so the guest shares it
/// and the bridge's own FDB entry for it is removed, which makes the bridge
/// forward those frames to the tap.
pub fn bind(
    pod_if: &str,
    tap_name: &str,
    index: usize,
    owner: Option<u32>,
    guest_mac: Option<Mac>,
    keep_mac: bool,
) -> Result<Bound> {
    let n = Netlink::new().map_err(nl("open netlink"))?;
    let pod = n
        .link(pod_if)
        .map_err(nl("find pod interface"))?
        .ok_or_else(|| Error::NoPodInterface(pod_if.to_string()))?;
    let br_name = bridge_name(pod_if);
    let existing = n.link(&br_name).map_err(nl("find bridge"))?;
    let saved = match existing
        .as_ref()
        .and_then(|b| b.alias.as_deref())
        .and_then(|a| serde_json::from_str::<Saved>(a).ok())
    {
        Some(s) => s,
        None => Saved {
            version: 1,
            mac: pod.mac.map(Mac).unwrap_or_default(),
            addrs: n
                .global_addrs(pod.index)
                .map_err(nl("read pod addresses"))?,
            routes: n.routes4(pod.index).map_err(nl("read pod routes"))?,
            mtu: pod.mtu,
        },
    };
    let keep_mac = keep_mac
        || pod
            .kind
            .as_deref()
            .is_some_and(|k| KEEP_MAC_KINDS.contains(&k));
    let guest = guest_mac.unwrap_or(saved.mac);
    n.add_bridge(&br_name).map_err(nl("create bridge"))?;
    let br = link(&n, &br_name, "find bridge")?;
    if existing.is_none() {
        // A bridge takes its lowest port MAC unless given one: it must never
        // take the guest's.
        let own = Mac::random().map_err(Error::RandomMac)?;
        n.set_mac(&br, own.octets()).map_err(nl("set bridge MAC"))?;
    }
    let alias = serde_json::to_string(&saved).unwrap_or_default();
    if alias.len() > MAX_ALIAS {
        return Err(Error::StateTooLarge {
            bridge: br_name,
            len: alias.len(),
        });
    }
    n.set_alias(&br, &alias)
        .map_err(nl("record state in bridge alias"))?;
    if let Some(mtu) = saved.mtu {
        n.set_mtu(&br, mtu).map_err(nl("set bridge MTU"))?;
    }

    tap::create_persistent(tap_name, owner).map_err(Error::Tap)?;
    let t = link(&n, tap_name, "find tap")?;
    if let Some(mtu) = saved.mtu {
        n.set_mtu(&t, mtu).map_err(nl("set tap MTU"))?;
    }
    n.set_controller(&t, Some(br.index))
        .map_err(nl("attach tap to bridge"))?;
    n.set_up(&t).map_err(nl("set tap up"))?;

    for a in &saved.addrs {
        n.del_addr(&pod, *a)
            .map_err(nl("remove pod interface address"))?;
    }
    if keep_mac {
        if pod.mac != Some(guest.octets()) {
            n.set_mac(&pod, guest.octets())
                .map_err(nl("give pod interface the guest's MAC"))?;
        }
    } else if pod.mac == Some(saved.mac.octets()) {
        let fresh = Mac::random().map_err(Error::RandomMac)?;
        n.set_mac(&pod, fresh.octets())
            .map_err(nl("give pod interface a new MAC"))?;
    }
    n.set_controller(&pod, Some(br.index))
        .map_err(nl("attach pod interface to bridge"))?;
    n.set_up(&pod).map_err(nl("set pod interface up"))?;
    if keep_mac {
        let pod = link(&n, pod_if, "find pod interface")?;
        n.del_local_fdb(&pod, guest.octets())
            .map_err(nl("forward the guest's MAC to the tap"))?;
    }
    let br = link(&n, &br_name, "find bridge")?;
    n.add_addr(&br, IpNet::V4(Ipv4Net::from(server_address(index))))
        .map_err(nl("add DHCP server address to bridge"))?;
    n.set_up(&br).map_err(nl("set bridge up"))?;
    Ok(Bound {
        saved,
        guest_mac: guest,
    })
}

/// Undoes [`bind`]; call inside the pod's namespace. Harmless when nothing
/// is bound.
pub fn unbind(pod_if: &str, tap_name: &str) -> Result<Option<Saved>> {
    let n = Netlink::new().map_err(nl("open netlink"))?;
    let br_name = bridge_name(pod_if);
    n.del_link(tap_name).map_err(nl("delete tap"))?;
    let Some(br) = n.link(&br_name).map_err(nl("find bridge"))? else {
        return Ok(None);
    };
    let saved = br
        .alias
        .as_deref()
        .and_then(|a| serde_json::from_str::<Saved>(a).ok());
    if let Some(pod) = n.link(pod_if).map_err(nl("find pod interface"))? {
        if pod.controller == Some(br.index) {
            n.set_controller(&pod, None)
                .map_err(nl("detach pod interface from bridge"))?;
        }
        if let Some(s) = &saved {
            let pod = link(&n, pod_if, "find pod interface")?;
            n.set_mac(&pod, s.mac.octets())
                .map_err(nl("restore pod interface MAC"))?;
            n.set_up(&pod).map_err(nl("set pod interface up"))?;
            for a in &s.addrs {
                n.add_addr(&pod, *a)
                    .map_err(nl("restore pod interface address"))?;
            }
            // Link routes first: gateways may be reachable only through them.
            let mut routes = s.routes.clone();
            routes.sort_by_key(|r| r.gateway.is_some());
            for r in routes {
                n.add_route4(&pod, r).map_err(nl("restore pod route"))?;
            }
        }
    }
    n.del_link(&br_name).map_err(nl("delete bridge"))?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_state_size() {
        assert_eq!(bridge_name("eth0"), "k6t-eth0");
        assert_eq!(bridge_name("averylonginterface"), "k6t-averylongin");
        assert_eq!(server_address(0), Ipv4Addr::new(169, 254, 75, 10));
        assert_eq!(server_address(3), Ipv4Addr::new(169, 254, 75, 13));
        let s = Saved {
            version: 1,
            mac: "0a:58:0a:f4:00:05".parse().unwrap(),
            addrs: vec![
                "10.244.0.5/24".parse().unwrap(),
                "fd00:10:244::5/64".parse().unwrap(),
            ],
            routes: vec![
                Route4 {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some(Ipv4Addr::new(10, 244, 0, 1)),
                },
                Route4 {
                    dst: "10.96.0.0/12".parse().unwrap(),
                    gateway: Some(Ipv4Addr::new(10, 244, 0, 1)),
                },
            ],
            mtu: Some(1450),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.len() <= MAX_ALIAS, "{} bytes: {json}", json.len());
        assert_eq!(serde_json::from_str::<Saved>(&json).unwrap(), s);
        assert_eq!(s.ipv4(), Some("10.244.0.5/24".parse().unwrap()));
        assert_eq!(s.gateway(), Some(Ipv4Addr::new(10, 244, 0, 1)));
    }
}
