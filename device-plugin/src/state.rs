//! What pods hold, across our own restarts: every Allocate is recorded in a
//! state file, and kubelet's own checkpoint (`kubelet_internal_checkpoint` in
//! the device-plugins dir) says which pods still hold which devices.
//!
//! A device is *held* when kubelet's checkpoint lists it, or when we recorded
//! an Allocate for it after kubelet last wrote the checkpoint (kubelet writes
//! it right after Allocate returns, so a recent allocation may not be there
//! yet). Without a checkpoint file our own record is all there is.
//! Held devices are never offered by GetPreferredAllocation while free ones
//! remain, and their device-info files are kept when the plugin restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// kubelet's checkpoint file name in its device-plugins dir.
pub const KUBELET_CHECKPOINT: &str = "kubelet_internal_checkpoint";
const STATE_FILE: &str = "allocations.json";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create state dir {path}")]
    CreateDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("read state file {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("parse state file {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("write state file {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct StateFile {
    /// resource -> device id -> allocation.
    allocations: BTreeMap<String, BTreeMap<String, Allocation>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Allocation {
    /// Milliseconds since the Unix epoch.
    allocated_at_ms: u64,
}

/// The persisted allocations plus kubelet's checkpoint.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    checkpoint: PathBuf,
    state: Mutex<StateFile>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl StateStore {
    /// Opens (or starts) the state in `state_dir`; `kubelet_dir` holds
    /// kubelet's checkpoint.
    pub fn open(state_dir: &Path, kubelet_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|source| Error::CreateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Parse {
                path: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => StateFile::default(),
            Err(source) => {
                return Err(Error::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Ok(Self {
            path,
            checkpoint: kubelet_dir.join(KUBELET_CHECKPOINT),
            state: Mutex::new(state),
        })
    }

    /// Records that `ids` of `resource` were just allocated.
    pub fn record(&self, resource: &str, ids: &[String]) -> Result<()> {
        let now = now_ms();
        let snapshot = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let held = st.allocations.entry(resource.to_string()).or_default();
            for id in ids {
                held.insert(
                    id.clone(),
                    Allocation {
                        allocated_at_ms: now,
                    },
                );
            }
            st.clone()
        };
        self.save(&snapshot)
    }

    fn save(&self, st: &StateFile) -> Result<()> {
        let werr = |source| Error::Write {
            path: self.path.display().to_string(),
            source,
        };
        let body = serde_json::to_vec_pretty(st).map_err(|e| werr(io::Error::other(e)))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(werr)?;
        std::fs::write(tmp.path(), body).map_err(werr)?;
        tmp.persist(&self.path).map_err(|e| werr(e.error))?;
        Ok(())
    }

    /// Devices of `resource` that pods hold (see the module docs).
    pub fn held(&self, resource: &str) -> BTreeSet<String> {
        let checkpoint = read_checkpoint(&self.checkpoint);
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ours = st.allocations.get(resource);
        match checkpoint {
            Some((written_ms, by_resource)) => {
                let mut held = by_resource.get(resource).cloned().unwrap_or_default();
                if let Some(ours) = ours {
                    held.extend(
                        ours.iter()
                            .filter(|(_, a)| a.allocated_at_ms >= written_ms)
                            .map(|(id, _)| id.clone()),
                    );
                }
                held
            }
            None => ours
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Checkpoint {
    #[serde(rename = "Data")]
    data: CheckpointData,
}

#[derive(Debug, Deserialize)]
struct CheckpointData {
    #[serde(rename = "PodDeviceEntries", default)]
    entries: Option<Vec<CheckpointEntry>>,
}

#[derive(Debug, Deserialize)]
struct CheckpointEntry {
    #[serde(rename = "ResourceName")]
    resource_name: String,
    /// `{"<numa node>": [ids]}` since Kubernetes 1.20, `[ids]` before.
    #[serde(rename = "DeviceIDs", default)]
    device_ids: serde_json::Value,
}

/// kubelet's checkpoint: when it was written, and resource -> held device ids.
/// `None` when there is no readable checkpoint.
fn read_checkpoint(path: &Path) -> Option<(u64, BTreeMap<String, BTreeSet<String>>)> {
    let meta = std::fs::metadata(path).ok()?;
    let written_ms = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let bytes = std::fs::read(path).ok()?;
    let cp: Checkpoint = match serde_json::from_slice(&bytes) {
        Ok(cp) => cp,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable kubelet checkpoint, ignored");
            return None;
        }
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in cp.data.entries.unwrap_or_default() {
        let set = out.entry(e.resource_name).or_default();
        let mut push = |v: &serde_json::Value| {
            if let Some(list) = v.as_array() {
                set.extend(list.iter().filter_map(|s| s.as_str().map(str::to_string)));
            }
        };
        match &e.device_ids {
            serde_json::Value::Object(per_numa) => per_numa.values().for_each(&mut push),
            v => push(v),
        }
    }
    Some((written_ms, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let st = StateStore::open(&d.path().join("state"), d.path()).unwrap();
        st.record("virtlink.io/a", &["0000:03:02.0".into()])
            .unwrap();
        drop(st);
        let st = StateStore::open(&d.path().join("state"), d.path()).unwrap();
        assert_eq!(
            st.held("virtlink.io/a").into_iter().collect::<Vec<_>>(),
            ["0000:03:02.0"]
        );
        assert!(st.held("virtlink.io/b").is_empty());
    }

    #[test]
    fn kubelet_checkpoint_decides_for_older_allocations() {
        let d = tempfile::tempdir().unwrap();
        let st = StateStore::open(&d.path().join("state"), d.path()).unwrap();
        st.record("virtlink.io/a", &["old-released".into(), "old-held".into()])
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Both the new map form and the pre-1.20 list form.
        std::fs::write(
            d.path().join(KUBELET_CHECKPOINT),
            r#"{"Data":{"PodDeviceEntries":[
                {"PodUID":"u1","ContainerName":"c","ResourceName":"virtlink.io/a","DeviceIDs":{"0":["old-held"]},"AllocResp":""},
                {"PodUID":"u2","ContainerName":"c","ResourceName":"virtlink.io/a","DeviceIDs":["other"],"AllocResp":""}
              ],"RegisteredDevices":{}},"Checksum":1}"#,
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        st.record("virtlink.io/a", &["new".into()]).unwrap();
        let held: Vec<String> = st.held("virtlink.io/a").into_iter().collect();
        assert_eq!(held, ["new", "old-held", "other"]);
    }
}
