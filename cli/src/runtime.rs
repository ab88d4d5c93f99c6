//! Playing the container runtime's part on one machine: a "node" network
//! namespace in which virtlink-cni and its delegates run (so bridges,
//! host-side veths and ip_forward never touch the machine's own namespace),
//! pod namespaces, and CNI calls made exactly as containerd makes them.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where the Debian reference plugins live, and the usual CNI bin dir.
pub const PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// The virtlink-cni binary next to this executable, else on PATH.
pub fn plugin_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find own executable")?;
    if let Some(dir) = exe.parent() {
        let p = dir.join("virtlink-cni");
        if p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("virtlink-cni")).find(|p| p.is_file()))
        .context("virtlink-cni not found next to virtlink or on PATH (cargo build --release builds both)")
}

/// A CNI bin dir with the installed reference plugins and virtlink-cni.
pub fn make_bin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for src in PLUGIN_DIRS {
        let Ok(entries) = std::fs::read_dir(src) else {
            continue;
        };
        for e in entries.flatten() {
            let link = dir.join(e.file_name());
            if !link.exists() {
                std::os::unix::fs::symlink(e.path(), &link)
                    .with_context(|| format!("link {}", link.display()))?;
            }
        }
    }
    let own = dir.join("virtlink-cni");
    let _ = std::fs::remove_file(&own);
    std::os::unix::fs::symlink(plugin_binary()?, &own).context("link virtlink-cni")?;
    if !dir.join("bridge").exists() {
        bail!("the CNI reference plugins are not installed (apt-get install containernetworking-plugins)");
    }
    Ok(())
}

/// Runs `ip ARGS` and fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command inside a named namespace; returns success and output.
pub fn in_netns(netns: &str, argv: &[&str]) -> (bool, String) {
    match Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
    {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// The node namespace: created with a bridge `vl-underlay` (a master for
/// macvlan networks) and forwarding on.
pub fn create_node(name: &str) -> Result<PathBuf> {
    let path =
        netattach::netns::create(name).with_context(|| format!("create node namespace {name}"))?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    ip(&["-n", name, "link", "add", "vl-underlay", "type", "bridge"])?;
    ip(&["-n", name, "link", "set", "vl-underlay", "up"])?;
    let (ok, out) = in_netns(name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    if !ok {
        bail!("enable forwarding in {name}: {out}");
    }
    Ok(path)
}

/// One CNI call's outcome.
#[derive(Debug)]
pub struct CniCall {
    pub ok: bool,
    pub output: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Calls a CNI plugin the way containerd does, with the plugin process inside
/// the node namespace `node`.
#[allow(clippy::too_many_arguments)]
pub fn call_cni(
    plugin: &Path,
    node: &Path,
    command: &str,
    container_id: &str,
    netns: &str,
    ifname: &str,
    cni_args: &str,
    cni_path: &Path,
    config: &Value,
    extra_env: &[(&str, &str)],
) -> Result<CniCall> {
    let node_ns = std::fs::File::open(node).with_context(|| format!("open {}", node.display()))?;
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", cni_path)
        .envs(extra_env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = node_ns.as_fd().as_raw_fd();
    // SAFETY: setns is async-signal-safe and only changes the forked child's
    // namespace before exec; the fd stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(
                std::os::fd::BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&serde_json::to_vec(config)?)
            .context("write plugin stdin")?;
    }
    let out = child.wait_with_output().context("wait for plugin")?;
    let elapsed = started.elapsed();
    drop(node_ns);
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(CniCall {
        ok: out.status.success(),
        output: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    })
}

/// `K8S_POD_*` CNI_ARGS as containerd sends them.
pub fn k8s_args(namespace: &str, pod: &str, uid: &str, container_id: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"
    )
}
