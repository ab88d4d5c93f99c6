//! `virtlink launcher`: standalone mode's stand-in for KubeVirt's
//! virt-launcher, one process per VM. It binds the VM's interfaces in the
//! launcher pod's namespace (vm-binder), keeps the guest's DHCP servers
//! running, boots the guest under QEMU (vm-tests' guest and harness), and
//! answers on a control socket: the VM's state, commands to run in the guest
//! (over its serial console), and stop (power off, unbind, exit).
//!
//! Its directory holds `launch.json` (written by `virtlink up`),
//! `state.json` (written here at every phase change), `control.sock`,
//! `launcher.pid` and `launcher.log`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netattach::status::NetworkStatus;
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};
use vm_binder::BoundInterface;

/// How long a guest may take to boot under TCG before the launcher gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What `virtlink up` hands to a launcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// The VirtualMachine or VirtualMachineInstance object.
    pub vm: serde_json::Value,
    /// The launcher pod's network namespace.
    pub pod_netns: PathBuf,
    /// The launcher pod's network-status, as the CNI reported it.
    pub network_status: Vec<NetworkStatus>,
    /// The pod's resolv.conf, for the guest's DNS settings.
    pub resolv_conf: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Binding,
    Booting,
    Ready,
    Failed,
    Stopped,
}

/// One VM interface as the user sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestInterface {
    #[serde(flatten)]
    pub bound: BoundInterface,
    /// The guest's name for the NIC (`eth0`, ...), found by MAC.
    pub guest_nic: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<GuestInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_log: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Run { command: String, timeout_secs: u64 },
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Run { status: i32, output: String },
    State(State),
    Error { error: String },
}

pub fn control_socket(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// The last state the launcher in `dir` recorded.
pub fn read_state(dir: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(state_file(dir)).ok()?).ok()
}

/// Sends one request to the launcher in `dir`.
pub fn request(dir: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let path = control_socket(dir);
    let stream = UnixStream::connect(&path)
        .with_context(|| format!("connect to the launcher at {}", path.display()))?;
    stream.set_read_timeout(Some(timeout + Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("read the launcher's answer")?;
    if answer.is_empty() {
        bail!("the launcher closed the connection");
    }
    Ok(serde_json::from_str(&answer)?)
}

/// Runs `command` in the guest; returns (exit status, output).
pub fn run_in_guest(dir: &Path, command: &str, timeout: Duration) -> Result<(i32, String)> {
    match request(
        dir,
        &Request::Run {
            command: command.to_string(),
            timeout_secs: timeout.as_secs().max(1),
        },
        timeout,
    )? {
        Response::Run { status, output } => Ok((status, output)),
        Response::Error { error } => bail!("{error}"),
        Response::State(_) => bail!("unexpected answer from the launcher"),
    }
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    vm: Mutex<Option<Arc<vm_tests::Vm>>>,
    stop: mpsc::Sender<()>,
}

impl Shared {
    fn set(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        let bytes = serde_json::to_vec_pretty(&*s).unwrap_or_default();
        let tmp = self.dir.join("state.json.tmp");
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, state_file(&self.dir)))
            .is_err()
        {
            tracing::warn!("could not record the launcher state");
        }
    }

    fn snapshot(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The launcher's main: returns when the VM was stopped (by request or
/// SIGTERM/SIGINT), after powering it off and unbinding its interfaces.
pub fn run(dir: &Path) -> Result<()> {
    // Block the stop signals in every thread; one thread waits for them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("block signals")?;

    let launch: Launch = serde_json::from_slice(
        &std::fs::read(dir.join("launch.json")).context("read launch.json")?,
    )
    .context("parse launch.json")?;
    let vm = vm_binder::Vm::parse(&launch.vm.to_string()).context("parse the VM")?;
    std::fs::write(dir.join("launcher.pid"), std::process::id().to_string())?;

    let (stop_tx, stop_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        state: Mutex::new(State {
            phase: Phase::Binding,
            error: None,
            interfaces: Vec::new(),
            serial_log: None,
            qemu_pid: None,
        }),
        vm: Mutex::new(None),
        stop: stop_tx.clone(),
    });
    shared.set(|_| {});
    let sock = control_socket(dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).with_context(|| format!("bind {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    {
        let shared = shared.clone();
        std::thread::spawn(move || serve(listener, shared));
    }
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            tracing::info!(?sig, "stopping");
            let _ = stop_tx.send(());
        }
    });

    let started = start(&vm, &launch, &shared);
    let binding = match started {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(error = %msg, "launch failed");
            shared.set(|s| {
                s.phase = Phase::Failed;
                s.error = Some(msg);
            });
            // Wait for `down` (or a signal) so the failure can be read.
            let _ = stop_rx.recv();
            let _ = std::fs::remove_file(&sock);
            return Err(e);
        }
    };
    let _ = stop_rx.recv();

    let guest = shared.vm.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(guest) = guest {
        match Arc::try_unwrap(guest) {
            Ok(g) => {
                if let Err(e) = g.shutdown(Duration::from_secs(30)) {
                    tracing::warn!(error = %e, "power off");
                }
            }
            // A command is still running on the console: dropping the last
            // reference powers the guest off.
            Err(g) => drop(g),
        }
    }
    let unbound = binding.unbind(&vm, &launch.network_status);
    shared.set(|s| s.phase = Phase::Stopped);
    let _ = std::fs::remove_file(&sock);
    unbound.context("unbind the VM's interfaces")
}

/// Binds and boots; on error, undoes the binding.
fn start(vm: &vm_binder::Vm, launch: &Launch, shared: &Shared) -> Result<vm_binder::Binding> {
    let opts = vm_binder::BindOptions {
        resolv_conf: launch.resolv_conf.clone(),
        ..Default::default()
    };
    let binding = vm_binder::bind(vm, &launch.pod_netns, &launch.network_status, &opts)
        .context("bind the VM's interfaces")?;
    shared.set(|s| {
        s.phase = Phase::Booting;
        s.interfaces = binding
            .interfaces
            .iter()
            .map(|i| GuestInterface {
                bound: i.clone(),
                guest_nic: None,
            })
            .collect();
    });
    match boot(vm, launch, &binding, shared) {
        Ok(()) => Ok(binding),
        Err(e) => {
            if let Err(u) = binding.unbind(vm, &launch.network_status) {
                tracing::warn!(error = %u, "unbind after a failed boot");
            }
            Err(e)
        }
    }
}

fn boot(
    vm: &vm_binder::Vm,
    launch: &Launch,
    binding: &vm_binder::Binding,
    shared: &Shared,
) -> Result<()> {
    let dhcp = binding.interfaces.iter().any(|i| i.dhcp_device.is_some());
    let mut spec = vm_tests::VmSpec::new(&vm.name)
        .netns(&launch.pod_netns)
        .qemu_args(binding.qemu_args());
    if dhcp {
        spec = spec.cmdline("virtlink.dhcp=1");
    }
    let guest = vm_tests::Vm::boot(spec).context("start QEMU")?;
    shared.set(|s| {
        s.serial_log = guest.serial_log();
        s.qemu_pid = Some(guest.pid());
    });
    guest
        .wait_ready(BOOT_TIMEOUT)
        .context("wait for the guest to boot")?;
    let nics = guest
        .run_ok(
            "for d in /sys/class/net/*; do echo ${d##*/} $(cat $d/address); done",
            Duration::from_secs(30),
        )
        .context("list the guest's NICs")?;
    shared.set(|s| {
        for i in &mut s.interfaces {
            let mac = i.bound.mac.to_string();
            i.guest_nic = nics
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(_, m)| m.trim().eq_ignore_ascii_case(&mac))
                .map(|(n, _)| n.to_string());
        }
        s.phase = Phase::Ready;
    });
    *shared.vm.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(guest));
    Ok(())
}

fn serve(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(&conn, &shared) {
                tracing::debug!(error = %e, "control connection");
            }
        });
    }
}

fn answer(conn: &UnixStream, shared: &Shared) -> Result<()> {
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error {
            error: format!("bad request: {e}"),
        },
        Ok(Request::Status) => Response::State(shared.snapshot()),
        Ok(Request::Stop) => {
            let _ = shared.stop.send(());
            Response::State(shared.snapshot())
        }
        Ok(Request::Run {
            command,
            timeout_secs,
        }) => {
            let guest = shared.vm.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match guest {
                None => Response::Error {
                    error: format!("the VM is not running ({:?})", shared.snapshot().phase),
                },
                Some(g) => match g.run(&command, Duration::from_secs(timeout_secs)) {
                    Ok(out) => Response::Run {
                        status: out.status,
                        output: out.output,
                    },
                    Err(e) => Response::Error {
                        error: e.to_string(),
                    },
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    let mut w = conn;
    w.write_all(&out)?;
    Ok(())
}
