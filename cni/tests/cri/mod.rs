//! Harness for the containerd end-to-end tests (cni/tests/containerd.rs).
//!
//! - [`Netns`]: a named network namespace, deleted on drop.
//! - [`Containerd`]: Debian's containerd with its CRI plugin, started in a temp
//!   dir inside a "node" namespace of its own (so the bridges, host-side veths
//!   and the ip_forward that CNI plugins touch stay out of the machine's own
//!   namespace), driven through `cri.py` (a CRI client playing kubelet). Its
//!   drop stops and removes every sandbox (so plugins get their DELs), stops
//!   containerd and the shims it started (found by PID), unmounts what it
//!   mounted under the temp dir, and removes the dir and the node namespace.
//!   The bridge plugin's `isGateway` turns ip_forward on in the node
//!   namespace only, so the host's value is never touched (and the guard does
//!   not write it: that would race with other tests).
//! - The CNI bin dir holds the Debian reference plugins and, for virtlink, a
//!   recording wrapper around the virtlink-cni binary: every call containerd
//!   makes is logged (command, env, stdin, stdout, exit code) and shown when a
//!   test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::common::{sh, unique, Netns};

static SUBNETS: AtomicUsize = AtomicUsize::new(0);

/// The image the tests build and import: busybox-static + catatonit as pause.
pub const IMAGE: &str = "virtlink.test/cri:1";
/// The Debian reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The CRI client's virtualenv (scripts/setup.d/containerd.sh; the
/// VIRTLINK_CRI_VENV variable overrides it there and here): the PyPI CRI
/// package pins protobuf 6, the device plugin tests' grpcio-tools needs 7, so
/// it cannot share the system python.
pub const DEFAULT_CRI_VENV: &str = "/opt/virtlink/cri-venv";

/// A second octet (100..=199) for a test's subnets `10.N.x.0/24`. The node
/// namespace already keeps each test's routes apart; distinct subnets also
/// keep concurrently running tests apart in logs and host-local data.
pub fn subnet_octet() -> u32 {
    100 + (std::process::id() + 37 * SUBNETS.fetch_add(1, Ordering::SeqCst) as u32) % 100
}

fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cri")
        .join(file)
}

pub fn cri_python() -> PathBuf {
    std::env::var_os("VIRTLINK_CRI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CRI_VENV))
        .join("bin/python")
}

/// Why the containerd tests cannot run here, if they cannot; `None` when they can.
/// Missing packages are not a reason: scripts/setup.sh installs them, and a
/// test without them fails.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces, mounts, containerd)".into());
    }
    None
}

/// A peer on one network of the node: its own namespace with `eth0` (a veth
/// whose other end `host_end` stays in the node namespace) holding `addr`.
#[derive(Debug)]
pub struct Peer {
    pub ns: Netns,
    pub host_end: String,
    pub addr: String,
}

impl Peer {
    /// `addr` with prefix, e.g. "10.1.2.250/24". With `bridge`, the node end
    /// is a port of that bridge; without, it is left alone (a macvlan master).
    pub fn new(node: &Netns, bridge: Option<&str>, addr_cidr: &str) -> Self {
        let ns = Netns::new("vlcp");
        let host_end = unique("vlch");
        let n = &node.name;
        sh(&format!(
            "ip -n {n} link add {host_end} type veth peer name eth0 netns {}",
            ns.name
        ));
        if let Some(br) = bridge {
            node.ip(&format!("link set {host_end} master {br}"));
        }
        node.ip(&format!("link set {host_end} up"));
        ns.ip(&format!("addr add {addr_cidr} dev eth0"));
        ns.ip("link set eth0 up");
        let addr = addr_cidr.split('/').next().unwrap_or(addr_cidr).to_string();
        Peer { ns, host_end, addr }
    }
}

/// Debian's containerd in a temp dir, running in its own node namespace.
#[derive(Debug)]
pub struct Containerd {
    /// Dropped (removed) before `node`, after `drop` unmounted what is under it.
    pub dir: tempfile::TempDir,
    pub node: Netns,
    child: Option<Child>,
}

/// One CRI call's outcome.
#[derive(Debug)]
pub struct CriAnswer {
    pub ok: bool,
    pub json: Value,
}

impl Containerd {
    /// Prepares the dirs, writes `conflist` (containerd loads only the first
    /// file of its conf dir), starts containerd, waits until its CRI runtime and
    /// network are ready and imports the test image.
    ///
    /// `virtlink` is the virtlink-cni binary to put (behind a recording
    /// wrapper) into the CNI bin dir, if any.
    pub fn start(conflist: impl FnOnce(&Path) -> Value, virtlink: Option<&Path>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vl-containerd-")
            .tempdir()
            .unwrap();
        let node = Netns::new("vlcn");
        let d = dir.path();
        for sub in ["bin", "net.d", "manifests"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for e in std::fs::read_dir(REFERENCE_PLUGINS)
            .expect("the reference plugins (apt-get install containernetworking-plugins)")
            .flatten()
        {
            std::os::unix::fs::symlink(e.path(), d.join("bin").join(e.file_name())).unwrap();
        }
        if let Some(bin) = virtlink {
            let wrapper = d.join("bin/virtlink-cni");
            std::fs::write(&wrapper, recording_wrapper(bin, &d.join("cni-calls.log"))).unwrap();
            std::fs::set_permissions(
                &wrapper,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let conf = conflist(d);
        std::fs::write(
            d.join("net.d/10-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("config.toml"), config_toml(d)).unwrap();

        let mut me = Containerd {
            dir,
            node,
            child: None,
        };
        me.spawn();
        let image = me.dir.path().join("image.tar");
        sh(&format!(
            "python3 {} {} {IMAGE}",
            support("build_image.py").display(),
            image.display()
        ));
        sh(&format!(
            "ctr --address {} -n k8s.io images import {} >/dev/null",
            me.sock().display(),
            image.display()
        ));
        me
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let node = std::fs::File::open(self.node.path()).unwrap();
        let node_fd = node.as_raw_fd();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: between fork and exec the child only calls setns(2), which
        // is async-signal-safe, on a descriptor the parent keeps open until
        // spawn returns. Only the network namespace changes: `ip netns exec`
        // would also remount /sys, hiding the cgroup mounts runc needs.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(node_fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .expect("start containerd (scripts/setup.sh installs it)");
        drop(node);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.sock().exists() {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!("containerd exited ({status}):\n{}", tail(&self.log(), 30));
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not open its socket:\n{}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.cri(&["wait-ready", "20"]);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// What the recording wrapper saw: one block per virtlink-cni call.
    pub fn cni_calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cni-calls.log")).unwrap_or_default()
    }

    /// Where containerd mounts sandbox network namespaces
    /// (`netns_mounts_under_state_dir`).
    pub fn netns_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.grpc.v1.cri/netns")
    }

    /// Runs one CRI call; returns its JSON answer whether or not it failed
    /// (never panics: the drop guard uses it).
    pub fn try_cri(&self, args: &[&str]) -> CriAnswer {
        let py = cri_python();
        let out = match Command::new(&py)
            .arg(support("cri.py"))
            .arg(self.sock())
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                return CriAnswer {
                    ok: false,
                    json: json!({"error": format!(
                        "cannot run the CRI client {} ({e}): run scripts/setup.sh",
                        py.display()
                    )}),
                }
            }
        };
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            json!({"error": "no JSON from cri.py",
                   "stdout": String::from_utf8_lossy(&out.stdout),
                   "stderr": String::from_utf8_lossy(&out.stderr)})
        });
        CriAnswer {
            ok: out.status.success(),
            json,
        }
    }

    /// Runs one CRI call that must succeed; on failure the panic shows the
    /// error, containerd's log tail and the recorded CNI calls.
    pub fn cri(&self, args: &[&str]) -> Value {
        let a = self.try_cri(args);
        assert!(
            a.ok,
            "CRI {args:?} failed: {}\n{}",
            a.json,
            self.diagnostics()
        );
        a.json
    }

    /// containerd's log tail and the recorded virtlink-cni calls, for messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- containerd log (tail) ---\n{}\n--- virtlink-cni calls ---\n{}",
            tail(&self.log(), 25),
            self.cni_calls()
        )
    }

    /// Stops and removes every sandbox containerd still knows (best effort).
    fn remove_all_sandboxes(&self) {
        let list = self.try_cri(&["list"]);
        for sb in list.json["sandboxes"].as_array().into_iter().flatten() {
            if let Some(id) = sb["id"].as_str() {
                let _ = self.try_cri(&["stop", id]);
                let _ = self.try_cri(&["remove", id]);
            }
        }
    }

    /// The shims this containerd started: `containerd-shim-runc-v2` processes
    /// whose `-address` is this instance's socket (they outlive containerd).
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.sock().into_os_string().into_encoded_bytes();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == sock.as_slice());
            if is_shim && ours {
                pids.push(pid);
            }
        }
        pids
    }

    fn stop_processes(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for shim in self.shim_pids() {
            // The container processes first (the shim's children), then the shim.
            for child in children_of(shim) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(shim),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Mount points under the temp dir (overlay rootfs, shm, netns), deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let root = self.dir.path();
        let mut v: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(root))
            .collect();
        v.sort();
        v.reverse();
        v
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_sandboxes();
        }
        self.stop_processes();
        for m in self.mounts() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // Then the fields: the temp dir, the node namespace (with its bridges).
    }
}

/// PIDs whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            v.push(child);
        }
    }
    v
}

fn config_toml(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # Required here: containerd may not lower the OOM score below its own.
  restrict_oom_score_adj = true
  # Sandbox network namespaces go under the temp dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
    )
}

/// A shell script standing in for virtlink-cni in the bin dir: runs the real
/// binary with the same env and stdin and records the call.
fn recording_wrapper(bin: &Path, log: &Path) -> String {
    format!(
        r#"#!/bin/sh
# Records each call containerd makes, then answers what virtlink-cni answered.
stdin=$(cat)
out=$(printf '%s' "$stdin" | '{bin}'); rc=$?
{{
  printf '=== %s CNI_CONTAINERID=%s CNI_NETNS=%s CNI_IFNAME=%s\n' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME"
  printf 'CNI_ARGS=%s\nCNI_PATH=%s\n' "$CNI_ARGS" "$CNI_PATH"
  printf 'stdin: %s\nstdout: %s\nexit: %s\n' "$stdin" "$out" "$rc"
}} >> '{log}'
printf '%s' "$out"
exit $rc
"#,
        bin = bin.display(),
        log = log.display()
    )
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// IP files host-local reserved under `data_dir` (one dir per network).
pub fn reserved_ips(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|n| n.path().is_dir())
        .flat_map(|n| std::fs::read_dir(n.path()).into_iter().flatten().flatten())
        .map(|f| f.path().display().to_string())
        .filter(|p| {
            Path::new(p)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.parse::<std::net::IpAddr>().is_ok())
        })
        .collect()
}

/// Entries of `dir`, or none when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}

/// The interfaces and IPv4 addresses in `ip -o -4 addr` output: (ifname, addr/prefix).
pub fn parse_ip_addr(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "inet")?;
            Some((f.get(1)?.to_string(), f.get(i + 1)?.to_string()))
        })
        .collect()
}
