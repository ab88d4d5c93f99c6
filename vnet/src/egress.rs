//! Egress of networks with `egress: true` (docs/vnet.md, "Egress"): the
//! node's part, around `vnet_from_pod` handing such packets to the stack.
//!
//! - nftables table `ip virtlink_vnet`, rewritten whole on every apply:
//!   packets from an egress endpoint's host veth get a conntrack zone of
//!   their own for the original direction (two tenants' identical tuples are
//!   two connections) and the connection mark [`mark`] of that veth; they
//!   are masqueraded to the node's address on the way out. Replies (found in
//!   the default zone by their NAT tuple) get the connection mark as packet
//!   mark.
//! - per egress endpoint: `ip rule fwmark <mark> lookup <mark>` (priority
//!   [`RULE_PRIORITY`]), a `default dev <host veth>` route in that table and
//!   a permanent neighbour (the pod's ARP replies are not let through by
//!   `vnet_from_pod`), so a de-NATed reply reaches the right pod even when
//!   other networks use the same address.
//!
//! Must run in the node's namespace (the caller's thread).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {what}: {stderr}")]
    Failed {
        program: &'static str,
        what: String,
        stderr: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The priority of the reply rules.
pub const RULE_PRIORITY: u32 = 20000;
/// The nftables table.
pub const TABLE: &str = "virtlink_vnet";

/// One endpoint of an egress network on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEndpoint {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The connection and packet mark, and routing table, of an endpoint:
/// stable for the life of its host veth.
pub fn mark(ifindex: u32) -> u32 {
    0x7600_0000 | (ifindex & 0x00ff_ffff)
}

/// The endpoint's conntrack zone (16 bits; 0 is the default zone).
pub fn zone(ifindex: u32) -> u16 {
    (ifindex % 0xffff) as u16 + 1
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|source| Error::Spawn { program, source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| Error::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| Error::Spawn { program, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            program,
            what: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The nftables script that makes the table hold exactly `eps` (or removes
/// it when there are none).
pub fn ruleset(eps: &[EgressEndpoint]) -> String {
    let mut s = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n");
    if eps.is_empty() {
        return s;
    }
    let zones: Vec<String> = eps
        .iter()
        .map(|e| format!("\"{}\" : {}", e.host_ifname, zone(e.host_ifindex)))
        .collect();
    let marks: Vec<String> = eps
        .iter()
        .map(|e| format!("\"{}\" : {:#x}", e.host_ifname, mark(e.host_ifindex)))
        .collect();
    let names: Vec<String> = eps
        .iter()
        .map(|e| format!("\"{}\"", e.host_ifname))
        .collect();
    s.push_str(&format!(
        "table ip {TABLE} {{
  chain zones {{
    type filter hook prerouting priority raw; policy accept;
    ct original zone set iifname map {{ {zones} }}
  }}
  chain marks {{
    type filter hook prerouting priority mangle; policy accept;
    ct direction original ct mark set iifname map {{ {marks} }}
    ct direction reply ct mark != 0 meta mark set ct mark
  }}
  chain masq {{
    type nat hook postrouting priority srcnat; policy accept;
    iifname {{ {names} }} ct direction original masquerade
  }}
}}
",
        zones = zones.join(", "),
        marks = marks.join(", "),
        names = names.join(", "),
    ));
    s
}

/// Makes the node's egress state (nftables table, rules, routes,
/// neighbours, sysctls) match `eps`. Idempotent.
pub fn apply(eps: &[EgressEndpoint]) -> Result<()> {
    run("nft", &["-f", "-"], Some(&ruleset(eps)))?;
    // Rules: ours are the ones at RULE_PRIORITY; removed and written again.
    let pref = RULE_PRIORITY.to_string();
    for _ in 0..=eps.len() + 1024 {
        if run("ip", &["rule", "del", "pref", &pref], None).is_err() {
            break;
        }
    }
    for e in eps {
        let m = mark(e.host_ifindex).to_string();
        let mac = crate::model::format_mac(&e.mac);
        let ip = e.ip.to_string();
        run(
            "ip",
            &["rule", "add", "pref", &pref, "fwmark", &m, "lookup", &m],
            None,
        )?;
        run(
            "ip",
            &[
                "route",
                "replace",
                "default",
                "dev",
                &e.host_ifname,
                "table",
                &m,
            ],
            None,
        )?;
        run(
            "ip",
            &[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &mac,
                "dev",
                &e.host_ifname,
                "nud",
                "permanent",
            ],
            None,
        )?;
        // The pod's source address has no route back through its veth in
        // the main table: no reverse-path filter on it.
        let rp = format!("/proc/sys/net/ipv4/conf/{}/rp_filter", e.host_ifname);
        if let Err(err) = std::fs::write(&rp, "0") {
            tracing::debug!(path = %rp, error = %err, "rp_filter");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_zones_are_stable_and_nonzero() {
        assert_eq!(mark(7), 0x7600_0007);
        assert_eq!(zone(7), 8);
        assert_eq!(zone(0xffff), 1);
        assert!(zone(u32::MAX) >= 1);
    }

    #[test]
    fn empty_ruleset_only_removes_the_table() {
        assert_eq!(
            ruleset(&[]),
            "table ip virtlink_vnet {}\ndelete table ip virtlink_vnet\n"
        );
    }
}
