//! Where networks and endpoint slices live in standalone mode: a *cluster
//! directory* that plays the API server (`networks/<name>.yaml` holding
//! `VirtualNetwork` objects, `slices/<network>/<node>.yaml` holding
//! `NetworkEndpointSlice` objects; a node writes only its own slice files),
//! and a node's state directory (the networks its pods were attached to
//! with an inline definition, and the node's lock).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::{
    self, check_collisions, slice_name, slice_object, Network, NetworkEndpointSlice,
    NetworkEndpointSliceSpec, VirtualNetwork,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decode {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("encode {what}")]
    Encode {
        what: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: model::Error,
    },
    #[error(transparent)]
    Model(#[from] model::Error),
    #[error("cluster directory {path} is unavailable: keeping the datapath as it is")]
    Unavailable { path: PathBuf },
    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { step, path, source }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The `.yaml` files of `dir`, sorted; a missing directory has none.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    out.sort();
    Ok(out)
}

/// The file names of `paths` without their extension.
fn stems(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(path: &Path, text: &[u8]) -> Result<T> {
    serde_yaml::from_slice(text).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a YAML object from a file just listed: `None` when it is gone since (its
/// writer deleted it in between, as a node's last DEL or a withdrawn IPAM
/// claim does), which is what a read a moment later would have listed.
fn read_listed<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(text) => decode(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Reads the `VirtualNetwork`s of `dir` (one object per file), each
/// validated.
fn read_networks(dir: &Path) -> Result<Vec<Network>> {
    let mut out = Vec::new();
    for path in yaml_files(dir)? {
        let Some(vn) = read_listed::<VirtualNetwork>(&path)? else {
            continue;
        };
        let n = Network::from_object(&vn).map_err(|source| Error::Invalid {
            path: path.clone(),
            source,
        })?;
        out.push(n);
    }
    Ok(out)
}

fn write_network(dir: &Path, n: &Network) -> Result<()> {
    let mut vn = VirtualNetwork::new(&n.name, n.to_spec());
    vn.metadata.labels = None;
    let text = serde_yaml::to_string(&vn).map_err(|source| Error::Encode {
        what: format!("network {}", n.name),
        source,
    })?;
    write_replace(&dir.join(format!("{}.yaml", n.name)), text.as_bytes())
}

/// The cluster directory.
#[derive(Debug, Clone)]
pub struct ClusterDir {
    root: PathBuf,
}

impl ClusterDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn networks_dir(&self) -> PathBuf {
        self.root.join("networks")
    }

    fn slice_path(&self, network: &str, node: &str) -> PathBuf {
        self.root
            .join("slices")
            .join(network)
            .join(format!("{node}.yaml"))
    }

    /// An absent cluster directory is the API server being unreachable, not
    /// an empty cluster: nothing may be pruned on its account.
    fn available(&self) -> Result<()> {
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(Error::Unavailable {
                path: self.root.clone(),
            })
        }
    }

    /// Every VirtualNetwork, validated and checked against each other.
    pub fn networks(&self) -> Result<Vec<Network>> {
        self.available()?;
        let nets = read_networks(&self.networks_dir())?;
        check_collisions(&nets)?;
        Ok(nets)
    }

    /// Writes a VirtualNetwork (what a user's `kubectl apply` does).
    pub fn put_network(&self, n: &Network) -> Result<()> {
        write_network(&self.networks_dir(), n)
    }

    pub fn remove_network(&self, name: &str) -> Result<()> {
        remove(&self.networks_dir().join(format!("{name}.yaml")))
    }

    /// The names of the networks that have a file (valid or not).
    pub fn network_names(&self) -> Result<Vec<String>> {
        self.available()?;
        Ok(stems(&yaml_files(&self.networks_dir())?))
    }

    /// The nodes that have a slice file of `network`.
    pub fn slice_nodes(&self, network: &str) -> Result<Vec<String>> {
        self.available()?;
        Ok(stems(&yaml_files(&self.root.join("slices").join(network))?))
    }

    /// Removes `node`'s slice of `network` (what another node's DEL of its
    /// last endpoint looks like from here); a missing one is fine.
    pub fn remove_slice(&self, network: &str, node: &str) -> Result<()> {
        self.available()?;
        remove(&self.slice_path(network, node))
    }

    /// Every node's slice of `network`.
    pub fn slices(&self, network: &str) -> Result<Vec<NetworkEndpointSliceSpec>> {
        self.available()?;
        let mut out = Vec::new();
        for path in yaml_files(&self.root.join("slices").join(network))? {
            if let Some(s) = read_listed::<NetworkEndpointSlice>(&path)? {
                out.push(s.spec);
            }
        }
        Ok(out)
    }

    /// Every slice of `node`, of any network.
    pub fn node_slices(&self, node: &str) -> Result<Vec<NetworkEndpointSliceSpec>> {
        self.available()?;
        let dir = self.root.join("slices");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let mut nets: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        nets.sort();
        let mut out = Vec::new();
        for net in nets {
            let path = self.slice_path(&net, node);
            if let Some(s) = read_listed::<NetworkEndpointSlice>(&path)? {
                out.push(s.spec);
            }
        }
        Ok(out)
    }

    /// Writes the node's slice; one with no endpoints is removed (its blocks
    /// go back to the pool).
    pub fn put_slice(&self, s: &NetworkEndpointSliceSpec) -> Result<()> {
        self.available()?;
        let path = self.slice_path(&s.network, &s.node);
        if s.endpoints.is_empty() {
            return remove(&path);
        }
        let obj = slice_object(s);
        let text = serde_yaml::to_string(&obj).map_err(|source| Error::Encode {
            what: format!("slice {}", slice_name(&s.network, &s.node)),
            source,
        })?;
        write_replace(&path, text.as_bytes())
    }
}

/// A node's own state directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    root: PathBuf,
}

impl NodeDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Networks defined inline in the NADs of this node's pods.
    pub fn networks(&self) -> Result<Vec<Network>> {
        read_networks(&self.root.join("networks"))
    }

    pub fn put_network(&self, n: &Network) -> Result<()> {
        write_network(&self.root.join("networks"), n)
    }

    pub fn remove_network(&self, name: &str) -> Result<()> {
        remove(&self.root.join("networks").join(format!("{name}.yaml")))
    }

    /// Takes the node's lock (held until the returned value is dropped):
    /// CNI calls for one node run one at a time.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<File>> {
        std::fs::create_dir_all(&self.root).map_err(io("create directory", &self.root))?;
        let path = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, source)| Error::Lock { path, source })
    }
}
