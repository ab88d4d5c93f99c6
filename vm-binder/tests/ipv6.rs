//! IPv6 for a masquerade guest against real kernel objects and a real
//! DHCPv6 client. The binder's tap in a pod namespace is joined to a tap in
//! a "guest" namespace by a frame pump (the part QEMU plays), and dhcpcd,
//! the client the test guest runs (with the guest's own config and hook
//! script), configures the guest side from the binder's router
//! advertisements and DHCPv6 server. The guest then reaches a peer through
//! the masquerade NAT. vm_ipv6.rs does the same with a real VM.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use common::{Netns, Pod, NET_IP6};
use vm_binder::{bind, unbind, BindOptions, Vm};

fn guest_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vm-tests/guest")
        .join(name)
}

/// Copies Ethernet frames between two tap file descriptors until dropped.
struct Pump {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pump {
    fn start(a: File, b: File) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let (mut a, mut b) = (a, b);
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::SeqCst) {
                let (ra, rb) = {
                    let mut fds = [
                        PollFd::new(a.as_fd(), PollFlags::POLLIN),
                        PollFd::new(b.as_fd(), PollFlags::POLLIN),
                    ];
                    if poll(&mut fds, PollTimeout::from(100u8)).unwrap_or(0) <= 0 {
                        continue;
                    }
                    let ready =
                        |f: &PollFd| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
                    (ready(&fds[0]), ready(&fds[1]))
                };
                if ra {
                    if let Ok(n) = a.read(&mut buf) {
                        let _ = b.write_all(&buf[..n]);
                    }
                }
                if rb {
                    if let Ok(n) = b.read(&mut buf) {
                        let _ = a.write_all(&buf[..n]);
                    }
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tap named `eth0` in `ns`, up, with `mac`, opened.
fn guest_tap(ns: &Netns, mac: &str) -> Result<File> {
    ns.enter(|| vm_binder::tap::create_persistent("eth0", None))??;
    ns.ip(&["link", "set", "eth0", "address", mac, "up"])?;
    let file = ns.enter(|| vm_binder::tap::attach("eth0"))??;
    Ok(file)
}

#[test]
fn masquerade_ipv6_guest_configured_by_ra_and_dhcpv6() -> Result<()> {
    if !common::require_root() {
        return Ok(());
    }
    let dhcpcd = which("dhcpcd").context("dhcpcd is not installed: run scripts/setup.sh")?;
    let pod = Pod::new()?;
    pod.add_ipv6()?;
    let dir = tempfile::tempdir()?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.96.0.10\nnameserver fd00::10\nsearch test.svc.cluster.local cluster.local\n",
    )?;
    let vm = Vm::parse(
        r#"{"metadata":{"name":"six","namespace":"test"},
            "spec":{"domain":{"devices":{"interfaces":[{"name":"default","masquerade":{}}]}},
                    "networks":[{"name":"default","pod":{}}]}}"#,
    )?;
    let opts = BindOptions {
        resolv_conf: resolv,
        ..Default::default()
    };
    let binding = bind(&vm, pod.pod.path(), &[], &opts)?;
    let iface = binding.interfaces[0].clone();
    assert_eq!(
        iface.ip6.map(|n| n.to_string()).as_deref(),
        Some("fd10:0:2::2/120")
    );
    assert_eq!(binding.ipv6_devices(), vec!["tap0"]);
    let lease6 = iface.lease6.clone().context("no IPv6 lease")?;
    assert_eq!(lease6.dns, vec!["fd00::10".parse::<std::net::Ipv6Addr>()?]);
    let tap_addrs = pod.pod.ip(&["-6", "addr", "show", "dev", "tap0"])?;
    assert!(tap_addrs.contains("fd10:0:2::1/120"), "{tap_addrs}");

    // The guest: a tap in its own namespace, pumped to the binder's tap.
    let guest = Netns::with_prefix("vbg")?;
    let guest_end = guest_tap(&guest, &iface.mac.to_string())?;
    let pod_end = pod.pod.enter(|| vm_binder::tap::attach("tap0"))??;
    let pump = Pump::start(pod_end, guest_end);

    // dhcpcd with the guest's config and script; `ip netns exec` gives it
    // this namespace's resolv.conf (from /etc/netns/NAME/) to edit.
    let etc = PathBuf::from("/etc/netns").join(guest.name());
    std::fs::create_dir_all(&etc)?;
    let _etc = RemoveOnDrop(etc.clone());
    std::fs::write(etc.join("resolv.conf"), "nameserver 10.96.0.10\n")?;
    let env_dir = dir.path().join("env");
    std::fs::create_dir(&env_dir)?;
    let conf = guest_file("dhcpcd.conf");
    let script = guest_file("dhcpcd.script");
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", guest.name()])
        .arg(&dhcpcd)
        .arg("-f")
        .arg(&conf)
        .arg("-c")
        .arg(&script)
        .arg("-e")
        .arg(format!("VIRTLINK_DHCP6_DIR={}", env_dir.display()))
        // One shot, in the foreground, keep the configuration on exit.
        .args(["-1", "-B", "-p", "-w", "-t", "30", "eth0"])
        .output()?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lease_env = std::fs::read_to_string(env_dir.join("dhcp6.eth0.env"))
        .with_context(|| format!("dhcpcd wrote no lease ({:?}): {log}", out.status))?;
    assert!(lease_env.contains("ip=fd10:0:2::2\n"), "{lease_env}\n{log}");
    assert!(lease_env.contains("dns=fd00::10\n"), "{lease_env}");
    assert!(
        lease_env.contains("search=test.svc.cluster.local cluster.local\n"),
        "{lease_env}"
    );
    let resolv_after = std::fs::read_to_string(etc.join("resolv.conf"))?;
    assert!(
        resolv_after.contains("nameserver fd00::10"),
        "{resolv_after}"
    );

    // The address from DHCPv6, the on-link prefix and the default route
    // from the router advertisement.
    let addrs = guest.ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"])?;
    assert!(addrs.contains("inet6 fd10:0:2::2/"), "{addrs}\n{log}");
    let routes = guest.ip(&["-6", "route", "show"])?;
    assert!(
        routes.lines().any(|l| l.starts_with("default via fe80::")),
        "{routes}\n{log}"
    );
    assert!(routes.contains("fd10:0:2::/120"), "{routes}");

    // Through the NAT to the peer: the peer sees the pod's address.
    let ping = guest.exec("ping", &["-6", "-c", "3", "-W", "2", NET_IP6])?;
    assert!(ping.contains(" 0% packet loss"), "{ping}");
    let conntrack = pod
        .pod
        .exec("nft", &["list", "table", "inet", "virtlink-default"])?;
    assert!(conntrack.contains("fd10:0:2::2"), "{conntrack}");

    drop(pump);
    unbind(&vm, pod.pod.path(), &[])?;
    drop(binding);
    assert!(pod.pod.link("tap0").is_none(), "tap left behind");
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn which(program: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{program} not found")
}
