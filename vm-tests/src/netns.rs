//! Test network namespaces, veths, taps and processes that clean up after
//! themselves: the fixtures of vm-tests and of the vm-binder, vnet and xdp
//! integration tests.
//!
//! Everything here shells out to `ip` (iproute2): these are test fixtures, and
//! the commands read like the manual steps they replace. Each guard removes
//! what it made when dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        /// Its stderr, then its stdout (where `ping` says why it failed).
        output: String,
    },
    #[error(transparent)]
    Netns(#[from] netattach::netns::Error),
    #[error("nothing listens on TCP port {port} in netns {netns} after {waited:?}")]
    NotListening {
        netns: String,
        port: u16,
        waited: Duration,
    },
    #[error("read {what} in netns {netns}: {text:?}")]
    Parse {
        netns: String,
        what: String,
        text: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// The longest interface name Linux takes (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// How much of a prefix [`unique_name`] keeps.
const PREFIX_MAX: usize = 5;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the test can run: it needs root (CAP_NET_ADMIN for namespaces
/// and links, CAP_BPF for eBPF). Says so loudly when it cannot; CI on the
/// test machine always runs as root.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "SKIPPED: needs root (CAP_NET_ADMIN, CAP_BPF) for network namespaces, links and eBPF"
    );
    false
}

/// `PREFIX<pid>-<n>`, at most [`IFNAME_MAX`] bytes so that it also names an
/// interface: unique among the threads of this process (the counter is never
/// cut) and among processes running at once (the pid). A prefix (ASCII)
/// keeps its first 5 bytes; when the counter grows long, the pid loses its
/// leading digits.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    fit_name(prefix, std::process::id(), n)
}

fn fit_name(prefix: &str, pid: u32, n: u32) -> String {
    let tail = format!("-{n}");
    let room = IFNAME_MAX.saturating_sub(tail.len());
    let prefix: String = prefix.chars().take(PREFIX_MAX.min(room)).collect();
    let pid = pid.to_string();
    let keep = room.saturating_sub(prefix.len()).min(pid.len());
    let pid = pid.get(pid.len() - keep..).unwrap_or_default();
    format!("{prefix}{pid}{tail}")
}

/// Runs `program args...`, returning its stdout; a non-zero exit is an error
/// carrying what it printed.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        return Err(Error::Failed {
            command,
            status: out.status,
            output: format!("{}\n{}", stderr.trim(), stdout.trim())
                .trim()
                .to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`), deleted on drop together with
/// every link in it; processes still inside it are killed first.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates `vmt<pid>-<n>` with `lo` up.
    pub fn new() -> Result<Self> {
        Self::with_prefix("vmt")
    }

    /// Creates a namespace named by [`unique_name`]`(prefix)`, with `lo` up.
    pub fn with_prefix(prefix: &str) -> Result<Self> {
        Self::named(&unique_name(prefix))
    }

    /// Creates the namespace `name` with `lo` up.
    pub fn named(name: &str) -> Result<Self> {
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            path: Path::new(NETNS_RUN_DIR).join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`: what [`crate::VmSpec::netns`] takes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `program args...` inside this namespace (`ip netns exec`),
    /// returning its stdout; a non-zero exit is an error carrying what it
    /// printed.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `sysctl -w KEY=VALUE` inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// `ping -c COUNT -i 0.2 -W WAIT -q EXTRA... DST` from this namespace:
    /// true when it succeeds (a reply came back). `extra` adds options such
    /// as `-6` or `-I SOURCE`. `wait` is not only patience: a test that pings
    /// an address again right after a failed ping depends on it, as it
    /// decides whether the failed neighbour resolution (3 probes, 1 s apart)
    /// is over by then or swallows the next ping's packets.
    pub fn ping(&self, dst: &str, count: u32, wait: Duration, extra: &[&str]) -> bool {
        let count = count.to_string();
        let wait = wait.as_secs_f64().to_string();
        let mut args = vec!["-c", &count, "-i", "0.2", "-W", &wait, "-q"];
        args.extend_from_slice(extra);
        args.push(dst);
        self.exec("ping", &args).is_ok()
    }

    /// The names of the links in this namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect())
    }

    /// `ip -j -d link show dev NAME` as JSON, or None when there is no such
    /// link.
    pub fn link(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.ip(&["-j", "-d", "link", "show", "dev", name]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.get(0).cloned()
    }

    /// The global IPv4 addresses of link `name`, as `a.b.c.d/len` (none when
    /// there is no such link).
    pub fn addrs4(&self, name: &str) -> Vec<String> {
        let Ok(out) = self.ip(&["-j", "-4", "addr", "show", "dev", name, "scope", "global"]) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut addrs = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                addrs.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or(""),
                    a["prefixlen"]
                ));
            }
        }
        addrs
    }

    /// The packets `iface` received, as the kernel counts them.
    pub fn rx_packets(&self, iface: &str) -> Result<u64> {
        let what = format!("/sys/class/net/{iface}/statistics/rx_packets");
        let text = self.exec("cat", &[&what])?;
        text.trim().parse().map_err(|_| Error::Parse {
            netns: self.name.clone(),
            what,
            text,
        })
    }

    /// Creates a tap `name` in this namespace and sets it up; with `addr`
    /// (`"192.168.77.1/24"`) it also gets that address.
    pub fn add_tap(&self, name: &str, addr: Option<&str>) -> Result<Tap> {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = Tap {
            netns: self.name.clone(),
            name: name.to_owned(),
        };
        if let Some(addr) = addr {
            self.ip(&["addr", "add", addr, "dev", name])?;
        }
        self.ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts `program args...` inside this namespace, output discarded;
    /// the process is killed when the guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: format!("ip netns exec {} {program} {}", self.name, args.join(" ")),
            source,
        })?;
        Ok(ChildGuard { child })
    }

    /// Runs `f` on a new OS thread that has entered this namespace. Sockets
    /// made there stay in the namespace, so `f` can return a bound listener
    /// for the caller to serve from any thread.
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        netattach::netns::run_in(&self.path, f).map_err(Error::from)
    }

    /// Waits until a TCP socket listens on `port` in this namespace.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let filter = format!("sport = :{port}");
        loop {
            let out = self.exec("ss", &["-Hltn", &filter])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::NotListening {
                    netns: self.name.clone(),
                    port,
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process ids inside this namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = run("ip", &["netns", "pids", &self.name])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything left inside was started by this test (a VM or server whose
        // guard leaked); without this the namespace would outlive its name.
        // Never the test process itself (its main thread may be inside).
        let me = i32::try_from(std::process::id()).unwrap_or(-1);
        for pid in self.pids().unwrap_or_default() {
            if pid != me {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("vm-tests: delete netns {}: {e}", self.name);
        }
    }
}

/// A veth pair: `a` in `ns_a` and `b` in `ns_b`, both up. The pair goes with
/// either namespace. `a` and `b` may be the same name (`eth0` on both
/// sides): the peer is made under a unique name and renamed in `ns_b`.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    let tmp = unique_name("vt");
    ns_a.ip(&[
        "link", "add", a, "type", "veth", "peer", "name", &tmp, "netns", &ns_b.name,
    ])?;
    ns_b.ip(&["link", "set", &tmp, "name", b])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// A tap link in a namespace, deleted on drop (a no-op when the namespace is
/// already gone, which removes its links).
#[derive(Debug)]
pub struct Tap {
    netns: String,
    name: String,
}

impl Tap {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let gone = !Path::new(NETNS_RUN_DIR).join(&self.netns).exists();
        if !gone {
            let _ = run("ip", &["-n", &self.netns, "link", "del", &self.name]);
        }
    }
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (if still running) and reaps it.
    pub fn stop(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.kill_and_wait()
    }

    fn kill_and_wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = self.child.kill();
        self.child.wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill_and_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_interfaces() {
        let a = unique_name("tp");
        let b = unique_name("tp");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX, "{a}");
        assert!(a.starts_with("tp"), "{a}");
        let long = unique_name("longprefix");
        assert!(
            long.starts_with("longp") && long.len() <= IFNAME_MAX,
            "{long}"
        );
    }

    #[test]
    fn names_give_way_from_the_prefix_then_the_pids_leading_digits() {
        assert_eq!(fit_name("vbp", 4_194_304, 7), "vbp4194304-7");
        assert_eq!(fit_name("vlkvm", 4_194_304, 12), "vlkvm4194304-12");
        assert_eq!(fit_name("vlkvm", 4_194_304, 123), "vlkvm194304-123");
        assert_eq!(fit_name("toolong", 123, 0), "toolo123-0");
        assert_eq!(fit_name("vbvg", 4_194_304, u32::MAX), "vbvg-4294967295");
    }
}
