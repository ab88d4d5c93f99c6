//! Running delegate CNI plugins: finding them in `CNI_PATH`, negotiating a
//! spec version each of them speaks, and executing a config list with
//! libcni's chaining rules (prevResult, runtimeConfig by capability).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::{code, CniError, Command, Version};

/// A delegate network: a single config or a config list, normalised to a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkList {
    /// Reads a config (`{"type": ...}`) or a config list (`{"plugins": [...]}`);
    /// `default_version` fills a missing `cniVersion`.
    pub fn from_value(v: &Value, default_version: Version) -> Result<Self, CniError> {
        let obj = v.as_object().ok_or_else(|| {
            CniError::new(code::INVALID_CONFIG, "delegate config is not a JSON object")
        })?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| default_version.to_string());
        cni_version.parse::<Version>().map_err(|e| {
            CniError::new(code::INCOMPATIBLE_VERSION, format!("delegate config: {e}"))
        })?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|p| {
                    p.as_object().cloned().ok_or_else(|| {
                        CniError::new(code::INVALID_CONFIG, "plugins[] entry is not an object")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "delegate config list: plugins is not a list",
                ))
            }
            None => vec![obj.clone()],
        };
        if plugins.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "delegate config list has no plugins",
            ));
        }
        for p in &plugins {
            match p.get("type").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && !t.contains('/') => {}
                _ => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        "delegate plugin config has no valid \"type\"",
                    ))
                }
            }
        }
        Ok(Self {
            name,
            cni_version,
            plugins,
        })
    }

    pub fn version(&self) -> Version {
        self.cni_version.parse().unwrap_or(Version::V1_0_0)
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
    }
}

/// The invocation-specific part of a delegate call.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub path: &'a [PathBuf],
}

/// Finds a plugin binary in `CNI_PATH`.
pub fn find(kind: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if kind == virtlink_vnet::cni::TYPE {
        // In-process (see `exec`): the type's name stands for the binary.
        return Ok(PathBuf::from(kind));
    }
    path.iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "delegate plugin {kind:?} not found in CNI_PATH [{}]",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Runs one plugin binary and returns what it printed on success.
pub fn exec(
    binary: &Path,
    command: Command,
    inv: &Invocation<'_>,
    stdin: &Value,
) -> Result<Option<Value>, CniError> {
    if binary == Path::new(virtlink_vnet::cni::TYPE) {
        return in_process_vnet(command, inv, stdin);
    }
    let started = Instant::now();
    let input = serde_json::to_vec(stdin)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("encode delegate config: {e}")))?;
    let path = std::env::join_paths(inv.path).unwrap_or_default();
    let mut cmd = std::process::Command::new(binary);
    // A delegate dies with the thread that waits for it: when the node agent
    // is killed mid-ADD, no orphaned plugin goes on creating links after the
    // shim has cleaned up.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is a plain syscall, async-signal-safe;
    // it runs in the forked child before exec and touches no shared state.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("start {}: {e}", binary.display())))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading its config breaks the pipe; its
        // exit status tells what happened.
        let _ = pipe.write_all(&input);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("wait for {}: {e}", binary.display()),
        )
    })?;
    tracing::debug!(
        plugin = %binary.display(),
        command = command.as_str(),
        ifname = inv.ifname,
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = out.status.success(),
        "delegate returned"
    );
    if !out.status.success() {
        return Err(delegate_error(&out.stdout, &out.stderr, out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("decode output of {}: {e}", binary.display()),
        )
    })
}

/// The `virtlink` type (isolated networks, docs/vnet.md) runs in-process.
fn in_process_vnet(
    command: Command,
    inv: &Invocation<'_>,
    stdin: &Value,
) -> Result<Option<Value>, CniError> {
    let req = virtlink_vnet::cni::Request {
        command: command.as_str(),
        container_id: inv.container_id,
        netns: inv.netns,
        ifname: inv.ifname,
        config: stdin,
    };
    virtlink_vnet::cni::call(&req).map_err(|f| CniError::new(f.code, f.msg).with_details(f.details))
}

fn delegate_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> CniError {
    if let Ok(e) = serde_json::from_slice::<CniError>(stdout) {
        return e;
    }
    let stderr = String::from_utf8_lossy(stderr);
    let stdout = String::from_utf8_lossy(stdout);
    CniError::new(code::DELEGATE_FAILED, format!("exited with {status}")).with_details(
        format!("{} {}", stdout.trim(), stderr.trim())
            .trim()
            .to_string(),
    )
}

/// The versions a plugin binary speaks, from its VERSION answer, cached on
/// disk by path, size and mtime so each call costs one exec at most once.
pub fn supported_versions(binary: &Path, cache_dir: &Path) -> Result<Vec<String>, CniError> {
    #[derive(Serialize, Deserialize)]
    struct Cached {
        path: PathBuf,
        size: u64,
        mtime_ns: i64,
        versions: Vec<String>,
    }
    let meta = std::fs::metadata(binary)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("stat {}: {e}", binary.display())))?;
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    let mut h = DefaultHasher::new();
    binary.hash(&mut h);
    let file = cache_dir.join(format!(
        "{}-{:016x}.json",
        binary
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin"),
        h.finish()
    ));
    if let Ok(text) = std::fs::read(&file) {
        if let Ok(c) = serde_json::from_slice::<Cached>(&text) {
            if c.path == binary && c.size == meta.len() && c.mtime_ns == mtime_ns {
                return Ok(c.versions);
            }
        }
    }
    let inv = Invocation {
        container_id: "",
        netns: "",
        ifname: "",
        args: "",
        path: &[],
    };
    let out = exec(
        binary,
        Command::Version,
        &inv,
        &serde_json::json!({ "cniVersion": crate::spec::version::LATEST }),
    )?
    .unwrap_or(Value::Null);
    let versions: Vec<String> = out
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{} reported no supported versions", binary.display()),
        ));
    }
    let cached = Cached {
        path: binary.to_path_buf(),
        size: meta.len(),
        mtime_ns,
        versions: versions.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec(&cached) {
        // The cache only saves an exec next time: failing to write it is harmless.
        let _ = crate::state::write_replace(&file, &bytes);
    }
    Ok(versions)
}

/// A list resolved against `CNI_PATH`: binaries found and a common version chosen.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub list: NetworkList,
    pub binaries: Vec<PathBuf>,
}

/// Finds every plugin of `list` and lowers its version to the newest one that
/// all of them speak and that is not newer than the list asks for.
pub fn resolve(
    mut list: NetworkList,
    path: &[PathBuf],
    cache_dir: &Path,
) -> Result<Resolved, CniError> {
    let want = list.version();
    let mut binaries = Vec::with_capacity(list.plugins.len());
    let mut chosen = want;
    for kind in list.types().map(str::to_string).collect::<Vec<_>>() {
        let bin = find(&kind, path)?;
        let versions = if kind == virtlink_vnet::cni::TYPE {
            virtlink_vnet::cni::VERSIONS.map(String::from).to_vec()
        } else {
            supported_versions(&bin, cache_dir)?
        };
        let best = want
            .best_at_most(versions.iter().map(String::as_str))
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                    "delegate {kind:?} speaks none of the CNI versions up to {want} (it speaks {})",
                    versions.join(", ")
                ),
                )
            })?;
        chosen = chosen.min(best);
        binaries.push(bin);
    }
    if chosen != want {
        tracing::debug!(network = %list.name, from = %want, to = %chosen, "lowered delegate CNI version");
        list.cni_version = chosen.to_string();
    }
    Ok(Resolved { list, binaries })
}

/// Builds the stdin of the `i`th plugin of a list.
fn plugin_stdin(
    list: &NetworkList,
    i: usize,
    prev: Option<&Value>,
    runtime_config: &Map<String, Value>,
) -> Value {
    let mut conf = list.plugins[i].clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    } else {
        conf.remove("prevResult");
    }
    let wanted: Map<String, Value> = conf
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            caps.iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .filter_map(|(k, _)| runtime_config.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        })
        .unwrap_or_default();
    if wanted.is_empty() {
        conf.remove("runtimeConfig");
    } else {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    Value::Object(conf)
}

impl Resolved {
    /// ADD: each plugin in order, each getting the previous one's result.
    pub fn add(
        &self,
        inv: &Invocation<'_>,
        runtime_config: &Map<String, Value>,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for (i, bin) in self.binaries.iter().enumerate() {
            let stdin = plugin_stdin(&self.list, i, prev.as_ref(), runtime_config);
            let out =
                exec(bin, Command::Add, inv, &stdin).map_err(|e| e.context(self.step(i, "ADD")))?;
            // A plugin that prints nothing passes the previous result on.
            if out.is_some() {
                prev = out;
            }
        }
        Ok(prev.unwrap_or_else(|| serde_json::json!({ "cniVersion": self.list.cni_version })))
    }

    /// DEL: each plugin in reverse order, each getting the cached result.
    /// Every plugin runs even if an earlier one failed; the first error is returned.
    pub fn del(
        &self,
        inv: &Invocation<'_>,
        runtime_config: &Map<String, Value>,
        cached: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = cached.filter(|_| self.list.version() >= Version::V0_4_0);
        let mut first_error = None;
        for (i, bin) in self.binaries.iter().enumerate().rev() {
            let stdin = plugin_stdin(&self.list, i, prev, runtime_config);
            if let Err(e) = exec(bin, Command::Del, inv, &stdin) {
                tracing::warn!(error = %e, step = %self.step(i, "DEL"), "delegate DEL failed");
                first_error.get_or_insert(e.context(self.step(i, "DEL")));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// CHECK: each plugin in order with the cached result (0.4.0 and later).
    pub fn check(
        &self,
        inv: &Invocation<'_>,
        runtime_config: &Map<String, Value>,
        cached: &Value,
    ) -> Result<(), CniError> {
        if !self.list.version().supports_check() {
            tracing::debug!(network = %self.list.name, "CNI version has no CHECK; skipped");
            return Ok(());
        }
        for (i, bin) in self.binaries.iter().enumerate() {
            let stdin = plugin_stdin(&self.list, i, Some(cached), runtime_config);
            exec(bin, Command::Check, inv, &stdin).map_err(|e| e.context(self.step(i, "CHECK")))?;
        }
        Ok(())
    }

    fn step(&self, i: usize, verb: &str) -> String {
        let kind = self.list.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("?");
        format!("delegate {kind} {verb}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_config_becomes_a_list_of_one() {
        let l = NetworkList::from_value(
            &json!({"cniVersion":"0.4.0","name":"a","type":"bridge"}),
            Version::V1_0_0,
        )
        .unwrap();
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.cni_version, "0.4.0");
        let l = NetworkList::from_value(
            &json!({"name":"b","plugins":[{"type":"x"},{"type":"y"}]}),
            Version::V1_1_0,
        )
        .unwrap();
        assert_eq!(l.types().collect::<Vec<_>>(), vec!["x", "y"]);
        assert_eq!(l.cni_version, "1.1.0");
    }

    #[test]
    fn bad_lists_are_invalid_config() {
        for v in [
            json!([]),
            json!({"plugins": []}),
            json!({"plugins": "x"}),
            json!({"name":"a"}),
            json!({"type":"../x"}),
        ] {
            let e = NetworkList::from_value(&v, Version::V1_0_0).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{v}");
        }
    }

    #[test]
    fn runtime_config_goes_only_to_plugins_that_declare_the_capability() {
        let l = NetworkList::from_value(
            &json!({"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"bridge"},
                {"type":"tuning","capabilities":{"mac":true}},
                {"type":"portmap","capabilities":{"portMappings":true,"mac":false}}]}),
            Version::V1_0_0,
        )
        .unwrap();
        let rc: Map<String, Value> = json!({"mac":"02:00:00:00:00:09","portMappings":[]})
            .as_object()
            .unwrap()
            .clone();
        assert!(plugin_stdin(&l, 0, None, &rc)
            .get("runtimeConfig")
            .is_none());
        let s = plugin_stdin(&l, 1, Some(&json!({"cniVersion":"1.0.0"})), &rc);
        assert_eq!(s["runtimeConfig"], json!({"mac":"02:00:00:00:00:09"}));
        assert_eq!(s["name"], "n");
        assert!(s.get("prevResult").is_some());
        assert_eq!(
            plugin_stdin(&l, 2, None, &rc)["runtimeConfig"],
            json!({"portMappings":[]})
        );
    }

    #[test]
    fn missing_plugin_names_the_path() {
        let e = find("nope", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(
            e.msg.contains("\"nope\"") && e.msg.contains("/nonexistent"),
            "{}",
            e.msg
        );
    }
}
