//! The untranslated `bpf_redirect_peer` path through a middle namespace
//! that neither routes nor forwards.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{veth, Ns};
use virtlink_xdp::redirect::attach_redirect_peer;

#[test]
fn redirect_peer_carries_traffic_without_forwarding() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let mid = Ns::new("xrm")?;
    let a = Ns::new("xra")?;
    let b = Ns::new("xrb")?;
    veth(&a, "eth0", &mid, "m0")?;
    veth(&b, "eth0", &mid, "m1")?;
    a.ip(&["addr", "add", "10.98.0.1/24", "dev", "eth0"])?;
    b.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth0"])?;
    mid.sysctl("net.ipv4.ip_forward", "0")?;
    assert!(!a.ping("10.98.0.2", &[]), "reachable without the program");
    let prog = mid.run(|| attach_redirect_peer(&[("m0", "m1"), ("m1", "m0")]))??;
    assert_eq!(prog.entries()?.len(), 2);
    // The first probe right after the links came up can be lost; a few tries.
    let ok = (0..3).any(|_| {
        let ok = a.ping("10.98.0.2", &[]);
        if !ok {
            std::thread::sleep(Duration::from_millis(300));
        }
        ok
    });
    assert!(ok, "no answer over the redirect_peer path");
    drop(prog);
    assert!(
        !a.ping("10.98.0.2", &["-W", "1"]),
        "still reachable after detach"
    );
    Ok(())
}
