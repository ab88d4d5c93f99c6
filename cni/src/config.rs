//! virtlink-cni's own network configuration (what the runtime puts on stdin).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::spec::{code, CniError, Version};

/// Default directory for attachment state; survives reboots.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/virtlink/cni";
/// Namespace in which a bare `clusterNetwork` NAD name is looked up.
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "kube-system";

/// The cluster network: an inline delegate config (or list), or a NAD name.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterNetwork {
    Inline(Value),
    Nad(String),
}

/// The plugin configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub cluster_network: Option<ClusterNetwork>,
    pub kubeconfig: Option<PathBuf>,
    pub manifests_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub status_dir: PathBuf,
    pub system_namespace: String,
    /// kubelet's device checkpoint: which devices each pod holds.
    pub kubelet_checkpoint: PathBuf,
    /// Where device plugins write NPWG device-info files.
    pub device_info_dir: PathBuf,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    /// Attach the secondary networks concurrently (default); `false` keeps
    /// the strict one-by-one order of Multus.
    pub parallel: bool,
    /// Capability arguments the runtime passed (`runtimeConfig`).
    pub runtime_config: Map<String, Value>,
    /// `cni.dev/valid-attachments` of a GC request.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// The raw config, as received.
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(default)]
    cluster_network: Option<Value>,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    manifests_dir: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    status_dir: Option<PathBuf>,
    #[serde(default)]
    system_namespace: Option<String>,
    #[serde(default)]
    kubelet_checkpoint: Option<PathBuf>,
    #[serde(default)]
    device_info_dir: Option<PathBuf>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    log_file: Option<PathBuf>,
    #[serde(default)]
    parallel: Option<bool>,
    #[serde(default)]
    runtime_config: Option<Map<String, Value>>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

impl NetConf {
    /// Parses stdin. `version_only` is set for VERSION, which only needs `cniVersion`.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, format!("decode network config: {e}"))
        })?;
        let wire: Wire = serde_json::from_value(raw.clone()).map_err(|e| {
            CniError::new(code::DECODE_FAILURE, format!("decode network config: {e}"))
        })?;
        let version_text = wire.cni_version.ok_or_else(|| {
            CniError::new(code::INVALID_CONFIG, "network config has no cniVersion")
        })?;
        let cni_version = parse_supported_version(&version_text)?;
        let name = wire
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "network config has no name"))?;
        let cluster_network = match wire.cluster_network {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(ClusterNetwork::Nad(s)),
            Some(v @ Value::Object(_)) => Some(ClusterNetwork::Inline(v)),
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("clusterNetwork must be a NAD name or a delegate config, got {other}"),
                ))
            }
        };
        let state_dir = wire
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let status_dir = wire.status_dir.unwrap_or_else(|| state_dir.join("status"));
        Ok(Self {
            cni_version,
            name,
            cluster_network,
            kubeconfig: wire.kubeconfig,
            manifests_dir: wire.manifests_dir,
            state_dir,
            status_dir,
            system_namespace: wire
                .system_namespace
                .unwrap_or_else(|| DEFAULT_SYSTEM_NAMESPACE.to_string()),
            kubelet_checkpoint: wire
                .kubelet_checkpoint
                .unwrap_or_else(|| PathBuf::from(crate::devices::DEFAULT_CHECKPOINT)),
            device_info_dir: wire
                .device_info_dir
                .unwrap_or_else(|| PathBuf::from(crate::devices::DEFAULT_DEVICE_INFO_DIR)),
            log_level: wire.log_level,
            log_file: wire.log_file,
            parallel: wire.parallel.unwrap_or(true),
            runtime_config: wire.runtime_config.unwrap_or_default(),
            valid_attachments: wire.valid_attachments,
            raw,
        })
    }
}

/// Parses a `cniVersion` and checks that virtlink-cni speaks it.
pub fn parse_supported_version(text: &str) -> Result<Version, CniError> {
    let v: Version = text
        .parse()
        .map_err(|e| CniError::new(code::INCOMPATIBLE_VERSION, format!("{e}")))?;
    if !v.is_supported() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CNI version {v} is not supported (supported: {})",
                crate::spec::version::SUPPORTED.join(", ")
            ),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inline_and_named_cluster_networks() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"vl","type":"virtlink-cni",
                 "clusterNetwork":{"type":"bridge"},"stateDir":"/tmp/s"}"#,
        )
        .unwrap();
        assert!(matches!(c.cluster_network, Some(ClusterNetwork::Inline(_))));
        assert_eq!(c.status_dir, PathBuf::from("/tmp/s/status"));
        let c = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"vl","clusterNetwork":"podnet"}"#)
            .unwrap();
        assert_eq!(
            c.cluster_network,
            Some(ClusterNetwork::Nad("podnet".into()))
        );
    }

    #[test]
    fn errors_have_spec_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE_FAILURE);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"2.0.0","name":"x"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"x","clusterNetwork":5}"#)
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn gc_valid_attachments() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"vl","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }
}
