//! 802.1Q tagging in TC (this kernel has no VLAN devices), and the
//! untranslated redirect the benchmark uses as its ceiling.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect_peer, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{classifier, map},
    maps::{Array, HashMap},
    programs::TcContext,
    EbpfContext,
};
use virtlink_xdp_common::VlanConfig;

const ETH_P_8021Q: u16 = 0x8100;
/// `PACKET_HOST` from linux/if_packet.h.
const PACKET_HOST: u32 = 0;

#[map(name = "VL_VLAN")]
static VLAN: Array<VlanConfig> = Array::with_max_entries(1, 0);

#[map(name = "VL_REDIRECT")]
static REDIRECT: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// TC egress: every frame leaves with the interface's tag.
#[classifier]
pub fn vlan_push(ctx: TcContext) -> i32 {
    let Some(cfg) = VLAN.get(0) else {
        return TC_ACT_SHOT as i32;
    };
    if cfg.vid == 0 {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the skb pointer is the program's own context.
    let ret = unsafe { bpf_skb_vlan_push(ctx.as_ptr().cast(), ETH_P_8021Q.to_be(), cfg.vid) };
    if ret == 0 {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// TC ingress: frames with the interface's tag lose it; untagged frames and
/// frames of other VLANs are dropped.
#[classifier]
pub fn vlan_pop(ctx: TcContext) -> i32 {
    let Some(cfg) = VLAN.get(0) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: the skb pointer is the program's own context, valid for the run.
    let (present, tci) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).vlan_present, (*skb).vlan_tci)
    };
    if present == 0 || (tci & 0x0fff) as u16 != cfg.vid {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: the skb pointer is the program's own context.
    let ret = unsafe { bpf_skb_vlan_pop(ctx.as_ptr().cast()) };
    if ret == 0 {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// TC ingress: hands the frame straight to the peer of the configured
/// interface (`bpf_redirect_peer`), with no translation.
#[classifier]
pub fn redirect_peer(ctx: TcContext) -> i32 {
    // SAFETY: the skb pointer is the program's own context, valid for the run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a read-only lookup of a u32 value.
    let Some(&target) = (unsafe { REDIRECT.get(&ifindex) }) else {
        return TC_ACT_OK as i32;
    };
    // The packet type was set against this interface's MAC; the peer does
    // not classify it again, so a unicast frame (addressed to the peer,
    // which answered its ARP) would stay "other host" and be dropped there.
    let Ok(dst0) = ctx.load::<u8>(0) else {
        return TC_ACT_SHOT as i32;
    };
    if dst0 & 1 == 0 && ctx.skb.change_type(PACKET_HOST).is_err() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: a helper taking an ifindex and flags.
    unsafe { bpf_redirect_peer(target, 0) as i32 }
}
