//! Installing virtlink on the node: the shim binary into the CNI bin dir and
//! a config list first in the CNI conf dir's sort order, wrapping the node's
//! existing default network (the first other config file) as the cluster
//! network. Idempotent (files are rewritten only when their content would
//! change, atomically by rename), so the agent re-runs it periodically to
//! follow changes of the default network's config.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The config file name: `00-` sorts before every usual network plugin's.
pub const CONF_NAME: &str = "00-virtlink.conflist";
/// The shim's name in the CNI bin dir (the `type` in the config).
pub const SHIM_NAME: &str = "virtlink-cni";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decode the default network config {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("no default network config in {dir} yet (a .conf, .conflist or .json file other than {CONF_NAME})")]
    NoDefaultNetwork { dir: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where to install and what the written config says.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    /// The shim binary to copy (in the agent's image).
    pub shim_source: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The agent's socket, written into the config as `daemonSocket`.
    pub socket: PathBuf,
    /// `stateDir` for the config; `None` keeps virtlink-cni's default.
    pub state_dir: Option<PathBuf>,
}

/// What an install changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// The default network's config file that is now the cluster network.
    pub delegate: PathBuf,
    pub wrote_shim: bool,
    pub wrote_conf: bool,
}

/// Copies the shim and writes the config; skips what is already in place.
pub fn install(cfg: &InstallConfig) -> Result<Installed> {
    let delegate = default_network(&cfg.cni_conf_dir)?;
    let conf = wrap(cfg, &delegate)?;
    let wrote_shim = copy_if_changed(&cfg.shim_source, &cfg.cni_bin_dir.join(SHIM_NAME))?;
    let text = serde_json::to_string_pretty(&conf).unwrap_or_default() + "\n";
    let wrote_conf = write_if_changed(&cfg.cni_conf_dir.join(CONF_NAME), text.as_bytes(), 0o644)?;
    if wrote_shim || wrote_conf {
        tracing::info!(delegate = %delegate.display(), wrote_shim, wrote_conf, "installed virtlink's CNI config and shim");
    }
    Ok(Installed {
        delegate,
        wrote_shim,
        wrote_conf,
    })
}

/// Removes the config first (so no runtime picks the shim up any more), then
/// the shim. Missing files are fine.
pub fn uninstall(cfg: &InstallConfig) -> Result<()> {
    for path in [
        cfg.cni_conf_dir.join(CONF_NAME),
        cfg.cni_bin_dir.join(SHIM_NAME),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Remove { path, source }),
        }
    }
    Ok(())
}

/// The first config file in sort order that is not ours: what the runtime
/// would load if virtlink were not there.
pub fn default_network(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()) != Some(CONF_NAME))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| Error::NoDefaultNetwork {
            dir: dir.to_path_buf(),
        })
}

/// virtlink's config list around the delegate's config: same cniVersion
/// (the runtime already speaks it), the delegate's capabilities (so the
/// runtime keeps passing port mappings, bandwidth, ...), daemon mode on.
pub fn wrap(cfg: &InstallConfig, delegate: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(delegate).map_err(|source| Error::Read {
        path: delegate.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| Error::Decode {
        path: delegate.to_path_buf(),
        reason,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no cniVersion".into()))?
        .to_string();
    let plugins: Vec<&Map<String, Value>> = match obj.get("plugins") {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_object).collect(),
        Some(_) => return Err(bad("plugins is not a list".into())),
        None => vec![obj],
    };
    if plugins.is_empty() {
        return Err(bad("no plugins".into()));
    }
    let mut capabilities = Map::new();
    for p in &plugins {
        if let Some(Value::Object(caps)) = p.get("capabilities") {
            for (k, v) in caps {
                if v == &Value::Bool(true) {
                    capabilities.insert(k.clone(), Value::Bool(true));
                }
            }
        }
    }
    let mut plugin = json!({
        "type": SHIM_NAME,
        "daemonSocket": cfg.socket,
        "clusterNetwork": value,
    });
    // The pod's DNS settings, for the guests behind binding plugins.
    capabilities.insert("dns".into(), Value::Bool(true));
    plugin["capabilities"] = Value::Object(capabilities);
    if let Some(dir) = &cfg.state_dir {
        plugin["stateDir"] = json!(dir);
    }
    Ok(json!({
        "cniVersion": version,
        "name": "virtlink",
        "plugins": [plugin],
    }))
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<bool> {
    let bytes = std::fs::read(from).map_err(|source| Error::Read {
        path: from.to_path_buf(),
        source,
    })?;
    write_if_changed(to, &bytes, 0o755)
}

/// Writes `bytes` by temp file + rename (a running shim keeps its old
/// inode; no "text file busy"), unless the file already holds them.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let werr = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("virtlink-tmp");
    std::fs::write(&tmp, bytes).map_err(werr)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn setup() -> (tempfile::TempDir, InstallConfig) {
        let d = tempfile::tempdir().unwrap();
        for sub in ["bin", "net.d", "src"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        std::fs::write(d.path().join("src/virtlink-cni"), b"#!shim v1").unwrap();
        let cfg = InstallConfig {
            shim_source: d.path().join("src/virtlink-cni"),
            cni_bin_dir: d.path().join("bin"),
            cni_conf_dir: d.path().join("net.d"),
            socket: PathBuf::from("/run/virtlink/agent.sock"),
            state_dir: None,
        };
        (d, cfg)
    }

    #[test]
    fn wraps_the_first_config_and_sorts_first() {
        let (d, cfg) = setup();
        let net = d.path().join("net.d");
        std::fs::write(
            net.join("10-calico.conflist"),
            r#"{"cniVersion":"0.4.0","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#,
        )
        .unwrap();
        std::fs::write(
            net.join("20-other.conf"),
            r#"{"cniVersion":"1.0.0","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(net.join("README"), "not a config").unwrap();
        let done = install(&cfg).unwrap();
        assert_eq!(done.delegate, net.join("10-calico.conflist"));
        assert!(done.wrote_conf && done.wrote_shim);
        let conf: Value =
            serde_json::from_slice(&std::fs::read(net.join(CONF_NAME)).unwrap()).unwrap();
        assert_eq!(conf["cniVersion"], "0.4.0");
        let p = &conf["plugins"][0];
        assert_eq!(p["type"], "virtlink-cni");
        assert_eq!(p["daemonSocket"], "/run/virtlink/agent.sock");
        assert_eq!(p["clusterNetwork"]["name"], "k8s-pod-network");
        assert_eq!(
            p["capabilities"],
            json!({"portMappings": true, "bandwidth": true, "dns": true})
        );
        // First in the order a runtime loads configs.
        assert_eq!(
            default_network(&net).unwrap(),
            net.join("10-calico.conflist")
        );
        let mut names: Vec<String> = std::fs::read_dir(&net)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names[0], CONF_NAME);
        let shim = d.path().join("bin").join(SHIM_NAME);
        assert_eq!(std::fs::read(&shim).unwrap(), b"#!shim v1");
        assert_eq!(
            std::fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
            0o755
        );

        // Again: nothing to do. A new shim or a changed delegate: rewritten.
        assert_eq!(
            install(&cfg).unwrap(),
            Installed {
                delegate: net.join("10-calico.conflist"),
                wrote_shim: false,
                wrote_conf: false
            }
        );
        std::fs::write(&cfg.shim_source, b"#!shim v2").unwrap();
        std::fs::remove_file(net.join("10-calico.conflist")).unwrap();
        let done = install(&cfg).unwrap();
        assert!(done.wrote_shim && done.wrote_conf);
        assert_eq!(done.delegate, net.join("20-other.conf"));
        let conf: Value =
            serde_json::from_slice(&std::fs::read(net.join(CONF_NAME)).unwrap()).unwrap();
        assert_eq!(conf["plugins"][0]["clusterNetwork"]["type"], "bridge");
        // Only the pod's DNS (for binding plugins): the delegate asks for nothing.
        assert_eq!(
            conf["plugins"][0]["capabilities"],
            serde_json::json!({"dns": true})
        );

        uninstall(&cfg).unwrap();
        assert!(!net.join(CONF_NAME).exists());
        assert!(!shim.exists());
        assert!(net.join("20-other.conf").exists(), "the delegate stays");
        uninstall(&cfg).unwrap();
    }

    #[test]
    fn no_or_bad_default_network() {
        let (d, cfg) = setup();
        assert!(matches!(
            install(&cfg).unwrap_err(),
            Error::NoDefaultNetwork { .. }
        ));
        let net = d.path().join("net.d");
        std::fs::write(net.join("10-x.conf"), "{").unwrap();
        assert!(matches!(install(&cfg).unwrap_err(), Error::Decode { .. }));
        std::fs::write(net.join("10-x.conf"), r#"{"type":"bridge"}"#).unwrap();
        let e = install(&cfg).unwrap_err();
        assert!(e.to_string().contains("10-x.conf"), "{e}");
        assert!(!net.join(CONF_NAME).exists(), "nothing written");
        assert!(!d.path().join("bin").join(SHIM_NAME).exists());
    }
}
