//! `virtlink bench vnet`: isolated tenant networks (docs/vnet.md), all
//! paths built at once and measured in interleaved rounds:
//!
//! ```text
//! same node   client pod ── veth ── [node] ── veth ── server pod
//!   vnet, 1 network         TC vnet_from_pod: bpf_redirect_peer
//!   vnet, 10,000 networks   the same pods and node, its maps holding 9,999 more
//!                           networks and 19,998 more endpoints
//!   routed                  node routes (proxy ARP), no isolation
//!   iptables, 1,000 rules   routed + the isolation as 1,000 FORWARD rules (the pair's last)
//!   nftables, one set       routed + one set of 10,000 (saddr . daddr) pairs
//! cross node  client pod ── [node 1] ══ underlay veth ══ [node 2] ── server pod
//!   vnet over VXLAN         collect-metadata VXLAN, VNI set by the program
//!   routed plain VXLAN      `ip link ... type vxlan id 42`, node routes
//! ```
//!
//! The two vnet rows are one path in two states, switched by applying the
//! node's desired state with and without the extra networks, in the order
//! 1, 10,000, 10,000, 1, ... (ABBA): the ratio compares only what the
//! number of networks changes, not two sets of veths, namespaces and map
//! instances, and drift over the run cancels.
//!
//! Tools as in `bench datapath`: iperf3 TCP (tx checksum offload off on the
//! pods' interfaces), iperf3 UDP with 64-byte payloads (packets/s), sockperf
//! TCP ping-pong RTT; clients on CPU 0, servers on CPU 1; medians.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{ip, iperf3_json, iperf3_tcp_gbps, iperf3_udp_pps, median, parse_sockperf_avg, sh};
use anyhow::{bail, Context, Result};
use serde_json::json;
use virtlink_vnet::model::{Network, VirtualNetworkSpec};
use virtlink_vnet::node::{Node, NodeConfig, RemoteEndpoint};

const IPERF_PORT: u16 = 5201;
const SOCKPERF_PORT: u16 = 11111;
const EXTRA_NETWORKS: u32 = 9_999;
const IPTABLES_RULES: u32 = 1_000;
const NFT_ELEMENTS: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vnet1,
    Vnet10k,
    Routed,
    Iptables,
    Nftables,
    VnetCross,
    VxlanPlain,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Vnet1,
        Kind::Vnet10k,
        Kind::Routed,
        Kind::Iptables,
        Kind::Nftables,
        Kind::VnetCross,
        Kind::VxlanPlain,
    ];

    fn short(self) -> &'static str {
        match self {
            Kind::Vnet1 => "v1",
            Kind::Vnet10k => "vk",
            Kind::Routed => "rt",
            Kind::Iptables => "ip",
            Kind::Nftables => "nf",
            Kind::VnetCross => "vx",
            Kind::VxlanPlain => "px",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Vnet1 => "vnet, same node, 1 network",
            Kind::Vnet10k => "vnet, same node, 10,000 networks",
            Kind::Routed => "routed through the node, no isolation",
            Kind::Iptables => "routed, isolation as 1,000 iptables FORWARD rules",
            Kind::Nftables => "routed, isolation as one nftables set (10,000 pairs)",
            Kind::VnetCross => "vnet, cross node over VXLAN",
            Kind::VxlanPlain => "routed plain VXLAN (id 42), cross node",
        }
    }
}

/// Runs `program` in `ns` with `input` on stdin.
fn feed(ns: &str, program: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", program.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            program.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One path: its namespaces (deleted on drop), the client and server.
struct Topo {
    kind: Kind,
    namespaces: Vec<String>,
    client: String,
    server: String,
    server_ip: Ipv4Addr,
    servers: Vec<Child>,
    nodes: Vec<NodeConfig>,
    /// vnet paths: the client's host-side veth and addresses (for the
    /// program's cost per packet).
    probe: Option<Probe>,
    _dir: Option<tempfile::TempDir>,
}

/// What it takes to run `vnet_from_pod` on a client's frame in the kernel.
struct Probe {
    host_ifname: String,
    client_ip: Ipv4Addr,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.nodes {
            let _ = virtlink_vnet::node::remove_pins(n);
        }
        for ns in &self.namespaces {
            let _ = netattach::netns::delete(ns);
        }
    }
}

impl Topo {
    fn ns(&mut self, name: String) -> Result<String> {
        netattach::netns::create(&name).with_context(|| format!("create namespace {name}"))?;
        self.namespaces.push(name.clone());
        ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn build(kind: Kind, tag: &str) -> Result<Self> {
        let mut t = Topo {
            kind,
            namespaces: Vec::new(),
            client: String::new(),
            server: String::new(),
            server_ip: Ipv4Addr::UNSPECIFIED,
            servers: Vec::new(),
            nodes: Vec::new(),
            probe: None,
            _dir: None,
        };
        let short = kind.short();
        t.client = t.ns(format!("vb{short}c{tag}"))?;
        t.server = t.ns(format!("vb{short}s{tag}"))?;
        match kind {
            Kind::Vnet1 | Kind::Vnet10k => t.vnet(&[format!("vb{short}n{tag}")], tag)?,
            Kind::VnetCross => t.vnet(
                &[format!("vb{short}a{tag}"), format!("vb{short}b{tag}")],
                tag,
            )?,
            Kind::Routed | Kind::Iptables | Kind::Nftables => t.routed(short, tag)?,
            Kind::VxlanPlain => t.plain_vxlan(short, tag)?,
        }
        for ns in [t.client.clone(), t.server.clone()] {
            let dev = if kind == Kind::Vnet1 || kind == Kind::Vnet10k || kind == Kind::VnetCross {
                "net1"
            } else {
                "eth0"
            };
            sh(&ns, &["ethtool", "-K", dev, "tx", "off"])?;
        }
        t.start_servers()?;
        Ok(t)
    }

    /// Nodes `names` (one or two, joined by an underlay veth), the client
    /// pod on the first and the server pod on the last, through the CNI type.
    fn vnet(&mut self, names: &[String], tag: &str) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let cluster = dir.path().join("cluster");
        std::fs::create_dir_all(&cluster)?;
        let net = bench_network("bench", 1)?;
        virtlink_vnet::store::ClusterDir::new(&cluster).put_network(&net)?;
        let mut cfgs = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = self.ns(name.clone())?;
            let underlay = Ipv4Addr::new(192, 168, 90, i as u8 + 1);
            let mut cfg = NodeConfig::new(
                &format!("{name}-{tag}"),
                underlay,
                &cluster,
                &dir.path().join(name),
            );
            cfg.netns = Some(PathBuf::from(netattach::netns::NETNS_RUN_DIR).join(&ns));
            cfgs.push(cfg);
        }
        if let [a, b] = names {
            ip(
                a,
                &[
                    "link", "add", "ul0", "type", "veth", "peer", "name", "ul1", "netns", b,
                ],
            )?;
            ip(b, &["link", "set", "ul1", "name", "ul0"])?;
            for (i, n) in [a, b].into_iter().enumerate() {
                ip(
                    n,
                    &[
                        "addr",
                        "add",
                        &format!("192.168.90.{}/24", i + 1),
                        "dev",
                        "ul0",
                    ],
                )?;
                ip(n, &["link", "set", "ul0", "up"])?;
            }
        }
        self.nodes = cfgs.clone();
        let pods = [
            (self.client.clone(), &cfgs[0]),
            (self.server.clone(), &cfgs[cfgs.len() - 1]),
        ];
        for (pod, cfg) in pods {
            let conf = json!({
                "cniVersion": "1.0.0", "name": "bench", "type": "virtlink",
                "network": {"name": "bench"},
                "node": {"name": cfg.name, "underlayIp": cfg.underlay_ip.to_string(),
                         "clusterDir": cfg.cluster_dir, "stateDir": cfg.state_dir,
                         "netns": cfg.netns},
            });
            let path = format!("{}/{pod}", netattach::netns::NETNS_RUN_DIR);
            let out = virtlink_vnet::cni::call(&virtlink_vnet::cni::Request {
                command: "ADD",
                container_id: &pod,
                netns: &path,
                ifname: "net1",
                config: &conf,
            })
            .map_err(|e| anyhow::anyhow!("ADD {pod}: {}", e.msg))?
            .context("ADD printed nothing")?;
            let addr: Ipv4Addr = out["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .context("pod address")?
                .parse()?;
            if pod == self.server {
                self.server_ip = addr;
            } else {
                self.probe = Some(Probe {
                    host_ifname: out["interfaces"][0]["name"]
                        .as_str()
                        .context("host interface")?
                        .to_string(),
                    client_ip: addr,
                });
            }
        }
        for cfg in &cfgs {
            let node = Node::open(cfg.clone())?;
            node.apply(&node.desired()?)?;
        }
        self._dir = Some(dir);
        Ok(())
    }

    /// Applies the node's desired state alone (1 network) or with 9,999 more
    /// networks, each with two endpoints on other nodes (10,000 networks).
    fn set_networks(&self, many: bool) -> Result<()> {
        for cfg in &self.nodes {
            let node = Node::open(cfg.clone())?;
            let mut d = node.desired()?;
            if many {
                for id in 2..=EXTRA_NETWORKS + 1 {
                    let n = bench_network(&format!("n{id}"), id)?;
                    for host in [2u8, 3] {
                        d.remote.push(RemoteEndpoint {
                            net: id,
                            ip: Ipv4Addr::new(10, 60, 0, host),
                            mac: [0x0a, 0x58, 10, 60, 0, host],
                            node_ip: Ipv4Addr::new(192, 168, 91, (id % 250) as u8 + 1),
                        });
                    }
                    d.networks.push(n);
                }
            }
            node.apply(&d)?;
        }
        Ok(())
    }

    /// Client and server on veths into a node namespace that routes between
    /// them (proxy ARP), with the path's filter.
    fn routed(&mut self, short: &str, tag: &str) -> Result<()> {
        let node = self.ns(format!("vb{short}n{tag}"))?;
        for (pod, addr, host) in [
            (self.client.clone(), "10.61.0.2", "vc"),
            (self.server.clone(), "10.61.0.3", "vs"),
        ] {
            ip(
                &node,
                &[
                    "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pod,
                ],
            )?;
            ip(&node, &["link", "set", host, "up"])?;
            sh(
                &node,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{host}.proxy_arp=1"),
                ],
            )?;
            ip(&node, &["route", "add", &format!("{addr}/32"), "dev", host])?;
            ip(&pod, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&pod, &["link", "set", "eth0", "up"])?;
        }
        sh(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.server_ip = "10.61.0.3".parse()?;
        match self.kind {
            Kind::Iptables => {
                let mut rules = String::from("*filter\n:FORWARD DROP [0:0]\n");
                for i in 0..IPTABLES_RULES - 1 {
                    rules.push_str(&format!(
                        "-A FORWARD -s 10.{}.{}.2/32 -d 10.{}.{}.3/32 -j ACCEPT\n",
                        100 + i / 250,
                        i % 250,
                        100 + i / 250,
                        i % 250
                    ));
                }
                rules.push_str("-A FORWARD -s 10.61.0.0/24 -d 10.61.0.0/24 -j ACCEPT\nCOMMIT\n");
                feed(&node, &["iptables-restore"], &rules)?;
            }
            Kind::Nftables => {
                let mut elems = Vec::with_capacity(NFT_ELEMENTS as usize);
                for i in 0..NFT_ELEMENTS - 2 {
                    elems.push(format!(
                        "10.{}.{}.2 . 10.{}.{}.3",
                        100 + i / 250,
                        i % 250,
                        100 + i / 250,
                        i % 250
                    ));
                }
                elems.push("10.61.0.2 . 10.61.0.3".into());
                elems.push("10.61.0.3 . 10.61.0.2".into());
                let text = format!(
                    "table ip vnbench {{\n set pairs {{ type ipv4_addr . ipv4_addr; elements = {{ {} }} }}\n chain isolation {{ type filter hook forward priority 0; policy drop; ip saddr . ip daddr @pairs accept;\n }}\n}}\n",
                    elems.join(", ")
                );
                feed(&node, &["nft", "-f", "-"], &text)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Two nodes with a plain VXLAN device (id 42) each, routing the pods'
    /// /32s over it.
    fn plain_vxlan(&mut self, short: &str, tag: &str) -> Result<()> {
        let a = self.ns(format!("vb{short}a{tag}"))?;
        let b = self.ns(format!("vb{short}b{tag}"))?;
        ip(
            &a,
            &[
                "link", "add", "ul0", "type", "veth", "peer", "name", "ul1", "netns", &b,
            ],
        )?;
        ip(&b, &["link", "set", "ul1", "name", "ul0"])?;
        let sides = [
            (
                a.clone(),
                self.client.clone(),
                "10.62.0.2",
                1,
                2,
                "10.62.0.3",
            ),
            (
                b.clone(),
                self.server.clone(),
                "10.62.0.3",
                2,
                1,
                "10.62.0.2",
            ),
        ];
        for (node, pod, addr, me, other, remote_pod) in sides {
            ip(
                &node,
                &["addr", "add", &format!("192.168.92.{me}/24"), "dev", "ul0"],
            )?;
            ip(&node, &["link", "set", "ul0", "up"])?;
            ip(
                &node,
                &[
                    "link",
                    "add",
                    "vx",
                    "type",
                    "vxlan",
                    "id",
                    "42",
                    "dstport",
                    "4789",
                    "local",
                    &format!("192.168.92.{me}"),
                    "remote",
                    &format!("192.168.92.{other}"),
                ],
            )?;
            ip(
                &node,
                &["addr", "add", &format!("10.63.0.{me}/24"), "dev", "vx"],
            )?;
            ip(&node, &["link", "set", "vx", "up"])?;
            ip(
                &node,
                &[
                    "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", &pod,
                ],
            )?;
            ip(&node, &["link", "set", "vp", "up"])?;
            sh(&node, &["sysctl", "-qw", "net.ipv4.conf.vp.proxy_arp=1"])?;
            sh(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            ip(&node, &["route", "add", &format!("{addr}/32"), "dev", "vp"])?;
            ip(
                &node,
                &[
                    "route",
                    "add",
                    &format!("{remote_pod}/32"),
                    "via",
                    &format!("10.63.0.{other}"),
                    "dev",
                    "vx",
                ],
            )?;
            ip(&pod, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&pod, &["link", "set", "eth0", "mtu", "1450", "up"])?;
        }
        self.server_ip = "10.62.0.3".parse()?;
        Ok(())
    }

    fn start_servers(&mut self) -> Result<()> {
        let ip_s = self.server_ip.to_string();
        for args in [
            vec!["iperf3", "-s", "-p", "5201"],
            vec![
                "sockperf",
                "sr",
                "--tcp",
                "-i",
                ip_s.as_str(),
                "-p",
                "11111",
            ],
        ] {
            let child = Command::new("ip")
                .args(["netns", "exec", &self.server, "taskset", "-c", "1"])
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {}", args[0]))?;
            self.servers.push(child);
        }
        std::thread::sleep(Duration::from_millis(500));
        if !sh(&self.client, &["ping", "-c", "2", "-W", "1", &ip_s])
            .map(|o| o.contains(" 0% packet loss"))
            .unwrap_or(false)
        {
            bail!("{}: the client cannot reach the server", self.kind.label());
        }
        Ok(())
    }

    fn client(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["taskset", "-c", "0"];
        all.extend_from_slice(args);
        sh(&self.client, &all)
    }
}

/// A network of the benchmark: every one uses the same CIDR (tenants reuse
/// addresses), only the name and id differ.
fn bench_network(name: &str, id: u32) -> Result<Network> {
    Ok(Network::from_spec(
        name,
        &VirtualNetworkSpec {
            id,
            cidrs: vec!["10.60.0.0/16".parse()?],
            gateway: None,
            mtu: None,
            tenant: String::new(),
            egress: false,
        },
    )?)
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    tcp_gbps: f64,
    pps: f64,
    rtt_us: f64,
}

fn measure(t: &Topo, seconds: u32) -> Result<Sample> {
    let (target, secs) = (t.server_ip.to_string(), seconds.to_string());
    let port = IPERF_PORT.to_string();
    let out = t.client(&["iperf3", "-c", &target, "-p", &port, "-t", &secs, "-J"])?;
    let tcp_gbps = iperf3_tcp_gbps(&iperf3_json(&out)?)?;
    let out = t.client(&[
        "iperf3", "-c", &target, "-p", &port, "-u", "-l", "64", "-b", "0", "-t", &secs, "-J",
    ])?;
    let pps = iperf3_udp_pps(&iperf3_json(&out)?, seconds)?;
    let sport = SOCKPERF_PORT.to_string();
    let out = t.client(&[
        "sockperf",
        "pp",
        "--tcp",
        "-i",
        &target,
        "-p",
        &sport,
        "-m",
        "64",
        "-t",
        &secs,
        "--full-rtt",
    ])?;
    let rtt_us = parse_sockperf_avg(&out).with_context(|| format!("sockperf output: {out}"))?;
    Ok(Sample {
        tcp_gbps,
        pps,
        rtt_us,
    })
}

/// A 64-byte UDP payload from the client to the server, as the client's
/// veth delivers it to the node.
fn frame(client: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 20 + 8 + 64);
    f.extend_from_slice(&virtlink_vnet::model::endpoint_mac(server));
    f.extend_from_slice(&virtlink_vnet::model::endpoint_mac(client));
    f.extend_from_slice(&[0x08, 0x00]);
    let total: u16 = 20 + 8 + 64;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&client.octets());
    f.extend_from_slice(&server.octets());
    f.extend_from_slice(&[0x30, 0x39, 0x14, 0x51, 0, 72, 0, 0]);
    f.extend_from_slice(&[0xab; 64]);
    f
}

/// `vnet_from_pod`'s average cost per packet (ns) on the path's node,
/// `BPF_PROG_TEST_RUN` with `repeat` runs.
fn program_ns(t: &Topo, repeat: u32) -> Result<f64> {
    let (Some(probe), Some(node)) = (&t.probe, t.nodes.first()) else {
        bail!("{}: not a vnet path", t.kind.label());
    };
    let netns = node.netns.clone().context("node namespace")?;
    let (dir, host) = (node.pin_dir(), probe.host_ifname.clone());
    let data = frame(probe.client_ip, t.server_ip);
    let (verdict, took) = netattach::netns::run_in(&netns, move || -> Result<_> {
        let index = nix::net::if_::if_nametoindex(host.as_str())?;
        let mut iso = virtlink_xdp::isolation::Isolation::open(&dir)?;
        Ok(iso.time_pod_program(index, &data, repeat)?)
    })??;
    // TC_ACT_REDIRECT: the frame would have gone to the server's pod.
    if verdict != 7 {
        bail!(
            "{}: vnet_from_pod returned {verdict}, not a redirect",
            t.kind.label()
        );
    }
    Ok(took.as_nanos() as f64)
}

pub fn run(rounds: usize, seconds: u32, networks_only: bool) -> Result<()> {
    for tool in [
        "iperf3",
        "sockperf",
        "ethtool",
        "nft",
        "iptables-restore",
        "taskset",
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            bail!("{tool} is missing: run scripts/setup.sh");
        }
    }
    let tag = format!("{}", std::process::id() % 10000);
    // Vnet10k is the Vnet1 path in its other state.
    let built: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| *k != Kind::Vnet10k && (!networks_only || *k == Kind::Vnet1))
        .collect();
    eprintln!("[bench] building {} paths", built.len());
    let topos = built
        .iter()
        .map(|k| Topo::build(*k, &tag).with_context(|| k.label()))
        .collect::<Result<Vec<_>>>()?;
    let same = topos
        .iter()
        .find(|t| t.kind == Kind::Vnet1)
        .context("the same-node vnet path")?;
    // One state switch: the maps as `kind` says, timed.
    let switch = |kind: Kind| -> Result<()> {
        let t0 = std::time::Instant::now();
        same.set_networks(kind == Kind::Vnet10k)?;
        eprintln!(
            "[bench] same-node vnet: {} ({:.1} s to apply)",
            kind.label(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    };
    // ABBA: 1, 10,000, 10,000, 1, ...
    let order = |i: usize| {
        if i.is_multiple_of(2) {
            [Kind::Vnet1, Kind::Vnet10k]
        } else {
            [Kind::Vnet10k, Kind::Vnet1]
        }
    };
    // The program's own cost, without the machine's noise around it.
    let mut cost: Vec<(Kind, Vec<f64>)> =
        vec![(Kind::Vnet1, Vec::new()), (Kind::Vnet10k, Vec::new())];
    for i in 0..6 {
        for kind in order(i) {
            switch(kind)?;
            let ns = program_ns(same, 1_000_000)?;
            if let Some((_, v)) = cost.iter_mut().find(|(k, _)| *k == kind) {
                v.push(ns);
            }
        }
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Kind::ALL.len()];
    let slot = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap_or(0);
    let measure_one = |t: &Topo, label: &str, round: usize| -> Result<Sample> {
        eprintln!("[bench] round {}/{rounds}: {label}", round + 1);
        // iperf3 occasionally aborts a run on this shared machine
        // ("interrupt - the client has terminated"): one retry.
        let s = match measure(t, seconds) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("[bench] {label}: {e:#}; retrying once");
                std::thread::sleep(Duration::from_secs(1));
                measure(t, seconds).with_context(|| label.to_string())?
            }
        };
        eprintln!(
            "[bench]   TCP {:.2} Gbit/s, {:.0} pps, RTT {:.1} µs",
            s.tcp_gbps, s.pps, s.rtt_us
        );
        Ok(s)
    };
    for round in 0..rounds {
        for t in &topos {
            if t.kind == Kind::Vnet1 {
                for kind in order(round) {
                    switch(kind)?;
                    samples[slot(kind)].push(measure_one(t, kind.label(), round)?);
                }
            } else {
                samples[slot(t.kind)].push(measure_one(t, t.kind.label(), round)?);
            }
        }
    }
    let sums: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            tcp_gbps: median(s.iter().map(|x| x.tcp_gbps).collect::<Vec<_>>()),
            pps: median(s.iter().map(|x| x.pps).collect::<Vec<_>>()),
            rtt_us: median(s.iter().map(|x| x.rtt_us).collect::<Vec<_>>()),
        })
        .collect();
    println!(
        "\nMedians of {rounds} interleaved round(s), {seconds} s per tool (tx checksum offload off on the pods)\n"
    );
    println!("| path | TCP Gbit/s | 64 B UDP pps | TCP RTT µs |");
    println!("|---|---|---|---|");
    for ((k, s), n) in Kind::ALL.iter().zip(&sums).zip(&samples) {
        if n.is_empty() {
            continue; // not measured (--networks-only)
        }
        println!(
            "| {} | {:.2} | {:.0} | {:.1} |",
            k.label(),
            s.tcp_gbps,
            s.pps,
            s.rtt_us
        );
    }
    let at = |k: Kind| {
        Kind::ALL
            .iter()
            .position(|x| *x == k)
            .filter(|i| !samples[*i].is_empty())
            .map(|i| sums[i])
    };
    println!();
    let ratio = |name: &str, a: Kind, b: Kind| {
        if let (Some(a), Some(b)) = (at(a), at(b)) {
            println!(
                "{name}: TCP {:.2}x, pps {:.2}x, RTT {:.2}x (higher is better)",
                a.tcp_gbps / b.tcp_gbps,
                a.pps / b.pps,
                b.rtt_us / a.rtt_us
            );
        }
    };
    // The two states were measured next to each other in every round: the
    // median of the rounds' own ratios leaves the machine's drift out.
    let (one, many) = (&samples[slot(Kind::Vnet1)], &samples[slot(Kind::Vnet10k)]);
    let paired = |f: fn(&Sample) -> f64, higher_better: bool| -> f64 {
        median(
            one.iter()
                .zip(many)
                .map(|(a, b)| {
                    if higher_better {
                        f(b) / f(a)
                    } else {
                        f(a) / f(b)
                    }
                })
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "vnet 10,000 networks / 1 network, median of the {rounds} rounds' paired ratios (floor 0.98x): \
         TCP {:.2}x, pps {:.2}x, RTT {:.2}x (higher is better)",
        paired(|s| s.tcp_gbps, true),
        paired(|s| s.pps, true),
        paired(|s| s.rtt_us, false),
    );
    let costs: Vec<f64> = cost.iter().map(|(_, v)| median(v)).collect();
    if let [one, many] = costs[..] {
        println!(
            "vnet_from_pod per packet (BPF_PROG_TEST_RUN, 6 x 1,000,000 runs per state, median): \
             1 network {one:.1} ns, 10,000 networks {many:.1} ns; 10,000 / 1 = {:.2}x (higher is better)",
            one / many
        );
    }
    ratio(
        "vnet 10,000 networks / 1 network, ratio of the medians",
        Kind::Vnet10k,
        Kind::Vnet1,
    );
    ratio(
        "iptables 1,000 rules / routed",
        Kind::Iptables,
        Kind::Routed,
    );
    ratio("nftables set / routed", Kind::Nftables, Kind::Routed);
    ratio("vnet 1 network / routed", Kind::Vnet1, Kind::Routed);
    ratio(
        "vnet 10,000 networks / iptables 1,000 rules",
        Kind::Vnet10k,
        Kind::Iptables,
    );
    ratio(
        "vnet 10,000 networks / nftables set",
        Kind::Vnet10k,
        Kind::Nftables,
    );
    ratio(
        "vnet cross node / plain routed VXLAN",
        Kind::VnetCross,
        Kind::VxlanPlain,
    );
    Ok(())
}
