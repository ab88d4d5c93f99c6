//! Standalone mode: the Pods and NetworkAttachmentDefinitions of one YAML
//! file, attached on this machine by calling virtlink-cni exactly as a
//! container runtime does, with no cluster. Everything lives in a node
//! namespace `vl-<env>-node` and pod namespaces `vl-<env>-<pod>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use netattach::status::NetworkStatus;
use serde_json::{json, Value};
use virtlink_cni::source::dir::DirSource;

use crate::runtime;

pub const DEFAULT_RUN_DIR: &str = "/run/virtlink";

/// One standalone environment, named after its file.
struct Env {
    name: String,
    dir: PathBuf,
    node: String,
}

impl Env {
    fn new(file: &Path, run_dir: &Path) -> Result<Self> {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("file name")?;
        let name: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        Ok(Env {
            dir: run_dir.join(&name),
            node: format!("vl-{name}-node"),
            name,
        })
    }

    fn pod_netns(&self, pod: &str) -> String {
        format!("vl-{}-{}", self.name, pod)
    }

    fn container_id(&self, pod: &str) -> String {
        format!("vl-{}-{}", self.name, pod)
    }

    fn node_path(&self) -> PathBuf {
        Path::new(netattach::netns::NETNS_RUN_DIR).join(&self.node)
    }
}

fn step(n: usize, total: usize, what: &str) {
    eprintln!("\x1b[1m[{n}/{total}]\x1b[0m {what}");
}

/// The plugin config a node would have: the cluster network is the NAD
/// `kube-system/podnet` when the file has one, else a bridge network.
fn plugin_config(env: &Env, source: &DirSource) -> Value {
    let cluster = if source.nad("kube-system", "podnet").is_some() {
        json!("kube-system/podnet")
    } else {
        json!({
            "cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "vl-pod",
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.244.0.0/24", "dataDir": env.dir.join("ipam")}
        })
    };
    json!({
        "cniVersion": "1.1.0",
        "name": "virtlink",
        "type": "virtlink-cni",
        "clusterNetwork": cluster,
        "manifestsDir": env.dir.join("manifests"),
        "stateDir": env.dir.join("state"),
        "logFile": env.dir.join("virtlink-cni.log"),
        "logLevel": "info",
    })
}

pub fn up(file: &Path, run_dir: &Path) -> Result<()> {
    let env = Env::new(file, run_dir)?;
    if env.node_path().exists() {
        eprintln!("{} is already up: taking it down first", env.name);
        down(file, run_dir)?;
    }
    let total = 4;
    step(1, total, &format!("reading {}", file.display()));
    let manifests = env.dir.join("manifests");
    let prepared = (|| -> Result<_> {
        std::fs::create_dir_all(&manifests)
            .with_context(|| format!("create {}", manifests.display()))?;
        std::fs::copy(file, manifests.join("objects.yaml"))
            .with_context(|| format!("read {}", file.display()))?;
        let source =
            DirSource::load(&manifests).with_context(|| format!("parse {}", file.display()))?;
        let pods: Vec<_> = source.pods().cloned().collect();
        if pods.is_empty() {
            bail!("{} has no Pod to attach", file.display());
        }
        let bin = env.dir.join("bin");
        runtime::make_bin_dir(&bin)?;
        let conf = plugin_config(&env, &source);
        std::fs::write(
            env.dir.join("virtlink.conf"),
            serde_json::to_vec_pretty(&conf)?,
        )?;
        Ok((pods, bin, conf))
    })();
    let (pods, bin, conf) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&env.dir);
            return Err(e);
        }
    };

    // From here on a failure takes down whatever was made.
    let attached = (|| -> Result<()> {
        step(2, total, &format!("creating node namespace {}", env.node));
        runtime::create_node(&env.node)?;
        step(
            3,
            total,
            &format!("attaching {} pod(s) through virtlink-cni", pods.len()),
        );
        let plugin = bin.join("virtlink-cni");
        for pod in &pods {
            let ns = env.pod_netns(&pod.name);
            let path = netattach::netns::create(&ns)
                .with_context(|| format!("create pod namespace {ns}"))?;
            runtime::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let cid = env.container_id(&pod.name);
            let args = runtime::k8s_args(
                &pod.namespace,
                &pod.name,
                pod.uid.as_deref().unwrap_or(""),
                &cid,
            );
            let call = runtime::call_cni(
                &plugin,
                &env.node_path(),
                "ADD",
                &cid,
                &path.to_string_lossy(),
                "eth0",
                &args,
                &bin,
                &conf,
                &[],
            )?;
            if !call.ok {
                bail!(
                    "ADD of pod {}/{} failed: {}",
                    pod.namespace,
                    pod.name,
                    call.output
                );
            }
            eprintln!(
                "      {}/{}: ADD in {} ms",
                pod.namespace,
                pod.name,
                call.elapsed.as_millis()
            );
        }
        Ok(())
    })();
    if let Err(e) = attached {
        eprintln!("setting up failed: removing what was made");
        if let Err(d) = down(file, run_dir) {
            eprintln!("{d:#}");
        }
        return Err(e);
    }

    let mut statuses = BTreeMap::new();
    for pod in &pods {
        let file = env
            .dir
            .join("state/status")
            .join(&pod.namespace)
            .join(format!("{}.json", pod.name));
        let list: Vec<NetworkStatus> = serde_json::from_slice(
            &std::fs::read(&file).with_context(|| format!("read {}", file.display()))?,
        )?;
        statuses.insert(pod.name.clone(), list);
    }
    println!();
    println!(
        "{:<10} {:<10} {:<22} {:<18} {:<18} default",
        "POD", "INTERFACE", "NETWORK", "IP", "MAC"
    );
    for (pod, list) in &statuses {
        for s in list {
            println!(
                "{:<10} {:<10} {:<22} {:<18} {:<18} {}",
                pod,
                s.interface.as_deref().unwrap_or("-"),
                s.name,
                s.ips.first().map(String::as_str).unwrap_or("-"),
                s.mac.as_deref().unwrap_or("-"),
                if s.default { "yes" } else { "" }
            );
        }
    }

    step(
        4,
        total,
        "checking traffic on every network between the pods",
    );
    let failures = connectivity(&env, &statuses);
    println!();
    if failures > 0 {
        bail!(
            "{failures} connectivity check(s) failed (log: {})",
            env.dir.join("virtlink-cni.log").display()
        );
    }
    println!(
        "all networks carry traffic. Remove everything with: virtlink down {}",
        file.display()
    );
    Ok(())
}

/// Pings, on each network, from the first pod attached to it to every other.
fn connectivity(env: &Env, statuses: &BTreeMap<String, Vec<NetworkStatus>>) -> usize {
    let mut by_network: BTreeMap<&str, Vec<(&str, &NetworkStatus)>> = BTreeMap::new();
    for (pod, list) in statuses {
        for s in list {
            by_network
                .entry(s.name.as_str())
                .or_default()
                .push((pod.as_str(), s));
        }
    }
    let mut failures = 0;
    println!(
        "{:<22} {:<24} {:<18} result",
        "NETWORK", "FROM -> TO", "TARGET"
    );
    for (network, members) in by_network {
        let Some(((from, from_status), rest)) = members.split_first() else {
            continue;
        };
        if rest.is_empty() {
            println!(
                "{network:<22} {:<24} {:<18} (only one pod on this network)",
                *from, "-"
            );
            continue;
        }
        for (to, s) in rest {
            let Some(target) = s.ips.first() else {
                continue;
            };
            let iface = from_status.interface.as_deref().unwrap_or("eth0");
            let (ok, out) = runtime::in_netns(
                &env.pod_netns(from),
                &[
                    "ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", iface, target,
                ],
            );
            let rtt = out
                .lines()
                .find(|l| l.contains("rtt") || l.contains("round-trip"))
                .and_then(|l| l.split('=').nth(1))
                .and_then(|v| v.split('/').nth(1))
                .map(|avg| format!("ok, rtt {avg} ms"))
                .unwrap_or_else(|| "ok".into());
            if !ok {
                failures += 1;
            }
            println!(
                "{network:<22} {:<24} {:<18} {}",
                format!("{from}/{iface} -> {to}"),
                target,
                if ok { rtt } else { "FAILED".into() }
            );
        }
    }
    failures
}

pub fn down(file: &Path, run_dir: &Path) -> Result<()> {
    let env = Env::new(file, run_dir)?;
    let conf_path = env.dir.join("virtlink.conf");
    let mut errors = Vec::new();
    if let (Ok(bytes), true) = (std::fs::read(&conf_path), env.node_path().exists()) {
        let conf: Value = serde_json::from_slice(&bytes)?;
        let bin = env.dir.join("bin");
        let plugin = bin.join("virtlink-cni");
        let source = DirSource::load(&env.dir.join("manifests")).ok();
        let pods: Vec<_> = source.iter().flat_map(|s| s.pods().cloned()).collect();
        eprintln!("removing {} pod(s) of {}", pods.len(), env.name);
        for pod in &pods {
            let ns = env.pod_netns(&pod.name);
            let path = Path::new(netattach::netns::NETNS_RUN_DIR).join(&ns);
            let cid = env.container_id(&pod.name);
            let args = runtime::k8s_args(
                &pod.namespace,
                &pod.name,
                pod.uid.as_deref().unwrap_or(""),
                &cid,
            );
            // As containerd: DEL with the namespace, then DEL without it.
            for netns in [path.to_string_lossy().into_owned(), String::new()] {
                match runtime::call_cni(
                    &plugin,
                    &env.node_path(),
                    "DEL",
                    &cid,
                    &netns,
                    "eth0",
                    &args,
                    &bin,
                    &conf,
                    &[],
                ) {
                    Ok(c) if c.ok => {}
                    Ok(c) => errors.push(format!("DEL {}: {}", pod.name, c.output)),
                    Err(e) => errors.push(format!("DEL {}: {e:#}", pod.name)),
                }
            }
            if let Err(e) = netattach::netns::delete(&ns) {
                errors.push(format!("delete {ns}: {e}"));
            }
        }
    }
    if let Err(e) = netattach::netns::delete(&env.node) {
        errors.push(format!("delete {}: {e}", env.node));
    }
    if errors.is_empty() {
        let _ = std::fs::remove_dir_all(&env.dir);
        eprintln!("{} is down", env.name);
        Ok(())
    } else {
        bail!(
            "down left work undone (state kept in {}):\n  {}",
            env.dir.display(),
            errors.join("\n  ")
        )
    }
}
