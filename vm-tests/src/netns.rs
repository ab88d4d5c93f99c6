//! Test network namespaces, taps and processes that clean up after themselves.
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
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(transparent)]
    Netns(#[from] netattach::netns::Error),
    #[error("nothing listens on TCP port {port} in netns {netns} after {waited:?}")]
    NotListening {
        netns: String,
        port: u16,
        waited: Duration,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `PREFIX<pid>-<n>`: unique among the processes and threads of this machine.
/// Interface names must stay within 15 bytes: keep `prefix` to 3 or so.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// Runs `program args...`, returning its stdout; a non-zero exit is an error
/// carrying stderr.
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
        return Err(Error::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
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
        Self::named(&unique_name("vmt"))
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
            let out = run("ip", &["netns", "exec", &self.name, "ss", "-Hltn", &filter])?;
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
        for pid in self.pids().unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("vm-tests: delete netns {}: {e}", self.name);
        }
    }
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
        assert!(a.len() <= 15, "{a}");
    }
}
