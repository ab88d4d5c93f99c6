//! Test fixtures with real kernel objects: a "node" network namespace in which
//! the plugin runs (so bridges, host-side veths and ip_forward stay out of the
//! machine's own namespace), pod namespaces, and a directory with the CNI bin
//! dir (the Debian reference plugins + virtlink-cni), manifests, state and
//! host-local IPAM data. Everything is removed on drop, also when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake_api;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
pub const VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique short name for kernel objects of this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    pub fn sh_ok(&self, cmd: &str) -> bool {
        sh_ok(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name,
            cmd.replace('\'', "'\\''")
        ))
    }

    /// Runs `ip -n NAME ARGS` (a command line after `ip -n NAME`).
    pub fn ip(&self, args: &str) -> String {
        sh(&format!("ip -n {} {args}", self.name))
    }

    /// Runs a command line inside the namespace (no shell inside).
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// Link names in the namespace, `lo` excluded, sorted.
    pub fn links(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sh("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo")
            .collect();
        v.sort();
        v
    }

    /// IPv4 addresses (with prefix) of one interface.
    pub fn addrs(&self, ifname: &str) -> Vec<String> {
        self.sh(&format!("ip -o -4 addr show dev {ifname}"))
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect()
    }

    pub fn mac(&self, ifname: &str) -> String {
        self.sh(&format!("cat /sys/class/net/{ifname}/address"))
            .trim()
            .to_string()
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.sh_ok(&format!("ping -c1 -W2 {addr}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// How the runtime's call reaches the CNI code: the `virtlink-cni` binary
/// does the work itself, or it is a shim that forwards to `virtlink agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Agent,
}

/// Runs a scenario `fn name(mode: Mode)` once per mode, as the tests
/// `name::direct` and `name::agent`.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn direct() {
                super::$name(super::common::Mode::Direct)
            }
            #[test]
            fn agent() {
                super::$name(super::common::Mode::Agent)
            }
        }
    )*};
}

/// The `virtlink` binary (for `virtlink agent`): built next to virtlink-cni
/// by `cargo test --workspace` / `cargo build --workspace`.
pub fn virtlink_binary() -> PathBuf {
    let bin = plugin_binary().with_file_name("virtlink");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p virtlink` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A `virtlink agent` process in a network namespace; killed on drop.
#[derive(Debug)]
pub struct Agent {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    netns: String,
    extra: Vec<String>,
}

impl Agent {
    /// Starts the agent inside `netns` (a path) listening on `socket`, and
    /// waits until the socket accepts connections.
    pub fn start(
        netns: &str,
        socket: &std::path::Path,
        log: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(netns, socket, log, &extra);
        let me = Agent {
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            netns: netns.to_string(),
            extra,
        };
        me.wait_ready();
        me
    }

    fn spawn(
        netns: &str,
        socket: &std::path::Path,
        log: &std::path::Path,
        extra: &[String],
    ) -> std::process::Child {
        let _ = std::fs::remove_file(socket);
        let ns = std::fs::File::open(netns).unwrap();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(virtlink_binary());
        cmd.args(["--log", "info", "agent", "--socket"])
            .arg(socket)
            .args(extra)
            .env_remove("VIRTLINK_LOG")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; it runs in the forked child
        // before exec and only changes that child's network namespace.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn virtlink agent");
        drop(ns);
        child
    }

    fn wait_ready(&self) {
        let up = wait_until(std::time::Duration::from_secs(15), || {
            std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
        });
        assert!(
            up,
            "agent did not listen on {}:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CNI calls the agent has answered (from its log).
    pub fn served(&self) -> usize {
        self.log_text().matches("served CNI call").count()
    }

    /// Whether the process still runs (not killed, not a zombie).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    /// SIGKILL, as the kernel's OOM killer or a node crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new process with the same settings.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.netns, &self.socket, &self.log, &self.extra);
        self.wait_ready();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test sets up: a node namespace with a macvlan master, the plugin's
/// directories, and a plugin config.
#[derive(Debug)]
pub struct Node {
    /// In agent mode; stopped first on drop.
    pub agent: Option<Agent>,
    pub ns: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// A node whose plugin runs in `mode` (an agent in the node namespace
    /// for [`Mode::Agent`]).
    pub fn with_mode(mode: Mode) -> Self {
        let mut node = Self::new();
        if mode == Mode::Agent {
            node.start_agent(&[]);
        }
        node
    }

    pub fn start_agent(&mut self, extra: &[&str]) {
        let socket = self.dir.path().join("agent.sock");
        let log = self.dir.path().join("agent.log");
        self.agent = Some(Agent::start(&self.ns.path(), &socket, &log, extra));
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("node runs an agent")
    }

    pub fn new() -> Self {
        let ns = Netns::new("vlnode");
        // A bridge with no ports serves as the macvlan master (no dummy here).
        ns.sh("ip link add mvmaster type bridge && ip link set mvmaster up");
        ns.sh("sysctl -qw net.ipv4.ip_forward=1");
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for entry in std::fs::read_dir(REFERENCE_PLUGINS).expect("reference plugins installed") {
            let entry = entry.unwrap();
            std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name())).unwrap();
        }
        std::os::unix::fs::symlink(plugin_binary(), bin.join("virtlink-cni")).unwrap();
        for d in ["manifests", "state", "ipam"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Node {
            agent: None,
            ns,
            dir,
        }
    }

    /// A loopback TCP port of the node's namespace that nothing listens on.
    pub fn free_port(&self) -> u16 {
        netattach::netns::run_in(std::path::Path::new(&self.ns.path()), || {
            std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().unwrap().port())
        })
        .unwrap()
        .unwrap()
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn ipam(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The plugin config for `version` with the standard cluster network.
    pub fn conf(&self, version: &str) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": "virtlink",
            "type": "virtlink-cni",
            "clusterNetwork": {
                "cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "cni-pod",
                "isGateway": true,
                "ipam": {"type": "host-local", "subnet": "10.70.0.0/24", "dataDir": self.ipam()}
            },
            "manifestsDir": self.manifests(),
            "stateDir": self.state(),
        });
        if let Some(agent) = &self.agent {
            conf["daemonSocket"] = json!(agent.socket);
        }
        conf
    }

    /// Writes a manifest file (YAML text) into the manifests dir.
    pub fn manifest(&self, file: &str, yaml: &str) {
        std::fs::write(self.manifests().join(file), yaml).unwrap();
    }

    /// Writes a NAD whose spec.config is `config`.
    pub fn nad(&self, name: &str, config: Value) {
        let yaml = format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  config: '{}'\n",
            config
        );
        self.manifest(&format!("nad-{name}.yaml"), &yaml);
    }

    /// Writes a pod with the networks annotation.
    pub fn pod(&self, name: &str, networks: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n    k8s.v1.cni.cncf.io/networks: '{networks}'\n"
        );
        self.manifest(&format!("pod-{name}.yaml"), &yaml);
    }

    /// The three standard secondary networks of the suite: a bridge with
    /// host-local, a macvlan with static IPAM (`ips` capability), and a conflist
    /// chaining ptp (host-local) with tuning (`mac` capability).
    pub fn standard_nads(&self) {
        self.nad(
            "blue",
            json!({"cniVersion": "1.0.0", "name": "blue", "type": "bridge", "bridge": "cni-blue",
                   "ipam": {"type": "host-local", "subnet": "10.71.0.0/24", "dataDir": self.ipam()}}),
        );
        self.nad(
            "green",
            json!({"cniVersion": "1.0.0", "name": "green", "type": "macvlan", "master": "mvmaster",
                   "mode": "bridge", "capabilities": {"ips": true}, "ipam": {"type": "static"}}),
        );
        self.nad(
            "red",
            json!({"cniVersion": "1.1.0", "name": "red", "plugins": [
                    {"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.73.0.0/24", "dataDir": self.ipam()}},
                    {"type": "tuning", "capabilities": {"mac": true}}]}),
        );
    }

    /// Runs virtlink-cni inside the node namespace.
    pub fn call(
        &self,
        command: &str,
        pod: Option<&Netns>,
        container: &str,
        pod_name: &str,
        conf: &Value,
    ) -> Outcome {
        self.call_env(
            command,
            pod.map(|p| p.path()).unwrap_or_default().as_str(),
            container,
            pod_name,
            conf,
            &[],
        )
    }

    /// ADD of the pod `name` (uid `uid`) through `conf`, with the pod's
    /// uid in CNI_ARGS as kubelet's runtime passes it.
    pub fn add_pod(&self, pod: &Netns, name: &str, uid: &str, conf: &Value) -> Outcome {
        self.call_env(
            "ADD",
            &pod.path(),
            &format!("ctr-{name}"),
            name,
            conf,
            &[(
                "CNI_ARGS",
                &format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_UID={uid}"
                ),
            )],
        )
    }

    pub fn call_env(
        &self,
        command: &str,
        netns: &str,
        container: &str,
        pod_name: &str,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> Outcome {
        let stdin = serde_json::to_vec(conf).unwrap();
        self.call_raw(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", self.bin().to_str().unwrap()),
                (
                    "CNI_ARGS",
                    &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name};K8S_POD_INFRA_CONTAINER_ID={container}"),
                ),
            ],
            extra,
            &stdin,
        )
    }

    /// Runs the plugin with exactly these variables (plus `extra`) and stdin.
    pub fn call_raw(&self, vars: &[(&str, &str)], extra: &[(&str, &str)], stdin: &[u8]) -> Outcome {
        // In agent mode, a call that succeeds while the agent runs must have
        // been served by it (and not by a shim that silently ran it itself).
        let via_agent = self
            .agent
            .as_ref()
            .filter(|a| a.alive() && String::from_utf8_lossy(stdin).contains("daemonSocket"))
            .map(|a| (a, a.served()));
        let outcome = self.call_plugin(vars, extra, stdin);
        if let Some((agent, before)) = via_agent {
            if outcome.ok && agent.alive() {
                let served = common_wait(|| agent.served() > before);
                assert!(
                    served,
                    "the agent did not serve this call:\n{}",
                    agent.log_text()
                );
            }
        }
        outcome
    }

    fn call_plugin(&self, vars: &[(&str, &str)], extra: &[(&str, &str)], stdin: &[u8]) -> Outcome {
        let node = std::fs::File::open(self.ns.path()).unwrap();
        let mut cmd = Command::new(self.bin().join("virtlink-cni"));
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in vars.iter().chain(extra) {
            if !v.is_empty() || *k == "CNI_NETNS" {
                cmd.env(k, v);
            }
        }
        let fd = node.as_raw_fd();
        // SAFETY: setns is async-signal-safe; it runs in the forked child
        // before exec and only changes that child's network namespace.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn virtlink-cni");
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            let _ = pipe.write_all(stdin);
        }
        let out = child.wait_with_output().unwrap();
        drop(node);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Outcome {
            ok: out.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Addresses host-local still holds, across every network's data dir.
    pub fn reserved_ips(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(nets) = std::fs::read_dir(self.ipam()) {
            for net in nets.flatten() {
                for f in std::fs::read_dir(net.path()).unwrap().flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if name.parse::<std::net::IpAddr>().is_ok() {
                        out.push(name);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Containers with attachment state left.
    pub fn attachments(&self) -> Vec<String> {
        std::fs::read_dir(self.state().join("attachments"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// veth links left in the node namespace (each pod attachment makes one).
    pub fn veths(&self) -> Vec<String> {
        self.ns
            .sh("ip -o link show type veth")
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect()
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    #[track_caller]
    pub fn expect_ok(&self, what: &str) -> &Value {
        assert!(
            self.ok,
            "{what} failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.json
    }

    /// Asserts a CNI error object with `code`; returns its message.
    #[track_caller]
    pub fn expect_err(&self, code: u64, what: &str) -> String {
        assert!(!self.ok, "{what} unexpectedly succeeded: {}", self.stdout);
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "{what}: wrong error code in {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.json["cniVersion"].is_string(),
            "{what}: error has no cniVersion"
        );
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

impl Outcome {
    /// Asserts a CNI error object of any code; returns its message.
    #[track_caller]
    pub fn expect_err_any(&self, what: &str) -> String {
        assert!(!self.ok, "{what} unexpectedly succeeded: {}", self.stdout);
        assert!(
            self.json["code"].is_u64(),
            "{what}: not a CNI error object: {}",
            self.stdout
        );
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

pub fn plugin_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_virtlink-cni"))
}

fn common_wait(cond: impl FnMut() -> bool) -> bool {
    wait_until(std::time::Duration::from_secs(2), cond)
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Asserts that nothing of a pod is left: no link in its namespace, no
/// host-side veth, no IP reserved by host-local, no attachment state.
#[track_caller]
pub fn assert_clean(node: &Node, pod: &Netns) {
    assert!(pod.links().is_empty(), "pod links left: {:?}", pod.links());
    assert!(
        node.veths().is_empty(),
        "host veths left: {:?}",
        node.veths()
    );
    assert!(
        node.reserved_ips().is_empty(),
        "IPs left: {:?}",
        node.reserved_ips()
    );
    assert!(
        node.attachments().is_empty(),
        "state left: {:?}",
        node.attachments()
    );
}
