//! `virtlink-cni` as a KubeVirt network binding plugin: a config with a
//! `binding` field is not the meta-plugin's but a binding NAD's,
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "virtlink-masquerade", "type": "virtlink-cni",
//!  "binding": "masquerade", "datapath": "ebpf", "tapOwner": 107}
//! ```
//!
//! called (by this meta-plugin or by Multus) with the VM network it binds in
//! `args.cni.logicNetworkName` (from the networks annotation's `cni-args`,
//! which KubeVirt's virt-controller writes). The kernel work is
//! `vm_binder::plugin`; this module is the protocol around it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::spec::{code, CniError, Command, Env, Version};

/// Where binding records live by default (the agent's `--bindings-dir`).
pub const DEFAULT_RECORDS_DIR: &str = "/var/lib/virtlink/cni/bindings";

/// The binding NAD's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `masquerade` or `bridge`.
    pub binding: String,
    /// Masquerade: `ebpf` (default) or `nftables`.
    #[serde(default)]
    pub datapath: Option<String>,
    /// The uid the hypervisor runs as (107, `qemu`, in KubeVirt's
    /// virt-launcher): it must be able to open the tap.
    #[serde(default)]
    pub tap_owner: Option<u32>,
    /// The pod runs Istio's sidecar (masquerade, docs/xdp.md).
    #[serde(default)]
    pub istio: bool,
    /// Where the binding records are kept for DEL and the agent's DHCP.
    #[serde(default)]
    pub records_dir: Option<PathBuf>,
    #[serde(default)]
    pub bpffs_root: Option<PathBuf>,
    /// The guest's DNS settings when the runtime does not pass the pod's
    /// (`runtimeConfig.dns`, with `"capabilities": {"dns": true}`): a
    /// resolv.conf file, the node's by default.
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub capabilities: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// Whether `stdin` is a binding plugin's config.
pub fn is_binding_conf(stdin: &[u8]) -> bool {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .is_some_and(|v| v.get("binding").is_some())
}

impl BindingConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("decode binding plugin config: {e}"),
            )
        })?;
        conf.cni_version
            .parse::<Version>()
            .map_err(|e| CniError::new(code::INCOMPATIBLE_VERSION, e.to_string()))?;
        conf.kind()?;
        conf.datapath()?;
        Ok(conf)
    }

    fn kind(&self) -> Result<vm_binder::BindingKind, CniError> {
        match self.binding.as_str() {
            "masquerade" => Ok(vm_binder::BindingKind::Masquerade),
            "bridge" => Ok(vm_binder::BindingKind::Bridge),
            other => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("binding {other:?} is not one of masquerade, bridge"),
            )),
        }
    }

    fn datapath(&self) -> Result<vm_binder::masquerade::Datapath, CniError> {
        match &self.datapath {
            None => Ok(Default::default()),
            Some(d) => d
                .parse()
                .map_err(|e: String| CniError::new(code::INVALID_CONFIG, e)),
        }
    }

    fn records_dir(&self) -> PathBuf {
        self.records_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RECORDS_DIR))
    }

    /// The VM network this call binds: `args.cni.logicNetworkName`, else
    /// `logicNetworkName` in CNI_ARGS.
    fn logic_network(&self, env: &Env) -> Result<String, CniError> {
        self.args
            .as_ref()
            .and_then(|a| a.pointer("/cni/logicNetworkName"))
            .and_then(Value::as_str)
            .or_else(|| env.arg("logicNetworkName"))
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "binding plugin: no logicNetworkName in args.cni (the cni-args KubeVirt \
                     writes in the pod's networks annotation) or CNI_ARGS",
                )
            })
    }
}

/// The pod's DNS from `runtimeConfig.dns` (libcni's `dns` capability:
/// `{"servers": [...], "searches": [...], "options": [...]}`).
fn runtime_dns(conf: &BindingConf) -> Option<vm_binder::dhcp::Resolv> {
    let dns = conf.runtime_config.as_ref()?.get("dns")?;
    let strings = |key: &str| -> Vec<String> {
        dns.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut text = String::new();
    for s in strings("servers") {
        text.push_str(&format!("nameserver {s}\n"));
    }
    let searches = strings("searches");
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    let r = vm_binder::dhcp::Resolv::parse(&text);
    (!r.nameservers.is_empty() || !r.nameservers6.is_empty()).then_some(r)
}

fn binder_err(what: &str, e: vm_binder::Error) -> CniError {
    let c = match &e {
        vm_binder::Error::Netns(_) => code::UNKNOWN_CONTAINER,
        vm_binder::Error::Step { step, .. } if step.contains("find pod interface") => {
            code::INVALID_CONFIG
        }
        _ => code::IO_FAILURE,
    };
    CniError::new(c, format!("{what}: {}", crate::error_chain(&e)))
}

/// Runs one binding plugin call.
pub fn run(env: &Env, conf: &BindingConf) -> Result<Option<Value>, CniError> {
    let network = conf.logic_network(env)?;
    let records = conf.records_dir();
    let _span = tracing::info_span!("binding", network = %network, kind = %conf.binding).entered();
    match env.command() {
        Command::Add => {
            if !Path::new(&env.netns).exists() {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("network namespace {:?} does not exist", env.netns),
                ));
            }
            let mut options = vm_binder::BindOptions {
                tap_owner: conf.tap_owner,
                datapath: conf.datapath()?,
                istio: conf.istio,
                ..Default::default()
            };
            if let Some(root) = &conf.bpffs_root {
                options.bpffs_root = root.clone();
            }
            if let Some(r) = &conf.resolv_conf {
                options.resolv_conf = r.clone();
            }
            let req = vm_binder::plugin::Request {
                container_id: env.container_id.clone(),
                netns: PathBuf::from(&env.netns),
                logic_network: network.clone(),
                kind: conf.kind()?,
                pod_name: env.arg("K8S_POD_NAME").map(str::to_string),
                pod_namespace: env.arg("K8S_POD_NAMESPACE").map(str::to_string),
                records_dir: records,
                dns: runtime_dns(conf),
                options,
            };
            let added =
                vm_binder::plugin::add(&req).map_err(|e| binder_err("bind the VM interface", e))?;
            tracing::info!(tap = %added.tap, pod_interface = %added.pod_interface, "bound");
            let mut tap = json!({"name": added.tap, "sandbox": env.netns});
            if let Some(mac) = added.tap_mac {
                tap["mac"] = json!(mac.to_string());
            }
            Ok(Some(json!({
                "cniVersion": conf.cni_version,
                "interfaces": [tap],
                "ips": [],
            })))
        }
        Command::Del => {
            vm_binder::plugin::del(&records, &env.container_id, &network)
                .map_err(|e| binder_err("unbind the VM interface", e))?;
            Ok(None)
        }
        Command::Check => {
            vm_binder::plugin::check(&records, &env.container_id, &network)
                .map_err(|e| binder_err("check the VM interface", e))?;
            Ok(None)
        }
        // Records of containers the runtime no longer has are removed by DEL;
        // the runtime's GC lists what is valid, which a binding keeps per
        // container: nothing else to collect here.
        Command::Gc | Command::Status | Command::Version => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(args: &str) -> Env {
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/nonexistent"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", args),
        ];
        Env::from_lookup(|k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn config_is_recognised_and_checked() {
        let good = br#"{"cniVersion":"1.0.0","name":"b","type":"virtlink-cni","binding":"masquerade","args":{"cni":{"logicNetworkName":"default"}}}"#;
        assert!(is_binding_conf(good));
        let c = BindingConf::parse(good).unwrap();
        assert_eq!(c.logic_network(&env("")).unwrap(), "default");
        assert!(!is_binding_conf(
            br#"{"cniVersion":"1.0.0","type":"virtlink-cni"}"#
        ));

        let bad_kind = br#"{"cniVersion":"1.0.0","type":"virtlink-cni","binding":"slirp"}"#;
        assert_eq!(
            BindingConf::parse(bad_kind).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let bad_dp = br#"{"cniVersion":"1.0.0","type":"virtlink-cni","binding":"masquerade","datapath":"iptables"}"#;
        assert_eq!(
            BindingConf::parse(bad_dp).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let typo =
            br#"{"cniVersion":"1.0.0","type":"virtlink-cni","binding":"bridge","tapOwnr":1}"#;
        assert_eq!(
            BindingConf::parse(typo).unwrap_err().code,
            code::DECODE_FAILURE
        );
    }

    #[test]
    fn dns_from_the_runtime() {
        let c = BindingConf::parse(
            br#"{"cniVersion":"1.0.0","type":"virtlink-cni","binding":"masquerade",
                "runtimeConfig":{"dns":{"servers":["10.96.0.10","fd00::a"],"searches":["ns.svc.cluster.local","cluster.local"]}}}"#,
        )
        .unwrap();
        let r = runtime_dns(&c).unwrap();
        assert_eq!(r.nameservers, vec![std::net::Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(r.nameservers6.len(), 1);
        assert_eq!(r.search, vec!["ns.svc.cluster.local", "cluster.local"]);
        let none = BindingConf::parse(
            br#"{"cniVersion":"1.0.0","type":"virtlink-cni","binding":"masquerade"}"#,
        )
        .unwrap();
        assert!(runtime_dns(&none).is_none());
    }

    #[test]
    fn logic_network_from_cni_args_or_missing() {
        let c = BindingConf::parse(
            br#"{"cniVersion":"1.0.0","type":"virtlink-cni","binding":"bridge"}"#,
        )
        .unwrap();
        assert_eq!(
            c.logic_network(&env("IgnoreUnknown=1;logicNetworkName=blue"))
                .unwrap(),
            "blue"
        );
        let e = c.logic_network(&env("")).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("logicNetworkName"), "{}", e.msg);
    }
}
