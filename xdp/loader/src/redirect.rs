//! The untranslated path: TC ingress on each listed interface hands frames
//! to the peer of another interface with `bpf_redirect_peer` (no routing, no
//! netfilter). The benchmark's ceiling for a path through a pod namespace.

use aya::maps::HashMap;
use aya::programs::TcAttachType;
use aya::Ebpf;
use virtlink_xdp_common::{MAP_REDIRECT, PROG_REDIRECT_PEER};

use crate::{attach, classifier, ifindex, load, map_err, Error, Result};

/// The redirect program, attached while this lives.
#[derive(Debug)]
pub struct RedirectPeer {
    pub pairs: Vec<(String, String)>,
    _ebpf: Ebpf,
}

/// For each `(from, to)`: frames arriving on `from` leave through the peer
/// of veth `to` (they appear on the peer's ingress in its namespace). List
/// both directions for a two-way path. Call in the namespace of the
/// interfaces.
pub fn attach_redirect_peer(pairs: &[(&str, &str)]) -> Result<RedirectPeer> {
    let mut ebpf = load(None)?;
    {
        let map = ebpf
            .map_mut(MAP_REDIRECT)
            .ok_or(Error::MissingMap(MAP_REDIRECT))?;
        let mut m: HashMap<_, u32, u32> =
            HashMap::try_from(map).map_err(map_err(MAP_REDIRECT, "open"))?;
        for (from, to) in pairs {
            m.insert(ifindex(from)?, ifindex(to)?, 0)
                .map_err(map_err(MAP_REDIRECT, "write"))?;
        }
    }
    let prog = classifier(&mut ebpf, PROG_REDIRECT_PEER)?;
    for (from, _) in pairs {
        attach(prog, PROG_REDIRECT_PEER, from, TcAttachType::Ingress, None)?;
    }
    Ok(RedirectPeer {
        pairs: pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        _ebpf: ebpf,
    })
}

impl RedirectPeer {
    /// The redirect map's `(from ifindex, to ifindex)` entries.
    pub fn entries(&self) -> Result<Vec<(u32, u32)>> {
        let map = self
            ._ebpf
            .map(MAP_REDIRECT)
            .ok_or(Error::MissingMap(MAP_REDIRECT))?;
        let m: HashMap<_, u32, u32> =
            HashMap::try_from(map).map_err(map_err(MAP_REDIRECT, "open"))?;
        m.iter()
            .map(|r| r.map_err(map_err(MAP_REDIRECT, "read")))
            .collect()
    }
}
