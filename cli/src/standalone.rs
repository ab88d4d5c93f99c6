//! Standalone mode: the Pods, KubeVirt VirtualMachines (or VMIs) and
//! NetworkAttachmentDefinitions of one YAML file, brought up on this machine
//! with no cluster. Pods and each VM's launcher pod are attached by calling
//! virtlink-cni exactly as a container runtime does; each VM then gets a
//! launcher process (`virtlink launcher`, see [`crate::launcher`]) that binds
//! its interfaces and boots it. Everything lives in a node namespace
//! `vl-<env>-node` and pod namespaces `vl-<env>-<pod>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netattach::status::NetworkStatus;
use serde::Deserialize;
use serde_json::{json, Value};
use virtlink_cni::source::dir::DirSource;

use crate::launcher::{self, Launch, Phase};
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

/// The node of the isolated networks (`"type": "virtlink"`, docs/vnet.md)
/// in standalone mode: the environment's node namespace, alone (nothing
/// crosses the tunnel, so its underlay address is loopback's), with its
/// cluster directory (the API's stand-in) and state in the environment's.
fn vnet_node(env: &Env) -> virtlink_vnet::node::NodeConfig {
    virtlink_vnet::node::NodeConfig::new(
        &env.node,
        std::net::Ipv4Addr::LOCALHOST,
        &env.dir.join("vnet/cluster"),
        &env.dir.join("vnet/state"),
    )
}

/// The file's objects as the CNI reads them: each VirtualNetwork checked
/// and written to the node's cluster directory, each `"virtlink"` NAD
/// config given the node's settings (as the node agent does in a cluster).
fn prepare_objects(env: &Env, file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let node = vnet_node(env);
    let node_json = virtlink_vnet::cni::node_json(&node);
    let cluster = virtlink_vnet::store::ClusterDir::new(&node.cluster_dir);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value =
            Value::deserialize(doc).with_context(|| format!("parse {}", file.display()))?;
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(Value::as_str).unwrap_or("") {
            "VirtualNetwork" => {
                let vn: virtlink_vnet::model::VirtualNetwork =
                    serde_json::from_value(value.clone())
                        .with_context(|| format!("VirtualNetwork in {}", file.display()))?;
                let name = vn.metadata.name.clone().unwrap_or_default();
                let net = virtlink_vnet::model::Network::from_spec(&name, &vn.spec)
                    .with_context(|| format!("VirtualNetwork {name} in {}", file.display()))?;
                std::fs::create_dir_all(&node.cluster_dir)?;
                cluster
                    .put_network(&net)
                    .with_context(|| format!("record VirtualNetwork {name}"))?;
            }
            "NetworkAttachmentDefinition" => {
                if let Some(c) = value.pointer_mut("/spec/config") {
                    if let Some(text) = c.as_str() {
                        *c = json!(virtlink_vnet::cni::fill_node(text, &node_json));
                    }
                }
            }
            _ => {}
        }
        docs.push(serde_yaml::to_string(&value)?);
    }
    Ok(docs.join("---\n"))
}

/// The VirtualMachines and VirtualMachineInstances of a YAML file.
fn read_vms(file: &Path) -> Result<Vec<(serde_json::Value, vm_binder::Vm)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).with_context(|| format!("parse {}", file.display()))?;
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "VirtualMachine" && kind != "VirtualMachineInstance" {
            continue;
        }
        let vm = vm_binder::Vm::parse(&value.to_string())
            .with_context(|| format!("{kind} in {}", file.display()))?;
        if out
            .iter()
            .any(|(_, v): &(Value, vm_binder::Vm)| v.name == vm.name)
        {
            bail!("two VMs named {} in {}", vm.name, file.display());
        }
        out.push((value, vm));
    }
    Ok(out)
}

/// The name of a VM's launcher pod (KubeVirt adds a random suffix).
fn launcher_pod(vm: &vm_binder::Vm) -> String {
    format!("virt-launcher-{}", vm.name)
}

/// The launcher pods of the VMs, as KubeVirt's virt-controller would make
/// them: the networks annotation from the VM's multus networks.
fn launcher_pods_yaml(vms: &[(Value, vm_binder::Vm)]) -> Result<String> {
    let mut docs = Vec::new();
    for (_, vm) in vms {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": launcher_pod(vm),
                "namespace": vm.namespace,
                "uid": format!("standalone-{}-{}", vm.namespace, vm.name),
                "labels": {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": vm.name},
                "annotations": vm_binder::launcher::pod_annotations(vm),
            },
        });
        docs.push(serde_yaml::to_string(&pod)?);
    }
    Ok(docs.join("---\n"))
}

/// The pods' resolv.conf, as the kubelet writes it for a cluster's pods.
fn resolv_conf(env: &Env, namespace: &str) -> Result<PathBuf> {
    let path = env.dir.join(format!("resolv-{namespace}.conf"));
    std::fs::write(
        &path,
        format!(
            "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        ),
    )?;
    Ok(path)
}

fn vm_dir(env: &Env, vm: &str) -> PathBuf {
    env.dir.join("vms").join(vm)
}

pub fn up(file: &Path, run_dir: &Path) -> Result<()> {
    let env = Env::new(file, run_dir)?;
    if env.node_path().exists() {
        eprintln!("{} is already up: taking it down first", env.name);
        down(file, run_dir)?;
    }
    let manifests = env.dir.join("manifests");
    let prepared = (|| -> Result<_> {
        let vms = read_vms(file)?;
        std::fs::create_dir_all(&manifests)
            .with_context(|| format!("create {}", manifests.display()))?;
        std::fs::write(manifests.join("objects.yaml"), prepare_objects(&env, file)?)?;
        if !vms.is_empty() {
            std::fs::write(manifests.join("launchers.yaml"), launcher_pods_yaml(&vms)?)?;
        }
        let source =
            DirSource::load(&manifests).with_context(|| format!("parse {}", file.display()))?;
        let pods: Vec<_> = source.pods().cloned().collect();
        if pods.is_empty() {
            bail!("{} has no Pod or VirtualMachine to attach", file.display());
        }
        let bin = env.dir.join("bin");
        runtime::make_bin_dir(&bin)?;
        let conf = plugin_config(&env, &source);
        std::fs::write(
            env.dir.join("virtlink.conf"),
            serde_json::to_vec_pretty(&conf)?,
        )?;
        Ok((vms, pods, bin, conf))
    })();
    let (vms, pods, bin, conf) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&env.dir);
            return Err(e);
        }
    };
    let check_pods = vms.is_empty() || pods.len() - vms.len() > 1;
    let total = 3 + if vms.is_empty() { 0 } else { 3 } + usize::from(check_pods);
    step(
        1,
        total,
        &format!(
            "read {}: {} pod(s), {} VM(s)",
            file.display(),
            pods.len() - vms.len(),
            vms.len()
        ),
    );

    // From here on a failure takes down whatever was made.
    let started = (|| -> Result<()> {
        step(2, total, &format!("creating node namespace {}", env.node));
        runtime::create_node(&env.node)?;
        step(
            3,
            total,
            &format!(
                "attaching {} pod(s) through virtlink-cni{}",
                pods.len(),
                if vms.is_empty() {
                    ""
                } else {
                    " (VMs' launcher pods included)"
                }
            ),
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
        if !vms.is_empty() {
            step(
                4,
                total,
                "preparing the guest image (built once, then cached)",
            );
            let t = Instant::now();
            let image = vm_tests::GuestImage::ensure().context("build the guest image")?;
            eprintln!(
                "      {} ({:.1} s)",
                image.dir.display(),
                t.elapsed().as_secs_f64()
            );
            step(
                5,
                total,
                &format!(
                    "binding and booting {} VM(s) (QEMU without KVM: about 5-60 s)",
                    vms.len()
                ),
            );
            for (object, vm) in &vms {
                start_launcher(&env, object, vm)?;
            }
            wait_for_vms(&env, &vms)?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        eprintln!("setting up failed: removing what was made");
        if let Err(d) = down(file, run_dir) {
            eprintln!("{d:#}");
        }
        return Err(e);
    }

    let statuses = read_statuses(&env, &pods)?;
    let launchers: Vec<String> = vms.iter().map(|(_, vm)| launcher_pod(vm)).collect();
    println!();
    println!(
        "{:<22} {:<16} {:<22} {:<18} {:<18} default",
        "POD", "INTERFACE", "NETWORK", "IP", "MAC"
    );
    for (pod, list) in &statuses {
        for s in list {
            println!(
                "{:<22} {:<16} {:<22} {:<18} {:<18} {}",
                pod,
                s.interface.as_deref().unwrap_or("-"),
                s.name,
                s.ips.first().map(String::as_str).unwrap_or("-"),
                s.mac.as_deref().unwrap_or("-"),
                if s.default { "yes" } else { "" }
            );
        }
    }
    let plain: BTreeMap<String, Vec<NetworkStatus>> = statuses
        .iter()
        .filter(|(p, _)| !launchers.contains(p))
        .map(|(p, l)| (p.clone(), l.clone()))
        .collect();
    let mut failures = 0;
    if !vms.is_empty() {
        let guests = vm_table(&env, &vms)?;
        step(
            6,
            total,
            "checking traffic on every VM network, from inside the guests",
        );
        failures += vm_connectivity(&env, &guests, &plain, &statuses);
    }
    if check_pods {
        step(
            total,
            total,
            "checking traffic on every network between the pods",
        );
        failures += connectivity(&env, &plain);
    }
    println!();
    if failures > 0 {
        bail!(
            "{failures} connectivity check(s) failed (logs in {})",
            env.dir.display()
        );
    }
    println!(
        "all networks carry traffic. Remove everything with: virtlink down {}",
        file.display()
    );
    Ok(())
}

fn read_statuses(
    env: &Env,
    pods: &[virtlink_cni::source::PodInfo],
) -> Result<BTreeMap<String, Vec<NetworkStatus>>> {
    let mut statuses = BTreeMap::new();
    for pod in pods {
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
    Ok(statuses)
}

/// Writes the VM's launch file and starts its launcher in its own session,
/// so it outlives this command (until `down`).
fn start_launcher(env: &Env, object: &Value, vm: &vm_binder::Vm) -> Result<()> {
    let dir = vm_dir(env, &vm.name);
    std::fs::create_dir_all(&dir)?;
    let pod = launcher_pod(vm);
    let status_file = env
        .dir
        .join("state/status")
        .join(&vm.namespace)
        .join(format!("{pod}.json"));
    let launch = Launch {
        vm: object.clone(),
        pod_netns: Path::new(netattach::netns::NETNS_RUN_DIR).join(env.pod_netns(&pod)),
        network_status: serde_json::from_slice(
            &std::fs::read(&status_file)
                .with_context(|| format!("read {}", status_file.display()))?,
        )?,
        resolv_conf: resolv_conf(env, &vm.namespace)?,
    };
    std::fs::write(dir.join("launch.json"), serde_json::to_vec_pretty(&launch)?)?;
    let log = std::fs::File::create(dir.join("launcher.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--log", "info", "launcher", "--dir"])
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it only detaches the child from
    // this command's session and terminal before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().context("start the launcher")?;
    eprintln!(
        "      {}: launcher pid {} (log {})",
        vm.name,
        child.id(),
        dir.join("launcher.log").display()
    );
    Ok(())
}

/// Waits until every launcher reports its VM ready, showing progress.
fn wait_for_vms(env: &Env, vms: &[(Value, vm_binder::Vm)]) -> Result<()> {
    let started = Instant::now();
    let mut shown: BTreeMap<String, Phase> = BTreeMap::new();
    loop {
        let mut waiting = 0;
        for (_, vm) in vms {
            let dir = vm_dir(env, &vm.name);
            let Some(state) = launcher::read_state(&dir) else {
                waiting += 1;
                continue;
            };
            if shown.get(&vm.name) != Some(&state.phase) {
                eprintln!(
                    "      {:>5.1} s  {}: {:?}",
                    started.elapsed().as_secs_f64(),
                    vm.name,
                    state.phase
                );
                shown.insert(vm.name.clone(), state.phase);
            }
            match state.phase {
                Phase::Ready => {}
                Phase::Failed | Phase::Stopped => bail!(
                    "VM {}: {} (log {})",
                    vm.name,
                    state.error.as_deref().unwrap_or("the launcher stopped"),
                    dir.join("launcher.log").display()
                ),
                Phase::Binding | Phase::Booting => waiting += 1,
            }
        }
        if waiting == 0 {
            return Ok(());
        }
        if started.elapsed() > launcher::BOOT_TIMEOUT + Duration::from_secs(30) {
            bail!("VMs not ready after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A VM interface as the checks need it.
struct GuestNic {
    vm: String,
    dir: PathBuf,
    pod: String,
    iface: launcher::GuestInterface,
    /// The address the guest has on the NIC (from DHCP), e.g. `10.0.2.2/24`.
    guest_ip: Option<String>,
    /// The TCP ports the VM spec forwards (masquerade); empty means all.
    ports: Vec<u16>,
}

/// Prints the VMs' interfaces with the addresses the guests really have.
fn vm_table(env: &Env, vms: &[(Value, vm_binder::Vm)]) -> Result<Vec<GuestNic>> {
    let mut out = Vec::new();
    for (_, vm) in vms {
        let dir = vm_dir(env, &vm.name);
        let state = launcher::read_state(&dir).context("read the launcher state")?;
        for iface in state.interfaces {
            let guest_ip = match &iface.guest_nic {
                Some(nic) => launcher::run_in_guest(
                    &dir,
                    &format!("ip -4 -o addr show dev {nic} scope global"),
                    Duration::from_secs(20),
                )
                .ok()
                .and_then(|(_, out)| {
                    out.split_whitespace()
                        .skip_while(|w| *w != "inet")
                        .nth(1)
                        .map(str::to_string)
                }),
                None => None,
            };
            let ports = vm
                .interfaces()
                .iter()
                .find(|i| i.name == iface.bound.name)
                .map(|i| {
                    i.ports
                        .iter()
                        .filter(|p| p.protocol() == Ok(vm_binder::spec::Protocol::Tcp))
                        .map(|p| p.port)
                        .collect()
                })
                .unwrap_or_default();
            out.push(GuestNic {
                vm: vm.name.clone(),
                dir: dir.clone(),
                pod: launcher_pod(vm),
                iface,
                guest_ip,
                ports,
            });
        }
    }
    println!();
    println!(
        "{:<8} {:<10} {:<6} {:<16} {:<11} {:<18} {:<18} {:<16} POD INTERFACE",
        "VM", "INTERFACE", "NIC", "NETWORK", "BINDING", "MAC", "GUEST IP (DHCP)", "LEASE"
    );
    for g in &out {
        let b = &g.iface.bound;
        println!(
            "{:<8} {:<10} {:<6} {:<16} {:<11} {:<18} {:<18} {:<16} {}",
            g.vm,
            b.name,
            g.iface.guest_nic.as_deref().unwrap_or("-"),
            b.network,
            b.binding.to_string(),
            b.mac.to_string(),
            g.guest_ip.as_deref().unwrap_or("-"),
            b.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            b.pod_interface
        );
    }
    Ok(out)
}

/// From inside each guest, on each of its networks: a ping to a pod (or
/// another VM) on the same network; for masquerade interfaces also an
/// inbound TCP connection from a pod to the launcher pod's IP.
fn vm_connectivity(
    env: &Env,
    guests: &[GuestNic],
    pods: &BTreeMap<String, Vec<NetworkStatus>>,
    all: &BTreeMap<String, Vec<NetworkStatus>>,
) -> usize {
    println!(
        "{:<16} {:<32} {:<16} result",
        "NETWORK", "FROM -> TO", "TARGET"
    );
    let mut failures = 0;
    let mut report = |network: &str, path: String, target: &str, ok: bool, detail: String| {
        if !ok {
            failures += 1;
        }
        println!(
            "{network:<16} {path:<32} {target:<16} {}",
            if ok {
                detail
            } else {
                format!("FAILED {detail}")
            }
        );
    };
    for g in guests {
        let b = &g.iface.bound;
        let Some(nic) = g.iface.guest_nic.as_deref() else {
            continue;
        };
        let masquerade = b.binding == vm_binder::BindingKind::Masquerade;
        // Peers: pods on the network (the cluster network for `pod`), then
        // the other VMs' guests on it.
        let mut peers: Vec<(String, String)> = pods
            .iter()
            .flat_map(|(pod, list)| {
                list.iter()
                    .filter(|s| {
                        if b.network == "pod" {
                            s.default
                        } else {
                            s.name == b.network
                        }
                    })
                    .filter_map(move |s| Some((pod.clone(), ip_only(s.ips.first()?))))
            })
            .collect();
        peers.extend(
            guests
                .iter()
                .filter(|o| o.vm != g.vm && o.iface.bound.network == b.network)
                .filter_map(|o| {
                    let ip = if o.iface.bound.binding == vm_binder::BindingKind::Masquerade {
                        // Reached through its launcher pod's IP.
                        all.get(&o.pod)?
                            .iter()
                            .find(|s| s.default)?
                            .ips
                            .first()?
                            .clone()
                    } else {
                        o.guest_ip.clone()?
                    };
                    Some((o.vm.clone(), ip_only(&ip)))
                }),
        );
        if peers.is_empty() {
            report(
                &b.network,
                format!("{}/{nic}", g.vm),
                "-",
                true,
                "(nothing else on this network)".into(),
            );
            continue;
        }
        for (peer, target) in &peers {
            let cmd = if masquerade {
                format!("ping -c 2 -W 3 {target}")
            } else {
                format!("ping -c 2 -W 3 -I {nic} {target}")
            };
            let (ok, detail) = match launcher::run_in_guest(&g.dir, &cmd, Duration::from_secs(30)) {
                Ok((0, out)) => (true, rtt(&out)),
                Ok((_, out)) => (false, out.lines().last().unwrap_or("").to_string()),
                Err(e) => (false, format!("{e:#}")),
            };
            report(
                &b.network,
                format!("{}/{nic} -> {peer}", g.vm),
                target,
                ok,
                detail,
            );
        }
        if masquerade {
            if let Some((from, _)) = peers.iter().find(|(p, _)| pods.contains_key(p)) {
                let pod_ip = all
                    .get(&g.pod)
                    .and_then(|l| l.iter().find(|s| s.default))
                    .and_then(|s| s.ips.first())
                    .map(|s| ip_only(s));
                if let Some(pod_ip) = pod_ip {
                    let port = g.ports.first().copied().unwrap_or(8080);
                    let (ok, detail) = inbound(env, g, from, &pod_ip, port);
                    report(
                        &b.network,
                        format!("{from} -> {}:{port} (inbound)", g.vm),
                        &pod_ip,
                        ok,
                        detail,
                    );
                }
            }
        }
    }
    failures
}

fn ip_only(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

fn rtt(ping: &str) -> String {
    ping.lines()
        .find(|l| l.contains("round-trip") || l.contains("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.split('/').nth(1))
        .map(|avg| format!("ok, rtt {avg} ms"))
        .unwrap_or_else(|| "ok".into())
}

/// A web server in the guest answers a request a pod makes to the launcher
/// pod's IP (through the masquerade binding's port forwarding).
fn inbound(env: &Env, g: &GuestNic, from_pod: &str, pod_ip: &str, port: u16) -> (bool, String) {
    let serve = format!(
        "mkdir -p /tmp/www && echo hello-from-{} > /tmp/www/index.html && (httpd -p {port} -h /tmp/www || true)",
        g.vm
    );
    if let Err(e) = launcher::run_in_guest(&g.dir, &serve, Duration::from_secs(20)) {
        return (false, format!("{e:#}"));
    }
    let script = format!(
        "exec 3<>/dev/tcp/{pod_ip}/{port} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    );
    let (ok, out) = runtime::in_netns(&env.pod_netns(from_pod), &["bash", "-c", &script]);
    let want = format!("hello-from-{}", g.vm);
    if ok && out.contains(&want) {
        (true, "ok, HTTP answer from the guest".to_string())
    } else {
        (false, out.lines().last().unwrap_or("").to_string())
    }
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
    let mut errors = Vec::new();
    stop_launchers(&env, &mut errors);
    sweep_launchers(&env);
    let conf_path = env.dir.join("virtlink.conf");
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
    // The isolated networks' pinned maps and links (the node's VXLAN device
    // goes with its namespace).
    if let Err(e) = virtlink_vnet::node::remove_pins(&vnet_node(&env)) {
        errors.push(format!("remove the isolated networks' pins: {e}"));
    }
    // Namespaces of the environment that no state names any more (its
    // state was removed by hand, or a pod was never recorded).
    let prefix = format!("vl-{}-", env.name);
    for ns in netns_names().into_iter().filter(|n| n.starts_with(&prefix)) {
        if ns != env.node {
            eprintln!(
                "removing stray namespace {ns} (no CNI state left: its delegates' IP reservations stay)"
            );
        }
        if let Err(e) = netattach::netns::delete(&ns) {
            errors.push(format!("delete {ns}: {e}"));
        }
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

/// The names of the named network namespaces.
fn netns_names() -> Vec<String> {
    std::fs::read_dir(netattach::netns::NETNS_RUN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Launchers of this environment that its state no longer knows about
/// (found by their command line): asked to stop with SIGTERM, killed if
/// they do not within 30 s.
fn sweep_launchers(env: &Env) {
    let marker = format!("{}", env.dir.join("vms").display());
    let find = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                args.iter().any(|a| *a == b"launcher")
                    && args.iter().any(|a| a.starts_with(marker.as_bytes()))
            })
            .collect()
    };
    let pids = find();
    if pids.is_empty() {
        return;
    }
    eprintln!("stopping {} stray launcher(s)", pids.len());
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !find().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for pid in find() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Stops every VM's launcher (it powers the guest off and unbinds); when a
/// launcher is gone, unbinds from its launch file instead.
fn stop_launchers(env: &Env, errors: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(env.dir.join("vms")) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let vm = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid: Option<i32> = std::fs::read_to_string(dir.join("launcher.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let alive = |pid: i32| {
            // When `up` rolls back, the launcher is its own child: reap it.
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            Path::new(&format!("/proc/{pid}")).exists()
        };
        if let Some(pid) = pid.filter(|p| alive(*p)) {
            eprintln!("stopping VM {vm}");
            if launcher::request(&dir, &launcher::Request::Stop, Duration::from_secs(5)).is_err() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive(pid) {
                errors.push(format!("VM {vm}: launcher {pid} did not stop; killing it"));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let stopped = launcher::read_state(&dir).is_some_and(|s| s.phase == Phase::Stopped);
        if stopped {
            continue;
        }
        // The launcher died before unbinding: undo the binding from its
        // launch file, if the pod's namespace is still there.
        let launch: Option<Launch> = std::fs::read(dir.join("launch.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(l) = launch.filter(|l| l.pod_netns.exists()) {
            let undone = vm_binder::Vm::parse(&l.vm.to_string())
                .map_err(anyhow::Error::from)
                .and_then(|vm| {
                    vm_binder::unbind(&vm, &l.pod_netns, &l.network_status).map_err(Into::into)
                });
            if let Err(e) = undone {
                errors.push(format!("VM {vm}: unbind: {e:#}"));
            }
        }
    }
}

/// Runs `command` in the VM `vm` of the environment of `file`; returns the
/// command's exit status after printing its output.
pub fn exec(file: &Path, run_dir: &Path, vm: &str, command: &str, timeout: u64) -> Result<i32> {
    let env = Env::new(file, run_dir)?;
    let dir = vm_dir(&env, vm);
    if !dir.exists() {
        bail!("no VM {vm} is up from {}", file.display());
    }
    let (status, output) = launcher::run_in_guest(&dir, command, Duration::from_secs(timeout))?;
    print!("{output}");
    if !output.is_empty() && !output.ends_with('\n') {
        println!();
    }
    Ok(status)
}

/// Where the launcher of `vm` in the environment of `file` keeps its files.
pub fn launcher_dir(file: &Path, run_dir: &Path, vm: &str) -> Result<PathBuf> {
    Ok(vm_dir(&Env::new(file, run_dir)?, vm))
}

/// The network namespace name of `pod` in the environment of `file`.
pub fn pod_netns_name(file: &Path, run_dir: &Path, pod: &str) -> Result<String> {
    Ok(Env::new(file, run_dir)?.pod_netns(pod))
}

/// The network-status virtlink-cni reported for a pod of `file`.
pub fn pod_network_status(
    file: &Path,
    run_dir: &Path,
    namespace: &str,
    pod: &str,
) -> Result<Vec<NetworkStatus>> {
    let env = Env::new(file, run_dir)?;
    let path = env
        .dir
        .join("state/status")
        .join(namespace)
        .join(format!("{pod}.json"));
    Ok(serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
    )?)
}
