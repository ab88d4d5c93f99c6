//! 802.1Q tagging on one interface: `vlan_push` on egress, `vlan_pop` on
//! ingress (frames without the interface's tag are dropped). Attached for as
//! long as the [`Vlan`] lives.

use aya::maps::Array;
use aya::programs::TcAttachType;
use aya::Ebpf;
use virtlink_xdp_common::{VlanConfig, MAP_VLAN, PROG_VLAN_POP, PROG_VLAN_PUSH};

use crate::{attach, classifier, load, map_err, Error, Result};

/// The VLAN programs attached to one interface; dropping detaches them.
#[derive(Debug)]
pub struct Vlan {
    pub iface: String,
    pub vid: u16,
    _ebpf: Ebpf,
}

/// Tags everything `iface` sends with `vid` and accepts only frames tagged
/// `vid` (untagging them); call in `iface`'s network namespace.
pub fn attach_vlan(iface: &str, vid: u16) -> Result<Vlan> {
    if !(1..=4094).contains(&vid) {
        return Err(Error::Config(format!("VLAN id {vid} is not in 1..=4094")));
    }
    crate::ifindex(iface)?;
    let mut ebpf = load(None)?;
    {
        let map = ebpf.map_mut(MAP_VLAN).ok_or(Error::MissingMap(MAP_VLAN))?;
        let mut cfg: Array<_, VlanConfig> =
            Array::try_from(map).map_err(map_err(MAP_VLAN, "open"))?;
        cfg.set(0, VlanConfig { vid, _pad: 0 }, 0)
            .map_err(map_err(MAP_VLAN, "write"))?;
    }
    for (name, at) in [
        (PROG_VLAN_PUSH, TcAttachType::Egress),
        (PROG_VLAN_POP, TcAttachType::Ingress),
    ] {
        let prog = classifier(&mut ebpf, name)?;
        attach(prog, name, iface, at, None)?;
    }
    Ok(Vlan {
        iface: iface.to_string(),
        vid,
        _ebpf: ebpf,
    })
}
