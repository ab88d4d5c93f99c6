//! Attachment state on disk: for each (container, runtime ifname) the
//! delegates that were called, with their configs and results, so DEL, CHECK
//! and GC work after the NAD or the pod is gone and after a reboot.
//!
//! Layout: `<stateDir>/attachments/<containerID>/<ifname>.json`, written
//! atomically (temp file, fsync, rename, fsync of the directory). The record,
//! listing every planned attachment, is written *before* the delegates run, so
//! a crash mid-ADD still leaves enough behind for DEL to clean up.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::delegate::NetworkList;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decode state file {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("lock state dir {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Everything virtlink-cni did for one runtime attachment (container + ifname).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub cni_args: String,
    /// The CNI version the runtime spoke.
    pub cni_version: String,
    /// The runtime's network name (the plugin config's `name`); GC is per network.
    #[serde(default)]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// In ADD order; DEL walks it backwards.
    pub attachments: Vec<Attachment>,
}

/// One delegate network attached to the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `namespace/name` of the NAD, or the cluster network's name.
    pub network: String,
    pub ifname: String,
    pub is_default: bool,
    /// A KubeVirt network binding plugin entry (its `cni-args` name a
    /// `logicNetworkName`): added after the other networks, deleted first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binding: bool,
    /// The delegate config list with the version it was called with.
    pub delegate: NetworkList,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub runtime_config: Map<String, Value>,
    /// The delegate's result; `None` while its ADD has not returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Device info (NPWG) when a device plugin resource backs the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_info: Option<netattach::status::DeviceInfo>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Held while an operation reads or changes state; GC holds it exclusively.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

impl Store {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    fn attachments_dir(&self) -> PathBuf {
        self.root.join("attachments")
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.attachments_dir()
            .join(container_id)
            .join(format!("{ifname}.json"))
    }

    /// Shared for ADD/DEL/CHECK (the runtime serialises calls per container),
    /// exclusive for GC.
    pub fn lock(&self, exclusive: bool) -> Result<Lock> {
        let path = self.root.join("lock");
        std::fs::create_dir_all(&self.root).map_err(|source| Error::Write {
            path: self.root.clone(),
            source,
        })?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let flock = Flock::lock(file, arg).map_err(|(_, source)| Error::Lock { path, source })?;
        Ok(Lock { _flock: flock })
    }

    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<PodRecord>> {
        let path = self.path(container_id, ifname);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Decode {
                path,
                reason: e.to_string(),
            })
    }

    pub fn save(&self, record: &PodRecord) -> Result<()> {
        let path = self.path(&record.container_id, &record.ifname);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(|source| Error::Write { path, source })
    }

    /// Like [`Store::save`] without the fsyncs, for updating a record that
    /// is already durable (readers still never see a torn file).
    pub fn save_results(&self, record: &PodRecord) -> Result<()> {
        let path = self.path(&record.container_id, &record.ifname);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_replace(&path, &bytes).map_err(|source| Error::Write { path, source })
    }

    /// Removes a record; a record that is already gone is fine.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Write { path, source }),
        }
        // The container directory goes when its last record does.
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    /// Every (container id, runtime ifname) with a record.
    pub fn list(&self) -> Result<Vec<(String, String)>> {
        let dir = self.attachments_dir();
        let mut out = Vec::new();
        let containers = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(Error::Read { path: dir, source }),
        };
        for c in containers.flatten() {
            let cid = c.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(c.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(ifname) = name.strip_suffix(".json") {
                    out.push((cid.clone(), ifname.to_string()));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Writes a file so that readers see either the old or the new content, even
/// across a crash: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, true)
}

/// Like [`write_atomic`] without the fsyncs: readers never see a torn file,
/// but a crash may lose the write. For files that are rewritten anyway.
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, false)
}

fn write_file(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("state path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    // Unique per process and per write: the node agent runs many calls in
    // one process, and two of them may replace the same file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Version;

    fn record() -> PodRecord {
        PodRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            cni_version: "1.0.0".into(),
            attachments: vec![Attachment {
                network: "default/blue".into(),
                ifname: "net1".into(),
                is_default: false,
                binding: false,
                delegate: NetworkList::from_value(
                    &serde_json::json!({"name":"blue","type":"bridge"}),
                    Version::V1_0_0,
                )
                .unwrap(),
                runtime_config: Map::new(),
                result: None,
                device_info: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        assert!(s.load("c1", "eth0").unwrap().is_none());
        s.save(&record()).unwrap();
        assert_eq!(s.load("c1", "eth0").unwrap().unwrap(), record());
        assert_eq!(
            s.list().unwrap(),
            vec![("c1".to_string(), "eth0".to_string())]
        );
        s.remove("c1", "eth0").unwrap();
        s.remove("c1", "eth0").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(!dir.path().join("attachments/c1").exists());
    }

    #[test]
    fn corrupt_record_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        std::fs::create_dir_all(dir.path().join("attachments/c2")).unwrap();
        std::fs::write(dir.path().join("attachments/c2/eth0.json"), b"{").unwrap();
        assert!(matches!(s.load("c2", "eth0"), Err(Error::Decode { .. })));
    }
}
