//! The untranslated `bpf_redirect_peer` path through a middle namespace
//! that neither routes nor forwards.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{veth, Netns, PING_WAIT};
use virtlink_xdp::redirect::attach_redirect_peer;

#[test]
fn redirect_peer_carries_traffic_without_forwarding() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let mid = Netns::with_prefix("xrm")?;
    let a = Netns::with_prefix("xra")?;
    let b = Netns::with_prefix("xrb")?;
    veth(&a, "eth0", &mid, "m0")?;
    veth(&b, "eth0", &mid, "m1")?;
    a.ip(&["addr", "add", "10.98.0.1/24", "dev", "eth0"])?;
    b.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth0"])?;
    mid.sysctl("net.ipv4.ip_forward", "0")?;
    assert!(
        !a.ping("10.98.0.2", 1, PING_WAIT, &[]),
        "reachable without the program"
    );
    let prog = mid.enter(|| attach_redirect_peer(&[("m0", "m1"), ("m1", "m0")]))??;
    assert_eq!(prog.entries()?.len(), 2);
    // The first probe right after the links came up can be lost; a few tries.
    let ok = (0..3).any(|_| {
        let ok = a.ping("10.98.0.2", 1, PING_WAIT, &[]);
        if !ok {
            std::thread::sleep(Duration::from_millis(300));
        }
        ok
    });
    assert!(ok, "no answer over the redirect_peer path");
    drop(prog);
    assert!(
        !a.ping("10.98.0.2", 1, Duration::from_secs(1), &[]),
        "still reachable after detach"
    );
    Ok(())
}
