//! Shared harness: a temp dir with a fake sysfs tree, the real plugin binary
//! as a child process and the Python kubelet stand-in, each killed in `Drop`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use virtlink_device_plugin::fakesys::FakeSysfs;

pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Dirs of one test, removed with the temp dir.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub sys: FakeSysfs,
    pub kubelet_dir: PathBuf,
    pub devinfo_dir: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

impl Env {
    pub fn new(config: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let sys = FakeSysfs::new(&tmp.path().join("sys")).unwrap();
        let kubelet_dir = tmp.path().join("device-plugins");
        std::fs::create_dir_all(&kubelet_dir).unwrap();
        let config_path = tmp.path().join("etc/config.json");
        std::fs::create_dir_all(config_path.parent().unwrap()).unwrap();
        std::fs::write(&config_path, config).unwrap();
        Self {
            sys,
            kubelet_dir,
            devinfo_dir: tmp.path().join("devinfo/dp"),
            state_dir: tmp.path().join("state"),
            config: config_path,
            tmp,
        }
    }

    /// Replaces the config the way a ConfigMap update does (new file, rename).
    pub fn write_config(&self, text: &str) {
        let tmp = self.config.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, &self.config).unwrap();
    }

    pub fn plugin_command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_virtlink-device-plugin"));
        c.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--sysfs-root")
            .arg(self.sys.root())
            .arg("--kubelet-dir")
            .arg(&self.kubelet_dir)
            .arg("--devinfo-dir")
            .arg(&self.devinfo_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--rescan-interval-ms")
            .arg("100")
            .env("VIRTLINK_LOG", "virtlink_device_plugin=debug,info");
        c
    }

    /// Starts the real binary; its log goes to `plugin-<n>.log` in the temp dir.
    pub fn start_plugin(&self) -> ChildGuard {
        let n = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("plugin-"))
            })
            .count();
        let log_path = self.tmp.path().join(format!("plugin-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = self
            .plugin_command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ChildGuard {
            child,
            log: Some(log_path),
        }
    }

    pub fn start_kubelet(&self) -> Kubelet {
        Kubelet::start(&self.kubelet_dir, &self.tmp.path().join("stubs"))
    }
}

/// A child process killed (SIGKILL) and reaped on drop. Prints its log when
/// the test is failing, so the failure shows what the plugin did.
pub struct ChildGuard {
    pub child: Child,
    pub log: Option<PathBuf>,
}

impl ChildGuard {
    /// SIGTERM, then wait up to 5 s; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "plugin did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- plugin log ----\n{}", self.log_text());
        }
    }
}

/// The Python kubelet stand-in (tests/kubelet_standin.py).
pub struct Kubelet {
    guard: ChildGuard,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Kubelet {
    pub fn start(kubelet_dir: &Path, stubs_dir: &Path) -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(manifest.join("tests/kubelet_standin.py"))
            .arg("--proto-dir")
            .arg(manifest.join("proto"))
            .arg("--stubs-dir")
            .arg(stubs_dir)
            .arg("--kubelet-dir")
            .arg(kubelet_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/setup.sh installs it with grpcio and grpcio-tools)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut k = Self {
            guard: ChildGuard { child, log: None },
            stdin,
            lines,
        };
        let ready = k.read();
        assert_eq!(
            ready["ready"], true,
            "kubelet stand-in did not start (python3 needs grpcio and grpcio-tools: run scripts/setup.sh): {ready}"
        );
        k
    }

    fn read(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => serde_json::from_str(&l).unwrap(),
            Err(e) => panic!("kubelet stand-in gave no answer: {e}"),
        }
    }

    pub fn call(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let v = self.read();
        assert!(
            v.get("exception").is_none(),
            "stand-in failed on {cmd}: {v}"
        );
        v
    }

    pub fn registrations(&mut self) -> Vec<Value> {
        self.call(json!({"cmd": "registrations"}))["registrations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn registrations_of(&mut self, resource: &str) -> usize {
        self.registrations()
            .iter()
            .filter(|r| r["resource"] == resource)
            .count()
    }

    pub fn devices(&mut self, resource: &str) -> Value {
        self.call(json!({"cmd": "devices", "resource": resource}))
    }

    /// `(id, health)` of the latest list kubelet got for `resource`.
    pub fn device_health(&mut self, resource: &str) -> Vec<(String, String)> {
        self.devices(resource)["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap_or_default().to_string(),
                    d["health"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn device_ids(&mut self, resource: &str) -> Vec<String> {
        self.device_health(resource)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    pub fn allocate(&mut self, resource: &str, ids: &[&[&str]]) -> Value {
        self.call(json!({"cmd": "allocate", "resource": resource, "ids": ids}))
    }

    pub fn preferred(
        &mut self,
        resource: &str,
        available: &[String],
        must: &[&str],
        size: u32,
    ) -> Vec<String> {
        let v = self.call(json!({"cmd": "preferred", "resource": resource,
            "available": available, "must": must, "size": size}));
        serde_json::from_value(v["ids"].clone()).unwrap()
    }

    pub fn restart(&mut self) {
        let v = self.call(json!({"cmd": "restart"}));
        assert_eq!(v["ok"], true);
    }
}

/// Polls `f` until it returns `Some`, or panics after `TIMEOUT` with `what`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
