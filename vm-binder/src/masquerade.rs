//! Masquerade binding: the guest sits behind NAT on a tap with a private
//! subnet (10.0.2.0/24 by default); an nftables table in the pod namespace
//! masquerades its traffic to the pod IP and DNATs inbound connections to
//! the pod IP (all ports, or only the interface's listed ports) to the guest,
//! never the Istio/Envoy ports.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::spec::Protocol;

/// Ports Istio's sidecar (Envoy, pilot-agent) listens on in the pod; they
/// are never forwarded to the guest (by nftables or eBPF).
pub const ISTIO_PORTS: [u16; 10] = virtlink_xdp::common::ENVOY_PORTS;

/// Who translates the guest's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// An nftables table in the pod namespace (netfilter NAT, conntrack).
    Nftables,
    /// virtlink's eBPF programs (xdp/, docs/xdp.md) for IPv4 and IPv6; the
    /// nftables table stays for the packets the programs pass on
    /// (fragments, IPv6 extension headers, ICMP errors about untracked
    /// flows).
    #[default]
    Ebpf,
}

impl std::str::FromStr for Datapath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nftables" => Ok(Datapath::Nftables),
            "ebpf" => Ok(Datapath::Ebpf),
            other => Err(format!("unknown datapath {other:?} (ebpf, nftables)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run nft for table {table}")]
    Spawn {
        table: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft {step} table {table} failed: {stderr}")]
    Nft {
        step: &'static str,
        table: String,
        stderr: String,
    },
    #[error("enable forwarding ({path})")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("masquerade subnet {0} has no room for a gateway and a guest")]
    Subnet(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The guest side of a masquerade binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasqueradeConfig {
    /// Gateway (the tap) is the first host, the guest the second.
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Net>,
}

impl Default for MasqueradeConfig {
    fn default() -> Self {
        Self {
            ipv4: Ipv4Net::new(Ipv4Addr::new(10, 0, 2, 0), 24).unwrap_or_default(),
            ipv6: Ipv6Net::new(Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0), 120).ok(),
        }
    }
}

impl MasqueradeConfig {
    /// (gateway, guest) IPv4 addresses.
    pub fn v4(&self) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let mut hosts = self.ipv4.trunc().hosts();
        match (hosts.next(), hosts.next()) {
            (Some(g), Some(v)) if self.ipv4.prefix_len() <= 30 => Ok((g, v)),
            _ => Err(Error::Subnet(self.ipv4.to_string())),
        }
    }

    /// (gateway, guest) IPv6 addresses.
    pub fn v6(&self) -> Result<Option<(Ipv6Addr, Ipv6Addr)>> {
        let Some(net) = self.ipv6 else {
            return Ok(None);
        };
        if net.prefix_len() > 126 {
            return Err(Error::Subnet(net.to_string()));
        }
        let base = u128::from(net.trunc().network());
        Ok(Some((Ipv6Addr::from(base + 1), Ipv6Addr::from(base + 2))))
    }
}

/// Which inbound connections reach the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forward {
    /// Every TCP and UDP port except the Istio ones.
    All,
    /// Only these (minus the Istio ones).
    Ports(Vec<(Protocol, u16)>),
}

/// Everything the nftables ruleset is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    pub pod_if: String,
    pub tap: String,
    pub pod_v4: Option<Ipv4Addr>,
    pub pod_v6: Option<Ipv6Addr>,
    pub guest_v4: Ipv4Addr,
    pub guest_v6: Option<Ipv6Addr>,
    pub forward: Forward,
    /// Masquerade the guest's IPv4 traffic (off when eBPF translates it after
    /// the stack, in Istio mode).
    pub masquerade_v4: bool,
    /// The same for IPv6.
    pub masquerade_v6: bool,
}

/// `virtlink-<iface>`, with characters nft identifiers do not allow replaced.
pub fn table_name(iface: &str) -> String {
    let clean: String = iface
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("virtlink-{clean}")
}

fn set(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().collect();
    format!("{{ {} }}", v.join(", "))
}

impl Ruleset {
    /// The `nft -f` script: replaces the table atomically (so loading twice
    /// is the same as loading once).
    pub fn script(&self) -> String {
        let t = &self.table;
        let istio = set(ISTIO_PORTS.iter().map(u16::to_string));
        let mut dnat = Vec::new();
        let families: Vec<(&str, String, String)> = [
            self.pod_v4
                .map(|p| ("ip", p.to_string(), self.guest_v4.to_string())),
            match (self.pod_v6, self.guest_v6) {
                (Some(p), Some(g)) => Some(("ip6", p.to_string(), format!("[{g}]"))),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        for (fam, pod, guest) in &families {
            let head = format!("iifname \"{}\" {fam} daddr {pod}", self.pod_if);
            match &self.forward {
                Forward::All => dnat.push(format!(
                    "{head} meta l4proto {{ tcp, udp }} th dport != {istio} dnat {fam} to {guest}"
                )),
                Forward::Ports(ports) => {
                    for proto in [Protocol::Tcp, Protocol::Udp] {
                        let mut list: Vec<u16> = ports
                            .iter()
                            .filter(|(p, port)| *p == proto && !ISTIO_PORTS.contains(port))
                            .map(|(_, port)| *port)
                            .collect();
                        list.sort_unstable();
                        list.dedup();
                        if !list.is_empty() {
                            dnat.push(format!(
                                "{head} {} dport {} dnat {fam} to {guest}",
                                proto.as_str(),
                                set(list.iter().map(u16::to_string))
                            ));
                        }
                    }
                }
            }
        }
        let mut snat = Vec::new();
        if self.masquerade_v4 {
            snat.push(format!(
                "iifname \"{}\" oifname \"{}\" ip saddr {} masquerade",
                self.tap, self.pod_if, self.guest_v4
            ));
        }
        if let (Some(g), true) = (self.guest_v6, self.masquerade_v6) {
            snat.push(format!(
                "iifname \"{}\" oifname \"{}\" ip6 saddr {g} masquerade",
                self.tap, self.pod_if
            ));
        }
        let indent = |rules: &[String]| {
            rules
                .iter()
                .map(|r| format!("\t\t{r}\n"))
                .collect::<String>()
        };
        format!(
            "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n\
             \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{}\t}}\n\
             \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{}\t}}\n}}\n",
            indent(&dnat),
            indent(&snat)
        )
    }
}

/// Runs `nft -f -` with `script` in the calling thread's namespace.
fn nft(step: &'static str, table: &str, script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            table: table.to_string(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| Error::Spawn {
                table: table.to_string(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        table: table.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Nft {
            step,
            table: table.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Loads (or replaces) the ruleset; call on a thread inside the pod's netns.
pub fn load(rules: &Ruleset) -> Result<()> {
    nft("load", &rules.table, &rules.script())
}

/// Removes the table; a table that is not there is fine.
pub fn unload(table: &str) -> Result<()> {
    nft(
        "delete",
        table,
        &format!("table inet {table}\ndelete table inet {table}\n"),
    )
}

/// Turns on IPv4 (and, when `v6`, IPv6) forwarding in the calling thread's
/// namespace.
pub fn enable_forwarding(v6: bool) -> Result<()> {
    let mut paths = vec!["/proc/sys/net/ipv4/ip_forward"];
    if v6 {
        paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for path in paths {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|source| Error::Sysctl {
            path: path.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Turns off IPv6 duplicate address detection on `device` in the calling
/// thread's namespace (before its addresses are added).
pub fn disable_dad(device: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/accept_dad");
    std::fs::write(&path, "0").map_err(|source| Error::Sysctl { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(forward: Forward) -> Ruleset {
        Ruleset {
            table: table_name("default"),
            pod_if: "eth0".into(),
            tap: "tap0".into(),
            pod_v4: Some(Ipv4Addr::new(10, 244, 0, 5)),
            pod_v6: None,
            guest_v4: Ipv4Addr::new(10, 0, 2, 2),
            guest_v6: None,
            forward,
            masquerade_v4: true,
            masquerade_v6: true,
        }
    }

    #[test]
    fn defaults() {
        let c = MasqueradeConfig::default();
        assert_eq!(
            c.v4().unwrap(),
            (Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2))
        );
        assert_eq!(
            c.v6().unwrap(),
            Some((
                "fd10:0:2::1".parse().unwrap(),
                "fd10:0:2::2".parse().unwrap()
            ))
        );
        let custom = MasqueradeConfig {
            ipv4: "192.168.7.0/30".parse().unwrap(),
            ipv6: None,
        };
        assert_eq!(
            custom.v4().unwrap(),
            (Ipv4Addr::new(192, 168, 7, 1), Ipv4Addr::new(192, 168, 7, 2))
        );
        assert_eq!(custom.v6().unwrap(), None);
        let tiny = MasqueradeConfig {
            ipv4: "192.168.7.0/31".parse().unwrap(),
            ipv6: None,
        };
        assert!(tiny.v4().is_err());
        assert_eq!(table_name("my.if"), "virtlink-my_if");
    }

    #[test]
    fn all_ports_exclude_istio() {
        let s = rules(Forward::All).script();
        assert!(s.starts_with("table inet virtlink-default\ndelete table inet virtlink-default\n"));
        assert!(s.contains(
            "iifname \"eth0\" ip daddr 10.244.0.5 meta l4proto { tcp, udp } th dport != \
             { 15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090 } dnat ip to 10.0.2.2"
        ), "{s}");
        assert!(s.contains("iifname \"tap0\" oifname \"eth0\" ip saddr 10.0.2.2 masquerade"));
        assert!(!s.contains("ip6"));
    }

    #[test]
    fn listed_ports_only_and_never_istio() {
        let s = rules(Forward::Ports(vec![
            (Protocol::Tcp, 8080),
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 15001),
            (Protocol::Udp, 53),
            (Protocol::Udp, 15053),
            (Protocol::Tcp, 80),
        ]))
        .script();
        assert!(
            s.contains("ip daddr 10.244.0.5 tcp dport { 80, 8080 } dnat ip to 10.0.2.2"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr 10.244.0.5 udp dport { 53 } dnat ip to 10.0.2.2"),
            "{s}"
        );
        for p in ISTIO_PORTS {
            assert!(!s.contains(&p.to_string()), "{p} in {s}");
        }
        assert!(!s.contains("th dport"));
        // Only Istio ports listed: nothing is forwarded at all.
        let none = rules(Forward::Ports(vec![(Protocol::Tcp, 15006)])).script();
        assert!(!none.contains("dnat"), "{none}");
    }

    #[test]
    fn dual_stack() {
        let mut r = rules(Forward::All);
        r.pod_v6 = Some("fd00::5".parse().unwrap());
        r.guest_v6 = Some("fd10:0:2::2".parse().unwrap());
        let s = r.script();
        assert!(
            s.contains("ip6 daddr fd00::5 meta l4proto { tcp, udp } th dport != {"),
            "{s}"
        );
        assert!(s.contains("dnat ip6 to [fd10:0:2::2]"), "{s}");
        assert!(s.contains("ip6 saddr fd10:0:2::2 masquerade"), "{s}");
        r.masquerade_v4 = false;
        let s = r.script();
        assert!(!s.contains("ip saddr"), "{s}");
        assert!(s.contains("ip6 saddr fd10:0:2::2 masquerade"), "{s}");
        r.masquerade_v6 = false;
        let s = r.script();
        assert!(!s.contains("masquerade"), "{s}");
        assert!(s.contains("dnat ip6 to [fd10:0:2::2]"), "{s}");
    }

    #[test]
    fn datapath_names() {
        assert_eq!("ebpf".parse::<Datapath>(), Ok(Datapath::Ebpf));
        assert_eq!("nftables".parse::<Datapath>(), Ok(Datapath::Nftables));
        assert!("xdp".parse::<Datapath>().is_err());
        assert_eq!(Datapath::default(), Datapath::Ebpf);
    }
}
