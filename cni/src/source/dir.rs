//! Pods and NADs read from a directory of YAML (or JSON) manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Error, NadInfo, PodInfo, Result};

/// All Pods and NADs found in the files of one directory (recursively).
#[derive(Debug, Default)]
pub struct DirSource {
    pods: BTreeMap<(String, String), PodInfo>,
    nads: BTreeMap<(String, String), NadInfo>,
}

#[derive(Deserialize)]
struct Object {
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl DirSource {
    pub fn load(dir: &Path) -> Result<Self> {
        let mut me = DirSource::default();
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            me.add_documents(&path, &text)?;
        }
        Ok(me)
    }

    fn add_documents(&mut self, path: &Path, text: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            // Lists (kind: List) hold their objects in `items`.
            let items = match value.get("items").and_then(|i| i.as_sequence()) {
                Some(items) => items.clone(),
                None => vec![value],
            };
            for item in items {
                self.add_object(path, item)?;
            }
        }
        Ok(())
    }

    fn add_object(&mut self, path: &Path, value: serde_yaml::Value) -> Result<()> {
        let obj: Object = serde_yaml::from_value(value).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let kind = obj.kind.unwrap_or_default();
        if kind != "Pod" && kind != "NetworkAttachmentDefinition" {
            return Ok(());
        }
        let name = obj.metadata.name.ok_or_else(|| Error::Parse {
            path: path.to_path_buf(),
            reason: format!("a {kind} without metadata.name"),
        })?;
        let namespace = obj.metadata.namespace.unwrap_or_else(|| "default".into());
        let key = (namespace.clone(), name.clone());
        if kind == "Pod" {
            self.pods.insert(
                key,
                PodInfo {
                    namespace,
                    name,
                    uid: obj.metadata.uid,
                    annotations: obj.metadata.annotations,
                },
            );
        } else {
            let config = obj
                .spec
                .as_ref()
                .and_then(|s| s.get("config"))
                .and_then(|c| c.as_str())
                .map(str::to_string);
            self.nads.insert(
                key,
                NadInfo {
                    namespace,
                    name,
                    config,
                    annotations: obj.metadata.annotations,
                },
            );
        }
        Ok(())
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every pod, ordered by namespace and name.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    pub fn nad(&self, namespace: &str, name: &str) -> Option<NadInfo> {
        self.nads
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pods_and_nads_from_multi_document_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("objs.yaml"),
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    k8s.v1.cni.cncf.io/networks: blue
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: blue
  namespace: default
spec:
  config: '{"cniVersion":"1.0.0","type":"bridge"}'
---
kind: ConfigMap
metadata: {name: ignored}
"#,
        )
        .unwrap();
        let s = DirSource::load(dir.path()).unwrap();
        let pod = s.pod("default", "web").unwrap();
        assert_eq!(pod.annotations["k8s.v1.cni.cncf.io/networks"], "blue");
        assert!(s
            .nad("default", "blue")
            .unwrap()
            .config
            .unwrap()
            .contains("bridge"));
        assert!(s.nad("default", "ignored").is_none());
        assert!(s.pod("other", "web").is_none());
    }

    #[test]
    fn malformed_yaml_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\nmetadata: [").unwrap();
        let e = DirSource::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("bad.yaml"), "{e}");
    }
}
