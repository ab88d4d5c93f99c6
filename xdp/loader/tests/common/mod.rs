//! Helpers for the eBPF datapath tests: namespaces, veths and a bpffs mount,
//! all removed on drop (also when a test fails).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use virtlink_xdp::nat::{self, Forward, NatSpec, Timeouts, DEFAULT_NAT_PORTS};

pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        eprintln!("SKIPPED: needs root (CAP_NET_ADMIN, CAP_BPF) for namespaces and eBPF");
        false
    }
}

/// A unique short name: `<prefix><pid><n>`, at most 15 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut s = format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    s.truncate(15);
    s
}

/// A named network namespace deleted on drop.
pub struct Ns {
    pub name: String,
    pub path: PathBuf,
}

impl Ns {
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        let path = netattach::netns::create(&name).with_context(|| format!("create {name}"))?;
        let ns = Ns { name, path };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {}: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.exec("ip", args)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a thread inside this namespace (sockets made there stay
    /// there).
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(netattach::netns::run_in(&self.path, f)?)
    }

    /// `ping -c 1` to `dst`; true when answered.
    pub fn ping(&self, dst: &str, extra: &[&str]) -> bool {
        let mut args = vec!["-c", "1", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(dst);
        self.exec("ping", &args).is_ok()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netattach::netns::delete(&self.name);
    }
}

/// A veth pair `a` (in `ns_a`) -- `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Ns, a: &str, ns_b: &Ns, b: &str) -> Result<()> {
    let tmp = unique("vt");
    ns_a.ip(&[
        "link", "add", a, "type", "veth", "peer", "name", &tmp, "netns", &ns_b.name,
    ])?;
    ns_b.ip(&["link", "set", &tmp, "name", b])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// A bpffs mounted on a temp dir, unmounted on drop.
pub struct Bpffs {
    pub dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vl-bpffs").tempdir()?;
        virtlink_xdp::bpffs::ensure_mounted(dir.path())?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub const PEER_IP: &str = "10.99.0.1";
pub const GATEWAY_IP: &str = "10.0.2.1";
pub const GUEST_IP: &str = "10.0.2.2";
pub const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const GUEST_MAC_STR: &str = "02:00:00:00:00:02";

/// client/world `peer` -- `pod` (eth0 = pod IP, tap0 = 10.0.2.1/24) --
/// `guest` (eth0 = 10.0.2.2/24). The pod does not forward (ip_forward=0):
/// only the eBPF NAT can carry the guest's traffic. Several pods share the
/// peer through a bridge. Everything is undone on drop: NAT pins first,
/// then the bpffs mount, then the namespaces.
pub struct Topology {
    pub peer: Ns,
    pub pods: Vec<PodNs>,
    pub bpffs: Bpffs,
}

pub struct PodNs {
    pub pod: Ns,
    pub guest: Ns,
    pub pod_ip: String,
    pub pin_dir: PathBuf,
}

impl Topology {
    pub fn new(pods: usize) -> Result<Self> {
        let bpffs = Bpffs::new()?;
        let peer = Ns::new("xpe")?;
        peer.ip(&["link", "add", "br0", "type", "bridge"])?;
        peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "br0"])?;
        peer.ip(&["link", "set", "br0", "up"])?;
        let mut t = Topology {
            peer,
            pods: Vec::new(),
            bpffs,
        };
        for i in 0..pods {
            let pod = Ns::new("xpo")?;
            let guest = Ns::new("xgu")?;
            let pod_ip = format!("10.99.0.{}", 5 + i);
            let port = format!("p{i}");
            veth(&t.peer, &port, &pod, "eth0")?;
            t.peer.ip(&["link", "set", &port, "master", "br0"])?;
            pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"])?;
            pod.ip(&["route", "add", "default", "via", PEER_IP])?;
            veth(&pod, "tap0", &guest, "eth0")?;
            pod.ip(&["addr", "add", &format!("{GATEWAY_IP}/24"), "dev", "tap0"])?;
            pod.sysctl("net.ipv4.ip_forward", "0")?;
            guest.ip(&["link", "set", "eth0", "address", GUEST_MAC_STR])?;
            guest.ip(&["addr", "add", &format!("{GUEST_IP}/24"), "dev", "eth0"])?;
            guest.ip(&["route", "add", "default", "via", GATEWAY_IP])?;
            let pin_dir = virtlink_xdp::bpffs::pod_dir(t.bpffs.path(), &pod.name);
            t.pods.push(PodNs {
                pod,
                guest,
                pod_ip,
                pin_dir,
            });
        }
        Ok(t)
    }

    pub fn spec(&self, i: usize, forward: Forward) -> NatSpec {
        let p = &self.pods[i];
        NatSpec {
            pod_interface: "eth0".into(),
            guest_interface: "tap0".into(),
            pod_ip: p.pod_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
            guest_ip: Ipv4Addr::new(10, 0, 2, 2),
            gateway_ip: Ipv4Addr::new(10, 0, 2, 1),
            guest_mac: GUEST_MAC,
            anti_spoof: true,
            forward,
            istio: false,
            nat_ports: DEFAULT_NAT_PORTS,
            timeouts: Timeouts::default(),
            pin_dir: p.pin_dir.clone(),
        }
    }

    /// Attaches the NAT in pod `i`'s namespace.
    pub fn attach(&self, i: usize, spec: NatSpec) -> Result<nat::Attached> {
        Ok(self.pods[i].pod.run(move || nat::attach(&spec))??)
    }

    pub fn pinned(&self, i: usize) -> Result<nat::Pinned> {
        Ok(nat::Pinned::open(&self.pods[i].pin_dir)?)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = nat::detach(&p.pin_dir);
        }
    }
}
